//! Command-line and environment configuration. Every option has an `SLUICE_*` variable.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_DATA_DIR: &str = "./sluice-data";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
pub const DEFAULT_RESOURCE_PREFIX: &str = "sluice";

/// Sluice: a chat message backend that absorbs traffic spikes.
///
/// With no configuration, `sluice serve` runs every role in one process on embedded
/// backends, with its data in ./sluice-data.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text or as JSON objects. Traces go to an OTLP collector when
    /// OTEL_EXPORTER_OTLP_ENDPOINT is set (the standard OTEL_* variables apply).
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::telemetry::LogFormat,
}

impl Command {
    /// The command's name, as the service name of its traces.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Serve(_) => "serve",
            Command::Gateway(_) => "gateway",
            Command::Worker(_) => "worker",
            Command::Migrate(_) => "migrate",
            Command::Token(_) => "token",
            Command::Dlq(_) => "dlq",
            Command::Drain(_) => "drain",
            Command::Campaign(_) => "campaign",
            Command::Health(_) => "health",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every role (gateway + worker) in one process.
    Serve(ServeArgs),
    /// Run only the gateway role (WebSocket/HTTP + gRPC). Needs shared backends (--backend aws).
    Gateway(ServeArgs),
    /// Run only the worker role (drains the spike queue). Needs shared backends (--backend aws).
    Worker(ServeArgs),
    /// Create the store and queue (tables, files) if missing; safe to run again.
    Migrate(MigrateArgs),
    /// Print a token: a user JWT (--user) or the service token for gRPC (--service).
    Token(TokenArgs),
    /// Inspect or redrive the dead-letter queue (embedded: while the server is stopped).
    Dlq(DlqArgs),
    /// Pause, resume or set the rate of the drain, or pause and resume one tenant's or one
    /// campaign's, on a running server (over gRPC with the service token). Durable.
    Drain(DrainArgs),
    /// Pause, resume or show one campaign on a running server (`drain ... --campaign`).
    Campaign(CampaignArgs),
    /// Probe a running process over HTTP and exit 0 when it answers 200 (the container's
    /// health check: the image has no shell and no curl).
    Health(HealthArgs),
}

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// What to ask: `/healthz` (alive) or `/readyz` (backends answer) of the admin listener.
    #[arg(long, env = "SLUICE_HEALTH_URL", default_value = "http://127.0.0.1:9090/healthz")]
    pub url: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout_secs: u64,
}

/// Which set of backends to use (DESIGN.md, "Two sets of backends").
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// redb store and queue in the data dir, in-process hub: one machine, no set-up.
    Embedded,
    /// DynamoDB, SQS FIFO, Kinesis and Redis, configured by the standard AWS chain.
    Aws,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    Embedded,
    Dynamodb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueKind {
    Embedded,
    Sqs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HubKind {
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventsKind {
    Off,
    File,
    Kinesis,
}

/// Options every command shares: where the data and secrets are, and which backends.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Directory of the embedded store, queue and generated secrets.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Secret that signs user JWTs (HS256). Default: generated into the data dir on first use,
    /// and then a gateway on a loopback address offers development sign-in (the web client
    /// mints a token for any user name); configure a secret to turn that off.
    #[arg(long, env = "SLUICE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Token internal gRPC callers present. Default: generated into the data dir on first use.
    #[arg(long, env = "SLUICE_SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<String>,
    /// Backends for every concern at once; each can be overridden by --store, --queue, --hub
    /// and --events. AWS region, credentials and endpoints come from the standard AWS chain
    /// (AWS_REGION, AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_DYNAMODB, ..._SQS, ..._KINESIS).
    #[arg(long, env = "SLUICE_BACKEND", value_enum, default_value = "embedded")]
    pub backend: Backend,
    /// Message store. Default: from --backend.
    #[arg(long, env = "SLUICE_STORE", value_enum)]
    pub store: Option<StoreKind>,
    /// Spike queue. Default: from --backend.
    #[arg(long, env = "SLUICE_QUEUE", value_enum)]
    pub queue: Option<QueueKind>,
    /// Sessions, presence and fan-out. Default: from --backend.
    #[arg(long, env = "SLUICE_HUB", value_enum)]
    pub hub: Option<HubKind>,
    /// Redis for the redis hub, `redis://host:port[/db]`, or `rediss://...` for TLS.
    #[arg(long, env = "SLUICE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// A CA certificate (PEM file) that a `rediss://` server's certificate must chain to.
    /// Default: the public web roots (what ElastiCache's certificates chain to).
    #[arg(long, env = "SLUICE_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<std::path::PathBuf>,
    /// Redis runs in cluster mode (ElastiCache with cluster mode enabled, ElastiCache
    /// Serverless): commands follow slots, fan-out uses sharded pub/sub (Redis 7 or later).
    /// --redis-url then names one or more seed nodes, separated by commas.
    #[arg(long, env = "SLUICE_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Prefix of every AWS resource and Redis key: tables <prefix>-messages etc., queue
    /// <prefix>-bulk.fifo, dead-letter queue <prefix>-bulk-dlq.fifo, stream <prefix>-events.
    #[arg(long, env = "SLUICE_RESOURCE_PREFIX", default_value = DEFAULT_RESOURCE_PREFIX)]
    pub resource_prefix: String,
    /// FIFO queues the bulk lane is spread over by tenant on SQS (<prefix>-bulk.fifo,
    /// <prefix>-bulk-1.fifo, ...), so that one tenant's backlog does not hold up another's.
    /// `migrate --with-queues` creates this many; every process must use the same number.
    #[arg(long, env = "SLUICE_SQS_LANES", default_value_t = sluice_aws::DEFAULT_LANES, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub sqs_lanes: u32,
    /// Wait for SQS messages with short polls instead of long polling. Only for emulators
    /// whose long poll breaks FIFO group blocking (moto 5.2.5); costs more requests on AWS.
    /// Hidden from --help: a hook of the tests and benchmarks, not an operator's setting.
    #[arg(long, env = "SLUICE_SQS_CLIENT_SIDE_WAIT", hide = true)]
    pub sqs_client_side_wait: bool,
}

impl CommonArgs {
    pub fn store_kind(&self) -> StoreKind {
        self.store.unwrap_or(match self.backend {
            Backend::Embedded => StoreKind::Embedded,
            Backend::Aws => StoreKind::Dynamodb,
        })
    }
    pub fn queue_kind(&self) -> QueueKind {
        self.queue.unwrap_or(match self.backend {
            Backend::Embedded => QueueKind::Embedded,
            Backend::Aws => QueueKind::Sqs,
        })
    }
    pub fn hub_kind(&self) -> HubKind {
        self.hub.unwrap_or(match self.backend {
            Backend::Embedded => HubKind::Local,
            Backend::Aws => HubKind::Redis,
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Also create the SQS FIFO queue, its dead-letter queue and the Kinesis stream (for
    /// emulators and first installs; production creates them from deploy/).
    #[arg(long)]
    pub with_queues: bool,
    /// Receives before SQS moves a message to the dead-letter queue by itself (redrive policy;
    /// the worker dead-letters with a reason after --max-receives, which should be lower).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_receive_count: u32,
    /// Shards of the Kinesis stream.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub stream_shards: i32,
}

impl ServeArgs {
    /// The options of `sluice serve ARGS...` (their `SLUICE_*` variables apply too): how a
    /// program that embeds Sluice configures it.
    pub fn from_args<I: IntoIterator<Item = S>, S: Into<std::ffi::OsString> + Clone>(args: I) -> Result<ServeArgs, clap::Error> {
        let argv = ["sluice".into(), "serve".into()].into_iter().chain(args.into_iter().map(Into::into));
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(args) => Ok(args),
            _ => unreachable!("parsed as serve"),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// WebSocket/HTTP listen address.
    #[arg(long, env = "SLUICE_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// gRPC listen address.
    #[arg(long, env = "SLUICE_GRPC_ADDR", default_value = DEFAULT_GRPC_ADDR)]
    pub grpc_addr: SocketAddr,
    /// Serve /metrics, /readyz and /healthz on this address instead of the public HTTP one
    /// (keeps them off the port clients reach). The only HTTP a `worker` serves.
    #[arg(long, env = "SLUICE_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// Browser origins allowed to open a WebSocket (comma-separated, e.g.
    /// https://chat.example.com). Empty: any origin. Clients that send no Origin header
    /// (non-browser) are always allowed.
    #[arg(long, env = "SLUICE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Longest lifetime a user token may claim (its `exp` this far from now at most).
    #[arg(long, env = "SLUICE_MAX_TOKEN_TTL_SECS", default_value_t = sluice_gateway::auth::DEFAULT_MAX_TOKEN_TTL_SECS, value_parser = clap::value_parser!(u64).range(60..))]
    pub max_token_ttl_secs: u64,
    /// Append analytics events (JSON lines) to this file (implies --events file).
    #[arg(long, env = "SLUICE_EVENTS_FILE")]
    pub events_file: Option<PathBuf>,
    /// Where analytics events go. Default: kinesis with --backend aws, file with
    /// --events-file, otherwise off.
    #[arg(long, env = "SLUICE_EVENTS", value_enum)]
    pub events: Option<EventsKind>,
    /// Largest message body in bytes.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(1..=1024 * 1024))]
    pub max_body_bytes: u64,
    /// Largest WebSocket frame in bytes; larger frames get `too_large`.
    #[arg(long, env = "SLUICE_MAX_FRAME_BYTES", default_value_t = 128 * 1024, value_parser = clap::value_parser!(u64).range(256..=4 * 1024 * 1024))]
    pub max_frame_bytes: u64,
    /// Sends per second allowed per user, across all their connections and gateways
    /// (burst: twice as many).
    #[arg(long, env = "SLUICE_SEND_RATE", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub send_rate: u32,
    /// WebSocket connections one user may hold at once, across gateways (more: HTTP 429).
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS_PER_USER", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_user: u32,
    /// WebSocket handshakes per second from one client address, across gateways (bursts of
    /// twice as many; more: HTTP 429). 0 turns it off, for a proxy that hides client addresses.
    #[arg(long, env = "SLUICE_HANDSHAKE_RATE_PER_IP", default_value_t = 20)]
    pub handshake_rate_per_ip: u32,
    /// Frames buffered for a slow WebSocket client before it is disconnected (close 4008).
    #[arg(long, env = "SLUICE_OUTBOUND_BUFFER", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub outbound_buffer: u32,
    /// Recipients accepted in one EnqueueBulk call.
    #[arg(long, env = "SLUICE_MAX_BULK_RECIPIENTS", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=2_000_000))]
    pub max_bulk_recipients: u32,
    /// Messages one tenant may have waiting in the queue (0: no quota). Beyond it EnqueueBulk
    /// accepts what fits and answers RESOURCE_EXHAUSTED with the accepted count (metadata
    /// `sluice-accepted`, `sluice-accepted-entries`). The embedded queue counts each tenant's
    /// messages; beside SQS, the DynamoDB store counts each tenant's campaign messages
    /// enqueued and not yet persisted or dead-lettered (held ones included).
    #[arg(long, env = "SLUICE_TENANT_QUOTA", default_value_t = 0)]
    pub tenant_quota: u64,
    /// Concurrent queue pollers of the worker role (the bulk lane's concurrency budget).
    #[arg(long, env = "SLUICE_WORKER_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub worker_concurrency: u32,
    /// Memory (MiB) the embedded store may use to cache its file (the OS page cache serves
    /// the rest; see docs/benchmarks for what a larger cache buys).
    #[arg(long, env = "SLUICE_STORE_CACHE_MIB", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub store_cache_mib: u32,
    /// How often (ms) the embedded store makes a commit durable in its file (a checkpoint);
    /// commits between checkpoints are made durable by its redo log (`store.redb.redo`),
    /// replayed at the next start after a crash. 0: every commit durable in the file, no log.
    /// Longer: fewer writes, but each checkpoint holds the store's writer while it writes
    /// out the pages changed since the last (see docs/benchmarks, "The redo log").
    #[arg(long, env = "SLUICE_STORE_CHECKPOINT_MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub store_checkpoint_ms: u64,
    /// Memory (MiB) the embedded queue may use to cache its file.
    #[arg(long, env = "SLUICE_QUEUE_CACHE_MIB", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_cache_mib: u32,
    /// A tenant's share of the drain relative to others with backlog, TENANT=WEIGHT (1 to
    /// 1000; default 1). Repeat for several tenants, or comma-separate them in the variable.
    /// The embedded queue applies them per tenant; on SQS they weigh the tenant lanes' turns.
    #[arg(long = "tenant-weight", env = "SLUICE_TENANT_WEIGHTS", value_delimiter = ',', value_name = "TENANT=WEIGHT")]
    pub tenant_weights: Vec<String>,
    /// Most messages per queue receive (the governor sizes each receive to about a tick of
    /// its rate; SQS hands out at most 40). Larger batches let the embedded store commit more
    /// messages per fsync (see docs/benchmarks).
    #[arg(long, env = "SLUICE_WORKER_BATCH", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub worker_batch: u32,
    /// Most bulk messages per second this worker persists (the drain governor's ceiling);
    /// 0: no ceiling, only the governor's signals limit the drain.
    #[arg(long, env = "SLUICE_DRAIN_RATE", default_value_t = 0)]
    pub drain_rate: u32,
    /// Most bulk messages per second all workers together persist (a budget shared through
    /// Redis with the Redis hub); 0: none.
    #[arg(long, env = "SLUICE_FLEET_DRAIN_RATE", default_value_t = 0)]
    pub fleet_drain_rate: u32,
    /// Fewest bulk messages per second this worker persists whatever the signals (the drain
    /// never starves).
    #[arg(long, env = "SLUICE_DRAIN_FLOOR", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub drain_floor: u32,
    /// Most one-offs per second EnqueueBulk queues in this gateway while chat flows here (the
    /// accept gate's ceiling; it paces the accept on the drain governor's signals); 0: no
    /// ceiling. Without chat the accept is not paced.
    #[arg(long, env = "SLUICE_ACCEPT_RATE", default_value_t = 0)]
    pub accept_rate: u32,
    /// Fewest one-offs per second EnqueueBulk queues whatever chat's signals.
    #[arg(long, env = "SLUICE_ACCEPT_FLOOR", default_value_t = sluice_gateway::accept::DEFAULT_FLOOR, value_parser = clap::value_parser!(u32).range(1..))]
    pub accept_floor: u32,
    /// The interactive persist p99 (ms) the drain governor keeps chat under (or
    /// `--chat-slowdown` times its calm value when that is more): above it, the bulk rate is
    /// cut.
    #[arg(long, env = "SLUICE_INTERACTIVE_P99_TARGET_MS", default_value_t = 10.0)]
    pub interactive_p99_target_ms: f64,
    /// How many times their calm values (while nothing bulk runs) the drain governor and the
    /// accept gate let chat's signals grow: the interactive persist p99 and the runtime lag.
    #[arg(long, env = "SLUICE_CHAT_SLOWDOWN", default_value_t = sluice_core::governor::DEFAULT_SLOWDOWN, value_parser = parse_slowdown)]
    pub chat_slowdown: f64,
    /// Where gateway and worker share a process (`serve`): the runtime lag p99 (ms, how late
    /// a 5 ms timer fires: the wait for a core) the drain governor keeps under, or
    /// `--chat-slowdown` times the lag while the drain is idle when that is more; watched
    /// while there is chat. A gateway's accept gate watches it too. 0: not watched.
    #[arg(long, env = "SLUICE_RUNTIME_LAG_TARGET_MS", default_value_t = 4.0)]
    pub runtime_lag_target_ms: f64,
    /// Where a process serves chat on the embedded backends (`serve`): how many steps of OS
    /// priority (nice, 1 to 19) its bulk work runs below chat's, on threads of its own
    /// (`sluice-bulk`): the worker's drain and EnqueueBulk's recording and queueing. The
    /// kernel then gives chat's threads the cores first. 0: bulk work shares chat's threads.
    #[arg(long, env = "SLUICE_BULK_NICE", default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=19))]
    pub bulk_nice: u8,
    /// Visibility timeout of received queue messages, in seconds.
    #[arg(long, env = "SLUICE_VISIBILITY_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=43_200))]
    pub visibility_timeout_secs: u64,
    /// Deliveries of a failing queue message before it goes to the dead-letter queue.
    #[arg(long, env = "SLUICE_MAX_RECEIVES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_receives: u32,
    /// Seconds to wait for in-flight work on shutdown.
    #[arg(long, env = "SLUICE_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Shut down gracefully after this many seconds (test and benchmark runs, so that no
    /// server they start outlives them). Default: never. Hidden from --help.
    #[arg(long, env = "SLUICE_MAX_RUNTIME_SECS", hide = true)]
    pub max_runtime_secs: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print a JWT for this user.
    #[arg(long, conflicts_with = "service", required_unless_present = "service")]
    pub user: Option<String>,
    /// Print the service token (gRPC).
    #[arg(long)]
    pub service: bool,
    /// Lifetime of a user token, in seconds.
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub ttl_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub action: DlqAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DlqAction {
    /// List dead letters with their reasons, oldest first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Move dead letters back to the queue.
    Redrive {
        #[arg(long, default_value_t = 1_000_000)]
        limit: usize,
    },
}

/// How the control commands reach a running server (the options go anywhere on the line).
#[derive(Debug, Clone, Args)]
pub struct ControlTarget {
    /// The gRPC address of a running gateway.
    #[arg(long, global = true, env = "SLUICE_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// The server's service token. Default: the one generated into the data dir.
    #[arg(long, global = true, env = "SLUICE_SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<String>,
    /// The data dir whose secrets hold the service token, when it is not given.
    #[arg(long, global = true, env = "SLUICE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub target: ControlTarget,
    /// Apply to this tenant's campaigns only.
    #[arg(long, global = true, conflicts_with = "campaign")]
    pub tenant: Option<String>,
    /// Apply to this campaign only.
    #[arg(long, global = true)]
    pub campaign: Option<String>,
    #[command(subcommand)]
    pub action: DrainAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DrainAction {
    /// Stop draining (held messages stay queued, durably) until resumed.
    Pause,
    /// Drain again; a tenant's or campaign's held messages go back to the queue.
    Resume,
    /// Most messages per second, across every worker, for the whole drain or the
    /// `--tenant`/`--campaign` given (0: no operator rate).
    Rate { msgs_per_sec: f64 },
    /// Print every control in force and how many messages pauses hold.
    Status,
}

#[derive(Debug, Clone, Args)]
pub struct CampaignArgs {
    #[command(flatten)]
    pub target: ControlTarget,
    #[command(subcommand)]
    pub action: CampaignAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CampaignAction {
    Pause {
        campaign_id: String,
    },
    Resume {
        campaign_id: String,
    },
    /// Most messages per second of the campaign, across every worker (0: no operator rate).
    Rate {
        campaign_id: String,
        msgs_per_sec: f64,
    },
    /// Progress, state, rate and ETA, as JSON.
    Status {
        campaign_id: String,
    },
}

fn parse_slowdown(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (1.0..=100.0).contains(&v) => Ok(v),
        _ => Err(format!("{s}: a factor from 1 to 100")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chat_slowdown_is_a_factor_from_1_to_100() {
        let parse = |v: &str| ServeArgs::from_args(["--chat-slowdown", v]).map(|a| a.chat_slowdown);
        assert_eq!(parse("1.5").unwrap(), 1.5);
        assert_eq!(ServeArgs::from_args(Vec::<String>::new()).unwrap().chat_slowdown, sluice_core::governor::DEFAULT_SLOWDOWN);
        for bad in ["0.5", "101", "x", "NaN"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
