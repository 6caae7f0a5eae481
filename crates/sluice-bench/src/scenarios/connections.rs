//! Scenario `connections`: N idle WebSocket connections opened from several loopback source
//! addresses (one address has about 28,000 ephemeral ports), held, then checked: a sample
//! of them must still answer an `inbox` frame. Figures: connections held, connect rate and the
//! server's resident memory per connection (growth from before the first connection).

use crate::args::ConnectionsArgs;
use crate::report::{Line, Report, Series, Target};
use crate::stats::{Latency, Progress};
use crate::target::Target as Server;
use anyhow::{Context, bail};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt, stream};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub const CONNECTIONS_TARGET: f64 = 50_000.0;
/// The product's target for an idle connection's server memory.
pub const KIB_PER_CONNECTION_TARGET: f64 = 4.0;
/// Ephemeral ports used per source address (the default range has 28,232).
const PORTS_PER_ADDR: u32 = 25_000;
/// Connections checked for an answer after the hold.
const CHECKED: usize = 100;
/// Memory samples taken while connecting, for the plot.
const SAMPLES: u32 = 20;

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

pub async fn run(server: &Server, a: &ConnectionsArgs, run: &str) -> anyhow::Result<Report> {
    let addrs = a.source_addrs.map_or(a.count.div_ceil(PORTS_PER_ADDR), u32::from).max(1);
    let mut report = Report::new(
        "connections",
        serde_json::json!({"count": a.count, "source_addrs": addrs, "parallel": a.parallel, "hold_secs": a.hold_secs}),
    );
    let users = 1000.min(a.count as usize);
    let tokens: Arc<Vec<String>> = Arc::new((0..users).map(|i| server.token(&format!("{run}-c{i}"))).collect());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = server.rss_bytes();
    let opened = Arc::new(AtomicU64::new(0));
    let count = opened.clone();
    let progress = Progress::start("connections", move || format!("open {}", count.load(Ordering::Relaxed)));
    let started = Instant::now();
    let step = (a.count / SAMPLES).max(1);
    let mut memory = vec![(0.0, 0.0)];
    let mut handshake = Latency::default();
    let mut sinks: Vec<SplitSink<Socket, Message>> = Vec::with_capacity(a.count as usize);
    let (answered, closed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut connects = stream::iter(0..a.count)
        .map(|i| {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % addrs) as u8));
            let url = format!("ws://{}/v1/ws?token={}", server.http, tokens[i as usize % users]);
            connect(source, server.http, url)
        })
        .buffer_unordered(a.parallel as usize);
    while let Some(result) = connects.next().await {
        let (socket, took) = result.with_context(|| format!("after {} connections", sinks.len()))?;
        handshake.record(took);
        let (sink, source) = socket.split();
        sinks.push(sink);
        tokio::spawn(idle_reader(source, answered.clone(), closed.clone()));
        let n = opened.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(step as u64)
            && let (Some(before), Some(now)) = (rss_before, server.rss_bytes())
        {
            memory.push((n as f64, now.saturating_sub(before) as f64 / (1 << 20) as f64));
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(a.hold_secs)).await;
    drop(progress);
    let rss_after = server.rss_bytes();

    // Every connection still there, and a sample answering?
    let stride = (sinks.len() / CHECKED).max(1);
    let mut asked = 0;
    for s in sinks.iter_mut().step_by(stride).take(CHECKED) {
        if s.send(Message::text(r#"{"type":"inbox"}"#)).await.is_ok() {
            asked += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered.load(Ordering::Relaxed) < asked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answered = answered.load(Ordering::Relaxed);
    let closed = closed.load(Ordering::Relaxed) as usize;
    let held = sinks.len() - closed;
    report.figure("connections held", held as f64, "", Some(Target::AtLeast(CONNECTIONS_TARGET.min(a.count as f64))));
    report.figure("connect rate", a.count as f64 / connect_secs, "conn/s", None);
    report.figure("handshake p50", handshake.ms(0.5), "ms", None);
    report.figure("handshake p99", handshake.ms(0.99), "ms", None);
    report.figure("sampled connections answering after the hold", answered as f64, "", Some(Target::AtLeast(CHECKED.min(held) as f64)));
    match (rss_before, rss_after) {
        (Some(before), Some(after)) => {
            let per = after.saturating_sub(before) as f64 / a.count as f64 / 1024.0;
            report.figure("server memory per connection", per, "KiB", Some(Target::AtMost(KIB_PER_CONNECTION_TARGET)));
            report.figure("server resident memory", after as f64 / (1 << 20) as f64, "MiB", None);
        }
        _ => report.note("The server's memory was not measured (give --server-pid for a running server)."),
    }
    report.series.push(Series {
        name: "memory".into(),
        title: "Server memory growth by open connections".into(),
        x_label: "open connections".into(),
        y_label: "MiB above idle".into(),
        lines: vec![Line { name: "resident memory".into(), points: memory }],
    });
    report.note(format!("{addrs} loopback source addresses; {} handshakes in flight.", a.parallel));
    for mut s in sinks {
        let _ = s.close().await;
    }
    Ok(report)
}

async fn connect(source: IpAddr, server: SocketAddr, url: String) -> anyhow::Result<(Socket, Duration)> {
    let started = Instant::now();
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("bind {source}"))?;
    let tcp = socket.connect(server).await.with_context(|| format!("connect from {source}"))?;
    tcp.set_nodelay(true)?;
    // An idle client needs little buffer; the defaults reserve 128 KiB per socket.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await.context("WebSocket handshake")?;
    Ok((ws, started.elapsed()))
}

/// Reads like an idle client (answering pings), counts `inbox` replies, and counts the
/// connection as closed when it ends.
async fn idle_reader(mut source: SplitStream<Socket>, answered: Arc<AtomicU64>, closed: Arc<AtomicU64>) {
    while let Some(Ok(m)) = source.next().await {
        match m {
            Message::Text(t) if t.contains(r#""type":"inbox""#) => {
                answered.fetch_add(1, Ordering::Relaxed);
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    closed.fetch_add(1, Ordering::Relaxed);
}

/// Fails early with the fix when this process cannot hold `count` sockets (the server it
/// starts inherits the limit).
pub fn check_limits(count: u32) -> anyhow::Result<()> {
    let want = count as u64 + 512;
    let got = crate::target::raise_nofile(want);
    if got < want {
        bail!(
            "the open-file limit is {got} and cannot be raised from here (hard limit), but {count} connections need {want}: \
             raise it (`ulimit -Hn {want}` as root) or use --count {}",
            got.saturating_sub(512)
        );
    }
    Ok(())
}
