//! The Redis hub against a real redis-server: the shared hub conformance suite, fan-out
//! between two gateways, and live delivery resuming after a Redis restart.

use sluice_core::hub::{Hub, LiveEvent};
use sluice_redis::{RedisHub, RedisHubConfig};
use sluice_testkit::Guard;
use sluice_testkit::services::RedisServer;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn hub_on(server: &RedisServer, prefix: &str) -> RedisHub {
    let mut config = RedisHubConfig::new(server.url());
    config.prefix = prefix.into();
    RedisHub::connect(config).await.expect("redis hub connects")
}

async fn hub() -> (Arc<dyn Hub>, Guard) {
    let server = RedisServer::start();
    let hub = hub_on(&server, "t").await;
    (Arc::new(hub), Box::new(server))
}

mod hub_suite {
    sluice_testkit::hub_conformance!(super::hub);
}

async fn limiter() -> (Arc<dyn sluice_core::limits::Limiter>, Guard) {
    let server = RedisServer::start();
    let l = sluice_redis::RedisLimiter::connect(&server.url(), None, "t", Duration::from_secs(2)).await.expect("redis limiter connects");
    (Arc::new(l), Box::new(server))
}

mod limiter_suite {
    sluice_testkit::limiter_conformance!(super::limiter);
}

fn typing(room: &str) -> LiveEvent {
    LiveEvent::Typing { room: room.into(), user: "x".into() }
}

async fn recv(c: &mut sluice_core::hub::Connection) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(5), c.events.recv()).await.ok().flatten()?.as_ref() {
        LiveEvent::Typing { room, .. } => Some(room.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_gateway_a_receives_what_gateway_b_publishes() {
    let server = RedisServer::start();
    let a = hub_on(&server, "x").await;
    let b = hub_on(&server, "x").await;
    assert_ne!(a.node(), b.node());
    let mut alice_on_a = a.connect("alice", 16).await.unwrap();
    let mut alice_on_b = b.connect("alice", 16).await.unwrap();
    let mut bob_on_b = b.connect("bob", 16).await.unwrap();
    let mut fire_a = a.firehose().await;
    assert_eq!(b.online(&["alice".into(), "carol".into()]).await.unwrap(), vec![true, false]);

    b.publish(&["alice".into()], typing("from-b")).await.unwrap();
    assert_eq!(recv(&mut alice_on_a).await.as_deref(), Some("from-b"), "across gateways");
    assert_eq!(recv(&mut alice_on_b).await.as_deref(), Some("from-b"), "and locally, once");
    a.publish(&["bob".into(), "alice".into()], typing("from-a")).await.unwrap();
    assert_eq!(recv(&mut bob_on_b).await.as_deref(), Some("from-a"));
    assert_eq!(recv(&mut alice_on_a).await.as_deref(), Some("from-a"));
    assert_eq!(recv(&mut alice_on_b).await.as_deref(), Some("from-a"));
    for want in ["from-b", "from-a"] {
        let e = tokio::time::timeout(Duration::from_secs(5), fire_a.recv()).await.unwrap().unwrap();
        assert!(matches!(&*e, LiveEvent::Typing { room, .. } if room == want), "the firehose sees both gateways' events");
    }
    assert!(alice_on_a.events.try_recv().is_err(), "no duplicates");

    b.disconnect("alice", alice_on_b.id).await;
    assert_eq!(a.online(&["alice".into()]).await.unwrap(), vec![true], "alice is still on gateway a");
    a.disconnect("alice", alice_on_a.id).await;
    assert_eq!(b.online(&["alice".into()]).await.unwrap(), vec![false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_delivery_resumes_after_a_redis_restart() {
    let mut server = RedisServer::start();
    let a = hub_on(&server, "r").await;
    let b = hub_on(&server, "r").await;
    let mut bob = a.connect("bob", 64).await.unwrap();
    b.publish(&["bob".into()], typing("before")).await.unwrap();
    assert_eq!(recv(&mut bob).await.as_deref(), Some("before"));

    server.restart();
    // The restarted Redis knows no sessions; gateway a re-registers bob when its subscriber
    // reconnects, and gateway b's commands reconnect on their own.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    let delivered = loop {
        n += 1;
        let room = format!("after-{n}");
        if b.publish(&["bob".into()], typing(&room)).await.is_ok()
            && let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), bob.events.recv()).await
        {
            break e;
        }
        assert!(Instant::now() < deadline, "live delivery did not resume after the restart");
    };
    assert!(matches!(&*delivered, LiveEvent::Typing { room, .. } if room.starts_with("after-")));
    assert_eq!(b.online(&["bob".into()]).await.unwrap(), vec![true]);
}

/// Over TLS (`rediss://`, as ElastiCache with encryption in transit and ElastiCache
/// Serverless need): the same suites, against a redis-server serving TLS with a certificate
/// the client is told to trust.
async fn hub_tls() -> (Arc<dyn Hub>, Guard) {
    let server = RedisServer::start_tls();
    let config = RedisHubConfig { prefix: "t".into(), tls_ca: server.tls_ca(), ..RedisHubConfig::new(server.url()) };
    let hub = RedisHub::connect(config).await.expect("redis hub connects over TLS");
    (Arc::new(hub), Box::new(server))
}

mod hub_suite_tls {
    sluice_testkit::hub_conformance!(super::hub_tls);
}

async fn limiter_tls() -> (Arc<dyn sluice_core::limits::Limiter>, Guard) {
    let server = RedisServer::start_tls();
    let ca = server.tls_ca();
    let l = sluice_redis::RedisLimiter::connect(&server.url(), ca.as_deref(), "t", Duration::from_secs(2))
        .await
        .expect("limiter connects over TLS");
    (Arc::new(l), Box::new(server))
}

mod limiter_suite_tls {
    sluice_testkit::limiter_conformance!(super::limiter_tls);
}

/// The server's certificate is checked: without its CA (only the public roots) the
/// connection is refused, and a CA given for a plain URL is a configuration error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_is_verified() {
    let server = RedisServer::start_tls();
    let untrusted = RedisHub::connect(RedisHubConfig::new(server.url())).await;
    assert!(untrusted.is_err(), "a self-signed certificate is not trusted by default");
    let plain = RedisHubConfig { tls_ca: server.tls_ca(), ..RedisHubConfig::new("redis://127.0.0.1:1") };
    let err = RedisHub::connect(plain).await.err().expect("refused");
    assert!(err.to_string().contains("rediss://"), "{err}");
}

/// Issue 15.8: a subscription whose connection goes half-open (open, carrying nothing, no
/// error: a NAT or load balancer dropped it) stops cross-gateway delivery silently. The
/// hub's canary finds it and subscribes again, so delivery resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_subscription_is_found_and_replaced() {
    let server = RedisServer::start();
    let proxy = sluice_testkit::tcp_proxy::TcpProxy::start(([127, 0, 0, 1], server.port).into()).await;
    let config = RedisHubConfig {
        prefix: "half".into(),
        subscription_check: Duration::from_millis(300),
        ..RedisHubConfig::new(format!("redis://{}", proxy.addr))
    };
    let a = RedisHub::connect(config).await.expect("hub behind the proxy connects");
    let b = hub_on(&server, "half").await;
    let mut on_a = a.connect("ann", 64).await.unwrap();
    b.publish(&["ann".into()], typing("before")).await.unwrap();
    assert_eq!(recv(&mut on_a).await.as_deref(), Some("before"));

    proxy.freeze();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        b.publish(&["ann".into()], typing("after")).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(500), on_a.events.recv()).await {
            Ok(Some(e)) if matches!(e.as_ref(), LiveEvent::Typing { room, .. } if room == "after") => break,
            _ => assert!(Instant::now() < deadline, "live delivery never resumed after the subscription went half-open"),
        }
    }
    assert!(a.subscriptions_replaced() >= 1, "the silent subscription was replaced");
}

/// Issue 15.8: a gateway subscribes to the firehose (every event, with bodies) only while one
/// of its own service subscribers listens, and leaves it when the last one goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_firehose_is_subscribed_only_while_someone_listens() {
    let server = RedisServer::start();
    let config =
        RedisHubConfig { prefix: "fh".into(), subscription_check: Duration::from_millis(200), ..RedisHubConfig::new(server.url()) };
    let hub = RedisHub::connect(config).await.unwrap();
    let other = hub_on(&server, "fh").await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let listeners = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            let (_, n): (String, u64) = redis::cmd("PUBSUB").arg("NUMSUB").arg("fh:firehose").query_async(&mut conn).await.unwrap();
            n
        }
    };
    assert_eq!(listeners(&mut conn).await, 0, "nobody streams: no gateway receives the firehose");
    let mut fire = hub.firehose().await;
    assert_eq!(listeners(&mut conn).await, 1);
    other.publish(&["nobody".into()], typing("seen")).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), fire.recv()).await.unwrap().unwrap();
    assert!(matches!(&*e, LiveEvent::Typing { room, .. } if room == "seen"), "another gateway's event on the firehose");
    drop(fire);
    let deadline = Instant::now() + Duration::from_secs(10);
    while listeners(&mut conn).await != 0 {
        assert!(Instant::now() < deadline, "the firehose was never left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
