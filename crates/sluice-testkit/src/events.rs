//! The analytics sink conformance suite: what `emit` and `flush`, or `deliver`, hand over
//! reaches the sink's destination complete, once, each room's events in order.

use async_trait::async_trait;
use sluice_core::events::{AnalyticsEvent, EventSink};
use std::sync::Arc;

/// One event as a test reads it back from a sink's destination: (room, type, seq), the type
/// spelled as in the JSON form (`message_persisted`, `room_read`).
pub type SeenEvent = (String, String, u64);

/// Reads what a sink wrote to its destination, from the start.
#[async_trait]
pub trait ReadBack: Send + Sync {
    /// Everything written so far, waiting (a few seconds at most) until there are `want`.
    async fn read(&self, want: usize) -> Vec<SeenEvent>;
}

/// Generates one `#[tokio::test]` per sink conformance test for the sink made by `$make`, an
/// async closure returning `(Arc<dyn EventSink>, Box<dyn ReadBack>, Guard)`.
#[macro_export]
macro_rules! events_conformance {
    ($make:expr) => {
        $crate::__events_tests!($make; emitted_events_arrive_once_flushed, delivered_events_are_written_when_deliver_returns, each_rooms_events_keep_their_order);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __events_tests {
    ($make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (sink, back, _guard) = ($make)().await;
                $crate::events::$name(sink, back).await;
            }
        )*
    };
}

/// A chat message's `message_persisted` event.
pub fn persisted(room: &str, seq: u64) -> AnalyticsEvent {
    AnalyticsEvent::MessagePersisted {
        room: room.into(),
        seq,
        msg_id: format!("{room}-{seq}"),
        sender: "alice".into(),
        kind: "chat".into(),
        campaign_id: None,
        sent_at_ms: 1,
        persisted_at_ms: 2,
        recipients: 1,
    }
}

fn seen(room: &str, kind: &str, seq: u64) -> SeenEvent {
    (room.to_string(), kind.to_string(), seq)
}

fn sorted(mut v: Vec<SeenEvent>) -> Vec<SeenEvent> {
    v.sort();
    v
}

pub async fn emitted_events_arrive_once_flushed(sink: Arc<dyn EventSink>, back: Box<dyn ReadBack>) {
    sink.emit(vec![
        persisted("r1", 1),
        persisted("r2", 1),
        AnalyticsEvent::RoomRead { user: "bob".into(), room: "r1".into(), seq: 1, unread: 0, read_at_ms: 3 },
    ]);
    sink.emit(vec![persisted("r1", 2)]);
    sink.flush().await;
    let want = vec![
        seen("r1", "message_persisted", 1),
        seen("r1", "message_persisted", 2),
        seen("r1", "room_read", 1),
        seen("r2", "message_persisted", 1),
    ];
    assert_eq!(sorted(back.read(want.len()).await), want, "every emitted event, once");
}

pub async fn delivered_events_are_written_when_deliver_returns(sink: Arc<dyn EventSink>, back: Box<dyn ReadBack>) {
    sink.deliver(vec![persisted("d", 1), persisted("d", 2)]).await.expect("delivered");
    // No flush: `deliver` returning Ok is the promise an outbox relay deletes on.
    assert_eq!(back.read(2).await, vec![seen("d", "message_persisted", 1), seen("d", "message_persisted", 2)]);
}

pub async fn each_rooms_events_keep_their_order(sink: Arc<dyn EventSink>, back: Box<dyn ReadBack>) {
    const PER_ROOM: u64 = 100;
    for seq in 1..=PER_ROOM {
        for room in ["a", "b", "c"] {
            sink.emit(vec![persisted(room, seq)]);
        }
    }
    sink.flush().await;
    let got = back.read(3 * PER_ROOM as usize).await;
    assert_eq!(got.len(), 3 * PER_ROOM as usize, "every event, once");
    for room in ["a", "b", "c"] {
        let seqs: Vec<u64> = got.iter().filter(|(r, _, _)| r == room).map(|(_, _, s)| *s).collect();
        assert_eq!(seqs, (1..=PER_ROOM).collect::<Vec<_>>(), "room {room}'s events in seq order");
    }
}
