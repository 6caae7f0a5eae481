//! The queue consumer: drains the spike queue into the message store.
//!
//! Each of `concurrency` pollers loops: receive a batch (many groups, each group's messages
//! in order), wait for the drain governor to admit it, decode, persist the whole batch in one
//! store call, ack what committed, then fan out and emit analytics. The governor
//! ([`sluice_core::governor`]) sets the admitted rate every tick from the interactive lane's
//! persist latency in this process and the store's throttling on the bulk lane.
//!
//! Because a group with a message in flight is never handed to a second poller or worker, a
//! room is processed by one consumer at a time, in order (invariant 5), while different rooms
//! go in parallel.
//!
//! Failures: an undecodable or invalid message, or one the store refuses for good (unknown
//! room, sender not a member), goes to the dead-letter queue with its reason, and the rest of
//! its batch goes on (invariant 7). A message the store failed retryably (throttled,
//! conflicting) is not at fault either: it comes back after a visibility that doubles with
//! each delivery (1 s, 2 s, ... up to a minute), and those deliveries do not count toward
//! `max_receives`, which dead-letters only a message whose deliveries end without any verdict
//! (one that crashes its worker). (The worker remembers the deferrals it made; a message
//! deferred by several workers can still reach SQS's own maxReceiveCount.)
//! A store that fails as a whole (the call, not single messages) is not the messages' fault:
//! the batch waits out its visibility, and the pollers stop receiving and probe the store
//! (ping) with growing pauses until it answers, so an outage of any length grows no receive
//! count and dead-letters nothing. Dead letters a queue moves by itself (SQS's redrive
//! policy) are adopted every 30 s: counted for their campaign and given a reason.
//!
//! A message is acked only after its commit, so a crash between commit and ack means a
//! redelivery, which the store recognises by msg_id (invariant 2).
//!
//! Operator controls ([`sluice_core::control`]), read from the store every second: while the
//! whole drain is paused the pollers receive nothing; an operator's drain rate caps the
//! fleet's budget; a message of a paused tenant or campaign is moved to the queue's held
//! area under its scope's key instead of being persisted (a resume releases it); a message
//! over its tenant's or campaign's rate is held under the scope's rate key, and every second
//! the workers release such messages at the rate (both through fleet-wide buckets).
//!
//! Shutdown: on cancellation the pollers stop receiving, finish the batch in hand (persist,
//! ack) and return; nothing unpersisted is acked.
//!
//! Modules: `poll` (the governor's loop and the pollers), `process` (one batch, retries),
//! `dead_letters`, `controls`.

mod controls;
mod dead_letters;
mod poll;
mod process;

use futures::future::join_all;
use process::Deferred;
pub use process::admit_key;
pub use sluice_core::backends::Backends;
use sluice_core::backoff::Backoff;
use sluice_core::control::Controls;
use sluice_core::governor::{Governor, GovernorConfig};
use sluice_core::metrics::Metrics;
use sluice_core::queue::SpikeQueue;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The lending bucket of the fleet's drain budget in the limits port.
const FLEET_BUDGET_KEY: &str = "drain:fleet";
/// Control ticks between two looks for dead letters the queue moved by itself.
const ADOPT_EVERY_TICKS: u64 = 30;
/// Dead letters adopted per look.
const ADOPT_BATCH: usize = 1_000;
/// The reason an adopted dead letter keeps.
pub const ADOPTED_REASON: &str = "moved by the queue after its own maxReceiveCount receives (counted by a worker)";
/// Pauses between probes of a store that failed as a whole.
const STORE_PROBE: Backoff = Backoff { base: Duration::from_millis(250), cap: Duration::from_secs(15), max_attempts: u32::MAX };
/// Longest visibility a retryable failure gives a message before its next delivery.
const RETRY_VISIBILITY_CAP: Duration = Duration::from_secs(60);

/// Settings of a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Concurrent pollers: the worker's concurrency budget for the bulk lane.
    pub concurrency: usize,
    /// Most messages per receive (SQS allows 10; the embedded queue any number).
    pub batch_size: usize,
    /// Long-poll wait of one receive.
    pub wait: Duration,
    /// Visibility timeout of received messages; extended while a batch is slow.
    pub visibility: Duration,
    /// Deliveries after which a failing message is dead-lettered.
    pub max_receives: u32,
    /// Largest message body accepted.
    pub max_body_bytes: usize,
    /// The drain governor: the admitted rate's ceiling, floor and interactive target.
    pub governor: GovernorConfig,
    /// Most bulk messages per second for all workers together (a budget shared through the
    /// limits port); `None`: no fleet budget.
    pub fleet_rate: Option<f64>,
    /// Whether the governor watches this process's runtime lag (which the process samples
    /// where it serves chat, [`sluice_core::governor::sample_runtime_lag`]): on where chat is
    /// served by the same process (its cores are chat's), off in a worker-only process.
    pub watch_runtime_lag: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 4,
            batch_size: 2048,
            wait: Duration::from_secs(1),
            visibility: Duration::from_secs(30),
            max_receives: 5,
            max_body_bytes: 64 * 1024,
            governor: GovernorConfig::default(),
            fleet_rate: None,
            watch_runtime_lag: false,
        }
    }
}

/// A queue consumer. Any number may run against one queue, in one process or many.
pub struct Worker {
    b: Backends,
    config: WorkerConfig,
    governor: Governor,
    /// Retryable store failures of the bulk lane since the governor's last tick.
    store_failures: AtomicU64,
    /// The operator's controls as last read.
    controls: RwLock<Arc<Controls>>,
    /// Set when the store failed as a whole: the pollers probe it instead of receiving.
    store_down: std::sync::atomic::AtomicBool,
    /// Deliveries this worker gave back for a retryable store failure, by msg_id: they do not
    /// count toward `max_receives`. Bounded: the oldest are forgotten first.
    deferred: std::sync::Mutex<Deferred>,
    /// `max_receives` in force: the configured one, or one below the queue's own limit.
    max_receives: std::sync::atomic::AtomicU32,
    /// Campaign bodies that queued one-offs refer to, as read from the store.
    bodies: sluice_core::bodies::BodyCache,
}

impl Worker {
    pub fn new(b: Backends, config: WorkerConfig) -> Self {
        Worker {
            max_receives: std::sync::atomic::AtomicU32::new(config.max_receives),
            governor: Governor::new(config.governor),
            b,
            config,
            store_failures: AtomicU64::new(0),
            controls: RwLock::default(),
            store_down: Default::default(),
            deferred: Default::default(),
            bodies: Default::default(),
        }
    }

    /// Runs the pollers until `shutdown` is cancelled and their batches are finished.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        // A pause in force when the worker starts holds from its first receive.
        self.refresh_controls().await;
        self.check_max_receives().await;
        let control = {
            let (w, s) = (self.clone(), shutdown.clone());
            tokio::spawn(async move { w.govern(s).await })
        };
        let controls = {
            let (w, s) = (self.clone(), shutdown.clone());
            tokio::spawn(async move { w.watch_controls(s).await })
        };
        let pollers = (0..self.config.concurrency.max(1)).map(|_| {
            let (w, s) = (self.clone(), shutdown.clone());
            tokio::spawn(async move { w.poll(s).await })
        });
        for r in join_all(pollers).await {
            if let Err(e) = r {
                tracing::error!(error = %e, "worker poller panicked");
            }
        }
        control.abort();
        controls.abort();
    }
}

/// Publishes the queue's depth, in-flight count, age of the oldest message, dead-letter and
/// held depth, and the backlog per tenant (where the queue counts it) to metrics every
/// `every`, until cancelled.
pub async fn watch_queue(queue: Arc<dyn SpikeQueue>, metrics: Arc<Metrics>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(s) = queue.stats().await {
            metrics.queue_visible.set(s.visible as i64);
            metrics.queue_in_flight.set(s.in_flight as i64);
            metrics.queue_oldest_age_seconds.set(s.oldest_age_ms as f64 / 1000.0);
            metrics.dead_letter_depth.set(s.dead as i64);
            metrics.queue_held.set(s.held as i64);
        }
        if let Ok(backlogs) = queue.tenant_backlogs().await {
            // Tenants whose backlog is gone leave the metric.
            metrics.tenant_backlog.reset();
            for (tenant, n) in backlogs {
                metrics.tenant_backlog.with_label_values(&[&tenant]).set(n as i64);
            }
        }
    }
}
