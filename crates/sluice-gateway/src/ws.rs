//! The WebSocket contract v1: `GET /v1/ws`, one session per socket.
//!
//! A session is two tasks. The reader parses client frames and handles them in order
//! (sends are acked once durable); the writer owns the socket's sink and merges the reader's
//! replies with live events from the hub. Both the hub buffer and the reply channel are
//! bounded: a client that does not read is disconnected with close code 4008
//! (`slow_consumer`) and recovers by `resume`, instead of growing server memory.
//!
//! During a `resume`, live messages of the resumed rooms are held back until the replay of
//! history has been written, then sent in seq order without the ones the replay covered.
//!
//! A session runs over any Sink + Stream of messages ([`serve_socket`]): axum's socket after
//! the upgrade, or channels in a test.

use crate::App;
use crate::auth::bearer;
use crate::error::AppError;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::stream::{SplitSink, SplitStream};
use futures::{Sink, SinkExt, Stream, StreamExt};
use sluice_core::error::ErrorCode;
use sluice_core::frames::{ClientFrame, MessageOut, ServerFrame, parse_client_frame};
use sluice_core::hub::{ConnId, Connection, LiveEvent};
use sluice_core::ids::{RoomId, UserId};
use sluice_core::model::{MAX_HISTORY_LIMIT, StoredMessage};
use sluice_core::ratelimit::TokenBucket;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::Instrument;

/// Close code for a client that does not read fast enough.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code when the server shuts down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a frame that breaks the protocol.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for a text frame that is not UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code for a frame over the hard size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// How long one write to the socket may take before the client is considered gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Replies the reader may queue ahead of the writer.
const REPLY_BUFFER: usize = 64;
/// Bytes read from the socket per call, and the read buffer every connection holds from its
/// start (tungstenite's default is 128 KiB, zero-filled: 128 KiB resident per idle
/// connection). A chat frame fits in one read; a larger one grows the buffer as it needs and
/// takes a few reads. At 2 KiB this buffer was the largest part of an idle connection.
const READ_BUFFER: usize = 512;

#[derive(serde::Deserialize)]
pub struct WsParams {
    token: Option<String>,
}

/// Authenticates, then upgrades. A missing or bad token is refused with HTTP 401 before
/// any WebSocket is opened.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(params): Query<WsParams>,
    ws: WebSocketUpgrade,
) -> Response {
    // A browser always sends its page's origin: refuse pages that are not ours, so another
    // site cannot open a socket with a token it got hold of (cross-site WebSocket hijacking).
    if let Some(origin) = headers.get(header::ORIGIN)
        && !app.limits.allowed_origins.is_empty()
        && !app.limits.allowed_origins.iter().any(|o| origin.as_bytes() == o.as_bytes())
    {
        app.backends.metrics.errors.with_label_values(&["unauthorized"]).inc();
        let body = ServerFrame::error(ErrorCode::Unauthorized, "origin not allowed (--allowed-origins)", None).to_json();
        return (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    // Before the token is even looked at: a flood of handshakes costs signature checks.
    let rate = app.limits.handshake_rate_per_ip;
    if rate > 0.0 && !allowed(&app, app.backends.limiter.take(&format!("hs:{}", peer.ip()), rate, 2.0 * rate).await) {
        return too_many(&app, format!("more than {rate} connection attempts per second from this address"));
    }
    let token = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer).map(str::to_string).or(params.token);
    let user = match token.as_deref().map(|t| app.auth.verify_user(t)) {
        Some(Ok(user)) => user,
        Some(Err(e)) => return unauthorized(&app, &e.0),
        None => return unauthorized(&app, "missing token: send Authorization: Bearer <jwt> or ?token=<jwt>"),
    };
    let slot = Slot { app: app.clone(), key: format!("conns:{user}"), id: sluice_core::ids::random_id() };
    if !allowed(&app, slot.take().await) {
        let max = app.limits.max_connections_per_user;
        return too_many(&app, format!("{user} already holds {max} connections (at most {max} per user)"));
    }
    ws.read_buffer_size(READ_BUFFER)
        .max_message_size(app.limits.hard_frame_bytes)
        .max_frame_size(app.limits.hard_frame_bytes)
        .on_upgrade(move |socket| session(app, user, socket, slot))
}

/// Whether a limit allows the action. When the limiter cannot be reached (Redis down), it
/// does: limits protect the service, and refusing every user would be the outage itself.
fn allowed(app: &App, decision: Result<bool, sluice_core::error::HubError>) -> bool {
    decision.unwrap_or_else(|e| {
        app.backends.metrics.errors.with_label_values(&["limiter_unavailable"]).inc();
        tracing::warn!(error = %e, "limiter unavailable; allowing");
        true
    })
}

fn too_many(app: &App, message: String) -> Response {
    app.backends.metrics.errors.with_label_values(&["rate_limited"]).inc();
    let body = ServerFrame::error(ErrorCode::RateLimited, message, None).to_json();
    (StatusCode::TOO_MANY_REQUESTS, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// One of a user's connection slots (a lease in the limiter), renewed while the session
/// lives and given back when it ends. A gateway that dies stops renewing: its slots lapse.
struct Slot {
    app: Arc<App>,
    key: String,
    id: String,
}

impl Slot {
    async fn take(&self) -> Result<bool, sluice_core::error::HubError> {
        let ttl = 3 * self.app.limits.ping_interval;
        self.app.backends.limiter.lease(&self.key, &self.id, self.app.limits.max_connections_per_user, ttl).await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (limiter, key, id) = (self.app.backends.limiter.clone(), std::mem::take(&mut self.key), std::mem::take(&mut self.id));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { limiter.release(&key, &id).await });
        }
    }
}

fn unauthorized(app: &App, message: &str) -> Response {
    app.backends.metrics.errors.with_label_values(&["unauthorized"]).inc();
    let body = ServerFrame::error(ErrorCode::Unauthorized, message, None).to_json();
    (StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// What the reader hands the writer, in order.
///
/// Boxed payloads keep this small: a tokio channel allocates its first block of 32 slots
/// when created, so every connection pays 32 x `size_of::<Out>()` even when idle.
#[allow(clippy::box_collection)] // a `String` (24 bytes) would double the slot
enum Out {
    Frame(Box<ServerFrame>),
    /// Hold live messages of this room until `ResumeDone`; the replay starts after the seq.
    ResumeStart(Box<(String, u64)>),
    Replay(Box<StoredMessage>),
    ResumeDone(Box<String>),
    /// Write this close frame (or, for `None`, answer the client's close) and end.
    Close(Option<Box<CloseFrame>>),
}

// One word per slot: the channel's first block (32 slots) is part of every idle connection.
const _: () = assert!(std::mem::size_of::<Out>() <= 16);

/// Runs one WebSocket session of `user` over `socket`: axum's socket after an upgrade, or any
/// pair of channels (a test drives a session so, without a network). It first takes one of the
/// user's connection slots; `false` when the user already holds every slot (the upgrade
/// refuses such a handshake with 429 before it gets here).
pub async fn serve_socket<S>(app: Arc<App>, user: UserId, socket: S) -> bool
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Send + 'static,
{
    let slot = Slot { app: app.clone(), key: format!("conns:{user}"), id: sluice_core::ids::random_id() };
    if !allowed(&app, slot.take().await) {
        return false;
    }
    session(app, user, socket, slot).await;
    true
}

async fn session<S>(app: Arc<App>, user: UserId, socket: S, slot: Slot)
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Send + 'static,
{
    let conn = match app.backends.hub.connect(&user, app.limits.outbound_buffer).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "hub refused a connection");
            return;
        }
    };
    let conn_id = conn.id;
    let span = tracing::info_span!("ws", conn_id, user = %user);
    tracing::debug!(parent: &span, "connected");
    app.backends.metrics.connections.inc();
    let (sink, stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(REPLY_BUFFER);
    let writer = tokio::spawn(write_loop(app.clone(), conn, sink, out_rx, slot).instrument(span.clone()));
    read_loop(&app, &user, conn_id, stream, out_tx).instrument(span.clone()).await;
    let _ = writer.await;
    app.backends.hub.disconnect(&user, conn_id).await;
    app.backends.metrics.connections.dec();
    tracing::debug!(parent: &span, "disconnected");
}

async fn read_loop<S>(app: &App, user: &UserId, conn_id: ConnId, mut stream: SplitStream<S>, out: mpsc::Sender<Out>)
where
    S: Stream<Item = Result<Message, axum::Error>>,
{
    let mut typing = TokenBucket::new(app.limits.send_rate, app.limits.send_burst);
    loop {
        let next = tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = out.closed() => return,
            n = tokio::time::timeout(app.limits.idle_timeout, stream.next()) => n,
        };
        let msg = match next {
            Err(_) => {
                tracing::debug!("idle timeout");
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                // RFC 6455 7.4.1: say why before the connection goes.
                if let Some(frame) = close_for(e) {
                    app.backends
                        .metrics
                        .errors
                        .with_label_values(&[if frame.code == CLOSE_TOO_BIG { "too_large" } else { "bad_frame" }])
                        .inc();
                    let _ = out.send(Out::Close(Some(Box::new(frame)))).await;
                }
                return;
            }
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                reply_err(app, &out, AppError::bad("binary frames are not supported; send JSON text frames"), None).await;
                continue;
            }
            Message::Close(_) => {
                // The reply (echoing the client's code) is queued by the protocol; the writer
                // sends it and closes.
                let _ = out.send(Out::Close(None)).await;
                return;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if text.len() > app.limits.max_frame_bytes {
            let e = AppError::too_large(format!("frame of {} bytes; at most {}", text.len(), app.limits.max_frame_bytes));
            reply_err(app, &out, e, None).await;
            continue;
        }
        let frame = match parse_client_frame(text.as_str()) {
            Ok(f) => f,
            Err(e) => {
                reply_err(app, &out, AppError::new(e.code, e.message), e.reference).await;
                continue;
            }
        };
        app.backends.metrics.frames_in.with_label_values(&[frame.kind()]).inc();
        // Boxed: handling a frame awaits the store and hub, a state machine of several KiB
        // that an idle connection should not carry in its task.
        if Box::pin(handle(app, user, conn_id, frame, &out, &mut typing)).await.is_err() {
            return;
        }
    }
}

/// The close frame a read error deserves, if the connection can still carry one.
fn close_for(e: axum::Error) -> Option<CloseFrame> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let frame = |code, reason: &str| Some(CloseFrame { code, reason: reason.into() });
    match e.into_inner().downcast::<WsError>().map(|e| *e) {
        Ok(WsError::Capacity(_)) => frame(CLOSE_TOO_BIG, "too_large: frame over the size limit"),
        Ok(WsError::Utf8(_)) => frame(CLOSE_INVALID_DATA, "bad_frame: text frame is not UTF-8"),
        Ok(WsError::Protocol(_)) => frame(CLOSE_PROTOCOL_ERROR, "bad_frame: protocol error"),
        _ => None,
    }
}

struct WriterGone;

async fn reply(out: &mpsc::Sender<Out>, frame: ServerFrame) -> Result<(), WriterGone> {
    out.send(Out::Frame(Box::new(frame))).await.map_err(|_| WriterGone)
}

async fn reply_err(app: &App, out: &mpsc::Sender<Out>, e: AppError, reference: Option<String>) {
    app.backends.metrics.errors.with_label_values(&[e.code.as_str()]).inc();
    let _ = reply(out, e.frame(reference)).await;
}

async fn handle(
    app: &App,
    user: &UserId,
    conn_id: ConnId,
    frame: ClientFrame,
    out: &mpsc::Sender<Out>,
    typing: &mut TokenBucket,
) -> Result<(), WriterGone> {
    match frame {
        ClientFrame::Send { room, client_msg_id, body } => {
            // Per user, whatever the number of sockets and gateways they use.
            let rate = (app.limits.send_rate, app.limits.send_burst);
            if !allowed(app, app.backends.limiter.take(&format!("send:{user}"), rate.0, rate.1).await) {
                let e = AppError::new(ErrorCode::RateLimited, format!("more than {} sends per second for this user", app.limits.send_rate));
                reply_err(app, out, e, Some(client_msg_id)).await;
                return Ok(());
            }
            let sent = async { app.send(user, &RoomId::new(room)?, &client_msg_id, &body, Some(conn_id)).await };
            match sent.await {
                Ok(p) => {
                    let m = &p.message;
                    reply(out, ServerFrame::Ack { client_msg_id, room: m.room.clone(), seq: m.seq, msg_id: m.msg_id.clone() }).await?;
                }
                Err(e) => reply_err(app, out, e, Some(client_msg_id)).await,
            }
        }
        ClientFrame::Read { room, seq } => {
            // The new counters reach every socket of the user (this one included) through the hub.
            if let Err(e) = async { app.read(user, &RoomId::new(room.as_str())?, seq).await }.await {
                reply_err(app, out, e, Some(room)).await;
            }
        }
        ClientFrame::History { room, before, after, limit } => {
            match async { app.history(Some(user), &RoomId::new(room.as_str())?, before, after, limit).await }.await {
                Ok(msgs) => reply(out, ServerFrame::History { room, messages: msgs.iter().map(MessageOut::from).collect() }).await?,
                Err(e) => reply_err(app, out, e, Some(room)).await,
            }
        }
        ClientFrame::Inbox { after, limit } => match app.inbox(user, after, limit).await {
            Ok(inbox) => reply(out, ServerFrame::inbox(&inbox)).await?,
            Err(e) => reply_err(app, out, e, None).await,
        },
        ClientFrame::Resume { rooms } => {
            if rooms.len() > app.limits.max_resume_rooms {
                let e = AppError::too_large(format!("at most {} rooms per resume", app.limits.max_resume_rooms));
                reply_err(app, out, e, None).await;
                return Ok(());
            }
            // Authorized first: the writer keeps state only for rooms the user may read.
            let mut readable = Vec::with_capacity(rooms.len());
            for (room, after) in rooms {
                let checked = async {
                    let id = RoomId::new(room.as_str())?;
                    app.authorize(user, &id).await.map(|()| id)
                };
                match checked.await {
                    Ok(id) => readable.push((id, after)),
                    Err(e) => reply_err(app, out, e, Some(room)).await,
                }
            }
            // Hold live messages of every room in the frame from now on, so none slips out
            // between the replays of two rooms.
            for (room, after) in &readable {
                out.send(Out::ResumeStart(Box::new((room.to_string(), *after)))).await.map_err(|_| WriterGone)?;
            }
            let mut done = BTreeMap::new();
            for (room, after) in readable {
                let last = replay(app, user, &room, after, out).await?;
                let room = room.into_string();
                done.insert(room.clone(), last);
                out.send(Out::ResumeDone(Box::new(room))).await.map_err(|_| WriterGone)?;
            }
            reply(out, ServerFrame::Resumed { rooms: done }).await?;
        }
        ClientFrame::Typing { room } => {
            if !typing.try_take() {
                return Ok(());
            }
            if let Err(e) = async { app.typing(user, &RoomId::new(room.as_str())?).await }.await {
                reply_err(app, out, e, Some(room)).await;
            }
        }
    }
    Ok(())
}

/// Sends every message of `room` after `after`, page by page; returns the last seq sent.
async fn replay(app: &App, user: &UserId, room: &RoomId, after: u64, out: &mpsc::Sender<Out>) -> Result<u64, WriterGone> {
    let mut last = after;
    loop {
        match app.history(Some(user), room, None, Some(last), Some(MAX_HISTORY_LIMIT as u64)).await {
            Ok(page) if page.is_empty() => break,
            Ok(page) => {
                last = page.last().map_or(last, |m| m.seq);
                for m in page {
                    out.send(Out::Replay(Box::new(m))).await.map_err(|_| WriterGone)?;
                }
            }
            Err(e) => {
                reply_err(app, out, e, Some(room.to_string())).await;
                break;
            }
        }
    }
    Ok(last)
}

/// Per-room state of a resume in progress, kept by the writer from `ResumeStart` until
/// `ResumeDone` and then dropped.
struct Resuming {
    /// The highest seq the replay covered so far.
    last: u64,
    /// Live messages that arrived during the replay.
    held: Vec<Arc<StoredMessage>>,
}

/// Seqs recently written per room, so that a message both replayed and pushed live is written
/// once. Bounded: at most [`Sent::ROOMS`] rooms (the oldest room is forgotten first) of
/// [`Sent::KEEP`] seqs each, whatever the number of rooms a socket sees (a campaign sender's
/// socket sees one room per recipient).
#[derive(Default)]
struct Sent {
    rooms: HashMap<String, VecDeque<u64>>,
    order: VecDeque<String>,
    /// The version of the last unread frame written.
    unread_version: u64,
}

impl Sent {
    const KEEP: usize = 64;
    const ROOMS: usize = 256;

    /// Records `seq` as sent; false if it was sent already.
    fn first_time(&mut self, room: &str, seq: u64) -> bool {
        if let Some(seqs) = self.rooms.get_mut(room) {
            if seqs.contains(&seq) {
                return false;
            }
            if seqs.len() == Self::KEEP {
                seqs.pop_front();
            }
            seqs.push_back(seq);
            return true;
        }
        if self.order.len() == Self::ROOMS
            && let Some(oldest) = self.order.pop_front()
        {
            self.rooms.remove(&oldest);
        }
        self.order.push_back(room.to_string());
        self.rooms.insert(room.to_string(), VecDeque::from([seq]));
        true
    }
}

async fn write_loop<S>(app: Arc<App>, mut conn: Connection, mut sink: SplitSink<S, Message>, mut replies: mpsc::Receiver<Out>, slot: Slot)
where
    S: Sink<Message, Error = axum::Error>,
{
    let mut resuming: HashMap<String, Resuming> = HashMap::new();
    let mut sent = Sent::default();
    let mut ping = tokio::time::interval(app.limits.ping_interval);
    ping.tick().await;
    let close = |code: u16, reason: &'static str| Message::Close(Some(CloseFrame { code, reason: reason.into() }));
    loop {
        let mut batch: Vec<ServerFrame> = Vec::new();
        // Replies first: a resume's ResumeStart must be seen before live events that arrive
        // after it, so they are held back instead of overtaking the replay.
        tokio::select! {
            biased;
            _ = app.shutdown.cancelled() => {
                let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(close(CLOSE_GOING_AWAY, "server shutting down"))).await;
                break;
            }
            r = replies.recv() => match r {
                None => break,
                Some(Out::Close(frame)) => {
                    // With `None` the protocol already holds the answer to the client's close
                    // (echoing its code): closing the sink writes it out.
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
                        if let Some(frame) = frame {
                            sink.send(Message::Close(Some(*frame))).await?;
                        }
                        sink.close().await
                    })
                    .await;
                    break;
                }
                Some(Out::Frame(f)) => batch.push(*f),
                Some(Out::ResumeStart(start)) => {
                    let (room, after) = *start;
                    resuming.insert(room, Resuming { last: after, held: Vec::new() });
                }
                Some(Out::Replay(m)) => {
                    if let Some(r) = resuming.get_mut(&m.room) {
                        r.last = r.last.max(m.seq);
                    }
                    if sent.first_time(&m.room, m.seq) {
                        batch.push(ServerFrame::Message(MessageOut::from(&*m)));
                    }
                }
                Some(Out::ResumeDone(room)) => {
                    // What arrived live during the replay goes out now, in seq order, less
                    // what the replay covered. Later live messages go out as they come: a
                    // message published late (below a seq already written) is still written,
                    // never dropped for being "old".
                    if let Some(mut r) = resuming.remove(room.as_str()) {
                        r.held.sort_by_key(|m| m.seq);
                        for m in r.held {
                            if m.seq > r.last && sent.first_time(&m.room, m.seq) {
                                batch.push(ServerFrame::Message(MessageOut::from(&*m)));
                            }
                        }
                    }
                }
            },
            ev = conn.events.recv() => match ev {
                None => {
                    if conn.overflowed.load(Ordering::Acquire) {
                        app.backends.metrics.slow_consumers.inc();
                        let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(close(CLOSE_SLOW_CONSUMER, "slow_consumer: reconnect and resume"))).await;
                    }
                    break;
                }
                Some(ev) => {
                    if let Some(f) = live_frame(&ev, &conn, &mut resuming, &mut sent) {
                        batch.push(f);
                    } else if resuming.values().any(|r| r.held.len() > app.limits.outbound_buffer) {
                        app.backends.metrics.slow_consumers.inc();
                        let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(close(CLOSE_SLOW_CONSUMER, "slow_consumer: reconnect and resume"))).await;
                        break;
                    }
                }
            },
            _ = ping.tick() => {
                if !matches!(tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Ping(Default::default()))).await, Ok(Ok(()))) {
                    break;
                }
                // Renewed, not re-checked: a slot held is kept (an error only means Redis is away).
                let _ = slot.take().await;
                continue;
            }
        }
        let n = batch.len();
        let mut ok = true;
        for f in batch {
            ok = matches!(tokio::time::timeout(WRITE_TIMEOUT, sink.feed(Message::Text(f.to_json().into()))).await, Ok(Ok(())));
            if !ok {
                break;
            }
        }
        if !ok || !matches!(tokio::time::timeout(WRITE_TIMEOUT, sink.flush()).await, Ok(Ok(()))) {
            break;
        }
        app.backends.metrics.frames_out.inc_by(n as u64);
    }
    // Closing the reply channel stops the reader.
    replies.close();
}

/// The frame a live event becomes on this connection, if any.
fn live_frame(ev: &LiveEvent, conn: &Connection, resuming: &mut HashMap<String, Resuming>, sent: &mut Sent) -> Option<ServerFrame> {
    match ev {
        LiveEvent::Message { message, origin } => {
            if *origin == Some(conn.id) {
                return None;
            }
            if let Some(r) = resuming.get_mut(&message.room) {
                r.held.push(message.clone());
                return None;
            }
            sent.first_time(&message.room, message.seq).then(|| ServerFrame::Message(MessageOut::from(&**message)))
        }
        LiveEvent::Unread(u) => {
            // Updates of the user's counters can arrive out of order (a read racing a send):
            // one older than what this socket already showed would show a stale count.
            if u.version < sent.unread_version {
                return None;
            }
            sent.unread_version = u.version;
            Some(ServerFrame::Unread { room: u.room.clone(), unread: u.unread, total_unread: u.total_unread, version: u.version })
        }
        LiveEvent::Typing { room, user } => (user != &conn.user).then(|| ServerFrame::Typing { room: room.clone(), user: user.clone() }),
        LiveEvent::Read { .. } => None,
    }
}
