//! Reads and mark-read: history by Query, the inbox and totals, and the read position
//! moved under an optimistic lock on the inbox row.

use super::DynamoStore;
use super::call::TxFailure;
use super::items::{Item, RoomMeta, Row, TOTAL_SK, get_i64, get_s, get_ss, get_u64, key, n, s, update};
use sluice_core::error::StoreError;
use sluice_core::model::{HistoryQuery, Inbox, InboxPage, InboxRoom, MessageKind, ReadOutcome, StoredMessage};
use std::collections::HashMap;

pub(crate) fn decode_message(item: &Item) -> StoredMessage {
    StoredMessage {
        room: get_s(item, "room").unwrap_or_default().to_string(),
        seq: get_u64(item, "seq"),
        msg_id: get_s(item, "msg_id").unwrap_or_default().to_string(),
        sender: get_s(item, "sender").unwrap_or_default().to_string(),
        body: get_s(item, "body").unwrap_or_default().to_string(),
        kind: get_s(item, "kind").and_then(MessageKind::parse).unwrap_or(MessageKind::Chat),
        campaign_id: get_s(item, "campaign_id").map(str::to_string),
        sent_at_ms: get_i64(item, "sent_at"),
    }
}

/// Messages decoded from their items; a body an item keeps by reference is the campaign's
/// stored body (read once, then cached).
pub(crate) async fn decode_messages(store: &DynamoStore, items: &[Item]) -> Result<Vec<StoredMessage>, StoreError> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let mut m = decode_message(item);
        if let (Some(r), Some(c)) = (get_s(item, "body_ref"), m.campaign_id.as_deref()) {
            match store.campaign_body_cached(c, r).await? {
                Some(b) => m.body = b.to_string(),
                None => {
                    tracing::warn!(room = %m.room, seq = m.seq, campaign_id = c, "a message's campaign body is not stored; read as empty")
                }
            }
        }
        out.push(m);
    }
    Ok(out)
}

/// Messages of `room` with lo <= seq <= hi, strongly consistent, in `forward` order, at most
/// `limit`, with only the attributes in `projection` when given.
pub(crate) async fn query_messages(
    store: &DynamoStore,
    room: &str,
    lo: u64,
    hi: u64,
    forward: bool,
    limit: Option<usize>,
    projection: Option<&str>,
) -> Result<Vec<Item>, StoreError> {
    let q = store
        .client
        .query()
        .table_name(&store.t.messages)
        .key_condition_expression("#room = :r AND #seq BETWEEN :lo AND :hi")
        .expression_attribute_names("#room", "room")
        .expression_attribute_names("#seq", "seq")
        .expression_attribute_values(":r", s(room))
        .expression_attribute_values(":lo", n(lo))
        .expression_attribute_values(":hi", n(hi))
        .scan_index_forward(forward)
        .consistent_read(true)
        .set_projection_expression(projection.map(str::to_string));
    store.query_all(q, limit).await
}

pub(crate) async fn history(store: &DynamoStore, room: &str, q: HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
    let lo = q.after.map_or(1, |a| a.saturating_add(1));
    let hi = q.before.map_or(i64::MAX as u64, |b| b.saturating_sub(1)).min(i64::MAX as u64);
    if lo > hi || q.limit == 0 {
        return Ok(Vec::new());
    }
    // With `after`, the oldest matches; otherwise the newest, read backwards.
    let forward = q.after.is_some();
    let mut items = query_messages(store, room, lo, hi, forward, Some(q.limit), None).await?;
    if !forward {
        items.reverse();
    }
    decode_messages(store, &items).await
}

/// How many messages of `room` with lo <= seq <= hi were sent by `user` (`own`) or by others.
async fn count_in(store: &DynamoStore, room: &str, lo: u64, hi: u64, user: &str, own: bool) -> Result<u64, StoreError> {
    if lo > hi {
        return Ok(0);
    }
    let items = query_messages(store, room, lo, hi, true, None, Some("sender")).await?;
    Ok(items.iter().filter(|i| (get_s(i, "sender") == Some(user)) == own).count() as u64)
}

/// Unread of the large rooms `rooms` for `user`: their rows and room items, read now.
async fn large_unread(store: &DynamoStore, user: &str, rooms: &[String]) -> Result<HashMap<String, u64>, StoreError> {
    if rooms.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = store.batch_get(&store.t.inbox, rooms.iter().map(|r| key(&[("user", s(user)), ("room", s(r))])).collect()).await?;
    let metas = room_metas(store, rooms).await?;
    Ok(rows
        .iter()
        .filter_map(|item| {
            let room = get_s(item, "room")?;
            let meta = metas.get(room)?;
            Some((room.to_string(), Row::from_item(item).computed_unread(meta.last_seq)))
        })
        .collect())
}

async fn room_metas(store: &DynamoStore, rooms: &[String]) -> Result<HashMap<String, RoomMeta>, StoreError> {
    let items = store.batch_get(&store.t.rooms, rooms.iter().map(|r| key(&[("room", s(r))])).collect()).await?;
    Ok(items.iter().filter_map(|i| Some((get_s(i, "room")?.to_string(), RoomMeta::from_item(i)))).collect())
}

/// A user's total: the stored sum over small rooms plus the computed unread of large ones,
/// with the total row's version (bumped by every change of the user's counters, so it
/// orders the user's unread updates).
async fn total_from(store: &DynamoStore, user: &str, total_row: Option<&Item>) -> Result<(u64, u64), StoreError> {
    let Some(row) = total_row else { return Ok((0, 0)) };
    let large = large_unread(store, user, &get_ss(row, "large_rooms")).await?;
    Ok((get_u64(row, "total_unread") + large.values().sum::<u64>(), get_u64(row, "version")))
}

/// The user's total and its version.
pub(crate) async fn total_of(store: &DynamoStore, user: &str) -> Result<(u64, u64), StoreError> {
    let row = store.row(user, TOTAL_SK).await?;
    total_from(store, user, row.as_ref()).await
}

/// The unread of `room`, the total and its version of each of `users` (members of the small
/// room `room`), read in one BatchGetItem where no large rooms are involved.
pub(crate) async fn counters(store: &DynamoStore, room: &str, users: &[String]) -> Result<HashMap<String, (u64, u64, u64)>, StoreError> {
    let keys =
        users.iter().flat_map(|u| [key(&[("user", s(u)), ("room", s(room))]), key(&[("user", s(u)), ("room", s(TOTAL_SK))])]).collect();
    let items = store.batch_get(&store.t.inbox, keys).await?;
    let mut unread = HashMap::new();
    let mut totals = HashMap::new();
    for item in &items {
        let Some(user) = get_s(item, "user") else { continue };
        if get_s(item, "room") == Some(TOTAL_SK) {
            totals.insert(user.to_string(), item);
        } else {
            unread.insert(user.to_string(), get_u64(item, "unread"));
        }
    }
    let mut out = HashMap::with_capacity(users.len());
    for u in users {
        let (total, version) = total_from(store, u, totals.get(u).copied()).await?;
        out.insert(u.clone(), (unread.get(u).copied().unwrap_or(0), total, version));
    }
    Ok(out)
}

/// One page of the user's rooms (one Query after the cursor) and their total (the `#total`
/// row plus the computed unread of the large rooms it names).
pub(crate) async fn inbox(store: &DynamoStore, user: &str, page: InboxPage) -> Result<Inbox, StoreError> {
    // Room ids never contain '#': every room sorts after the `#total` row.
    let after = match page.after {
        Some(a) if a.as_str() > TOTAL_SK => a,
        _ => TOTAL_SK.to_string(),
    };
    let q = store
        .client
        .query()
        .table_name(&store.t.inbox)
        .key_condition_expression("#user = :u AND #room > :after")
        .expression_attribute_names("#user", "user")
        .expression_attribute_names("#room", "room")
        .expression_attribute_values(":u", s(user))
        .expression_attribute_values(":after", s(&after))
        .consistent_read(true);
    let mut items = store.query_all(q, Some(page.limit + 1)).await?;
    let more = items.len() > page.limit;
    items.truncate(page.limit);
    let mut rooms = Vec::with_capacity(items.len());
    let mut large = Vec::new();
    for item in &items {
        let room = get_s(item, "room").unwrap_or_default();
        let row = Row::from_item(item);
        if row.large {
            large.push((room.to_string(), row));
        } else {
            rooms.push(InboxRoom { room: room.to_string(), unread: row.unread, read_seq: row.read_seq, last_seq: row.last_seq });
        }
    }
    let metas = room_metas(store, &large.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>()).await?;
    for (room, row) in large {
        // Rows of a large room whose creation never finished have no room item: skip them.
        let Some(meta) = metas.get(&room) else { continue };
        rooms.push(InboxRoom { room, unread: row.computed_unread(meta.last_seq), read_seq: row.read_seq, last_seq: meta.last_seq });
    }
    rooms.sort_by(|a, b| a.room.cmp(&b.room));
    let next = if more { items.last().and_then(|i| get_s(i, "room")).map(str::to_string) } else { None };
    Ok(Inbox { rooms, total_unread: total_of(store, user).await?.0, next })
}

pub(crate) async fn mark_read(store: &DynamoStore, user: &str, room: &str, seq: u64, now_ms: i64) -> Result<ReadOutcome, StoreError> {
    let mut attempt = 0;
    loop {
        // The row first, then the room: a message committed in between either bumps the
        // row's version (and the write below is refused) or is the user's own.
        let row_item = store.row(user, room).await?;
        let meta = store.room_meta(room).await?.ok_or_else(|| StoreError::UnknownRoom(room.to_string()))?;
        // A row without a version: none yet (the sender of the one-off that created a direct
        // room has none until it reads, writes or is written to), or one a message of the
        // sender's put without counters.
        let versioned = row_item.as_ref().is_some_and(|i| i.contains_key("version"));
        let row = match &row_item {
            Some(item) => Row::from_item(item),
            None if !meta.large && meta.members.iter().any(|m| m == user) => Row::from_item(&Item::new()),
            None => return Err(StoreError::NotMember { user: user.to_string(), room: room.to_string() }),
        };
        let last = meta.last_seq;
        let target = seq.min(last);
        if target <= row.read_seq {
            let unread = if row.large { row.computed_unread(last) } else { row.unread };
            let (total_unread, version) = total_of(store, user).await?;
            return Ok(ReadOutcome { read_seq: row.read_seq, unread, total_unread, changed: false, version });
        }
        let row_key = key(&[("user", s(user)), ("room", s(room))]);
        let (items, unread) = if row.large {
            let own_after = if target == last { 0 } else { count_in(store, room, target + 1, last, user, true).await? };
            let item = update(
                &store.t.inbox,
                row_key,
                "SET #read_seq = :t, #own_after = :o, #updated_at = :now, #version = #version + :one",
                Some("#version = :v"),
                vec![(":t", n(target)), (":o", n(own_after)), (":now", n(now_ms)), (":one", n(1)), (":v", n(row.version))],
            );
            // The total changes with a large room's read too: its version moves, so that
            // unread updates stay ordered.
            let total =
                update(&store.t.inbox, key(&[("user", s(user)), ("room", s(TOTAL_SK))]), "ADD #version :one", None, vec![(":one", n(1))]);
            (vec![item, total], Row { read_seq: target, own_after, ..row.clone() }.computed_unread(last))
        } else {
            // Count whichever range is shorter: what is read now, or what stays unread.
            let unread = if target == last {
                0
            } else if target - row.read_seq <= last - target {
                row.unread.saturating_sub(count_in(store, room, row.read_seq + 1, target, user, false).await?)
            } else {
                count_in(store, room, target + 1, last, user, false).await?
            };
            let mut items = vec![if versioned {
                update(
                    &store.t.inbox,
                    row_key,
                    "SET #read_seq = :t, #unread = :u, #updated_at = :now, #version = #version + :one",
                    Some("#version = :v AND attribute_not_exists(#member_of)"),
                    vec![(":t", n(target)), (":u", n(unread)), (":now", n(now_ms)), (":one", n(1)), (":v", n(row.version))],
                )
            } else {
                // Created (or completed) by this read, unless a message gave it counters first.
                update(
                    &store.t.inbox,
                    row_key,
                    "SET #read_seq = :t, #unread = :u, #updated_at = :now, #version = :one, #last_seq = if_not_exists(#last_seq, :last)",
                    Some("attribute_not_exists(#version) AND attribute_not_exists(#member_of)"),
                    vec![(":t", n(target)), (":u", n(unread)), (":now", n(now_ms)), (":one", n(1)), (":last", n(last))],
                )
            }];
            let delta = unread as i64 - row.unread as i64;
            if delta != 0 {
                items.push(update(
                    &store.t.inbox,
                    key(&[("user", s(user)), ("room", s(TOTAL_SK))]),
                    "ADD #total_unread :d, #version :one",
                    None,
                    vec![(":d", n(delta)), (":one", n(1))],
                ));
            }
            (items, unread)
        };
        match store.transact(items, None).await {
            Ok(()) => {
                let (total_unread, version) = total_of(store, user).await?;
                return Ok(ReadOutcome { read_seq: target, unread, total_unread, changed: true, version });
            }
            Err(TxFailure::Cancelled(reasons))
                if reasons.iter().any(|r| r == "ConditionalCheckFailed" || super::call::reason_is_retryable(r)) =>
            {
                store.metrics.conflicts.inc();
                store.pause(attempt, "inbox row changed during mark-read").await?;
                attempt += 1;
            }
            Err(TxFailure::Retryable(why)) => {
                store.pause(attempt, &why).await?;
                attempt += 1;
            }
            Err(e) => return Err(super::rooms::tx_error(e)),
        }
    }
}
