//! The WebSocket session driven over channels, without a network (the shape of axum's
//! testing-websockets example): `ws::serve_socket` runs a session over any Sink + Stream of
//! messages. With tokio's paused clock, the heartbeat and the idle timeout are checked
//! without waiting for them.

use axum::extract::ws::Message;
use futures::channel::mpsc;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde_json::{Value, json};
use sluice_core::ids::UserId;
use sluice_gateway::{App, Limits};
mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The server's end of a socket: what the client sends arrives on `rx`, what the session
/// writes goes to `tx`.
struct Socket {
    tx: mpsc::Sender<Message>,
    rx: mpsc::Receiver<Result<Message, axum::Error>>,
}

impl Stream for Socket {
    type Item = Result<Message, axum::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

impl Sink<Message> for Socket {
    type Error = axum::Error;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        self.tx.poll_ready(cx).map_err(axum::Error::new)
    }
    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), axum::Error> {
        self.tx.start_send(item).map_err(axum::Error::new)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Pin::new(&mut self.tx).poll_flush(cx).map_err(axum::Error::new)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Pin::new(&mut self.tx).poll_close(cx).map_err(axum::Error::new)
    }
}

/// The client's end.
struct Client {
    tx: mpsc::Sender<Result<Message, axum::Error>>,
    rx: mpsc::Receiver<Message>,
    session: tokio::task::JoinHandle<bool>,
}

impl Client {
    async fn send(&mut self, v: Value) {
        self.tx.send(Ok(Message::Text(v.to_string().into()))).await.unwrap();
    }

    /// The next message the session wrote (`None`: it closed its end).
    async fn next(&mut self) -> Option<Message> {
        tokio::time::timeout(Duration::from_secs(600), self.rx.next()).await.expect("the session writes or ends")
    }

    /// Registered with the hub: a session is once it has answered a frame.
    async fn registered(&mut self) {
        self.send(json!({"type": "inbox"})).await;
        assert_eq!(self.frame().await["type"], "inbox");
    }

    /// The next JSON frame, skipping pings.
    async fn frame(&mut self) -> Value {
        loop {
            match self.next().await.expect("open") {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Ping(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

struct Env {
    _dir: tempfile::TempDir,
    app: Arc<App>,
}

fn env(limits: Limits) -> Env {
    let (dir, app) = common::app(limits, false);
    Env { _dir: dir, app }
}

fn connect(app: &Arc<App>, user: &str) -> Client {
    let (client_tx, server_rx) = mpsc::channel(16);
    let (server_tx, client_rx) = mpsc::channel(16);
    let socket = Socket { tx: server_tx, rx: server_rx };
    let session = tokio::spawn(sluice_gateway::ws::serve_socket(app.clone(), UserId::new(user).unwrap(), socket));
    Client { tx: client_tx, rx: client_rx, session }
}

#[tokio::test]
async fn a_session_over_channels_sends_delivers_and_answers_bad_frames() {
    let e = env(Limits::default());
    let (mut alice, mut bob) = (connect(&e.app, "alice"), connect(&e.app, "bob"));
    alice.registered().await;
    bob.registered().await;
    alice.send(json!({"type": "send", "room": "dm:alice:bob", "client_msg_id": "1", "body": "hi"})).await;
    let ack = alice.frame().await;
    assert_eq!((ack["type"].as_str(), ack["seq"].as_u64()), (Some("ack"), Some(1)), "{ack}");
    let got = loop {
        let f = bob.frame().await;
        if f["type"] == "message" {
            break f;
        }
    };
    assert_eq!((got["body"].as_str(), got["sender"].as_str()), (Some("hi"), Some("alice")), "{got}");

    alice.tx.send(Ok(Message::Binary(vec![1, 2, 3].into()))).await.unwrap();
    let err = loop {
        let f = alice.frame().await;
        if f["type"] == "error" {
            break f;
        }
    };
    assert_eq!(err["code"], "bad_frame", "{err}");
    alice.send(json!({"type": "send", "room": "has space", "client_msg_id": "2", "body": "x"})).await;
    let bad_room = alice.frame().await;
    assert_eq!((bad_room["code"].as_str(), bad_room["ref"].as_str()), (Some("bad_frame"), Some("2")), "{bad_room}");
    alice.send(json!({"type": "send", "room": "dm:bob:carol", "client_msg_id": "3", "body": "x"})).await;
    assert_eq!(alice.frame().await["code"], "not_member", "a direct room of others is refused");

    alice.tx.send(Ok(Message::Close(None))).await.unwrap();
    assert!(alice.session.await.unwrap(), "the session ran and ended on the client's close");
}

#[tokio::test]
async fn the_users_connection_slots_hold_over_any_socket() {
    let e = env(Limits { max_connections_per_user: 1, ..Limits::default() });
    let mut first = connect(&e.app, "alice");
    first.send(json!({"type": "inbox"})).await;
    assert_eq!(first.frame().await["type"], "inbox");
    let second = connect(&e.app, "alice");
    assert!(!second.session.await.unwrap(), "a second session of a user at the limit does not start");
    first.tx.send(Ok(Message::Close(None))).await.unwrap();
    assert!(first.session.await.unwrap());
}

/// Paused time: the session pings every `ping_interval` and ends a connection that sent
/// nothing for `idle_timeout`.
#[tokio::test(start_paused = true)]
async fn a_silent_client_is_pinged_then_dropped_at_the_idle_timeout() {
    let limits = Limits { ping_interval: Duration::from_secs(30), idle_timeout: Duration::from_secs(90), ..Limits::default() };
    let e = env(limits);
    let mut alice = connect(&e.app, "alice");
    let started = tokio::time::Instant::now();
    let mut pings = 0;
    while let Some(m) = alice.next().await {
        match m {
            Message::Ping(_) => pings += 1,
            Message::Close(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let lived = started.elapsed();
    assert!(alice.session.await.unwrap());
    assert_eq!(pings, 2, "pinged at 30 s and 60 s");
    assert!(lived >= Duration::from_secs(90) && lived < Duration::from_secs(120), "ended at the idle timeout: {lived:?}");
}

#[tokio::test]
async fn presence_names_the_other_members_online_and_only_for_a_member() {
    let e = env(Limits::default());
    let (mut alice, mut bob) = (connect(&e.app, "alice"), connect(&e.app, "bob"));
    alice.registered().await;
    bob.registered().await;
    alice.send(json!({"type": "send", "room": "dm:alice:bob", "client_msg_id": "1", "body": "hi"})).await;
    assert_eq!(alice.frame().await["type"], "ack");
    alice.send(json!({"type": "presence", "room": "dm:alice:bob"})).await;
    assert_eq!(alice.frame().await, json!({"type": "presence", "room": "dm:alice:bob", "online": ["bob"]}));
    // Bob leaves: his session ends with his socket.
    drop(bob.tx);
    assert!(bob.session.await.is_ok());
    alice.send(json!({"type": "presence", "room": "dm:alice:bob"})).await;
    assert_eq!(alice.frame().await, json!({"type": "presence", "room": "dm:alice:bob", "online": []}));
    let mut carol = connect(&e.app, "carol");
    carol.send(json!({"type": "presence", "room": "dm:alice:bob"})).await;
    let refused = carol.frame().await;
    assert_eq!((refused["code"].as_str(), refused["ref"].as_str()), (Some("not_member"), Some("dm:alice:bob")), "{refused}");
}

#[tokio::test]
async fn presence_queries_are_limited_per_user_across_sockets() {
    let e = env(Limits { send_rate: 0.001, send_burst: 2.0, ..Limits::default() });
    let (mut first, mut second) = (connect(&e.app, "alice"), connect(&e.app, "alice"));
    first.send(json!({"type": "send", "room": "dm:alice:bob", "client_msg_id": "1", "body": "hi"})).await;
    assert_eq!(first.frame().await["type"], "ack");
    first.send(json!({"type": "presence", "room": "dm:alice:bob"})).await;
    assert_eq!(first.frame().await["type"], "presence");
    second.send(json!({"type": "presence", "room": "dm:alice:bob"})).await;
    let answer = loop {
        // The other socket of alice got her message live first.
        let f = second.frame().await;
        if f["type"] != "message" {
            break f;
        }
    };
    assert_eq!(answer["type"], "presence", "{answer}");
    first.send(json!({"type": "presence", "room": "dm:alice:bob"})).await;
    let limited = first.frame().await;
    assert_eq!((limited["code"].as_str(), limited["ref"].as_str()), (Some("rate_limited"), Some("dm:alice:bob")), "{limited}");
}
