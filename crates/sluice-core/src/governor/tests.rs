use super::*;
use proptest::prelude::*;

fn config() -> GovernorConfig {
    GovernorConfig { ceiling: 10_000.0, floor: 50.0, initial: 1_000.0, ..GovernorConfig::default() }
}

/// One tick in which the drain used its whole rate, as it has for a while.
fn busy_tick(g: &Governor) {
    let n = (g.limit() * g.config().tick.as_secs_f64()) as u64;
    let mut s = g.lock();
    s.admitted = n;
    s.used = s.used.max(s.limit);
}

#[test]
fn the_window_keeps_recent_samples_and_gives_their_p99() {
    let w = LatencyWindow::new(Duration::from_secs(1), 1000);
    let t0 = Instant::now();
    for i in 1..=100u64 {
        w.record_at(t0, Duration::from_millis(i));
    }
    assert_eq!(w.p99_at(t0), Some(Duration::from_millis(99)));
    assert_eq!(w.p99_at(t0 + Duration::from_secs(2)), None, "old samples leave the window");
    let small = LatencyWindow::new(Duration::from_secs(1), 3);
    for i in [50, 1, 2, 3] {
        small.record_at(t0, Duration::from_millis(i));
    }
    assert_eq!(small.p99_at(t0), Some(Duration::from_millis(3)), "at most `cap` samples, the newest");
}

/// Ticks with the drain idle and chat at `p99`: the calm baseline.
fn calm(g: &Governor, t: &mut Instant, p99_ms: u64) {
    for _ in 0..20 {
        *t += g.config().tick;
        g.adjust_at(*t, Some(Duration::from_millis(p99_ms)), 0);
    }
}

/// A tick at `t` in which the drain used its whole rate.
fn busy(g: &Governor, t: &mut Instant, p99_ms: Option<u64>, failures: u64) -> Adjustment {
    busy_tick(g);
    *t += g.config().tick;
    g.adjust_at(*t, p99_ms.map(Duration::from_millis), failures)
}

#[test]
fn chat_over_target_cuts_once_per_window_and_a_calm_busy_drain_grows_back() {
    let g = Governor::new(config());
    let mut t = Instant::now();
    calm(&g, &mut t, 2);
    assert_eq!(g.target(), Duration::from_millis(10), "twice a calm 2 ms is under the configured 10 ms");
    let cut = busy(&g, &mut t, Some(30), 0);
    assert!(matches!(cut, Adjustment::Cut { from, to, .. } if from == 1_000.0 && (to - 700.0).abs() < 1e-9), "{cut:?}");
    assert_eq!(busy(&g, &mut t, Some(30), 0), Adjustment::Held, "one cut per latency window");
    t += Duration::from_secs(1);
    assert!(matches!(busy(&g, &mut t, None, 3), Adjustment::Cut { .. }), "store throttling cuts too");
    t += Duration::from_secs(1);
    assert!(matches!(busy(&g, &mut t, Some(1), 0), Adjustment::Raised { .. }));
    // Idle for a second: what it used lately fades, and the rate stops growing.
    for _ in 0..4 {
        t += g.config().tick;
        g.adjust_at(t, None, 0);
    }
    t += g.config().tick;
    assert_eq!(g.adjust_at(t, None, 0), Adjustment::Held, "an idle drain does not grow its rate");
}

#[test]
fn a_limit_the_drain_does_not_reach_is_cut_from_what_it_uses() {
    let g = Governor::new(config());
    let mut t = Instant::now();
    calm(&g, &mut t, 2);
    // The drain takes 200 messages/s against its limit of 1,000: one reservation of 200
    // every fourth tick (800/s within that tick).
    for i in 0..40 {
        if i % 4 == 0 {
            g.lock().admitted = 200;
        }
        t += g.config().tick;
        let a = g.adjust_at(t, Some(Duration::from_millis(2)), 0);
        assert_eq!(a, Adjustment::Held, "a rate the drain does not use does not grow (tick {i})");
    }
    let cut = g.adjust_at(t + g.config().tick, Some(Duration::from_millis(30)), 0);
    assert!(matches!(cut, Adjustment::Cut { from, to, .. } if from == 1_000.0 && to < 250.0), "{cut:?}");
}

#[test]
fn the_target_follows_a_slow_machines_calm() {
    let g = Governor::new(config());
    let mut t = Instant::now();
    calm(&g, &mut t, 20);
    let target = g.target();
    assert!(target > Duration::from_millis(39) && target <= Duration::from_millis(40), "{target:?}");
    assert!(matches!(busy(&g, &mut t, Some(35), 0), Adjustment::Raised { .. }), "35 ms is within twice a calm 20 ms");
    assert!(matches!(busy(&g, &mut t, Some(45), 0), Adjustment::Cut { .. }));
}

#[test]
fn chat_slow_without_the_drain_does_not_hold_it_at_the_floor() {
    let g = Governor::new(config());
    let mut t = Instant::now();
    calm(&g, &mut t, 5);
    // Chat turns slow for reasons of its own (a busier machine, a store grown with its data):
    // the drain is cut to the floor, where it hardly runs...
    while g.limit() > 50.0 {
        t += Duration::from_secs(1);
        busy(&g, &mut t, Some(40), 0);
    }
    // ...and chat stays as slow: the calm follows it, and the drain grows again.
    let mut raised = false;
    for _ in 0..200 {
        raised |= matches!(busy(&g, &mut t, Some(40), 0), Adjustment::Raised { .. });
    }
    assert!(raised, "still held at the floor, target {:?}", g.target());
    assert!(g.target() >= Duration::from_millis(40), "{:?}", g.target());
}

#[test]
fn chat_slowed_by_other_bulk_work_is_not_calm() {
    let g = Governor::new(config());
    let mut t = Instant::now();
    calm(&g, &mut t, 5);
    let target = g.target();
    // EnqueueBulk records a long campaign while the drain sits at its floor: chat is slow,
    // but not of itself, so the calm (and with it the target) stays where it was.
    for _ in 0..40 {
        t += Duration::from_secs(1);
        g.hold_calm();
        busy(&g, &mut t, Some(40), 0);
    }
    assert_eq!(g.limit(), 50.0);
    for _ in 0..200 {
        g.hold_calm();
        t += g.config().tick;
        g.adjust_at(t, Some(Duration::from_millis(40)), 0);
    }
    assert_eq!(g.target(), target);
    // Without the other work, the same ticks move it (the test above).
    for _ in 0..200 {
        t += g.config().tick;
        g.adjust_at(t, Some(Duration::from_millis(40)), 0);
    }
    assert!(g.target() > target, "{:?}", g.target());
}

#[test]
fn the_floor_and_the_ceiling_hold() {
    let g = Governor::new(config());
    let mut t = Instant::now();
    for _ in 0..100 {
        t += Duration::from_secs(1);
        busy(&g, &mut t, Some(1000), 10);
    }
    assert_eq!(g.limit(), 50.0, "the drain never starves");
    for _ in 0..200 {
        busy(&g, &mut t, None, 0);
    }
    assert_eq!(g.limit(), 10_000.0);
}

#[test]
fn a_reservation_beyond_the_tokens_waits_out_its_debt() {
    let g = Governor::new(GovernorConfig { initial: 100.0, ..config() });
    let t0 = g.lock().refilled;
    assert_eq!(g.reserve_at(50, t0), Duration::from_millis(500), "50 messages at 100/s");
    assert_eq!(g.reserve_at(50, t0 + Duration::from_millis(500)), Duration::from_millis(500), "the debt was paid, this one waits");
    assert_eq!(g.batch_hint(10_000), 25, "a tick's worth at 100/s");
}

proptest! {
    /// Whatever the signals, the rate stays within [floor, ceiling], and after chat calms a
    /// busy drain is back above where the cuts took it within a bounded number of ticks.
    #[test]
    fn bounded_and_recovers(signals in proptest::collection::vec((proptest::option::of(0u64..50), 0u64..3, any::<bool>()), 1..200)) {
        let g = Governor::new(config());
        let mut t = Instant::now();
        for (p99_ms, failures, is_busy) in signals {
            if is_busy {
                busy_tick(&g);
            }
            t += g.config().tick;
            g.adjust_at(t, p99_ms.map(Duration::from_millis), failures);
            prop_assert!((50.0..=10_000.0).contains(&g.limit()), "{}", g.limit());
        }
        let low = g.limit();
        for _ in 0..40 {
            busy(&g, &mut t, Some(1), 0);
        }
        prop_assert!(g.limit() >= (low * 2.0).min(10_000.0), "from {low} to {} in 10 s of calm", g.limit());
    }
}

#[test]
fn runtime_lag_over_twice_its_calm_cuts_even_when_persists_are_fast() {
    let g = Governor::new(config());
    let mut t = Instant::now();
    let ms = Duration::from_millis;
    for _ in 0..20 {
        t += g.config().tick;
        g.adjust_with_lag_at(t, Some(ms(2)), Some(ms(3)), 0);
    }
    // Calm lag 3 ms: the target is 6 ms (above the configured least, 4 ms).
    busy_tick(&g);
    t += g.config().tick;
    assert!(matches!(g.adjust_with_lag_at(t, Some(ms(2)), Some(ms(5)), 0), Adjustment::Raised { .. }), "5 ms is within twice the calm");
    t += Duration::from_secs(1);
    busy_tick(&g);
    let cut = g.adjust_with_lag_at(t, Some(ms(2)), Some(ms(9)), 0);
    assert!(matches!(&cut, Adjustment::Cut { why, .. } if why.contains("runtime lag")), "{cut:?}");
    t += Duration::from_secs(1);
    busy_tick(&g);
    assert!(
        matches!(g.adjust_with_lag_at(t, Some(ms(2)), None, 0), Adjustment::Raised { .. }),
        "no lag reading: persist latency alone decides"
    );
    t += Duration::from_secs(1);
    busy_tick(&g);
    assert!(
        matches!(g.adjust_with_lag_at(t, None, Some(ms(9)), 0), Adjustment::Raised { .. }),
        "without chat the drain's own lag does not hold it down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_sampler_records_how_late_timers_fire() {
    let w = std::sync::Arc::new(LatencyWindow::new(Duration::from_secs(5), 1000));
    let stop = tokio_util::sync::CancellationToken::new();
    let task = {
        let (w, stop) = (w.clone(), stop.clone());
        tokio::spawn(async move { sample_runtime_lag(&w, Duration::from_millis(2), stop).await })
    };
    // Block one of the two runtime threads and the sampler's timers fire late.
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(50))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.cancel();
    task.await.unwrap();
    assert!(w.p99().is_some(), "samples were taken");
}

#[test]
fn the_slowdown_sets_how_far_over_its_calm_chat_may_go() {
    for (slowdown, target_ms) in [(2.0, 40), (1.5, 30)] {
        let g = Governor::new(GovernorConfig { slowdown, ..config() });
        let mut t = Instant::now();
        calm(&g, &mut t, 20);
        assert_eq!(g.target(), Duration::from_millis(target_ms), "{slowdown} times a calm 20 ms");
        assert!(matches!(busy(&g, &mut t, Some(target_ms - 1), 0), Adjustment::Raised { .. }), "under the target");
        t += Duration::from_secs(1);
        assert!(matches!(busy(&g, &mut t, Some(target_ms + 1), 0), Adjustment::Cut { .. }), "over it");
    }
}
