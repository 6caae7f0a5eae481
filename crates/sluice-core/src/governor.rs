//! The drain governor: how many bulk messages per second a worker admits from the spike
//! queue (DESIGN.md invariant 8).
//!
//! An AIMD controller, as TCP's congestion window: every tick it reads the signals of the
//! tick just ended, the interactive lane's persist latency (p99 over a short window, from
//! [`LatencyWindow`]), the store's throttling and conflict failures on the bulk lane, and,
//! where chat and the drain share a process, the runtime's lag (how late a short timer
//! fires: the time every task waits for a core, which persist latency alone does not see).
//! Over the target or throttled, the admitted rate is cut by a factor (at most once per
//! latency window) from what the drain used over about the last second, when that is less;
//! otherwise, if the drain used at least half of it, it grows by a step. The target is
//! [`GovernorConfig::slowdown`] (2) times what chat sees while the drain is idle (or held at
//! its floor, where it hardly runs), and at least the configured one. The rate never goes
//! below a floor (the drain never starves) nor above the ceiling. Admission is a token bucket
//! at the current rate that lends: a poller reserves a whole batch and waits out the debt, so
//! large batches stay possible at low rates.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Recent latencies of one kind (interactive persists), for a p99 over a sliding window.
pub struct LatencyWindow {
    samples: Mutex<VecDeque<(Instant, Duration)>>,
    window: Duration,
    cap: usize,
}

impl LatencyWindow {
    /// Keeps at most `cap` samples of the last `window`.
    pub fn new(window: Duration, cap: usize) -> Self {
        LatencyWindow { samples: Mutex::new(VecDeque::with_capacity(cap.min(1024))), window, cap: cap.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, Duration)>> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, d: Duration) {
        self.record_at(Instant::now(), d);
    }

    pub fn record_at(&self, now: Instant, d: Duration) {
        let mut s = self.lock();
        if s.len() == self.cap {
            s.pop_front();
        }
        s.push_back((now, d));
    }

    /// The 99th percentile of the samples of the last window; `None` without samples.
    pub fn p99_at(&self, now: Instant) -> Option<Duration> {
        self.quantile_at(now, 0.99)
    }

    pub fn p99(&self) -> Option<Duration> {
        self.p99_at(Instant::now())
    }

    /// The median of the samples of the last window.
    pub fn p50(&self) -> Option<Duration> {
        self.quantile_at(Instant::now(), 0.5)
    }

    /// Quantile `q` (0-1) of the samples of the last window; `None` without samples.
    pub fn quantile_at(&self, now: Instant, q: f64) -> Option<Duration> {
        let mut s = self.lock();
        while s.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > self.window) {
            s.pop_front();
        }
        if s.is_empty() {
            return None;
        }
        let mut v: Vec<Duration> = s.iter().map(|(_, d)| *d).collect();
        drop(s);
        let k = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        let (_, at, _) = v.select_nth_unstable(k);
        Some(*at)
    }
}

/// The reading under which gateways publish their interactive persist p99 (ms) for the
/// governors of worker processes elsewhere ([`crate::limits::Limiter::report`]).
pub const INTERACTIVE_P99_KEY: &str = "interactive_p99_ms";
/// How often gateways publish it, and how long a reading stays valid.
pub const REPORT_EVERY: Duration = Duration::from_millis(250);
pub const REPORT_TTL: Duration = Duration::from_secs(2);

/// Settings of a governor.
#[derive(Debug, Clone, Copy)]
pub struct GovernorConfig {
    /// Most messages per second ever admitted (`f64::INFINITY`: no ceiling).
    pub ceiling: f64,
    /// Fewest messages per second admitted whatever the signals.
    pub floor: f64,
    /// Where the rate starts.
    pub initial: f64,
    /// Interactive persist p99 the drain must not push chat above.
    pub target: Duration,
    /// Runtime lag p99 the drain must not push above (the least target; `slowdown` times the
    /// calm lag when that is more).
    pub lag_target: Duration,
    /// How many times its calm value the drain may push a signal to (at least its target).
    pub slowdown: f64,
    /// The factor a cut multiplies the rate by.
    pub cut: f64,
    /// Growth per tick, as a share of the current rate (at least `floor`).
    pub growth: f64,
    /// How often the controller runs.
    pub tick: Duration,
    /// Least time between two cuts (about the latency window the signal is measured over).
    pub cooldown: Duration,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        GovernorConfig {
            ceiling: f64::INFINITY,
            floor: 50.0,
            initial: 2_000.0,
            target: Duration::from_millis(10),
            lag_target: Duration::from_millis(4),
            slowdown: DEFAULT_SLOWDOWN,
            cut: 0.7,
            growth: 0.1,
            tick: Duration::from_millis(250),
            cooldown: Duration::from_secs(1),
        }
    }
}

/// Default of [`GovernorConfig::slowdown`].
pub const DEFAULT_SLOWDOWN: f64 = 2.0;

/// What a tick did to the rate.
#[derive(Debug, Clone, PartialEq)]
pub enum Adjustment {
    Cut { from: f64, to: f64, why: String },
    Raised { to: f64 },
    Held,
}

#[derive(Debug)]
struct State {
    limit: f64,
    /// Tokens available; negative while a reservation's debt is being waited out.
    tokens: f64,
    refilled: Instant,
    /// Messages admitted since the last tick.
    admitted: u64,
    /// The rate the drain used lately (messages/s): a moving average over about a second,
    /// since a poller reserves a whole batch in one tick and nothing in the next.
    used: f64,
    /// The interactive p99 while the drain is idle (see [`Governor::target`]).
    calm: Calm,
    /// The runtime lag p99 while the drain is idle.
    calm_lag: Calm,
    /// No other cut before this.
    cooled_at: Option<Instant>,
    /// Other bulk work ran since the last tick ([`Governor::hold_calm`]).
    busy_elsewhere: bool,
}

/// The admitted rate of one worker and its controller.
pub struct Governor {
    config: GovernorConfig,
    state: Mutex<State>,
}

impl Governor {
    pub fn new(config: GovernorConfig) -> Self {
        let limit = config.initial.clamp(config.floor, config.ceiling);
        Governor {
            config,
            state: Mutex::new(State {
                limit,
                tokens: 0.0,
                refilled: Instant::now(),
                admitted: 0,
                used: 0.0,
                calm: Calm::default(),
                calm_lag: Calm::default(),
                cooled_at: None,
                busy_elsewhere: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> &GovernorConfig {
        &self.config
    }

    /// The admitted rate now, in messages per second.
    pub fn limit(&self) -> f64 {
        self.lock().limit
    }

    /// A batch size that fits about a tick of the current rate (at least 1, at most `max`).
    pub fn batch_hint(&self, max: usize) -> usize {
        let per_tick = self.lock().limit * self.config.tick.as_secs_f64();
        (per_tick.ceil() as usize).clamp(1, max.max(1))
    }

    /// Reserves `n` messages at `now`; returns how long to wait before processing them.
    pub fn reserve_at(&self, n: u64, now: Instant) -> Duration {
        let mut s = self.lock();
        let burst = s.limit * self.config.tick.as_secs_f64();
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * s.limit).min(burst);
        s.refilled = now;
        s.tokens -= n as f64;
        s.admitted += n;
        if s.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-s.tokens / s.limit) }
    }

    pub fn reserve(&self, n: u64) -> Duration {
        self.reserve_at(n, Instant::now())
    }

    /// Says that other bulk work (EnqueueBulk recording and queueing a campaign in this
    /// process) ran during this tick: what chat sees now is not calm, even with the drain idle.
    /// Otherwise the calm would rise to what a long accept does to chat, and the target
    /// with it.
    pub fn hold_calm(&self) {
        self.lock().busy_elsewhere = true;
    }

    /// One controller tick with the signals of the tick just ended: the interactive p99
    /// (`None` when there was no chat) and the store failures (throttling, conflicts) the
    /// bulk lane met.
    pub fn adjust(&self, interactive_p99: Option<Duration>, store_failures: u64) -> Adjustment {
        self.adjust_at(Instant::now(), interactive_p99, store_failures)
    }

    /// The interactive p99 the drain must stay under: `slowdown` times what chat sees while
    /// the drain is idle (the promise is "within 2x of calm"), and never below the configured
    /// target, so a machine whose calm p99 is already over the target still drains.
    pub fn target(&self) -> Duration {
        self.lock().calm.target(self.config.target, self.config.slowdown)
    }

    /// [`Governor::adjust`] at `now`.
    pub fn adjust_at(&self, now: Instant, interactive_p99: Option<Duration>, store_failures: u64) -> Adjustment {
        self.adjust_with_lag_at(now, interactive_p99, None, store_failures)
    }

    /// [`Governor::adjust_at`] with the runtime lag p99 of the process chat shares with the
    /// drain (`None`: not watched). The lag counts only while there is chat
    /// (`interactive_p99` is some).
    pub fn adjust_with_lag_at(
        &self,
        now: Instant,
        interactive_p99: Option<Duration>,
        lag_p99: Option<Duration>,
        store_failures: u64,
    ) -> Adjustment {
        let c = &self.config;
        let mut s = self.lock();
        let ticks_per_window = (c.cooldown.as_secs_f64() / c.tick.as_secs_f64()).max(1.0);
        s.used += (s.admitted as f64 / c.tick.as_secs_f64() - s.used) / ticks_per_window;
        let used = s.used;
        // At the floor the drain hardly runs, so what chat sees there is not the drain's
        // doing: it counts as calm, as while idle. Otherwise a store grown slower with its
        // data, or a machine grown busier, would hold the drain at the floor for good.
        let idle = (s.admitted == 0 || s.limit <= c.floor) && !s.busy_elsewhere;
        s.admitted = 0;
        s.busy_elsewhere = false;
        s.calm.note(interactive_p99, idle);
        s.calm_lag.note(lag_p99, idle);
        let (target, lag_target) = (s.calm.target(c.target, c.slowdown), s.calm_lag.target(c.lag_target, c.slowdown));
        let from = s.limit;
        let why = match (interactive_p99, lag_p99) {
            _ if store_failures > 0 => Some(format!("{store_failures} throttled or conflicting store calls")),
            (Some(p99), _) if p99 > target => Some(format!("interactive p99 {:.1} ms over the {:.1} ms target", ms(p99), ms(target))),
            // The lag stands for chat's fan-out, which waits for a core: without chat (no
            // interactive persists anywhere in the last window) it protects nobody, and the
            // drain's own threads would otherwise hold the drain down on a small machine.
            (Some(_), Some(lag)) if lag > lag_target => {
                Some(format!("runtime lag p99 {:.1} ms over the {:.1} ms target", ms(lag), ms(lag_target)))
            }
            _ => None,
        };
        if let Some(why) = why {
            // One cut per latency window: the signal needs that long to show the new rate.
            if s.cooled_at.is_some_and(|t| now < t) {
                return Adjustment::Held;
            }
            s.cooled_at = Some(now + c.cooldown);
            // A limit the drain does not reach (held back by the store's lanes, or by what
            // the queue offers) is cut from what it uses: cutting the unused part alone would
            // leave chat waiting through many windows before a cut binds.
            s.limit = (from.min(used) * c.cut).max(c.floor);
            return if s.limit < from { Adjustment::Cut { from, to: s.limit, why } } else { Adjustment::Held };
        }
        // Grow only a rate the drain actually used: a limit far above what the queue offers
        // would take many cuts to come down when chat needs it.
        if used < 0.5 * from || from >= c.ceiling {
            return Adjustment::Held;
        }
        s.limit = (from + (from * c.growth).max(c.floor)).min(c.ceiling);
        Adjustment::Raised { to: s.limit }
    }
}

/// What a latency signal is without the drain: the median of its p99 over the last
/// [`Calm::KEEP`] ticks in which the drain was idle (or held at its floor) and no other bulk
/// work ran in the process. The lowest p99 seen (as TCP Vegas keeps its base RTT) was one
/// lucky window: on a machine busy with chat alone, a second's p99 ranged 10-64 ms with
/// median 27 ms, so twice the lowest was under what chat saw half the time with nothing
/// draining, and a drain cut from what it used sat near its floor. Ticks of EnqueueBulk at
/// work are left out ([`Governor::hold_calm`]), so the start of a burst does not pass for calm.
#[derive(Debug, Default)]
struct Calm {
    samples: VecDeque<Duration>,
}

impl Calm {
    /// A minute of ticks at the default 250 ms.
    const KEEP: usize = 240;

    fn note(&mut self, p99: Option<Duration>, idle: bool) {
        let Some(p99) = p99.filter(|_| idle) else { return };
        if self.samples.len() == Self::KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back(p99);
    }

    fn value(&self) -> Option<Duration> {
        let mut v: Vec<Duration> = self.samples.iter().copied().collect();
        let mid = v.len().checked_sub(1)? / 2;
        Some(*v.select_nth_unstable(mid).1)
    }

    /// What the signal must stay under: `slowdown` times the calm, and at least `least`.
    fn target(&self, least: Duration, slowdown: f64) -> Duration {
        self.value().map_or(least, |calm| least.max(calm.mul_f64(slowdown)))
    }
}

/// How often the runtime lag is sampled (a timer this short fires late as soon as the
/// runtime's threads are busy).
pub const LAG_SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// Samples the runtime's lag until `shutdown`: a timer of `every` is set again and again,
/// and how much later than asked each one fires goes to `window`. The lag is the time a
/// ready task waits for a worker thread: high when the cores are busy.
pub async fn sample_runtime_lag(window: &LatencyWindow, every: Duration, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        let asked = tokio::time::Instant::now() + every;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(asked) => {}
        }
        let lag = tokio::time::Instant::now().saturating_duration_since(asked);
        if lag >= STALL {
            tracing::warn!(ms = ms(lag), "runtime stalled: a timer fired late (its threads were blocked or had no core)");
        }
        window.record(lag);
    }
}

/// A runtime lag logged as a stall.
const STALL: Duration = Duration::from_millis(100);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests;
