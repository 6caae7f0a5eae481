//! The gateway's HTTP routes without a socket: requests go through the routers with
//! `oneshot` (health, readiness, metrics; what the public port shows when an admin listener
//! holds the operator's routes), on embedded backends and a store that can be taken down.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use sluice_gateway::http::{Probes, admin_router, public_router, router};
use sluice_gateway::{App, Limits};
use sluice_testkit::faults::FaultyStore;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tower::ServiceExt;

struct Env {
    _dir: tempfile::TempDir,
    app: Arc<App>,
    store: Arc<FaultyStore>,
}

fn env() -> Env {
    let mut faulty = None;
    let (dir, app) = common::app_with(Limits::default(), false, |s| {
        let store = Arc::new(FaultyStore::new(s));
        faulty = Some(store.clone());
        store
    });
    Env { _dir: dir, app, store: faulty.unwrap() }
}

async fn get(router: axum::Router, path: &str) -> (StatusCode, String) {
    let resp = router.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn one_port_serves_liveness_readiness_and_metrics() {
    let e = env();
    assert_eq!(get(router(e.app.clone()), "/healthz").await, (StatusCode::OK, "ok\n".into()));
    assert_eq!(get(router(e.app.clone()), "/readyz").await, (StatusCode::OK, "ready\n".into()));
    let (status, metrics) = get(router(e.app.clone()), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(metrics.contains("# TYPE sluice_connections gauge"), "{metrics}");
    // What `into_make_service_with_connect_info` gives every request of a real listener.
    let mut ws = Request::get("/v1/ws").body(Body::empty()).unwrap();
    ws.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 40000))));
    let status = router(e.app.clone()).oneshot(ws).await.unwrap().status();
    assert!(status.is_client_error(), "a WebSocket route without an upgrade or a token: {status}");
}

#[tokio::test]
async fn with_an_admin_listener_the_public_port_keeps_only_liveness() {
    let e = env();
    assert_eq!(get(public_router(e.app.clone()), "/healthz").await.0, StatusCode::OK);
    for path in ["/metrics", "/readyz"] {
        assert_eq!(get(public_router(e.app.clone()), path).await.0, StatusCode::NOT_FOUND, "{path} on the public port");
        assert_eq!(get(admin_router(Probes::of(&e.app)), path).await.0, StatusCode::OK, "{path} on the admin port");
    }
    assert_eq!(get(admin_router(Probes::of(&e.app)), "/v1/ws").await.0, StatusCode::NOT_FOUND, "no clients on the admin port");
}

#[tokio::test]
async fn readiness_names_a_backend_that_does_not_answer() {
    let e = env();
    e.store.down.store(true, Ordering::SeqCst);
    let (status, body) = get(router(e.app.clone()), "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("store: ") && body.contains("injected outage"), "{body}");
    assert_eq!(get(router(e.app.clone()), "/healthz").await.0, StatusCode::OK, "alive all the same: no restart for an outage");
    e.store.down.store(false, Ordering::SeqCst);
    assert_eq!(get(router(e.app.clone()), "/readyz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn readiness_fails_once_shutdown_begins() {
    let e = env();
    e.app.shutdown.cancel();
    let (status, body) = get(admin_router(Probes::of(&e.app)), "/readyz").await;
    assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "not ready\nshutting down\n"));
}
