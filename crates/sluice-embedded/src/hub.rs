//! In-process sessions, presence and fan-out: the hub of a single `sluice serve` process.

use async_trait::async_trait;
use sluice_core::error::HubError;
use sluice_core::hub::{ConnId, Connection, Hub, LiveEvent, LocalConnections};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Capacity of the firehose channel of service subscribers.
const FIREHOSE_CAPACITY: usize = 16_384;

/// Connections of this process, by user.
pub struct LocalHub {
    local: LocalConnections,
    firehose: broadcast::Sender<Arc<LiveEvent>>,
}

impl Default for LocalHub {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalHub {
    pub fn new() -> Self {
        LocalHub { local: LocalConnections::new(), firehose: broadcast::channel(FIREHOSE_CAPACITY).0 }
    }
}

#[async_trait]
impl Hub for LocalHub {
    async fn connect(&self, user: &str, capacity: usize) -> Result<Connection, HubError> {
        Ok(self.local.connect(user, capacity))
    }

    async fn disconnect(&self, user: &str, id: ConnId) {
        self.local.disconnect(user, id);
    }

    async fn publish(&self, targets: &[String], event: LiveEvent) -> Result<(), HubError> {
        let event = Arc::new(event);
        let _ = self.firehose.send(event.clone());
        self.local.deliver(targets, &event);
        Ok(())
    }

    async fn firehose(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.firehose.subscribe()
    }

    async fn online(&self, users: &[String]) -> Result<Vec<bool>, HubError> {
        Ok(users.iter().map(|u| self.local.is_connected(u)).collect())
    }

    async fn ping(&self) -> Result<(), HubError> {
        Ok(())
    }
}
