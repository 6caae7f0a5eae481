//! Rate limits and leases in Redis, so a limit per user holds across every gateway.
//!
//! - buckets: a hash per key (`tokens`, `at` in ms), refilled and taken in one Lua script on
//!   Redis's own clock (gateways' clocks never disagree about it), expiring once full again;
//!   a lending bucket may go negative, and the script answers how long to wait out the debt;
//!   tokens given back are added up to the burst (a bucket already expired was full);
//! - leases: a sorted set per key, members = lease ids, scores = when they lapse (ms); a
//!   script drops lapsed ones, then counts and adds. A gateway that dies stops renewing, so
//!   its leases lapse by themselves;
//! - readings: a hash per key (node → value) beside a sorted set (node → when the reading
//!   lapses); reading them drops the lapsed ones first. The two keys share a hash tag
//!   (`{key}`), so in cluster mode they live in one slot, as a script needs.

use crate::conn::{Commands, Endpoint, Target};
use async_trait::async_trait;
use redis::Script;
use sluice_core::error::HubError;
use sluice_core::limits::{Limiter, READINGS_PER_KEY};
use std::time::Duration;

const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(b[1]), tonumber(b[2])
if tokens == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local granted = math.min(n, math.floor(math.max(0, tokens)))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return granted
";

const GIVE_BACK: &str = r"
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1])
if tokens == nil then return 0 end
redis.call('HSET', KEYS[1], 'tokens', tostring(math.min(tonumber(ARGV[1]), tokens + tonumber(ARGV[2]))))
return 1
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
if redis.call('ZCARD', KEYS[2]) > tonumber(ARGV[4]) then
  local first = redis.call('ZPOPMIN', KEYS[2])
  redis.call('HDEL', KEYS[1], first[1])
end
-- Keys live as long as their longest reading (a short one must not cut a long one off).
for _, k in ipairs(KEYS) do
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
end
return 1
";

const READINGS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], node)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return redis.call('HGETALL', KEYS[1])
";

/// Limits kept in Redis under `<prefix>:lim:...`.
#[derive(Clone)]
pub struct RedisLimiter {
    conn: Commands,
    prefix: String,
    take: Script,
    give_back: Script,
    lend: Script,
    lease: Script,
    report: Script,
    readings: Script,
}

impl RedisLimiter {
    /// Connects to Redis at `endpoint` (fails fast when it cannot be reached).
    pub async fn connect(endpoint: &Endpoint, prefix: &str, command_timeout: Duration) -> Result<Self, HubError> {
        let conn = Target::new(endpoint, command_timeout)?.commands().await?;
        Ok(RedisLimiter {
            conn,
            prefix: prefix.to_string(),
            take: Script::new(TAKE),
            give_back: Script::new(GIVE_BACK),
            lend: Script::new(LEND),
            lease: Script::new(LEASE),
            report: Script::new(REPORT),
            readings: Script::new(READINGS),
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
    async fn take_up_to(&self, key: &str, n: u64, rate: f64, burst: f64) -> Result<u64, HubError> {
        let mut conn = self.conn.clone();
        let granted: u64 = self.take.key(self.key(key)).arg(rate).arg(burst).arg(n).invoke_async(&mut conn).await.map_err(unavailable)?;
        Ok(granted)
    }

    async fn give_back(&self, key: &str, n: u64, burst: f64) -> Result<(), HubError> {
        let mut conn = self.conn.clone();
        let _: i64 = self.give_back.key(self.key(key)).arg(burst).arg(n).invoke_async(&mut conn).await.map_err(unavailable)?;
        Ok(())
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
            .arg(READINGS_PER_KEY)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn readings(&self, key: &str) -> Result<Vec<(String, f64)>, HubError> {
        let mut conn = self.conn.clone();
        let (vals, exp) = self.reading_keys(key);
        let all: Vec<(String, String)> = self.readings.key(vals).key(exp).invoke_async(&mut conn).await.map_err(unavailable)?;
        Ok(all.into_iter().filter_map(|(node, v)| v.parse().ok().map(|v| (node, v))).collect())
    }

    async fn release(&self, key: &str, id: &str) {
        let mut conn = self.conn.clone();
        let r: Result<i64, _> = redis::cmd("ZREM").arg(self.key(key)).arg(id).query_async(&mut conn).await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "releasing a lease failed; it lapses by itself");
        }
    }
}
