//! Grafana Alerting and CloudEvents (Falco through Falcosidekick) over real HTTP,
//! from the fixtures in `tests/fixtures/` (each cited beside it), through the same
//! pipeline as Alertmanager's alerts.

mod support;

use serde_json::{json, Value};
use support::{occurrences, problem, start, start_with, Gateway};
use tidegate::ingest::cloudevents::CloudEventsConfig;

const GRAFANA: &str = "/api/v1/signals/grafana";
const CLOUDEVENTS: &str = "/api/v1/signals/cloudevents";

/// Grafana's documented webhook payload: two firing alerts.
const GRAFANA_DOCS: &str = include_str!("fixtures/grafana/webhook-firing-docs.json");
/// What Grafana's code emits today for one firing alert (its own test's literal).
const GRAFANA_CURRENT: &str = include_str!("fixtures/grafana/webhook-firing-default-payload-test.json");
/// Falcosidekick's binary-mode request for a real Falco event.
const SIDEKICK: &str = include_str!("fixtures/cloudevents/falcosidekick-cloudevent-binary.http");
/// The CloudEvents spec's structured example.
const STRUCTURED: &str = include_str!("fixtures/cloudevents/cloudevents-structured-json-example.json");

/// The documented payload with only its first alert, in a namespace, on a pod.
fn grafana_alert_on_a_pod() -> Value {
    let mut hook: Value = serde_json::from_str(GRAFANA_DOCS).unwrap();
    hook["alerts"].as_array_mut().unwrap().truncate(1);
    let labels = &mut hook["alerts"][0]["labels"];
    labels["namespace"] = json!("shop");
    labels["pod"] = json!("web-0");
    hook
}

/// Falcosidekick's request: its `ce-*` and `Content-Type` headers, and its body.
fn sidekick() -> (Vec<(String, String)>, String) {
    let (head, body) = SIDEKICK.split_once("\r\n\r\n").unwrap();
    let headers = head
        .lines()
        .skip(1)
        .map(|line| line.split_once(": ").unwrap())
        .filter(|(name, _)| name.starts_with("Ce-") || *name == "Content-Type")
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    (headers, body.to_string())
}

/// Falcosidekick's event as if Falco had seen it in `namespace`/`pod`.
fn falco_in_pod(namespace: &str, pod: &str) -> (Vec<(String, String)>, String) {
    let (headers, body) = sidekick();
    let fields = format!(r#""output_fields":{{"k8s.ns.name":"{namespace}","k8s.pod.name":"{pod}","#);
    (headers, body.replace(r#""output_fields":{"#, &fields))
}

async fn post(gw: &Gateway, path: &str, headers: &[(String, String)], body: String) -> reqwest::Response {
    let mut req = gw.client.post(format!("{}{path}", gw.url)).body(body);
    for (name, value) in headers {
        req = req.header(name, value);
    }
    req.send().await.unwrap()
}

async fn structured(gw: &Gateway, body: &str) -> reqwest::Response {
    gw.post_raw(CLOUDEVENTS, Some("application/cloudevents+json"), body.as_bytes().to_vec()).await
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

#[tokio::test]
async fn falcosidekicks_event_is_created_for_its_pod_and_a_repeat_is_a_duplicate() {
    let mut gw = start().await;
    let (headers, body) = falco_in_pod("shop", "web-0");
    let resp = post(&gw, CLOUDEVENTS, &headers, body.clone()).await;
    assert_eq!(resp.status(), 201);
    let first: Value = resp.json().await.unwrap();
    let resp = post(&gw, CLOUDEVENTS, &headers, body).await;
    assert_eq!(resp.status(), 202);
    let second: Value = resp.json().await.unwrap();
    assert_eq!((&second["status"], &second["name"]), (&json!("duplicate"), &first["name"]));
    gw.stop().await;
    let rr = gw.read("shop", first["name"].as_str().unwrap());
    assert_eq!(rr.spec.signal_name, "Read sensitive file untrusted");
    assert_eq!(rr.spec.severity, "warning");
    assert_eq!(serde_json::to_value(rr.spec.signal_type).unwrap(), "cloudevent");
    assert_eq!(rr.spec.signal_source, "https://falco.org");
    let target = &rr.spec.target_resource;
    assert_eq!((target.kind.as_str(), target.name.as_str(), target.namespace.as_str()), ("Pod", "web-0", "shop"));
    assert!(rr.spec.signal_annotations["falco.org/output"].contains("file=/etc/shadow"));
    assert_eq!(rr.spec.signal_annotations["cloudevents.io/type"], "falco.rule.output.v1");
    assert_eq!(rr.spec.signal_labels["rule"], "Read sensitive file untrusted");
    assert_eq!(occurrences(&rr), 2);
}

#[tokio::test]
async fn falco_event_outside_a_pod_targets_the_node_falco_runs_on() {
    let mut gw = start_with(|c| c.placement.control_namespace = Some("ops".into())).await;
    let (headers, body) = sidekick();
    let resp = post(&gw, CLOUDEVENTS, &headers, body).await;
    assert_eq!(resp.status(), 201);
    gw.stop().await;
    let rr = gw.only_request();
    let target = &rr.spec.target_resource;
    assert_eq!((target.kind.as_str(), target.name.as_str(), target.namespace.as_str()), ("Node", "97ade2b595f0", ""));
}

#[tokio::test]
async fn a_structured_event_maps_through_a_users_own_type() {
    let config: CloudEventsConfig = serde_norway::from_str(
        "types:\n  com.example.someevent:\n    name: /data/appinfoA\n    namespace: /comexampleextension1\n",
    )
    .unwrap();
    let mut gw = start_with(move |c| c.cloudevents = config).await;
    let resp = structured(&gw, STRUCTURED).await;
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["namespace"], "value");
    gw.stop().await;
    let rr = gw.only_request();
    assert_eq!((rr.spec.signal_name.as_str(), rr.spec.signal_source.as_str()), ("abc", "/mycontext"));
    assert_eq!(rr.spec.signal_annotations["cloudevents.io/id"], "C234-1234-1234");
}

#[tokio::test]
async fn a_falco_event_in_structured_mode_is_the_same_incident_as_in_binary_mode() {
    let gw = start().await;
    let (headers, data) = falco_in_pod("shop", "web-0");
    let first: Value = post(&gw, CLOUDEVENTS, &headers, data.clone()).await.json().await.unwrap();
    let event = json!({
        "specversion": "1.0", "id": "another", "source": "https://falco.org", "type": "falco.rule.output.v1",
        "datacontenttype": "application/json", "data": serde_json::from_str::<Value>(&data).unwrap(),
    });
    let resp = structured(&gw, &event.to_string()).await;
    assert_eq!(resp.status(), 202);
    let second: Value = resp.json().await.unwrap();
    assert_eq!((&second["fingerprint"], &second["status"]), (&first["fingerprint"], &json!("duplicate")));
}

#[tokio::test]
async fn a_missing_required_attribute_is_400_naming_it() {
    let gw = start().await;
    let (mut headers, body) = sidekick();
    headers.retain(|(name, _)| name != "Ce-Id");
    let problem_body = problem(post(&gw, CLOUDEVENTS, &headers, body).await, 400).await;
    assert_eq!(
        problem_body["detail"],
        "ce-id: missing required attribute (in binary mode, attributes are ce-* headers)"
    );
    let event = STRUCTURED.replace(r#""source" : "/mycontext","#, "");
    let problem_body = problem(structured(&gw, &event).await, 400).await;
    assert_eq!(problem_body["detail"], "$.source: missing required attribute");
    assert!(gw.manifests().is_empty());
}

#[tokio::test]
async fn an_unknown_event_type_is_400_listing_the_configured_types() {
    let gw = start().await;
    let body = problem(structured(&gw, STRUCTURED).await, 400).await;
    assert_eq!(
        body["detail"],
        "$.type: no mapping for event type \"com.example.someevent\"; configured types: falco.rule.output.v1"
    );
}

#[tokio::test]
async fn malformed_event_data_is_400_naming_the_path() {
    let gw = start().await;
    let (headers, _) = sidekick();
    let body = problem(post(&gw, CLOUDEVENTS, &headers, r#"{"rule": ["x"}"#.into()).await, 400).await;
    assert!(body["detail"].as_str().unwrap().starts_with("$.rule"), "{body}");
    let body = problem(gw.post_raw(CLOUDEVENTS, Some("text/plain"), b"x".to_vec()).await, 415).await;
    assert_eq!(body["status"], 415);
}

#[tokio::test]
async fn a_storm_of_falco_events_folds_into_one_aggregated_request() {
    let mut gw = start().await;
    let mut statuses = Vec::new();
    for n in 0..9 {
        let (headers, body) = falco_in_pod("shop", &format!("web-{n}"));
        let resp: Value = post(&gw, CLOUDEVENTS, &headers, body).await.json().await.unwrap();
        statuses.push(resp["status"].as_str().unwrap().to_string());
    }
    // More than five pods of one namespace with the same rule is a pattern storm.
    assert_eq!(statuses, ["created"; 5].into_iter().chain(["aggregated"; 4]).collect::<Vec<_>>());
    gw.stop().await;
    let aggregated: Vec<_> = gw.requests().into_iter().filter(|rr| rr.spec.storm.is_some()).collect();
    assert_eq!(aggregated.len(), 1);
    assert_eq!(aggregated[0].status.as_ref().unwrap().storm.as_ref().unwrap().alert_count, 4);
}
