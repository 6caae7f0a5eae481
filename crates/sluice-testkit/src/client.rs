//! Clients of a running Sluice for tests and benchmarks: the WebSocket contract v1, gRPC with
//! the service token, `/metrics` parsed, plain HTTP GETs, and a process's resident memory.

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long [`Ws::recv`] waits for a frame.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(15);

/// A gRPC client of the server at `addr`, calling with the service token.
pub async fn grpc(addr: SocketAddr, service_token: &str) -> anyhow::Result<sluice_proto::client::Client> {
    let bearer = sluice_proto::client::Bearer::service(service_token)?;
    sluice_proto::client::connect(addr, bearer).await.with_context(|| format!("cannot connect to gRPC at {addr}"))
}

/// A WebSocket client speaking the v1 JSON frames; it panics on what a test must not see.
pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        Ws { stream }
    }

    pub async fn send(&mut self, v: Value) {
        self.stream.send(Message::Text(v.to_string().into())).await.expect("send a frame");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.stream.send(m).await.expect("send a frame");
    }

    /// The next JSON frame (pings and pongs skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(RECV_TIMEOUT, self.stream.next()).await.expect("a frame in time").expect("open").expect("a frame");
            match m {
                Message::Text(t) => return serde_json::from_str(&t).expect("a JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next frame of type `t`, skipping others.
    pub async fn recv_type(&mut self, t: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == t {
                return v;
            }
        }
    }

    /// Sends a message and waits for its ack (or error).
    pub async fn say(&mut self, room: &str, id: &str, body: &str) -> Value {
        self.send(json!({"type": "send", "room": room, "client_msg_id": id, "body": body})).await;
        loop {
            let v = self.recv().await;
            if (v["type"] == "ack" || v["type"] == "error") && v.get("client_msg_id").or(v.get("ref")) == Some(&json!(id)) {
                return v;
            }
        }
    }

    /// Whether any frame arrives within `d` (for "nothing was sent" checks).
    pub async fn quiet_for(&mut self, d: Duration) -> Option<Value> {
        match tokio::time::timeout(d, self.stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => Some(serde_json::from_str(&t).expect("a JSON frame")),
            _ => None,
        }
    }
}

/// A plain HTTP/1.1 GET over a raw socket; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, &[]).await
}

/// [`http_get`] with extra request headers (`Authorization` for the admin API).
pub async fn http_get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n").as_bytes()).await.expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    let status = buf.get(9..12).and_then(|s| s.parse().ok()).expect("an HTTP status line");
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// `VmRSS` of a process, from /proc.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// A parsed Prometheus text exposition.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub HashMap<String, f64>);

/// `/metrics` of the listener at `addr`.
pub async fn fetch_metrics(addr: SocketAddr) -> anyhow::Result<Metrics> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://{addr}/metrics").parse()?;
    let resp = client.get(uri).await.context("GET /metrics")?;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Metrics::parse(&String::from_utf8_lossy(&body)))
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let samples = text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        });
        Metrics(samples.collect())
    }

    /// The sum of every sample of `name` whose labels include all of `labels` (`service="sqs"`).
    pub fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.0.iter().filter(|(k, _)| k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(l))).map(|(_, v)| v).sum()
    }

    /// `self - before`, sample by sample.
    pub fn since(&self, before: &Metrics) -> Metrics {
        Metrics(self.0.iter().map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0.0))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sum_by_labels() {
        let m = Metrics::parse(
            "# HELP x\nsluice_aws_requests_total{op=\"Query\",service=\"dynamodb\"} 3\n\
             sluice_aws_requests_total{op=\"SendMessageBatch\",service=\"sqs\"} 2\nsluice_enqueued_total 7\n",
        );
        assert_eq!(m.sum("sluice_aws_requests_total", &[]), 5.0);
        assert_eq!(m.sum("sluice_aws_requests_total", &["service=\"sqs\""]), 2.0);
        assert_eq!(m.sum("sluice_enqueued_total", &[]), 7.0);
        let later = Metrics::parse("sluice_enqueued_total 10\n");
        assert_eq!(later.since(&m).sum("sluice_enqueued_total", &[]), 3.0);
    }
}
