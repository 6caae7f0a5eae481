//! The WebSocket client contract v1: JSON text frames, one object per frame, `type` first.

use crate::error::ErrorCode;
use crate::model::{Inbox, StoredMessage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A frame from a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Send {
        room: String,
        client_msg_id: String,
        body: String,
    },
    Read {
        room: String,
        seq: u64,
    },
    History {
        room: String,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u64>,
    },
    /// A page of the inbox: rooms after `after` (a room id), at most `limit`.
    Inbox {
        after: Option<String>,
        limit: Option<u64>,
    },
    Resume {
        rooms: BTreeMap<String, u64>,
    },
    Typing {
        room: String,
    },
    /// Which other members of a room are online now.
    Presence {
        room: String,
    },
}

impl ClientFrame {
    /// The `type` name, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Send { .. } => "send",
            ClientFrame::Read { .. } => "read",
            ClientFrame::History { .. } => "history",
            ClientFrame::Inbox { .. } => "inbox",
            ClientFrame::Resume { .. } => "resume",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Presence { .. } => "presence",
        }
    }
}

/// Why a client frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    /// The frame's `client_msg_id`, when it had one.
    pub reference: Option<String>,
}

/// Members of a room a `presence` frame looks at (a large room answers for its first ones).
pub const MAX_PRESENCE_MEMBERS: usize = 100;

/// Longest `client_msg_id` accepted.
pub const MAX_CLIENT_MSG_ID_LEN: usize = 128;

/// Parses a client frame. Errors carry the frame's `client_msg_id` when it can be read, so a
/// client can match the error to its send.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => {
            if let ClientFrame::Send { client_msg_id, .. } = &frame
                && (client_msg_id.is_empty() || client_msg_id.len() > MAX_CLIENT_MSG_ID_LEN)
            {
                return Err(FrameError {
                    code: ErrorCode::BadFrame,
                    message: format!("client_msg_id must be 1-{MAX_CLIENT_MSG_ID_LEN} characters"),
                    reference: None,
                });
            }
            Ok(frame)
        }
        Err(e) => {
            let reference = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("client_msg_id").and_then(|c| c.as_str()).map(|s| s.chars().take(MAX_CLIENT_MSG_ID_LEN).collect()));
            Err(FrameError { code: ErrorCode::BadFrame, message: format!("malformed frame: {e}"), reference })
        }
    }
}

/// A message as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageOut {
    pub room: String,
    pub seq: u64,
    pub msg_id: String,
    pub sender: String,
    pub body: String,
    pub kind: String,
    pub sent_at: i64,
}

impl From<&StoredMessage> for MessageOut {
    fn from(m: &StoredMessage) -> Self {
        MessageOut {
            room: m.room.clone(),
            seq: m.seq,
            msg_id: m.msg_id.clone(),
            sender: m.sender.clone(),
            body: m.body.clone(),
            kind: m.kind.as_str().to_string(),
            sent_at: m.sent_at_ms,
        }
    }
}

/// One inbox row as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxRoomOut {
    pub room: String,
    pub unread: u64,
    pub read_seq: u64,
    pub last_seq: u64,
}

/// A frame to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Ack {
        client_msg_id: String,
        room: String,
        seq: u64,
        msg_id: String,
    },
    Message(MessageOut),
    Unread {
        room: String,
        unread: u64,
        total_unread: u64,
        /// Orders the user's unread frames: ignore one with a lower version than seen.
        version: u64,
    },
    History {
        room: String,
        messages: Vec<MessageOut>,
    },
    Inbox {
        rooms: Vec<InboxRoomOut>,
        total_unread: u64,
        /// Present when more rooms follow: ask again with `"after": next`.
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    Typing {
        room: String,
        user: String,
    },
    /// The other members of `room` online now (at most the first
    /// [`crate::frames::MAX_PRESENCE_MEMBERS`] members are looked at).
    Presence {
        room: String,
        online: Vec<String>,
    },
    /// Ends the replay of a `resume`: the last seq sent per room; live messages follow.
    Resumed {
        rooms: BTreeMap<String, u64>,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
}

impl ServerFrame {
    /// The JSON text of the frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }

    /// An error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>, reference: Option<String>) -> Self {
        ServerFrame::Error { code, message: message.into(), reference }
    }

    /// The inbox frame of an inbox.
    pub fn inbox(inbox: &Inbox) -> Self {
        ServerFrame::Inbox {
            rooms: inbox
                .rooms
                .iter()
                .map(|r| InboxRoomOut { room: r.room.clone(), unread: r.unread, read_seq: r.read_seq, last_seq: r.last_seq })
                .collect(),
            total_unread: inbox.total_unread,
            next: inbox.next.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_client_frame() {
        assert_eq!(
            parse_client_frame(r#"{"type":"send","room":"r","client_msg_id":"c1","body":"hi"}"#).unwrap(),
            ClientFrame::Send { room: "r".into(), client_msg_id: "c1".into(), body: "hi".into() }
        );
        assert_eq!(parse_client_frame(r#"{"type":"read","room":"r","seq":3}"#).unwrap(), ClientFrame::Read { room: "r".into(), seq: 3 });
        assert_eq!(
            parse_client_frame(r#"{"type":"history","room":"r","after":2,"limit":10}"#).unwrap(),
            ClientFrame::History { room: "r".into(), before: None, after: Some(2), limit: Some(10) }
        );
        assert_eq!(parse_client_frame(r#"{"type":"inbox"}"#).unwrap(), ClientFrame::Inbox { after: None, limit: None });
        assert_eq!(parse_client_frame(r#"{"type":"presence","room":"r"}"#).unwrap(), ClientFrame::Presence { room: "r".into() });
        assert_eq!(
            parse_client_frame(r#"{"type":"inbox","after":"dm:a:b","limit":2}"#).unwrap(),
            ClientFrame::Inbox { after: Some("dm:a:b".into()), limit: Some(2) }
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"resume","rooms":{"a":1,"b":0}}"#).unwrap(),
            ClientFrame::Resume { rooms: [("a".to_string(), 1), ("b".to_string(), 0)].into() }
        );
        assert_eq!(parse_client_frame(r#"{"type":"typing","room":"r"}"#).unwrap(), ClientFrame::Typing { room: "r".into() });
    }

    #[test]
    fn bad_frames_are_bad_frame_with_ref() {
        for bad in [
            "not json",
            "{}",
            r#"{"type":"nope"}"#,
            r#"{"type":"read","room":"r","seq":"three"}"#,
            r#"{"type":"read","room":"r","seq":-1}"#,
            r#"[1,2]"#,
        ] {
            assert_eq!(parse_client_frame(bad).unwrap_err().code, ErrorCode::BadFrame, "{bad}");
        }
        let e = parse_client_frame(r#"{"type":"send","room":5,"client_msg_id":"c9","body":"x"}"#).unwrap_err();
        assert_eq!(e.reference.as_deref(), Some("c9"));
        assert!(parse_client_frame(r#"{"type":"send","room":"r","client_msg_id":"","body":"x"}"#).is_err());
    }

    #[test]
    fn server_frames_put_type_first() {
        let f = ServerFrame::Ack { client_msg_id: "c".into(), room: "r".into(), seq: 1, msg_id: "m".into() };
        assert_eq!(f.to_json(), r#"{"type":"ack","client_msg_id":"c","room":"r","seq":1,"msg_id":"m"}"#);
        let e = ServerFrame::error(ErrorCode::NotMember, "no", Some("c".into()));
        assert_eq!(e.to_json(), r#"{"type":"error","code":"not_member","message":"no","ref":"c"}"#);
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in ".{0,200}") {
            let _ = parse_client_frame(&s);
        }
    }
}
