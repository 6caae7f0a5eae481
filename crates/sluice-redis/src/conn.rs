//! The path to Redis, standalone or cluster: one command connection type and one subscription
//! type, so the hub and the limiter are written once for both.
//!
//! In cluster mode (ElastiCache with cluster mode enabled, ElastiCache Serverless, a
//! self-managed Redis Cluster) the cluster client routes every command by its key's slot and
//! follows MOVED/ASK redirections. A pipeline may only hold keys of one slot, so
//! [`Commands::batch`] splits a batch by slot and sends the parts concurrently. Publishing and
//! subscribing use sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7): a channel lives on the
//! shard that owns its slot, instead of every message crossing the cluster bus to every node
//! as classic PUBLISH does. Keys a script touches together share a hash tag.

use futures::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, PushInfo, PushKind, RedisFuture, RedisResult, Value};
use sluice_core::error::HubError;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `redis://host:port[/db]`, or `rediss://` for TLS. In cluster mode, one or more seed
    /// nodes separated by commas (ElastiCache's configuration endpoint is one).
    pub url: String,
    /// The CA (PEM) a `rediss://` server's certificate must chain to (default: the public web
    /// roots compiled in).
    pub tls_ca: Option<Vec<u8>>,
    /// Whether Redis runs in cluster mode.
    pub cluster: bool,
}

impl Endpoint {
    /// A standalone Redis at `url`, without a CA of its own.
    pub fn new(url: impl Into<String>) -> Self {
        Endpoint { url: url.into(), tls_ca: None, cluster: false }
    }
}

/// The clients an [`Endpoint`] makes connections with.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // one per hub or limiter
pub(crate) enum Target {
    Single { client: redis::Client, config: ConnectionManagerConfig },
    Cluster { nodes: Vec<ConnectionInfo>, tls_ca: Option<Vec<u8>>, command_timeout: Duration },
}

fn unavailable(e: redis::RedisError) -> HubError {
    HubError::Unavailable(e.to_string())
}

impl Target {
    /// Connections whose commands connect and answer within `command_timeout`, or fail: a
    /// hung Redis must not hang us.
    pub(crate) fn new(endpoint: &Endpoint, command_timeout: Duration) -> Result<Target, HubError> {
        let tls = endpoint.url.split(',').any(|u| u.trim().starts_with("rediss://"));
        if tls {
            // rustls needs a crypto provider chosen for the process; two are linked in
            // (through the AWS SDK), so name one unless the program did.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        } else if endpoint.tls_ca.is_some() {
            return Err(HubError::Unavailable("a Redis TLS CA was given for a URL without TLS: use rediss://".into()));
        }
        if endpoint.cluster {
            let nodes = endpoint
                .url
                .split(',')
                .map(|u| u.trim().into_connection_info().map(|i| i.set_tcp_settings(tcp_settings())))
                .collect::<RedisResult<Vec<_>>>()
                .map_err(unavailable)?;
            let target = Target::Cluster { nodes, tls_ca: endpoint.tls_ca.clone(), command_timeout };
            // Checks the seed list (same TLS mode, credentials) before the first connection.
            target.cluster_client(None).map_err(unavailable)?;
            return Ok(target);
        }
        let info = endpoint.url.as_str().into_connection_info().map_err(unavailable)?.set_tcp_settings(tcp_settings());
        let client = match &endpoint.tls_ca {
            Some(ca) => {
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) };
                redis::Client::build_with_tls(info, certs).map_err(unavailable)?
            }
            None => redis::Client::open(info).map_err(unavailable)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(command_timeout))
            .set_response_timeout(Some(command_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        Ok(Target::Single { client, config })
    }

    fn cluster_client(&self, pushes: Option<mpsc::UnboundedSender<PushInfo>>) -> RedisResult<ClusterClient> {
        let Target::Cluster { nodes, tls_ca, command_timeout } = self else { unreachable!("cluster_client of a standalone target") };
        let mut b = ClusterClientBuilder::new(nodes.clone())
            .connection_timeout(*command_timeout)
            .response_timeout(*command_timeout)
            .tcp_settings(tcp_settings())
            .retries(3);
        if let Some(ca) = tls_ca {
            b = b.certs(redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) });
        }
        if let Some(tx) = pushes {
            // Pushes (sharded messages, disconnections) reach us only over RESP3.
            b = b.use_protocol(redis::ProtocolVersion::RESP3).push_sender(tx);
        }
        b.build()
    }

    /// A reconnecting command connection (fails fast when Redis cannot be reached).
    pub(crate) async fn commands(&self) -> Result<Commands, HubError> {
        match self {
            Target::Single { client, config } => {
                Ok(Commands::Single(client.get_connection_manager_with_config(config.clone()).await.map_err(unavailable)?))
            }
            Target::Cluster { .. } => {
                Ok(Commands::Cluster(self.cluster_client(None).map_err(unavailable)?.get_async_connection().await.map_err(unavailable)?))
            }
        }
    }

    /// A connection for subscriptions.
    pub(crate) async fn subscription(&self) -> RedisResult<Subscription> {
        match self {
            Target::Single { client, .. } => {
                let (sink, stream) = client.get_async_pubsub().await?.split();
                Ok(Subscription::Single { sink, stream })
            }
            Target::Cluster { .. } => {
                let (tx, pushes) = mpsc::unbounded_channel();
                let conn = self.cluster_client(Some(tx))?.get_async_connection().await?;
                Ok(Subscription::Cluster { conn, pushes })
            }
        }
    }
}

/// Keepalive probes after 10 s idle (every 5 s, 3 times) and, on Linux, at most 15 s for sent
/// data to be acknowledged: a connection whose peer vanished (a NAT or load balancer dropped
/// it) fails within about half a minute instead of never.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::socket2::TcpKeepalive;
    let keepalive = TcpKeepalive::new().with_time(Duration::from_secs(10)).with_interval(Duration::from_secs(5)).with_retries(3);
    let settings = redis::io::tcp::TcpSettings::default().set_nodelay(true).set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(Duration::from_secs(15));
    settings
}

/// A command connection; cheap to clone (clones share the connection).
#[derive(Clone)]
pub(crate) enum Commands {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Single(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, cmd: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Single(c) => c.req_packed_commands(cmd, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

impl Commands {
    /// Publishes to a channel: PUBLISH, or SPUBLISH (routed by the channel's slot) in cluster
    /// mode.
    pub(crate) fn publish(&self, channel: &str, payload: &[u8]) -> Cmd {
        let mut cmd = redis::cmd(if matches!(self, Commands::Cluster(_)) { "SPUBLISH" } else { "PUBLISH" });
        cmd.arg(channel).arg(payload);
        cmd
    }

    /// Runs `cmds`, each with the key (or channel) that routes it, in one round trip: one
    /// pipeline, or in cluster mode one pipeline per slot sent concurrently. Answers in order.
    pub(crate) async fn batch(&self, cmds: Vec<(String, Cmd)>) -> RedisResult<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Commands::Single(_) => {
                let mut pipe = redis::pipe();
                for (_, cmd) in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query_async(&mut self.clone()).await
            }
            Commands::Cluster(_) => {
                let n = cmds.len();
                let mut by_slot: HashMap<Slot, (Vec<usize>, redis::Pipeline)> = HashMap::new();
                for (i, (key, cmd)) in cmds.into_iter().enumerate() {
                    let (idx, pipe) = by_slot.entry(Slot::for_key(&key)).or_insert_with(|| (Vec::new(), redis::pipe()));
                    idx.push(i);
                    pipe.add_command(cmd);
                }
                let parts = futures::future::try_join_all(by_slot.into_values().map(|(idx, pipe)| {
                    let mut conn = self.clone();
                    async move { pipe.query_async::<Vec<Value>>(&mut conn).await.map(|values| (idx, values)) }
                }))
                .await?;
                let mut out = vec![Value::Nil; n];
                for (idx, values) in parts {
                    for (i, v) in idx.into_iter().zip(values) {
                        out[i] = v;
                    }
                }
                Ok(out)
            }
        }
    }
}

/// What a subscription hears.
pub(crate) enum Incoming {
    Message(redis::Msg),
    /// A connection to a node dropped (cluster mode): that node may have restarted and
    /// forgotten what we registered there. The client reconnects and resubscribes by itself.
    Disconnected,
}

/// Subscriptions on one connection.
pub(crate) enum Subscription {
    Single { sink: PubSubSink, stream: PubSubStream },
    Cluster { conn: ClusterConnection, pushes: mpsc::UnboundedReceiver<PushInfo> },
}

impl Subscription {
    pub(crate) async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Subscription::Single { sink, .. } => sink.subscribe(channel).await,
            Subscription::Cluster { conn, .. } => conn.ssubscribe(channel).await,
        }
    }

    pub(crate) async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Subscription::Single { sink, .. } => sink.unsubscribe(channel).await,
            Subscription::Cluster { conn, .. } => conn.sunsubscribe(channel).await,
        }
    }

    /// The next message or disconnection; `None` when the subscription is gone.
    pub(crate) async fn next(&mut self) -> Option<Incoming> {
        match self {
            Subscription::Single { stream, .. } => stream.next().await.map(Incoming::Message),
            Subscription::Cluster { pushes, .. } => loop {
                let push = pushes.recv().await?;
                if push.kind == PushKind::Disconnection {
                    return Some(Incoming::Disconnected);
                }
                // Subscription confirmations and other pushes carry nothing for us.
                if let Some(msg) = redis::Msg::from_push_info(push) {
                    return Some(Incoming::Message(msg));
                }
            },
        }
    }
}
