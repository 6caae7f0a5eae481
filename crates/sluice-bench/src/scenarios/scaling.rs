//! Scenario `scaling`: the drain rate with 1, 2, 4, 8, ... workers. Each count gets a fresh
//! `sluice serve`, run inside the bench's process through the library, whose store adds a
//! remote store's round trip to every call (`sluice_testkit::latency`, `--latency-ms` 5-10 ms
//! like a DynamoDB transaction) and whose worker receives at
//! most 10 messages at a time, like SQS. One worker here is one queue poller
//! (`--worker-concurrency`), which is what one more worker replica adds. A campaign of
//! workers x `--messages-per-worker` one-offs is enqueued, and the rate is the messages over
//! the time from the first EnqueueBulk to the last persisted.
//!
//! With `--backend aws` each worker is a `sluice serve` process of its own with one poller, on
//! one SQS FIFO queue (moto) and DynamoDB; given the unkind proxy (DynamoDB's transaction
//! conflicts and partition budget, and `--hold-ms` for its transaction latency) it shows
//! whether more workers give more throughput or only more conflicts:
//!
//! ```text
//! scripts/with-test-services.sh sh -c 'target/debug/sluice-unkind-dynamodb \
//!     --upstream $SLUICE_TEST_DYNAMODB_LOCAL_URL --port 18000 --hold-ms 20 & \
//!   target/release/sluice-bench scaling --backend aws --workers 1,2,4,8 \
//!     --dynamodb-url http://127.0.0.1:18000 --messages-per-worker 300'
//! ```

use crate::args::{ScalingArgs, ScalingBackend, TargetArgs};
use crate::campaign::Campaign;
use crate::report::{Line, Report, Series};
use crate::stats::Progress;
use crate::target::{Launch, Metrics, Target as Server};
use anyhow::bail;
use sluice_testkit::latency::LatencyStore;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CHUNK: u64 = 10_000;

pub async fn run(program: &Path, target: &TargetArgs, a: &ScalingArgs, run: &str) -> anyhow::Result<Report> {
    if target.http.is_some() {
        bail!("scaling starts its own servers (one per worker count); it cannot use --http/--grpc");
    }
    if a.backend == ScalingBackend::Aws {
        return run_aws(program, target, a, run).await;
    }
    let latency = a.latency_ms;
    let (lo, hi) = (latency.min.as_secs_f64() * 1000.0, latency.max.as_secs_f64() * 1000.0);
    let mut report = Report::new(
        "scaling",
        serde_json::json!({"workers": a.workers, "messages_per_worker": a.messages_per_worker, "latency_ms": [lo, hi], "batch": a.batch}),
    );
    let mut rates: Vec<(f64, f64)> = vec![];
    for &n in &a.workers {
        let args: Vec<String> = [format!("--worker-concurrency={n}"), format!("--worker-batch={}", a.batch)]
            .into_iter()
            .chain(target.server_args.iter().cloned())
            .collect();
        let server = Server::in_process(&args, |b| b.store = Arc::new(LatencyStore::new(b.store.clone(), latency))).await?;
        let messages = n as u64 * a.messages_per_worker;
        let rate = drain(&server, messages, &format!("{run}-w{n}")).await?;
        server.stop().await;
        eprintln!("scaling: {n} workers drained {messages} messages at {rate:.0} msg/s");
        rates.push((n as f64, rate));
    }
    for &(n, rate) in &rates {
        report.figure(&format!("{n} workers"), rate, "msg/s", None);
    }
    speed_up(&mut report, &rates, format!("Drain rate by workers (store latency {} ms, batches of {})", a.latency_ms, a.batch));
    let expected = 1000.0 * a.batch as f64 / (latency.mean_ms());
    report.note(format!(
        "One worker waits about {:.1} ms per batch of {} in the store, so it can drain at most about {expected:.0} msg/s; n workers \
         scale linearly while the store's own limit (one writer, one fsync per group commit) and the two cores allow.",
        latency.mean_ms(),
        a.batch
    ));
    Ok(report)
}

/// The speed-up of each worker count over n times one worker, and the rate plotted against it.
fn speed_up(report: &mut Report, rates: &[(f64, f64)], title: String) {
    let one = rates.first().map_or(1.0, |&(n, r)| r / n);
    for &(n, rate) in rates {
        report.figure(&format!("{n} workers: speed-up over n x one worker"), rate / (one * n), "", None);
    }
    report.series.push(Series {
        name: "rate".into(),
        title,
        x_label: "workers".into(),
        y_label: "msg/s".into(),
        lines: vec![
            Line { name: "measured".into(), points: rates.to_vec() },
            Line { name: "n x one worker".into(), points: rates.iter().map(|&(n, _)| (n, n * one)).collect() },
        ],
    });
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

/// The drain rate of 1, 2, 4, ... worker processes on the AWS backends, with the conflicts and
/// throttles the store met per message.
async fn run_aws(program: &Path, target: &TargetArgs, a: &ScalingArgs, run: &str) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "scaling",
        serde_json::json!({"backend": "aws", "workers": a.workers, "messages_per_worker": a.messages_per_worker, "batch": a.batch}),
    );
    let mut rates: Vec<(f64, f64)> = vec![];
    let mut conflicts: Vec<(f64, f64)> = vec![];
    for &n in &a.workers {
        let prefix = format!("bench{run}w{n}").replace('-', "");
        let env = super::emulators::env(&a.emulators, &prefix, "scaling")?;
        super::emulators::migrate(program, &env).await?;
        let mut servers = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let args = vec!["--worker-concurrency=1".to_string(), format!("--worker-batch={}", a.batch)];
            servers.push(Server::start(Launch { program, args, env: env.clone() }, &target.server_args).await?);
        }
        let messages = n as u64 * a.messages_per_worker;
        let before = fleet_metrics(&servers).await?;
        let rate = drain(&servers[0], messages, &format!("{run}-w{n}")).await?;
        let m = fleet_metrics(&servers).await?.since(&before);
        for s in servers {
            s.stop().await;
        }
        let per = |reason: &str| {
            (m.sum("sluice_aws_retryable_errors_total", &["service=\"dynamodb\"", &format!("reason=\"{reason}\"")]) / messages as f64)
                .max(0.0)
        };
        let conflict = per("TransactionConflict");
        let throttled = per("ThrottlingError") + per("throttled_or_unavailable");
        let transactions = m.sum("sluice_aws_requests_total", &["service=\"dynamodb\"", "op=\"TransactWriteItems\""]) / messages as f64;
        eprintln!(
            "scaling: {n} worker processes drained {messages} at {rate:.0} msg/s; {conflict:.3} conflicts, {throttled:.3} throttles, {transactions:.2} transactions per message"
        );
        report.figure(&format!("{n} workers"), rate, "msg/s", None);
        report.figure(&format!("{n} workers: transaction conflicts"), conflict, "per msg", None);
        report.figure(&format!("{n} workers: throttled calls"), throttled, "per msg", None);
        report.figure(&format!("{n} workers: TransactWriteItems calls"), transactions, "per msg", None);
        rates.push((n as f64, rate));
        conflicts.push((n as f64, conflict));
    }
    speed_up(&mut report, &rates, "Drain rate by worker processes (AWS backends)".into());
    report.note(
        "Each worker is a `sluice serve --backend aws` process with one queue poller (batches of --batch) on one SQS FIFO \
         queue (moto) and DynamoDB as --dynamodb-url gives it; the conflicts and throttles are what the workers' DynamoDB \
         calls were answered (sluice_aws_retryable_errors_total), per message drained. On one machine the emulators and \
         every worker share its cores, so the curve bends where the machine, not the design, runs out.",
    );
    report.series.push(Series {
        name: "conflicts".into(),
        title: "Transaction conflicts per message by worker processes".into(),
        x_label: "workers".into(),
        y_label: "conflicts/msg".into(),
        lines: vec![Line { name: "TransactionConflict".into(), points: conflicts }],
    });
    Ok(report)
}

/// The metrics of every server, summed.
async fn fleet_metrics(servers: &[Server]) -> anyhow::Result<Metrics> {
    let mut sum = Metrics(Default::default());
    for s in servers {
        for (k, v) in s.metrics().await?.0 {
            *sum.0.entry(k).or_default() += v;
        }
    }
    Ok(sum)
}
