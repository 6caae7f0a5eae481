//! Persisting messages: one TransactWriteItems per message (see the module docs of
//! [`super`] for the items it writes and how cancellations are read), then, for campaign
//! messages, one counting transaction per campaign and chunk.
//!
//! Campaign counters stay out of the message transaction: every message of a campaign would
//! otherwise touch one of a few shared counter items, and on DynamoDB a transaction touching an
//! item that another one holds is cancelled, so concurrent workers would mostly cancel each
//! other. Instead a batch's campaign messages are split into counting chunks (one campaign, at
//! most [`COUNT_CHUNK`] messages), each with a nonce that their markers carry as `by`. The
//! chunk's counting transaction adds the msg_ids it counts to its receipt (the msgids item
//! `~count:<nonce>`, on the condition that none is in it yet) and their number to a shard of
//! the campaign and of its tenant: three items however many messages, so a message's count
//! costs a share of them, not a write of its own marker. A redelivered message whose marker
//! names a receipt that lacks it was committed but not counted (the counting failed, or the
//! worker died in between): it is answered as a failure the first time, and its redelivery
//! counts it into that same receipt and announces it, since no delivery announced it before.
//! Markers from before receipts carry `counted` once counted, which still holds.

use super::Tries;
use super::call::TxFailure;
use super::call::only_contention;
use super::items::{CAMPAIGN_SHARDS, Item, RoomMeta, TOTAL_SK, get_s, get_u64, key, marker_expiry, n, put, s, ss, update};
use super::{DynamoStore, PERSIST_CONCURRENCY, SMALL_ROOM_MAX_MEMBERS, campaigns, reads, rooms};
use aws_sdk_dynamodb::types::TransactWriteItem;
use futures::StreamExt;
use sluice_core::error::StoreError;
use sluice_core::model::{NewMessage, Persisted, StoredMessage, UnreadUpdate};
use std::sync::Arc;

/// Characters of the body kept as the inbox preview.
const PREVIEW_CHARS: usize = 100;

/// Bodies longer than this are kept by reference in the message item when the message has a
/// campaign body reference: a transactional write costs 2 units per started KB of the item, so
/// a 2 KB body would cost 4 more units in each one-off. Shorter ones stay inline (no lookup
/// on read).
pub(crate) const BODY_INLINE_MAX: usize = 512;

/// Messages of one counting chunk: its receipt's condition names each (DynamoDB allows 4 KB
/// of condition expression).
const COUNT_CHUNK: usize = 64;

/// A campaign message committed but not yet counted for its campaign.
#[derive(Debug, Clone)]
pub(crate) struct Uncounted {
    pub(crate) campaign: String,
    pub(crate) msg_id: String,
    /// It was counted as dead-lettered before its redrive: the count moves to persisted.
    pub(crate) undead: bool,
    /// The nonce of its counting chunk (its marker's `by`): the receipt it is counted in.
    pub(crate) receipt: u64,
}

/// The key of the msgids item that lists the msg_ids counted for the chunk of `nonce`.
fn receipt_key(nonce: u64) -> Item {
    key(&[("msg_id", s(format!("~count:{nonce}")))])
}

fn fresh_nonce() -> u64 {
    rand::random::<u64>() >> 12
}

type Outcome = Result<(Persisted, Option<Uncounted>), StoreError>;

pub(crate) async fn persist_batch(store: &DynamoStore, batch: Vec<NewMessage>) -> Vec<Result<Persisted, StoreError>> {
    // Each campaign's messages in chunks with a nonce each (see the module docs); others a
    // nonce of their own.
    let mut open: std::collections::HashMap<&str, (u64, usize)> = std::collections::HashMap::new();
    let nonces: Vec<u64> = batch
        .iter()
        .map(|m| match &m.campaign_id {
            Some(c) => {
                let chunk = open.entry(c.as_str()).or_insert_with(|| (fresh_nonce(), 0));
                if chunk.1 == COUNT_CHUNK {
                    *chunk = (fresh_nonce(), 0);
                }
                chunk.1 += 1;
                chunk.0
            }
            None => fresh_nonce(),
        })
        .collect();
    let nonces = &nonces;
    // Rooms in parallel, each room's messages in the order given.
    let mut by_room: std::collections::HashMap<&str, Vec<usize>> = std::collections::HashMap::new();
    for (i, m) in batch.iter().enumerate() {
        by_room.entry(m.room.as_str()).or_default().push(i);
    }
    let groups: Vec<Vec<usize>> = by_room.into_values().collect();
    let batch = &batch;
    let done: Vec<Vec<(usize, Outcome)>> = futures::stream::iter(groups)
        .map(|idx| async move {
            let mut out = Vec::with_capacity(idx.len());
            let mut failed: Option<StoreError> = None;
            for i in idx {
                let r = match &failed {
                    // Keep the room's order: nothing after a message that must be retried.
                    Some(e) => Err(e.clone()),
                    None => persist_one(store, &batch[i], nonces[i]).await,
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
    let mut uncounted: std::collections::HashMap<(String, u64), Vec<(usize, Uncounted)>> = std::collections::HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for (i, r) in done.into_iter().flatten() {
        results[i] = Some(r.map(|(mut p, u)| {
            if let Some(u) = u {
                if seen.insert(u.msg_id.clone()) {
                    uncounted.entry((u.campaign.clone(), u.receipt)).or_default().push((i, u));
                } else {
                    // Given twice in one batch: counted and announced once.
                    p = Persisted { duplicate: true, members: Arc::new(Vec::new()), unread: Vec::new(), unread_deferred: Vec::new(), ..p };
                }
            }
            p
        }));
    }
    // One counting transaction per receipt (and chunk of it); a chunk that fails fails only
    // its own messages.
    let chunks = uncounted.into_values().flat_map(|entries| entries.chunks(COUNT_CHUNK).map(<[_]>::to_vec).collect::<Vec<_>>());
    let counted: Vec<(Vec<usize>, Result<(), StoreError>)> = futures::stream::iter(chunks)
        .map(|entries| async move {
            let (idx, entries): (Vec<usize>, Vec<Uncounted>) = entries.into_iter().unzip();
            (idx, count_persisted(store, entries).await)
        })
        .buffer_unordered(PERSIST_CONCURRENCY)
        .collect()
        .await;
    for (idx, r) in counted {
        if let Err(e) = r {
            // Committed but not counted: its redelivery counts it (and announces it).
            for i in idx {
                results[i] = Some(Err(e.clone()));
            }
        }
    }
    results.into_iter().map(|r| r.expect("every message has a result")).collect()
}

/// Counts committed campaign messages (at most [`COUNT_CHUNK`], all of one campaign and
/// receipt) once each, in one transaction: its receipt gains their msg_ids on the condition
/// that it holds none of them yet; those it holds already (counted by another delivery) drop
/// out, and it goes again.
pub(crate) async fn count_persisted(store: &DynamoStore, mut chunk: Vec<Uncounted>) -> Result<(), StoreError> {
    debug_assert!(chunk.len() <= COUNT_CHUNK);
    let mut tries = Tries::default();
    let tenant = match chunk.first() {
        Some(first) => campaigns::campaign_tenant(store, &first.campaign).await?,
        None => return Ok(()),
    };
    while let Some(first) = chunk.first() {
        let nonce = first.receipt;
        let receipt = receipt_key(nonce);
        let shard = format!("p{:02}", rand::random_range(0..CAMPAIGN_SHARDS));
        let undead = chunk.iter().filter(|u| u.undead).count() as i64;
        let ids: Vec<(String, aws_sdk_dynamodb::types::AttributeValue)> =
            chunk.iter().enumerate().map(|(i, u)| (format!(":i{i}"), s(&u.msg_id))).collect();
        let cond = format!(
            "attribute_not_exists(#ids) OR ({})",
            ids.iter().map(|(name, _)| format!("NOT contains(#ids, {name})")).collect::<Vec<_>>().join(" AND ")
        );
        let mut values = vec![(":set", ss(chunk.iter().map(|u| u.msg_id.clone()))), (":exp", n(marker_expiry(sluice_core::now_ms())))];
        values.extend(ids.iter().map(|(name, v)| (name.as_str(), v.clone())));
        let mut items = vec![update(
            &store.t.msgids,
            receipt.clone(),
            "ADD #ids :set SET #expires_at = if_not_exists(#expires_at, :exp)",
            Some(&cond),
            values,
        )];
        let (expr, values) = if undead > 0 {
            ("ADD #persisted :k, #dead_lettered :minus", vec![(":k", n(chunk.len())), (":minus", n(-undead))])
        } else {
            ("ADD #persisted :k", vec![(":k", n(chunk.len()))])
        };
        items.extend(campaigns::counter_updates(store, &first.campaign, tenant.as_deref(), &shard, expr, values));
        match store.transact(items, None).await {
            Ok(()) => break,
            // Another delivery counted some of them meanwhile: those drop out, the rest goes
            // again at once.
            Err(TxFailure::Cancelled(reasons)) if reasons.first().is_some_and(|r| r == "ConditionalCheckFailed") => {
                let counted = receipt_ids(store, receipt).await?;
                let before = chunk.len();
                chunk.retain(|u| !counted.contains(&u.msg_id));
                if chunk.len() == before {
                    return Err(StoreError::Internal(format!("counting receipt ~count:{nonce} refused messages it does not hold")));
                }
            }
            // After contention the next try picks another shard.
            Err(f) => store.again(&mut tries, f, "counting persisted campaign messages").await?,
        }
    }
    Ok(())
}

/// The msg_ids a receipt holds (none when it does not exist).
async fn receipt_ids(store: &DynamoStore, receipt: Item) -> Result<std::collections::HashSet<String>, StoreError> {
    let item = store.get(&store.t.msgids, receipt).await?;
    Ok(item.and_then(|i| i.get("ids").and_then(|v| v.as_ss().ok()).cloned()).unwrap_or_default().into_iter().collect())
}

/// What the marker of a msg_id says.
pub(crate) enum Marker {
    Persisted {
        room: String,
        seq: u64,
        /// The nonce of the call that committed it (absent on markers older than counting
        /// outside the message transaction, whose campaign counted them in it).
        by: Option<u64>,
        counted: bool,
        undead: bool,
    },
    DeadLettered,
    Absent,
}

impl Marker {
    /// The campaign message committed and still to be counted, if this marker is one: its
    /// receipt (or, on a marker from before receipts, its `counted`) does not count it yet.
    pub(crate) async fn uncounted(
        &self,
        store: &DynamoStore,
        campaign: Option<&String>,
        msg_id: &str,
    ) -> Result<Option<Uncounted>, StoreError> {
        let (Marker::Persisted { by: Some(by), counted: false, undead, .. }, Some(c)) = (self, campaign) else { return Ok(None) };
        if receipt_ids(store, receipt_key(*by)).await?.contains(msg_id) {
            return Ok(None);
        }
        Ok(Some(Uncounted { campaign: c.clone(), msg_id: msg_id.to_string(), undead: *undead, receipt: *by }))
    }
}

pub(crate) async fn marker(store: &DynamoStore, msg_id: &str) -> Result<Marker, StoreError> {
    let Some(item) = store.get(&store.t.msgids, key(&[("msg_id", s(msg_id))])).await? else { return Ok(Marker::Absent) };
    Ok(match get_s(&item, "room") {
        Some(room) if item.contains_key("seq") => Marker::Persisted {
            room: room.to_string(),
            seq: get_u64(&item, "seq"),
            by: item.contains_key("by").then(|| get_u64(&item, "by")),
            counted: item.contains_key("counted"),
            undead: item.contains_key("undead"),
        },
        _ if item.contains_key("dead") => Marker::DeadLettered,
        _ => Marker::Absent,
    })
}

/// The answer for a message its marker says is persisted: a duplicate, unless this call
/// committed it (its answer was lost) or no delivery finished it (a campaign message not yet
/// counted), in which case it is announced now as if just committed.
async fn already_persisted(store: &DynamoStore, m: &NewMessage, marker: Marker, nonce: u64) -> Outcome {
    let uncounted = marker.uncounted(store, m.campaign_id.as_ref(), &m.msg_id).await?;
    let Marker::Persisted { room, seq, by, .. } = marker else { unreachable!("only persisted markers are answered") };
    let message = store
        .message_at(&room, seq)
        .await?
        .ok_or_else(|| StoreError::Internal(format!("msg_id marker points at {room}/{seq}, which is missing")))?;
    if by == Some(nonce) || uncounted.is_some() {
        let meta = store.room_meta(&room).await?.ok_or_else(|| StoreError::UnknownRoom(room.clone()))?;
        let recipients: Vec<&String> =
            if meta.large { Vec::new() } else { meta.members.iter().filter(|u| **u != message.sender).collect() };
        let persisted = committed(store, message, &meta, recipients).await?;
        return Ok((persisted, uncounted));
    }
    store.metrics.duplicates.inc();
    let duplicate = Persisted {
        message: Arc::new(message),
        duplicate: true,
        members: Arc::new(Vec::new()),
        unread: Vec::new(),
        unread_deferred: Vec::new(),
    };
    Ok((duplicate, None))
}

/// Where each kind of item sits in a message's transaction, to read its cancellation reason:
/// the room item first, except in a direct room, which has none.
struct Positions {
    room: Option<usize>,
    message: usize,
    marker: usize,
    sender: usize,
}

impl Positions {
    fn of(meta: &RoomMeta) -> Self {
        let first = usize::from(!meta.direct);
        Positions { room: (!meta.direct).then_some(0), message: first, marker: first + 1, sender: first + 2 }
    }
}

/// Persists `m`; its marker carries `nonce` (its counting chunk's), so a commit whose answer
/// was lost is known as this call's, and a campaign message's count is found in its receipt.
async fn persist_one(store: &DynamoStore, m: &NewMessage, nonce: u64) -> Outcome {
    let mut token_generation = 0u32;
    let mut after_dead_letter = false;
    let mut attempt = 0u32;
    let mut races = 0u32;
    // A message that may create its direct room needs no look for a room item.
    let creates_direct = !m.create_members.is_empty() && sluice_core::ids::dm_pair(&m.room).is_some();
    loop {
        let meta = if creates_direct { store.direct_meta(&m.room, false).await? } else { store.room_meta(&m.room).await? };
        let (meta, fresh) = match meta {
            Some(meta) => (meta, false),
            // A small room to create (a one-off's direct room): created by this message's own
            // transaction, which fails whole if the room appeared meanwhile.
            None if let Some(meta) = fresh_room(m) => (meta, true),
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
        let items = transaction(store, m, (&meta, fresh), seq, now, &recipients, (after_dead_letter, nonce));
        let at = Positions::of(&meta);
        let token = uuid::Uuid::new_v5(&store.token_ns, format!("{}/{token_generation}", m.msg_id).as_bytes()).to_string();
        match store.transact(items, Some(token)).await {
            Ok(()) => {
                let uncounted = m.campaign_id.as_ref().map(|c| Uncounted {
                    campaign: c.clone(),
                    msg_id: m.msg_id.clone(),
                    undead: after_dead_letter,
                    receipt: nonce,
                });
                return Ok((committed(store, stored(m, seq), &meta, recipients).await?, uncounted));
            }
            Err(TxFailure::Cancelled(reasons)) => {
                let failed = |i: usize| reasons.get(i).is_some_and(|r| r == "ConditionalCheckFailed");
                if failed(at.marker) {
                    match marker(store, &m.msg_id).await? {
                        p @ Marker::Persisted { .. } => return already_persisted(store, m, p, nonce).await,
                        Marker::DeadLettered => after_dead_letter = true,
                        Marker::Absent => after_dead_letter = false,
                    }
                    continue;
                }
                if meta.large && failed(at.sender) {
                    return Err(StoreError::NotMember { user: m.sender.clone(), room: m.room.clone() });
                }
                if at.room.is_some_and(failed) || (meta.direct && failed(at.message)) || only_contention(&reasons) {
                    // Another message (or a membership change) committed first (the room's
                    // version moved, or in a direct room the seq is taken), or another
                    // transaction holds one of our items (the room's, a recipient's total):
                    // contention of a busy room or user, not store trouble. Read again.
                    races += 1;
                    store.contended(races, &format!("room {}", m.room)).await?;
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
                // Committed by an earlier attempt with the same token (perhaps this call's,
                // whose answer was lost).
                p @ Marker::Persisted { .. } => return already_persisted(store, m, p, nonce).await,
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

/// The room `m` may create in its own transaction: a small room of its `create_members`
/// that holds its sender (other rooms are created first, by [`rooms::create_room`]).
fn fresh_room(m: &NewMessage) -> Option<RoomMeta> {
    let members = rooms::sorted(&m.create_members);
    let fits = !members.is_empty() && members.len() <= SMALL_ROOM_MAX_MEMBERS && members.binary_search(&m.sender).is_ok();
    fits.then_some(RoomMeta {
        last_seq: 0,
        version: 0,
        members_version: 0,
        created_at_ms: m.sent_at_ms,
        large: false,
        members,
        member_count: None,
        direct: sluice_core::ids::dm_pair(&m.room).is_some(),
    })
}

/// The items of a message's transaction. A `fresh` room is created by it: the room item and
/// every member's row are put (the room's on the condition that it does not exist yet)
/// instead of updated, so a one-off's direct room costs no transaction of its own and its
/// rows are written once, not twice.
fn transaction(
    store: &DynamoStore,
    m: &NewMessage,
    (meta, fresh): (&RoomMeta, bool),
    seq: u64,
    now: i64,
    recipients: &[&String],
    (after_dead_letter, nonce): (bool, u64),
) -> Vec<TransactWriteItem> {
    let t = &store.t;
    let room_key = || key(&[("room", s(&m.room))]);
    let mut items = Vec::with_capacity(5 + 2 * recipients.len());
    if meta.direct {
        // No room item: the message item's condition takes the seq (see the module docs of
        // [`super`]).
    } else if fresh {
        let mut room = rooms::new_room(&m.room, meta.created_at_ms);
        room.insert("last_seq".into(), n(seq));
        room.insert("version".into(), n(1));
        room.insert("members".into(), ss(meta.members.iter().cloned()));
        items.push(put(&t.rooms, room, Some("attribute_not_exists(#room)")));
    } else {
        items.push(update(
            &t.rooms,
            room_key(),
            "SET #last_seq = :seq, #version = #version + :one",
            Some("#version = :v"),
            vec![(":seq", n(seq)), (":one", n(1)), (":v", n(meta.version))],
        ));
    }
    let mut msg: Item = key(&[("room", s(&m.room)), ("seq", n(seq))]);
    msg.insert("msg_id".into(), s(&m.msg_id));
    msg.insert("sender".into(), s(&m.sender));
    match (&m.body_ref, &m.campaign_id) {
        (Some(r), Some(c)) if m.body.len() > BODY_INLINE_MAX => {
            msg.insert("body_ref".into(), s(r));
            store.bodies.insert(c, r, m.body.as_str().into());
        }
        _ => {
            msg.insert("body".into(), s(&m.body));
        }
    }
    msg.insert("kind".into(), s(m.kind.as_str()));
    msg.insert("sent_at".into(), n(m.sent_at_ms));
    msg.insert("persisted_at".into(), n(now));
    if let Some(c) = &m.campaign_id {
        msg.insert("campaign_id".into(), s(c));
    }
    items.push(put(&t.messages, msg, Some("attribute_not_exists(#seq)")));
    let (marker_expr, marker_cond) = if after_dead_letter {
        (
            "SET #room = :room, #seq = :seq, #by = :by, #undead = :one, #expires_at = :exp REMOVE #dead",
            "attribute_not_exists(#seq) AND #dead = :one",
        )
    } else {
        ("SET #room = :room, #seq = :seq, #by = :by, #expires_at = :exp", "attribute_not_exists(#seq) AND attribute_not_exists(#dead)")
    };
    items.push(update(
        &t.msgids,
        key(&[("msg_id", s(&m.msg_id))]),
        marker_expr,
        Some(marker_cond),
        vec![(":room", s(&m.room)), (":seq", n(seq)), (":by", n(nonce)), (":exp", n(marker_expiry(now))), (":one", n(1))],
    ));
    let row_key = |u: &str| key(&[("user", s(u)), ("room", s(&m.room))]);
    // The one-off that creates a direct room writes no row for its sender: a marketing
    // sender would otherwise hold a row (2 write units) per recipient, at unread 0. The room
    // joins the sender's inbox when the recipient answers, or the sender writes or reads there.
    let one_off = m.kind == sluice_core::model::MessageKind::OneOff;
    let add_to_total = |u: &str| {
        update(&t.inbox, key(&[("user", s(u)), ("room", s(TOTAL_SK))]), "ADD #total_unread :one, #version :one", None, vec![(":one", n(1))])
    };
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
    } else if fresh {
        let preview: String = m.body.chars().take(PREVIEW_CHARS).collect();
        let mut row = |u: &str, unread: u64| {
            let mut item = rooms::new_row(u, &m.room, 0, false, now);
            item.insert("last_seq".into(), n(seq));
            item.insert("unread".into(), n(unread));
            item.insert("version".into(), n(unread));
            if unread > 0 {
                item.insert("preview".into(), s(&preview));
            }
            items.push(put(&t.inbox, item, None));
        };
        if !one_off {
            row(&m.sender, 0);
        }
        for u in recipients {
            row(u, 1);
        }
        items.extend(recipients.iter().map(|u| add_to_total(u)));
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
            items.push(add_to_total(u));
        }
    }
    debug_assert!(items.len() <= 100, "a small room fits one transaction");
    items
}

fn stored(m: &NewMessage, seq: u64) -> StoredMessage {
    StoredMessage {
        room: m.room.clone(),
        seq,
        msg_id: m.msg_id.clone(),
        sender: m.sender.clone(),
        body: m.body.clone(),
        kind: m.kind,
        campaign_id: m.campaign_id.clone(),
        sent_at_ms: m.sent_at_ms,
    }
}

/// The result of a committed message. The recipients' counters (small rooms; large rooms
/// compute unread on read and push none) are not read back here: a read is a request, and
/// most recipients of a campaign are offline, so the publisher reads them for those online
/// ([`sluice_core::store::MessageStore::counters`]).
async fn committed(
    store: &DynamoStore,
    message: StoredMessage,
    meta: &RoomMeta,
    recipients: Vec<&String>,
) -> Result<Persisted, StoreError> {
    let members = store.members_of(&message.room, meta).await?;
    let unread_deferred = recipients.into_iter().cloned().collect();
    Ok(Persisted { message: Arc::new(message), duplicate: false, members, unread: Vec::new(), unread_deferred })
}

/// The counters of `users` in `room` now.
pub(crate) async fn counters(store: &DynamoStore, room: &str, users: &[String]) -> Result<Vec<UnreadUpdate>, StoreError> {
    let counters = reads::counters(store, room, users).await?;
    Ok(users
        .iter()
        .map(|user| {
            let (unread, total_unread, version) = counters.get(user).copied().unwrap_or((0, 0, 0));
            UnreadUpdate { user: user.clone(), room: room.to_string(), unread, total_unread, version }
        })
        .collect())
}
