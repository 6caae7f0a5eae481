//! Moving messages aside: to the dead-letter queue with a reason, one at a time, or to the
//! held queue under an operator's hold key, in batches; and reading the dead-letter queue.

use super::*;

/// Most receives one scan of the dead-letter queue for adoptable letters makes.
pub(super) const ADOPT_SCAN_RECEIVES: usize = 100;
/// A dead-letter queue whose depth did not move is scanned again after this long anyway.
pub(super) const ADOPT_FULL_SCAN_EVERY: Duration = Duration::from_secs(600);

pub(super) fn dead_letter_of(m: &Message) -> DeadLetter {
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

impl SqsQueue {
    /// Moves an in-flight message to the dead-letter queue with `reason`, then deletes it from
    /// its lane.
    pub(super) async fn move_out(&self, receipt: &Receipt, reason: &str) -> Result<(), QueueError> {
        let f = {
            let map = self.in_flight.lock().expect("in-flight lock");
            let f = map.get(&receipt.0).ok_or_else(|| QueueError::Invalid("unknown receipt (not received by this process)".into()))?;
            (f.group.clone(), f.dedup_id.clone(), f.body_b64.clone(), f.receive_count, f.tenant.clone())
        };
        let (group, dedup_id, body, receive_count, tenant) = f;
        // Keep the message invisible while it moves, which also proves the receipt is still current.
        if !self.settle_lanes(&self.current(std::slice::from_ref(receipt)), Some(Duration::from_secs(60))).await?.is_empty() {
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
                .queue_url(&self.dlq_url)
                .message_group_id(&group)
                .message_deduplication_id(&move_id)
                .message_body(&body)
                .message_attributes(ATTR_DEDUP, string_attr(&dedup_id))
                .message_attributes(ATTR_RECEIVES, string_attr(&receive_count.to_string()))
                .message_attributes(ATTR_REASON, string_attr(reason));
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

    /// Moves in-flight messages to the held queue under `key` in batches: their visibility
    /// extended per lane (which also finds the receipts no longer current, left alone), sent
    /// to the held queue ten at a time, then deleted from their lanes ten at a time. About
    /// 0.3 requests a message, where one at a time took 3.
    pub(super) async fn hold_batch(&self, receipts: &[Receipt], key: &str) -> Result<usize, QueueError> {
        let refused = self.settle_lanes(&self.current(receipts), Some(Duration::from_secs(60))).await?;
        let (stale, current): (Vec<Receipt>, Vec<Receipt>) =
            receipts.iter().cloned().partition(|r| handle_of(r).is_some_and(|h| refused.iter().any(|x| x == h)));
        self.forget(&stale);
        let (mut moving, mut entries) = (Vec::with_capacity(current.len()), Vec::with_capacity(current.len()));
        {
            let map = self.in_flight.lock().expect("in-flight lock");
            for r in current {
                let Some(f) = map.get(&r.0) else { continue };
                // One id per delivery, as for a single move.
                let move_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, r.0.as_bytes()).simple().to_string();
                let mut e = Self::entry(key, &move_id, f.body_b64.clone(), &f.dedup_id, &f.tenant);
                let attrs = e.message_attributes.get_or_insert_with(Default::default);
                attrs.insert(ATTR_RECEIVES.into(), string_attr(&f.receive_count.to_string()));
                attrs.insert(ATTR_HOLD.into(), string_attr(key));
                attrs.insert(ATTR_GROUP.into(), string_attr(&f.group));
                entries.push(e);
                moving.push(r);
            }
        }
        self.send_lane(&self.held_url, entries).await?;
        self.ack(&moving).await?;
        Ok(moving.len())
    }

    /// Receives up to `limit` dead letters; they stay invisible for `hold` unless settled.
    pub(super) async fn dlq_messages(&self, limit: usize, hold: Duration) -> Result<Vec<Message>, QueueError> {
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
