//! Test support of this crate's tests: a Sluice to test, as a real `sluice` process (the
//! shared launcher, `sluice_testkit::server`) or inside the test's process through the library,
//! and what the distributed tests share (the emulators' environment, the rendered
//! deployment's).

// Each test binary uses a part of this module.
#![allow(dead_code, unreachable_pub, unused_imports)]

use futures::future::join_all;
use serde_json::{Value, json};
use sluice_proto::v1;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");
pub use sluice_testkit::client::{RECV_TIMEOUT, Ws, http_get, http_get_with};

/// A running Sluice: a real `sluice` process (the shared launcher, `sluice_testkit::server`)
/// or one inside the test's process through the library (`sluice::start`), with the shortcuts
/// a test wants. It panics where a test should fail.
pub struct Server {
    /// The gateway's ports; `0.0.0.0:0` for a worker.
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// The admin listener, when started with `--admin-addr`.
    pub admin: Option<SocketAddr>,
    pub data_dir: PathBuf,
    run: Run,
}

enum Run {
    Child(Box<sluice_testkit::server::Server>),
    InProcess(sluice::Running),
}

impl Server {
    /// The secrets of a server in the test's process.
    pub const JWT_SECRET: &str = "in-process-test-secret-in-process-test";
    pub const SERVICE_TOKEN: &str = "in-process-service-token";

    /// Starts `sluice serve` on `data_dir` with ports chosen by the OS, as a process.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_role("serve", data_dir, extra, &[]).await
    }

    /// Starts `sluice <role>` (`serve`, `gateway` or `worker`) with extra arguments and
    /// environment, as a process. A worker has no ports: `http` and `grpc` are then 0.0.0.0:0.
    pub async fn start_role(role: &str, data_dir: &Path, extra: &[&str], env: &[(String, String)]) -> Server {
        let launch = sluice_testkit::server::Launch::new(BIN, role, data_dir).args(extra.iter().copied()).env(env);
        let child = sluice_testkit::server::Server::start(launch).await.unwrap_or_else(|e| panic!("{e:#}"));
        Server {
            http: child.http,
            grpc: child.grpc,
            admin: child.admin,
            data_dir: data_dir.to_path_buf(),
            run: Run::Child(Box::new(child)),
        }
    }

    /// Runs `sluice serve` on `data_dir` inside the test's process, with the secrets above:
    /// for tests that need no signal, no kill and no second process.
    pub async fn in_process(data_dir: &Path, extra: &[&str]) -> Server {
        Server::in_process_with(data_dir, extra, |_| {}).await
    }

    /// [`Server::in_process`] on backends `wrap` may change (a failing store).
    pub async fn in_process_with(data_dir: &Path, extra: &[&str], wrap: impl FnOnce(&mut sluice_core::backends::Backends)) -> Server {
        let secrets = ["--jwt-secret", Self::JWT_SECRET, "--service-token", Self::SERVICE_TOKEN];
        Server::in_process_args(data_dir, secrets.into_iter().chain(extra.iter().copied()), wrap).await
    }

    /// [`Server::in_process`] as a developer runs it: no JWT secret configured (one is
    /// generated into the data dir), so the page's development sign-in is on.
    /// [`Server::token`] does not apply.
    pub async fn in_process_dev(data_dir: &Path, extra: &[&str]) -> Server {
        let secrets = ["--service-token", Self::SERVICE_TOKEN];
        Server::in_process_args(data_dir, secrets.into_iter().chain(extra.iter().copied()), |_| {}).await
    }

    async fn in_process_args<'a>(
        data_dir: &'a Path,
        args: impl Iterator<Item = &'a str>,
        wrap: impl FnOnce(&mut sluice_core::backends::Backends),
    ) -> Server {
        let argv =
            ["--data-dir", data_dir.to_str().unwrap(), "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"].into_iter().chain(args);
        let args = sluice::config::ServeArgs::from_args(argv).unwrap();
        let mut opened = sluice::Opened::from_config(&args).await.unwrap();
        wrap(&mut opened.backends);
        let running = sluice::start(opened, args, sluice::Roles::SERVE).await.unwrap();
        let (http, grpc) = running.http_grpc.unwrap();
        Server { http, grpc, admin: running.admin, data_dir: data_dir.to_path_buf(), run: Run::InProcess(running) }
    }

    /// SIGKILL: no shutdown, no flush (a process only).
    pub async fn kill9(self) {
        match self.run {
            Run::Child(c) => c.kill9().await,
            Run::InProcess(_) => panic!("a server in the test's process cannot be killed"),
        }
    }

    /// The process id of a server started as a process.
    pub fn pid(&self) -> Option<u32> {
        match &self.run {
            Run::Child(c) => c.pid(),
            Run::InProcess(_) => None,
        }
    }

    /// SIGTERM (or, in the test's process, its shutdown token), then waits for a clean exit.
    pub async fn stop(self) {
        match self.run {
            Run::Child(c) => c.stop().await.unwrap_or_else(|e| panic!("clean exit after SIGTERM: {e:#}")),
            Run::InProcess(r) => {
                tokio::time::timeout(Duration::from_secs(30), r.stop()).await.expect("stops once its token is cancelled").unwrap()
            }
        }
    }

    pub fn token(&self, user: &str) -> String {
        match &self.run {
            Run::Child(c) => c.token(user),
            Run::InProcess(_) => {
                sluice_core::auth::Auth::new(Self::JWT_SECRET.as_bytes(), Self::SERVICE_TOKEN).mint_user(user, 600).unwrap()
            }
        }
    }

    pub fn service_token(&self) -> String {
        match &self.run {
            Run::Child(c) => c.service_token(),
            Run::InProcess(_) => Self::SERVICE_TOKEN.to_string(),
        }
    }

    pub fn ws_url(&self, user: &str) -> String {
        format!("ws://{}/v1/ws?token={}", self.http, self.token(user))
    }

    pub async fn ws(&self, user: &str) -> Ws {
        Ws::connect(&self.ws_url(user)).await
    }

    /// The HTTP status of a WebSocket handshake the server refuses (panics if it accepts).
    pub async fn ws_refused(&self, user: &str) -> u16 {
        match tokio_tungstenite::connect_async(self.ws_url(user)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
            Err(e) => panic!("the handshake failed without an HTTP answer: {e}"),
            Ok(_) => panic!("the handshake of {user} was accepted"),
        }
    }

    pub async fn grpc(&self) -> Grpc {
        sluice_testkit::client::grpc(self.grpc, &self.service_token()).await.unwrap()
    }

    /// GET `path` of the console's admin API with the service token, as JSON.
    pub async fn admin(&self, path: &str) -> Value {
        let auth = format!("Bearer {}", self.service_token());
        let (status, body) = http_get_with(self.http, path, &[("Authorization", &auth)]).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let body = http_get(self.admin.unwrap_or(self.http), "/metrics").await.1;
        body.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
    }
}

/// Runs the CLI and returns its trimmed stdout.
pub fn cli(args: &[&str]) -> String {
    sluice_testkit::server::cli(Path::new(BIN), args)
}

pub use sluice_proto::client::{Bearer, Client as Grpc};

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
