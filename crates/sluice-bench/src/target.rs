//! The server under test: a `sluice serve` child process the bench starts (embedded backends,
//! temporary data dir, fresh secrets) or a running server given by address. Also the clients
//! every scenario needs: user tokens, the gRPC client, `/metrics` and resident memory.

use crate::args::TargetArgs;
use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_gateway::Auth;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A started server never outlives this, whatever happens to the bench.
const SERVER_MAX_RUNTIME_SECS: &str = "7200";
/// Sends per second allowed per connection on a started server: the bench measures the
/// server, not its rate limiter.
const SERVER_SEND_RATE: &str = "100000";

pub use sluice_proto::client::Client as Grpc;

/// A gRPC client of the server at `addr`, calling with the service token.
pub async fn connect(addr: std::net::SocketAddr, service_token: &str) -> anyhow::Result<Grpc> {
    let bearer = sluice_proto::client::Bearer::service(service_token)?;
    sluice_proto::client::connect(addr, bearer).await.with_context(|| format!("cannot connect to gRPC at {addr}"))
}

/// How to start a server: the `sluice` program, extra arguments and environment.
pub struct Launch<'a> {
    pub program: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

pub struct Target {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    auth: Auth,
    service_token: String,
    pid: Option<u32>,
    child: Option<tokio::process::Child>,
    log: Option<PathBuf>,
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
                Ok(Target {
                    http,
                    grpc,
                    auth: Auth::new(secret.as_bytes(), service),
                    service_token: service.clone(),
                    pid: args.server_pid,
                    child: None,
                    log: None,
                    _dir: None,
                })
            }
            _ => Target::start(launch, &args.server_args).await,
        }
    }

    /// Starts `sluice serve` on loopback ports chosen by the OS.
    pub async fn start(launch: Launch<'_>, extra: &[String]) -> anyhow::Result<Target> {
        let dir = tempfile::Builder::new().prefix("sluice-bench-").tempdir().context("cannot create a temporary data dir")?;
        let (secret, service) = (uuid::Uuid::new_v4().simple().to_string(), uuid::Uuid::new_v4().simple().to_string());
        let log = dir.path().join("server.log");
        let mut child = tokio::process::Command::new(launch.program)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .args(["--send-rate", SERVER_SEND_RATE, "--max-runtime-secs", SERVER_MAX_RUNTIME_SECS])
            // The load comes from a handful of loopback addresses, thousands of sockets a second,
            // and `connections` spreads up to 50,000 sockets over 1,000 users.
            .args(["--handshake-rate-per-ip", "0", "--max-connections-per-user", "1000000"])
            .args(&launch.args)
            .args(extra)
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SLUICE_JWT_SECRET", &secret)
            .env("SLUICE_SERVICE_TOKEN", &service)
            .env("SLUICE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", launch.program.display()))?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let line = match tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            _ => bail!("the server did not start; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()),
        };
        let addr = |key: &str| -> anyhow::Result<SocketAddr> {
            let v = line.split_whitespace().find_map(|w| w.strip_prefix(key)).with_context(|| format!("no {key} in {line:?}"))?;
            Ok(v.parse()?)
        };
        Ok(Target {
            http: addr("http=")?,
            grpc: addr("grpc=")?,
            auth: Auth::new(secret.as_bytes(), &service),
            service_token: service,
            pid: child.id(),
            child: Some(child),
            log: Some(log),
            _dir: Some(dir),
        })
    }

    /// A JWT for `user`, valid for a day.
    pub fn token(&self, user: &str) -> String {
        self.auth.mint_user(user, 86_400).expect("bench user ids are valid")
    }

    pub fn ws_url(&self, user: &str) -> String {
        format!("ws://{}/v1/ws?token={}", self.http, self.token(user))
    }

    pub async fn grpc(&self) -> anyhow::Result<Grpc> {
        connect(self.grpc, &self.service_token).await
    }

    /// Every sample of `/metrics`, keyed by name and labels as exposed
    /// (`sluice_aws_requests_total{op="Query",service="dynamodb"}`).
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        fetch_metrics(self.http).await
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Resident memory of the server process, when its PID is known (Linux).
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_of(self.pid?)
    }

    /// The last lines of a started server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = self.log.as_ref().and_then(|l| std::fs::read_to_string(l).ok()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Kills a started server (its figures are already read); a server given by address is
    /// left alone.
    pub async fn stop(mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        }
    }
}

/// `VmRSS` of a process, from /proc.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// A parsed Prometheus text exposition.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub HashMap<String, f64>);

/// `/metrics` of the server whose HTTP port is `http`.
pub async fn fetch_metrics(http: SocketAddr) -> anyhow::Result<Metrics> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://{http}/metrics").parse()?;
    let resp = client.get(uri).await.context("GET /metrics")?;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Metrics::parse(&String::from_utf8_lossy(&body)))
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let samples = text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        });
        Metrics(samples.collect())
    }

    /// The sum of every sample of `name` whose labels include all of `labels` (`service="sqs"`).
    pub fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.0.iter().filter(|(k, _)| k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(l))).map(|(_, v)| v).sum()
    }

    /// `self - before`, sample by sample.
    pub fn since(&self, before: &Metrics) -> Metrics {
        Metrics(self.0.iter().map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0.0))).collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sum_by_labels() {
        let m = Metrics::parse(
            "# HELP x\nsluice_aws_requests_total{op=\"Query\",service=\"dynamodb\"} 3\n\
             sluice_aws_requests_total{op=\"SendMessageBatch\",service=\"sqs\"} 2\nsluice_enqueued_total 7\n",
        );
        assert_eq!(m.sum("sluice_aws_requests_total", &[]), 5.0);
        assert_eq!(m.sum("sluice_aws_requests_total", &["service=\"sqs\""]), 2.0);
        assert_eq!(m.sum("sluice_enqueued_total", &[]), 7.0);
        let later = Metrics::parse("sluice_enqueued_total 10\n");
        assert_eq!(later.since(&m).sum("sluice_enqueued_total", &[]), 3.0);
    }
}
