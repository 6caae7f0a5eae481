//! The deployment artifacts of deploy/, checked offline: every Kubernetes overlay renders
//! with `kubectl kustomize` and validates (built-in kinds against the Kubernetes 1.33 schemas,
//! KEDA and Prometheus Operator resources against deploy/kubernetes/schemas) and agrees with
//! the program's options; the Dockerfile passes hadolint; the CloudFormation template passes
//! cfn-lint and checkov and has the tables of migrations/ and the queues of `sluice migrate`;
//! the Grafana dashboard asks only for metrics the program exports. The tools come from
//! scripts/install-test-deps.sh (deploy/check.py runs them).

mod common;

use common::BIN;
use sluice_testkit::services::deploy_tools_python;
use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Runs `deploy/check.py ARGS`; fails with everything it printed.
fn check(args: &[&str]) {
    let out = std::process::Command::new(deploy_tools_python())
        .arg(root().join("deploy/check.py"))
        .args(args)
        .output()
        .expect("run deploy/check.py (scripts/install-test-deps.sh installs its tools)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "deploy/check.py {args:?} failed:\n{text}");
}

#[test]
fn every_kubernetes_overlay_renders_and_validates() {
    check(&["kubernetes", "--sluice", BIN]);
}

#[test]
fn the_dockerfile_passes_hadolint() {
    check(&["docker"]);
}

#[test]
fn the_cloudformation_template_lints_scans_and_agrees_with_the_migrations() {
    check(&["cloudformation"]);
}

/// Every `sluice_*` name in the dashboard's queries (histogram series by their family).
fn dashboard_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("deploy/grafana/sluice.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push(e);
                }
                m.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has {} queries", exprs.len());
    exprs
        .iter()
        .flat_map(|e| e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')))
        .filter(|t| t.starts_with("sluice_"))
        .map(String::from)
        .collect()
}

#[test]
fn the_dashboard_asks_only_for_exported_metrics() {
    let metrics = sluice_core::metrics::Metrics::new();
    let exported: BTreeSet<&str> = metrics.names().iter().map(String::as_str).collect();
    let used = dashboard_metrics();
    let unknown: Vec<&String> = used
        .iter()
        .filter(|n| {
            let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| n.strip_suffix(s)).unwrap_or(n);
            !exported.contains(n.as_str()) && !exported.contains(family)
        })
        .collect();
    assert!(unknown.is_empty(), "the dashboard asks for metrics Sluice does not export: {unknown:?}");
    // What an operator of the drain needs on one screen (deploy/README.md).
    for wanted in [
        "sluice_queue_visible",
        "sluice_queue_oldest_age_seconds",
        "sluice_drained_total",
        "sluice_drain_limit",
        "sluice_interactive_persist_p99_seconds",
        "sluice_connections",
        "sluice_conflicts_total",
        "sluice_aws_retryable_errors_total",
        "sluice_dead_letter_depth",
    ] {
        assert!(used.contains(wanted), "the dashboard shows no {wanted}");
    }
}
