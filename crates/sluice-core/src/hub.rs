//! The sessions and fan-out port: who is connected where, and delivery of live events to
//! connected users.

use crate::error::HubError;
use crate::model::{StoredMessage, UnreadUpdate};
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::sync::{broadcast, mpsc};

/// Identifies one connection (a WebSocket or a gRPC subscription) in this process.
pub type ConnId = u64;

/// A live event for connected users. Nothing here is stored; clients that miss events
/// recover them by seq (`resume`, history).
#[derive(Debug, Clone)]
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

    /// Every event published, for service subscribers. Lagging receivers see `Lagged`.
    fn firehose(&self) -> broadcast::Receiver<Arc<LiveEvent>>;

    /// Which of `users` have at least one live connection.
    async fn online(&self, users: &[String]) -> Result<Vec<bool>, HubError>;

    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), HubError>;
}
