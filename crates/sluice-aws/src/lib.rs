//! AWS backends of Sluice, each behind the same trait as its embedded twin:
//!
//! - [`dynamo`]: the message store on DynamoDB (one TransactWriteItems per message,
//!   optimistic locking, idempotency by ClientRequestToken and a msg_id marker).
//! - [`sqs`]: the spike queue on an SQS FIFO queue with its dead-letter queue.
//! - [`kinesis`]: the analytics sink on a Kinesis data stream.
//! - [`migrate`]: creates the tables from `migrations/dynamodb/*.json`, and the queues and
//!   stream for emulators and first installs.
//!
//! Region, credentials and endpoints come from the standard AWS configuration chain
//! (`AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_DYNAMODB`, ...); resource names from
//! [`Names`].

pub mod dynamo;
pub mod kinesis;
pub mod migrate;
pub mod sqs;

pub use dynamo::DynamoStore;
pub use kinesis::KinesisEvents;
pub use sqs::SqsQueue;

/// The default of `SLUICE_RESOURCE_PREFIX`.
pub const DEFAULT_PREFIX: &str = "sluice";

/// The default of `SLUICE_SQS_LANES`.
pub const DEFAULT_LANES: u32 = 4;

/// Names of every AWS resource, derived from one prefix (DESIGN.md, configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub prefix: String,
    /// FIFO queues the bulk lane is spread over by tenant (see [`SqsQueue`]).
    pub lanes: u32,
}

impl Names {
    pub fn new(prefix: impl Into<String>) -> Self {
        Names { prefix: prefix.into(), lanes: DEFAULT_LANES }
    }
    pub fn with_lanes(mut self, lanes: u32) -> Self {
        self.lanes = lanes.max(1);
        self
    }
    pub fn table(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }
    /// The first tenant lane's queue (the only one with `lanes` = 1).
    pub fn queue(&self) -> String {
        self.lane_queue(0)
    }
    /// The queue of tenant lane `i`: `<prefix>-bulk.fifo`, then `<prefix>-bulk-1.fifo`, ...
    pub fn lane_queue(&self, i: u32) -> String {
        if i == 0 { format!("{}-bulk.fifo", self.prefix) } else { format!("{}-bulk-{i}.fifo", self.prefix) }
    }
    pub fn dead_letter_queue(&self) -> String {
        format!("{}-bulk-dlq.fifo", self.prefix)
    }
    /// Where messages of a paused tenant or campaign wait (see `SpikeQueue::hold`).
    pub fn held_queue(&self) -> String {
        format!("{}-bulk-held.fifo", self.prefix)
    }
    pub fn stream(&self) -> String {
        format!("{}-events", self.prefix)
    }
}

impl Default for Names {
    fn default() -> Self {
        Names::new(DEFAULT_PREFIX)
    }
}

/// Loads the shared SDK configuration from the standard chain (environment, profile, IMDS),
/// with [`timeouts`]: the SDK's own defaults let a call that never answers hang forever.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts()).load().await
}

/// Timeouts of every AWS call: 3 s to connect, 25 s per attempt (an SQS long poll waits up to
/// 20 s), 60 s in all. A hung call fails and is retried like any other failure instead of
/// holding a batch's visibility (and its rooms' message groups) forever. The DynamoDB store
/// tightens them for its own calls ([`DynamoStore::from_conf`]).
pub fn timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .operation_attempt_timeout(std::time::Duration::from_secs(25))
        .operation_timeout(std::time::Duration::from_secs(60))
        .build()
}
