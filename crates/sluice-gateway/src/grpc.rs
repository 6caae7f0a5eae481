//! `sluice.v1.ChatService` over gRPC: every call needs the service token in
//! `authorization: Bearer <token>` metadata.

use crate::App;
use crate::auth::bearer;
use crate::error::AppError;
use futures::Stream;
use sluice_core::control::{Control, Scope};
use sluice_core::hub::{Hub, LiveEvent};
use sluice_core::ids::{CampaignId, RoomId, UserId};
use sluice_proto::convert;
use sluice_proto::v1::chat_service_server::{ChatService, ChatServiceServer};
use sluice_proto::v1::{self, event::Event as Ev};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Largest gRPC request accepted (an EnqueueBulk of 100,000 recipients is about 2 MB).
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
/// Events buffered for one Subscribe stream before it is cut off.
const SUBSCRIBE_BUFFER: usize = 4096;

/// Checks the service token on every call.
#[derive(Clone)]
pub struct ServiceAuth(crate::Auth);

impl tonic::service::Interceptor for ServiceAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let token = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(bearer);
        match token {
            Some(t) if self.0.is_service(t) => Ok(req),
            Some(_) => Err(Status::unauthenticated("unauthorized: invalid service token")),
            None => Err(Status::unauthenticated("unauthorized: missing authorization: Bearer <service token>")),
        }
    }
}

/// The service with its authentication interceptor.
pub fn service(app: Arc<App>) -> InterceptedService<ChatServiceServer<Grpc>, ServiceAuth> {
    let auth = ServiceAuth(app.auth.clone());
    let server = ChatServiceServer::new(Grpc { app }).max_decoding_message_size(MAX_REQUEST_BYTES);
    InterceptedService::new(server, auth)
}

/// The gRPC handler.
pub struct Grpc {
    app: Arc<App>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::Event, Status>> + Send>>;

#[tonic::async_trait]
impl ChatService for Grpc {
    async fn create_room(&self, req: Request<v1::CreateRoomRequest>) -> Result<Response<v1::RoomResponse>, Status> {
        let r = req.into_inner();
        let room = (!r.room.is_empty()).then(|| RoomId::new(r.room)).transpose().map_err(AppError::from)?;
        let room = self.app.create_room(room, &r.members).await?;
        Ok(Response::new(v1::RoomResponse { room: room.room, members: room.members }))
    }

    async fn add_members(&self, req: Request<v1::AddMembersRequest>) -> Result<Response<v1::RoomResponse>, Status> {
        let r = req.into_inner();
        let room = self.app.add_members(&RoomId::new(r.room).map_err(AppError::from)?, &r.members).await?;
        Ok(Response::new(v1::RoomResponse { room: room.room, members: room.members }))
    }

    async fn send_message(&self, req: Request<v1::SendMessageRequest>) -> Result<Response<v1::SendMessageResponse>, Status> {
        let r = req.into_inner();
        let sender = UserId::new(r.sender).map_err(|e| AppError::bad_id("sender", e))?;
        // The caller's id is what makes a retry safe: a generated one would turn every retry of
        // a timed-out call into a second message.
        if r.client_msg_id.is_empty() {
            return Err(Status::invalid_argument(
                "bad_frame: client_msg_id is required (a retry with the same id returns the same message)",
            ));
        }
        if r.client_msg_id.len() > sluice_core::frames::MAX_CLIENT_MSG_ID_LEN {
            return Err(Status::invalid_argument("bad_frame: client_msg_id too long"));
        }
        let room = RoomId::new(r.room).map_err(AppError::from)?;
        let p = self.app.send(&sender, &room, &r.client_msg_id, &r.body, None).await?;
        Ok(Response::new(v1::SendMessageResponse { room: p.message.room.clone(), seq: p.message.seq, msg_id: p.message.msg_id.clone() }))
    }

    async fn enqueue_bulk(&self, req: Request<v1::EnqueueBulkRequest>) -> Result<Response<v1::EnqueueBulkResponse>, Status> {
        // The span each queued message carries on (sluice_core::trace), continuing the
        // caller's trace when it sent one.
        let span = tracing::info_span!("EnqueueBulk", campaign_id = tracing::field::Empty, accepted = tracing::field::Empty);
        if let Some(tp) = req.metadata().get(sluice_core::trace::TRACEPARENT).and_then(|v| v.to_str().ok()) {
            sluice_core::trace::continue_trace(&span, tp);
        }
        let r = req.into_inner();
        let campaign_id = (!r.campaign_id.is_empty())
            .then(|| CampaignId::new(r.campaign_id))
            .transpose()
            .map_err(|e| AppError::bad_id("campaign_id", e))?;
        let sender = UserId::new(r.sender).map_err(|e| AppError::bad_id("sender", e))?;
        let tenant = r.tenant.map(UserId::new).transpose().map_err(|e| AppError::bad_id("tenant", e))?;
        let bulk = self.app.enqueue_bulk_owned(campaign_id, tenant, sender, r.recipients, r.body);
        let (campaign_id, accepted) = bulk.instrument(span.clone()).await?;
        span.record("campaign_id", campaign_id.as_str()).record("accepted", accepted);
        Ok(Response::new(v1::EnqueueBulkResponse { campaign_id: campaign_id.into_string(), accepted }))
    }

    async fn get_campaign(&self, req: Request<v1::GetCampaignRequest>) -> Result<Response<v1::GetCampaignResponse>, Status> {
        let r = req.into_inner();
        let campaign_id = CampaignId::new(r.campaign_id).map_err(|e| AppError::bad_id("campaign_id", e))?;
        let s = self.app.campaign_status(&campaign_id, r.tenant.as_deref()).await?;
        let c = s.campaign;
        Ok(Response::new(v1::GetCampaignResponse {
            done: c.done(),
            tenant: c.tenant,
            campaign_id: c.campaign_id,
            requested: c.requested,
            enqueued: c.enqueued,
            persisted: c.persisted,
            dead_lettered: c.dead_lettered,
            state: s.state.into(),
            rate: s.rate,
            eta_secs: s.eta_secs,
        }))
    }

    async fn set_drain_control(&self, req: Request<v1::SetDrainControlRequest>) -> Result<Response<v1::DrainControl>, Status> {
        let r = req.into_inner();
        let scope = scope_from(r.scope)?;
        let c = self.app.set_control(scope.clone(), r.paused, r.rate).await?;
        Ok(Response::new(control_to(&scope, c)))
    }

    async fn get_drain_controls(&self, _: Request<v1::GetDrainControlsRequest>) -> Result<Response<v1::GetDrainControlsResponse>, Status> {
        let (controls, held) = self.app.drain_controls().await?;
        Ok(Response::new(v1::GetDrainControlsResponse {
            controls: controls.entries.iter().map(|(s, c)| control_to(s, *c)).collect(),
            held,
        }))
    }

    async fn get_history(&self, req: Request<v1::GetHistoryRequest>) -> Result<Response<v1::GetHistoryResponse>, Status> {
        let r = req.into_inner();
        let room = RoomId::new(r.room).map_err(AppError::from)?;
        let msgs = self.app.history(None, &room, r.before, r.after, Some(r.limit as u64)).await?;
        Ok(Response::new(v1::GetHistoryResponse { messages: msgs.iter().map(convert::message).collect() }))
    }

    async fn get_inbox(&self, req: Request<v1::GetInboxRequest>) -> Result<Response<v1::GetInboxResponse>, Status> {
        let r = req.into_inner();
        let after = (!r.after.is_empty()).then_some(r.after);
        let user = UserId::new(r.user).map_err(AppError::from)?;
        let inbox = self.app.inbox(&user, after, Some(u64::from(r.limit))).await?;
        Ok(Response::new(v1::GetInboxResponse {
            rooms: inbox
                .rooms
                .into_iter()
                .map(|r| v1::InboxRoom { room: r.room, unread: r.unread, read_seq: r.read_seq, last_seq: r.last_seq })
                .collect(),
            total_unread: inbox.total_unread,
            next: inbox.next.unwrap_or_default(),
        }))
    }

    async fn mark_read(&self, req: Request<v1::MarkReadRequest>) -> Result<Response<v1::MarkReadResponse>, Status> {
        let r = req.into_inner();
        let user = UserId::new(r.user).map_err(|e| AppError::bad_id("user", e))?;
        let room = RoomId::new(r.room).map_err(AppError::from)?;
        let out = self.app.read(&user, &room, r.seq).await?;
        Ok(Response::new(v1::MarkReadResponse { unread: out.unread, total_unread: out.total_unread }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(&self, req: Request<v1::SubscribeRequest>) -> Result<Response<EventStream>, Status> {
        let user = req.into_inner().user;
        let (tx, rx) = mpsc::channel::<Result<v1::Event, Status>>(64);
        let app = self.app.clone();
        if user.is_empty() {
            let mut fire = app.backends.hub.firehose().await;
            tokio::spawn(async move {
                loop {
                    let ev = tokio::select! {
                        _ = app.shutdown.cancelled() => return,
                        _ = tx.closed() => return,
                        ev = fire.recv() => ev,
                    };
                    let item = match ev {
                        Ok(ev) => match event(&ev) {
                            Some(e) => Ok(e),
                            None => continue,
                        },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            Err(Status::resource_exhausted(format!("subscriber fell {n} events behind; resubscribe and read history")))
                        }
                        Err(_) => return,
                    };
                    let stop = item.is_err();
                    if tx.send(item).await.is_err() || stop {
                        return;
                    }
                }
            });
        } else {
            let user = UserId::new(user).map_err(|e| AppError::bad_id("user", e))?;
            let mut conn = app.backends.hub.connect(&user, SUBSCRIBE_BUFFER).await.map_err(crate::error::AppError::from)?;
            tokio::spawn(async move {
                loop {
                    let ev = tokio::select! {
                        _ = app.shutdown.cancelled() => break,
                        _ = tx.closed() => break,
                        ev = conn.events.recv() => ev,
                    };
                    match ev {
                        Some(ev) => {
                            if let Some(e) = event(&ev)
                                && tx.send(Ok(e)).await.is_err()
                            {
                                break;
                            }
                        }
                        None => {
                            if conn.events.overflowed() {
                                let _ = tx.send(Err(Status::resource_exhausted("subscriber too slow; resubscribe and read history"))).await;
                            }
                            break;
                        }
                    }
                }
                Hub::disconnect(app.backends.hub.as_ref(), &user, conn.id).await;
            });
        }
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

fn event(ev: &LiveEvent) -> Option<v1::Event> {
    let e = match ev {
        LiveEvent::Message { message, .. } => Ev::Message(convert::message(message)),
        LiveEvent::Unread(u) => Ev::Unread(v1::UnreadEvent {
            user: u.user.clone(),
            room: u.room.clone(),
            unread: u.unread,
            total_unread: u.total_unread,
            version: u.version,
        }),
        LiveEvent::Read { user, room, seq } => Ev::Read(v1::ReadEvent { user: user.clone(), room: room.clone(), seq: *seq }),
        LiveEvent::Typing { .. } => return None,
    };
    Some(v1::Event { event: Some(e) })
}

fn scope_from(scope: Option<v1::DrainScope>) -> Result<Scope, Status> {
    use v1::drain_scope::Scope as S;
    match scope.and_then(|s| s.scope) {
        Some(S::Drain(_)) => Ok(Scope::Drain),
        Some(S::Tenant(t)) => Ok(Scope::Tenant(t)),
        Some(S::CampaignId(c)) => Ok(Scope::Campaign(c)),
        None => Err(Status::invalid_argument("bad_frame: scope: one of drain, tenant or campaign_id is required")),
    }
}

fn control_to(scope: &Scope, c: Control) -> v1::DrainControl {
    use v1::drain_scope::Scope as S;
    let scope = match scope {
        Scope::Drain => S::Drain(true),
        Scope::Tenant(t) => S::Tenant(t.clone()),
        Scope::Campaign(c) => S::CampaignId(c.clone()),
    };
    v1::DrainControl { scope: Some(v1::DrainScope { scope: Some(scope) }), paused: c.paused, rate: c.rate }
}
