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
