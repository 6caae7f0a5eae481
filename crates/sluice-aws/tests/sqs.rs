//! The SQS FIFO spike queue against moto: the shared queue conformance suite.

mod common;

use sluice_core::queue::SpikeQueue;
use sluice_testkit::Guard;
use std::sync::Arc;

async fn queue() -> (Arc<dyn SpikeQueue>, Guard) {
    let (q, _) = common::queue("q").await;
    (q, Box::new(()))
}

mod queue_suite {
    sluice_testkit::queue_conformance!(super::queue);
}
