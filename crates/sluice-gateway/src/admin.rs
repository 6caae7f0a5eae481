//! The operations console's JSON API under `/v1/admin/` (service token as
//! `Authorization: Bearer`), and the development sign-in under `/v1/dev/`.
//!
//! Everything here reads what the whole deployment shares (the queue, the store, the fleet
//! readings in the limits port), so any gateway answers alike:
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /v1/admin/overview` | queue depth and age, the fleet's drain and enqueue rates, governor limit, interactive p50/p99, connections, conflicts and throttles per second, the whole drain's control |
//! | `GET /v1/admin/campaigns?limit=N` | campaigns enqueued in the last 24 h, newest first, with state, rate and ETA |
//! | `GET /v1/admin/campaigns/{id}` | one campaign |
//! | `POST /v1/admin/campaigns` | `{sender, recipients, body, campaign_id?, tenant?}`: EnqueueBulk |
//! | `GET /v1/admin/controls` | every pause and rate in force, and how many messages pauses hold |
//! | `POST /v1/admin/controls` | `{scope, paused?, rate?}` with scope `drain`, `tenant:T` or `campaign:C` |
//! | `GET /v1/admin/dead-letters?limit=N` | dead letters with their reasons |
//! | `POST /v1/admin/dead-letters/redrive` | `{limit?}`: back to the queue |
//!
//! Errors answer `{"code": ..., "message": ...}` with the stable codes of the client contract.
//!
//! `GET /v1/dev` says whether development sign-in is on; when it is, `POST /v1/dev/token`
//! `{user}` mints a user token. It is on only when no JWT secret is configured (the secret
//! was generated into the data dir) and the gateway listens on a loopback address.

use crate::App;
use crate::auth::bearer;
use crate::control::CampaignStatus;
use crate::error::AppError;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::control::Scope;
use sluice_core::error::ErrorCode;
use sluice_core::ids::{CampaignId, UserId};
use std::sync::Arc;
use std::time::Duration;

/// The limits-port key under which gateways note the campaigns they enqueue (value: when).
const RECENT_CAMPAIGNS: &str = "console:campaigns";
/// How long a campaign stays in the console's list after its last EnqueueBulk call.
const RECENT_FOR: Duration = Duration::from_secs(24 * 3600);
/// Most campaigns (and dead letters) one answer lists.
const MAX_LIST: usize = 200;
/// Campaigns whose progress one list reads at a time.
const CAMPAIGN_READS: usize = 8;
/// Lifetime of a development sign-in token.
const DEV_TOKEN_TTL_SECS: u64 = 12 * 3600;

/// The routes of this module, on the gateway's public port.
pub fn routes(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/admin/overview", get(overview))
        .route("/v1/admin/campaigns", get(campaigns).post(send_campaign))
        .route("/v1/admin/campaigns/{id}", get(campaign))
        .route("/v1/admin/controls", get(controls).post(set_control))
        .route("/v1/admin/dead-letters", get(dead_letters))
        .route("/v1/admin/dead-letters/redrive", post(redrive))
        .route("/v1/dev", get(dev))
        .route("/v1/dev/token", post(dev_token))
        .with_state(app)
}

/// Notes that `campaign_id` was enqueued now, for the console's list.
pub(crate) async fn note_campaign(app: &App, campaign_id: &CampaignId) {
    let now = sluice_core::now_ms() as f64;
    if let Err(e) = app.backends.limiter.report(RECENT_CAMPAIGNS, campaign_id, now, RECENT_FOR).await {
        tracing::debug!(error = %e, "could not note the campaign for the console");
    }
}

/// An admin API error: the contract's code, mapped to an HTTP status.
struct ApiError(AppError);

impl<E: Into<AppError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = match e.code {
            _ if e.grpc == tonic::Code::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::BadFrame => StatusCode::BAD_REQUEST,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::NotMember => StatusCode::FORBIDDEN,
            ErrorCode::UnknownRoom => StatusCode::NOT_FOUND,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal if e.grpc == tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut body = json!({"code": e.code.as_str(), "message": e.message});
        for (k, v) in &e.metadata {
            body[*k] = json!(v);
        }
        (status, Json(body)).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// Proof that the request carried the service token.
struct Operator;

impl FromRequestParts<Arc<App>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let token = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
        match token {
            Some(t) if app.auth.is_service(t) => Ok(Operator),
            Some(_) => Err(ApiError(AppError::new(ErrorCode::Unauthorized, "invalid service token"))),
            None => Err(ApiError(AppError::new(ErrorCode::Unauthorized, "missing Authorization: Bearer <service token>"))),
        }
    }
}

/// Query parameters, with a refusal in the API's error shape.
struct Params<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Params(v)),
            Err(e) => Err(ApiError(AppError::bad(e.body_text()))),
        }
    }
}

/// A JSON body, with a refusal in the API's error shape.
struct Body<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(ApiError(AppError::bad(e.body_text()))),
        }
    }
}

async fn overview(_: Operator, State(app): State<Arc<App>>) -> ApiResult {
    let (queue, fleet, controls) =
        tokio::join!(app.backends.queue.stats(), sluice_core::fleet::read(&*app.backends.limiter), app.backends.store.controls());
    let (queue, fleet, controls) = (queue?, fleet?, controls.map_err(AppError::from)?);
    let drain = controls.entries.iter().find(|(s, _)| *s == Scope::Drain).map(|(_, c)| *c).unwrap_or_default();
    Ok(Json(json!({
        "at_ms": sluice_core::now_ms(),
        "queue": {
            "visible": queue.visible, "in_flight": queue.in_flight, "held": queue.held,
            "dead": queue.dead, "oldest_age_ms": queue.oldest_age_ms,
            "depth": queue.visible + queue.in_flight,
        },
        "fleet": fleet,
        "drain": {"paused": drain.paused, "rate": drain.rate},
    })))
}

fn status_json(s: &CampaignStatus) -> Value {
    let c = &s.campaign;
    json!({
        "campaign_id": c.campaign_id, "tenant": c.tenant, "requested": c.requested,
        "enqueued": c.enqueued, "persisted": c.persisted, "dead_lettered": c.dead_lettered,
        "done": c.done(), "state": s.state, "rate": s.rate, "eta_secs": s.eta_secs,
    })
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

impl Limit {
    fn get(&self, default: usize) -> usize {
        self.limit.unwrap_or(default).clamp(1, MAX_LIST)
    }
}

async fn campaigns(_: Operator, State(app): State<Arc<App>>, Params(q): Params<Limit>) -> ApiResult {
    let mut recent = app.backends.limiter.readings(RECENT_CAMPAIGNS).await?;
    recent.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    recent.truncate(q.get(50));
    let controls = app.backends.store.controls().await.map_err(AppError::from)?;
    let (app, controls) = (&app, &controls);
    // A few reads at a time, in the list's order.
    let statuses: Vec<_> = futures::stream::iter(recent)
        .map(|(id, noted_ms)| async move {
            let Ok(id) = CampaignId::new(id) else { return Ok(None) };
            match app.campaign_status_under(&id, None, controls).await {
                Ok(s) => {
                    let mut v = status_json(&s);
                    v["noted_at_ms"] = json!(noted_ms as i64);
                    Ok(Some(v))
                }
                Err(e) if e.grpc == tonic::Code::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
        .buffered(CAMPAIGN_READS)
        .collect()
        .await;
    let mut out = Vec::with_capacity(statuses.len());
    for s in statuses {
        out.extend(s?);
    }
    Ok(Json(json!({ "campaigns": out })))
}

async fn campaign(_: Operator, State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let id = CampaignId::new(id).map_err(|e| AppError::bad_id("campaign_id", e))?;
    Ok(Json(status_json(&app.campaign_status(&id, None).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignSend {
    #[serde(default)]
    campaign_id: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    sender: String,
    recipients: Vec<String>,
    body: String,
}

async fn send_campaign(_: Operator, State(app): State<Arc<App>>, Body(r): Body<CampaignSend>) -> ApiResult {
    let campaign_id =
        r.campaign_id.filter(|c| !c.is_empty()).map(CampaignId::new).transpose().map_err(|e| AppError::bad_id("campaign_id", e))?;
    let sender = UserId::new(r.sender).map_err(|e| AppError::bad_id("sender", e))?;
    let tenant = r.tenant.filter(|t| !t.is_empty()).map(UserId::new).transpose().map_err(|e| AppError::bad_id("tenant", e))?;
    let (campaign_id, accepted) = app.enqueue_bulk_owned(campaign_id, tenant, sender, r.recipients, r.body).await?;
    Ok(Json(json!({"campaign_id": campaign_id.as_str(), "accepted": accepted})))
}

fn control_json(scope: &Scope, c: sluice_core::control::Control) -> Value {
    json!({"scope": scope.key(), "paused": c.paused, "rate": c.rate})
}

async fn controls(_: Operator, State(app): State<Arc<App>>) -> ApiResult {
    let (controls, held) = app.drain_controls().await?;
    let list: Vec<Value> = controls.entries.iter().map(|(s, c)| control_json(s, *c)).collect();
    Ok(Json(json!({"controls": list, "held": held})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlChange {
    scope: String,
    #[serde(default)]
    paused: Option<bool>,
    #[serde(default)]
    rate: Option<f64>,
}

async fn set_control(_: Operator, State(app): State<Arc<App>>, Body(r): Body<ControlChange>) -> ApiResult {
    let scope = Scope::parse(&r.scope).ok_or_else(|| AppError::bad("scope: drain, tenant:<tenant> or campaign:<campaign id>"))?;
    let c = app.set_control(scope.clone(), r.paused, r.rate).await?;
    Ok(Json(control_json(&scope, c)))
}

async fn dead_letters(_: Operator, State(app): State<Arc<App>>, Params(q): Params<Limit>) -> ApiResult {
    let letters = app.backends.queue.dead_letters(q.get(100)).await?;
    let list: Vec<Value> = letters
        .iter()
        .map(|dl| {
            // What the message was, where it still decodes (a body that does not is often
            // why it is here).
            let m = sluice_proto::convert::decode_queued(&dl.body, usize::MAX).ok();
            json!({
                "dedup_id": dl.dedup_id, "group": dl.group, "tenant": dl.tenant, "reason": dl.reason,
                "receive_count": dl.receive_count, "dead_at_ms": dl.dead_at_ms, "body_bytes": dl.body.len(),
                "room": m.as_ref().map(|m| m.room.as_str()),
                "msg_id": m.as_ref().map(|m| m.msg_id.as_str()),
                "campaign_id": m.as_ref().and_then(|m| m.campaign_id.as_deref()),
            })
        })
        .collect();
    Ok(Json(json!({"dead_letters": list})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Redrive {
    #[serde(default)]
    limit: Option<usize>,
}

async fn redrive(_: Operator, State(app): State<Arc<App>>, Body(r): Body<Redrive>) -> ApiResult {
    let limit = r.limit.unwrap_or(1000).clamp(1, 100_000);
    let redriven = app.backends.queue.redrive(limit).await?;
    tracing::info!(redriven, "dead letters redriven from the console");
    Ok(Json(json!({"redriven": redriven})))
}

async fn dev(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({"dev_sign_in": app.dev_sign_in}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevSignIn {
    user: String,
}

async fn dev_token(State(app): State<Arc<App>>, Body(r): Body<DevSignIn>) -> ApiResult {
    if !app.dev_sign_in {
        let e = AppError::new(
            ErrorCode::Unauthorized,
            "development sign-in is off: a JWT secret is configured (or the gateway is not on loopback); use a token from your identity provider",
        );
        return Err(e.into());
    }
    let user = UserId::new(r.user).map_err(|e| AppError::bad_id("user", e))?;
    let token = app
        .auth
        .mint_user(&user, DEV_TOKEN_TTL_SECS.min(app.auth.max_token_ttl()))
        .map_err(|e| AppError::new(ErrorCode::Internal, e.to_string()))?;
    Ok(Json(json!({"user": user.as_str(), "token": token})))
}
