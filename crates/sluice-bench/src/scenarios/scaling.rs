//! Scenario `scaling`: the drain rate with 1, 2, 4, 8, ... workers. Each count gets a fresh
//! `sluice serve` whose store adds a remote store's round trip to every call
//! (`--store-latency-ms`, 5-10 ms like a DynamoDB transaction) and whose worker receives at
//! most 10 messages at a time, like SQS. One worker here is one queue poller
//! (`--worker-concurrency`), which is what one more worker replica adds. A campaign of
//! workers x `--messages-per-worker` one-offs is enqueued, and the rate is the messages over
//! the time from the first EnqueueBulk to the last persisted.

use crate::args::{ScalingArgs, TargetArgs};
use crate::campaign::Campaign;
use crate::report::{Line, Report, Series};
use crate::stats::Progress;
use crate::target::{Launch, Target as Server};
use anyhow::bail;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CHUNK: u64 = 10_000;

pub async fn run(program: &Path, target: &TargetArgs, a: &ScalingArgs, run: &str) -> anyhow::Result<Report> {
    if target.http.is_some() {
        bail!("scaling starts its own servers (one per worker count); it cannot use --http/--grpc");
    }
    let latency = a.latency_ms;
    let (lo, hi) = (latency.min.as_secs_f64() * 1000.0, latency.max.as_secs_f64() * 1000.0);
    let mut report = Report::new(
        "scaling",
        serde_json::json!({"workers": a.workers, "messages_per_worker": a.messages_per_worker, "latency_ms": [lo, hi], "batch": a.batch}),
    );
    let mut rates: Vec<(f64, f64)> = vec![];
    for &n in &a.workers {
        let launch = Launch {
            program,
            args: vec![
                format!("--worker-concurrency={n}"),
                format!("--worker-batch={}", a.batch),
                format!("--store-latency-ms={}", a.latency_ms),
            ],
            env: vec![],
        };
        let server = Server::start(launch, &target.server_args).await?;
        let messages = n as u64 * a.messages_per_worker;
        let rate = drain(&server, messages, &format!("{run}-w{n}")).await?;
        server.stop().await;
        eprintln!("scaling: {n} workers drained {messages} messages at {rate:.0} msg/s");
        rates.push((n as f64, rate));
    }
    let one = rates.first().map_or(1.0, |&(n, r)| r / n);
    for &(n, rate) in &rates {
        report.figure(&format!("{n} workers"), rate, "msg/s", None);
        report.figure(&format!("{n} workers: speed-up over n x one worker"), rate / (one * n), "", None);
    }
    let expected = 1000.0 * a.batch as f64 / (latency.mean_ms());
    report.note(format!(
        "One worker waits about {:.1} ms per batch of {} in the store, so it can drain at most about {expected:.0} msg/s; n workers \
         scale linearly while the store's own limit (one writer, one fsync per group commit) and the two cores allow.",
        latency.mean_ms(),
        a.batch
    ));
    report.series.push(Series {
        name: "rate".into(),
        title: format!("Drain rate by workers (store latency {} ms, batches of {})", a.latency_ms, a.batch),
        x_label: "workers".into(),
        y_label: "msg/s".into(),
        lines: vec![
            Line { name: "measured".into(), points: rates.clone() },
            Line { name: "n x one worker".into(), points: rates.iter().map(|&(n, _)| (n, n * one)).collect() },
        ],
    });
    Ok(report)
}

/// Enqueues `messages` one-offs and waits until all are persisted; returns messages/s.
async fn drain(server: &Server, messages: u64, campaign: &str) -> anyhow::Result<f64> {
    let mut g = server.grpc().await?;
    let persisted = Arc::new(AtomicU64::new(0));
    let shown = persisted.clone();
    let progress = Progress::start("scaling", move || format!("persisted {}", shown.load(Ordering::Relaxed)));
    let start = Instant::now();
    let sender = format!("{campaign}-shop");
    let c = Campaign { id: campaign, tenant: None, sender: &sender, body: "Spring sale" };
    c.enqueue(&g, messages, |i| format!("{campaign}-r{i}"), CHUNK, 4, &AtomicU64::new(0)).await?;
    c.wait_persisted(&mut g, messages, Duration::from_millis(20), Duration::from_secs(600), &persisted, || server.log_tail()).await?;
    drop(progress);
    Ok(messages as f64 / start.elapsed().as_secs_f64())
}
