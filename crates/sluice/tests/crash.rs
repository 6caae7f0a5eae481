//! Invariant 4: nothing accepted is lost when the process is killed with SIGKILL during a
//! bulk drain and restarted; and invariant 2 across that crash: one message per recipient.

mod common;

use common::{Grpc, Server, check_recipients, wait_done};
use serde_json::json;
use sluice_proto::v1;
use std::time::{Duration, Instant};

async fn campaign(g: &mut Grpc, id: &str) -> v1::GetCampaignResponse {
    g.get_campaign(v1::GetCampaignRequest { campaign_id: id.into(), tenant: None }).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_bulk_drain_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Small batches so the drain is still running when the kill comes.
    let slow = ["--worker-concurrency", "1", "--worker-batch", "5"];
    let s = Server::start(&data, &slow).await;
    let mut g = s.grpc().await;
    g.create_room(v1::CreateRoomRequest { room: "ops".into(), members: vec!["alice".into(), "bob".into()] }).await.unwrap();
    let mut alice = s.ws("alice").await;
    for i in 0..5 {
        assert_eq!(alice.say("ops", &format!("k{i}"), "acked before the crash").await["type"], "ack");
    }
    const N: usize = 5_000;
    let recipients: Vec<String> = (0..N).map(|i| format!("r{i}")).collect();
    let r = g
        .enqueue_bulk(v1::EnqueueBulkRequest {
            campaign_id: "flash".into(),
            sender: "brand".into(),
            recipients: recipients.clone(),
            body: "now or never".into(),
            tenant: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, N as u64);
    let deadline = Instant::now() + Duration::from_secs(120);
    let at_kill = loop {
        let c = campaign(&mut g, "flash").await;
        if c.persisted >= 100 {
            break c;
        }
        assert!(Instant::now() < deadline, "drain never started: {c:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    drop(alice);
    s.kill9().await;
    assert!(at_kill.persisted < N as u64, "killed mid-drain ({} of {N} persisted)", at_kill.persisted);

    let s = Server::start(&data, &[]).await;
    let mut g = s.grpc().await;
    let done = wait_done(&mut g, "flash", Duration::from_secs(300)).await;
    assert_eq!((done.enqueued, done.persisted, done.dead_lettered), (N as u64, N as u64, 0));
    check_recipients(&g, "brand", &recipients, 1).await;
    let ops = g.get_history(v1::GetHistoryRequest { room: "ops".into(), before: None, after: None, limit: 0 }).await.unwrap().into_inner();
    assert_eq!(ops.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5], "acked interactive messages survive");
    let mut bob = s.ws("bob").await;
    bob.send(json!({"type": "inbox"})).await;
    assert_eq!(bob.recv_type("inbox").await["total_unread"], 5);
}
