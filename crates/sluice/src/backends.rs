//! Opening the backends a configuration names, once per process: the store, the queue, the
//! hub, the analytics sink and the per-user limits, embedded by default or on AWS and Redis.
//! [`Opened::from_config`] is what `serve`, `gateway` and `worker` start from; a test or the
//! benchmark opens them so and may wrap one (a slower or failing store) before [`crate::serve_on`].

use crate::config::{Backend, CommonArgs, EventsKind, HubKind, QueueKind, ServeArgs, StoreKind};
use anyhow::{Context, bail};
use sluice_core::backends::Backends;
use sluice_core::events::{EventSink, NoEvents};
use sluice_core::fanout::Fanout;
use sluice_core::hub::Hub;
use sluice_core::limits::{Limiter, LocalLimiter};
use sluice_core::metrics::Metrics;
use sluice_core::queue::SpikeQueue;
use sluice_core::store::MessageStore;
use sluice_embedded::{EmbeddedQueue, EmbeddedStore, FileEvents, LocalHub, QueueConfig, StoreConfig};
use sluice_redis::{Endpoint, RedisHub, RedisHubConfig, RedisLimiter};
use std::sync::Arc;
use std::time::Duration;

/// The backends of one process, and the embedded store whose analytics outbox the process
/// relays (when events are on and the store is embedded).
pub struct Opened {
    pub backends: Backends,
    pub(crate) outbox: Option<EmbeddedStore>,
}

impl Opened {
    /// Opens every backend `args` configures, with one set of metrics.
    pub async fn from_config(args: &ServeArgs) -> anyhow::Result<Opened> {
        let common = &args.common;
        let metrics = Arc::new(Metrics::new());
        let conf = aws_conf(common).await;
        let events_on = events_kind(args) != EventsKind::Off;
        let store_config = StoreConfig {
            outbox: events_on,
            cache_bytes: (args.store_cache_mib as usize) << 20,
            checkpoint_every: std::time::Duration::from_millis(args.store_checkpoint_ms),
            ..StoreConfig::default()
        };
        let (store, outbox) = open_store(common, conf.as_ref(), metrics.clone(), store_config).await?;
        let weights =
            sluice_core::queue::TenantWeights::parse(&args.tenant_weights).map_err(anyhow::Error::msg).context("--tenant-weight")?;
        let queue_config =
            QueueConfig { cache_bytes: (args.queue_cache_mib as usize) << 20, weights: Arc::new(weights), ..QueueConfig::default() };
        let queue = open_queue(common, conf.as_ref(), metrics.clone(), queue_config).await?;
        let hub = open_hub(common).await?;
        let events = open_events(args, conf.as_ref(), &metrics)?;
        let limiter = open_limiter(common).await?;
        let mut backends = Backends::new(store, queue, hub, events, limiter, metrics);
        if outbox.is_some() {
            // The embedded store writes `message_persisted` with the message (its outbox), so a
            // crash after a commit cannot lose it.
            backends.fanout = Fanout::with_outbox(backends.hub.clone(), backends.events.clone(), Some(backends.store.clone()));
        }
        Ok(Opened { backends, outbox })
    }
}

/// The AWS SDK configuration, loaded once from the standard chain when an AWS backend is used.
pub(crate) async fn aws_conf(common: &CommonArgs) -> Option<aws_config::SdkConfig> {
    let needed = common.store_kind() == StoreKind::Dynamodb || common.queue_kind() == QueueKind::Sqs;
    if needed { Some(sluice_aws::sdk_config().await) } else { None }
}

pub(crate) fn data_dir(common: &CommonArgs) -> anyhow::Result<&std::path::Path> {
    let dir = common.data_dir.as_path();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create data dir {}", dir.display()))?;
    Ok(dir)
}

pub(crate) fn in_use_hint(common: &CommonArgs) -> String {
    format!("cannot open the data in {} (is another sluice using it?)", common.data_dir.display())
}

/// The configured store; with `outbox` and the embedded store, also the embedded handle
/// whose analytics outbox the caller relays. `config` applies to the embedded store.
async fn open_store(
    common: &CommonArgs,
    conf: Option<&aws_config::SdkConfig>,
    metrics: Arc<Metrics>,
    config: StoreConfig,
) -> anyhow::Result<(Arc<dyn MessageStore>, Option<EmbeddedStore>)> {
    Ok(match (common.store_kind(), conf) {
        (StoreKind::Dynamodb, Some(conf)) => (
            Arc::new(sluice_aws::DynamoStore::from_conf(
                conf,
                &sluice_aws::Names::new(&common.resource_prefix).with_lanes(common.sqs_lanes),
                metrics,
            )),
            None,
        ),
        _ => {
            let store = EmbeddedStore::open_with(&data_dir(common)?.join("store.redb"), config).with_context(|| in_use_hint(common))?;
            (Arc::new(store.clone()), config.outbox.then_some(store))
        }
    })
}

pub(crate) async fn open_queue(
    common: &CommonArgs,
    conf: Option<&aws_config::SdkConfig>,
    metrics: Arc<Metrics>,
    config: QueueConfig,
) -> anyhow::Result<Arc<dyn SpikeQueue>> {
    Ok(match (common.queue_kind(), conf) {
        (QueueKind::Sqs, Some(conf)) => {
            let names = sluice_aws::Names::new(&common.resource_prefix).with_lanes(common.sqs_lanes);
            let q = sluice_aws::SqsQueue::from_conf(conf, &names, metrics).await.with_context(|| {
                format!("cannot find the SQS queues {} .. {} (create them with `sluice migrate --backend aws --with-queues` and the same --sqs-lanes)", names.queue(), names.lane_queue(names.lanes - 1))
            })?;
            Arc::new(q.with_client_side_wait(common.sqs_client_side_wait).with_weights(config.weights))
        }
        _ => Arc::new(EmbeddedQueue::open(&data_dir(common)?.join("queue.redb"), config).with_context(|| in_use_hint(common))?),
    })
}

/// Where per-user limits live: with the hub (Redis when gateways share one).
async fn open_limiter(common: &CommonArgs) -> anyhow::Result<Arc<dyn Limiter>> {
    Ok(match common.hub_kind() {
        HubKind::Local => Arc::new(LocalLimiter::new()),
        HubKind::Redis => {
            let endpoint = redis_endpoint(common, "per-user limits need SLUICE_REDIS_URL (--redis-url)")?;
            Arc::new(
                RedisLimiter::connect(&endpoint, &common.resource_prefix, Duration::from_secs(2))
                    .await
                    .context("cannot connect to Redis (--redis-url)")?,
            )
        }
    })
}

/// Where Redis is: `--redis-url`, the CA certificate `--redis-tls-ca` names (read), and
/// `--redis-cluster`.
fn redis_endpoint(common: &CommonArgs, missing: &'static str) -> anyhow::Result<Endpoint> {
    let url = common.redis_url.clone().context(missing)?;
    let tls_ca = match &common.redis_tls_ca {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("cannot read --redis-tls-ca {}", path.display()))?),
        None => None,
    };
    Ok(Endpoint { url, tls_ca, cluster: common.redis_cluster })
}

async fn open_hub(common: &CommonArgs) -> anyhow::Result<Arc<dyn Hub>> {
    Ok(match common.hub_kind() {
        HubKind::Local => Arc::new(LocalHub::new()),
        HubKind::Redis => {
            let endpoint = redis_endpoint(common, "the redis hub needs SLUICE_REDIS_URL (--redis-url), e.g. redis://127.0.0.1:6379")?;
            let config = RedisHubConfig { prefix: common.resource_prefix.clone(), endpoint, ..RedisHubConfig::new("") };
            Arc::new(RedisHub::connect(config).await.context("cannot connect to Redis (--redis-url)")?)
        }
    })
}

pub(crate) fn events_kind(args: &ServeArgs) -> EventsKind {
    args.events.unwrap_or(match (args.common.backend, &args.events_file) {
        (Backend::Aws, _) => EventsKind::Kinesis,
        (_, Some(_)) => EventsKind::File,
        _ => EventsKind::Off,
    })
}

fn open_events(args: &ServeArgs, conf: Option<&aws_config::SdkConfig>, metrics: &Arc<Metrics>) -> anyhow::Result<Arc<dyn EventSink>> {
    Ok(match events_kind(args) {
        EventsKind::Off => Arc::new(NoEvents),
        EventsKind::File => {
            let path = args.events_file.as_ref().context("--events file needs --events-file")?;
            let dropped = metrics.events_dropped.clone();
            Arc::new(
                FileEvents::open(path, Box::new(move |n| dropped.inc_by(n)))
                    .with_context(|| format!("cannot open events file {}", path.display()))?,
            )
        }
        EventsKind::Kinesis => {
            let Some(conf) = conf else {
                bail!("--events kinesis needs the AWS configuration (use it with --backend aws)");
            };
            let names = sluice_aws::Names::new(&args.common.resource_prefix).with_lanes(args.common.sqs_lanes);
            Arc::new(sluice_aws::KinesisEvents::from_conf(conf, &names, metrics.clone(), sluice_aws::kinesis::KinesisConfig::default()))
        }
    })
}
