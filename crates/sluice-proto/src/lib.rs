//! Generated protobuf and gRPC code for `proto/sluice/v1`: the `ChatService` contract,
//! the spike-queue message body (`QueuedMessage`) and the analytics events.
//! Generated code lives in `OUT_DIR`; nothing here is written by hand.

#![allow(unreachable_pub, clippy::all)]

/// Package `sluice.v1`.
pub mod v1 {
    tonic::include_proto!("sluice.v1");
}
