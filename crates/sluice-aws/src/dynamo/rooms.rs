//! Rooms and members: creation, additions, the switch of a growing room to computed unread,
//! and the member list of large rooms (from the sparse `by-room` index, cached per
//! members_version).
//!
//! The index lists a member only a moment after their row is written, so a large room also
//! keeps its recent joins beside it: the item `<room>#joins` of the rooms table (room ids never
//! contain `#`) holds the members added while joins kept coming less than [`JOINS_WINDOW_MS`]
//! apart, at most [`JOINS_MAX`] of them, written in the same transactions as their rows. A read
//! of the index that finds fewer members than the room's `member_count` adds them, so the
//! first message after an AddMembers is pushed to the new members too.

use super::call::{TxFailure, drop_failed_conditions};
use super::items::{Item, RoomMeta, Row, TOTAL_SK, get_i64, get_s, get_ss, key, n, put, s, ss, update};
use super::{DynamoStore, SMALL_ROOM_MAX_MEMBERS};
use aws_sdk_dynamodb::types::TransactWriteItem;
use sluice_core::error::StoreError;
use sluice_core::model::Room;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The `by-room` index of the inbox table (rows of large rooms only).
pub(crate) const BY_ROOM_INDEX: &str = "by-room";

/// Recent joins older than this (since the last join) are no longer read: the index has
/// caught up with them long before.
const JOINS_WINDOW_MS: i64 = 60_000;
/// Most recent joins kept (the item is rewritten with each chunk of joins: about 40 bytes a
/// member). Joins beyond it wait for the index, as every join did before.
const JOINS_MAX: usize = 200;

fn joins_key(room: &str) -> Item {
    key(&[("room", s(format!("{room}#joins")))])
}

/// The recent joins of a room, as read.
#[derive(Debug, Clone, Default)]
struct Joins {
    members: Vec<String>,
    at: i64,
}

impl Joins {
    fn live(&self, now_ms: i64) -> bool {
        now_ms - self.at <= JOINS_WINDOW_MS
    }
}

async fn read_joins(store: &DynamoStore, room: &str) -> Result<Option<Joins>, StoreError> {
    Ok(store.get(&store.t.rooms, joins_key(room)).await?.map(|i| Joins { members: get_ss(&i, "members"), at: get_i64(&i, "at") }))
}

/// The write that records `users` as just joined after `joins` (what the item holds), and
/// what it holds once that write commits; none when there is no room left for them.
fn record_joins(
    store: &DynamoStore,
    room: &str,
    joins: &Option<Joins>,
    users: &[String],
    now_ms: i64,
) -> Option<(TransactWriteItem, Joins)> {
    match joins {
        Some(j) if j.live(now_ms) => {
            if j.members.len() + users.len() > JOINS_MAX {
                return None;
            }
            let mut after = j.clone();
            after.members.extend(users.iter().cloned());
            after.at = now_ms;
            let write = update(
                &store.t.rooms,
                joins_key(room),
                "ADD #members :u SET #at = :now",
                None,
                vec![(":u", ss(users.iter().cloned())), (":now", n(now_ms))],
            );
            Some((write, after))
        }
        _ if users.len() > JOINS_MAX => None,
        _ => {
            let mut item = joins_key(room);
            item.insert("members".into(), ss(users.iter().cloned()));
            item.insert("at".into(), n(now_ms));
            Some((put(&store.t.rooms, item, None), Joins { members: users.to_vec(), at: now_ms }))
        }
    }
}

/// The members, sorted and each once.
pub(crate) fn sorted(members: &[String]) -> Vec<String> {
    members.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect()
}

/// The item of a room created at `created_at_ms`, before any message or membership change.
pub(crate) fn new_room(room: &str, created_at_ms: i64) -> Item {
    let mut item = key(&[("room", s(room))]);
    item.insert("last_seq".into(), n(0));
    item.insert("version".into(), n(0));
    item.insert("members_version".into(), n(0));
    item.insert("created_at".into(), n(created_at_ms));
    item
}

/// An inbox row for a member who joins a room whose last seq is `last_seq`.
pub(crate) fn new_row(user: &str, room: &str, last_seq: u64, large: bool, now_ms: i64) -> Item {
    let mut item = key(&[("user", s(user)), ("room", s(room))]);
    item.insert("read_seq".into(), n(last_seq));
    item.insert("last_seq".into(), n(last_seq));
    item.insert("version".into(), n(0));
    item.insert("updated_at".into(), n(now_ms));
    if large {
        item.insert("own_after".into(), n(0));
        item.insert("member_of".into(), s(room));
    } else {
        item.insert("unread".into(), n(0));
    }
    item
}

/// Adds `room` to the `large_rooms` set of `user`'s total row.
fn mark_large(store: &DynamoStore, user: &str, room: &str) -> TransactWriteItem {
    update(
        &store.t.inbox,
        key(&[("user", s(user)), ("room", s(TOTAL_SK))]),
        "ADD #large_rooms :r, #version :one",
        None,
        vec![(":r", ss([room.to_string()])), (":one", n(1))],
    )
}

pub(crate) async fn create_room(store: &DynamoStore, room: &str, members: &[String], now_ms: i64) -> Result<Room, StoreError> {
    let members = sorted(members);
    if members.is_empty() {
        return Err(StoreError::Invalid("a room needs at least one member".into()));
    }
    let mut tries = super::Tries::default();
    loop {
        if let Some(meta) = store.room_meta(room).await? {
            let (existing, complete) = store.read_members(room, &meta).await?;
            // A read of a large room's lagging index may still miss some members.
            let same = *existing == members
                || (!complete
                    && meta.member_count == Some(members.len() as u64)
                    && existing.iter().all(|u| members.binary_search(u).is_ok()));
            return if same {
                Ok(Room { room: room.to_string(), members, last_seq: meta.last_seq, created_at_ms: meta.created_at_ms })
            } else {
                Err(StoreError::RoomExists(room.to_string()))
            };
        }
        let mut meta = new_room(room, now_ms);
        if members.len() <= SMALL_ROOM_MAX_MEMBERS {
            // Meta and rows in one transaction: the room appears whole or not at all.
            meta.insert("members".into(), ss(members.iter().cloned()));
            let mut items = vec![put(&store.t.rooms, meta, Some("attribute_not_exists(#room)"))];
            // A direct room's first message writes its rows without looking for this item:
            // rows that exist belong to a message, and are not reset.
            let row_cond = sluice_core::ids::dm_pair(room).is_some().then_some("attribute_not_exists(#room)");
            items.extend(members.iter().map(|u| put(&store.t.inbox, new_row(u, room, 0, false, now_ms), row_cond)));
            match store.transact(items, None).await {
                Ok(()) => return Ok(Room { room: room.to_string(), members, last_seq: 0, created_at_ms: now_ms }),
                // Created meanwhile by someone else (or, for a direct room, by its first
                // message): compare on the next turn.
                Err(TxFailure::Cancelled(r)) if r.iter().any(|c| c == "ConditionalCheckFailed") => continue,
                // A message's transaction holds a row (a direct room's first message), or
                // DynamoDB throttles: again.
                Err(f) => {
                    store.again(&mut tries, f, "creating a room").await?;
                    continue;
                }
            }
        }
        // A large room: rows first, the meta item last, so the room exists only once every
        // member can use it (rows without a room are ignored by every read).
        let mut joins = None;
        for chunk in members.chunks(49) {
            let mut items: Vec<_> = chunk.iter().map(|u| put(&store.t.inbox, new_row(u, room, 0, true, now_ms), None)).collect();
            items.extend(chunk.iter().map(|u| mark_large(store, u, room)));
            let (write, after) = record_joins(store, room, &joins, chunk, sluice_core::now_ms()).unzip();
            items.extend(write);
            transact_retrying(store, items).await?;
            joins = after.or(joins);
        }
        meta.insert("large".into(), aws_sdk_dynamodb::types::AttributeValue::Bool(true));
        meta.insert("member_count".into(), n(members.len()));
        match store.transact(vec![put(&store.t.rooms, meta, Some("attribute_not_exists(#room)"))], None).await {
            Ok(()) => return Ok(Room { room: room.to_string(), members, last_seq: 0, created_at_ms: now_ms }),
            Err(TxFailure::Cancelled(_)) => continue,
            Err(e) => return Err(tx_error(e)),
        }
    }
}

pub(crate) async fn add_members(store: &DynamoStore, room: &str, members: &[String], now_ms: i64) -> Result<Room, StoreError> {
    let wanted = sorted(members);
    let mut attempt = 0;
    loop {
        let meta = store.room_meta(room).await?.ok_or_else(|| StoreError::UnknownRoom(room.to_string()))?;
        let existing = store.members_of(room, &meta).await?;
        let new: Vec<String> = wanted.iter().filter(|u| existing.binary_search(u).is_err()).cloned().collect();
        if new.is_empty() {
            return Ok(Room {
                room: room.to_string(),
                members: existing.to_vec(),
                last_seq: meta.last_seq,
                created_at_ms: meta.created_at_ms,
            });
        }
        let result = if meta.large {
            add_to_large(store, room, &meta, &new, now_ms).await
        } else if existing.len() + new.len() <= SMALL_ROOM_MAX_MEMBERS {
            let mut items = vec![update(
                &store.t.rooms,
                key(&[("room", s(room))]),
                "ADD #members :new SET #version = #version + :one, #members_version = #members_version + :one",
                Some("#version = :v"),
                vec![(":new", ss(new.iter().cloned())), (":one", n(1)), (":v", n(meta.version))],
            )];
            items.extend(new.iter().map(|u| put(&store.t.inbox, new_row(u, room, meta.last_seq, false, now_ms), None)));
            store.transact(items, None).await
        } else {
            match convert_to_large(store, room, &meta, &existing).await {
                Ok(()) => continue,
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(()) => {
                let meta = store.room_meta(room).await?.ok_or_else(|| StoreError::UnknownRoom(room.to_string()))?;
                let mut members = store.members_of(room, &meta).await?.to_vec();
                // The index may not list those just added yet; they are members all the same.
                members.extend(new);
                members.sort();
                members.dedup();
                return Ok(Room { room: room.to_string(), members, last_seq: meta.last_seq, created_at_ms: meta.created_at_ms });
            }
            Err(TxFailure::Cancelled(reasons))
                if reasons.iter().any(|r| r == "ConditionalCheckFailed" || super::call::reason_is_retryable(r)) =>
            {
                store.metrics.conflicts.inc();
                store.pause(attempt, "room changed while adding members").await?;
                attempt += 1;
            }
            Err(TxFailure::Retryable(why)) => {
                store.pause(attempt, &why).await?;
                attempt += 1;
            }
            Err(e) => return Err(tx_error(e)),
        }
    }
}

/// Adds rows to a large room, then bumps members_version so member caches refresh.
async fn add_to_large(store: &DynamoStore, room: &str, meta: &RoomMeta, new: &[String], now_ms: i64) -> Result<(), TxFailure> {
    let mut joins = read_joins(store, room).await.map_err(TxFailure::Fatal)?;
    for chunk in new.chunks(49) {
        let mut chunk = chunk.to_vec();
        let mut attempt = 0;
        while !chunk.is_empty() {
            // The member list came from an eventually consistent index: never reset the row
            // of someone who joined a moment ago.
            let mut items: Vec<_> = chunk
                .iter()
                .map(|u| put(&store.t.inbox, new_row(u, room, meta.last_seq, true, now_ms), Some("attribute_not_exists(#room)")))
                .collect();
            items.extend(chunk.iter().map(|u| mark_large(store, u, room)));
            // Counted with the rows, so a read of the lagging index can be recognised.
            items.push(update(
                &store.t.rooms,
                key(&[("room", s(room))]),
                "ADD #member_count :k",
                Some("attribute_exists(#room)"),
                vec![(":k", n(chunk.len()))],
            ));
            let (write, after) = record_joins(store, room, &joins, &chunk, sluice_core::now_ms()).unzip();
            items.extend(write);
            match store.transact(items, None).await {
                Ok(()) => {
                    joins = after.or(joins);
                    break;
                }
                Err(TxFailure::Cancelled(reasons)) => {
                    if !drop_failed_conditions(&mut chunk, &reasons) {
                        store.pause(attempt, "adding members").await.map_err(TxFailure::Fatal)?;
                        attempt += 1;
                    }
                }
                Err(TxFailure::Retryable(why)) => {
                    store.pause(attempt, &why).await.map_err(TxFailure::Fatal)?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
    // read_seq = the last seq seen above; a message committed since then counts as unread for
    // the new member, which is what a member who joined before it would see.
    let bump = update(
        &store.t.rooms,
        key(&[("room", s(room))]),
        "SET #members_version = #members_version + :one",
        Some("attribute_exists(#room)"),
        vec![(":one", n(1))],
    );
    store.transact(vec![bump], None).await
}

/// Switches a small room to computed unread in one transaction: the room item, every
/// member's row (own_after from its counters) and total (its stored unread taken out, the
/// room named as large). Every item is conditioned on the version read, so a message or a
/// mark-read in between cancels it and the caller starts over.
async fn convert_to_large(store: &DynamoStore, room: &str, meta: &RoomMeta, members: &[String]) -> Result<(), TxFailure> {
    let keys = members.iter().map(|u| key(&[("user", s(u)), ("room", s(room))])).collect();
    let rows = store.batch_get(&store.t.inbox, keys).await.map_err(TxFailure::Fatal)?;
    if rows.len() != members.len() {
        return Err(TxFailure::Fatal(StoreError::Internal(format!(
            "room {room}: {} member rows for {} members",
            rows.len(),
            members.len()
        ))));
    }
    let mut items = vec![update(
        &store.t.rooms,
        key(&[("room", s(room))]),
        "SET #large = :t, #member_count = :count, #version = #version + :one, #members_version = #members_version + :one REMOVE #members",
        Some("#version = :v"),
        vec![
            (":t", aws_sdk_dynamodb::types::AttributeValue::Bool(true)),
            (":count", n(members.len())),
            (":one", n(1)),
            (":v", n(meta.version)),
        ],
    )];
    for item in &rows {
        let user = get_s(item, "user").unwrap_or_default().to_string();
        let row = Row::from_item(item);
        // Every message after read_seq is unread unless it is the user's own.
        let own_after = meta.last_seq.saturating_sub(row.read_seq).saturating_sub(row.unread);
        items.push(update(
            &store.t.inbox,
            key(&[("user", s(&user)), ("room", s(room))]),
            "SET #own_after = :own, #member_of = :room, #version = #version + :one REMOVE #unread",
            Some("#version = :v"),
            vec![(":own", n(own_after)), (":room", s(room)), (":one", n(1)), (":v", n(row.version))],
        ));
        items.push(update(
            &store.t.inbox,
            key(&[("user", s(&user)), ("room", s(TOTAL_SK))]),
            "ADD #total_unread :minus, #large_rooms :r, #version :one",
            None,
            vec![(":minus", n(-(row.unread as i64))), (":r", ss([room.to_string()])), (":one", n(1))],
        ));
    }
    // Every member is new to the index.
    items.extend(record_joins(store, room, &None, members, sluice_core::now_ms()).map(|(write, _)| write));
    store.transact(items, None).await
}

/// A transaction of idempotent writes, retried on throttling and conflicts.
async fn transact_retrying(store: &DynamoStore, items: Vec<TransactWriteItem>) -> Result<(), StoreError> {
    let mut tries = super::Tries::default();
    loop {
        match store.transact(items.clone(), None).await {
            Ok(()) => return Ok(()),
            Err(f) => store.again(&mut tries, f, "writing member rows").await?,
        }
    }
}

pub(crate) fn tx_error(f: TxFailure) -> StoreError {
    match f {
        TxFailure::Fatal(e) => e,
        TxFailure::Retryable(why) => StoreError::Unavailable(why),
        TxFailure::Cancelled(r) => StoreError::Conflict(format!("transaction cancelled: {r:?}")),
        TxFailure::IdempotentMismatch => StoreError::Internal("unexpected IdempotentParameterMismatch".into()),
    }
}

impl DynamoStore {
    /// The sorted members of a room: inline for small rooms; for large rooms from the
    /// `by-room` index (see [`Self::read_members`]). A member added a moment ago may miss a
    /// live push (never a message: history and unread do not depend on this list).
    pub(crate) async fn members_of(&self, room: &str, meta: &RoomMeta) -> Result<Arc<Vec<String>>, StoreError> {
        Ok(self.read_members(room, meta).await?.0)
    }

    /// The sorted members of a room, and whether the list is complete. A large room's come
    /// from the eventually consistent `by-room` index: a read that finds fewer than the room's
    /// `member_count` is lagging (members added a moment ago are missing) and is not cached,
    /// so the next message reads again; a complete read is cached until members_version
    /// changes (and for a few seconds at most, see [`super::members`]).
    pub(crate) async fn read_members(&self, room: &str, meta: &RoomMeta) -> Result<(Arc<Vec<String>>, bool), StoreError> {
        if !meta.large {
            return Ok((Arc::new(meta.members.clone()), true));
        }
        if let Some(m) = self.members_cache.get(room, meta.members_version, std::time::Instant::now()) {
            return Ok((m, true));
        }
        let q = self
            .client
            .query()
            .table_name(&self.t.inbox)
            .index_name(BY_ROOM_INDEX)
            .key_condition_expression("#member_of = :r")
            .expression_attribute_names("#member_of", "member_of")
            .expression_attribute_values(":r", s(room));
        let mut members: Vec<String> = self.query_all(q, None).await?.iter().filter_map(|i| get_s(i, "user").map(str::to_string)).collect();
        members.sort();
        members.dedup();
        let short = |members: &[String]| meta.member_count.is_some_and(|c| (members.len() as u64) < c);
        if short(&members)
            && let Some(joins) = read_joins(self, room).await?
            && joins.live(sluice_core::now_ms())
        {
            members.extend(joins.members);
            members.sort();
            members.dedup();
        }
        let complete = !short(&members);
        let members = Arc::new(members);
        if complete {
            self.members_cache.insert(room, meta.members_version, members.clone(), std::time::Instant::now());
        } else {
            self.metrics.members_index_lagging.inc();
        }
        Ok((members, complete))
    }
}
