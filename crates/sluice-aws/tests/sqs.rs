//! The SQS FIFO spike queue against moto: the shared queue conformance suite, and the dead
//! letters SQS moves by itself (its redrive policy) counted for their campaigns (issue 15.5).

mod common;

use sluice_core::queue::SpikeQueue;
use sluice_testkit::Guard;
use std::sync::Arc;

async fn queue() -> (Arc<dyn SpikeQueue>, Guard) {
    let (q, _) = common::queue("q").await;
    (q, Box::new(()))
}

mod queue_suite {
    sluice_testkit::queue_conformance!(super::queue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_moved_by_sqs_itself_are_counted_once_for_their_campaign() {
    use sluice_core::ids;
    use sluice_core::queue::Enqueue;
    use std::time::Duration;

    let (conf, names) = common::fresh_queues_moving_after("adopt", 2).await;
    let metrics = Arc::new(sluice_core::metrics::Metrics::new());
    let q =
        sluice_aws::SqsQueue::connect(aws_sdk_sqs::Client::new(&conf), &names, metrics.clone()).await.unwrap().with_client_side_wait(true);
    let q: Arc<dyn SpikeQueue> = Arc::new(q);
    assert_eq!(q.own_max_receives().await.unwrap(), Some(2));
    let (store, _) = common::store("adopt").await;
    let store: Arc<dyn sluice_core::store::MessageStore> = store;
    let msg = sluice_testkit::store::one_off_saying("crashy", "shop", "ann", "hello");
    store.record_enqueued("crashy", "shop", 1, &["ann".to_string()]).await.unwrap();
    let body = sluice_proto::convert::encode_queued(&msg);
    q.send(vec![Enqueue { dedup_id: msg.msg_id.clone(), group: ids::queue_group(&msg.room), tenant: "shop".into(), body }]).await.unwrap();
    // Two deliveries that end without a verdict (a worker crashing on the message); on the
    // third receive SQS moves it to the dead-letter queue by itself.
    for _ in 0..2 {
        assert_eq!(q.receive(10, Duration::from_secs(5), Duration::from_secs(1)).await.unwrap().len(), 1);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    assert!(q.receive(10, Duration::from_millis(500), Duration::from_secs(1)).await.unwrap().is_empty());
    let c = store.campaign("crashy").await.unwrap().unwrap();
    assert!(!c.done(), "nobody counted the moved message yet: {c:?}");

    let limiter = Arc::new(sluice_core::limits::LocalLimiter::new());
    let hub = Arc::new(sluice_embedded::LocalHub::new());
    let backends = sluice_worker::Backends::new(store.clone(), q.clone(), hub, Arc::new(sluice_core::events::NoEvents), limiter, metrics);
    let worker = sluice_worker::Worker::new(backends, sluice_worker::WorkerConfig { max_receives: 5, ..Default::default() });
    assert_eq!(worker.check_max_receives().await, 1, "a max-receives at or over the queue's own is lowered");
    assert_eq!(worker.adopt_dead_letters().await, 1);
    assert_eq!(worker.adopt_dead_letters().await, 0, "adopted once");
    let c = store.campaign("crashy").await.unwrap().unwrap();
    assert_eq!((c.enqueued, c.persisted, c.dead_lettered, c.done()), (1, 0, 1, true));
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].dedup_id.as_str(), dead[0].reason.as_str()), (msg.msg_id.as_str(), sluice_worker::ADOPTED_REASON));
}

/// Issue 15: SQS throttles a queue over its API rate (ThrottlingException, "Rate exceeded"),
/// and moto never does. Behind a proxy throttling half of the send, receive, delete and
/// visibility calls (the SDK's own three attempts absorb most; ours take what gets through),
/// every message arrives once, each group in its order, and every ack lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_calls_lose_nothing_and_keep_each_groups_order() {
    use sluice_core::queue::Enqueue;
    use sluice_testkit::moto_faults::{MotoFaultProxy, MotoFaults};
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    let proxy = MotoFaultProxy::start(&sluice_testkit::services::moto_url(), MotoFaults { sqs_throttled: 0.5, ..Default::default() }).await;
    let (conf, names) = common::fresh_queues_at(&proxy.url(), "throttled", 50).await;
    let metrics = Arc::new(sluice_core::metrics::Metrics::new());
    let q = sluice_aws::SqsQueue::connect(aws_sdk_sqs::Client::new(&conf), &names, metrics).await.unwrap().with_client_side_wait(true);
    const GROUPS: usize = 4;
    const PER_GROUP: usize = 15;
    for round in 0..3 {
        let batch = (0..GROUPS)
            .flat_map(|g| {
                (round * 5..(round + 1) * 5).map(move |i| Enqueue {
                    dedup_id: format!("g{g}-{i}"),
                    group: format!("g{g}"),
                    tenant: String::new(),
                    body: bytes::Bytes::from(format!("{i}")),
                })
            })
            .collect();
        q.send(batch).await.expect("a send gets through throttling");
    }
    let mut got: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while got.values().map(Vec::len).sum::<usize>() < GROUPS * PER_GROUP {
        assert!(Instant::now() < deadline, "not everything arrived: {got:?}");
        let batch = q.receive(10, Duration::from_secs(1), Duration::from_secs(30)).await.expect("a receive gets through throttling");
        for d in &batch {
            got.entry(d.group.clone()).or_default().push(std::str::from_utf8(&d.body).unwrap().parse().unwrap());
        }
        let receipts: Vec<_> = batch.into_iter().map(|d| d.receipt).collect();
        q.ack(&receipts).await.expect("an ack gets through throttling");
    }
    for (group, seen) in &got {
        assert_eq!(seen, &(0..PER_GROUP).collect::<Vec<_>>(), "group {group}: each message once, in order");
    }
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (0, 0), "every ack landed");
    let throttled = proxy.counts.sqs_throttled.load(Ordering::Relaxed);
    assert!(throttled >= 10, "the proxy throttled calls: {throttled}");
}
