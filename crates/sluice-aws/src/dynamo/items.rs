//! Attribute values in and out of DynamoDB items, and the layout of each table's items.
//!
//! - messages: `room` (S), `seq` (N); msg_id, sender, body, kind, campaign_id?, sent_at. A
//!   one-off whose body is over `persist::BODY_INLINE_MAX` bytes has `body_ref` instead of
//!   `body`: its campaign's body, stored once (below), read back on every read.
//! - rooms: `room`; last_seq, version (bumped by every change), members_version (bumped by
//!   membership changes), created_at, and either `members` (string set, small rooms) or
//!   `large` = true and `member_count` with members kept only as inbox rows. Beside a large
//!   room, `room = "<room>#joins"`: `members` (string set) gained lately and `at` (ms of the
//!   last join), read while the `by-room` index has not caught up with them.
//! - inbox: `user`, `room`; read_seq, last_seq, unread (small rooms) or own_after (large
//!   rooms: the user's own messages after read_seq), version, preview, updated_at, and
//!   `member_of` = room on rows of large rooms (the sparse `by-room` index lists their
//!   members). The user's total is the row `room = "#total"`: total_unread (over small rooms),
//!   version, and `large_rooms` (string set) naming the large rooms whose unread is computed.
//! - msgids: `msg_id`; room, seq and `by` (the nonce of its counting chunk) once persisted
//!   (`undead` if it was counted dead-lettered before); `enq` once enqueued for a campaign;
//!   `dead` while dead-lettered; `expires_at` (TTL). Items `~count:<nonce>` are counting
//!   receipts: `ids` (string set), the msg_ids counted for their campaign with that chunk
//!   nonce. (Markers written before receipts carry `counted` once counted.) Items
//!   `~call:...` record an EnqueueBulk call whose request was counted.
//! - campaigns: `campaign_id`, `part`: `#meta` (requested) and shards `p00`.. (enqueued,
//!   persisted, dead_lettered), written by batch transactions (recording recipients, counting
//!   persisted messages) and per dead letter, never by a message's own transaction. The same
//!   transactions count into the shards of the partition `~tenant:<tenant>` (a tenant's
//!   backlog, for its queue quota); the partition `~controls` holds the operator's controls;
//!   the partition `~body:<campaign>` holds the campaign's bodies, one item per body
//!   reference (`part`): `body`.

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use std::collections::HashMap;

pub(crate) type Item = HashMap<String, AttributeValue>;

/// The sort key of a user's total row in the inbox table.
pub(crate) const TOTAL_SK: &str = "#total";
/// The sort key of a campaign's meta item.
pub(crate) const CAMPAIGN_META: &str = "#meta";
/// Campaign counter shards.
pub(crate) const CAMPAIGN_SHARDS: u32 = 16;
/// How long a msg_id marker is kept: longer than any message can wait in the queue and its
/// dead-letter queue (14 days each), so a redelivery always finds it.
const MARKER_TTL_SECS: i64 = 35 * 24 * 3600;

/// The TTL attribute (`expires_at`, epoch seconds) of a marker written at `now_ms`.
pub(crate) fn marker_expiry(now_ms: i64) -> i64 {
    now_ms / 1000 + MARKER_TTL_SECS
}

/// An item's size as DynamoDB counts it: each attribute's name and value in bytes (a number
/// about one byte per two digits, plus one).
pub(crate) fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => n.len().div_ceil(2) + 1,
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Ss(v) => v.iter().map(String::len).sum(),
        AttributeValue::Ns(v) => v.iter().map(|n| n.len().div_ceil(2) + 1).sum(),
        AttributeValue::M(m) => 3 + m.iter().map(|(k, v)| k.len() + value_size(v) + 1).sum::<usize>(),
        AttributeValue::L(l) => 3 + l.iter().map(|v| value_size(v) + 1).sum::<usize>(),
        _ => 1,
    }
}

/// Write request units of one write outside a transaction (double them inside one): 1 per
/// started KB of the item written.
pub(crate) fn write_units(size: usize) -> u64 {
    size.div_ceil(1024).max(1) as u64
}

/// Write request units of one transaction's items by AWS's rule: a put by its item's size,
/// an update or condition check as an item of at most 1 KB (every item Sluice updates is).
pub(crate) fn transaction_write_units(items: &[TransactWriteItem]) -> u64 {
    let one = |t: &TransactWriteItem| t.put().map_or(1, |p| write_units(item_size(p.item())));
    2 * items.iter().map(one).sum::<u64>()
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn ss(v: impl IntoIterator<Item = String>) -> AttributeValue {
    AttributeValue::Ss(v.into_iter().collect())
}

pub(crate) fn key(pairs: &[(&str, AttributeValue)]) -> Item {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

pub(crate) fn get_s<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}

/// A number attribute, 0 when absent (counters start at zero).
pub(crate) fn get_u64(item: &Item, k: &str) -> u64 {
    item.get(k).and_then(|v| v.as_n().ok()).and_then(|s| s.parse::<i64>().ok()).map_or(0, |v| v.max(0) as u64)
}

pub(crate) fn get_i64(item: &Item, k: &str) -> i64 {
    item.get(k).and_then(|v| v.as_n().ok()).and_then(|s| s.parse().ok()).unwrap_or(0)
}

pub(crate) fn get_ss(item: &Item, k: &str) -> Vec<String> {
    let mut v = item.get(k).and_then(|v| v.as_ss().ok()).cloned().unwrap_or_default();
    v.sort();
    v
}

pub(crate) fn get_bool(item: &Item, k: &str) -> bool {
    item.get(k).and_then(|v| v.as_bool().ok()).copied().unwrap_or(false)
}

/// The campaign counter shard a message counts in.
pub(crate) fn campaign_shard(msg_id: &str) -> String {
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let h = msg_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    format!("p{:02}", h % CAMPAIGN_SHARDS as u64)
}

/// The `#name` placeholders of expressions, each standing for the attribute of that name.
/// Expressions write every attribute as `#name`, so DynamoDB's reserved words never matter.
pub(crate) fn names(exprs: &[&str]) -> Option<HashMap<String, String>> {
    let mut out = HashMap::new();
    for e in exprs {
        let mut rest = *e;
        while let Some(i) = rest.find('#') {
            let word: String = rest[i + 1..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !word.is_empty() {
                out.insert(format!("#{word}"), word.clone());
            }
            rest = &rest[i + 1 + word.len()..];
        }
    }
    if out.is_empty() { None } else { Some(out) }
}

/// Whether `expr` mentions the placeholder `name` (as a whole word).
fn uses(expr: &str, name: &str) -> bool {
    expr.match_indices(name).any(|(i, _)| !expr[i + name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
}

/// One Update action of a transaction. `values` fill the `:name` placeholders.
pub(crate) fn update(table: &str, k: Item, expr: &str, cond: Option<&str>, values: Vec<(&str, AttributeValue)>) -> TransactWriteItem {
    let mut b = Update::builder()
        .table_name(table)
        .set_key(Some(k))
        .update_expression(expr)
        .set_condition_expression(cond.map(str::to_string))
        .set_expression_attribute_names(names(&[expr, cond.unwrap_or("")]));
    for (name, v) in values {
        // DynamoDB refuses values an expression does not use; variants of one expression
        // share a value list.
        if uses(expr, name) || cond.is_some_and(|c| uses(c, name)) {
            b = b.expression_attribute_values(name, v);
        }
    }
    TransactWriteItem::builder().update(b.build().expect("update has table, key and expression")).build()
}

/// One Put action of a transaction.
pub(crate) fn put(table: &str, item: Item, cond: Option<&str>) -> TransactWriteItem {
    let p = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .set_condition_expression(cond.map(str::to_string))
        .set_expression_attribute_names(cond.and_then(|c| names(&[c])));
    TransactWriteItem::builder().put(p.build().expect("put has table and item")).build()
}

/// A room's meta item, decoded.
#[derive(Debug, Clone)]
pub(crate) struct RoomMeta {
    pub(crate) last_seq: u64,
    pub(crate) version: u64,
    pub(crate) members_version: u64,
    pub(crate) created_at_ms: i64,
    pub(crate) large: bool,
    /// Sorted; empty for large rooms.
    pub(crate) members: Vec<String>,
    /// How many members a large room has (absent on rooms made large before it was kept): an
    /// index read that finds fewer is lagging.
    pub(crate) member_count: Option<u64>,
    /// A direct room (`dm:a:b`): its members are the two its id names, its last seq is its
    /// newest message's, and messages write no room item (see [`super`]).
    pub(crate) direct: bool,
}

impl RoomMeta {
    pub(crate) fn from_item(item: &Item) -> Self {
        RoomMeta {
            last_seq: get_u64(item, "last_seq"),
            version: get_u64(item, "version"),
            members_version: get_u64(item, "members_version"),
            created_at_ms: get_i64(item, "created_at"),
            large: get_bool(item, "large"),
            members: get_ss(item, "members"),
            member_count: item.contains_key("member_count").then(|| get_u64(item, "member_count")),
            direct: false,
        }
    }
}

/// An inbox row, decoded.
#[derive(Debug, Clone, Default)]
pub(crate) struct Row {
    pub(crate) read_seq: u64,
    pub(crate) last_seq: u64,
    pub(crate) unread: u64,
    pub(crate) own_after: u64,
    pub(crate) version: u64,
    pub(crate) large: bool,
}

impl Row {
    pub(crate) fn from_item(item: &Item) -> Self {
        Row {
            read_seq: get_u64(item, "read_seq"),
            last_seq: get_u64(item, "last_seq"),
            unread: get_u64(item, "unread"),
            own_after: get_u64(item, "own_after"),
            version: get_u64(item, "version"),
            large: item.contains_key("member_of"),
        }
    }

    /// Unread of a large-room row, given the room's last seq: every message after read_seq
    /// but the user's own.
    pub(crate) fn computed_unread(&self, room_last_seq: u64) -> u64 {
        room_last_seq.saturating_sub(self.read_seq).saturating_sub(self.own_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_map_to_their_names() {
        let m = names(&["SET #version = #version + :one, #last_seq = :s", "attribute_not_exists(#room)"]).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m["#version"], "version");
        assert_eq!(m["#room"], "room");
        assert!(names(&["SET a = :b", ""]).is_none());
        assert!(uses("ADD #a :one, #b :one2", ":one"));
        assert!(!uses("ADD #b :one2", ":one"));
    }

    #[test]
    fn campaign_shards_are_stable_and_spread() {
        assert_eq!(campaign_shard("abc"), campaign_shard("abc"));
        let shards: std::collections::HashSet<_> = (0..1000).map(|i| campaign_shard(&format!("m{i}"))).collect();
        assert_eq!(shards.len(), CAMPAIGN_SHARDS as usize);
        assert!(shards.iter().all(|s| s.len() == 3 && s.starts_with('p')));
    }

    #[test]
    fn large_room_unread_is_computed_from_positions() {
        let row = Row { read_seq: 10, own_after: 3, ..Row::default() };
        assert_eq!(row.computed_unread(20), 7);
        assert_eq!(row.computed_unread(10), 0);
        assert_eq!(Row { read_seq: 10, own_after: 5, ..Row::default() }.computed_unread(12), 0, "never below zero");
    }
}
