//! The WebSocket live path against a gateway served on loopback, with events published
//! straight into its hub (as another process's gateway or worker would).

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sluice_core::events::NoEvents;
use sluice_core::hub::{Hub, LiveEvent};
use sluice_core::ids::{RoomId, UserId};
use sluice_core::metrics::Metrics;
use sluice_core::model::{MessageKind, StoredMessage, UnreadUpdate};
use sluice_embedded::{EmbeddedQueue, EmbeddedStore, LocalHub, QueueConfig};
use sluice_gateway::{App, Auth, Backends, Limits};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn recv(ws: &mut Socket) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a frame in time").unwrap().unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

fn message(room: &str, seq: u64) -> LiveEvent {
    let m = StoredMessage {
        room: room.into(),
        seq,
        msg_id: format!("m{seq}"),
        sender: "alice".into(),
        body: format!("number {seq}"),
        kind: MessageKind::Chat,
        campaign_id: None,
        sent_at_ms: 1,
    };
    LiveEvent::Message { message: Arc::new(m), origin: None }
}

struct Gateway {
    _dir: tempfile::TempDir,
    app: Arc<App>,
    hub: Arc<dyn Hub>,
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A gateway on loopback with room `club` (alice, bob) holding one message from alice.
async fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).unwrap());
    let queue = Arc::new(EmbeddedQueue::open(&dir.path().join("queue.redb"), QueueConfig::default()).unwrap());
    let hub: Arc<dyn Hub> = Arc::new(LocalHub::new());
    let shutdown = CancellationToken::new();
    let limiter = Arc::new(sluice_core::limits::LocalLimiter::new());
    let app = Arc::new(App {
        backends: Backends::new(store, queue, hub.clone(), Arc::new(NoEvents), limiter, Arc::new(Metrics::new())),
        auth: Auth::new(b"live-test-secret-live-test-secret", "svc"),
        limits: Limits::default(),
        campaign_rates: Default::default(),
        accept: Default::default(),
        bulk: None,
        shutdown: shutdown.clone(),
        dev_sign_in: false,
    });
    let (alice, club) = (UserId::new("alice").unwrap(), RoomId::new("club").unwrap());
    app.create_room(Some(club.clone()), &["alice".into(), "bob".into()]).await.unwrap();
    let sent = app.send(&alice, &club, "c1", "number 1", None).await.unwrap();
    assert_eq!(sent.message.seq, 1);
    let (http, grpc) = (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap());
    let addr = http.local_addr().unwrap();
    let server = tokio::spawn(sluice_gateway::serve(app.clone(), http, grpc));
    Gateway { _dir: dir, app, hub, addr, shutdown, server }
}

impl Gateway {
    async fn connect(&self, user: &str) -> Socket {
        let token = self.app.auth.mint_user(user, 600).unwrap();
        tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?token={token}", self.addr)).await.unwrap().0
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
    }
}

/// Issue 16.2: in a room the socket had resumed, a live message that reached the gateway
/// after a higher one (published by another process) used to be dropped as "already
/// covered", and the client never saw it. Only what the replay covered is dropped now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_live_message_in_a_resumed_room_is_delivered() {
    let g = gateway().await;
    let hub = g.hub.clone();
    let mut bob = g.connect("bob").await;
    bob.send(Message::text(json!({"type": "resume", "rooms": {"club": 0, "elsewhere": 0}}).to_string())).await.unwrap();
    let mut replayed = Vec::new();
    loop {
        let f = recv(&mut bob).await;
        match f["type"].as_str() {
            Some("message") => replayed.push(f["seq"].as_u64().unwrap()),
            Some("error") => assert_eq!((f["code"].as_str(), f["ref"].as_str()), (Some("unknown_room"), Some("elsewhere"))),
            Some("resumed") => {
                assert_eq!(f["rooms"], json!({"club": 1}), "only authorized rooms are resumed");
                break;
            }
            other => panic!("unexpected frame {other:?}: {f}"),
        }
    }
    assert_eq!(replayed, vec![1]);

    // Seq 3 arrives before seq 2 (two gateways persisted them), then seq 1 again (a late
    // duplicate of what the replay covered).
    for seq in [3, 2, 1] {
        hub.publish(&["alice".into(), "bob".into()], message("club", seq)).await.unwrap();
    }
    hub.publish(&["bob".into()], message("club", 4)).await.unwrap();
    let mut live = Vec::new();
    while live.last() != Some(&4) {
        let f = recv(&mut bob).await;
        assert_eq!(f["type"], "message", "{f}");
        live.push(f["seq"].as_u64().unwrap());
    }
    assert_eq!(live, vec![3, 2, 4], "the late seq 2 is delivered; seq 1, covered by the replay, is not repeated");

    bob.close(None).await.unwrap();
    g.stop().await;
}

/// Issue 16.2: unread updates of a user can reach a gateway out of order (a read racing a
/// send); the socket never shows one older than what it already showed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_unread_update_is_never_shown() {
    let g = gateway().await;
    let mut bob = g.connect("bob").await;
    // The connection is registered once it answers a frame.
    bob.send(Message::text(json!({"type": "inbox"}).to_string())).await.unwrap();
    assert_eq!(recv(&mut bob).await["type"], "inbox");
    // A real send: its unread frame carries the store's version of bob's counters.
    let (alice, club) = (UserId::new("alice").unwrap(), RoomId::new("club").unwrap());
    let sent = g.app.send(&alice, &club, "c2", "number 2", None).await.unwrap();
    let pushed = loop {
        let f = recv(&mut bob).await;
        if f["type"] == "unread" {
            break f;
        }
    };
    let v = sent.unread[0].version;
    assert_eq!((pushed["unread"].as_u64(), pushed["version"].as_u64()), (Some(2), Some(v)));

    let unread = |unread, version| {
        LiveEvent::Unread(UnreadUpdate { user: "bob".into(), room: "club".into(), unread, total_unread: unread, version })
    };
    for (count, version) in [(0, v + 10), (3, v + 7), (1, v + 11)] {
        g.hub.publish(&["bob".into()], unread(count, version)).await.unwrap();
    }
    let first = recv(&mut bob).await;
    assert_eq!((first["unread"].as_u64(), first["version"].as_u64()), (Some(0), Some(v + 10)));
    let next = recv(&mut bob).await;
    assert_eq!((next["unread"].as_u64(), next["version"].as_u64()), (Some(1), Some(v + 11)), "the late older update was dropped");
    bob.close(None).await.unwrap();
    g.stop().await;
}

/// The next frame is a close with `code` (the server said why before it hung up).
async fn expect_close(ws: &mut Socket, code: u16) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a close in time") {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), code, "close reason: {}", f.reason);
                return;
            }
            Some(Ok(Message::Close(None))) => panic!("a close without a code, wanted {code}"),
            Some(Ok(_)) => continue,
            other => panic!("the connection ended without a close frame: {other:?}"),
        }
    }
}

/// Issue 10.4: close handshakes as RFC 6455 says: a client's close is answered with a close,
/// a frame over the hard limit gets 1009, a text frame that is not UTF-8 gets 1007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_are_answered_with_a_reason() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
    let g = gateway().await;

    let mut normal = g.connect("bob").await;
    normal.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() }))).await.unwrap();
    expect_close(&mut normal, 1000).await;

    let mut big = g.connect("bob").await;
    let hard = Limits::default().hard_frame_bytes;
    let _ = big.send(Message::text("x".repeat(hard + 1))).await;
    expect_close(&mut big, 1009).await;

    let mut bad = g.connect("bob").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    bad.send(Message::Frame(frame)).await.unwrap();
    expect_close(&mut bad, 1007).await;
    g.stop().await;
}
