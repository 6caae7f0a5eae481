//! The `sluice` program: builds the backends from configuration and runs the roles.
//!
//! - [`config`]: the command line (clap; every option also reads an `SLUICE_*` variable).
//! - [`secrets`]: the JWT secret and service token, generated into the data dir when not set.
//! - [`run`]: `serve`, `gateway`, `worker`, `migrate`, `token`, `dlq`.
//!
//! `serve` prints one line `sluice listening http=ADDR grpc=ADDR` on stdout once both ports
//! are bound, so scripts and tests that ask for port 0 learn the real ports.

pub mod config;
pub mod secrets;

use anyhow::{Context, bail};
use config::{Cli, Command, CommonArgs, DlqAction, ServeArgs};
use sluice_core::events::{EventSink, NoEvents};
use sluice_core::metrics::Metrics;
use sluice_core::queue::SpikeQueue;
use sluice_embedded::{EmbeddedQueue, EmbeddedStore, FileEvents, LocalHub, QueueConfig};
use sluice_gateway::{App, Auth, Limits};
use sluice_worker::{Backends, Worker, WorkerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Logs to stderr; `RUST_LOG` (or `SLUICE_LOG`) sets the filter, `info` by default.
pub fn init_tracing() {
    let filter = std::env::var("SLUICE_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs one command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Gateway(_) | Command::Worker(_) => bail!(
            "the embedded backends live inside one process: run `sluice serve` for every role at once. \
             Separate gateway and worker processes need the distributed backends (DynamoDB, SQS, Redis), \
             which this build does not include yet"
        ),
        Command::Migrate(common) => {
            let (store, queue) = open_embedded(&common)?;
            drop((store, queue));
            println!("embedded store and queue ready in {}", common.data_dir.display());
            Ok(())
        }
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
        Command::Dlq(d) => {
            let (_store, queue) = open_embedded(&d.common)?;
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

fn open_embedded(common: &CommonArgs) -> anyhow::Result<(EmbeddedStore, EmbeddedQueue)> {
    let dir = &common.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let hint = || format!("cannot open the data in {} (is another sluice using it?)", dir.display());
    let store = EmbeddedStore::open(&dir.join("store.redb")).with_context(hint)?;
    let queue = EmbeddedQueue::open(&dir.join("queue.redb"), QueueConfig::default()).with_context(hint)?;
    Ok((store, queue))
}

fn limits(a: &ServeArgs) -> Limits {
    Limits {
        max_body_bytes: a.max_body_bytes as usize,
        max_frame_bytes: a.max_frame_bytes as usize,
        hard_frame_bytes: (a.max_frame_bytes as usize * 4).max(1024 * 1024),
        send_rate: a.send_rate as f64,
        send_burst: 2.0 * a.send_rate as f64,
        outbound_buffer: a.outbound_buffer as usize,
        max_bulk_recipients: a.max_bulk_recipients as usize,
        ..Limits::default()
    }
}

fn worker_config(a: &ServeArgs) -> WorkerConfig {
    WorkerConfig {
        concurrency: a.worker_concurrency as usize,
        batch_size: a.worker_batch as usize,
        visibility: Duration::from_secs(a.visibility_timeout_secs),
        max_receives: a.max_receives,
        max_body_bytes: a.max_body_bytes as usize,
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

/// `sluice serve`: gateway and worker in one process on the embedded backends.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let s = secrets::load(&args.common.data_dir, args.common.jwt_secret.as_deref(), args.common.service_token.as_deref())?;
    let (store, queue) = open_embedded(&args.common)?;
    let metrics = Arc::new(Metrics::new());
    let events: Arc<dyn EventSink> = match &args.events_file {
        Some(path) => {
            let dropped = metrics.events_dropped.clone();
            Arc::new(
                FileEvents::open(path, Box::new(move |n| dropped.inc_by(n)))
                    .with_context(|| format!("cannot open events file {}", path.display()))?,
            )
        }
        None => Arc::new(NoEvents),
    };
    let http = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--http-addr)", args.http_addr))?;
    let grpc = tokio::net::TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--grpc-addr)", args.grpc_addr))?;
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

    let store: Arc<dyn sluice_core::store::MessageStore> = Arc::new(store);
    let queue: Arc<dyn SpikeQueue> = Arc::new(queue);
    let hub: Arc<dyn sluice_core::hub::Hub> = Arc::new(LocalHub::new());
    let app = Arc::new(App {
        store: store.clone(),
        queue: queue.clone(),
        hub: hub.clone(),
        events: events.clone(),
        metrics: metrics.clone(),
        auth: Auth::new(s.jwt_secret.as_bytes(), &s.service_token),
        limits: limits(&args),
        shutdown: shutdown.clone(),
    });
    let worker = Arc::new(Worker::new(
        Backends { store, queue: queue.clone(), hub, events: events.clone(), metrics: metrics.clone() },
        worker_config(&args),
    ));
    let (http_addr, grpc_addr) = (http.local_addr()?, grpc.local_addr()?);
    let worker_task = tokio::spawn(worker.run(shutdown.clone()));
    tokio::spawn(sluice_worker::watch_queue(queue, metrics, Duration::from_secs(1), shutdown.clone()));
    tracing::info!(%http_addr, %grpc_addr, data_dir = %args.common.data_dir.display(), "sluice serving");
    println!("sluice listening http={http_addr} grpc={grpc_addr}");
    let served = sluice_gateway::serve(app, http, grpc).await;
    shutdown.cancel();
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    if tokio::time::timeout(grace, worker_task).await.is_err() {
        tracing::warn!("worker did not finish within the grace period; unacked messages will be redelivered");
    }
    events.flush().await;
    served.context("server failed")
}
