//! The embedded message store: one redb file, the logical model of DESIGN.md.
//!
//! All writes go through one writer thread. It takes every operation waiting in its channel
//! (up to [`MAX_GROUP`] messages' worth), applies them inside one write transaction and
//! commits once with fsync: concurrent senders share the cost of one durable commit (group
//! commit). Reads run on redb's MVCC snapshots and never wait for the writer.
//!
//! Operations come in two lanes (DESIGN.md invariant 6): the bulk lane (one-off messages
//! from the queue, campaign bookkeeping) and everything else, which is interactive. Waiting
//! interactive operations go first, and while interactive traffic is flowing (any in the
//! last [`INTERACTIVE_RECENT`]) a commit takes at most [`BULK_SLICE`] bulk messages, so a
//! chat send waits behind one short commit rather than behind a queue of campaign batches.
//! Each lane keeps its arrival order.
//!
//! Tables (keys → postcard records):
//! - `rooms`: room → last_seq, version, created_at
//! - `members`: (room, user) → joined_at
//! - `messages`: (room, seq) → msg_id, sender, body, kind, campaign, sent_at
//! - `msg_ids`: msg_id → (room, seq), the idempotency index
//! - `inbox`: (user, room) → unread, read_seq, version, preview, updated_at
//! - `totals`: user → total unread
//! - `campaigns`, `campaign_recipients`, `campaign_dead`: bulk campaign progress (the
//!   recipients table also keeps each counted EnqueueBulk call's `~call:` key)
//! - `campaign_owners`: campaign → the sender it belongs to
//! - `meta`: `counters_version`, the store-wide version of unread counters

use crate::codec::{decode, encode, store_err};
use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};
use sluice_core::control::{Control, Controls, Scope};
use sluice_core::error::StoreError;
use sluice_core::ids;
use sluice_core::model::{
    Campaign, HistoryQuery, Inbox, InboxPage, InboxRoom, MessageKind, NewMessage, Persisted, ReadOutcome, Room, StoredMessage, UnreadUpdate,
};
use sluice_core::store::{Membership, MessageStore};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most messages (or other operations) committed in one write transaction.
pub const MAX_GROUP: usize = 4096;
/// Most bulk messages in one commit while interactive operations are flowing (at least one
/// bulk operation is always taken, so the bulk lane never starves).
pub const BULK_SLICE: usize = 64;
/// Messages per operation a large bulk batch is split into (rooms are never split).
const BULK_CHUNK: usize = 32;
/// Recipients per operation a large campaign record is split into.
const RECORD_CHUNK: usize = 1024;
/// How long after the last interactive operation the bulk lane stays limited to
/// [`BULK_SLICE`] per commit. Long enough to cover sparse chat (a user who sends every few
/// seconds would otherwise find the writer in a commit of thousands of one-offs, 100 ms and
/// more); short commits cost the drain little (measured in the spike bench).
const INTERACTIVE_RECENT: std::time::Duration = std::time::Duration::from_secs(10);
/// Plans of one mark-read tried before it gives up to concurrent reads of the same row.
const READ_ATTEMPTS: usize = 8;
/// Characters of a message body kept in the inbox row as its preview.
const PREVIEW_CHARS: usize = 100;

const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
const MEMBERS: TableDefinition<(&str, &str), i64> = TableDefinition::new("members");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const MSG_IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("msg_ids");
const INBOX: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("inbox");
const TOTALS: TableDefinition<&str, u64> = TableDefinition::new("totals");
const CAMPAIGNS: TableDefinition<&str, &[u8]> = TableDefinition::new("campaigns");
const CAMPAIGN_RECIPIENTS: TableDefinition<(&str, &str), ()> = TableDefinition::new("campaign_recipients");
const CAMPAIGN_DEAD: TableDefinition<(&str, &str), ()> = TableDefinition::new("campaign_dead");
const CAMPAIGN_OWNERS: TableDefinition<&str, &str> = TableDefinition::new("campaign_owners");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Operator controls of the drain: scope key -> control.
const CONTROLS: TableDefinition<&str, &[u8]> = TableDefinition::new("drain_controls");
/// The key in `meta` of the counters' version.
const COUNTERS_VERSION: &str = "counters_version";

#[derive(Serialize, Deserialize, Default)]
struct RoomRec {
    last_seq: u64,
    version: u64,
    created_at_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct MsgRec {
    msg_id: String,
    sender: String,
    body: String,
    kind: MessageKind,
    campaign_id: Option<String>,
    sent_at_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct MsgIdRec {
    room: String,
    seq: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct InboxRec {
    unread: u64,
    read_seq: u64,
    version: u64,
    preview: String,
    updated_at_ms: i64,
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct CampaignRec {
    requested: u64,
    enqueued: u64,
    persisted: u64,
    dead_lettered: u64,
}

impl CampaignRec {
    fn to_campaign(&self, id: &str, owner: Option<&str>) -> Campaign {
        Campaign {
            campaign_id: id.to_string(),
            tenant: owner.map(|o| sluice_core::ids::owner_tenant(o).to_string()).unwrap_or_default(),
            requested: self.requested,
            enqueued: self.enqueued,
            persisted: self.persisted,
            dead_lettered: self.dead_lettered,
        }
    }
}

fn stored(room: &str, seq: u64, r: MsgRec) -> StoredMessage {
    StoredMessage {
        room: room.to_string(),
        seq,
        msg_id: r.msg_id,
        sender: r.sender,
        body: r.body,
        kind: r.kind,
        campaign_id: r.campaign_id,
        sent_at_ms: r.sent_at_ms,
    }
}

/// `members` sorted, each once.
fn sorted(members: &[String]) -> Vec<String> {
    let mut v = members.to_vec();
    v.sort();
    v.dedup();
    v
}

/// The members of `room`, sorted (one range scan of the members table).
fn members_of(table: &impl ReadableTable<(&'static str, &'static str), i64>, room: &str) -> Result<Vec<String>, redb::Error> {
    let mut out = Vec::new();
    for entry in table.range((room, "")..)? {
        let (k, _) = entry?;
        let (r, u) = k.value();
        if r != room {
            break;
        }
        out.push(u.to_string());
    }
    Ok(out)
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Op {
    Persist(Vec<NewMessage>, Reply<Vec<Result<Persisted, StoreError>>>),
    CreateRoom {
        room: String,
        members: Vec<String>,
        now_ms: i64,
        reply: Reply<Room>,
    },
    AddMembers {
        room: String,
        members: Vec<String>,
        now_ms: i64,
        reply: Reply<Room>,
    },
    /// Moves a read position from `from` to `to`, the unread count dropping by `became_read`
    /// (counted on a snapshot); answers `None` when the read position is no longer `from`.
    MarkRead {
        user: String,
        room: String,
        from: u64,
        to: u64,
        became_read: u64,
        now_ms: i64,
        reply: Reply<Option<ReadOutcome>>,
    },
    RecordEnqueued {
        campaign_id: String,
        owner: String,
        requested: u64,
        recipients: Vec<String>,
        /// The call's key ([`ids::enqueue_call_key`]), counted once when `requested` > 0.
        call: String,
        reply: Reply<Campaign>,
    },
    RecordDeadLetter {
        campaign_id: String,
        msg_id: String,
        reply: Reply<()>,
    },
    /// Removes delivered events from the outbox.
    OutboxDone {
        keys: Vec<u64>,
        reply: Reply<()>,
    },
    /// Makes the writer thread panic, to test what a dead writer looks like.
    #[cfg(test)]
    Crash,
    /// Holds the writer thread until a value (or hang-up) arrives.
    #[cfg(test)]
    Block(std::sync::mpsc::Receiver<()>),
}

impl Op {
    /// Whether this belongs to the bulk lane: one-off campaign messages from the queue and
    /// campaign bookkeeping.
    fn is_bulk(&self) -> bool {
        match self {
            Op::Persist(batch, _) => is_bulk_batch(batch),
            Op::RecordEnqueued { .. } | Op::RecordDeadLetter { .. } | Op::OutboxDone { .. } => true,
            _ => false,
        }
    }

    fn weight(&self) -> usize {
        match self {
            Op::Persist(batch, _) => batch.len().max(1),
            Op::RecordEnqueued { recipients, .. } => recipients.len().max(1),
            _ => 1,
        }
    }
}

/// A result computed inside the transaction, sent once the commit is known.
trait Finish: Send {
    fn finish(self: Box<Self>, commit_error: Option<StoreError>);
}

struct Done<T>(Reply<T>, Result<T, StoreError>);

impl<T: Send> Finish for Done<T> {
    fn finish(self: Box<Self>, commit_error: Option<StoreError>) {
        let _ = self.0.send(match commit_error {
            Some(e) => Err(e),
            None => self.1,
        });
    }
}

#[cfg(test)]
struct Nothing;

#[cfg(test)]
impl Finish for Nothing {
    fn finish(self: Box<Self>, _commit_error: Option<StoreError>) {}
}

fn done<T: Send + 'static>(reply: Reply<T>, r: Result<T, StoreError>) -> Box<dyn Finish> {
    Box::new(Done(reply, r))
}

/// The embedded message store. Cheap to clone; the file closes when the last clone drops.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    writer: Option<mpsc::UnboundedSender<Op>>,
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
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { max_pending: DEFAULT_MAX_PENDING, outbox: false, cache_bytes: DEFAULT_STORE_CACHE_BYTES }
    }
}

/// Default of [`StoreConfig::cache_bytes`] (redb's own default is 1 GiB, which a long-lived
/// server grows into as the file grows: the soak measured +1.1 GiB in 30 minutes).
pub const DEFAULT_STORE_CACHE_BYTES: usize = 256 << 20;

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

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path` and creates its tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, StoreConfig::default())
    }

    /// [`EmbeddedStore::open`] with explicit settings.
    pub fn open_with(path: &Path, config: StoreConfig) -> Result<Self, StoreError> {
        let db = Arc::new(Database::builder().set_cache_size(config.cache_bytes).create(path).map_err(store_err)?);
        let txn = db.begin_write().map_err(store_err)?;
        {
            let w = Writer::open(&txn, true).map_err(store_err)?;
            drop(w);
        }
        txn.commit().map_err(store_err)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let db2 = db.clone();
        let health = Arc::new(WriterHealth::default());
        let h2 = health.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-store-writer".into())
            .spawn(move || writer_loop(&db2, rx, &h2, config.outbox))
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

fn writer_loop(db: &Database, mut rx: mpsc::UnboundedReceiver<Op>, health: &WriterHealth, outbox: bool) {
    let (mut interactive, mut bulk) = (std::collections::VecDeque::new(), std::collections::VecDeque::new());
    let mut last_interactive: Option<std::time::Instant> = None;
    loop {
        if interactive.is_empty() && bulk.is_empty() {
            match rx.blocking_recv() {
                Some(op) => lane(op, &mut interactive, &mut bulk),
                None => return,
            }
        }
        while let Ok(op) = rx.try_recv() {
            lane(op, &mut interactive, &mut bulk);
        }
        let mut weight = 0;
        let mut ops = Vec::new();
        while weight < MAX_GROUP
            && let Some(op) = interactive.pop_front()
        {
            weight += op.weight();
            ops.push(op);
        }
        if !ops.is_empty() {
            last_interactive = Some(std::time::Instant::now());
        }
        let flowing = last_interactive.is_some_and(|t| t.elapsed() < INTERACTIVE_RECENT);
        let bulk_budget = if flowing { BULK_SLICE } else { MAX_GROUP };
        let mut bulk_weight = 0;
        while weight < MAX_GROUP && (bulk_weight == 0 || bulk_weight + bulk.front().map_or(0, Op::weight) <= bulk_budget) {
            let Some(op) = bulk.pop_front() else { break };
            bulk_weight += op.weight();
            weight += op.weight();
            ops.push(op);
        }
        let mut finished: Vec<Box<dyn Finish>> = Vec::with_capacity(ops.len());
        let mut pending = ops.into_iter();
        let result = (|| -> Result<bool, redb::Error> {
            let txn = db.begin_write()?;
            let events_waiting = {
                let mut w = Writer::open(&txn, outbox)?;
                for op in pending.by_ref() {
                    finished.push(w.apply(op)?);
                }
                w.close()?
            };
            txn.commit()?;
            Ok(events_waiting)
        })();
        if let Ok(true) = result {
            health.outbox_wake.notify_one();
        }
        let err = result.err().map(|e| StoreError::Unavailable(format!("commit failed: {e}")));
        health.failing.store(err.is_some(), std::sync::atomic::Ordering::Relaxed);
        if err.is_none() {
            health.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(e) = &err {
            tracing::error!(error = %e, "store commit failed");
            // Operations not reached before the failure never ran; tell their callers too.
            for op in pending {
                fail(op, e.clone());
            }
        }
        for f in finished {
            f.finish(err.clone());
        }
    }
}

/// Splits a batch into chunks of about [`BULK_CHUNK`] messages, each holding all of its rooms'
/// messages in their order (so a room's messages still commit together and in order),
/// with each message's position in the batch.
fn bulk_chunks(batch: Vec<NewMessage>) -> Vec<(Vec<usize>, Vec<NewMessage>)> {
    let mut by_room: Vec<(String, Vec<(usize, NewMessage)>)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (pos, m) in batch.into_iter().enumerate() {
        let slot = *index.entry(m.room.clone()).or_insert_with(|| {
            by_room.push((m.room.clone(), Vec::new()));
            by_room.len() - 1
        });
        by_room[slot].1.push((pos, m));
    }
    let mut chunks: Vec<(Vec<usize>, Vec<NewMessage>)> = vec![(Vec::new(), Vec::new())];
    for (_, messages) in by_room {
        if !chunks.last().expect("one chunk").1.is_empty() && chunks.last().expect("one chunk").1.len() + messages.len() > BULK_CHUNK {
            chunks.push((Vec::new(), Vec::new()));
        }
        let (positions, chunk) = chunks.last_mut().expect("one chunk");
        for (pos, m) in messages {
            positions.push(pos);
            chunk.push(m);
        }
    }
    chunks
}

/// A batch of one-off messages only: the bulk lane's work.
fn is_bulk_batch(batch: &[NewMessage]) -> bool {
    !batch.is_empty() && batch.iter().all(|m| m.kind == MessageKind::OneOff)
}

fn writer_stopped() -> StoreError {
    StoreError::Unavailable("store writer stopped".into())
}

fn lane(op: Op, interactive: &mut std::collections::VecDeque<Op>, bulk: &mut std::collections::VecDeque<Op>) {
    if op.is_bulk() { bulk.push_back(op) } else { interactive.push_back(op) }
}

fn fail(op: Op, e: StoreError) {
    match op {
        Op::Persist(_, r) => drop(r.send(Err(e))),
        Op::CreateRoom { reply, .. } | Op::AddMembers { reply, .. } => drop(reply.send(Err(e))),
        Op::MarkRead { reply, .. } => drop(reply.send(Err(e))),
        Op::RecordEnqueued { reply, .. } => drop(reply.send(Err(e))),
        Op::RecordDeadLetter { reply, .. } | Op::OutboxDone { reply, .. } => drop(reply.send(Err(e))),
        #[cfg(test)]
        Op::Crash | Op::Block(_) => {}
    }
}

/// The tables of one write transaction and the logic of each write.
struct Writer<'t> {
    rooms: Table<'t, &'static str, &'static [u8]>,
    members: Table<'t, (&'static str, &'static str), i64>,
    messages: Table<'t, (&'static str, u64), &'static [u8]>,
    msg_ids: Table<'t, &'static str, &'static [u8]>,
    inbox: Table<'t, (&'static str, &'static str), &'static [u8]>,
    totals: Table<'t, &'static str, u64>,
    campaigns: Table<'t, &'static str, &'static [u8]>,
    campaign_recipients: Table<'t, (&'static str, &'static str), ()>,
    campaign_dead: Table<'t, (&'static str, &'static str), ()>,
    campaign_owners: Table<'t, &'static str, &'static str>,
    meta: Table<'t, &'static str, u64>,
    /// The counters' version (see `UnreadUpdate::version`): one store-wide sequence, so it
    /// grows for every user, saved once per commit.
    version: u64,
    version_moved: bool,
    outbox: Option<Table<'t, u64, &'static [u8]>>,
    outbox_written: bool,
    /// Campaign counters changed by this transaction, written once at its close: a group of
    /// a campaign's one-offs would otherwise rewrite the same record once per message.
    campaigns_changed: std::collections::HashMap<String, CampaignRec>,
}

impl<'t> Writer<'t> {
    /// The tables of `txn`; with `outbox`, persisted messages leave their analytics event in
    /// the outbox.
    fn open(txn: &'t redb::WriteTransaction, outbox: bool) -> Result<Self, redb::Error> {
        let outbox_table = txn.open_table(crate::outbox::OUTBOX)?;
        let meta = txn.open_table(META)?;
        let version = meta.get(COUNTERS_VERSION)?.map_or(0, |v| v.value());
        Ok(Writer {
            rooms: txn.open_table(ROOMS)?,
            members: txn.open_table(MEMBERS)?,
            messages: txn.open_table(MESSAGES)?,
            msg_ids: txn.open_table(MSG_IDS)?,
            inbox: txn.open_table(INBOX)?,
            totals: txn.open_table(TOTALS)?,
            campaigns: txn.open_table(CAMPAIGNS)?,
            campaign_recipients: txn.open_table(CAMPAIGN_RECIPIENTS)?,
            campaign_dead: txn.open_table(CAMPAIGN_DEAD)?,
            campaign_owners: txn.open_table(CAMPAIGN_OWNERS)?,
            version,
            version_moved: false,
            meta,
            outbox: outbox.then_some(outbox_table),
            outbox_written: false,
            campaigns_changed: std::collections::HashMap::new(),
        })
    }

    /// The next version of the counters (every change of any user's counters takes one).
    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version_moved = true;
        self.version
    }

    /// Saves what the transaction's operations leave besides their own rows; true when they
    /// left events in the outbox.
    fn close(mut self) -> Result<bool, redb::Error> {
        for (id, c) in std::mem::take(&mut self.campaigns_changed) {
            self.campaigns.insert(id.as_str(), encode(&c).as_slice())?;
        }
        if self.version_moved {
            self.meta.insert(COUNTERS_VERSION, self.version)?;
        }
        Ok(self.outbox_written)
    }

    fn apply(&mut self, op: Op) -> Result<Box<dyn Finish>, redb::Error> {
        Ok(match op {
            Op::Persist(batch, reply) => {
                let mut out = Vec::with_capacity(batch.len());
                for m in &batch {
                    out.push(self.persist_one(m)?);
                }
                done(reply, Ok(out))
            }
            Op::CreateRoom { room, members, now_ms, reply } => {
                let r = self.create_room(&room, &members, now_ms)?;
                done(reply, r)
            }
            Op::AddMembers { room, members, now_ms, reply } => {
                let r = self.add_members(&room, &members, now_ms)?;
                done(reply, r)
            }
            Op::MarkRead { user, room, from, to, became_read, now_ms, reply } => {
                let r = self.mark_read(&user, &room, from, to, became_read, now_ms)?;
                done(reply, r)
            }
            Op::RecordEnqueued { campaign_id, owner, requested, recipients, call, reply } => {
                let owned_by_sender = self.campaign_owners.get(campaign_id.as_str())?.map(|o| o.value() == owner);
                match owned_by_sender {
                    Some(false) => return Ok(done(reply, Err(StoreError::CampaignOwned { campaign_id }))),
                    Some(true) => {}
                    None => {
                        self.campaign_owners.insert(campaign_id.as_str(), owner.as_str())?;
                    }
                }
                // A retried call's request is counted once (its key sits beside the recipients).
                let requested = if requested > 0 && self.campaign_recipients.insert((campaign_id.as_str(), call.as_str()), ())?.is_none() {
                    requested
                } else {
                    0
                };
                let mut enqueued = 0;
                for r in &recipients {
                    if self.campaign_recipients.insert((campaign_id.as_str(), r.as_str()), ())?.is_none() {
                        enqueued += 1;
                    }
                }
                let c = self.update_campaign(&campaign_id, |c| {
                    c.requested += requested;
                    c.enqueued += enqueued;
                })?;
                done(reply, Ok(c.to_campaign(&campaign_id, Some(&owner))))
            }
            Op::RecordDeadLetter { campaign_id, msg_id, reply } => {
                let persisted = self.msg_ids.get(msg_id.as_str())?.is_some();
                if !persisted && self.campaign_dead.insert((campaign_id.as_str(), msg_id.as_str()), ())?.is_none() {
                    self.update_campaign(&campaign_id, |c| c.dead_lettered += 1)?;
                }
                done(reply, Ok(()))
            }
            Op::OutboxDone { keys, reply } => {
                if let Some(outbox) = &mut self.outbox {
                    for k in keys {
                        outbox.remove(k)?;
                    }
                }
                done(reply, Ok(()))
            }
            #[cfg(test)]
            Op::Crash => panic!("injected writer crash"),
            #[cfg(test)]
            Op::Block(rx) => {
                let _ = rx.recv();
                Box::new(Nothing)
            }
        })
    }

    /// A campaign's counters as this transaction left them so far.
    fn campaign_rec(&self, id: &str) -> Result<CampaignRec, redb::Error> {
        if let Some(c) = self.campaigns_changed.get(id) {
            return Ok(c.clone());
        }
        match self.campaigns.get(id)? {
            Some(v) => decode(v.value()),
            None => Ok(CampaignRec::default()),
        }
    }

    /// Changes a campaign's counters (saved at the transaction's close).
    fn update_campaign(&mut self, id: &str, f: impl FnOnce(&mut CampaignRec)) -> Result<CampaignRec, redb::Error> {
        if !self.campaigns_changed.contains_key(id) {
            let c = self.campaign_rec(id)?;
            self.campaigns_changed.insert(id.to_string(), c);
        }
        let c = self.campaigns_changed.get_mut(id).expect("just inserted");
        f(c);
        Ok(c.clone())
    }

    fn room_rec(&self, room: &str) -> Result<Option<RoomRec>, redb::Error> {
        match self.rooms.get(room)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn member_list(&self, room: &str) -> Result<Vec<String>, redb::Error> {
        members_of(&self.members, room)
    }

    fn room_view(&self, room: &str, rec: &RoomRec) -> Result<Room, redb::Error> {
        Ok(Room { room: room.to_string(), members: self.member_list(room)?, last_seq: rec.last_seq, created_at_ms: rec.created_at_ms })
    }

    fn join(&mut self, room: &str, user: &str, last_seq: u64, now_ms: i64) -> Result<bool, redb::Error> {
        if self.members.get((room, user))?.is_some() {
            return Ok(false);
        }
        self.members.insert((room, user), now_ms)?;
        let row = InboxRec { read_seq: last_seq, updated_at_ms: now_ms, ..InboxRec::default() };
        self.inbox.insert((user, room), encode(&row).as_slice())?;
        Ok(true)
    }

    fn create_room(&mut self, room: &str, members: &[String], now_ms: i64) -> Result<Result<Room, StoreError>, redb::Error> {
        if let Some(rec) = self.room_rec(room)? {
            let existing = self.member_list(room)?;
            return Ok(if existing == sorted(members) {
                Ok(self.room_view(room, &rec)?)
            } else {
                Err(StoreError::RoomExists(room.to_string()))
            });
        }
        let rec = RoomRec { last_seq: 0, version: 1, created_at_ms: now_ms };
        self.rooms.insert(room, encode(&rec).as_slice())?;
        for m in members {
            self.join(room, m, 0, now_ms)?;
        }
        Ok(Ok(self.room_view(room, &rec)?))
    }

    fn add_members(&mut self, room: &str, members: &[String], now_ms: i64) -> Result<Result<Room, StoreError>, redb::Error> {
        let Some(mut rec) = self.room_rec(room)? else {
            return Ok(Err(StoreError::UnknownRoom(room.to_string())));
        };
        let mut changed = false;
        for m in members {
            changed |= self.join(room, m, rec.last_seq, now_ms)?;
        }
        if changed {
            rec.version += 1;
            self.rooms.insert(room, encode(&rec).as_slice())?;
        }
        Ok(Ok(self.room_view(room, &rec)?))
    }

    fn persist_one(&mut self, m: &NewMessage) -> Result<Result<Persisted, StoreError>, redb::Error> {
        let existing = match self.msg_ids.get(m.msg_id.as_str())? {
            Some(v) => Some(decode::<MsgIdRec>(v.value())?),
            None => None,
        };
        if let Some(id) = existing {
            let rec = self.messages.get((id.room.as_str(), id.seq))?.map(|v| decode::<MsgRec>(v.value())).transpose()?;
            let rec = rec.ok_or_else(|| redb::Error::Corrupted(format!("msg_id {} points at a missing message", m.msg_id)))?;
            return Ok(Ok(Persisted {
                message: Arc::new(stored(&id.room, id.seq, rec)),
                duplicate: true,
                members: Arc::new(Vec::new()),
                unread: Vec::new(),
            }));
        }
        let room = m.room.as_str();
        let (mut rec, fresh) = match self.room_rec(room)? {
            Some(rec) => (rec, None),
            None if m.create_members.is_empty() => return Ok(Err(StoreError::UnknownRoom(m.room.clone()))),
            None => {
                let members = sorted(&m.create_members);
                if members.binary_search(&m.sender).is_err() {
                    if let Err(e) = self.create_room(room, &m.create_members, m.sent_at_ms)? {
                        return Ok(Err(e));
                    }
                    return Ok(Err(StoreError::NotMember { user: m.sender.clone(), room: m.room.clone() }));
                }
                (RoomRec { last_seq: 0, version: 1, created_at_ms: m.sent_at_ms }, Some(members))
            }
        };
        if fresh.is_none() && self.members.get((room, m.sender.as_str()))?.is_none() {
            return Ok(Err(StoreError::NotMember { user: m.sender.clone(), room: m.room.clone() }));
        }
        rec.last_seq += 1;
        rec.version += 1;
        let seq = rec.last_seq;
        self.rooms.insert(room, encode(&rec).as_slice())?;
        if let Some(members) = &fresh {
            // A room created by its first message (a one-off's direct room): each row is
            // written once, as it stands after the message, instead of created then updated.
            for user in members {
                self.members.insert((room, user.as_str()), m.sent_at_ms)?;
            }
            let sender_row = InboxRec { updated_at_ms: m.sent_at_ms, ..InboxRec::default() };
            self.inbox.insert((m.sender.as_str(), room), encode(&sender_row).as_slice())?;
        }
        let msg = MsgRec {
            msg_id: m.msg_id.clone(),
            sender: m.sender.clone(),
            body: m.body.clone(),
            kind: m.kind,
            campaign_id: m.campaign_id.clone(),
            sent_at_ms: m.sent_at_ms,
        };
        self.messages.insert((room, seq), encode(&msg).as_slice())?;
        self.msg_ids.insert(m.msg_id.as_str(), encode(&MsgIdRec { room: m.room.clone(), seq }).as_slice())?;

        let created = fresh.is_some();
        let members = match fresh {
            Some(members) => members,
            None => self.member_list(room)?,
        };
        let version = self.bump();
        let preview: String = m.body.chars().take(PREVIEW_CHARS).collect();
        let mut unread = Vec::with_capacity(members.len().saturating_sub(1));
        for user in members.iter().filter(|u| **u != m.sender) {
            let stored =
                if created { None } else { self.inbox.get((user.as_str(), room))?.map(|v| decode::<InboxRec>(v.value())).transpose()? };
            let mut row = stored.unwrap_or_default();
            row.unread += 1;
            row.version += 1;
            row.preview.clone_from(&preview);
            row.updated_at_ms = m.sent_at_ms;
            self.inbox.insert((user.as_str(), room), encode(&row).as_slice())?;
            let total = self.totals.get(user.as_str())?.map(|v| v.value()).unwrap_or(0) + 1;
            self.totals.insert(user.as_str(), total)?;
            unread.push(UnreadUpdate { user: user.clone(), room: m.room.clone(), unread: row.unread, total_unread: total, version });
        }
        if let Some(cid) = &m.campaign_id {
            let c = self.update_campaign(cid, |c| c.persisted += 1)?;
            // A message dead-lettered earlier and persisted after a redrive counts once.
            if c.dead_lettered > 0 && self.campaign_dead.remove((cid.as_str(), m.msg_id.as_str()))?.is_some() {
                self.update_campaign(cid, |c| c.dead_lettered -= 1)?;
            }
        }
        if let Some(outbox) = &mut self.outbox {
            let rec = crate::outbox::OutboxRec {
                room: m.room.clone(),
                seq,
                msg_id: m.msg_id.clone(),
                sender: m.sender.clone(),
                kind: m.kind.as_str().to_string(),
                campaign_id: m.campaign_id.clone(),
                sent_at_ms: m.sent_at_ms,
                persisted_at_ms: sluice_core::now_ms(),
                recipients: unread.len() as u32,
            };
            outbox.insert(version, encode(&rec).as_slice())?;
            self.outbox_written = true;
        }
        Ok(Ok(Persisted { message: Arc::new(stored(room, seq, msg)), duplicate: false, members: Arc::new(members), unread }))
    }

    /// Applies a read counted on a snapshot. Messages committed since the snapshot all have
    /// seqs above the room's last seq then (so above `to`) and stay unread; so while the read
    /// position is still `from`, unread drops by exactly `became_read`. O(1) on the writer.
    fn mark_read(
        &mut self,
        user: &str,
        room: &str,
        from: u64,
        to: u64,
        became_read: u64,
        now_ms: i64,
    ) -> Result<Result<Option<ReadOutcome>, StoreError>, redb::Error> {
        let row = self.inbox.get((user, room))?.map(|v| decode::<InboxRec>(v.value())).transpose()?;
        let Some(mut row) = row else {
            return Ok(Err(StoreError::NotMember { user: user.to_string(), room: room.to_string() }));
        };
        let total = self.totals.get(user)?.map(|v| v.value()).unwrap_or(0);
        if row.read_seq >= to {
            let version = self.version;
            return Ok(Ok(Some(ReadOutcome { read_seq: row.read_seq, unread: row.unread, total_unread: total, changed: false, version })));
        }
        if row.read_seq != from {
            return Ok(Ok(None));
        }
        let new_unread = row.unread - became_read.min(row.unread);
        let total = total - (row.unread - new_unread).min(total);
        row.unread = new_unread;
        row.read_seq = to;
        row.version += 1;
        row.updated_at_ms = now_ms;
        self.inbox.insert((user, room), encode(&row).as_slice())?;
        self.totals.insert(user, total)?;
        let version = self.bump();
        Ok(Ok(Some(ReadOutcome { read_seq: to, unread: new_unread, total_unread: total, changed: true, version })))
    }
}

/// The head of a message record: what counting needs, without copying the body.
#[derive(Deserialize)]
struct MsgHead<'a> {
    #[allow(dead_code)]
    msg_id: &'a str,
    sender: &'a str,
}

/// Counts messages of `room` with seq in `from..=to` not sent by `user`.
fn count_not_by(
    messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    room: &str,
    user: &str,
    from: u64,
    to: u64,
) -> Result<u64, redb::Error> {
    let mut n = 0;
    if from > to {
        return Ok(0);
    }
    for entry in messages.range((room, from)..=(room, to))? {
        let (_, v) = entry?;
        let (head, _) = postcard::take_from_bytes::<MsgHead<'_>>(v.value())
            .map_err(|e| redb::Error::Corrupted(format!("undecodable message record: {e}")))?;
        if head.sender != user {
            n += 1;
        }
    }
    Ok(n)
}

/// Where a read would move a user's position, from one snapshot.
enum ReadPlan {
    Unchanged(ReadOutcome),
    Move { from: u64, to: u64, became_read: u64 },
}

/// Plans a read on a snapshot: the counting (a range scan of the room's messages) happens
/// here, on a reader thread, never on the writer that every write waits for.
fn plan_read(txn: &redb::ReadTransaction, user: &str, room: &str, seq: u64) -> Result<Result<ReadPlan, StoreError>, redb::Error> {
    let Some(rec) = txn.open_table(ROOMS)?.get(room)?.map(|v| decode::<RoomRec>(v.value())).transpose()? else {
        return Ok(Err(StoreError::UnknownRoom(room.to_string())));
    };
    let Some(row) = txn.open_table(INBOX)?.get((user, room))?.map(|v| decode::<InboxRec>(v.value())).transpose()? else {
        return Ok(Err(StoreError::NotMember { user: user.to_string(), room: room.to_string() }));
    };
    let target = seq.min(rec.last_seq);
    if target <= row.read_seq {
        let total = txn.open_table(TOTALS)?.get(user)?.map(|v| v.value()).unwrap_or(0);
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
    let messages = txn.open_table(MESSAGES)?;
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
            let rooms = txn.open_table(ROOMS)?;
            let Some(v) = rooms.get(room.as_str())? else { return Ok(None) };
            let rec: RoomRec = decode(v.value())?;
            let members = members_of(&txn.open_table(MEMBERS)?, &room)?;
            Ok(Some(Room { room: room.clone(), members, last_seq: rec.last_seq, created_at_ms: rec.created_at_ms }))
        })
        .await
    }

    async fn membership(&self, room: &str, user: &str) -> Result<Membership, StoreError> {
        let (room, user) = (room.to_string(), user.to_string());
        self.read(move |txn| {
            if txn.open_table(MEMBERS)?.get((room.as_str(), user.as_str()))?.is_some() {
                return Ok(Membership::Member);
            }
            Ok(if txn.open_table(ROOMS)?.get(room.as_str())?.is_some() { Membership::NotMember } else { Membership::UnknownRoom })
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
            let mut out = Inbox::default();
            let start = page.after.as_deref().unwrap_or("");
            for entry in inbox.range((user.as_str(), start)..)? {
                let (k, v) = entry?;
                let (u, room) = k.value();
                if u != user {
                    break;
                }
                if page.after.as_deref() == Some(room) {
                    continue;
                }
                if out.rooms.len() == page.limit {
                    out.next = out.rooms.last().map(|r| r.room.clone());
                    break;
                }
                let row: InboxRec = decode(v.value())?;
                let last_seq = match rooms.get(room)? {
                    Some(r) => decode::<RoomRec>(r.value())?.last_seq,
                    None => 0,
                };
                out.rooms.push(InboxRoom { room: room.to_string(), unread: row.unread, read_seq: row.read_seq, last_seq });
            }
            out.total_unread = txn.open_table(TOTALS)?.get(user.as_str())?.map(|v| v.value()).unwrap_or(0);
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

    async fn record_dead_letter(&self, campaign_id: &str, msg_id: &str) -> Result<(), StoreError> {
        let (campaign_id, msg_id) = (campaign_id.to_string(), msg_id.to_string());
        self.submit(|reply| Op::RecordDeadLetter { campaign_id, msg_id, reply }).await
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
}

#[cfg(test)]
mod chunk_tests {
    use super::*;

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
