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

/// Names of every AWS resource, derived from one prefix (DESIGN.md, configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub prefix: String,
}

impl Names {
    pub fn new(prefix: impl Into<String>) -> Self {
        Names { prefix: prefix.into() }
    }
    pub fn table(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }
    pub fn queue(&self) -> String {
        format!("{}-bulk.fifo", self.prefix)
    }
    pub fn dead_letter_queue(&self) -> String {
        format!("{}-bulk-dlq.fifo", self.prefix)
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

/// Loads the shared SDK configuration from the standard chain (environment, profile, IMDS).
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}
