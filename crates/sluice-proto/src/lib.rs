//! Protobuf and gRPC code for `proto/sluice/v1`: the `ChatService` contract, the
//! spike-queue message body (`QueuedMessage`) and the analytics events. The generated code
//! lives in `OUT_DIR` ([`v1`]); [`convert`] maps it to and from the domain types of
//! `sluice-core`, so gateway and worker agree on one encoding. [`codec`] is the gRPC codec
//! (prost's, with malformed requests answered INVALID_ARGUMENT); [`client`] a client that
//! presents the service token.

pub mod client;
pub mod codec;
pub mod convert;

/// Package `sluice.v1` (generated).
#[allow(unreachable_pub, clippy::all)]
pub mod v1 {
    tonic::include_proto!("sluice.v1");
}

/// The encoded `FileDescriptorSet` of `proto/sluice/v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sluice_v1_descriptor.bin"));
