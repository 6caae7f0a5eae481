//! A token bucket for per-connection send rates.

use std::time::Instant;

/// Allows `rate` events per second on average with bursts of `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        TokenBucket { rate, burst, tokens: burst, last: Instant::now() }
    }

    /// Takes a token if one is available at `now`.
    pub fn try_take_at(&mut self, now: Instant) -> bool {
        self.take_up_to_at(1, now) == 1
    }

    /// Takes as many of `n` tokens as are available at `now`; returns how many.
    pub fn take_up_to_at(&mut self, n: u64, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let granted = (self.tokens.max(0.0).floor() as u64).min(n);
        self.tokens -= granted as f64;
        granted
    }

    /// Returns `n` tokens taken but not used (never above the burst).
    pub fn give_back(&mut self, n: u64) {
        self.tokens = (self.tokens + n as f64).min(self.burst);
    }

    /// Takes a token if one is available now.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0);
        b.last = t0;
        assert!(b.try_take_at(t0) && b.try_take_at(t0) && b.try_take_at(t0));
        assert!(!b.try_take_at(t0), "burst used up");
        assert!(b.try_take_at(t0 + Duration::from_millis(100)), "one token per 100 ms");
        assert!(!b.try_take_at(t0 + Duration::from_millis(100)));
        assert!(b.try_take_at(t0 + Duration::from_secs(60)));
        assert!(b.try_take_at(t0 + Duration::from_secs(60)));
        assert!(b.try_take_at(t0 + Duration::from_secs(60)));
        assert!(!b.try_take_at(t0 + Duration::from_secs(60)), "refill capped at burst");
        let t1 = t0 + Duration::from_secs(120);
        assert_eq!(b.take_up_to_at(5, t1), 3, "at most what the bucket holds");
        assert_eq!(b.take_up_to_at(5, t1), 0);
        assert_eq!(b.take_up_to_at(5, t1 + Duration::from_millis(250)), 2, "2.5 tokens refilled: 2 whole ones");
    }
}
