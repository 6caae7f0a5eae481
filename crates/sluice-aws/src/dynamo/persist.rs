//! Persisting messages: one TransactWriteItems per message (see the module docs of
//! [`super`] for the items it writes and how cancellations are read).

use super::call::TxFailure;
use super::items::{CAMPAIGN_META, Item, RoomMeta, TOTAL_SK, campaign_shard, get_s, get_u64, key, marker_expiry, n, put, s, update};
use super::{DynamoStore, PERSIST_CONCURRENCY, reads, rooms};
use aws_sdk_dynamodb::types::TransactWriteItem;
use futures::StreamExt;
use sluice_core::error::StoreError;
use sluice_core::model::{NewMessage, Persisted, StoredMessage, UnreadUpdate};
use std::sync::Arc;
use std::time::Duration;

/// Characters of the body kept as the inbox preview.
const PREVIEW_CHARS: usize = 100;
/// A room whose version keeps moving under us is retried this often before giving up.
const MAX_ROOM_RACES: u32 = 200;

pub(crate) async fn persist_batch(store: &DynamoStore, batch: Vec<NewMessage>) -> Vec<Result<Persisted, StoreError>> {
    // Rooms in parallel, each room's messages in the order given.
    let mut by_room: std::collections::HashMap<&str, Vec<usize>> = std::collections::HashMap::new();
    for (i, m) in batch.iter().enumerate() {
        by_room.entry(m.room.as_str()).or_default().push(i);
    }
    let groups: Vec<Vec<usize>> = by_room.into_values().collect();
    let batch = &batch;
    let done: Vec<Vec<(usize, Result<Persisted, StoreError>)>> = futures::stream::iter(groups)
        .map(|idx| async move {
            let mut out = Vec::with_capacity(idx.len());
            let mut failed: Option<StoreError> = None;
            for i in idx {
                let r = match &failed {
                    // Keep the room's order: nothing after a message that must be retried.
                    Some(e) => Err(e.clone()),
                    None => persist_one(store, &batch[i]).await,
                };
                if let Err(e) = &r
                    && e.is_retryable()
                {
                    failed = Some(e.clone());
                }
                out.push((i, r));
            }
            out
        })
        .buffer_unordered(PERSIST_CONCURRENCY)
        .collect()
        .await;
    let mut results: Vec<Option<Result<Persisted, StoreError>>> = (0..batch.len()).map(|_| None).collect();
    for (i, r) in done.into_iter().flatten() {
        results[i] = Some(r);
    }
    results.into_iter().map(|r| r.expect("every message has a result")).collect()
}

/// What the marker of a msg_id says.
enum Marker {
    Persisted { room: String, seq: u64 },
    DeadLettered,
    Absent,
}

async fn marker(store: &DynamoStore, msg_id: &str) -> Result<Marker, StoreError> {
    let Some(item) = store.get(&store.t.msgids, key(&[("msg_id", s(msg_id))])).await? else { return Ok(Marker::Absent) };
    Ok(match get_s(&item, "room") {
        Some(room) if item.contains_key("seq") => Marker::Persisted { room: room.to_string(), seq: get_u64(&item, "seq") },
        _ if item.contains_key("dead") => Marker::DeadLettered,
        _ => Marker::Absent,
    })
}

async fn duplicate(store: &DynamoStore, room: &str, seq: u64) -> Result<Persisted, StoreError> {
    let message = store
        .message_at(room, seq)
        .await?
        .ok_or_else(|| StoreError::Internal(format!("msg_id marker points at {room}/{seq}, which is missing")))?;
    store.metrics.duplicates.inc();
    Ok(Persisted { message: Arc::new(message), duplicate: true, members: Arc::new(Vec::new()), unread: Vec::new() })
}

/// Where each kind of item sits in the transaction, to read its cancellation reason.
const ROOM_ITEM: usize = 0;
const MARKER_ITEM: usize = 2;
const SENDER_ITEM: usize = 3;

async fn persist_one(store: &DynamoStore, m: &NewMessage) -> Result<Persisted, StoreError> {
    let mut token_generation = 0u32;
    let mut after_dead_letter = false;
    let mut attempt = 0u32;
    let mut races = 0u32;
    loop {
        let meta = match store.room_meta(&m.room).await? {
            Some(meta) => meta,
            None if !m.create_members.is_empty() => match rooms::create_room(store, &m.room, &m.create_members, m.sent_at_ms).await {
                Ok(_) | Err(StoreError::RoomExists(_)) => continue,
                Err(e) => return Err(e),
            },
            None => return Err(StoreError::UnknownRoom(m.room.clone())),
        };
        if !meta.large && meta.members.binary_search(&m.sender).is_err() {
            return Err(StoreError::NotMember { user: m.sender.clone(), room: m.room.clone() });
        }
        let seq = meta.last_seq + 1;
        let now = sluice_core::now_ms();
        let recipients: Vec<&String> = if meta.large { Vec::new() } else { meta.members.iter().filter(|u| **u != m.sender).collect() };
        let items = transaction(store, m, &meta, seq, now, &recipients, after_dead_letter);
        let token = uuid::Uuid::new_v5(&store.token_ns, format!("{}/{token_generation}", m.msg_id).as_bytes()).to_string();
        match store.transact(items, Some(token)).await {
            Ok(()) => return committed(store, m, &meta, seq, recipients).await,
            Err(TxFailure::Cancelled(reasons)) => {
                let failed = |i: usize| reasons.get(i).is_some_and(|r| r == "ConditionalCheckFailed");
                if failed(MARKER_ITEM) {
                    match marker(store, &m.msg_id).await? {
                        Marker::Persisted { room, seq } => return duplicate(store, &room, seq).await,
                        Marker::DeadLettered => after_dead_letter = true,
                        Marker::Absent => after_dead_letter = false,
                    }
                    continue;
                }
                if meta.large && failed(SENDER_ITEM) {
                    return Err(StoreError::NotMember { user: m.sender.clone(), room: m.room.clone() });
                }
                if failed(ROOM_ITEM) {
                    // Another message (or a membership change) committed first: read again.
                    store.metrics.conflicts.inc();
                    races += 1;
                    if races > MAX_ROOM_RACES {
                        return Err(StoreError::Conflict(format!("room {} kept changing", m.room)));
                    }
                    if races > 2 {
                        let ceiling = Duration::from_millis(1 << races.min(6));
                        tokio::time::sleep(ceiling.mul_f64(rand::random::<f64>())).await;
                    }
                    continue;
                }
                if reasons.iter().any(|r| super::call::reason_is_retryable(r)) {
                    store.metrics.conflicts.inc();
                    store.pause(attempt, &format!("transaction cancelled: {reasons:?}")).await?;
                    attempt += 1;
                    continue;
                }
                return Err(StoreError::Internal(format!("transaction for {} cancelled: {reasons:?}", m.msg_id)));
            }
            Err(TxFailure::IdempotentMismatch) => match marker(store, &m.msg_id).await? {
                // Committed by an earlier attempt with the same token: already done.
                Marker::Persisted { room, seq } => return duplicate(store, &room, seq).await,
                // The token belongs to an attempt that never committed: take a fresh one.
                _ => token_generation += 1,
            },
            Err(TxFailure::Retryable(why)) => {
                store.pause(attempt, &why).await?;
                attempt += 1;
            }
            Err(TxFailure::Fatal(e)) => return Err(e),
        }
    }
}

fn transaction(
    store: &DynamoStore,
    m: &NewMessage,
    meta: &RoomMeta,
    seq: u64,
    now: i64,
    recipients: &[&String],
    after_dead_letter: bool,
) -> Vec<TransactWriteItem> {
    let t = &store.t;
    let room_key = || key(&[("room", s(&m.room))]);
    let mut items = Vec::with_capacity(5 + 2 * recipients.len());
    items.push(update(
        &t.rooms,
        room_key(),
        "SET #last_seq = :seq, #version = #version + :one",
        Some("#version = :v"),
        vec![(":seq", n(seq)), (":one", n(1)), (":v", n(meta.version))],
    ));
    let mut msg: Item = key(&[("room", s(&m.room)), ("seq", n(seq))]);
    msg.insert("msg_id".into(), s(&m.msg_id));
    msg.insert("sender".into(), s(&m.sender));
    msg.insert("body".into(), s(&m.body));
    msg.insert("kind".into(), s(m.kind.as_str()));
    msg.insert("sent_at".into(), n(m.sent_at_ms));
    msg.insert("persisted_at".into(), n(now));
    if let Some(c) = &m.campaign_id {
        msg.insert("campaign_id".into(), s(c));
    }
    items.push(put(&t.messages, msg, Some("attribute_not_exists(#seq)")));
    let (marker_expr, marker_cond) = if after_dead_letter {
        ("SET #room = :room, #seq = :seq, #expires_at = :exp REMOVE #dead", "attribute_not_exists(#seq) AND #dead = :one")
    } else {
        ("SET #room = :room, #seq = :seq, #expires_at = :exp", "attribute_not_exists(#seq) AND attribute_not_exists(#dead)")
    };
    items.push(update(
        &t.msgids,
        key(&[("msg_id", s(&m.msg_id))]),
        marker_expr,
        Some(marker_cond),
        vec![(":room", s(&m.room)), (":seq", n(seq)), (":exp", n(marker_expiry(now))), (":one", n(1))],
    ));
    let row_key = |u: &str| key(&[("user", s(u)), ("room", s(&m.room))]);
    if meta.large {
        // The sender's own message: unread of large rooms is computed around it. The
        // condition is the membership check.
        items.push(update(
            &t.inbox,
            row_key(&m.sender),
            "ADD #own_after :one, #version :one SET #updated_at = :now",
            Some("attribute_exists(#room)"),
            vec![(":one", n(1)), (":now", n(now))],
        ));
    } else {
        items.push(update(
            &t.inbox,
            row_key(&m.sender),
            "SET #last_seq = :seq, #updated_at = :now",
            None,
            vec![(":seq", n(seq)), (":now", n(now))],
        ));
        let preview: String = m.body.chars().take(PREVIEW_CHARS).collect();
        for u in recipients {
            items.push(update(
                &t.inbox,
                row_key(u),
                "ADD #unread :one, #version :one SET #last_seq = :seq, #preview = :p, #updated_at = :now",
                None,
                vec![(":one", n(1)), (":seq", n(seq)), (":p", s(&preview)), (":now", n(now))],
            ));
            items.push(update(
                &t.inbox,
                key(&[("user", s(u.as_str())), ("room", s(TOTAL_SK))]),
                "ADD #total_unread :one, #version :one",
                None,
                vec![(":one", n(1))],
            ));
        }
    }
    if let Some(c) = &m.campaign_id {
        let (expr, values) = if after_dead_letter {
            ("ADD #persisted :one, #dead_lettered :minus", vec![(":one", n(1)), (":minus", n(-1))])
        } else {
            ("ADD #persisted :one", vec![(":one", n(1))])
        };
        items.push(update(&t.campaigns, key(&[("campaign_id", s(c)), ("part", s(campaign_shard(&m.msg_id)))]), expr, None, values));
    }
    debug_assert!(items.len() <= 100, "a small room fits one transaction");
    debug_assert_ne!(campaign_shard(&m.msg_id), CAMPAIGN_META);
    items
}

/// The result of a committed message, with the recipients' counters read back (small
/// rooms; large rooms compute unread on read and push none).
async fn committed(
    store: &DynamoStore,
    m: &NewMessage,
    meta: &RoomMeta,
    seq: u64,
    recipients: Vec<&String>,
) -> Result<Persisted, StoreError> {
    let message = StoredMessage {
        room: m.room.clone(),
        seq,
        msg_id: m.msg_id.clone(),
        sender: m.sender.clone(),
        body: m.body.clone(),
        kind: m.kind,
        campaign_id: m.campaign_id.clone(),
        sent_at_ms: m.sent_at_ms,
    };
    let members = store.members_of(&m.room, meta).await?;
    let users: Vec<String> = recipients.into_iter().cloned().collect();
    let unread = if users.is_empty() {
        Vec::new()
    } else {
        let counters = reads::counters(store, &m.room, &users).await?;
        users
            .into_iter()
            .map(|user| {
                let (unread, total_unread, version) = counters.get(&user).copied().unwrap_or((0, 0, 0));
                UnreadUpdate { user, room: m.room.clone(), unread, total_unread, version }
            })
            .collect()
    };
    Ok(Persisted { message: Arc::new(message), duplicate: false, members, unread })
}
