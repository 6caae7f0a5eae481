//! Scenario `interactive`: C connections in rooms of S, R messages per second in total.
//! Figures: send->ack and send->deliver p50/p99/p999, sent and delivered messages per second.

use crate::args::ChatArgs;
use crate::chat::{ChatLoad, PhaseStats};
use crate::report::{Line, Report, Series, Target};
use crate::stats::Progress;
use crate::target::Target as Server;

/// The send->deliver p99 target at 5,000 messages/s on the embedded backends (issue 4).
pub const DELIVER_P99_TARGET_MS: f64 = 5.0;

pub async fn run(server: &Server, a: &ChatArgs, run: &str) -> anyhow::Result<Report> {
    let mut report = Report::new("interactive", serde_json::to_value(params(a))?);
    anyhow::ensure!(a.rate > 0, "this scenario measures chat: --rate must be at least 1");
    let load = ChatLoad::start(server, a, run, 1).await?;
    eprintln!("interactive: {} users in {} rooms, {} msg/s", load.users, load.rooms, a.rate);
    let rec = load.rec.clone();
    let progress = Progress::start("interactive", move || ChatLoad::status(&rec));
    load.hold(a.warmup_secs).await;
    load.phase(1);
    load.hold(a.duration_secs).await;
    drop(progress);
    let (phases, per_second) = load.finish().await;
    chat_figures(&mut report, "", &phases[1], a.rate, true);
    report.series.push(latency_series("latency", "Interactive send->deliver latency per second", &per_second));
    Ok(report)
}

pub fn params(a: &ChatArgs) -> serde_json::Value {
    serde_json::json!({
        "connections": a.connections, "room_size": a.room_size, "rate": a.rate,
        "duration_secs": a.duration_secs, "warmup_secs": a.warmup_secs, "body_bytes": a.body_bytes,
    })
}

/// The figures of one measured chat phase, names prefixed with `prefix`.
pub fn chat_figures(report: &mut Report, prefix: &str, p: &PhaseStats, rate: u32, with_target: bool) {
    let target = (with_target && rate >= 5000).then_some(Target::AtMost(DELIVER_P99_TARGET_MS));
    let secs = p.secs.max(1e-9);
    report.figure(&format!("{prefix}sent"), p.sent as f64 / secs, "msg/s", None);
    report.figure(&format!("{prefix}delivered"), p.delivered as f64 / secs, "msg/s", None);
    report.figure(&format!("{prefix}send->ack p50"), p.ack.ms(0.5), "ms", None);
    report.figure(&format!("{prefix}send->ack p99"), p.ack.ms(0.99), "ms", None);
    report.figure(&format!("{prefix}send->ack p99.9"), p.ack.ms(0.999), "ms", None);
    report.figure(&format!("{prefix}send->deliver p50"), p.deliver.ms(0.5), "ms", None);
    report.figure(&format!("{prefix}send->deliver p99"), p.deliver.ms(0.99), "ms", target);
    report.figure(&format!("{prefix}send->deliver p99.9"), p.deliver.ms(0.999), "ms", None);
    report.figure(&format!("{prefix}error frames"), p.errors as f64, "", Some(Target::AtMost(0.0)));
}

/// p50 and p99 per second as a plot.
pub fn latency_series(name: &str, title: &str, per_second: &[(f64, f64, f64)]) -> Series {
    Series {
        name: name.into(),
        title: title.into(),
        x_label: "seconds since the load started".into(),
        y_label: "ms".into(),
        lines: vec![
            Line { name: "p50".into(), points: per_second.iter().map(|&(s, p50, _)| (s, p50)).collect() },
            Line { name: "p99".into(), points: per_second.iter().map(|&(s, _, p99)| (s, p99)).collect() },
        ],
    }
}
