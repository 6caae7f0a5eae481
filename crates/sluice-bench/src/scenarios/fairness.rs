//! Scenario `fairness`: tenant A enqueues a large campaign; `gap` seconds after the last of
//! it is accepted, tenants B and C enqueue a small one each. Reported: how long B and C take
//! from their first EnqueueBulk until their last message is persisted (their fair share
//! says seconds; first come, first served would say A's whole backlog), A's drain rate
//! before, during and after them, and each tenant's persisted count per second.

use crate::args::FairnessArgs;
use crate::campaign::Campaign;
use crate::report::{Line, Report, Series, Target};
use crate::stats::Progress;
use crate::target::Target as Server;
use anyhow::bail;
use futures::future::try_join_all;
use sluice_proto::v1;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A small campaign behind a large one should finish within this many seconds.
pub const SMALL_DONE_TARGET: f64 = 5.0;
const POLL: Duration = Duration::from_millis(100);
const BODY: &str = "Spring sale: 20% off everything until Sunday";
const TENANTS: [&str; 3] = ["tenant-a", "tenant-b", "tenant-c"];

/// Seconds since the start and persisted count of each tenant's campaign.
type Sample = (f64, [u64; 3]);

pub async fn run(server: &Server, a: &FairnessArgs, run: &str) -> anyhow::Result<Report> {
    let params = serde_json::json!({
        "large": a.large, "small": a.small, "gap_secs": a.gap_secs, "chunk": a.chunk, "parallel": a.parallel,
    });
    let mut report = Report::new("fairness", params);
    let ids: Vec<String> = TENANTS.iter().map(|t| format!("{run}-{t}")).collect();
    let senders: Vec<String> = TENANTS.iter().map(|t| format!("{run}-{t}-shop")).collect();
    let sizes = [a.large, a.small, a.small];
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let persisted: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let start = Instant::now();
    let peak_rss = Arc::new(AtomicU64::new(server.rss_bytes().unwrap_or(0)));
    let monitor = {
        let (mut g, ids, samples, persisted, peak) =
            (server.grpc().await?, ids.clone(), samples.clone(), persisted.clone(), peak_rss.clone());
        let pid = server.pid();
        tokio::spawn(async move {
            loop {
                if let Some(rss) = pid.and_then(crate::target::rss_of) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                let mut row = [0u64; 3];
                for (i, id) in ids.iter().enumerate() {
                    let tenant = Some(TENANTS[i].to_string());
                    if let Ok(c) = g.get_campaign(v1::GetCampaignRequest { campaign_id: id.clone(), tenant }).await {
                        row[i] = c.into_inner().persisted;
                    }
                    persisted[i].store(row[i], Ordering::Relaxed);
                }
                samples.lock().expect("samples").push((start.elapsed().as_secs_f64(), row));
                tokio::time::sleep(POLL).await;
            }
        })
    };
    let p = persisted.clone();
    let progress = Progress::start("fairness", move || {
        format!("persisted A {} B {} C {}", p[0].load(Ordering::Relaxed), p[1].load(Ordering::Relaxed), p[2].load(Ordering::Relaxed))
    });
    let campaign = |i: usize| Campaign { id: &ids[i], tenant: Some(TENANTS[i]), sender: &senders[i], body: BODY };
    let g = server.grpc().await?;
    let accepted = AtomicU64::new(0);
    campaign(0).enqueue(&g, a.large, |k| format!("{run}-a{k}"), a.chunk as u64, a.parallel as usize, &accepted).await?;
    let large_accepted = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(a.gap_secs)).await;
    let small_start = Instant::now();
    let small_started_at = start.elapsed().as_secs_f64();
    let a_before = persisted[0].load(Ordering::Relaxed);
    let limit = Duration::from_secs(120 + a.large / 1000);
    let small_done: Vec<f64> = try_join_all((1..3).map(|i| {
        let (g, campaign, persisted, ids) = (g.clone(), campaign(i), persisted.clone(), ids.clone());
        let prefix = if i == 1 { "b" } else { "c" };
        async move {
            campaign
                .enqueue(&g, a.small, |k| format!("{run}-{prefix}{k}"), a.chunk as u64, a.parallel as usize, &AtomicU64::new(0))
                .await?;
            while persisted[i].load(Ordering::Relaxed) < a.small {
                if small_start.elapsed() > limit {
                    bail!("{} did not finish within {limit:?}", ids[i]);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(small_start.elapsed().as_secs_f64())
        }
    }))
    .await?;
    let small_window = small_done.iter().copied().fold(0.0, f64::max);
    let a_during = persisted[0].load(Ordering::Relaxed) - a_before;
    while persisted[0].load(Ordering::Relaxed) < a.large {
        if start.elapsed() > limit {
            bail!("tenant A's campaign did not drain within {limit:?}\n{}", server.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_done = start.elapsed().as_secs_f64();
    monitor.abort();
    drop(progress);
    let mut g = g.clone();
    let mut dead = 0;
    for (i, id) in ids.iter().enumerate() {
        let c = g.get_campaign(v1::GetCampaignRequest { campaign_id: id.clone(), tenant: Some(TENANTS[i].into()) }).await?.into_inner();
        dead += c.dead_lettered;
        if c.persisted != sizes[i] {
            bail!("{id}: {} of {} persisted", c.persisted, sizes[i]);
        }
    }

    let samples = samples.lock().expect("samples").clone();
    let a_at_small_start = rate_between(&samples, 0, small_started_at - 1.0, small_started_at);
    report.figure("B: first EnqueueBulk to last persisted", small_done[0], "s", Some(Target::AtMost(SMALL_DONE_TARGET)));
    report.figure("C: first EnqueueBulk to last persisted", small_done[1], "s", Some(Target::AtMost(SMALL_DONE_TARGET)));
    report.figure("A: backlog when B and C began", (a.large - a_before) as f64, "messages", None);
    report.figure("A: drain rate in the second before B and C", a_at_small_start, "msg/s", None);
    report.figure("A: drain rate while B and C drained", a_during as f64 / small_window.max(1e-3), "msg/s", None);
    report.figure("A: whole campaign, first EnqueueBulk to last persisted", all_done, "s", None);
    report.figure("A: time to enqueue", large_accepted, "s", None);
    report.figure("dead-lettered", dead as f64, "messages", Some(Target::AtMost(0.0)));
    if let Some(rss) = Some(peak_rss.load(Ordering::Relaxed)).filter(|r| *r > 0) {
        report.figure("server peak resident memory", rss as f64 / (1 << 20) as f64, "MiB", None);
    }
    report.figure(
        "B and C behind A first come first served (A's backlog / A's drain rate), for comparison",
        (a.large - a_before) as f64 / a_at_small_start.max(1.0),
        "s",
        None,
    );
    let rates: Vec<Line> = (0..3)
        .map(|i| Line {
            name: format!("tenant {} ({} messages)", ["A", "B", "C"][i], crate::report::number(sizes[i] as f64)),
            points: samples
                .windows(10)
                .step_by(5)
                .map(|w| {
                    let (t0, t1) = (w[0].0, w[w.len() - 1].0);
                    (t1, (w[w.len() - 1].1[i] - w[0].1[i]) as f64 / (t1 - t0).max(1e-3))
                })
                .collect(),
        })
        .collect();
    report.series.push(Series {
        name: "drain".into(),
        title: "Drain rate per tenant (B and C start after A's campaign is accepted)".into(),
        x_label: "seconds since A's first EnqueueBulk".into(),
        y_label: "messages persisted per second".into(),
        lines: rates,
    });
    report.note(format!(
        "Tenant A enqueued {} one-offs; {} s after the last was accepted, B and C enqueued {} each. Each tenant's progress is read with GetCampaign every {} ms.",
        a.large,
        a.gap_secs,
        a.small,
        POLL.as_millis()
    ));
    Ok(report)
}

/// Tenant `i`'s persisted messages per second between `from` and `to` seconds.
fn rate_between(samples: &[Sample], i: usize, from: f64, to: f64) -> f64 {
    let at = |t: f64| samples.iter().rev().find(|s| s.0 <= t).or(samples.first()).map_or((0.0, 0), |s| (s.0, s.1[i]));
    let ((t0, p0), (t1, p1)) = (at(from), at(to));
    (p1 - p0) as f64 / (t1 - t0).max(1e-3)
}
