//! One received batch: decode, hold what an operator paused or what is over its tenant's or
//! campaign's rate, persist in one store call, ack
//! what committed, publish; retryable failures come back later without counting toward the
//! receive limit (this worker remembers its deferrals), the rest is dead-lettered.

use crate::{RETRY_VISIBILITY_CAP, Worker};
use sluice_core::control::{Controls, Scope};
use sluice_core::fanout::Ticket;
use sluice_core::model::NewMessage;
use sluice_core::queue::{Delivery, Receipt};
use sluice_proto::convert::decode_queued_traced;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// See [`Worker::deferred`].
#[derive(Default)]
pub(crate) struct Deferred {
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

/// A received batch after [`Worker::admit`]: the messages to persist now, with their
/// deliveries and the spans of the traced ones.
pub(crate) struct Admitted {
    work: Vec<Delivery>,
    messages: Vec<NewMessage>,
    spans: Vec<tracing::Span>,
    /// False when something failed in a retryable way while sorting the batch.
    ok: bool,
}

impl Admitted {
    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    pub(crate) fn receipts(&self) -> Vec<Receipt> {
        self.work.iter().map(|d| d.receipt.clone()).collect()
    }
}

impl Worker {
    /// Processes one received batch; false when something failed in a retryable way.
    pub async fn process(&self, batch: Vec<Delivery>) -> bool {
        let admitted = self.admit(batch).await;
        self.persist_admitted(admitted).await
    }

    /// Sorts a received batch: dead-letters what cannot be delivered, holds what an operator
    /// paused or what is over its rate, resolves campaign bodies, and keeps the rest to
    /// persist. Nothing here writes to the store, so what is held or dead-lettered takes no
    /// part of the drain budget.
    pub(crate) async fn admit(&self, batch: Vec<Delivery>) -> Admitted {
        let m = &self.b.metrics;
        let controls = self.controls();
        let mut work = Vec::with_capacity(batch.len());
        let mut messages = Vec::with_capacity(batch.len());
        // One span per traced message, open until it is acked and published.
        let mut spans = Vec::new();
        // Messages of paused scopes, by hold key: moved aside in one call per key.
        let mut paused: BTreeMap<String, Vec<Receipt>> = BTreeMap::new();
        // Messages whose body could not be read (the store failed): they come back later.
        let (mut unread, mut unread_msgs, mut read_error) = (Vec::new(), Vec::new(), None);
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
                    self.dead_letter(&d.receipt, &reason, Some(&msg)).await;
                }
                Ok(msg) if let Some(scope) = controls.paused_scope(tenant_of(&d, &msg), msg.campaign_id.as_deref()) => {
                    paused.entry(scope.key()).or_default().push(d.receipt);
                }
                // Once a body read failed, the batch's other references are not read again.
                Ok(msg) if msg.body_ref.is_some() && read_error.is_some() => {
                    unread.push(d);
                    unread_msgs.push(msg);
                }
                Ok(mut msg) => {
                    if let Some(r) = msg.body_ref.take() {
                        let found = self.campaign_body(&msg, &r).await;
                        msg.body_ref = Some(r);
                        let r = msg.body_ref.as_deref().unwrap_or_default();
                        match found {
                            Ok(Some(body)) => msg.body = body.to_string(),
                            Ok(None) => {
                                let reason = format!("the campaign body {r} it refers to is not stored");
                                self.dead_letter(&d.receipt, &reason, Some(&msg)).await;
                                continue;
                            }
                            Err(e) => {
                                if e.is_retryable() {
                                    self.store_failed(&e, "reading a campaign body");
                                }
                                read_error = Some(e.to_string());
                                unread.push(d);
                                unread_msgs.push(msg);
                                continue;
                            }
                        }
                    }
                    work.push(d);
                    messages.push(msg);
                }
                Err(reason) => self.dead_letter(&d.receipt, &reason, None).await,
            }
        }
        if let Some(reason) = &read_error {
            self.retry_later(&unread, &unread_msgs, reason).await;
        }
        for (key, receipts) in paused {
            self.hold(&receipts, &key, |n| m.held.inc_by(n)).await;
        }
        let (work, messages) = self.within_rates(&controls, work, messages).await;
        Admitted { work, messages, spans, ok: read_error.is_none() }
    }

    /// Notes a retryable failure of the store as a whole: the governor sees it, and the
    /// pollers probe the store instead of receiving until it answers.
    fn store_failed(&self, e: &sluice_core::error::StoreError, doing: &str) {
        self.store_failures.fetch_add(1, Ordering::Relaxed);
        self.b.metrics.bulk_store_failures.inc();
        if !self.store_down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, doing, "the store failed; receiving stops until it answers");
        }
    }

    /// Persists what [`Worker::admit`] kept in one store call, acks what committed and
    /// publishes it; false when something failed in a retryable way.
    pub(crate) async fn persist_admitted(&self, admitted: Admitted) -> bool {
        let Admitted { work, messages, spans, ok } = admitted;
        let m = &self.b.metrics;
        if messages.is_empty() {
            return ok;
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
                self.store_failed(&e, "persisting a batch");
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
        let mut all_ok = ok;
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
                Err(e) => self.dead_letter(&d.receipt, &e.to_string(), Some(msg)).await,
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

    /// Moves messages aside under a hold key (a paused scope's, or a rated scope's) and
    /// `count`s those moved; what cannot be moved returns after its visibility timeout.
    async fn hold(&self, receipts: &[Receipt], key: &str, count: impl Fn(u64)) {
        match self.b.queue.hold(receipts, key).await {
            Ok(n) => count(n as u64),
            Err(e) => {
                tracing::warn!(error = %e, key, n = receipts.len(), "cannot hold messages; they return after their visibility timeout")
            }
        }
    }

    /// The campaign body `body_ref` that `msg` refers to: from this worker's cache, or read
    /// from the store once.
    async fn campaign_body(&self, msg: &NewMessage, body_ref: &str) -> Result<Option<std::sync::Arc<str>>, sluice_core::error::StoreError> {
        let campaign = msg.campaign_id.as_deref().unwrap_or_default();
        let read = async {
            self.b.metrics.campaign_body_reads.inc();
            self.b.store.campaign_body(campaign, body_ref).await
        };
        self.bodies.get_or_load(campaign, body_ref, read).await
    }

    /// Holds the messages over their campaign's or tenant's rate (under the scope's rate
    /// key, released at the rate by [`Worker::release_rated`]) and returns the rest. Each
    /// rated scope takes the tokens its messages in the batch need from its fleet-wide
    /// bucket at once; when the limits backend cannot be reached, rates are not applied
    /// (the governor and the fleet budget still hold).
    async fn within_rates(&self, controls: &Controls, work: Vec<Delivery>, messages: Vec<NewMessage>) -> (Vec<Delivery>, Vec<NewMessage>) {
        if controls.rated().next().is_none() {
            return (work, messages);
        }
        let rates: Vec<Vec<(&Scope, f64)>> =
            work.iter().zip(&messages).map(|(d, msg)| controls.rates(tenant_of(d, msg), msg.campaign_id.as_deref())).collect();
        let mut wanted: BTreeMap<&Scope, (f64, u64)> = BTreeMap::new();
        for (scope, rate) in rates.iter().flatten() {
            wanted.entry(*scope).or_insert((*rate, 0)).1 += 1;
        }
        // Per scope: its rate when the tokens came from its bucket (not when the bucket could
        // not be reached), and the tokens granted and not yet used.
        let mut granted: BTreeMap<&Scope, (Option<f64>, u64)> = BTreeMap::new();
        for (scope, (rate, n)) in wanted {
            let g = match self.b.limiter.take_up_to(&admit_key(scope), n, rate, rate_burst(rate)).await {
                Ok(g) => (Some(rate), g),
                Err(e) => {
                    tracing::warn!(error = %e, %scope, "rate bucket unavailable; the scope's rate is not applied to this batch");
                    (None, n)
                }
            };
            granted.insert(scope, g);
        }
        let (mut keep, mut kept) = (Vec::with_capacity(work.len()), Vec::with_capacity(messages.len()));
        let mut over: BTreeMap<String, Vec<Receipt>> = BTreeMap::new();
        for ((d, msg), rates) in work.into_iter().zip(messages).zip(&rates) {
            match rates.iter().find(|(s, _)| granted[s].1 == 0) {
                Some((scope, _)) => over.entry(scope.rate_key()).or_default().push(d.receipt),
                None => {
                    for (s, _) in rates {
                        granted.get_mut(s).expect("granted for every rated scope").1 -= 1;
                    }
                    keep.push(d);
                    kept.push(msg);
                }
            }
        }
        // A message held by one of its scopes leaves the tokens its other scopes granted.
        for (scope, (rate, left)) in granted {
            if let Some(rate) = rate
                && left > 0
                && let Err(e) = self.b.limiter.give_back(&admit_key(scope), left, rate_burst(rate)).await
            {
                tracing::debug!(error = %e, %scope, "could not give unused rate tokens back");
            }
        }
        for (key, receipts) in over {
            self.hold(&receipts, &key, |n| self.b.metrics.rate_held.inc_by(n)).await;
        }
        (keep, kept)
    }

    /// Releases rate-held messages of every rated scope back to the queue, at the scope's
    /// rate over the fleet (each worker takes its release from one shared bucket), once per
    /// control refresh.
    pub(crate) async fn release_rated(&self) {
        let controls = self.controls();
        if controls.drain().paused {
            return;
        }
        for (scope, rate) in controls.rated() {
            let per_refresh = (rate * sluice_core::control::REFRESH.as_secs_f64()).ceil() as u64;
            let n = match self.b.limiter.take_up_to(&release_key(scope), per_refresh, rate, rate_burst(rate)).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, %scope, "rate bucket unavailable; its held messages wait");
                    continue;
                }
            };
            if n == 0 {
                continue;
            }
            match self.b.queue.release_held(&scope.rate_key(), n as usize).await {
                Ok(moved) => self.b.metrics.rate_released.inc_by(moved as u64),
                Err(e) => tracing::warn!(error = %e, %scope, "releasing rate-held messages failed"),
            }
        }
    }

    /// Runs `fut` while extending the visibility of `receipts` every third of the timeout.
    pub(crate) async fn with_heartbeat<T>(&self, receipts: &[Receipt], fut: impl std::future::Future<Output = T>) -> T {
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

    pub(crate) fn deferred_lock(&self) -> std::sync::MutexGuard<'_, Deferred> {
        self.deferred.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn deferrals(&self, msg_id: &str) -> u32 {
        self.deferred_lock().of(msg_id)
    }

    /// Gives messages back after a retryable failure (throttling, conflicts: the store's
    /// state, not the message's fault): each comes back after a visibility that doubles with
    /// its deliveries, so a throttling store is not hammered with the same messages.
    pub(crate) async fn retry_later(&self, work: &[Delivery], messages: &[sluice_core::model::NewMessage], reason: &str) {
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
    pub(crate) async fn give_back(&self, work: &[Delivery], messages: &[sluice_core::model::NewMessage], reason: &str) {
        let mut later: std::collections::BTreeMap<Duration, Vec<Receipt>> = std::collections::BTreeMap::new();
        for (d, msg) in work.iter().zip(messages) {
            if d.receive_count >= self.max_receives() {
                let reason = format!("gave up after {} deliveries: {reason}", d.receive_count);
                self.dead_letter(&d.receipt, &reason, Some(msg)).await;
            } else {
                later.entry(retry_visibility(d.receive_count)).or_default().push(d.receipt.clone());
            }
        }
        self.come_back(later).await;
    }

    pub(crate) async fn come_back(&self, later: std::collections::BTreeMap<Duration, Vec<Receipt>>) {
        for (visibility, receipts) in later {
            if let Err(e) = self.b.queue.extend(&receipts, visibility).await {
                tracing::warn!(error = %e, "could not set the retry visibility; messages return after their visibility timeout");
            }
        }
    }
}

/// How long a message stays invisible after its `receive_count`-th delivery failed
/// retryably: 1 s, 2 s, 4 s, ... up to [`RETRY_VISIBILITY_CAP`].
pub(crate) fn retry_visibility(receive_count: u32) -> Duration {
    Duration::from_secs(1u64 << receive_count.saturating_sub(1).min(6)).min(RETRY_VISIBILITY_CAP)
}

/// The fleet-wide bucket (in the limits port) a rated scope's messages take their tokens from.
pub fn admit_key(scope: &Scope) -> String {
    format!("drain:admit:{}", scope.key())
}

/// The fleet-wide bucket that paces the release of a rated scope's held messages.
fn release_key(scope: &Scope) -> String {
    format!("drain:release:{}", scope.key())
}

/// A second's worth of a rate (at least one message), the most a rated scope's bucket holds.
fn rate_burst(rate: f64) -> f64 {
    rate.max(1.0)
}

/// The tenant a queued message is drained for: messages queued before tenants existed
/// belong to their sender, as their campaigns do.
pub(crate) fn tenant_of<'a>(d: &'a Delivery, msg: &'a sluice_core::model::NewMessage) -> &'a str {
    if d.tenant.is_empty() { &msg.sender } else { &d.tenant }
}
