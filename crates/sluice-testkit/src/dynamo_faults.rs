//! A loopback proxy in front of DynamoDB Local that makes it as unkind as DynamoDB itself where
//! it matters. DynamoDB Local runs one request at a time to completion, never cancels a
//! transaction for touching an item another one holds, never throttles, and updates indexes
//! synchronously. Behind this proxy:
//!
//! - **Contention** (on by default): the items of a TransactWriteItems call are held from its
//!   arrival until its answer (plus [`Unkindness::hold`], the rest of a real transaction's
//!   latency). A transaction that touches a held item is cancelled with `TransactionConflict`
//!   on that item, and a PutItem, UpdateItem or DeleteItem on a held item fails with
//!   `TransactionConflictException`, as DynamoDB documents.
//! - **A write budget per partition** (default 1,000 write units/s, DynamoDB's partition
//!   limit): every write is charged its units (1 KB each, doubled in transactions) to the
//!   partition key it writes; beyond the budget a transaction is cancelled with
//!   `ThrottlingError` and a standard write fails with `ProvisionedThroughputExceededException`.
//!   DynamoDB can split a hot partition by sort key over time; this proxy never does, so it is
//!   the worst case for a partition key that many items share.
//! - **Lagging indexes** ([`Unkindness::index_lag`], off by default): an item written for the
//!   first time stays out of every Query and Scan on a secondary index for that long.
//! - **Random cancellations** ([`DynamoFaultProxy::set_rate`]): a share of TransactWriteItems
//!   calls is cancelled outright, two thirds with TransactionConflict, one third throttled.
//! - **Lost answers** ([`DynamoFaultProxy::lose_answers`]): transactions that commit are
//!   answered with an InternalServerError.
//! - **A table out of capacity** ([`DynamoFaultProxy::throttle_table`]): every transaction
//!   writing to it is throttled.
//!
//! A refused call never reaches DynamoDB Local, as when DynamoDB refuses it; everything else is
//! forwarded unchanged. The proxy runs in a test's process ([`DynamoFaultProxy::start`]) or as
//! the `sluice-unkind-dynamodb` binary in front of the whole suite (scripts/with-test-services.sh).

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How unkind the proxy is, beyond random cancellations.
#[derive(Debug, Clone, Copy)]
pub struct Unkindness {
    /// Cancel transactions (and refuse standard writes) that touch an item a transaction in
    /// flight holds.
    pub conflicts: bool,
    /// How much longer than DynamoDB Local's answer a transaction holds its items.
    pub hold: Duration,
    /// Write units per second one partition key takes (0: no budget).
    pub partition_wcu: f64,
    /// How long an item written for the first time is missing from secondary index reads.
    pub index_lag: Duration,
}

impl Default for Unkindness {
    /// DynamoDB's own behaviour as documented: conflicts, 1,000 write units/s per partition,
    /// and (since its lag is not bounded) no index lag unless a test asks for one.
    fn default() -> Self {
        Unkindness { conflicts: true, hold: Duration::ZERO, partition_wcu: 1000.0, index_lag: Duration::ZERO }
    }
}

impl Unkindness {
    /// No unkindness at all: a plain forwarder (random cancellations still apply).
    pub fn none() -> Self {
        Unkindness { conflicts: false, hold: Duration::ZERO, partition_wcu: 0.0, index_lag: Duration::ZERO }
    }
}

/// What the proxy refused or hid.
#[derive(Debug, Default)]
pub struct FaultCounts {
    /// Random cancellations: TransactionConflict.
    pub conflicts: AtomicU64,
    /// Random cancellations: throttling.
    pub throttles: AtomicU64,
    /// Transactions cancelled, and standard writes refused, for touching a held item.
    pub item_conflicts: AtomicU64,
    /// Writes refused for exceeding their partition's budget.
    pub partition_throttles: AtomicU64,
    /// Items left out of secondary index reads because they were too new.
    pub hidden_from_index: AtomicU64,
    /// Calls passed to DynamoDB Local.
    pub forwarded: AtomicU64,
    /// Transactions passed to DynamoDB Local.
    pub transactions: AtomicU64,
    /// The share of TransactWriteItems calls cancelled at random, as `f64` bits.
    rate: AtomicU64,
    /// Committed transactions whose answer is still to be lost.
    lose: AtomicU64,
    /// A table all of whose transactional writes are throttled.
    throttled_table: Mutex<Option<String>>,
    /// Item conflicts by table.
    conflicts_by_table: Mutex<BTreeMap<String, u64>>,
}

impl FaultCounts {
    /// Item conflicts (transactions cancelled and standard writes refused) by table.
    pub fn conflicts_by_table(&self) -> BTreeMap<String, u64> {
        self.conflicts_by_table.lock().expect("counts").clone()
    }

    fn item_conflict(&self, table: &str) {
        self.item_conflicts.fetch_add(1, Ordering::Relaxed);
        *self.conflicts_by_table.lock().expect("counts").entry(table.to_string()).or_default() += 1;
    }
}

/// A running proxy; stops when dropped.
pub struct DynamoFaultProxy {
    pub addr: SocketAddr,
    pub counts: Arc<FaultCounts>,
    task: tokio::task::JoinHandle<()>,
}

impl DynamoFaultProxy {
    /// Proxies to `upstream` (`http://127.0.0.1:port`) with DynamoDB's default unkindness,
    /// cancelling a `rate` share of TransactWriteItems calls at random as well.
    pub async fn start(upstream: &str, rate: f64) -> DynamoFaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        Self::serve(listener, upstream, rate, Unkindness::default())
    }

    /// Proxies to `upstream` with the unkindness given.
    pub async fn start_with(upstream: &str, unkindness: Unkindness) -> DynamoFaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        Self::serve(listener, upstream, 0.0, unkindness)
    }

    /// Serves on `listener` (for the standalone binary, which picks its own port).
    pub fn serve(listener: tokio::net::TcpListener, upstream: &str, rate: f64, unkindness: Unkindness) -> DynamoFaultProxy {
        let counts = Arc::new(FaultCounts::default());
        counts.rate.store(rate.to_bits(), Ordering::Relaxed);
        let state = Arc::new(Proxy {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            upstream: upstream.trim_end_matches('/').to_string(),
            counts: counts.clone(),
            unkindness,
            schemas: Mutex::default(),
            held: Mutex::default(),
            budgets: Mutex::default(),
            written: Mutex::default(),
        });
        let app = Router::new().fallback(move |req: Request<Body>| {
            let state = state.clone();
            async move { state.handle(req).await }
        });
        let addr = listener.local_addr().expect("proxy address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        DynamoFaultProxy { addr, counts, task }
    }

    /// Changes the share of transactions cancelled at random from now on (0 turns it off).
    pub fn set_rate(&self, rate: f64) {
        self.counts.rate.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// Lets the next `n` transactions that commit go unanswered: the caller gets an
    /// InternalServerError for a transaction that did commit (as when an answer is lost).
    pub fn lose_answers(&self, n: u64) {
        self.counts.lose.store(n, Ordering::Relaxed);
    }

    /// Throttles every transaction that writes to `table` (None: stops), as a table out of
    /// capacity does.
    pub fn throttle_table(&self, table: Option<&str>) {
        *self.counts.throttled_table.lock().expect("counts") = table.map(str::to_string);
    }

    /// `http://<addr>`, the endpoint to give the SDK.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for DynamoFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One item a write touches.
struct Touch {
    table: String,
    /// The table and the key's attributes, canonical.
    item: String,
    /// The table and the partition key's value.
    partition: String,
    /// Write units, before doubling for transactions.
    units: f64,
}

/// The items of a transaction in flight, released when dropped.
struct Held<'a> {
    proxy: &'a Proxy,
    touches: &'a [Touch],
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.proxy.release(self.touches);
    }
}

/// A partition's budget: a token bucket holding at most one second of units.
struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Proxy {
    client: Client<HttpConnector, Body>,
    upstream: String,
    counts: Arc<FaultCounts>,
    unkindness: Unkindness,
    /// Key attribute names per table, hash key first (from DescribeTable).
    schemas: Mutex<HashMap<String, Vec<String>>>,
    /// Items held by transactions in flight.
    held: Mutex<HashSet<String>>,
    budgets: Mutex<HashMap<String, Bucket>>,
    /// When each item was first written (only kept while index lag is on).
    written: Mutex<HashMap<String, Instant>>,
}

/// The error answers the proxy gives, in the awsJson1_0 shape the SDK parses.
fn error(kind: &str, message: &str) -> Response<Body> {
    json_response(StatusCode::BAD_REQUEST, &json!({"__type": format!("com.amazonaws.dynamodb.v20120810#{kind}"), "Message": message}))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amzn-requestid", "sluice-unkind-proxy")
        .body(Body::from(body.to_string()))
        .expect("response")
}

/// A cancelled transaction with `code` on the items at `victims` and "None" elsewhere.
fn cancelled(items: usize, victims: &[usize], code: &str, message: &str) -> Response<Body> {
    let reasons: Vec<Value> = (0..items)
        .map(|i| if victims.contains(&i) { json!({"Code": code, "Message": message}) } else { json!({"Code": "None"}) })
        .collect();
    let names: Vec<&str> = (0..items).map(|i| if victims.contains(&i) { code } else { "None" }).collect();
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
            "Message": format!("Transaction cancelled, please refer cancellation reasons for specific reasons [{}]", names.join(", ")),
            "CancellationReasons": reasons,
        }),
    )
}

/// `name=value` pairs of the key attributes, in name order.
fn canonical_key(key: &serde_json::Map<String, Value>, names: &[String]) -> Option<String> {
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort();
    let mut out = String::new();
    for n in sorted {
        out.push_str(n);
        out.push('=');
        out.push_str(&key.get(n)?.to_string());
        out.push(';');
    }
    Some(out)
}

/// Write units of a request part: 1 per started KB of its JSON.
fn units(v: &Value) -> f64 {
    (v.to_string().len() as f64 / 1024.0).ceil().max(1.0)
}

impl Proxy {
    async fn handle(self: Arc<Self>, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Response::builder().status(StatusCode::BAD_REQUEST).body(Body::empty()).expect("response"),
        };
        let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let op = target.rsplit('.').next().unwrap_or("").to_string();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let request: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        match op.as_str() {
            "TransactWriteItems" => self.transaction(&parts.headers, &path, bytes, &request).await,
            "PutItem" | "UpdateItem" | "DeleteItem" => self.standard_write(&parts.headers, &path, bytes, &request, &op).await,
            "Query" | "Scan" if !self.unkindness.index_lag.is_zero() && request.get("IndexName").is_some() => {
                let resp = self.forward(&parts.headers, &path, bytes).await;
                self.hide_new_items(&parts.headers, &path, &request, resp).await
            }
            _ => self.forward(&parts.headers, &path, bytes).await,
        }
    }

    async fn transaction(&self, headers: &HeaderMap, path: &str, bytes: bytes::Bytes, request: &Value) -> Response<Body> {
        let parts = request["TransactItems"].as_array().cloned().unwrap_or_default();
        let n = parts.len().max(1);
        let rate = f64::from_bits(self.counts.rate.load(Ordering::Relaxed));
        if rand::random::<f64>() < rate {
            let victim = rand::random_range(0..n);
            return if rand::random::<f64>() < 1.0 / 3.0 {
                self.counts.throttles.fetch_add(1, Ordering::Relaxed);
                cancelled(n, &[victim], "ThrottlingError", "Throughput exceeds the current capacity of your table or index.")
            } else {
                self.counts.conflicts.fetch_add(1, Ordering::Relaxed);
                cancelled(n, &[victim], "TransactionConflict", "Transaction is ongoing for the item")
            };
        }
        let mut touches = Vec::with_capacity(parts.len());
        for p in &parts {
            let Some((kind, body)) = p.as_object().and_then(|o| o.iter().next()) else { return self.forward(headers, path, bytes).await };
            match self.touch(headers, path, body, kind != "ConditionCheck").await {
                Some(t) => touches.push(t),
                None => return self.forward(headers, path, bytes).await,
            }
        }
        let throttled = self.counts.throttled_table.lock().expect("counts").clone();
        if let Some(victim) = throttled.and_then(|t| touches.iter().position(|x| x.table == t && x.units > 0.0)) {
            self.counts.throttles.fetch_add(1, Ordering::Relaxed);
            return cancelled(n, &[victim], "ThrottlingError", "Throughput exceeds the current capacity of your table or index.");
        }
        if self.unkindness.conflicts {
            let mut held = self.held.lock().expect("held");
            let victims: Vec<usize> = touches.iter().enumerate().filter(|(_, t)| held.contains(&t.item)).map(|(i, _)| i).collect();
            if !victims.is_empty() {
                drop(held);
                for &i in &victims {
                    self.counts.item_conflict(&touches[i].table);
                }
                return cancelled(n, &victims, "TransactionConflict", "Transaction is ongoing for the item");
            }
            held.extend(touches.iter().map(|t| t.item.clone()));
        }
        // Released however this call ends, also when its caller goes away mid-call (a killed
        // process): a transaction that never answers must not hold its items forever.
        let _held = Held { proxy: self, touches: &touches };
        // Only the items written are charged; a condition check reads.
        let charged: Vec<(usize, f64)> =
            touches.iter().enumerate().filter(|(_, t)| t.units > 0.0).map(|(i, t)| (i, 2.0 * t.units)).collect();
        if let Some(victim) = self.charge(&touches, &charged) {
            self.counts.partition_throttles.fetch_add(1, Ordering::Relaxed);
            return cancelled(n, &[victim], "ThrottlingError", "Throughput exceeds the current capacity of your table or index.");
        }
        if !self.unkindness.hold.is_zero() {
            tokio::time::sleep(self.unkindness.hold).await;
        }
        self.counts.transactions.fetch_add(1, Ordering::Relaxed);
        let resp = self.forward(headers, path, bytes).await;
        drop(_held);
        if resp.status().is_success() {
            self.note_written(&touches);
            if self.counts.lose.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
                let mut lost = error("InternalServerError", "Internal server error (the proxy lost the answer of a committed transaction)");
                *lost.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                return lost;
            }
        }
        resp
    }

    async fn standard_write(&self, headers: &HeaderMap, path: &str, bytes: bytes::Bytes, request: &Value, op: &str) -> Response<Body> {
        let Some(touch) = self.touch(headers, path, request, true).await else { return self.forward(headers, path, bytes).await };
        let touches = [touch];
        if self.unkindness.conflicts && self.held.lock().expect("held").contains(&touches[0].item) {
            self.counts.item_conflict(&touches[0].table);
            return error("TransactionConflictException", &format!("{op}: Transaction is ongoing for the item"));
        }
        if self.charge(&touches, &[(0, touches[0].units)]).is_some() {
            self.counts.partition_throttles.fetch_add(1, Ordering::Relaxed);
            return error(
                "ProvisionedThroughputExceededException",
                "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API.",
            );
        }
        let resp = self.forward(headers, path, bytes).await;
        if resp.status().is_success() {
            self.note_written(&touches);
        }
        resp
    }

    /// The item one write (`Put`/`Update`/`Delete`/`ConditionCheck` or a standard call)
    /// touches; `None` when its table's key is unknown.
    async fn touch(&self, headers: &HeaderMap, path: &str, part: &Value, writes: bool) -> Option<Touch> {
        let table = part["TableName"].as_str()?.to_string();
        let names = self.schema(headers, path, &table).await?;
        let key = part.get("Key").or_else(|| part.get("Item"))?.as_object()?;
        let item = format!("{table}|{}", canonical_key(key, &names)?);
        let partition = format!("{table}|{}", key.get(&names[0])?);
        let units = if writes { units(part.get("Item").unwrap_or(part)) } else { 0.0 };
        Some(Touch { table, item, partition, units })
    }

    /// Takes each charge from its partition's bucket, all or none; the index of the first
    /// touch whose partition is out of budget otherwise.
    fn charge(&self, touches: &[Touch], charges: &[(usize, f64)]) -> Option<usize> {
        let wcu = self.unkindness.partition_wcu;
        if wcu <= 0.0 {
            return None;
        }
        let now = Instant::now();
        let mut budgets = self.budgets.lock().expect("budgets");
        let mut wanted: HashMap<&str, (f64, usize)> = HashMap::new();
        for &(i, units) in charges {
            let e = wanted.entry(touches[i].partition.as_str()).or_insert((0.0, i));
            e.0 += units;
        }
        for (partition, (units, i)) in &wanted {
            let b = budgets.entry(partition.to_string()).or_insert(Bucket { tokens: wcu, at: now });
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * wcu).min(wcu);
            b.at = now;
            if b.tokens < *units {
                return Some(*i);
            }
        }
        for (partition, (units, _)) in wanted {
            budgets.get_mut(partition).expect("bucket").tokens -= units;
        }
        if budgets.len() > 100_000 {
            // Full buckets carry no state worth keeping.
            budgets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * wcu < wcu);
        }
        None
    }

    fn release(&self, touches: &[Touch]) {
        if self.unkindness.conflicts {
            let mut held = self.held.lock().expect("held");
            for t in touches {
                held.remove(&t.item);
            }
        }
    }

    fn note_written(&self, touches: &[Touch]) {
        let lag = self.unkindness.index_lag;
        if lag.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut written = self.written.lock().expect("written");
        for t in touches.iter().filter(|t| t.units > 0.0) {
            written.entry(t.item.clone()).or_insert(now);
        }
    }

    /// Drops from an index read the items first written less than the lag ago.
    async fn hide_new_items(&self, headers: &HeaderMap, path: &str, request: &Value, resp: Response<Body>) -> Response<Body> {
        if !resp.status().is_success() {
            return resp;
        }
        let (parts, body) = resp.into_parts();
        let Ok(bytes) = body.collect().await.map(|b| b.to_bytes()) else {
            return Response::builder().status(StatusCode::BAD_GATEWAY).body(Body::empty()).expect("response");
        };
        let table = request["TableName"].as_str().unwrap_or("").to_string();
        let (Ok(mut out), Some(names)) = (serde_json::from_slice::<Value>(&bytes), self.schema(headers, path, &table).await) else {
            return Response::from_parts(parts, Body::from(bytes));
        };
        let now = Instant::now();
        let lag = self.unkindness.index_lag;
        if let Some(items) = out.get_mut("Items").and_then(Value::as_array_mut) {
            let written = self.written.lock().expect("written");
            let before = items.len();
            items.retain(|item| {
                let Some(key) = item.as_object().and_then(|o| canonical_key(o, &names)) else { return true };
                written.get(&format!("{table}|{key}")).is_none_or(|at| now.duration_since(*at) >= lag)
            });
            let hidden = before - items.len();
            self.counts.hidden_from_index.fetch_add(hidden as u64, Ordering::Relaxed);
            let count = items.len();
            out["Count"] = json!(count);
        }
        let mut resp = json_response(parts.status, &out);
        *resp.headers_mut() = parts.headers;
        resp.headers_mut().remove("content-length");
        resp.headers_mut().remove("x-amz-crc32");
        resp
    }

    /// The key attribute names of `table`, hash key first, asked of the upstream once.
    async fn schema(&self, headers: &HeaderMap, path: &str, table: &str) -> Option<Vec<String>> {
        if let Some(s) = self.schemas.lock().expect("schemas").get(table) {
            return Some(s.clone());
        }
        let mut h = headers.clone();
        h.insert("x-amz-target", "DynamoDB_20120810.DescribeTable".parse().expect("header"));
        h.remove("content-length");
        let resp = self.forward(&h, path, bytes::Bytes::from(json!({"TableName": table}).to_string())).await;
        let bytes = resp.into_body().collect().await.ok()?.to_bytes();
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        let mut names: Vec<(bool, String)> = v["Table"]["KeySchema"]
            .as_array()?
            .iter()
            .filter_map(|k| Some((k["KeyType"].as_str()? != "HASH", k["AttributeName"].as_str()?.to_string())))
            .collect();
        names.sort();
        let names: Vec<String> = names.into_iter().map(|(_, n)| n).collect();
        if names.is_empty() {
            return None;
        }
        self.schemas.lock().expect("schemas").insert(table.to_string(), names.clone());
        Some(names)
    }

    async fn forward(&self, headers: &HeaderMap, path: &str, bytes: bytes::Bytes) -> Response<Body> {
        self.counts.forwarded.fetch_add(1, Ordering::Relaxed);
        let mut fwd = Request::builder().method("POST").uri(format!("{}{path}", self.upstream));
        for (k, v) in headers {
            fwd = fwd.header(k, v);
        }
        let fwd = fwd.body(Body::from(bytes)).expect("request");
        match self.client.request(fwd).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                Response::from_parts(parts, Body::new(body))
            }
            Err(e) => Response::builder().status(StatusCode::BAD_GATEWAY).body(Body::from(e.to_string())).expect("response"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_canonical_whatever_the_attribute_order() {
        let names = vec!["room".to_string(), "seq".to_string()];
        let a: Value = json!({"seq": {"N": "1"}, "room": {"S": "r"}, "body": {"S": "x"}});
        let b: Value = json!({"room": {"S": "r"}, "seq": {"N": "1"}});
        assert_eq!(canonical_key(a.as_object().unwrap(), &names), canonical_key(b.as_object().unwrap(), &names));
        let c: Value = json!({"room": {"S": "r"}, "seq": {"N": "2"}});
        assert_ne!(canonical_key(b.as_object().unwrap(), &names), canonical_key(c.as_object().unwrap(), &names));
        assert_eq!(canonical_key(json!({"room": {"S": "r"}}).as_object().unwrap(), &names), None);
    }

    #[test]
    fn units_count_started_kilobytes() {
        assert_eq!(units(&json!({"a": "b"})), 1.0);
        assert_eq!(units(&json!({"a": "x".repeat(3000)})), 3.0);
    }
}
