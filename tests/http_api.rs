//! The HTTP contract, over real HTTP against an in-process gateway on the embedded
//! default (in-process state, manifests in a directory).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{alert, event, eventually, occurrences, problem, resolved, start, start_with, tally, webhook};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROMETHEUS: &str = "/api/v1/signals/prometheus";
const EVENTS: &str = "/api/v1/signals/kubernetes-event";

#[tokio::test]
async fn new_alert_is_created_201_and_written_as_a_manifest() {
    let mut gw = start().await;
    let resp = gw.alerts(&webhook(vec![alert("HighMemory", "shop", "web-0")])).await;
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "created");
    assert_eq!(body["namespace"], "shop");
    assert_eq!(body["occurrenceCount"], 1);
    assert_eq!(body["fingerprint"].as_str().unwrap().len(), 64);
    gw.stop().await;

    let rr = gw.read("shop", body["name"].as_str().unwrap());
    assert_eq!(rr.spec.signal_name, "HighMemory");
    assert_eq!(rr.spec.signal_fingerprint, body["fingerprint"]);
    assert_eq!(rr.spec.target_resource.kind, "Pod");
    assert_eq!(rr.spec.target_resource.name, "web-0");
    assert_eq!(rr.spec.signal_annotations["summary"], "web-0 is unwell");
    assert_eq!(occurrences(&rr), 1);
}

#[tokio::test]
async fn manifest_is_a_remediation_request_kubectl_accepts() {
    let mut gw = start().await;
    let body: Value = gw.alerts(&webhook(vec![alert("HighMemory", "shop", "web-0")])).await.json().await.unwrap();
    gw.stop().await;
    let path = gw.dir.path().join("shop").join(format!("{}.yaml", body["name"].as_str().unwrap()));
    let manifest: Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(manifest["apiVersion"], "remediation.tidegate.dev/v1alpha1");
    assert_eq!(manifest["kind"], "RemediationRequest");
    assert_eq!(manifest["metadata"]["name"], body["name"]);
    assert_eq!(manifest["metadata"]["namespace"], "shop");
    assert_eq!(manifest["spec"]["signalType"], "prometheus-alert");
    assert_eq!(manifest["spec"]["targetResource"]["kind"], "Pod");
    assert!(manifest["spec"]["receivedTime"].is_string());
    assert_eq!(manifest["status"]["deduplication"]["occurrenceCount"], 1);
    // No temporary files are left beside the manifests.
    assert_eq!(gw.manifests().len(), 1);
    let leftovers: Vec<_> = std::fs::read_dir(gw.dir.path().join("shop"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn repeat_is_a_202_duplicate_that_counts_on_the_same_request() {
    let mut gw = start().await;
    let hook = webhook(vec![alert("HighMemory", "shop", "web-0")]);
    let first: Value = gw.alerts(&hook).await.json().await.unwrap();
    let resp = gw.alerts(&hook).await;
    assert_eq!(resp.status(), 202);
    let second: Value = resp.json().await.unwrap();
    assert_eq!(second["status"], "duplicate");
    assert_eq!(second["name"], first["name"]);
    assert_eq!(second["occurrenceCount"], 2);
    gw.stop().await;
    let rr = gw.read("shop", first["name"].as_str().unwrap());
    assert_eq!(occurrences(&rr), 2);
    assert_eq!(gw.manifests().len(), 1);
}

#[tokio::test]
async fn fifty_concurrent_identical_alerts_make_one_request_counting_fifty() {
    let mut gw = start().await;
    let hook = webhook(vec![alert("HighMemory", "shop", "web-0")]);
    let statuses = futures::future::join_all((0..50).map(|_| gw.alerts(&hook))).await;
    assert_eq!(tally(&statuses), [(201, 1), (202, 49)].into());
    gw.stop().await;
    assert_eq!(occurrences(&gw.only_request()), 50);
}

#[tokio::test]
async fn duplicates_are_coalesced_into_one_status_write_per_interval() {
    let mut gw = start_with(|c| c.status_writer.interval = Duration::from_secs(300)).await;
    let hook = webhook(vec![alert("HighMemory", "shop", "web-0")]);
    let first: Value = gw.alerts(&hook).await.json().await.unwrap();
    for _ in 0..200 {
        assert_eq!(gw.alerts(&hook).await.status(), 202);
    }
    let name = first["name"].as_str().unwrap();
    // Nothing is written before the interval elapses ...
    assert_eq!(occurrences(&gw.read("shop", name)), 1);
    assert_eq!(gw.metric("tidegate_status_updates_coalesced_total").await, 199.0);
    // ... and shutdown writes the latest count, once.
    let metrics = gw.running().metrics.clone();
    gw.stop().await;
    assert_eq!(occurrences(&gw.read("shop", name)), 201);
    let text = metrics.encode();
    assert!(text.contains(r#"tidegate_sink_writes_total{op="update_status",outcome="ok"} 1"#), "{text}");
}

#[tokio::test]
async fn status_write_happens_after_the_interval_without_shutdown() {
    let gw = start_with(|c| c.status_writer.interval = Duration::from_millis(50)).await;
    let hook = webhook(vec![alert("HighMemory", "shop", "web-0")]);
    let first: Value = gw.alerts(&hook).await.json().await.unwrap();
    gw.alerts(&hook).await;
    let name = first["name"].as_str().unwrap().to_string();
    eventually("the duplicate count to reach the manifest", || {
        let count = occurrences(&gw.read("shop", &name));
        async move { count == 2 }
    })
    .await;
}

#[tokio::test]
async fn after_the_window_lapses_a_new_request_is_created() {
    let mut gw = start_with(|c| c.dedup.window = Duration::from_secs(300)).await;
    let hook = webhook(vec![alert("HighMemory", "shop", "web-0")]);
    let first: Value = gw.alerts(&hook).await.json().await.unwrap();
    gw.clock.advance(Duration::from_secs(299));
    let dup = gw.alerts(&hook).await;
    assert_eq!(dup.status(), 202, "299 s later is inside the window");
    // The duplicate slid the window: 299 s after it, still a duplicate.
    gw.clock.advance(Duration::from_secs(299));
    assert_eq!(gw.alerts(&hook).await.status(), 202);
    gw.clock.advance(Duration::from_secs(300));
    let resp = gw.alerts(&hook).await;
    assert_eq!(resp.status(), 201, "a full window after the last sighting is a new incident");
    let second: Value = resp.json().await.unwrap();
    assert_ne!(second["name"], first["name"]);
    assert_eq!(second["fingerprint"], first["fingerprint"]);
    gw.stop().await;
    assert_eq!(gw.manifests().len(), 2);
}

#[tokio::test]
async fn resolved_alert_is_recorded_on_the_open_request_and_creates_nothing() {
    let mut gw = start().await;
    let firing = alert("HighMemory", "shop", "web-0");
    let first: Value = gw.alerts(&webhook(vec![firing.clone()])).await.json().await.unwrap();
    let resp = gw.alerts(&webhook(vec![resolved(firing)])).await;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "resolved");
    assert_eq!(body["name"], first["name"]);
    gw.stop().await;
    assert_eq!(gw.manifests().len(), 1);
    let status = gw.read("shop", first["name"].as_str().unwrap()).status.unwrap();
    assert!(status.signal_resolved_at.is_some());
    assert_eq!(status.deduplication.unwrap().occurrence_count, 1, "a resolution is not an occurrence");
}

#[tokio::test]
async fn resolved_alert_without_an_open_request_creates_nothing() {
    let mut gw = start().await;
    let resp = gw.alerts(&webhook(vec![resolved(alert("HighMemory", "shop", "web-0"))])).await;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "resolved");
    assert!(body.get("name").is_none());
    gw.stop().await;
    assert!(gw.manifests().is_empty());
}

#[tokio::test]
async fn every_alert_of_a_batch_is_processed_and_answered_207() {
    let mut gw = start().await;
    gw.alerts(&webhook(vec![alert("A", "shop", "p0")])).await;
    let batch = webhook(vec![
        alert("A", "shop", "p0"),
        alert("A", "shop", "p1"),
        alert("B", "shop", "p2"),
        resolved(alert("C", "shop", "p3")),
    ]);
    let resp = gw.alerts(&batch).await;
    assert_eq!(resp.status(), 207);
    let body: Value = resp.json().await.unwrap();
    let statuses: Vec<&str> =
        body["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["duplicate", "created", "created", "resolved"]);
    assert_eq!(
        body["summary"],
        json!({"created": 2, "duplicate": 1, "aggregated": 0, "resolved": 1, "heartbeat": 0, "held": 0, "outOfScope": 0, "silenced": 0, "inhibited": 0, "failed": 0})
    );
    gw.stop().await;
    assert_eq!(gw.manifests().len(), 3);
}

#[tokio::test]
async fn a_bad_alert_in_a_batch_fails_alone() {
    let gw = start().await;
    let mut nameless = alert("x", "shop", "p1");
    nameless["labels"].as_object_mut().unwrap().remove("alertname");
    let resp = gw.alerts(&webhook(vec![alert("A", "shop", "p0"), nameless])).await;
    assert_eq!(resp.status(), 207);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["summary"],
        json!({"created": 1, "duplicate": 0, "aggregated": 0, "resolved": 0, "heartbeat": 0, "held": 0, "outOfScope": 0, "silenced": 0, "inhibited": 0, "failed": 1})
    );
    assert_eq!(body["results"][1]["status"], "failed");
    assert_eq!(body["results"][1]["index"], 1);
    assert_eq!(body["results"][1]["error"]["detail"], "$.alerts[1].labels: missing required label \"alertname\"");
}

#[tokio::test]
async fn missing_alertname_is_400_naming_the_path() {
    let gw = start().await;
    let mut nameless = alert("x", "shop", "p1");
    nameless["labels"].as_object_mut().unwrap().remove("alertname");
    let body = problem(gw.alerts(&webhook(vec![nameless])).await, 400).await;
    assert_eq!(body["detail"], "$.alerts[0].labels: missing required label \"alertname\"");
    assert_eq!(gw.metric(r#"tidegate_http_rejections_total{reason="invalid"}"#).await, 1.0);
}

#[tokio::test]
async fn malformed_json_is_400_naming_the_path_and_reason() {
    let gw = start().await;
    let resp =
        gw.post_raw(PROMETHEUS, Some("application/json"), br#"{"alerts":[{"labels":{"alertname":5}}]}"#.to_vec()).await;
    let body = problem(resp, 400).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("$.alerts[0].labels.alertname: invalid type: integer `5`, expected a string"),
        "{detail}"
    );
    let resp = gw.post_raw(PROMETHEUS, Some("application/json"), b"{\"alerts\": [".to_vec()).await;
    let body = problem(resp, 400).await;
    assert!(body["detail"].as_str().unwrap().contains("EOF"), "{body}");
}

#[tokio::test]
async fn empty_alerts_is_400() {
    let gw = start().await;
    let body = problem(gw.alerts(&webhook(vec![])).await, 400).await;
    assert_eq!(body["detail"], "alerts: must contain at least one alert");
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_415() {
    let gw = start().await;
    let payload = serde_json::to_vec(&webhook(vec![alert("A", "shop", "p0")])).unwrap();
    let body = problem(gw.post_raw(PROMETHEUS, Some("text/plain"), payload.clone()).await, 415).await;
    assert_eq!(body["detail"], "Content-Type must be application/json, got \"text/plain\"");
    problem(gw.post_raw(PROMETHEUS, None, payload.clone()).await, 415).await;
    // Parameters and +json suffixes are JSON too.
    assert_eq!(gw.post_raw(PROMETHEUS, Some("application/json; charset=utf-8"), payload).await.status(), 201);
}

#[tokio::test]
async fn body_one_byte_over_the_limit_is_413_and_at_the_limit_is_accepted() {
    let limit = 4096;
    let gw = start_with(|c| c.http.body_limit = limit).await;
    let mut payload = serde_json::to_vec(&webhook(vec![alert("A", "shop", "p0")])).unwrap();
    payload.resize(limit, b' ');
    assert_eq!(gw.post_raw(PROMETHEUS, Some("application/json"), payload.clone()).await.status(), 201);
    payload.push(b' ');
    let body = problem(gw.post_raw(PROMETHEUS, Some("application/json"), payload).await, 413).await;
    assert_eq!(body["detail"], "request body exceeds the limit of 4096 bytes");
}

#[tokio::test]
async fn oversized_chunked_body_without_content_length_is_413() {
    let gw = start_with(|c| c.http.body_limit = 4096).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..10).map(|_| Ok(vec![b' '; 1000])).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let resp = gw
        .client
        .post(format!("{}{PROMETHEUS}", gw.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    problem(resp, 413).await;
}

#[tokio::test]
async fn full_store_answers_503_with_retry_after_and_records_nothing() {
    let mut gw = start_with(|c| c.memory.max_entries = 1).await;
    assert_eq!(gw.alerts(&webhook(vec![alert("A", "shop", "p0")])).await.status(), 201);
    let resp = gw.alerts(&webhook(vec![alert("B", "shop", "p1")])).await;
    assert_eq!(resp.headers()["retry-after"], "5");
    let body = problem(resp, 503).await;
    assert!(body["detail"].as_str().unwrap().contains("full"), "{body}");
    assert_eq!(gw.metric(r#"tidegate_state_errors_total{reason="full"}"#).await, 1.0);
    // The open incident is still deduplicated.
    assert_eq!(gw.alerts(&webhook(vec![alert("A", "shop", "p0")])).await.status(), 202);
    gw.stop().await;
    assert_eq!(gw.manifests().len(), 1);
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405() {
    let gw = start().await;
    problem(gw.get("/api/v1/nope").await, 404).await;
    problem(gw.get(PROMETHEUS).await, 405).await;
}

#[tokio::test]
async fn warning_event_becomes_a_request_for_its_involved_object() {
    let mut gw = start().await;
    let resp = gw.post_json(EVENTS, &event("Warning", "BackOff", "web-0")).await;
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(gw.post_json(EVENTS, &event("Warning", "BackOff", "web-0")).await.status(), 202);
    gw.stop().await;
    let rr = gw.read("shop", body["name"].as_str().unwrap());
    assert_eq!(rr.spec.signal_name, "BackOff");
    assert_eq!(rr.spec.signal_type, tidegate::signal::SignalType::KUBERNETES_EVENT);
    assert_eq!(rr.spec.target_resource.name, "web-0");
    assert_eq!(rr.spec.signal_source, "kubelet");
    assert_eq!(occurrences(&rr), 2);
}

#[tokio::test]
async fn normal_event_is_400_with_the_reason() {
    let gw = start().await;
    let body = problem(gw.post_json(EVENTS, &event("Normal", "Pulled", "web-0")).await, 400).await;
    assert_eq!(body["detail"], "type: only Warning events become signals, got \"Normal\"");
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let gw = start().await;
    let resp = gw.client.get(format!("{}/healthz", gw.url)).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let resp = gw.post_raw(PROMETHEUS, Some("text/plain"), vec![]).await;
    let generated = resp.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
}

#[tokio::test]
async fn probes_and_metrics_answer() {
    let gw = start().await;
    assert_eq!(gw.get("/healthz").await.status(), 200);
    assert_eq!(gw.get("/readyz").await.status(), 200);
    gw.alerts(&webhook(vec![alert("A", "shop", "p0")])).await;
    gw.alerts(&webhook(vec![alert("A", "shop", "p0")])).await;
    let text = gw.get("/metrics").await.text().await.unwrap();
    for series in [
        r#"tidegate_signals_received_total{source="prometheus-alert",outcome="created"} 1"#,
        r#"tidegate_signals_received_total{source="prometheus-alert",outcome="duplicate"} 1"#,
        "tidegate_remediation_requests_created_total 1",
        "tidegate_state_entries 1",
        r#"tidegate_http_request_duration_seconds_count{method="POST",route="/api/v1/signals/prometheus",status="201"} 1"#,
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
}

#[tokio::test]
async fn shutdown_turns_readiness_503_at_once_while_still_serving() {
    let gw = start_with(|c| c.http.shutdown_delay = Duration::from_secs(30)).await;
    gw.running().shutdown();
    eventually("readiness to turn 503", || async { gw.get("/readyz").await.status() == 503 }).await;
    // Still serving during the delay, so load balancers can withdraw the endpoint.
    assert_eq!(gw.alerts(&webhook(vec![alert("A", "shop", "p0")])).await.status(), 201);
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    let mut gw = start().await;
    let payload = serde_json::to_vec(&webhook(vec![alert("A", "shop", "p0")])).unwrap();
    let addr = gw.running().addr;
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {PROMETHEUS} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        payload.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&payload[..10]).await.unwrap();
    // Wait until the server has the request in hand before shutting down.
    let in_flight = gw.running().metrics.http_in_flight.clone();
    eventually("the request to be in flight", || {
        let n = in_flight.get();
        async move { n == 1 }
    })
    .await;
    gw.running().shutdown();
    conn.write_all(&payload[10..]).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    gw.stop().await;
    assert_eq!(gw.manifests().len(), 1);
}
