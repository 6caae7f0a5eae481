//! HTTP routes: the WebSocket endpoint, health, readiness, metrics and the demo page.

use crate::App;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;

/// The router of a gateway with everything on one port (testable with `oneshot`).
pub fn router(app: Arc<App>) -> Router {
    public_router(app.clone()).merge(Router::new().route("/readyz", get(readyz)).route("/metrics", get(metrics)).with_state(app))
}

/// What clients reach when the operator's routes live on an admin port: the page, the
/// WebSocket and liveness.
pub fn public_router(app: Arc<App>) -> Router {
    Router::new().route("/", get(index)).route("/v1/ws", get(crate::ws::upgrade)).route("/healthz", get(healthz)).with_state(app)
}

/// The operator's routes: liveness, readiness and metrics.
pub fn admin_router(app: Arc<App>) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics)).with_state(app)
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when every backend answers.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    let mut failures = Vec::new();
    if let Err(e) = app.store.ping().await {
        failures.push(format!("store: {e}"));
    }
    if let Err(e) = app.queue.stats().await {
        failures.push(format!("queue: {e}"));
    }
    if let Err(e) = app.hub.ping().await {
        failures.push(format!("hub: {e}"));
    }
    if failures.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready\n{}\n", failures.join("\n"))).into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render()).into_response()
}
