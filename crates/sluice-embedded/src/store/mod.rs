//! The embedded message store: one redb file, the logical model of DESIGN.md.
//!
//! All writes go through one writer thread. It takes every operation waiting in its channel
//! (up to [`MAX_GROUP`] messages' worth), applies them inside one write transaction and
//! makes it durable once: concurrent senders share the cost of one sync (group commit). By
//! default that is redb's durable commit; with [`StoreConfig::checkpoint_every`] set, it is
//! the redo log's (`redo`): the transaction's rows appended to a log, then committed to redb
//! without a sync, made durable in the file at the next checkpoint. Reads run on redb's MVCC
//! snapshots and never wait for the writer.
//!
//! Operations come in two lanes (DESIGN.md invariant 6): the bulk lane (one-off messages
//! from the queue, campaign bookkeeping) and everything else, which is interactive. Waiting
//! interactive operations go first, and while interactive traffic is flowing (any in the
//! last ten seconds) a commit takes at most [`BULK_SLICE`] bulk messages, so a chat send
//! waits behind one short commit rather than behind a queue of campaign batches. Each lane
//! keeps its arrival order.
//!
//! Here: the store's handle, its reads and the [`MessageStore`] implementation; the writer
//! thread and its lanes are in `lanes`, one write transaction's logic in `writer`, the
//! tables and records in `records`, the redo log in `redo`.
//!
//! Tables (keys → postcard records):
//! - `rooms`: room → last_seq, version, created_at. A direct room (`dm:a:b`) has a record
//!   only if CreateRoom made it (or an earlier version of the store), and its last seq is
//!   always its newest message's: its messages do not write the record.
//! - `members`: (room, user) → joined_at. None for a direct room its first message made:
//!   its members are the two its id names.
//! - `messages`: (room, seq) → msg_id, sender, body, kind, campaign, sent_at
//! - `room_msg_ids`: (room, msg_id) → seq, the idempotency index, of every message but a direct
//!   room's first, whose own row holds its msg_id (until 2026-12-03 `msg_ids`:
//!   msg_id → (room, seq), moved over when a store that has it opens)
//! - `inbox`: (user, room) → unread, read_seq, version, preview, updated_at; and (user, "") →
//!   the user's total unread (until 2026-12-03 in `totals`: user → total, moved over when a
//!   store that has it opens)
//! - `campaigns`, `campaign_recipients`, `campaign_dead`: bulk campaign progress (the
//!   recipients table also keeps each counted EnqueueBulk call's `~call:` key)
//! - `campaign_owners`: campaign → the sender it belongs to
//! - `meta`: `counters_version`, the store-wide version of unread counters; `redo_lsn`, the
//!   last redo log record the store holds

mod lanes;
mod records;
mod redo;
mod writer;

use crate::codec::{decode, encode, store_err};
use async_trait::async_trait;
use lanes::*;
use records::*;
use redb::{Database, ReadableDatabase, ReadableTable};
use sluice_core::control::{Control, Controls, Scope};
use sluice_core::error::StoreError;
use sluice_core::ids;
use sluice_core::model::{
    Campaign, HistoryQuery, Inbox, InboxPage, InboxRoom, NewMessage, Persisted, ReadOutcome, Room, StoredMessage, UnreadUpdate,
};
use sluice_core::store::{Membership, MessageStore};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::oneshot;
use writer::Writer;

pub use lanes::{BULK_SLICE, MAX_GROUP};

/// Plans of one mark-read tried before it gives up to concurrent reads of the same row.
const READ_ATTEMPTS: usize = 8;

#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    writer: Option<std::sync::mpsc::Sender<Op>>,
    thread: Option<std::thread::JoinHandle<()>>,
    health: Arc<WriterHealth>,
    /// Admission to the writer, per lane (interactive, bulk): the weight (messages,
    /// recipients) queued for the writer and not yet answered. A caller beyond it waits.
    pending: [Arc<tokio::sync::Semaphore>; 2],
    max_pending: usize,
    /// Operations handed to the writer since the store opened.
    sent_ops: std::sync::atomic::AtomicU64,
}

/// Settings of the embedded store.
#[derive(Debug, Clone, Copy)]
pub struct StoreConfig {
    /// Most weight (messages, recipients, other operations) waiting for the writer per lane;
    /// beyond it callers wait for room (backpressure) instead of growing memory.
    pub max_pending: usize,
    /// Write each message's `message_persisted` event to the outbox in the message's own
    /// transaction (see [`crate::outbox`]); run [`crate::outbox::relay`] to deliver them.
    pub outbox: bool,
    /// Memory redb may use to cache the store file's pages.
    pub cache_bytes: usize,
    /// How often a commit is made durable in the store file itself (a checkpoint); other
    /// commits are made durable by the redo log (see `redo`). Zero (the default): every
    /// commit is durable in the file and the log stays empty. Longer: fewer page writes, but
    /// each checkpoint holds the writer while it writes out the pages since the last one.
    pub checkpoint_every: std::time::Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_pending: DEFAULT_MAX_PENDING,
            outbox: false,
            cache_bytes: DEFAULT_STORE_CACHE_BYTES,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
        }
    }
}

/// Default of [`StoreConfig::cache_bytes`] (redb's own default is 1 GiB, which a long-lived
/// server grows into as the file grows: the soak measured +1.1 GiB in 30 minutes). A drain of
/// one-offs writes leaves at random over a file far larger than any cache, so a bigger cache
/// buys it nothing: a 1M spike drained as fast with 8 MiB as with 256 MiB (the OS page cache
/// serves the rereads), and the spike's peak memory fell by the difference.
pub const DEFAULT_STORE_CACHE_BYTES: usize = 64 << 20;

/// Default of [`StoreConfig::checkpoint_every`]: every commit durable in the file. With the
/// redo log and a checkpoint a second, chat's persist p50 fell by a third and the drain
/// without chat rose 10%, but each checkpoint held the writer 20 ms on a new store and
/// 100-150 ms on one grown by millions of messages, which chat's p99 and the drain governor
/// see (docs/benchmarks, "The redo log").
pub const DEFAULT_CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::ZERO;

/// Default of [`StoreConfig::max_pending`]: a few full commits' worth per lane.
pub const DEFAULT_MAX_PENDING: usize = 4 * MAX_GROUP;

/// What the writer thread reports about itself, for `/readyz` and tests.
#[derive(Default)]
struct WriterHealth {
    commits: std::sync::atomic::AtomicU64,
    /// The last commit failed (an I/O error): the store cannot take writes until one succeeds.
    failing: std::sync::atomic::AtomicBool,
    /// Told when a commit left events in the outbox.
    outbox_wake: Arc<tokio::sync::Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Rows of an earlier layout's table moved per transaction when a store opens: a store of
/// millions of messages would otherwise hold them all in one transaction.
const MOVE_CHUNK: usize = 100_000;

/// Moves the tables of earlier layouts into today's: the idempotency index keyed by msg_id
/// alone (`msg_ids`) into `room_msg_ids`, users' totals (`totals`) into `inbox`. Runs after
/// the redo log's replay, whose older records may write the old tables.
fn move_legacy_tables(db: &Database) -> Result<(), redb::Error> {
    move_rows(db, MSG_IDS, ROOM_MSG_IDS, MOVE_CHUNK, |ids, msg_id, rec| {
        let rec: MsgIdRec = decode(rec)?;
        ids.insert((rec.room.as_str(), msg_id), rec.seq)?;
        Ok(())
    })?;
    move_rows(db, TOTALS, INBOX, MOVE_CHUNK, |inbox, user, total| {
        inbox.insert((user, TOTAL_ROW), total.to_le_bytes().as_slice())?;
        Ok(())
    })?;
    Ok(())
}

/// Moves every row of `from` into `to` (`put` writes one), `chunk` per transaction, then
/// drops `from` and logs how many it moved; returns that. A crash in between leaves each row in one
/// table or the other, and the next open goes on.
fn move_rows<K: redb::Key + 'static, V: redb::Value + 'static, DK: redb::Key + 'static, DV: redb::Value + 'static>(
    db: &Database,
    from: redb::TableDefinition<K, V>,
    to: redb::TableDefinition<DK, DV>,
    chunk: usize,
    put: impl for<'a, 'b> Fn(&mut redb::Table<'b, DK, DV>, K::SelfType<'a>, V::SelfType<'a>) -> Result<(), redb::Error>,
) -> Result<u64, redb::Error> {
    let mut moved = 0;
    loop {
        let txn = db.begin_write()?;
        if !has_table(&txn, from)? {
            return Ok(moved);
        }
        let mut n = 0;
        {
            let (mut old, mut new) = (txn.open_table(from)?, txn.open_table(to)?);
            while n < chunk {
                let Some((k, v)) = old.pop_first()? else { break };
                put(&mut new, k.value(), v.value())?;
                n += 1;
            }
        }
        if n == 0 {
            txn.delete_table(from)?;
            use redb::TableHandle;
            tracing::info!(rows = moved, from = from.name(), to = to.name(), "store: moved a table of an earlier layout");
        }
        txn.commit()?;
        moved += n as u64;
    }
}

fn has_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::WriteTransaction,
    table: redb::TableDefinition<K, V>,
) -> Result<bool, redb::Error> {
    use redb::TableHandle;
    Ok(txn.list_tables()?.any(|t| t.name() == table.name()))
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path` and creates its tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, StoreConfig::default())
    }

    /// [`EmbeddedStore::open`] with explicit settings.
    pub fn open_with(path: &Path, config: StoreConfig) -> Result<Self, StoreError> {
        let db = Arc::new(Database::builder().set_cache_size(config.cache_bytes).create(path).map_err(store_err)?);
        let log_path = redo::path_of(path);
        let txn = db.begin_write().map_err(store_err)?;
        {
            let w = Writer::open(&txn, true, &redo::Redo::default()).map_err(store_err)?;
            drop(w);
        }
        // Replay what the log holds beyond the store's durable state (a crash), then make it
        // durable so that the log can start over.
        let held = redo::held_lsn(&txn).map_err(store_err)?;
        let records: Vec<_> = redo::read(&log_path).map_err(store_err)?.into_iter().filter(|(lsn, _)| *lsn > held).collect();
        if let Some((first, _)) = records.first()
            && *first != held + 1
        {
            return Err(StoreError::Internal(format!("the redo log starts at {first}, the store holds up to {held}: a record is missing")));
        }
        for (_, rows) in &records {
            redo::apply(&txn, rows).map_err(store_err)?;
        }
        if !records.is_empty() {
            tracing::info!(records = records.len(), "store: replayed the redo log");
        }
        let lsn = records.last().map_or(held, |(lsn, _)| *lsn);
        txn.commit().map_err(store_err)?;
        move_legacy_tables(&db).map_err(store_err)?;
        let log = redo::RedoLog::create(&log_path, lsn).map_err(store_err)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let db2 = db.clone();
        let health = Arc::new(WriterHealth::default());
        let h2 = health.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-store-writer".into())
            .spawn(move || {
                let parts = WriterParts { db: &db2, health: &h2, outbox: config.outbox, log, checkpoint_every: config.checkpoint_every };
                writer_loop(parts, rx)
            })
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let max_pending = config.max_pending.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let pending = [0, 1].map(|_| Arc::new(tokio::sync::Semaphore::new(max_pending)));
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                writer: Some(tx),
                thread: Some(thread),
                health,
                pending,
                max_pending,
                sent_ops: Default::default(),
            }),
        })
    }

    /// Waits until the writer may take `weight` more in `bulk`'s lane; the permit is held
    /// until the answer comes back.
    async fn admit(&self, bulk: bool, weight: usize) -> Result<tokio::sync::OwnedSemaphorePermit, StoreError> {
        let weight = weight.clamp(1, self.inner.max_pending) as u32;
        self.inner.pending[usize::from(bulk)].clone().acquire_many_owned(weight).await.map_err(|_| writer_stopped())
    }

    pub(crate) fn db(&self) -> Arc<Database> {
        self.inner.db.clone()
    }

    pub(crate) fn outbox_wake(&self) -> Arc<tokio::sync::Notify> {
        self.inner.health.outbox_wake.clone()
    }

    /// Removes delivered events from the outbox.
    pub async fn outbox_done(&self, keys: Vec<u64>) -> Result<(), StoreError> {
        self.submit(|reply| Op::OutboxDone { keys, reply }).await
    }

    /// Write transactions committed since the store opened.
    pub fn commits(&self) -> u64 {
        self.inner.health.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the writer thread is alive and its last commit succeeded.
    fn writer_ok(&self) -> Result<(), StoreError> {
        let stopped = self.inner.thread.as_ref().is_none_or(|t| t.is_finished());
        if stopped {
            return Err(StoreError::Unavailable("the store's writer thread stopped".into()));
        }
        if self.inner.health.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Unavailable("the store's last commit failed".into()));
        }
        Ok(())
    }

    /// Queues an operation for the writer; its result comes on the returned receiver.
    fn send_op<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.hand_over(make(tx))?;
        Ok(rx)
    }

    fn hand_over(&self, op: Op) -> Result<(), StoreError> {
        let writer = self.inner.writer.as_ref().expect("writer lives as long as the store");
        writer.send(op).map_err(|_| writer_stopped())?;
        self.inner.sent_ops.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let op = make(tx);
        let _permit = self.admit(op.is_bulk(), op.weight()).await?;
        self.hand_over(op)?;
        rx.await.map_err(|_| writer_stopped())?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(store_err)?;
            f(&txn).map_err(store_err)
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }
}

/// Where a read would move a user's position, from one snapshot.
enum ReadPlan {
    Unchanged(ReadOutcome),
    Move { from: u64, to: u64, became_read: u64 },
}

/// Plans a read on a snapshot: the counting (a range scan of the room's messages) happens
/// here, on a reader thread, never on the writer that every write waits for.
fn plan_read(txn: &redb::ReadTransaction, user: &str, room: &str, seq: u64) -> Result<Result<ReadPlan, StoreError>, redb::Error> {
    let messages = txn.open_table(MESSAGES)?;
    let Some(rec) = room_state(&txn.open_table(ROOMS)?, &messages, room)? else {
        return Ok(Err(StoreError::UnknownRoom(room.to_string())));
    };
    let row = match txn.open_table(INBOX)?.get((user, room))?.map(|v| decode::<InboxRec>(v.value())).transpose()? {
        Some(row) => row,
        // The sender of a one-off has no row until it reads, chats or is written to.
        None if is_member(&txn.open_table(MEMBERS)?, room, user)? => InboxRec::default(),
        None => return Ok(Err(StoreError::NotMember { user: user.to_string(), room: room.to_string() })),
    };
    let target = seq.min(rec.last_seq);
    if target <= row.read_seq {
        let total = total_of(&txn.open_table(INBOX)?, user)?;
        // The snapshot's version: every change before it has a version at most this one.
        let version = txn.open_table(META)?.get(COUNTERS_VERSION)?.map_or(0, |v| v.value());
        return Ok(Ok(ReadPlan::Unchanged(ReadOutcome {
            read_seq: row.read_seq,
            unread: row.unread,
            total_unread: total,
            changed: false,
            version,
        })));
    }
    // Scan whichever range is shorter: what becomes read, or what stays unread.
    let became_read = if target - row.read_seq <= rec.last_seq - target {
        count_not_by(&messages, room, user, row.read_seq + 1, target)?
    } else {
        row.unread.saturating_sub(count_not_by(&messages, room, user, target + 1, rec.last_seq)?)
    };
    Ok(Ok(ReadPlan::Move { from: row.read_seq, to: target, became_read }))
}

#[async_trait]
impl MessageStore for EmbeddedStore {
    async fn create_room(&self, room: &str, members: &[String], now_ms: i64) -> Result<Room, StoreError> {
        let (room, members) = (room.to_string(), members.to_vec());
        self.submit(|reply| Op::CreateRoom { room, members, now_ms, reply }).await
    }

    async fn add_members(&self, room: &str, members: &[String], now_ms: i64) -> Result<Room, StoreError> {
        let (room, members) = (room.to_string(), members.to_vec());
        self.submit(|reply| Op::AddMembers { room, members, now_ms, reply }).await
    }

    async fn room(&self, room: &str) -> Result<Option<Room>, StoreError> {
        let room = room.to_string();
        self.read(move |txn| {
            let (rooms, messages) = (txn.open_table(ROOMS)?, txn.open_table(MESSAGES)?);
            let Some(rec) = room_state(&rooms, &messages, &room)? else { return Ok(None) };
            let members = room_members(&txn.open_table(MEMBERS)?, &room)?;
            let created_at_ms = created_at(&rooms, &messages, &room, &rec)?;
            Ok(Some(Room { room: room.clone(), members, last_seq: rec.last_seq, created_at_ms }))
        })
        .await
    }

    async fn membership(&self, room: &str, user: &str) -> Result<Membership, StoreError> {
        let (room, user) = (room.to_string(), user.to_string());
        self.read(move |txn| {
            let members = txn.open_table(MEMBERS)?;
            // A member row says the room exists; a direct room's members are its id's.
            if sluice_core::ids::dm_pair(&room).is_none() && members.get((room.as_str(), user.as_str()))?.is_some() {
                return Ok(Membership::Member);
            }
            if room_state(&txn.open_table(ROOMS)?, &txn.open_table(MESSAGES)?, &room)?.is_none() {
                return Ok(Membership::UnknownRoom);
            }
            Ok(if is_member(&members, &room, &user)? { Membership::Member } else { Membership::NotMember })
        })
        .await
    }

    async fn persist(&self, batch: Vec<NewMessage>) -> Result<Vec<Result<Persisted, StoreError>>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if !is_bulk_batch(&batch) || batch.len() <= BULK_CHUNK {
            return self.submit(|reply| Op::Persist(batch, reply)).await;
        }
        // A large bulk batch goes in room-whole chunks, queued together in the bulk lane (so
        // in order), so that a commit that interactive operations wait behind stays short.
        let n = batch.len();
        let _permit = self.admit(true, n).await?;
        let mut replies = Vec::new();
        for (positions, chunk) in bulk_chunks(batch) {
            replies.push((positions, self.send_op(|reply| Op::Persist(chunk, reply))?));
        }
        let mut out: Vec<Option<Result<Persisted, StoreError>>> = (0..n).map(|_| None).collect();
        for (positions, rx) in replies {
            let results = rx.await.map_err(|_| writer_stopped())?;
            // A chunk whose commit failed fails all its messages retryably; other chunks stand.
            let results = results.unwrap_or_else(|e| positions.iter().map(|_| Err(e.clone())).collect());
            for (pos, r) in positions.into_iter().zip(results) {
                out[pos] = Some(r);
            }
        }
        Ok(out.into_iter().map(|r| r.expect("every position answered")).collect())
    }

    async fn counters(&self, room: &str, users: &[String]) -> Result<Vec<UnreadUpdate>, StoreError> {
        let (room, users) = (room.to_string(), users.to_vec());
        self.read(move |txn| {
            let inbox = txn.open_table(INBOX)?;
            // The snapshot's version, as in a read that changes nothing.
            let version = txn.open_table(META)?.get(COUNTERS_VERSION)?.map_or(0, |v| v.value());
            let mut out = Vec::with_capacity(users.len());
            for user in users {
                let unread =
                    inbox.get((user.as_str(), room.as_str()))?.map(|v| decode::<InboxRec>(v.value())).transpose()?.map_or(0, |r| r.unread);
                let total_unread = total_of(&inbox, &user)?;
                out.push(UnreadUpdate { user, room: room.clone(), unread, total_unread, version });
            }
            Ok(out)
        })
        .await
    }

    async fn mark_read(&self, user: &str, room: &str, seq: u64, now_ms: i64) -> Result<ReadOutcome, StoreError> {
        // Planned on a snapshot (a read that moves nothing never reaches the writer nor costs
        // a commit), applied by the writer if nobody moved the position meanwhile.
        for _ in 0..READ_ATTEMPTS {
            let (u, r) = (user.to_string(), room.to_string());
            let plan = self.read(move |txn| plan_read(txn, &u, &r, seq)).await??;
            let (from, to, became_read) = match plan {
                ReadPlan::Unchanged(outcome) => return Ok(outcome),
                ReadPlan::Move { from, to, became_read } => (from, to, became_read),
            };
            let (user, room) = (user.to_string(), room.to_string());
            if let Some(outcome) = self.submit(|reply| Op::MarkRead { user, room, from, to, became_read, now_ms, reply }).await? {
                return Ok(outcome);
            }
        }
        Err(StoreError::Conflict(format!("the read position of {user} in {room} kept moving")))
    }

    async fn history(&self, room: &str, q: HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let room = room.to_string();
        self.read(move |txn| {
            let t = txn.open_table(MESSAGES)?;
            let lo = q.after.map_or(1, |a| a.saturating_add(1));
            let hi = q.before.map_or(u64::MAX, |b| b.saturating_sub(1));
            let mut out = Vec::new();
            if lo > hi || q.limit == 0 {
                return Ok(out);
            }
            let range = t.range((room.as_str(), lo)..=(room.as_str(), hi))?;
            let mut push = |entry: Result<(redb::AccessGuard<'_, (&str, u64)>, redb::AccessGuard<'_, &[u8]>), redb::StorageError>| -> Result<(), redb::Error> {
                let (k, v) = entry?;
                out.push(stored(&room, k.value().1, decode(v.value())?));
                Ok(())
            };
            if q.after.is_some() {
                for e in range.take(q.limit) {
                    push(e)?;
                }
            } else {
                for e in range.rev().take(q.limit) {
                    push(e)?;
                }
                out.reverse();
            }
            Ok(out)
        })
        .await
    }

    async fn inbox_page(&self, user: &str, page: InboxPage) -> Result<Inbox, StoreError> {
        let user = user.to_string();
        self.read(move |txn| {
            let inbox = txn.open_table(INBOX)?;
            let rooms = txn.open_table(ROOMS)?;
            let messages = txn.open_table(MESSAGES)?;
            let mut out = Inbox::default();
            let start = page.after.as_deref().unwrap_or("");
            for entry in inbox.range((user.as_str(), start)..)? {
                let (k, v) = entry?;
                let (u, room) = k.value();
                if u != user {
                    break;
                }
                if room == TOTAL_ROW || page.after.as_deref() == Some(room) {
                    continue;
                }
                if out.rooms.len() == page.limit {
                    out.next = out.rooms.last().map(|r| r.room.clone());
                    break;
                }
                let row: InboxRec = decode(v.value())?;
                let last_seq = room_state(&rooms, &messages, room)?.map_or(0, |r| r.last_seq);
                out.rooms.push(InboxRoom { room: room.to_string(), unread: row.unread, read_seq: row.read_seq, last_seq });
            }
            out.total_unread = total_of(&inbox, &user)?;
            Ok(out)
        })
        .await
    }

    async fn record_enqueued(
        &self,
        campaign_id: &str,
        sender: &str,
        requested: u64,
        recipients: &[String],
    ) -> Result<Campaign, StoreError> {
        let call = ids::enqueue_call_key(campaign_id, requested, recipients);
        if recipients.len() <= RECORD_CHUNK {
            let (campaign_id, owner, recipients) = (campaign_id.to_string(), sender.to_string(), recipients.to_vec());
            return self.submit(|reply| Op::RecordEnqueued { campaign_id, owner, requested, recipients, call, reply }).await;
        }
        // Many recipients go in slices, queued together in the bulk lane (so in order): a
        // commit that interactive operations wait behind records one slice, not 100,000
        // rows. The request lands alone, once every slice committed, so a reader never sees
        // a call's request without its recipients.
        let _permit = self.admit(true, recipients.len()).await?;
        let mut replies = Vec::new();
        for slice in recipients.chunks(RECORD_CHUNK) {
            let (campaign_id, owner, recipients) = (campaign_id.to_string(), sender.to_string(), slice.to_vec());
            let call = String::new();
            replies.push(self.send_op(|reply| Op::RecordEnqueued { campaign_id, owner, requested: 0, recipients, call, reply })?);
        }
        for rx in replies {
            rx.await.map_err(|_| writer_stopped())??;
        }
        let (campaign_id, owner) = (campaign_id.to_string(), sender.to_string());
        self.send_op(|reply| Op::RecordEnqueued { campaign_id, owner, requested, recipients: Vec::new(), call, reply })?
            .await
            .map_err(|_| writer_stopped())?
    }

    async fn record_dead_letter(&self, campaign_id: &str, room: &str, msg_id: &str) -> Result<(), StoreError> {
        let (campaign_id, room, msg_id) = (campaign_id.to_string(), room.to_string(), msg_id.to_string());
        self.submit(|reply| Op::RecordDeadLetter { campaign_id, room, msg_id, reply }).await
    }

    async fn put_campaign_body(&self, campaign_id: &str, body_ref: &str, body: &str) -> Result<(), StoreError> {
        let (campaign_id, body_ref, body) = (campaign_id.to_string(), body_ref.to_string(), body.to_string());
        self.submit(|reply| Op::PutBody { campaign_id, body_ref, body, reply }).await
    }

    async fn campaign_body(&self, campaign_id: &str, body_ref: &str) -> Result<Option<String>, StoreError> {
        let (campaign_id, body_ref) = (campaign_id.to_string(), body_ref.to_string());
        self.read(move |txn| {
            let t = match txn.open_table(CAMPAIGN_BODIES) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(t.get((campaign_id.as_str(), body_ref.as_str()))?.map(|b| b.value().to_string()))
        })
        .await
    }

    async fn campaign(&self, campaign_id: &str) -> Result<Option<Campaign>, StoreError> {
        let id = campaign_id.to_string();
        self.read(move |txn| {
            let t = txn.open_table(CAMPAIGNS)?;
            let Some(v) = t.get(id.as_str())? else { return Ok(None) };
            let owner = txn.open_table(CAMPAIGN_OWNERS)?.get(id.as_str())?.map(|o| o.value().to_string());
            Ok(Some(decode::<CampaignRec>(v.value())?.to_campaign(&id, owner.as_deref())))
        })
        .await
    }

    async fn tenant_backlog(&self, _tenant: &str) -> Result<Option<u64>, StoreError> {
        // The embedded queue counts each tenant's messages itself.
        Ok(None)
    }

    async fn set_control(&self, scope: &Scope, control: Control) -> Result<(), StoreError> {
        // Rare and tiny: written beside the writer thread (redb serializes write transactions).
        let (db, key) = (self.inner.db.clone(), scope.key());
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(store_err)?;
            {
                let mut t = txn.open_table(CONTROLS).map_err(store_err)?;
                if control.is_default() {
                    t.remove(key.as_str()).map_err(store_err)?;
                } else {
                    t.insert(key.as_str(), encode(&control).as_slice()).map_err(store_err)?;
                }
            }
            txn.commit().map_err(store_err)
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    async fn controls(&self) -> Result<Controls, StoreError> {
        self.read(|txn| {
            let t = match txn.open_table(CONTROLS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Controls::default()),
                Err(e) => return Err(e.into()),
            };
            let mut entries = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                if let Some(scope) = Scope::parse(k.value()) {
                    entries.push((scope, decode::<Control>(v.value())?));
                }
            }
            Ok(Controls { entries })
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.writer_ok()?;
        self.read(|txn| {
            txn.open_table(ROOMS)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod writer_tests {
    use super::*;
    use sluice_core::model::MessageKind;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_writer_makes_the_store_unready() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        store.ping().await.unwrap();
        store.inner.writer.as_ref().unwrap().send(Op::Crash).unwrap();
        while !store.inner.thread.as_ref().unwrap().is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(matches!(store.ping().await, Err(StoreError::Unavailable(_))), "/readyz must go red");
        let err = store.create_room("r", &["a".into()], 1).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_wait_when_the_writer_has_its_fill() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open_with(&dir.path().join("s.redb"), StoreConfig { max_pending: 3, ..StoreConfig::default() }).unwrap();
        let (unblock, blocked) = std::sync::mpsc::channel();
        store.inner.writer.as_ref().unwrap().send(Op::Block(blocked)).unwrap();
        let calls: Vec<_> = (0..5)
            .map(|i| {
                let s = store.clone();
                tokio::spawn(async move { s.create_room(&format!("r{i}"), &["a".into()], 1).await })
            })
            .collect();
        let interactive = &store.inner.pending[0];
        while interactive.available_permits() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(store.inner.pending[0].available_permits(), 0);
        assert_eq!(calls.iter().filter(|c| c.is_finished()).count(), 0, "nothing answered while the writer is stuck");
        assert_eq!(store.inner.sent_ops.load(std::sync::atomic::Ordering::SeqCst), 3, "two callers wait outside the writer's queue");
        unblock.send(()).unwrap();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        assert_eq!(store.inner.pending[0].available_permits(), 3, "every permit comes back");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recording_a_campaign_while_chat_flows_takes_short_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let sent = |n: u64| {
            let store = store.clone();
            async move {
                while store.inner.sent_ops.load(std::sync::atomic::Ordering::SeqCst) < n {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        };
        let (unblock, blocked) = std::sync::mpsc::channel();
        store.hand_over(Op::Block(blocked)).unwrap();
        let s = store.clone();
        let chat = tokio::spawn(async move { s.create_room("r", &["a".into()], 1).await });
        sent(2).await;
        let recipients: Vec<String> = (0..1000).map(|i| format!("u{i:04}")).collect();
        let s = store.clone();
        let record = tokio::spawn(async move { s.record_enqueued("c", "shop", 1000, &recipients).await });
        // Its slices go to the writer in one go.
        sent(3).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let before = store.inner.health.commits.load(std::sync::atomic::Ordering::SeqCst);
        unblock.send(()).unwrap();
        chat.await.unwrap().unwrap();
        let campaign = record.await.unwrap().unwrap();
        assert_eq!((campaign.requested, campaign.enqueued), (1000, 1000));
        let commits = store.inner.health.commits.load(std::sync::atomic::Ordering::SeqCst) - before;
        let slices = 1000usize.div_ceil(BULK_SLICE) as u64;
        assert!(commits > slices, "1,000 recipients recorded beside chat in {commits} commits: at most {BULK_SLICE} a commit");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_that_moves_nothing_costs_no_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        store.create_room("r", &["a".into(), "b".into()], 1).await.unwrap();
        let mut m = NewMessage {
            msg_id: "m1".into(),
            room: "r".into(),
            sender: "a".into(),
            body: "hi".into(),
            kind: MessageKind::Chat,
            campaign_id: None,
            sent_at_ms: 1,
            create_members: vec![],
            body_ref: None,
        };
        store.persist(vec![m.clone()]).await.unwrap();
        m.msg_id = "m2".into();
        store.persist(vec![m]).await.unwrap();
        let moved = store.mark_read("b", "r", 1, 2).await.unwrap();
        assert_eq!((moved.read_seq, moved.unread, moved.total_unread, moved.changed), (1, 1, 1, true));
        let commits = store.commits();
        let again = store.mark_read("b", "r", 1, 3).await.unwrap();
        assert_eq!((again.read_seq, again.unread, again.total_unread, again.changed), (1, 1, 1, false));
        assert_eq!(store.commits(), commits, "no commit for a read that moves nothing");
        assert!(matches!(store.mark_read("c", "r", 1, 3).await, Err(StoreError::NotMember { .. })));
        assert!(matches!(store.mark_read("b", "nowhere", 1, 3).await, Err(StoreError::UnknownRoom(_))));
    }

    /// Until this version a direct room's messages kept its record and member rows up to
    /// date; now the record is left as it was and the seq follows the newest message. A room
    /// written the old way goes on from where it stood, its msg_ids (indexed by msg_id alone
    /// then) are still known, and its users' totals (in a table of their own then) still count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_direct_room_written_by_the_previous_layout_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let room = "dm:alice:bob";
        // What the previous layout held after two one-offs from alice to bob.
        let txn = store.db().begin_write().unwrap();
        {
            txn.open_table(ROOMS)
                .unwrap()
                .insert(room, encode(&RoomRec { last_seq: 2, version: 3, created_at_ms: 1000 }).as_slice())
                .unwrap();
            let mut members = txn.open_table(MEMBERS).unwrap();
            members.insert((room, "alice"), 1000).unwrap();
            members.insert((room, "bob"), 1000).unwrap();
            let (mut messages, mut ids) = (txn.open_table(MESSAGES).unwrap(), txn.open_table(MSG_IDS).unwrap());
            for seq in 1..=2u64 {
                let msg = MsgRec {
                    msg_id: format!("old{seq}"),
                    sender: "alice".into(),
                    body: "hi".into(),
                    kind: MessageKind::OneOff,
                    campaign_id: None,
                    sent_at_ms: 1000 + seq as i64,
                };
                messages.insert((room, seq), encode(&msg).as_slice()).unwrap();
                ids.insert(format!("old{seq}").as_str(), encode(&MsgIdRec { room: room.into(), seq }).as_slice()).unwrap();
            }
            let row = InboxRec { unread: 2, version: 2, preview: "hi".into(), updated_at_ms: 1002, ..InboxRec::default() };
            txn.open_table(INBOX).unwrap().insert(("bob", room), encode(&row).as_slice()).unwrap();
            txn.open_table(TOTALS).unwrap().insert("bob", 2).unwrap();
        }
        txn.commit().unwrap();
        // Opened again, it moves the old idempotency index and totals into their new places.
        drop(store);
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let txn = store.db().begin_read().unwrap();
        assert!(txn.open_table(MSG_IDS).is_err(), "the old index is gone");
        assert!(txn.open_table(TOTALS).is_err(), "and so are the old totals");
        let ids: Vec<_> = txn
            .open_table(ROOM_MSG_IDS)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| r.unwrap())
            .map(|(k, v)| (k.value().1.to_string(), v.value()))
            .collect();
        assert_eq!(ids, vec![("old1".to_string(), 1), ("old2".to_string(), 2)]);
        drop(txn);

        let m = |id: &str, sender: &str| NewMessage {
            msg_id: id.into(),
            room: room.into(),
            sender: sender.into(),
            body: "again".into(),
            kind: MessageKind::Chat,
            campaign_id: None,
            sent_at_ms: 2000,
            create_members: vec!["alice".into(), "bob".into()],
            body_ref: None,
        };
        let out = store.persist(vec![m("new1", "alice"), m("old1", "alice"), m("new2", "bob")]).await.unwrap();
        let out: Vec<Persisted> = out.into_iter().map(Result::unwrap).collect();
        assert_eq!((out[0].message.seq, out[0].duplicate), (3, false));
        assert_eq!((out[1].message.seq, out[1].duplicate), (1, true), "a msg_id of the old layout is still known");
        assert_eq!((out[2].message.seq, out[2].duplicate), (4, false));
        assert_eq!(out[0].unread.iter().map(|u| (u.user.as_str(), u.unread, u.total_unread)).collect::<Vec<_>>(), vec![("bob", 3, 3)]);
        let r = store.room(room).await.unwrap().unwrap();
        assert_eq!((r.members, r.last_seq, r.created_at_ms), (vec!["alice".to_string(), "bob".to_string()], 4, 1000));
        let inbox = store.inbox_page("bob", InboxPage { after: None, limit: 10 }).await.unwrap();
        assert_eq!(inbox.rooms.iter().map(|r| (r.unread, r.last_seq)).collect::<Vec<_>>(), vec![(3, 4)]);
        assert_eq!(store.membership(room, "carol").await.unwrap(), Membership::NotMember);
        let read = store.mark_read("bob", room, 4, 4).await.unwrap();
        assert_eq!((read.read_seq, read.unread, read.total_unread), (4, 0, 0));
    }

    /// An old table moves in several transactions when it holds more than one's worth.
    #[test]
    fn an_old_table_moves_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("s.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        for i in 0..10u64 {
            txn.open_table(TOTALS).unwrap().insert(format!("u{i}").as_str(), i).unwrap();
        }
        txn.commit().unwrap();
        let moved = move_rows(&db, TOTALS, INBOX, 3, |inbox, user, total| {
            inbox.insert((user, TOTAL_ROW), total.to_le_bytes().as_slice())?;
            Ok(())
        })
        .unwrap();
        assert_eq!(moved, 10);
        let txn = db.begin_read().unwrap();
        assert!(txn.open_table(TOTALS).is_err(), "the old table is gone");
        let inbox = txn.open_table(INBOX).unwrap();
        for i in 0..10u64 {
            assert_eq!(total_of(&inbox, &format!("u{i}")).unwrap(), i);
        }
    }

    /// A one-off's direct room is made by its first message without a record or member rows,
    /// and reads find it by its messages: its members, seq and age.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_direct_room_exists_by_its_messages() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let room = "dm:alice:bob";
        assert_eq!(store.membership(room, "alice").await.unwrap(), Membership::UnknownRoom);
        let m = NewMessage {
            msg_id: "o1".into(),
            room: room.into(),
            sender: "alice".into(),
            body: "hi".into(),
            kind: MessageKind::OneOff,
            campaign_id: None,
            sent_at_ms: 1234,
            create_members: vec!["alice".into(), "bob".into()],
            body_ref: None,
        };
        store.persist(vec![m.clone()]).await.unwrap().pop().unwrap().unwrap();
        let txn = store.db().begin_read().unwrap();
        assert!(txn.open_table(ROOMS).unwrap().get(room).unwrap().is_none(), "no record");
        assert!(members_of(&txn.open_table(MEMBERS).unwrap(), room).unwrap().is_empty(), "no member rows");
        assert!(
            redb::ReadableTableMetadata::is_empty(&txn.open_table(ROOM_MSG_IDS).unwrap()).unwrap(),
            "its first msg_id is in its row only"
        );
        drop(txn);
        let again = store.persist(vec![m.clone()]).await.unwrap().pop().unwrap().unwrap();
        assert_eq!((again.message.seq, again.duplicate), (1, true), "and known there");
        let r = store.room(room).await.unwrap().unwrap();
        assert_eq!((r.members, r.last_seq, r.created_at_ms), (vec!["alice".to_string(), "bob".to_string()], 1, 1234));
        assert_eq!(store.membership(room, "bob").await.unwrap(), Membership::Member);
        assert_eq!(store.membership(room, "carol").await.unwrap(), Membership::NotMember);
        let outsider = NewMessage { msg_id: "c1".into(), sender: "carol".into(), kind: MessageKind::Chat, create_members: vec![], ..m };
        assert!(matches!(store.persist(vec![outsider]).await.unwrap().pop().unwrap(), Err(StoreError::NotMember { .. })));
    }
}

#[cfg(test)]
mod chunk_tests {
    use super::*;
    use sluice_core::model::MessageKind;

    fn msg(room: &str, id: usize) -> NewMessage {
        NewMessage {
            msg_id: format!("m{id}"),
            room: room.into(),
            sender: "s".into(),
            body: String::new(),
            kind: MessageKind::OneOff,
            campaign_id: None,
            sent_at_ms: 0,
            create_members: vec![],
            body_ref: None,
        }
    }

    #[test]
    fn chunks_keep_rooms_whole_and_in_order() {
        // 100 rooms of one message, then one room of 40, interleaved with others.
        let mut batch: Vec<NewMessage> = (0..100).map(|i| msg(&format!("r{i}"), i)).collect();
        for i in 0..40 {
            batch.push(msg("big", 0));
            batch.push(msg(&format!("x{i}"), 0));
        }
        for (pos, m) in batch.iter_mut().enumerate() {
            m.msg_id = format!("m{pos}");
        }
        let chunks = bulk_chunks(batch);
        let mut seen = [false; 180];
        for (positions, chunk) in &chunks {
            assert_eq!(positions.len(), chunk.len());
            assert!(chunk.len() <= BULK_CHUNK || chunk.iter().all(|m| m.room == "big"), "{}", chunk.len());
            for (p, m) in positions.iter().zip(chunk) {
                assert_eq!(m.msg_id, format!("m{p}"));
                seen[*p] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
        let big: Vec<&(Vec<usize>, Vec<NewMessage>)> = chunks.iter().filter(|(_, c)| c.iter().any(|m| m.room == "big")).collect();
        assert_eq!(big.len(), 1, "a room is never split");
        let order: Vec<usize> = big[0].1.iter().filter(|m| m.room == "big").map(|m| m.msg_id[1..].parse().unwrap()).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]));
    }
}
