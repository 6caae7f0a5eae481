//! The WebSocket live path against a gateway served on loopback, with events published
//! straight into its hub (as another process's gateway or worker would).

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sluice_core::events::NoEvents;
use sluice_core::fanout::Fanout;
use sluice_core::hub::{Hub, LiveEvent};
use sluice_core::metrics::Metrics;
use sluice_core::model::{MessageKind, StoredMessage};
use sluice_embedded::{EmbeddedQueue, EmbeddedStore, LocalHub, QueueConfig};
use sluice_gateway::{App, Auth, Limits};
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

/// Issue 16.2: in a room the socket had resumed, a live message that reached the gateway
/// after a higher one (published by another process) used to be dropped as "already
/// covered", and the client never saw it. Only what the replay covered is dropped now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_live_message_in_a_resumed_room_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).unwrap());
    let queue = Arc::new(EmbeddedQueue::open(&dir.path().join("queue.redb"), QueueConfig::default()).unwrap());
    let hub: Arc<dyn Hub> = Arc::new(LocalHub::new());
    let shutdown = CancellationToken::new();
    let app = Arc::new(App {
        store,
        queue,
        hub: hub.clone(),
        events: Arc::new(NoEvents),
        fanout: Fanout::new(hub.clone(), Arc::new(NoEvents)),
        metrics: Arc::new(Metrics::new()),
        auth: Auth::new(b"live-test-secret-live-test-secret", "svc"),
        limits: Limits::default(),
        shutdown: shutdown.clone(),
    });
    app.create_room("club", &["alice".into(), "bob".into()]).await.unwrap();
    let sent = app.send("alice", "club", "c1", "number 1", None).await.unwrap();
    assert_eq!(sent.message.seq, 1);
    let (http, grpc) = (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap());
    let addr = http.local_addr().unwrap();
    let server = tokio::spawn(sluice_gateway::serve(app.clone(), http, grpc));

    let token = app.auth.mint_user("bob", 600).unwrap();
    let (mut bob, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws?token={token}")).await.unwrap();
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
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
