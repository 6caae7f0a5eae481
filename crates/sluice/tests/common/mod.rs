//! Test support: the real `sluice` binary on free loopback ports, and real WebSocket and
//! gRPC clients.

#![allow(dead_code, unreachable_pub)]

use futures::future::join_all;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sluice_proto::v1;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");
/// A test server never outlives this, whatever happens to the test.
const MAX_RUNTIME_SECS: &str = "600";
pub const RECV_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `sluice serve` process.
pub struct Server {
    child: tokio::process::Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// The admin listener, when started with `--admin-addr`.
    pub admin: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// Starts `sluice serve` on `data_dir` with ports chosen by the OS.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_role("serve", data_dir, extra, &[]).await
    }

    /// Starts `sluice <role>` (`serve`, `gateway` or `worker`) with extra arguments and
    /// environment. A worker has no ports: `http` and `grpc` are then 0.0.0.0:0.
    pub async fn start_role(role: &str, data_dir: &Path, extra: &[&str], env: &[(String, String)]) -> Server {
        let log = data_dir
            .with_extension(format!("log.{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()));
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.arg(role).arg("--data-dir").arg(data_dir);
        if role != "worker" {
            cmd.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .args(["--max-runtime-secs", MAX_RUNTIME_SECS])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sluice");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let line = match line {
            Ok(Ok(Some(l))) => l,
            other => panic!("sluice {role} did not start ({other:?}); its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()),
        };
        let addr = |key: &str| -> SocketAddr {
            match line.split_whitespace().find_map(|w| w.strip_prefix(key)) {
                Some(v) => v.parse().unwrap(),
                None if role == "worker" => "0.0.0.0:0".parse().unwrap(),
                None => panic!("no {key} in {line:?}"),
            }
        };
        let admin = line.split_whitespace().find_map(|w| w.strip_prefix("admin=")).map(|v| v.parse().unwrap());
        Server { http: addr("http="), grpc: addr("grpc="), admin, data_dir: data_dir.to_path_buf(), log, child }
    }

    /// SIGKILL: no shutdown, no flush.
    pub async fn kill9(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(mut self) {
        let pid = self.child.id().expect("running").to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.expect("exits after SIGTERM").unwrap();
        assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    }

    pub fn token(&self, user: &str) -> String {
        cli(&["token", "--data-dir", self.data_dir.to_str().unwrap(), "--user", user])
    }

    pub fn service_token(&self) -> String {
        cli(&["token", "--data-dir", self.data_dir.to_str().unwrap(), "--service"])
    }

    pub async fn ws(&self, user: &str) -> Ws {
        Ws::connect(&format!("ws://{}/v1/ws?token={}", self.http, self.token(user))).await
    }

    /// The HTTP status of a WebSocket handshake the server refuses (panics if it accepts).
    pub async fn ws_refused(&self, user: &str) -> u16 {
        match tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?token={}", self.http, self.token(user))).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
            Err(e) => panic!("the handshake failed without an HTTP answer: {e}"),
            Ok(_) => panic!("the handshake of {user} was accepted"),
        }
    }

    pub async fn grpc(&self) -> Grpc {
        sluice_proto::client::connect(self.grpc, Bearer::service(&self.service_token()).unwrap()).await.unwrap()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let body = http_get(self.admin.unwrap_or(self.http), "/metrics").await.1;
        body.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
    }
}

/// `sluice serve` run inside the test's process through the library's composition root
/// (`sluice::serve`), on loopback ports the OS picks, with fixed secrets.
pub struct InProcess {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    pub const JWT_SECRET: &str = "in-process-test-secret-in-process-test";
    pub const SERVICE_TOKEN: &str = "in-process-service-token";

    pub async fn start(data_dir: &Path) -> InProcess {
        let argv =
            ["sluice", "serve", "--data-dir", data_dir.to_str().unwrap(), "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]
                .into_iter()
                .chain(["--jwt-secret", Self::JWT_SECRET, "--service-token", Self::SERVICE_TOKEN]);
        let args = match clap::Parser::try_parse_from(argv).map(|c: sluice::config::Cli| c.command) {
            Ok(sluice::config::Command::Serve(args)) => args,
            other => panic!("not a serve command line: {other:?}"),
        };
        let listeners = sluice::Listeners::bind(&args, sluice::Roles::SERVE).await.unwrap();
        let (http, grpc) = {
            let (h, g) = listeners.http_grpc.as_ref().unwrap();
            (h.local_addr().unwrap(), g.local_addr().unwrap())
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(sluice::serve(args, sluice::Roles::SERVE, listeners, shutdown.clone()));
        InProcess { http, grpc, shutdown, task }
    }

    pub async fn grpc(&self) -> Grpc {
        sluice_proto::client::connect(self.grpc, Bearer::service(Self::SERVICE_TOKEN).unwrap()).await.unwrap()
    }

    pub fn token(&self, user: &str) -> String {
        sluice_gateway::Auth::new(Self::JWT_SECRET.as_bytes(), Self::SERVICE_TOKEN).mint_user(user, 600).unwrap()
    }

    pub async fn ws(&self, user: &str) -> Ws {
        Ws::connect(&format!("ws://{}/v1/ws?token={}", self.http, self.token(user))).await
    }

    /// Cancels its shutdown token and waits for a clean end.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task).await.expect("stops once its token is cancelled").unwrap().unwrap();
    }
}

/// Runs the CLI and returns its trimmed stdout.
pub fn cli(args: &[&str]) -> String {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "sluice {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A plain HTTP/1.1 GET over a raw socket; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf[9..12].parse().unwrap();
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

pub use sluice_proto::client::{Bearer, Client as Grpc};

/// A WebSocket client speaking the v1 JSON frames.
pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        Ws { stream }
    }

    pub async fn send(&mut self, v: Value) {
        self.stream.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.stream.send(m).await.unwrap();
    }

    /// The next JSON frame (pings and pongs skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(RECV_TIMEOUT, self.stream.next()).await.expect("a frame in time").expect("open").unwrap();
            match m {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next frame of type `t`, skipping others.
    pub async fn recv_type(&mut self, t: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == t {
                return v;
            }
        }
    }

    /// Sends a message and waits for its ack (or error).
    pub async fn say(&mut self, room: &str, id: &str, body: &str) -> Value {
        self.send(json!({"type": "send", "room": room, "client_msg_id": id, "body": body})).await;
        loop {
            let v = self.recv().await;
            if (v["type"] == "ack" || v["type"] == "error") && v.get("client_msg_id").or(v.get("ref")) == Some(&json!(id)) {
                return v;
            }
        }
    }

    /// Whether any frame arrives within `d` (for "nothing was sent" checks).
    pub async fn quiet_for(&mut self, d: Duration) -> Option<Value> {
        match tokio::time::timeout(d, self.stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => Some(serde_json::from_str(&t).unwrap()),
            _ => None,
        }
    }
}

/// The environment of every process on the distributed backends: the emulators' AWS
/// endpoints (DynamoDB at `dynamodb`, which may be a fault proxy; SQS and Kinesis behind the
/// proxy throttling part of the SQS calls and refusing part of each PutRecords call), test
/// credentials, Redis and one resource prefix.
pub fn aws_env(prefix: &str, redis_url: &str, dynamodb: &str) -> Vec<(String, String)> {
    let (sqs, kinesis) = (sluice_testkit::services::sqs_url(), sluice_testkit::services::kinesis_url());
    [
        ("SLUICE_BACKEND", "aws"),
        ("SLUICE_RESOURCE_PREFIX", prefix),
        ("SLUICE_REDIS_URL", redis_url),
        ("SLUICE_SQS_CLIENT_SIDE_WAIT", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ENDPOINT_URL_DYNAMODB", dynamodb),
        ("AWS_ENDPOINT_URL_SQS", &sqs),
        ("AWS_ENDPOINT_URL_KINESIS", &kinesis),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The environment deploy/kubernetes gives `component`'s container in `overlay`, rendered
/// with `kubectl kustomize` (deploy/check.py env): its ConfigMap and plain values, without
/// the Secret's (tests bring their own). Asserts the container runs that role.
pub fn rendered_env(overlay: &str, component: &str) -> Vec<(String, String)> {
    let check = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/check.py");
    let out = std::process::Command::new(sluice_testkit::services::deploy_tools_python())
        .args([check, "env", overlay, component])
        .output()
        .expect("run deploy/check.py env");
    assert!(out.status.success(), "deploy/check.py env {overlay} {component}: {}", String::from_utf8_lossy(&out.stderr));
    let rendered: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rendered["args"], json!([component]), "the {component} container runs `sluice {component}`");
    rendered["env"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect()
}

/// Polls GetCampaign until `done`, failing after `limit`.
pub async fn wait_done(g: &mut Grpc, campaign: &str, limit: Duration) -> v1::GetCampaignResponse {
    let deadline = Instant::now() + limit;
    let mut shown = Instant::now();
    loop {
        let c = g.get_campaign(v1::GetCampaignRequest { campaign_id: campaign.into(), tenant: None }).await.unwrap().into_inner();
        if c.done {
            return c;
        }
        assert!(Instant::now() < deadline, "campaign not done in {limit:?}: {c:?}");
        if shown.elapsed() > Duration::from_secs(10) {
            // What a run that dies at the harness's time limit leaves in its log.
            eprintln!("waiting for campaign {campaign}: {c:?}");
            shown = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every recipient's inbox: exactly the direct room with `sender`, at `unread`, its last seq 1.
pub async fn check_recipients(g: &Grpc, sender: &str, recipients: &[String], unread: u64) {
    for chunk in recipients.chunks(200) {
        let calls = chunk.iter().map(|r| {
            let mut g = g.clone();
            let r = r.clone();
            async move { (r.clone(), g.get_inbox(v1::GetInboxRequest { user: r, ..Default::default() }).await.unwrap().into_inner()) }
        });
        for (r, inbox) in join_all(calls).await {
            let room = sluice_core::ids::dm_room(sender, &r);
            let row = inbox.rooms.iter().find(|x| x.room == room).unwrap_or_else(|| panic!("{r} has no room {room}: {inbox:?}"));
            assert_eq!(
                (inbox.rooms.len(), row.unread, row.last_seq, inbox.total_unread),
                (1, unread, 1, unread),
                "{r}: exactly one message"
            );
        }
    }
}
