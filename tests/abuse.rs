//! Hostile clients over real HTTP: each abuse ends in a precise refusal (an RFC 7807
//! problem and a metric, 4xx only for what can never be accepted, 503 with
//! `Retry-After` for what may succeed later) or in a bounded cost. What each costs
//! in memory is measured by `cargo bench --bench abuse` (docs/abuse.md).

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{alert, problem, start_with, webhook, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PROMETHEUS: &str = "/api/v1/signals/prometheus";
/// Longer than any limit these tests set, so a test that should have been answered
/// fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(10);

/// `tidegate_http_rejections_total{reason}`, as `/metrics` shows it.
async fn rejections(gw: &Gateway, reason: &str) -> u64 {
    let text = gw.get("/metrics").await.text().await.unwrap();
    let series = format!("tidegate_http_rejections_total{{reason=\"{reason}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(series.as_str())).map_or(0, |n| n.parse().unwrap())
}

/// Everything the server writes until it closes the connection.
async fn until_closed(conn: &mut TcpStream) -> String {
    let mut response = Vec::new();
    let read = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&response).into_owned()
}

/// Writes `bytes` one at a time, `every` apart, until the server stops reading.
fn trickle(mut writer: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        for b in bytes {
            tick.tick().await;
            if writer.write_all(&[b]).await.is_err() {
                return;
            }
        }
    });
}

fn head(content_length: usize) -> String {
    format!("POST {PROMETHEUS} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n\r\n")
}

#[tokio::test]
async fn a_client_trickling_its_head_is_disconnected_at_the_header_read_timeout() {
    let gw = start_with(|c| c.http.header_read_timeout = Duration::from_millis(300)).await;
    let conn = TcpStream::connect(gw.running().addr).await.unwrap();
    let (mut reader, writer) = conn.into_split();
    let started = Instant::now();
    // One byte every 20 ms: the head would take 5 s.
    trickle(writer, head(2).into_bytes().into_iter().chain(*b"{}").collect(), Duration::from_millis(20));
    let mut response = Vec::new();
    let read = tokio::time::timeout(PATIENCE, reader.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the server kept a trickling client");
    assert!(started.elapsed() >= Duration::from_millis(300), "closed after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    assert_eq!(rejections(&gw, "header_timeout").await, 1);
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_header_read_timeout() {
    let gw = start_with(|c| c.http.header_read_timeout = Duration::from_millis(300)).await;
    let mut conn = TcpStream::connect(gw.running().addr).await.unwrap();
    assert_eq!(until_closed(&mut conn).await, "");
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_when_no_next_request_comes() {
    let gw = start_with(|c| c.http.header_read_timeout = Duration::from_millis(300)).await;
    let mut conn = TcpStream::connect(gw.running().addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let response = until_closed(&mut conn).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test]
async fn a_head_over_max_header_bytes_is_answered_431() {
    let gw = start_with(|c| c.http.max_header_bytes = 4096).await;
    let mut conn = TcpStream::connect(gw.running().addr).await.unwrap();
    let padding = "a".repeat(8192);
    conn.write_all(format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-padding: {padding}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let response = until_closed(&mut conn).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert_eq!(rejections(&gw, "header_too_large").await, 1);
}

#[tokio::test]
async fn a_trickled_body_is_answered_503_with_retry_after_and_frees_its_budget() {
    let gw = start_with(|c| c.http.body_read_timeout = Duration::from_millis(300)).await;
    let body = serde_json::to_vec(&webhook(vec![alert("A", "shop", "p0")])).unwrap();
    let mut conn = TcpStream::connect(gw.running().addr).await.unwrap();
    conn.write_all(head(body.len()).as_bytes()).await.unwrap();
    conn.write_all(&body[..10]).await.unwrap();
    let (mut reader, writer) = conn.into_split();
    trickle(writer, body[10..].to_vec(), Duration::from_millis(50));
    let mut response = Vec::new();
    let read = tokio::time::timeout(PATIENCE, reader.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the server kept a trickling body");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.to_ascii_lowercase().contains("\r\nretry-after: 5\r\n"), "{response}");
    assert!(response.contains("application/problem+json"), "{response}");
    assert!(response.contains("/problems/body-timeout"), "{response}");
    assert_eq!(rejections(&gw, "body_timeout").await, 1);
    assert_eq!(gw.running().metrics.body_bytes_in_flight.get(), 0, "the reservation was given back");
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_until_one_closes() {
    let gw = start_with(|c| c.http.max_connections = 2).await;
    let addr = gw.running().addr;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(conn);
    }
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 12];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read_exact(&mut buf)).await;
    assert!(early.is_err(), "a third connection was served while two were open");
    drop(held.pop());
    let response = until_closed(&mut third).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test]
async fn new_incidents_beyond_memory_max_entries_are_refused_503_and_not_stored() {
    let gw = start_with(|c| c.memory.max_entries = 100).await;
    let alerts = |from: usize, n: usize| (from..from + n).map(|i| alert(&format!("A{i}"), "shop", "p0")).collect();
    assert_eq!(gw.alerts(&webhook(alerts(0, 100))).await.status(), 207);
    let refused = gw.alerts(&webhook(alerts(100, 1))).await;
    assert_eq!(refused.headers()["retry-after"], "5");
    let body = problem(refused, 503).await;
    assert!(body["detail"].as_str().unwrap().contains("100 open incidents"), "{body}");
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("tidegate_state_entries 100\n"), "{metrics}");
    assert!(metrics.contains("tidegate_state_errors_total{reason=\"full\"} 1\n"), "{metrics}");
    // An open incident repeating is still taken.
    assert_eq!(gw.alerts(&webhook(alerts(0, 1))).await.status(), 202);
}

#[tokio::test]
async fn label_values_of_a_mebibyte_cost_at_most_a_kibibyte_each_in_the_request() {
    let mut gw = start_with(|_| {}).await;
    let huge = "x".repeat(1 << 20);
    let mut a = alert(&format!("Huge{huge}"), "shop", "p0");
    a["labels"]["team"] = json!(huge);
    a["labels"]["severity"] = json!(huge);
    a["annotations"]["description"] = json!(huge);
    let body: Value =
        gw.alerts(&json!({"externalURL": huge, "status": "firing", "alerts": [a]})).await.json().await.unwrap();
    assert_eq!(body["status"], "created", "{body}");
    gw.stop().await;
    let manifest = gw.dir.path().join("shop").join(format!("{}.yaml", body["name"].as_str().unwrap()));
    // Seven values of 1 MiB (the name, severity and source, three labels and an
    // annotation), a KiB each in the request, and an ordinary request's kilobyte.
    let size = std::fs::metadata(manifest).unwrap().len();
    assert!(size < 10 * 1024, "a {size}-byte manifest");
    let rr = gw.only_request();
    for value in [&rr.spec.signal_name, &rr.spec.severity, &rr.spec.signal_source, &rr.spec.signal_labels["team"]] {
        assert_eq!(value.len(), tidegate::remediation::MAX_VALUE_BYTES);
    }
}

#[tokio::test]
async fn an_alert_with_ten_thousand_labels_is_refused_400_and_its_batch_mates_are_taken() {
    let gw = start_with(|_| {}).await;
    let mut crowded = alert("Crowded", "shop", "p0");
    for i in 0..10_000 {
        crowded["labels"][format!("l{i}")] = json!("v");
    }
    let resp = gw.alerts(&webhook(vec![crowded, alert("Fine", "shop", "p1")])).await;
    assert_eq!(resp.status(), 207);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["results"][0]["status"], "failed");
    assert_eq!(body["results"][0]["error"]["reason"], "over_limit");
    let detail = body["results"][0]["error"]["detail"].as_str().unwrap();
    assert!(detail.contains("10005 labels and annotations, more than ingest.max_labels (256)"), "{detail}");
    assert_eq!(body["results"][1]["status"], "created");
    assert_eq!(rejections(&gw, "over_limit").await, 1);
}

#[tokio::test]
async fn a_namespace_that_is_no_kubernetes_name_is_refused_400_and_writes_nothing() {
    let gw = start_with(|_| {}).await;
    for namespace in ["../../escape", "/etc", "Shop", &"n".repeat(64)] {
        let resp = gw.alerts(&webhook(vec![alert("A", namespace, "p0")])).await;
        let body = problem(resp, 400).await;
        assert!(body["detail"].as_str().unwrap().starts_with("namespace: "), "{body}");
    }
    assert!(gw.manifests().is_empty());
    assert_eq!(rejections(&gw, "invalid_identity").await, 4);
}

/// 100,000 nested arrays: as deep as a 200 kB body goes.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn deeply_nested_json_that_is_read_is_refused_400_at_the_parser_depth_limit() {
    let gw = start_with(|_| {}).await;
    let event = format!(
        r#"{{"specversion":"1.0","id":"1","source":"s","type":"falco.rule.output.v1","data":{}}}"#,
        nested(100_000)
    );
    let resp = gw.post_raw("/api/v1/signals/cloudevents", Some("application/cloudevents+json"), event.into()).await;
    let body = problem(resp, 400).await;
    assert!(body["detail"].as_str().unwrap().contains("recursion limit exceeded"), "{body}");
    assert_eq!(rejections(&gw, "malformed").await, 1);
}

#[tokio::test]
async fn deeply_nested_json_in_an_ignored_field_is_skipped_without_recursing() {
    let gw = start_with(|_| {}).await;
    let mut a = alert("Deep", "shop", "p0");
    a["extra"] = json!("NESTED");
    let body = serde_json::to_string(&webhook(vec![a])).unwrap().replace(r#""NESTED""#, &nested(100_000));
    let resp = gw.post_raw(PROMETHEUS, Some("application/json"), body.into()).await;
    assert_eq!(resp.status(), 201);
}
