//! The embedded spike queue: a durable FIFO queue with message groups, SQS FIFO semantics.
//!
//! Messages, their receive counts, the dead letters and the messages held by an operator's
//! pause (by hold key) live in a redb file; which message is in flight until when lives in
//! memory, in a compact index (about 150 bytes a queued message; about 270 bytes of resident
//! memory, counting the spare capacity of its tables; after a crash every message is visible
//! again, as an SQS visibility timeout would make it). Semantics:
//! - a group with a message in flight is not handed out until that message is acked,
//!   released, dead-lettered or its visibility timeout expires;
//! - within a group, messages are delivered in the order they were sent;
//! - every receive grows the message's receive count durably before the message is handed out
//!   (so a message that crashes its consumer is seen to do so, even across restarts); an ack
//!   is committed without an fsync of its own and becomes durable with the next receive or at
//!   close, so a crash may redeliver acked messages, which the store recognises by their ids;
//! - tenants with visible messages take turns by weighted deficit round robin
//!   ([`scheduler`]), so one tenant's small campaign is not held behind another's large one;
//! - messages with a deduplication id seen in the last `dedup_window` are accepted and dropped
//!   (after a restart the window covers the messages still queued);
//! - cancel-safe: an operation that writes runs to its end even when its caller is dropped,
//!   and seqs are reserved before the write, so a cancelled send never lends its seqs out.
//!
//! Modules: [`scheduler`] (which group goes next: pure, property-tested), `records` (tables
//! and records), `areas` (dead letters and held messages).

use crate::codec::{encode, queue_err};
use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use scheduler::{FastMap, FastSet, NameKey, Scheduler, name_key};
use sluice_core::error::QueueError;
use sluice_core::now_ms;
use sluice_core::queue::{DeadLetter, Delivery, Enqueue, QueueStats, Receipt, SendOutcome, SpikeQueue, TenantWeights};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

mod areas;
mod records;
mod scheduler;

use records::{Q_DEAD, Q_HELD, Q_MSGS, Q_RECV, QRec, decode_dead, decode_qrec};

/// Largest number of messages written in one transaction by `send`.
const SEND_CHUNK: usize = 20_000;

/// Settings of the embedded queue.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// How long a deduplication id is remembered (SQS: 5 minutes).
    pub dedup_window: Duration,
    /// Memory redb may use to cache the queue file's pages.
    pub cache_bytes: usize,
    /// Shares of the drain between tenants with backlog.
    pub weights: Arc<TenantWeights>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig { dedup_window: Duration::from_secs(300), cache_bytes: DEFAULT_QUEUE_CACHE_BYTES, weights: Arc::default() }
    }
}

/// Default of [`QueueConfig::cache_bytes`] (redb's own default is 1 GiB, which a long-lived
/// server grows into as the file grows). The queue appends and reads back in order, so a
/// small cache serves it.
pub const DEFAULT_QUEUE_CACHE_BYTES: usize = 16 << 20;

/// A message written back into the queue: its new seq, group, tenant and first enqueue time.
type Requeued = (u64, String, String, i64);

struct State {
    sched: Scheduler,
    /// Deduplication ids of the window by their 128-bit key ([`name_key`]), with when they
    /// leave it; a million of them during a spike, so no copy of the id is kept.
    dedup: FastMap<NameKey, i64>,
    dedup_order: VecDeque<(i64, NameKey)>,
    next_seq: u64,
    dead: u64,
    held: u64,
}

impl State {
    /// Forgets the deduplication ids whose window passed and gives back what a spike grew the
    /// tables to once they are mostly empty. Sends and idle receives call it, so a quiet queue
    /// does not keep a past spike's million keys until the next send.
    fn prune(&mut self, now_ms: i64) {
        self.prune_dedup(now_ms);
        if shrinkable(self.dedup.len(), self.dedup.capacity()) {
            self.dedup.shrink_to(self.dedup.len() * 2);
        }
        if shrinkable(self.dedup_order.len(), self.dedup_order.capacity()) {
            self.dedup_order.shrink_to(self.dedup_order.len() * 2);
        }
        self.sched.shrink();
    }

    fn prune_dedup(&mut self, now_ms: i64) {
        while let Some((expires, _)) = self.dedup_order.front() {
            if *expires > now_ms {
                break;
            }
            let (expires, id) = self.dedup_order.pop_front().expect("front exists");
            if self.dedup.get(&id) == Some(&expires) {
                self.dedup.remove(&id);
            }
        }
    }
}

/// Whether a table of `len` entries in room for `capacity` holds enough spare room to be
/// worth reallocating smaller (a quarter full, and not small).
pub(crate) fn shrinkable(len: usize, capacity: usize) -> bool {
    capacity > 4096 && len < capacity / 4
}

/// Runs a queue operation to its end even when its caller goes away.
///
/// A write and the in-memory state update that follows it must both happen or neither: a
/// caller dropped between the two (a gRPC deadline, a `select!`) would leave the state
/// disagreeing with the file, for example an acked message still handed out, or seqs
/// reserved on disk that the next send takes again. Every operation that writes runs in its
/// own task, and the caller only awaits its result.
async fn detached<T: Send + 'static>(op: impl Future<Output = Result<T, QueueError>> + Send + 'static) -> Result<T, QueueError> {
    tokio::spawn(op).await.map_err(|e| QueueError::Internal(format!("queue operation failed: {e}")))?
}

fn receipt(seq: u64, count: u32) -> Receipt {
    Receipt(format!("{seq}.{count}"))
}

fn parse_receipt(r: &Receipt) -> Result<(u64, u32), QueueError> {
    let bad = || QueueError::Invalid(format!("malformed receipt {:?}", r.0));
    let (s, c) = r.0.split_once('.').ok_or_else(bad)?;
    Ok((s.parse().map_err(|_| bad())?, c.parse().map_err(|_| bad())?))
}

/// The embedded spike queue. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedQueue {
    inner: Arc<QInner>,
}

struct QInner {
    db: Arc<Database>,
    state: Mutex<State>,
    notify: Notify,
    /// Serializes sends and redrives so that seq order is commit order.
    send_lock: tokio::sync::Mutex<()>,
    config: QueueConfig,
}

impl EmbeddedQueue {
    /// Deduplication ids remembered now (their window has not passed, or no send or idle
    /// receive has pruned them yet).
    pub fn dedup_keys(&self) -> usize {
        self.state().dedup.len()
    }

    /// Opens (or creates) the queue file at `path`; every message found is visible.
    pub fn open(path: &Path, config: QueueConfig) -> Result<Self, QueueError> {
        let db = Database::builder().set_cache_size(config.cache_bytes).create(path).map_err(queue_err)?;
        let txn = db.begin_write().map_err(queue_err)?;
        let mut state = State {
            sched: Scheduler::new(config.weights.clone()),
            dedup: FastMap::default(),
            dedup_order: VecDeque::new(),
            next_seq: 0,
            dead: 0,
            held: 0,
        };
        {
            let msgs = txn.open_table(Q_MSGS).map_err(queue_err)?;
            let recv = txn.open_table(Q_RECV).map_err(queue_err)?;
            let dead = txn.open_table(Q_DEAD).map_err(queue_err)?;
            let held = txn.open_table(Q_HELD).map_err(queue_err)?;
            state.held = held.len().map_err(queue_err)?;
            let last_held = held
                .iter()
                .map_err(queue_err)?
                .map(|e| e.map(|(k, _)| k.value().1))
                .try_fold(0u64, |m, s| s.map(|s| m.max(s)))
                .map_err(queue_err)?;
            let now = now_ms();
            let window = config.dedup_window.as_millis() as i64;
            for entry in msgs.iter().map_err(queue_err)? {
                let (k, v) = entry.map_err(queue_err)?;
                let seq = k.value();
                let rec = decode_qrec(v.value()).map_err(queue_err)?;
                let count = recv.get(seq).map_err(queue_err)?.map(|c| c.value()).unwrap_or(0);
                state.sched.push(seq, &rec.group, &rec.tenant, count, rec.enqueued_at_ms);
                if rec.enqueued_at_ms + window > now {
                    let id = name_key(&rec.dedup_id);
                    state.dedup.insert(id, rec.enqueued_at_ms + window);
                    state.dedup_order.push_back((rec.enqueued_at_ms + window, id));
                }
            }
            state.dedup_order.make_contiguous().sort();
            let last_msg = msgs.last().map_err(queue_err)?.map(|(k, _)| k.value()).unwrap_or(0);
            let last_dead = dead.last().map_err(queue_err)?.map(|(k, _)| k.value()).unwrap_or(0);
            state.next_seq = last_msg.max(last_dead).max(last_held) + 1;
            state.dead = dead.len().map_err(queue_err)?;
        }
        txn.commit().map_err(queue_err)?;
        Ok(EmbeddedQueue {
            inner: Arc::new(QInner {
                db: Arc::new(db),
                state: Mutex::new(state),
                notify: Notify::new(),
                send_lock: tokio::sync::Mutex::new(()),
                config,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the state from a blocking thread. A send that grows the tables holds the
    /// lock for tens of milliseconds (a million deduplication keys rehashed): a reader of
    /// figures waiting for it on an async thread would hold up every task queued behind it
    /// there, chat's among them where the queue shares a process with chat.
    async fn read_state<T: Send + 'static>(&self, f: impl FnOnce(&mut State) -> T + Send + 'static) -> Result<T, QueueError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&mut this.state())).await.map_err(|e| QueueError::Internal(format!("queue read failed: {e}")))
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error> + Send + 'static,
    ) -> Result<T, QueueError> {
        self.write_with(redb::Durability::Immediate, f).await
    }

    /// [`Self::write`] at the given durability. `Durability::None` commits no sooner than the
    /// next immediate commit: for writes whose loss in a crash only redelivers messages.
    async fn write_with<T: Send + 'static>(
        &self,
        durability: redb::Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error> + Send + 'static,
    ) -> Result<T, QueueError> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write().map_err(queue_err)?;
            txn.set_durability(durability).map_err(queue_err)?;
            let out = f(&txn).map_err(queue_err)?;
            txn.commit().map_err(queue_err)?;
            Ok(out)
        })
        .await
        .map_err(|e| QueueError::Internal(e.to_string()))?
    }

    /// The whole of a send. Runs detached from the caller (see [`detached`]): seqs are
    /// reserved under the state lock before the write, so a later send can never reuse them.
    async fn send_now(&self, batch: Vec<Enqueue>) -> Result<SendOutcome, QueueError> {
        let _guard = self.inner.send_lock.lock().await;
        let now = now_ms();
        let window = self.inner.config.dedup_window.as_millis() as i64;
        let mut outcome = SendOutcome::default();
        let mut fresh = Vec::with_capacity(batch.len());
        {
            let mut st = self.state();
            st.prune(now);
            let mut seen = FastSet::default();
            for m in batch {
                if m.group.is_empty() || m.dedup_id.is_empty() {
                    return Err(QueueError::Invalid("group and dedup_id are required".into()));
                }
                let id = name_key(&m.dedup_id);
                if st.dedup.contains_key(&id) || !seen.insert(id) {
                    outcome.duplicates += 1;
                    continue;
                }
                fresh.push(m);
            }
        }
        for chunk in fresh.chunks(SEND_CHUNK) {
            let first_seq = {
                let mut st = self.state();
                let first = st.next_seq;
                st.next_seq += chunk.len() as u64;
                first
            };
            let mut recs: Vec<(u64, Vec<u8>)> = Vec::with_capacity(chunk.len());
            for (i, m) in chunk.iter().enumerate() {
                sluice_core::share_runtime(i).await;
                let rec = QRec {
                    dedup_id: m.dedup_id.clone(),
                    group: m.group.clone(),
                    body: m.body.to_vec(),
                    enqueued_at_ms: now,
                    tenant: m.tenant.clone(),
                };
                recs.push((first_seq + i as u64, encode(&rec)));
            }
            self.write(move |txn| {
                let mut t = txn.open_table(Q_MSGS)?;
                for (seq, rec) in &recs {
                    t.insert(*seq, rec.as_slice())?;
                }
                Ok(())
            })
            .await?;
            let mut st = self.state();
            for (i, m) in chunk.iter().enumerate() {
                st.sched.push(first_seq + i as u64, &m.group, &m.tenant, 0, now);
                let id = name_key(&m.dedup_id);
                st.dedup.insert(id, now + window);
                st.dedup_order.push_back((now + window, id));
            }
            outcome.enqueued += chunk.len();
            drop(st);
            self.inner.notify.notify_waiters();
        }
        Ok(outcome)
    }

    async fn ack_now(&self, receipts: Vec<Receipt>) -> Result<(), QueueError> {
        let receipts = receipts.as_slice();
        let mut seqs = Vec::with_capacity(receipts.len());
        for r in receipts {
            seqs.push(parse_receipt(r)?.0);
        }
        let s = seqs.clone();
        // An ack lost in a crash redelivers its messages, which the store recognises by their
        // ids: acks need no fsync of their own, and are made durable by the next receive's.
        self.write_with(redb::Durability::None, move |txn| {
            let mut msgs = txn.open_table(Q_MSGS)?;
            let mut recv = txn.open_table(Q_RECV)?;
            for seq in s {
                msgs.remove(seq)?;
                recv.remove(seq)?;
            }
            Ok(())
        })
        .await?;
        let mut st = self.state();
        for seq in seqs {
            st.sched.remove(seq);
        }
        drop(st);
        self.inner.notify.notify_waiters();
        Ok(())
    }

    /// The seq of the message `r` is the current delivery of.
    fn current_seq(&self, r: &Receipt) -> Result<u64, QueueError> {
        let st = self.state();
        self.current(&st, std::slice::from_ref(r))?
            .first()
            .copied()
            .ok_or_else(|| QueueError::Invalid(format!("receipt {} is no longer current", r.0)))
    }

    /// Writes receive counts and reads bodies for messages just picked.
    async fn deliver(&self, picked: Vec<(u64, u32)>) -> Result<Vec<Delivery>, QueueError> {
        let p = picked.clone();
        let recs = self
            .write(move |txn| {
                let msgs = txn.open_table(Q_MSGS)?;
                let mut recv = txn.open_table(Q_RECV)?;
                let mut out = Vec::with_capacity(p.len());
                for (seq, count) in p {
                    recv.insert(seq, count)?;
                    let v = msgs.get(seq)?.ok_or_else(|| redb::Error::Corrupted(format!("queued message {seq} missing")))?;
                    out.push(decode_qrec(v.value())?);
                }
                Ok(out)
            })
            .await;
        match recs {
            Ok(recs) => Ok(picked
                .into_iter()
                .zip(recs)
                .map(|((seq, count), rec)| Delivery {
                    receipt: receipt(seq, count),
                    dedup_id: rec.dedup_id,
                    group: rec.group,
                    tenant: rec.tenant,
                    body: Bytes::from(rec.body),
                    receive_count: count,
                    enqueued_at_ms: rec.enqueued_at_ms,
                })
                .collect()),
            Err(e) => {
                let mut st = self.state();
                for (seq, _) in picked {
                    st.sched.unflight(seq);
                    if let Some(e) = st.sched.entries.get_mut(&seq) {
                        e.receive_count -= 1;
                    }
                }
                drop(st);
                self.inner.notify.notify_waiters();
                Err(e)
            }
        }
    }

    /// Receipts that still match the current delivery of their message.
    fn current(&self, st: &State, receipts: &[Receipt]) -> Result<Vec<u64>, QueueError> {
        let mut out = Vec::with_capacity(receipts.len());
        for r in receipts {
            let (seq, count) = parse_receipt(r)?;
            if st.sched.is_delivery(seq, count) {
                out.push(seq);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl SpikeQueue for EmbeddedQueue {
    async fn send(&self, batch: Vec<Enqueue>) -> Result<SendOutcome, QueueError> {
        let this = self.clone();
        detached(async move { this.send_now(batch).await }).await
    }

    async fn receive(&self, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        let give_up = Instant::now() + wait;
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (picked, next_expiry) = {
                let mut st = self.state();
                let now = Instant::now();
                st.sched.expire(now);
                let picked = st.sched.pick(max.max(1), now + visibility);
                if picked.is_empty() {
                    st.prune(now_ms());
                }
                (picked, st.sched.deadlines.first().map(|(t, _)| *t))
            };
            if !picked.is_empty() {
                return self.deliver(picked).await;
            }
            let now = Instant::now();
            if now >= give_up {
                return Ok(Vec::new());
            }
            let wake = next_expiry.map_or(give_up, |t| t.min(give_up));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn ack(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        let this = self.clone();
        let receipts = receipts.to_vec();
        detached(async move { this.ack_now(receipts).await }).await
    }

    async fn extend(&self, receipts: &[Receipt], visibility: Duration) -> Result<(), QueueError> {
        let mut st = self.state();
        let deadline = Instant::now() + visibility;
        for seq in self.current(&st, receipts)? {
            let extended = st.sched.extend(seq, deadline);
            debug_assert!(extended, "a current receipt's message is in flight");
        }
        Ok(())
    }

    async fn release(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        {
            let mut st = self.state();
            for seq in self.current(&st, receipts)? {
                st.sched.unflight(seq);
            }
        }
        self.inner.notify.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self, r: &Receipt, reason: &str) -> Result<(), QueueError> {
        let this = self.clone();
        let (r, reason) = (r.clone(), reason.to_string());
        detached(async move { this.dead_letter_now(r, reason).await }).await
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.read_state(|st| {
            st.sched.expire(Instant::now());
            let total = st.sched.entries.len() as u64;
            let oldest = st.sched.entries.values().next().map_or(0, |e| (now_ms() - e.enqueued_at_ms).max(0) as u64);
            QueueStats {
                visible: total - st.sched.in_flight(),
                in_flight: st.sched.in_flight(),
                dead: st.dead,
                held: st.held,
                oldest_age_ms: oldest,
            }
        })
        .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(queue_err)?;
            let t = txn.open_table(Q_DEAD).map_err(queue_err)?;
            let mut out = Vec::new();
            for entry in t.iter().map_err(queue_err)?.take(limit) {
                let (_, v) = entry.map_err(queue_err)?;
                let d = decode_dead(v.value()).map_err(queue_err)?;
                out.push(DeadLetter {
                    dedup_id: d.dedup_id,
                    group: d.group,
                    tenant: d.tenant,
                    body: Bytes::from(d.body),
                    reason: d.reason,
                    receive_count: d.receive_count,
                    dead_at_ms: d.dead_at_ms,
                });
            }
            Ok(out)
        })
        .await
        .map_err(|e| QueueError::Internal(e.to_string()))?
    }

    async fn redrive(&self, limit: usize) -> Result<usize, QueueError> {
        let this = self.clone();
        detached(async move { this.redrive_now(limit).await }).await
    }

    async fn tenant_backlog(&self, tenant: &str) -> Result<Option<u64>, QueueError> {
        let tenant = tenant.to_string();
        self.read_state(move |st| Some(st.sched.backlog(&tenant))).await
    }

    async fn tenant_backlogs(&self) -> Result<Vec<(String, u64)>, QueueError> {
        self.read_state(|st| st.sched.backlogs()).await
    }

    async fn hold(&self, receipts: &[Receipt], key: &str) -> Result<usize, QueueError> {
        let (this, r, key) = (self.clone(), receipts.to_vec(), key.to_string());
        detached(async move { this.hold_now(r, key).await }).await
    }

    async fn release_held(&self, key: &str, limit: usize) -> Result<usize, QueueError> {
        let (this, key) = (self.clone(), key.to_string());
        detached(async move { this.release_held_now(key, limit).await }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Figures are read off the async thread: while a send holds the state (growing its
    /// tables), other tasks on the reader's thread go on.
    #[tokio::test(flavor = "current_thread")]
    async fn reading_figures_while_the_state_is_held_leaves_the_runtime_free() {
        let dir = tempfile::tempdir().unwrap();
        let q = EmbeddedQueue::open(&dir.path().join("queue.redb"), QueueConfig::default()).unwrap();
        let other_ran = Arc::new(AtomicBool::new(false));
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let holder = {
            let (q, other_ran) = (q.clone(), other_ran.clone());
            std::thread::spawn(move || {
                let _st = q.state();
                held_tx.send(()).unwrap();
                // Held until a task of the runtime ran (or long enough to show it could not).
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while !other_ran.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        held_rx.recv().unwrap();
        let other = tokio::spawn({
            let other_ran = other_ran.clone();
            async move { other_ran.store(true, Ordering::SeqCst) }
        });
        let (stats, backlogs, backlog) = tokio::join!(q.stats(), q.tenant_backlogs(), q.tenant_backlog("acme"));
        assert!(other_ran.load(Ordering::SeqCst), "another task ran while the figures waited for the state");
        assert_eq!((stats.unwrap().visible, backlogs.unwrap(), backlog.unwrap()), (0, vec![], Some(0)));
        other.await.unwrap();
        holder.join().unwrap();
    }
}
