//! HTTP routes: the WebSocket endpoint, health, readiness, metrics and the demo page; the
//! operator's routes also stand alone for a worker's admin listener ([`serve_admin`]).

use crate::App;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use sluice_core::backends::Backends;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The router of a gateway with everything on one port (testable with `oneshot`).
pub fn router(app: Arc<App>) -> Router {
    public_router(app.clone()).merge(operator_routes(Probes::of(&app)))
}

/// What clients reach when the operator's routes live on an admin port: the page, the
/// WebSocket and liveness.
pub fn public_router(app: Arc<App>) -> Router {
    Router::new().route("/", get(index)).route("/v1/ws", get(crate::ws::upgrade)).route("/healthz", get(healthz)).with_state(app)
}

/// The operator's routes of any role: liveness, readiness and metrics.
pub fn admin_router(probes: Probes) -> Router {
    Router::new().route("/healthz", get(healthz)).merge(operator_routes(probes))
}

fn operator_routes(probes: Probes) -> Router {
    Router::new().route("/readyz", get(readyz)).route("/metrics", get(metrics)).with_state(Arc::new(probes))
}

/// What readiness and metrics read: the backends a role uses and its shutdown. A worker
/// has no [`App`] but serves the same admin routes.
#[derive(Clone)]
pub struct Probes {
    pub backends: Backends,
    pub shutdown: CancellationToken,
}

impl Probes {
    pub fn of(app: &App) -> Self {
        Probes { backends: app.backends.clone(), shutdown: app.shutdown.clone() }
    }
}

/// Serves [`admin_router`] on `listener` until `probes.shutdown` is cancelled.
pub async fn serve_admin(listener: TcpListener, probes: Probes) -> std::io::Result<()> {
    let shutdown = probes.shutdown.clone();
    axum::serve(listener, admin_router(probes)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when every backend answers; not ready once shutdown has begun, so that a load
/// balancer stops sending new clients while this process closes its sessions.
async fn readyz(State(app): State<Arc<Probes>>) -> Response {
    if app.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\nshutting down\n").into_response();
    }
    let mut failures = Vec::new();
    if let Err(e) = app.backends.store.ping().await {
        failures.push(format!("store: {e}"));
    }
    if let Err(e) = app.backends.queue.stats().await {
        failures.push(format!("queue: {e}"));
    }
    if let Err(e) = app.backends.hub.ping().await {
        failures.push(format!("hub: {e}"));
    }
    if failures.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready\n{}\n", failures.join("\n"))).into_response()
    }
}

async fn metrics(State(app): State<Arc<Probes>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.backends.metrics.render()).into_response()
}
