//! The writer thread and its two lanes: operations arrive on one channel, interactive ones
//! go first, and while chat is flowing a commit takes only a short slice of the bulk lane
//! (DESIGN.md invariant 6). Every operation's answer is sent once its commit is known.

use super::WriterHealth;
use super::redo::{Redo, RedoLog};
use super::writer::Writer;
use redb::Database;
use sluice_core::error::StoreError;
use sluice_core::model::{Campaign, MessageKind, NewMessage, Persisted, ReadOutcome, Room};
use tokio::sync::oneshot;

/// Most messages (or other operations) committed in one write transaction.
pub const MAX_GROUP: usize = 4096;
/// Most bulk messages in one commit while interactive operations are flowing (at least one
/// bulk operation is always taken, so the bulk lane never starves).
pub const BULK_SLICE: usize = 64;
/// Messages per operation a large bulk batch is split into (rooms are never split).
pub(super) const BULK_CHUNK: usize = 32;
/// Recipients per operation a large campaign record is split into: one bulk slice, so that
/// while chat flows a commit records no more of a campaign's recipients than it persists of
/// its one-offs (with 1,024, a commit beside chat held 1,024 recorded rows; docs/benchmarks,
/// "Recording paced with the queueing").
pub(super) const RECORD_CHUNK: usize = BULK_SLICE;
/// How long after the last interactive operation the bulk lane stays limited to
/// [`BULK_SLICE`] per commit. Long enough to cover sparse chat (a user who sends every few
/// seconds would otherwise find the writer in a commit of thousands of one-offs, 100 ms and
/// more); short commits cost the drain little (measured in the spike bench).
const INTERACTIVE_RECENT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) enum Op {
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
        room: String,
        msg_id: String,
        reply: Reply<()>,
    },
    /// Stores a campaign's body under its reference.
    PutBody {
        campaign_id: String,
        body_ref: String,
        body: String,
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
    pub(super) fn is_bulk(&self) -> bool {
        match self {
            Op::Persist(batch, _) => is_bulk_batch(batch),
            Op::RecordEnqueued { .. } | Op::RecordDeadLetter { .. } | Op::PutBody { .. } | Op::OutboxDone { .. } => true,
            _ => false,
        }
    }

    pub(super) fn weight(&self) -> usize {
        match self {
            Op::Persist(batch, _) => batch.len().max(1),
            Op::RecordEnqueued { recipients, .. } => recipients.len().max(1),
            _ => 1,
        }
    }
}

/// A result computed inside the transaction, sent once the commit is known.
pub(super) trait Finish: Send {
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
pub(super) struct Nothing;

#[cfg(test)]
impl Finish for Nothing {
    fn finish(self: Box<Self>, _commit_error: Option<StoreError>) {}
}

pub(super) fn done<T: Send + 'static>(reply: Reply<T>, r: Result<T, StoreError>) -> Box<dyn Finish> {
    Box::new(Done(reply, r))
}

/// What the writer thread works with besides its channel.
pub(super) struct WriterParts<'a> {
    pub(super) db: &'a Database,
    pub(super) health: &'a WriterHealth,
    pub(super) outbox: bool,
    pub(super) log: RedoLog,
    /// How often a commit is made durable (a checkpoint), letting the redo log start over.
    pub(super) checkpoint_every: std::time::Duration,
}

/// Log bytes after which the next commit is a checkpoint, however recent the last one.
const MAX_LOG_BYTES: u64 = 64 << 20;

/// The writer thread's loop: takes operations from both lanes (interactive first) and commits
/// them in groups until every sender is gone, then checkpoints.
pub(super) fn writer_loop(parts: WriterParts<'_>, rx: std::sync::mpsc::Receiver<Op>) {
    let WriterParts { db, health, outbox, mut log, checkpoint_every } = parts;
    let (mut interactive, mut bulk) = (std::collections::VecDeque::new(), std::collections::VecDeque::new());
    let mut last_interactive: Option<std::time::Instant> = None;
    let mut last_checkpoint = std::time::Instant::now();
    // Set when the log may hold a record of a transaction that did not commit: nothing more
    // may be written until a restart replays it.
    let mut log_broken = false;
    loop {
        if interactive.is_empty() && bulk.is_empty() {
            // Idle: wait for work, but not past the checkpoint a non-empty log is due.
            let op = if log.len() == 0 || log_broken {
                rx.recv().ok()
            } else {
                match rx.recv_timeout(checkpoint_every.saturating_sub(last_checkpoint.elapsed())) {
                    Ok(op) => Some(op),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        checkpoint(db, &mut log, &mut last_checkpoint);
                        continue;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
                }
            };
            match op {
                Some(op) => lane(op, &mut interactive, &mut bulk),
                None => {
                    if log.len() > 0 && !log_broken {
                        checkpoint(db, &mut log, &mut last_checkpoint);
                    }
                    return;
                }
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
        let redo = Redo::new(!checkpoint_every.is_zero());
        let durable = last_checkpoint.elapsed() >= checkpoint_every || log.len() >= MAX_LOG_BYTES;
        let result = (|| -> Result<bool, redb::Error> {
            if log_broken {
                return Err(redb::Error::Corrupted("the redo log could not take back a failed commit; restart to replay it".into()));
            }
            let mut txn = db.begin_write()?;
            let events_waiting = {
                let mut w = Writer::open(&txn, outbox, &redo)?;
                for op in pending.by_ref() {
                    finished.push(w.apply(op)?);
                }
                w.close(log.next_lsn())?
            };
            let rows = redo.take();
            if durable {
                // The commit itself is durable: no record needed, and the log starts over.
                timed("durable commit", || txn.commit())?;
                if !rows.is_empty() {
                    log.skip_lsn();
                }
                log.reset();
                last_checkpoint = std::time::Instant::now();
                return Ok(events_waiting);
            }
            txn.set_durability(redb::Durability::None)?;
            if !rows.is_empty() {
                timed("log", || log.append(&rows)).inspect_err(|_| log_broken = true)?;
            }
            if let Err(e) = timed("commit", || txn.commit()) {
                if !rows.is_empty() {
                    log_broken = log.undo_last().is_err();
                }
                return Err(e.into());
            }
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

/// Runs one step of a commit, logging its time at debug level, or as a warning when it took
/// a second or more (a disk in trouble).
fn timed<T>(what: &str, step: impl FnOnce() -> T) -> T {
    let started = std::time::Instant::now();
    let out = step();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if ms >= 1000.0 {
        tracing::warn!(ms, what, "store commit slow");
    } else {
        tracing::debug!(ms, what, "store commit");
    }
    out
}

/// Makes everything committed so far durable with an empty durable commit, and starts the
/// log over.
fn checkpoint(db: &Database, log: &mut RedoLog, last: &mut std::time::Instant) {
    let done = (|| -> Result<(), redb::Error> {
        timed("idle checkpoint", || -> Result<(), redb::Error> { Ok(db.begin_write()?.commit()?) })?;
        log.reset();
        Ok(())
    })();
    if let Err(e) = done {
        tracing::error!(error = %e, "store checkpoint failed");
    }
    *last = std::time::Instant::now();
}

/// Splits a batch into chunks of about [`BULK_CHUNK`] messages, each holding all of its rooms'
/// messages in their order (so a room's messages still commit together and in order),
/// with each message's position in the batch.
pub(super) fn bulk_chunks(batch: Vec<NewMessage>) -> Vec<(Vec<usize>, Vec<NewMessage>)> {
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
pub(super) fn is_bulk_batch(batch: &[NewMessage]) -> bool {
    !batch.is_empty() && batch.iter().all(|m| m.kind == MessageKind::OneOff)
}

pub(super) fn writer_stopped() -> StoreError {
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
        Op::RecordDeadLetter { reply, .. } | Op::PutBody { reply, .. } | Op::OutboxDone { reply, .. } => drop(reply.send(Err(e))),
        #[cfg(test)]
        Op::Crash | Op::Block(_) => {}
    }
}
