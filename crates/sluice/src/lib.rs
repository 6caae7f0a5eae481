//! The `sluice` program: builds the backends from configuration and runs the roles.
//!
//! - [`config`]: the command line (clap; every option also reads an `SLUICE_*` variable).
//! - [`secrets`]: the JWT secret and service token, generated into the data dir when not set.
//! - [`telemetry`]: logs (text or JSON) and trace export over OTLP.
//! - [`run`]: `serve`, `gateway`, `worker`, `migrate`, `token`, `dlq`, `drain`, `campaign`,
//!   each on the backends the configuration picks (embedded by default; DynamoDB, SQS,
//!   Kinesis and Redis with `--backend aws`, or chosen one concern at a time); and `health`,
//!   which probes a running process. The benchmarks are a program of their own
//!   (`sluice-bench`), which starts this one as its server.
//! - [`backends`]: the backends a configuration names, opened once per process.
//! - [`bulk`]: the runtime a process that serves chat runs its bulk work on, below chat's
//!   priority.
//! - [`serve`] and [`serve_on`]: the composition root of the roles, for a caller that binds
//!   its own [`Listeners`] and holds the shutdown token; [`serve_on`] takes backends the caller
//!   opened and may have wrapped; [`start`] runs them in a task and hands back a [`Running`]
//!   (tests and the scaling benchmark run Sluice in their own process so).
//!
//! `serve` and `gateway` print one line `sluice listening http=ADDR grpc=ADDR` (and
//! ` admin=ADDR` with `--admin-addr`) on stdout once the ports are bound, so scripts and tests
//! that ask for port 0 learn the real ports;
//! `worker` prints `sluice worker running` (and ` admin=ADDR`, where it serves `/healthz`,
//! `/readyz` and `/metrics`) once its backends are connected.

pub mod backends;
pub mod bulk;
pub mod config;
pub mod secrets;
pub mod telemetry;

use anyhow::{Context, bail};
pub use backends::Opened;
use backends::{aws_conf, data_dir, in_use_hint, open_queue};
use config::{
    CampaignAction, Cli, Command, CommonArgs, ControlTarget, DlqAction, DrainAction, HubKind, MigrateArgs, QueueKind, ServeArgs, StoreKind,
};
use sluice_core::governor::GovernorConfig;
use sluice_core::metrics::Metrics;
use sluice_embedded::{EmbeddedQueue, EmbeddedStore, QueueConfig};
use sluice_gateway::accept::AcceptGate;
use sluice_gateway::{App, Auth, Limits};
use sluice_proto::v1::{self, drain_scope};
use sluice_worker::{Worker, WorkerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Runs one command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => run_roles(args, Roles::SERVE).await,
        Command::Gateway(args) => run_roles(args, Roles::GATEWAY).await,
        Command::Worker(args) => run_roles(args, Roles::WORKER).await,
        Command::Migrate(m) => migrate(m).await,
        Command::Health(h) => health(h).await,
        Command::Token(t) => {
            let s = secrets::load(&t.common.data_dir, t.common.jwt_secret.as_deref(), t.common.service_token.as_deref())?;
            if t.service {
                println!("{}", s.service_token);
            } else {
                let user = t.user.expect("clap requires --user without --service");
                let auth = Auth::new(s.jwt_secret.as_bytes(), &s.service_token);
                println!("{}", auth.mint_user(&user, t.ttl_secs).map_err(|e| anyhow::anyhow!("--user: {e}"))?);
            }
            Ok(())
        }
        Command::Drain(d) => {
            let scope = match (d.tenant, d.campaign) {
                (Some(t), _) => drain_scope::Scope::Tenant(t),
                (_, Some(c)) => drain_scope::Scope::CampaignId(c),
                _ => drain_scope::Scope::Drain(true),
            };
            let (paused, rate) = match d.action {
                DrainAction::Pause => (Some(true), None),
                DrainAction::Resume => (Some(false), None),
                DrainAction::Rate { msgs_per_sec } => (None, Some(msgs_per_sec)),
                DrainAction::Status => return print_controls(&d.target).await,
            };
            set_control(&d.target, scope, paused, rate).await
        }
        Command::Campaign(c) => {
            let (id, paused, rate) = match c.action {
                CampaignAction::Pause { campaign_id } => (campaign_id, Some(true), None),
                CampaignAction::Resume { campaign_id } => (campaign_id, Some(false), None),
                CampaignAction::Rate { campaign_id, msgs_per_sec } => (campaign_id, None, Some(msgs_per_sec)),
                CampaignAction::Status { campaign_id } => {
                    let mut g = control_client(&c.target).await?;
                    let s = g.get_campaign(v1::GetCampaignRequest { campaign_id, tenant: None }).await?.into_inner();
                    let line = serde_json::json!({
                        "campaign_id": s.campaign_id, "tenant": s.tenant, "state": s.state, "requested": s.requested,
                        "enqueued": s.enqueued, "persisted": s.persisted, "dead_lettered": s.dead_lettered,
                        "rate": s.rate, "eta_secs": s.eta_secs,
                    });
                    println!("{line}");
                    return Ok(());
                }
            };
            set_control(&c.target, drain_scope::Scope::CampaignId(id), paused, rate).await
        }
        Command::Dlq(d) => {
            let metrics = Arc::new(Metrics::new());
            let conf = aws_conf(&d.common).await;
            let queue = open_queue(&d.common, conf.as_ref(), metrics, QueueConfig::default()).await?;
            match d.action {
                DlqAction::List { limit } => {
                    for dl in queue.dead_letters(limit).await? {
                        let line = serde_json::json!({
                            "dedup_id": dl.dedup_id, "group": dl.group, "reason": dl.reason,
                            "receive_count": dl.receive_count, "dead_at_ms": dl.dead_at_ms, "body_bytes": dl.body.len(),
                        });
                        println!("{line}");
                    }
                }
                DlqAction::Redrive { limit } => println!("redrove {} messages", queue.redrive(limit).await?),
            }
            Ok(())
        }
    }
}

/// `sluice migrate`: the embedded files, or the DynamoDB tables (and with --with-queues the
/// SQS queues and Kinesis stream).
async fn migrate(m: MigrateArgs) -> anyhow::Result<()> {
    let common = &m.common;
    let names = sluice_aws::Names::new(&common.resource_prefix).with_lanes(common.sqs_lanes);
    let conf = if common.store_kind() == StoreKind::Dynamodb || common.queue_kind() == QueueKind::Sqs || m.with_queues {
        Some(sluice_aws::sdk_config().await)
    } else {
        None
    };
    match (common.store_kind(), &conf) {
        (StoreKind::Dynamodb, Some(conf)) => {
            for line in sluice_aws::migrate::Migrator::new(conf).tables(&names).await? {
                println!("{line}");
            }
        }
        _ => {
            drop(EmbeddedStore::open(&data_dir(common)?.join("store.redb")).with_context(|| in_use_hint(common))?);
            println!("embedded store ready in {}", common.data_dir.display());
        }
    }
    if m.with_queues {
        let conf = conf.as_ref().expect("loaded for --with-queues");
        let settings = sluice_aws::migrate::QueueSettings { max_receive_count: m.max_receive_count, ..Default::default() };
        let migrator = sluice_aws::migrate::Migrator::new(conf);
        let (urls, dlq) = migrator.queues(&names, settings).await?;
        for url in urls {
            println!("queue {url} (dead letters: {dlq}, after {} receives)", m.max_receive_count);
        }
        let stream = migrator.stream(&names, m.stream_shards).await?;
        println!("stream {stream}");
    } else if common.queue_kind() == QueueKind::Embedded {
        drop(EmbeddedQueue::open(&data_dir(common)?.join("queue.redb"), QueueConfig::default()).with_context(|| in_use_hint(common))?);
        println!("embedded queue ready in {}", common.data_dir.display());
    }
    Ok(())
}

fn limits(a: &ServeArgs) -> Limits {
    Limits {
        max_body_bytes: a.max_body_bytes as usize,
        max_frame_bytes: a.max_frame_bytes as usize,
        hard_frame_bytes: (a.max_frame_bytes as usize * 4).max(1024 * 1024),
        send_rate: a.send_rate as f64,
        send_burst: 2.0 * a.send_rate as f64,
        max_connections_per_user: a.max_connections_per_user,
        handshake_rate_per_ip: a.handshake_rate_per_ip as f64,
        outbound_buffer: a.outbound_buffer as usize,
        max_bulk_recipients: a.max_bulk_recipients as usize,
        tenant_quota: a.tenant_quota,
        allowed_origins: a.allowed_origins.iter().map(|o| o.trim().trim_end_matches('/').to_string()).filter(|o| !o.is_empty()).collect(),
        ..Limits::default()
    }
}

/// A governor between `floor` and `ceiling` (0: none) on the configured chat targets.
fn governor_config(a: &ServeArgs, floor: u32, ceiling: u32) -> GovernorConfig {
    let ceiling = if ceiling == 0 { f64::INFINITY } else { ceiling as f64 };
    GovernorConfig {
        ceiling,
        floor: (floor as f64).min(ceiling),
        target: Duration::from_secs_f64(a.interactive_p99_target_ms.max(0.1) / 1000.0),
        lag_target: Duration::from_secs_f64(a.runtime_lag_target_ms.max(0.1) / 1000.0),
        slowdown: a.chat_slowdown,
        ..GovernorConfig::default()
    }
}

/// The accept gate starts at its floor and grows while chat stays within its targets.
fn accept_config(a: &ServeArgs) -> GovernorConfig {
    let g = governor_config(a, a.accept_floor, a.accept_rate);
    GovernorConfig { initial: g.floor, ..g }
}

fn worker_config(a: &ServeArgs) -> WorkerConfig {
    WorkerConfig {
        concurrency: a.worker_concurrency as usize,
        batch_size: a.worker_batch as usize,
        visibility: Duration::from_secs(a.visibility_timeout_secs),
        max_receives: a.max_receives,
        max_body_bytes: a.max_body_bytes as usize,
        governor: governor_config(a, a.drain_floor, a.drain_rate),
        fleet_rate: (a.fleet_drain_rate > 0).then_some(a.fleet_drain_rate as f64),
        ..WorkerConfig::default()
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        token.cancel();
    });
}

/// Which roles a process runs.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub gateway: bool,
    pub worker: bool,
}

impl Roles {
    /// `sluice serve`: every role.
    pub const SERVE: Roles = Roles { gateway: true, worker: true };
    pub const GATEWAY: Roles = Roles { gateway: true, worker: false };
    pub const WORKER: Roles = Roles { gateway: false, worker: true };
}

/// The sockets a process serves on: a gateway's HTTP and gRPC ports, and the admin listener
/// of any role.
pub struct Listeners {
    pub http_grpc: Option<(TcpListener, TcpListener)>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses `args` names that `roles` serve on.
    pub async fn bind(args: &ServeArgs, roles: Roles) -> anyhow::Result<Self> {
        let admin = match args.admin_addr {
            Some(a) => Some(TcpListener::bind(a).await.with_context(|| format!("cannot listen on {a} (--admin-addr)"))?),
            None => None,
        };
        let http_grpc = if roles.gateway {
            let http =
                TcpListener::bind(args.http_addr).await.with_context(|| format!("cannot listen on {} (--http-addr)", args.http_addr))?;
            let grpc =
                TcpListener::bind(args.grpc_addr).await.with_context(|| format!("cannot listen on {} (--grpc-addr)", args.grpc_addr))?;
            Some((http, grpc))
        } else {
            None
        };
        Ok(Listeners { http_grpc, admin })
    }
}

/// A Sluice running inside the caller's process (see [`start`]).
pub struct Running {
    /// The gateway's HTTP and gRPC addresses.
    pub http_grpc: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    pub admin: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Cancels its shutdown token and waits until it has stopped (within the grace period).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("the roles' task panicked")?
    }
}

/// Binds the addresses `args` names and runs `roles` on `opened` in a task of the caller's
/// runtime: a program (or a test) that embeds Sluice.
pub async fn start(opened: Opened, args: ServeArgs, roles: Roles) -> anyhow::Result<Running> {
    check_roles(&args.common, roles)?;
    let listeners = Listeners::bind(&args, roles).await?;
    let http_grpc = match &listeners.http_grpc {
        Some((h, g)) => Some((h.local_addr()?, g.local_addr()?)),
        None => None,
    };
    let admin = listeners.admin.as_ref().map(TcpListener::local_addr).transpose()?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { serve_on(opened, &args, roles, listeners, token).await });
    Ok(Running { http_grpc, admin, shutdown, task })
}

/// `serve` (both roles), `gateway` or `worker` as a command: binds, stops on SIGINT, SIGTERM
/// or `--max-runtime-secs`, and runs [`serve`].
async fn run_roles(args: ServeArgs, roles: Roles) -> anyhow::Result<()> {
    check_roles(&args.common, roles)?;
    let listeners = Listeners::bind(&args, roles).await?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    if let Some(secs) = args.max_runtime_secs {
        let token = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            tracing::info!(secs, "maximum runtime reached");
            token.cancel();
        });
    }
    serve(args, roles, listeners, shutdown).await
}

fn check_roles(common: &CommonArgs, roles: Roles) -> anyhow::Result<()> {
    if !(roles.gateway && roles.worker)
        && (common.store_kind() == StoreKind::Embedded || common.queue_kind() == QueueKind::Embedded || common.hub_kind() == HubKind::Local)
    {
        bail!(
            "separate gateway and worker processes need shared backends: DynamoDB, SQS and Redis (--backend aws with \
             SLUICE_REDIS_URL). The embedded backends live inside one process: run `sluice serve` for every role at once"
        );
    }
    Ok(())
}

/// The composition root: opens the backends `args` configures, runs `roles` on `listeners`
/// until `shutdown` is cancelled, then lets in-flight work finish within the grace period.
/// What `sluice serve`, `gateway` and `worker` run, and what a test can run in its own
/// process.
pub async fn serve(args: ServeArgs, roles: Roles, listeners: Listeners, shutdown: CancellationToken) -> anyhow::Result<()> {
    check_roles(&args.common, roles)?;
    let opened = Opened::from_config(&args).await?;
    serve_on(opened, &args, roles, listeners, shutdown).await
}

/// Runs `roles` on backends already opened (a caller may have wrapped one of them), with the
/// rest of `args`: secrets, limits, the worker's settings and the grace period.
pub async fn serve_on(
    opened: Opened,
    args: &ServeArgs,
    roles: Roles,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let common = &args.common;
    check_roles(common, roles)?;
    let s = secrets::load(&common.data_dir, common.jwt_secret.as_deref(), common.service_token.as_deref())?;
    let Listeners { http_grpc: listeners, admin } = listeners;
    if roles.gateway != listeners.is_some() {
        bail!("a gateway serves on HTTP and gRPC listeners, and only a gateway does");
    }
    let Opened { backends, outbox } = opened;
    let events = backends.events.clone();
    // Every role reports its figures for the operations console of any gateway.
    tokio::spawn(sluice_core::fleet::report(
        backends.limiter.clone(),
        backends.metrics.clone(),
        sluice_core::ids::random_id(),
        roles.worker,
        shutdown.clone(),
    ));
    // How late the runtime runs: a signal of the accept gate in a gateway, and of the drain
    // governor where a worker shares the process with chat.
    let sample_lag = roles.gateway && args.runtime_lag_target_ms > 0.0;
    if sample_lag {
        let (metrics, shutdown) = (backends.metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            sluice_core::governor::sample_runtime_lag(&metrics.runtime_lag, sluice_core::governor::LAG_SAMPLE_EVERY, shutdown).await
        });
    }
    // Where chat is served on the embedded backends, bulk work runs on threads of its own at
    // a lower priority. Not with a remote backend: its client's connections are driven by
    // the runtime that first needed them and shared with chat's requests, which must not
    // wait for a bulk thread.
    let all_embedded = common.store_kind() == StoreKind::Embedded
        && common.queue_kind() == QueueKind::Embedded
        && common.hub_kind() == HubKind::Local
        && backends::events_kind(args) != config::EventsKind::Kinesis;
    let bulk = (roles.gateway && all_embedded && args.bulk_nice > 0)
        .then(|| bulk::BulkRuntime::start(std::thread::available_parallelism().map_or(2, |n| n.get()), args.bulk_nice))
        .transpose()
        .context("cannot start the bulk runtime")?;
    let bulk_handle = bulk.as_ref().map(|b| b.handle().clone());
    // The relay of the embedded store's outbox stops after the worker and gateway.
    let relay_stop = CancellationToken::new();
    let relay = outbox.map(|store| tokio::spawn(sluice_embedded::outbox::relay(store, events.clone(), relay_stop.clone())));
    let worker_task = roles.worker.then(|| {
        let config = WorkerConfig { watch_runtime_lag: sample_lag, ..worker_config(args) };
        let worker = Arc::new(Worker::new(backends.clone(), config));
        tokio::spawn(sluice_worker::watch_queue(
            backends.queue.clone(),
            backends.metrics.clone(),
            Duration::from_secs(1),
            shutdown.clone(),
        ));
        bulk_handle.clone().unwrap_or_else(tokio::runtime::Handle::current).spawn(worker.run(shutdown.clone()))
    });
    let served = match listeners {
        Some((http, grpc)) => {
            // Minting tokens for anyone who asks is for a developer's own machine: never with
            // a configured secret, never reachable from the network.
            let dev_sign_in = common.jwt_secret.is_none() && http.local_addr()?.ip().is_loopback();
            if dev_sign_in {
                tracing::info!(
                    "development sign-in is on (no --jwt-secret configured, loopback only): the page at / mints tokens for any user name"
                );
            }
            let app = Arc::new(App {
                backends,
                auth: Auth::new(s.jwt_secret.as_bytes(), &s.service_token).with_max_token_ttl(args.max_token_ttl_secs),
                limits: limits(args),
                campaign_rates: Default::default(),
                accept: AcceptGate::new(accept_config(args)),
                bulk: bulk_handle,
                shutdown: shutdown.clone(),
                dev_sign_in,
            });
            let (http_addr, grpc_addr) = (http.local_addr()?, grpc.local_addr()?);
            tracing::info!(%http_addr, %grpc_addr, ?roles, "sluice serving");
            match admin.as_ref().map(TcpListener::local_addr).transpose()? {
                Some(admin_addr) => println!("sluice listening http={http_addr} grpc={grpc_addr} admin={admin_addr}"),
                None => println!("sluice listening http={http_addr} grpc={grpc_addr}"),
            }
            let served = sluice_gateway::serve_with_admin(app, http, grpc, admin).await;
            shutdown.cancel();
            served.context("server failed")
        }
        None => match admin {
            Some(admin) => {
                let admin_addr = admin.local_addr()?;
                tracing::info!(%admin_addr, "sluice worker running");
                println!("sluice worker running admin={admin_addr}");
                let probes = sluice_gateway::http::Probes { backends, shutdown: shutdown.clone() };
                let served = sluice_gateway::http::serve_admin(admin, probes).await;
                shutdown.cancel();
                served.context("admin listener failed")
            }
            None => {
                tracing::info!("sluice worker running");
                println!("sluice worker running");
                shutdown.cancelled().await;
                Ok(())
            }
        },
    };
    if let Some(task) = worker_task {
        let grace = Duration::from_secs(args.shutdown_grace_secs);
        if tokio::time::timeout(grace, task).await.is_err() {
            tracing::warn!("worker did not finish within the grace period; unacked messages will be redelivered");
        }
    }
    relay_stop.cancel();
    if let Some(relay) = relay
        && tokio::time::timeout(Duration::from_secs(args.shutdown_grace_secs), relay).await.is_err()
    {
        tracing::warn!("analytics outbox not drained within the grace period; the next start delivers the rest");
    }
    events.flush().await;
    served
}

/// `health`: GET the URL; success only on 200.
async fn health(h: config::HealthArgs) -> anyhow::Result<()> {
    use http_body_util::{BodyExt, Empty};
    let uri: http::Uri = h.url.parse().with_context(|| format!("--url {}", h.url))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let answer = async {
        let resp = client.get(uri).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(h.timeout_secs), answer)
        .await
        .with_context(|| format!("{} did not answer within {} s", h.url, h.timeout_secs))?
        .with_context(|| format!("GET {}", h.url))?;
    let body = String::from_utf8_lossy(&body);
    if status != http::StatusCode::OK {
        bail!("{} answered {status}: {}", h.url, body.trim());
    }
    print!("{body}");
    Ok(())
}

async fn control_client(t: &ControlTarget) -> anyhow::Result<sluice_proto::client::Client> {
    let token = match &t.service_token {
        Some(token) => token.clone(),
        None => secrets::stored_service_token(&t.data_dir)?,
    };
    let bearer = sluice_proto::client::Bearer::service(&token)?;
    sluice_proto::client::connect(t.grpc_addr, bearer).await.with_context(|| format!("cannot connect to gRPC at {}", t.grpc_addr))
}

fn scope_text(s: Option<&v1::DrainScope>) -> String {
    match s.and_then(|s| s.scope.as_ref()) {
        Some(drain_scope::Scope::Tenant(t)) => format!("tenant {t}"),
        Some(drain_scope::Scope::CampaignId(c)) => format!("campaign {c}"),
        _ => "drain".into(),
    }
}

async fn set_control(t: &ControlTarget, scope: drain_scope::Scope, paused: Option<bool>, rate: Option<f64>) -> anyhow::Result<()> {
    let mut g = control_client(t).await?;
    let req = v1::SetDrainControlRequest { scope: Some(v1::DrainScope { scope: Some(scope) }), paused, rate };
    let c = g.set_drain_control(req).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner();
    let rate = c.rate.map_or("none".into(), |r| format!("{r} msg/s"));
    println!("{}: {}, rate {rate}", scope_text(c.scope.as_ref()), if c.paused { "paused" } else { "running" });
    Ok(())
}

async fn print_controls(t: &ControlTarget) -> anyhow::Result<()> {
    let mut g = control_client(t).await?;
    let r = g.get_drain_controls(v1::GetDrainControlsRequest {}).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner();
    if r.controls.is_empty() {
        println!("no controls: the whole drain runs");
    }
    for c in &r.controls {
        let rate = c.rate.map_or("none".into(), |r| format!("{r} msg/s"));
        println!("{}: {}, rate {rate}", scope_text(c.scope.as_ref()), if c.paused { "paused" } else { "running" });
    }
    println!("held messages: {}", r.held);
    Ok(())
}
