//! End to end over real sockets: the WebSocket contract v1 and the gRPC service, including
//! refusals and bad input, against Sluice run in the test's process through the library; the
//! clean shutdown on SIGTERM and the process's settings (no transparent huge pages) against
//! the `sluice` binary.

mod common;

use common::{Bearer, Server, http_get};
use serde_json::json;
use sluice_proto::v1;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

async fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::in_process(&dir.path().join("data"), &[]).await;
    (dir, server)
}

async fn create_room(s: &Server, room: &str, members: &[&str]) {
    let r = s
        .grpc()
        .await
        .create_room(v1::CreateRoomRequest { room: room.into(), members: members.iter().map(|m| m.to_string()).collect() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.room, room);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_and_strangers_are_refused() {
    let (_dir, s) = start().await;
    create_room(&s, "general", &["alice", "bob"]).await;
    let mut alice = s.ws("alice").await;
    let mut alice_phone = s.ws("alice").await;
    let mut bob = s.ws("bob").await;
    let mut carol = s.ws("carol").await;

    let ack = alice.say("general", "a1", "hello bob").await;
    assert_eq!((ack["type"].as_str(), ack["room"].as_str(), ack["seq"].as_u64()), (Some("ack"), Some("general"), Some(1)));
    let msg_id = ack["msg_id"].as_str().unwrap().to_string();
    let m = bob.recv_type("message").await;
    assert_eq!(
        (m["seq"].as_u64(), m["sender"].as_str(), m["body"].as_str(), m["kind"].as_str()),
        (Some(1), Some("alice"), Some("hello bob"), Some("chat"))
    );
    assert_eq!(m["msg_id"], json!(msg_id));
    assert!(m["sent_at"].as_i64().unwrap() > 0);
    let u = bob.recv_type("unread").await;
    assert_eq!((u["room"].as_str(), u["unread"].as_u64(), u["total_unread"].as_u64()), (Some("general"), Some(1), Some(1)));
    let echo = alice_phone.recv_type("message").await;
    assert_eq!(echo["seq"], 1, "the sender's other devices get the message too");

    let ack2 = bob.say("general", "b1", "hi alice").await;
    assert_eq!(ack2["seq"], 2);
    assert_eq!(alice.recv_type("message").await["body"], "hi alice");

    let retry = alice.say("general", "a1", "hello bob").await;
    assert_eq!((retry["seq"].as_u64(), retry["msg_id"].as_str()), (Some(1), Some(msg_id.as_str())), "a retried send is the same message");

    let refused = carol.say("general", "c1", "let me in").await;
    assert_eq!((refused["code"].as_str(), refused["ref"].as_str()), (Some("not_member"), Some("c1")));
    carol.send(json!({"type": "history", "room": "general"})).await;
    assert_eq!(carol.recv_type("error").await["code"], "not_member");
    carol.send(json!({"type": "typing", "room": "general"})).await;
    assert_eq!(carol.recv_type("error").await["code"], "not_member");
    carol.send(json!({"type": "read", "room": "general", "seq": 2})).await;
    assert_eq!(carol.recv_type("error").await["code"], "not_member");
    assert_eq!(carol.say("nowhere", "c2", "hello?").await["code"], "unknown_room");
    assert_eq!(carol.say("dm:alice:bob", "c3", "psst").await["code"], "not_member", "a direct room belongs to its two users");

    bob.send(json!({"type": "typing", "room": "general"})).await;
    let t = alice.recv_type("typing").await;
    assert_eq!((t["room"].as_str(), t["user"].as_str()), (Some("general"), Some("bob")));

    bob.send(json!({"type": "read", "room": "general", "seq": 2})).await;
    let u = bob.recv_type("unread").await;
    assert_eq!((u["unread"].as_u64(), u["total_unread"].as_u64()), (Some(0), Some(0)));
    bob.send(json!({"type": "inbox"})).await;
    let inbox = bob.recv_type("inbox").await;
    assert_eq!(inbox["rooms"], json!([{"room": "general", "unread": 0, "read_seq": 2, "last_seq": 2}]));
    assert_eq!(inbox["total_unread"], 0);
    alice.send(json!({"type": "inbox"})).await;
    let inbox = alice.recv_type("inbox").await;
    assert_eq!((inbox["rooms"][0]["unread"].as_u64(), inbox["total_unread"].as_u64()), (Some(1), Some(1)));

    let dm = alice.say("dm:alice:bob", "d1", "private").await;
    assert_eq!(dm["seq"], 1, "direct rooms are created on first use");
    assert_eq!(bob.recv_type("message").await["room"], "dm:alice:bob");

    alice.send(json!({"type": "history", "room": "general", "after": 0, "limit": 10})).await;
    let h = alice.recv_type("history").await;
    let seqs: Vec<u64> = h["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2]);

    let mut g = s.grpc().await;
    let hist =
        g.get_history(v1::GetHistoryRequest { room: "general".into(), before: None, after: None, limit: 0 }).await.unwrap().into_inner();
    assert_eq!(hist.messages.iter().map(|m| (m.seq, m.sender.as_str())).collect::<Vec<_>>(), vec![(1, "alice"), (2, "bob")]);
    let sent = g
        .send_message(v1::SendMessageRequest {
            room: "general".into(),
            sender: "bob".into(),
            body: "from a service".into(),
            client_msg_id: "svc-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.seq, 3);
    assert_eq!(alice.recv_type("message").await["body"], "from a service");
    // after = 0 pages a room from its start (it used to be read as "unset": the newest page).
    let page = |after: Option<u64>| v1::GetHistoryRequest { room: "general".into(), before: None, after, limit: 2 };
    let first = g.get_history(page(Some(0))).await.unwrap().into_inner();
    assert_eq!(first.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
    let newest = g.get_history(page(None)).await.unwrap().into_inner();
    assert_eq!(newest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 3]);
    // Without the caller's id a retry would be a second message: refused, nothing persisted.
    let no_id =
        v1::SendMessageRequest { room: "general".into(), sender: "bob".into(), body: "again?".into(), client_msg_id: String::new() };
    assert_eq!(g.send_message(no_id).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    assert_eq!(g.get_history(page(None)).await.unwrap().into_inner().messages.last().unwrap().seq, 3);
    let read = g.mark_read(v1::MarkReadRequest { user: "alice".into(), room: "general".into(), seq: 3 }).await.unwrap().into_inner();
    assert_eq!((read.unread, read.total_unread), (0, 0), "alice sent the direct message herself");
    let inbox = g.get_inbox(v1::GetInboxRequest { user: "bob".into(), ..Default::default() }).await.unwrap().into_inner();
    let dm_row = inbox.rooms.iter().find(|r| r.room == "dm:alice:bob").unwrap();
    assert_eq!((dm_row.unread, inbox.total_unread), (1, 1), "bob's own service message is not unread for him");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_and_resume_miss_nothing() {
    let (_dir, s) = start().await;
    create_room(&s, "team", &["alice", "bob"]).await;
    let mut alice = s.ws("alice").await;
    let mut bob = s.ws("bob").await;
    for i in 1..=2 {
        alice.say("team", &format!("m{i}"), &format!("msg {i}")).await;
        assert_eq!(bob.recv_type("message").await["seq"], i);
    }
    drop(bob);
    for i in 3..=5 {
        alice.say("team", &format!("m{i}"), &format!("msg {i}")).await;
    }
    let mut bob = s.ws("bob").await;
    bob.send(json!({"type": "resume", "rooms": {"team": 2, "dm:alice:carol": 0, "ghost": 0}})).await;
    // A message sent while the replay runs must come exactly once, after the replayed ones.
    alice.say("team", "m6", "msg 6").await;
    let mut seqs = Vec::new();
    let mut resumed = None;
    let mut refused = Vec::new();
    while !seqs.contains(&6) || resumed.is_none() {
        let f = bob.recv().await;
        match f["type"].as_str().unwrap() {
            "message" => seqs.push(f["seq"].as_u64().unwrap()),
            "resumed" => resumed = Some(f),
            "error" => refused.push((f["ref"].as_str().unwrap().to_string(), f["code"].as_str().unwrap().to_string())),
            _ => {}
        }
    }
    // 6 normally comes last; if it was pushed live before the server read the resume frame,
    // it comes first and the replay skips it. Either way: everything after 2, each once.
    let replayed: Vec<u64> = seqs.iter().copied().filter(|&s| s != 6).collect();
    assert_eq!(replayed, vec![3, 4, 5], "the replay is complete and in order: {seqs:?}");
    assert_eq!(seqs.iter().filter(|&&s| s == 6).count(), 1, "no duplicates: {seqs:?}");
    refused.sort();
    let want = [("dm:alice:carol", "not_member"), ("ghost", "unknown_room")].map(|(a, b)| (a.to_string(), b.to_string()));
    assert_eq!(refused, want);
    assert!(resumed.unwrap()["rooms"]["team"].as_u64().unwrap() >= 5);
    assert!(bob.quiet_for(Duration::from_millis(300)).await.is_none_or(|f| f["type"] != "message"), "no duplicates after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_socket_stays_usable() {
    let (_dir, s) = start().await;
    create_room(&s, "general", &["alice", "bob"]).await;
    let mut alice = s.ws("alice").await;
    let bad_frames = [
        "not json",
        r#"{"type":"teleport"}"#,
        r#"{"type":"read","room":"general","seq":"three"}"#,
        r#"{"type":"send","room":"general","body":"no id"}"#,
        r#"{"room":"general"}"#,
        r#"{"type":"send","room":"has space","client_msg_id":"x1","body":"b"}"#,
        r#"{"type":"send","room":"general","client_msg_id":"x2","body":""}"#,
    ];
    for f in bad_frames {
        alice.send_raw(Message::Text(f.into())).await;
        let e = alice.recv().await;
        assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("bad_frame")), "{f} -> {e}");
    }
    alice.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(alice.recv().await["code"], "bad_frame");
    let big = alice.say("general", "big", &"x".repeat(64 * 1024 + 1)).await;
    assert_eq!((big["code"].as_str(), big["ref"].as_str()), (Some("too_large"), Some("big")));
    alice.send_raw(Message::Text("y".repeat(200 * 1024).into())).await;
    assert_eq!(alice.recv().await["code"], "too_large");
    let e = {
        alice.send_raw(Message::Text(r#"{"type":"send","room":5,"client_msg_id":"r9","body":"b"}"#.into())).await;
        alice.recv().await
    };
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("bad_frame"), Some("r9")), "errors carry the client's id when readable");

    let ok = alice.say("general", "fine", "still here").await;
    assert_eq!((ok["type"].as_str(), ok["seq"].as_u64()), (Some("ack"), Some(1)), "nothing was persisted by bad input");

    // Credentials.
    assert!(tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", s.http)).await.is_err());
    assert!(tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?token=forged", s.http)).await.is_err());
    let other_dir = tempfile::tempdir().unwrap();
    let foreign = common::cli(&["token", "--data-dir", other_dir.path().to_str().unwrap(), "--user", "alice"]);
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?token={foreign}", s.http)).await.is_err(),
        "a token signed by another secret"
    );
    let mut header_req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{}/v1/ws", s.http)).unwrap();
    header_req.headers_mut().insert("authorization", format!("Bearer {}", s.token("bob")).parse().unwrap());
    assert!(tokio_tungstenite::connect_async(header_req).await.is_ok(), "Authorization header works too");

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.grpc)).unwrap().connect().await.unwrap();
    for token in [None, Some("Bearer wrong".parse().unwrap())] {
        let mut anon = v1::chat_service_client::ChatServiceClient::with_interceptor(channel.clone(), Bearer(token));
        let e = anon.get_inbox(v1::GetInboxRequest { user: "alice".into(), ..Default::default() }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
    let mut g = s.grpc().await;
    let e = g
        .send_message(v1::SendMessageRequest {
            room: "bad room".into(),
            sender: "alice".into(),
            body: "b".into(),
            client_msg_id: "1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = g
        .send_message(v1::SendMessageRequest {
            room: "general".into(),
            sender: "carol".into(),
            body: "b".into(),
            client_msg_id: "1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = g
        .enqueue_bulk(v1::EnqueueBulkRequest {
            campaign_id: "oops".into(),
            sender: "shop".into(),
            recipients: vec!["ok".into(), "not ok".into()],
            body: "b".into(),
            tenant: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("recipients[1]"), "{}", e.message());
    let e = g.get_campaign(v1::GetCampaignRequest { campaign_id: "oops".into(), tenant: None }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "a refused call enqueued nothing");
    let e = g.create_room(v1::CreateRoomRequest { room: "general".into(), members: vec!["mallory".into()] }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    let e = g.add_members(v1::AddMembersRequest { room: "dm:alice:bob".into(), members: vec!["mallory".into()] }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // A request that is not protobuf at all is the caller's fault (issue 10.6), not INTERNAL.
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.unwrap();
    let mut req = tonic::Request::new(vec![0x0a, 0xff, 0x01]);
    req.metadata_mut().insert("authorization", format!("Bearer {}", s.service_token()).parse().unwrap());
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/sluice.v1.ChatService/GetCampaign");
    let e = raw.unary(req, path, RawCodec).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    let created = g.create_room(v1::CreateRoomRequest { room: String::new(), members: vec!["alice".into()] }).await.unwrap().into_inner();
    assert!(created.room.starts_with("r-"), "an empty room id is generated");
}

/// Issue 10.3: limits per user, not per socket: a send rate over all of a user's sockets, a
/// cap on their connections; and a handshake rate per client address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_per_user_and_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let s =
        Server::in_process(&dir.path().join("a"), &["--send-rate", "1", "--max-connections-per-user", "3", "--handshake-rate-per-ip", "0"])
            .await;
    create_room(&s, "general", &["alice", "bob"]).await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(s.ws("alice").await);
    }
    assert_eq!(s.ws_refused("alice").await, 429, "a fourth connection of alice");
    let _bob = s.ws("bob").await;
    let mut acks = 0;
    for (i, socket) in sockets.iter_mut().enumerate() {
        for k in 0..2 {
            let r = socket.say("general", &format!("s{i}-{k}"), "hi").await;
            acks += usize::from(r["type"] == "ack");
        }
    }
    // The burst is 2 for alice, whatever her number of sockets (it was 2 per socket: 6).
    assert!(acks <= 3, "{acks} sends acked out of 6 at 1/s with a burst of 2");
    drop(sockets.pop());
    let mut again = None;
    for _ in 0..100 {
        match tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?token={}", s.http, s.token("alice"))).await {
            Ok(ws) => {
                again = Some(ws);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(again.is_some(), "a closed connection gives its place back");

    let s2 = Server::in_process(&dir.path().join("b"), &["--handshake-rate-per-ip", "1"]).await;
    let _u1 = s2.ws("u1").await;
    let _u2 = s2.ws("u2").await;
    assert_eq!(s2.ws_refused("u3").await, 429, "a third handshake at once from one address (1/s, burst 2)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_slow_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let s =
        Server::in_process(&dir.path().join("data"), &["--send-rate", "1", "--outbound-buffer", "8", "--max-bulk-recipients", "10"]).await;
    create_room(&s, "general", &["alice", "bob"]).await;
    let mut alice = s.ws("alice").await;
    let mut codes = Vec::new();
    for i in 0..6 {
        let r = alice.say("general", &format!("r{i}"), "spam").await;
        codes.push(r["type"].as_str().unwrap().to_string() + ":" + r["code"].as_str().unwrap_or(""));
    }
    assert_eq!(&codes[..2], &["ack:", "ack:"], "the burst is allowed");
    assert!(codes.contains(&"error:rate_limited".to_string()), "{codes:?}");

    let mut g = s.grpc().await;
    let recipients: Vec<String> = (0..11).map(|i| format!("u{i}")).collect();
    let e = g
        .enqueue_bulk(v1::EnqueueBulkRequest {
            campaign_id: "big".into(),
            sender: "shop".into(),
            recipients,
            body: "b".into(),
            tenant: None,
        })
        .await
        .unwrap_err();
    assert!(e.code() == tonic::Code::InvalidArgument && e.message().starts_with("too_large"), "{e:?}");

    // bob never reads; a service floods the room until bob's buffers fill. alice leaves
    // first: she does not read either, and would be closed as a slow consumer too.
    drop(alice);
    let mut bob = s.ws("bob").await;
    let body = "z".repeat(60 * 1024);
    for i in 0..600 {
        g.send_message(v1::SendMessageRequest {
            room: "general".into(),
            sender: "alice".into(),
            body: body.clone(),
            client_msg_id: format!("f{i}"),
        })
        .await
        .unwrap();
    }
    let mut close = None;
    while close.is_none() {
        match tokio::time::timeout(common::RECV_TIMEOUT, futures::StreamExt::next(&mut bob.stream)).await.unwrap() {
            Some(Ok(Message::Close(c))) => close = Some(c.expect("a close frame with a code")),
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    }
    let c = close.unwrap();
    assert_eq!((u16::from(c.code), c.reason.as_str().starts_with("slow_consumer")), (4008, true));
    assert_eq!(s.metric("sluice_slow_consumer_closes_total").await, 1.0);
}

/// Issue 10.6: operators can keep /metrics and /readyz off the public port, and browsers
/// from other sites cannot open a WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_and_allowed_origins() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::in_process(dir.path(), &["--admin-addr", "127.0.0.1:0", "--allowed-origins", "https://chat.example.com/"]).await;
    let admin = s.admin.expect("the listening line names the admin port");
    assert_eq!(http_get(s.http, "/healthz").await.0, 200);
    assert_eq!(http_get(s.http, "/metrics").await.0, 404, "metrics are not on the public port");
    assert_eq!(http_get(s.http, "/readyz").await.0, 404);
    let (status, metrics) = http_get(admin, "/metrics").await;
    assert!(status == 200 && metrics.contains("sluice_connections"), "{status}");
    assert_eq!(http_get(admin, "/readyz").await.0, 200);

    let with_origin = |origin: Option<&str>| {
        let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/v1/ws?token={}",
            s.http,
            s.token("bob")
        ))
        .unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        req
    };
    match tokio_tungstenite::connect_async(with_origin(Some("https://evil.example"))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("a foreign origin must be refused: {other:?}"),
    }
    assert!(tokio_tungstenite::connect_async(with_origin(Some("https://chat.example.com"))).await.is_ok(), "our page's origin");
    assert!(tokio_tungstenite::connect_async(with_origin(None)).await.is_ok(), "non-browser clients send no origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_events_and_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let s = Server::start(&dir.path().join("data"), &["--events-file", events.to_str().unwrap()]).await;
    assert_eq!(http_get(s.http, "/healthz").await, (200, "ok\n".to_string()));
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", s.pid().unwrap())).unwrap();
    assert!(proc_status.contains("THP_enabled:\t0"), "the server runs without transparent huge pages:\n{proc_status}");
    assert_eq!(http_get(s.http, "/readyz").await.0, 200);
    let (status, page) = http_get(s.http, "/").await;
    assert!(status == 200 && page.contains("/assets/chat.js"), "the chat client is served");
    let mut alice = s.ws("alice").await;
    alice.say("dm:alice:bob", "1", "hi").await;
    let (_, metrics) = http_get(s.http, "/metrics").await;
    for name in [
        "sluice_connections 1",
        "sluice_persisted_total{lane=\"interactive\"} 1",
        "sluice_frames_in_total{type=\"send\"} 1",
        "sluice_persist_seconds_count",
        "sluice_queue_visible",
        "sluice_queue_oldest_age_seconds",
        "sluice_dead_letter_depth",
        "sluice_drained_total",
        "sluice_conflicts_total",
        "sluice_retries_total",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
    s.stop().await;
    let close = tokio::time::timeout(common::RECV_TIMEOUT, futures::StreamExt::next(&mut alice.stream)).await.unwrap();
    assert!(
        matches!(&close, Some(Ok(Message::Close(Some(c)))) if u16::from(c.code) == 1001),
        "sessions close with 1001 on shutdown: {close:?}"
    );
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let e = &lines[0];
    assert_eq!(
        (e["type"].as_str(), e["room"].as_str(), e["recipients"].as_u64()),
        (Some("message_persisted"), Some("dm:alice:bob"), Some(1))
    );
    assert!(e.get("body").is_none(), "analytics events carry no message bodies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_streams_a_users_events_and_the_firehose() {
    use v1::event::Event as Ev;
    let (_dir, s) = start().await;
    create_room(&s, "general", &["alice", "bob"]).await;
    let mut g = s.grpc().await;
    let mut bob = g.subscribe(v1::SubscribeRequest { user: "bob".into() }).await.unwrap().into_inner();
    let mut all = g.subscribe(v1::SubscribeRequest { user: String::new() }).await.unwrap().into_inner();
    g.send_message(v1::SendMessageRequest {
        room: "general".into(),
        sender: "alice".into(),
        body: "hello".into(),
        client_msg_id: "s1".into(),
    })
    .await
    .unwrap();
    assert!(matches!(next(&mut bob).await, Ev::Message(m) if m.seq == 1 && m.sender == "alice" && m.body == "hello"));
    assert!(matches!(next(&mut bob).await, Ev::Unread(u) if u.user == "bob" && u.unread == 1 && u.total_unread == 1));
    g.mark_read(v1::MarkReadRequest { user: "bob".into(), room: "general".into(), seq: 1 }).await.unwrap();
    assert!(matches!(next(&mut bob).await, Ev::Unread(u) if u.unread == 0 && u.total_unread == 0));
    assert!(matches!(next(&mut bob).await, Ev::Read(r) if r.user == "bob" && r.room == "general" && r.seq == 1));
    let mut kinds = Vec::new();
    for _ in 0..4 {
        kinds.push(match next(&mut all).await {
            Ev::Message(_) => "message",
            Ev::Unread(_) => "unread",
            Ev::Read(_) => "read",
        });
    }
    assert_eq!(kinds, vec!["message", "unread", "unread", "read"], "the firehose sees every event");
    let e = g.subscribe(v1::SubscribeRequest { user: "not valid".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

async fn next(stream: &mut tonic::Streaming<v1::Event>) -> v1::event::Event {
    tokio::time::timeout(common::RECV_TIMEOUT, stream.message()).await.expect("an event in time").unwrap().unwrap().event.unwrap()
}

/// A gRPC codec that sends and receives raw bytes, to send what no generated client would.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(buf);
        Ok(Some(bytes::Buf::copy_to_bytes(buf, n).to_vec()))
    }
}
