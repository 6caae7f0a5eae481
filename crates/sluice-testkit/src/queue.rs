//! The spike queue conformance suite (SQS FIFO semantics).

use bytes::Bytes;
use sluice_core::queue::{Enqueue, SpikeQueue, TenantWeights};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Generates one `#[tokio::test]` per queue conformance test for the queue made by `$make`,
/// an async closure returning `(Arc<dyn SpikeQueue>, Guard)` of a fresh, empty queue that
/// weighs tenants by [`suite_weights`].
#[macro_export]
macro_rules! queue_conformance {
    ($make:expr) => {
        $crate::__queue_tests!($make;
            order_within_group_and_group_blocking, visibility_timeout_redelivers, release_and_extend,
            dead_letter_keeps_reason_and_redrives, deduplicates_within_window, stale_receipts_are_refused,
            groups_never_processed_concurrently, a_small_tenant_is_not_held_behind_a_large_one,
            a_heavier_tenant_drains_by_its_weight, held_messages_wait_until_released_by_key);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __queue_tests {
    ($make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (queue, _guard) = ($make)().await;
                $crate::queue::$name(queue).await;
            }
        )*
    };
}

/// Long enough that nothing expires by accident during a test step.
const LONG: Duration = Duration::from_secs(60);
const SHORT_WAIT: Duration = Duration::from_millis(50);
const WAIT: Duration = Duration::from_secs(5);

/// The tenant weights every queue under the suite is made with: `tenant-a` counts 3. (On SQS
/// with its default 4 lanes, `tenant-a` and `tenant-b` hash to different lanes.)
pub fn suite_weights() -> Arc<TenantWeights> {
    Arc::new(TenantWeights::new(HashMap::from([("tenant-a".to_string(), 3)])))
}

pub fn msg(group: &str, id: &str) -> Enqueue {
    tenant_msg("", group, id)
}

pub fn tenant_msg(tenant: &str, group: &str, id: &str) -> Enqueue {
    Enqueue { dedup_id: id.to_string(), group: group.to_string(), tenant: tenant.to_string(), body: Bytes::from(format!("body of {id}")) }
}

pub async fn order_within_group_and_group_blocking(q: Arc<dyn SpikeQueue>) {
    let out = q.send(vec![msg("g1", "a1"), msg("g1", "a2"), msg("g2", "b1"), msg("g1", "a3")]).await.unwrap();
    assert_eq!((out.enqueued, out.duplicates), (4, 0));
    let first = q.receive(1, WAIT, LONG).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].dedup_id, "a1");
    assert_eq!(first[0].body, Bytes::from("body of a1"));
    assert_eq!(first[0].receive_count, 1);
    let second = q.receive(10, WAIT, LONG).await.unwrap();
    assert_eq!(second.iter().map(|d| d.dedup_id.as_str()).collect::<Vec<_>>(), vec!["b1"], "g1 is blocked while a1 is in flight");
    assert!(q.receive(10, SHORT_WAIT, LONG).await.unwrap().is_empty());
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (2, 2));
    q.ack(&[first[0].receipt.clone()]).await.unwrap();
    let rest = q.receive(10, WAIT, LONG).await.unwrap();
    assert_eq!(rest.iter().map(|d| d.dedup_id.as_str()).collect::<Vec<_>>(), vec!["a2", "a3"], "the rest of g1, in order");
    let receipts: Vec<_> = rest.iter().chain(second.iter()).map(|d| d.receipt.clone()).collect();
    q.ack(&receipts).await.unwrap();
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (0, 0));
}

pub async fn visibility_timeout_redelivers(q: Arc<dyn SpikeQueue>) {
    q.send(vec![msg("g", "m1"), msg("g", "m2")]).await.unwrap();
    let d = q.receive(1, WAIT, Duration::from_millis(300)).await.unwrap();
    assert_eq!(d[0].dedup_id, "m1");
    // Not acked: after the timeout the same message comes back first, its count grown.
    let again = q.receive(1, WAIT, LONG).await.unwrap();
    assert_eq!(again[0].dedup_id, "m1");
    assert_eq!(again[0].receive_count, 2);
    assert_ne!(again[0].receipt, d[0].receipt);
    q.ack(&[again[0].receipt.clone()]).await.unwrap();
    let next = q.receive(1, WAIT, LONG).await.unwrap();
    assert_eq!((next[0].dedup_id.as_str(), next[0].receive_count), ("m2", 1));
}

pub async fn release_and_extend(q: Arc<dyn SpikeQueue>) {
    q.send(vec![msg("g", "m1"), msg("h", "n1")]).await.unwrap();
    let d = q.receive(2, WAIT, Duration::from_millis(400)).await.unwrap();
    assert_eq!(d.len(), 2);
    let (m1, n1) = if d[0].dedup_id == "m1" { (&d[0], &d[1]) } else { (&d[1], &d[0]) };
    q.release(std::slice::from_ref(&m1.receipt)).await.unwrap();
    q.extend(std::slice::from_ref(&n1.receipt), LONG).await.unwrap();
    let back = q.receive(10, WAIT, LONG).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!((back[0].dedup_id.as_str(), back[0].receive_count), ("m1", 2));
    // n1's visibility was extended: it does not come back after its original timeout.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(q.receive(10, SHORT_WAIT, LONG).await.unwrap().is_empty());
    q.ack(&[n1.receipt.clone(), back[0].receipt.clone()]).await.unwrap();
}

pub async fn dead_letter_keeps_reason_and_redrives(q: Arc<dyn SpikeQueue>) {
    q.send(vec![tenant_msg("acme", "g", "poison"), tenant_msg("acme", "g", "fine")]).await.unwrap();
    let d = q.receive(1, WAIT, LONG).await.unwrap();
    assert_eq!(d[0].tenant, "acme");
    q.dead_letter(&d[0].receipt, "undecodable body").await.unwrap();
    let next = q.receive(1, WAIT, LONG).await.unwrap();
    assert_eq!(next[0].dedup_id, "fine", "the group moves on past a dead letter");
    q.ack(&[next[0].receipt.clone()]).await.unwrap();
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].dedup_id.as_str(), dead[0].reason.as_str(), dead[0].group.as_str()), ("poison", "undecodable body", "g"));
    assert_eq!(dead[0].body, Bytes::from("body of poison"));
    assert_eq!(dead[0].tenant, "acme", "the tenant survives dead-lettering");
    assert_eq!(q.stats().await.unwrap().dead, 1);
    assert_eq!(q.redrive(10).await.unwrap(), 1);
    assert_eq!(q.stats().await.unwrap().dead, 0);
    let again = q.receive(1, WAIT, LONG).await.unwrap();
    assert_eq!((again[0].dedup_id.as_str(), again[0].receive_count, again[0].tenant.as_str()), ("poison", 1, "acme"));
    q.ack(&[again[0].receipt.clone()]).await.unwrap();
    assert!(q.dead_letters(10).await.unwrap().is_empty());
}

pub async fn deduplicates_within_window(q: Arc<dyn SpikeQueue>) {
    let out = q.send(vec![msg("g", "x"), msg("g", "x"), msg("g", "y")]).await.unwrap();
    assert_eq!((out.enqueued, out.duplicates), (2, 1));
    // Across calls a backend may not know it dropped a repeat (SQS does not say), but it
    // never delivers one.
    let out = q.send(vec![msg("g", "x")]).await.unwrap();
    assert_eq!(out.enqueued + out.duplicates, 1);
    let d = q.receive(10, WAIT, LONG).await.unwrap();
    assert_eq!(d.iter().map(|d| d.dedup_id.as_str()).collect::<Vec<_>>(), vec!["x", "y"]);
    q.ack(&d.iter().map(|d| d.receipt.clone()).collect::<Vec<_>>()).await.unwrap();
    // SQS also drops a repeat sent after the first was deleted (within 5 minutes); moto does
    // not, so that part is checked per backend (the embedded queue's durability tests), and
    // the store's msg_id idempotency makes it harmless where it is missing.
}

pub async fn stale_receipts_are_refused(q: Arc<dyn SpikeQueue>) {
    q.send(vec![msg("g", "m")]).await.unwrap();
    let old = q.receive(1, WAIT, Duration::from_millis(200)).await.unwrap();
    let new = q.receive(1, WAIT, LONG).await.unwrap();
    assert_eq!(new[0].receive_count, 2);
    assert!(q.dead_letter(&old[0].receipt, "late").await.is_err(), "a stale receipt cannot dead-letter");
    q.release(&[old[0].receipt.clone()]).await.unwrap();
    assert!(q.receive(1, SHORT_WAIT, LONG).await.unwrap().is_empty(), "a stale release changes nothing");
    q.ack(&[new[0].receipt.clone()]).await.unwrap();
    assert_eq!(q.stats().await.unwrap().visible + q.stats().await.unwrap().in_flight, 0);
}

/// Invariant 5: with many consumers, a group is never processed by two at once, and its
/// messages are processed in order.
pub async fn groups_never_processed_concurrently(q: Arc<dyn SpikeQueue>) {
    const GROUPS: usize = 20;
    const PER_GROUP: usize = 15;
    let mut batch = Vec::new();
    for i in 0..PER_GROUP {
        for g in 0..GROUPS {
            batch.push(msg(&format!("g{g}"), &format!("g{g}-{i:03}")));
        }
    }
    q.send(batch).await.unwrap();
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let (q, busy, seen) = (q.clone(), busy.clone(), seen.clone());
        consumers.push(tokio::spawn(async move {
            loop {
                let got = q.receive(3, Duration::from_millis(300), LONG).await.unwrap();
                if got.is_empty() {
                    return;
                }
                let groups: HashSet<String> = got.iter().map(|d| d.group.clone()).collect();
                for g in &groups {
                    assert!(busy.lock().unwrap().insert(g.clone()), "group {g} handed to two consumers");
                }
                tokio::task::yield_now().await;
                for d in &got {
                    seen.lock().unwrap().entry(d.group.clone()).or_default().push(d.dedup_id.clone());
                }
                for g in &groups {
                    busy.lock().unwrap().remove(g);
                }
                q.ack(&got.iter().map(|d| d.receipt.clone()).collect::<Vec<_>>()).await.unwrap();
            }
        }));
    }
    for c in consumers {
        c.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), GROUPS);
    for (g, ids) in seen.iter() {
        let want: Vec<String> = (0..PER_GROUP).map(|i| format!("{g}-{i:03}")).collect();
        assert_eq!(ids, &want, "group {g} processed in order, each message once");
    }
}

/// A tenant that enqueues a few messages after another tenant enqueued many gets them out in
/// its fair share, not after the other tenant's backlog.
pub async fn a_small_tenant_is_not_held_behind_a_large_one(q: Arc<dyn SpikeQueue>) {
    let big: Vec<Enqueue> = (0..300).map(|i| tenant_msg("big", &format!("big-{i}"), &format!("b{i}"))).collect();
    q.send(big).await.unwrap();
    let small: Vec<Enqueue> = (0..10).map(|i| tenant_msg("small", &format!("small-{i}"), &format!("s{i}"))).collect();
    q.send(small).await.unwrap();
    let mut order = Vec::new();
    while order.len() < 310 {
        let got = q.receive(10, WAIT, LONG).await.unwrap();
        assert!(!got.is_empty(), "messages are left but the queue handed out none after {}", order.len());
        q.ack(&got.iter().map(|d| d.receipt.clone()).collect::<Vec<_>>()).await.unwrap();
        order.extend(got.into_iter().map(|d| d.tenant));
    }
    let last_small = order.iter().rposition(|t| t == "small").expect("small was delivered");
    assert_eq!(order.iter().filter(|t| *t == "small").count(), 10);
    assert!(last_small < 150, "small's last message went out at position {last_small} of 310: behind big's backlog");
}

/// Two tenants with backlog share the receives by their weights (3 to 1, see
/// [`suite_weights`]): the heavier takes more, the lighter is not starved.
pub async fn a_heavier_tenant_drains_by_its_weight(q: Arc<dyn SpikeQueue>) {
    for t in ["tenant-a", "tenant-b"] {
        q.send((0..240).map(|i| tenant_msg(t, &format!("{t}-{i}"), &format!("{t}/{i}"))).collect()).await.unwrap();
    }
    let mut taken: HashMap<String, usize> = HashMap::new();
    let mut total = 0;
    while total < 160 {
        let got = q.receive(10, WAIT, LONG).await.unwrap();
        assert!(!got.is_empty(), "messages are left but the queue handed out none after {total}");
        q.ack(&got.iter().map(|d| d.receipt.clone()).collect::<Vec<_>>()).await.unwrap();
        total += got.len();
        for d in got {
            *taken.entry(d.tenant).or_default() += 1;
        }
    }
    let (a, b) = (taken.get("tenant-a").copied().unwrap_or(0), taken.get("tenant-b").copied().unwrap_or(0));
    assert!(a >= 2 * b, "tenant-a (weight 3) took {a} of the first {total}, tenant-b (weight 1) {b}");
    assert!(b >= total / 8, "tenant-b took {b} of the first {total}: starved");
}

/// A paused (or rated) scope's messages are moved aside under its key, many in one call, are
/// not received while held, and come back in order (receive count reset, tenant and group
/// kept) when their key is released.
pub async fn held_messages_wait_until_released_by_key(q: Arc<dyn SpikeQueue>) {
    q.send(vec![
        tenant_msg("acme", "r1", "a1"),
        tenant_msg("acme", "r2", "a2"),
        tenant_msg("globex", "r3", "g1"),
        tenant_msg("acme", "r4", "a3"),
    ])
    .await
    .unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        let batch = q.receive(10, WAIT, LONG).await.unwrap();
        assert!(!batch.is_empty());
        got.extend(batch);
    }
    got.sort_by(|a, b| a.dedup_id.cmp(&b.dedup_id));
    // acme's three go aside in one call; globex waits under a rate's key (see `Scope::rate_key`).
    let of = |t: &str| got.iter().filter(|d| d.tenant == t).map(|d| d.receipt.clone()).collect::<Vec<_>>();
    assert_eq!(q.hold(&of("acme"), "tenant:acme").await.unwrap(), 3);
    assert_eq!(q.hold(&of("globex"), "rate:tenant:globex").await.unwrap(), 1);
    assert_eq!(q.hold(&of("acme"), "tenant:acme").await.unwrap(), 0, "receipts no longer current are left alone");
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight, stats.held), (0, 0, 4), "{stats:?}");
    assert!(q.receive(10, SHORT_WAIT, LONG).await.unwrap().is_empty(), "held messages are not received");
    assert_eq!(q.release_held("tenant:nobody", 10).await.unwrap(), 0);
    // A release moves at most as many as asked (a rate's release each second).
    assert_eq!(q.release_held("tenant:acme", 2).await.unwrap(), 2);
    assert_eq!(q.stats().await.unwrap().held, 2);
    assert_eq!(q.release_held("tenant:acme", 10).await.unwrap(), 1);
    assert_eq!(q.stats().await.unwrap().held, 1);
    let mut back = Vec::new();
    while back.len() < 3 {
        let batch = q.receive(10, WAIT, LONG).await.unwrap();
        assert!(!batch.is_empty(), "released messages are received again");
        back.extend(batch);
    }
    back.sort_by(|a, b| a.dedup_id.cmp(&b.dedup_id));
    let seen: Vec<(&str, &str, &str, u32)> =
        back.iter().map(|d| (d.dedup_id.as_str(), d.group.as_str(), d.tenant.as_str(), d.receive_count)).collect();
    assert_eq!(seen, vec![("a1", "r1", "acme", 1), ("a2", "r2", "acme", 1), ("a3", "r4", "acme", 1)]);
    assert_eq!(back[0].body, Bytes::from("body of a1"));
    q.ack(&back.iter().map(|d| d.receipt.clone()).collect::<Vec<_>>()).await.unwrap();
    assert!(q.receive(10, SHORT_WAIT, LONG).await.unwrap().is_empty(), "globex is still held");
    assert_eq!(q.release_held("tenant:globex", 10).await.unwrap(), 0, "a pause's key is not a rate's");
    assert_eq!(q.release_held("rate:tenant:globex", 10).await.unwrap(), 1);
    let g = q.receive(10, WAIT, LONG).await.unwrap();
    assert_eq!((g.len(), g[0].dedup_id.as_str()), (1, "g1"));
    q.ack(&[g[0].receipt.clone()]).await.unwrap();
    assert_eq!(q.stats().await.unwrap().held, 0);
}
