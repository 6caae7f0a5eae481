//! Receipts: what this process received and has not settled yet (needed to dead-letter by
//! receipt), and the batched deletes and visibility changes that settle them.

use super::*;

/// In-flight bookkeeping older than SQS's longest visibility timeout is dropped.
pub(super) const IN_FLIGHT_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// What this process received and has not settled yet: needed to dead-letter by receipt.
pub(super) struct InFlight {
    pub(super) lane: usize,
    pub(super) message_id: String,
    pub(super) group: String,
    pub(super) tenant: String,
    pub(super) dedup_id: String,
    pub(super) body_b64: String,
    pub(super) receive_count: u32,
    pub(super) received: Instant,
}

/// A receipt names its lane: `<lane>|<receipt handle>`.
pub(super) fn lane_receipt(lane: usize, handle: &str) -> String {
    format!("{lane}|{handle}")
}

/// The SQS receipt handle inside a [`lane_receipt`].
pub(super) fn handle_of(receipt: &Receipt) -> Option<&str> {
    receipt.0.split_once('|').map(|(_, h)| h)
}

impl SqsQueue {
    /// ChangeMessageVisibilityBatch / DeleteMessageBatch over any number of receipts.
    /// Returns the receipts SQS refused as no longer valid.
    pub(super) async fn settle(&self, url: &str, receipts: &[String], visibility: Option<Duration>) -> Result<Vec<String>, QueueError> {
        let mut refused = Vec::new();
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
                for (id, _, code) in failed.iter().filter(|(_, sender, _)| *sender) {
                    tracing::debug!(%code, "SQS refused to settle a receipt");
                    if let Some((_, r)) = pending.iter().find(|(i, _)| i.to_string() == *id) {
                        refused.push((*r).clone());
                    }
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
    pub(super) fn current(&self, receipts: &[Receipt]) -> Vec<(usize, String)> {
        let map = self.in_flight.lock().expect("in-flight lock");
        receipts
            .iter()
            .filter_map(|r| {
                let f = map.get(&r.0)?;
                Some((f.lane, handle_of(r)?.to_string()))
            })
            .collect()
    }

    /// Settles receipts of any lanes, one lane at a time; returns those SQS refused.
    pub(super) async fn settle_lanes(&self, receipts: &[(usize, String)], visibility: Option<Duration>) -> Result<Vec<String>, QueueError> {
        let mut refused = Vec::new();
        for (lane, url) in self.urls.iter().enumerate() {
            let handles: Vec<String> = receipts.iter().filter(|(l, _)| *l == lane).map(|(_, h)| h.clone()).collect();
            if !handles.is_empty() {
                refused.extend(self.settle(url, &handles, visibility).await?);
            }
        }
        Ok(refused)
    }

    pub(super) fn forget(&self, receipts: &[Receipt]) {
        let mut map = self.in_flight.lock().expect("in-flight lock");
        for r in receipts {
            map.remove(&r.0);
        }
    }
}
