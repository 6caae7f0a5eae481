//! The analytics sink on a Kinesis data stream.
//!
//! `emit` only puts events in a bounded buffer (a full buffer drops them, counted in
//! `sluice_analytics_events_dropped_total`), so persistence never waits for Kinesis. A
//! background task sends the buffer with PutRecords, up to 500 records or 5 MiB a call, each
//! record a protobuf `sluice.v1.AnalyticsEvent` with the room as partition key (one room's
//! events stay in order on one shard). Records the stream refused (throttling, internal
//! failure) are sent again alone, with backoff, a bounded number of times.

use crate::Names;
use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use sluice_core::backoff::Backoff;
use sluice_core::events::{AnalyticsEvent, EventSink};
use sluice_core::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Records per PutRecords call, and bytes (Kinesis limits).
const MAX_RECORDS: usize = 500;
const MAX_BYTES: usize = 5 * 1024 * 1024;

/// Settings of the sink.
#[derive(Debug, Clone, Copy)]
pub struct KinesisConfig {
    /// Events buffered before new ones are dropped.
    pub buffer: usize,
    /// How long the first event of a call waits for more to join it.
    pub linger: Duration,
    /// Retries of refused records before they are dropped.
    pub backoff: Backoff,
}

impl Default for KinesisConfig {
    fn default() -> Self {
        KinesisConfig {
            buffer: 100_000,
            linger: Duration::from_millis(100),
            backoff: Backoff { base: Duration::from_millis(50), cap: Duration::from_secs(5), max_attempts: 8 },
        }
    }
}

enum Cmd {
    Event(AnalyticsEvent),
    Flush(oneshot::Sender<()>),
}

/// The Kinesis event sink.
pub struct KinesisEvents {
    tx: mpsc::Sender<Cmd>,
    metrics: Arc<Metrics>,
}

impl KinesisEvents {
    /// Starts the sender task for `<prefix>-events`. Call from inside a tokio runtime.
    pub fn start(client: Client, names: &Names, metrics: Arc<Metrics>, config: KinesisConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.buffer.max(1));
        let sender = Sender { client, stream: names.stream(), metrics: metrics.clone(), config };
        tokio::spawn(sender.run(rx));
        KinesisEvents { tx, metrics }
    }
}

fn partition_key(e: &AnalyticsEvent) -> &str {
    match e {
        AnalyticsEvent::MessagePersisted { room, .. } | AnalyticsEvent::RoomRead { room, .. } => room,
    }
}

struct Sender {
    client: Client,
    stream: String,
    metrics: Arc<Metrics>,
    config: KinesisConfig,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Cmd>) {
        let mut pending: Vec<PutRecordsRequestEntry> = Vec::new();
        let mut bytes = 0;
        loop {
            let cmd = if pending.is_empty() {
                match rx.recv().await {
                    Some(c) => c,
                    None => return,
                }
            } else {
                match tokio::time::timeout(self.config.linger, rx.recv()).await {
                    Ok(Some(c)) => c,
                    Ok(None) => {
                        self.put(std::mem::take(&mut pending)).await;
                        return;
                    }
                    Err(_) => {
                        self.put(std::mem::take(&mut pending)).await;
                        bytes = 0;
                        continue;
                    }
                }
            };
            match cmd {
                Cmd::Event(e) => {
                    let data = sluice_proto::convert::encode_event(&e);
                    let size = data.len() + partition_key(&e).len();
                    if pending.len() == MAX_RECORDS || bytes + size > MAX_BYTES {
                        self.put(std::mem::take(&mut pending)).await;
                        bytes = 0;
                    }
                    bytes += size;
                    pending.push(
                        PutRecordsRequestEntry::builder()
                            .data(Blob::new(data))
                            .partition_key(partition_key(&e))
                            .build()
                            .expect("record has data and key"),
                    );
                }
                Cmd::Flush(done) => {
                    self.put(std::mem::take(&mut pending)).await;
                    bytes = 0;
                    let _ = done.send(());
                }
            }
        }
    }

    /// One PutRecords, then only the refused records again, until all are in or the
    /// retries are used up.
    async fn put(&self, mut records: Vec<PutRecordsRequestEntry>) {
        let mut attempt = 0;
        while !records.is_empty() {
            self.metrics.aws_requests.with_label_values(&["kinesis", "PutRecords"]).inc();
            let out = self.client.put_records().stream_name(&self.stream).set_records(Some(records.clone())).send().await;
            match out {
                Ok(out) if out.failed_record_count().unwrap_or(0) == 0 => {
                    self.metrics.events_written.inc_by(records.len() as u64);
                    return;
                }
                Ok(out) => {
                    let results = out.records();
                    let mut kept = Vec::new();
                    for (r, res) in records.into_iter().zip(results) {
                        if let Some(code) = res.error_code() {
                            self.metrics.aws_retryable.with_label_values(&["kinesis", code]).inc();
                            kept.push(r);
                        } else {
                            self.metrics.events_written.inc();
                        }
                    }
                    records = kept;
                }
                Err(e) => {
                    tracing::warn!(error = %aws_smithy_types::error::display::DisplayErrorContext(&e), "PutRecords failed");
                }
            }
            match self.config.backoff.delay(attempt) {
                Some(d) => tokio::time::sleep(d).await,
                None => {
                    tracing::warn!(dropped = records.len(), stream = %self.stream, "analytics records dropped after retries");
                    self.metrics.events_dropped.inc_by(records.len() as u64);
                    return;
                }
            }
            attempt += 1;
        }
    }
}

#[async_trait]
impl EventSink for KinesisEvents {
    fn emit(&self, events: Vec<AnalyticsEvent>) {
        for e in events {
            if self.tx.try_send(Cmd::Event(e)).is_err() {
                self.metrics.events_dropped.inc();
            }
        }
    }

    async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Cmd::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}
