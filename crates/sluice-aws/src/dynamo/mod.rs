//! The message store on DynamoDB.
//!
//! Every message commits in one TransactWriteItems: the message item with the room's next
//! seq, the room item (seq and version, under an optimistic lock), the msg_id marker (the
//! idempotency condition), and each recipient's inbox row and total. A message whose small
//! room does not exist yet and names its members creates it in the same transaction: the
//! room item and the rows are put, the room on the condition that it still does not exist.
//!
//! Direct rooms (`dm:a:b`, most of them made by one-offs) have no room item: their members
//! are the two users the id names (fixed), their last seq is read from the newest message
//! item, and the message item's own condition (`attribute_not_exists(seq)`) is the lock on
//! the seq: two writers that read the same last seq put the same key, and one is cancelled
//! and reads again. So a one-off writes four items (message, marker, the recipient's row and
//! total), not five. A direct room CreateRoom made before any message keeps the item it
//! wrote; once a message exists, reads ignore it. Campaign counters are counted after, a batch at a time, exactly once
//! per marker (see [`persist`]).
//! The ClientRequestToken is derived from the msg_id, so a replay within 10 minutes is
//! answered by DynamoDB itself; after that the marker's condition fails and the original is
//! returned. Cancellations are read reason by reason: a moved room version is re-read at once,
//! TransactionConflict and throttling back off with full jitter, a failed marker condition
//! means the message is already persisted.
//!
//! Large rooms. One transaction holds 100 items and a message to a room of m members writes
//! 2m + 2 of them, so counters are kept per recipient only while a room has at most
//! [`SMALL_ROOM_MAX_MEMBERS`] members. A room that grows past that is converted, in one
//! transaction, to computed unread: each member's row keeps read_seq and `own_after` (their
//! own messages after read_seq), and unread = room last_seq - read_seq - own_after. A message
//! to a large room writes 4 items whatever its size; the user's total row names their large
//! rooms, and totals add the computed unread of those rooms to the stored sum of the small
//! ones. Both ways every committed state satisfies invariant 3. Large rooms send no live
//! `unread` pushes (clients count the `message` frames; the inbox is exact).
//!
//! Layout of the items: [`items`]. The table definitions: `migrations/dynamodb/`.

mod call;
mod campaigns;
mod items;
mod members;
mod persist;
mod reads;
mod rooms;

use crate::Names;
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::{KeysAndAttributes, ReturnConsumedCapacity, TransactWriteItem};
use call::{Capacity, TxFailure, account, classify_tx, store_error};
use items::{Item, RoomMeta, key, s};
use sluice_core::backoff::Backoff;
use sluice_core::control::{Control, Controls, Scope};
use sluice_core::error::StoreError;
use sluice_core::metrics::Metrics;
use sluice_core::model::{Campaign, HistoryQuery, Inbox, InboxPage, NewMessage, Persisted, ReadOutcome, Room, StoredMessage, UnreadUpdate};
use sluice_core::store::{Membership, MessageStore};
use std::sync::Arc;

/// Rooms up to this many members keep an unread counter per recipient; larger rooms compute
/// unread from read positions (see the module docs).
pub const SMALL_ROOM_MAX_MEMBERS: usize = 40;

/// How long one attempt of a DynamoDB call may take (a transaction of 100 items takes well
/// under a second), and a call with the SDK's retries.
pub const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Tries of a transaction that keeps meeting contention before it gives up.
const MAX_RACES: u32 = 200;

/// The tries one transaction has used (see [`DynamoStore::again`]).
#[derive(Debug, Default)]
pub(crate) struct Tries {
    /// Backed-off retries (throttling, unavailable).
    attempt: u32,
    /// Immediate retries after contention.
    races: u32,
}

/// Rooms persisted at once by one `persist` call (messages of one room go in order).
const PERSIST_CONCURRENCY: usize = 32;

/// The table names, from the resource prefix.
#[derive(Debug, Clone)]
pub struct Tables {
    pub messages: String,
    pub rooms: String,
    pub inbox: String,
    pub msgids: String,
    pub campaigns: String,
}

impl Tables {
    pub fn new(names: &Names) -> Self {
        Tables {
            messages: names.table("messages"),
            rooms: names.table("rooms"),
            inbox: names.table("inbox"),
            msgids: names.table("msgids"),
            campaigns: names.table("campaigns"),
        }
    }
}

/// The DynamoDB message store.
pub struct DynamoStore {
    client: Client,
    t: Tables,
    /// Namespaces ClientRequestTokens, so two installations in one account never share one.
    token_ns: uuid::Uuid,
    metrics: Arc<Metrics>,
    backoff: Backoff,
    /// Members of large rooms, read from the by-room index (bounded, and trusted briefly).
    members_cache: members::MembersCache,
    /// The tenant of each campaign counted lately (bounded; a campaign's tenant never changes).
    campaign_tenants: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Campaign bodies that message items keep by reference, as written or read lately.
    bodies: sluice_core::bodies::BodyCache,
}

impl DynamoStore {
    pub fn new(client: Client, names: &Names, metrics: Arc<Metrics>) -> Self {
        DynamoStore {
            client,
            t: Tables::new(names),
            token_ns: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("sluice-dynamodb:{}", names.prefix).as_bytes()),
            metrics,
            backoff: Backoff { base: std::time::Duration::from_millis(10), cap: std::time::Duration::from_secs(1), max_attempts: 10 },
            members_cache: members::MembersCache::default(),
            campaign_tenants: Default::default(),
            bodies: Default::default(),
        }
    }

    /// The store on a client built from the shared SDK configuration, with DynamoDB's own
    /// timeouts: [`ATTEMPT_TIMEOUT`] per attempt and [`CALL_TIMEOUT`] in all.
    pub fn from_conf(conf: &aws_config::SdkConfig, names: &Names, metrics: Arc<Metrics>) -> Self {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .operation_timeout(CALL_TIMEOUT)
            .build();
        let client = Client::from_conf(aws_sdk_dynamodb::config::Builder::from(conf).timeout_config(timeouts).build());
        Self::new(client, names, metrics)
    }

    /// The table names in use.
    pub fn tables(&self) -> &Tables {
        &self.t
    }

    /// Derives ClientRequestTokens with `salt` as well, so DynamoDB has seen none of them:
    /// what a retry looks like once the 10-minute token window has passed (for tests).
    pub fn with_token_salt(mut self, salt: &str) -> Self {
        self.token_ns = uuid::Uuid::new_v5(&self.token_ns, salt.as_bytes());
        self
    }

    /// Sets the retry schedule for conflicts and throttling.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Waits before trying a transaction again after `failure`, or gives the error to give up
    /// with: contention (only other transactions holding its items) goes again at once with a
    /// little jitter, throttling and other retryable failures with backoff, anything else is
    /// final. Callers handle the cancellations that mean something to them (failed
    /// conditions) first.
    async fn again(&self, tries: &mut Tries, failure: TxFailure, what: &str) -> Result<(), StoreError> {
        match failure {
            TxFailure::Cancelled(r) if call::only_contention(&r) => {
                tries.races += 1;
                self.contended(tries.races, what).await
            }
            TxFailure::Cancelled(r) if r.iter().any(|c| call::reason_is_retryable(c)) => {
                tries.attempt += 1;
                self.pause(tries.attempt - 1, &format!("{what}: {r:?}")).await
            }
            TxFailure::Retryable(why) => {
                tries.attempt += 1;
                self.pause(tries.attempt - 1, &format!("{what}: {why}")).await
            }
            f => Err(rooms::tx_error(f)),
        }
    }

    /// Waits before the `races`-th retry of a transaction that met contention (other
    /// transactions holding its items): at once twice, then a full-jitter wait of up to 64 ms;
    /// gives up after [`MAX_RACES`].
    async fn contended(&self, races: u32, what: &str) -> Result<(), StoreError> {
        self.metrics.conflicts.inc();
        if races > MAX_RACES {
            return Err(StoreError::Conflict(format!("{what}: still contended after {MAX_RACES} tries")));
        }
        if races > 2 {
            let ceiling = std::time::Duration::from_millis(1 << races.min(6));
            tokio::time::sleep(ceiling.mul_f64(rand::random::<f64>())).await;
        }
        Ok(())
    }

    /// Sleeps before retry `attempt`, or gives up with a retryable conflict error.
    async fn pause(&self, attempt: u32, why: &str) -> Result<(), StoreError> {
        self.metrics.retries.inc();
        self.metrics.store_backoffs.inc();
        match self.backoff.delay(attempt) {
            Some(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            None => Err(StoreError::Conflict(format!("gave up after {attempt} attempts: {why}"))),
        }
    }

    async fn get(&self, table: &str, k: Item) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(k))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| store_error("GetItem", e))?;
        account(&self.metrics, "GetItem", Capacity::Read, out.consumed_capacity());
        Ok(out.item)
    }

    /// Every item a Query matches (up to `limit`), page by page, each page counted.
    async fn query_all(&self, q: QueryFluentBuilder, limit: Option<usize>) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let want = limit.map(|l| (l - out.len()).min(1000) as i32);
            let page = q
                .clone()
                .set_limit(want)
                .set_exclusive_start_key(start)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| store_error("Query", e))?;
            account(&self.metrics, "Query", Capacity::Read, page.consumed_capacity());
            out.extend(page.items.unwrap_or_default());
            start = page.last_evaluated_key;
            if start.is_none() || limit.is_some_and(|l| out.len() >= l) {
                return Ok(out);
            }
        }
    }

    async fn room_meta(&self, room: &str) -> Result<Option<RoomMeta>, StoreError> {
        if sluice_core::ids::dm_pair(room).is_some() {
            return self.direct_meta(room, true).await;
        }
        Ok(self.get(&self.t.rooms, key(&[("room", s(room))])).await?.map(|i| RoomMeta::from_item(&i)))
    }

    /// A direct room's meta: its newest message's seq and the two members its id names. A
    /// direct room without messages exists when CreateRoom made its item (looked up only
    /// `with_item`: a message that creates the room on first use needs no such read).
    async fn direct_meta(&self, room: &str, with_item: bool) -> Result<Option<RoomMeta>, StoreError> {
        let Some(members) = sluice_core::ids::dm_members(room) else { return Ok(None) };
        let newest = reads::query_messages(self, room, 1, i64::MAX as u64, false, Some(1), Some("#seq")).await?;
        let mut members = members.to_vec();
        members.dedup();
        let meta = |last_seq| RoomMeta {
            last_seq,
            version: 0,
            members_version: 0,
            created_at_ms: 0,
            large: false,
            members,
            member_count: None,
            direct: true,
        };
        if let Some(item) = newest.first() {
            return Ok(Some(meta(items::get_u64(item, "seq"))));
        }
        if !with_item {
            return Ok(None);
        }
        let item = self.get(&self.t.rooms, key(&[("room", s(room))])).await?;
        Ok(item.map(|i| RoomMeta { created_at_ms: items::get_i64(&i, "created_at"), ..meta(0) }))
    }

    async fn row(&self, user: &str, room: &str) -> Result<Option<Item>, StoreError> {
        self.get(&self.t.inbox, key(&[("user", s(user)), ("room", s(room))])).await
    }

    /// Strongly consistent BatchGetItem of any number of keys of one table (unprocessed keys
    /// are retried with backoff).
    async fn batch_get(&self, table: &str, keys: Vec<Item>) -> Result<Vec<Item>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(100) {
            let mut pending = chunk.to_vec();
            let mut attempt = 0;
            while !pending.is_empty() {
                let ka = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut pending)))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| StoreError::Internal(e.to_string()))?;
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(table, ka)
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
                    .await
                    .map_err(|e| store_error("BatchGetItem", e))?;
                account(&self.metrics, "BatchGetItem", Capacity::Read, out.consumed_capacity());
                if let Some(mut r) = out.responses {
                    found.extend(r.remove(table).unwrap_or_default());
                }
                if let Some(mut u) = out.unprocessed_keys {
                    pending = u.remove(table).map(|k| k.keys).unwrap_or_default();
                }
                if !pending.is_empty() {
                    self.pause(attempt, "unprocessed BatchGetItem keys").await?;
                    attempt += 1;
                }
            }
        }
        Ok(found)
    }

    /// One TransactWriteItems call, counted in the metrics.
    async fn transact(&self, items: Vec<TransactWriteItem>, token: Option<String>) -> Result<(), TxFailure> {
        let (count, units) = (items.len() as u64, items::transaction_write_units(&items));
        let out = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .set_client_request_token(token)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match out {
            Ok(out) => {
                account(&self.metrics, "TransactWriteItems", Capacity::Write, out.consumed_capacity());
                self.metrics.dynamodb_items_written.with_label_values(&["transactional"]).inc_by(count);
                self.metrics.dynamodb_write_units.inc_by(units);
                Ok(())
            }
            Err(e) => {
                // A cancelled transaction consumes no write capacity, but it is a request.
                account(&self.metrics, "TransactWriteItems", Capacity::Write, []);
                let f = classify_tx(e);
                match &f {
                    TxFailure::Cancelled(reasons) => {
                        for r in reasons.iter().filter(|r| call::reason_is_retryable(r)) {
                            self.metrics.aws_retryable.with_label_values(&["dynamodb", r]).inc();
                        }
                    }
                    TxFailure::Retryable(why) => {
                        self.metrics.aws_retryable.with_label_values(&["dynamodb", "throttled_or_unavailable"]).inc();
                        tracing::debug!(%why, "retryable TransactWriteItems failure");
                    }
                    _ => {}
                }
                Err(f)
            }
        }
    }

    /// A campaign's stored body, from the cache or read once.
    async fn campaign_body_cached(&self, campaign_id: &str, body_ref: &str) -> Result<Option<Arc<str>>, StoreError> {
        self.bodies.get_or_load(campaign_id, body_ref, campaigns::body(self, campaign_id, body_ref)).await
    }

    /// Reads a persisted message by key.
    async fn message_at(&self, room: &str, seq: u64) -> Result<Option<StoredMessage>, StoreError> {
        let item = self.get(&self.t.messages, key(&[("room", s(room)), ("seq", items::n(seq))])).await?;
        match item {
            Some(i) => Ok(reads::decode_messages(self, std::slice::from_ref(&i)).await?.pop()),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl MessageStore for DynamoStore {
    async fn create_room(&self, room: &str, members: &[String], now_ms: i64) -> Result<Room, StoreError> {
        rooms::create_room(self, room, members, now_ms).await
    }

    async fn add_members(&self, room: &str, members: &[String], now_ms: i64) -> Result<Room, StoreError> {
        rooms::add_members(self, room, members, now_ms).await
    }

    async fn room(&self, room: &str) -> Result<Option<Room>, StoreError> {
        let Some(meta) = self.room_meta(room).await? else { return Ok(None) };
        let members = self.members_of(room, &meta).await?;
        Ok(Some(Room { room: room.to_string(), members: members.to_vec(), last_seq: meta.last_seq, created_at_ms: meta.created_at_ms }))
    }

    async fn membership(&self, room: &str, user: &str) -> Result<Membership, StoreError> {
        let Some(meta) = self.room_meta(room).await? else { return Ok(Membership::UnknownRoom) };
        let member = if meta.large { self.row(user, room).await?.is_some() } else { meta.members.binary_search(&user.to_string()).is_ok() };
        Ok(if member { Membership::Member } else { Membership::NotMember })
    }

    async fn persist(&self, batch: Vec<NewMessage>) -> Result<Vec<Result<Persisted, StoreError>>, StoreError> {
        Ok(persist::persist_batch(self, batch).await)
    }

    async fn counters(&self, room: &str, users: &[String]) -> Result<Vec<UnreadUpdate>, StoreError> {
        persist::counters(self, room, users).await
    }

    async fn mark_read(&self, user: &str, room: &str, seq: u64, now_ms: i64) -> Result<ReadOutcome, StoreError> {
        reads::mark_read(self, user, room, seq, now_ms).await
    }

    async fn history(&self, room: &str, query: HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
        reads::history(self, room, query).await
    }

    async fn inbox_page(&self, user: &str, page: InboxPage) -> Result<Inbox, StoreError> {
        reads::inbox(self, user, page).await
    }

    async fn record_enqueued(
        &self,
        campaign_id: &str,
        sender: &str,
        requested: u64,
        recipients: &[String],
    ) -> Result<Campaign, StoreError> {
        campaigns::record_enqueued(self, campaign_id, sender, requested, recipients).await
    }

    async fn record_dead_letter(&self, campaign_id: &str, _room: &str, msg_id: &str) -> Result<(), StoreError> {
        campaigns::record_dead_letter(self, campaign_id, msg_id).await
    }

    async fn put_campaign_body(&self, campaign_id: &str, body_ref: &str, body: &str) -> Result<(), StoreError> {
        campaigns::put_body(self, campaign_id, body_ref, body).await
    }

    async fn campaign_body(&self, campaign_id: &str, body_ref: &str) -> Result<Option<String>, StoreError> {
        campaigns::body(self, campaign_id, body_ref).await
    }

    async fn campaign(&self, campaign_id: &str) -> Result<Option<Campaign>, StoreError> {
        campaigns::campaign(self, campaign_id).await
    }

    async fn tenant_backlog(&self, tenant: &str) -> Result<Option<u64>, StoreError> {
        campaigns::tenant_backlog(self, tenant).await.map(Some)
    }

    async fn set_control(&self, scope: &Scope, control: Control) -> Result<(), StoreError> {
        campaigns::set_control(self, scope, control).await
    }

    async fn controls(&self) -> Result<Controls, StoreError> {
        campaigns::controls(self).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.get(&self.t.rooms, key(&[("room", s("#ping"))])).await.map(|_| ())
    }
}
