//! The analytics event port (a local file, Kinesis, or nothing).

use async_trait::async_trait;
use serde::Serialize;

/// An analytics event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AnalyticsEvent {
    MessagePersisted {
        room: String,
        seq: u64,
        msg_id: String,
        sender: String,
        kind: String,
        campaign_id: Option<String>,
        sent_at_ms: i64,
        persisted_at_ms: i64,
        recipients: u32,
    },
    RoomRead {
        user: String,
        room: String,
        seq: u64,
        unread: u64,
        read_at_ms: i64,
    },
}

/// Where analytics events go. `emit` never blocks persistence: implementations buffer
/// (bounded) and drop with a metric when the buffer is full.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    fn emit(&self, events: Vec<AnalyticsEvent>);
    /// Writes out what is buffered (on shutdown).
    async fn flush(&self);
    /// Hands `events` over and waits until the sink has written them (an outbox relay
    /// removes them only then); an error means they may not have been, and the caller
    /// tries again. The default emits and flushes, so it cannot see a drop on a full buffer.
    async fn deliver(&self, events: Vec<AnalyticsEvent>) -> Result<(), String> {
        self.emit(events);
        self.flush().await;
        Ok(())
    }
}

/// Discards every event (analytics off).
pub struct NoEvents;

#[async_trait]
impl EventSink for NoEvents {
    fn emit(&self, _events: Vec<AnalyticsEvent>) {}
    async fn flush(&self) {}
}
