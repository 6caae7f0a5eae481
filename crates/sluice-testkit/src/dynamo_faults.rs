//! A loopback proxy in front of DynamoDB Local that answers a share of TransactWriteItems
//! calls with real DynamoDB cancellation responses, since DynamoDB Local itself never raises
//! TransactionConflict and never throttles. An answered call never reaches DynamoDB Local, as
//! when DynamoDB cancels a transaction; everything else is forwarded unchanged.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the proxy injected.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub conflicts: AtomicU64,
    pub throttles: AtomicU64,
    pub forwarded: AtomicU64,
    /// The share of TransactWriteItems calls cancelled, as `f64` bits (changeable while running).
    rate: AtomicU64,
}

/// A running fault proxy; stops when dropped.
pub struct DynamoFaultProxy {
    pub addr: SocketAddr,
    pub counts: Arc<FaultCounts>,
    task: tokio::task::JoinHandle<()>,
}

impl DynamoFaultProxy {
    /// Proxies to `upstream` (`http://127.0.0.1:port`), cancelling a `rate` share of
    /// TransactWriteItems calls: two thirds with TransactionConflict on one item, one third
    /// with ThrottlingError.
    pub async fn start(upstream: &str, rate: f64) -> DynamoFaultProxy {
        let counts = Arc::new(FaultCounts::default());
        counts.rate.store(rate.to_bits(), Ordering::Relaxed);
        let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let upstream = upstream.trim_end_matches('/').to_string();
        let state = (client, upstream, counts.clone());
        let app = Router::new().fallback(move |req: Request<Body>| {
            let (client, upstream, counts) = state.clone();
            let rate = f64::from_bits(counts.rate.load(Ordering::Relaxed));
            async move { handle(req, &client, &upstream, &counts, rate).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        DynamoFaultProxy { addr, counts, task }
    }

    /// Changes the share of transactions cancelled from now on (0 turns injection off).
    pub fn set_rate(&self, rate: f64) {
        self.counts.rate.store(rate.to_bits(), Ordering::Relaxed);
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

async fn handle(
    req: Request<Body>,
    client: &Client<HttpConnector, Body>,
    upstream: &str,
    counts: &FaultCounts,
    rate: f64,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Response::builder().status(StatusCode::BAD_REQUEST).body(Body::empty()).expect("response"),
    };
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
    if target.ends_with(".TransactWriteItems") && rand::random::<f64>() < rate {
        let items = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["TransactItems"].as_array().map(Vec::len))
            .unwrap_or(1)
            .max(1);
        let throttle = rand::random::<f64>() < 1.0 / 3.0;
        let (code, message) = if throttle {
            counts.throttles.fetch_add(1, Ordering::Relaxed);
            ("ThrottlingError", "Throughput exceeds the current capacity of your table or index.")
        } else {
            counts.conflicts.fetch_add(1, Ordering::Relaxed);
            ("TransactionConflict", "Transaction is ongoing for the item")
        };
        let victim = rand::random_range(0..items);
        let reasons: Vec<serde_json::Value> = (0..items)
            .map(|i| if i == victim { serde_json::json!({"Code": code, "Message": message}) } else { serde_json::json!({"Code": "None"}) })
            .collect();
        let names: Vec<&str> = (0..items).map(|i| if i == victim { code } else { "None" }).collect();
        let body = serde_json::json!({
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
            "Message": format!("Transaction cancelled, please refer cancellation reasons for specific reasons [{}]", names.join(", ")),
            "CancellationReasons": reasons,
        });
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .header("content-type", "application/x-amz-json-1.0")
            .header("x-amzn-requestid", "sluice-fault-proxy")
            .body(Body::from(body.to_string()))
            .expect("response");
    }
    counts.forwarded.fetch_add(1, Ordering::Relaxed);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut fwd = Request::builder().method(parts.method).uri(format!("{upstream}{path}"));
    for (k, v) in &parts.headers {
        fwd = fwd.header(k, v);
    }
    let fwd = fwd.body(Body::from(bytes)).expect("request");
    match client.request(fwd).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => Response::builder().status(StatusCode::BAD_GATEWAY).body(Body::from(e.to_string())).expect("response"),
    }
}
