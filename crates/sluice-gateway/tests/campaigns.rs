//! Campaign accounting through the gateway's own operations (`App::enqueue_bulk`), on the
//! embedded backends, with a queue that can hold sends at the door.

use sluice_core::control::Scope;
use sluice_core::events::NoEvents;
use sluice_core::ids::{CampaignId, UserId};
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

fn bulk<'a>(campaign_id: &str, sender: &str, recipients: &'a [String], body: &'a str) -> BulkSend<'a> {
    BulkSend { campaign_id: Some(cid(campaign_id)), tenant: None, sender: uid(sender), recipients, body }
}

fn uid(u: &str) -> UserId {
    UserId::new(u).unwrap()
}

fn cid(c: &str) -> CampaignId {
    CampaignId::new(c).unwrap()
}

struct Env {
    dir: tempfile::TempDir,
    app: Arc<App>,
    queue: Arc<FaultyQueue>,
    worker: Worker,
}

fn env() -> Env {
    env_in(tempfile::tempdir().unwrap())
}

fn env_with(limits: Limits) -> Env {
    let mut e = env();
    Arc::get_mut(&mut e.app).expect("not shared yet").limits = limits;
    e
}

/// The backends on the files in `dir`: a second `Env` on the same dir after the first is
/// dropped is a restart.
fn env_in(dir: tempfile::TempDir) -> Env {
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).unwrap());
    let inner = Arc::new(EmbeddedQueue::open(&dir.path().join("queue.redb"), QueueConfig::default()).unwrap());
    let queue = Arc::new(FaultyQueue::new(inner));
    let (hub, metrics) = (Arc::new(LocalHub::new()), Arc::new(Metrics::new()));
    let limiter = Arc::new(sluice_core::limits::LocalLimiter::new());
    let backends = Backends::new(store, queue.clone(), hub, Arc::new(NoEvents), limiter, metrics);
    let app = Arc::new(App {
        backends: backends.clone(),
        auth: Auth::new(b"campaign-test-secret-campaign-test", "svc"),
        limits: Limits::default(),
        campaign_rates: Default::default(),
        accept: Default::default(),
        bulk: None,
        shutdown: CancellationToken::new(),
        dev_sign_in: false,
    });
    Env { dir, app, queue, worker: Worker::new(backends, WorkerConfig::default()) }
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
    assert!(e.app.campaign(&cid("spring"), None).await.unwrap().done());

    e.queue.hold_sends(true);
    let app = e.app.clone();
    let second = tokio::spawn(async move { app.enqueue_bulk(bulk("spring", "shop", &users(&["cid", "dan"]), "20% off")).await });
    while e.queue.sends_waiting.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let c = e.app.campaign(&cid("spring"), None).await.unwrap();
    assert!(!c.done(), "call 2's messages are not persisted yet: {c:?}");
    assert_eq!((c.enqueued, c.persisted), (4, 2));

    e.queue.hold_sends(false);
    assert_eq!(second.await.unwrap().unwrap().1, 2);
    drain(&e).await;
    let c = e.app.campaign(&cid("spring"), None).await.unwrap();
    assert_eq!((c.requested, c.enqueued, c.persisted, c.dead_lettered, c.done()), (4, 4, 4, 0, true));
}

/// A call records its recipients in its campaign at most a slice ahead of queueing them, so
/// the accept gate paces the store's work too (a call used to record all of them first); the
/// campaign still cannot look done while one is on its way, and a retried call, recording the
/// same slices, counts nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_records_its_recipients_a_slice_ahead_of_queueing_them() {
    use sluice_gateway::chat::{ENQUEUE_CHUNK, RECORD_SLICE};
    let e = env();
    let n = ENQUEUE_CHUNK + 2 * RECORD_SLICE + 1;
    let recipients: Vec<String> = (0..n).map(|i| format!("r{i:05}")).collect();
    e.queue.hold_sends(true);
    let (app, all) = (e.app.clone(), recipients.clone());
    let call = tokio::spawn(async move { app.enqueue_bulk(bulk("autumn", "shop", &all, "sale")).await });
    while e.queue.sends_waiting.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let c = e.app.campaign(&cid("autumn"), None).await.unwrap();
    let ahead = (ENQUEUE_CHUNK + RECORD_SLICE) as u64;
    assert_eq!((c.requested, c.enqueued), (ahead, ahead), "the first batch and a slice recorded while it waits: {c:?}");
    assert!(!c.done());

    e.queue.hold_sends(false);
    assert_eq!(call.await.unwrap().unwrap().1, n as u64);
    drain(&e).await;
    let c = e.app.campaign(&cid("autumn"), None).await.unwrap();
    let n = n as u64;
    assert_eq!((c.requested, c.enqueued, c.persisted, c.done()), (n, n, n, true));

    e.app.enqueue_bulk(bulk("autumn", "shop", &recipients, "sale")).await.unwrap();
    drain(&e).await;
    let c = e.app.campaign(&cid("autumn"), None).await.unwrap();
    assert_eq!((c.requested, c.enqueued, c.persisted, c.done()), (n, n, n, true), "the retry counted nothing twice");
}

/// Issue 10.5: a campaign whose only recipient is its sender accepts nothing and is done at
/// once; a call with no recipients is refused and records nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_with_nothing_to_send_is_done_and_an_empty_call_is_refused() {
    let e = env();
    let (_, accepted) = e.app.enqueue_bulk(bulk("self", "shop", &users(&["shop"]), "hello me")).await.unwrap();
    assert_eq!(accepted, 0);
    let c = e.app.campaign(&cid("self"), None).await.unwrap();
    assert_eq!((c.requested, c.enqueued, c.persisted, c.done()), (1, 0, 0, true));

    let err = e.app.enqueue_bulk(bulk("empty", "shop", &[], "nobody")).await.unwrap_err();
    assert_eq!(err.code.as_str(), "bad_frame");
    assert!(e.app.campaign(&cid("empty"), None).await.is_err(), "nothing recorded for a refused call");
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
    let c = e.app.campaign(&cid("spring"), None).await.unwrap();
    assert_eq!((c.requested, c.enqueued, c.persisted, c.done()), (2, 2, 2, true), "shop-b's call counted nothing");
    let (_, accepted) = e.app.enqueue_bulk(bulk("spring-b", "shop-b", &users(&["victim1", "victim2"]), "from b")).await.unwrap();
    assert_eq!(accepted, 2, "under its own id shop-b's campaign goes through");
    drain(&e).await;
    for v in ["victim1", "victim2"] {
        let inbox = e.app.inbox(&uid(v), None, None).await.unwrap();
        assert_eq!((inbox.rooms.len(), inbox.total_unread), (2, 2), "{v} got one message from each shop");
    }
}

/// A campaign belongs to its tenant: the same id from another tenant (same sender) is
/// refused, GetCampaign reports the tenant, and asking with another tenant finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_belongs_to_its_tenant() {
    let e = env();
    let recipients = users(&["ann", "bob"]);
    let acme = BulkSend { tenant: Some(uid("acme")), ..bulk("sale", "mailer", &recipients, "from acme") };
    assert_eq!(e.app.enqueue_bulk(acme.clone()).await.unwrap().1, 2);
    assert_eq!(e.app.enqueue_bulk(acme.clone()).await.unwrap().1, 2, "the owner's retry is accepted (and deduplicated)");
    let other = BulkSend { tenant: Some(uid("globex")), ..acme.clone() };
    assert_eq!(e.app.enqueue_bulk(other).await.unwrap_err().grpc, tonic::Code::AlreadyExists);
    let default_tenant = BulkSend { tenant: None, ..acme.clone() };
    assert_eq!(
        e.app.enqueue_bulk(default_tenant).await.unwrap_err().grpc,
        tonic::Code::AlreadyExists,
        "the sender's own tenant is another tenant"
    );
    assert!(UserId::new("a/b").is_err(), "a tenant is a user id, and holds no /: its owner key splits back");
    drain(&e).await;
    let c = e.app.campaign(&cid("sale"), Some("acme")).await.unwrap();
    assert_eq!((c.tenant.as_str(), c.requested, c.enqueued, c.persisted, c.done()), ("acme", 2, 2, 2, true), "the retry counted once");
    assert_eq!(e.app.campaign(&cid("sale"), Some("globex")).await.unwrap_err().grpc, tonic::Code::NotFound);
    assert_eq!(e.app.campaign(&cid("sale"), None).await.unwrap().tenant, "acme");
}

/// Pausing a campaign holds its messages (the other tenant's campaign drains), the pause and
/// the held messages survive a restart, and a resume drains the campaign exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_campaign_is_held_across_a_restart_and_drains_once_resumed() {
    let (a_users, b_users) = (users(&["ann", "bob", "cid"]), users(&["dan", "eve"]));
    let e = env();
    let paused = Scope::Campaign("a".into());
    e.app.set_control(paused.clone(), Some(true), None).await.unwrap();
    e.worker.refresh_controls().await;
    e.app.enqueue_bulk(BulkSend { tenant: Some(uid("acme")), ..bulk("a", "shop-a", &a_users, "from a") }).await.unwrap();
    e.app.enqueue_bulk(BulkSend { tenant: Some(uid("globex")), ..bulk("b", "shop-b", &b_users, "from b") }).await.unwrap();
    drain(&e).await;
    let a = e.app.campaign_status(&cid("a"), None).await.unwrap();
    assert_eq!((a.state, a.campaign.persisted, a.eta_secs), ("paused", 0, None));
    assert_eq!(e.app.campaign_status(&cid("b"), None).await.unwrap().state, "done", "another tenant's campaign drains");
    assert_eq!(e.queue.stats().await.unwrap().held, 3);

    let dir = e.dir;
    drop((e.app, e.worker, e.queue));
    let e = env_in(dir);
    e.worker.refresh_controls().await;
    drain(&e).await;
    assert_eq!(e.app.campaign_status(&cid("a"), None).await.unwrap().state, "paused", "the pause survives a restart");
    assert_eq!(e.queue.stats().await.unwrap().held, 3, "the held messages too");
    assert_eq!(e.app.drain_controls().await.unwrap().1, 3);

    let c = e.app.set_control(paused.clone(), Some(false), None).await.unwrap();
    assert!(!c.paused);
    // A worker that sees the resume sends the held messages back.
    e.worker.refresh_controls().await;
    eventually("the held messages are released", || async { e.queue.stats().await.unwrap().held == 0 }).await;
    assert_eq!(e.app.release_held(&paused).await, 0, "nothing is left to release");
    drain(&e).await;
    let a = e.app.campaign_status(&cid("a"), None).await.unwrap();
    assert_eq!((a.state, a.campaign.persisted, a.campaign.dead_lettered), ("done", 3, 0));
    for u in ["ann", "bob", "cid"] {
        assert_eq!(e.app.inbox(&uid(u), None, None).await.unwrap().total_unread, 1, "{u} got campaign a once");
    }
    assert!(e.app.drain_controls().await.unwrap().0.entries.is_empty(), "a resumed campaign leaves no control behind");
}

/// Bad scopes and rates are refused and change nothing; every scope takes a rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_controls_refuse_what_they_cannot_apply() {
    let e = env();
    let err = e.app.set_control(Scope::Tenant("acme".into()), None, Some(-10.0)).await.unwrap_err();
    assert_eq!(err.grpc, tonic::Code::InvalidArgument, "{}", err.message);
    let err = e.app.set_control(Scope::Campaign("spring".into()), None, Some(f64::INFINITY)).await.unwrap_err();
    assert_eq!(err.grpc, tonic::Code::InvalidArgument, "{}", err.message);
    assert_eq!(e.app.set_control(Scope::Drain, None, Some(-1.0)).await.unwrap_err().grpc, tonic::Code::InvalidArgument);
    assert_eq!(e.app.set_control(Scope::Drain, None, Some(f64::NAN)).await.unwrap_err().grpc, tonic::Code::InvalidArgument);
    assert_eq!(e.app.set_control(Scope::Tenant("a b".into()), Some(true), None).await.unwrap_err().grpc, tonic::Code::InvalidArgument);
    assert!(e.app.drain_controls().await.unwrap().0.entries.is_empty());
    let c = e.app.set_control(Scope::Drain, None, Some(500.0)).await.unwrap();
    assert_eq!((c.paused, c.rate), (false, Some(500.0)));
    let c = e.app.set_control(Scope::Drain, Some(true), None).await.unwrap();
    assert_eq!((c.paused, c.rate), (true, Some(500.0)), "pausing keeps the rate");
    let c = e.app.set_control(Scope::Drain, Some(false), Some(0.0)).await.unwrap();
    assert_eq!((c.paused, c.rate), (false, None), "rate 0 removes it");
    assert!(e.app.drain_controls().await.unwrap().0.entries.is_empty());
    let c = e.app.set_control(Scope::Tenant("acme".into()), None, Some(10.0)).await.unwrap();
    assert_eq!((c.paused, c.rate), (false, Some(10.0)), "a tenant takes a rate");
    let c = e.app.set_control(Scope::Campaign("spring".into()), None, Some(0.5)).await.unwrap();
    assert_eq!((c.paused, c.rate), (false, Some(0.5)), "so does a campaign");
    assert_eq!(e.app.drain_controls().await.unwrap().0.entries.len(), 2);
}

/// A campaign's rate holds its messages aside while another tenant's campaign drains freely;
/// the held ones come back at the rate and persist; removing the rate releases the rest, and
/// the campaign completes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rated_campaign_drains_at_its_rate_and_completes_once_the_rate_goes() {
    let Env { dir: _dir, app, queue, worker } = env();
    let worker = Arc::new(worker);
    // One message a second: far slower than the 200 messages drain without it.
    app.set_control(Scope::Campaign("slow".into()), None, Some(1.0)).await.unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(worker.clone().run(shutdown.clone()));
    let slow: Vec<String> = (0..200).map(|i| format!("s{i}")).collect();
    let free: Vec<String> = (0..200).map(|i| format!("f{i}")).collect();
    app.enqueue_bulk(BulkSend { tenant: Some(uid("acme")), ..bulk("slow", "shop", &slow, "hi") }).await.unwrap();
    app.enqueue_bulk(BulkSend { tenant: Some(uid("globex")), ..bulk("free", "shop-g", &free, "hi") }).await.unwrap();
    eventually("the other tenant's campaign is done", || async { app.campaign(&cid("free"), None).await.unwrap().done() }).await;
    eventually("the rated campaign's backlog waits held", || async { queue.stats().await.unwrap().held > 150 }).await;
    let before = app.campaign(&cid("slow"), None).await.unwrap().persisted;
    assert!(before < 150, "the rate holds most of the campaign back: {before} persisted");
    eventually("held messages come back at the rate and persist", || async {
        app.campaign(&cid("slow"), None).await.unwrap().persisted >= before + 2
    })
    .await;
    assert_eq!(app.campaign_status(&cid("slow"), None).await.unwrap().state, "draining");

    app.set_control(Scope::Campaign("slow".into()), None, Some(0.0)).await.unwrap();
    eventually("without its rate the campaign is done", || async { app.campaign(&cid("slow"), None).await.unwrap().done() }).await;
    let c = app.campaign(&cid("slow"), None).await.unwrap();
    assert_eq!((c.enqueued, c.persisted, c.dead_lettered), (200, 200, 0));
    for u in ["s0", "s99", "s199"] {
        assert_eq!(app.inbox(&uid(u), None, None).await.unwrap().total_unread, 1, "{u} got the campaign once");
    }
    eventually("nothing stays held", || async { queue.stats().await.unwrap().held == 0 }).await;
    shutdown.cancel();
    run.await.unwrap();
}

/// Waits up to 30 s for `check`; panics with `what` otherwise.
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "not within 30 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With workers running: while the whole drain is paused nothing is received; a paused
/// tenant's messages are held, not persisted; its resume drains them, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_workers_follow_drain_and_tenant_pauses() {
    let Env { dir: _dir, app, queue, worker } = env();
    let worker = Arc::new(worker);
    app.set_control(Scope::Drain, Some(true), None).await.unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(worker.clone().run(shutdown.clone()));
    let recipients = users(&["ann", "bob", "cid"]);
    app.enqueue_bulk(BulkSend { tenant: Some(uid("acme")), ..bulk("t1", "shop", &recipients, "hi") }).await.unwrap();
    tokio::time::sleep(3 * sluice_core::control::REFRESH).await;
    let s = queue.stats().await.unwrap();
    assert_eq!((s.visible, s.in_flight, s.held), (3, 0, 0), "a paused drain receives nothing");
    assert_eq!(app.campaign_status(&cid("t1"), None).await.unwrap().state, "paused");

    app.set_control(Scope::Tenant("acme".into()), Some(true), None).await.unwrap();
    app.set_control(Scope::Drain, Some(false), None).await.unwrap();
    eventually("the paused tenant's messages are held", || async { queue.stats().await.unwrap().held == 3 }).await;
    assert_eq!(app.campaign(&cid("t1"), None).await.unwrap().persisted, 0);

    app.set_control(Scope::Tenant("acme".into()), Some(false), None).await.unwrap();
    eventually("the resumed tenant's campaign is done", || async { app.campaign(&cid("t1"), None).await.unwrap().done() }).await;
    let c = app.campaign(&cid("t1"), None).await.unwrap();
    assert_eq!((c.persisted, c.dead_lettered), (3, 0));
    assert_eq!(queue.stats().await.unwrap().held, 0);
    shutdown.cancel();
    run.await.unwrap();
}

/// A tenant at its queue quota gets what fits accepted and RESOURCE_EXHAUSTED with the count;
/// nothing accepted is lost, another tenant is not affected, and the rest goes through once
/// the queue drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_quota_is_refused_with_what_was_accepted() {
    let e = env_with(Limits { tenant_quota: 5, ..Limits::default() });
    let first = users(&["u1", "u2", "u3"]);
    assert_eq!(e.app.enqueue_bulk(BulkSend { tenant: Some(uid("acme")), ..bulk("q", "shop", &first, "hi") }).await.unwrap().1, 3);
    // Two more fit: u4 and u5 (the repeat of u4 and the sender take no room); u6 and u7 do not.
    let second = users(&["u4", "u4", "shop", "u5", "u6", "u3", "u7"]);
    let err = e.app.enqueue_bulk(BulkSend { tenant: Some(uid("acme")), ..bulk("q", "shop", &second, "hi") }).await.unwrap_err();
    assert_eq!(err.grpc, tonic::Code::ResourceExhausted, "{}", err.message);
    let meta: std::collections::HashMap<&str, &str> = err.metadata.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!((meta["sluice-accepted"], meta["sluice-accepted-entries"]), ("2", "4"), "{}", err.message);
    let status = tonic::Status::from(err);
    assert_eq!(status.metadata().get("sluice-accepted").unwrap(), "2");
    assert_eq!(
        e.app
            .enqueue_bulk(BulkSend { tenant: Some(uid("globex")), ..bulk("g", "shop-g", &users(&["v1", "v2", "v3"]), "hi") })
            .await
            .unwrap()
            .1,
        3,
        "another tenant has its own quota"
    );
    let full = e.app.enqueue_bulk(BulkSend { tenant: Some(uid("acme")), ..bulk("q", "shop", &second[4..], "hi") }).await.unwrap_err();
    assert!(full.metadata.contains(&("sluice-accepted", "0".to_string())), "{full:?}");
    drain(&e).await;
    let c = e.app.campaign(&cid("q"), None).await.unwrap();
    assert_eq!((c.enqueued, c.persisted, c.done()), (5, 5, true), "every accepted message persisted");
    // The caller sends the refused entries again once the queue drained (u3, already in the
    // campaign, counts in this call and is deduplicated by its message id).
    assert_eq!(e.app.enqueue_bulk(BulkSend { tenant: Some(uid("acme")), ..bulk("q", "shop", &second[4..], "hi") }).await.unwrap().1, 3);
    drain(&e).await;
    let c = e.app.campaign(&cid("q"), None).await.unwrap();
    assert_eq!((c.requested, c.enqueued, c.persisted, c.done()), (3 + 4 + 3, 7, 7, true));
    for u in ["u1", "u2", "u3", "u4", "u5", "u6", "u7"] {
        assert_eq!(e.app.inbox(&uid(u), None, None).await.unwrap().total_unread, 1, "{u}: one message from shop");
    }
}

/// What one EnqueueBulk call holds in memory, and what it queues, does not grow with
/// recipients x body: the body is stored once, each queued message carries its reference, and
/// messages are built and handed over in chunks of bounded bytes. The worker resolves the
/// reference: each recipient gets the whole body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_bulk_memory_stays_flat_as_recipients_times_body_grow() {
    let recipients: Vec<String> = (0..2_000).map(|i| format!("m{i}")).collect();
    let mut peaks = Vec::new();
    for body_len in [16, 32 * 1024] {
        let e = env();
        let body = "x".repeat(body_len);
        e.app.enqueue_bulk(bulk("big", "shop", &recipients, &body)).await.unwrap();
        assert_eq!(e.app.backends.metrics.enqueue_bytes_held.get(), 0, "nothing is held after the call");
        peaks.push(e.app.backends.metrics.enqueue_bytes_peak.get() as usize);
        assert_eq!(e.queue.stats().await.unwrap().visible, 2_000);
        let body_ref = sluice_core::ids::campaign_body_ref("big", &body);
        assert_eq!(e.app.backends.store.campaign_body("big", &body_ref).await.unwrap().as_deref(), Some(body.as_str()), "stored once");
        drain(&e).await;
        assert_eq!(e.app.backends.metrics.campaign_body_reads.get(), 1, "the worker read the body once");
        for r in ["m0", "m1999"] {
            let room = sluice_core::ids::RoomId::new(sluice_core::ids::dm_room("shop", r)).unwrap();
            let h = e.app.history(Some(&uid(r)), &room, None, None, None).await.unwrap();
            assert_eq!(h.len(), 1);
            assert_eq!(h[0].body, body, "{r} got the whole body");
        }
    }
    // 2,000 x 32 KiB would be 64 MiB of queued messages; with the body by reference both
    // campaigns queue the same bytes, a few hundred per message.
    assert_eq!(peaks[0], peaks[1], "queued bytes do not grow with the body");
    assert!(peaks[0] <= 2_000 * 512 && peaks[0] > 0, "peak {} bytes", peaks[0]);
}

/// A call of one or two recipients carries its body in each message (no extra store write),
/// and a worker still drains a message whose reference names no stored body into the
/// dead-letter queue with a reason, counted for its campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_calls_carry_their_body_and_a_dangling_reference_is_dead_lettered() {
    let e = env();
    e.app.enqueue_bulk(bulk("tiny", "shop", &users(&["ann", "bob"]), "hello")).await.unwrap();
    let tiny = sluice_core::ids::campaign_body_ref("tiny", "hello");
    assert_eq!(e.app.backends.store.campaign_body("tiny", &tiny).await.unwrap(), None, "two recipients: no stored body");
    drain(&e).await;
    assert_eq!(e.app.campaign(&cid("tiny"), None).await.unwrap().persisted, 2);

    e.app.backends.store.record_enqueued("lost", "shop", 1, &users(&["cy"])).await.unwrap();
    let dangling = sluice_core::ids::campaign_body_ref("lost", "never stored");
    let msg = sluice_core::model::NewMessage {
        body_ref: Some(dangling),
        ..sluice_core::model::NewMessage::one_off(&cid("lost"), &uid("shop"), &uid("cy"), "", 1)
    };
    let q = sluice_core::queue::Enqueue {
        dedup_id: msg.msg_id.clone(),
        group: sluice_core::ids::queue_group(&msg.room),
        tenant: "shop".into(),
        body: sluice_proto::convert::encode_queued(&msg),
    };
    e.queue.send(vec![q]).await.unwrap();
    drain(&e).await;
    let dead = e.queue.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("not stored"), "{}", dead[0].reason);
    let c = e.app.campaign(&cid("lost"), None).await.unwrap();
    assert_eq!((c.persisted, c.dead_lettered, c.done()), (0, 1, true));
}
