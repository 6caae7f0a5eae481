//! The Sluice gateway: the WebSocket/HTTP server (axum) and the gRPC `ChatService` (tonic).
//!
//! - [`chat`]: the operations both transports share (validation, limits, persist, fan-out).
//! - [`ws`]: the WebSocket contract v1, one session per socket.
//! - [`grpc`]: `sluice.v1.ChatService` for internal services and the bulk scheduler, served
//!   beside gRPC health checking and server reflection.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`, and the web chat client at `/` and the
//!   operations console at `/console` (static pages embedded in the binary).
//! - [`admin`]: the console's JSON API (`/v1/admin/...`, service token) and the development
//!   sign-in (`/v1/dev/token`).
//! - [`control`]: the operator's pause, resume and rate of the drain; campaign state and ETA.
//! - [`auth`] (from core): user JWTs and the service token; [`error`]: one error type for both transports.
//!
//! The gateway is stateless: sessions live in the hub, data in the store and queue, so any
//! number of gateways can run and clients reconnect to any of them.

pub use sluice_core::auth;
pub mod accept;
pub mod admin;
pub mod chat;
pub mod control;
pub mod error;
pub mod grpc;
pub mod http;
pub mod ws;

pub use sluice_core::backends::Backends;
use sluice_core::governor::{INTERACTIVE_P99_KEY, REPORT_EVERY, REPORT_TTL};
use sluice_proto::v1::chat_service_server::ChatServiceServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::Auth;

/// Limits that protect the service from clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message body, in bytes.
    pub max_body_bytes: usize,
    /// Largest WebSocket text frame answered with `too_large` (socket stays open).
    pub max_frame_bytes: usize,
    /// Largest frame read at all; beyond it the socket closes with 1009.
    pub hard_frame_bytes: usize,
    /// Sends per second per user, across all their connections and gateways (sustained),
    /// and the burst allowed.
    pub send_rate: f64,
    pub send_burst: f64,
    /// WebSocket connections one user may hold at once, across gateways.
    pub max_connections_per_user: u32,
    /// WebSocket handshakes per second from one client address (bursts of twice as many);
    /// 0 = no limit (behind a proxy that hides client addresses).
    pub handshake_rate_per_ip: f64,
    /// Frames buffered for a slow WebSocket consumer before it is disconnected.
    pub outbound_buffer: usize,
    /// Recipients in one EnqueueBulk call.
    pub max_bulk_recipients: usize,
    /// Messages one tenant may have in the queue; beyond it EnqueueBulk accepts what fits and
    /// answers RESOURCE_EXHAUSTED. 0: no quota. The backlog is counted by the embedded
    /// queue, or beside SQS by the DynamoDB store's tenant counters.
    pub tenant_quota: u64,
    /// Members in one CreateRoom/AddMembers call.
    pub max_room_members: usize,
    /// Rooms in one `resume` frame.
    pub max_resume_rooms: usize,
    /// A connection with no frame (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// Interval of server pings.
    pub ping_interval: Duration,
    /// Browser origins allowed to open a WebSocket; empty = any. Requests without an Origin
    /// header (non-browser clients) are not affected.
    pub allowed_origins: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 * 1024,
            max_frame_bytes: 128 * 1024,
            hard_frame_bytes: 1024 * 1024,
            send_rate: 50.0,
            send_burst: 100.0,
            max_connections_per_user: 16,
            handshake_rate_per_ip: 20.0,
            outbound_buffer: 1024,
            max_bulk_recipients: 100_000,
            tenant_quota: 0,
            max_room_members: 10_000,
            max_resume_rooms: 1_000,
            idle_timeout: Duration::from_secs(90),
            ping_interval: Duration::from_secs(30),
            allowed_origins: Vec::new(),
        }
    }
}

/// Everything a gateway serves from: backends, credentials, limits, metrics.
pub struct App {
    /// The ports; a worker in the same process shares them (one fan-out, one order for both
    /// lanes).
    pub backends: Backends,
    pub auth: Auth,
    pub limits: Limits,
    /// Each campaign's last read, for its rate in GetCampaign.
    pub campaign_rates: control::CampaignRates,
    /// Paces EnqueueBulk while chat flows in this process.
    pub accept: accept::AcceptGate,
    /// Where EnqueueBulk's recording and queueing run ([`App::on_bulk`]): the process's bulk
    /// runtime, whose threads run below chat's priority; `None`: here, beside chat.
    pub bulk: Option<tokio::runtime::Handle>,
    /// Cancelled on shutdown: sessions close with 1001, streams end.
    pub shutdown: CancellationToken,
    /// Whether `POST /v1/dev/token` mints user tokens for anyone who asks (development only:
    /// no JWT secret configured, listening on loopback).
    pub dev_sign_in: bool,
}

impl App {
    /// Runs `work` on the bulk runtime when there is one ([`App::bulk`]), else in the
    /// caller's task. Work that stops waiting (a call cancelled by its client) is stopped too.
    pub async fn on_bulk<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, error::AppError>> + Send + 'static,
    ) -> Result<T, error::AppError> {
        let Some(rt) = &self.bulk else { return work.await };
        match tokio_util::task::AbortOnDropHandle::new(rt.spawn(work)).await {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {
                let mut e = error::AppError::new(sluice_core::error::ErrorCode::Internal, "shutting down; retry");
                e.grpc = tonic::Code::Unavailable;
                Err(e)
            }
        }
    }
}

/// Publishes this gateway's interactive persist p99 every [`REPORT_EVERY`] until shutdown,
/// so that drain governors in worker processes elsewhere react to it (DESIGN.md invariant 8).
pub async fn report_interactive_latency(app: Arc<App>) {
    let node = sluice_core::ids::random_id();
    let mut tick = tokio::time::interval(REPORT_EVERY);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(p99) = app.backends.metrics.interactive_persist.p99() {
            let ms = p99.as_secs_f64() * 1000.0;
            if let Err(e) = app.backends.limiter.report(INTERACTIVE_P99_KEY, &node, ms, REPORT_TTL).await {
                tracing::debug!(error = %e, "could not publish the interactive latency");
            }
        }
    }
}

/// Serves HTTP/WebSocket on `http` and gRPC on `grpc` until `app.shutdown` is cancelled.
pub async fn serve(app: Arc<App>, http: TcpListener, grpc: TcpListener) -> std::io::Result<()> {
    serve_with_admin(app, http, grpc, None).await
}

/// [`serve`], with `/metrics`, `/readyz` (and `/healthz`) on `admin` instead of the public
/// HTTP port when given.
pub async fn serve_with_admin(app: Arc<App>, http: TcpListener, grpc: TcpListener, admin: Option<TcpListener>) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let shutdown = app.shutdown.clone();
    tokio::spawn(report_interactive_latency(app.clone()));
    {
        let app = app.clone();
        tokio::spawn(async move { app.accept.govern(&app.backends.metrics, app.shutdown.clone()).await });
    }
    let public = if admin.is_some() { http::public_router(app.clone()) } else { http::router(app.clone()) };
    let admin_server = async {
        match admin {
            Some(l) => http::serve_admin(l, http::Probes::of(&app)).await,
            None => Ok(()),
        }
    };
    // Without TCP_NODELAY, a frame written while the previous one is unacknowledged waits
    // for the client's delayed ACK (40 ms on Linux): an ack followed by a message would
    // make every chat p99 about 40 ms.
    let http = http.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let http_server = axum::serve(http, public.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let grpc = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ChatServiceServer<grpc::Grpc>>().await;
    let not_serving = shutdown.clone();
    tokio::spawn(async move {
        not_serving.cancelled().await;
        health.set_not_serving::<ChatServiceServer<grpc::Grpc>>().await;
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    });
    // Both versions of reflection: grpcurl asks for v1, older clients for v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sluice_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(std::io::Error::other)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(std::io::Error::other)?;
    // Health and reflection answer without the service token: probes and grpcurl need them,
    // and they tell nothing the published proto files do not.
    let grpc_server = tonic::transport::Server::builder()
        .add_service(grpc::service(app.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(grpc, shutdown.clone().cancelled_owned());
    let (h, g, a) = tokio::join!(http_server, grpc_server, admin_server);
    h?;
    a?;
    g.map_err(std::io::Error::other)
}
