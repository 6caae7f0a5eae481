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
    use sluice_core::model::{MessageKind, NewMessage};
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
    let msg = NewMessage {
        msg_id: ids::bulk_msg_id("crashy", "ann"),
        room: ids::dm_room("shop", "ann"),
        sender: "shop".into(),
        body: "hello".into(),
        kind: MessageKind::OneOff,
        campaign_id: Some("crashy".into()),
        sent_at_ms: 1,
        create_members: vec!["shop".into(), "ann".into()],
    };
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

    let fanout = sluice_core::fanout::Fanout::new(Arc::new(sluice_embedded::LocalHub::new()), Arc::new(sluice_core::events::NoEvents));
    let limiter = Arc::new(sluice_core::limits::LocalLimiter::new());
    let backends = sluice_worker::Backends { store: store.clone(), queue: q.clone(), fanout, limiter, metrics };
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
