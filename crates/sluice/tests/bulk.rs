//! Bulk campaigns through gRPC: a 10,000-recipient campaign drains with exact counters, and a
//! bulk burst does not hold up interactive sends (invariant 6).

mod common;

use common::{Server, check_recipients, wait_done};
use sluice_proto::v1;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10k_campaign_drains_with_every_recipient_at_unread_1() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::in_process(&dir.path().join("data"), &[]).await;
    let mut g = s.grpc().await;
    const N: usize = 10_000;
    let recipients: Vec<String> = (0..N).map(|i| format!("user{i:05}")).collect();
    let started = Instant::now();
    let r = g
        .enqueue_bulk(v1::EnqueueBulkRequest {
            campaign_id: "spring-sale".into(),
            sender: "shop-42".into(),
            recipients: recipients.clone(),
            body: "20% off today".into(),
            tenant: None,
        })
        .await
        .unwrap()
        .into_inner();
    let enqueued_in = started.elapsed();
    assert_eq!((r.campaign_id.as_str(), r.accepted), ("spring-sale", N as u64));
    let c = wait_done(&mut g, "spring-sale", Duration::from_secs(300)).await;
    let drained_in = started.elapsed();
    eprintln!(
        "FIGURE 10k campaign: enqueue {enqueued_in:?}, enqueue+drain {drained_in:?} ({:.0} msg/s)",
        N as f64 / drained_in.as_secs_f64()
    );
    assert_eq!((c.requested, c.enqueued, c.persisted, c.dead_lettered), (N as u64, N as u64, N as u64, 0));
    check_recipients(&g, "shop-42", &recipients, 1).await;
    // The one-offs that created the rooms made no rows for their sender.
    let inbox = g.get_inbox(v1::GetInboxRequest { user: "shop-42".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!((inbox.rooms.len(), inbox.total_unread), (0, 0), "a marketing sender's inbox does not list its campaign's rooms");

    // The scheduler retries the whole call: nothing is sent twice.
    let again = g
        .enqueue_bulk(v1::EnqueueBulkRequest {
            campaign_id: "spring-sale".into(),
            sender: "shop-42".into(),
            recipients: recipients[..100].to_vec(),
            body: "20% off today".into(),
            tenant: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.accepted, 100);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = wait_done(&mut g, "spring-sale", Duration::from_secs(60)).await;
    assert_eq!((c.requested, c.enqueued, c.persisted), (N as u64 + 100, N as u64, N as u64));
    check_recipients(&g, "shop-42", &recipients[..100], 1).await;
    let h = g
        .get_history(v1::GetHistoryRequest { room: "dm:shop-42:user00000".into(), before: None, after: None, limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.messages.len(), 1);
    assert_eq!((h.messages[0].kind.as_str(), h.messages[0].body.as_str()), ("one_off", "20% off today"));

    // A second campaign to the same people writes into rooms that exist: now the sender has one
    // row per recipient, and its inbox comes in pages (issue 16.5).
    g.enqueue_bulk(v1::EnqueueBulkRequest {
        campaign_id: "autumn-sale".into(),
        sender: "shop-42".into(),
        recipients: recipients.clone(),
        body: "30% off today".into(),
        tenant: None,
    })
    .await
    .unwrap();
    wait_done(&mut g, "autumn-sale", Duration::from_secs(300)).await;
    let first = g.get_inbox(v1::GetInboxRequest { user: "shop-42".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!((first.rooms.len(), first.total_unread), (200, 0), "a default page; the sender's own messages are never unread");
    let mut rooms = Vec::new();
    let mut after = String::new();
    loop {
        let page = g.get_inbox(v1::GetInboxRequest { user: "shop-42".into(), after, limit: 1_000 }).await.unwrap().into_inner();
        assert!(page.rooms.len() <= 1_000);
        rooms.extend(page.rooms.into_iter().map(|r| r.room));
        if page.next.is_empty() {
            break;
        }
        after = page.next;
    }
    assert_eq!(rooms.len(), N, "every room once over the pages");
    assert!(rooms.windows(2).all(|w| w[0] < w[1]), "ascending, no repeats");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_burst_does_not_hold_up_interactive_sends() {
    let dir = tempfile::tempdir().unwrap();
    // A deliberately slow bulk lane: one poller taking one message at a time.
    let s = Server::in_process(&dir.path().join("data"), &["--worker-concurrency", "1", "--worker-batch", "1"]).await;
    let mut g = s.grpc().await;
    let recipients: Vec<String> = (0..3000).map(|i| format!("u{i}")).collect();
    g.enqueue_bulk(v1::EnqueueBulkRequest {
        campaign_id: "burst".into(),
        sender: "shop".into(),
        recipients,
        body: "flash".into(),
        tenant: None,
    })
    .await
    .unwrap();
    let mut alice = s.ws("alice").await;
    let mut bob = s.ws("bob").await;
    for i in 0..5 {
        let ack = alice.say("dm:alice:bob", &i.to_string(), "are you there?").await;
        assert_eq!(ack["type"], "ack");
        assert_eq!(bob.recv_type("message").await["seq"], i + 1);
    }
    let c = g.get_campaign(v1::GetCampaignRequest { campaign_id: "burst".into(), tenant: None }).await.unwrap().into_inner();
    assert!(c.persisted < c.enqueued, "interactive sends completed while the bulk backlog was still draining: {c:?}");
    assert!(s.metric("sluice_queue_visible").await > 0.0 || c.persisted < c.enqueued);
}
