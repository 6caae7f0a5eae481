//! What follows a commit: live pushes through the hub and analytics events. Shared by the
//! gateway (direct persists, reads) and the worker (queued persists) so both lanes behave alike.
//!
//! Persisted messages of one room are published in commit (seq) order within the process.
//! Concurrent persists of a room finish in any order (the writer commits N before N+1, but
//! the tasks waiting for the two wake up in either order), and a client that saw N+1 live
//! before N, then resumed after N+1, would never see N. So every persist takes a [`Ticket`]
//! for its room before it starts, and a finished message waits until every persist of that
//! room that could have committed before it has finished too. Then one task publishes what
//! is ready, in seq order, while the others only hand over their message.
//!
//! The rule: a persist that finishes while tickets t1..tk of its room are outstanding could
//! have committed after any of them; one that starts later commits after it. So a finished
//! message is published once every ticket issued before it finished has finished (with a
//! message, a duplicate, an error, or by being dropped). A room holds back only while its own
//! persists overlap, never longer than the slowest of them.

use crate::events::{AnalyticsEvent, EventSink};
use crate::hub::{ConnId, Hub, LiveEvent};
use crate::model::{Persisted, ReadOutcome, UnreadUpdate};
use crate::now_ms;
use crate::store::MessageStore;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// Live pushes and analytics after commits, with per-room publication order.
pub struct Fanout {
    hub: Arc<dyn Hub>,
    events: Arc<dyn EventSink>,
    /// Reads the counters a store deferred ([`Persisted::unread_deferred`]); without it
    /// those recipients get no `unread` push.
    store: Option<Arc<dyn MessageStore>>,
    /// Whether `message_persisted` goes out from here (false when the store's outbox sends it).
    emit_persisted: bool,
    rooms: Mutex<HashMap<String, RoomOrder>>,
}

/// A persist finished, waiting to be published.
struct Held {
    /// The highest ticket of the room issued when the persist finished.
    barrier: u64,
    persisted: Persisted,
    origin: Option<ConnId>,
}

#[derive(Default)]
struct RoomOrder {
    next_ticket: u64,
    outstanding: BTreeSet<u64>,
    /// By seq.
    held: BTreeMap<u64, Held>,
    /// A task is publishing this room's ready messages.
    publishing: bool,
}

/// A persist of one room in progress. Finish it with [`Ticket::publish`]; dropping it (an
/// error, a duplicate, a cancelled call) lets later messages of the room go.
pub struct Ticket {
    fanout: Arc<Fanout>,
    room: String,
    id: u64,
    settled: bool,
}

impl Fanout {
    pub fn new(hub: Arc<dyn Hub>, events: Arc<dyn EventSink>, store: Option<Arc<dyn MessageStore>>) -> Arc<Self> {
        Arc::new(Fanout { hub, events, store, emit_persisted: true, rooms: Mutex::new(HashMap::new()) })
    }

    /// A fan-out for a store whose outbox emits `message_persisted` itself (written with the
    /// message, so a crash after the commit cannot lose it); reads still emit `room_read`.
    pub fn with_outbox(hub: Arc<dyn Hub>, events: Arc<dyn EventSink>, store: Option<Arc<dyn MessageStore>>) -> Arc<Self> {
        Arc::new(Fanout { hub, events, store, emit_persisted: false, rooms: Mutex::new(HashMap::new()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomOrder>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a ticket for a persist into `room`; call before the persist starts.
    pub fn ticket(self: &Arc<Self>, room: &str) -> Ticket {
        let mut rooms = self.lock();
        let r = rooms.entry(room.to_string()).or_default();
        r.next_ticket += 1;
        let id = r.next_ticket;
        r.outstanding.insert(id);
        Ticket { fanout: self.clone(), room: room.to_string(), id, settled: false }
    }

    /// Rooms with persists in progress or messages waiting (for tests and metrics).
    pub fn rooms_in_progress(&self) -> usize {
        self.lock().len()
    }

    /// Ends ticket `id`, holding `item`; true when the caller must now publish the room.
    fn settle(&self, room: &str, id: u64, item: Option<(Persisted, Option<ConnId>)>) -> bool {
        let mut rooms = self.lock();
        let r = rooms.get_mut(room).expect("a ticket's room is tracked until its tickets end");
        r.outstanding.remove(&id);
        if let Some((persisted, origin)) = item {
            r.held.insert(persisted.message.seq, Held { barrier: r.next_ticket, persisted, origin });
        }
        if r.publishing {
            return false;
        }
        r.publishing = true;
        true
    }

    /// The messages of `room` ready now, in seq order; `None` (and publishing handed back)
    /// when there are none.
    fn ready(&self, room: &str) -> Option<Vec<Held>> {
        let mut rooms = self.lock();
        let r = rooms.get_mut(room).expect("a publishing room is tracked");
        let floor = r.outstanding.first().copied().unwrap_or(u64::MAX);
        let mut ready = Vec::new();
        while let Some(entry) = r.held.first_entry() {
            if entry.get().barrier >= floor {
                break;
            }
            ready.push(entry.remove());
        }
        if ready.is_empty() {
            r.publishing = false;
            if r.outstanding.is_empty() && r.held.is_empty() {
                rooms.remove(room);
            }
            return None;
        }
        Some(ready)
    }

    /// Publishes what is ready in `room` until nothing is; false if a push failed.
    async fn publish_ready(&self, room: &str) -> bool {
        let mut ok = true;
        let mut guard = Publishing { fanout: self, room, active: true };
        while let Some(ready) = self.ready(room) {
            for h in ready {
                let events = self.emit_persisted.then_some(self.events.as_ref());
                ok &= after_persist(self.hub.as_ref(), self.store.as_deref(), events, &h.persisted, h.origin).await;
            }
        }
        guard.active = false;
        ok
    }

    /// Tells the user's connections their new counters after a read, and the room that the
    /// user read up to `read_seq`; emits `room_read`.
    pub async fn after_read(&self, user: &str, room: &str, r: &ReadOutcome, members: &[String]) {
        let update = UnreadUpdate {
            user: user.to_string(),
            room: room.to_string(),
            unread: r.unread,
            total_unread: r.total_unread,
            version: r.version,
        };
        let _ = self.hub.publish(&[user.to_string()], LiveEvent::Unread(update)).await;
        if r.changed {
            let _ = self.hub.publish(members, LiveEvent::Read { user: user.to_string(), room: room.to_string(), seq: r.read_seq }).await;
            self.events.emit(vec![AnalyticsEvent::RoomRead {
                user: user.to_string(),
                room: room.to_string(),
                seq: r.read_seq,
                unread: r.unread,
                read_at_ms: now_ms(),
            }]);
        }
    }
}

/// Hands publishing back if a publisher is cancelled half-way, so the room does not stay
/// blocked; what it had not published goes out with the room's next message.
struct Publishing<'a> {
    fanout: &'a Fanout,
    room: &'a str,
    active: bool,
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        if self.active
            && let Some(r) = self.fanout.lock().get_mut(self.room)
        {
            r.publishing = false;
        }
    }
}

impl Ticket {
    /// The room this ticket orders.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// Finishes the persist with its outcome and publishes it (and what it held back) once
    /// every earlier persist of the room has finished. Duplicates publish nothing. False if
    /// a push this call made failed (the message is durable; clients recover it by seq).
    pub async fn publish(mut self, p: &Persisted, origin: Option<ConnId>) -> bool {
        self.settled = true;
        let item = (!p.duplicate).then(|| (p.clone(), origin));
        if !self.fanout.settle(&self.room, self.id, item) {
            return true;
        }
        self.fanout.publish_ready(&self.room).await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.settled || !self.fanout.settle(&self.room, self.id, None) {
            return;
        }
        // This ticket held messages of the room back; publish them now.
        let (fanout, room) = (self.fanout.clone(), std::mem::take(&mut self.room));
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(async move { fanout.publish_ready(&room).await })),
            Err(_) => {
                // No runtime (process teardown): nothing can be pushed any more.
                while fanout.ready(&room).is_some() {}
            }
        }
    }
}

/// Pushes a newly persisted message to the room's members and the new counters to its
/// recipients, and emits `message_persisted`. Duplicates push nothing (they were pushed when
/// first persisted). Deferred counters are read for the recipients online only. Hub and
/// store failures are reported as false, never returned: the message is durable, clients
/// recover it by seq and their counters from the inbox.
async fn after_persist(
    hub: &dyn Hub,
    store: Option<&dyn MessageStore>,
    events: Option<&dyn EventSink>,
    p: &Persisted,
    origin: Option<ConnId>,
) -> bool {
    if p.duplicate {
        return true;
    }
    let mut ok = hub.publish(&p.members, LiveEvent::Message { message: p.message.clone(), origin }).await.is_ok();
    let read_now = match (store, p.unread_deferred.is_empty()) {
        (Some(store), false) => match online_counters(hub, store, &p.message.room, &p.unread_deferred).await {
            Ok(counters) => counters,
            Err(()) => {
                ok = false;
                Vec::new()
            }
        },
        _ => Vec::new(),
    };
    for u in p.unread.iter().chain(&read_now) {
        ok &= hub.publish(std::slice::from_ref(&u.user), LiveEvent::Unread(u.clone())).await.is_ok();
    }
    let Some(events) = events else { return ok };
    let m = &p.message;
    events.emit(vec![AnalyticsEvent::MessagePersisted {
        room: m.room.clone(),
        seq: m.seq,
        msg_id: m.msg_id.clone(),
        sender: m.sender.clone(),
        kind: m.kind.as_str().to_string(),
        campaign_id: m.campaign_id.clone(),
        sent_at_ms: m.sent_at_ms,
        persisted_at_ms: now_ms(),
        recipients: (p.unread.len() + p.unread_deferred.len()) as u32,
    }]);
    ok
}

/// The counters of those of `users` online now (none read when nobody is).
async fn online_counters(hub: &dyn Hub, store: &dyn MessageStore, room: &str, users: &[String]) -> Result<Vec<UnreadUpdate>, ()> {
    let online = hub.online(users).await.map_err(|e| tracing::debug!(error = %e, "presence unknown; counters not pushed"))?;
    let here: Vec<String> = users.iter().zip(online).filter(|(_, on)| *on).map(|(u, _)| u.clone()).collect();
    if here.is_empty() {
        return Ok(Vec::new());
    }
    store.counters(room, &here).await.map_err(|e| tracing::debug!(error = %e, "counters not read; not pushed"))
}

#[cfg(test)]
mod tests;
