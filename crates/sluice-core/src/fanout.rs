//! What follows a commit: live pushes through the hub and analytics events. Shared by the
//! gateway (direct persists, reads) and the worker (queued persists) so both lanes behave alike.

use crate::events::{AnalyticsEvent, EventSink};
use crate::hub::{ConnId, Hub, LiveEvent};
use crate::model::{Persisted, ReadOutcome, UnreadUpdate};
use crate::now_ms;

/// Pushes a newly persisted message to the room's members and the new counters to its
/// recipients, and emits `message_persisted`. Duplicates push nothing (they were pushed when
/// first persisted). Hub failures are logged by the caller's metrics, never returned: the
/// message is durable and clients recover it by seq.
pub async fn after_persist(hub: &dyn Hub, events: &dyn EventSink, p: &Persisted, origin: Option<ConnId>) -> bool {
    if p.duplicate {
        return true;
    }
    let mut ok = hub.publish(&p.members, LiveEvent::Message { message: p.message.clone(), origin }).await.is_ok();
    for u in &p.unread {
        ok &= hub.publish(std::slice::from_ref(&u.user), LiveEvent::Unread(u.clone())).await.is_ok();
    }
    let m = &p.message;
    events.emit(vec![AnalyticsEvent::MessagePersisted {
        room: m.room.clone(),
        seq: m.seq,
        msg_id: m.msg_id.clone(),
        sender: m.sender.clone(),
        kind: m.kind.as_str().to_string(),
        campaign_id: m.campaign_id.clone(),
        sent_at_ms: m.sent_at_ms,
        persisted_at_ms: now_ms(),
        recipients: p.unread.len() as u32,
    }]);
    ok
}

/// Tells the user's connections their new counters after a read, and the room that the user
/// read up to `read_seq`; emits `room_read`.
pub async fn after_read(hub: &dyn Hub, events: &dyn EventSink, user: &str, room: &str, r: &ReadOutcome, members: &[String]) {
    let update = UnreadUpdate { user: user.to_string(), room: room.to_string(), unread: r.unread, total_unread: r.total_unread };
    let _ = hub.publish(&[user.to_string()], LiveEvent::Unread(update)).await;
    if r.changed {
        let _ = hub.publish(members, LiveEvent::Read { user: user.to_string(), room: room.to_string(), seq: r.read_seq }).await;
        events.emit(vec![AnalyticsEvent::RoomRead {
            user: user.to_string(),
            room: room.to_string(),
            seq: r.read_seq,
            unread: r.unread,
            read_at_ms: now_ms(),
        }]);
    }
}
