//! What the embedded backends keep across a restart (a process that dies and starts again).

use bytes::Bytes;
use sluice_core::events::{AnalyticsEvent, EventSink};
use sluice_core::queue::{Enqueue, SpikeQueue};
use sluice_embedded::{EmbeddedQueue, FileEvents, QueueConfig};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn msg(group: &str, id: &str) -> Enqueue {
    Enqueue { dedup_id: id.into(), group: group.into(), tenant: String::new(), body: Bytes::from(id.to_string()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_survives_a_restart_with_receive_counts_dead_letters_and_dedup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.redb");
    {
        let q = EmbeddedQueue::open(&path, QueueConfig::default()).unwrap();
        q.send(vec![msg("g", "a"), msg("g", "b"), msg("h", "poison"), msg("k", "done")]).await.unwrap();
        let got = q.receive(10, LONG, LONG).await.unwrap();
        assert_eq!(got.len(), 4);
        let poison = got.iter().find(|d| d.dedup_id == "poison").unwrap();
        q.dead_letter(&poison.receipt, "bad body").await.unwrap();
        let done = got.iter().find(|d| d.dedup_id == "done").unwrap();
        q.ack(std::slice::from_ref(&done.receipt)).await.unwrap();
        // "a" and "b" stay in flight: the process dies before acking them.
    }
    let q = EmbeddedQueue::open(&path, QueueConfig::default()).unwrap();
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight, stats.dead), (2, 0, 1), "in-flight messages are visible again");
    let again = q.receive(10, LONG, LONG).await.unwrap();
    let seen: Vec<(&str, u32)> = again.iter().map(|d| (d.dedup_id.as_str(), d.receive_count)).collect();
    assert_eq!(seen, vec![("a", 2), ("b", 2)], "same order, receive counts kept");
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!((dead[0].dedup_id.as_str(), dead[0].reason.as_str()), ("poison", "bad body"));
    let out = q.send(vec![msg("g", "a"), msg("g", "c")]).await.unwrap();
    assert_eq!((out.enqueued, out.duplicates), (1, 1), "dedup ids of queued messages are remembered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_events_are_appended_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let sink = FileEvents::open(&path, Box::new(|_| panic!("nothing should be dropped"))).unwrap();
    sink.emit(vec![AnalyticsEvent::RoomRead { user: "u".into(), room: "r".into(), seq: 3, unread: 0, read_at_ms: 7 }]);
    sink.emit(vec![AnalyticsEvent::MessagePersisted {
        room: "r".into(),
        seq: 4,
        msg_id: "m".into(),
        sender: "s".into(),
        kind: "chat".into(),
        campaign_id: None,
        sent_at_ms: 1,
        persisted_at_ms: 2,
        recipients: 1,
    }]);
    sink.flush().await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!((lines[0]["type"].as_str(), lines[0]["seq"].as_u64()), (Some("room_read"), Some(3)));
    assert_eq!((lines[1]["type"].as_str(), lines[1]["msg_id"].as_str()), (Some("message_persisted"), Some("m")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dedup_window_outlives_the_ack() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&dir.path().join("q.redb"), QueueConfig::default()).unwrap();
    q.send(vec![msg("g", "x")]).await.unwrap();
    let d = q.receive(1, Duration::from_secs(5), Duration::from_secs(60)).await.unwrap();
    q.ack(&[d[0].receipt.clone()]).await.unwrap();
    let out = q.send(vec![msg("g", "x")]).await.unwrap();
    assert_eq!((out.enqueued, out.duplicates), (0, 1));
    assert!(q.receive(1, Duration::from_millis(50), Duration::from_secs(60)).await.unwrap().is_empty());
}

/// Issue 16.1: a send whose caller goes away mid-call (a gRPC deadline during a burst) must
/// not hand its seqs to the next send. Before the fix the dropped call's write kept running
/// while the next call reused the same seqs, and whichever commit came last overwrote the
/// other's records on disk, although the second caller was told "accepted".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_dropped_mid_call_never_overwrites_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.redb");
    let batch = |prefix: &str, n: usize| (0..n).map(|i| msg(&format!("{prefix}{}", i % 7), &format!("{prefix}-{i}"))).collect::<Vec<_>>();
    {
        let q = EmbeddedQueue::open(&path, QueueConfig::default()).unwrap();
        let mut dropped = Box::pin(q.send(batch("a", 2_000)));
        // One poll takes the send lock and starts the write; then the caller is gone.
        assert!(futures::poll!(&mut dropped).is_pending());
        drop(dropped);
        let out = q.send(batch("b", 1_000)).await.unwrap();
        assert_eq!(out.enqueued, 1_000);
        // Whatever the dropped call still does in the background gets its chance to land.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stats = q.stats().await.unwrap();
        assert!(stats.visible == 1_000 || stats.visible == 3_000, "all or none of the dropped call: {stats:?}");
    }
    let q = EmbeddedQueue::open(&path, QueueConfig::default()).unwrap();
    let mut seen = std::collections::HashMap::new();
    loop {
        let got = q.receive(10_000, Duration::from_millis(50), LONG).await.unwrap();
        if got.is_empty() {
            break;
        }
        for d in &got {
            assert_eq!(d.body, Bytes::from(d.dedup_id.clone()), "a record holds its own body");
            *seen.entry(d.dedup_id.clone()).or_insert(0) += 1;
        }
        q.ack(&got.iter().map(|d| d.receipt.clone()).collect::<Vec<_>>()).await.unwrap();
    }
    assert!((0..1_000).all(|i| seen.get(&format!("b-{i}")) == Some(&1)), "every accepted message is on disk once");
    let dropped = (0..2_000).filter(|i| seen.contains_key(&format!("a-{i}"))).count();
    assert!(dropped == 0 || dropped == 2_000, "the dropped call is all or nothing, found {dropped}");
    assert_eq!(seen.len(), 1_000 + dropped);
}

/// Issue 16.6: a `message_persisted` event is written with its message, so a process that
/// dies after the commit and before its fan-out still delivers it at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_events_survive_a_crash_between_commit_and_fan_out() {
    use sluice_core::model::{MessageKind, NewMessage};
    use sluice_core::store::MessageStore;
    use sluice_embedded::outbox::relay;
    use sluice_embedded::{EmbeddedStore, StoreConfig};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let config = StoreConfig { outbox: true, ..StoreConfig::default() };
    {
        let store = EmbeddedStore::open_with(&path, config).unwrap();
        store.create_room("r", &["a".into(), "b".into()], 1).await.unwrap();
        let m = NewMessage {
            msg_id: "m-1".into(),
            room: "r".into(),
            sender: "a".into(),
            body: "hello".into(),
            kind: MessageKind::Chat,
            campaign_id: None,
            sent_at_ms: 5,
            create_members: vec![],
            body_ref: None,
        };
        assert!(store.persist(vec![m]).await.unwrap()[0].is_ok());
        // The process dies here: no fan-out, no event emitted.
    }
    let store = EmbeddedStore::open_with(&path, config).unwrap();
    assert_eq!(store.outbox_batch(10).await.unwrap().len(), 1, "the event waits in the outbox");
    let events_path = dir.path().join("events.jsonl");
    let sink = std::sync::Arc::new(FileEvents::open(&events_path, Box::new(|_| panic!("nothing dropped"))).unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let relaying = tokio::spawn(relay(store.clone(), sink, stop.clone()));
    for _ in 0..500 {
        if store.outbox_batch(10).await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    relaying.await.unwrap();
    assert!(store.outbox_batch(10).await.unwrap().is_empty(), "delivered events leave the outbox");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&events_path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        (lines[0]["type"].as_str(), lines[0]["msg_id"].as_str(), lines[0]["seq"].as_u64()),
        (Some("message_persisted"), Some("m-1"), Some(1))
    );
    assert_eq!(lines[0]["recipients"], 1);
}

/// A spike's deduplication ids are forgotten once their window passes even when nothing
/// more is sent: an idle receive prunes them (and the tables give their memory back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_queue_forgets_dedup_ids_past_their_window() {
    let dir = tempfile::tempdir().unwrap();
    let config = QueueConfig { dedup_window: Duration::from_millis(200), ..QueueConfig::default() };
    let q = EmbeddedQueue::open(&dir.path().join("q.redb"), config).unwrap();
    q.send((0..5_000).map(|i| msg(&format!("g{i}"), &format!("m{i}"))).collect()).await.unwrap();
    assert_eq!(q.dedup_keys(), 5_000);
    let mut left = 5_000;
    while left > 0 {
        let got = q.receive(1_000, Duration::from_millis(100), Duration::from_secs(60)).await.unwrap();
        left -= got.len();
        q.ack(&got.into_iter().map(|d| d.receipt).collect::<Vec<_>>()).await.unwrap();
    }
    // Well past the window; then one receive that finds nothing.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(q.receive(10, Duration::from_millis(10), Duration::from_secs(60)).await.unwrap().is_empty());
    assert_eq!(q.dedup_keys(), 0, "no send came, and the ids are forgotten all the same");
    let out = q.send(vec![msg("g0", "m0")]).await.unwrap();
    assert_eq!(out.enqueued, 1, "an id past its window is new again");
}
