//! The spike queue port: a durable FIFO queue with message groups (SQS FIFO semantics).

use crate::error::QueueError;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::time::Duration;

/// A message to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueue {
    /// Messages with an id seen within the deduplication window are accepted and dropped.
    pub dedup_id: String,
    /// Messages of one group are delivered in order, one batch of the group at a time.
    pub group: String,
    /// Who the message is drained for: tenants with backlog share the drain fairly. Empty:
    /// the default tenant.
    pub tenant: String,
    pub body: Bytes,
}

/// The weights of tenants in the drain's fair share (default 1 each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantWeights {
    weights: HashMap<String, u32>,
}

impl TenantWeights {
    /// Weights below 1 count as 1.
    pub fn new(weights: HashMap<String, u32>) -> Self {
        TenantWeights { weights }
    }

    /// Parses `tenant=weight` settings (the `--tenant-weight` flag).
    pub fn parse(settings: &[String]) -> Result<Self, String> {
        let mut weights = HashMap::new();
        for s in settings {
            let (t, w) = s.split_once('=').ok_or_else(|| format!("tenant weight {s:?}: expected TENANT=WEIGHT"))?;
            let w: u32 = w.parse().map_err(|_| format!("tenant weight {s:?}: the weight must be a whole number"))?;
            if t.is_empty() || !(1..=1000).contains(&w) {
                return Err(format!("tenant weight {s:?}: a tenant and a weight from 1 to 1000"));
            }
            weights.insert(t.to_string(), w);
        }
        Ok(TenantWeights { weights })
    }

    pub fn of(&self, tenant: &str) -> u32 {
        self.weights.get(tenant).copied().unwrap_or(1).max(1)
    }
}

/// Opaque handle of one delivery of a message; valid until acked, released or expired.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt(pub String);

/// A message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub receipt: Receipt,
    pub dedup_id: String,
    pub group: String,
    pub tenant: String,
    pub body: Bytes,
    /// How many times the message has been received, this time included.
    pub receive_count: u32,
    pub enqueued_at_ms: i64,
}

/// A message in the dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub dedup_id: String,
    pub group: String,
    pub tenant: String,
    pub body: Bytes,
    pub reason: String,
    pub receive_count: u32,
    pub dead_at_ms: i64,
}

/// Outcome of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendOutcome {
    pub enqueued: usize,
    /// Dropped as duplicates of a message sent within the deduplication window.
    pub duplicates: usize,
}

/// Queue depth figures for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub visible: u64,
    pub in_flight: u64,
    pub dead: u64,
    /// Messages held by an operator's pause.
    pub held: u64,
    /// Age of the oldest message not yet acked, in ms (0 when empty).
    pub oldest_age_ms: u64,
}

/// A durable FIFO queue with message groups.
///
/// Contract: a message sent is durable when `send` returns. A group with a message in flight
/// is not handed out again until that message is acked, released or its visibility timeout
/// expires, so one group is consumed by one consumer at a time, in order. Tenants with
/// visible messages share receives by their weights: a tenant's small backlog is not held
/// behind another tenant's large one (exactly on the embedded queue, per tenant lane on SQS). A message that is
/// not acked becomes visible again after its visibility timeout, with its receive count
/// grown (at-least-once delivery: consumers must be idempotent).
#[async_trait]
pub trait SpikeQueue: Send + Sync + 'static {
    /// Enqueues a batch durably, in order. Implementations split it as their backend needs.
    async fn send(&self, batch: Vec<Enqueue>) -> Result<SendOutcome, QueueError>;

    /// Receives up to `max` messages, waiting up to `wait` for the first. Messages of one
    /// group come in order. Each stays invisible to other consumers for `visibility`.
    async fn receive(&self, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<Delivery>, QueueError>;

    /// Deletes delivered messages. Call only after their effect committed.
    async fn ack(&self, receipts: &[Receipt]) -> Result<(), QueueError>;

    /// Extends the visibility timeout of in-flight messages (heartbeat of a slow batch).
    async fn extend(&self, receipts: &[Receipt], visibility: Duration) -> Result<(), QueueError>;

    /// Makes in-flight messages visible again at once (a consumer giving work back).
    async fn release(&self, receipts: &[Receipt]) -> Result<(), QueueError>;

    /// Moves an in-flight message to the dead-letter queue, keeping `reason`.
    async fn dead_letter(&self, receipt: &Receipt, reason: &str) -> Result<(), QueueError>;

    /// Depth figures.
    async fn stats(&self) -> Result<QueueStats, QueueError>;

    /// Up to `limit` dead letters, oldest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;

    /// Moves up to `limit` dead letters back to the queue (receive count reset); returns how many.
    async fn redrive(&self, limit: usize) -> Result<usize, QueueError>;

    /// Messages of `tenant` in the queue (visible or in flight), when the backend counts them
    /// per tenant; `None` when it cannot tell (SQS lanes are shared by tenants).
    async fn tenant_backlog(&self, _tenant: &str) -> Result<Option<u64>, QueueError> {
        Ok(None)
    }

    /// Every tenant with messages in the queue and how many (visible or in flight), when the
    /// backend counts per tenant; empty when it cannot tell.
    async fn tenant_backlogs(&self) -> Result<Vec<(String, u64)>, QueueError> {
        Ok(Vec::new())
    }

    /// The receives after which the queue moves a message to the dead-letter queue by itself
    /// (SQS: the redrive policy's maxReceiveCount); `None` when it never does.
    async fn own_max_receives(&self) -> Result<Option<u32>, QueueError> {
        Ok(None)
    }

    /// Up to `limit` dead letters the queue moved by itself, not yet adopted. Each stays
    /// hidden from other callers for a while; [`SpikeQueue::mark_adopted`] marks it (with a
    /// reason) once its campaign has counted it, else it is offered again later.
    async fn adoptable_dead_letters(&self, _limit: usize) -> Result<Vec<(DeadLetter, Receipt)>, QueueError> {
        Ok(Vec::new())
    }

    /// Marks dead letters from [`SpikeQueue::adoptable_dead_letters`] as adopted, keeping
    /// `reason`; they stay in the dead-letter queue.
    async fn mark_adopted(&self, _receipts: &[Receipt], _reason: &str) -> Result<(), QueueError> {
        Ok(())
    }

    /// Moves in-flight messages to the held area under `key` (an operator's pause of the
    /// key's scope, or its rate). Each keeps its group, tenant and body, and waits there,
    /// durably and without being received, until [`SpikeQueue::release_held`] of its key.
    /// Returns how many moved: a receipt no longer current is left alone (its message comes
    /// back after its visibility timeout).
    async fn hold(&self, receipts: &[Receipt], key: &str) -> Result<usize, QueueError>;

    /// Moves up to `limit` messages held under `key` back to the queue (receive count reset),
    /// in the order they were held; returns how many.
    async fn release_held(&self, key: &str, limit: usize) -> Result<usize, QueueError>;
}
