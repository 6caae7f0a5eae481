//! The web chat client and the operations console in a real browser: Debian's chromium,
//! driven by playwright-core from npm (both installed by `scripts/install-test-deps.sh`),
//! against a Sluice in this process. The scenarios are the scripts in `tests/browser/`;
//! each prints its checks and exits non-zero on the first that fails.
//!
//! Screenshots go to a temporary directory, or to `docs/screenshots` with
//! `SLUICE_UPDATE_SCREENSHOTS=1` (how the README's pictures are made).

mod common;

use common::Server;
use sluice_proto::v1;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).canonicalize().unwrap()
}

/// The browser script `name`, ready to run against the server at `http`.
fn script(name: &str, http: std::net::SocketAddr, shots: &Path) -> Command {
    let playwright = root().join(".test-services/playwright/node_modules/playwright-core");
    assert!(
        playwright.join("package.json").exists(),
        "playwright-core is missing at {}: run scripts/install-test-deps.sh",
        playwright.display()
    );
    let chromium = std::env::var("SLUICE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "no chromium at {chromium}: run scripts/install-test-deps.sh (Debian's chromium package)");
    let mut cmd = Command::new("node");
    cmd.arg(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser")).join(name))
        .env("SLUICE_URL", format!("http://{http}"))
        .env("SLUICE_SERVICE_TOKEN", Server::SERVICE_TOKEN)
        .env("PLAYWRIGHT_CORE", playwright)
        .env("CHROMIUM", chromium)
        .env("SLUICE_SCREENSHOTS", shots)
        .kill_on_drop(true);
    cmd
}

fn screenshots(tmp: &Path) -> PathBuf {
    if std::env::var("SLUICE_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let dir = root().join("docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    } else {
        tmp.to_path_buf()
    }
}

/// Waits for the script to end and fails with its output unless it succeeded.
async fn finish(child: tokio::process::Child, seen: String) {
    let out = tokio::time::timeout(Duration::from_secs(200), child.wait_with_output())
        .await
        .expect("the browser script ends within 200 s")
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{seen}{stdout}");
    assert!(out.status.success(), "browser script failed ({}):\n{seen}{stdout}\n{stderr}", out.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_and_a_network_drop_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::in_process_dev(&dir.path().join("data"), &[]).await;
    // A room with a long history for the scroll-back.
    const LONG: u64 = 120;
    let mut g = server.grpc().await;
    g.create_room(v1::CreateRoomRequest { room: "lobby".into(), members: vec!["alice".into(), "carol".into()] }).await.unwrap();
    for i in 1..=LONG {
        let send = v1::SendMessageRequest {
            room: "lobby".into(),
            sender: "carol".into(),
            body: format!("lobby {i}"),
            client_msg_id: format!("l{i}"),
        };
        g.send_message(send).await.unwrap();
    }
    let shots = screenshots(dir.path());
    let child = script("chat.cjs", server.http, &shots)
        .env("SLUICE_LONG_ROOM_MESSAGES", LONG.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    finish(child, String::new()).await;
    // What the page showed is what the store holds.
    let h = g.get_history(v1::GetHistoryRequest { room: "dm:alice:bob".into(), ..Default::default() }).await.unwrap().into_inner();
    let bodies: Vec<&str> = h.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(
        bodies,
        ["hello bob", "hi alice", "while you were away 1", "while you were away 2", "while you were away 3", "sent while offline"]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_follows_a_campaign_sent_over_grpc_to_done() {
    const CAMPAIGN: &str = "console-test";
    const RECIPIENTS: usize = 8000;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::in_process_dev(&dir.path().join("data"), &[]).await;
    let shots = screenshots(dir.path());
    let mut child = script("console.cjs", server.http, &shots)
        .env("SLUICE_CAMPAIGN", CAMPAIGN)
        .env("SLUICE_RECIPIENTS", RECIPIENTS.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    // The page signs in and caps the drain; then the campaign goes in over gRPC.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    loop {
        let line =
            tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await.expect("the console is ready within 60 s").unwrap();
        let Some(line) = line else { break };
        seen.push_str(&line);
        seen.push('\n');
        if line == "ready" {
            break;
        }
    }
    assert!(seen.ends_with("ready\n"), "the script ended before it was ready:\n{seen}");
    let mut g = server.grpc().await;
    // Chat goes on while the campaign drains, so the latency chart has something to show.
    let chat = tokio::spawn({
        let mut g = g.clone();
        async move {
            g.create_room(v1::CreateRoomRequest { room: "lobby".into(), members: vec!["ann".into(), "ben".into()] }).await.unwrap();
            for i in 0.. {
                let send = v1::SendMessageRequest {
                    room: "lobby".into(),
                    sender: "ann".into(),
                    body: format!("chat {i}"),
                    client_msg_id: format!("c{i}"),
                };
                g.send_message(send).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let recipients: Vec<String> = (0..RECIPIENTS).map(|i| format!("shopper-{i}")).collect();
    let r = g
        .enqueue_bulk(v1::EnqueueBulkRequest {
            campaign_id: CAMPAIGN.into(),
            sender: "shop".into(),
            recipients,
            body: "sale".into(),
            tenant: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, RECIPIENTS as u64);
    // The rest of the output, then the verdict.
    let rest = tokio::spawn(async move {
        let mut more = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            more.push_str(&line);
            more.push('\n');
        }
        more
    });
    let status = tokio::time::timeout(Duration::from_secs(200), child.wait()).await.expect("the browser script ends within 200 s").unwrap();
    chat.abort();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).await.unwrap();
    let out = format!("{seen}{}", rest.await.unwrap());
    println!("{out}");
    assert!(status.success(), "browser script failed ({status}):\n{out}\n{stderr}");
    let c = common::wait_done(&mut g, CAMPAIGN, Duration::from_secs(5)).await;
    assert_eq!((c.persisted, c.dead_lettered), (RECIPIENTS as u64, 0), "every message persisted once");
    server.stop().await;
}
