//! The message store port: messages with per-room seq, rooms and members, inbox rows with
//! unread counters, per-user totals and campaign progress.

use crate::control::{Control, Controls, Scope};
use crate::error::StoreError;
use crate::model::{
    Campaign, HistoryQuery, Inbox, InboxPage, MAX_INBOX_LIMIT, NewMessage, Persisted, ReadOutcome, Room, StoredMessage, UnreadUpdate,
};
use async_trait::async_trait;

/// Where a user stands in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Member,
    NotMember,
    UnknownRoom,
}

/// A durable, transactional message store.
///
/// Invariants every implementation keeps (DESIGN.md 1-3): per-room seq 1, 2, 3, ... gap-free
/// and never reused; one message and one counter increment per `msg_id`, however often it is
/// persisted; for each (user, room), unread = messages with seq > read_seq not sent by the
/// user, and the user's total = the sum of their rooms' unread, at every committed state.
///
/// Cancellation: dropping a future never leaves a partial write; the call either committed
/// or did not.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Creates a room with `members`. If it exists with the same members, returns it
    /// (retries are safe); with other members, [`StoreError::RoomExists`].
    async fn create_room(&self, room: &str, members: &[String], now_ms: i64) -> Result<Room, StoreError>;

    /// Adds members (existing members are left alone). New members start with read_seq =
    /// the room's last seq, so history before they joined is not unread.
    async fn add_members(&self, room: &str, members: &[String], now_ms: i64) -> Result<Room, StoreError>;

    /// The room with its members, if it exists.
    async fn room(&self, room: &str) -> Result<Option<Room>, StoreError>;

    /// Whether `user` may access `room`.
    async fn membership(&self, room: &str, user: &str) -> Result<Membership, StoreError>;

    /// Persists messages, each atomically with its counters: the message gets the room's
    /// next seq, each member but the sender gets unread + 1 and total + 1, and a campaign
    /// message counts as persisted for its campaign. Messages of one room commit in the order
    /// given. Each message succeeds or fails on its own (unknown room, sender not a member);
    /// a message whose `msg_id` is already persisted returns the original with
    /// `duplicate = true`. After a retryable failure of one message, later messages of the
    /// same room in the batch are not attempted (they fail retryable too), so a room's order
    /// survives a retry. The outer error means nothing in the batch committed.
    async fn persist(&self, batch: Vec<NewMessage>) -> Result<Vec<Result<Persisted, StoreError>>, StoreError>;

    /// The counters of `users` in `room` now: unread, total and version, for the recipients
    /// of a message whose counters were not read back ([`Persisted::unread_deferred`]).
    async fn counters(&self, room: &str, users: &[String]) -> Result<Vec<UnreadUpdate>, StoreError>;

    /// Moves `user`'s read position in `room` up to `seq` (capped at the room's last seq;
    /// never backwards) and recomputes unread and total under the same commit.
    async fn mark_read(&self, user: &str, room: &str, seq: u64, now_ms: i64) -> Result<ReadOutcome, StoreError>;

    /// A page of a room's history, ascending by seq. Reads what committed before the call.
    async fn history(&self, room: &str, query: HistoryQuery) -> Result<Vec<StoredMessage>, StoreError>;

    /// One page of the user's rooms with unread, read_seq and last_seq (ascending by room
    /// id, after `page.after`, at most `page.limit`), `next` set when more follow, and the
    /// total over all their rooms, from one consistent snapshot.
    async fn inbox_page(&self, user: &str, page: InboxPage) -> Result<Inbox, StoreError>;

    /// Every page of the user's inbox (tests and tools; clients page).
    async fn inbox(&self, user: &str) -> Result<Inbox, StoreError> {
        let mut all = self.inbox_page(user, InboxPage { after: None, limit: MAX_INBOX_LIMIT }).await?;
        while let Some(after) = all.next.take() {
            let page = self.inbox_page(user, InboxPage { after: Some(after), limit: MAX_INBOX_LIMIT }).await?;
            all.rooms.extend(page.rooms);
            all.total_unread = page.total_unread;
            all.next = page.next;
        }
        Ok(all)
    }

    /// Records the messages a campaign call of `owner` accepts (its tenant and sender, see
    /// [`crate::ids::campaign_owner`]). A campaign id belongs to the owner that first used
    /// it: a call from another tenant or sender is refused with
    /// [`StoreError::CampaignOwned`] and records nothing (its messages' ids would collide with
    /// the owner's and be dropped as duplicates). `requested` grows by `requested`,
    /// `enqueued` by the recipients not recorded before. Call before the messages are
    /// enqueued, so that `done` never turns true while one of them is still on its way; the
    /// `requested` growth lands last, so a reader never sees a call's request without its
    /// recipients.
    async fn record_enqueued(&self, campaign_id: &str, owner: &str, requested: u64, recipients: &[String]) -> Result<Campaign, StoreError>;

    /// Records that a campaign message (of `room`) went to the dead-letter queue. Counted once
    /// per `msg_id`, and not at all if the message was persisted after all.
    async fn record_dead_letter(&self, campaign_id: &str, room: &str, msg_id: &str) -> Result<(), StoreError>;

    /// Stores `body` once as campaign `campaign_id`'s body of reference `body_ref`
    /// ([`crate::ids::campaign_body_ref`]), durably, for the queued messages that refer to
    /// it instead of carrying their own copy. Storing it again changes nothing. Call before
    /// enqueueing a message that refers to it.
    async fn put_campaign_body(&self, campaign_id: &str, body_ref: &str, body: &str) -> Result<(), StoreError>;

    /// The body stored by [`MessageStore::put_campaign_body`] (strongly consistent: a body
    /// stored before is found).
    async fn campaign_body(&self, campaign_id: &str, body_ref: &str) -> Result<Option<String>, StoreError>;

    /// A campaign's progress.
    async fn campaign(&self, campaign_id: &str) -> Result<Option<Campaign>, StoreError>;

    /// Campaign messages of `tenant` enqueued and not yet persisted or dead-lettered, when the
    /// store counts them per tenant (DynamoDB, for a queue that cannot: SQS); `None` when it
    /// does not (the embedded queue counts them itself).
    async fn tenant_backlog(&self, tenant: &str) -> Result<Option<u64>, StoreError>;

    /// Sets the operator's control of `scope`, durably; the default control removes it.
    async fn set_control(&self, scope: &Scope, control: Control) -> Result<(), StoreError>;

    /// Every control in force (strongly consistent: a control set before is seen).
    async fn controls(&self) -> Result<Controls, StoreError>;

    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}
