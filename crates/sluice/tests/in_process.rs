//! Sluice run inside the test's own process through the library's composition root
//! (`sluice::serve` with listeners the test bound and a shutdown token it holds): chat over
//! WebSocket, a campaign over gRPC drained by the worker in the same process, and a clean
//! stop when the token is cancelled. Tests that need signals or a SIGKILL start the binary.

mod common;

use common::{Server, wait_done};
use serde_json::json;
use sluice_proto::v1;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_runs_every_role_in_the_callers_process_and_stops_on_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::in_process(&dir.path().join("data"), &[]).await;
    let mut g = server.grpc().await;
    g.create_room(v1::CreateRoomRequest { room: "lobby".into(), members: vec!["ann".into(), "ben".into()] }).await.unwrap();
    let mut ann = server.ws("ann").await;
    let mut ben = server.ws("ben").await;
    let ack = ann.say("lobby", "c1", "hello").await;
    assert_eq!(ack["seq"], 1);
    assert_eq!(ben.recv_type("message").await["body"], "hello");

    let sent = g
        .enqueue_bulk(v1::EnqueueBulkRequest {
            campaign_id: "inproc".into(),
            sender: "shop".into(),
            recipients: vec!["ann".into(), "ben".into()],
            body: "sale".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.accepted, 2);
    wait_done(&mut g, "inproc", Duration::from_secs(30)).await;
    ben.send(json!({"type": "inbox"})).await;
    let inbox = ben.recv_type("inbox").await;
    assert!(inbox["rooms"].as_array().unwrap().iter().any(|r| r["room"] == sluice_core::ids::dm_room("shop", "ben")), "{inbox}");

    server.stop().await;
}

/// The threads of this process named `name`: each one's niceness and time on a CPU (ns).
fn threads_named(name: &str) -> Vec<(i32, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(stat), Ok(sched)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
            std::fs::read_to_string(dir.join("schedstat")),
        ) else {
            continue; // ended meanwhile
        };
        if comm.trim() == name {
            out.push((nice_in(&stat), sched.split(' ').next().unwrap().parse().unwrap()));
        }
    }
    out
}

/// The niceness in a `/proc/.../stat` line (field 19; fields after the name start at 3).
fn nice_in(stat: &str) -> i32 {
    stat[stat.rfind(')').unwrap() + 2..].split(' ').nth(16).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_runs_on_threads_below_chats_priority() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::in_process(&dir.path().join("data"), &[]).await;
    let chat_nice = nice_in(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    // A new thread names itself and sets its priority as it starts: wait for that.
    let niced = |t: &[(i32, u64)]| !t.is_empty() && t.iter().all(|(nice, _)| *nice == (chat_nice + 10).min(19));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut bulk = threads_named(sluice::bulk::THREAD_NAME);
    while !niced(&bulk) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        bulk = threads_named(sluice::bulk::THREAD_NAME);
    }
    assert!(!bulk.is_empty(), "serve on the embedded backends starts a bulk runtime");
    assert!(niced(&bulk), "10 below chat by default: {bulk:?}");

    // A paused campaign is accepted, then drained once resumed: what the bulk threads run
    // between the two is the worker's drain.
    let mut g = server.grpc().await;
    let scope = Some(v1::DrainScope { scope: Some(v1::drain_scope::Scope::CampaignId("niced".into())) });
    g.set_drain_control(v1::SetDrainControlRequest { scope: scope.clone(), paused: Some(true), rate: None }).await.unwrap();
    tokio::time::sleep(2 * sluice_core::control::REFRESH).await;
    let recipients: Vec<String> = (0..2000).map(|i| format!("u{i}")).collect();
    let bulk = v1::EnqueueBulkRequest {
        campaign_id: "niced".into(),
        sender: "shop".into(),
        recipients,
        body: "sale".into(),
        ..Default::default()
    };
    assert_eq!(g.enqueue_bulk(bulk).await.unwrap().into_inner().accepted, 2000);
    let cpu = || threads_named(sluice::bulk::THREAD_NAME).iter().map(|(_, ns)| ns).sum::<u64>();
    let before = cpu();
    g.set_drain_control(v1::SetDrainControlRequest { scope, paused: Some(false), rate: None }).await.unwrap();
    let done = wait_done(&mut g, "niced", Duration::from_secs(60)).await;
    assert_eq!(done.persisted, 2000);
    let used = cpu() - before;
    // Counting a CPU's time, not timing: 2,000 one-offs received, persisted and acked take
    // far more than a millisecond, and bulk threads without the drain only sleep.
    assert!(used >= 1_000_000, "the bulk threads ran the drain: {used} ns on a CPU");
    server.stop().await;
}
