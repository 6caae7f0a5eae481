//! A loopback proxy in front of moto that refuses work as Kinesis and SQS do under load, which
//! moto never does:
//! - Kinesis: part of a PutRecords call fails, as when a shard is over its limits: a share of
//!   the records is answered with `ProvisionedThroughputExceededException` (and never reaches
//!   moto) while the rest of the same call is written;
//! - SQS: a share of the data-plane calls (send, receive, delete, change visibility) is
//!   refused whole with `ThrottlingException` ("Rate exceeded"), as SQS answers a queue over
//!   its API rate (a FIFO queue takes 300 calls/s per action without high throughput mode).
//!   The SDK retries those itself; what gets through its retries meets ours.
//!
//! Everything else is forwarded unchanged. It runs in a test's process
//! ([`MotoFaultProxy::start`]) or as the `sluice-unkind-moto` binary in front of the whole
//! suite (scripts/with-test-services.sh).

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How unkind the proxy is.
#[derive(Debug, Clone, Copy, Default)]
pub struct MotoFaults {
    /// The share of each PutRecords call's records refused.
    pub records_refused: f64,
    /// The share of SQS data-plane calls throttled.
    pub sqs_throttled: f64,
}

/// What the proxy did.
#[derive(Debug, Default)]
pub struct MotoFaultCounts {
    /// Kinesis records answered as failed.
    pub failed: AtomicU64,
    /// Kinesis records passed to moto.
    pub written: AtomicU64,
    /// SQS calls answered with ThrottlingException.
    pub sqs_throttled: AtomicU64,
    /// SQS data-plane calls passed to moto.
    pub sqs_passed: AtomicU64,
    /// The share of records failed, as `f64` bits.
    rate: AtomicU64,
    /// The share of SQS calls throttled, as `f64` bits.
    sqs_rate: AtomicU64,
}

/// A running proxy; stops when dropped.
pub struct MotoFaultProxy {
    pub addr: SocketAddr,
    pub counts: Arc<MotoFaultCounts>,
    task: tokio::task::JoinHandle<()>,
}

impl MotoFaultProxy {
    /// Proxies to `upstream` (moto, `http://127.0.0.1:port`) with these faults.
    pub async fn start(upstream: &str, faults: MotoFaults) -> MotoFaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        Self::serve(listener, upstream, faults)
    }

    /// Serves on `listener` (for the standalone binary, which picks its own port).
    pub fn serve(listener: tokio::net::TcpListener, upstream: &str, faults: MotoFaults) -> MotoFaultProxy {
        let counts = Arc::new(MotoFaultCounts::default());
        counts.rate.store(faults.records_refused.to_bits(), Ordering::Relaxed);
        counts.sqs_rate.store(faults.sqs_throttled.to_bits(), Ordering::Relaxed);
        let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let state = (client, upstream.trim_end_matches('/').to_string(), counts.clone());
        let app = Router::new().fallback(move |req: Request<Body>| {
            let (client, upstream, counts) = state.clone();
            async move { handle(req, &client, &upstream, &counts).await }
        });
        let addr = listener.local_addr().expect("proxy address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MotoFaultProxy { addr, counts, task }
    }

    /// Changes the share of records failed from now on.
    pub fn set_rate(&self, rate: f64) {
        self.counts.rate.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// Changes the share of SQS calls throttled from now on.
    pub fn set_sqs_rate(&self, rate: f64) {
        self.counts.sqs_rate.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// `http://<addr>`, the endpoint to give the SDK.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for MotoFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    client: &Client<HttpConnector, Body>,
    upstream: &str,
    parts: &axum::http::request::Parts,
    body: bytes::Bytes,
) -> Result<(axum::http::response::Parts, bytes::Bytes), String> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut fwd = Request::builder().method(parts.method.clone()).uri(format!("{upstream}{path}"));
    for (k, v) in &parts.headers {
        if k != "content-length" {
            fwd = fwd.header(k, v);
        }
    }
    let resp = client.request(fwd.body(Body::from(body)).expect("request")).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((parts, bytes))
}

/// The SQS calls a queue's API rate limits (the data plane).
const SQS_THROTTLED: &[&str] = &[
    "AmazonSQS.SendMessage",
    "AmazonSQS.SendMessageBatch",
    "AmazonSQS.ReceiveMessage",
    "AmazonSQS.DeleteMessage",
    "AmazonSQS.DeleteMessageBatch",
    "AmazonSQS.ChangeMessageVisibility",
    "AmazonSQS.ChangeMessageVisibilityBatch",
];

async fn handle(req: Request<Body>, client: &Client<HttpConnector, Body>, upstream: &str, counts: &MotoFaultCounts) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = body.collect().await.map(|b| b.to_bytes()) else {
        return Response::builder().status(StatusCode::BAD_REQUEST).body(Body::empty()).expect("response");
    };
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
    if SQS_THROTTLED.contains(&target) {
        let rate = f64::from_bits(counts.sqs_rate.load(Ordering::Relaxed));
        if rate > 0.0 && rand::random::<f64>() < rate {
            counts.sqs_throttled.fetch_add(1, Ordering::Relaxed);
            let body = json!({"__type": "com.amazonaws.sqs#ThrottlingException", "message": "Rate exceeded (the sluice fault proxy)"});
            return Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .header("content-type", "application/x-amz-json-1.0")
                .header("x-amzn-query-error", "ThrottlingException;Sender")
                .header("x-amzn-requestid", "sluice-moto-fault-proxy")
                .body(Body::from(body.to_string()))
                .expect("response");
        }
        counts.sqs_passed.fetch_add(1, Ordering::Relaxed);
    }
    let rate = f64::from_bits(counts.rate.load(Ordering::Relaxed));
    let mut request: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let records = request.get("Records").and_then(Value::as_array).cloned();
    let (body, failed) = match records {
        Some(records) if target.ends_with(".PutRecords") && rate > 0.0 => {
            let failed: Vec<bool> = records.iter().map(|_| rand::random::<f64>() < rate).collect();
            let kept: Vec<Value> = records.iter().zip(&failed).filter(|(_, f)| !**f).map(|(r, _)| r.clone()).collect();
            request["Records"] = Value::Array(kept);
            (bytes::Bytes::from(request.to_string()), failed)
        }
        _ => (bytes, Vec::new()),
    };
    let n_failed = failed.iter().filter(|f| **f).count();
    if n_failed > 0 && n_failed == failed.len() {
        // Nothing left to write: answer for moto.
        counts.failed.fetch_add(n_failed as u64, Ordering::Relaxed);
        let records: Vec<Value> = failed.iter().map(|_| refused()).collect();
        return json_response(StatusCode::OK, &json!({"FailedRecordCount": n_failed, "Records": records}));
    }
    let (rparts, rbytes) = match forward(client, upstream, &parts, body).await {
        Ok(r) => r,
        Err(e) => return Response::builder().status(StatusCode::BAD_GATEWAY).body(Body::from(e)).expect("response"),
    };
    if n_failed == 0 || !rparts.status.is_success() {
        counts.written.fetch_add((failed.len() - n_failed) as u64, Ordering::Relaxed);
        let mut resp = Response::from_parts(rparts, Body::from(rbytes));
        resp.headers_mut().remove("content-length");
        return resp;
    }
    // Splice the refused records back into moto's answer, each at its place in the request.
    let answer: Value = serde_json::from_slice(&rbytes).unwrap_or(Value::Null);
    let mut written = answer["Records"].as_array().cloned().unwrap_or_default().into_iter();
    let records: Vec<Value> = failed.iter().map(|f| if *f { refused() } else { written.next().unwrap_or_else(refused) }).collect();
    let moto_failed = answer["FailedRecordCount"].as_u64().unwrap_or(0);
    counts.failed.fetch_add(n_failed as u64, Ordering::Relaxed);
    counts.written.fetch_add((failed.len() - n_failed) as u64, Ordering::Relaxed);
    let mut out = answer.clone();
    out["Records"] = Value::Array(records);
    out["FailedRecordCount"] = json!(moto_failed + n_failed as u64);
    json_response(StatusCode::OK, &out)
}

fn refused() -> Value {
    json!({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded for shard shardId-000000000000 in stream (the sluice fault proxy)."})
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-requestid", "sluice-moto-fault-proxy")
        .body(Body::from(body.to_string()))
        .expect("response")
}
