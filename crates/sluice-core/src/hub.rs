//! The sessions and fan-out port: who is connected where, and delivery of live events to
//! connected users.

use crate::error::HubError;
use crate::model::{StoredMessage, UnreadUpdate};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Identifies one connection (a WebSocket or a gRPC subscription) in this process.
pub type ConnId = u64;

/// A live event for connected users. Nothing here is stored; clients that miss events
/// recover them by seq (`resume`, history).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum LiveEvent {
    /// A message persisted. `origin` is the connection that sent it, which gets an ack instead.
    Message { message: Arc<StoredMessage>, origin: Option<ConnId> },
    /// A user's new unread count.
    Unread(UnreadUpdate),
    /// A user read a room up to `seq`.
    Read { user: String, room: String, seq: u64 },
    /// A member is typing.
    Typing { room: String, user: String },
}

/// A registered connection: events addressed to its user arrive on `events`.
pub struct Connection {
    pub id: ConnId,
    pub user: String,
    pub events: Events,
}

/// A connection's buffer of live events, bounded. When it is full the hub cuts the connection
/// off: the buffer closes and says it [`overflowed`](Events::overflowed), so a slow consumer
/// resumes by seq instead of growing memory.
///
/// Lighter than a tokio channel, which an idle connection would pay about 800 bytes for (its
/// shared state padded to cache lines and a first block of 32 slots): one small allocation,
/// and the queue's storage only while events wait.
pub struct Events {
    shared: Arc<Mailbox>,
}

/// Why [`Events::try_recv`] has no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// None waits; more may come.
    Empty,
    /// The buffer is closed and drained.
    Closed,
}

struct Mailbox {
    state: Mutex<MailboxState>,
    /// One waiter at most (the connection's session); a notification without a waiter is kept.
    ready: tokio::sync::Notify,
}

struct MailboxState {
    queue: std::collections::VecDeque<Arc<LiveEvent>>,
    capacity: usize,
    /// No more events: the hub removed the connection, or the receiver is gone.
    closed: bool,
    overflowed: bool,
}

impl Mailbox {
    fn new(capacity: usize) -> Arc<Self> {
        let state = MailboxState { queue: Default::default(), capacity: capacity.max(1), closed: false, overflowed: false };
        Arc::new(Mailbox { state: Mutex::new(state), ready: tokio::sync::Notify::new() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MailboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `event`; false when the connection is gone or was just cut off as too slow.
    fn offer(&self, event: &Arc<LiveEvent>) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        if st.queue.len() >= st.capacity {
            st.overflowed = true;
            st.closed = true;
            drop(st);
            self.ready.notify_one();
            return false;
        }
        st.queue.push_back(event.clone());
        drop(st);
        self.ready.notify_one();
        true
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }
}

impl Events {
    /// The next event; `None` once the buffer is closed and drained. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Arc<LiveEvent>> {
        loop {
            match self.try_recv() {
                Ok(ev) => return Some(ev),
                Err(TryRecvError::Empty) => self.shared.ready.notified().await,
                Err(TryRecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one waits.
    pub fn try_recv(&mut self) -> Result<Arc<LiveEvent>, TryRecvError> {
        let mut st = self.shared.lock();
        match st.queue.pop_front() {
            Some(ev) => {
                if st.queue.is_empty() && st.queue.capacity() > 64 {
                    // A burst's storage is not kept by an idle connection.
                    st.queue = Default::default();
                }
                Ok(ev)
            }
            None if st.closed => Err(TryRecvError::Closed),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Whether the hub cut this connection off for not keeping up.
    pub fn overflowed(&self) -> bool {
        self.shared.lock().overflowed
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// Sessions, presence and fan-out.
#[async_trait]
pub trait Hub: Send + Sync + 'static {
    /// Registers a connection of `user` with an event buffer of `capacity`.
    async fn connect(&self, user: &str, capacity: usize) -> Result<Connection, HubError>;

    /// Unregisters a connection; its channel closes.
    async fn disconnect(&self, user: &str, id: ConnId);

    /// Delivers `event` to every connection of every user in `targets`, wherever they are
    /// connected, and to firehose subscribers. Never blocks on a slow connection.
    async fn publish(&self, targets: &[String], event: LiveEvent) -> Result<(), HubError>;

    /// Every event published from now on, for service subscribers (returns once events are
    /// flowing: a distributed hub may first have to subscribe). Lagging receivers see
    /// `Lagged`.
    async fn firehose(&self) -> broadcast::Receiver<Arc<LiveEvent>>;

    /// Which of `users` have at least one live connection.
    async fn online(&self, users: &[String]) -> Result<Vec<bool>, HubError>;

    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), HubError>;
}

struct LocalConn {
    id: ConnId,
    mailbox: Arc<Mailbox>,
}

impl Drop for LocalConn {
    fn drop(&mut self) {
        // Removed from the hub: the session sees the end of its events.
        self.mailbox.close();
    }
}

/// The connections of this process, by user: what every hub implementation keeps locally.
/// Delivery never blocks: a full buffer cuts the connection off (see [`Connection`]).
pub struct LocalConnections {
    conns: Mutex<HashMap<String, Vec<LocalConn>>>,
    next_id: AtomicU64,
}

impl Default for LocalConnections {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalConnections {
    pub fn new() -> Self {
        // Random start so connection ids from different processes practically never meet
        // (an event's `origin` crosses processes in distributed hubs).
        LocalConnections { conns: Mutex::new(HashMap::new()), next_id: AtomicU64::new(rand::random::<u64>() >> 1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<LocalConn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection of `user` with a buffer of `capacity` events.
    pub fn connect(&self, user: &str, capacity: usize) -> Connection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mailbox = Mailbox::new(capacity);
        self.lock().entry(user.to_string()).or_default().push(LocalConn { id, mailbox: mailbox.clone() });
        Connection { id, user: user.to_string(), events: Events { shared: mailbox } }
    }

    /// Removes a connection; returns true when the user has no connection left here.
    pub fn disconnect(&self, user: &str, id: ConnId) -> bool {
        let mut conns = self.lock();
        let Some(list) = conns.get_mut(user) else { return true };
        list.retain(|c| c.id != id);
        if list.is_empty() {
            conns.remove(user);
            return true;
        }
        false
    }

    /// Hands `event` to every local connection of the `targets`. Returns the users that lost
    /// their last connection here (cut off as slow, or already gone).
    pub fn deliver(&self, targets: &[String], event: &Arc<LiveEvent>) -> Vec<String> {
        let mut gone = Vec::new();
        let mut conns = self.lock();
        for user in targets {
            let Some(list) = conns.get_mut(user) else { continue };
            // A full buffer closes: the session drains what it has, sees `overflowed` and
            // closes with a clear code.
            list.retain(|c| c.mailbox.offer(event));
            if list.is_empty() {
                conns.remove(user);
                gone.push(user.clone());
            }
        }
        gone
    }

    /// Whether `user` has a connection here.
    pub fn is_connected(&self, user: &str) -> bool {
        self.lock().contains_key(user)
    }

    /// Every user with a connection here.
    pub fn users(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typing(room: &str) -> Arc<LiveEvent> {
        Arc::new(LiveEvent::Typing { room: room.into(), user: "x".into() })
    }

    #[tokio::test]
    async fn a_connections_buffer_is_bounded_drains_and_closes() {
        let local = LocalConnections::new();
        let mut c = local.connect("alice", 2);
        assert_eq!(c.events.try_recv().unwrap_err(), TryRecvError::Empty);
        assert!(local.deliver(&["alice".into()], &typing("a")).is_empty());
        assert!(matches!(c.events.recv().await.as_deref(), Some(LiveEvent::Typing { room, .. }) if room == "a"));
        for r in ["b", "c"] {
            local.deliver(&["alice".into()], &typing(r));
        }
        assert_eq!(local.deliver(&["alice".into()], &typing("d")), vec!["alice".to_string()], "a full buffer cuts it off");
        assert!(c.events.overflowed());
        let drained: Vec<_> = std::iter::from_fn(|| c.events.try_recv().ok()).collect();
        assert_eq!(drained.len(), 2, "what was queued before the cut is still read");
        assert_eq!(c.events.recv().await.map(|_| ()), None, "then the end");
    }

    #[tokio::test]
    async fn disconnect_ends_the_events_and_a_dropped_receiver_stops_delivery() {
        let local = LocalConnections::new();
        let mut c = local.connect("bob", 8);
        let id = c.id;
        let waiting = tokio::spawn(async move { c.events.recv().await.is_none() });
        tokio::task::yield_now().await;
        assert!(local.disconnect("bob", id));
        assert!(waiting.await.unwrap(), "a waiting receiver sees the end");

        let gone = local.connect("carol", 8);
        drop(gone);
        assert_eq!(local.deliver(&["carol".into()], &typing("r")), vec!["carol".to_string()], "nobody reads it any more");
        assert!(!local.is_connected("carol"));
    }
}
