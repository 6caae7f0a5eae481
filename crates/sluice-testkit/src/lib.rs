//! Conformance suites that every backend implementation runs, and the support every test and
//! benchmark shares: the launcher of a real `sluice` process ([`server`]), its clients
//! ([`client`]), and the simulated backends that slow down or fail a real one ([`latency`],
//! [`faults`], [`dynamo_faults`], [`moto_faults`], [`tcp_proxy`]).
//!
//! Each suite is a set of `pub async fn` test bodies plus a macro that turns them into
//! `#[tokio::test]`s for one implementation, so the embedded backends and the AWS/Redis ones
//! are held to exactly the same behaviour:
//!
//! ```ignore
//! sluice_testkit::store_conformance!(|| async { my_fresh_store().await });
//! ```
//!
//! The factory returns the backend and a guard (temporary directory, emulator handle, ...)
//! that must outlive the test.

pub mod client;
pub mod dynamo_faults;
pub mod events;
pub mod faults;
pub mod hub;
pub mod latency;
pub mod limits;
pub mod moto_faults;
pub mod queue;
pub mod server;
pub mod services;
pub mod store;
pub mod tcp_proxy;

use std::any::Any;

/// Keeps a test's resources alive (temporary directories, emulator handles).
pub type Guard = Box<dyn Any + Send>;

/// Waits until `max` has passed or the process gets SIGINT or SIGTERM: the life of a test
/// helper process, which must stop by itself.
pub async fn until_stopped(max: std::time::Duration) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::time::sleep(max) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A message body for tests.
pub fn body(n: usize) -> String {
    format!("message {n}")
}
