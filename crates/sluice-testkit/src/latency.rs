//! A store wrapper that adds a round trip to every call, so the embedded store can stand in
//! for a remote one (DynamoDB answers a transaction in about 5-10 ms) in benchmarks of worker
//! scaling. `sluice-bench scaling` wraps the store of a server it runs in its own process.

use async_trait::async_trait;
use sluice_core::control::{Control, Controls, Scope};
use sluice_core::error::StoreError;
use sluice_core::model::{Campaign, HistoryQuery, Inbox, InboxPage, NewMessage, Persisted, ReadOutcome, Room, StoredMessage, UnreadUpdate};
use sluice_core::store::{Membership, MessageStore};
use std::sync::Arc;
use std::time::Duration;

/// A latency drawn uniformly from `min..=max` for each call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyRange {
    pub min: Duration,
    pub max: Duration,
}

impl LatencyRange {
    fn draw(&self) -> Duration {
        if self.max <= self.min { self.min } else { self.min + (self.max - self.min).mul_f64(rand::random::<f64>()) }
    }

    /// The mean latency in milliseconds.
    pub fn mean_ms(&self) -> f64 {
        (self.min + self.max).as_secs_f64() * 500.0
    }
}

impl std::fmt::Display for LatencyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(f, "{}-{}", ms(self.min), ms(self.max))
    }
}

impl std::str::FromStr for LatencyRange {
    type Err = String;

    /// `"5-10"` (milliseconds, uniform) or `"7"`.
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("expected MIN-MAX milliseconds (e.g. 5-10) with MIN <= MAX <= 10000, not {s:?}");
        let (lo, hi) = s.split_once('-').unwrap_or((s, s));
        let ms = |v: &str| v.trim().parse::<f64>().ok().filter(|v| (0.0..=10_000.0).contains(v)).ok_or_else(err);
        let (lo, hi) = (ms(lo)?, ms(hi)?);
        if hi < lo {
            return Err(err());
        }
        Ok(LatencyRange { min: Duration::from_secs_f64(lo / 1000.0), max: Duration::from_secs_f64(hi / 1000.0) })
    }
}

/// Sleeps for a drawn latency, then calls the inner store.
pub struct LatencyStore {
    inner: Arc<dyn MessageStore>,
    latency: LatencyRange,
}

impl LatencyStore {
    pub fn new(inner: Arc<dyn MessageStore>, latency: LatencyRange) -> Self {
        LatencyStore { inner, latency }
    }

    async fn wait(&self) {
        tokio::time::sleep(self.latency.draw()).await;
    }
}

#[async_trait]
impl MessageStore for LatencyStore {
    async fn create_room(&self, room: &str, members: &[String], now_ms: i64) -> Result<Room, StoreError> {
        self.wait().await;
        self.inner.create_room(room, members, now_ms).await
    }
    async fn add_members(&self, room: &str, members: &[String], now_ms: i64) -> Result<Room, StoreError> {
        self.wait().await;
        self.inner.add_members(room, members, now_ms).await
    }
    async fn room(&self, room: &str) -> Result<Option<Room>, StoreError> {
        self.wait().await;
        self.inner.room(room).await
    }
    async fn membership(&self, room: &str, user: &str) -> Result<Membership, StoreError> {
        self.wait().await;
        self.inner.membership(room, user).await
    }
    async fn persist(&self, batch: Vec<NewMessage>) -> Result<Vec<Result<Persisted, StoreError>>, StoreError> {
        self.wait().await;
        self.inner.persist(batch).await
    }
    async fn counters(&self, room: &str, users: &[String]) -> Result<Vec<UnreadUpdate>, StoreError> {
        self.wait().await;
        self.inner.counters(room, users).await
    }
    async fn mark_read(&self, user: &str, room: &str, seq: u64, now_ms: i64) -> Result<ReadOutcome, StoreError> {
        self.wait().await;
        self.inner.mark_read(user, room, seq, now_ms).await
    }
    async fn history(&self, room: &str, query: HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
        self.wait().await;
        self.inner.history(room, query).await
    }
    async fn inbox_page(&self, user: &str, page: InboxPage) -> Result<Inbox, StoreError> {
        self.wait().await;
        self.inner.inbox_page(user, page).await
    }
    async fn record_enqueued(
        &self,
        campaign_id: &str,
        sender: &str,
        requested: u64,
        recipients: &[String],
    ) -> Result<Campaign, StoreError> {
        self.wait().await;
        self.inner.record_enqueued(campaign_id, sender, requested, recipients).await
    }
    async fn record_dead_letter(&self, campaign_id: &str, room: &str, msg_id: &str) -> Result<(), StoreError> {
        self.wait().await;
        self.inner.record_dead_letter(campaign_id, room, msg_id).await
    }
    async fn put_campaign_body(&self, campaign_id: &str, body_ref: &str, body: &str) -> Result<(), StoreError> {
        self.wait().await;
        self.inner.put_campaign_body(campaign_id, body_ref, body).await
    }
    async fn campaign_body(&self, campaign_id: &str, body_ref: &str) -> Result<Option<String>, StoreError> {
        self.wait().await;
        self.inner.campaign_body(campaign_id, body_ref).await
    }
    async fn campaign(&self, campaign_id: &str) -> Result<Option<Campaign>, StoreError> {
        self.wait().await;
        self.inner.campaign(campaign_id).await
    }
    async fn tenant_backlog(&self, tenant: &str) -> Result<Option<u64>, StoreError> {
        self.wait().await;
        self.inner.tenant_backlog(tenant).await
    }
    async fn set_control(&self, scope: &Scope, control: Control) -> Result<(), StoreError> {
        self.wait().await;
        self.inner.set_control(scope, control).await
    }
    async fn controls(&self) -> Result<Controls, StoreError> {
        self.wait().await;
        self.inner.controls().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_draw_inside() {
        let r: LatencyRange = "5-10".parse().unwrap();
        assert_eq!((r.min, r.max), (Duration::from_millis(5), Duration::from_millis(10)));
        assert_eq!(r.mean_ms(), 7.5);
        for _ in 0..100 {
            let d = r.draw();
            assert!(d >= r.min && d <= r.max, "{d:?}");
        }
        let fixed: LatencyRange = "7".parse().unwrap();
        assert_eq!(fixed.draw(), Duration::from_millis(7));
        assert!("10-5".parse::<LatencyRange>().is_err());
        assert!("x".parse::<LatencyRange>().is_err());
        assert!("-1".parse::<LatencyRange>().is_err());
        assert_eq!(r.to_string(), "5-10");
    }
}
