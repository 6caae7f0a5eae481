//! The console's admin API and the development sign-in, through the router with `oneshot`
//! on embedded backends: the service token guards every admin route, campaigns sent from
//! the API are listed with their progress, controls change the drain, dead letters are
//! listed with their reasons and redriven, and sign-in mints tokens only in development.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_core::metrics::Metrics;
use sluice_core::queue::Enqueue;
use sluice_gateway::http::router;
use sluice_gateway::{App, Limits};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

mod common;

const SERVICE: &str = common::SERVICE_TOKEN;

struct Env {
    _dir: tempfile::TempDir,
    app: Arc<App>,
}

fn env(dev_sign_in: bool) -> Env {
    let (dir, app) = common::app(Limits::default(), dev_sign_in);
    Env { _dir: dir, app }
}

impl Env {
    /// A request with the service token (`token: None` leaves it out).
    async fn call_as(&self, token: Option<&str>, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        let resp = router(self.app.clone()).oneshot(req.unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(Some(SERVICE), method, path, body).await
    }
}

#[tokio::test]
async fn every_admin_route_wants_the_service_token() {
    let e = env(false);
    let routes = [
        ("GET", "/v1/admin/overview"),
        ("GET", "/v1/admin/campaigns"),
        ("POST", "/v1/admin/campaigns"),
        ("GET", "/v1/admin/campaigns/c1"),
        ("GET", "/v1/admin/controls"),
        ("POST", "/v1/admin/controls"),
        ("GET", "/v1/admin/dead-letters"),
        ("POST", "/v1/admin/dead-letters/redrive"),
    ];
    for (method, path) in routes {
        let body = (method == "POST").then(|| json!({"scope": "drain", "paused": true}));
        let (status, v) = e.call_as(None, method, path, body.clone()).await;
        assert_eq!((status, v["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{method} {path}: {v}");
        let user_token = e.app.auth.mint_user("alice", 60).unwrap();
        let (status, _) = e.call_as(Some(&user_token), method, path, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: a user's token is no service token");
    }
    let (_, controls) = e.call("GET", "/v1/admin/controls", None).await;
    assert_eq!(controls, json!({"controls": [], "held": 0}), "nothing was changed without the token");
}

#[tokio::test]
async fn a_campaign_sent_from_the_api_is_listed_with_its_progress() {
    let e = env(false);
    let recipients: Vec<String> = (0..25).map(|i| format!("u{i}")).collect();
    let (status, sent) = e
        .call(
            "POST",
            "/v1/admin/campaigns",
            Some(json!({"campaign_id": "spring", "sender": "shop", "recipients": recipients, "body": "sale"})),
        )
        .await;
    assert_eq!((status, &sent), (StatusCode::OK, &json!({"campaign_id": "spring", "accepted": 25})));
    let (_, generated) =
        e.call("POST", "/v1/admin/campaigns", Some(json!({"sender": "shop", "tenant": "acme", "recipients": ["x"], "body": "b"}))).await;
    let other = generated["campaign_id"].as_str().unwrap().to_string();

    let (status, list) = e.call("GET", "/v1/admin/campaigns", None).await;
    assert_eq!(status, StatusCode::OK);
    let list = list["campaigns"].as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|c| c["campaign_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{list:?}");
    assert!(ids.contains(&"spring") && ids.contains(&other.as_str()));
    let spring = list.iter().find(|c| c["campaign_id"] == "spring").unwrap();
    assert_eq!(
        (&spring["enqueued"], &spring["persisted"], &spring["state"], &spring["done"], &spring["tenant"]),
        (&json!(25), &json!(0), &json!("queued"), &json!(false), &json!("shop")),
        "no worker runs here: {spring}"
    );
    let (_, one) = e.call("GET", &format!("/v1/admin/campaigns/{other}"), None).await;
    assert_eq!((&one["tenant"], &one["enqueued"]), (&json!("acme"), &json!(1)), "{one}");
    let (_, limited) = e.call("GET", "/v1/admin/campaigns?limit=1", None).await;
    assert_eq!(limited["campaigns"].as_array().unwrap().len(), 1);

    let (status, v) = e.call("GET", "/v1/admin/campaigns?limit=many", None).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_frame")), "{v}");
    let (status, v) = e.call("GET", "/v1/admin/campaigns/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, v) = e.call("POST", "/v1/admin/campaigns", Some(json!({"sender": "shop", "recipients": ["a b"], "body": "x"}))).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_frame")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("recipients[0]"), "{v}");
    let (status, v) = e.call("POST", "/v1/admin/campaigns", Some(json!({"sender": "shop", "recipients": ["a"]}))).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_frame")), "a missing body: {v}");

    // The queue holds what was accepted: the overview counts it.
    let (_, o) = e.call("GET", "/v1/admin/overview", None).await;
    assert_eq!(o["queue"]["depth"], json!(26), "{o}");
}

#[tokio::test]
async fn controls_pause_the_drain_and_refuse_what_does_not_apply() {
    let e = env(false);
    let (status, c) = e.call("POST", "/v1/admin/controls", Some(json!({"scope": "drain", "paused": true, "rate": 500.0}))).await;
    assert_eq!((status, &c), (StatusCode::OK, &json!({"scope": "drain", "paused": true, "rate": 500.0})));
    let (_, o) = e.call("GET", "/v1/admin/overview", None).await;
    assert_eq!(o["drain"], json!({"paused": true, "rate": 500.0}));
    let (_, c) = e.call("POST", "/v1/admin/controls", Some(json!({"scope": "campaign:spring", "paused": true}))).await;
    assert_eq!(c["paused"], json!(true));
    let (_, all) = e.call("GET", "/v1/admin/controls", None).await;
    assert_eq!(all["controls"].as_array().unwrap().len(), 2, "{all}");
    let (_, c) = e.call("POST", "/v1/admin/controls", Some(json!({"scope": "drain", "paused": false, "rate": 0}))).await;
    assert_eq!(c, json!({"scope": "drain", "paused": false, "rate": null}), "rate 0 removes the ceiling");

    for bad in [
        json!({"scope": "everything", "paused": true}),
        json!({"scope": "tenant:acme", "rate": -5}),
        json!({"scope": "campaign:", "paused": true}),
        json!({"scope": "drain", "rate": -1}),
    ] {
        let (status, v) = e.call("POST", "/v1/admin/controls", Some(bad.clone())).await;
        assert_eq!((status, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_frame")), "{bad}: {v}");
    }
}

#[tokio::test]
async fn dead_letters_are_listed_with_their_reason_and_redriven() {
    let e = env(false);
    let msg = sluice_core::model::NewMessage::chat(
        &"alice".parse().unwrap(),
        &"dm:alice:bob".parse().unwrap(),
        "c1",
        "hello",
        sluice_core::now_ms(),
    );
    let queue = &e.app.backends.queue;
    let body = sluice_proto::convert::encode_queued(&msg);
    queue.send(vec![Enqueue { dedup_id: msg.msg_id.clone(), group: "g".into(), tenant: "acme".into(), body }]).await.unwrap();
    let got = queue.receive(1, Duration::from_secs(1), Duration::from_secs(30)).await.unwrap();
    queue.dead_letter(&got[0].receipt, "store refused: test").await.unwrap();

    let (status, v) = e.call("GET", "/v1/admin/dead-letters", None).await;
    assert_eq!(status, StatusCode::OK);
    let list = v["dead_letters"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    let d = &list[0];
    assert_eq!(
        (&d["reason"], &d["tenant"], &d["room"], &d["msg_id"]),
        (&json!("store refused: test"), &json!("acme"), &json!("dm:alice:bob"), &json!(msg.msg_id)),
        "{d}"
    );
    let (_, o) = e.call("GET", "/v1/admin/overview", None).await;
    assert_eq!((&o["queue"]["dead"], &o["queue"]["depth"]), (&json!(1), &json!(0)), "{o}");

    let (status, r) = e.call("POST", "/v1/admin/dead-letters/redrive", Some(json!({}))).await;
    assert_eq!((status, r), (StatusCode::OK, json!({"redriven": 1})));
    let (_, v) = e.call("GET", "/v1/admin/dead-letters", None).await;
    assert_eq!(v["dead_letters"], json!([]));
    let (_, o) = e.call("GET", "/v1/admin/overview", None).await;
    assert_eq!((&o["queue"]["dead"], &o["queue"]["depth"]), (&json!(0), &json!(1)), "back in the queue: {o}");
}

#[tokio::test]
async fn the_overview_sums_what_the_fleet_reports() {
    let e = env(false);
    let stop = CancellationToken::new();
    e.app.backends.metrics.connections.set(7);
    tokio::spawn(sluice_core::fleet::report(
        e.app.backends.limiter.clone(),
        e.app.backends.metrics.clone(),
        "gw-1".into(),
        false,
        stop.clone(),
    ));
    let other = Arc::new(Metrics::new());
    other.connections.set(5);
    tokio::spawn(sluice_core::fleet::report(e.app.backends.limiter.clone(), other, "gw-2".into(), false, stop.clone()));
    let mut fleet = Value::Null;
    for _ in 0..50 {
        fleet = e.call("GET", "/v1/admin/overview", None).await.1["fleet"].clone();
        if fleet["processes"] == json!(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!((&fleet["processes"], &fleet["connections"]), (&json!(2), &json!(12.0)), "{fleet}");
    stop.cancel();
}

#[tokio::test]
async fn development_sign_in_mints_tokens_only_when_on() {
    let off = env(false);
    let (_, v) = off.call_as(None, "GET", "/v1/dev", None).await;
    assert_eq!(v, json!({"dev_sign_in": false}));
    let (status, v) = off.call_as(None, "POST", "/v1/dev/token", Some(json!({"user": "alice"}))).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{v}");

    let on = env(true);
    let (_, v) = on.call_as(None, "GET", "/v1/dev", None).await;
    assert_eq!(v, json!({"dev_sign_in": true}));
    let (status, v) = on.call_as(None, "POST", "/v1/dev/token", Some(json!({"user": "alice"}))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let user = on.app.auth.verify_user(v["token"].as_str().unwrap()).unwrap();
    assert_eq!(user.as_str(), "alice");
    let (status, v) = on.call_as(None, "POST", "/v1/dev/token", Some(json!({"user": "not ok"}))).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_frame")), "{v}");
}

#[tokio::test]
async fn the_pages_and_their_assets_are_served_with_a_content_policy() {
    let e = env(false);
    for (path, kind) in
        [("/", "text/html"), ("/console", "text/html"), ("/assets/chat.js", "text/javascript"), ("/assets/style.css", "text/css")]
    {
        let resp = router(e.app.clone()).oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let ct = resp.headers()[header::CONTENT_TYPE].to_str().unwrap().to_string();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        if kind == "text/html" {
            let csp = resp.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        }
    }
    let resp = router(e.app.clone()).oneshot(Request::get("/assets/../Cargo.toml").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}
