//! Invariant 3 checked against a model: random mixes of interactive sends, bulk sends,
//! reads, queue drains, crashes between commit and ack, and restarts of the embedded
//! backends. After every step, every user's unread per room and total must equal what the
//! model computes from first principles (messages after the read position not sent by the
//! user), and every room's last seq must equal its message count.

use proptest::prelude::*;
use sluice_core::events::NoEvents;
use sluice_core::fanout::Fanout;
use sluice_core::ids;
use sluice_core::metrics::Metrics;
use sluice_core::model::{MessageKind, NewMessage};
use sluice_core::queue::{Enqueue, SpikeQueue};
use sluice_core::store::MessageStore;
use sluice_embedded::{EmbeddedQueue, EmbeddedStore, LocalHub, QueueConfig};
use sluice_proto::convert::{decode_queued, encode_queued};
use sluice_worker::{Backends, Worker, WorkerConfig};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const USERS: usize = 5;
const GROUP_ROOMS: [(&str, &[usize]); 2] = [("r0", &[0, 1, 2]), ("r1", &[1, 2, 3, 4])];

#[derive(Debug, Clone)]
enum Op {
    Send { room: usize, sender: usize, n: usize },
    Bulk { sender: usize, recipients: u8, campaign: u8 },
    Read { user: usize, room: usize, frac: f64 },
    Drain,
    CrashAfterCommit { take: usize },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..USERS, 1..4usize).prop_map(|(room, sender, n)| Op::Send { room, sender, n }),
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
    /// Queued one-off messages not yet persisted, in enqueue order.
    pending: Vec<NewMessage>,
    seen_msg_ids: HashSet<String>,
}

impl Model {
    fn persist(&mut self, m: &NewMessage) {
        self.members.entry(m.room.clone()).or_insert_with(|| {
            let mut v = m.create_members.clone();
            v.sort();
            v
        });
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
    worker: Worker,
}

fn open(dir: &Path) -> Backend {
    let store: Arc<dyn MessageStore> = Arc::new(EmbeddedStore::open(&dir.join("store.redb")).unwrap());
    let queue: Arc<dyn SpikeQueue> = Arc::new(EmbeddedQueue::open(&dir.join("queue.redb"), QueueConfig::default()).unwrap());
    let worker = Worker::new(
        Backends {
            store: store.clone(),
            queue: queue.clone(),
            fanout: Fanout::new(Arc::new(LocalHub::new()), Arc::new(NoEvents)),
            metrics: Arc::new(Metrics::new()),
        },
        WorkerConfig::default(),
    );
    Backend { store, queue, worker }
}

const VIS: Duration = Duration::from_secs(60);

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    let mut model = Model::default();
    for (name, members) in GROUP_ROOMS {
        let members: Vec<String> = members.iter().map(|&i| user(i)).collect();
        b.store.create_room(name, &members, 0).await.unwrap();
        model.members.insert(name.to_string(), members);
        model.rooms.insert(name.to_string(), Vec::new());
    }
    let mut sends = 0usize;
    for op in ops {
        match op {
            Op::Send { room, sender, n } => {
                let (room, s) = (GROUP_ROOMS[room].0, user(sender));
                let batch: Vec<NewMessage> = (0..n)
                    .map(|_| {
                        sends += 1;
                        NewMessage {
                            msg_id: ids::chat_msg_id(&s, room, &sends.to_string()),
                            room: room.into(),
                            sender: s.clone(),
                            body: "hi".into(),
                            kind: MessageKind::Chat,
                            campaign_id: None,
                            sent_at_ms: 0,
                            create_members: vec![],
                        }
                    })
                    .collect();
                let member = model.members[room].contains(&s);
                for (m, r) in batch.iter().zip(b.store.persist(batch.clone()).await.unwrap()) {
                    prop_assert_eq!(r.is_ok(), member, "send by {} to {}", s, room);
                    if member {
                        model.persist(m);
                    }
                }
            }
            Op::Bulk { sender, recipients, campaign } => {
                let s = user(sender);
                let cid = format!("c{campaign}");
                let mut batch = Vec::new();
                for r in (0..USERS).filter(|r| recipients & (1 << r) != 0 && *r != sender).map(user) {
                    let m = NewMessage {
                        msg_id: ids::bulk_msg_id(&cid, &r),
                        room: ids::dm_room(&s, &r),
                        sender: s.clone(),
                        body: "sale".into(),
                        kind: MessageKind::OneOff,
                        campaign_id: Some(cid.clone()),
                        sent_at_ms: 0,
                        create_members: vec![s.clone(), r.clone()],
                    };
                    if model.seen_msg_ids.insert(m.msg_id.clone()) {
                        model.pending.push(m.clone());
                    }
                    batch.push(Enqueue { dedup_id: m.msg_id.clone(), group: ids::queue_group(&m.room), body: encode_queued(&m) });
                }
                b.queue.send(batch).await.unwrap();
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
                drop(b);
                b = open(dir.path());
            }
            Op::Restart => {
                drop(b);
                b = open(dir.path());
            }
        }
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
            let rooms_of_u = model.members.iter().filter(|(_, m)| m.contains(&u)).count();
            prop_assert_eq!(inbox.rooms.len(), rooms_of_u, "rooms of {}", u);
            prop_assert_eq!(inbox.total_unread, total, "total of {}", u);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn counters_match_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(ops))?;
    }
}
