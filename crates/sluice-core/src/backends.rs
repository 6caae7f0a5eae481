//! The ports one process runs on, opened once by the composition root and shared by every role
//! of the process: the gateway and the worker hold the same [`Backends`].

use crate::events::EventSink;
use crate::fanout::Fanout;
use crate::hub::Hub;
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::queue::SpikeQueue;
use crate::store::MessageStore;
use std::sync::Arc;

/// Every backend a role uses, as trait objects.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn MessageStore>,
    pub queue: Arc<dyn SpikeQueue>,
    /// Sessions and live delivery, shared by every gateway.
    pub hub: Arc<dyn Hub>,
    /// Analytics events.
    pub events: Arc<dyn EventSink>,
    /// Live pushes and analytics after commits, in commit order per room: one per process, so
    /// that both lanes publish in one order.
    pub fanout: Arc<Fanout>,
    /// Per-user and per-address limits, and where gateways publish their interactive latency
    /// for the drain governor.
    pub limiter: Arc<dyn Limiter>,
    pub metrics: Arc<Metrics>,
}

impl Backends {
    /// The backends, with a fan-out that emits `message_persisted` itself. For a store whose
    /// outbox emits it, replace `fanout` with [`Fanout::with_outbox`].
    pub fn new(
        store: Arc<dyn MessageStore>,
        queue: Arc<dyn SpikeQueue>,
        hub: Arc<dyn Hub>,
        events: Arc<dyn EventSink>,
        limiter: Arc<dyn Limiter>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let fanout = Fanout::new(hub.clone(), events.clone(), Some(store.clone()));
        Backends { store, queue, hub, events, fanout, limiter, metrics }
    }
}
