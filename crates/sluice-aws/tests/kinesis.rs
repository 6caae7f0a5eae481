//! The Kinesis analytics sink against moto: events arrive as protobuf records keyed by room,
//! and a full buffer drops events instead of blocking the caller.

mod common;

use aws_sdk_kinesis::types::ShardIteratorType;
use prost::Message as _;
use sluice_aws::kinesis::{KinesisConfig, KinesisEvents};
use sluice_core::events::{AnalyticsEvent, EventSink};
use sluice_core::metrics::Metrics;
use sluice_proto::v1;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn persisted(room: &str, seq: u64) -> AnalyticsEvent {
    AnalyticsEvent::MessagePersisted {
        room: room.into(),
        seq,
        msg_id: format!("m{seq}"),
        sender: "alice".into(),
        kind: "chat".into(),
        campaign_id: None,
        sent_at_ms: 1,
        persisted_at_ms: 2,
        recipients: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_as_protobuf_records_keyed_by_room() {
    let conf = common::sdk_conf(&sluice_testkit::services::moto_url()).await;
    let names = sluice_aws::Names::new(sluice_testkit::services::unique_prefix("ev"));
    let client = aws_sdk_kinesis::Client::new(&conf);
    sluice_aws::migrate::stream(&client, &names, 1).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let sink = KinesisEvents::start(client.clone(), &names, metrics.clone(), KinesisConfig::default());
    let mut events: Vec<AnalyticsEvent> = (1..=1200).map(|i| persisted("room-a", i)).collect();
    events.push(AnalyticsEvent::RoomRead { user: "bob".into(), room: "room-b".into(), seq: 7, unread: 0, read_at_ms: 3 });
    sink.emit(events);
    sink.flush().await;
    assert_eq!(metrics.events_written.get(), 1201);
    assert!(metrics.aws_requests.with_label_values(&["kinesis", "PutRecords"]).get() >= 3, "at most 500 records a call");

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
    while got.len() < 1201 && Instant::now() < deadline {
        let out = client.get_records().shard_iterator(&it).limit(1000).send().await.unwrap();
        for r in out.records() {
            got.push((r.partition_key().unwrap_or_default().to_string(), v1::AnalyticsEvent::decode(r.data().as_ref()).unwrap()));
        }
        it = out.next_shard_iterator.unwrap();
    }
    assert_eq!(got.len(), 1201);
    let seqs: Vec<u64> = got
        .iter()
        .filter_map(|(_, e)| match &e.event {
            Some(v1::analytics_event::Event::MessagePersisted(m)) => Some(m.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (1..=1200).collect::<Vec<_>>(), "one room's events in order");
    let (key, read) = got.last().unwrap();
    assert_eq!(key, "room-b");
    assert!(matches!(&read.event, Some(v1::analytics_event::Event::RoomRead(r)) if r.user == "bob" && r.seq == 7));
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
