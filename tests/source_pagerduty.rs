//! `POST /v2/enqueue` over HTTP: the PagerDuty Events API v2 source, from what
//! Alertmanager 0.25's PagerDuty integration posts (`tests/fixtures/pagerduty/`).
//! Success is 202 with PagerDuty's `{status, message, dedup_key}`, an invalid event
//! 400 with `errors[]`, and whatever may succeed later 503 with `Retry-After`. The
//! real Alertmanager posting here is in `tests/senders.rs`.

mod support;

use serde_json::{json, Value};
use support::redis::{RedisServer, ServerOptions};
use support::{occurrences, start_with, Gateway};
use tidegate::remediation::SUBMITTED_BY_ANNOTATION;

const ROUTE: &str = "/v2/enqueue";

/// One firing alert, then its resolution, as Alertmanager 0.25 posts them.
const TRIGGER: &str = include_str!("fixtures/pagerduty/alertmanager-0.25-trigger.json");
const RESOLVE: &str = include_str!("fixtures/pagerduty/alertmanager-0.25-resolve.json");
/// Alertmanager's key for that alert's group.
const DEDUP_KEY: &str = "9fd6d86553a9599a36e7afa75d3f8f85fc4ce784ab89b599718709972d4b4df6";
/// The routing key the fixtures carry.
const ROUTING_KEY: &str = "tidegate-routing-key-0123456789ab";

async fn post(gw: &Gateway, body: impl Into<Vec<u8>>) -> reqwest::Response {
    gw.post_raw(ROUTE, Some("application/json"), body.into()).await
}

/// PagerDuty's success answer, checked for its shape; its `dedup_key`.
async fn accepted(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!((&body["status"], &body["message"]), (&json!("success"), &json!("Event processed")), "{body}");
    body["dedup_key"].as_str().unwrap().to_string()
}

fn resolved(gw: &Gateway) -> bool {
    gw.only_request().status.is_some_and(|s| s.signal_resolved_at.is_some())
}

#[tokio::test]
async fn alertmanagers_trigger_is_answered_with_its_dedup_key_and_becomes_one_request() {
    let gw = start_with(|_| {}).await;

    let key = accepted(post(&gw, TRIGGER).await).await;

    assert_eq!(key, DEDUP_KEY);
    let rr = gw.only_request();
    assert_eq!(serde_json::to_value(rr.spec.signal_type).unwrap(), "pagerduty-event");
    assert_eq!(rr.spec.signal_name, DEDUP_KEY, "named by its key, which no later event changes");
    assert_eq!(rr.spec.signal_annotations["summary"], "[FIRING:1] KubePodCrashLooping shop (web-0 critical)");
    assert_eq!((rr.spec.severity.as_str(), rr.spec.signal_source.as_str()), ("warning", "Alertmanager"));
    assert_eq!(rr.spec.signal_annotations["tidegate.dev/incident-key"], DEDUP_KEY);
}

#[tokio::test]
async fn a_repeat_of_the_dedup_key_is_counted_on_the_one_request() {
    let mut gw = start_with(|_| {}).await;
    accepted(post(&gw, TRIGGER).await).await;
    // Another text under the same key: the same incident.
    let repeat = TRIGGER.replace("[FIRING:1]", "[FIRING:2]");

    accepted(post(&gw, repeat).await).await;

    gw.stop().await;
    let requests = gw.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(occurrences(&requests[0]), 2);
}

#[tokio::test]
async fn a_resolve_is_recorded_on_the_open_request() {
    let mut gw = start_with(|_| {}).await;
    accepted(post(&gw, TRIGGER).await).await;

    assert_eq!(accepted(post(&gw, RESOLVE).await).await, DEDUP_KEY);

    gw.stop().await;
    assert_eq!(gw.requests().len(), 1, "a resolve creates nothing");
    assert!(resolved(&gw), "status.signalResolvedAt is set");
    assert_eq!(occurrences(&gw.only_request()), 1, "a resolution is not an occurrence");
}

fn acknowledge(key: &str) -> String {
    json!({"routing_key": ROUTING_KEY, "event_action": "acknowledge", "dedup_key": key}).to_string()
}

#[tokio::test]
async fn an_acknowledge_without_an_open_request_is_answered_counted_and_creates_nothing() {
    let gw = start_with(|_| {}).await;

    assert_eq!(accepted(post(&gw, acknowledge("never-triggered")).await).await, "never-triggered");

    assert!(gw.manifests().is_empty());
    let unknown = r#"tidegate_signals_received_total{source="pagerduty-event",outcome="acknowledged_unknown"}"#;
    assert_eq!(gw.metric(unknown).await, 1.0);
}

#[tokio::test]
async fn an_acknowledge_is_recorded_on_the_open_request_and_is_no_occurrence() {
    let mut gw = start_with(|_| {}).await;
    accepted(post(&gw, TRIGGER).await).await;

    // No details: the request is found where its trigger's details put it.
    assert_eq!(accepted(post(&gw, acknowledge(DEDUP_KEY)).await).await, DEDUP_KEY);

    let recorded = r#"tidegate_signals_received_total{source="pagerduty-event",outcome="acknowledged"}"#;
    assert_eq!(gw.metric(recorded).await, 1.0);
    gw.stop().await;
    assert_eq!(gw.requests().len(), 1, "an acknowledge creates nothing");
    let rr = gw.only_request();
    let status = rr.status.as_ref().unwrap();
    assert!(status.acknowledged_at.is_some(), "status.acknowledgedAt is set: {status:?}");
    assert_eq!(occurrences(&rr), 1, "an acknowledgement is not an occurrence");
    assert!(status.signal_resolved_at.is_none());
}

#[tokio::test]
async fn a_trigger_without_a_key_is_answered_one_that_resolves_it() {
    let mut gw = start_with(|_| {}).await;
    let trigger = json!({"routing_key": ROUTING_KEY, "event_action": "trigger",
        "payload": {"summary": "disk full", "source": "db-0", "severity": "critical",
                    "custom_details": {"namespace": "shop", "pod": "db-0"}}});
    let key = accepted(post(&gw, trigger.to_string()).await).await;

    // The request is in the namespace the details name: so must the resolve's be.
    let resolve = json!({"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": key,
        "payload": {"custom_details": {"namespace": "shop"}}});
    accepted(post(&gw, resolve.to_string()).await).await;

    gw.stop().await;
    let rr = gw.only_request();
    assert_eq!(rr.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!((rr.spec.target_resource.kind.as_str(), rr.spec.target_resource.name.as_str()), ("Pod", "db-0"));
    assert!(resolved(&gw), "the answered key named the incident");
}

/// A trigger whose details place its request in `shop`, about pod `db-0`.
fn db_disk_in_shop() -> String {
    json!({"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": "db-disk",
        "payload": {"summary": "disk full", "source": "db-0", "severity": "critical",
                    "custom_details": {"namespace": "shop", "pod": "db-0"}}})
    .to_string()
}

#[tokio::test]
async fn an_acknowledge_without_details_finds_the_request_its_triggers_details_placed() {
    let mut gw = start_with(|_| {}).await;
    accepted(post(&gw, db_disk_in_shop()).await).await;
    // The ack's own labels say `default`; the request is in `shop`, as the sink says.

    accepted(post(&gw, acknowledge("db-disk")).await).await;

    gw.stop().await;
    let rr = gw.only_request();
    assert_eq!(rr.metadata.namespace.as_deref(), Some("shop"));
    assert!(rr.status.is_some_and(|s| s.acknowledged_at.is_some()), "recorded on the request in shop");
}

#[tokio::test]
async fn a_resolve_without_details_finds_the_request_its_triggers_details_placed() {
    let mut gw = start_with(|_| {}).await;
    accepted(post(&gw, db_disk_in_shop()).await).await;
    // Alertmanager sends a resolve without a payload: its labels say `default`.
    let resolve = json!({"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "db-disk"});

    accepted(post(&gw, resolve.to_string()).await).await;

    gw.stop().await;
    let rr = gw.only_request();
    assert_eq!(rr.metadata.namespace.as_deref(), Some("shop"));
    assert!(resolved(&gw), "recorded on the request in shop");
}

#[tokio::test]
async fn an_invalid_event_is_400_with_errors_as_pagerduty_answers() {
    let gw = start_with(|_| {}).await;
    let no_summary = TRIGGER.replace(r#""summary":"#, r#""title":"#);

    let response = post(&gw, no_summary).await;

    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!((&body["status"], &body["message"]), (&json!("invalid event"), &json!("Event object is invalid")));
    assert_eq!(body["errors"], json!(["$.payload.summary: missing or blank"]));
    let malformed: Value = post(&gw, "{").await.json().await.unwrap();
    assert_eq!(malformed["status"], "invalid event");
    assert!(gw.manifests().is_empty());
    assert_eq!(gw.metric(r#"tidegate_http_rejections_total{reason="invalid"}"#).await, 1.0);
}

#[tokio::test]
async fn the_routing_key_authenticates_its_sender_as_a_bearer_token_does() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("routing-key");
    std::fs::write(&token, format!("{ROUTING_KEY}\n")).unwrap();
    let yaml = format!("authenticators:\n  keys: {{bearer: {{tokens: {{alertmanager-pd: {}}}}}}}", token.display());
    let gw = start_with(|c| c.auth = serde_norway::from_str(&yaml).unwrap()).await;

    accepted(post(&gw, TRIGGER).await).await;
    let wrong = post(&gw, TRIGGER.replace(ROUTING_KEY, "someone-elses-key-0123456789abcd")).await;
    let missing = post(&gw, TRIGGER.replace(&format!(r#""routing_key":"{ROUTING_KEY}","#), "")).await;

    let annotations = gw.only_request().metadata.annotations.unwrap_or_default();
    assert_eq!(annotations[SUBMITTED_BY_ANNOTATION], "alertmanager-pd");
    let series = r#"tidegate_authenticated_requests_total{sender="alertmanager-pd",method="bearer"}"#;
    assert_eq!(gw.metric(series).await, 1.0);
    let wrong = support::problem(wrong, 401).await;
    assert!(!wrong["detail"].as_str().unwrap().contains("someone"), "no credential in the answer: {wrong}");
    support::problem(missing, 401).await;
}

#[tokio::test]
async fn state_down_is_503_with_retry_after() {
    let server = RedisServer::start(ServerOptions::default());
    let url = server.url();
    let gw = start_with(|c| support::on_redis(c, &url)).await;
    accepted(post(&gw, TRIGGER).await).await;

    server.kill();
    let response = post(&gw, TRIGGER).await;

    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
}
