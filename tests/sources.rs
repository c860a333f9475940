//! Grafana Alerting over real HTTP, from the fixtures in `tests/fixtures/` (each
//! cited beside it), through the same pipeline as Alertmanager's alerts.

mod support;

use serde_json::{json, Value};
use support::{occurrences, problem, start};

const GRAFANA: &str = "/api/v1/signals/grafana";

/// Grafana's documented webhook payload: two firing alerts.
const GRAFANA_DOCS: &str = include_str!("fixtures/grafana/webhook-firing-docs.json");
/// What Grafana's code emits today for one firing alert (its own test's literal).
const GRAFANA_CURRENT: &str = include_str!("fixtures/grafana/webhook-firing-default-payload-test.json");

/// The documented payload with only its first alert, in a namespace, on a pod.
fn grafana_alert_on_a_pod() -> Value {
    let mut hook: Value = serde_json::from_str(GRAFANA_DOCS).unwrap();
    hook["alerts"].as_array_mut().unwrap().truncate(1);
    let labels = &mut hook["alerts"][0]["labels"];
    labels["namespace"] = json!("shop");
    labels["pod"] = json!("web-0");
    hook
}

#[tokio::test]
async fn grafana_alert_is_created_with_its_links_as_annotations() {
    let mut gw = start().await;
    let resp = gw.post_json(GRAFANA, &grafana_alert_on_a_pod()).await;
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    gw.stop().await;
    let rr = gw.read("shop", body["name"].as_str().unwrap());
    assert_eq!(rr.spec.signal_name, "High memory usage");
    assert_eq!(serde_json::to_value(rr.spec.signal_type).unwrap(), "grafana-alert");
    assert_eq!(rr.spec.signal_source, "https://play.grafana.org/");
    assert_eq!((rr.spec.target_resource.kind.as_str(), rr.spec.target_resource.name.as_str()), ("Pod", "web-0"));
    let annotations = &rr.spec.signal_annotations;
    assert_eq!(annotations["grafana.com/generator-url"], "https://play.grafana.org/alerting/1afz29v7z/edit");
    assert!(annotations["grafana.com/silence-url"].starts_with("https://play.grafana.org/alerting/silence/new?"));
    assert_eq!(annotations["grafana.com/values"], "B=44.23943737541908, C=1");
    assert_eq!(annotations["runbook_url"], "https://myrunbook.com/runbook/1234");
    assert!(!annotations.contains_key("grafana.com/dashboard-url"), "Grafana sent it empty");
}

#[tokio::test]
async fn every_alert_of_grafanas_documented_payload_is_answered_207() {
    let gw = start().await;
    let resp = gw.post_raw(GRAFANA, Some("application/json"), GRAFANA_DOCS.into()).await;
    assert_eq!(resp.status(), 207);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["summary"]["created"], 2);
    let resp = gw.post_raw(GRAFANA, Some("application/json"), GRAFANA_CURRENT.into()).await;
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn grafana_repeat_is_a_duplicate_and_its_resolution_is_recorded() {
    let mut gw = start().await;
    let hook = grafana_alert_on_a_pod();
    let first: Value = gw.post_json(GRAFANA, &hook).await.json().await.unwrap();
    let resp = gw.post_json(GRAFANA, &hook).await;
    assert_eq!(resp.status(), 202);
    let second: Value = resp.json().await.unwrap();
    assert_eq!((&second["status"], &second["name"]), (&json!("duplicate"), &first["name"]));
    // Grafana resolves the same alert: status "resolved" on the group and the alert.
    let mut resolved = hook;
    resolved["status"] = json!("resolved");
    resolved["alerts"][0]["status"] = json!("resolved");
    resolved["alerts"][0]["endsAt"] = json!("2021-10-12T10:06:03.157076+02:00");
    let body: Value = gw.post_json(GRAFANA, &resolved).await.json().await.unwrap();
    assert_eq!(body["status"], "resolved");
    gw.stop().await;
    let rr = gw.read("shop", first["name"].as_str().unwrap());
    assert_eq!(occurrences(&rr), 2);
    assert!(rr.status.unwrap().signal_resolved_at.is_some());
}

#[tokio::test]
async fn malformed_grafana_payload_is_400_naming_the_path() {
    let gw = start().await;
    let mut hook = grafana_alert_on_a_pod();
    hook["alerts"][0]["dashboardURL"] = json!(42);
    let body = problem(gw.post_json(GRAFANA, &hook).await, 400).await;
    assert!(body["detail"].as_str().unwrap().starts_with("$.alerts[0].dashboardURL: "), "{body}");
    assert!(gw.manifests().is_empty());
}
