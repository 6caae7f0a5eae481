//! The embedded queue's scheduler: which visible message goes out next. Pure state, no I/O.
//!
//! - Groups (a room): a group is handed out in order, as much of it as a receive and its
//!   tenant's turn take, and not again while one of its messages is in flight.
//! - Tenants: a ready group waits in the ready list of the tenant of its first pending
//!   message. Tenants with ready groups take turns by deficit round robin: a turn lets a
//!   tenant take `QUANTUM × weight` messages, and a tenant keeps its place when a receive
//!   is full in the middle of its turn. So no tenant with work ready waits more than one
//!   round, and over any stretch where tenants stay backlogged their shares follow their
//!   weights.
//! - Visibility: an in-flight message has a deadline; `expire` makes it visible again, at the
//!   front of its tenant's ready list.

use sluice_core::queue::TenantWeights;
use smallvec::SmallVec;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use tokio::time::Instant;

/// Messages a tenant of weight 1 may take per turn.
pub(crate) const QUANTUM: i64 = 16;

/// One queued message. Compact on purpose (24 bytes): a spike keeps a million of these in
/// memory (groups and tenants are slots of their own tables, and whether a message is in
/// flight, until when, is the map of the few leases, see [`Scheduler`]).
pub(crate) struct Entry {
    group: u32,
    tenant: u32,
    pub(crate) receive_count: u32,
    pub(crate) enqueued_at_ms: i64,
}

struct Group {
    /// The hash of the group's name (see [`group_key`]), to unmap it when empty.
    key: u64,
    /// Visible messages, ascending (one-offs: one each; the inline room covers two).
    pending: SmallVec<[u64; 2]>,
    in_flight: u32,
    in_ready: bool,
}

struct Tenant {
    name: Arc<str>,
    ready: VecDeque<u32>,
    /// Messages the tenant may still take in its turn.
    deficit: i64,
    in_ring: bool,
    /// Messages of the tenant in the queue, pending or in flight.
    backlog: u64,
}

/// A seed for this process's keys (they are never stored: the index is rebuilt from the file
/// at start), so that names crafted to collide cannot be prepared in advance.
fn seed() -> u64 {
    static SEED: std::sync::LazyLock<u64> =
        std::sync::LazyLock::new(|| std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u64));
    *SEED
}

/// A 128-bit key of a deduplication id, looked up instead of keeping a copy of every message
/// id (XXH3-128, seeded: a collision, which would drop a message as a duplicate of another,
/// is about as likely as a random UUID repeating). Two words rather than a `u128`, whose
/// 16-byte alignment would pad every map entry.
pub(crate) type NameKey = [u64; 2];

pub(crate) fn name_key(name: &str) -> NameKey {
    let h = xxhash_rust::xxh3::xxh3_128_with_seed(name.as_bytes(), seed());
    [h as u64, (h >> 64) as u64]
}

/// A 64-bit key of a group's name. A collision (about one in 10^7 with a million groups
/// queued) makes two rooms share one group's order: both stay in order, one waits for the
/// other, nothing is lost.
fn group_key(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), seed())
}

/// Maps and sets keyed by the keys above, or by slots and seqs: foldhash instead of SipHash,
/// which a spike's million messages paid for several times each in the accept path.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Slots reused through a free list.
struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Slab<T> {
    fn new() -> Self {
        Slab { slots: Vec::new(), free: Vec::new() }
    }

    fn insert(&mut self, v: T) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(v);
                i
            }
            None => {
                self.slots.push(Some(v));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn remove(&mut self, i: u32) -> Option<T> {
        let v = self.slots.get_mut(i as usize)?.take();
        if v.is_some() {
            self.free.push(i);
        }
        v
    }

    /// Drops the empty slots at the end, then gives back spare capacity once the slab is
    /// mostly empty.
    fn shrink(&mut self) {
        let before = self.slots.len();
        while matches!(self.slots.last(), Some(None)) {
            self.slots.pop();
        }
        if self.slots.len() < before {
            let len = self.slots.len();
            self.free.retain(|&i| (i as usize) < len);
        }
        if super::shrinkable(self.slots.len(), self.slots.capacity()) {
            self.slots.shrink_to(self.slots.len() * 2);
        }
        if super::shrinkable(self.free.len(), self.free.capacity()) {
            self.free.shrink_to(self.free.len() * 2);
        }
    }

    fn get(&self, i: u32) -> Option<&T> {
        self.slots.get(i as usize)?.as_ref()
    }

    fn get_mut(&mut self, i: u32) -> Option<&mut T> {
        self.slots.get_mut(i as usize)?.as_mut()
    }
}

/// The scheduler's state.
pub(crate) struct Scheduler {
    pub(crate) entries: BTreeMap<u64, Entry>,
    groups: Slab<Group>,
    group_ids: FastMap<u64, u32>,
    tenants: Slab<Tenant>,
    tenant_ids: HashMap<Arc<str>, u32>,
    /// Tenants with ready groups, in turn order; the front one is being served.
    ring: VecDeque<u32>,
    pub(crate) deadlines: BTreeSet<(Instant, u64)>,
    /// The visibility deadline of each message in flight (and so which messages are).
    leases: FastMap<u64, Instant>,
    weights: Arc<TenantWeights>,
}

impl Scheduler {
    pub(crate) fn new(weights: Arc<TenantWeights>) -> Self {
        Scheduler {
            entries: BTreeMap::new(),
            groups: Slab::new(),
            group_ids: FastMap::default(),
            tenants: Slab::new(),
            tenant_ids: HashMap::new(),
            ring: VecDeque::new(),
            deadlines: BTreeSet::new(),
            leases: FastMap::default(),
            weights,
        }
    }

    /// Gives back the memory a spike grew the index to, once it is mostly empty.
    pub(crate) fn shrink(&mut self) {
        self.groups.shrink();
        if super::shrinkable(self.group_ids.len(), self.group_ids.capacity()) {
            self.group_ids.shrink_to(self.group_ids.len() * 2);
        }
    }

    /// Messages of `tenant` in the queue, pending or in flight.
    pub(crate) fn backlog(&self, tenant: &str) -> u64 {
        self.tenant_ids.get(tenant).and_then(|&t| self.tenants.get(t)).map_or(0, |t| t.backlog)
    }

    /// Every tenant with messages and its backlog.
    pub(crate) fn backlogs(&self) -> Vec<(String, u64)> {
        self.tenants.slots.iter().flatten().filter(|t| t.backlog > 0).map(|t| (t.name.to_string(), t.backlog)).collect()
    }

    fn mark_ready(&mut self, group: u32, front: bool) {
        let g = self.groups.get_mut(group).expect("group exists");
        if g.in_flight > 0 || g.in_ready {
            return;
        }
        let Some(&head) = g.pending.first() else { return };
        g.in_ready = true;
        let tenant = self.entries[&head].tenant;
        let t = self.tenants.get_mut(tenant).expect("tenant of an entry exists");
        if front {
            t.ready.push_front(group);
        } else {
            t.ready.push_back(group);
        }
        if !t.in_ring {
            t.in_ring = true;
            self.ring.push_back(tenant);
        }
    }

    fn group_id(&mut self, name: &str) -> u32 {
        let key = group_key(name);
        if let Some(&g) = self.group_ids.get(&key) {
            return g;
        }
        let g = self.groups.insert(Group { key, pending: SmallVec::new(), in_flight: 0, in_ready: false });
        self.group_ids.insert(key, g);
        g
    }

    fn tenant_id(&mut self, name: &str) -> u32 {
        if let Some(&t) = self.tenant_ids.get(name) {
            return t;
        }
        let name: Arc<str> = Arc::from(name);
        let t = self.tenants.insert(Tenant { name: name.clone(), ready: VecDeque::new(), deficit: 0, in_ring: false, backlog: 0 });
        self.tenant_ids.insert(name, t);
        t
    }

    fn drop_group_if_idle(&mut self, group: u32) {
        let g = self.groups.get(group).expect("group exists");
        if g.pending.is_empty() && g.in_flight == 0 && !g.in_ready {
            let key = g.key;
            self.groups.remove(group);
            self.group_ids.remove(&key);
        }
    }

    fn drop_tenant_if_idle(&mut self, tenant: u32) {
        let t = self.tenants.get(tenant).expect("tenant exists");
        if t.backlog == 0 && !t.in_ring {
            let name = t.name.clone();
            self.tenants.remove(tenant);
            self.tenant_ids.remove(&name);
        }
    }

    /// Adds a visible message at the end of its group.
    pub(crate) fn push(&mut self, seq: u64, group: &str, tenant: &str, receive_count: u32, enqueued_at_ms: i64) {
        let group = self.group_id(group);
        let tenant = self.tenant_id(tenant);
        self.tenants.get_mut(tenant).expect("just made").backlog += 1;
        insert_sorted(&mut self.groups.get_mut(group).expect("just made").pending, seq);
        self.entries.insert(seq, Entry { group, tenant, receive_count, enqueued_at_ms });
        self.mark_ready(group, false);
    }

    /// Makes an in-flight message visible again.
    pub(crate) fn unflight(&mut self, seq: u64) {
        let Some(deadline) = self.leases.remove(&seq) else { return };
        self.deadlines.remove(&(deadline, seq));
        let group = self.entries.get(&seq).expect("a message in flight is queued").group;
        let g = self.groups.get_mut(group).expect("group of an entry exists");
        g.in_flight -= 1;
        insert_sorted(&mut g.pending, seq);
        self.mark_ready(group, true);
    }

    /// Removes a message (acked or dead-lettered); false when it was not queued.
    pub(crate) fn remove(&mut self, seq: u64) -> bool {
        let Some(e) = self.entries.remove(&seq) else { return false };
        let g = self.groups.get_mut(e.group).expect("group of an entry exists");
        if let Some(deadline) = self.leases.remove(&seq) {
            self.deadlines.remove(&(deadline, seq));
            g.in_flight -= 1;
        } else if let Some(i) = g.pending.iter().position(|&p| p == seq) {
            g.pending.remove(i);
        }
        self.mark_ready(e.group, false);
        self.drop_group_if_idle(e.group);
        self.tenants.get_mut(e.tenant).expect("tenant of an entry exists").backlog -= 1;
        self.drop_tenant_if_idle(e.tenant);
        true
    }

    /// Messages in flight.
    pub(crate) fn in_flight(&self) -> u64 {
        self.leases.len() as u64
    }

    /// Whether `seq` is in flight with receive count `count` (the delivery a receipt names).
    pub(crate) fn is_delivery(&self, seq: u64, count: u32) -> bool {
        self.leases.contains_key(&seq) && self.entries.get(&seq).is_some_and(|e| e.receive_count == count)
    }

    /// Moves the visibility deadline of a message in flight; false when it is not in flight.
    pub(crate) fn extend(&mut self, seq: u64, deadline: Instant) -> bool {
        let Some(old) = self.leases.get_mut(&seq) else { return false };
        let old = std::mem::replace(old, deadline);
        self.deadlines.remove(&(old, seq));
        self.deadlines.insert((deadline, seq));
        true
    }

    /// Makes every message whose visibility ended by `now` visible again.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, seq)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.unflight(seq);
        }
    }

    /// Takes up to `max` visible messages, tenants by deficit round robin and each group in
    /// order, marks them in flight until `deadline` and returns their seqs and receive counts.
    pub(crate) fn pick(&mut self, max: usize, deadline: Instant) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(&tid) = self.ring.front() else { break };
            let t = self.tenants.get_mut(tid).expect("a tenant in the ring exists");
            if t.deficit == 0 {
                t.deficit = QUANTUM * i64::from(self.weights.of(&t.name));
            }
            while t.deficit > 0 && out.len() < max {
                let Some(gid) = t.ready.pop_front() else { break };
                let Some(g) = self.groups.get_mut(gid) else { continue };
                g.in_ready = false;
                if g.in_flight > 0 {
                    continue;
                }
                if g.pending.is_empty() {
                    let key = g.key;
                    self.groups.remove(gid);
                    self.group_ids.remove(&key);
                    continue;
                }
                while out.len() < max && t.deficit > 0 && !g.pending.is_empty() {
                    let seq = g.pending.remove(0);
                    g.in_flight += 1;
                    let e = self.entries.get_mut(&seq).expect("pending entry exists");
                    e.receive_count += 1;
                    self.leases.insert(seq, deadline);
                    self.deadlines.insert((deadline, seq));
                    t.deficit -= 1;
                    out.push((seq, e.receive_count));
                }
            }
            if t.ready.is_empty() {
                // Out of work: leaves the ring and forgets its turn (a deficit is not banked).
                self.ring.pop_front();
                t.in_ring = false;
                t.deficit = 0;
                self.drop_tenant_if_idle(tid);
            } else if t.deficit == 0 {
                self.ring.rotate_left(1);
            }
        }
        out
    }

    #[cfg(test)]
    fn tenant_of(&self, seq: u64) -> Arc<str> {
        self.tenants.get(self.entries[&seq].tenant).expect("tenant").name.clone()
    }

    #[cfg(test)]
    fn group_of(&self, seq: u64) -> u32 {
        self.entries[&seq].group
    }

    #[cfg(test)]
    fn tenant_in_ring(&self, name: &str) -> bool {
        self.tenant_ids.get(name).and_then(|&t| self.tenants.get(t)).is_some_and(|t| t.in_ring)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.tenant_ids.is_empty() && self.ring.is_empty() && self.group_ids.is_empty() && self.leases.is_empty()
    }
}

fn insert_sorted(pending: &mut SmallVec<[u64; 2]>, seq: u64) {
    match pending.last() {
        Some(&last) if last > seq => {
            let i = pending.partition_point(|&p| p < seq);
            pending.insert(i, seq);
        }
        _ => pending.push(seq),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn weights(pairs: &[(&str, u32)]) -> Arc<TenantWeights> {
        Arc::new(TenantWeights::new(pairs.iter().map(|(t, w)| (t.to_string(), *w)).collect()))
    }

    #[test]
    fn a_queued_message_costs_the_index_24_bytes_and_unpadded_keys() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        assert_eq!(std::mem::size_of::<(NameKey, i64)>(), 24, "a dedup map entry");
        assert_eq!(std::mem::size_of::<(u64, u32)>(), 16, "a group map entry");
    }

    #[test]
    fn extending_moves_the_deadline_and_expiry_follows_it() {
        let mut s = Scheduler::new(weights(&[]));
        s.push(1, "room", "t", 0, 0);
        let now = Instant::now();
        assert_eq!(s.pick(1, now + Duration::from_secs(1)), vec![(1, 1)]);
        assert!(s.extend(1, now + Duration::from_secs(10)));
        s.expire(now + Duration::from_secs(2));
        assert!(s.pick(1, now + Duration::from_secs(20)).is_empty(), "extended: still in flight");
        s.expire(now + Duration::from_secs(11));
        assert_eq!(s.pick(1, now + Duration::from_secs(30)), vec![(1, 2)], "visible again after the new deadline");
        assert!(s.remove(1));
        assert!(!s.extend(1, now), "gone: nothing to extend");
        assert!(s.is_empty());
    }

    /// Receives `max` at a time and acks at once, until `n` messages went out; returns the tenants in order.
    fn drain(s: &mut Scheduler, max: usize, n: usize) -> Vec<Arc<str>> {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut order = Vec::new();
        while order.len() < n {
            let picked = s.pick(max, far);
            if picked.is_empty() {
                break;
            }
            for (seq, _) in picked {
                order.push(s.tenant_of(seq));
                assert!(s.remove(seq));
            }
        }
        order
    }

    #[test]
    fn a_small_tenant_behind_a_large_one_goes_out_in_the_first_round() {
        let mut s = Scheduler::new(weights(&[]));
        for i in 0..10_000u64 {
            s.push(i, &format!("a{i}"), "big", 0, 0);
        }
        for i in 0..20u64 {
            s.push(10_000 + i, &format!("b{i}"), "small", 0, 0);
        }
        let order = drain(&mut s, 10, 60);
        let small_done = order.iter().rposition(|t| &**t == "small").unwrap();
        // Two turns of each: 16 + 16 + 16 + 4.
        assert!(small_done < 2 * QUANTUM as usize + 20, "small finished at {small_done}: {order:?}");
        assert_eq!(order.iter().filter(|t| &***t == "small").count(), 20);
    }

    #[test]
    fn backlogs_count_pending_and_in_flight_messages_per_tenant() {
        let mut s = Scheduler::new(weights(&[]));
        for i in 0..5u64 {
            s.push(i, &format!("g{i}"), if i < 3 { "a" } else { "b" }, 0, 0);
        }
        let far = Instant::now() + Duration::from_secs(3600);
        let picked = s.pick(2, far);
        let mut b = s.backlogs();
        b.sort();
        assert_eq!(b, vec![("a".to_string(), 3), ("b".to_string(), 2)], "in flight still counts");
        for (seq, _) in picked {
            s.remove(seq);
        }
        assert_eq!(s.backlogs().iter().map(|(_, n)| n).sum::<u64>(), 3);
        for seq in 0..5 {
            s.remove(seq);
        }
        assert!(s.backlogs().is_empty(), "a tenant without messages is gone");
    }

    #[test]
    fn a_group_stays_in_order_and_is_never_out_twice() {
        let mut s = Scheduler::new(weights(&[]));
        for i in 0..6u64 {
            s.push(i, "room", if i % 2 == 0 { "a" } else { "b" }, 0, 0);
        }
        let far = Instant::now() + Duration::from_secs(3600);
        let first = s.pick(2, far);
        assert_eq!(first.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!(s.pick(10, far).is_empty(), "the group is in flight");
        s.remove(0);
        assert!(s.pick(10, far).is_empty(), "one message of the group is still in flight");
        s.unflight(1);
        let again = s.pick(10, far);
        assert_eq!(again.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert_eq!(again[0].1, 2, "the receive count grows");
    }

    /// Queues `spec` (weight, messages, groups per tenant) before any is received: tenant after
    /// tenant, or interleaved.
    fn queued(spec: &[(u32, usize, usize)], interleave: bool) -> (Scheduler, Vec<String>, Arc<TenantWeights>) {
        let names: Vec<String> = (0..spec.len()).map(|i| format!("t{i}")).collect();
        let w = weights(&names.iter().zip(spec).map(|(n, (w, _, _))| (n.as_str(), *w)).collect::<Vec<_>>());
        let mut s = Scheduler::new(w.clone());
        let mut seq = 0u64;
        let longest = spec.iter().map(|(_, n, _)| *n).max().unwrap_or(0);
        let mut order: Vec<(usize, usize)> = (0..longest).flat_map(|k| (0..spec.len()).map(move |i| (i, k))).collect();
        if !interleave {
            order.sort();
        }
        for (i, k) in order {
            let (_, n, groups) = spec[i];
            if k < n {
                s.push(seq, &format!("{}-g{}", names[i], k % groups), &names[i], 0, 0);
                seq += 1;
            }
        }
        (s, names, w)
    }

    #[test]
    fn a_slab_shrinks_around_its_live_slots() {
        let mut slab = Slab::new();
        let ids: Vec<u32> = (0..10_000u32).map(|i| slab.insert(i)).collect();
        for &i in &ids {
            if i != 5 && i != 700 {
                slab.remove(i);
            }
        }
        slab.shrink();
        assert_eq!(slab.slots.len(), 701, "the empty slots after the last live one are dropped");
        assert!(slab.slots.capacity() < 10_000 && slab.free.iter().all(|&i| i < 701));
        assert_eq!((slab.get(5), slab.get(700)), (Some(&5), Some(&700)));
        let again = slab.insert(42);
        assert!(again < 701 && again != 5 && again != 700, "a free slot is reused");
        slab.remove(700);
        slab.shrink();
        assert_eq!(slab.get(5), Some(&5));
        assert!(slab.slots.len() <= 700);
    }

    proptest! {
        /// Every message goes out exactly once, each group in order, and a tenant with ready work
        /// is served within one round: between its turns the others take at most their own turns.
        #[test]
        fn no_tenant_with_backlog_starves(
            spec in prop::collection::vec((1u32..5, 1usize..300, 1usize..6), 1..6),
            max in 1usize..40,
            interleave: bool,
        ) {
            let (mut s, names, w) = queued(&spec, interleave);
            let total: usize = spec.iter().map(|(_, n, _)| n).sum();
            let round: i64 = names.iter().map(|n| QUANTUM * i64::from(w.of(n))).sum();
            let far = Instant::now() + Duration::from_secs(3600);
            let mut per_group_last: HashMap<u32, u64> = HashMap::new();
            // Messages handed to others while the tenant was in the ring and not served.
            let mut waited: HashMap<String, i64> = HashMap::new();
            let mut out = 0usize;
            while out < total {
                let picked = s.pick(max, far);
                prop_assert!(!picked.is_empty(), "messages are left but none was handed out");
                for (sq, count) in picked {
                    prop_assert_eq!(count, 1);
                    let tenant = s.tenant_of(sq);
                    let last = per_group_last.insert(s.group_of(sq), sq);
                    prop_assert!(last.is_none_or(|l| l < sq), "group out of order");
                    for n in &names {
                        if **n == *tenant {
                            waited.insert(n.clone(), 0);
                        } else if s.tenant_in_ring(n) {
                            let wt = waited.entry(n.clone()).or_default();
                            *wt += 1;
                            prop_assert!(*wt <= round, "{n} waited {wt} messages with work ready (a round is {round})");
                        }
                    }
                    prop_assert!(s.remove(sq));
                    // Idle receives shrink the index between picks: live slots must survive it.
                    s.shrink();
                    out += 1;
                }
            }
            prop_assert!(s.is_empty(), "nothing is left behind");
            prop_assert!(s.pick(max, far).is_empty());
        }

        /// Tenants whose backlog is in many groups (one-offs: a room each) share receives by
        /// their weights while all of them have backlog.
        #[test]
        fn backlogged_tenants_share_by_weight(
            spec in prop::collection::vec((1u32..5, 50usize..400), 2..6),
            max in 1usize..40,
        ) {
            let spec: Vec<(u32, usize, usize)> = spec.into_iter().map(|(w, n)| (w, n, n)).collect();
            let (mut s, names, w) = queued(&spec, false);
            let far = Instant::now() + Duration::from_secs(3600);
            let mut served: HashMap<String, i64> = HashMap::new();
            while names.iter().all(|n| s.backlog(n) > 0) {
                for (sq, _) in s.pick(max, far) {
                    *served.entry(s.tenant_of(sq).to_string()).or_default() += 1;
                    prop_assert!(s.remove(sq));
                }
                if names.iter().any(|n| s.backlog(n) == 0) {
                    break; // the last receive may give a tenant more once another ran out
                }
                // Normalised by weight, no two tenants are more than a turn apart.
                let slack = QUANTUM;
                for a in &names {
                    for b in &names {
                        let (wa, wb) = (i64::from(w.of(a)), i64::from(w.of(b)));
                        let (sa, sb) = (served.get(a).copied().unwrap_or(0), served.get(b).copied().unwrap_or(0));
                        prop_assert!(sa * wb <= sb * wa + slack * wa * wb, "{a} (w {wa}) took {sa}, {b} (w {wb}) took {sb}");
                    }
                }
            }
        }
    }
}
