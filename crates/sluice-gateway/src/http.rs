//! HTTP routes: the WebSocket endpoint, health, readiness, metrics, the web chat client and
//! the operations console; the operator's routes also stand alone for a worker's admin
//! listener ([`serve_admin`]).

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

/// What clients reach when the operator's routes live on an admin port: the web pages,
/// the WebSocket, the console's API (service token) and liveness.
pub fn public_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { page(CHAT_HTML) }))
        .route("/console", get(|| async { page(CONSOLE_HTML) }))
        .route("/assets/{file}", get(asset))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/v1/ws", get(crate::ws::upgrade))
        .route("/healthz", get(healthz))
        .with_state(app.clone())
        .merge(crate::admin::routes(app))
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

const CHAT_HTML: &str = include_str!("../web/chat.html");
const CONSOLE_HTML: &str = include_str!("../web/console.html");
/// The pages' scripts and style, embedded so that the binary needs nothing beside it.
const ASSETS: &[(&str, &str, &str)] = &[
    ("chat.js", "text/javascript; charset=utf-8", include_str!("../web/chat.js")),
    ("console.js", "text/javascript; charset=utf-8", include_str!("../web/console.js")),
    ("common.js", "text/javascript; charset=utf-8", include_str!("../web/common.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../web/style.css")),
];

/// Headers every page carries: no framing by other sites, scripts only from here.
fn page(html: &'static str) -> Response {
    let csp = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'";
    ([(header::CONTENT_SECURITY_POLICY, csp), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")], Html(html)).into_response()
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => ([(header::CONTENT_TYPE, *kind), (header::CACHE_CONTROL, "no-cache")], *body).into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
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
