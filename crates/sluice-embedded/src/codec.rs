//! Encoding of stored records (postcard) and redb error mapping.

use serde::{Serialize, de::DeserializeOwned};
use sluice_core::error::{QueueError, StoreError};

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("records always encode")
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, redb::Error> {
    postcard::from_bytes(bytes).map_err(|e| redb::Error::Corrupted(format!("undecodable record: {e}")))
}

pub(crate) fn store_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Internal(e.into().to_string())
}

pub(crate) fn queue_err(e: impl Into<redb::Error>) -> QueueError {
    QueueError::Internal(e.into().to_string())
}
