//! Every alert a sender delivers is accounted for: storm-sized bodies are read, a
//! refusal is one the sender retries, and the manifest directory remembers open
//! incidents across restarts, lost Redis entries and changes made by hand.

mod support;

use std::time::Duration;

use redis::Commands;
use serde_json::Value;
use support::notification::crash_looping;
use support::redis::shared;
use support::{alert, eventually, occurrences, start_with, unique_prefix, webhook, Gateway};
use tidegate::config::{Config, StateBackend};
use tidegate::sink::{Lookup, RequestRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PROMETHEUS: &str = "/api/v1/signals/prometheus";

async fn post(gw: &Gateway, body: &Value) -> (u16, Value) {
    let resp = gw.alerts(body).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn at(body: &Value) -> RequestRef {
    RequestRef { namespace: body["namespace"].as_str().unwrap().into(), name: body["name"].as_str().unwrap().into() }
}

#[tokio::test]
async fn the_default_body_limit_takes_a_10000_alert_notification_twice_over() {
    let notification = serde_json::to_vec(&crash_looping("payments", 10_000)).unwrap();
    let limit = Config::default().http.body_limit;
    println!(
        "a 10,000-alert KubePodCrashLooping notification is {} bytes; the default limit is {limit}",
        notification.len()
    );
    assert!(2 * notification.len() <= limit, "{} bytes, twice over, must fit {limit}", notification.len());

    let mut gw = start_with(|_| {}).await;
    let resp = gw.post_raw(PROMETHEUS, Some("application/json"), notification).await;
    assert_eq!(resp.status(), 207);
    let body: Value = resp.json().await.unwrap();
    let summary = &body["summary"];
    assert_eq!((summary["created"].as_u64(), summary["aggregated"].as_u64()), (Some(5), Some(9_995)));
    gw.stop().await;
    // Five pods before the pattern threshold, and one aggregated request for the rest.
    let requests: Vec<_> = gw
        .manifests()
        .iter()
        .map(|p| {
            serde_norway::from_str::<tidegate::remediation::RemediationRequest>(&std::fs::read_to_string(p).unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(requests.len(), 6);
    let storm = requests.iter().find_map(|r| r.status.as_ref()?.storm.clone()).expect("an aggregated request");
    assert_eq!(storm.alert_count, 9_995);
}

/// Opens a request whose `Content-Length` is `len` and sends only its first byte,
/// so that the gateway holds `len` bytes of its body budget until the rest comes.
async fn hold_a_body(gw: &Gateway, len: usize) -> TcpStream {
    let addr = gw.url.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {PROMETHEUS} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

async fn body_bytes_in_flight(gw: &Gateway) -> f64 {
    gw.metric("tidegate_http_body_bytes_in_flight").await
}

#[tokio::test]
async fn a_body_with_no_room_in_the_budget_waits_then_gets_a_503_it_can_retry() {
    let gw = start_with(|c| {
        c.http.body_limit = 64 * 1024;
        c.http.body_budget = Some(64 * 1024);
        c.http.body_budget_wait = Duration::from_millis(300);
    })
    .await;
    let held = hold_a_body(&gw, 64 * 1024).await;
    eventually("the held body to be reserved", || async { body_bytes_in_flight(&gw).await == 64.0 * 1024.0 }).await;

    let resp = gw.alerts(&webhook(vec![alert("A", "shop", "p0")])).await;
    assert_eq!(resp.status(), 503, "no room yet is never a 4xx");
    assert_eq!(resp.headers()["retry-after"], "5");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["type"], "https://tidegate.dev/problems/body-budget");
    assert_eq!(gw.metric(r#"tidegate_http_rejections_total{reason="body_budget"}"#).await, 1.0);

    drop(held);
    eventually("the held body to be given back", || async { body_bytes_in_flight(&gw).await == 0.0 }).await;
    assert_eq!(gw.alerts(&webhook(vec![alert("A", "shop", "p0")])).await.status(), 201, "the retry is read");
}

#[tokio::test]
async fn a_body_that_waits_for_room_is_read_once_the_budget_frees() {
    let gw = start_with(|c| {
        c.http.body_limit = 64 * 1024;
        c.http.body_budget = Some(64 * 1024);
        c.http.body_budget_wait = Duration::from_secs(30);
    })
    .await;
    let body = serde_json::to_vec(&webhook(vec![alert("A", "shop", "p0")])).unwrap();
    let filler = 64 * 1024 - body.len();
    let mut held = hold_a_body(&gw, 64 * 1024).await;
    eventually("the held body to be reserved", || async { body_bytes_in_flight(&gw).await == 64.0 * 1024.0 }).await;

    let waiting = tokio::spawn({
        let (client, url) = (gw.client.clone(), gw.url.clone());
        async move {
            let send = client.post(format!("{url}{PROMETHEUS}")).header("content-type", "application/json");
            send.body(serde_json::to_vec(&webhook(vec![alert("B", "shop", "p1")])).unwrap()).send().await.unwrap()
        }
    });
    eventually("the second request to wait", || async { gw.metric("tidegate_http_requests_in_flight").await == 2.0 })
        .await;
    assert!(!waiting.is_finished());
    // The first body completes: it is answered, and its bytes go back to the budget.
    held.write_all(&body[1..]).await.unwrap();
    held.write_all(&vec![b' '; filler]).await.unwrap();
    let mut answer = [0u8; 12];
    held.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 201");
    assert_eq!(waiting.await.unwrap().status(), 201);
}

#[tokio::test]
async fn a_repeat_after_a_restart_is_counted_on_the_open_request() {
    let mut gw = start_with(|_| {}).await;
    let (status, first) = post(&gw, &webhook(vec![alert("HighMemory", "shop", "web-0")])).await;
    assert_eq!(status, 201);
    post(&gw, &webhook(vec![alert("HighMemory", "shop", "web-0")])).await;
    gw.restart().await;
    gw.clock.advance(Duration::from_secs(60));

    let (status, again) = post(&gw, &webhook(vec![alert("HighMemory", "shop", "web-0")])).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!((&again["name"], again["occurrenceCount"].as_u64()), (&first["name"], Some(3)));
    gw.stop().await;
    assert_eq!(gw.manifests().len(), 1);
    assert_eq!(occurrences(&gw.only_request()), 3, "the count goes on from the file");
}

#[tokio::test]
async fn an_incident_last_seen_beyond_the_window_is_new_after_a_restart() {
    let mut gw = start_with(|c| c.dedup.window = Duration::from_secs(300)).await;
    assert_eq!(post(&gw, &webhook(vec![alert("HighMemory", "shop", "web-0")])).await.0, 201);
    gw.restart().await;
    gw.clock.advance(Duration::from_secs(301));
    assert_eq!(post(&gw, &webhook(vec![alert("HighMemory", "shop", "web-0")])).await.0, 201);
    gw.stop().await;
    assert_eq!(gw.manifests().len(), 2);
}

#[tokio::test]
async fn a_request_finished_by_hand_lets_the_next_occurrence_open_a_new_one() {
    let mut gw = start_with(|_| {}).await;
    let (_, first) = post(&gw, &webhook(vec![alert("HighMemory", "shop", "web-0")])).await;
    let path = gw.dir.path().join("shop").join(format!("{}.yaml", first["name"].as_str().unwrap()));
    // What a controller does: write the phase, here straight into the file.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("status:\n", "status:\n  phase: Completed\n")).unwrap();
    gw.sink_sees(&at(&first), Lookup::Terminal).await;

    gw.clock.advance(Duration::from_secs(5));
    let (status, next) = post(&gw, &webhook(vec![alert("HighMemory", "shop", "web-0")])).await;
    assert_eq!(status, 201);
    assert_ne!(next["name"], first["name"]);
    gw.stop().await;
    assert_eq!(gw.manifests().len(), 2);
}

#[tokio::test]
async fn a_request_removed_by_hand_is_known_gone_at_once() {
    let mut gw = start_with(|_| {}).await;
    let (_, first) = post(&gw, &webhook(vec![alert("HighMemory", "shop", "web-0")])).await;
    let path = gw.dir.path().join("shop").join(format!("{}.yaml", first["name"].as_str().unwrap()));
    std::fs::remove_file(&path).unwrap();
    gw.sink_sees(&at(&first), Lookup::Deleted).await;

    gw.clock.advance(Duration::from_secs(1));
    let (status, next) = post(&gw, &webhook(vec![alert("HighMemory", "shop", "web-0")])).await;
    assert_eq!(status, 201, "a repeat is not counted on a request that no longer exists");
    gw.stop().await;
    assert_eq!(gw.manifests().len(), 1);
    assert_eq!(gw.read("shop", next["name"].as_str().unwrap()).metadata.name, next["name"].as_str().map(String::from));
}

#[tokio::test]
async fn a_request_finished_before_a_restart_is_not_counted_on_after_it() {
    let mut gw = start_with(|_| {}).await;
    let (_, first) = post(&gw, &webhook(vec![alert("HighMemory", "shop", "web-0")])).await;
    gw.stop().await;
    let path = gw.dir.path().join("shop").join(format!("{}.yaml", first["name"].as_str().unwrap()));
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("status:\n", "status:\n  phase: Completed\n")).unwrap();
    gw.restart().await;
    gw.clock.advance(Duration::from_secs(1));
    assert_eq!(post(&gw, &webhook(vec![alert("HighMemory", "shop", "web-0")])).await.0, 201);
}

#[tokio::test]
async fn after_a_restart_a_storm_keeps_folding_into_its_aggregated_request() {
    let mut gw = start_with(|_| {}).await;
    let pods = |range: std::ops::Range<u32>| {
        webhook(range.map(|n| alert("KubePodCrashLooping", "shop", &format!("web-{n}"))).collect())
    };
    let (_, before) = post(&gw, &pods(0..8)).await;
    assert_eq!(before["summary"]["aggregated"], 3, "five pods at the threshold, then a storm: {before}");
    let storm_name = before["results"][7]["name"].clone();
    gw.restart().await;
    gw.clock.advance(Duration::from_secs(10));

    // Folded pods again, and pods the storm had not seen: enough that the store,
    // which forgot the storm, opens a window of its own halfway through the batch.
    let (status, after) = post(&gw, &pods(5..14)).await;
    assert_eq!(status, 207);
    assert_eq!(after["summary"]["aggregated"], 9, "{after}");
    assert!(after["results"].as_array().unwrap().iter().all(|r| r["name"] == storm_name), "{after}");
    let counts = after["results"].as_array().unwrap().iter().map(|r| r["occurrenceCount"].as_u64().unwrap());
    assert_eq!(counts.max(), Some(12), "the window's count goes on: 3 before, 9 after");
    gw.stop().await;
    assert_eq!(gw.manifests().len(), 6, "no second storm request and no request per pod");
    let storm = gw.read("shop", storm_name.as_str().unwrap()).status.unwrap().storm.unwrap();
    assert_eq!(storm.alert_count, 12);
}

#[tokio::test]
async fn with_redis_state_an_entry_redis_lost_is_counted_on_the_request_on_disk() {
    let prefix = unique_prefix();
    let url = shared().url();
    let mut gw = start_with(|c| {
        c.state = StateBackend::Redis(url.parse().unwrap());
        c.redis.prefix = prefix.clone();
    })
    .await;
    let (_, first) = post(&gw, &webhook(vec![alert("HighMemory", "shop", "web-0")])).await;
    // Redis loses everything of ours (an eviction, a failover to an empty replica).
    let mut conn = shared().connection();
    let keys: Vec<String> = conn.scan_match(format!("{prefix}*")).unwrap().map(|k| k.unwrap()).collect();
    assert!(!keys.is_empty());
    let () = conn.del(&keys).unwrap();

    let (status, again) = post(&gw, &webhook(vec![alert("HighMemory", "shop", "web-0")])).await;
    assert_eq!(status, 202);
    assert_eq!((&again["name"], again["occurrenceCount"].as_u64()), (&first["name"], Some(2)));
    gw.stop().await;
    assert_eq!(occurrences(&gw.only_request()), 2);
}
