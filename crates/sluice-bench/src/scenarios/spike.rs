//! Scenario `spike`: a campaign of N one-off messages enqueued through EnqueueBulk while the
//! chat load runs. Chat latency is measured first without the spike (baseline), then from the
//! first EnqueueBulk until the queue is drained, then as long as the baseline again (after:
//! chat on a store that holds the campaign, with nothing draining). GetCampaign is polled
//! every 100 ms for the queue depth (enqueued - persisted - dead-lettered); afterwards a
//! sample of recipients' inboxes is read back to check their counters.

use crate::args::SpikeArgs;
use crate::campaign::{Campaign, recipient};
use crate::chat::ChatLoad;
use crate::report::{Line, Report, Series, Target};
use crate::scenarios::interactive::{chat_figures, latency_series};
use crate::stats::Progress;
use crate::target::Target as Server;
use anyhow::bail;
use sluice_proto::v1;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ACCEPT_TARGET: f64 = 200_000.0;
pub const DRAIN_TARGET: f64 = 50_000.0;
const POLL: Duration = Duration::from_millis(100);
const BODY: &str = "Spring sale: 20% off everything until Sunday";

/// One GetCampaign sample: seconds since the spike began, enqueued, persisted, dead-lettered.
type Sample = (f64, u64, u64, u64);
/// One `/metrics` sample: seconds since the spike began, the governor's limit (msg/s), the
/// interactive persist p99 it saw (ms), messages drained so far, the runtime lag p99 (ms),
/// the accept gate's limit (msg/s, 0 while open).
type GovernorSample = (f64, f64, f64, f64, f64, f64);

pub async fn run(server: &Server, a: &SpikeArgs, run: &str) -> anyhow::Result<Report> {
    let mut params = crate::scenarios::interactive::params(&a.chat);
    params["messages"] = a.messages.into();
    params["chunk"] = a.chunk.into();
    params["parallel"] = a.parallel.into();
    params["scattered_recipients"] = a.scattered_recipients.into();
    let mut report = Report::new("spike", params);
    let load = ChatLoad::start(server, &a.chat, run, 3).await?;
    let rec = load.rec.clone();
    let accepted = Arc::new(AtomicU64::new(0));
    let persisted = Arc::new(AtomicU64::new(0));
    let (acc, per) = (accepted.clone(), persisted.clone());
    let progress = Progress::start("spike", move || {
        format!("{} | accepted {} persisted {}", ChatLoad::status(&rec), acc.load(Ordering::Relaxed), per.load(Ordering::Relaxed))
    });
    load.hold(a.chat.warmup_secs).await;
    load.phase(1);
    load.hold(a.chat.duration_secs).await;

    load.phase(2);
    let campaign = format!("{run}-spike");
    let sender = format!("{run}-shop");
    let start = Instant::now();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let peak_rss = Arc::new(AtomicU64::new(server.rss_bytes().unwrap_or(0)));
    let governor: Arc<Mutex<Vec<GovernorSample>>> = Arc::default();
    let monitor = {
        let (mut g, campaign, samples, persisted, peak_rss) =
            (server.grpc().await?, campaign.clone(), samples.clone(), persisted.clone(), peak_rss.clone());
        let pid_rss = server_rss_reader(server);
        let (http, governor) = (server.http, governor.clone());
        tokio::spawn(async move {
            let mut polls = 0u64;
            loop {
                polls += 1;
                if polls.is_multiple_of(5)
                    && let Ok(m) = crate::target::fetch_metrics(http).await
                {
                    governor.lock().expect("governor samples").push((
                        start.elapsed().as_secs_f64(),
                        m.sum("sluice_drain_limit", &[]),
                        m.sum("sluice_interactive_persist_p99_seconds", &[]) * 1000.0,
                        m.sum("sluice_drained_total", &[]),
                        m.sum("sluice_runtime_lag_p99_seconds", &[]) * 1000.0,
                        m.sum("sluice_accept_limit", &[]),
                    ));
                }
                if let Ok(c) = g.get_campaign(v1::GetCampaignRequest { campaign_id: campaign.clone(), tenant: None }).await {
                    let c = c.into_inner();
                    samples.lock().expect("samples").push((start.elapsed().as_secs_f64(), c.enqueued, c.persisted, c.dead_lettered));
                    persisted.store(c.persisted, Ordering::Relaxed);
                }
                if let Some(rss) = pid_rss() {
                    peak_rss.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(POLL).await;
            }
        })
    };
    let g = server.grpc().await?;
    let c = Campaign { id: &campaign, tenant: None, sender: &sender, body: BODY };
    let prefix = format!("{run}-s");
    c.enqueue(&g, a.messages, |i| recipient(&prefix, i, a.scattered_recipients), a.chunk as u64, a.parallel as usize, &accepted).await?;
    let enqueue_secs = start.elapsed().as_secs_f64();
    // A governed drain under chat may run at a few hundred messages a second on a small machine.
    let limit = Duration::from_secs(120 + a.messages / 200);
    while persisted.load(Ordering::Relaxed) < a.messages {
        if start.elapsed() > limit {
            bail!(
                "the queue did not drain within {limit:?}: {} of {} persisted\n{}",
                persisted.load(Ordering::Relaxed),
                a.messages,
                server.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_secs = start.elapsed().as_secs_f64();
    monitor.abort();
    if a.chat.rate > 0 {
        load.phase(3);
        load.hold(a.chat.duration_secs).await;
    }
    drop(progress);
    let (phases, per_second) = load.finish().await;

    let mut g = g.clone();
    let c = g.get_campaign(v1::GetCampaignRequest { campaign_id: campaign.clone(), tenant: None }).await?.into_inner();
    let exact = check_counters(&mut g, &sender, |i| recipient(&prefix, i, a.scattered_recipients), a.messages, a.check).await?;
    let samples = samples.lock().expect("samples").clone();
    let peak_depth = samples.iter().map(|&(_, e, p, d)| e.saturating_sub(p + d)).max().unwrap_or(0);

    report.figure("accept rate into the queue", a.messages as f64 / enqueue_secs, "msg/s", Some(Target::AtLeast(ACCEPT_TARGET)));
    report.figure(
        "drain rate (enqueue start to last persisted)",
        a.messages as f64 / drain_secs,
        "msg/s",
        Some(Target::AtLeast(DRAIN_TARGET)),
    );
    report.figure("time to enqueue", enqueue_secs, "s", None);
    report.figure("time to drain", drain_secs, "s", None);
    report.figure("peak queue depth", peak_depth as f64, "messages", None);
    report.figure("persisted", c.persisted as f64, "messages", Some(Target::AtLeast(a.messages as f64)));
    report.figure("dead-lettered", c.dead_lettered as f64, "messages", Some(Target::AtMost(0.0)));
    report.figure(
        "recipients checked with unread 1 and total 1",
        exact as f64,
        "",
        Some(Target::AtLeast(a.check.min(a.messages as u32) as f64)),
    );
    if let Some(rss) = Some(peak_rss.load(Ordering::Relaxed)).filter(|r| *r > 0) {
        report.figure("server peak resident memory", rss as f64 / (1 << 20) as f64, "MiB", None);
    }
    if a.chat.rate > 0 {
        chat_figures(&mut report, "baseline ", &phases[1], a.chat.rate, true);
        chat_figures(&mut report, "spike ", &phases[2], a.chat.rate, false);
        let (base, spike) = (phases[1].deliver.ms(0.99), phases[2].deliver.ms(0.99));
        report.figure("send->deliver p99, spike / baseline", spike / base.max(1e-3), "x", Some(Target::AtMost(2.0)));
        // What the store's growth alone does to chat: the part of the spike's ratio the
        // drain's share of the machine does not explain.
        chat_figures(&mut report, "after ", &phases[3], a.chat.rate, false);
        report.figure("send->deliver p99, after / baseline", phases[3].deliver.ms(0.99) / base.max(1e-3), "x", None);
    }

    report.series.push(Series {
        name: "depth".into(),
        title: format!("Queue depth during a {}-message spike", crate::report::number(a.messages as f64)),
        x_label: "seconds since the first EnqueueBulk".into(),
        y_label: "messages".into(),
        lines: vec![
            Line { name: "queue depth".into(), points: samples.iter().map(|&(t, e, p, d)| (t, e.saturating_sub(p + d) as f64)).collect() },
            Line { name: "enqueued".into(), points: samples.iter().map(|&(t, e, _, _)| (t, e as f64)).collect() },
            Line { name: "persisted".into(), points: samples.iter().map(|&(t, _, p, _)| (t, p as f64)).collect() },
        ],
    });
    report.series.push(latency_series("latency", "Chat send->deliver per second (spike starts after the baseline)", &per_second));
    let governor = governor.lock().expect("governor samples").clone();
    let drain_rate: Vec<(f64, f64)> = governor.windows(2).map(|w| (w[1].0, (w[1].3 - w[0].3) / (w[1].0 - w[0].0).max(1e-3))).collect();
    let settled: Vec<f64> = drain_rate.iter().skip(drain_rate.len() / 2).map(|p| p.1).collect();
    if !settled.is_empty() {
        report.figure(
            "drain rate the governor settled at (second half, mean)",
            settled.iter().sum::<f64>() / settled.len() as f64,
            "msg/s",
            None,
        );
    }
    report.series.push(Series {
        name: "governor".into(),
        title: "The drain governor and the accept gate during the spike".into(),
        x_label: "seconds since the first EnqueueBulk".into(),
        y_label: "messages/s (p99: ms x 100)".into(),
        lines: vec![
            Line { name: "governor limit".into(), points: governor.iter().map(|s| (s.0, s.1.min(1e6))).collect() },
            Line { name: "accept gate limit (0: open)".into(), points: governor.iter().map(|s| (s.0, s.5.min(1e6))).collect() },
            Line { name: "drain rate".into(), points: drain_rate },
            Line { name: "interactive persist p99 (ms x 100)".into(), points: governor.iter().map(|s| (s.0, s.2 * 100.0)).collect() },
            Line { name: "runtime lag p99 (ms x 100)".into(), points: governor.iter().map(|s| (s.0, s.4 * 100.0)).collect() },
        ],
    });
    let chat = if a.chat.rate > 0 {
        format!(
            "The chat load ran {} users in {} rooms of {} at {} msg/s",
            a.chat.connections,
            a.chat.connections / a.chat.room_size,
            a.chat.room_size,
            a.chat.rate
        )
    } else {
        format!("Without chat: {} users stayed connected and silent", a.chat.connections)
    };
    report.note(format!("{chat}; the spike phase lasted from the first EnqueueBulk until the last message was persisted."));
    Ok(report)
}

fn server_rss_reader(server: &Server) -> impl Fn() -> Option<u64> + Send + 'static {
    let pid = server.pid();
    move || pid.and_then(crate::target::rss_of)
}

/// Reads `check` recipients' inboxes (spread over the campaign): each must have its direct
/// room with the sender at unread 1 and a total of 1. Returns how many did.
async fn check_counters(
    g: &mut crate::target::Grpc,
    sender: &str,
    recipient: impl Fn(u64) -> String,
    n: u64,
    check: u32,
) -> anyhow::Result<u64> {
    let check = (check as u64).min(n);
    let mut exact = 0;
    for k in 0..check {
        let user = recipient(k * n / check.max(1));
        let inbox = g.get_inbox(v1::GetInboxRequest { user: user.clone(), ..Default::default() }).await?.into_inner();
        let room = if sender < user.as_str() { format!("dm:{sender}:{user}") } else { format!("dm:{user}:{sender}") };
        let ok = inbox.total_unread == 1 && inbox.rooms.len() == 1 && inbox.rooms[0].room == room && inbox.rooms[0].unread == 1;
        if ok {
            exact += 1;
        } else {
            eprintln!("counter check: {user}: {inbox:?}");
        }
    }
    Ok(exact)
}
