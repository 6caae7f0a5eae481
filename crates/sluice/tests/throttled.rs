//! The drain governor against a throttling store (issue 9): `sluice serve` on DynamoDB Local
//! behind the fault proxy, which cancels 30% of TransactWriteItems calls (two thirds
//! TransactionConflict, one third throttling). While a campaign drains, the governor cuts
//! the bulk rate (visible in `/metrics`), every interactive send is acknowledged, and the
//! campaign completes exactly once with exact counters.

mod common;

use common::{BIN, Server, aws_env, check_recipients, wait_done};
use sluice_proto::v1;
use sluice_testkit::dynamo_faults::DynamoFaultProxy;
use sluice_testkit::services::{RedisServer, dynamodb_url, unique_prefix};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_store_cuts_the_drain_and_loses_nothing() {
    let redis = RedisServer::start();
    let proxy = DynamoFaultProxy::start(&dynamodb_url(), 0.0).await;
    let prefix = unique_prefix("thr");
    let env = aws_env(&prefix, &redis.url(), &proxy.url());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = std::process::Command::new(BIN)
        .args(["migrate", "--data-dir", data.to_str().unwrap(), "--with-queues"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = Server::start_role("serve", &data, &["--hub", "local"], &env).await;
    let mut g = s.grpc().await;
    let (alice, bob) = (format!("{prefix}-alice"), format!("{prefix}-bob"));
    let room = format!("{prefix}-room");
    g.create_room(v1::CreateRoomRequest { room: room.clone(), members: vec![alice.clone(), bob.clone()] }).await.unwrap();
    let mut ws = s.ws(&alice).await;

    proxy.set_rate(0.3);
    let sender = format!("{prefix}-shop");
    let recipients: Vec<String> = (0..600).map(|i| format!("{prefix}-r{i}")).collect();
    let req = v1::EnqueueBulkRequest {
        campaign_id: format!("{prefix}-c"),
        sender: sender.clone(),
        recipients: recipients.clone(),
        body: "throttled".into(),
        tenant: None,
    };
    assert_eq!(g.enqueue_bulk(req).await.unwrap().into_inner().accepted, 600);
    for i in 0..40 {
        let ack = ws.say(&room, &format!("k{i}"), "chat while the store throttles").await;
        assert_eq!(ack["type"], "ack", "interactive send {i}: {ack}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let done = wait_done(&mut g, &format!("{prefix}-c"), Duration::from_secs(240)).await;
    proxy.set_rate(0.0);
    assert_eq!((done.enqueued, done.persisted, done.dead_lettered), (600, 600, 0), "{done:?}");
    check_recipients(&g, &sender, &recipients, 1).await;
    let counts = &proxy.counts;
    assert!(counts.throttles.load(std::sync::atomic::Ordering::Relaxed) > 0, "the proxy throttled");
    assert!(s.metric("sluice_store_backoffs_total").await > 0.0, "the store met the faults and waited them out");
    assert!(s.metric("sluice_drain_cuts_total").await > 0.0, "the governor cut the drain");
    let history = g.get_history(v1::GetHistoryRequest { room, before: None, after: None, limit: 100 }).await.unwrap().into_inner();
    assert_eq!(history.messages.len(), 40, "every acknowledged chat message persisted once");
}
