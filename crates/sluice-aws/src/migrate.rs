//! Creates the AWS resources: the tables from `migrations/dynamodb/*.json` (compiled in), and
//! with `--with-queues` the SQS FIFO queue, its dead-letter queue and the Kinesis stream.
//! Every step is idempotent: what exists is checked and left alone.

use crate::Names;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType, ScalarAttributeType,
    TableStatus, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use serde::Deserialize;
use std::time::{Duration, Instant};

/// The table definitions, one file per table and version.
pub const TABLE_FILES: &[(&str, &str)] = &[
    ("messages.v1.json", include_str!("../../../migrations/dynamodb/messages.v1.json")),
    ("rooms.v1.json", include_str!("../../../migrations/dynamodb/rooms.v1.json")),
    ("inbox.v1.json", include_str!("../../../migrations/dynamodb/inbox.v1.json")),
    ("msgids.v1.json", include_str!("../../../migrations/dynamodb/msgids.v1.json")),
    ("campaigns.v1.json", include_str!("../../../migrations/dynamodb/campaigns.v1.json")),
];

/// How long to wait for a table or stream to become ACTIVE.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(300);

/// Errors of a migration, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MigrateError(String);

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> MigrateError {
    MigrateError(format!("{what}: {e}"))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TableFile {
    table_name: String,
    attribute_definitions: Vec<AttrDef>,
    key_schema: Vec<KeyDef>,
    #[serde(default)]
    global_secondary_indexes: Vec<IndexDef>,
    #[serde(default)]
    time_to_live_specification: Option<TtlDef>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AttrDef {
    attribute_name: String,
    attribute_type: String,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
struct KeyDef {
    attribute_name: String,
    key_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IndexDef {
    index_name: String,
    key_schema: Vec<KeyDef>,
    projection: ProjectionDef,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProjectionDef {
    projection_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TtlDef {
    attribute_name: String,
    enabled: bool,
}

fn key_schema(keys: &[KeyDef]) -> Result<Vec<KeySchemaElement>, MigrateError> {
    keys.iter()
        .map(|k| {
            KeySchemaElement::builder()
                .attribute_name(&k.attribute_name)
                .key_type(KeyType::from(k.key_type.as_str()))
                .build()
                .map_err(|e| err("key schema", e))
        })
        .collect()
}

/// Creates every missing table, waits until each is ACTIVE and enables TTL where defined.
/// Returns one line per table saying what was done.
pub async fn tables(client: &aws_sdk_dynamodb::Client, names: &Names) -> Result<Vec<String>, MigrateError> {
    let mut report = Vec::new();
    for (file, text) in TABLE_FILES {
        let def: TableFile = serde_json::from_str(text).map_err(|e| err(file, e))?;
        let table = def.table_name.replace("${PREFIX}", &names.prefix);
        let created = match client.describe_table().table_name(&table).send().await {
            Ok(out) => {
                let existing: Vec<(String, String)> = out
                    .table()
                    .map(|t| t.key_schema().iter().map(|k| (k.attribute_name().to_string(), k.key_type().as_str().to_string())).collect())
                    .unwrap_or_default();
                let wanted: Vec<(String, String)> = def.key_schema.iter().map(|k| (k.attribute_name.clone(), k.key_type.clone())).collect();
                if existing != wanted {
                    return Err(MigrateError(format!("table {table} exists with key schema {existing:?}, {file} wants {wanted:?}")));
                }
                false
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => {
                let mut req = client
                    .create_table()
                    .table_name(&table)
                    .billing_mode(BillingMode::PayPerRequest)
                    .set_key_schema(Some(key_schema(&def.key_schema)?));
                for a in &def.attribute_definitions {
                    req = req.attribute_definitions(
                        AttributeDefinition::builder()
                            .attribute_name(&a.attribute_name)
                            .attribute_type(ScalarAttributeType::from(a.attribute_type.as_str()))
                            .build()
                            .map_err(|e| err(file, e))?,
                    );
                }
                for i in &def.global_secondary_indexes {
                    req = req.global_secondary_indexes(
                        GlobalSecondaryIndex::builder()
                            .index_name(&i.index_name)
                            .set_key_schema(Some(key_schema(&i.key_schema)?))
                            .projection(
                                Projection::builder().projection_type(ProjectionType::from(i.projection.projection_type.as_str())).build(),
                            )
                            .build()
                            .map_err(|e| err(file, e))?,
                    );
                }
                match req.send().await {
                    Ok(_) => true,
                    // Created by a concurrent migrate.
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => false,
                    Err(e) => return Err(err(format!("creating {table}"), aws_smithy_types::error::display::DisplayErrorContext(e))),
                }
            }
            Err(e) => return Err(err(format!("describing {table}"), aws_smithy_types::error::display::DisplayErrorContext(e))),
        };
        wait_table_active(client, &table).await?;
        let mut line = format!("table {table}: {}", if created { "created" } else { "exists" });
        if let Some(ttl) = def.time_to_live_specification.filter(|t| t.enabled) {
            let current = client.describe_time_to_live().table_name(&table).send().await.map_err(|e| err(format!("TTL of {table}"), e))?;
            let on = current.time_to_live_description().and_then(|d| d.attribute_name()).is_some_and(|a| a == ttl.attribute_name);
            if !on {
                client
                    .update_time_to_live()
                    .table_name(&table)
                    .time_to_live_specification(
                        TimeToLiveSpecification::builder()
                            .attribute_name(&ttl.attribute_name)
                            .enabled(true)
                            .build()
                            .map_err(|e| err(file, e))?,
                    )
                    .send()
                    .await
                    .map_err(|e| err(format!("enabling TTL on {table}"), aws_smithy_types::error::display::DisplayErrorContext(e)))?;
            }
            line.push_str(&format!(", TTL on {}", ttl.attribute_name));
        }
        report.push(line);
    }
    Ok(report)
}

async fn wait_table_active(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), MigrateError> {
    let deadline = Instant::now() + ACTIVE_TIMEOUT;
    loop {
        let out = client.describe_table().table_name(table).send().await.map_err(|e| err(format!("describing {table}"), e))?;
        let t = out.table();
        let table_active = t.and_then(|t| t.table_status()) == Some(&TableStatus::Active);
        let indexes_active = t
            .map(|t| t.global_secondary_indexes())
            .unwrap_or_default()
            .iter()
            .all(|i| i.index_status().is_none_or(|s| s.as_str() == "ACTIVE"));
        if table_active && indexes_active {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(MigrateError(format!("table {table} not ACTIVE after {ACTIVE_TIMEOUT:?}")));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The clients a migration needs, made from the shared SDK configuration.
pub struct Migrator {
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    kinesis: aws_sdk_kinesis::Client,
}

impl Migrator {
    pub fn new(conf: &aws_config::SdkConfig) -> Self {
        Migrator {
            dynamodb: aws_sdk_dynamodb::Client::new(conf),
            sqs: aws_sdk_sqs::Client::new(conf),
            kinesis: aws_sdk_kinesis::Client::new(conf),
        }
    }

    /// [`tables`].
    pub async fn tables(&self, names: &Names) -> Result<Vec<String>, MigrateError> {
        tables(&self.dynamodb, names).await
    }

    /// [`queues`].
    pub async fn queues(&self, names: &Names, settings: QueueSettings) -> Result<(Vec<String>, String), MigrateError> {
        queues(&self.sqs, names, settings).await
    }

    /// [`stream`].
    pub async fn stream(&self, names: &Names, shards: i32) -> Result<String, MigrateError> {
        stream(&self.kinesis, names, shards).await
    }
}

/// Settings of the queues created by [`queues`].
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// Receives before SQS moves a message to the dead-letter queue on its own.
    pub max_receive_count: u32,
    pub visibility_timeout: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings { max_receive_count: 10, visibility_timeout: Duration::from_secs(30) }
    }
}

/// Creates the FIFO dead-letter queue, the FIFO queue of held messages (no redrive: a pause
/// may last any time), then the FIFO queue of each tenant lane redriving to the dead-letter
/// queue: content-based deduplication off (the msg_id is the deduplication id), deduplication
/// per message group and a throughput limit per group (high-throughput FIFO), 14 days of
/// retention. Returns the lane queues' URLs and the dead-letter queue URL.
pub async fn queues(client: &aws_sdk_sqs::Client, names: &Names, settings: QueueSettings) -> Result<(Vec<String>, String), MigrateError> {
    let fifo = |name: &str| {
        client
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
            .attributes(QueueAttributeName::DeduplicationScope, "messageGroup")
            .attributes(QueueAttributeName::FifoThroughputLimit, "perMessageGroupId")
            .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
            .attributes(QueueAttributeName::VisibilityTimeout, settings.visibility_timeout.as_secs().to_string())
    };
    let dlq = names.dead_letter_queue();
    let dlq_url =
        fifo(&dlq).send().await.map_err(|e| err(format!("creating {dlq}"), aws_smithy_types::error::display::DisplayErrorContext(e)))?;
    let dlq_url = dlq_url.queue_url().unwrap_or_default().to_string();
    let arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| err(format!("reading the ARN of {dlq}"), e))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .ok_or_else(|| MigrateError(format!("{dlq} has no ARN")))?;
    let policy = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": settings.max_receive_count.to_string()}).to_string();
    let held = names.held_queue();
    fifo(&held).send().await.map_err(|e| err(format!("creating {held}"), aws_smithy_types::error::display::DisplayErrorContext(e)))?;
    let mut urls = Vec::with_capacity(names.lanes as usize);
    for lane in 0..names.lanes {
        let q = names.lane_queue(lane);
        let url = fifo(&q)
            .attributes(QueueAttributeName::RedrivePolicy, policy.clone())
            .send()
            .await
            .map_err(|e| err(format!("creating {q}"), aws_smithy_types::error::display::DisplayErrorContext(e)))?;
        urls.push(url.queue_url().unwrap_or_default().to_string());
    }
    Ok((urls, dlq_url))
}

/// Creates the event stream with `shards` shards (if missing) and waits until it is ACTIVE.
pub async fn stream(client: &aws_sdk_kinesis::Client, names: &Names, shards: i32) -> Result<String, MigrateError> {
    let name = names.stream();
    match client.create_stream().stream_name(&name).shard_count(shards).send().await {
        Ok(_) => {}
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {}
        Err(e) => return Err(err(format!("creating stream {name}"), aws_smithy_types::error::display::DisplayErrorContext(e))),
    }
    let deadline = Instant::now() + ACTIVE_TIMEOUT;
    loop {
        let out = client.describe_stream_summary().stream_name(&name).send().await.map_err(|e| err(format!("describing {name}"), e))?;
        if out.stream_description_summary().map(|d| d.stream_status().as_str() == "ACTIVE").unwrap_or(false) {
            return Ok(name);
        }
        if Instant::now() > deadline {
            return Err(MigrateError(format!("stream {name} not ACTIVE after {ACTIVE_TIMEOUT:?}")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_file_parses_and_names_its_keys() {
        for (file, text) in TABLE_FILES {
            let def: TableFile = serde_json::from_str(text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(def.table_name.starts_with("${PREFIX}-"), "{file}");
            for k in def.key_schema.iter().chain(def.global_secondary_indexes.iter().flat_map(|i| &i.key_schema)) {
                assert!(
                    def.attribute_definitions.iter().any(|a| a.attribute_name == k.attribute_name),
                    "{file}: {} undefined",
                    k.attribute_name
                );
            }
        }
    }
}
