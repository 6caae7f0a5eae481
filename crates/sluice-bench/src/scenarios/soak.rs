//! Scenario `soak`: mixed load for a long time (default 30 minutes). The chat load runs the
//! whole time; every interval a campaign of one-offs is enqueued to recipients drawn in turn
//! from a fixed pool (so direct rooms are reused, as over a working day). The server's
//! resident memory is sampled throughout. Memory must plateau: the figure is the slope of a
//! least-squares line through the samples of the second half, in MiB per hour. At the end
//! every campaign must have drained without a dead letter.

use crate::args::SoakArgs;
use crate::campaign::Campaign;
use crate::chat::ChatLoad;
use crate::report::{Line, Report, Series};
use crate::scenarios::interactive::{chat_figures, latency_series, params};
use crate::stats::Progress;
use crate::target::Target as Server;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BODY: &str = "Today only: free delivery on every order";
const MIB: f64 = (1 << 20) as f64;

pub async fn run(server: &Server, a: &SoakArgs, run: &str) -> anyhow::Result<Report> {
    let mut p = params(&a.chat);
    p["minutes"] = a.minutes.into();
    p["campaign_every_secs"] = a.campaign_every_secs.into();
    p["campaign_size"] = a.campaign_size.into();
    p["pool"] = a.pool.into();
    let mut report = Report::new("soak", p);
    anyhow::ensure!(a.chat.rate > 0, "this scenario measures chat: --rate must be at least 1");
    let load = ChatLoad::start(server, &a.chat, run, 1).await?;
    let accepted = Arc::new(AtomicU64::new(0));
    let (rec, acc) = (load.rec.clone(), accepted.clone());
    let progress =
        Progress::start("soak", move || format!("{} | one-offs accepted {}", ChatLoad::status(&rec), acc.load(Ordering::Relaxed)));
    load.hold(a.chat.warmup_secs).await;
    load.phase(1);

    let pid = server.pid();
    let rss_mib = move || pid.and_then(crate::target::rss_of).map(|b| b as f64 / MIB);
    let g = server.grpc().await?;
    let sender = format!("{run}-shop");
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.minutes * 60.0);
    let every = Duration::from_secs_f64(a.campaign_every_secs);
    let mut next_campaign = start;
    let mut campaigns: Vec<String> = Vec::new();
    let mut samples: Vec<(f64, f64)> = Vec::new();
    while Instant::now() < end {
        if Instant::now() >= next_campaign {
            let id = format!("{run}-soak-{}", campaigns.len());
            let first = campaigns.len() as u64 * a.campaign_size;
            let c = Campaign { id: &id, tenant: None, sender: &sender, body: BODY };
            c.enqueue(&g, a.campaign_size, |i| format!("{run}-p{}", (first + i) % a.pool), 10_000, 2, &accepted).await?;
            campaigns.push(id);
            next_campaign += every;
        }
        if let Some(mib) = rss_mib() {
            samples.push((start.elapsed().as_secs_f64() / 60.0, mib));
        }
        tokio::time::sleep(Duration::from_secs_f64(a.sample_secs)).await;
    }
    let (phases, per_second) = load.finish().await;
    drop(progress);

    let mut g = g.clone();
    let persisted = AtomicU64::new(0);
    for id in &campaigns {
        let c = Campaign { id, tenant: None, sender: &sender, body: BODY };
        c.wait_persisted(&mut g, a.campaign_size, Duration::from_millis(200), Duration::from_secs(600), &persisted, || server.log_tail())
            .await?;
    }

    let second_half: Vec<(f64, f64)> = samples.iter().copied().filter(|&(t, _)| t >= a.minutes / 2.0).collect();
    report.figure("run", start.elapsed().as_secs_f64() / 60.0, "min", None);
    report.figure("campaigns drained", campaigns.len() as f64, "", None);
    report.figure("one-offs persisted", (campaigns.len() as u64 * a.campaign_size) as f64, "messages", None);
    chat_figures(&mut report, "chat ", &phases[1], a.chat.rate, false);
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        report.figure("server memory at the start", first.1, "MiB", None);
        report.figure("server memory at the end", last.1, "MiB", None);
        report.figure("server peak memory", samples.iter().map(|s| s.1).fold(0.0, f64::max), "MiB", None);
    }
    if let Some(slope) = slope(&second_half) {
        report.figure("memory slope over the second half", slope * 60.0, "MiB/hour", None);
    }
    report.series.push(Series {
        name: "memory".into(),
        title: "Server resident memory during the soak".into(),
        x_label: "minutes".into(),
        y_label: "MiB".into(),
        lines: vec![Line { name: "resident memory".into(), points: samples }],
    });
    report.series.push(latency_series("latency", "Chat send->deliver per second during the soak", &per_second));
    report.note(format!(
        "Chat: {} users in rooms of {} at {} msg/s for the whole run; a campaign of {} one-offs every {} s to recipients taken in turn from a pool of {}.",
        a.chat.connections, a.chat.room_size, a.chat.rate, a.campaign_size, a.campaign_every_secs, a.pool
    ));
    Ok(report)
}

/// The least-squares slope of `points` (y per x), if there are two distinct x.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (points.len() >= 2 && sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    #[test]
    fn slope_of_a_line_and_of_a_plateau() {
        let line: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 + 2.0 * i as f64)).collect();
        assert!((super::slope(&line).unwrap() - 2.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 5.0)).collect();
        assert_eq!(super::slope(&flat), Some(0.0));
        assert_eq!(super::slope(&[(1.0, 1.0)]), None);
    }
}
