//! The server under test: a `sluice serve` child process the bench starts with the shared
//! launcher (`sluice_testkit::server`: embedded backends, temporary data dir, fresh secrets),
//! a Sluice run inside the bench's own process through the library (when the bench wraps a
//! backend), or a running server given by address. Also the clients every scenario needs:
//! user tokens, the gRPC client, `/metrics` and resident memory.

use crate::args::TargetArgs;
use anyhow::{Context, bail};
use sluice_core::auth::Auth;
pub use sluice_testkit::client::{Metrics, fetch_metrics, rss_of};
use sluice_testkit::server::{Secrets, Server};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A started server never outlives this, whatever happens to the bench.
const SERVER_MAX_RUNTIME: Duration = Duration::from_secs(7200);
/// The arguments every server the bench starts gets: the bench measures the server, not its
/// rate limiter, and the load comes from a handful of loopback addresses, thousands of sockets
/// a second (`connections` spreads up to 50,000 sockets over 1,000 users).
const SERVER_ARGS: [&str; 6] = ["--send-rate", "100000", "--handshake-rate-per-ip", "0", "--max-connections-per-user", "1000000"];

pub use sluice_proto::client::Client as Grpc;

/// How to start a server: the `sluice` program, extra arguments and environment.
pub struct Launch<'a> {
    pub program: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

enum Running {
    Child(Box<Server>),
    InProcess(sluice::Running),
    Remote { pid: Option<u32> },
}

pub struct Target {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    auth: Auth,
    running: Running,
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    /// The server given on the command line, or a new `sluice serve` started with `launch`.
    pub async fn open(args: &TargetArgs, launch: Launch<'_>) -> anyhow::Result<Target> {
        match (args.http, args.grpc) {
            (Some(http), Some(grpc)) => {
                let (Some(secret), Some(service)) = (&args.jwt_secret, &args.service_token) else {
                    bail!("benchmarking a running server needs its SLUICE_JWT_SECRET and SLUICE_SERVICE_TOKEN");
                };
                let auth = Auth::new(secret.as_bytes(), service);
                Ok(Target { http, grpc, auth, running: Running::Remote { pid: args.server_pid }, _dir: None })
            }
            _ => Target::start(launch, &args.server_args).await,
        }
    }

    /// Starts `sluice serve` on loopback ports chosen by the OS.
    pub async fn start(launch: Launch<'_>, extra: &[String]) -> anyhow::Result<Target> {
        let dir = tempfile::Builder::new().prefix("sluice-bench-").tempdir().context("cannot create a temporary data dir")?;
        let secrets = Secrets::random();
        let mut l = sluice_testkit::server::Launch::new(launch.program, "serve", &dir.path().join("data"))
            .args(SERVER_ARGS)
            .args(launch.args)
            .args(extra.iter().cloned())
            .env(&launch.env);
        l.max_runtime = SERVER_MAX_RUNTIME;
        l.secrets = Some(secrets.clone());
        l.log = Some(dir.path().join("server.log"));
        l.start_timeout = Duration::from_secs(120);
        let server = Server::start(l).await?;
        let auth = Auth::new(secrets.jwt_secret.as_bytes(), &secrets.service_token);
        Ok(Target { http: server.http, grpc: server.grpc, auth, running: Running::Child(Box::new(server)), _dir: Some(dir) })
    }

    /// Runs `sluice serve` inside this process with `args` (after the bench's own) on backends
    /// `wrap` may change (a slower store), on loopback ports chosen by the OS.
    pub async fn in_process(args: &[String], wrap: impl FnOnce(&mut sluice_core::backends::Backends)) -> anyhow::Result<Target> {
        let dir = tempfile::Builder::new().prefix("sluice-bench-").tempdir().context("cannot create a temporary data dir")?;
        let secrets = Secrets::random();
        let data = dir.path().join("data");
        let argv =
            ["--data-dir", data.to_str().context("a UTF-8 temporary dir")?, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]
                .into_iter()
                .chain(["--jwt-secret", &secrets.jwt_secret, "--service-token", &secrets.service_token])
                .chain(SERVER_ARGS)
                .map(String::from)
                .chain(args.iter().cloned());
        let args = sluice::config::ServeArgs::from_args(argv)?;
        let mut opened = sluice::Opened::from_config(&args).await?;
        wrap(&mut opened.backends);
        let running = sluice::start(opened, args, sluice::Roles::SERVE).await?;
        let (http, grpc) = running.http_grpc.context("a serve has ports")?;
        let auth = Auth::new(secrets.jwt_secret.as_bytes(), &secrets.service_token);
        Ok(Target { http, grpc, auth, running: Running::InProcess(running), _dir: Some(dir) })
    }

    /// A JWT for `user`, valid for a day.
    pub fn token(&self, user: &str) -> String {
        self.auth.mint_user(user, 86_400).expect("bench user ids are valid")
    }

    pub fn ws_url(&self, user: &str) -> String {
        format!("ws://{}/v1/ws?token={}", self.http, self.token(user))
    }

    pub async fn grpc(&self) -> anyhow::Result<Grpc> {
        sluice_testkit::client::grpc(self.grpc, self.auth.service_token()).await
    }

    /// Every sample of `/metrics`, keyed by name and labels as exposed
    /// (`sluice_aws_requests_total{op="Query",service="dynamodb"}`).
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        fetch_metrics(self.http).await
    }

    /// The server's process: a child's, the bench's own for a server in this process, or the
    /// one `--server-pid` names.
    pub fn pid(&self) -> Option<u32> {
        match &self.running {
            Running::Child(s) => s.pid(),
            Running::InProcess(_) => Some(std::process::id()),
            Running::Remote { pid } => *pid,
        }
    }

    /// Resident memory of the server process, when its PID is known (Linux).
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_of(self.pid()?)
    }

    /// The last lines of a started server's log, for error messages.
    pub fn log_tail(&self) -> String {
        match &self.running {
            Running::Child(s) => s.log_tail(20),
            _ => String::new(),
        }
    }

    /// Stops a started server (its figures are already read); a server given by address is
    /// left alone.
    pub async fn stop(self) {
        match self.running {
            Running::Child(s) => s.kill9().await,
            Running::InProcess(r) => {
                if let Err(e) = r.stop().await {
                    eprintln!("the in-process server did not stop cleanly: {e:#}");
                }
            }
            Running::Remote { .. } => {}
        }
    }
}

/// Raises this process's open-file limit to at least `want` (children inherit it). As root
/// the hard limit moves too; otherwise only up to it.
pub fn raise_nofile(want: u64) -> u64 {
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
    if soft >= want {
        return soft;
    }
    if rlimit::Resource::NOFILE.set(want, want.max(hard)).is_ok() {
        return want;
    }
    rlimit::increase_nofile_limit(want).unwrap_or(soft)
}
