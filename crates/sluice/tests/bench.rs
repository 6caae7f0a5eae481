//! Smoke runs of every `sluice-bench` scenario at small sizes, so the harness cannot rot:
//! each must finish, write its Markdown, JSON and PNG files, and report figures that follow
//! from what it did (every message persisted, connections held, counters exact). Speed is
//! not asserted here; the figures come from full runs (docs/benchmarks/README.md).

mod common;

use common::BIN;

/// `sluice-bench`, which cargo builds beside `sluice` (`cargo build --workspace`, as
/// scripts/test.sh does first); it starts `sluice` as its server.
fn bench_bin() -> std::path::PathBuf {
    let path = Path::new(BIN).with_file_name("sluice-bench");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p sluice-bench` (scripts/test.sh builds every target)",
        path.display()
    );
    path
}
use serde_json::Value;
use std::path::Path;

fn bench(args: &[&str], out: &Path) -> Value {
    let output = std::process::Command::new(bench_bin())
        .args(args)
        .arg("--out")
        .arg(out)
        .env("SLUICE_LOG", "warn")
        .output()
        .expect("run sluice-bench");
    assert!(
        output.status.success(),
        "sluice-bench {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let scenario = args[0];
    let md = std::fs::read_to_string(out.join(format!("{scenario}.md"))).unwrap();
    assert!(md.contains(&format!("## {scenario}")), "{md}");
    let json: Value = serde_json::from_slice(&std::fs::read(out.join(format!("{scenario}.json"))).unwrap()).unwrap();
    for s in json["series"].as_array().unwrap() {
        let png = std::fs::read(out.join(format!("{scenario}-{}.png", s["name"].as_str().unwrap()))).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
    json
}

fn figure(json: &Value, name: &str) -> f64 {
    let figures = json["figures"].as_array().unwrap();
    let f = figures.iter().find(|f| f["name"] == name).unwrap_or_else(|| panic!("no figure {name:?} in {figures:?}"));
    f["value"].as_f64().unwrap()
}

#[test]
fn spike_smoke() {
    let out = tempfile::tempdir().unwrap();
    let args = [
        "spike",
        "--messages",
        "3000",
        "--chunk",
        "700",
        "--check",
        "30",
        "--connections",
        "20",
        "--room-size",
        "4",
        "--rate",
        "200",
        "--duration-secs",
        "1",
        "--warmup-secs",
        "0.5",
    ];
    let json = bench(&args, out.path());
    assert_eq!(figure(&json, "persisted"), 3000.0);
    assert_eq!(figure(&json, "dead-lettered"), 0.0);
    assert_eq!(figure(&json, "recipients checked with unread 1 and total 1"), 30.0);
    assert!(figure(&json, "baseline delivered") > 0.0);
    assert!(figure(&json, "spike send->deliver p99") > 0.0);
    assert_eq!(figure(&json, "baseline error frames"), 0.0);
    let series: Vec<&str> = json["series"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(series, ["depth", "latency", "governor"], "queue depth, chat latency and the drain governor, plotted");
}

#[test]
fn interactive_smoke() {
    let out = tempfile::tempdir().unwrap();
    let args = ["interactive", "--connections", "30", "--room-size", "3", "--rate", "300", "--duration-secs", "1", "--warmup-secs", "0.5"];
    let json = bench(&args, out.path());
    // Rooms of 3: every message reaches the 2 other members.
    let (sent, delivered) = (figure(&json, "sent"), figure(&json, "delivered"));
    assert!(sent > 0.0 && delivered > sent, "sent {sent}/s delivered {delivered}/s");
    assert!(figure(&json, "send->ack p50") > 0.0);
    assert_eq!(figure(&json, "error frames"), 0.0);
}

#[test]
fn connections_smoke() {
    let out = tempfile::tempdir().unwrap();
    let json = bench(&["connections", "--count", "300", "--source-addrs", "3", "--hold-secs", "0.5"], out.path());
    assert_eq!(figure(&json, "connections held"), 300.0);
    assert_eq!(figure(&json, "sampled connections answering after the hold"), 100.0);
    assert!(figure(&json, "server memory per connection") > 0.0);
}

#[test]
fn scaling_smoke() {
    let out = tempfile::tempdir().unwrap();
    let json = bench(&["scaling", "--workers", "1,2", "--messages-per-worker", "200", "--latency-ms", "1-2"], out.path());
    assert!(figure(&json, "1 workers") > 0.0);
    assert!(figure(&json, "2 workers") > 0.0);
}

#[test]
fn cost_smoke() {
    let out = tempfile::tempdir().unwrap();
    let (dynamodb, moto) = (sluice_testkit::services::dynamodb_url(), sluice_testkit::services::moto_url());
    let json = bench(&["cost", "--one-off", "20", "--interactive", "10", "--dynamodb-url", &dynamodb, "--moto-url", &moto], out.path());
    // The data model fixes these: a one-off writes 4 items in its transaction (its direct
    // room has no room item) plus the enqueue marker and a share of the counting; an
    // interactive message in a named 2-member room writes 6 items, in a direct room 5.
    assert_eq!(figure(&json, "interactive: DynamoDB write units (AWS rule, items written)"), 12.0);
    assert_eq!(figure(&json, "interactive in a direct room: DynamoDB write units (AWS rule, items written)"), 10.0);
    let one_off = figure(&json, "one-off: DynamoDB write units (AWS rule, items written)");
    assert!((10.0..12.0).contains(&one_off), "{one_off}");
    // A 2 KB body is stored once for the campaign, not in each message item.
    let long = figure(&json, "one-off, 2 KB body: DynamoDB write units (AWS rule, items written)");
    assert!(long - one_off < 1.0, "2 KB body {long} against {one_off}");
    assert_eq!(figure(&json, "one-off: Kinesis records"), 1.0);
    assert_eq!(figure(&json, "interactive: Kinesis records"), 1.0);
    assert!(figure(&json, "one-off: SQS requests") > 0.0);
    assert!(figure(&json, "one-off: AWS price per million messages") > 0.0);
}

#[test]
fn fairness_smoke() {
    let out = tempfile::tempdir().unwrap();
    let json = bench(&["fairness", "--large", "3000", "--small", "50", "--chunk", "500", "--gap-secs", "0.2"], out.path());
    assert_eq!(figure(&json, "dead-lettered"), 0.0);
    assert!(figure(&json, "B: first EnqueueBulk to last persisted") > 0.0);
    assert!(figure(&json, "C: first EnqueueBulk to last persisted") > 0.0);
    assert!(figure(&json, "A: whole campaign, first EnqueueBulk to last persisted") > 0.0);
    let series: Vec<&str> = json["series"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(series, ["drain"], "per-tenant drain, plotted");
}

#[test]
fn growth_smoke() {
    let out = tempfile::tempdir().unwrap();
    let args = [
        "growth",
        "--levels",
        "0,2000",
        "--probe",
        "500",
        "--connections",
        "4",
        "--room-size",
        "2",
        "--rate",
        "50",
        "--warmup-secs",
        "0.5",
    ];
    let json = bench(&args, out.path());
    for level in ["0", "2,000"] {
        assert!(figure(&json, &format!("drain rate with {level} stored")) > 0.0);
        assert!(figure(&json, &format!("chat send->deliver p99 during that drain, {level} stored")) > 0.0, "chat was measured at {level}");
    }
    let series: Vec<&str> = json["series"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(series, ["drain", "chat"]);
}

#[test]
fn refuses_a_bad_scenario_argument() {
    let out = std::process::Command::new(bench_bin()).args(["scaling", "--latency-ms", "10-5"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--latency-ms"), "{}", String::from_utf8_lossy(&out.stderr));
}
