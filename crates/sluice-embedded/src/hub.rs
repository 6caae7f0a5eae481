//! In-process sessions, presence and fan-out: the hub of a single `sluice serve` process.

use async_trait::async_trait;
use sluice_core::error::HubError;
use sluice_core::hub::{ConnId, Connection, Hub, LiveEvent};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc};

/// Capacity of the firehose channel of service subscribers.
const FIREHOSE_CAPACITY: usize = 16_384;

struct Conn {
    id: ConnId,
    tx: mpsc::Sender<Arc<LiveEvent>>,
    overflowed: Arc<AtomicBool>,
}

/// Connections of this process, by user.
pub struct LocalHub {
    conns: Mutex<HashMap<String, Vec<Conn>>>,
    next_id: AtomicU64,
    firehose: broadcast::Sender<Arc<LiveEvent>>,
}

impl Default for LocalHub {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalHub {
    pub fn new() -> Self {
        LocalHub { conns: Mutex::new(HashMap::new()), next_id: AtomicU64::new(1), firehose: broadcast::channel(FIREHOSE_CAPACITY).0 }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Hub for LocalHub {
    async fn connect(&self, user: &str, capacity: usize) -> Result<Connection, HubError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let overflowed = Arc::new(AtomicBool::new(false));
        self.lock().entry(user.to_string()).or_default().push(Conn { id, tx, overflowed: overflowed.clone() });
        Ok(Connection { id, user: user.to_string(), events: rx, overflowed })
    }

    async fn disconnect(&self, user: &str, id: ConnId) {
        let mut conns = self.lock();
        if let Some(list) = conns.get_mut(user) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                conns.remove(user);
            }
        }
    }

    async fn publish(&self, targets: &[String], event: LiveEvent) -> Result<(), HubError> {
        let event = Arc::new(event);
        let _ = self.firehose.send(event.clone());
        let mut conns = self.lock();
        for user in targets {
            let Some(list) = conns.get_mut(user) else { continue };
            list.retain(|c| match c.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Dropping the sender closes the channel: the session drains what it has,
                    // sees `overflowed` and closes the socket with a clear code.
                    c.overflowed.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            if list.is_empty() {
                conns.remove(user);
            }
        }
        Ok(())
    }

    fn firehose(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.firehose.subscribe()
    }

    async fn online(&self, users: &[String]) -> Result<Vec<bool>, HubError> {
        let conns = self.lock();
        Ok(users.iter().map(|u| conns.contains_key(u)).collect())
    }

    async fn ping(&self) -> Result<(), HubError> {
        Ok(())
    }
}
