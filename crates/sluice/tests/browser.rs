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

/// A browser script running against a server: its output lines as they come, and its end.
struct Script {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Every line so far, for the failure message.
    seen: String,
}

impl Script {
    /// Starts `tests/browser/<name>` against the server at `http` with `env`.
    fn start(name: &str, http: std::net::SocketAddr, shots: &Path, env: &[(&str, String)]) -> Script {
        let playwright = root().join(".test-services/playwright/node_modules/playwright-core");
        assert!(
            playwright.join("package.json").exists(),
            "playwright-core is missing at {}: run scripts/install-test-deps.sh",
            playwright.display()
        );
        let chromium = std::env::var("SLUICE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(Path::new(&chromium).exists(), "no chromium at {chromium}: run scripts/install-test-deps.sh (Debian's chromium package)");
        let mut child = Command::new("node")
            .arg(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser")).join(name))
            .env("SLUICE_URL", format!("http://{http}"))
            .env("SLUICE_SERVICE_TOKEN", Server::SERVICE_TOKEN)
            .env("PLAYWRIGHT_CORE", playwright)
            .env("CHROMIUM", chromium)
            .env("SLUICE_SCREENSHOTS", shots)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                println!("{line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Script { child, lines, seen: String::new() }
    }

    /// Waits (at most 60 s) for the script to print `want`.
    async fn wait_for(&mut self, want: &str) {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no {want:?} within 60 s:\n{}", self.seen));
            let Some(line) = line else { panic!("the script ended before printing {want:?}:\n{}", self.seen) };
            self.seen.push_str(&line);
            self.seen.push('\n');
            if line == want {
                return;
            }
        }
    }

    /// Waits (at most 200 s) for the script to end, and fails unless every check passed.
    async fn finish(mut self) {
        let status =
            tokio::time::timeout(Duration::from_secs(200), self.child.wait()).await.expect("the browser script ends within 200 s").unwrap();
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        assert!(status.success(), "browser script failed ({status}); its errors are above:\n{}", self.seen);
    }
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
    Script::start("chat.cjs", server.http, &shots, &[("SLUICE_LONG_ROOM_MESSAGES", LONG.to_string())]).finish().await;
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
    let mut script = Script::start(
        "console.cjs",
        server.http,
        &shots,
        &[("SLUICE_CAMPAIGN", CAMPAIGN.into()), ("SLUICE_RECIPIENTS", RECIPIENTS.to_string())],
    );
    // The page signs in and caps the drain; then the campaign goes in over gRPC.
    script.wait_for("ready").await;
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
    script.finish().await;
    chat.abort();
    let c = common::wait_done(&mut g, CAMPAIGN, Duration::from_secs(5)).await;
    assert_eq!((c.persisted, c.dead_lettered), (RECIPIENTS as u64, 0), "every message persisted once");
    server.stop().await;
}
