//! The analytics outbox of the embedded store: a `message_persisted` event is written in the
//! same transaction as its message, and a relay hands the waiting events to the event sink,
//! removing them once the sink has them. So a crash between a commit and its fan-out no
//! longer loses the event: the relay finds it at the next start.
//!
//! Delivery is at least once: a crash after the sink took events and before they were
//! removed hands them over again. Consumers deduplicate by `msg_id`.

use crate::codec::{decode, store_err};
use crate::store::EmbeddedStore;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sluice_core::backoff::Backoff;
use sluice_core::error::StoreError;
use sluice_core::events::{AnalyticsEvent, EventSink};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Waiting events, by the counters version of their commit (unique, increasing).
pub(crate) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

/// Events handed to the sink at once.
const BATCH: usize = 500;
/// How often the relay looks even when nothing told it to (a missed wake-up costs this much).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// A `message_persisted` event as the outbox keeps it.
#[derive(Serialize, Deserialize)]
pub(crate) struct OutboxRec {
    pub(crate) room: String,
    pub(crate) seq: u64,
    pub(crate) msg_id: String,
    pub(crate) sender: String,
    pub(crate) kind: String,
    pub(crate) campaign_id: Option<String>,
    pub(crate) sent_at_ms: i64,
    pub(crate) persisted_at_ms: i64,
    pub(crate) recipients: u32,
}

impl From<OutboxRec> for AnalyticsEvent {
    fn from(r: OutboxRec) -> Self {
        AnalyticsEvent::MessagePersisted {
            room: r.room,
            seq: r.seq,
            msg_id: r.msg_id,
            sender: r.sender,
            kind: r.kind,
            campaign_id: r.campaign_id,
            sent_at_ms: r.sent_at_ms,
            persisted_at_ms: r.persisted_at_ms,
            recipients: r.recipients,
        }
    }
}

impl EmbeddedStore {
    /// Up to `limit` waiting events, oldest first, with their keys.
    pub async fn outbox_batch(&self, limit: usize) -> Result<Vec<(u64, AnalyticsEvent)>, StoreError> {
        let db = self.db();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(store_err)?;
            let t = txn.open_table(OUTBOX).map_err(store_err)?;
            let mut out = Vec::new();
            for entry in t.iter().map_err(store_err)?.take(limit) {
                let (k, v) = entry.map_err(store_err)?;
                out.push((k.value(), decode::<OutboxRec>(v.value()).map_err(store_err)?.into()));
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }
}

/// Hands the outbox's events to `sink` until `shutdown`, then once more (so a clean stop
/// leaves nothing behind). Needs a store opened with `StoreConfig::outbox`.
pub async fn relay(store: EmbeddedStore, sink: Arc<dyn EventSink>, shutdown: CancellationToken) {
    let backoff = Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(10), max_attempts: u32::MAX };
    let mut failures = 0u32;
    loop {
        let stopping = shutdown.is_cancelled();
        let wake = store.outbox_wake();
        let notified = wake.notified();
        match relay_once(&store, sink.as_ref()).await {
            Ok(0) if stopping => return,
            Ok(0) => {
                failures = 0;
                tokio::select! {
                    _ = notified => {}
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
            }
            Ok(_) => failures = 0,
            Err(e) => {
                tracing::warn!(error = %e, "analytics outbox: delivery failed; retrying");
                if stopping {
                    return;
                }
                let delay = backoff.delay(failures).unwrap_or(backoff.cap);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Delivers one batch; returns how many events it moved.
async fn relay_once(store: &EmbeddedStore, sink: &dyn EventSink) -> Result<usize, String> {
    let batch = store.outbox_batch(BATCH).await.map_err(|e| e.to_string())?;
    if batch.is_empty() {
        return Ok(0);
    }
    let (keys, events): (Vec<u64>, Vec<AnalyticsEvent>) = batch.into_iter().unzip();
    sink.deliver(events).await?;
    let n = keys.len();
    store.outbox_done(keys).await.map_err(|e| e.to_string())?;
    Ok(n)
}
