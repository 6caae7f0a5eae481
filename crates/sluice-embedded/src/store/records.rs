//! The store's tables and the records kept in them (postcard), with the helpers that read
//! them.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sluice_core::model::{Campaign, MessageKind, StoredMessage};

pub(super) const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
pub(super) const MEMBERS: TableDefinition<(&str, &str), i64> = TableDefinition::new("members");
pub(super) const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// The idempotency index: (room, msg_id) -> seq, of every message but a direct room's first
/// (whose own row holds its msg_id). Keyed by room first, so that a room's entries share
/// leaves with its recent ones: a chat message updates a page its room already dirtied
/// instead of a random one of a tree as large as all messages ever stored.
pub(super) const ROOM_MSG_IDS: TableDefinition<(&str, &str), u64> = TableDefinition::new("room_msg_ids");
/// The idempotency index of the previous layout (msg_id -> room, seq), moved into
/// [`ROOM_MSG_IDS`] when a store that has it opens.
pub(super) const MSG_IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("msg_ids");
pub(super) const INBOX: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("inbox");
/// Users' totals in the previous layout (user -> total unread), moved into `inbox` (see
/// [`TOTAL_ROW`]) when a store that has it opens.
pub(super) const TOTALS: TableDefinition<&str, u64> = TableDefinition::new("totals");
/// The room under which `inbox` keeps a user's total unread (8 bytes, little-endian), beside
/// the user's rows: no room id is empty. A message's counter update for a recipient then
/// writes one leaf, not one in each of two trees.
pub(super) const TOTAL_ROW: &str = "";
pub(super) const CAMPAIGNS: TableDefinition<&str, &[u8]> = TableDefinition::new("campaigns");
pub(super) const CAMPAIGN_RECIPIENTS: TableDefinition<(&str, &str), ()> = TableDefinition::new("campaign_recipients");
pub(super) const CAMPAIGN_DEAD: TableDefinition<(&str, &str), ()> = TableDefinition::new("campaign_dead");
pub(super) const CAMPAIGN_OWNERS: TableDefinition<&str, &str> = TableDefinition::new("campaign_owners");
/// A campaign's bodies by reference (`sluice_core::ids::campaign_body_ref`): stored once, read
/// by the worker for each queued message that refers to one.
pub(super) const CAMPAIGN_BODIES: TableDefinition<(&str, &str), &str> = TableDefinition::new("campaign_bodies");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Operator controls of the drain: scope key -> control.
pub(super) const CONTROLS: TableDefinition<&str, &[u8]> = TableDefinition::new("drain_controls");
/// The key in `meta` of the counters' version.
pub(super) const COUNTERS_VERSION: &str = "counters_version";

/// The total unread of `user`, from its row in `inbox`.
pub(super) fn total_of(inbox: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>, user: &str) -> Result<u64, redb::Error> {
    match inbox.get((user, TOTAL_ROW))? {
        None => Ok(0),
        Some(v) => v
            .value()
            .try_into()
            .map(u64::from_le_bytes)
            .map_err(|_| redb::Error::Corrupted(format!("the total row of {user} is not 8 bytes"))),
    }
}

#[derive(Serialize, Deserialize, Default)]
pub(super) struct RoomRec {
    pub(super) last_seq: u64,
    pub(super) version: u64,
    pub(super) created_at_ms: i64,
}

#[derive(Serialize, Deserialize)]
pub(super) struct MsgRec {
    pub(super) msg_id: String,
    pub(super) sender: String,
    pub(super) body: String,
    pub(super) kind: MessageKind,
    pub(super) campaign_id: Option<String>,
    pub(super) sent_at_ms: i64,
}

#[derive(Serialize, Deserialize)]
pub(super) struct MsgIdRec {
    pub(super) room: String,
    pub(super) seq: u64,
}

#[derive(Serialize, Deserialize, Default)]
pub(super) struct InboxRec {
    pub(super) unread: u64,
    pub(super) read_seq: u64,
    pub(super) version: u64,
    pub(super) preview: String,
    pub(super) updated_at_ms: i64,
}

#[derive(Serialize, Deserialize, Default, Clone)]
pub(super) struct CampaignRec {
    pub(super) requested: u64,
    pub(super) enqueued: u64,
    pub(super) persisted: u64,
    pub(super) dead_lettered: u64,
}

impl CampaignRec {
    pub(super) fn to_campaign(&self, id: &str, owner: Option<&str>) -> Campaign {
        Campaign {
            campaign_id: id.to_string(),
            tenant: owner.map(|o| sluice_core::ids::owner_tenant(o).to_string()).unwrap_or_default(),
            requested: self.requested,
            enqueued: self.enqueued,
            persisted: self.persisted,
            dead_lettered: self.dead_lettered,
        }
    }
}

pub(super) fn stored(room: &str, seq: u64, r: MsgRec) -> StoredMessage {
    StoredMessage {
        room: room.to_string(),
        seq,
        msg_id: r.msg_id,
        sender: r.sender,
        body: r.body,
        kind: r.kind,
        campaign_id: r.campaign_id,
        sent_at_ms: r.sent_at_ms,
    }
}

/// `members` sorted, each once.
pub(super) fn sorted(members: &[String]) -> Vec<String> {
    let mut v = members.to_vec();
    v.sort();
    v.dedup();
    v
}

/// The members a direct room's id names (`dm:a:b`), sorted; `None` for any other room. A
/// direct room keeps no member rows and, once it has messages, no record that tracks them
/// (see [`room_state`]): its members are fixed by its id.
pub(super) fn direct_members(room: &str) -> Option<Vec<String>> {
    let mut members = sluice_core::ids::dm_members(room)?.to_vec();
    members.dedup();
    Some(members)
}

/// The seq of `room`'s newest message (0: none).
pub(super) fn newest_seq(messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>, room: &str) -> Result<u64, redb::Error> {
    Ok(messages.range((room, 0)..=(room, u64::MAX))?.next_back().transpose()?.map_or(0, |(k, _)| k.value().1))
}

/// `room`'s record as it stands. A direct room's last seq is its newest message's: its first
/// message writes no record (a one-off writes four rows, not seven), and a record that
/// CreateRoom or an earlier version of the store wrote is not kept up to date, nor read once
/// the room has messages (so `created_at_ms` is 0 then: see [`created_at`]). A direct room
/// without messages exists if CreateRoom made its record.
pub(super) fn room_state(
    rooms: &impl ReadableTable<&'static str, &'static [u8]>,
    messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    room: &str,
) -> Result<Option<RoomRec>, redb::Error> {
    if sluice_core::ids::dm_pair(room).is_some() {
        let newest = newest_seq(messages, room)?;
        if newest > 0 {
            return Ok(Some(RoomRec { last_seq: newest, version: 0, created_at_ms: 0 }));
        }
    }
    rooms.get(room)?.map(|v| crate::codec::decode(v.value())).transpose()
}

/// When `room` was made: its record's time, or for a direct room its first message made, that
/// message's.
pub(super) fn created_at(
    rooms: &impl ReadableTable<&'static str, &'static [u8]>,
    messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    room: &str,
    state: &RoomRec,
) -> Result<i64, redb::Error> {
    if state.created_at_ms != 0 {
        return Ok(state.created_at_ms);
    }
    if let Some(v) = rooms.get(room)? {
        return Ok(crate::codec::decode::<RoomRec>(v.value())?.created_at_ms);
    }
    first_sent_at(messages, room)
}

/// When `room`'s first message was sent (0: none).
fn first_sent_at(messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>, room: &str) -> Result<i64, redb::Error> {
    match messages.range((room, 0)..=(room, u64::MAX))?.next().transpose()? {
        Some((_, v)) => Ok(crate::codec::decode::<MsgRec>(v.value())?.sent_at_ms),
        None => Ok(0),
    }
}

/// Whether `user` is a member of `room` (a direct room's by its id).
pub(super) fn is_member(
    members: &impl ReadableTable<(&'static str, &'static str), i64>,
    room: &str,
    user: &str,
) -> Result<bool, redb::Error> {
    match sluice_core::ids::dm_pair(room) {
        Some(pair) => Ok(pair.contains(&user)),
        None => Ok(members.get((room, user))?.is_some()),
    }
}

/// The members of `room`, sorted: a direct room's by its id, others by their rows.
pub(super) fn room_members(
    members: &impl ReadableTable<(&'static str, &'static str), i64>,
    room: &str,
) -> Result<Vec<String>, redb::Error> {
    match direct_members(room) {
        Some(pair) => Ok(pair),
        None => members_of(members, room),
    }
}

/// The members of `room`, sorted (one range scan of the members table).
pub(super) fn members_of(table: &impl ReadableTable<(&'static str, &'static str), i64>, room: &str) -> Result<Vec<String>, redb::Error> {
    let mut out = Vec::new();
    for entry in table.range((room, "")..)? {
        let (k, _) = entry?;
        let (r, u) = k.value();
        if r != room {
            break;
        }
        out.push(u.to_string());
    }
    Ok(out)
}

/// The head of a message record: what counting needs, without copying the body.
#[derive(Deserialize)]
struct MsgHead<'a> {
    #[allow(dead_code)]
    pub(super) msg_id: &'a str,
    pub(super) sender: &'a str,
}

/// Counts messages of `room` with seq in `from..=to` not sent by `user`.
pub(super) fn count_not_by(
    messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    room: &str,
    user: &str,
    from: u64,
    to: u64,
) -> Result<u64, redb::Error> {
    let mut n = 0;
    if from > to {
        return Ok(0);
    }
    for entry in messages.range((room, from)..=(room, to))? {
        let (_, v) = entry?;
        let (head, _) = postcard::take_from_bytes::<MsgHead<'_>>(v.value())
            .map_err(|e| redb::Error::Corrupted(format!("undecodable message record: {e}")))?;
        if head.sender != user {
            n += 1;
        }
    }
    Ok(n)
}
