//! The `sluice-bench` command line: one subcommand per scenario, plus where the server is and
//! where the results go. Defaults are the sizes the published figures were measured with.

use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_OUT: &str = "docs/benchmarks";

/// Runs one benchmark scenario with real WebSocket and gRPC clients. Without --http/--grpc it
/// starts `sluice serve` on embedded backends in a temporary directory and stops it after.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Directory for the results: <scenario>.md, <scenario>.json and <scenario>-*.png.
    #[arg(long, global = true, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// A running server to benchmark instead of starting one.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// WebSocket/HTTP address of a running server (needs --grpc and the server's secrets).
    #[arg(long, global = true, requires = "grpc")]
    pub http: Option<SocketAddr>,
    /// gRPC address of a running server.
    #[arg(long, global = true, requires = "http")]
    pub grpc: Option<SocketAddr>,
    /// JWT secret of the running server, to mint user tokens.
    #[arg(long, global = true, env = "SLUICE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Service token of the running server.
    #[arg(long, global = true, env = "SLUICE_SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<String>,
    /// PID of the running server, to read its resident memory.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Extra argument for the server the bench starts, repeatable (`--server-arg=--worker-concurrency=8`).
    #[arg(long = "server-arg", global = true, allow_hyphen_values = true)]
    pub server_args: Vec<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// A bulk campaign enqueued while users chat: accept and drain rates, queue depth over
    /// time, chat latency with and without the spike.
    Spike(SpikeArgs),
    /// Users chatting in rooms at a fixed total rate: send->ack and send->deliver latency.
    Interactive(ChatArgs),
    /// Idle WebSocket connections: how many, resident memory per connection, connect rate.
    Connections(ConnectionsArgs),
    /// Drain rate by number of workers against a store with a remote store's per-call latency.
    Scaling(ScalingArgs),
    /// AWS requests, capacity units and Kinesis records per message on DynamoDB Local and moto,
    /// and the price per million messages that follows.
    Cost(CostArgs),
    /// Chat and campaigns for a long time: whether the server's memory plateaus (its slope),
    /// and chat latency over the whole run.
    Soak(SoakArgs),
    /// Tenant fairness: a large campaign of one tenant, then small ones of two others, and
    /// how long the small ones take behind the large one's backlog.
    Fairness(FairnessArgs),
    /// How the drain rate and chat latency grow with the messages already stored: a probe
    /// campaign at each level of stored messages.
    Growth(GrowthArgs),
}

#[derive(Debug, Clone, Args)]
pub struct GrowthArgs {
    /// Messages stored before each probe, in ascending order (the store is filled with
    /// one-offs between probes), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 1_000_000, 5_000_000])]
    pub levels: Vec<u64>,
    /// One-off messages of the probe campaign at each level.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub probe: u64,
    /// Name recipients by a scramble of their number instead of in order.
    #[arg(long)]
    pub scattered_recipients: bool,
    #[command(flatten)]
    pub chat: ChatArgs,
}

#[derive(Debug, Clone, Args)]
pub struct FairnessArgs {
    /// One-off messages of tenant A's campaign, enqueued first.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub large: u64,
    /// One-off messages of each of tenants B and C, enqueued once A's are accepted.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub small: u64,
    /// Seconds between A's last accepted call and B's and C's first.
    #[arg(long, default_value_t = 1.0)]
    pub gap_secs: f64,
    /// Recipients per EnqueueBulk call.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub chunk: u32,
    /// EnqueueBulk calls in flight.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
}

#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// WebSocket connections, one user each.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(2..))]
    pub connections: u32,
    /// Members per room (the connections are split into rooms of this size).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub room_size: u32,
    /// Messages per second sent by all connections together (`spike`: 0 keeps the
    /// connections open and silent, to measure the drain without chat).
    #[arg(long, default_value_t = 5000)]
    pub rate: u32,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Bytes per message body.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(24..=60_000))]
    pub body_bytes: u32,
}

#[derive(Debug, Clone, Args)]
pub struct SpikeArgs {
    /// One-off messages in the campaign (one recipient each).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub messages: u64,
    /// Recipients per EnqueueBulk call.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub chunk: u32,
    /// EnqueueBulk calls in flight.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
    /// Recipients whose inbox is read back to check the counters after the drain.
    #[arg(long, default_value_t = 200)]
    pub check: u32,
    /// Name recipients by a scramble of their number instead of in order.
    #[arg(long)]
    pub scattered_recipients: bool,
    #[command(flatten)]
    pub chat: ChatArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Minutes of load.
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Seconds between two campaigns.
    #[arg(long, default_value_t = 60.0)]
    pub campaign_every_secs: f64,
    /// One-off messages per campaign.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub campaign_size: u64,
    /// Distinct recipients the campaigns take their recipients from, in turn.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub pool: u64,
    /// Seconds between two memory samples.
    #[arg(long, default_value_t = 5.0)]
    pub sample_secs: f64,
    #[command(flatten)]
    pub chat: ChatArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    /// Idle WebSocket connections to open and hold.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub count: u32,
    /// Loopback source addresses to connect from (127.0.0.1, .2, ...); one address has about
    /// 28,000 ephemeral ports. Default: enough for --count.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub source_addrs: Option<u8>,
    /// Connection handshakes in flight.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub parallel: u32,
    /// Seconds to hold every connection open before checking they still answer.
    #[arg(long, default_value_t = 5.0)]
    pub hold_secs: f64,
}

#[derive(Debug, Clone, Args)]
pub struct ScalingArgs {
    /// Worker counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    pub workers: Vec<u32>,
    /// One-off messages per worker in each run (a run drains workers x this many).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages_per_worker: u64,
    /// Store latency added to every call, in ms: `MIN-MAX` (uniform) or one number.
    #[arg(long, default_value = "5-10")]
    pub latency_ms: sluice_testkit::latency::LatencyRange,
    /// Messages per queue receive (SQS returns at most 10).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// `embedded`: one `serve` whose worker has n pollers, on the embedded store with
    /// --latency-ms added. `aws`: n `serve` processes, each with one poller, on one SQS queue
    /// and DynamoDB (give --dynamodb-url the unkind proxy with --hold-ms for DynamoDB's
    /// transaction latency and conflicts; --latency-ms is not used).
    #[arg(long, value_enum, default_value_t = ScalingBackend::Embedded)]
    pub backend: ScalingBackend,
    #[command(flatten)]
    pub emulators: EmulatorArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScalingBackend {
    Embedded,
    Aws,
}

/// Where DynamoDB and SQS/Kinesis are, for scenarios on the AWS backends.
#[derive(Debug, Clone, Args)]
pub struct EmulatorArgs {
    /// DynamoDB endpoint (DynamoDB Local behind the unkind proxy); `scripts/with-test-services.sh` sets it.
    #[arg(long, env = "SLUICE_TEST_DYNAMODB_URL")]
    pub dynamodb_url: Option<String>,
    /// SQS and Kinesis endpoint (moto server); `scripts/with-test-services.sh` sets it.
    #[arg(long, env = "SLUICE_TEST_MOTO_URL")]
    pub moto_url: Option<String>,
    /// Kinesis endpoint when not --moto-url (`scripts/with-test-services.sh` sets it to moto
    /// behind a proxy refusing part of each PutRecords call).
    #[arg(long, env = "SLUICE_TEST_KINESIS_URL")]
    pub kinesis_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct CostArgs {
    /// One-off messages (a campaign) to measure.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub one_off: u32,
    /// Interactive messages (WebSocket sends in two-member rooms) to measure.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub interactive: u32,
    #[command(flatten)]
    pub emulators: EmulatorArgs,
}
