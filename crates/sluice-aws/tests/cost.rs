//! What one message costs on the AWS backends, measured on the emulators: a one-off message
//! of a campaign (enqueue, drain by the real worker, counters) and an interactive message in a
//! two-member room. Requests are counted as made; write capacity follows AWS's rule from the
//! items written (2 WCU per transactional item up to 1 KB, 1 per standard write), because
//! DynamoDB Local reports ConsumedCapacity per table, not per item (printed too). The figures
//! are printed (`FIGURE` lines) and held to the data model's arithmetic.

mod common;

use sluice_core::events::NoEvents;
use sluice_core::ids;
use sluice_core::metrics::Metrics;
use sluice_core::model::NewMessage;
use sluice_core::queue::{Enqueue, SpikeQueue};
use sluice_core::store::MessageStore;
use sluice_worker::{Backends, Worker, WorkerConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Write capacity units by AWS's rule (every item here is under 1 KB).
fn wcu(m: &Metrics) -> f64 {
    let items = |k: &str| m.dynamodb_items_written.with_label_values(&[k]).get() as f64;
    2.0 * items("transactional") + items("standard")
}

/// What DynamoDB Local reported.
fn reported_wcu(m: &Metrics) -> f64 {
    m.dynamodb_capacity.with_label_values(&["write"]).get()
}

fn rcu(m: &Metrics) -> f64 {
    m.dynamodb_capacity.with_label_values(&["read"]).get()
}

fn requests(m: &Metrics, service: &str) -> u64 {
    let families = m.registry.gather();
    let fam = families.iter().find(|f| f.name() == "sluice_aws_requests_total");
    fam.map_or(0, |f| {
        f.get_metric()
            .iter()
            .filter(|x| x.get_label().iter().any(|l| l.name() == "service" && l.value() == service))
            .map(|x| x.get_counter().get_value() as u64)
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_and_requests_per_message() {
    let (client, names) = common::fresh_tables("cost", None).await;
    let (conf, qnames) = common::fresh_queues("cost").await;
    let metrics = Arc::new(Metrics::new());
    // Store and queue share one metrics registry, as in one process.
    let store = Arc::new(sluice_aws::DynamoStore::new(client, &names, metrics.clone()));
    let queue = Arc::new(
        sluice_aws::SqsQueue::connect(aws_sdk_sqs::Client::new(&conf), &qnames, metrics.clone()).await.unwrap().with_client_side_wait(true),
    );

    // One-off messages: what EnqueueBulk does, then the worker.
    const N: usize = 300;
    let tag = ids::random_id();
    let (shop, campaign) = (format!("shop-{tag}"), format!("camp-{tag}"));
    let recipients: Vec<String> = (0..N).map(|i| format!("r{i}-{tag}")).collect();
    let batch: Vec<Enqueue> = recipients
        .iter()
        .map(|r| {
            let m = NewMessage {
                body: "Spring sale: 20% off everything until Sunday".into(),
                sent_at_ms: 1,
                ..sluice_testkit::store::one_off(&campaign, &shop, r)
            };
            Enqueue {
                dedup_id: m.msg_id.clone(),
                group: ids::queue_group(&m.room),
                tenant: m.sender.clone(),
                body: sluice_proto::convert::encode_queued(&m),
            }
        })
        .collect();
    queue.send(batch).await.unwrap();
    store.record_enqueued(&campaign, &shop, N as u64, &recipients).await.unwrap();
    let (enq_wcu, enq_sqs) = (wcu(&metrics), requests(&metrics, "sqs"));

    let worker = Arc::new(Worker::new(
        Backends::new(
            store.clone(),
            queue.clone(),
            Arc::new(sluice_embedded::LocalHub::new()),
            Arc::new(NoEvents),
            Arc::new(sluice_core::limits::LocalLimiter::new()),
            metrics.clone(),
        ),
        WorkerConfig { batch_size: 10, ..WorkerConfig::default() },
    ));
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(300);
    while !store.campaign(&campaign).await.unwrap().unwrap().done() {
        assert!(Instant::now() < deadline, "campaign not drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    running.await.unwrap();
    let c = store.campaign(&campaign).await.unwrap().unwrap();
    assert_eq!((c.enqueued, c.persisted), (N as u64, N as u64));
    let n = N as f64;
    let one_off_wcu = wcu(&metrics) / n;
    let one_off_reported = reported_wcu(&metrics) / n;
    let one_off_rcu = rcu(&metrics) / n;
    let one_off_sqs = requests(&metrics, "sqs") as f64 / n;
    let one_off_ddb = requests(&metrics, "dynamodb") as f64 / n;
    eprintln!(
        "FIGURE one-off message: {one_off_wcu:.2} WCU ({:.2} at enqueue; DynamoDB Local reported {one_off_reported:.2}), \
         {one_off_rcu:.2} RCU as reported, {one_off_ddb:.2} DynamoDB requests, \
         {one_off_sqs:.2} SQS requests ({:.2} at enqueue; receives include empty polls)",
        enq_wcu / n,
        enq_sqs as f64 / n
    );
    // The data model: enqueue marks the msg_id (2 WCU, transactional, plus the campaign's and
    // the tenant's shard per 98); the first message of a direct room writes message, marker,
    // the recipient's inbox row and total (4 items: 8 WCU; a direct room has no room item and
    // the sender gets no row); counting writes no marker: a receipt and the two shards per
    // counting transaction, one per campaign in a received batch (at most 10 on SQS).
    assert!((enq_wcu / n - 2.05).abs() < 0.05, "enqueue: {} WCU per message", enq_wcu / n);
    assert!((one_off_wcu - 10.7).abs() < 0.5, "one-off: {one_off_wcu} WCU per message");
    // The room read and the message transaction, and a share of the counting transaction and
    // the enqueue marks: the offline recipient's counters are not read back.
    assert!(one_off_ddb < 3.0, "one-off: {one_off_ddb} DynamoDB requests per message (target: at most 3)");
    // Batches of 10 in 16 parallel lanes (at most one part-filled batch each), plus the two
    // queue URL lookups.
    assert!(enq_sqs as usize <= N / 10 + 16 + 2, "enqueue: {enq_sqs} SQS requests for {N} messages");

    // An interactive message in an existing two-member room, persisted directly.
    let room = format!("chat-{tag}");
    let (alice, bob) = (format!("alice-{tag}"), format!("bob-{tag}"));
    store.create_room(&room, &[alice.clone(), bob.clone()], 1).await.unwrap();
    let (w0, r0, q0) = (wcu(&metrics), rcu(&metrics), requests(&metrics, "dynamodb"));
    const M: usize = 50;
    for i in 0..M {
        store.persist(vec![sluice_testkit::store::chat(&room, &alice, &i.to_string())]).await.unwrap().pop().unwrap().unwrap();
    }
    let m = M as f64;
    let (chat_wcu, chat_rcu, chat_req) =
        ((wcu(&metrics) - w0) / m, (rcu(&metrics) - r0) / m, (requests(&metrics, "dynamodb") - q0) as f64 / m);
    eprintln!("FIGURE interactive message (2-member room): {chat_wcu:.2} WCU, {chat_rcu:.2} RCU, {chat_req:.2} DynamoDB requests");
    // Message, room, marker, sender row, recipient row and total: 6 items, 12 WCU; reads: the
    // room item. The recipient's row and total are read back only by the publisher, and only
    // when the recipient is online (nobody is connected here).
    assert!((chat_wcu - 12.0).abs() < 0.5, "interactive: {chat_wcu} WCU per message");
    assert!((chat_req - 2.0).abs() < 0.01, "interactive: {chat_req} requests per message");
}
