//! Dead letters: the receive limit in force (below the queue's own), messages the queue moved
//! by itself adopted and counted, and a message this worker gives up on counted for its
//! campaign, then moved.

use crate::{ADOPT_BATCH, ADOPTED_REASON, Worker};
use sluice_core::model::NewMessage;
use sluice_core::queue::Receipt;
use sluice_proto::convert::decode_queued;
use std::sync::atomic::Ordering;

impl Worker {
    pub(crate) fn max_receives(&self) -> u32 {
        self.max_receives.load(Ordering::Relaxed)
    }

    /// A queue that dead-letters by itself after its own count of receives (SQS's redrive
    /// policy) must not do so before this worker would: the worker's verdict carries the
    /// reason and counts the campaign. A `max_receives` at or above the queue's is lowered.
    /// Returns the `max_receives` in force.
    pub async fn check_max_receives(&self) -> u32 {
        match self.b.queue.own_max_receives().await {
            Ok(Some(own)) if self.max_receives() >= own => {
                let lowered = own.saturating_sub(1).max(1);
                tracing::error!(
                    max_receives = self.max_receives(),
                    queue_max_receive_count = own,
                    using = lowered,
                    "--max-receives must be below the queue's maxReceiveCount; lowered"
                );
                self.max_receives.store(lowered, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the queue's own receive limit"),
        }
        self.max_receives()
    }

    /// Counts the dead letters the queue moved by itself for their campaigns, then marks them
    /// adopted; returns how many. One that cannot be counted now is offered again later.
    pub async fn adopt_dead_letters(&self) -> usize {
        let letters = match self.b.queue.adoptable_dead_letters(ADOPT_BATCH).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for dead letters the queue moved");
                return 0;
            }
        };
        let mut adopted = Vec::with_capacity(letters.len());
        for (letter, receipt) in letters {
            if let Ok(msg) = decode_queued(&letter.body, usize::MAX)
                && let Some(cid) = msg.campaign_id.as_deref()
                && let Err(e) = self.b.store.record_dead_letter(cid, &msg.room, &msg.msg_id).await
            {
                tracing::warn!(error = %e, campaign_id = cid, "could not count a dead letter the queue moved; it is offered again later");
                continue;
            }
            adopted.push(receipt);
        }
        if adopted.is_empty() {
            return 0;
        }
        if let Err(e) = self.b.queue.mark_adopted(&adopted, ADOPTED_REASON).await {
            tracing::warn!(error = %e, "could not mark adopted dead letters; they are offered (and counted, idempotently) again");
            return 0;
        }
        tracing::warn!(n = adopted.len(), "counted dead letters the queue moved by itself");
        self.b.metrics.dead_lettered.inc_by(adopted.len() as u64);
        adopted.len()
    }

    /// Counts the dead letter for its campaign, then moves the message. In this order a crash
    /// in between leaves the message in the queue, to come back and be moved again (the count
    /// is idempotent, and undone if the message is persisted after a redrive); the other order
    /// would leave a campaign that is never done.
    /// `msg` is the message as decoded (none if it did not decode).
    pub(crate) async fn dead_letter(&self, receipt: &Receipt, reason: &str, msg: Option<&NewMessage>) {
        let msg_id = msg.map_or("", |m| m.msg_id.as_str());
        tracing::warn!(reason, msg_id, "dead-lettering a queued message");
        if let Some(msg) = msg
            && let Some(cid) = msg.campaign_id.as_deref()
            && let Err(e) = self.b.store.record_dead_letter(cid, &msg.room, msg_id).await
        {
            tracing::warn!(error = %e, campaign_id = cid, "could not count a dead letter for its campaign; the message will be redelivered");
            return;
        }
        if let Err(e) = self.b.queue.dead_letter(receipt, reason).await {
            tracing::warn!(error = %e, "dead-letter failed; the message will be redelivered");
            return;
        }
        self.b.metrics.dead_lettered.inc();
    }
}
