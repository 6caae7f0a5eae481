//! Domain types, client frames, backend traits and pure logic of Sluice.
//!
//! Everything above the backends depends on this crate only, never on a concrete backend:
//! - [`model`]: messages, rooms, inbox rows, campaigns; [`ids`]: user/room id rules, direct
//!   rooms, deterministic message ids and queue groups.
//! - [`store`], [`queue`], [`hub`], [`events`]: one trait per port (message store, spike
//!   queue, sessions/fan-out, analytics sink), each method documenting its contract.
//! - [`frames`]: the WebSocket client contract v1 (JSON frames) and [`error::ErrorCode`].
//! - [`fanout`]: what happens after a message or read commits (live pushes, analytics).
//! - [`control`]: the operator's pause, resume and rate of the drain, a tenant or a campaign.
//! - [`governor`]: the drain governor (AIMD on interactive latency and store throttling).
//! - [`limits`]: per-user and per-address rate limits and leases shared by every gateway.
//! - [`fleet`]: what every process reports once a second, summed for the operations console.
//! - [`auth`]: user tokens (JWT) and the service token.
//! - [`backends`]: the ports one process runs on, shared by its roles.
//! - [`backoff`], [`ratelimit`], [`metrics`]: small shared mechanisms.

pub mod auth;
pub mod backends;
pub mod backoff;
pub mod bodies;
pub mod control;
pub mod error;
pub mod events;
pub mod fanout;
pub mod fleet;
pub mod frames;
pub mod governor;
pub mod hub;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod queue;
pub mod ratelimit;
pub mod store;
pub mod trace;

/// Items a loop on the async runtime handles between two yields in bulk work (an EnqueueBulk
/// call builds and encodes up to 10,000 queued messages, tens of milliseconds of CPU): a
/// few milliseconds at most, so chat's tasks on the same worker thread never wait long
/// behind it. Yielding every 256 items cost about 11% of the accept rate without chat,
/// every 1,024 about 3% (docs/benchmarks/README.md).
pub const YIELD_EVERY: usize = 1024;

/// In a loop of bulk work on the runtime, given the item's index: lets other tasks run every
/// [`YIELD_EVERY`] items.
pub async fn share_runtime(i: usize) {
    if i % YIELD_EVERY == YIELD_EVERY - 1 {
        tokio::task::yield_now().await;
    }
}

/// Milliseconds since the Unix epoch, the unit of every timestamp Sluice stores.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// On a single thread, another ready task runs inside a long loop of bulk work (after
    /// each [`super::YIELD_EVERY`] items), not only once the loop ends.
    #[tokio::test(flavor = "current_thread")]
    async fn a_bulk_loop_lets_other_tasks_run_every_so_many_items() {
        let ran = Arc::new(AtomicUsize::new(0));
        let other = ran.clone();
        let task = tokio::spawn(async move {
            loop {
                other.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        });
        let mut seen = Vec::new();
        for i in 0..3 * super::YIELD_EVERY {
            super::share_runtime(i).await;
            seen.push(ran.load(Ordering::SeqCst));
        }
        task.abort();
        // The other task first runs at the first yield, then once more at each later one.
        let first = seen.iter().position(|&n| n > 0).expect("the other task ran during the loop");
        assert_eq!(first, super::YIELD_EVERY - 1);
        assert_eq!(seen[super::YIELD_EVERY - 2], 0, "nothing else ran before the first yield");
        assert!(seen.last().copied().unwrap_or(0) >= 3);
    }
}
