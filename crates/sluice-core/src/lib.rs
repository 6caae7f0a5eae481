//! Domain types, client frames, backend traits and pure logic of Sluice.
//!
//! Everything above the backends depends on this crate only, never on a concrete backend:
//! - [`model`]: messages, rooms, inbox rows, campaigns; [`ids`]: user/room id rules, direct
//!   rooms, deterministic message ids and queue groups.
//! - [`store`], [`queue`], [`hub`], [`events`]: one trait per port (message store, spike
//!   queue, sessions/fan-out, analytics sink), each method documenting its contract.
//! - [`frames`]: the WebSocket client contract v1 (JSON frames) and [`error::ErrorCode`].
//! - [`fanout`]: what happens after a message or read commits (live pushes, analytics).
//! - [`control`]: the operator's pause, resume and rate of the drain, a tenant or a campaign.
//! - [`governor`]: the drain governor (AIMD on interactive latency and store throttling).
//! - [`limits`]: per-user and per-address rate limits and leases shared by every gateway.
//! - [`fleet`]: what every process reports once a second, summed for the operations console.
//! - [`auth`]: user tokens (JWT) and the service token.
//! - [`backends`]: the ports one process runs on, shared by its roles.
//! - [`backoff`], [`ratelimit`], [`metrics`]: small shared mechanisms.

pub mod auth;
pub mod backends;
pub mod backoff;
pub mod bodies;
pub mod control;
pub mod error;
pub mod events;
pub mod fanout;
pub mod fleet;
pub mod frames;
pub mod governor;
pub mod hub;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod queue;
pub mod ratelimit;
pub mod store;
pub mod trace;

/// Milliseconds since the Unix epoch, the unit of every timestamp Sluice stores.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
