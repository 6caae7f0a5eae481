//! The limiter conformance suite: buckets and leases behave alike in one process and in Redis.

use sluice_core::limits::Limiter;
use std::sync::Arc;
use std::time::Duration;

/// Generates one `#[tokio::test]` per limiter conformance test for the limiter made by
/// `$make`, an async closure returning `(Arc<dyn Limiter>, Guard)`.
#[macro_export]
macro_rules! limiter_conformance {
    ($make:expr) => {
        $crate::__limiter_tests!($make; buckets_allow_a_burst_then_refill, leases_are_counted_renewed_and_released, leases_lapse_without_renewal,
            valid_readings_are_listed_summed_and_maxed, a_lending_bucket_makes_later_takers_wait,
            unused_tokens_are_given_back_up_to_the_burst);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __limiter_tests {
    ($make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (limiter, _guard) = ($make)().await;
                $crate::limits::$name(limiter).await;
            }
        )*
    };
}

pub async fn buckets_allow_a_burst_then_refill(l: Arc<dyn Limiter>) {
    // 20 per second, bursts of 3: the burst goes at once, the fourth is refused.
    for i in 0..3 {
        assert!(l.take("user:a", 20.0, 3.0).await.unwrap(), "burst token {i}");
    }
    assert!(!l.take("user:a", 20.0, 3.0).await.unwrap(), "burst used up");
    assert!(l.take("user:b", 20.0, 3.0).await.unwrap(), "another key has its own bucket");
    // Refill: at 20/s a token is back after 50 ms; wait far longer than that.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(l.take("user:a", 20.0, 3.0).await.unwrap(), "refilled");
    // Taking many at once takes what is there, never more.
    assert_eq!(l.take_up_to("scope:c", 10, 0.5, 4.0).await.unwrap(), 4, "the burst, not the 10 asked");
    assert_eq!(l.take_up_to("scope:c", 10, 0.5, 4.0).await.unwrap(), 0, "empty (one token per 2 s)");
}

pub async fn unused_tokens_are_given_back_up_to_the_burst(l: Arc<dyn Limiter>) {
    // One token per 100 s: nothing refills during the test.
    let (rate, burst) = (0.01, 5.0);
    assert_eq!(l.take_up_to("scope:g", 5, rate, burst).await.unwrap(), 5);
    l.give_back("scope:g", 2, burst).await.unwrap();
    assert_eq!(l.take_up_to("scope:g", 5, rate, burst).await.unwrap(), 2, "the two given back, no more");
    l.give_back("scope:g", 50, burst).await.unwrap();
    assert_eq!(l.take_up_to("scope:g", 50, rate, burst).await.unwrap(), 5, "never more than the burst");
    l.give_back("scope:never-taken", 3, burst).await.unwrap();
    assert_eq!(l.take_up_to("scope:never-taken", 50, rate, burst).await.unwrap(), 5, "a bucket never taken from starts full");
}

pub async fn leases_are_counted_renewed_and_released(l: Arc<dyn Limiter>) {
    let ttl = Duration::from_secs(60);
    assert!(l.lease("conns:a", "c1", 2, ttl).await.unwrap());
    assert!(l.lease("conns:a", "c2", 2, ttl).await.unwrap());
    assert!(!l.lease("conns:a", "c3", 2, ttl).await.unwrap(), "at most 2");
    assert!(l.lease("conns:a", "c1", 2, ttl).await.unwrap(), "renewing a held lease always works");
    assert!(l.lease("conns:b", "c3", 2, ttl).await.unwrap(), "another key counts apart");
    l.release("conns:a", "c2").await;
    assert!(l.lease("conns:a", "c3", 2, ttl).await.unwrap(), "a released lease frees a place");
}

pub async fn leases_lapse_without_renewal(l: Arc<dyn Limiter>) {
    assert!(l.lease("conns:dead", "gone", 1, Duration::from_millis(100)).await.unwrap());
    assert!(!l.lease("conns:dead", "new", 1, Duration::from_secs(60)).await.unwrap());
    // Wait well past the lapse (a gateway died without releasing).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(l.lease("conns:dead", "new", 1, Duration::from_secs(60)).await.unwrap(), "a lapsed lease frees its place");
}

pub async fn valid_readings_are_listed_summed_and_maxed(l: Arc<dyn Limiter>) {
    assert_eq!(l.highest("p99").await.unwrap(), None, "nothing reported yet");
    assert_eq!(l.total("p99").await.unwrap(), 0.0);
    l.report("p99", "gw-a", 3.5, Duration::from_secs(60)).await.unwrap();
    l.report("p99", "gw-b", 12.25, Duration::from_millis(100)).await.unwrap();
    assert_eq!(l.highest("p99").await.unwrap(), Some(12.25));
    assert_eq!(l.total("p99").await.unwrap(), 15.75);
    let mut all = l.readings("p99").await.unwrap();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(all, vec![("gw-a".to_string(), 3.5), ("gw-b".to_string(), 12.25)]);
    l.report("p99", "gw-a", 4.0, Duration::from_secs(60)).await.unwrap();
    // gw-b stopped reporting (a gateway that died): its reading lapses.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(l.highest("p99").await.unwrap(), Some(4.0), "a node's new reading replaces its old one; lapsed ones drop out");
    assert_eq!(l.readings("p99").await.unwrap(), vec![("gw-a".to_string(), 4.0)]);
    assert_eq!(l.readings("other").await.unwrap(), vec![], "keys are apart");
}

pub async fn a_lending_bucket_makes_later_takers_wait(l: Arc<dyn Limiter>) {
    // 100 per second, bursts of 10.
    assert_eq!(l.lend("fleet", 10, 100.0, 10.0).await.unwrap(), Duration::ZERO, "the burst is there");
    let first = l.lend("fleet", 50, 100.0, 10.0).await.unwrap();
    assert!(first > Duration::from_millis(400) && first <= Duration::from_millis(510), "50 more at 100/s: about 0.5 s, {first:?}");
    let second = l.lend("fleet", 10, 100.0, 10.0).await.unwrap();
    assert!(second > first, "a later taker waits behind the debt: {second:?} after {first:?}");
}
