//! Sending: a `send`'s entries go out in batches of ten (256 KiB at most), one task per
//! lane of message groups so a group's order survives; failed entries are retried alone.

use super::*;

/// Entries per SQS batch call.
pub(super) const BATCH: usize = 10;
/// Payload of one SendMessageBatch (the classic SQS limit, which moto also enforces).
pub(super) const BATCH_BYTES: usize = 256 * 1024;

impl SqsQueue {
    /// Sends one lane's entries in order, in batches, retrying failed entries.
    pub(super) async fn send_lane(&self, url: &str, entries: Vec<SendMessageBatchRequestEntry>) -> Result<(), QueueError> {
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

    pub(super) async fn send_batch(&self, url: &str, mut batch: Vec<SendMessageBatchRequestEntry>) -> Result<(), QueueError> {
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

    pub(super) fn entry(group: &str, dedup_id: &str, body_b64: String, original_dedup: &str, tenant: &str) -> SendMessageBatchRequestEntry {
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
}
