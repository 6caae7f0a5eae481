//! The drain loop: the governor's control loop, the pollers (receive, wait for the budget,
//! process), and the fleet-wide budget shared through the limiter.

use crate::{FLEET_BUDGET_KEY, STORE_PROBE, Worker};
use sluice_core::backoff::Backoff;
use sluice_core::control::REFRESH as CONTROL_REFRESH;
use sluice_core::governor::{Adjustment, INTERACTIVE_P99_KEY};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl Worker {
    /// The drain governor's control loop: every tick, the signals of the tick just ended set
    /// the admitted rate.
    pub(crate) async fn govern(&self, shutdown: CancellationToken) {
        let m = &self.b.metrics;
        let mut tick = tokio::time::interval(self.governor.config().tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_logged = self.governor.limit();
        let mut backoffs = m.store_backoffs.get();
        let mut enqueued = m.enqueued.get();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // EnqueueBulk at work in this process slows chat too: not the calm.
            if m.enqueued.get() != enqueued {
                enqueued = m.enqueued.get();
                self.governor.hold_calm();
            }
            // This process's chat, and the worst gateway's anywhere (a reading lapses with its gateway).
            let remote = self.b.limiter.highest(INTERACTIVE_P99_KEY).await.ok().flatten().map(|ms| Duration::from_secs_f64(ms / 1000.0));
            let p99 = m.interactive_persist.p99().max(remote);
            let lag = if self.config.watch_runtime_lag { m.runtime_lag.p99() } else { None };
            // Failures the bulk lane saw, and throttling the store absorbed with waits of its own
            // (on any lane: interactive writes throttled are the first thing to protect).
            let absorbed = m.store_backoffs.get() - backoffs;
            backoffs += absorbed;
            let failures = self.store_failures.swap(0, Ordering::Relaxed) + absorbed;
            let before = self.governor.limit();
            if let Adjustment::Cut { to, why, .. } = self.governor.adjust_with_lag_at(std::time::Instant::now(), p99, lag, failures) {
                m.drain_cuts.inc();
                // A log line per large step, not per tick.
                if to < 0.5 * last_logged {
                    tracing::info!(from = before.round(), to = to.round(), %why, "drain governor cut the bulk rate");
                    last_logged = to;
                }
            }
            let limit = self.governor.limit();
            if limit > 2.0 * last_logged {
                tracing::info!(to = limit.round(), "drain governor raised the bulk rate");
                last_logged = limit;
            }
            m.drain_limit.set(limit);
            m.interactive_persist_p99_seconds.set(p99.map_or(0.0, |d| d.as_secs_f64()));
            m.runtime_lag_p99_seconds.set(lag.map_or(0.0, |d| d.as_secs_f64()));
        }
    }

    pub(crate) async fn poll(&self, shutdown: CancellationToken) {
        let backoff = Backoff { base: Duration::from_millis(50), cap: Duration::from_secs(5), max_attempts: u32::MAX };
        let mut failures = 0u32;
        let mut probes = 0u32;
        while !shutdown.is_cancelled() {
            if self.store_down.load(Ordering::Relaxed) {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(STORE_PROBE.delay(probes).unwrap_or(STORE_PROBE.cap)) => {}
                }
                match self.b.store.ping().await {
                    Ok(()) => {
                        if self.store_down.swap(false, Ordering::Relaxed) {
                            tracing::info!("the store answers again; draining");
                        }
                        probes = 0;
                    }
                    Err(e) => {
                        probes = probes.saturating_add(1);
                        tracing::debug!(error = %e, "the store is still down");
                        continue;
                    }
                }
            }
            if self.controls().drain().paused {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(CONTROL_REFRESH) => continue,
                }
            }
            // No more than about a tick of the admitted rate at a time.
            let max = self.governor.batch_hint(self.config.batch_size);
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.b.queue.receive(max, self.config.wait, self.config.visibility) => r,
            };
            let ok = match received {
                Ok(batch) if batch.is_empty() => true,
                Ok(batch) => {
                    // Only what will be written takes from the budget (not what is held).
                    let admitted = self.admit(batch).await;
                    let n = admitted.len() as u64;
                    let wait = if n == 0 {
                        Duration::ZERO
                    } else {
                        self.b.metrics.drain_admitted.inc_by(n);
                        self.governor.reserve(n).max(self.fleet_wait(n).await)
                    };
                    if !wait.is_zero() {
                        tokio::select! {
                            _ = shutdown.cancelled() => {
                                let _ = self.b.queue.release(&admitted.receipts()).await;
                                break;
                            }
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                    self.persist_admitted(admitted).await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "queue receive failed");
                    false
                }
            };
            if ok {
                failures = 0;
            } else {
                self.b.metrics.retries.inc();
                let delay = backoff.delay(failures).unwrap_or(backoff.cap);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    /// How long `n` more messages wait for the fleet's budget (none when there is no budget,
    /// or the limits backend cannot be reached: the worker's own governor still holds).
    pub(crate) async fn fleet_wait(&self, n: u64) -> Duration {
        let operator = self.controls().drain().rate;
        let rate = match (self.config.fleet_rate, operator) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(r) => r,
                None => return Duration::ZERO,
            },
        };
        let burst = rate * self.governor.config().tick.as_secs_f64();
        self.b.limiter.lend(FLEET_BUDGET_KEY, n, rate, burst).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "fleet drain budget unavailable; only this worker's governor limits the drain");
            Duration::ZERO
        })
    }
}
