//! Latency recording (HdrHistogram, microseconds) and the progress line on the terminal.

use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Highest latency recorded exactly; slower samples are clamped to it.
const MAX_MICROS: u64 = 60_000_000;

/// A latency distribution in microseconds.
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid bounds"))
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        self.record_micros(d.as_micros() as u64);
    }

    pub fn record_micros(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, MAX_MICROS));
    }

    pub fn add(&mut self, other: &Latency) {
        self.0.add(&other.0).expect("same bounds");
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The quantile `q` (0..=1) in milliseconds; 0 when empty.
    pub fn ms(&self, q: f64) -> f64 {
        if self.0.is_empty() { 0.0 } else { self.0.value_at_quantile(q) as f64 / 1000.0 }
    }

    pub fn max_ms(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }
}

/// Prints a status line to stderr every second until dropped.
pub struct Progress {
    stop: Arc<AtomicBool>,
}

impl Progress {
    pub fn start(label: &'static str, status: impl Fn() -> String + Send + 'static) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let started = Instant::now();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                eprintln!("[{label} {:>5.1}s] {}", started.elapsed().as_secs_f64(), status());
            }
        });
        Progress { stop }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_in_milliseconds() {
        let mut l = Latency::default();
        for us in 1..=1000 {
            l.record_micros(us * 10);
        }
        assert_eq!(l.count(), 1000);
        assert!((l.ms(0.5) - 5.0).abs() < 0.01, "{}", l.ms(0.5));
        assert!((l.ms(0.99) - 9.9).abs() < 0.01, "{}", l.ms(0.99));
        let mut sum = Latency::default();
        sum.add(&l);
        sum.record(Duration::from_secs(120));
        assert_eq!(sum.count(), 1001);
        assert!((sum.max_ms() - 60_000.0).abs() < 60.0, "clamped to the highest trackable value: {}", sum.max_ms());
        assert_eq!(Latency::default().ms(0.99), 0.0);
    }
}
