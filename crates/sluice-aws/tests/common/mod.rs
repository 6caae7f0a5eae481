//! Clients for the emulators this test run started (see scripts/with-test-services.sh).

#![allow(dead_code, unreachable_pub)]

use sluice_aws::{DynamoStore, Names};
use sluice_core::metrics::Metrics;
use std::sync::Arc;

/// SDK configuration pointing at `endpoint`, with test credentials.
pub async fn sdk_conf(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "sluice-tests"))
        .endpoint_url(endpoint)
        .load()
        .await
}

pub async fn dynamodb_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_conf(endpoint).await)
}

/// Fresh tables under a prefix of their own, on DynamoDB Local (or `endpoint`).
pub async fn fresh_tables(what: &str, endpoint: Option<&str>) -> (aws_sdk_dynamodb::Client, Names) {
    let url = endpoint.map(str::to_string).unwrap_or_else(sluice_testkit::services::dynamodb_url);
    let client = dynamodb_client(&url).await;
    let names = Names::new(sluice_testkit::services::unique_prefix(what));
    sluice_aws::migrate::tables(&client, &names).await.expect("tables created");
    (client, names)
}

pub async fn store(what: &str) -> (Arc<DynamoStore>, Arc<Metrics>) {
    let (client, names) = fresh_tables(what, None).await;
    let metrics = Arc::new(Metrics::new());
    (Arc::new(DynamoStore::new(client, &names, metrics.clone())), metrics)
}

/// A fresh FIFO queue and dead-letter queue (and stream) under a prefix of their own, on moto
/// behind the proxy that throttles part of the SQS calls.
pub async fn fresh_queues(what: &str) -> (aws_config::SdkConfig, Names) {
    fresh_queues_moving_after(what, 50).await
}

/// [`fresh_queues`] whose redrive policy moves a message to the dead-letter queue after
/// `max_receive_count` receives.
pub async fn fresh_queues_moving_after(what: &str, max_receive_count: u32) -> (aws_config::SdkConfig, Names) {
    fresh_queues_at(&sluice_testkit::services::sqs_url(), what, max_receive_count).await
}

/// [`fresh_queues_moving_after`] reached through `endpoint`.
pub async fn fresh_queues_at(endpoint: &str, what: &str, max_receive_count: u32) -> (aws_config::SdkConfig, Names) {
    let conf = sdk_conf(endpoint).await;
    let names = Names::new(sluice_testkit::services::unique_prefix(what));
    let settings = sluice_aws::migrate::QueueSettings { max_receive_count, ..Default::default() };
    sluice_aws::migrate::queues(&aws_sdk_sqs::Client::new(&conf), &names, settings).await.expect("queues created");
    (conf, names)
}

/// A fresh SQS queue on moto, weighing tenants as the conformance suite expects.
pub async fn queue(what: &str) -> (Arc<sluice_aws::SqsQueue>, Arc<Metrics>) {
    let (conf, names) = fresh_queues(what).await;
    let metrics = Arc::new(Metrics::new());
    let q = sluice_aws::SqsQueue::connect(aws_sdk_sqs::Client::new(&conf), &names, metrics.clone()).await.expect("queue found");
    // moto's long poll is not FIFO-safe (see `with_client_side_wait`).
    let q = q.with_client_side_wait(true).with_weights(sluice_testkit::queue::suite_weights());
    (Arc::new(q), metrics)
}
