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
