//! A bounded cache of campaign bodies by reference. EnqueueBulk stores a campaign's body
//! once and its queued one-offs carry the body's reference ([`crate::ids::campaign_body_ref`]);
//! a worker reads each body from the store once and keeps the few it is draining, and a
//! store whose message items refer to large bodies keeps those its reads resolve.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Bodies kept (campaigns drained or read at once are few).
const MAX_ENTRIES: usize = 256;
/// Bytes of bodies kept (at most 64 KiB each by default).
const MAX_BYTES: usize = 16 << 20;

/// Bodies by campaign and reference; the oldest go first beyond the bounds.
#[derive(Default)]
pub struct BodyCache {
    inner: Mutex<Cache>,
}

/// By reference (a digest of campaign and body, so unique), with the campaign it belongs to:
/// a lookup allocates nothing.
#[derive(Default)]
struct Cache {
    map: HashMap<String, (String, Arc<str>)>,
    /// Insertion order: the oldest body goes first.
    order: VecDeque<String>,
    bytes: usize,
}

impl BodyCache {
    pub fn get(&self, campaign_id: &str, body_ref: &str) -> Option<Arc<str>> {
        let c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.map.get(body_ref).filter(|(campaign, _)| campaign == campaign_id).map(|(_, body)| body.clone())
    }

    /// The body from the cache, or `load`ed (a store read) and kept; `None` when the store
    /// has none.
    pub async fn get_or_load<E>(
        &self,
        campaign_id: &str,
        body_ref: &str,
        load: impl Future<Output = Result<Option<String>, E>>,
    ) -> Result<Option<Arc<str>>, E> {
        if let Some(b) = self.get(campaign_id, body_ref) {
            return Ok(Some(b));
        }
        let Some(body) = load.await? else { return Ok(None) };
        let body: Arc<str> = body.into();
        self.insert(campaign_id, body_ref, body.clone());
        Ok(Some(body))
    }

    pub fn insert(&self, campaign_id: &str, body_ref: &str, body: Arc<str>) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if c.map.contains_key(body_ref) {
            return;
        }
        c.bytes += body.len();
        c.map.insert(body_ref.to_string(), (campaign_id.to_string(), body));
        c.order.push_back(body_ref.to_string());
        while c.order.len() > MAX_ENTRIES || (c.bytes > MAX_BYTES && c.order.len() > 1) {
            let Some(old) = c.order.pop_front() else { break };
            if let Some((_, b)) = c.map.remove(&old) {
                c.bytes -= b.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_kept_by_campaign_and_reference_within_bounds() {
        let b = BodyCache::default();
        b.insert("c1", "r1", Arc::from("one"));
        b.insert("c1", "r2", Arc::from("two"));
        assert_eq!(b.get("c1", "r1").as_deref(), Some("one"));
        assert_eq!(b.get("c1", "r2").as_deref(), Some("two"));
        assert_eq!(b.get("c2", "r1"), None, "a reference is found for its own campaign only");
        for i in 0..MAX_ENTRIES {
            b.insert("c3", &i.to_string(), Arc::from("x"));
        }
        assert_eq!(b.get("c1", "r1"), None, "the oldest went first");
        assert_eq!(b.get("c3", &(MAX_ENTRIES - 1).to_string()).as_deref(), Some("x"));
        let big: Arc<str> = Arc::from("y".repeat(MAX_BYTES / 2 + 1));
        b.insert("c4", "a", big.clone());
        b.insert("c4", "b", big);
        let c = b.inner.lock().unwrap();
        assert!(c.bytes <= MAX_BYTES, "{} bytes kept", c.bytes);
        assert_eq!(c.map.len(), c.order.len());
    }
}
