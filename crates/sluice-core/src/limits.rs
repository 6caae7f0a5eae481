//! The limits port: rate limits and counted leases keyed by user or client address, and
//! readings that every process reports and reads (a gateway's interactive latency, which
//! the drain governors of worker processes elsewhere react to). Held in one place for every
//! gateway and worker (Redis on the distributed backends, this process on the embedded
//! ones), so a limit per user holds however many sockets and gateways the user spreads over.

use crate::error::HubError;
use crate::ratelimit::TokenBucket;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shared rate limits and leases.
#[async_trait]
pub trait Limiter: Send + Sync + 'static {
    /// Takes one token from the bucket `key`, which refills at `rate` per second up to
    /// `burst`. False when the bucket is empty (the caller refuses the action).
    async fn take(&self, key: &str, rate: f64, burst: f64) -> Result<bool, HubError> {
        Ok(self.take_up_to(key, 1, rate, burst).await? == 1)
    }

    /// Takes as many of `n` tokens from the bucket `key` as it holds (see [`Limiter::take`]);
    /// returns how many it took.
    async fn take_up_to(&self, key: &str, n: u64, rate: f64, burst: f64) -> Result<u64, HubError>;

    /// Returns `n` tokens taken from the bucket `key` but not used (the bucket never holds
    /// more than `burst`), so a caller that took tokens for several buckets at once and could
    /// use only some does not waste the rest.
    async fn give_back(&self, key: &str, n: u64, burst: f64) -> Result<(), HubError>;

    /// Takes `n` tokens from the lending bucket `key` (refilled at `rate` per second up to
    /// `burst`) even when it holds fewer, and returns how long the caller must wait for the
    /// debt to be paid (zero when the tokens were there). Later takers wait behind the debt,
    /// so the bucket's rate holds for everyone sharing it (a fleet's drain budget).
    async fn lend(&self, key: &str, n: u64, rate: f64, burst: f64) -> Result<Duration, HubError>;

    /// Takes (or renews) lease `id` among at most `max` of `key` (e.g. a user's
    /// connections). A lease not renewed within `ttl` lapses, so a gateway that dies frees
    /// its leases by itself. False when `max` other leases are held.
    async fn lease(&self, key: &str, id: &str, max: u32, ttl: Duration) -> Result<bool, HubError>;

    /// Gives lease `id` of `key` back.
    async fn release(&self, key: &str, id: &str);

    /// Publishes `value` as `node`'s current reading of `key`, valid for `ttl`. A key keeps
    /// at most [`READINGS_PER_KEY`] readings; beyond it the one that lapses first is dropped.
    async fn report(&self, key: &str, node: &str, value: f64, ttl: Duration) -> Result<(), HubError>;

    /// Every node's valid reading of `key`, as (node, value), in no particular order.
    async fn readings(&self, key: &str) -> Result<Vec<(String, f64)>, HubError>;

    /// The highest reading of `key` over every node whose reading is still valid.
    async fn highest(&self, key: &str) -> Result<Option<f64>, HubError> {
        Ok(self.readings(key).await?.into_iter().map(|(_, v)| v).reduce(f64::max))
    }

    /// The sum of the valid readings of `key` (0 when none).
    async fn total(&self, key: &str) -> Result<f64, HubError> {
        Ok(self.readings(key).await?.into_iter().map(|(_, v)| v).sum())
    }
}

/// Most readings one key keeps (nodes of a fleet, or campaigns in the console's list).
pub const READINGS_PER_KEY: usize = 10_000;

/// Most buckets kept in memory by [`LocalLimiter`]; beyond it, full (idle) ones are dropped.
const LOCAL_KEYS: usize = 100_000;

/// The limits of one process (embedded backends: every gateway is this process).
#[derive(Default)]
pub struct LocalLimiter {
    buckets: Mutex<HashMap<String, (TokenBucket, Instant)>>,
    leases: Mutex<HashMap<String, HashMap<String, Instant>>>,
    lending: Mutex<HashMap<String, (f64, Instant)>>,
    readings: Mutex<HashMap<String, Readings>>,
}

/// One key's readings: node -> (value, when it lapses).
type Readings = HashMap<String, (f64, Instant)>;

impl LocalLimiter {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Limiter for LocalLimiter {
    async fn take_up_to(&self, key: &str, n: u64, rate: f64, burst: f64) -> Result<u64, HubError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if buckets.len() >= LOCAL_KEYS && !buckets.contains_key(key) {
            // A bucket idle long enough to be full again holds no information: drop those.
            buckets.retain(|_, (_, last)| now.duration_since(*last).as_secs_f64() * rate < burst);
        }
        let (bucket, last) = buckets.entry(key.to_string()).or_insert_with(|| (TokenBucket::new(rate, burst), now));
        *last = now;
        Ok(bucket.take_up_to_at(n, now))
    }

    async fn give_back(&self, key: &str, n: u64, _burst: f64) -> Result<(), HubError> {
        // A bucket dropped meanwhile was full: nothing to give back to.
        if let Some((bucket, _)) = self.buckets.lock().unwrap_or_else(|p| p.into_inner()).get_mut(key) {
            bucket.give_back(n);
        }
        Ok(())
    }

    async fn lend(&self, key: &str, n: u64, rate: f64, burst: f64) -> Result<Duration, HubError> {
        let mut lending = self.lending.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, at) = lending.entry(key.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst) - n as f64;
        *at = now;
        Ok(if *tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-*tokens / rate) })
    }

    async fn lease(&self, key: &str, id: &str, max: u32, ttl: Duration) -> Result<bool, HubError> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let held = leases.entry(key.to_string()).or_default();
        held.retain(|_, until| *until > now);
        if !held.contains_key(id) && held.len() >= max as usize {
            return Ok(false);
        }
        held.insert(id.to_string(), now + ttl);
        Ok(true)
    }

    async fn release(&self, key: &str, id: &str) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = leases.get_mut(key) {
            held.remove(id);
            if held.is_empty() {
                leases.remove(key);
            }
        }
    }

    async fn report(&self, key: &str, node: &str, value: f64, ttl: Duration) -> Result<(), HubError> {
        let mut readings = self.readings.lock().unwrap_or_else(|p| p.into_inner());
        let nodes = readings.entry(key.to_string()).or_default();
        nodes.insert(node.to_string(), (value, Instant::now() + ttl));
        if nodes.len() > READINGS_PER_KEY
            && let Some(first) = nodes.iter().min_by_key(|(_, (_, until))| *until).map(|(n, _)| n.clone())
        {
            nodes.remove(&first);
        }
        Ok(())
    }

    async fn readings(&self, key: &str) -> Result<Vec<(String, f64)>, HubError> {
        let mut readings = self.readings.lock().unwrap_or_else(|p| p.into_inner());
        let Some(nodes) = readings.get_mut(key) else { return Ok(Vec::new()) };
        let now = Instant::now();
        nodes.retain(|_, (_, until)| *until > now);
        let valid = nodes.iter().map(|(n, (v, _))| (n.clone(), *v)).collect();
        if nodes.is_empty() {
            readings.remove(key);
        }
        Ok(valid)
    }
}
