//! Redis backends: the session registry, presence and cross-gateway fan-out that let any
//! number of gateways serve one user base.
//!
//! [`RedisHub`] keeps this process's connections locally ([`LocalConnections`]) and tells
//! Redis which users are connected on which node:
//! - registry: one sorted set per user, `<prefix>:sess:<user>`, members = node ids, scores =
//!   when the registration expires (ms). Every node refreshes its users every
//!   `ttl / 3`; a node that dies drops out after `ttl` without anyone cleaning up.
//! - fan-out: `publish` delivers to local connections directly, looks up the other targets'
//!   nodes in one pipeline and sends each node one `PUBLISH <prefix>:node:<node>` with the
//!   users it should deliver to. Every event also goes to `<prefix>:firehose` for service
//!   subscribers; a node subscribes to that channel only while one of its own service
//!   subscribers listens (so gateways nobody streams from do not receive every event).
//! - failure: commands go through a reconnecting [`ConnectionManager`]; the subscriber
//!   reconnects with backoff, resubscribes and re-registers every local user, so live
//!   delivery resumes after a Redis restart. A subscription that goes silent (a half-open
//!   connection reports no error) is found by a canary this node publishes to its own channel
//!   every `subscription_check`, and replaced. Events published while Redis was away are not
//!   replayed: clients recover them by seq (`resume`).
//!
//! [`RedisLimiter`] keeps per-user and per-address rate limits and leases in Redis
//! ([`limits`]), so they hold across gateways.
//!
//! Both run on a standalone Redis or on Redis in cluster mode ([`Endpoint::cluster`]): there
//! the channels are sharded (SPUBLISH/SSUBSCRIBE), batches are split by slot, and a node that
//! drops the subscription's connection (a restart forgets every session it held) makes this
//! node register its users again (module `conn`).

mod conn;
pub mod limits;

pub use conn::Endpoint;
pub use limits::RedisLimiter;

use async_trait::async_trait;
use conn::{Commands, Incoming, Target};
use serde::{Deserialize, Serialize};
use sluice_core::error::HubError;
use sluice_core::hub::{ConnId, Connection, Hub, LiveEvent, LocalConnections};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::task::AbortOnDropHandle;

/// Capacity of the local firehose channel of service subscribers.
const FIREHOSE_CAPACITY: usize = 16_384;

/// Settings of a Redis hub.
#[derive(Debug, Clone)]
pub struct RedisHubConfig {
    /// Where Redis is (standalone or cluster, TLS or not).
    pub endpoint: Endpoint,
    /// Prefix of every key and channel (`SLUICE_RESOURCE_PREFIX`).
    pub prefix: String,
    /// How long a registration lives without a refresh.
    pub session_ttl: Duration,
    /// Timeout of one Redis command.
    pub command_timeout: Duration,
    /// How often the subscription is proven alive: a canary published to this node's own
    /// channel must come back within three of these, or the subscription is replaced (a
    /// half-open connection delivers nothing and reports no error).
    pub subscription_check: Duration,
}

impl RedisHubConfig {
    pub fn new(url: impl Into<String>) -> Self {
        RedisHubConfig {
            endpoint: Endpoint::new(url),
            prefix: "sluice".into(),
            session_ttl: Duration::from_secs(60),
            command_timeout: Duration::from_secs(2),
            subscription_check: Duration::from_secs(5),
        }
    }
}

/// One message on a node channel: deliver `event` to these users' local connections.
#[derive(Deserialize)]
struct Envelope {
    users: Vec<String>,
    event: LiveEvent,
}

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    users: &'a [String],
    event: &'a LiveEvent,
}

struct Inner {
    node: String,
    config: RedisHubConfig,
    /// Commands; replaced when the subscription check finds the path to Redis silent (a
    /// manager reconnects on errors, never on a connection that only stopped answering).
    conn: std::sync::RwLock<Commands>,
    target: Target,
    local: LocalConnections,
    firehose: broadcast::Sender<Arc<LiveEvent>>,
    /// Orders registry writes: a heartbeat's snapshot of local users must not re-register a
    /// user whose removal ran in between.
    registry: tokio::sync::Mutex<()>,
    /// Subscriptions replaced because they went silent.
    subscriptions_replaced: std::sync::atomic::AtomicU64,
    /// Whether this node is subscribed to the firehose channel: only while a local service
    /// subscriber listens, so gateways nobody streams from do not receive every event.
    firehose_on: tokio::sync::watch::Sender<bool>,
    /// Wakes the subscriber when a local firehose listener arrives.
    firehose_wanted: tokio::sync::Notify,
}

/// Sessions and fan-out across gateways through Redis.
pub struct RedisHub {
    inner: Arc<Inner>,
    _tasks: Vec<AbortOnDropHandle<()>>,
}

fn unavailable(e: redis::RedisError) -> HubError {
    HubError::Unavailable(e.to_string())
}

impl RedisHub {
    /// Connects to Redis (fails fast when it cannot be reached) and starts the subscriber and
    /// the registry heartbeat.
    pub async fn connect(config: RedisHubConfig) -> Result<Self, HubError> {
        let target = Target::new(&config.endpoint, config.command_timeout)?;
        let conn = target.commands().await?;
        let node = format!("{:016x}", rand_node());
        let inner = Arc::new(Inner {
            node,
            config,
            conn: std::sync::RwLock::new(conn),
            target,
            local: LocalConnections::new(),
            firehose: broadcast::channel(FIREHOSE_CAPACITY).0,
            registry: tokio::sync::Mutex::new(()),
            subscriptions_replaced: std::sync::atomic::AtomicU64::new(0),
            firehose_on: tokio::sync::watch::channel(false).0,
            firehose_wanted: tokio::sync::Notify::new(),
        });
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let subscriber = AbortOnDropHandle::new(tokio::spawn(subscribe_loop(inner.clone(), Some(ready_tx))));
        let heartbeat = AbortOnDropHandle::new(tokio::spawn(heartbeat_loop(inner.clone())));
        // Publishing before our subscription is live would lose events addressed to us.
        let _ = tokio::time::timeout(Duration::from_secs(10), ready_rx).await;
        Ok(RedisHub { inner, _tasks: vec![subscriber, heartbeat] })
    }

    /// This process's node id in the registry.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Subscriptions replaced so far because they went silent.
    pub fn subscriptions_replaced(&self) -> u64 {
        self.inner.subscriptions_replaced.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn rand_node() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    h.finish()
}

impl Inner {
    fn sess_key(&self, user: &str) -> String {
        format!("{}:sess:{}", self.config.prefix, user)
    }

    fn node_channel(&self, node: &str) -> String {
        format!("{}:node:{}", self.config.prefix, node)
    }

    fn firehose_channel(&self) -> String {
        format!("{}:firehose", self.config.prefix)
    }

    /// Registers (or refreshes) `users` as connected on this node.
    async fn register(&self, users: &[String]) -> Result<(), HubError> {
        if users.is_empty() {
            return Ok(());
        }
        let ttl = self.config.session_ttl;
        let expires = sluice_core::now_ms() + ttl.as_millis() as i64;
        let mut cmds = Vec::with_capacity(users.len() * 2);
        for u in users {
            let key = self.sess_key(u);
            cmds.push((key.clone(), redis::Cmd::zadd(&key, &self.node, expires)));
            cmds.push((key.clone(), redis::Cmd::pexpire(&key, ttl.as_millis() as i64)));
        }
        self.conn().batch(cmds).await.map(drop).map_err(unavailable)
    }

    /// Registers every local user (heartbeat, after a resubscribe).
    async fn register_local(&self) -> Result<(), HubError> {
        let _order = self.registry.lock().await;
        self.register(&self.local.users()).await
    }

    /// Removes `user`'s registration unless they connected here again meanwhile.
    async fn unregister(&self, user: &str) -> Result<(), HubError> {
        let _order = self.registry.lock().await;
        if self.local.is_connected(user) {
            return Ok(());
        }
        let mut conn = self.conn();
        redis::cmd("ZREM").arg(self.sess_key(user)).arg(&self.node).query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    /// The live nodes of each user, in one round trip.
    async fn nodes_of(&self, users: &[String]) -> Result<Vec<Vec<String>>, HubError> {
        let now = sluice_core::now_ms();
        let cmds = users
            .iter()
            .map(|u| {
                let key = self.sess_key(u);
                let mut cmd = redis::cmd("ZRANGEBYSCORE");
                cmd.arg(&key).arg(now).arg("+inf");
                (key, cmd)
            })
            .collect();
        let answers = self.conn().batch(cmds).await.map_err(unavailable)?;
        answers.into_iter().map(|v| redis::from_redis_value(v).map_err(|e| HubError::Unavailable(e.to_string()))).collect()
    }

    /// Delivers an envelope that arrived on this node's channel, or a firehose event.
    fn on_message(&self, channel: &str, payload: &[u8]) {
        if channel == self.firehose_channel() {
            match serde_json::from_slice::<LiveEvent>(payload) {
                Ok(e) => drop(self.firehose.send(Arc::new(e))),
                Err(e) => tracing::warn!(error = %e, "undecodable firehose event"),
            }
            return;
        }
        match serde_json::from_slice::<Envelope>(payload) {
            Ok(env) => {
                let event = Arc::new(env.event);
                self.local.deliver(&env.users, &event);
            }
            Err(e) => tracing::warn!(error = %e, "undecodable fan-out envelope"),
        }
    }
}

/// Subscribes to this node's channel and the firehose; on any failure reconnects with
/// backoff, resubscribes and re-registers the local users (a restarted Redis forgot them).
async fn subscribe_loop(inner: Arc<Inner>, mut ready: Option<tokio::sync::oneshot::Sender<()>>) {
    let backoff = sluice_core::backoff::Backoff { base: Duration::from_millis(50), cap: Duration::from_secs(2), max_attempts: u32::MAX };
    let mut attempt = 0u32;
    loop {
        let session = async {
            let mut sub = inner.target.subscription().await?;
            sub.subscribe(&inner.node_channel(&inner.node)).await?;
            Ok::<_, redis::RedisError>(sub)
        };
        match tokio::time::timeout(inner.config.command_timeout * 2, session).await {
            Ok(Ok(mut sub)) => {
                if attempt > 0 {
                    tracing::info!("redis subscription restored");
                }
                attempt = 0;
                inner.firehose_on.send_replace(false);
                inner.reregister(&backoff).await;
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                let check = inner.config.subscription_check;
                let mut tick = tokio::time::interval(check);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut heard = tokio::time::Instant::now();
                loop {
                    // Follow the local firehose listeners: subscribed while there are any.
                    let wanted = inner.firehose.receiver_count() > 0;
                    if wanted != *inner.firehose_on.borrow() {
                        let channel = inner.firehose_channel();
                        let done = if wanted { sub.subscribe(&channel).await } else { sub.unsubscribe(&channel).await };
                        match done {
                            Ok(()) => {
                                inner.firehose_on.send_replace(wanted);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "redis firehose (un)subscribe failed; reconnecting");
                                break;
                            }
                        }
                    }
                    tokio::select! {
                        incoming = sub.next() => match incoming {
                            None => {
                                tracing::warn!("redis subscription lost; reconnecting");
                                break;
                            }
                            Some(Incoming::Message(msg)) => {
                                heard = tokio::time::Instant::now();
                                if msg.get_payload_bytes() != CANARY {
                                    inner.on_message(msg.get_channel_name(), msg.get_payload_bytes());
                                }
                            }
                            // A cluster node went away; once it is back it knows none of the
                            // sessions it held (the client resubscribes by itself).
                            Some(Incoming::Disconnected) => inner.reregister(&backoff).await,
                        },
                        _ = inner.firehose_wanted.notified() => {}
                        _ = tick.tick() => {
                            if heard.elapsed() > check * 3 {
                                inner.subscriptions_replaced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                tracing::warn!("redis subscription silent (a half-open connection?); reconnecting");
                                // The canary went out on the command connection, which may be
                                // the silent one.
                                inner.replace_commands().await;
                                break;
                            }
                            inner.send_canary().await;
                        }
                    }
                }
                inner.firehose_on.send_replace(false);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "redis subscribe failed"),
            Err(_) => tracing::warn!("redis subscribe timed out"),
        }
        let delay = backoff.delay(attempt).unwrap_or(backoff.cap).max(Duration::from_millis(20));
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

/// What a canary carries: not JSON, so no envelope is ever taken for one.
const CANARY: &[u8] = b"canary";

impl Inner {
    fn conn(&self) -> Commands {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Registers the local users again after Redis may have forgotten them (a restart). The
    /// command connection may still be reconnecting: retry briefly rather than leave users
    /// unroutable until the next heartbeat.
    async fn reregister(&self, backoff: &sluice_core::backoff::Backoff) {
        for retry in 0..20 {
            match self.register_local().await {
                Ok(()) => break,
                Err(e) if retry == 19 => tracing::warn!(error = %e, "re-registering sessions failed; the heartbeat will retry"),
                Err(_) => tokio::time::sleep(backoff.ceiling(retry).min(Duration::from_millis(500))).await,
            }
        }
    }

    /// Connects the commands afresh (after the subscription check found Redis silent).
    async fn replace_commands(&self) {
        let fresh = tokio::time::timeout(self.config.command_timeout * 2, self.target.commands()).await;
        match fresh {
            Ok(Ok(conn)) => *self.conn.write().unwrap_or_else(|p| p.into_inner()) = conn,
            Ok(Err(e)) => tracing::warn!(error = %e, "reconnecting redis commands failed"),
            Err(_) => tracing::warn!("reconnecting redis commands timed out"),
        }
    }

    /// Publishes a canary to this node's own channel, through the command connection.
    async fn send_canary(&self) {
        let mut conn = self.conn();
        let sent = conn.publish(&self.node_channel(&self.node), CANARY).query_async::<i64>(&mut conn).await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "subscription canary not sent");
        }
    }
}

/// Refreshes the registrations of every local user every third of the session TTL.
async fn heartbeat_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.config.session_ttl / 3);
    loop {
        tick.tick().await;
        if let Err(e) = inner.register_local().await {
            tracing::warn!(error = %e, "session heartbeat failed");
        }
    }
}

#[async_trait]
impl Hub for RedisHub {
    async fn connect(&self, user: &str, capacity: usize) -> Result<Connection, HubError> {
        let c = self.inner.local.connect(user, capacity);
        let registered = {
            let _order = self.inner.registry.lock().await;
            self.inner.register(std::slice::from_ref(&c.user)).await
        };
        if let Err(e) = registered {
            self.inner.local.disconnect(user, c.id);
            return Err(e);
        }
        Ok(c)
    }

    async fn disconnect(&self, user: &str, id: ConnId) {
        if self.inner.local.disconnect(user, id)
            && let Err(e) = self.inner.unregister(user).await
        {
            tracing::debug!(error = %e, "unregister failed; the registration expires by itself");
        }
    }

    async fn publish(&self, targets: &[String], event: LiveEvent) -> Result<(), HubError> {
        let inner = &self.inner;
        let event = Arc::new(event);
        inner.local.deliver(targets, &event);
        // Other devices of the same users may be on other gateways: look all targets up.
        let conn = inner.conn();
        let mut cmds = Vec::new();
        if !targets.is_empty() {
            let mut by_node: HashMap<String, Vec<String>> = HashMap::new();
            for (user, nodes) in targets.iter().zip(inner.nodes_of(targets).await?) {
                for node in nodes.into_iter().filter(|n| *n != inner.node) {
                    by_node.entry(node).or_default().push(user.clone());
                }
            }
            for (node, users) in by_node {
                let env = serde_json::to_vec(&EnvelopeRef { users: &users, event: &event }).expect("events serialize");
                let channel = inner.node_channel(&node);
                cmds.push((channel.clone(), conn.publish(&channel, &env)));
            }
        }
        let firehose = inner.firehose_channel();
        cmds.push((firehose.clone(), conn.publish(&firehose, &serde_json::to_vec(&*event).expect("events serialize"))));
        conn.batch(cmds).await.map(drop).map_err(unavailable)
    }

    async fn firehose(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        let rx = self.inner.firehose.subscribe();
        let mut on = self.inner.firehose_on.subscribe();
        self.inner.firehose_wanted.notify_one();
        // Until the subscription is in place, events of other gateways would be missed.
        let _ = tokio::time::timeout(self.inner.config.command_timeout * 2, on.wait_for(|on| *on)).await;
        rx
    }

    async fn online(&self, users: &[String]) -> Result<Vec<bool>, HubError> {
        Ok(self.inner.nodes_of(users).await?.into_iter().map(|n| !n.is_empty()).collect())
    }

    async fn ping(&self) -> Result<(), HubError> {
        let mut conn = self.inner.conn();
        redis::cmd("PING").query_async::<String>(&mut conn).await.map(drop).map_err(unavailable)
    }
}
