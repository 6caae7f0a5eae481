//! Fault-injecting wrappers around any backend, for failure tests.

use async_trait::async_trait;
use sluice_core::control::{Control, Controls, Scope};
use sluice_core::error::{QueueError, StoreError};
use sluice_core::model::{Campaign, HistoryQuery, Inbox, InboxPage, NewMessage, Persisted, ReadOutcome, Room, StoredMessage, UnreadUpdate};
use sluice_core::queue::{DeadLetter, Delivery, Enqueue, QueueStats, Receipt, SendOutcome, SpikeQueue};
use sluice_core::store::{Membership, MessageStore};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

fn take(counter: &AtomicU32) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

/// A queue whose next `fail_acks` acks fail after doing nothing, as if the consumer died
/// between its commit and its ack, and whose sends can be held at the door (a slow queue,
/// to look at what a producer's other steps did meanwhile).
pub struct FaultyQueue {
    pub inner: Arc<dyn SpikeQueue>,
    pub fail_acks: AtomicU32,
    /// Sends waiting at the door right now.
    pub sends_waiting: AtomicU32,
    sends_held: tokio::sync::watch::Sender<bool>,
}

impl FaultyQueue {
    pub fn new(inner: Arc<dyn SpikeQueue>) -> Self {
        FaultyQueue {
            inner,
            fail_acks: AtomicU32::new(0),
            sends_waiting: AtomicU32::new(0),
            sends_held: tokio::sync::watch::channel(false).0,
        }
    }

    /// While `held`, every `send` waits before it reaches the inner queue.
    pub fn hold_sends(&self, held: bool) {
        self.sends_held.send_replace(held);
    }
}

#[async_trait]
impl SpikeQueue for FaultyQueue {
    async fn send(&self, batch: Vec<Enqueue>) -> Result<SendOutcome, QueueError> {
        let mut held = self.sends_held.subscribe();
        if *held.borrow() {
            self.sends_waiting.fetch_add(1, Ordering::SeqCst);
            let _ = held.wait_for(|h| !*h).await;
            self.sends_waiting.fetch_sub(1, Ordering::SeqCst);
        }
        self.inner.send(batch).await
    }
    async fn receive(&self, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        self.inner.receive(max, wait, visibility).await
    }
    async fn ack(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        if take(&self.fail_acks) {
            return Err(QueueError::Unavailable("injected ack failure".into()));
        }
        self.inner.ack(receipts).await
    }
    async fn extend(&self, receipts: &[Receipt], visibility: Duration) -> Result<(), QueueError> {
        self.inner.extend(receipts, visibility).await
    }
    async fn release(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        self.inner.release(receipts).await
    }
    async fn dead_letter(&self, receipt: &Receipt, reason: &str) -> Result<(), QueueError> {
        self.inner.dead_letter(receipt, reason).await
    }
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.inner.stats().await
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.inner.dead_letters(limit).await
    }
    async fn hold(&self, receipts: &[Receipt], key: &str) -> Result<usize, QueueError> {
        self.inner.hold(receipts, key).await
    }
    async fn tenant_backlog(&self, tenant: &str) -> Result<Option<u64>, QueueError> {
        self.inner.tenant_backlog(tenant).await
    }
    async fn tenant_backlogs(&self) -> Result<Vec<(String, u64)>, QueueError> {
        self.inner.tenant_backlogs().await
    }
    async fn own_max_receives(&self) -> Result<Option<u32>, QueueError> {
        self.inner.own_max_receives().await
    }
    async fn adoptable_dead_letters(&self, limit: usize) -> Result<Vec<(DeadLetter, Receipt)>, QueueError> {
        self.inner.adoptable_dead_letters(limit).await
    }
    async fn mark_adopted(&self, receipts: &[Receipt], reason: &str) -> Result<(), QueueError> {
        self.inner.mark_adopted(receipts, reason).await
    }
    async fn release_held(&self, key: &str, limit: usize) -> Result<usize, QueueError> {
        self.inner.release_held(key, limit).await
    }
    async fn redrive(&self, limit: usize) -> Result<usize, QueueError> {
        self.inner.redrive(limit).await
    }
}

/// A store whose next `fail_persists` persist calls, and next `fail_dead_letter_records`
/// campaign dead-letter records, fail as unavailable without writing (as if the process died
/// at that point); while `down` is set, persists, campaign body reads and pings fail (an
/// outage).
pub struct FaultyStore {
    pub inner: Arc<dyn MessageStore>,
    pub fail_persists: AtomicU32,
    pub fail_dead_letter_records: AtomicU32,
    pub down: std::sync::atomic::AtomicBool,
    /// Persist calls made while down.
    pub persists_while_down: AtomicU32,
    /// Campaign body reads made while down.
    pub body_reads_while_down: AtomicU32,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn MessageStore>) -> Self {
        FaultyStore {
            inner,
            fail_persists: AtomicU32::new(0),
            fail_dead_letter_records: AtomicU32::new(0),
            down: Default::default(),
            persists_while_down: AtomicU32::new(0),
            body_reads_while_down: AtomicU32::new(0),
        }
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl MessageStore for FaultyStore {
    async fn create_room(&self, room: &str, members: &[String], now_ms: i64) -> Result<Room, StoreError> {
        self.inner.create_room(room, members, now_ms).await
    }
    async fn add_members(&self, room: &str, members: &[String], now_ms: i64) -> Result<Room, StoreError> {
        self.inner.add_members(room, members, now_ms).await
    }
    async fn room(&self, room: &str) -> Result<Option<Room>, StoreError> {
        self.inner.room(room).await
    }
    async fn membership(&self, room: &str, user: &str) -> Result<Membership, StoreError> {
        self.inner.membership(room, user).await
    }
    async fn persist(&self, batch: Vec<NewMessage>) -> Result<Vec<Result<Persisted, StoreError>>, StoreError> {
        if self.is_down() {
            self.persists_while_down.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable("injected outage".into()));
        }
        if take(&self.fail_persists) {
            return Err(StoreError::Unavailable("injected persist failure".into()));
        }
        self.inner.persist(batch).await
    }
    async fn counters(&self, room: &str, users: &[String]) -> Result<Vec<UnreadUpdate>, StoreError> {
        self.inner.counters(room, users).await
    }
    async fn mark_read(&self, user: &str, room: &str, seq: u64, now_ms: i64) -> Result<ReadOutcome, StoreError> {
        self.inner.mark_read(user, room, seq, now_ms).await
    }
    async fn history(&self, room: &str, query: HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
        self.inner.history(room, query).await
    }
    async fn inbox_page(&self, user: &str, page: InboxPage) -> Result<Inbox, StoreError> {
        self.inner.inbox_page(user, page).await
    }
    async fn record_enqueued(
        &self,
        campaign_id: &str,
        sender: &str,
        requested: u64,
        recipients: &[String],
    ) -> Result<Campaign, StoreError> {
        self.inner.record_enqueued(campaign_id, sender, requested, recipients).await
    }
    async fn record_dead_letter(&self, campaign_id: &str, room: &str, msg_id: &str) -> Result<(), StoreError> {
        if take(&self.fail_dead_letter_records) {
            return Err(StoreError::Unavailable("injected dead-letter record failure".into()));
        }
        self.inner.record_dead_letter(campaign_id, room, msg_id).await
    }
    async fn put_campaign_body(&self, campaign_id: &str, body_ref: &str, body: &str) -> Result<(), StoreError> {
        self.inner.put_campaign_body(campaign_id, body_ref, body).await
    }
    async fn campaign_body(&self, campaign_id: &str, body_ref: &str) -> Result<Option<String>, StoreError> {
        if self.is_down() {
            self.body_reads_while_down.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable("injected outage".into()));
        }
        self.inner.campaign_body(campaign_id, body_ref).await
    }
    async fn campaign(&self, campaign_id: &str) -> Result<Option<Campaign>, StoreError> {
        self.inner.campaign(campaign_id).await
    }
    async fn tenant_backlog(&self, tenant: &str) -> Result<Option<u64>, StoreError> {
        self.inner.tenant_backlog(tenant).await
    }
    async fn set_control(&self, scope: &Scope, control: Control) -> Result<(), StoreError> {
        self.inner.set_control(scope, control).await
    }
    async fn controls(&self) -> Result<Controls, StoreError> {
        self.inner.controls().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        if self.is_down() {
            return Err(StoreError::Unavailable("injected outage".into()));
        }
        self.inner.ping().await
    }
}
