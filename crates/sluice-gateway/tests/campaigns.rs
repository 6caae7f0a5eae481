//! Campaign accounting through the gateway's own operations (`App::enqueue_bulk`), on the
//! embedded backends, with a queue that can hold sends at the door.

use sluice_core::events::NoEvents;
use sluice_core::fanout::Fanout;
use sluice_core::metrics::Metrics;
use sluice_core::queue::SpikeQueue;
use sluice_embedded::{EmbeddedQueue, EmbeddedStore, LocalHub, QueueConfig};
use sluice_gateway::chat::BulkSend;
use sluice_gateway::{App, Auth, Limits};
use sluice_testkit::faults::FaultyQueue;
use sluice_worker::{Backends, Worker, WorkerConfig};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn bulk<'a>(campaign_id: &'a str, sender: &'a str, recipients: &'a [String], body: &'a str) -> BulkSend<'a> {
    BulkSend { campaign_id, tenant: None, sender, recipients, body }
}

struct Env {
    _dir: tempfile::TempDir,
    app: Arc<App>,
    queue: Arc<FaultyQueue>,
    worker: Worker,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).unwrap());
    let inner = Arc::new(EmbeddedQueue::open(&dir.path().join("queue.redb"), QueueConfig::default()).unwrap());
    let queue = Arc::new(FaultyQueue::new(inner));
    let (hub, metrics) = (Arc::new(LocalHub::new()), Arc::new(Metrics::new()));
    let fanout = Fanout::new(hub.clone(), Arc::new(NoEvents));
    let app = Arc::new(App {
        store: store.clone(),
        queue: queue.clone(),
        hub,
        events: Arc::new(NoEvents),
        fanout: fanout.clone(),
        limiter: Arc::new(sluice_core::limits::LocalLimiter::new()),
        metrics: metrics.clone(),
        auth: Auth::new(b"campaign-test-secret-campaign-test", "svc"),
        limits: Limits::default(),
        shutdown: CancellationToken::new(),
    });
    let backends = Backends { store, queue: queue.clone(), fanout, limiter: Arc::new(sluice_core::limits::LocalLimiter::new()), metrics };
    Env { _dir: dir, app, queue, worker: Worker::new(backends, WorkerConfig::default()) }
}

/// Persists everything queued right now.
async fn drain(e: &Env) {
    loop {
        let batch = e.queue.receive(1_000, Duration::from_millis(50), Duration::from_secs(60)).await.unwrap();
        if batch.is_empty() {
            return;
        }
        assert!(e.worker.process(batch).await);
    }
}

fn users(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Issue 16.4: the second call of a campaign used to record its recipients only after its
/// messages were queued, so in between the campaign said done while they still drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_is_not_done_while_a_later_call_still_enqueues() {
    let e = env();
    let (id, accepted) = e.app.enqueue_bulk(bulk("spring", "shop", &users(&["ann", "bob"]), "20% off")).await.unwrap();
    assert_eq!((id.as_str(), accepted), ("spring", 2));
    drain(&e).await;
    assert!(e.app.campaign("spring", None).await.unwrap().done());

    e.queue.hold_sends(true);
    let app = e.app.clone();
    let second = tokio::spawn(async move { app.enqueue_bulk(bulk("spring", "shop", &users(&["cid", "dan"]), "20% off")).await });
    while e.queue.sends_waiting.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let c = e.app.campaign("spring", None).await.unwrap();
    assert!(!c.done(), "call 2's messages are not persisted yet: {c:?}");
    assert_eq!((c.enqueued, c.persisted), (4, 2));

    e.queue.hold_sends(false);
    assert_eq!(second.await.unwrap().unwrap().1, 2);
    drain(&e).await;
    let c = e.app.campaign("spring", None).await.unwrap();
    assert_eq!((c.requested, c.enqueued, c.persisted, c.dead_lettered, c.done()), (4, 4, 4, 0, true));
}

/// Issue 10.5: a campaign whose only recipient is its sender accepts nothing and is done at
/// once; a call with no recipients is refused and records nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_with_nothing_to_send_is_done_and_an_empty_call_is_refused() {
    let e = env();
    let (_, accepted) = e.app.enqueue_bulk(bulk("self", "shop", &users(&["shop"]), "hello me")).await.unwrap();
    assert_eq!(accepted, 0);
    let c = e.app.campaign("self", None).await.unwrap();
    assert_eq!((c.requested, c.enqueued, c.persisted, c.done()), (1, 0, 0, true));

    let err = e.app.enqueue_bulk(bulk("empty", "shop", &[], "nobody")).await.unwrap_err();
    assert_eq!(err.code.as_str(), "bad_frame");
    assert!(e.app.campaign("empty", None).await.is_err(), "nothing recorded for a refused call");
}

/// Issue 10.1: a campaign id belongs to its first sender. Another sender reusing it used to
/// be told "accepted" while its messages collided with the owner's ids and were dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_id_belongs_to_its_first_sender() {
    let e = env();
    e.app.enqueue_bulk(bulk("spring", "shop-a", &users(&["victim1", "victim2"]), "from a")).await.unwrap();
    let err = e.app.enqueue_bulk(bulk("spring", "shop-b", &users(&["victim1", "victim2"]), "from b")).await.unwrap_err();
    assert_eq!(err.grpc, tonic::Code::AlreadyExists, "{}", err.message);
    assert!(err.message.contains("spring"), "{}", err.message);
    drain(&e).await;
    let c = e.app.campaign("spring", None).await.unwrap();
    assert_eq!((c.requested, c.enqueued, c.persisted, c.done()), (2, 2, 2, true), "shop-b's call counted nothing");
    let (_, accepted) = e.app.enqueue_bulk(bulk("spring-b", "shop-b", &users(&["victim1", "victim2"]), "from b")).await.unwrap();
    assert_eq!(accepted, 2, "under its own id shop-b's campaign goes through");
    drain(&e).await;
    for v in ["victim1", "victim2"] {
        let inbox = e.app.inbox(v, None, None).await.unwrap();
        assert_eq!((inbox.rooms.len(), inbox.total_unread), (2, 2), "{v} got one message from each shop");
    }
}

/// A campaign belongs to its tenant: the same id from another tenant (same sender) is
/// refused, GetCampaign reports the tenant, and asking with another tenant finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_belongs_to_its_tenant() {
    let e = env();
    let recipients = users(&["ann", "bob"]);
    let acme = BulkSend { tenant: Some("acme"), ..bulk("sale", "mailer", &recipients, "from acme") };
    assert_eq!(e.app.enqueue_bulk(acme).await.unwrap().1, 2);
    assert_eq!(e.app.enqueue_bulk(acme).await.unwrap().1, 2, "the owner's retry is accepted (and deduplicated)");
    let other = BulkSend { tenant: Some("globex"), ..acme };
    assert_eq!(e.app.enqueue_bulk(other).await.unwrap_err().grpc, tonic::Code::AlreadyExists);
    let default_tenant = BulkSend { tenant: None, ..acme };
    assert_eq!(
        e.app.enqueue_bulk(default_tenant).await.unwrap_err().grpc,
        tonic::Code::AlreadyExists,
        "the sender's own tenant is another tenant"
    );
    let bad = BulkSend { tenant: Some("a/b"), campaign_id: "other", ..acme };
    assert_eq!(e.app.enqueue_bulk(bad).await.unwrap_err().grpc, tonic::Code::InvalidArgument);
    drain(&e).await;
    let c = e.app.campaign("sale", Some("acme")).await.unwrap();
    assert_eq!((c.tenant.as_str(), c.requested, c.enqueued, c.persisted, c.done()), ("acme", 4, 2, 2, true));
    assert_eq!(e.app.campaign("sale", Some("globex")).await.unwrap_err().grpc, tonic::Code::NotFound);
    assert_eq!(e.app.campaign("sale", None).await.unwrap().tenant, "acme");
}
