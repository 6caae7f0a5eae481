//! Scenario `cost`: what one message costs on the AWS backends, measured on DynamoDB Local
//! and moto through a real `sluice serve --backend aws` (local hub: Redis is not billed per
//! message). A campaign of one-off messages goes through EnqueueBulk, SQS and the worker;
//! then interactive messages are sent over WebSocket in two-member rooms, named and direct
//! (`dm:a:b`). Each part is
//! measured as the difference of the server's `/metrics` before and after: AWS requests by
//! service, DynamoDB capacity, items written and Kinesis records.
//!
//! Write capacity is priced by AWS's rule from the items written (2 write units per started
//! KB of each transactional item, 1 per KB of a standard write; the store counts them as it
//! writes), because DynamoDB Local reports ConsumedCapacity per table rather than per item;
//! its figure is shown beside it. A second campaign has a 2 KB body, the size of a marketing
//! message with markup.

use crate::args::{CostArgs, TargetArgs};
use crate::campaign::Campaign;
use crate::report::{Report, Target};
use crate::target::{Launch, Metrics, Target as Server};
use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use sluice_proto::v1;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// us-east-1 list prices, USD per million units (pages cited in docs/benchmarks/README.md).
pub const DYNAMODB_WRITE_REQUEST_UNIT: f64 = 0.625;
pub const DYNAMODB_READ_REQUEST_UNIT: f64 = 0.125;
pub const SQS_FIFO_REQUEST: f64 = 0.50;
pub const KINESIS_PUT_PAYLOAD_UNIT: f64 = 0.014;

/// Rooms (and connected pairs of users) the interactive messages are spread over.
const PAIRS: usize = 10;

pub async fn run(program: &Path, target: &TargetArgs, a: &CostArgs, run: &str) -> anyhow::Result<Report> {
    if target.http.is_some() {
        bail!("cost starts its own server on the emulators; it cannot use --http/--grpc");
    }
    let prefix = format!("bench{run}").replace('-', "");
    let env = super::emulators::env(&a.emulators, &prefix, "cost")?;
    super::emulators::migrate(program, &env).await?;
    let server = Server::start(Launch { program, args: vec![], env }, &target.server_args).await?;
    let mut report = Report::new("cost", serde_json::json!({"one_off": a.one_off, "interactive": a.interactive}));

    let before = server.metrics().await?;
    one_offs(&server, a.one_off, run, "cost", SHORT_BODY).await?;
    let mid = wait_events(&server, &before, a.one_off as f64).await?;
    let one_off = mid.since(&before);
    let long_body = LONG_BODY_LINE.repeat(2048 / LONG_BODY_LINE.len() + 1);
    one_offs(&server, a.one_off, run, "cost-long", &long_body).await?;
    let one_off_long = wait_events(&server, &mid, a.one_off as f64).await?.since(&mid);
    let mut chats = Vec::new();
    for direct in [false, true] {
        let rooms = create_pairs(&server, run, direct).await?;
        let before = server.metrics().await?;
        interactive(&server, &rooms, a.interactive).await?;
        let after = wait_events(&server, &before, a.interactive as f64).await?;
        chats.push(after.since(&before));
    }
    server.stop().await;

    let n = a.interactive as f64;
    let parts = [
        ("one-off", &one_off, a.one_off as f64, false),
        ("one-off, 2 KB body", &one_off_long, a.one_off as f64, false),
        ("interactive", &chats[0], n, true),
        ("interactive in a direct room", &chats[1], n, true),
    ];
    for (label, m, n, idle_receives) in parts {
        let wcu = m.sum("sluice_dynamodb_write_units_total", &[]) / n;
        let reported_wcu = m.sum("sluice_dynamodb_capacity_units_total", &["kind=\"write\""]) / n;
        let rcu = m.sum("sluice_dynamodb_capacity_units_total", &["kind=\"read\""]) / n;
        let dynamo_requests = m.sum("sluice_aws_requests_total", &["service=\"dynamodb\""]) / n;
        let mut sqs = m.sum("sluice_aws_requests_total", &["service=\"sqs\""]);
        if idle_receives {
            // The worker polls an empty queue whatever the chat does: not a cost per message.
            sqs -= m.sum("sluice_aws_requests_total", &["service=\"sqs\"", "op=\"ReceiveMessage\""]);
        }
        let sqs = sqs / n;
        let records = m.sum("sluice_analytics_events_written_total", &[]) / n;
        let kinesis_requests = m.sum("sluice_aws_requests_total", &["service=\"kinesis\""]) / n;
        let usd = wcu * DYNAMODB_WRITE_REQUEST_UNIT
            + rcu * DYNAMODB_READ_REQUEST_UNIT
            + sqs * SQS_FIFO_REQUEST
            + records * KINESIS_PUT_PAYLOAD_UNIT;
        report.figure(&format!("{label}: DynamoDB write units (AWS rule, items written)"), wcu, "WRU/msg", None);
        report.figure(&format!("{label}: DynamoDB write capacity as DynamoDB Local reports it"), reported_wcu, "WCU/msg", None);
        report.figure(&format!("{label}: DynamoDB read capacity (reported)"), rcu, "RRU/msg", None);
        report.figure(&format!("{label}: DynamoDB requests"), dynamo_requests, "req/msg", None);
        report.figure(&format!("{label}: SQS requests"), sqs, "req/msg", None);
        report.figure(&format!("{label}: Kinesis records"), records, "rec/msg", Some(Target::AtLeast(1.0)));
        report.figure(&format!("{label}: Kinesis PutRecords requests"), kinesis_requests, "req/msg", None);
        report.figure(&format!("{label}: AWS price per million messages"), usd, "USD", None);
    }
    report.note(format!(
        "Prices (us-east-1, on-demand list prices, USD per million): DynamoDB write request unit {DYNAMODB_WRITE_REQUEST_UNIT}, \
         read request unit {DYNAMODB_READ_REQUEST_UNIT}; SQS FIFO request {SQS_FIFO_REQUEST}; Kinesis PUT payload unit \
         {KINESIS_PUT_PAYLOAD_UNIT} (provisioned mode; shard hours are a fixed cost, not per message). Storage, data transfer \
         and Redis are not included."
    ));
    report.note(format!(
        "{} one-off messages (each to a new direct room), as many again with a 2 KB body, then {} interactive messages in {PAIRS} two-member rooms and \
         {} in {PAIRS} direct rooms (`dm:a:b`, made by CreateRoom first), both members connected. The interactive SQS \
         figures leave out the worker's idle ReceiveMessage polls.",
        a.one_off, a.interactive, a.interactive
    ));
    Ok(report)
}

const SHORT_BODY: &str = "Spring sale: 20% off everything until Sunday";
const LONG_BODY_LINE: &str =
    "<p>Spring sale: <b>20% off</b> everything until Sunday, see <a href=\"https://shop.example/sale\">the shop</a>.</p>\n";

/// A campaign `name` of `n` one-offs, each to a recipient of its own.
async fn one_offs(server: &Server, n: u32, run: &str, name: &str, body: &str) -> anyhow::Result<()> {
    let mut g = server.grpc().await?;
    let (id, sender) = (format!("{run}-{name}"), format!("{run}-shop"));
    let c = Campaign { id: &id, tenant: None, sender: &sender, body };
    c.enqueue(&g, n as u64, |i| format!("{run}-{name}-r{i}"), 10_000, 1, &AtomicU64::new(0)).await?;
    let (poll, limit) = (Duration::from_millis(200), Duration::from_secs(600));
    c.wait_persisted(&mut g, n as u64, poll, limit, &AtomicU64::new(0), || server.log_tail()).await
}

/// Two-member rooms, named (`direct` false) or direct (`dm:a:b`), each with its pair of users.
async fn create_pairs(server: &Server, run: &str, direct: bool) -> anyhow::Result<Vec<(String, String, String)>> {
    let mut g = server.grpc().await?;
    let mut rooms = vec![];
    let kind = if direct { "d" } else { "p" };
    for p in 0..PAIRS {
        let (a, b) = (format!("{run}-{kind}a{p}"), format!("{run}-{kind}b{p}"));
        let room = if direct { sluice_core::ids::dm_room(&a, &b) } else { format!("{run}-pair{p}") };
        g.create_room(v1::CreateRoomRequest { room: room.clone(), members: vec![a.clone(), b.clone()] }).await.context("CreateRoom")?;
        rooms.push((room, a, b));
    }
    Ok(rooms)
}

/// Sends `n` messages round-robin over the rooms, each from its first member, and waits for
/// every ack and for the second member to receive it.
async fn interactive(server: &Server, rooms: &[(String, String, String)], n: u32) -> anyhow::Result<()> {
    let mut pairs = vec![];
    for (room, a, b) in rooms {
        let (sa, _) = tokio_tungstenite::connect_async(server.ws_url(a)).await?;
        let (sb, _) = tokio_tungstenite::connect_async(server.ws_url(b)).await?;
        pairs.push((room, sa, sb));
    }
    for i in 0..n as usize {
        let (room, sa, sb) = &mut pairs[i % rooms.len()];
        sa.send(Message::text(format!(r#"{{"type":"send","room":"{room}","client_msg_id":"c{i}","body":"hello {i}"}}"#))).await?;
        expect(sa, "ack").await?;
        expect(sb, "message").await?;
    }
    Ok(())
}

async fn expect(
    s: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    kind: &str,
) -> anyhow::Result<()> {
    let want = format!(r#""type":"{kind}""#);
    let wait = async {
        while let Some(m) = s.next().await {
            match m? {
                Message::Text(t) if t.contains(&want) => return Ok(()),
                Message::Text(t) if t.contains(r#""type":"error""#) => bail!("server error: {t}"),
                _ => {}
            }
        }
        bail!("the connection closed")
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await.with_context(|| format!("no {kind} within 30 s"))?
}

/// Waits (up to 30 s) until `n` more analytics events than in `before` were written, then
/// returns the metrics.
async fn wait_events(server: &Server, before: &Metrics, n: f64) -> anyhow::Result<Metrics> {
    let started = Instant::now();
    loop {
        let now = server.metrics().await?;
        let written = now.since(before).sum("sluice_analytics_events_written_total", &[]);
        if written >= n || started.elapsed() > Duration::from_secs(30) {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
