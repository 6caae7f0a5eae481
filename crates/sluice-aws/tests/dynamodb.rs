//! The DynamoDB store against DynamoDB Local: the shared store conformance suite, then what
//! only this backend has (large rooms, idempotency tokens, capacity figures).

mod common;

use sluice_core::store::MessageStore;
use sluice_testkit::Guard;
use std::sync::Arc;

async fn store() -> (Arc<dyn MessageStore>, Guard) {
    let (s, _) = common::store("conf").await;
    (s, Box::new(()))
}

mod store_suite {
    sluice_testkit::store_conformance!(super::store);
}

use sluice_aws::DynamoStore;
use sluice_core::backoff::Backoff;
use sluice_core::ids;
use sluice_core::metrics::Metrics;
use sluice_core::model::HistoryQuery;
use sluice_testkit::dynamo_faults::DynamoFaultProxy;
use sluice_testkit::store::chat;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

async fn everything(store: &dyn MessageStore, room: &str) -> Vec<sluice_core::model::StoredMessage> {
    store.history(room, HistoryQuery { before: None, after: Some(0), limit: 500 }).await.unwrap()
}

/// Invariant 3 under TransactionConflict and throttling cancellations, injected as real
/// DynamoDB responses on a third of all transactions, while writers, duplicate senders and
/// readers race: counters stay exact, nothing is duplicated, seqs stay gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_conflicts_and_throttling_keep_counters_exact() {
    let (client, names) = common::fresh_tables("conflict", None).await;
    let proxy = DynamoFaultProxy::start(&sluice_testkit::services::dynamodb_url(), 0.35).await;
    let metrics = Arc::new(Metrics::new());
    let backoff = Backoff { base: Duration::from_millis(1), cap: Duration::from_millis(20), max_attempts: 60 };
    let faulty = Arc::new(DynamoStore::new(common::dynamodb_client(&proxy.url()).await, &names, metrics.clone()).with_backoff(backoff));
    let direct = DynamoStore::new(client, &names, Arc::new(Metrics::new()));
    let tag = ids::random_id();
    let members: Vec<String> = (0..5).map(|i| format!("m{i}-{tag}")).collect();
    let room = format!("conflict-{tag}");
    direct.create_room(&room, &members, 1).await.unwrap();

    const PER_WRITER: usize = 15;
    let mut tasks = Vec::new();
    for m in members.clone() {
        let (store, r, m2) = (faulty.clone(), room.clone(), m.clone());
        tasks.push(tokio::spawn(async move {
            let (room, m) = (r, m2);
            for i in 0..PER_WRITER {
                let msg = chat(&room, &m, &i.to_string());
                let p = store.persist(vec![msg.clone()]).await.unwrap().pop().unwrap().expect("persists despite conflicts");
                assert!(!p.duplicate);
                if i % 3 == 0 {
                    // A producer retry of what just committed.
                    let again = store.persist(vec![msg]).await.unwrap().pop().unwrap().unwrap();
                    assert!(again.duplicate && again.message.seq == p.message.seq);
                }
            }
        }));
        let (store, room, reader) = (faulty.clone(), room.clone(), m);
        tasks.push(tokio::spawn(async move {
            for _ in 0..8 {
                let last = store.room(&room).await.unwrap().unwrap().last_seq;
                store.mark_read(&reader, &room, rand::random_range(0..=last), 2).await.expect("mark-read despite conflicts");
                tokio::time::sleep(Duration::from_millis(rand::random_range(0..30))).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let all = everything(&direct, &room).await;
    let n = members.len() * PER_WRITER;
    assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=n as u64).collect::<Vec<_>>(), "gap-free, nothing twice");
    assert_eq!(all.iter().map(|m| &m.msg_id).collect::<HashSet<_>>().len(), n);
    for m in &members {
        let inbox = direct.inbox(m).await.unwrap();
        let row = inbox.rooms.iter().find(|r| r.room == room).unwrap();
        let want = all.iter().filter(|x| x.seq > row.read_seq && x.sender != *m).count() as u64;
        assert_eq!((row.unread, inbox.total_unread), (want, want), "{m}: unread after read_seq {}", row.read_seq);
    }
    let (conflicts, throttles) = (proxy.counts.conflicts.load(Ordering::Relaxed), proxy.counts.throttles.load(Ordering::Relaxed));
    eprintln!("injected {conflicts} conflicts and {throttles} throttles; {} retries", metrics.retries.get());
    assert!(conflicts >= 10 && throttles >= 5, "enough faults were injected: {conflicts} conflicts, {throttles} throttles");
    assert!(metrics.aws_retryable.with_label_values(&["dynamodb", "TransactionConflict"]).get() >= conflicts);
}

/// Invariant 2: the same message persisted again within the ClientRequestToken window, and
/// again after it (tokens DynamoDB has never seen): one message, one increment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_twice_inside_and_outside_the_token_window() {
    let (client, names) = common::fresh_tables("idem", None).await;
    let store = DynamoStore::new(client.clone(), &names, Arc::new(Metrics::new()));
    let tag = ids::random_id();
    let (a, b) = (format!("a-{tag}"), format!("b-{tag}"));
    let room = format!("idem-{tag}");
    store.create_room(&room, &[a.clone(), b.clone()], 1).await.unwrap();
    let m = chat(&room, &a, "once");
    let first = store.persist(vec![m.clone()]).await.unwrap().pop().unwrap().unwrap();
    assert_eq!((first.message.seq, first.duplicate), (1, false));
    store.persist(vec![chat(&room, &a, "two")]).await.unwrap().pop().unwrap().unwrap();

    // Inside the window: the token is known, the room moved on, so the parameters differ.
    let inside = store.persist(vec![m.clone()]).await.unwrap().pop().unwrap().unwrap();
    assert_eq!((inside.message.seq, inside.duplicate, inside.message.body.as_str()), (1, true, first.message.body.as_str()));
    // After the window: only the msg_id marker's condition can tell.
    let later = DynamoStore::new(client, &names, Arc::new(Metrics::new())).with_token_salt("eleven minutes later");
    let outside = later.persist(vec![m.clone()]).await.unwrap().pop().unwrap().unwrap();
    assert_eq!((outside.message.seq, outside.duplicate), (1, true));

    assert_eq!(everything(&store, &room).await.len(), 2);
    let inbox = store.inbox(&b).await.unwrap();
    assert_eq!((inbox.rooms[0].unread, inbox.total_unread), (2, 2), "one increment per message");
}
