//! Chaos on the distributed backends: two gateways and three workers on DynamoDB Local (behind
//! the fault proxy, which cancels a share of transactions with TransactionConflict and
//! throttling), moto and redis-server. While a campaign drains and WebSocket users chat and
//! read, a seeded schedule SIGKILLs and restarts workers and gateways and restarts Redis.
//! Users whose gateway dies reconnect to another, resume from their highest contiguous seq
//! and retry an unacknowledged send with the same client_msg_id.
//!
//! Afterwards an invariant checker reads everything back: every acked message persisted
//! exactly once at its acked seq; every room's seqs gap-free; every accepted one-off
//! persisted exactly once; unread counts and totals equal to a recount from history; every
//! client saw every seq of its room once (no socket was handed a seq twice).
//!
//! Small by default, for the test command. Larger: `scripts/chaos.sh` (CHAOS_SEED replays a
//! schedule; CHAOS_SECS, CHAOS_RECIPIENTS, CHAOS_ROOMS and CHAOS_FAULT_RATE size it).

mod common;

use common::{BIN, Server, aws_env, check_recipients, wait_done};
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sluice_proto::v1;
use sluice_testkit::dynamo_faults::DynamoFaultProxy;
use sluice_testkit::services::{RedisServer, dynamodb_url, unique_prefix};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Faults the schedule injected.
#[derive(Default, Debug)]
struct Injected {
    worker_kills: AtomicU64,
    gateway_kills: AtomicU64,
    redis_restarts: AtomicU64,
}

/// The live gateways' HTTP addresses (a killed one is gone until its replacement is up).
type Gateways = Arc<Mutex<Vec<SocketAddr>>>;

/// One chat user as a client application would behave.
struct Client {
    user: String,
    room: String,
    token: String,
    ws: Option<Socket>,
    /// Seqs of the room this client holds (live or replayed), and how often a single socket
    /// handed each one over (must stay 1).
    seen: BTreeSet<u64>,
    socket_seen: BTreeSet<u64>,
    duplicates_on_a_socket: u64,
    /// The send not acknowledged yet: retried with the same id until it is.
    pending: Option<String>,
    sent: u64,
    acked: Vec<(String, u64, String)>,
    reconnects: u64,
}

impl Client {
    fn contiguous(&self) -> u64 {
        let mut n = 0;
        while self.seen.contains(&(n + 1)) {
            n += 1;
        }
        n
    }

    fn note(&mut self, f: &Value) {
        if f["type"] == "message" && f["room"] == self.room.as_str() {
            let seq = f["seq"].as_u64().unwrap();
            if !self.socket_seen.insert(seq) {
                self.duplicates_on_a_socket += 1;
            }
            self.seen.insert(seq);
        }
    }

    /// The next frame within `wait`, noting messages; `None` on timeout; `Err` when the
    /// socket is gone.
    async fn next(&mut self, wait: Duration) -> Result<Option<Value>, ()> {
        let ws = self.ws.as_mut().ok_or(())?;
        loop {
            match tokio::time::timeout(wait, ws.next()).await {
                Err(_) => return Ok(None),
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    self.note(&v);
                    return Ok(Some(v));
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => {
                    self.ws = None;
                    return Err(());
                }
            }
        }
    }

    async fn send(&mut self, v: Value) -> Result<(), ()> {
        let ws = self.ws.as_mut().ok_or(())?;
        if ws.send(Message::Text(v.to_string().into())).await.is_err() {
            self.ws = None;
            return Err(());
        }
        Ok(())
    }

    /// Connects to a live gateway and resumes after the highest contiguous seq.
    async fn connect(&mut self, gateways: &Gateways, rng: &mut StdRng) -> Result<(), ()> {
        let live = gateways.lock().unwrap().clone();
        if live.is_empty() {
            return Err(());
        }
        let addr = live[rng.random_range(0..live.len())];
        let url = format!("ws://{addr}/v1/ws?token={}", self.token);
        let Ok(Ok((ws, _))) = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url)).await else {
            return Err(());
        };
        self.ws = Some(ws);
        self.socket_seen.clear();
        self.reconnects += 1;
        let after = self.contiguous();
        self.send(json!({"type": "resume", "rooms": {self.room.as_str(): after}})).await?;
        loop {
            match self.next(Duration::from_secs(10)).await? {
                Some(f) if f["type"] == "resumed" => return Ok(()),
                Some(_) => {}
                None => {
                    self.ws = None;
                    return Err(());
                }
            }
        }
    }

    /// One step: (re)connect if needed, send (or retry) a message, maybe read up to what it holds.
    async fn step(&mut self, gateways: &Gateways, rng: &mut StdRng) {
        if self.ws.is_none() && self.connect(gateways, rng).await.is_err() {
            return;
        }
        let id = match &self.pending {
            Some(id) => id.clone(),
            None => {
                self.sent += 1;
                let id = format!("{}-{}", self.user, self.sent);
                self.pending = Some(id.clone());
                id
            }
        };
        if self.send(json!({"type": "send", "room": self.room, "client_msg_id": id, "body": format!("chaos {id}")})).await.is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.next(Duration::from_millis(500)).await {
                Err(()) => return,
                Ok(Some(f)) if f["type"] == "ack" && f["client_msg_id"] == id.as_str() => {
                    self.acked.push((id, f["seq"].as_u64().unwrap(), f["msg_id"].as_str().unwrap().to_string()));
                    self.pending = None;
                    break;
                }
                // A store or hub failure under the faults: the same id is sent again later.
                Ok(Some(f)) if f["type"] == "error" && f["ref"] == id.as_str() => {
                    eprintln!("chaos: {} got {f}", self.user);
                    break;
                }
                _ => {}
            }
        }
        if rng.random_bool(0.3) {
            let _ = self.send(json!({"type": "read", "room": self.room, "seq": self.contiguous()})).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_through_kills_restarts_and_injected_conflicts() {
    let seed: u64 = knob("CHAOS_SEED", 20_261_201);
    let secs: u64 = knob("CHAOS_SECS", 20);
    let recipients_n: usize = knob("CHAOS_RECIPIENTS", 1_000);
    let rooms_n: usize = knob("CHAOS_ROOMS", 4);
    let fault_rate: f64 = knob("CHAOS_FAULT_RATE", 0.15);
    eprintln!("chaos: seed {seed} (CHAOS_SEED={seed} replays the schedule), {secs}s, {recipients_n} recipients, {rooms_n} rooms");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut redis = RedisServer::start();
    let proxy = DynamoFaultProxy::start(&dynamodb_url(), 0.0).await;
    let prefix = unique_prefix("chaos");
    let env = aws_env(&prefix, &redis.url(), &proxy.url());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("secrets");
    let out = std::process::Command::new(BIN)
        .args(["migrate", "--data-dir", data.to_str().unwrap(), "--with-queues"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));
    let worker_args = ["--visibility-timeout-secs", "5", "--max-receives", "50"];
    let mut gateways_procs: Vec<Server> = Vec::new();
    for _ in 0..2 {
        gateways_procs.push(Server::start_role("gateway", &data, &[], &env).await);
    }
    let mut workers: Vec<Server> = Vec::new();
    for _ in 0..3 {
        workers.push(Server::start_role("worker", &data, &worker_args, &env).await);
    }
    let gateways: Gateways = Arc::new(Mutex::new(gateways_procs.iter().map(|g| g.http).collect()));

    // Rooms of two chatting users, and a campaign to other recipients.
    let mut g = gateways_procs[0].grpc().await;
    let mut clients = Vec::new();
    for r in 0..rooms_n {
        let room = format!("{prefix}-room{r}");
        let (a, b) = (format!("{prefix}-a{r}"), format!("{prefix}-b{r}"));
        g.create_room(v1::CreateRoomRequest { room: room.clone(), members: vec![a.clone(), b.clone()] }).await.unwrap();
        for user in [a, b] {
            let token = gateways_procs[0].token(&user);
            clients.push(Client {
                user,
                room: room.clone(),
                token,
                ws: None,
                seen: BTreeSet::new(),
                socket_seen: BTreeSet::new(),
                duplicates_on_a_socket: 0,
                pending: None,
                sent: 0,
                acked: Vec::new(),
                reconnects: 0,
            });
        }
    }
    let shop = format!("{prefix}-shop");
    let campaign = format!("{prefix}-sale");
    let recipients: Vec<String> = (0..recipients_n).map(|i| format!("{prefix}-r{i:05}")).collect();
    let accepted = g
        .enqueue_bulk(v1::EnqueueBulkRequest {
            campaign_id: campaign.clone(),
            sender: shop.clone(),
            recipients: recipients.clone(),
            body: "chaos sale".into(),
            tenant: None,
        })
        .await
        .unwrap()
        .into_inner()
        .accepted;
    assert_eq!(accepted, recipients_n as u64);

    // The schedule: one fault every 1.5-3.5 s, while the proxy cancels transactions.
    let injected = Arc::new(Injected::default());
    let stop = Arc::new(AtomicBool::new(false));
    let schedule_seed: u64 = rng.random();
    proxy.set_rate(fault_rate);
    let chaos = {
        let (injected, stop, gateways, env, data) = (injected.clone(), stop.clone(), gateways.clone(), env.clone(), data.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(schedule_seed);
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(rng.random_range(1_500..3_500))).await;
                match rng.random_range(0..3) {
                    0 => {
                        let i = rng.random_range(0..workers.len());
                        workers.swap_remove(i).kill9().await;
                        injected.worker_kills.fetch_add(1, Ordering::Relaxed);
                        workers.push(Server::start_role("worker", &data, &worker_args, &env).await);
                    }
                    1 => {
                        let i = rng.random_range(0..gateways_procs.len());
                        let gone = gateways_procs.swap_remove(i);
                        gateways.lock().unwrap().retain(|a| *a != gone.http);
                        gone.kill9().await;
                        injected.gateway_kills.fetch_add(1, Ordering::Relaxed);
                        let fresh = Server::start_role("gateway", &data, &[], &env).await;
                        gateways.lock().unwrap().push(fresh.http);
                        gateways_procs.push(fresh);
                    }
                    _ => {
                        redis.restart();
                        injected.redis_restarts.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (workers, gateways_procs, redis)
        })
    };

    // Users chat and read through it all.
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        let i = rng.random_range(0..clients.len());
        clients[i].step(&gateways, &mut rng).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (_workers, gateways_procs, _redis) = chaos.await.unwrap();
    proxy.set_rate(0.0);

    // Settle: every pending send acked, every client resumed once more.
    let settle = Instant::now() + Duration::from_secs(120);
    while clients.iter().any(|c| c.pending.is_some()) {
        assert!(Instant::now() < settle, "pending sends never acked");
        for c in clients.iter_mut().filter(|c| c.pending.is_some()) {
            c.step(&gateways, &mut rng).await;
        }
    }
    let mut g = gateways_procs[0].grpc().await;
    let c = wait_done(&mut g, &campaign, Duration::from_secs(600)).await;
    for client in clients.iter_mut() {
        client.ws = None;
        while client.connect(&gateways, &mut rng).await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // The invariant checker.
    let mut checked = BTreeMap::<&str, u64>::new();
    assert_eq!((c.requested, c.enqueued, c.persisted, c.dead_lettered), (accepted, accepted, accepted, 0), "every accepted one-off, once");
    check_recipients(&g, &shop, &recipients, 1).await;
    *checked.entry("one-offs persisted once with exact counters").or_default() += accepted;
    let mut by_room: HashMap<String, Vec<v1::Message>> = HashMap::new();
    for r in 0..rooms_n {
        let room = format!("{prefix}-room{r}");
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = g
                .get_history(v1::GetHistoryRequest { room: room.clone(), before: None, after: Some(after), limit: 500 })
                .await
                .unwrap()
                .into_inner()
                .messages;
            let Some(last) = page.last() else { break };
            after = last.seq;
            all.extend(page);
        }
        let seqs: Vec<u64> = all.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>(), "{room}: seqs gap-free");
        *checked.entry("rooms with gap-free seqs").or_default() += 1;
        by_room.insert(room, all);
    }
    for client in &clients {
        let history = &by_room[&client.room];
        for (id, seq, msg_id) in &client.acked {
            let found: Vec<&v1::Message> = history.iter().filter(|m| m.msg_id == *msg_id).collect();
            assert_eq!(found.len(), 1, "{id} persisted once");
            assert_eq!((found[0].seq, found[0].sender.as_str()), (*seq, client.user.as_str()), "{id} at its acked seq");
            *checked.entry("acked sends persisted once at their seq").or_default() += 1;
        }
        let want: BTreeSet<u64> = (1..=history.len() as u64).collect();
        assert_eq!(client.seen, want, "{} saw every seq of {}", client.user, client.room);
        assert_eq!(client.duplicates_on_a_socket, 0, "{}: a socket handed a seq over twice", client.user);
        *checked.entry("clients that saw every seq once").or_default() += 1;
        let inbox = g.get_inbox(v1::GetInboxRequest { user: client.user.clone(), ..Default::default() }).await.unwrap().into_inner();
        let row = inbox.rooms.iter().find(|r| r.room == client.room).expect("the user's room");
        let recount = history.iter().filter(|m| m.seq > row.read_seq && m.sender != client.user).count() as u64;
        assert_eq!((row.unread, inbox.total_unread), (recount, recount), "{}: unread and total against a recount", client.user);
        *checked.entry("unread and totals equal to a recount").or_default() += 1;
    }

    let injected_conflicts = proxy.counts.conflicts.load(Ordering::Relaxed);
    let injected_throttles = proxy.counts.throttles.load(Ordering::Relaxed);
    eprintln!(
        "CHAOS seed {seed}: faults injected: {} worker kills, {} gateway kills, {} Redis restarts, {injected_conflicts} transaction conflicts, {injected_throttles} throttles; client reconnects {}",
        injected.worker_kills.load(Ordering::Relaxed),
        injected.gateway_kills.load(Ordering::Relaxed),
        injected.redis_restarts.load(Ordering::Relaxed),
        clients.iter().map(|c| c.reconnects).sum::<u64>(),
    );
    eprintln!("CHAOS invariants checked: {checked:?}");
    let kills = injected.worker_kills.load(Ordering::Relaxed) + injected.gateway_kills.load(Ordering::Relaxed);
    assert!(kills + injected.redis_restarts.load(Ordering::Relaxed) > 0, "the schedule injected no fault");
    assert!(injected_conflicts + injected_throttles > 0, "the proxy injected no cancellation");
}
