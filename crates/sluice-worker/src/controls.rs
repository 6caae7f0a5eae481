//! The operator's controls as this worker sees them: read from the store every second, the
//! last ones read staying in force when the store cannot be read; after each read, the
//! release of rate-held messages.

use crate::{ADOPT_EVERY_TICKS, Worker};
use sluice_core::control::{Controls, REFRESH as CONTROL_REFRESH, Scope};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

impl Worker {
    pub(crate) fn controls(&self) -> Arc<Controls> {
        self.controls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the operator's controls; on failure the last ones read stay in force.
    pub async fn refresh_controls(&self) {
        match self.b.store.controls().await {
            Ok(c) => {
                self.b.metrics.drain_paused.set(i64::from(c.drain().paused));
                let before = std::mem::replace(&mut *self.controls.write().unwrap_or_else(|p| p.into_inner()), Arc::new(c.clone()));
                // A message this worker held on its last view, after the resume was set,
                // would wait for good: whoever sees a resume (or a rate removed) releases
                // the scope's messages.
                for (scope, ctl) in before.entries.iter().filter(|(s, _)| *s != Scope::Drain) {
                    let now = c.entries.iter().find(|(s, _)| s == scope).map(|(_, ctl)| *ctl).unwrap_or_default();
                    if ctl.paused && !now.paused {
                        self.release_all(scope.key());
                    }
                    if ctl.rate.is_some() && now.rate.is_none() {
                        self.release_all(scope.rate_key());
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the drain controls; the last ones read stay in force"),
        }
    }

    /// Moves every message held under `key` back to the queue, in the background.
    fn release_all(&self, key: String) {
        let queue = self.b.queue.clone();
        tokio::spawn(async move {
            while let Ok(n) = queue.release_held(&key, 10_000).await {
                if n == 0 {
                    break;
                }
            }
        });
    }

    pub(crate) async fn watch_controls(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(CONTROL_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.refresh_controls().await,
            }
            self.release_rated().await;
            if ticks.is_multiple_of(ADOPT_EVERY_TICKS) {
                self.adopt_dead_letters().await;
            }
            ticks += 1;
        }
    }
}
