//! The sessions and fan-out port: who is connected where, and delivery of live events to
//! connected users.

use crate::error::HubError;
use crate::model::{StoredMessage, UnreadUpdate};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc};

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
///
/// The channel is bounded. When it is full the hub drops the connection's sender and sets
/// `overflowed`, so a slow consumer is cut off (and resumes by seq) instead of growing memory.
pub struct Connection {
    pub id: ConnId,
    pub user: String,
    pub events: mpsc::Receiver<Arc<LiveEvent>>,
    pub overflowed: Arc<AtomicBool>,
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
    tx: mpsc::Sender<Arc<LiveEvent>>,
    overflowed: Arc<AtomicBool>,
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
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let overflowed = Arc::new(AtomicBool::new(false));
        self.lock().entry(user.to_string()).or_default().push(LocalConn { id, tx, overflowed: overflowed.clone() });
        Connection { id, user: user.to_string(), events: rx, overflowed }
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
            list.retain(|c| match c.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Dropping the sender closes the channel: the session drains what it has,
                    // sees `overflowed` and closes with a clear code.
                    c.overflowed.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
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
