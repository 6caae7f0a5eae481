//! The members of large rooms, as read from the eventually consistent `by-room` index.
//!
//! A read made right after AddMembers or a conversion may miss the members just added (the
//! index lags the table). Such a read finds fewer members than the room item's `member_count`
//! and is never cached (the next message reads again); a read of a room without a count (made
//! large before the count was kept) is trusted only for [`MEMBERS_TTL`] even when the room's
//! `members_version` has not moved, so a member missed by a lagging read gets live pushes a few
//! seconds later instead of never. The cache holds at most [`MEMBERS_CACHE_ROOMS`] rooms; the
//! least recently read go first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a read of a large room's members is used before the index is read again.
pub(crate) const MEMBERS_TTL: Duration = Duration::from_secs(5);
/// Most large rooms whose members are cached.
pub(crate) const MEMBERS_CACHE_ROOMS: usize = 10_000;

struct Entry {
    version: u64,
    members: Arc<Vec<String>>,
    read_at: Instant,
    used_at: Instant,
}

/// See the module doc.
#[derive(Default)]
pub(crate) struct MembersCache {
    rooms: Mutex<HashMap<String, Entry>>,
}

impl MembersCache {
    /// The cached members of `room` if they were read at `version` less than the TTL ago.
    pub(crate) fn get(&self, room: &str, version: u64, now: Instant) -> Option<Arc<Vec<String>>> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let e = rooms.get_mut(room)?;
        if e.version != version || now.saturating_duration_since(e.read_at) >= MEMBERS_TTL {
            return None;
        }
        e.used_at = now;
        Some(e.members.clone())
    }

    pub(crate) fn insert(&self, room: &str, version: u64, members: Arc<Vec<String>>, now: Instant) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if rooms.len() >= MEMBERS_CACHE_ROOMS && !rooms.contains_key(room) {
            // Forget the least recently used half at once: an eviction per insert would scan
            // the map each time.
            let mut used: Vec<Instant> = rooms.values().map(|e| e.used_at).collect();
            used.sort();
            let cut = used[used.len() / 2];
            rooms.retain(|_, e| e.used_at > cut);
        }
        rooms.insert(room.to_string(), Entry { version, members, read_at: now, used_at: now });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.rooms.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Arc<Vec<String>> {
        Arc::new((0..n).map(|i| format!("u{i}")).collect())
    }

    #[test]
    fn a_read_is_trusted_for_its_version_and_a_few_seconds_only() {
        let c = MembersCache::default();
        let t0 = Instant::now();
        c.insert("r", 3, members(2), t0);
        assert_eq!(c.get("r", 3, t0 + Duration::from_secs(1)).map(|m| m.len()), Some(2));
        assert!(c.get("r", 4, t0 + Duration::from_secs(1)).is_none(), "another version is read again");
        assert!(c.get("r", 3, t0 + MEMBERS_TTL).is_none(), "a read that may have lagged the index is read again");
        assert!(c.get("other", 3, t0).is_none());
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_the_rooms_in_use() {
        let c = MembersCache::default();
        let t0 = Instant::now();
        c.insert("hot", 1, members(1), t0);
        for i in 0..MEMBERS_CACHE_ROOMS * 2 {
            let now = t0 + Duration::from_micros(i as u64 + 1);
            c.insert(&format!("r{i}"), 1, members(1), now);
            if i % 100 == 0 {
                assert!(c.get("hot", 1, now).is_some(), "the room in use stays");
            }
        }
        assert!(c.len() <= MEMBERS_CACHE_ROOMS, "{} rooms", c.len());
    }
}
