//! Fleet readings: every process (gateway or worker) reports what it sees once a second
//! (connections, drain and enqueue rates, conflicts, throttling, its governor's limit,
//! interactive latency) through the limits port, and any gateway reads the whole fleet's sums
//! and maxima from there: Redis on the distributed backends, this process on the embedded
//! ones. The operations console shows these, so it never depends on which gateway answers.

use crate::limits::Limiter;
use crate::metrics::Metrics;
use prometheus::core::Collector;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often each process reports.
pub const EVERY: Duration = Duration::from_secs(1);
/// How long a report stays valid: a process that stops reporting drops out of the sums.
pub const TTL: Duration = Duration::from_secs(3);

const UP: &str = "fleet:up";
const CONNECTIONS: &str = "fleet:connections";
const DRAIN_RATE: &str = "fleet:drain_rate";
const ENQUEUE_RATE: &str = "fleet:enqueue_rate";
const CONFLICTS: &str = "fleet:conflicts_per_s";
const THROTTLES: &str = "fleet:throttles_per_s";
const DRAIN_LIMIT: &str = "fleet:drain_limit";
const P50: &str = "fleet:interactive_p50_ms";
const P99: &str = "fleet:interactive_p99_ms";

/// The whole fleet's figures of the last second.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Fleet {
    /// Processes reporting (gateways and workers).
    pub processes: usize,
    /// Open WebSocket connections.
    pub connections: f64,
    /// Messages the workers persisted from the queue per second.
    pub drain_rate: f64,
    /// Messages EnqueueBulk accepted into the queue per second.
    pub enqueue_rate: f64,
    /// Optimistic-lock conflicts per second (the store retries them).
    pub conflicts_per_s: f64,
    /// AWS calls answered with throttling per second.
    pub throttles_per_s: f64,
    /// The sum of the workers' governor limits (messages/s).
    pub drain_limit: f64,
    /// The highest of the gateways' interactive persist p50 and p99 (ms), when any chatted.
    pub interactive_p50_ms: Option<f64>,
    pub interactive_p99_ms: Option<f64>,
}

/// The counters a process turns into per-second rates.
#[derive(Clone, Copy)]
struct Counters {
    drained: u64,
    enqueued: u64,
    conflicts: u64,
    throttles: u64,
}

impl Counters {
    fn of(m: &Metrics) -> Self {
        let mut throttles = 0;
        for family in m.aws_retryable.collect() {
            for metric in family.get_metric() {
                let conflict = metric.get_label().iter().any(|l| l.name() == "reason" && l.value() == "TransactionConflict");
                if !conflict {
                    throttles += metric.get_counter().get_value() as u64;
                }
            }
        }
        Counters { drained: m.drained.get(), enqueued: m.enqueued.get(), conflicts: m.conflicts.get(), throttles }
    }
}

/// Reports this process's figures every [`EVERY`] as `node` until `shutdown`. `worker`: it
/// runs a drain, whose governor limit counts.
pub async fn report(limiter: Arc<dyn Limiter>, metrics: Arc<Metrics>, node: String, worker: bool, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    // After a stall, one report rather than a burst of them over tiny intervals.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (Instant::now(), Counters::of(&metrics));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (now, counters) = (Instant::now(), Counters::of(&metrics));
        let secs = now.duration_since(last.0).as_secs_f64().max(1e-3);
        let rate = |new: u64, old: u64| new.saturating_sub(old) as f64 / secs;
        let mut readings = vec![
            (UP, 1.0),
            (CONNECTIONS, metrics.connections.get() as f64),
            (DRAIN_RATE, rate(counters.drained, last.1.drained)),
            (ENQUEUE_RATE, rate(counters.enqueued, last.1.enqueued)),
            (CONFLICTS, rate(counters.conflicts, last.1.conflicts)),
            (THROTTLES, rate(counters.throttles, last.1.throttles)),
        ];
        if worker {
            readings.push((DRAIN_LIMIT, metrics.drain_limit.get()));
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        if let Some(p50) = metrics.interactive_persist.p50() {
            readings.push((P50, ms(p50)));
        }
        if let Some(p99) = metrics.interactive_persist.p99() {
            readings.push((P99, ms(p99)));
        }
        last = (now, counters);
        for (key, value) in readings {
            if let Err(e) = limiter.report(key, &node, value, TTL).await {
                tracing::debug!(error = %e, key, "could not report a fleet reading");
                break;
            }
        }
    }
}

/// The fleet's figures: sums of the processes' readings, maxima of their latencies.
pub async fn read(limiter: &dyn Limiter) -> Result<Fleet, crate::error::HubError> {
    let (up, connections, drain_rate, enqueue_rate, conflicts, throttles, drain_limit, p50, p99) = tokio::join!(
        limiter.readings(UP),
        limiter.total(CONNECTIONS),
        limiter.total(DRAIN_RATE),
        limiter.total(ENQUEUE_RATE),
        limiter.total(CONFLICTS),
        limiter.total(THROTTLES),
        limiter.total(DRAIN_LIMIT),
        limiter.highest(P50),
        limiter.highest(P99),
    );
    Ok(Fleet {
        processes: up?.len(),
        connections: connections?,
        drain_rate: drain_rate?,
        enqueue_rate: enqueue_rate?,
        conflicts_per_s: conflicts?,
        throttles_per_s: throttles?,
        drain_limit: drain_limit?,
        interactive_p50_ms: p50?,
        interactive_p99_ms: p99?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::LocalLimiter;

    /// Reads until `ok` holds (the reports come once a second), at most 10 s.
    async fn until(limiter: &dyn Limiter, ok: impl Fn(&Fleet) -> bool) -> Fleet {
        for _ in 0..100 {
            let f = read(limiter).await.unwrap();
            if ok(&f) {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        read(limiter).await.unwrap()
    }

    #[tokio::test]
    async fn two_processes_add_up_and_a_stopped_one_drops_out() {
        let limiter: Arc<dyn Limiter> = Arc::new(LocalLimiter::new());
        let (a, b) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
        a.connections.set(3);
        b.connections.set(2);
        b.drain_limit.set(500.0);
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        tokio::spawn(report(limiter.clone(), a.clone(), "gw".into(), false, stop_a.clone()));
        tokio::spawn(report(limiter.clone(), b.clone(), "worker".into(), true, stop_b.clone()));
        let f = until(&*limiter, |f| f.processes == 2).await;
        assert_eq!((f.processes, f.connections, f.drain_limit), (2, 5.0, 500.0), "sums; only a worker's limit counts");
        b.drained.inc_by(700);
        a.enqueued.inc_by(1000);
        // Rates over the last interval (about a second, as the clock goes).
        let f = until(&*limiter, |f| f.drain_rate > 0.0 && f.enqueue_rate > 0.0).await;
        assert!(f.drain_rate > 0.0 && f.enqueue_rate > 0.0, "the counters' moves are reported: {f:?}");
        stop_a.cancel();
        let f = until(&*limiter, |f| f.processes == 1).await;
        assert_eq!((f.processes, f.connections), (1, 2.0), "the stopped gateway's readings lapsed");
        stop_b.cancel();
    }
}
