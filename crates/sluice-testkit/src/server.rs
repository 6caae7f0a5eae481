//! The one launcher of a real `sluice` process, for the tests and the benchmarks: a role
//! (`serve`, `gateway` or `worker`) on loopback ports the OS picks, its log in a file, a
//! runtime limit so that it never outlives its caller, and the credentials to talk to it.

use crate::client::{self, Metrics};
use anyhow::{Context, bail};
use sluice_core::auth::Auth;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The two secrets a server runs with, when the launcher chooses them.
#[derive(Clone)]
pub struct Secrets {
    pub jwt_secret: String,
    pub service_token: String,
}

impl Secrets {
    /// Fresh random secrets.
    pub fn random() -> Secrets {
        let hex = || uuid::Uuid::new_v4().simple().to_string();
        Secrets { jwt_secret: format!("{}{}", hex(), hex()), service_token: hex() }
    }
}

/// How to start a `sluice` process.
pub struct Launch {
    pub program: PathBuf,
    /// `serve`, `gateway` or `worker`.
    pub role: String,
    pub data_dir: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The process stops by itself after this long (`--max-runtime-secs`).
    pub max_runtime: Duration,
    /// Secrets passed to the process, which tokens are then minted with here. Without them the
    /// process keeps its own in its data dir, and tokens come from `sluice token`.
    pub secrets: Option<Secrets>,
    /// `SLUICE_LOG` of the process.
    pub log_filter: String,
    /// Where its stderr goes; next to the data dir when not set.
    pub log: Option<PathBuf>,
    /// How long it may take to print its listening line.
    pub start_timeout: Duration,
}

impl Launch {
    pub fn new(program: impl Into<PathBuf>, role: &str, data_dir: &Path) -> Launch {
        Launch {
            program: program.into(),
            role: role.to_string(),
            data_dir: data_dir.to_path_buf(),
            args: vec![],
            env: vec![],
            max_runtime: Duration::from_secs(600),
            secrets: None,
            log_filter: "warn".into(),
            log: None,
            start_timeout: Duration::from_secs(60),
        }
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Launch {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, env: &[(String, String)]) -> Launch {
        self.env.extend(env.iter().cloned());
        self
    }
}

/// A running `sluice` process. It is killed when dropped.
pub struct Server {
    /// The gateway's ports; `0.0.0.0:0` for a worker, which has none.
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// The admin listener, when started with `--admin-addr`.
    pub admin: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    program: PathBuf,
    auth: Option<Auth>,
    child: tokio::process::Child,
}

impl Server {
    /// Starts the process and waits for the line that names its ports.
    pub async fn start(launch: Launch) -> anyhow::Result<Server> {
        let log = launch.log.clone().unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
            launch.data_dir.with_extension(format!("log.{nanos}"))
        });
        let mut cmd = tokio::process::Command::new(&launch.program);
        cmd.arg(&launch.role).arg("--data-dir").arg(&launch.data_dir);
        if launch.role != "worker" {
            cmd.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
        }
        cmd.args(["--max-runtime-secs", &launch.max_runtime.as_secs().max(1).to_string()])
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SLUICE_LOG", &launch.log_filter);
        if let Some(s) = &launch.secrets {
            cmd.env("SLUICE_JWT_SECRET", &s.jwt_secret).env("SLUICE_SERVICE_TOKEN", &s.service_token);
        }
        let stderr = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", launch.program.display()))?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let line = match tokio::time::timeout(launch.start_timeout, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => {
                bail!("sluice {} did not start ({other:?}); its log:\n{}", launch.role, std::fs::read_to_string(&log).unwrap_or_default())
            }
        };
        let field = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key));
        let addr = |key: &str| -> anyhow::Result<SocketAddr> {
            match field(key) {
                Some(v) => v.parse().with_context(|| format!("{key}{v} in {line:?}")),
                None if launch.role == "worker" => Ok(SocketAddr::from(([0, 0, 0, 0], 0))),
                None => bail!("no {key} in {line:?}"),
            }
        };
        let admin = field("admin=").map(str::parse).transpose().context("admin=")?;
        Ok(Server {
            http: addr("http=")?,
            grpc: addr("grpc=")?,
            admin,
            data_dir: launch.data_dir,
            log,
            program: launch.program,
            auth: launch.secrets.map(|s| Auth::new(s.jwt_secret.as_bytes(), &s.service_token)),
            child,
        })
    }

    /// A user token valid for a day: minted here when the launcher chose the secrets, else by
    /// `sluice token` from the data dir.
    pub fn token(&self, user: &str) -> String {
        match &self.auth {
            Some(auth) => auth.mint_user(user, 86_400).expect("a valid user id"),
            None => self.cli(&["token", "--data-dir", self.data_dir.to_str().expect("utf-8 path"), "--user", user]),
        }
    }

    pub fn service_token(&self) -> String {
        match &self.auth {
            Some(auth) => auth.service_token().to_string(),
            None => self.cli(&["token", "--data-dir", self.data_dir.to_str().expect("utf-8 path"), "--service"]),
        }
    }

    /// Runs the same program with `args` and returns its trimmed stdout (panics on failure).
    pub fn cli(&self, args: &[&str]) -> String {
        cli(&self.program, args)
    }

    pub fn ws_url(&self, user: &str) -> String {
        format!("ws://{}/v1/ws?token={}", self.http, self.token(user))
    }

    pub async fn grpc(&self) -> anyhow::Result<sluice_proto::client::Client> {
        client::grpc(self.grpc, &self.service_token()).await
    }

    /// `/metrics`, from the admin listener when there is one.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        client::fetch_metrics(self.admin.unwrap_or(self.http)).await
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Resident memory of the process (Linux).
    pub fn rss_bytes(&self) -> Option<u64> {
        client::rss_of(self.pid()?)
    }

    /// The last `n` lines of its log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGKILL: no shutdown, no flush.
    pub async fn kill9(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then waits for the exit; fails unless it exits cleanly within 30 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().context("the process has already exited")?;
        let sent = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.context("no exit within 30 s of SIGTERM")??;
        anyhow::ensure!(status.success(), "exit after SIGTERM: {status}; its log:\n{}", self.log_tail(20));
        Ok(())
    }
}

/// Runs `program` with `args` and returns its trimmed stdout (panics on failure).
pub fn cli(program: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(program).args(args).output().expect("run sluice");
    assert!(out.status.success(), "sluice {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}
