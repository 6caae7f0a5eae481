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
//! area under its scope's key instead of being persisted (a resume releases it).
//!
//! Shutdown: on cancellation the pollers stop receiving, finish the batch in hand (persist,
//! ack) and return; nothing unpersisted is acked.

use futures::future::join_all;
use sluice_core::backoff::Backoff;
use sluice_core::control::{Controls, REFRESH as CONTROL_REFRESH, Scope};
use sluice_core::fanout::{Fanout, Ticket};
use sluice_core::governor::{Adjustment, Governor, GovernorConfig, INTERACTIVE_P99_KEY};
use sluice_core::limits::Limiter;
use sluice_core::metrics::Metrics;
use sluice_core::queue::{Delivery, Receipt, SpikeQueue};
use sluice_core::store::MessageStore;
use sluice_proto::convert::{decode_queued, decode_queued_traced};
use std::sync::atomic::{AtomicU64, Ordering};
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
/// How often the runtime lag is sampled (a timer this short fires late as soon as the
/// runtime's threads are busy).
const LAG_SAMPLE: Duration = Duration::from_millis(5);

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
    /// Whether the governor watches this process's runtime lag: on where chat is served by
    /// the same process (its cores are chat's), off in a worker-only process.
    pub watch_runtime_lag: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 4,
            batch_size: 256,
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

/// The backends a worker uses.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn MessageStore>,
    pub queue: Arc<dyn SpikeQueue>,
    /// Live pushes in commit order per room (share it with a gateway in the same process).
    pub fanout: Arc<Fanout>,
    /// Where gateways publish their interactive latency (read by the drain governor).
    pub limiter: Arc<dyn Limiter>,
    pub metrics: Arc<Metrics>,
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
}

/// See [`Worker::deferred`].
#[derive(Default)]
struct Deferred {
    counts: std::collections::HashMap<String, u32>,
    order: std::collections::VecDeque<String>,
}

/// Messages whose deferrals a worker remembers.
const DEFERRED_CAP: usize = 100_000;

impl Deferred {
    fn add(&mut self, msg_id: &str) {
        let n = self.counts.entry(msg_id.to_string()).or_insert_with(|| {
            self.order.push_back(msg_id.to_string());
            0
        });
        *n += 1;
        while self.order.len() > DEFERRED_CAP {
            if let Some(old) = self.order.pop_front() {
                self.counts.remove(&old);
            }
        }
    }

    fn of(&self, msg_id: &str) -> u32 {
        self.counts.get(msg_id).copied().unwrap_or(0)
    }

    fn forget(&mut self, msg_id: &str) {
        // Its place in `order` goes when it reaches the front.
        self.counts.remove(msg_id);
    }
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
        }
    }

    fn controls(&self) -> Arc<Controls> {
        self.controls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the operator's controls; on failure the last ones read stay in force.
    pub async fn refresh_controls(&self) {
        match self.b.store.controls().await {
            Ok(c) => {
                self.b.metrics.drain_paused.set(i64::from(c.drain().paused));
                let before = std::mem::replace(&mut *self.controls.write().unwrap_or_else(|p| p.into_inner()), Arc::new(c.clone()));
                // A message this worker held on its last view, after the resume was set,
                // would wait for good: whoever sees a resume releases the scope's messages.
                for (scope, _) in before.entries.iter().filter(|(s, ctl)| ctl.paused && *s != Scope::Drain) {
                    if !c.entries.iter().any(|(s, ctl)| s == scope && ctl.paused) {
                        let (queue, key) = (self.b.queue.clone(), scope.key());
                        tokio::spawn(async move {
                            while let Ok(n) = queue.release_held(&key, 10_000).await {
                                if n == 0 {
                                    break;
                                }
                            }
                        });
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the drain controls; the last ones read stay in force"),
        }
    }

    async fn watch_controls(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(CONTROL_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.refresh_controls().await,
            }
            if ticks.is_multiple_of(ADOPT_EVERY_TICKS) {
                self.adopt_dead_letters().await;
            }
            ticks += 1;
        }
    }

    fn max_receives(&self) -> u32 {
        self.max_receives.load(Ordering::Relaxed)
    }

    /// A queue that dead-letters by itself after its own count of receives (SQS's redrive
    /// policy) must not do so before this worker would: the worker's verdict carries the
    /// reason and counts the campaign. A `max_receives` at or above the queue's is lowered.
    /// Returns the `max_receives` in force.
    pub async fn check_max_receives(&self) -> u32 {
        match self.b.queue.own_max_receives().await {
            Ok(Some(own)) if self.max_receives() >= own => {
                let lowered = own.saturating_sub(1).max(1);
                tracing::error!(
                    max_receives = self.max_receives(),
                    queue_max_receive_count = own,
                    using = lowered,
                    "--max-receives must be below the queue's maxReceiveCount; lowered"
                );
                self.max_receives.store(lowered, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the queue's own receive limit"),
        }
        self.max_receives()
    }

    /// Counts the dead letters the queue moved by itself for their campaigns, then marks them
    /// adopted; returns how many. One that cannot be counted now is offered again later.
    pub async fn adopt_dead_letters(&self) -> usize {
        let letters = match self.b.queue.adoptable_dead_letters(ADOPT_BATCH).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for dead letters the queue moved");
                return 0;
            }
        };
        let mut adopted = Vec::with_capacity(letters.len());
        for (letter, receipt) in letters {
            if let Ok(msg) = decode_queued(&letter.body, usize::MAX)
                && let Some(cid) = msg.campaign_id.as_deref()
                && let Err(e) = self.b.store.record_dead_letter(cid, &msg.msg_id).await
            {
                tracing::warn!(error = %e, campaign_id = cid, "could not count a dead letter the queue moved; it is offered again later");
                continue;
            }
            adopted.push(receipt);
        }
        if adopted.is_empty() {
            return 0;
        }
        if let Err(e) = self.b.queue.mark_adopted(&adopted, ADOPTED_REASON).await {
            tracing::warn!(error = %e, "could not mark adopted dead letters; they are offered (and counted, idempotently) again");
            return 0;
        }
        tracing::warn!(n = adopted.len(), "counted dead letters the queue moved by itself");
        self.b.metrics.dead_lettered.inc_by(adopted.len() as u64);
        adopted.len()
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
        let lag = self.config.watch_runtime_lag.then(|| {
            let (w, s) = (self.clone(), shutdown.clone());
            tokio::spawn(async move { sluice_core::governor::sample_runtime_lag(&w.b.metrics.runtime_lag, LAG_SAMPLE, s).await })
        });
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
        if let Some(lag) = lag {
            lag.abort();
        }
    }

    /// The drain governor's control loop: every tick, the signals of the tick just ended set
    /// the admitted rate.
    async fn govern(&self, shutdown: CancellationToken) {
        let m = &self.b.metrics;
        let mut tick = tokio::time::interval(self.governor.config().tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_logged = self.governor.limit();
        let mut backoffs = m.store_backoffs.get();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
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

    async fn poll(&self, shutdown: CancellationToken) {
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
                    let wait = self.governor.reserve(batch.len() as u64).max(self.fleet_wait(batch.len() as u64).await);
                    if !wait.is_zero() {
                        tokio::select! {
                            _ = shutdown.cancelled() => {
                                let receipts: Vec<Receipt> = batch.iter().map(|d| d.receipt.clone()).collect();
                                let _ = self.b.queue.release(&receipts).await;
                                break;
                            }
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                    self.process(batch).await
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
    async fn fleet_wait(&self, n: u64) -> Duration {
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

    /// Processes one received batch; false when something failed in a retryable way.
    pub async fn process(&self, batch: Vec<Delivery>) -> bool {
        let m = &self.b.metrics;
        let controls = self.controls();
        let mut work = Vec::with_capacity(batch.len());
        let mut messages = Vec::with_capacity(batch.len());
        // One span per traced message, open until it is acked and published.
        let mut spans = Vec::new();
        for d in batch {
            let decoded = decode_queued_traced(&d.body, self.config.max_body_bytes).map(|(msg, trace)| {
                if let Some(tp) = trace {
                    let span = tracing::info_span!("deliver", msg_id = %msg.msg_id, room = %msg.room, receive_count = d.receive_count);
                    sluice_core::trace::continue_trace(&span, &tp);
                    spans.push(span);
                }
                msg
            });
            match decoded {
                Ok(msg) if d.receive_count.saturating_sub(self.deferrals(&msg.msg_id)) > self.max_receives() => {
                    let reason = format!("received {} times without completing", d.receive_count);
                    self.dead_letter(&d.receipt, &reason, msg.campaign_id.as_deref(), &msg.msg_id).await;
                }
                Ok(msg) if let Some(scope) = controls.paused_scope(tenant_of(&d, &msg), msg.campaign_id.as_deref()) => {
                    match self.b.queue.hold(&d.receipt, &scope.key()).await {
                        Ok(()) => m.held.inc(),
                        Err(e) => {
                            tracing::warn!(error = %e, %scope, "cannot hold a message of a paused scope; it returns after its visibility timeout")
                        }
                    }
                }
                Ok(msg) => {
                    work.push(d);
                    messages.push(msg);
                }
                Err(reason) => self.dead_letter(&d.receipt, &reason, None, "").await,
            }
        }
        if messages.is_empty() {
            return true;
        }
        let tickets: Vec<Ticket> = messages.iter().map(|msg| self.b.fanout.ticket(&msg.room)).collect();
        let timer = m.persist_seconds.start_timer();
        let receipts: Vec<Receipt> = work.iter().map(|d| d.receipt.clone()).collect();
        let outcome = self.with_heartbeat(&receipts, self.b.store.persist(messages.clone())).await;
        timer.observe_duration();
        let results = match outcome {
            Ok(r) => r,
            Err(e) if e.is_retryable() => {
                // The store failed as a whole: not these messages' fault. They wait out their
                // visibility (no quick redelivery), and the pollers probe the store.
                self.store_failures.fetch_add(1, Ordering::Relaxed);
                m.bulk_store_failures.inc();
                if !self.store_down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, n = work.len(), "the store failed; receiving stops until it answers");
                }
                return false;
            }
            Err(e) => {
                tracing::warn!(error = %e, n = work.len(), "persist failed; releasing the batch");
                self.give_back(&work, &messages, &e.to_string()).await;
                return false;
            }
        };
        let mut acks = Vec::with_capacity(work.len());
        let mut tenants = Vec::with_capacity(work.len());
        let mut done = Vec::with_capacity(work.len());
        let mut all_ok = true;
        for (((d, msg), r), ticket) in work.iter().zip(&messages).zip(results).zip(tickets) {
            match r {
                Ok(p) => {
                    acks.push(d.receipt.clone());
                    self.deferred_lock().forget(&msg.msg_id);
                    tenants.push(tenant_of(d, msg));
                    done.push((p, ticket));
                }
                Err(e) if e.is_retryable() => {
                    all_ok = false;
                    self.store_failures.fetch_add(1, Ordering::Relaxed);
                    m.bulk_store_failures.inc();
                    self.retry_later(std::slice::from_ref(d), std::slice::from_ref(msg), &e.to_string()).await;
                }
                Err(e) => self.dead_letter(&d.receipt, &e.to_string(), msg.campaign_id.as_deref(), &msg.msg_id).await,
            }
        }
        if let Err(e) = self.b.queue.ack(&acks).await {
            // Committed but not acked: redelivery persists nothing new (same msg_id).
            tracing::warn!(error = %e, n = acks.len(), "ack failed; messages will be redelivered");
            all_ok = false;
        } else {
            m.drained.inc_by(acks.len() as u64);
            for t in tenants {
                m.tenant_drained.with_label_values(&[t]).inc();
            }
        }
        for (p, ticket) in done {
            if p.duplicate {
                m.duplicates.inc();
            } else {
                m.persisted.with_label_values(&["queue"]).inc();
            }
            if !ticket.publish(&p, None).await {
                m.fanout_failures.inc();
            }
        }
        drop(spans);
        all_ok
    }

    /// Runs `fut` while extending the visibility of `receipts` every third of the timeout.
    async fn with_heartbeat<T>(&self, receipts: &[Receipt], fut: impl std::future::Future<Output = T>) -> T {
        let every = self.config.visibility / 3;
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return out,
                _ = tokio::time::sleep(every) => {
                    if let Err(e) = self.b.queue.extend(receipts, self.config.visibility).await {
                        tracing::warn!(error = %e, "visibility heartbeat failed");
                    }
                }
            }
        }
    }

    fn deferred_lock(&self) -> std::sync::MutexGuard<'_, Deferred> {
        self.deferred.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deferrals(&self, msg_id: &str) -> u32 {
        self.deferred_lock().of(msg_id)
    }

    /// Gives messages back after a retryable failure (throttling, conflicts: the store's
    /// state, not the message's fault): each comes back after a visibility that doubles with
    /// its deliveries, so a throttling store is not hammered with the same messages.
    async fn retry_later(&self, work: &[Delivery], messages: &[sluice_core::model::NewMessage], reason: &str) {
        let mut later: std::collections::BTreeMap<Duration, Vec<Receipt>> = std::collections::BTreeMap::new();
        {
            let mut deferred = self.deferred_lock();
            for (d, msg) in work.iter().zip(messages) {
                deferred.add(&msg.msg_id);
                later.entry(retry_visibility(d.receive_count)).or_default().push(d.receipt.clone());
            }
        }
        tracing::debug!(n = work.len(), reason, "retryable store failure; the messages come back later");
        self.come_back(later).await;
    }

    /// Gives messages back after a failure that may be theirs (a whole batch failing for no
    /// retryable reason): after `max_receives` deliveries they are dead-lettered.
    async fn give_back(&self, work: &[Delivery], messages: &[sluice_core::model::NewMessage], reason: &str) {
        let mut later: std::collections::BTreeMap<Duration, Vec<Receipt>> = std::collections::BTreeMap::new();
        for (d, msg) in work.iter().zip(messages) {
            if d.receive_count >= self.max_receives() {
                let reason = format!("gave up after {} deliveries: {reason}", d.receive_count);
                self.dead_letter(&d.receipt, &reason, msg.campaign_id.as_deref(), &msg.msg_id).await;
            } else {
                later.entry(retry_visibility(d.receive_count)).or_default().push(d.receipt.clone());
            }
        }
        self.come_back(later).await;
    }

    async fn come_back(&self, later: std::collections::BTreeMap<Duration, Vec<Receipt>>) {
        for (visibility, receipts) in later {
            if let Err(e) = self.b.queue.extend(&receipts, visibility).await {
                tracing::warn!(error = %e, "could not set the retry visibility; messages return after their visibility timeout");
            }
        }
    }

    /// Counts the dead letter for its campaign, then moves the message. In this order a crash
    /// in between leaves the message in the queue, to come back and be moved again (the count
    /// is idempotent, and undone if the message is persisted after a redrive); the other order
    /// would leave a campaign that is never done.
    async fn dead_letter(&self, receipt: &Receipt, reason: &str, campaign_id: Option<&str>, msg_id: &str) {
        tracing::warn!(reason, msg_id, "dead-lettering a queued message");
        if let Some(cid) = campaign_id
            && let Err(e) = self.b.store.record_dead_letter(cid, msg_id).await
        {
            tracing::warn!(error = %e, campaign_id = cid, "could not count a dead letter for its campaign; the message will be redelivered");
            return;
        }
        if let Err(e) = self.b.queue.dead_letter(receipt, reason).await {
            tracing::warn!(error = %e, "dead-letter failed; the message will be redelivered");
            return;
        }
        self.b.metrics.dead_lettered.inc();
    }
}

/// How long a message stays invisible after its `receive_count`-th delivery failed
/// retryably: 1 s, 2 s, 4 s, ... up to [`RETRY_VISIBILITY_CAP`].
fn retry_visibility(receive_count: u32) -> Duration {
    Duration::from_secs(1u64 << receive_count.saturating_sub(1).min(6)).min(RETRY_VISIBILITY_CAP)
}

/// The tenant a queued message is drained for: messages queued before tenants existed
/// belong to their sender, as their campaigns do.
fn tenant_of<'a>(d: &'a Delivery, msg: &'a sluice_core::model::NewMessage) -> &'a str {
    if d.tenant.is_empty() { &msg.sender } else { &d.tenant }
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
