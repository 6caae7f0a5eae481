//! The chat operations behind both transports (WebSocket and gRPC): validation, limits,
//! persistence, fan-out. Authentication happens before; authorization (membership) here
//! or, for sends, inside the store's transaction.

use crate::error::AppError;
use sluice_core::error::ErrorCode;
use sluice_core::frames::MAX_PRESENCE_MEMBERS;
use sluice_core::hub::{ConnId, LiveEvent};
use sluice_core::ids::{self, CampaignId, RoomId, UserId};
use sluice_core::model::{
    Campaign, DEFAULT_HISTORY_LIMIT, DEFAULT_INBOX_LIMIT, HistoryQuery, Inbox, InboxPage, MAX_HISTORY_LIMIT, MAX_INBOX_LIMIT, NewMessage,
    Persisted, ReadOutcome, Room, StoredMessage,
};
use sluice_core::now_ms;
use sluice_core::queue::Enqueue;
use sluice_core::store::Membership;
use sluice_proto::convert::encode_queued_traced;
use std::collections::HashSet;
use std::sync::Arc;
use tracing::Instrument;

use crate::App;

/// Most messages handed to the queue in one `send` call by EnqueueBulk.
pub const ENQUEUE_CHUNK: usize = 10_000;
/// Most bytes of queued messages one EnqueueBulk call builds before handing them over.
pub const ENQUEUE_CHUNK_BYTES: usize = 8 << 20;
/// Recipients recorded in their campaign per store call by EnqueueBulk, ahead of queueing
/// them. Fixed, so that a retried call records the same slices.
pub const RECORD_SLICE: usize = 1_000;
/// From this many recipients on, a call stores its body once and its queued messages refer
/// to it; smaller calls carry it in each message (no extra store write for one or two).
pub const BODY_BY_REF_MIN_RECIPIENTS: usize = 3;

/// One EnqueueBulk call's accepted recipients on their way to the queue.
struct Call<'a> {
    campaign_id: &'a CampaignId,
    tenant: &'a UserId,
    sender: &'a UserId,
    /// [`ids::campaign_owner`] of tenant and sender.
    owner: &'a str,
    body: &'a str,
    /// Distinct, in request order.
    recipients: &'a [UserId],
    /// For each recipient, the request entries up to and including it.
    uptos: &'a [usize],
    /// Request entries the call covers (all, or those before the first refused recipient).
    entries: usize,
}

/// One EnqueueBulk call: a one-off message from `sender` to each recipient.
#[derive(Debug, Clone)]
pub struct BulkSend<'a> {
    /// `None`: a fresh id is made.
    pub campaign_id: Option<CampaignId>,
    /// Who the campaign is drained for (a user id: by default the sender); `None`: the sender.
    pub tenant: Option<UserId>,
    pub sender: UserId,
    /// Checked here, one by one (an error names the first bad entry's index).
    pub recipients: &'a [String],
    pub body: &'a str,
}

impl App {
    /// Persists an interactive message directly (no queue) and fans it out. Retrying with
    /// the same `client_msg_id` returns the original message.
    pub async fn send(
        &self,
        sender: &UserId,
        room: &RoomId,
        client_msg_id: &str,
        body: &str,
        origin: Option<ConnId>,
    ) -> Result<Persisted, AppError> {
        self.check_body(body)?;
        if room.excludes_from_dm(sender) {
            return Err(not_member(room));
        }
        let msg = NewMessage::chat(sender, room, client_msg_id, body, now_ms());
        let ticket = self.backends.fanout.ticket(room);
        let started = std::time::Instant::now();
        let result = self.backends.store.persist(vec![msg]).await;
        let took = started.elapsed();
        self.backends.metrics.persist_seconds.observe(took.as_secs_f64());
        // What the drain governor of a worker in this process watches.
        self.backends.metrics.interactive_persist.record(took);
        let p = result?.pop().ok_or_else(|| AppError::new(ErrorCode::Internal, "store returned nothing"))??;
        if p.duplicate {
            self.backends.metrics.duplicates.inc();
        } else {
            self.backends.metrics.persisted.with_label_values(&["interactive"]).inc();
        }
        if !ticket.publish(&p, origin).await {
            self.backends.metrics.fanout_failures.inc();
        }
        Ok(p)
    }

    /// Moves `user`'s read position and tells their connections the new counters.
    pub async fn read(&self, user: &UserId, room: &RoomId, seq: u64) -> Result<ReadOutcome, AppError> {
        if room.excludes_from_dm(user) {
            return Err(not_member(room));
        }
        let r = self.backends.store.mark_read(user, room, seq, now_ms()).await?;
        let members = if r.changed { self.backends.store.room(room).await?.map(|r| r.members).unwrap_or_default() } else { Vec::new() };
        self.backends.fanout.after_read(user, room, &r, &members).await;
        Ok(r)
    }

    /// Checks that `user` may access `room`.
    /// A direct room's members are the two users its id names, so anyone else is refused
    /// as a non-member whether or not the room exists yet (no probing who talks to whom).
    pub async fn authorize(&self, user: &UserId, room: &RoomId) -> Result<(), AppError> {
        if room.excludes_from_dm(user) {
            return Err(not_member(room));
        }
        match self.backends.store.membership(room, user).await? {
            Membership::Member => Ok(()),
            Membership::NotMember => Err(not_member(room)),
            Membership::UnknownRoom => Err(unknown_room(room)),
        }
    }

    /// A page of history; `user` (when given) must be a member.
    pub async fn history(
        &self,
        user: Option<&UserId>,
        room: &RoomId,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u64>,
    ) -> Result<Vec<StoredMessage>, AppError> {
        match user {
            Some(u) => self.authorize(u, room).await?,
            None => {
                if self.backends.store.room(room).await?.is_none() {
                    return Err(unknown_room(room));
                }
            }
        }
        let limit = match limit {
            None | Some(0) => DEFAULT_HISTORY_LIMIT,
            Some(n) => (n as usize).min(MAX_HISTORY_LIMIT),
        };
        Ok(self.backends.store.history(room, HistoryQuery { before, after, limit }).await?)
    }

    /// A page of `user`'s inbox: rooms after `after`, at most `limit` (default
    /// [`DEFAULT_INBOX_LIMIT`], at most [`MAX_INBOX_LIMIT`]), with the total over all rooms.
    pub async fn inbox(&self, user: &UserId, after: Option<String>, limit: Option<u64>) -> Result<Inbox, AppError> {
        if let Some(a) = &after {
            ids::validate_room(a).map_err(|e| AppError::bad(format!("after: {e}")))?;
        }
        let limit = match limit {
            None | Some(0) => DEFAULT_INBOX_LIMIT,
            Some(n) => (n as usize).min(MAX_INBOX_LIMIT),
        };
        Ok(self.backends.store.inbox_page(user, InboxPage { after, limit }).await?)
    }

    /// Tells the other online members of `room` that `user` is typing.
    pub async fn typing(&self, user: &UserId, room: &RoomId) -> Result<(), AppError> {
        let others = self.others(user, room).await?;
        self.backends.hub.publish(&others, LiveEvent::Typing { room: room.to_string(), user: user.to_string() }).await?;
        Ok(())
    }

    /// The other members of `room` online now, for a member of it.
    pub async fn presence(&self, user: &UserId, room: &RoomId) -> Result<Vec<String>, AppError> {
        let mut others = self.others(user, room).await?;
        others.truncate(MAX_PRESENCE_MEMBERS);
        let online = self.backends.hub.online(&others).await?;
        Ok(others.into_iter().zip(online).filter_map(|(m, on)| on.then_some(m)).collect())
    }

    /// The members of `room` but `user`, for a member.
    async fn others(&self, user: &UserId, room: &RoomId) -> Result<Vec<String>, AppError> {
        self.authorize(user, room).await?;
        let r = self.backends.store.room(room).await?.ok_or_else(|| unknown_room(room))?;
        Ok(r.members.into_iter().filter(|m| user != m.as_str()).collect())
    }

    /// Creates `room` (`None`: a fresh id) with `members`, checked here (at most
    /// `max_room_members` per call).
    pub async fn create_room(&self, room: Option<RoomId>, members: &[String]) -> Result<Room, AppError> {
        let room = match room {
            Some(r) => r,
            None => RoomId::new(format!("r-{}", ids::random_id())).map_err(AppError::from)?,
        };
        let members = self.check_members(members)?;
        if let Some(dm) = ids::dm_members(&room)
            && members != dm
        {
            return Err(AppError::bad("a dm: room's members are the two users its id names"));
        }
        Ok(self.backends.store.create_room(&room, &members, now_ms()).await?)
    }

    pub async fn add_members(&self, room: &RoomId, members: &[String]) -> Result<Room, AppError> {
        if room.dm_members().is_some() {
            return Err(AppError::bad("the members of a dm: room are fixed"));
        }
        let members = self.check_members(members)?;
        Ok(self.backends.store.add_members(room, &members, now_ms()).await?)
    }

    /// Enqueues one one-off message from `sender` to each recipient's direct room and
    /// returns once all are durably enqueued. Returns the campaign id and how many messages
    /// this call accepted (recipients repeated in the call, and the sender, are skipped).
    /// A tenant at its queue quota gets what fits accepted and a `rate_limited` error
    /// (RESOURCE_EXHAUSTED) whose metadata says how many messages and request entries were
    /// accepted; the caller sends the other entries again later.
    pub async fn enqueue_bulk(&self, bulk: BulkSend<'_>) -> Result<(CampaignId, u64), AppError> {
        let BulkSend { campaign_id, tenant, sender, recipients, body } = bulk;
        let campaign_id = match campaign_id {
            Some(c) => c,
            None => CampaignId::new(format!("c-{}", ids::random_id())).map_err(AppError::from)?,
        };
        let (sender, tenant) = (&sender, tenant.as_ref().unwrap_or(&sender));
        self.check_body(body)?;
        if recipients.is_empty() {
            return Err(AppError::bad("recipients must not be empty"));
        }
        if recipients.len() > self.limits.max_bulk_recipients {
            return Err(AppError::too_large(format!(
                "{} recipients in one call; at most {} (split the campaign over several calls with the same campaign_id)",
                recipients.len(),
                self.limits.max_bulk_recipients
            )));
        }
        let mut seen = HashSet::with_capacity(recipients.len());
        // The distinct recipients, each with the number of request entries up to and
        // including it (what a caller refused part way resends from).
        let mut unique: Vec<(UserId, usize)> = Vec::with_capacity(recipients.len());
        for (i, r) in recipients.iter().enumerate() {
            sluice_core::share_runtime(i).await;
            let checked = UserId::new(r.as_str()).map_err(|e| AppError::bad(format!("recipients[{i}]: {e}")))?;
            if &checked != sender && seen.insert(r.as_str()) {
                unique.push((checked, i + 1));
            }
        }
        drop(seen);
        let quota = self.quota_room(tenant, unique.len()).await?;
        let refused = quota.map(|room| unique.split_off(room.min(unique.len())));
        // Request entries this call covers: all, or those before the first refused recipient.
        let entries = match refused.as_ref().and_then(|r| r.first()) {
            Some((_, upto)) => upto - 1,
            None => recipients.len(),
        };
        let (accepted, uptos): (Vec<UserId>, Vec<usize>) = unique.into_iter().unzip();
        if !accepted.is_empty() || refused.as_ref().is_none_or(|r| r.is_empty()) {
            let owner = ids::campaign_owner(tenant, sender);
            if accepted.is_empty() {
                self.backends.store.record_enqueued(&campaign_id, &owner, entries as u64, &[]).await?;
            }
            let call =
                Call { campaign_id: &campaign_id, tenant, sender, owner: &owner, body, recipients: &accepted, uptos: &uptos, entries };
            self.enqueue_chunks(call).await?;
            crate::admin::note_campaign(self, &campaign_id).await;
        }
        match refused {
            Some(r) if !r.is_empty() => {
                self.backends.metrics.quota_refusals.inc();
                let mut e = AppError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "tenant {tenant} is at its queue quota of {}: accepted {} messages (the first {entries} recipient entries); send the other {} entries again once the queue drains",
                        self.limits.tenant_quota,
                        accepted.len(),
                        recipients.len() - entries
                    ),
                );
                e.metadata = vec![
                    ("sluice-campaign-id", campaign_id.into_string()),
                    ("sluice-accepted", accepted.len().to_string()),
                    ("sluice-accepted-entries", entries.to_string()),
                ];
                Err(e)
            }
            _ => Ok((campaign_id, accepted.len() as u64)),
        }
    }

    /// How many more messages `tenant` may queue now, when a quota applies (`None`: no
    /// limit). The backlog is the queue's count where it keeps one per tenant (embedded),
    /// else the store's (DynamoDB, beside SQS).
    async fn quota_room(&self, tenant: &str, wanted: usize) -> Result<Option<usize>, AppError> {
        let quota = self.limits.tenant_quota;
        if quota == 0 || wanted == 0 {
            return Ok(None);
        }
        let backlog = match self.backends.queue.tenant_backlog(tenant).await? {
            Some(b) => Some(b),
            None => self.backends.store.tenant_backlog(tenant).await?,
        };
        let Some(backlog) = backlog else { return Ok(None) };
        Ok(Some(quota.saturating_sub(backlog).min(wanted as u64) as usize))
    }

    /// Queues one message per recipient, built and sent a chunk at a time: what a call holds
    /// in memory is bounded by [`ENQUEUE_CHUNK`] and [`ENQUEUE_CHUNK_BYTES`], whatever its
    /// recipients x body. From [`BODY_BY_REF_MIN_RECIPIENTS`] recipients on, the body is
    /// stored once (before any message refers to it) and each queued message carries its
    /// reference, so what the queue holds does not grow with the body either.
    ///
    /// Each message is recorded in its campaign
    /// ([`sluice_core::store::MessageStore::record_enqueued`]) before it is queued, so the
    /// campaign cannot look done while a message of this call is still on its way to the queue
    /// or the store; and recording stays at most a [`RECORD_SLICE`] ahead of queueing, so it
    /// goes at the accept gate's pace too (a call used to record all its recipients first, at
    /// the store writer's full speed beside chat). A call that fails part way leaves the
    /// campaign not done until the producer retries: the retry records the same slices, which
    /// count nothing new, and its messages deduplicate by msg_id.
    async fn enqueue_chunks(&self, call: Call<'_>) -> Result<(), AppError> {
        let Call { campaign_id, tenant, sender, body, recipients, .. } = call;
        let mut recorded = 0;
        let now = now_ms();
        let trace = sluice_core::trace::current_traceparent();
        let body_ref = (recipients.len() >= BODY_BY_REF_MIN_RECIPIENTS).then(|| ids::campaign_body_ref(campaign_id, body));
        if let Some(r) = &body_ref {
            self.backends.store.put_campaign_body(campaign_id, r, body).await?;
        }
        let each_body = if body_ref.is_some() { "" } else { body };
        let mut rest = recipients;
        while !rest.is_empty() {
            let most = self.accept.batch(ENQUEUE_CHUNK).min(rest.len());
            self.accept.admit(most).await;
            let sent = recipients.len() - rest.len();
            self.record_through(&call, &mut recorded, sent + most + RECORD_SLICE).await?;
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            while let Some((r, tail)) = rest.split_first() {
                if batch.len() == most || (!batch.is_empty() && bytes >= ENQUEUE_CHUNK_BYTES) {
                    break;
                }
                sluice_core::share_runtime(batch.len()).await;
                rest = tail;
                let msg = NewMessage { body_ref: body_ref.clone(), ..NewMessage::one_off(campaign_id, sender, r, each_body, now) };
                let e = Enqueue {
                    dedup_id: msg.msg_id.clone(),
                    group: ids::queue_group(&msg.room),
                    tenant: tenant.to_string(),
                    body: encode_queued_traced(&msg, trace.as_deref()),
                };
                bytes += e.body.len();
                batch.push(e);
            }
            let held = &self.backends.metrics.enqueue_bytes_held;
            held.add(bytes as i64);
            self.backends.metrics.enqueue_bytes_peak.set(self.backends.metrics.enqueue_bytes_peak.get().max(held.get()));
            let out = self.backends.queue.send(batch).await;
            held.sub(bytes as i64);
            self.backends.metrics.enqueued.inc_by(out?.enqueued as u64);
        }
        Ok(())
    }

    /// Records `call`'s recipients in [`RECORD_SLICE`]s from `recorded` on, until at least
    /// `upto` of them (or all) are. Each slice counts the request entries it covers, so a
    /// call's slices add up to its entries, and a retried call's slices, being the same, are
    /// counted once ([`ids::enqueue_call_key`]).
    async fn record_through(&self, call: &Call<'_>, recorded: &mut usize, upto: usize) -> Result<(), AppError> {
        let n = call.recipients.len();
        while *recorded < upto.min(n) {
            let (from, to) = (*recorded, (*recorded + RECORD_SLICE).min(n));
            let before = if from == 0 { 0 } else { call.uptos[from - 1] };
            let through = if to == n { call.entries } else { call.uptos[to - 1] };
            let slice: Vec<String> = call.recipients[from..to].iter().map(|r| r.to_string()).collect();
            self.backends.store.record_enqueued(call.campaign_id, call.owner, (through - before) as u64, &slice).await?;
            *recorded = to;
        }
        Ok(())
    }

    /// [`App::enqueue_bulk`] of a call that owns its recipients and body, on the bulk
    /// runtime ([`App::on_bulk`]).
    pub async fn enqueue_bulk_owned(
        self: &Arc<Self>,
        campaign_id: Option<CampaignId>,
        tenant: Option<UserId>,
        sender: UserId,
        recipients: Vec<String>,
        body: String,
    ) -> Result<(CampaignId, u64), AppError> {
        let app = self.clone();
        let work = async move { app.enqueue_bulk(BulkSend { campaign_id, tenant, sender, recipients: &recipients, body: &body }).await };
        self.on_bulk(work.in_current_span()).await
    }

    /// A campaign's progress; with `tenant`, only a campaign of that tenant.
    pub async fn campaign(&self, campaign_id: &CampaignId, tenant: Option<&str>) -> Result<Campaign, AppError> {
        let unknown = || AppError { grpc: tonic::Code::NotFound, ..AppError::bad(format!("unknown campaign {campaign_id}")) };
        let c = self.backends.store.campaign(campaign_id).await?.ok_or_else(unknown)?;
        match tenant {
            Some(t) if t != c.tenant => Err(unknown()),
            _ => Ok(c),
        }
    }

    fn check_body(&self, body: &str) -> Result<(), AppError> {
        if body.is_empty() {
            return Err(AppError::bad("body must not be empty"));
        }
        if body.len() > self.limits.max_body_bytes {
            return Err(AppError::too_large(format!("body of {} bytes; at most {}", body.len(), self.limits.max_body_bytes)));
        }
        Ok(())
    }

    /// The members of a room, checked, sorted and deduplicated.
    fn check_members(&self, members: &[String]) -> Result<Vec<String>, AppError> {
        if members.is_empty() {
            return Err(AppError::bad("a room needs at least one member"));
        }
        if members.len() > self.limits.max_room_members {
            return Err(AppError::too_large(format!("at most {} members per call", self.limits.max_room_members)));
        }
        let mut out = Vec::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            ids::validate_user(m).map_err(|e| AppError::bad(format!("members[{i}]: {e}")))?;
            out.push(m.clone());
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

fn not_member(room: &str) -> AppError {
    AppError::new(ErrorCode::NotMember, format!("not a member of {room}"))
}

fn unknown_room(room: &str) -> AppError {
    AppError::new(ErrorCode::UnknownRoom, format!("unknown room {room}"))
}
