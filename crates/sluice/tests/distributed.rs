//! Sluice as separate processes on the distributed backends, against the emulators: two
//! `sluice gateway` and two `sluice worker` processes on DynamoDB Local, moto (SQS, Kinesis)
//! and a three-node Redis Cluster (`--redis-cluster`, as ElastiCache with cluster mode runs),
//! each configured as deploy/kubernetes's `aws` overlay configures it (the variables its
//! rendered manifests set), with only the endpoints, credentials, names and ports of this
//! machine put over them.
//! A user on gateway A hears a user on gateway B live; a 2,000 recipient campaign drains with
//! exact counters while a worker is SIGKILLed and restarted and every Redis node restarts;
//! afterwards boto3 finds the data where DESIGN.md's model says; a campaign's rate holds it
//! in SQS's held queue while another tenant's drains, and a tenant quota counted by DynamoDB
//! refuses what does not fit. (The chaos test runs on a standalone redis-server.)

mod common;

use common::{BIN, Server, aws_env, check_recipients, wait_done};
use serde_json::json;
use sluice_proto::v1;
use sluice_testkit::services::{RedisCluster, dynamodb_url, python_with_boto3, unique_prefix};
use std::time::{Duration, Instant};

fn run(args: &[&str], env: &[(String, String)]) -> String {
    let out = std::process::Command::new(BIN).args(args).envs(env.iter().map(|(k, v)| (k, v))).output().unwrap();
    assert!(out.status.success(), "sluice {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_and_two_workers_survive_a_worker_kill_and_a_redis_restart() {
    let mut redis = RedisCluster::start(3);
    let prefix = unique_prefix("mp");
    // What this machine puts over the manifests' values: the emulators' endpoints and test
    // credentials, this test's prefix and Redis, and loopback ports.
    let mut here = aws_env(&prefix, &redis.url(), &dynamodb_url());
    here.push(("SLUICE_REDIS_CLUSTER".into(), "true".into()));
    here.push(("SLUICE_ADMIN_ADDR".into(), "127.0.0.1:0".into()));
    let deployed = |component: &str| -> Vec<(String, String)> {
        let mut env = common::rendered_env("aws", component);
        for k in ["SLUICE_BACKEND", "SLUICE_SQS_LANES", "SLUICE_FLEET_DRAIN_RATE", "SLUICE_ADMIN_ADDR"] {
            assert!(env.iter().any(|(name, _)| name == k), "the manifests set {k} for the {component}");
        }
        env.extend(here.iter().cloned());
        env
    };
    let (gateway_env, env) = (deployed("gateway"), deployed("worker"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("secrets");
    let d = data.to_str().unwrap();

    let first = run(&["migrate", "--data-dir", d, "--with-queues"], &env);
    assert!(first.contains(&format!("table {prefix}-messages: created")), "{first}");
    assert!(first.contains(&format!("table {prefix}-msgids: created, TTL on expires_at")), "{first}");
    assert!(first.contains(&format!("{prefix}-bulk.fifo")) && first.contains(&format!("stream {prefix}-events")), "{first}");
    let again = run(&["migrate", "--data-dir", d, "--with-queues"], &env);
    assert!(again.contains(&format!("table {prefix}-inbox: exists")) && !again.contains("created"), "migrate is idempotent: {again}");

    let gateway_args = ["--max-connections-per-user", "2"];
    let gw_a = Server::start_role("gateway", &data, &gateway_args, &gateway_env).await;
    let gw_b = Server::start_role("gateway", &data, &gateway_args, &gateway_env).await;
    let worker_args = ["--visibility-timeout-secs", "5", "--max-receives", "50"];
    let w1 = Server::start_role("worker", &data, &worker_args, &env).await;
    let w2 = Server::start_role("worker", &data, &worker_args, &env).await;
    // Every role answers its probes on the admin listener, the worker too.
    for s in [&gw_a, &w1] {
        let admin = s.admin.expect("SLUICE_ADMIN_ADDR gives every role an admin listener");
        assert_eq!(common::http_get(admin, "/healthz").await.0, 200);
        let (status, body) = common::http_get(admin, "/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ready\n"));
    }
    assert_eq!(common::http_get(gw_a.http, "/metrics").await.0, 404, "metrics stay off the client port");

    // Live across gateways, through Redis.
    let (alice, bob) = (format!("{prefix}-alice"), format!("{prefix}-bob"));
    let room = format!("{prefix}-room");
    let mut g = gw_a.grpc().await;
    g.create_room(v1::CreateRoomRequest { room: room.clone(), members: vec![alice.clone(), bob.clone()] }).await.unwrap();
    let mut on_a = gw_a.ws(&alice).await;
    let mut on_b = gw_b.ws(&bob).await;
    let ack = on_b.say(&room, "c1", "hello from gateway B").await;
    assert_eq!(ack["seq"], 1);
    let m = on_a.recv_type("message").await;
    assert_eq!((m["body"].as_str(), m["sender"].as_str()), (Some("hello from gateway B"), Some(bob.as_str())));

    // The per-user connection cap holds across gateways (its count lives in Redis).
    let second = gw_b.ws(&alice).await;
    assert_eq!(gw_a.ws_refused(&alice).await, 429, "alice's third connection, wherever it lands");
    drop(second);

    // A campaign through SQS, drained by both workers.
    const N: usize = 2_000;
    let shop = format!("{prefix}-shop");
    let campaign = format!("{prefix}-sale");
    let recipients: Vec<String> = (0..N).map(|i| format!("{prefix}-r{i:04}")).collect();
    let started = Instant::now();
    let r = g
        .enqueue_bulk(v1::EnqueueBulkRequest {
            campaign_id: campaign.clone(),
            sender: shop.clone(),
            recipients: recipients.clone(),
            body: "sale".into(),
            tenant: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, N as u64);
    let enqueued_in = started.elapsed();
    eprintln!("enqueued in {enqueued_in:?}");

    // The console of either gateway sees the whole deployment: the campaign enqueued through
    // A, the connections on both, every process reporting; presence crosses gateways too.
    let listed = gw_b.admin("/v1/admin/campaigns").await;
    assert!(listed["campaigns"].as_array().unwrap().iter().any(|c| c["campaign_id"] == campaign.as_str()), "{listed}");
    let mut fleet = json!(null);
    for _ in 0..50 {
        fleet = gw_b.admin("/v1/admin/overview").await["fleet"].clone();
        if fleet["processes"].as_u64() >= Some(4) && fleet["connections"].as_f64() >= Some(2.0) {
            break;
        }
        on_a.quiet_for(Duration::from_millis(100)).await;
    }
    assert!(
        fleet["processes"].as_u64() >= Some(4) && fleet["connections"].as_f64() >= Some(2.0),
        "two gateways, two workers, alice on A and bob on B: {fleet}"
    );
    on_a.send(json!({"type": "presence", "room": room.as_str()})).await;
    let presence = on_a.recv_type("presence").await;
    assert_eq!(presence["online"], json!([bob.as_str()]), "bob, on gateway B, is online for alice on A");

    // Mid-drain: SIGKILL one worker, restart Redis, start the worker again.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let c = g.get_campaign(v1::GetCampaignRequest { campaign_id: campaign.clone(), tenant: None }).await.unwrap().into_inner();
        if c.persisted >= 200 {
            assert!(c.persisted < N as u64, "the kill must land mid-drain: {c:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the drain did not start: {c:?}");
        // Reading keeps the idle sockets alive (answers the server's pings).
        on_a.quiet_for(Duration::from_millis(50)).await;
        on_b.quiet_for(Duration::from_millis(50)).await;
    }
    eprintln!("killing a worker after {:?}", started.elapsed());
    w1.kill9().await;
    for node in 0..redis.nodes.len() {
        redis.restart(node);
    }
    let _w1 = Server::start_role("worker", &data, &worker_args, &env).await;

    // Live delivery comes back once the gateways have resubscribed and re-registered.
    let mut heard = false;
    for i in 0..40 {
        let body = format!("after the restart {i}");
        on_b.say(&room, &format!("r{i}"), &body).await;
        if let Some(m) = on_a.quiet_for(Duration::from_millis(500)).await
            && (m["type"] == "message" || m["type"] == "unread")
        {
            heard = true;
            break;
        }
    }
    assert!(heard, "live delivery across gateways resumed after the Redis restart");
    // Whatever was published while Redis was away is recovered by resume-by-seq.
    on_a.send(json!({"type": "resume", "rooms": {room.as_str(): 1}})).await;
    let replayed = on_a.recv_type("resumed").await;
    assert!(replayed["rooms"][room.as_str()].as_u64().unwrap() >= 2, "{replayed}");

    let c = wait_done(&mut g, &campaign, Duration::from_secs(600)).await;
    let drained_in = started.elapsed();
    eprintln!("FIGURE 2k campaign on the emulators: enqueue {enqueued_in:?}, enqueue+drain {drained_in:?} with a worker killed");
    assert_eq!((c.requested, c.enqueued, c.persisted, c.dead_lettered), (N as u64, N as u64, N as u64, 0));
    assert!(w2.metric("sluice_drained_total").await > 0.0, "Prometheus finds the worker's drain on its admin port");
    check_recipients(&g, &shop, &recipients, 1).await;

    // The same data, read by AWS's SDK for Python.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/check_with_boto3.py");
    let out = std::process::Command::new(python_with_boto3())
        .arg(script)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("CHECK_SENDER", &shop)
        .env("CHECK_RECIPIENT", &recipients[1234])
        .env("CHECK_CAMPAIGN", &campaign)
        .env("CHECK_RECIPIENTS", N.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "boto3 check failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["persisted"], N);
    drop(gw_b);

    // A campaign's rate and a tenant's quota on SQS: a third gateway with a quota of 250
    // queued messages per tenant (counted by DynamoDB beside SQS).
    let gw_c = Server::start_role("gateway", &data, &["--tenant-quota", "250"], &gateway_env).await;
    let mut gc = gw_c.grpc().await;
    let (slow, fast) = (format!("{prefix}-slow"), format!("{prefix}-fast"));
    let rate = |id: &str, r: f64| v1::SetDrainControlRequest {
        scope: Some(v1::DrainScope { scope: Some(v1::drain_scope::Scope::CampaignId(id.to_string())) }),
        paused: None,
        rate: Some(r),
    };
    gc.set_drain_control(rate(&slow, 2.0)).await.unwrap();
    tokio::time::sleep(2 * sluice_core::control::REFRESH).await;
    let bulk = |id: &str, tenant: &str, recipients: &[String]| v1::EnqueueBulkRequest {
        campaign_id: id.to_string(),
        sender: format!("{prefix}-{tenant}-shop"),
        recipients: recipients.to_vec(),
        body: "sale".into(),
        tenant: Some(format!("{prefix}-{tenant}")),
    };
    let slow_to: Vec<String> = (0..300).map(|i| format!("{prefix}-s{i:03}")).collect();
    let refused = gc.enqueue_bulk(bulk(&slow, "acme", &slow_to)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert_eq!(refused.metadata().get("sluice-accepted").unwrap(), "250", "the quota's worth is accepted: {refused:?}");
    let fast_to: Vec<String> = (0..100).map(|i| format!("{prefix}-f{i:03}")).collect();
    assert_eq!(gc.enqueue_bulk(bulk(&fast, "globex", &fast_to)).await.unwrap().into_inner().accepted, 100, "another tenant's quota");
    wait_done(&mut gc, &fast, Duration::from_secs(300)).await;
    let held = gc.get_campaign(v1::GetCampaignRequest { campaign_id: slow.clone(), tenant: None }).await.unwrap().into_inner();
    assert!(held.persisted < 200, "the rate of 2/s holds the slow campaign back while the other drains: {held:?}");
    let controls = gc.get_drain_controls(v1::GetDrainControlsRequest {}).await.unwrap().into_inner();
    assert!(controls.held > 0, "its backlog waits in the held queue: {controls:?}");
    gc.set_drain_control(rate(&slow, 0.0)).await.unwrap();
    let c = wait_done(&mut gc, &slow, Duration::from_secs(300)).await;
    assert_eq!((c.enqueued, c.persisted, c.dead_lettered), (250, 250, 0));
    // The backlog drained: the refused entries go through now.
    let rest = gc.enqueue_bulk(bulk(&slow, "acme", &slow_to[250..])).await.unwrap().into_inner();
    assert_eq!(rest.accepted, 50);
    let c = wait_done(&mut gc, &slow, Duration::from_secs(300)).await;
    assert_eq!((c.enqueued, c.persisted, c.dead_lettered), (300, 300, 0));
    check_recipients(&gc, &format!("{prefix}-acme-shop"), &slow_to, 1).await;
}
