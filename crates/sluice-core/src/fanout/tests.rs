//! Publication order of [`Fanout`]: deterministic interleavings and a property over random
//! schedules of overlapping persists.

use super::*;
use crate::error::HubError;
use crate::events::NoEvents;
use crate::hub::Connection;
use crate::model::{MessageKind, StoredMessage};
use async_trait::async_trait;
use proptest::prelude::*;
use tokio::sync::broadcast;

/// Records the seqs of message events in the order they are published.
#[derive(Default)]
struct Recorder(Mutex<Vec<u64>>);

#[async_trait]
impl Hub for Recorder {
    async fn connect(&self, _user: &str, _capacity: usize) -> Result<Connection, HubError> {
        unreachable!("not used by fan-out")
    }
    async fn disconnect(&self, _user: &str, _id: ConnId) {}
    async fn publish(&self, _targets: &[String], event: LiveEvent) -> Result<(), HubError> {
        if let LiveEvent::Message { message, .. } = event {
            self.0.lock().unwrap().push(message.seq);
        }
        Ok(())
    }
    async fn firehose(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        broadcast::channel(1).1
    }
    async fn online(&self, users: &[String]) -> Result<Vec<bool>, HubError> {
        Ok(vec![false; users.len()])
    }
    async fn ping(&self) -> Result<(), HubError> {
        Ok(())
    }
}

fn persisted(seq: u64) -> Persisted {
    Persisted {
        message: Arc::new(StoredMessage {
            room: "r".into(),
            seq,
            msg_id: format!("m{seq}"),
            sender: "a".into(),
            body: "b".into(),
            kind: MessageKind::Chat,
            campaign_id: None,
            sent_at_ms: 0,
        }),
        duplicate: false,
        members: Arc::new(vec!["a".into(), "b".into()]),
        unread: Vec::new(),
        unread_deferred: Vec::new(),
    }
}

fn setup() -> (Arc<Recorder>, Arc<Fanout>) {
    let hub = Arc::new(Recorder::default());
    (hub.clone(), Fanout::new(hub, Arc::new(NoEvents), None))
}

fn published(hub: &Recorder) -> Vec<u64> {
    hub.0.lock().unwrap().clone()
}

#[tokio::test]
async fn a_later_commit_waits_for_an_earlier_one() {
    let (hub, f) = setup();
    let (t1, t2) = (f.ticket("r"), f.ticket("r"));
    // The task of seq 2 wakes first.
    t2.publish(&persisted(2), None).await;
    assert!(published(&hub).is_empty(), "seq 2 waits: the persist of ticket 1 may have committed before it");
    t1.publish(&persisted(1), None).await;
    assert_eq!(published(&hub), vec![1, 2]);
    assert_eq!(f.rooms_in_progress(), 0, "nothing kept once the room is quiet");
}

#[tokio::test]
async fn a_persist_started_after_a_commit_never_holds_it_back() {
    let (hub, f) = setup();
    let t1 = f.ticket("r");
    t1.publish(&persisted(1), None).await;
    let (t2, t3) = (f.ticket("r"), f.ticket("r"));
    let other = f.ticket("elsewhere");
    t3.publish(&persisted(3), None).await;
    assert_eq!(published(&hub), vec![1]);
    t2.publish(&persisted(2), None).await;
    assert_eq!(published(&hub), vec![1, 2, 3], "another room's persist holds nothing here");
    drop(other);
}

#[tokio::test]
async fn a_failed_or_cancelled_persist_lets_the_room_go() {
    let (hub, f) = setup();
    let (t1, t2) = (f.ticket("r"), f.ticket("r"));
    t2.publish(&persisted(7), None).await;
    drop(t1);
    for _ in 0..100 {
        if !published(&hub).is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(published(&hub), vec![7]);
}

#[tokio::test]
async fn duplicates_publish_nothing_and_hold_nothing() {
    let (hub, f) = setup();
    let (t1, t2) = (f.ticket("r"), f.ticket("r"));
    t2.publish(&persisted(2), None).await;
    let mut dup = persisted(1);
    dup.duplicate = true;
    t1.publish(&dup, None).await;
    assert_eq!(published(&hub), vec![2]);
}

/// One step of a random schedule of overlapping persists into one room.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A new persist takes its ticket.
    Start,
    /// The oldest uncommitted started persist, or a random one, commits (gets the next seq).
    Commit(usize),
    /// A committed persist's task wakes and publishes, or a started one fails.
    Finish(usize),
    Fail(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::Start),
        any::<usize>().prop_map(Step::Commit),
        any::<usize>().prop_map(Step::Finish),
        any::<usize>().prop_map(Step::Fail)
    ]
}

proptest! {
    /// Whatever the interleaving of starts, commits, wake-ups and failures: every committed
    /// message is published once, in seq order (invariant 1 as a live client sees it).
    #[test]
    fn published_in_commit_order_whatever_the_interleaving(steps in proptest::collection::vec(step(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let (hub, f) = setup();
            let mut started: Vec<Ticket> = Vec::new();
            let mut committed: Vec<(Ticket, u64)> = Vec::new();
            let mut next_seq = 0;
            let mut expected = Vec::new();
            let mut run = |s: Step, started: &mut Vec<Ticket>, committed: &mut Vec<(Ticket, u64)>| -> Option<(Ticket, u64)> {
                match s {
                    Step::Start => started.push(f.ticket("r")),
                    Step::Commit(i) if !started.is_empty() => {
                        let t = started.remove(i % started.len());
                        next_seq += 1;
                        expected.push(next_seq);
                        committed.push((t, next_seq));
                    }
                    Step::Finish(i) if !committed.is_empty() => return Some(committed.remove(i % committed.len())),
                    Step::Fail(i) if !started.is_empty() => drop(started.remove(i % started.len())),
                    _ => {}
                }
                None
            };
            for s in steps {
                if let Some((t, seq)) = run(s, &mut started, &mut committed) {
                    t.publish(&persisted(seq), None).await;
                }
            }
            drop(started);
            for (t, seq) in std::mem::take(&mut committed) {
                t.publish(&persisted(seq), None).await;
            }
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            prop_assert_eq!(published(&hub), expected);
            prop_assert_eq!(f.rooms_in_progress(), 0);
            Ok(())
        })?;
    }
}
