//! Operator control through the CLI against a running server: a paused campaign holds while
//! another tenant's drains, stays paused across a restart (SIGTERM), and drains exactly once
//! after `sluice campaign resume`; `sluice drain status` shows what is held; rates of a
//! campaign and a tenant are set and listed.

mod common;

use common::{Server, check_recipients, cli, wait_done};
use serde_json::Value;
use sluice_proto::v1;
use std::time::Duration;

fn control(s: &Server, args: &[&str]) -> String {
    let grpc = s.grpc.to_string();
    // The options may follow the action.
    let mut all = args.to_vec();
    all.extend(["--data-dir", s.data_dir.to_str().unwrap(), "--grpc-addr", &grpc]);
    cli(&all)
}

fn status(s: &Server, campaign: &str) -> Value {
    serde_json::from_str(&control(s, &["campaign", "status", campaign])).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_paused_from_the_cli_holds_across_a_restart_and_drains_once_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &[]).await;
    assert_eq!(control(&s, &["campaign", "pause", "held-one"]), "campaign held-one: paused, rate none");
    // Workers read the controls about once a second.
    tokio::time::sleep(2 * sluice_core::control::REFRESH).await;
    let mut g = s.grpc().await;
    let held: Vec<String> = (0..200).map(|i| format!("h{i}")).collect();
    let free: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    for (id, tenant, recipients) in [("held-one", "acme", &held), ("free-one", "globex", &free)] {
        let req = v1::EnqueueBulkRequest {
            campaign_id: id.into(),
            sender: format!("{tenant}-shop"),
            recipients: recipients.clone(),
            body: "sale".into(),
            tenant: Some(tenant.into()),
        };
        g.enqueue_bulk(req).await.unwrap();
    }
    wait_done(&mut g, "free-one", Duration::from_secs(60)).await;
    let held_status = status(&s, "held-one");
    assert_eq!((held_status["state"].as_str(), held_status["persisted"].as_u64()), (Some("paused"), Some(0)), "{held_status}");
    assert_eq!(held_status["tenant"], "acme");
    // The worker holds the campaign's messages as they come up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !control(&s, &["drain", "status"]).contains("held messages: 200") {
        assert!(tokio::time::Instant::now() < deadline, "{}", control(&s, &["drain", "status"]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(control(&s, &["drain", "status"]).contains("campaign held-one: paused"));

    s.stop().await;
    let s = Server::start(&data, &[]).await;
    let mut g = s.grpc().await;
    tokio::time::sleep(3 * sluice_core::control::REFRESH).await;
    assert_eq!(status(&s, "held-one")["state"], "paused", "the pause survives a restart");
    assert_eq!(status(&s, "held-one")["persisted"], 0);

    assert_eq!(control(&s, &["campaign", "resume", "held-one"]), "campaign held-one: running, rate none");
    let done = wait_done(&mut g, "held-one", Duration::from_secs(60)).await;
    assert_eq!((done.persisted, done.dead_lettered, done.state.as_str()), (200, 0, "done"));
    check_recipients(&g, "acme-shop", &held, 1).await;
    assert_eq!(control(&s, &["drain", "status"]), "no controls: the whole drain runs\nheld messages: 0");

    // Rates of one campaign and one tenant (the worker side: sluice-gateway's campaigns tests).
    assert_eq!(control(&s, &["campaign", "rate", "next", "50"]), "campaign next: running, rate 50 msg/s");
    assert_eq!(control(&s, &["drain", "--tenant", "acme", "rate", "2.5"]), "tenant acme: running, rate 2.5 msg/s");
    let listed = control(&s, &["drain", "status"]);
    assert!(
        listed.contains("campaign next: running, rate 50 msg/s") && listed.contains("tenant acme: running, rate 2.5 msg/s"),
        "{listed}"
    );
    assert_eq!(control(&s, &["campaign", "rate", "next", "0"]), "campaign next: running, rate none");
}
