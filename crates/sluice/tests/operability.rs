//! What an operator's tools see of a running Sluice: gRPC server reflection and health for a
//! client that has no proto file (grpcio's reflection client, from PyPI; the server runs in
//! this process), and traces exported
//! over OTLP that follow a bulk send from the gateway's span through the queue to the worker's
//! span of each message, received by a real OTLP/gRPC collector endpoint.

mod common;

use common::{Server, wait_done};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use sluice_proto::v1;
use sluice_testkit::services::deploy_tools_python;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_proto_finds_and_calls_the_service_by_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::in_process(&dir.path().join("data"), &[]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reflection_client.py");
    let out = tokio::process::Command::new(deploy_tools_python())
        .args([script, &server.grpc.to_string(), Server::SERVICE_TOKEN, "reflected"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "reflection_client.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services: Vec<&str> = seen["services"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    for s in ["sluice.v1.ChatService", "grpc.health.v1.Health"] {
        assert!(services.contains(&s), "reflection lists {s}: {services:?}");
    }
    assert_eq!(seen["room"], "reflected");
    assert_eq!(seen["members"], serde_json::json!(["alice", "bob"]));
    assert_eq!(seen["without_token"], "UNAUTHENTICATED", "reflection opens no door to the service itself");
    assert_eq!(seen["health"], serde_json::json!({"(server)": "SERVING", "sluice.v1.ChatService": "SERVING"}));
    // The room exists for Sluice's own client too.
    let mut g = server.grpc().await;
    let room = g.add_members(v1::AddMembersRequest { room: "reflected".into(), members: vec!["carl".into()] }).await.unwrap().into_inner();
    assert_eq!(room.members, vec!["alice".to_string(), "bob".to_string(), "carl".to_string()]);
    server.stop().await;
}

/// An OTLP/gRPC collector that keeps every span it is sent, with its service name.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_send_is_one_trace_from_the_caller_through_the_queue_to_each_delivery() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), stop.clone().cancelled_owned()),
    );

    let dir = tempfile::tempdir().unwrap();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), endpoint), ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "200".to_string())];
    let server = Server::start_role("serve", &dir.path().join("data"), &[], &env).await;
    let mut g = server.grpc().await;
    // The caller's own trace: Sluice's spans must continue it.
    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut req = tonic::Request::new(v1::EnqueueBulkRequest {
        campaign_id: "traced".into(),
        sender: "shop".into(),
        recipients: vec!["ann".into(), "ben".into(), "cat".into()],
        body: "sale".into(),
        ..Default::default()
    });
    req.metadata_mut().insert("traceparent", format!("00-{trace_id}-{caller_span}-01").parse().unwrap());
    let accepted = g.enqueue_bulk(req).await.unwrap().into_inner().accepted;
    assert_eq!(accepted, 3);
    wait_done(&mut g, "traced", Duration::from_secs(30)).await;
    // SIGTERM: the exporter sends what it still holds before the process exits.
    server.stop().await;
    stop.cancel();
    serving.await.unwrap().unwrap();

    let spans = collector.0.lock().unwrap().clone();
    let in_trace: Vec<&(String, Span)> = spans.iter().filter(|(_, s)| hex(&s.trace_id) == trace_id).collect();
    let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    let enqueue: Vec<&Span> = in_trace.iter().filter(|(_, s)| s.name == "EnqueueBulk").map(|(_, s)| s).collect();
    assert_eq!(enqueue.len(), 1, "one EnqueueBulk span in the caller's trace; spans seen: {names:?}");
    assert_eq!(hex(&enqueue[0].parent_span_id), caller_span, "EnqueueBulk is a child of the caller's span");
    let deliveries: Vec<&Span> = in_trace.iter().filter(|(_, s)| s.name == "deliver").map(|(_, s)| s).collect();
    assert_eq!(deliveries.len(), 3, "a deliver span per message, in the same trace; spans seen: {names:?}");
    for d in deliveries {
        assert_eq!(d.parent_span_id, enqueue[0].span_id, "each delivery is a child of the EnqueueBulk span");
    }
    assert!(in_trace.iter().all(|(service, _)| service.contains("sluice-serve")), "service name: {:?}", in_trace[0].0);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_command_answers_for_the_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--admin-addr", "127.0.0.1:0"]).await;
    let admin = server.admin.expect("an admin listener");
    let probe =
        |path: &str| std::process::Command::new(common::BIN).args(["health", "--url", &format!("http://{admin}{path}")]).output().unwrap();
    let alive = probe("/healthz");
    assert!(alive.status.success(), "{}", String::from_utf8_lossy(&alive.stderr));
    assert_eq!(String::from_utf8_lossy(&alive.stdout), "ok\n");
    assert!(probe("/readyz").status.success());
    let missing = probe("/nowhere");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"), "{}", String::from_utf8_lossy(&missing.stderr));
    server.stop().await;
    let gone = probe("/healthz");
    assert!(!gone.status.success(), "no answer from a stopped process is a failure");
}
