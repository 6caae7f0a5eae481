//! The shared conformance suites, run against the embedded backends.

use sluice_core::hub::Hub;
use sluice_core::queue::SpikeQueue;
use sluice_core::store::MessageStore;
use sluice_embedded::{EmbeddedQueue, EmbeddedStore, LocalHub, QueueConfig};
use sluice_testkit::Guard;
use std::sync::Arc;

async fn store() -> (Arc<dyn MessageStore>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    (Arc::new(s), Box::new(dir))
}

async fn queue() -> (Arc<dyn SpikeQueue>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::open(&dir.path().join("queue.redb"), QueueConfig::default()).unwrap();
    (Arc::new(q), Box::new(dir))
}

async fn hub() -> (Arc<dyn Hub>, Guard) {
    (Arc::new(LocalHub::new()), Box::new(()))
}

mod store_suite {
    sluice_testkit::store_conformance!(super::store);
}

mod queue_suite {
    sluice_testkit::queue_conformance!(super::queue);
}

mod hub_suite {
    sluice_testkit::hub_conformance!(super::hub);
}

async fn limiter() -> (Arc<dyn sluice_core::limits::Limiter>, Guard) {
    (Arc::new(sluice_core::limits::LocalLimiter::new()), Box::new(()))
}

mod limiter_suite {
    sluice_testkit::limiter_conformance!(super::limiter);
}
