//! What the gateway's tests share: an [`App`] on embedded backends in a temporary directory.

// Each test binary uses a part of this module.
#![allow(dead_code, unreachable_pub)]

use sluice_core::events::NoEvents;
use sluice_core::metrics::Metrics;
use sluice_core::store::MessageStore;
use sluice_embedded::{EmbeddedQueue, EmbeddedStore, LocalHub, QueueConfig};
use sluice_gateway::{App, Auth, Backends, Limits};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The service token of [`app`].
pub const SERVICE_TOKEN: &str = "svc";

/// A gateway's [`App`] on a fresh embedded store and queue (the directory lives as long as
/// the returned guard), with `limits`; `wrap` may replace the store (a failing one).
pub fn app_with(
    limits: Limits,
    dev_sign_in: bool,
    wrap: impl FnOnce(Arc<EmbeddedStore>) -> Arc<dyn MessageStore>,
) -> (tempfile::TempDir, Arc<App>) {
    let dir = tempfile::tempdir().unwrap();
    let store = wrap(Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).unwrap()));
    let queue = Arc::new(EmbeddedQueue::open(&dir.path().join("queue.redb"), QueueConfig::default()).unwrap());
    let limiter = Arc::new(sluice_core::limits::LocalLimiter::new());
    let app = Arc::new(App {
        backends: Backends::new(store, queue, Arc::new(LocalHub::new()), Arc::new(NoEvents), limiter, Arc::new(Metrics::new())),
        auth: Auth::new(b"gateway-test-secret-gateway-test-secret", SERVICE_TOKEN),
        limits,
        campaign_rates: Default::default(),
        accept: Default::default(),
        bulk: None,
        shutdown: CancellationToken::new(),
        dev_sign_in,
    });
    (dir, app)
}

/// [`app_with`] on the embedded store as it is.
pub fn app(limits: Limits, dev_sign_in: bool) -> (tempfile::TempDir, Arc<App>) {
    app_with(limits, dev_sign_in, |s| s)
}
