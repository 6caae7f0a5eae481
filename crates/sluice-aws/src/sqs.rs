//! The spike queue on SQS FIFO.
//!
//! - send: SendMessageBatch (10 entries, at most 256 KiB), MessageGroupId from the room,
//!   MessageDeduplicationId = msg_id; entries that fail are retried alone with backoff.
//!   Messages are spread over parallel lanes by group, each lane sending in order, so a
//!   group's order survives the parallelism.
//! - receive: long poll (up to 10, up to 20 s) with a ReceiveRequestAttemptId, so a retried
//!   receive returns the same messages instead of hiding them for a visibility timeout.
//! - ack: DeleteMessageBatch; extend and release: ChangeMessageVisibilityBatch.
//! - tenant lanes: the bulk lane is spread over `lanes` FIFO queues, a tenant's messages all
//!   in the lane its name hashes to. SQS hands out a queue's groups roughly in arrival order,
//!   so within one queue a small campaign waits behind every earlier one; across lanes,
//!   receives take turns over the lanes that had messages, and probe each lane that looked
//!   empty with a short poll at most once a second (about `lanes - 1` extra requests a second
//!   per process while draining; idle, the pollers long-poll the lanes in turn, as with one
//!   queue). Tenants that hash to one lane share it in arrival order, and tenant weights are
//!   not applied here (the embedded queue applies them exactly).
//! - dead letters: the worker's verdicts are sent to the dead-letter queue with the reason as
//!   a message attribute, then deleted here; messages SQS moves on its own (the redrive
//!   policy's maxReceiveCount) arrive without one, and are offered for adoption (a worker
//!   counts them for their campaign, then they are sent again with a reason). `redrive`
//!   sends dead letters back with a fresh deduplication id (the original may still be inside
//!   the 5-minute window).
//! - held messages (an operator's pause of a tenant or campaign) go to the held queue with
//!   the hold key as their group; a release scans it, one group at a time, and sends the
//!   key's messages back to their lane.
//!
//! Bodies are the protobuf `sluice.v1.QueuedMessage`, base64 encoded (SQS bodies are text).
//! SQS does not say which sends it dropped as duplicates, so `SendOutcome::duplicates` counts
//! only repeats inside one `send` call (which are not sent at all), and it has no age of the oldest message (that is CloudWatch's
//! ApproximateAgeOfOldestMessage), so `QueueStats::oldest_age_ms` is 0.

use crate::Names;
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_smithy_types::base64;
use bytes::Bytes;
use futures::StreamExt;
use sluice_core::backoff::Backoff;
use sluice_core::error::QueueError;
use sluice_core::metrics::Metrics;
use sluice_core::queue::{DeadLetter, Delivery, Enqueue, QueueStats, Receipt, SendOutcome, SpikeQueue};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Entries per SQS batch call.
const BATCH: usize = 10;
/// Payload of one SendMessageBatch (the classic SQS limit, which moto also enforces).
const BATCH_BYTES: usize = 256 * 1024;
/// Batches sent at once by one `send`.
const LANES: usize = 16;
/// Longest long poll SQS allows.
const MAX_WAIT: Duration = Duration::from_secs(20);
/// Attribute carrying the original deduplication id (the msg_id) through dead-lettering and
/// redrive, and the dead-letter reason.
const ATTR_DEDUP: &str = "sluice_dedup_id";
const ATTR_REASON: &str = "sluice_reason";
const ATTR_RECEIVES: &str = "sluice_receive_count";
const ATTR_TENANT: &str = "sluice_tenant";
/// The hold key and the original group of a held message (its group in the held queue is
/// the hold key).
const ATTR_HOLD: &str = "sluice_hold";
const ATTR_GROUP: &str = "sluice_group";
/// Most receives one scan of the dead-letter queue for adoptable letters makes.
const ADOPT_SCAN_RECEIVES: usize = 100;
/// A dead-letter queue whose depth did not move is scanned again after this long anyway.
const ADOPT_FULL_SCAN_EVERY: Duration = Duration::from_secs(600);
/// How long a lane that answered empty is skipped before it is probed again.
const EMPTY_LANE_PROBE: Duration = Duration::from_secs(1);
/// In-flight bookkeeping older than SQS's longest visibility timeout is dropped.
const IN_FLIGHT_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// What this process received and has not settled yet: needed to dead-letter by receipt.
struct InFlight {
    lane: usize,
    message_id: String,
    group: String,
    tenant: String,
    dedup_id: String,
    body_b64: String,
    receive_count: u32,
    received: Instant,
}

/// Which lane receives next, and which lanes looked empty until when.
struct Lanes {
    next: usize,
    empty_until: Vec<Option<Instant>>,
}

impl Lanes {
    /// The next lane in turn that did not look empty lately.
    fn next_busy(&mut self, now: Instant) -> Option<usize> {
        let n = self.empty_until.len();
        for k in 0..n {
            let lane = (self.next + k) % n;
            if self.empty_until[lane].is_none_or(|t| t <= now) {
                self.next = (lane + 1) % n;
                return Some(lane);
            }
        }
        None
    }

    /// The next lane in turn, empty or not.
    fn next_any(&mut self) -> usize {
        let lane = self.next;
        self.next = (lane + 1) % self.empty_until.len();
        lane
    }

    fn saw(&mut self, lane: usize, empty: bool) {
        self.empty_until[lane] = empty.then(|| Instant::now() + EMPTY_LANE_PROBE);
    }
}

/// The lane of `tenant` among `lanes` (FNV-1a: stable across processes and releases).
pub fn lane_of(tenant: &str, lanes: usize) -> usize {
    let h = tenant.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (h % lanes.max(1) as u64) as usize
}

/// Where [`SqsQueue::move_out`] moves a message.
#[derive(Clone, Copy)]
enum Aside<'a> {
    Dead { reason: &'a str },
    Held { key: &'a str },
}

/// A receipt names its lane: `<lane>|<receipt handle>`.
fn lane_receipt(lane: usize, handle: &str) -> String {
    format!("{lane}|{handle}")
}

/// The SQS FIFO spike queue.
pub struct SqsQueue {
    client: Client,
    /// The queue URL of each tenant lane.
    urls: Vec<String>,
    lanes: Mutex<Lanes>,
    dlq_url: String,
    held_url: String,
    metrics: Arc<Metrics>,
    backoff: Backoff,
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// Dead letters offered for adoption and not yet marked, by receipt handle.
    adoptable: Mutex<HashMap<String, Message>>,
    /// When the last adoption scan found nothing, and the dead-letter depth it saw.
    last_adopt_scan: Mutex<Option<(Instant, u64)>>,
    client_side_wait: bool,
}

fn queue_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(op: &str, err: SdkError<E, R>) -> QueueError {
    let text = format!("SQS {op}: {}", aws_smithy_types::error::display::DisplayErrorContext(&err));
    match &err {
        SdkError::ServiceError(e) => match e.err().code() {
            Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist") => {
                QueueError::Internal(format!("{text} (create it with `sluice migrate --backend aws --with-queues`)"))
            }
            Some("InvalidParameterValue" | "InvalidMessageContents" | "MissingParameter") => QueueError::Invalid(text),
            _ => QueueError::Unavailable(text),
        },
        _ => QueueError::Unavailable(text),
    }
}

impl SqsQueue {
    /// Looks up the queue and dead-letter queue URLs by name.
    pub async fn connect(client: Client, names: &Names, metrics: Arc<Metrics>) -> Result<Self, QueueError> {
        let url_of = |name: String| {
            let client = client.clone();
            async move {
                let out = client.get_queue_url().queue_name(&name).send().await.map_err(|e| queue_error("GetQueueUrl", e))?;
                out.queue_url.ok_or_else(|| QueueError::Internal(format!("no URL for queue {name}")))
            }
        };
        let mut urls = Vec::with_capacity(names.lanes as usize);
        for lane in 0..names.lanes.max(1) {
            urls.push(url_of(names.lane_queue(lane)).await?);
        }
        let dlq_url = url_of(names.dead_letter_queue()).await?;
        let held_url = url_of(names.held_queue()).await?;
        Ok(SqsQueue {
            held_url,
            client,
            lanes: Mutex::new(Lanes { next: 0, empty_until: vec![None; urls.len()] }),
            urls,
            dlq_url,
            metrics,
            backoff: Backoff::default(),
            in_flight: Mutex::new(HashMap::new()),
            adoptable: Mutex::new(HashMap::new()),
            last_adopt_scan: Mutex::new(None),
            client_side_wait: false,
        })
    }

    /// Waits for messages with repeated short polls instead of SQS long polling. Only for
    /// emulators: moto 5.2.5 checks FIFO group blocking once at the start of a long poll, so
    /// a long poll can hand out a message of a group that went in flight while it waited.
    /// Real SQS should long-poll (fewer, cheaper empty receives).
    pub fn with_client_side_wait(mut self, on: bool) -> Self {
        self.client_side_wait = on;
        self
    }

    /// The queue URL of each tenant lane.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    fn count(&self, op: &str) {
        self.metrics.aws_requests.with_label_values(&["sqs", op]).inc();
    }

    async fn pause(&self, attempt: u32, why: &str) -> Result<(), QueueError> {
        self.metrics.retries.inc();
        match self.backoff.delay(attempt) {
            Some(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            None => Err(QueueError::Unavailable(format!("gave up after {attempt} attempts: {why}"))),
        }
    }

    /// Sends one lane's entries in order, in batches, retrying failed entries.
    async fn send_lane(&self, url: &str, entries: Vec<SendMessageBatchRequestEntry>) -> Result<(), QueueError> {
        let mut rest = entries.into_iter().peekable();
        while rest.peek().is_some() {
            let mut batch = Vec::with_capacity(BATCH);
            let mut bytes = 0;
            while let Some(e) = rest.peek() {
                let size = e.message_body().len() + 200;
                if batch.len() == BATCH || (!batch.is_empty() && bytes + size > BATCH_BYTES) {
                    break;
                }
                bytes += size;
                let mut e = rest.next().expect("peeked");
                // Ids only need to be distinct within one call.
                e.id = batch.len().to_string();
                batch.push(e);
            }
            self.send_batch(url, batch).await?;
        }
        Ok(())
    }

    async fn send_batch(&self, url: &str, mut batch: Vec<SendMessageBatchRequestEntry>) -> Result<(), QueueError> {
        let mut attempt = 0;
        loop {
            self.count("SendMessageBatch");
            let out = match self.client.send_message_batch().queue_url(url).set_entries(Some(batch.clone())).send().await {
                Ok(out) => out,
                Err(e) => match queue_error("SendMessageBatch", e) {
                    e @ QueueError::Unavailable(_) => {
                        self.pause(attempt, &e.to_string()).await?;
                        attempt += 1;
                        continue;
                    }
                    e => return Err(e),
                },
            };
            if out.failed.is_empty() {
                return Ok(());
            }
            if let Some(f) = out.failed.iter().find(|f| f.sender_fault) {
                return Err(QueueError::Invalid(format!("SQS refused a message: {} {}", f.code, f.message.as_deref().unwrap_or(""))));
            }
            // Only the failed entries go again; within a group they keep their order.
            let failed: Vec<&str> = out.failed.iter().map(|f| f.id.as_str()).collect();
            batch.retain(|e| failed.contains(&e.id()));
            self.pause(attempt, &format!("{} entries failed", failed.len())).await?;
            attempt += 1;
        }
    }

    fn entry(group: &str, dedup_id: &str, body_b64: String, original_dedup: &str, tenant: &str) -> SendMessageBatchRequestEntry {
        let mut e = SendMessageBatchRequestEntry::builder()
            .id("0")
            .message_group_id(group)
            .message_deduplication_id(dedup_id)
            .message_body(body_b64)
            .message_attributes(ATTR_DEDUP, string_attr(original_dedup));
        // SQS refuses an empty attribute value; no attribute is the default tenant.
        if !tenant.is_empty() {
            e = e.message_attributes(ATTR_TENANT, string_attr(tenant));
        }
        e.build().expect("entry has id and body")
    }

    #[allow(deprecated)] // AttributeNames is deprecated, but older emulators know only it
    async fn receive_from(&self, url: &str, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<Message>, QueueError> {
        let attempt_id = sluice_core::ids::random_id();
        let mut attempt = 0;
        loop {
            self.count("ReceiveMessage");
            let out = self
                .client
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(max.clamp(1, BATCH) as i32)
                .wait_time_seconds(wait.min(MAX_WAIT).as_secs_f64().ceil() as i32)
                .visibility_timeout(visibility.as_secs().max(1) as i32)
                .receive_request_attempt_id(&attempt_id)
                .attribute_names(QueueAttributeName::All)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await;
            match out {
                Ok(out) => return Ok(out.messages.unwrap_or_default()),
                Err(e) => match queue_error("ReceiveMessage", e) {
                    // The same attempt id again: SQS hands back what the lost answer held.
                    e @ QueueError::Unavailable(_) => {
                        self.pause(attempt, &e.to_string()).await?;
                        attempt += 1;
                    }
                    e => return Err(e),
                },
            }
        }
    }

    /// ChangeMessageVisibilityBatch / DeleteMessageBatch over any number of receipts.
    /// Returns how many receipts SQS refused as no longer valid.
    async fn settle(&self, url: &str, receipts: &[String], visibility: Option<Duration>) -> Result<usize, QueueError> {
        let mut refused = 0;
        for chunk in receipts.chunks(BATCH) {
            let mut attempt = 0;
            let mut pending: Vec<(usize, &String)> = chunk.iter().enumerate().collect();
            while !pending.is_empty() {
                let failed: Vec<(String, bool, String)> = match visibility {
                    None => {
                        self.count("DeleteMessageBatch");
                        let entries = pending
                            .iter()
                            .map(|(i, r)| {
                                DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(*r).build().expect("entry")
                            })
                            .collect();
                        let out = self.client.delete_message_batch().queue_url(url).set_entries(Some(entries)).send().await;
                        match out {
                            Ok(o) => o.failed.into_iter().map(|f| (f.id, f.sender_fault, f.code)).collect(),
                            Err(e) => vec![(String::new(), false, queue_error("DeleteMessageBatch", e).to_string())],
                        }
                    }
                    Some(v) => {
                        self.count("ChangeMessageVisibilityBatch");
                        let entries = pending
                            .iter()
                            .map(|(i, r)| {
                                ChangeMessageVisibilityBatchRequestEntry::builder()
                                    .id(i.to_string())
                                    .receipt_handle(*r)
                                    .visibility_timeout(v.as_secs() as i32)
                                    .build()
                                    .expect("entry")
                            })
                            .collect();
                        let out = self.client.change_message_visibility_batch().queue_url(url).set_entries(Some(entries)).send().await;
                        match out {
                            Ok(o) => o.failed.into_iter().map(|f| (f.id, f.sender_fault, f.code)).collect(),
                            Err(e) => vec![(String::new(), false, queue_error("ChangeMessageVisibilityBatch", e).to_string())],
                        }
                    }
                };
                if failed.is_empty() {
                    break;
                }
                // A receipt SQS no longer knows (the message came back to another consumer
                // or is gone) cannot be settled by anyone: leave it.
                let whole_call = failed.iter().any(|(id, _, _)| id.is_empty());
                let retry: Vec<String> = failed.iter().filter(|(_, sender, _)| !sender).map(|(id, _, _)| id.clone()).collect();
                for (_, _, code) in failed.iter().filter(|(_, sender, _)| *sender) {
                    tracing::debug!(%code, "SQS refused to settle a receipt");
                    refused += 1;
                }
                if !whole_call {
                    pending.retain(|(i, _)| retry.contains(&i.to_string()));
                }
                if pending.is_empty() {
                    break;
                }
                self.pause(attempt, &format!("settling receipts: {failed:?}")).await?;
                attempt += 1;
            }
        }
        Ok(refused)
    }

    /// The receipts still current in this process. A receipt is stale once its message was
    /// received again; settling it would act on the newer delivery (moto, unlike SQS, even
    /// accepts old receipt handles), so stale ones are left out.
    fn current(&self, receipts: &[Receipt]) -> Vec<(usize, String)> {
        let map = self.in_flight.lock().expect("in-flight lock");
        receipts
            .iter()
            .filter_map(|r| {
                let f = map.get(&r.0)?;
                let (_, handle) = r.0.split_once('|')?;
                Some((f.lane, handle.to_string()))
            })
            .collect()
    }

    /// Settles receipts of any lanes, one lane at a time; returns how many SQS refused.
    async fn settle_lanes(&self, receipts: &[(usize, String)], visibility: Option<Duration>) -> Result<usize, QueueError> {
        let mut refused = 0;
        for (lane, url) in self.urls.iter().enumerate() {
            let handles: Vec<String> = receipts.iter().filter(|(l, _)| *l == lane).map(|(_, h)| h.clone()).collect();
            if !handles.is_empty() {
                refused += self.settle(url, &handles, visibility).await?;
            }
        }
        Ok(refused)
    }

    fn forget(&self, receipts: &[Receipt]) {
        let mut map = self.in_flight.lock().expect("in-flight lock");
        for r in receipts {
            map.remove(&r.0);
        }
    }

    /// Moves an in-flight message to the dead-letter queue or the held queue, then deletes it
    /// from its lane.
    async fn move_out(&self, receipt: &Receipt, to: Aside<'_>) -> Result<(), QueueError> {
        let f = {
            let map = self.in_flight.lock().expect("in-flight lock");
            let f = map.get(&receipt.0).ok_or_else(|| QueueError::Invalid("unknown receipt (not received by this process)".into()))?;
            (f.group.clone(), f.dedup_id.clone(), f.body_b64.clone(), f.receive_count, f.tenant.clone())
        };
        let (group, dedup_id, body, receive_count, tenant) = f;
        // Keep the message invisible while it moves, which also proves the receipt is still current.
        if self.settle_lanes(&self.current(std::slice::from_ref(receipt)), Some(Duration::from_secs(60))).await? > 0 {
            self.forget(std::slice::from_ref(receipt));
            return Err(QueueError::Invalid("stale receipt: the message was received again since".into()));
        }
        // One id per delivery: a retry of this call is deduplicated, a later move of the same
        // message (after a redrive or a release) is not.
        let move_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, receipt.0.as_bytes()).simple().to_string();
        let mut attempt = 0;
        loop {
            self.count("SendMessage");
            let mut send = self
                .client
                .send_message()
                .message_deduplication_id(&move_id)
                .message_body(&body)
                .message_attributes(ATTR_DEDUP, string_attr(&dedup_id))
                .message_attributes(ATTR_RECEIVES, string_attr(&receive_count.to_string()));
            send = match to {
                Aside::Dead { reason } => {
                    send.queue_url(&self.dlq_url).message_group_id(&group).message_attributes(ATTR_REASON, string_attr(reason))
                }
                Aside::Held { key } => send
                    .queue_url(&self.held_url)
                    .message_group_id(key)
                    .message_attributes(ATTR_HOLD, string_attr(key))
                    .message_attributes(ATTR_GROUP, string_attr(&group)),
            };
            if !tenant.is_empty() {
                send = send.message_attributes(ATTR_TENANT, string_attr(&tenant));
            }
            match send.send().await {
                Ok(_) => break,
                Err(e) => match queue_error("SendMessage", e) {
                    e @ QueueError::Unavailable(_) => {
                        self.pause(attempt, &e.to_string()).await?;
                        attempt += 1;
                    }
                    e => return Err(e),
                },
            }
        }
        self.ack(std::slice::from_ref(receipt)).await
    }

    /// Receives from the lanes in turn (see the module doc): first a short poll of each lane
    /// that had messages or is due a probe, then, when all looked empty, a wait on one lane.
    async fn receive_lanes(&self, max: usize, wait: Duration, visibility: Duration) -> Result<(usize, Vec<Message>), QueueError> {
        let give_up = Instant::now() + wait;
        let mut pause = Duration::from_millis(20);
        loop {
            let busy = self.lanes.lock().expect("lanes lock").next_busy(Instant::now());
            if let Some(lane) = busy {
                let got = self.receive_from(&self.urls[lane], max, Duration::ZERO, visibility).await?;
                self.lanes.lock().expect("lanes lock").saw(lane, got.is_empty());
                if !got.is_empty() {
                    return Ok((lane, got));
                }
                continue;
            }
            let left = give_up.saturating_duration_since(Instant::now());
            let lane = self.lanes.lock().expect("lanes lock").next_any();
            if left.is_zero() {
                return Ok((lane, Vec::new()));
            }
            if self.client_side_wait {
                tokio::time::sleep(pause.min(left)).await;
                pause = (pause * 2).min(Duration::from_millis(500));
                let got = self.receive_from(&self.urls[lane], max, Duration::ZERO, visibility).await?;
                self.lanes.lock().expect("lanes lock").saw(lane, got.is_empty());
                if !got.is_empty() {
                    return Ok((lane, got));
                }
            } else {
                // Long polls wait whole seconds; a wait on one lane stops at the next probe of the others.
                let got = self.receive_from(&self.urls[lane], max, left.min(EMPTY_LANE_PROBE), visibility).await?;
                self.lanes.lock().expect("lanes lock").saw(lane, got.is_empty());
                if !got.is_empty() || Instant::now() >= give_up {
                    return Ok((lane, got));
                }
            }
        }
    }

    async fn attribute_counts(&self, url: &str) -> Result<(u64, u64), QueueError> {
        self.count("GetQueueAttributes");
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| queue_error("GetQueueAttributes", e))?;
        let attrs = out.attributes.unwrap_or_default();
        let get = |k: QueueAttributeName| attrs.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok((get(QueueAttributeName::ApproximateNumberOfMessages), get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)))
    }

    /// Receives up to `limit` dead letters; they stay invisible for `hold` unless settled.
    async fn dlq_messages(&self, limit: usize, hold: Duration) -> Result<Vec<Message>, QueueError> {
        let mut out: Vec<Message> = Vec::new();
        while out.len() < limit {
            let got = self.receive_from(&self.dlq_url, limit - out.len(), Duration::ZERO, hold).await?;
            if got.is_empty() {
                break;
            }
            out.extend(got);
        }
        Ok(out)
    }
}

fn string_attr(v: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder().data_type("String").string_value(v).build().expect("attribute")
}

fn system_attr(m: &Message, name: MessageSystemAttributeName) -> Option<&str> {
    m.attributes.as_ref().and_then(|a| a.get(&name)).map(String::as_str)
}

fn user_attr<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.message_attributes.as_ref().and_then(|a| a.get(name)).and_then(|v| v.string_value())
}

fn dedup_of(m: &Message) -> String {
    user_attr(m, ATTR_DEDUP).or_else(|| system_attr(m, MessageSystemAttributeName::MessageDeduplicationId)).unwrap_or_default().to_string()
}

fn dead_letter_of(m: &Message) -> DeadLetter {
    DeadLetter {
        dedup_id: dedup_of(m),
        group: system_attr(m, MessageSystemAttributeName::MessageGroupId).unwrap_or_default().to_string(),
        tenant: user_attr(m, ATTR_TENANT).unwrap_or_default().to_string(),
        body: decode_body(m),
        reason: user_attr(m, ATTR_REASON).unwrap_or("moved by the queue's redrive policy (maxReceiveCount exceeded)").to_string(),
        receive_count: user_attr(m, ATTR_RECEIVES)
            .or_else(|| system_attr(m, MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        dead_at_ms: system_attr(m, MessageSystemAttributeName::SentTimestamp).and_then(|v| v.parse().ok()).unwrap_or(0),
    }
}

fn decode_body(m: &Message) -> Bytes {
    Bytes::from(base64::decode(m.body().unwrap_or_default()).unwrap_or_else(|_| m.body().unwrap_or_default().as_bytes().to_vec()))
}

#[async_trait]
impl SpikeQueue for SqsQueue {
    async fn send(&self, batch: Vec<Enqueue>) -> Result<SendOutcome, QueueError> {
        let total = batch.len();
        let mut seen = std::collections::HashSet::with_capacity(total);
        let batch: Vec<Enqueue> = batch.into_iter().filter(|e| seen.insert(e.dedup_id.clone())).collect();
        let sent = batch.len();
        // One batch keeps the order across groups too; larger sends keep it within groups.
        let lanes_used = if sent <= BATCH { 1 } else { LANES };
        // Parallel sends per (tenant lane, group hash): a group is always in one send.
        let mut sends: HashMap<(usize, usize), Vec<SendMessageBatchRequestEntry>> = HashMap::new();
        for e in batch {
            let tenant_lane = lane_of(&e.tenant, self.urls.len());
            let part = e.group.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize)) % lanes_used;
            sends.entry((tenant_lane, part)).or_default().push(Self::entry(
                &e.group,
                &e.dedup_id,
                base64::encode(&e.body),
                &e.dedup_id,
                &e.tenant,
            ));
        }
        let results: Vec<Result<(), QueueError>> = futures::stream::iter(sends)
            .map(|((lane, _), entries)| self.send_lane(&self.urls[lane], entries))
            .buffer_unordered(LANES)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), _>>()?;
        Ok(SendOutcome { enqueued: sent, duplicates: total - sent })
    }

    async fn receive(&self, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        let (lane, messages) = self.receive_lanes(max, wait, visibility).await?;
        let mut map = self.in_flight.lock().expect("in-flight lock");
        // A message received again makes its earlier receipts stale.
        let again: Vec<&str> = messages.iter().filter_map(|m| m.message_id()).collect();
        map.retain(|_, f| f.received.elapsed() < IN_FLIGHT_MAX_AGE && !again.contains(&f.message_id.as_str()));
        Ok(messages
            .iter()
            .filter_map(|m| {
                let receipt = lane_receipt(lane, m.receipt_handle()?);
                let group = system_attr(m, MessageSystemAttributeName::MessageGroupId).unwrap_or_default().to_string();
                let tenant = user_attr(m, ATTR_TENANT).unwrap_or_default().to_string();
                let receive_count =
                    system_attr(m, MessageSystemAttributeName::ApproximateReceiveCount).and_then(|v| v.parse().ok()).unwrap_or(1);
                let enqueued_at_ms = system_attr(m, MessageSystemAttributeName::SentTimestamp).and_then(|v| v.parse().ok()).unwrap_or(0);
                let dedup_id = dedup_of(m);
                map.insert(
                    receipt.clone(),
                    InFlight {
                        lane,
                        message_id: m.message_id().unwrap_or_default().to_string(),
                        group: group.clone(),
                        tenant: tenant.clone(),
                        dedup_id: dedup_id.clone(),
                        body_b64: m.body().unwrap_or_default().to_string(),
                        receive_count,
                        received: Instant::now(),
                    },
                );
                Some(Delivery { receipt: Receipt(receipt), dedup_id, group, tenant, body: decode_body(m), receive_count, enqueued_at_ms })
            })
            .collect())
    }

    async fn ack(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        let handles = self.current(receipts);
        self.settle_lanes(&handles, None).await?;
        self.forget(receipts);
        Ok(())
    }

    async fn extend(&self, receipts: &[Receipt], visibility: Duration) -> Result<(), QueueError> {
        let handles = self.current(receipts);
        self.settle_lanes(&handles, Some(visibility)).await.map(|_| ())
    }

    async fn release(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        let handles = self.current(receipts);
        self.settle_lanes(&handles, Some(Duration::ZERO)).await?;
        self.forget(receipts);
        Ok(())
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: &str) -> Result<(), QueueError> {
        self.move_out(receipt, Aside::Dead { reason }).await
    }

    async fn hold(&self, receipt: &Receipt, key: &str) -> Result<(), QueueError> {
        self.move_out(receipt, Aside::Held { key }).await
    }

    async fn release_held(&self, key: &str, limit: usize) -> Result<usize, QueueError> {
        // In the held queue a key is a message group: a receive hands out one group's
        // messages, and while they are in flight, no more of that group. So each other key
        // costs about one receive, and its messages stay in flight until the scan ends.
        let mut moved = 0;
        let mut others: Vec<String> = Vec::new();
        while moved < limit {
            let got = self.receive_from(&self.held_url, (limit - moved).min(BATCH), Duration::ZERO, Duration::from_secs(60)).await?;
            if got.is_empty() {
                break;
            }
            for m in &got {
                let Some(handle) = m.receipt_handle() else { continue };
                if user_attr(m, ATTR_HOLD) != Some(key) {
                    others.push(handle.to_string());
                    continue;
                }
                let tenant = user_attr(m, ATTR_TENANT).unwrap_or_default();
                let group = user_attr(m, ATTR_GROUP).unwrap_or_default();
                let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, m.message_id().unwrap_or_default().as_bytes()).simple().to_string();
                let entry = Self::entry(group, &id, m.body().unwrap_or_default().to_string(), &dedup_of(m), tenant);
                self.send_batch(&self.urls[lane_of(tenant, self.urls.len())], vec![entry]).await?;
                self.settle(&self.held_url, &[handle.to_string()], None).await?;
                moved += 1;
            }
        }
        self.settle(&self.held_url, &others, Some(Duration::ZERO)).await?;
        Ok(moved)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let (mut visible, mut in_flight) = (0, 0);
        for url in &self.urls {
            let (v, f) = self.attribute_counts(url).await?;
            visible += v;
            in_flight += f;
        }
        let (dead, dead_in_flight) = self.attribute_counts(&self.dlq_url).await?;
        let (held, held_in_flight) = self.attribute_counts(&self.held_url).await?;
        Ok(QueueStats { visible, in_flight, dead: dead + dead_in_flight, held: held + held_in_flight, oldest_age_ms: 0 })
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        // Peeking at a FIFO queue means receiving: hold the messages briefly, then make them
        // visible again at once.
        let messages = self.dlq_messages(limit, Duration::from_secs(30)).await?;
        let handles: Vec<String> = messages.iter().filter_map(|m| m.receipt_handle().map(str::to_string)).collect();
        self.settle(&self.dlq_url, &handles, Some(Duration::ZERO)).await?;
        Ok(messages.iter().map(dead_letter_of).collect())
    }

    async fn own_max_receives(&self) -> Result<Option<u32>, QueueError> {
        self.count("GetQueueAttributes");
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.urls[0])
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| queue_error("GetQueueAttributes", e))?;
        let policy = out.attributes.unwrap_or_default().remove(&QueueAttributeName::RedrivePolicy);
        Ok(policy.and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok()).and_then(|v| match &v["maxReceiveCount"] {
            serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }))
    }

    async fn adoptable_dead_letters(&self, limit: usize) -> Result<Vec<(DeadLetter, Receipt)>, QueueError> {
        // A dead letter without a reason was moved by SQS itself. Receiving hands out one
        // group's messages at a time and holds them, so the scan ends when the queue has shown
        // all it has; the adopted ones are offered, the others made visible again. A scan
        // costs a receive per ten letters, so it runs only when the dead-letter queue's depth
        // moved since a scan that left nothing to adopt (and every ten minutes regardless).
        let (visible, in_flight) = self.attribute_counts(&self.dlq_url).await?;
        let depth = visible + in_flight;
        {
            let last = self.last_adopt_scan.lock().expect("adopt scan lock");
            if let Some((at, seen)) = *last
                && seen == depth
                && at.elapsed() < ADOPT_FULL_SCAN_EVERY
            {
                return Ok(Vec::new());
            }
        }
        let mut out = Vec::new();
        let mut others = Vec::new();
        // Offers of an earlier scan that were never marked have expired with their receipts.
        self.adoptable.lock().expect("adoptable lock").clear();
        for _ in 0..ADOPT_SCAN_RECEIVES {
            if out.len() >= limit {
                break;
            }
            let got = self.receive_from(&self.dlq_url, (limit - out.len()).min(BATCH), Duration::ZERO, Duration::from_secs(60)).await?;
            if got.is_empty() {
                break;
            }
            let mut adoptable = self.adoptable.lock().expect("adoptable lock");
            for m in got {
                let Some(handle) = m.receipt_handle().map(str::to_string) else { continue };
                if user_attr(&m, ATTR_REASON).is_some() {
                    others.push(handle);
                } else {
                    out.push((dead_letter_of(&m), Receipt(handle.clone())));
                    adoptable.insert(handle, m);
                }
            }
        }
        self.settle(&self.dlq_url, &others, Some(Duration::ZERO)).await?;
        // Offered letters will be re-sent with a reason: only a scan that found none is a
        // baseline to skip the next ones against.
        *self.last_adopt_scan.lock().expect("adopt scan lock") = out.is_empty().then(|| (Instant::now(), depth));
        Ok(out)
    }

    async fn mark_adopted(&self, receipts: &[Receipt], reason: &str) -> Result<(), QueueError> {
        for r in receipts {
            let Some(m) = self.adoptable.lock().expect("adoptable lock").remove(&r.0) else { continue };
            let group = system_attr(&m, MessageSystemAttributeName::MessageGroupId).unwrap_or_default().to_string();
            let receives = system_attr(&m, MessageSystemAttributeName::ApproximateReceiveCount).unwrap_or("0").to_string();
            let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("adopted {}", m.message_id().unwrap_or_default()).as_bytes())
                .simple()
                .to_string();
            let mut send = self
                .client
                .send_message()
                .queue_url(&self.dlq_url)
                .message_group_id(group)
                .message_deduplication_id(id)
                .message_body(m.body().unwrap_or_default())
                .message_attributes(ATTR_DEDUP, string_attr(&dedup_of(&m)))
                .message_attributes(ATTR_REASON, string_attr(reason))
                .message_attributes(ATTR_RECEIVES, string_attr(&receives));
            if let Some(t) = user_attr(&m, ATTR_TENANT) {
                send = send.message_attributes(ATTR_TENANT, string_attr(t));
            }
            self.count("SendMessage");
            send.send().await.map_err(|e| queue_error("SendMessage", e))?;
            self.settle(&self.dlq_url, std::slice::from_ref(&r.0), None).await?;
        }
        Ok(())
    }

    async fn redrive(&self, limit: usize) -> Result<usize, QueueError> {
        let messages = self.dlq_messages(limit, Duration::from_secs(60)).await?;
        let mut moved = 0;
        for m in &messages {
            let group = system_attr(m, MessageSystemAttributeName::MessageGroupId).unwrap_or_default().to_string();
            let dedup = dedup_of(m);
            // A fresh deduplication id: the original may still be inside the window.
            let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, m.message_id().unwrap_or_default().as_bytes()).simple().to_string();
            let tenant = user_attr(m, ATTR_TENANT).unwrap_or_default();
            let entry = Self::entry(&group, &id, m.body().unwrap_or_default().to_string(), &dedup, tenant);
            self.send_batch(&self.urls[lane_of(tenant, self.urls.len())], vec![entry]).await?;
            if let Some(h) = m.receipt_handle() {
                self.settle(&self.dlq_url, &[h.to_string()], None).await?;
            }
            moved += 1;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant's lane must not move between releases: a room's messages of one tenant in two
    /// lanes could be drained by two workers at once.
    #[test]
    fn tenant_lanes_are_stable() {
        let lanes: Vec<usize> = ["", "big", "small", "acme", "tenant-a", "tenant-b", "tenant-c"].iter().map(|t| lane_of(t, 4)).collect();
        assert_eq!(lanes, vec![1, 1, 0, 3, 3, 2, 1]);
        assert!((0..1000).all(|i| lane_of(&format!("t{i}"), 1) == 0));
    }

    #[test]
    fn lanes_take_turns_and_skip_empty_ones_until_their_probe() {
        let mut l = Lanes { next: 0, empty_until: vec![None; 3] };
        let now = Instant::now();
        assert_eq!((l.next_busy(now), l.next_busy(now), l.next_busy(now), l.next_busy(now)), (Some(0), Some(1), Some(2), Some(0)));
        l.saw(1, true);
        l.saw(2, true);
        assert_eq!((l.next_busy(now), l.next_busy(now)), (Some(0), Some(0)));
        l.saw(0, true);
        assert_eq!(l.next_busy(now), None);
        assert_eq!(l.next_busy(now + EMPTY_LANE_PROBE * 2), Some(1), "an empty lane is probed again");
    }
}
