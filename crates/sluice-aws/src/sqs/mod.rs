//! The spike queue on SQS FIFO.
//!
//! - send: SendMessageBatch (10 entries, at most 256 KiB), MessageGroupId from the room,
//!   MessageDeduplicationId = msg_id; entries that fail are retried alone with backoff.
//!   Messages are spread over parallel lanes by group, each lane sending in order, so a
//!   group's order survives the parallelism.
//! - receive: long poll (up to 10, up to 20 s) with a ReceiveRequestAttemptId, so a retried
//!   receive returns the same messages instead of hiding them for a visibility timeout. A
//!   receive that comes back full is followed by up to three more without waiting, so a busy
//!   queue hands the worker batches of up to 40 (FIFO never hands out a group with a message
//!   in flight, so each group still comes whole and in order).
//! - ack: DeleteMessageBatch; extend and release: ChangeMessageVisibilityBatch.
//! - tenant lanes: the bulk lane is spread over `lanes` FIFO queues, a tenant's messages all
//!   in the lane its name hashes to. SQS hands out a queue's groups roughly in arrival order,
//!   so within one queue a small campaign waits behind every earlier one; across lanes,
//!   receives take turns over the lanes that had messages by deficit round robin: a lane's
//!   turn lasts `10 × weight` messages, its weight being the sum of the `--tenant-weight`s of
//!   the tenants its last receive handed out (1 each by default). A lane that looked empty is
//!   probed with a short poll at most once a second (about `lanes - 1` extra requests a second
//!   per process while draining; idle, the pollers long-poll the lanes in turn, as with one
//!   queue). Tenants that hash to one lane share it in arrival order, so weights apply between
//!   lanes, not inside one (the embedded queue applies them per tenant). The turns add no
//!   request: a heavy lane's turn is more receives from it, not more receives.
//! - dead letters: the worker's verdicts are sent to the dead-letter queue with the reason as
//!   a message attribute, then deleted here; messages SQS moves on its own (the redrive
//!   policy's maxReceiveCount) arrive without one, and are offered for adoption (a worker
//!   counts them for their campaign, then they are sent again with a reason). `redrive`
//!   sends dead letters back with a fresh deduplication id (the original may still be inside
//!   the 5-minute window).
//! - held messages (an operator's pause of a tenant or campaign) go to the held queue with
//!   the hold key as their group; a release scans it, one group at a time, and sends the
//!   key's messages back to their lane in batches.
//!
//! Bodies are the protobuf `sluice.v1.QueuedMessage`, base64 encoded (SQS bodies are text).
//! SQS does not say which sends it dropped as duplicates, so `SendOutcome::duplicates` counts
//! only repeats inside one `send` call (which are not sent at all), and it has no age of the oldest message (that is CloudWatch's
//! ApproximateAgeOfOldestMessage), so `QueueStats::oldest_age_ms` is 0.
//!
//! Here: the queue, its connection and the [`SpikeQueue`] implementation; sending in `send`,
//! receiving over the lanes in `receive`, receipts and settling in `receipts`, moving
//! messages aside (dead letters, holds) in `dead_letters`.

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
use sluice_core::queue::{DeadLetter, Delivery, Enqueue, QueueStats, Receipt, SendOutcome, SpikeQueue, TenantWeights};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod dead_letters;
mod receipts;
mod receive;
mod send;

use dead_letters::*;
use receipts::*;
use receive::*;
use send::*;

pub use receive::lane_of;

/// Batches sent at once by one `send`.
const LANES: usize = 16;
/// Attribute carrying the original deduplication id (the msg_id) through dead-lettering and
/// redrive, and the dead-letter reason.
const ATTR_DEDUP: &str = "sluice_dedup_id";
const ATTR_REASON: &str = "sluice_reason";
const ATTR_RECEIVES: &str = "sluice_receive_count";
const ATTR_TENANT: &str = "sluice_tenant";
/// Receives added to a receive that came back full, at most: a batch of up to 40 messages.
const EXTRA_RECEIVES: usize = 3;

/// The hold key and the original group of a held message (its group in the held queue is
/// the hold key).
const ATTR_HOLD: &str = "sluice_hold";
const ATTR_GROUP: &str = "sluice_group";

/// The SQS FIFO spike queue.
pub struct SqsQueue {
    client: Client,
    /// The queue URL of each tenant lane.
    urls: Vec<String>,
    lanes: Mutex<Lanes>,
    /// Tenant weights: a lane's share of the receives follows the tenants it hands out.
    weights: Arc<TenantWeights>,
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
    /// [`SqsQueue::connect`] with a client made from the shared SDK configuration.
    pub async fn from_conf(conf: &aws_config::SdkConfig, names: &Names, metrics: Arc<Metrics>) -> Result<Self, QueueError> {
        Self::connect(Client::new(conf), names, metrics).await
    }

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
            lanes: Mutex::new(Lanes::new(urls.len())),
            weights: Arc::default(),
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

    /// Weighs the lanes' turns by these tenants' weights (see `Lanes` in the `receive` module).
    pub fn with_weights(mut self, weights: Arc<TenantWeights>) -> Self {
        self.weights = weights;
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
        let mut received = vec![self.receive_lanes(max, wait, visibility).await?];
        // A busy queue fills a larger batch at once: more receives without waiting, while each
        // comes back full (fewer, fuller persist calls; a campaign's count is one transaction
        // per campaign and batch). One that fails ends it: what came is returned.
        let mut have = received[0].1.len();
        let mut last = have;
        while last >= BATCH && have < max && received.len() <= EXTRA_RECEIVES {
            match self.receive_lanes(max - have, Duration::ZERO, visibility).await {
                Ok((lane, more)) if !more.is_empty() => {
                    (last, have) = (more.len(), have + more.len());
                    received.push((lane, more));
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "an extra receive failed; going on with what came");
                    break;
                }
            }
        }
        let mut map = self.in_flight.lock().expect("in-flight lock");
        // A message received again makes its earlier receipts stale.
        let again: Vec<&str> = received.iter().flat_map(|(_, ms)| ms.iter().filter_map(|m| m.message_id())).collect();
        map.retain(|_, f| f.received.elapsed() < IN_FLIGHT_MAX_AGE && !again.contains(&f.message_id.as_str()));
        Ok(received
            .iter()
            .flat_map(|(lane, messages)| messages.iter().map(move |m| (*lane, m)))
            .filter_map(|(lane, m)| {
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
        self.move_out(receipt, reason).await
    }

    async fn hold(&self, receipts: &[Receipt], key: &str) -> Result<usize, QueueError> {
        self.hold_batch(receipts, key).await
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
            // This receive's messages of `key` go back in batches, per lane in their order,
            // then leave the held queue.
            let mut lanes: std::collections::BTreeMap<usize, Vec<SendMessageBatchRequestEntry>> = std::collections::BTreeMap::new();
            let mut back = Vec::new();
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
                lanes.entry(lane_of(tenant, self.urls.len())).or_default().push(entry);
                back.push(handle.to_string());
            }
            for (lane, entries) in lanes {
                self.send_lane(&self.urls[lane], entries).await?;
            }
            self.settle(&self.held_url, &back, None).await?;
            moved += back.len();
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
        let mut l = Lanes::new(3);
        let now = Instant::now();
        let turn = |l: &mut Lanes| {
            let lane = l.next_busy(now);
            if let Some(lane) = lane {
                l.saw(lane, BATCH, 1);
            }
            lane
        };
        assert_eq!((turn(&mut l), turn(&mut l), turn(&mut l), turn(&mut l)), (Some(0), Some(1), Some(2), Some(0)));
        l.saw(1, 0, 0);
        l.saw(2, 0, 0);
        assert_eq!((turn(&mut l), turn(&mut l)), (Some(0), Some(0)));
        l.saw(0, 0, 0);
        assert_eq!(l.next_busy(now), None);
        assert_eq!(l.next_busy(now + EMPTY_LANE_PROBE * 2), Some(1), "an empty lane is probed again");
    }

    /// Lanes that keep handing out messages share the receives by their tenants' weights,
    /// whatever the receives' sizes, and a lane of weight 1 still has its turn.
    #[test]
    fn busy_lanes_share_receives_by_their_tenants_weights() {
        let weights = [1u32, 3, 1, 10];
        let mut l = Lanes::new(weights.len());
        let now = Instant::now();
        let mut taken = [0usize; 4];
        for i in 0..20_000usize {
            let lane = l.next_busy(now).expect("every lane is busy");
            // Receives of 1 to 10 messages, as a queue with groups in flight hands them out.
            let got = 1 + (i * 7 + lane) % BATCH;
            l.saw(lane, got, weights[lane]);
            taken[lane] += got;
        }
        let total: usize = taken.iter().sum();
        let sum: u32 = weights.iter().sum();
        for (lane, w) in weights.iter().enumerate() {
            let share = taken[lane] as f64 / total as f64;
            let want = f64::from(*w) / f64::from(sum);
            assert!((share - want).abs() < 0.01, "lane {lane} of weight {w} took {share:.3} of the messages, not {want:.3}: {taken:?}");
        }
    }
}
