//! Exponential backoff with full jitter, for optimistic-lock conflicts and throttling.

use std::time::Duration;

/// Exponential backoff: attempt n (0-based) waits a random time in [0, min(cap, base * 2^n)].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_millis(5), cap: Duration::from_millis(1000), max_attempts: 8 }
    }
}

impl Backoff {
    /// The upper bound of the wait before retry `attempt`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u64.checked_shl(attempt.min(32)).unwrap_or(u64::MAX);
        let nanos = (self.base.as_nanos() as u64).saturating_mul(factor);
        Duration::from_nanos(nanos).min(self.cap)
    }

    /// The wait before retry `attempt`, with full jitter; `None` once attempts are used up.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let ceiling = self.ceiling(attempt).as_nanos() as u64;
        Some(Duration::from_nanos(rand::random_range(0..=ceiling)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn delay_within_ceiling_and_ceiling_monotone(base_ms in 1u64..100, cap_ms in 1u64..10_000, attempt in 0u32..40) {
            let b = Backoff { base: Duration::from_millis(base_ms), cap: Duration::from_millis(cap_ms), max_attempts: 50 };
            let d = b.delay(attempt).unwrap();
            prop_assert!(d <= b.ceiling(attempt));
            prop_assert!(b.ceiling(attempt) <= b.cap);
            prop_assert!(b.ceiling(attempt) <= b.ceiling(attempt + 1));
        }
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let b = Backoff { max_attempts: 3, ..Backoff::default() };
        assert!(b.delay(2).is_some());
        assert!(b.delay(3).is_none());
    }
}
