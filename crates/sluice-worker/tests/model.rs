//! Invariants 1-4 checked against a model: random mixes of interactive sends (one at a time,
//! concurrent, or cancelled half-way), bulk sends (also cancelled half-way, with another
//! campaign right behind), reads, queue drains, crashes between commit and ack, and restarts
//! of the embedded backends. After every step, every user's unread per room and total must
//! equal what the model computes from first principles (messages after the read position not
//! sent by the user), and every room's last seq must equal its message count.
//!
//! Every user also has a live connection, as a client would: live messages of a room must
//! arrive in seq order, each once, however the persists that made them overlapped; and a
//! client that resumes after its highest contiguous seq (the documented rule) ends up with
//! every seq of every room it belongs to exactly once.

use proptest::prelude::*;
use sluice_core::events::NoEvents;
use sluice_core::fanout::Fanout;
use sluice_core::hub::{Connection, Hub, LiveEvent};
use sluice_core::ids;
use sluice_core::metrics::Metrics;
use sluice_core::model::{HistoryQuery, MessageKind, NewMessage, Persisted};
use sluice_core::queue::{Enqueue, SpikeQueue};
use sluice_core::store::MessageStore;
use sluice_embedded::{EmbeddedQueue, EmbeddedStore, LocalHub, QueueConfig};
use sluice_proto::convert::{decode_queued, encode_queued};
use sluice_worker::{Backends, Worker, WorkerConfig};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const USERS: usize = 5;
const GROUP_ROOMS: [(&str, &[usize]); 2] = [("r0", &[0, 1, 2]), ("r1", &[1, 2, 3, 4])];

#[derive(Debug, Clone)]
enum Op {
    Send {
        room: usize,
        sender: usize,
        n: usize,
    },
    /// Several members send to one room at once (their persists overlap).
    ConcurrentSends {
        room: usize,
        senders: u8,
    },
    /// A send whose caller goes away after `polls` polls; the client then retries it.
    CancelledSend {
        room: usize,
        sender: usize,
        n: usize,
        polls: u8,
    },
    /// A bulk send cancelled after `polls` polls, another campaign sent right behind it,
    /// then the cancelled one retried (as a scheduler whose call timed out would).
    CancelledBulk {
        sender: usize,
        recipients: u8,
        campaign: u8,
        polls: u8,
    },
    /// A user's client resumes every room after its highest contiguous seq.
    Resume {
        user: usize,
    },
    Bulk {
        sender: usize,
        recipients: u8,
        campaign: u8,
    },
    Read {
        user: usize,
        room: usize,
        frac: f64,
    },
    Drain,
    CrashAfterCommit {
        take: usize,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..USERS, 1..4usize).prop_map(|(room, sender, n)| Op::Send { room, sender, n }),
        2 => (0..2usize, 1..32u8).prop_map(|(room, senders)| Op::ConcurrentSends { room, senders }),
        1 => (0..2usize, 0..USERS, 1..4usize, 0..3u8).prop_map(|(room, sender, n, polls)| Op::CancelledSend { room, sender, n, polls }),
        1 => (0..USERS, any::<u8>(), 0..3u8, 0..3u8)
            .prop_map(|(sender, recipients, campaign, polls)| Op::CancelledBulk { sender, recipients, campaign, polls }),
        2 => (0..USERS).prop_map(|user| Op::Resume { user }),
        3 => (0..USERS, any::<u8>(), 0..3u8).prop_map(|(sender, recipients, campaign)| Op::Bulk { sender, recipients, campaign }),
        4 => (0..USERS, 0..12usize, 0.0..1.2f64).prop_map(|(user, room, frac)| Op::Read { user, room, frac }),
        2 => Just(Op::Drain),
        1 => (1..6usize).prop_map(|take| Op::CrashAfterCommit { take }),
        1 => Just(Op::Restart),
    ]
}

fn user(i: usize) -> String {
    format!("u{i}")
}

/// Rooms the model may read: the group rooms and every direct room between two users.
fn room_name(i: usize) -> String {
    if i < GROUP_ROOMS.len() {
        return GROUP_ROOMS[i].0.to_string();
    }
    let pairs: Vec<(usize, usize)> = (0..USERS).flat_map(|a| ((a + 1)..USERS).map(move |b| (a, b))).collect();
    let (a, b) = pairs[(i - GROUP_ROOMS.len()) % pairs.len()];
    ids::dm_room(&user(a), &user(b))
}

#[derive(Default)]
struct Model {
    /// Senders of each room's messages, in seq order.
    rooms: BTreeMap<String, Vec<String>>,
    members: BTreeMap<String, Vec<String>>,
    read: BTreeMap<(String, String), u64>,
    /// (user, room) of every inbox row: each member's, but for the sender of the one-off that
    /// created a direct room, until it reads, writes or is written to there.
    rows: BTreeSet<(String, String)>,
    /// Queued one-off messages not yet persisted, in enqueue order.
    pending: Vec<NewMessage>,
    seen_msg_ids: HashSet<String>,
}

impl Model {
    fn persist(&mut self, m: &NewMessage) {
        let fresh = !self.members.contains_key(&m.room);
        let members = self.members.entry(m.room.clone()).or_insert_with(|| {
            let mut v = m.create_members.clone();
            v.sort();
            v
        });
        for u in members.iter() {
            if *u != m.sender || !(fresh && m.kind == MessageKind::OneOff) {
                self.rows.insert((u.clone(), m.room.clone()));
            }
        }
        self.rooms.entry(m.room.clone()).or_default().push(m.sender.clone());
    }

    fn unread(&self, user: &str, room: &str) -> u64 {
        let read = self.read.get(&(user.to_string(), room.to_string())).copied().unwrap_or(0);
        self.rooms.get(room).map_or(0, |s| s.iter().enumerate().filter(|(i, by)| (*i as u64 + 1) > read && *by != user).count() as u64)
    }
}

struct Backend {
    store: Arc<dyn MessageStore>,
    queue: Arc<dyn SpikeQueue>,
    fanout: Arc<Fanout>,
    worker: Worker,
    /// One live connection per user.
    conns: Vec<Connection>,
}

/// Opens the backends in `dir`; with `logged`, the store's redo log is on (a checkpoint every
/// 10 ms, so runs cross checkpoints; a restart checkpoints on the way out, and the crash
/// tests of sluice-embedded cover replay).
async fn open(dir: &Path, logged: bool) -> Backend {
    let checkpoint_every = if logged { Duration::from_millis(10) } else { Duration::ZERO };
    let config = sluice_embedded::StoreConfig { checkpoint_every, ..Default::default() };
    let store: Arc<dyn MessageStore> = Arc::new(EmbeddedStore::open_with(&dir.join("store.redb"), config).unwrap());
    let queue: Arc<dyn SpikeQueue> = Arc::new(EmbeddedQueue::open(&dir.join("queue.redb"), QueueConfig::default()).unwrap());
    let hub = Arc::new(LocalHub::new());
    let limiter = Arc::new(sluice_core::limits::LocalLimiter::new());
    let backends = Backends::new(store.clone(), queue.clone(), hub.clone(), Arc::new(NoEvents), limiter, Arc::new(Metrics::new()));
    let fanout = backends.fanout.clone();
    let worker = Worker::new(backends, WorkerConfig::default());
    let mut conns = Vec::new();
    for i in 0..USERS {
        conns.push(hub.connect(&user(i), 1 << 16).await.unwrap());
    }
    Backend { store, queue, fanout, worker, conns }
}

/// What one user's client has seen, as a client keeps it.
#[derive(Default)]
struct Client {
    /// Seqs seen per room, live or replayed.
    seen: BTreeMap<String, BTreeSet<u64>>,
    /// The last seq that arrived live per room on the current connection.
    last_live: BTreeMap<String, u64>,
}

impl Client {
    /// The highest seq up to which the client has every message of `room`.
    fn contiguous(&self, room: &str) -> u64 {
        let Some(seen) = self.seen.get(room) else { return 0 };
        let mut n = 0;
        while seen.contains(&(n + 1)) {
            n += 1;
        }
        n
    }
}

/// Takes what arrived on every connection; live messages of a room come in strictly
/// increasing seq order.
fn take_live(b: &mut Backend, clients: &mut [Client]) -> Result<(), TestCaseError> {
    for (i, conn) in b.conns.iter_mut().enumerate() {
        prop_assert!(!conn.events.overflowed());
        while let Ok(ev) = conn.events.try_recv() {
            if let LiveEvent::Message { message, .. } = &*ev {
                let c = &mut clients[i];
                let last = c.last_live.entry(message.room.clone()).or_insert(0);
                prop_assert!(message.seq > *last, "{} got seq {} of {} live after {}", user(i), message.seq, message.room, last);
                *last = message.seq;
                // Strictly increasing, so never twice live. A message may still arrive live after
                // a resume fetched it (its publication was held for an earlier persist of the
                // room): a client keeps it once, as the gateway's writer does for a socket.
                c.seen.entry(message.room.clone()).or_default().insert(message.seq);
            }
        }
    }
    Ok(())
}

/// Persists `batch` as the gateway does (a ticket per message, publish after commit).
async fn persist_live(b: &Backend, batch: Vec<NewMessage>) -> Vec<Result<Persisted, sluice_core::error::StoreError>> {
    let tickets: Vec<_> = batch.iter().map(|m| b.fanout.ticket(&m.room)).collect();
    let results = b.store.persist(batch).await.unwrap();
    for (r, t) in results.iter().zip(tickets) {
        if let Ok(p) = r {
            t.publish(p, None).await;
        }
    }
    results
}

/// Records committed messages in the model in seq order, checking their seqs extend the
/// room without a gap.
fn commit_in_model(model: &mut Model, done: &mut Vec<(NewMessage, u64)>) -> Result<(), TestCaseError> {
    done.sort_by_key(|(_, seq)| *seq);
    for (m, seq) in done.drain(..) {
        let next = model.rooms.get(&m.room).map_or(0, |r| r.len() as u64) + 1;
        prop_assert_eq!(seq, next, "seq of {} in {}", m.msg_id, m.room);
        model.persist(&m);
    }
    Ok(())
}

/// The one-off messages of campaign `cid` of `sender` to the users in `recipients`. These
/// sends skip EnqueueBulk, which refuses a campaign id to any sender but its first; so the
/// id used is `cid` with the sender's name, as if EnqueueBulk had been asked. (A msg_id is
/// made of campaign and recipient; one campaign from two senders would give one msg_id to
/// two rooms, which no producer can.)
fn one_offs(model: &mut Model, sender: usize, recipients: u8, cid: &str) -> Vec<Enqueue> {
    let s = user(sender);
    let cid = format!("{cid}-{s}");
    let mut batch = Vec::new();
    for r in (0..USERS).filter(|r| recipients & (1 << r) != 0 && *r != sender).map(user) {
        let m = NewMessage { sent_at_ms: 0, ..sluice_testkit::store::one_off(&cid, &s, &r) };
        if model.seen_msg_ids.insert(m.msg_id.clone()) {
            model.pending.push(m.clone());
        }
        batch.push(Enqueue {
            dedup_id: m.msg_id.clone(),
            group: ids::queue_group(&m.room),
            tenant: m.sender.clone(),
            body: encode_queued(&m),
        });
    }
    batch
}

/// `n` chat messages from `sender`, with ids from the running count `sends`.
fn chats(room: &str, sender: &str, n: usize, sends: &mut usize) -> Vec<NewMessage> {
    (0..n)
        .map(|_| {
            *sends += 1;
            chat(room, sender, *sends)
        })
        .collect()
}

/// Persists `batch` live and records what committed; only members' sends may commit.
async fn send(b: &Backend, model: &mut Model, batch: Vec<NewMessage>) -> Result<(), TestCaseError> {
    let mut done = Vec::new();
    for (m, r) in batch.iter().zip(persist_live(b, batch.clone()).await) {
        prop_assert_eq!(r.is_ok(), model.members[&m.room].contains(&m.sender), "send by {} to {}", m.sender, m.room);
        if let Ok(p) = r {
            done.push((m.clone(), p.message.seq));
        }
    }
    commit_in_model(model, &mut done)
}

/// Polls `call` up to `polls` times, then drops it: a caller that went away mid-call.
async fn give_up_after<F: std::future::Future>(polls: u8, call: F) {
    let mut call = std::pin::pin!(call);
    for _ in 0..polls {
        if futures::poll!(call.as_mut()).is_ready() {
            return;
        }
        tokio::task::yield_now().await;
    }
}

fn chat(room: &str, sender: &str, id: usize) -> NewMessage {
    NewMessage {
        msg_id: ids::chat_msg_id(sender, room, &id.to_string()),
        room: room.into(),
        sender: sender.into(),
        body: "hi".into(),
        kind: MessageKind::Chat,
        campaign_id: None,
        sent_at_ms: 0,
        create_members: vec![],
        body_ref: None,
    }
}

const VIS: Duration = Duration::from_secs(60);

async fn run(ops: Vec<Op>, logged: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path(), logged).await;
    let mut model = Model::default();
    let mut clients: Vec<Client> = (0..USERS).map(|_| Client::default()).collect();
    for (name, members) in GROUP_ROOMS {
        let members: Vec<String> = members.iter().map(|&i| user(i)).collect();
        b.store.create_room(name, &members, 0).await.unwrap();
        model.rows.extend(members.iter().map(|u| (u.clone(), name.to_string())));
        model.members.insert(name.to_string(), members);
        model.rooms.insert(name.to_string(), Vec::new());
    }
    let mut sends = 0usize;
    for op in ops {
        match op {
            Op::Send { room, sender, n } => {
                let batch = chats(GROUP_ROOMS[room].0, &user(sender), n, &mut sends);
                send(&b, &mut model, batch).await?;
            }
            Op::ConcurrentSends { room, senders } => {
                let room = GROUP_ROOMS[room].0;
                let mut tasks = Vec::new();
                for s in (0..USERS).filter(|i| senders & (1 << i) != 0).map(user) {
                    sends += 1;
                    let m = chat(room, &s, sends);
                    let (store, fanout) = (b.store.clone(), b.fanout.clone());
                    tasks.push(tokio::spawn(async move {
                        let ticket = fanout.ticket(&m.room);
                        let r = store.persist(vec![m.clone()]).await.unwrap().pop().unwrap();
                        if let Ok(p) = &r {
                            ticket.publish(p, None).await;
                        }
                        (m, r.map(|p| p.message.seq))
                    }));
                }
                let mut done = Vec::new();
                for t in tasks {
                    let (m, r) = t.await.unwrap();
                    prop_assert_eq!(r.is_ok(), model.members[room].contains(&m.sender));
                    if let Ok(seq) = r {
                        done.push((m, seq));
                    }
                }
                commit_in_model(&mut model, &mut done)?;
            }
            Op::CancelledSend { room, sender, n, polls } => {
                let batch = chats(GROUP_ROOMS[room].0, &user(sender), n, &mut sends);
                give_up_after(polls, b.store.persist(batch.clone())).await;
                // The client retries with the same ids: one message each, whatever got in.
                send(&b, &mut model, batch).await?;
            }
            Op::Bulk { sender, recipients, campaign } => {
                let batch = one_offs(&mut model, sender, recipients, &format!("c{campaign}"));
                b.queue.send(batch).await.unwrap();
            }
            Op::CancelledBulk { sender, recipients, campaign, polls } => {
                let first = one_offs(&mut model, sender, recipients, &format!("c{campaign}"));
                // Another sender's campaign to the others, in rooms the first one does not use
                // (so the model knows each room's order without asking the store).
                let behind = one_offs(&mut model, (sender + 1) % USERS, !recipients & !(1 << sender), &format!("d{campaign}"));
                give_up_after(polls, b.queue.send(first.clone())).await;
                b.queue.send(behind).await.unwrap();
                b.queue.send(first).await.unwrap();
            }
            Op::Resume { user: u } => {
                take_live(&mut b, &mut clients)?;
                let name = user(u);
                let rooms: Vec<String> = model.members.iter().filter(|(_, m)| m.contains(&name)).map(|(r, _)| r.clone()).collect();
                let c = &mut clients[u];
                for room in rooms {
                    let mut after = c.contiguous(&room);
                    loop {
                        let page = b.store.history(&room, HistoryQuery { before: None, after: Some(after), limit: 500 }).await.unwrap();
                        let Some(last) = page.last() else { break };
                        after = last.seq;
                        c.seen.entry(room.clone()).or_default().extend(page.iter().map(|m| m.seq));
                    }
                    let last = model.rooms.get(&room).map_or(0, |r| r.len() as u64);
                    let want: BTreeSet<u64> = (1..=last).collect();
                    prop_assert_eq!(c.seen.get(&room).cloned().unwrap_or_default(), want, "{} resumed {}", name, room);
                }
            }
            Op::Read { user: u, room, frac } => {
                let (u, room) = (user(u), room_name(room));
                let last = model.rooms.get(&room).map_or(0, |r| r.len() as u64);
                let seq = (frac * (last + 1) as f64) as u64;
                let r = b.store.mark_read(&u, &room, seq, 0).await;
                let member = model.members.get(&room).is_some_and(|m| m.contains(&u));
                prop_assert_eq!(r.is_ok(), member, "read by {} of {}: {:?}", u, room, r);
                if member {
                    let pos = model.read.entry((u.clone(), room.clone())).or_insert(0);
                    *pos = (*pos).max(seq.min(last));
                    if seq.min(last) > 0 {
                        model.rows.insert((u.clone(), room.clone()));
                    }
                }
            }
            Op::Drain => loop {
                let batch = b.queue.receive(1000, Duration::ZERO, VIS).await.unwrap();
                if batch.is_empty() {
                    for m in std::mem::take(&mut model.pending) {
                        model.persist(&m);
                    }
                    break;
                }
                prop_assert!(b.worker.process(batch).await);
            },
            Op::CrashAfterCommit { take } => {
                let batch = b.queue.receive(take, Duration::ZERO, VIS).await.unwrap();
                let msgs: Vec<NewMessage> = batch.iter().map(|d| decode_queued(&d.body, 1 << 20).unwrap()).collect();
                for r in b.store.persist(msgs.clone()).await.unwrap() {
                    r.unwrap();
                }
                for m in &msgs {
                    if let Some(i) = model.pending.iter().position(|p| p.msg_id == m.msg_id) {
                        let p = model.pending.remove(i);
                        model.persist(&p);
                    }
                }
                take_live(&mut b, &mut clients)?;
                drop(b);
                b = open(dir.path(), logged).await;
                clients.iter_mut().for_each(|c| c.last_live.clear());
            }
            Op::Restart => {
                take_live(&mut b, &mut clients)?;
                drop(b);
                b = open(dir.path(), logged).await;
                clients.iter_mut().for_each(|c| c.last_live.clear());
            }
        }
        take_live(&mut b, &mut clients)?;
        for i in 0..USERS {
            let u = user(i);
            let inbox = b.store.inbox(&u).await.unwrap();
            let mut total = 0;
            for row in &inbox.rooms {
                let want = model.unread(&u, &row.room);
                prop_assert_eq!(row.unread, want, "unread of {} in {}", u, row.room);
                prop_assert_eq!(row.last_seq, model.rooms.get(&row.room).map_or(0, |r| r.len() as u64));
                total += want;
            }
            let rooms_of_u = model.rows.iter().filter(|(x, _)| *x == u).count();
            prop_assert_eq!(inbox.rooms.len(), rooms_of_u, "rooms of {}", u);
            prop_assert_eq!(inbox.total_unread, total, "total of {}", u);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn counters_match_the_model(ops in proptest::collection::vec(op(), 1..40), logged in any::<bool>()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(ops, logged))?;
    }
}
