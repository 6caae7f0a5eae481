//! Embedded backends: what `sluice serve` uses when nothing is configured, so one machine
//! runs the whole product with no set-up and keeps its data on disk across restarts.
//!
//! - [`store`]: the message store on redb, one writer thread with group commit.
//! - [`queue`]: the spike queue, a durable FIFO queue with message groups on redb.
//! - [`hub`]: in-process sessions, presence and fan-out.
//! - [`events`]: analytics events appended to a JSON-lines file.
//! - [`outbox`]: analytics events written with their messages, relayed to the event sink.

pub mod events;
pub mod hub;
pub mod outbox;
pub mod queue;
pub mod store;

mod codec;

pub use events::FileEvents;
pub use hub::LocalHub;
pub use queue::{EmbeddedQueue, QueueConfig};
pub use store::{EmbeddedStore, StoreConfig};
