//! The accept gate: how fast EnqueueBulk queues one-offs while chat flows in this process.
//!
//! Recording a campaign's recipients and queueing its messages takes CPU and store time that
//! chat needs: unpaced, a million-recipient campaign accepted at 60,000 msg/s under chat
//! held chat's per-second p99 at 60-290 ms (24 ms before) for the 17 s it took, before the
//! drain even began (DESIGN.md
//! invariant 8 holds for the accept as for the drain). The gate is a second drain governor
//! ([`Governor`]) on the same signals (the interactive persist p99, the runtime lag, which
//! every gateway samples unless its target is 0, and the store's throttling), admitting
//! one-offs instead of drained messages.
//! Without chat it stays open: the accept runs at full speed, since nobody is there to
//! protect. A paced call takes longer; the producer is a batch job that can wait, chat cannot.

use sluice_core::governor::{Adjustment, Governor, GovernorConfig};
use sluice_core::metrics::Metrics;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

pub struct AcceptGate {
    governor: Governor,
    /// Whether chat persisted anything in this process in the last window (set each tick).
    chat: AtomicBool,
}

impl Default for AcceptGate {
    fn default() -> Self {
        let floor = DEFAULT_FLOOR as f64;
        AcceptGate::new(GovernorConfig { floor, initial: floor, ..GovernorConfig::default() })
    }
}

/// The fewest one-offs per second the gate admits, by default: a million-recipient campaign
/// is accepted within about eight minutes however busy chat is.
pub const DEFAULT_FLOOR: u32 = 2_000;

impl AcceptGate {
    pub fn new(config: GovernorConfig) -> Self {
        AcceptGate { governor: Governor::new(config), chat: AtomicBool::new(false) }
    }

    /// How many one-offs to build and queue in one batch: about a tick of the gate's rate
    /// while chat flows (so the work comes in small, even steps), else `max`.
    pub fn batch(&self, max: usize) -> usize {
        if self.chat.load(Ordering::Relaxed) { self.governor.batch_hint(max) } else { max }
    }

    /// Waits until `n` more one-offs may be queued (at once without chat).
    pub async fn admit(&self, n: usize) {
        if !self.chat.load(Ordering::Relaxed) {
            return;
        }
        let wait = self.governor.reserve(n as u64);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The gate's control loop, until `shutdown`: every tick, this process's chat signals of
    /// the tick just ended set the rate.
    pub async fn govern(&self, m: &Metrics, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.governor.config().tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut backoffs, mut drained) = (m.store_backoffs.get(), m.drained.get());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let p99 = m.interactive_persist.p99();
            self.chat.store(p99.is_some(), Ordering::Relaxed);
            // A drain running here slows chat too: what chat sees meanwhile is not the calm.
            if m.drained.get() != drained {
                drained = m.drained.get();
                self.governor.hold_calm();
            }
            let failures = m.store_backoffs.get() - backoffs;
            backoffs += failures;
            let adjusted = self.governor.adjust_with_lag_at(std::time::Instant::now(), p99, m.runtime_lag.p99(), failures);
            if let Adjustment::Cut { from, to, why } = adjusted {
                m.accept_cuts.inc();
                tracing::debug!(from = from.round(), to = to.round(), %why, "accept gate cut EnqueueBulk's rate");
            }
            m.accept_limit.set(if p99.is_some() { self.governor.limit() } else { 0.0 });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn gate(rate: f64) -> AcceptGate {
        AcceptGate::new(GovernorConfig { floor: rate, initial: rate, ceiling: rate, ..GovernorConfig::default() })
    }

    #[tokio::test(start_paused = true)]
    async fn without_chat_the_accept_is_not_paced() {
        let g = gate(100.0);
        assert_eq!(g.batch(10_000), 10_000);
        let t = tokio::time::Instant::now();
        for _ in 0..10 {
            g.admit(10_000).await;
        }
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn with_chat_the_accept_comes_in_small_paced_batches() {
        let g = gate(100.0);
        g.chat.store(true, Ordering::Relaxed);
        assert_eq!(g.batch(10_000), 25, "a tick's worth at 100/s");
        let t = tokio::time::Instant::now();
        for _ in 0..8 {
            g.admit(25).await;
        }
        // 200 one-offs at 100/s: the bucket starts empty, so each batch waits its share.
        assert!(t.elapsed() >= Duration::from_millis(1900), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn slow_chat_cuts_the_gate_and_it_shows_in_metrics() {
        let g = AcceptGate::new(GovernorConfig { floor: 100.0, initial: 10_000.0, ..GovernorConfig::default() });
        let m = Metrics::new();
        let stop = CancellationToken::new();
        let run = async {
            // Chat calm at 1 ms while nothing is accepted...
            for _ in 0..12 {
                m.interactive_persist.record(Duration::from_millis(1));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // ...then 200 ms while a campaign is: far over the 10 ms target.
            while m.accept_cuts.get() == 0 {
                for _ in 0..100 {
                    m.interactive_persist.record(Duration::from_millis(200));
                }
                let n = g.batch(10_000);
                g.admit(n).await;
            }
            stop.cancel();
        };
        tokio::join!(g.govern(&m, stop.clone()), run);
        assert!(g.governor.limit() < 10_000.0);
        assert_eq!(m.accept_limit.get(), g.governor.limit());
        assert!(g.chat.load(Ordering::Relaxed));
    }
}
