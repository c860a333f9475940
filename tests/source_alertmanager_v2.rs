//! `POST /api/v2/alerts` over HTTP: the Alertmanager API v2 source, as Prometheus
//! posts to it. Success is 200 with an empty body, as Alertmanager answers; errors
//! are RFC 7807 problems; whatever may succeed later is 503 with `Retry-After`.
//! The real Prometheus posting here is in `tests/senders.rs`.

mod support;

use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;
use support::redis::{RedisServer, ServerOptions};
use support::{occurrences, start_with, Gateway};
use tidegate::remediation::RemediationRequest;

const ROUTE: &str = "/api/v2/alerts";

/// Two firing alerts as Prometheus 2.42 posts them (kube-prometheus' crash-loop rule,
/// Go's escaping), with `startsAt` and `endsAt` at fixed times.
const FIXTURE: &str = include_str!("fixtures/prometheus-2.42-alerts.json");
const FIXTURE_STARTS_AT: &str = "2026-11-27T10:00:00.000Z";
const FIXTURE_ENDS_AT: &str = "2026-11-27T10:00:04.000Z";

/// The fixture with `startsAt` a minute before the gateway's clock and `endsAt`
/// `ends_in` after it (negative: in the past, a resolution), as Prometheus writes them.
fn prometheus_body(gw: &Gateway, ends_in: jiff::SignedDuration) -> Vec<u8> {
    let now = Timestamp::from_millisecond(gw.clock.now_ms() as i64).unwrap();
    let rfc3339 = |t: Timestamp| format!("{t:.3}");
    FIXTURE
        .replace(FIXTURE_STARTS_AT, &rfc3339(now - jiff::SignedDuration::from_secs(60)))
        .replace(FIXTURE_ENDS_AT, &rfc3339(now + ends_in))
        .into_bytes()
}

fn firing(gw: &Gateway) -> Vec<u8> {
    prometheus_body(gw, jiff::SignedDuration::from_secs(4))
}

async fn post(gw: &Gateway, body: impl Into<Vec<u8>>) -> reqwest::Response {
    gw.post_raw(ROUTE, Some("application/json"), body.into()).await
}

/// Every request written, read back.
fn requests(gw: &Gateway) -> Vec<RemediationRequest> {
    let read = |p: &std::path::PathBuf| serde_norway::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    gw.manifests().iter().map(read).collect()
}

async fn problem(response: reqwest::Response) -> Value {
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    response.json().await.unwrap()
}

#[tokio::test]
async fn firing_alerts_are_answered_200_with_an_empty_body_and_become_requests() {
    let gw = start_with(|_| {}).await;

    let response = post(&gw, firing(&gw)).await;

    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-type").is_none());
    assert_eq!(response.bytes().await.unwrap().len(), 0);
    let requests = requests(&gw);
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let rr = &requests[0];
    assert_eq!(rr.spec.signal_type.as_str(), "prometheus-alert");
    assert_eq!(rr.spec.signal_source, "http://prometheus-k8s-0:9090");
    assert_eq!((rr.spec.signal_name.as_str(), rr.spec.severity.as_str()), ("KubePodCrashLooping", "warning"));
}

#[tokio::test]
async fn a_resend_is_counted_as_a_duplicate() {
    let mut gw = start_with(|_| {}).await;
    assert_eq!(post(&gw, firing(&gw)).await.status(), 200);
    gw.clock.advance(Duration::from_secs(1));

    assert_eq!(post(&gw, firing(&gw)).await.status(), 200);

    let duplicates = gw.metric(r#"tidegate_signals_received_total{source="prometheus-alert",outcome="duplicate"}"#);
    assert_eq!(duplicates.await, 2.0);
    gw.stop().await;
    let requests = requests(&gw);
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|rr| occurrences(rr) == 2), "{requests:#?}");
}

#[tokio::test]
async fn ends_at_in_the_past_records_signal_resolved_at() {
    let mut gw = start_with(|_| {}).await;
    assert_eq!(post(&gw, firing(&gw)).await.status(), 200);
    gw.clock.advance(Duration::from_secs(10));

    let resolved = prometheus_body(&gw, jiff::SignedDuration::from_secs(-1));
    assert_eq!(post(&gw, resolved).await.status(), 200);

    gw.stop().await;
    let requests = requests(&gw);
    assert_eq!(requests.len(), 2, "a resolution creates nothing: {requests:#?}");
    for rr in &requests {
        let status = rr.status.as_ref().unwrap();
        assert!(status.signal_resolved_at.is_some(), "{rr:#?}");
        assert_eq!(occurrences(rr), 1, "a resolution is not an occurrence");
    }
}

#[tokio::test]
async fn malformed_json_is_a_400_problem_naming_the_path() {
    let gw = start_with(|_| {}).await;

    let response = post(&gw, r#"[{"labels":{"alertname":"A"}},{"labels":{"alertname":7}}]"#).await;

    assert_eq!(response.status(), 400);
    let problem = problem(response).await;
    assert_eq!(problem["type"], "https://tidegate.dev/problems/malformed");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.starts_with("$[1].labels.alertname: invalid type"), "{detail}");
    assert!(gw.manifests().is_empty());
}

#[tokio::test]
async fn a_batch_with_an_invalid_alert_records_the_valid_ones_and_answers_400_naming_it() {
    let gw = start_with(|_| {}).await;
    let mut alerts: Vec<Value> = serde_json::from_slice(&firing(&gw)).unwrap();
    alerts.insert(1, serde_json::json!({"labels": {"job": "node"}, "endsAt": alerts[0]["endsAt"]}));

    let response = post(&gw, serde_json::to_vec(&alerts).unwrap()).await;

    assert_eq!(response.status(), 400);
    let problem = problem(response).await;
    assert_eq!(problem["detail"], "1 of the 3 alerts are not usable and were not recorded; the other 2 were");
    assert_eq!(problem["errors"].as_array().unwrap().len(), 1, "{problem}");
    assert_eq!(problem["errors"][0]["index"], 1);
    assert_eq!(problem["errors"][0]["detail"], r#"$[1].labels: missing required label "alertname""#);
    assert_eq!(gw.manifests().len(), 2, "the valid alerts are recorded");
}

#[tokio::test]
async fn state_down_is_503_with_retry_after() {
    let server = RedisServer::start(ServerOptions::default());
    let url = server.url();
    let gw = start_with(|c| support::on_redis(c, &url)).await;
    assert_eq!(post(&gw, firing(&gw)).await.status(), 200);

    server.kill();
    let response = post(&gw, firing(&gw)).await;

    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(problem(response).await["type"], "https://tidegate.dev/problems/state-unavailable");
}
