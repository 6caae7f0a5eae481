//! Rate limits and leases in Redis, so a limit per user holds across every gateway.
//!
//! - buckets: a hash per key (`tokens`, `at` in ms), refilled and taken in one Lua script on
//!   Redis's own clock (gateways' clocks never disagree about it), expiring once full again;
//!   a lending bucket may go negative, and the script answers how long to wait out the debt;
//! - leases: a sorted set per key, members = lease ids, scores = when they lapse (ms); a
//!   script drops lapsed ones, then counts and adds. A gateway that dies stops renewing, so
//!   its leases lapse by themselves;
//! - readings: a hash per key (node → value) beside a sorted set (node → when the reading
//!   lapses); reading the highest drops the lapsed ones first. The two keys share a hash tag
//!   (`{key}`), so in cluster mode they live in one slot, as a script needs.

use crate::conn::{Commands, Endpoint, Target};
use async_trait::async_trait;
use redis::Script;
use sluice_core::error::HubError;
use sluice_core::limits::Limiter;
use std::time::Duration;

const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(b[1]), tonumber(b[2])
if tokens == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local ok = 0
if tokens >= 1 then tokens = tokens - 1; ok = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return ok
";

const LEND: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(b[1]), tonumber(b[2])
if tokens == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000) - n
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
if tokens >= 0 then return 0 end
return math.ceil(-tokens / rate * 1000)
";

const LEASE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= max then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
local longest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(longest[2]))
return 1
";

const REPORT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
";

const HIGHEST: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], node)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local best = nil
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local x = tonumber(v)
  if best == nil or x > best then best = x end
end
if best == nil then return false end
return tostring(best)
";

/// Limits kept in Redis under `<prefix>:lim:...`.
#[derive(Clone)]
pub struct RedisLimiter {
    conn: Commands,
    prefix: String,
    take: Script,
    lend: Script,
    lease: Script,
    report: Script,
    highest: Script,
}

impl RedisLimiter {
    /// Connects to Redis at `endpoint` (fails fast when it cannot be reached).
    pub async fn connect(endpoint: &Endpoint, prefix: &str, command_timeout: Duration) -> Result<Self, HubError> {
        let conn = Target::new(endpoint, command_timeout)?.commands().await?;
        Ok(RedisLimiter {
            conn,
            prefix: prefix.to_string(),
            take: Script::new(TAKE),
            lend: Script::new(LEND),
            lease: Script::new(LEASE),
            report: Script::new(REPORT),
            highest: Script::new(HIGHEST),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}:lim:{key}", self.prefix)
    }

    /// The two keys of a reading, in one slot.
    fn reading_keys(&self, key: &str) -> (String, String) {
        (format!("{}:lim:{{{key}}}:v", self.prefix), format!("{}:lim:{{{key}}}:t", self.prefix))
    }
}

fn unavailable(e: redis::RedisError) -> HubError {
    HubError::Unavailable(e.to_string())
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn take(&self, key: &str, rate: f64, burst: f64) -> Result<bool, HubError> {
        let mut conn = self.conn.clone();
        let ok: i64 = self.take.key(self.key(key)).arg(rate).arg(burst).invoke_async(&mut conn).await.map_err(unavailable)?;
        Ok(ok == 1)
    }

    async fn lend(&self, key: &str, n: u64, rate: f64, burst: f64) -> Result<Duration, HubError> {
        let mut conn = self.conn.clone();
        let wait_ms: u64 = self.lend.key(self.key(key)).arg(rate).arg(burst).arg(n).invoke_async(&mut conn).await.map_err(unavailable)?;
        Ok(Duration::from_millis(wait_ms))
    }

    async fn lease(&self, key: &str, id: &str, max: u32, ttl: Duration) -> Result<bool, HubError> {
        let mut conn = self.conn.clone();
        let ok: i64 = self
            .lease
            .key(self.key(key))
            .arg(id)
            .arg(max)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(ok == 1)
    }

    async fn report(&self, key: &str, node: &str, value: f64, ttl: Duration) -> Result<(), HubError> {
        let mut conn = self.conn.clone();
        let (vals, exp) = self.reading_keys(key);
        let _: i64 = self
            .report
            .key(vals)
            .key(exp)
            .arg(node)
            .arg(value)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn highest(&self, key: &str) -> Result<Option<f64>, HubError> {
        let mut conn = self.conn.clone();
        let (vals, exp) = self.reading_keys(key);
        let best: Option<String> = self.highest.key(vals).key(exp).invoke_async(&mut conn).await.map_err(unavailable)?;
        Ok(best.and_then(|b| b.parse().ok()))
    }

    async fn release(&self, key: &str, id: &str) {
        let mut conn = self.conn.clone();
        let r: Result<i64, _> = redis::cmd("ZREM").arg(self.key(key)).arg(id).query_async(&mut conn).await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "releasing a lease failed; it lapses by itself");
        }
    }
}
