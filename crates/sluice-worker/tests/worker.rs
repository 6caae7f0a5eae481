//! The worker against the embedded backends: poison messages, crashes between commit and
//! ack, retryable store failures, ordering under many workers, graceful shutdown.

use bytes::Bytes;
use sluice_core::control::{Control, Scope};
use sluice_core::events::NoEvents;
use sluice_core::ids;
use sluice_core::limits::Limiter;
use sluice_core::metrics::Metrics;
use sluice_core::model::{HistoryQuery, NewMessage};
use sluice_core::queue::{Enqueue, SpikeQueue};
use sluice_core::store::MessageStore;
use sluice_embedded::{EmbeddedQueue, EmbeddedStore, LocalHub, QueueConfig};
use sluice_proto::convert::encode_queued;
use sluice_testkit::faults::{FaultyQueue, FaultyStore};
use sluice_worker::{Backends, Worker, WorkerConfig};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Env {
    _dir: tempfile::TempDir,
    store: Arc<dyn MessageStore>,
    queue: Arc<dyn SpikeQueue>,
    metrics: Arc<Metrics>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).unwrap());
    let queue = Arc::new(EmbeddedQueue::open(&dir.path().join("queue.redb"), QueueConfig::default()).unwrap());
    Env { _dir: dir, store, queue, metrics: Arc::new(Metrics::new()) }
}

fn config() -> WorkerConfig {
    WorkerConfig { wait: Duration::from_millis(100), visibility: Duration::from_millis(500), max_receives: 3, ..WorkerConfig::default() }
}

fn worker(store: Arc<dyn MessageStore>, queue: Arc<dyn SpikeQueue>, metrics: Arc<Metrics>, config: WorkerConfig) -> Arc<Worker> {
    let limiter = Arc::new(sluice_core::limits::LocalLimiter::new());
    Arc::new(Worker::new(Backends::new(store, queue, Arc::new(LocalHub::new()), Arc::new(NoEvents), limiter, metrics), config))
}

fn one_off(campaign: &str, sender: &str, recipient: &str, body: &str) -> NewMessage {
    sluice_testkit::store::one_off_saying(campaign, sender, recipient, body)
}

fn enqueue(m: &NewMessage) -> Enqueue {
    Enqueue { dedup_id: m.msg_id.clone(), group: ids::queue_group(&m.room), tenant: m.sender.clone(), body: encode_queued(m) }
}

/// Runs `workers` until the queue is empty (visible and in flight), then stops them.
async fn drain(workers: Vec<Arc<Worker>>, queue: &Arc<dyn SpikeQueue>) {
    let stop = CancellationToken::new();
    let tasks: Vec<_> = workers.into_iter().map(|w| tokio::spawn(w.run(stop.clone()))).collect();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let s = queue.stats().await.unwrap();
            if s.visible + s.in_flight == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("queue drains");
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
}

async fn unread(store: &Arc<dyn MessageStore>, user: &str, room: &str) -> u64 {
    store.inbox(user).await.unwrap().rooms.iter().find(|r| r.room == room).map_or(0, |r| r.unread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dead_letter_queue_and_the_rest_persists() {
    let e = env();
    e.store.create_room("club", &["alice".into(), "bob".into()], 1).await.unwrap();
    let good: Vec<NewMessage> = (0..5).map(|i| one_off("c1", "shop", &format!("u{i}"), "hello")).collect();
    let mut batch: Vec<Enqueue> = good.iter().map(enqueue).collect();
    batch.insert(
        2,
        Enqueue { dedup_id: "garbage".into(), group: "g".into(), tenant: String::new(), body: Bytes::from_static(b"\xff\x01not protobuf") },
    );
    let mut stranger = one_off("c1", "mallory", "x", "spam");
    stranger.room = "club".into();
    stranger.create_members.clear();
    stranger.msg_id = "stranger".into();
    batch.insert(4, enqueue(&stranger));
    let mut nowhere = one_off("c1", "shop", "y", "lost");
    nowhere.room = "no-such-room".into();
    nowhere.create_members.clear();
    nowhere.msg_id = "nowhere".into();
    batch.push(enqueue(&nowhere));
    e.queue.send(batch).await.unwrap();
    e.store.record_enqueued("c1", "shop", 7, &["u0", "u1", "u2", "u3", "u4", "x", "y"].map(String::from)).await.unwrap();

    let w = worker(e.store.clone(), e.queue.clone(), e.metrics.clone(), config());
    drain(vec![w], &e.queue).await;

    for i in 0..5 {
        let u = format!("u{i}");
        assert_eq!(unread(&e.store, &u, &ids::dm_room("shop", &u)).await, 1, "{u} got the good message");
    }
    let dead = e.queue.dead_letters(10).await.unwrap();
    let mut reasons: Vec<(String, String)> = dead.iter().map(|d| (d.dedup_id.clone(), d.reason.clone())).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].0 == "garbage" && reasons[0].1.contains("undecodable"));
    assert!(reasons[1].0 == "nowhere" && reasons[1].1.contains("unknown room"));
    assert!(reasons[2].0 == "stranger" && reasons[2].1.contains("not a member"));
    assert!(e.store.history("club", HistoryQuery { before: None, after: None, limit: 10 }).await.unwrap().is_empty());
    let c = e.store.campaign("c1").await.unwrap().unwrap();
    assert_eq!((c.persisted, c.dead_lettered, c.done()), (5, 2, true));
    assert_eq!(e.metrics.dead_lettered.get(), 3);
}

/// Issue 16.6: the campaign's dead-letter count is recorded before the queue moves the
/// message, so a worker that dies in between (here: the record fails) leaves the message in
/// the queue to be dead-lettered again, instead of a campaign that is never done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dead_letter_record_keeps_the_message_until_it_is_counted() {
    let e = env();
    e.store.create_room("club", &["alice".into()], 1).await.unwrap();
    let mut stranger = one_off("c9", "mallory", "x", "spam");
    stranger.room = "club".into();
    stranger.create_members.clear();
    e.store.record_enqueued("c9", "mallory", 1, &["x".to_string()]).await.unwrap();
    e.queue.send(vec![enqueue(&stranger)]).await.unwrap();
    let faulty = Arc::new(FaultyStore::new(e.store.clone()));
    faulty.fail_dead_letter_records.store(1, Ordering::SeqCst);
    drain(vec![worker(faulty.clone(), e.queue.clone(), e.metrics.clone(), config())], &e.queue).await;
    assert_eq!(faulty.fail_dead_letter_records.load(Ordering::SeqCst), 0, "the injected failure happened");
    assert_eq!(e.queue.dead_letters(10).await.unwrap().len(), 1);
    let c = e.store.campaign("c9").await.unwrap().unwrap();
    assert_eq!((c.enqueued, c.persisted, c.dead_lettered, c.done()), (1, 0, 1, true));
}

/// Invariant 2: a worker that dies after its commit and before its ack causes a redelivery
/// that persists nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_commit_and_ack_persists_once() {
    let e = env();
    let faulty = Arc::new(FaultyQueue::new(e.queue.clone()));
    faulty.fail_acks.store(1, Ordering::SeqCst);
    let msgs: Vec<NewMessage> = (0..20).map(|i| one_off("c2", "shop", &format!("u{i}"), "once")).collect();
    faulty.send(msgs.iter().map(enqueue).collect()).await.unwrap();
    let queue: Arc<dyn SpikeQueue> = faulty.clone();
    let w = worker(e.store.clone(), queue.clone(), e.metrics.clone(), config());
    drain(vec![w], &queue).await;
    assert_eq!(faulty.fail_acks.load(Ordering::SeqCst), 0, "the injected failure happened");
    assert!(e.metrics.duplicates.get() > 0, "the redelivered batch was recognised as duplicates");
    for i in 0..20 {
        let u = format!("u{i}");
        let room = ids::dm_room("shop", &u);
        assert_eq!(unread(&e.store, &u, &room).await, 1);
        let hist = e.store.history(&room, HistoryQuery { before: None, after: None, limit: 10 }).await.unwrap();
        assert_eq!(hist.len(), 1, "one message, one seq");
    }
    assert_eq!(e.store.campaign("c2").await.unwrap().map(|c| c.persisted), Some(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_store_failures_are_retried_then_dead_lettered() {
    let e = env();
    let faulty = Arc::new(FaultyStore::new(e.store.clone()));
    faulty.fail_persists.store(2, Ordering::SeqCst);
    let msgs: Vec<NewMessage> = (0..10).map(|i| one_off("c3", "shop", &format!("u{i}"), "retry")).collect();
    e.queue.send(msgs.iter().map(enqueue).collect()).await.unwrap();
    let store: Arc<dyn MessageStore> = faulty.clone();
    drain(vec![worker(store.clone(), e.queue.clone(), e.metrics.clone(), config())], &e.queue).await;
    for i in 0..10 {
        let u = format!("u{i}");
        assert_eq!(unread(&e.store, &u, &ids::dm_room("shop", &u)).await, 1, "nothing lost after transient failures");
    }
    assert!(e.queue.dead_letters(10).await.unwrap().is_empty());

    // A store that answers pings but fails every persist of this message: after
    // max_receives deliveries, the dead-letter queue.
    faulty.fail_persists.store(u32::MAX, Ordering::SeqCst);
    let m = one_off("c3", "shop", "late", "never");
    e.queue.send(vec![enqueue(&m)]).await.unwrap();
    drain(vec![worker(store, e.queue.clone(), e.metrics.clone(), config())], &e.queue).await;
    let dead = e.queue.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    // Dead-lettered once its deliveries exceed max_receives (3). Under load the 500 ms
    // visibility can lapse while a poller holds the 4th delivery, so another poller may see a
    // 5th: the count is at least 4, never fewer.
    let receives: u32 = dead[0]
        .reason
        .strip_prefix("received ")
        .and_then(|r| r.strip_suffix(" times without completing"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected reason {:?}", dead[0].reason));
    assert!(receives >= 4, "dead-lettered after only {receives} deliveries");
    let c = e.store.campaign("c3").await.unwrap().unwrap();
    assert_eq!((c.persisted, c.dead_lettered), (10, 1));
}

/// Invariant 5: any number of workers keep each room's order and its seq gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_workers_keep_every_room_in_order() {
    let e = env();
    const ROOMS: usize = 30;
    const PER_ROOM: usize = 20;
    let mut batch = Vec::new();
    for i in 0..PER_ROOM {
        for r in 0..ROOMS {
            let mut m = one_off(&format!("k{i}"), "shop", &format!("u{r}"), &format!("{i}"));
            m.campaign_id = None;
            batch.push(enqueue(&m));
        }
    }
    e.queue.send(batch).await.unwrap();
    let cfg = WorkerConfig { batch_size: 7, concurrency: 2, ..config() };
    let workers = (0..4).map(|_| worker(e.store.clone(), e.queue.clone(), e.metrics.clone(), cfg.clone())).collect();
    drain(workers, &e.queue).await;
    for r in 0..ROOMS {
        let room = ids::dm_room("shop", &format!("u{r}"));
        let hist = e.store.history(&room, HistoryQuery { before: None, after: Some(0), limit: 100 }).await.unwrap();
        let bodies: Vec<String> = hist.iter().map(|m| m.body.clone()).collect();
        let want: Vec<String> = (0..PER_ROOM).map(|i| i.to_string()).collect();
        assert_eq!(bodies, want, "room {room} in enqueue order");
        assert_eq!(hist.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=PER_ROOM as u64).collect::<Vec<_>>());
    }
}

/// Shutdown never acks what was not persisted: every message that left the queue is in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_acks_only_what_committed() {
    let e = env();
    const N: usize = 3000;
    let msgs: Vec<NewMessage> = (0..N).map(|i| one_off("c5", "shop", &format!("u{i}"), "bye")).collect();
    e.queue.send(msgs.iter().map(enqueue).collect()).await.unwrap();
    let stop = CancellationToken::new();
    let cfg = WorkerConfig { batch_size: 50, ..config() };
    let task = tokio::spawn(worker(e.store.clone(), e.queue.clone(), e.metrics.clone(), cfg).run(stop.clone()));
    while e.metrics.drained.get() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    task.await.unwrap();
    let s = e.queue.stats().await.unwrap();
    let left = (s.visible + s.in_flight) as usize;
    let mut persisted = 0;
    for m in &msgs {
        if !e.store.history(&m.room, HistoryQuery { before: None, after: None, limit: 1 }).await.unwrap().is_empty() {
            persisted += 1;
        }
    }
    assert!(left > 0, "shutdown came mid-drain");
    assert!(persisted >= N - left, "acked {} but persisted only {persisted}", N - left);
    assert_eq!(e.metrics.drained.get() as usize, N - left, "what left the queue is what the worker acked");
}

/// Invariant 8 across processes: a gateway elsewhere publishes its interactive p99; when it
/// rises over twice its calm value while this worker drains, the governor cuts the drain
/// (and never below its floor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_gateway_elsewhere_cuts_the_drain() {
    use sluice_core::governor::{GovernorConfig, INTERACTIVE_P99_KEY};
    use sluice_core::limits::{Limiter, LocalLimiter};
    let e = env();
    let limiter = Arc::new(LocalLimiter::new());
    let report = |ms: f64| {
        let limiter = limiter.clone();
        async move { limiter.report(INTERACTIVE_P99_KEY, "gateway-far-away", ms, Duration::from_secs(60)).await.unwrap() }
    };
    // Chat is calm while the drain is idle, then a campaign arrives.
    report(1.0).await;
    let governor =
        GovernorConfig { initial: 200.0, floor: 100.0, cut: 0.1, cooldown: Duration::from_millis(250), ..GovernorConfig::default() };
    let w = Arc::new(Worker::new(
        Backends::new(e.store.clone(), e.queue.clone(), Arc::new(LocalHub::new()), Arc::new(NoEvents), limiter.clone(), e.metrics.clone()),
        WorkerConfig { governor, ..config() },
    ));
    let stop = CancellationToken::new();
    let running = tokio::spawn(w.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let msgs: Vec<NewMessage> = (0..3_000).map(|i| one_off("c-gov", "shop", &format!("g{i}"), "sale")).collect();
    e.queue.send(msgs.iter().map(enqueue).collect()).await.unwrap();
    while e.metrics.drained.get() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The far gateway's chat slows down while this worker drains.
    report(500.0).await;
    for _ in 0..400 {
        if e.metrics.drain_limit.get() == 100.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    running.await.unwrap();
    assert!(e.metrics.drain_cuts.get() > 0, "the far gateway's latency cut the drain");
    assert_eq!(e.metrics.drain_limit.get(), 100.0, "down to the floor and no further");
}

/// Issue 15.3: a store outage is not the messages' fault. The pollers stop receiving and
/// probe the store; nothing is dead-lettered however long it lasts, receive counts do not
/// climb, and everything drains once the store answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_dead_letters_nothing_and_drains_after() {
    let e = env();
    let faulty = Arc::new(FaultyStore::new(e.store.clone()));
    let msgs: Vec<NewMessage> = (0..30).map(|i| one_off("c7", "shop", &format!("u{i}"), "later")).collect();
    queue_campaign(&e, "c7", &msgs).await;
    // Ten visibility timeouts (max_receives is 3): before, every message was dead-lettered by now.
    let (stop, run) = begin_outage(&e, &faulty).await;
    let tried = faulty.persists_while_down.load(Ordering::SeqCst);
    assert!(tried >= 1, "the worker met the outage");
    assert!(tried <= 4 * 2, "the pollers stopped receiving during the outage ({tried} persist calls)");
    end_outage(&e, &faulty, "c7", stop, run).await;
    assert!(e.queue.dead_letters(100).await.unwrap().is_empty());
}

/// Records `msgs` as campaign `campaign` of "shop" and queues them.
async fn queue_campaign(e: &Env, campaign: &str, msgs: &[NewMessage]) {
    let recipients: Vec<String> = msgs.iter().map(|m| m.create_members[1].clone()).collect();
    e.store.record_enqueued(campaign, "shop", msgs.len() as u64, &recipients).await.unwrap();
    e.queue.send(msgs.iter().map(enqueue).collect()).await.unwrap();
}

/// Takes the store down, starts a worker on it and lets it meet the outage for 5 s.
async fn begin_outage(e: &Env, faulty: &Arc<FaultyStore>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    faulty.down.store(true, Ordering::SeqCst);
    let store: Arc<dyn MessageStore> = faulty.clone();
    let w = worker(store, e.queue.clone(), e.metrics.clone(), config());
    let stop = CancellationToken::new();
    let run = tokio::spawn(w.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    (stop, run)
}

/// Checks that nothing was dead-lettered during an outage, ends it, and waits until the
/// worker has persisted all 30 messages of `campaign`, none dead-lettered.
async fn end_outage(e: &Env, faulty: &FaultyStore, campaign: &str, stop: CancellationToken, run: tokio::task::JoinHandle<()>) {
    assert!(e.queue.dead_letters(100).await.unwrap().is_empty(), "nothing dead-lettered during the outage");
    faulty.down.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(60), async {
        while !e.store.campaign(campaign).await.unwrap().unwrap().done() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the campaign drains once the store answers");
    stop.cancel();
    run.await.unwrap();
    let c = e.store.campaign(campaign).await.unwrap().unwrap();
    assert_eq!((c.persisted, c.dead_lettered), (30, 0));
}

/// A store that fails while reading a campaign's body (not only while persisting) stops the
/// pollers as well: each batch reads at most one body from the failing store, nothing is
/// dead-lettered, and every recipient gets the whole body once the store answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_met_reading_campaign_bodies_stops_receiving_too() {
    let e = env();
    let faulty = Arc::new(FaultyStore::new(e.store.clone()));
    let body = "the body stored once";
    let body_ref = ids::campaign_body_ref("c8", body);
    e.store.put_campaign_body("c8", &body_ref, body).await.unwrap();
    let msgs: Vec<NewMessage> = (0..30)
        .map(|i| {
            let mut m = one_off("c8", "shop", &format!("u{i}"), "");
            m.body_ref = Some(body_ref.clone());
            m
        })
        .collect();
    queue_campaign(&e, "c8", &msgs).await;
    let (stop, run) = begin_outage(&e, &faulty).await;
    let reads = faulty.body_reads_while_down.load(Ordering::SeqCst);
    assert!(reads >= 1, "the worker met the outage");
    // Before, every message of every batch read again, and kept being received: about 90 reads.
    assert!(reads <= 4 * 2, "one read per batch, then the pollers probe instead of receiving ({reads} reads)");
    assert_eq!(faulty.persists_while_down.load(Ordering::SeqCst), 0, "nothing to persist without its body");
    end_outage(&e, &faulty, "c8", stop, run).await;
    for m in &msgs {
        let got = e.store.history(&m.room, HistoryQuery { before: None, after: None, limit: 10 }).await.unwrap();
        assert_eq!(got.iter().map(|s| s.body.as_str()).collect::<Vec<_>>(), vec![body], "{}", m.room);
    }
}

/// Messages a pause holds aside take nothing from the drain budget: only what is persisted
/// is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_take_no_drain_budget() {
    let e = env();
    let paused: Vec<NewMessage> = (0..50).map(|i| one_off("held", "shop", &format!("u{i}"), "later")).collect();
    let open: Vec<NewMessage> = (0..10).map(|i| one_off("open", "shop", &format!("u{i}"), "now")).collect();
    queue_campaign(&e, "held", &paused).await;
    queue_campaign(&e, "open", &open).await;
    e.store.set_control(&Scope::Campaign("held".into()), Control { paused: true, rate: None }).await.unwrap();
    let w = worker(e.store.clone(), e.queue.clone(), e.metrics.clone(), config());
    drain(vec![w], &e.queue).await;
    assert!(e.store.campaign("open").await.unwrap().unwrap().done());
    assert_eq!(e.queue.stats().await.unwrap().held, 50, "the paused campaign waits aside");
    assert_eq!(e.metrics.drain_admitted.get(), 10, "only the persisted messages took from the budget");
}

/// A message held by its tenant's rate gives back the token its campaign's rate granted it,
/// so a campaign is not charged twice for messages its tenant holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_one_rate_gives_back_the_tokens_of_its_other_rates() {
    let e = env();
    let limiter = Arc::new(sluice_core::limits::LocalLimiter::new());
    let msgs: Vec<NewMessage> = (0..10).map(|i| one_off("c9", "shop", &format!("u{i}"), "hi")).collect();
    let campaign = Scope::Campaign("c9".into());
    // The campaign may take 20 a second; its tenant one per 100 s (a burst of 1).
    e.store.set_control(&campaign, Control { paused: false, rate: Some(20.0) }).await.unwrap();
    e.store.set_control(&Scope::Tenant("shop".into()), Control { paused: false, rate: Some(0.01) }).await.unwrap();
    queue_campaign(&e, "c9", &msgs).await;
    let backends =
        Backends::new(e.store.clone(), e.queue.clone(), Arc::new(LocalHub::new()), Arc::new(NoEvents), limiter.clone(), e.metrics.clone());
    let w = Worker::new(backends, config());
    w.refresh_controls().await;
    let batch = e.queue.receive(10, Duration::from_millis(100), Duration::from_secs(30)).await.unwrap();
    assert_eq!(batch.len(), 10);
    assert!(w.process(batch).await);
    assert_eq!(e.store.campaign("c9").await.unwrap().unwrap().persisted, 1, "the tenant's one token");
    assert_eq!(e.queue.stats().await.unwrap().held, 9, "the rest waits under the tenant's rate");
    // The campaign's bucket: 20 at first, one used; before, the 9 held took theirs too.
    let left = limiter.take_up_to(&sluice_worker::admit_key(&campaign), 100, 20.0, 20.0).await.unwrap();
    assert!(left >= 19, "the campaign's unused tokens came back ({left} left)");
}
