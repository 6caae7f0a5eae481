//! Conversions between wire messages and domain types.

use crate::v1;
use bytes::Bytes;
use prost::Message as _;
use sluice_core::events::AnalyticsEvent;
use sluice_core::ids;
use sluice_core::model::{MessageKind, NewMessage, StoredMessage};

/// Encodes a message for the spike queue.
pub fn encode_queued(m: &NewMessage) -> Bytes {
    encode_queued_traced(m, None)
}

/// Encodes a message for the spike queue with the trace context of the span queueing it. A
/// message with a `body_ref` is queued without its body: the consumer reads the campaign's
/// stored body of that reference.
pub fn encode_queued_traced(m: &NewMessage, traceparent: Option<&str>) -> Bytes {
    let q = v1::QueuedMessage {
        msg_id: m.msg_id.clone(),
        room: m.room.clone(),
        sender: m.sender.clone(),
        body: if m.body_ref.is_some() { String::new() } else { m.body.clone() },
        kind: m.kind.as_str().to_string(),
        campaign_id: m.campaign_id.clone().unwrap_or_default(),
        sent_at_ms: m.sent_at_ms,
        create_members: m.create_members.clone(),
        traceparent: traceparent.unwrap_or_default().to_string(),
        body_ref: m.body_ref.clone().unwrap_or_default(),
    };
    Bytes::from(q.encode_to_vec())
}

/// Decodes and validates a spike-queue body. An error is permanent: the body will never
/// become valid, so the message belongs in the dead-letter queue with this reason. A message
/// whose body is by reference comes back with an empty body and its `body_ref`.
pub fn decode_queued(body: &[u8], max_body_bytes: usize) -> Result<NewMessage, String> {
    decode_queued_traced(body, max_body_bytes).map(|(m, _)| m)
}

/// [`decode_queued`], with the trace context the message carries, if any.
pub fn decode_queued_traced(body: &[u8], max_body_bytes: usize) -> Result<(NewMessage, Option<String>), String> {
    let q = v1::QueuedMessage::decode(body).map_err(|e| format!("undecodable queued message: {e}"))?;
    if q.msg_id.is_empty() {
        return Err("queued message without msg_id".into());
    }
    ids::validate_room(&q.room).map_err(|e| format!("bad room: {e}"))?;
    ids::validate_user(&q.sender).map_err(|e| format!("bad sender: {e}"))?;
    for m in &q.create_members {
        ids::validate_user(m).map_err(|e| format!("bad member: {e}"))?;
    }
    if q.body.len() > max_body_bytes {
        return Err(format!("body of {} bytes exceeds the limit of {max_body_bytes}", q.body.len()));
    }
    let kind = MessageKind::parse(&q.kind).ok_or_else(|| format!("unknown message kind {:?}", q.kind))?;
    if !q.body_ref.is_empty() && (!q.body.is_empty() || q.campaign_id.is_empty() || !ids::is_body_ref(&q.body_ref)) {
        return Err("a body by reference needs an empty body, a campaign and a well-formed reference".into());
    }
    let message = NewMessage {
        msg_id: q.msg_id,
        room: q.room,
        sender: q.sender,
        body: q.body,
        kind,
        campaign_id: (!q.campaign_id.is_empty()).then_some(q.campaign_id),
        sent_at_ms: q.sent_at_ms,
        create_members: q.create_members,
        body_ref: (!q.body_ref.is_empty()).then_some(q.body_ref),
    };
    Ok((message, (!q.traceparent.is_empty()).then_some(q.traceparent)))
}

/// A stored message on the wire.
pub fn message(m: &StoredMessage) -> v1::Message {
    v1::Message {
        room: m.room.clone(),
        seq: m.seq,
        msg_id: m.msg_id.clone(),
        sender: m.sender.clone(),
        body: m.body.clone(),
        kind: m.kind.as_str().to_string(),
        sent_at_ms: m.sent_at_ms,
    }
}

/// Encodes an analytics event as `sluice.v1.AnalyticsEvent` (the Kinesis record data).
pub fn encode_event(e: &AnalyticsEvent) -> Vec<u8> {
    use v1::analytics_event::Event;
    let event = match e.clone() {
        AnalyticsEvent::MessagePersisted { room, seq, msg_id, sender, kind, campaign_id, sent_at_ms, persisted_at_ms, recipients } => {
            Event::MessagePersisted(v1::MessagePersisted {
                room,
                seq,
                msg_id,
                sender,
                kind,
                campaign_id: campaign_id.unwrap_or_default(),
                sent_at_ms,
                persisted_at_ms,
                recipients,
            })
        }
        AnalyticsEvent::RoomRead { user, room, seq, unread, read_at_ms } => {
            Event::RoomRead(v1::RoomRead { user, room, seq, unread, read_at_ms })
        }
    };
    v1::AnalyticsEvent { event: Some(event) }.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NewMessage {
        NewMessage {
            msg_id: "m1".into(),
            room: "dm:alice:shop".into(),
            sender: "shop".into(),
            body: "sale".into(),
            kind: MessageKind::OneOff,
            campaign_id: Some("c1".into()),
            sent_at_ms: 42,
            create_members: vec!["shop".into(), "alice".into()],
            body_ref: None,
        }
    }

    #[test]
    fn queued_messages_round_trip() {
        let m = sample();
        assert_eq!(decode_queued(&encode_queued(&m), 100).unwrap(), m);
        assert_eq!(decode_queued_traced(&encode_queued(&m), 100).unwrap(), (m.clone(), None));
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(decode_queued_traced(&encode_queued_traced(&m, Some(tp)), 100).unwrap(), (m, Some(tp.to_string())));
    }

    #[test]
    fn a_body_by_reference_is_left_out_and_its_reference_kept() {
        let m = NewMessage { body_ref: Some(ids::campaign_body_ref("c1", "sale")), ..sample() };
        let bytes = encode_queued(&m);
        assert_eq!(decode_queued(&bytes, 100).unwrap(), NewMessage { body: String::new(), ..m.clone() });
        // A body over the limit is checked where it is stored, not in each reference.
        assert!(decode_queued(&bytes, 1).is_ok());
        let no_campaign = NewMessage { campaign_id: None, ..m.clone() };
        assert!(decode_queued(&encode_queued(&no_campaign), 100).unwrap_err().contains("reference"));
        let malformed = NewMessage { body_ref: Some("../x".into()), ..m };
        assert!(decode_queued(&encode_queued(&malformed), 100).unwrap_err().contains("reference"));
    }

    #[test]
    fn invalid_bodies_are_refused_with_a_reason() {
        assert!(decode_queued(b"\xff\xff\xff", 100).unwrap_err().contains("undecodable"));
        assert!(decode_queued(&encode_queued(&sample()), 2).unwrap_err().contains("exceeds"));
        let mut bad = sample();
        bad.room = "no spaces".into();
        assert!(decode_queued(&encode_queued(&bad), 100).unwrap_err().contains("bad room"));
    }
}
