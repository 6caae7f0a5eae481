//! The Kinesis analytics sink against moto: events arrive as protobuf records keyed by room,
//! and a full buffer drops events instead of blocking the caller.

mod common;

use aws_sdk_kinesis::types::ShardIteratorType;
use prost::Message as _;
use sluice_aws::kinesis::{KinesisConfig, KinesisEvents};
use sluice_core::events::{AnalyticsEvent, EventSink};
use sluice_core::metrics::Metrics;
use sluice_proto::v1;
use sluice_testkit::events::persisted;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_as_protobuf_records_keyed_by_room() {
    let (client, names) = fresh_stream(&sluice_testkit::services::moto_url(), "ev").await;
    let metrics = Arc::new(Metrics::new());
    let sink = KinesisEvents::start(client.clone(), &names, metrics.clone(), KinesisConfig::default());
    let mut events: Vec<AnalyticsEvent> = (1..=1200).map(|i| persisted("room-a", i)).collect();
    events.push(AnalyticsEvent::RoomRead { user: "bob".into(), room: "room-b".into(), seq: 7, unread: 0, read_at_ms: 3 });
    sink.emit(events);
    sink.flush().await;
    assert_eq!(metrics.events_written.get(), 1201);
    assert!(metrics.aws_requests.with_label_values(&["kinesis", "PutRecords"]).get() >= 1200, "at most one record of a room a call");

    let got = read_stream(&client, &names, 1201).await;
    let seqs: Vec<u64> = got
        .iter()
        .filter_map(|(_, e)| match &e.event {
            Some(v1::analytics_event::Event::MessagePersisted(m)) => Some(m.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (1..=1200).collect::<Vec<_>>(), "one room's events in order");
    // Rooms do not wait for each other: room-b's event went out with room-a's first.
    let reads: Vec<_> = got.iter().filter(|(key, _)| key == "room-b").collect();
    assert_eq!(reads.len(), 1);
    assert!(matches!(&reads[0].1.event, Some(v1::analytics_event::Event::RoomRead(r)) if r.user == "bob" && r.seq == 7));
}

/// Issue 15.6: Kinesis refuses part of a PutRecords call (a shard over its limits) and writes
/// the rest. Behind a proxy refusing 30% of the records of every call, each room's events
/// still reach the stream complete and in seq order: a refused record is never overtaken by a
/// later one of its room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_refused_part_way_keep_each_rooms_order() {
    let faults = sluice_testkit::moto_faults::MotoFaults { records_refused: 0.3, ..Default::default() };
    let proxy = sluice_testkit::moto_faults::MotoFaultProxy::start(&sluice_testkit::services::moto_url(), faults).await;
    let (client, names) = fresh_stream(&proxy.url(), "evorder").await;
    let metrics = Arc::new(Metrics::new());
    let backoff = sluice_core::backoff::Backoff { base: Duration::from_millis(1), cap: Duration::from_millis(10), max_attempts: 60 };
    let config = KinesisConfig { linger: Duration::from_millis(5), backoff, ..KinesisConfig::default() };
    let sink = KinesisEvents::start(client.clone(), &names, metrics.clone(), config);
    const ROOMS: u64 = 5;
    const PER_ROOM: u64 = 200;
    // Interleaved, in several emits, as persists of several rooms arrive.
    for chunk in 0..10 {
        let events: Vec<AnalyticsEvent> =
            (chunk * 20 + 1..=(chunk + 1) * 20).flat_map(|seq| (0..ROOMS).map(move |r| persisted(&format!("room-{r}"), seq))).collect();
        sink.emit(events);
    }
    sink.flush().await;
    assert_eq!((metrics.events_written.get(), metrics.events_dropped.get()), (ROOMS * PER_ROOM, 0));
    assert!(proxy.counts.failed.load(std::sync::atomic::Ordering::Relaxed) > 50, "the proxy refused records");
    let got = read_stream(&client, &names, (ROOMS * PER_ROOM) as usize).await;
    let mut by_room: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for (key, e) in got {
        if let Some(v1::analytics_event::Event::MessagePersisted(m)) = e.event {
            by_room.entry(key).or_default().push(m.seq);
        }
    }
    assert_eq!(by_room.len(), ROOMS as usize);
    for (room, seqs) in by_room {
        assert_eq!(seqs, (1..=PER_ROOM).collect::<Vec<_>>(), "{room}: every event once, in order");
    }
}

/// A client on `endpoint` and a fresh one-shard stream under a prefix of its own.
async fn fresh_stream(endpoint: &str, what: &str) -> (aws_sdk_kinesis::Client, sluice_aws::Names) {
    let client = aws_sdk_kinesis::Client::new(&common::sdk_conf(endpoint).await);
    let names = sluice_aws::Names::new(sluice_testkit::services::unique_prefix(what));
    sluice_aws::migrate::stream(&client, &names, 1).await.unwrap();
    (client, names)
}

/// The first `want` records of the stream's only shard, with their partition keys.
async fn read_stream(client: &aws_sdk_kinesis::Client, names: &sluice_aws::Names, want: usize) -> Vec<(String, v1::AnalyticsEvent)> {
    let shard = client.list_shards().stream_name(names.stream()).send().await.unwrap().shards()[0].shard_id().to_string();
    let mut it = client
        .get_shard_iterator()
        .stream_name(names.stream())
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap()
        .shard_iterator
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < want && Instant::now() < deadline {
        let out = client.get_records().shard_iterator(&it).limit(1000).send().await.unwrap();
        for r in out.records() {
            got.push((r.partition_key().unwrap_or_default().to_string(), v1::AnalyticsEvent::decode(r.data().as_ref()).unwrap()));
        }
        it = out.next_shard_iterator.unwrap();
    }
    assert_eq!(got.len(), want, "the stream holds exactly what was written");
    got
}

// One thread: the sender task cannot drain the buffer while `emit` fills it, so exactly the
// buffer's worth gets in (on two threads the count depended on scheduling).
#[tokio::test(flavor = "current_thread")]
async fn a_full_buffer_drops_events_without_blocking() {
    // A stream that does not exist: every put fails, so the buffer fills.
    let conf = common::sdk_conf(&sluice_testkit::services::moto_url()).await;
    let names = sluice_aws::Names::new(sluice_testkit::services::unique_prefix("nostream"));
    let metrics = Arc::new(Metrics::new());
    let config = KinesisConfig { buffer: 10, ..KinesisConfig::default() };
    let sink = KinesisEvents::start(aws_sdk_kinesis::Client::new(&conf), &names, metrics.clone(), config);
    sink.emit((1..=1000).map(|i| persisted("r", i)).collect());
    assert_eq!(metrics.events_dropped.get(), 990, "all but the buffer's 10 are dropped, without blocking");
    assert_eq!(metrics.events_written.get(), 0);
}

/// One busy room's backlog (one of its records a call) does not hold other rooms' events back:
/// they go out in the same calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_room_does_not_hold_other_rooms_back() {
    let (client, names) = fresh_stream(&sluice_testkit::services::moto_url(), "evbusy").await;
    let metrics = Arc::new(Metrics::new());
    let sink = KinesisEvents::start(client.clone(), &names, metrics.clone(), KinesisConfig::default());
    let mut events: Vec<AnalyticsEvent> = (1..=600).map(|i| persisted("busy", i)).collect();
    events.extend((0..300).map(|r| persisted(&format!("quiet-{r}"), 1)));
    sink.emit(events);
    sink.flush().await;
    assert_eq!(metrics.events_written.get(), 900);
    let got = read_stream(&client, &names, 900).await;
    let last_quiet = got.iter().rposition(|(key, _)| key.starts_with("quiet-")).unwrap();
    assert!(last_quiet < 600, "the quiet rooms' events went out with the busy room's first ones (last at {last_quiet})");
}

/// Reads a stream's records as the suite sees events.
struct StreamBack(aws_sdk_kinesis::Client, sluice_aws::Names);

#[async_trait::async_trait]
impl sluice_testkit::events::ReadBack for StreamBack {
    async fn read(&self, want: usize) -> Vec<sluice_testkit::events::SeenEvent> {
        read_stream(&self.0, &self.1, want)
            .await
            .into_iter()
            .map(|(_, e)| match e.event {
                Some(v1::analytics_event::Event::MessagePersisted(m)) => (m.room, "message_persisted".to_string(), m.seq),
                Some(v1::analytics_event::Event::RoomRead(r)) => (r.room, "room_read".to_string(), r.seq),
                None => panic!("a record without an event"),
            })
            .collect()
    }
}

/// The sink on moto behind the proxy that refuses part of each PutRecords call.
async fn kinesis_events() -> (Arc<dyn EventSink>, Box<dyn sluice_testkit::events::ReadBack>, sluice_testkit::Guard) {
    let (client, names) = fresh_stream(&sluice_testkit::services::kinesis_url(), "evc").await;
    let sink = KinesisEvents::start(client.clone(), &names, Arc::new(Metrics::new()), KinesisConfig::default());
    (Arc::new(sink), Box::new(StreamBack(client, names)), Box::new(()))
}

mod events_suite {
    sluice_testkit::events_conformance!(super::kinesis_events);
}
