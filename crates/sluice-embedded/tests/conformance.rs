//! The shared conformance suites, run against the embedded backends.

use sluice_core::hub::Hub;
use sluice_core::queue::SpikeQueue;
use sluice_core::store::MessageStore;
use sluice_embedded::{EmbeddedQueue, EmbeddedStore, LocalHub, QueueConfig, StoreConfig};
use sluice_testkit::Guard;
use std::sync::Arc;

async fn store() -> (Arc<dyn MessageStore>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    (Arc::new(s), Box::new(dir))
}

/// The store with its redo log on (`--store-checkpoint-ms 20`): most commits durable in the
/// log only, checkpoints among the suite's writes.
async fn logged_store() -> (Arc<dyn MessageStore>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig { checkpoint_every: std::time::Duration::from_millis(20), ..StoreConfig::default() };
    let s = EmbeddedStore::open_with(&dir.path().join("store.redb"), config).unwrap();
    (Arc::new(s), Box::new(dir))
}

async fn queue() -> (Arc<dyn SpikeQueue>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let config = QueueConfig { weights: sluice_testkit::queue::suite_weights(), ..QueueConfig::default() };
    let q = EmbeddedQueue::open(&dir.path().join("queue.redb"), config).unwrap();
    (Arc::new(q), Box::new(dir))
}

async fn hub() -> (Arc<dyn Hub>, Guard) {
    (Arc::new(LocalHub::new()), Box::new(()))
}

mod store_suite {
    sluice_testkit::store_conformance!(super::store);
}

mod logged_store_suite {
    sluice_testkit::store_conformance!(super::logged_store);
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

/// Reads the JSON lines of an events file.
struct FileBack(std::path::PathBuf);

#[async_trait::async_trait]
impl sluice_testkit::events::ReadBack for FileBack {
    async fn read(&self, want: usize) -> Vec<sluice_testkit::events::SeenEvent> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            let seen: Vec<_> = text
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object a line");
                    (v["room"].as_str().unwrap().to_string(), v["type"].as_str().unwrap().to_string(), v["seq"].as_u64().unwrap())
                })
                .collect();
            if seen.len() >= want || std::time::Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

async fn file_events() -> (Arc<dyn sluice_core::events::EventSink>, Box<dyn sluice_testkit::events::ReadBack>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let sink = sluice_embedded::FileEvents::open(&path, Box::new(|n| panic!("{n} events dropped"))).unwrap();
    (Arc::new(sink), Box::new(FileBack(path)), Box::new(dir))
}

mod events_suite {
    sluice_testkit::events_conformance!(super::file_events);
}
