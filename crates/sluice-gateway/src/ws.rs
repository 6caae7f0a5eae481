//! The WebSocket contract v1: `GET /v1/ws`, one session per socket.
//!
//! A session is one task: it handles the client's frames in order (sends are acked once
//! durable, replies written directly) and writes live events from the hub between them. The
//! hub's buffer is bounded: a client that does not read, or whose events pile up while its
//! frames are handled, is disconnected with close code 4008 (`slow_consumer`) and recovers by
//! `resume`, instead of growing server memory.
//!
//! During a `resume`, live events wait in the hub's buffer until the replay of history has
//! been written; then they go out without the messages the replay covered.
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
use futures::{Sink, SinkExt, Stream, StreamExt};
use sluice_core::error::ErrorCode;
use sluice_core::frames::{ClientFrame, MessageOut, ServerFrame, parse_client_frame};
use sluice_core::hub::{Connection, LiveEvent};
use sluice_core::ids::{RoomId, UserId};
use sluice_core::model::MAX_HISTORY_LIMIT;
use sluice_core::ratelimit::TokenBucket;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
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
/// Bytes read from the socket per call, and the read buffer every connection holds from its
/// start (tungstenite's default is 128 KiB, zero-filled: 128 KiB resident per idle
/// connection). A chat frame with a short body fits in one read; a larger one grows the buffer as it needs and
/// takes a few reads. At 2 KiB this buffer was the largest part of an idle connection.
const READ_BUFFER: usize = 256;

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
    let slot = Slot::new(&app, &user);
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

/// Takes one from `user`'s bucket `key` at the send rate, per user whatever the number of
/// sockets and gateways; the `rate_limited` error (naming the `actions`) when it is empty.
async fn over_rate(app: &App, key: &str, actions: &str, user: &UserId) -> Option<AppError> {
    let (rate, burst) = (app.limits.send_rate, app.limits.send_burst);
    let taken = allowed(app, app.backends.limiter.take(&format!("{key}:{user}"), rate, burst).await);
    (!taken).then(|| AppError::new(ErrorCode::RateLimited, format!("more than {rate} {actions} per second for this user")))
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
    fn new(app: &Arc<App>, user: &UserId) -> Slot {
        Slot { app: app.clone(), key: format!("conns:{user}"), id: sluice_core::ids::random_id() }
    }

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

/// One connection: its socket, its hub registration, what it has written, and its limits.
/// A session is one task: it reads a frame and handles it (replies are written directly), or
/// writes a live event from the hub, or pings, whichever comes first. Live events wait in the
/// hub's bounded channel while a frame is handled; a client whose events overflow it is cut
/// off (`slow_consumer`). One task and no reply channel keep an idle connection small.
struct Session<S> {
    app: Arc<App>,
    socket: S,
    conn: Connection,
    sent: Sent,
    typing: TokenBucket,
}

/// The socket can no longer be written (closed, failed, or a write timed out).
struct Gone;

impl<S> Session<S>
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    /// Writes `frames` and flushes.
    async fn write(&mut self, frames: impl IntoIterator<Item = ServerFrame>) -> Result<(), Gone> {
        let mut n = 0;
        for f in frames {
            n += 1;
            if !matches!(tokio::time::timeout(WRITE_TIMEOUT, self.socket.feed(Message::Text(f.to_json().into()))).await, Ok(Ok(()))) {
                return Err(Gone);
            }
        }
        if !matches!(tokio::time::timeout(WRITE_TIMEOUT, self.socket.flush()).await, Ok(Ok(()))) {
            return Err(Gone);
        }
        self.app.backends.metrics.frames_out.inc_by(n as u64);
        Ok(())
    }

    async fn reply(&mut self, frame: ServerFrame) -> Result<(), Gone> {
        self.write([frame]).await
    }

    /// Answers an error frame; a socket that cannot take it is noticed at the next write.
    async fn reply_err(&mut self, e: AppError, reference: Option<String>) {
        self.app.backends.metrics.errors.with_label_values(&[e.code.as_str()]).inc();
        let _ = self.reply(e.frame(reference)).await;
    }

    /// Writes `frame` (or, for `None`, the answer to the client's close, which the protocol
    /// already holds) and closes the socket.
    async fn close(&mut self, frame: Option<CloseFrame>) {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
            if let Some(frame) = frame {
                self.socket.send(Message::Close(Some(frame))).await?;
            }
            self.socket.close().await
        })
        .await;
    }
}

/// Runs one WebSocket session of `user` over `socket`: axum's socket after an upgrade, or any
/// pair of channels (a test drives a session so, without a network). It first takes one of the
/// user's connection slots; `false` when the user already holds every slot (the upgrade
/// refuses such a handshake with 429 before it gets here).
pub async fn serve_socket<S>(app: Arc<App>, user: UserId, socket: S) -> bool
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Send + Unpin + 'static,
{
    let slot = Slot::new(&app, &user);
    if !allowed(&app, slot.take().await) {
        return false;
    }
    session(app, user, socket, slot).await;
    true
}

async fn session<S>(app: Arc<App>, user: UserId, socket: S, slot: Slot)
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Send + Unpin + 'static,
{
    let conn = match app.backends.hub.connect(&user, app.limits.outbound_buffer).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "hub refused a connection");
            return;
        }
    };
    let conn_id = conn.id;
    // At debug level: an enabled span is an allocation of about 300 bytes that every idle
    // connection would hold (its events are at debug level too).
    let span = tracing::debug_span!("ws", conn_id, user = %user);
    tracing::debug!(parent: &span, "connected");
    app.backends.metrics.connections.inc();
    let typing = TokenBucket::new(app.limits.send_rate, app.limits.send_burst);
    let mut s = Session { app: app.clone(), socket, conn, sent: Sent::default(), typing };
    run(&mut s, &user, &slot).instrument(span.clone()).await;
    drop(s);
    app.backends.hub.disconnect(&user, conn_id).await;
    app.backends.metrics.connections.dec();
    tracing::debug!(parent: &span, "disconnected");
}

/// The session's loop, until the client leaves, goes idle or falls behind, or the server
/// shuts down.
async fn run<S>(s: &mut Session<S>, user: &UserId, slot: &Slot)
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let app = s.app.clone();
    let close = |code: u16, reason: &'static str| CloseFrame { code, reason: reason.into() };
    let mut ping = tokio::time::interval(app.limits.ping_interval);
    ping.tick().await;
    let mut idle_until = tokio::time::Instant::now() + app.limits.idle_timeout;
    // The work of each branch is boxed, so that an idle connection's task holds only the
    // futures it waits on (the session's future: 2,704 -> 1,688 bytes); a frame or an event
    // costs an allocation instead.
    loop {
        tokio::select! {
            biased;
            _ = app.shutdown.cancelled() => {
                Box::pin(s.close(Some(close(CLOSE_GOING_AWAY, "server shutting down")))).await;
                return;
            }
            ev = s.conn.events.recv() => match ev {
                None => {
                    if s.conn.events.overflowed() {
                        app.backends.metrics.slow_consumers.inc();
                        Box::pin(s.close(Some(close(CLOSE_SLOW_CONSUMER, "slow_consumer: reconnect and resume")))).await;
                    }
                    return;
                }
                Some(ev) => {
                    if let Some(f) = live_frame(&ev, &s.conn, &mut s.sent)
                        && Box::pin(s.reply(f)).await.is_err()
                    {
                        return;
                    }
                }
            },
            msg = s.socket.next() => {
                idle_until = tokio::time::Instant::now() + app.limits.idle_timeout;
                if Box::pin(on_message(s, user, msg)).await.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(idle_until) => {
                tracing::debug!("idle timeout");
                return;
            }
            _ = ping.tick() => {
                if Box::pin(keep_alive(s, slot)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Pings the client and renews the session's connection slot.
async fn keep_alive<S>(s: &mut Session<S>, slot: &Slot) -> Result<(), Gone>
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    if !matches!(tokio::time::timeout(WRITE_TIMEOUT, s.socket.send(Message::Ping(Default::default()))).await, Ok(Ok(()))) {
        return Err(Gone);
    }
    // Renewed, not re-checked: a slot held is kept (an error only means Redis is away).
    let _ = slot.take().await;
    Ok(())
}

/// What the client sent: a frame to handle, or the end of the connection (`Err`).
async fn on_message<S>(s: &mut Session<S>, user: &UserId, msg: Option<Result<Message, axum::Error>>) -> Result<(), Gone>
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let app = s.app.clone();
    let text = match msg {
        None => return Err(Gone),
        Some(Err(e)) => {
            // RFC 6455 7.4.1: say why before the connection goes.
            if let Some(frame) = close_for(e) {
                app.backends.metrics.errors.with_label_values(&[if frame.code == CLOSE_TOO_BIG { "too_large" } else { "bad_frame" }]).inc();
                s.close(Some(frame)).await;
            }
            return Err(Gone);
        }
        Some(Ok(Message::Text(t))) => t,
        Some(Ok(Message::Binary(_))) => {
            s.reply_err(AppError::bad("binary frames are not supported; send JSON text frames"), None).await;
            return Ok(());
        }
        Some(Ok(Message::Close(_))) => {
            // The reply (echoing the client's code) is queued by the protocol; closing the
            // socket writes it.
            s.close(None).await;
            return Err(Gone);
        }
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(()),
    };
    if text.len() > app.limits.max_frame_bytes {
        let e = AppError::too_large(format!("frame of {} bytes; at most {}", text.len(), app.limits.max_frame_bytes));
        s.reply_err(e, None).await;
        return Ok(());
    }
    let frame = match parse_client_frame(text.as_str()) {
        Ok(f) => f,
        Err(e) => {
            s.reply_err(AppError::new(e.code, e.message), e.reference).await;
            return Ok(());
        }
    };
    app.backends.metrics.frames_in.with_label_values(&[frame.kind()]).inc();
    // Boxed: handling a frame awaits the store and hub, a state machine of several KiB that
    // an idle connection should not carry in its task.
    Box::pin(handle(s, user, frame)).await
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

async fn handle<S>(s: &mut Session<S>, user: &UserId, frame: ClientFrame) -> Result<(), Gone>
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let app = s.app.clone();
    let app = &*app;
    let conn_id = s.conn.id;
    match frame {
        ClientFrame::Send { room, client_msg_id, body } => {
            if let Some(e) = over_rate(app, "send", "sends", user).await {
                s.reply_err(e, Some(client_msg_id)).await;
                return Ok(());
            }
            let sent = async { app.send(user, &RoomId::new(room)?, &client_msg_id, &body, Some(conn_id)).await };
            match sent.await {
                Ok(p) => {
                    let m = &p.message;
                    s.reply(ServerFrame::Ack { client_msg_id, room: m.room.clone(), seq: m.seq, msg_id: m.msg_id.clone() }).await?;
                }
                Err(e) => s.reply_err(e, Some(client_msg_id)).await,
            }
        }
        ClientFrame::Read { room, seq } => {
            // The new counters reach every socket of the user (this one included) through the hub.
            if let Err(e) = async { app.read(user, &RoomId::new(room.as_str())?, seq).await }.await {
                s.reply_err(e, Some(room)).await;
            }
        }
        ClientFrame::History { room, before, after, limit } => {
            match async { app.history(Some(user), &RoomId::new(room.as_str())?, before, after, limit).await }.await {
                Ok(msgs) => s.reply(ServerFrame::History { room, messages: msgs.iter().map(MessageOut::from).collect() }).await?,
                Err(e) => s.reply_err(e, Some(room)).await,
            }
        }
        ClientFrame::Inbox { after, limit } => match app.inbox(user, after, limit).await {
            Ok(inbox) => s.reply(ServerFrame::inbox(&inbox)).await?,
            Err(e) => s.reply_err(e, None).await,
        },
        ClientFrame::Resume { rooms } => {
            if rooms.len() > app.limits.max_resume_rooms {
                let e = AppError::too_large(format!("at most {} rooms per resume", app.limits.max_resume_rooms));
                s.reply_err(e, None).await;
                return Ok(());
            }
            // Authorized first: only rooms the user may read are replayed.
            let mut readable = Vec::with_capacity(rooms.len());
            for (room, after) in rooms {
                let checked = async {
                    let id = RoomId::new(room.as_str())?;
                    app.authorize(user, &id).await.map(|()| id)
                };
                match checked.await {
                    Ok(id) => readable.push((id, after)),
                    Err(e) => s.reply_err(e, Some(room)).await,
                }
            }
            // Live events wait in the hub's channel while this frame is handled; once the
            // replays are written they go out less what a replay covered (`Sent::replayed`).
            let mut done = BTreeMap::new();
            for (room, after) in readable {
                let last = replay(s, user, &room, after).await?;
                s.sent.replayed(&room, last);
                done.insert(room.into_string(), last);
            }
            s.reply(ServerFrame::Resumed { rooms: done }).await?;
        }
        ClientFrame::Presence { room } => {
            // A store read and a hub lookup each: limited like sends.
            if let Some(e) = over_rate(app, "presence", "presence queries", user).await {
                s.reply_err(e, Some(room)).await;
                return Ok(());
            }
            match async { app.presence(user, &RoomId::new(room.as_str())?).await }.await {
                Ok(online) => s.reply(ServerFrame::Presence { room, online }).await?,
                Err(e) => s.reply_err(e, Some(room)).await,
            }
        }
        ClientFrame::Typing { room } => {
            if !s.typing.try_take() {
                return Ok(());
            }
            if let Err(e) = async { app.typing(user, &RoomId::new(room.as_str())?).await }.await {
                s.reply_err(e, Some(room)).await;
            }
        }
    }
    Ok(())
}

/// Writes every message of `room` after `after`, page by page; returns the last seq written.
async fn replay<S>(s: &mut Session<S>, user: &UserId, room: &RoomId, after: u64) -> Result<u64, Gone>
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let app = s.app.clone();
    let mut last = after;
    loop {
        match app.history(Some(user), room, None, Some(last), Some(MAX_HISTORY_LIMIT as u64)).await {
            Ok(page) if page.is_empty() => break,
            Ok(page) => {
                last = page.last().map_or(last, |m| m.seq);
                let frames: Vec<ServerFrame> =
                    page.iter().filter(|m| s.sent.first_time(&m.room, m.seq)).map(|m| ServerFrame::Message(MessageOut::from(m))).collect();
                s.write(frames).await?;
            }
            Err(e) => {
                s.reply_err(e, Some(room.to_string())).await;
                break;
            }
        }
    }
    Ok(last)
}

/// What a socket has written per room, so that a message both replayed and pushed live is
/// written once. Bounded: at most [`Sent::ROOMS`] rooms (the oldest room is forgotten first),
/// each with [`Sent::KEEP`] recent seqs and the seq a resume's replay reached, whatever the
/// number of rooms a socket sees (a campaign sender's socket sees one room per recipient).
#[derive(Default)]
struct Sent {
    rooms: HashMap<String, RoomSent>,
    order: VecDeque<String>,
    /// The version of the last unread frame written.
    unread_version: u64,
}

#[derive(Default)]
struct RoomSent {
    seqs: VecDeque<u64>,
    /// Every message up to this seq was written by a replay: live events that waited during
    /// the replay and are at or below it are not written again.
    replayed: u64,
}

impl Sent {
    const KEEP: usize = 64;
    const ROOMS: usize = 256;

    fn room(&mut self, room: &str) -> &mut RoomSent {
        if !self.rooms.contains_key(room) {
            if self.order.len() == Self::ROOMS
                && let Some(oldest) = self.order.pop_front()
            {
                self.rooms.remove(&oldest);
            }
            self.order.push_back(room.to_string());
        }
        self.rooms.entry(room.to_string()).or_default()
    }

    /// Records `seq` as sent; false if it was sent already. A message published late (below
    /// a seq already written) is still written, never dropped for being "old".
    fn first_time(&mut self, room: &str, seq: u64) -> bool {
        let r = self.room(room);
        if seq <= r.replayed || r.seqs.contains(&seq) {
            return false;
        }
        if r.seqs.len() == Self::KEEP {
            r.seqs.pop_front();
        }
        r.seqs.push_back(seq);
        true
    }

    /// A replay of `room` wrote everything up to `last`.
    fn replayed(&mut self, room: &str, last: u64) {
        let r = self.room(room);
        r.replayed = r.replayed.max(last);
    }
}

/// The frame a live event becomes on this connection, if any.
fn live_frame(ev: &LiveEvent, conn: &Connection, sent: &mut Sent) -> Option<ServerFrame> {
    match ev {
        LiveEvent::Message { message, origin } => {
            if *origin == Some(conn.id) {
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

#[cfg(test)]
mod tests {
    use super::Sent;

    #[test]
    fn sent_writes_each_seq_once_and_skips_what_a_replay_covered() {
        let mut sent = Sent::default();
        assert!(sent.first_time("r", 5));
        assert!(!sent.first_time("r", 5), "a seq is written once");
        assert!(sent.first_time("r", 3), "a message published late is still written");
        sent.replayed("r", 200);
        assert!(!sent.first_time("r", 150), "covered by the replay, even beyond the recent window");
        assert!(sent.first_time("r", 201));
        assert!(sent.first_time("other", 150), "per room");
    }

    #[test]
    fn sent_stays_bounded_whatever_the_rooms_and_seqs() {
        let mut sent = Sent::default();
        for seq in 1..=1_000 {
            assert!(sent.first_time("r", seq));
        }
        assert_eq!(sent.rooms["r"].seqs.len(), Sent::KEEP);
        for room in 0..1_000 {
            sent.first_time(&format!("room-{room}"), 1);
        }
        assert_eq!((sent.rooms.len(), sent.order.len()), (Sent::ROOMS, Sent::ROOMS), "the oldest rooms are forgotten");
    }
}
