//! The Redis hub against a real redis-server, standalone, over TLS and as a cluster: the
//! shared hub and limiter conformance suites, fan-out between two gateways, and live delivery
//! resuming after a Redis restart.

use sluice_core::hub::{Hub, LiveEvent};
use sluice_redis::{Endpoint, RedisHub, RedisHubConfig};
use sluice_testkit::Guard;
use sluice_testkit::services::{RedisCluster, RedisServer};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn hub_on(server: &RedisServer, prefix: &str) -> RedisHub {
    hub_at(Endpoint::new(server.url()), prefix).await
}

async fn hub_at(endpoint: Endpoint, prefix: &str) -> RedisHub {
    RedisHub::connect(RedisHubConfig { endpoint, prefix: prefix.into(), ..RedisHubConfig::new("") }).await.expect("redis hub connects")
}

fn cluster_endpoint(cluster: &RedisCluster) -> Endpoint {
    Endpoint { cluster: true, ..Endpoint::new(cluster.url()) }
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
    let l = sluice_redis::RedisLimiter::connect(&Endpoint::new(server.url()), "t", Duration::from_secs(2))
        .await
        .expect("redis limiter connects");
    (Arc::new(l), Box::new(server))
}

mod limiter_suite {
    sluice_testkit::limiter_conformance!(super::limiter);
}

/// In cluster mode (ElastiCache with cluster mode enabled, ElastiCache Serverless): the same
/// suites against a three-node Redis Cluster. A standalone client there gets MOVED for most
/// keys, and a pipeline over users in different slots fails as a whole.
async fn hub_cluster() -> (Arc<dyn Hub>, Guard) {
    let cluster = RedisCluster::start(3);
    let hub = hub_at(cluster_endpoint(&cluster), "t").await;
    (Arc::new(hub), Box::new(cluster))
}

mod hub_suite_cluster {
    sluice_testkit::hub_conformance!(super::hub_cluster);
}

async fn limiter_cluster() -> (Arc<dyn sluice_core::limits::Limiter>, Guard) {
    let cluster = RedisCluster::start(3);
    let l = sluice_redis::RedisLimiter::connect(&cluster_endpoint(&cluster), "t", Duration::from_secs(2))
        .await
        .expect("limiter connects to the cluster");
    (Arc::new(l), Box::new(cluster))
}

mod limiter_suite_cluster {
    sluice_testkit::limiter_conformance!(super::limiter_cluster);
}

/// ElastiCache Serverless is both: cluster mode over TLS (the nodes tell TLS clients their
/// TLS ports, and the cluster bus is encrypted too).
async fn hub_cluster_tls() -> (Arc<dyn Hub>, Guard) {
    let cluster = RedisCluster::start_tls(3);
    let endpoint = Endpoint { cluster: true, tls_ca: cluster.tls_ca(), ..Endpoint::new(cluster.url()) };
    let hub = hub_at(endpoint, "t").await;
    (Arc::new(hub), Box::new(cluster))
}

mod hub_suite_cluster_tls {
    sluice_testkit::hub_conformance!(super::hub_cluster_tls);
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
    across_gateways(Endpoint::new(server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_gateway_a_receives_what_gateway_b_publishes_through_a_cluster() {
    let cluster = RedisCluster::start(3);
    across_gateways(cluster_endpoint(&cluster)).await;
}

async fn across_gateways(endpoint: Endpoint) {
    let a = hub_at(endpoint.clone(), "x").await;
    let b = hub_at(endpoint, "x").await;
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

/// Until `bob` (connected on `a`) receives what `b` publishes again.
async fn delivery_resumes(b: &RedisHub, bob: &mut sluice_core::hub::Connection, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        let room = format!("{what}-{n}");
        if b.publish(&["bob".into()], typing(&room)).await.is_ok()
            && let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), bob.events.recv()).await
            && matches!(&*e, LiveEvent::Typing { room, .. } if room.starts_with(what))
        {
            return;
        }
        assert!(Instant::now() < deadline, "live delivery did not resume: {what}");
    }
}

/// A cluster node that restarts comes back with its slots but without its data: the sessions
/// registered there and the sharded subscriptions it served. Each node in turn: the one that
/// holds bob's session, and the ones serving either gateway's channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_delivery_resumes_after_each_cluster_node_restarts() {
    let mut cluster = RedisCluster::start(3);
    let a = hub_at(cluster_endpoint(&cluster), "r").await;
    let b = hub_at(cluster_endpoint(&cluster), "r").await;
    let mut bob = a.connect("bob", 256).await.unwrap();
    delivery_resumes(&b, &mut bob, "before").await;
    let holder = cluster.node_of("r:sess:bob");
    for i in 0..cluster.nodes.len() {
        cluster.restart(i);
        delivery_resumes(&b, &mut bob, &format!("after-restart-of-{i}")).await;
        assert_eq!(b.online(&["bob".into()]).await.unwrap(), vec![true], "bob is registered again after node {i} (his holds {holder})");
    }
}

/// Over TLS (`rediss://`, as ElastiCache with encryption in transit and ElastiCache
/// Serverless need): the same suites, against a redis-server serving TLS with a certificate
/// the client is told to trust.
async fn hub_tls() -> (Arc<dyn Hub>, Guard) {
    let server = RedisServer::start_tls();
    let endpoint = Endpoint { tls_ca: server.tls_ca(), ..Endpoint::new(server.url()) };
    let config = RedisHubConfig { prefix: "t".into(), endpoint, ..RedisHubConfig::new("") };
    let hub = RedisHub::connect(config).await.expect("redis hub connects over TLS");
    (Arc::new(hub), Box::new(server))
}

mod hub_suite_tls {
    sluice_testkit::hub_conformance!(super::hub_tls);
}

async fn limiter_tls() -> (Arc<dyn sluice_core::limits::Limiter>, Guard) {
    let server = RedisServer::start_tls();
    let endpoint = Endpoint { tls_ca: server.tls_ca(), ..Endpoint::new(server.url()) };
    let l = sluice_redis::RedisLimiter::connect(&endpoint, "t", Duration::from_secs(2)).await.expect("limiter connects over TLS");
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
    let plain = RedisHubConfig {
        endpoint: Endpoint { tls_ca: server.tls_ca(), ..Endpoint::new("redis://127.0.0.1:1") },
        ..RedisHubConfig::new("")
    };
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
