//! Scenario `growth`: how the drain and chat cost grow with the data already stored. The
//! store is filled with one-offs (each to a new direct room) up to each level of stored
//! messages in turn (0, 1,000,000 and 5,000,000 by default); at each level a probe campaign
//! drains while chat runs, and the probe's drain rate and chat's send->deliver p99 during it
//! are reported against the level. Flat means the store's cost does not grow with its data;
//! logarithmic is what B-trees give.

use crate::args::GrowthArgs;
use crate::campaign::{Campaign, recipient};
use crate::chat::ChatLoad;
use crate::report::{Line, Report, Series, number};
use crate::scenarios::interactive::params;
use crate::stats::Progress;
use crate::target::Target as Server;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BODY: &str = "Today only: free delivery on every order";
/// Recipients per EnqueueBulk call, and calls in flight.
const CHUNK: u64 = 10_000;
const PARALLEL: usize = 4;

pub async fn run(server: &Server, a: &GrowthArgs, run: &str) -> anyhow::Result<Report> {
    let mut levels = a.levels.clone();
    levels.sort_unstable();
    levels.dedup();
    let mut p = params(&a.chat);
    p["levels"] = serde_json::json!(levels);
    p["probe"] = a.probe.into();
    p["scattered_recipients"] = a.scattered_recipients.into();
    let mut report = Report::new("growth", p);
    anyhow::ensure!(a.chat.rate > 0, "this scenario measures chat: --rate must be at least 1");
    // Phases after the warm-up: a fill and a probe per level.
    let load = ChatLoad::start(server, &a.chat, run, 2 * levels.len()).await?;
    let persisted = Arc::new(AtomicU64::new(0));
    let stored = Arc::new(AtomicU64::new(0));
    let (rec, per, st) = (load.rec.clone(), persisted.clone(), stored.clone());
    let progress = Progress::start("growth", move || {
        format!(
            "{} | stored before this campaign {} | persisted {}",
            ChatLoad::status(&rec),
            st.load(Ordering::Relaxed),
            per.load(Ordering::Relaxed)
        )
    });
    load.hold(a.chat.warmup_secs).await;
    let mut g = server.grpc().await?;
    let sender = format!("{run}-shop");
    let accepted = AtomicU64::new(0);
    // Every campaign goes to recipients no campaign had: each one-off makes a new room.
    let mut next_recipient = 0u64;
    let prefix = format!("{run}-r");
    let mut drain = Vec::with_capacity(levels.len());
    for (i, &level) in levels.iter().enumerate() {
        load.phase(2 * i + 1);
        let have = stored.load(Ordering::Relaxed);
        if level > have {
            let id = format!("{run}-fill-{i}");
            let c = Campaign { id: &id, tenant: None, sender: &sender, body: BODY };
            let first = next_recipient;
            c.enqueue(&g, level - have, |k| recipient(&prefix, first + k, a.scattered_recipients), CHUNK, PARALLEL, &accepted).await?;
            c.wait_persisted(&mut g, level - have, Duration::from_millis(500), Duration::from_secs(7200), &persisted, || server.log_tail())
                .await?;
            next_recipient += level - have;
            stored.store(level, Ordering::Relaxed);
        }
        load.phase(2 * i + 2);
        let id = format!("{run}-probe-{i}");
        let c = Campaign { id: &id, tenant: None, sender: &sender, body: BODY };
        let first = next_recipient;
        let started = Instant::now();
        c.enqueue(&g, a.probe, |k| recipient(&prefix, first + k, a.scattered_recipients), CHUNK, PARALLEL, &accepted).await?;
        c.wait_persisted(&mut g, a.probe, Duration::from_millis(100), Duration::from_secs(3600), &persisted, || server.log_tail()).await?;
        drain.push(a.probe as f64 / started.elapsed().as_secs_f64());
        next_recipient += a.probe;
        stored.fetch_add(a.probe, Ordering::Relaxed);
    }
    let (phases, _) = load.finish().await;
    drop(progress);

    let mut rate_points = Vec::new();
    let mut p99_points = Vec::new();
    for (i, &level) in levels.iter().enumerate() {
        let probe = &phases[2 * i + 2];
        let p99 = probe.deliver.ms(0.99);
        let at = number(level as f64);
        report.figure(&format!("drain rate with {at} stored"), drain[i], "msg/s", None);
        report.figure(&format!("chat send->deliver p99 during that drain, {at} stored"), p99, "ms", None);
        report.figure(&format!("chat send->deliver p50 during that drain, {at} stored"), probe.deliver.ms(0.5), "ms", None);
        rate_points.push((level as f64 / 1e6, drain[i]));
        p99_points.push((level as f64 / 1e6, p99));
    }
    if let (Some(first), Some(last)) = (drain.first(), drain.last()) {
        report.figure("drain rate, last level / first", last / first, "", None);
    }
    report.series.push(Series {
        name: "drain".into(),
        title: "Drain rate of a probe campaign against messages already stored".into(),
        x_label: "messages stored (millions)".into(),
        y_label: "msg/s".into(),
        lines: vec![Line { name: "drain rate".into(), points: rate_points }],
    });
    report.series.push(Series {
        name: "chat".into(),
        title: "Chat send->deliver p99 during the probe against messages already stored".into(),
        x_label: "messages stored (millions)".into(),
        y_label: "ms".into(),
        lines: vec![Line { name: "p99".into(), points: p99_points }],
    });
    report.note(format!(
        "At each level a probe campaign of {} one-offs (new direct rooms) drains while {} users chat in rooms of {} at {} msg/s; the store was filled to the level with one-offs to new recipients, each making a room. Recipients named {}.",
        a.probe,
        a.chat.connections,
        a.chat.room_size,
        a.chat.rate,
        if a.scattered_recipients { "by a scramble of their number (--scattered-recipients)" } else { "in order" }
    ));
    Ok(report)
}
