//! The analytics sink on a Kinesis data stream.
//!
//! `emit` only puts events in a bounded buffer (a full buffer drops them, counted in
//! `sluice_analytics_events_dropped_total`), so persistence never waits for Kinesis. A
//! background task sends the buffer with PutRecords, up to 500 records or 5 MiB a call, each
//! record a protobuf `sluice.v1.AnalyticsEvent` with the room as partition key.
//!
//! One room's events reach the stream in order. Kinesis may refuse some records of a call and
//! write the others (a shard over its limits), so a call carries at most one record per room:
//! a refused record keeps its place at the head of its room's records and goes again, with
//! backoff, before any later one of its room (a bounded number of times, then it is dropped
//! and counted). The price is a room's event rate: one per call, about 20-50 a second on
//! Kinesis (a shard takes 1,000 records a second, so a room never had more than that).

use crate::Names;
use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use sluice_core::backoff::Backoff;
use sluice_core::events::{AnalyticsEvent, EventSink};
use sluice_core::metrics::Metrics;
use std::collections::{HashSet, VecDeque};
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
    /// [`KinesisEvents::start`] with a client made from the shared SDK configuration.
    pub fn from_conf(conf: &aws_config::SdkConfig, names: &Names, metrics: Arc<Metrics>, config: KinesisConfig) -> Self {
        Self::start(Client::new(conf), names, metrics, config)
    }

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

/// A record waiting for its PutRecords call.
struct Pending {
    key: String,
    entry: PutRecordsRequestEntry,
    size: usize,
    /// Calls that refused it so far.
    refusals: u32,
    at: tokio::time::Instant,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Cmd>) {
        let mut queue: VecDeque<Pending> = VecDeque::new();
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        let mut closed = false;
        let mut failing = 0u32;
        loop {
            if queue.is_empty() {
                for f in flushes.drain(..) {
                    let _ = f.send(());
                }
                if closed {
                    return;
                }
                match rx.recv().await {
                    Some(c) => take(c, &mut queue, &mut flushes),
                    None => return,
                }
                if queue.is_empty() {
                    // A flush with nothing to send: answered at the top.
                    continue;
                }
            }
            // Let a call fill up for a linger from its oldest record's arrival (records left
            // over from the last call go at once), unless a flush waits.
            let linger = queue.front().map_or_else(tokio::time::Instant::now, |p| p.at) + self.config.linger;
            while !closed && queue.len() < MAX_RECORDS && flushes.is_empty() {
                match tokio::time::timeout_at(linger, rx.recv()).await {
                    Ok(Some(c)) => take(c, &mut queue, &mut flushes),
                    Ok(None) => closed = true,
                    Err(_) => break,
                }
            }
            // Everything already waiting joins the queue (up to the buffer's size), so one
            // busy room's backlog never keeps other rooms' events out of a call.
            while queue.len() < self.config.buffer {
                match rx.try_recv() {
                    Ok(c) => take(c, &mut queue, &mut flushes),
                    Err(_) => break,
                }
            }
            if self.call(&mut queue).await {
                failing = 0;
            } else {
                // Refused records (or the whole call) wait with backoff, new events queue up.
                let delay = self.config.backoff.delay(failing).unwrap_or(self.config.backoff.cap);
                failing += 1;
                let until = tokio::time::Instant::now() + delay;
                // Take new events meanwhile, up to the buffer's size (the channel holds as many
                // again; beyond that `emit` drops and counts them).
                while !closed && queue.len() < self.config.buffer {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(c)) => take(c, &mut queue, &mut flushes),
                        Ok(None) => closed = true,
                        Err(_) => break,
                    }
                }
                tokio::time::sleep_until(until).await;
            }
        }
    }

    /// One PutRecords call of the first record of each room in the queue (its later records
    /// wait for the next call), up to Kinesis's limits. Written records leave the queue,
    /// refused ones keep their place, so a room's records reach the stream in order whatever
    /// Kinesis refuses. False when anything was refused.
    async fn call(&self, queue: &mut VecDeque<Pending>) -> bool {
        let mut busy: HashSet<&str> = HashSet::new();
        let (mut picked, mut bytes) = (Vec::new(), 0);
        for (i, p) in queue.iter().enumerate() {
            if picked.len() == MAX_RECORDS {
                break;
            }
            // Whether sent now or left for lack of room, the room's later records wait.
            if busy.insert(p.key.as_str()) && bytes + p.size <= MAX_BYTES {
                bytes += p.size;
                picked.push(i);
            }
        }
        let records: Vec<PutRecordsRequestEntry> = picked.iter().map(|&i| queue[i].entry.clone()).collect();
        self.metrics.aws_requests.with_label_values(&["kinesis", "PutRecords"]).inc();
        let refused: Vec<bool> = match self.client.put_records().stream_name(&self.stream).set_records(Some(records)).send().await {
            Ok(out) => {
                let results = out.records();
                picked
                    .iter()
                    .enumerate()
                    .map(|(j, _)| match results.get(j).map(|r| r.error_code()) {
                        Some(None) => false,
                        Some(Some(code)) => {
                            self.metrics.aws_retryable.with_label_values(&["kinesis", code]).inc();
                            true
                        }
                        None => true,
                    })
                    .collect()
            }
            Err(e) => {
                tracing::warn!(error = %aws_smithy_types::error::display::DisplayErrorContext(&e), "PutRecords failed");
                vec![true; picked.len()]
            }
        };
        let mut done: Vec<usize> = Vec::new();
        for (&i, &r) in picked.iter().zip(&refused) {
            if !r {
                self.metrics.events_written.inc();
                done.push(i);
                continue;
            }
            let p = &mut queue[i];
            p.refusals += 1;
            if self.config.backoff.delay(p.refusals - 1).is_none() {
                tracing::warn!(stream = %self.stream, room = %p.key, "an analytics record dropped after retries");
                self.metrics.events_dropped.inc();
                done.push(i);
            }
        }
        for i in done.into_iter().rev() {
            queue.remove(i);
        }
        !refused.iter().any(|r| *r)
    }
}

fn take(cmd: Cmd, queue: &mut VecDeque<Pending>, flushes: &mut Vec<oneshot::Sender<()>>) {
    match cmd {
        Cmd::Event(e) => {
            let data = sluice_proto::convert::encode_event(&e);
            let key = partition_key(&e).to_string();
            let size = data.len() + key.len();
            let entry =
                PutRecordsRequestEntry::builder().data(Blob::new(data)).partition_key(&key).build().expect("record has data and key");
            queue.push_back(Pending { key, entry, size, refusals: 0, at: tokio::time::Instant::now() });
        }
        Cmd::Flush(done) => flushes.push(done),
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
