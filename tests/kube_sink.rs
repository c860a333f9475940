//! `--sink kube`: tidegate over real HTTP, through the real `kube::Client`, into an
//! in-process fake Kubernetes API server with real REST semantics.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::kube_api::{FakeApi, Fault, Verb};
use support::redis::{RedisServer, ServerOptions};
use support::{alert, eventually, start_kube, start_kube_at, unique_prefix, webhook, Gateway};
use tidegate::config::{Config, StateBackend};
use tidegate::sink::{Lookup, RequestRef};

async fn api() -> FakeApi {
    let api = FakeApi::start().await;
    api.insert_namespace("shop", &[("environment", "prod")]);
    api
}

fn count(object: &Value) -> u64 {
    object["status"]["deduplication"]["occurrenceCount"].as_u64().unwrap_or(0)
}

async fn post(gw: &Gateway, pod: &str) -> (u16, Value) {
    let resp = gw.alerts(&webhook(vec![alert("HighMemory", "shop", pod)])).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn at(body: &Value) -> RequestRef {
    RequestRef { namespace: body["namespace"].as_str().unwrap().into(), name: body["name"].as_str().unwrap().into() }
}

/// Waits until this gateway's watch-fed cache sees the request as `expected`.
async fn cached(gw: &Gateway, at: &RequestRef, expected: Lookup) {
    let sink = gw.running().sink.clone();
    eventually("the watch cache to catch up", || {
        let seen = sink.lookup(at);
        async move { seen == expected }
    })
    .await;
}

#[tokio::test]
async fn new_alert_creates_a_remediation_request_with_status_and_labels() {
    let api = api().await;
    let mut gw = start_kube(&api, |_| {}).await;
    let (status, body) = post(&gw, "web-0").await;
    assert_eq!(status, 201);
    gw.stop().await;
    let rr = api.object("shop", body["name"].as_str().unwrap()).expect("created");
    assert_eq!(rr["spec"]["signalName"], "HighMemory");
    assert_eq!(rr["spec"]["environment"], "production", "from the namespace's environment label");
    assert_eq!(rr["spec"]["priority"], "P0");
    assert_eq!(count(&rr), 1, "status is written through the subresource after create");
    let labels = &rr["metadata"]["labels"];
    let fingerprint = body["fingerprint"].as_str().unwrap();
    let fp = tidegate::signal::Fingerprint::from_bytes(hex::decode(fingerprint).unwrap().try_into().unwrap());
    assert_eq!(labels["tidegate.dev/fingerprint"], fp.label_value().as_str());
    assert_eq!(labels["tidegate.dev/priority"], "P0");
}

#[tokio::test]
async fn duplicates_update_the_status_count_and_never_the_spec() {
    let api = api().await;
    let mut gw = start_kube(&api, |_| {}).await;
    let (_, body) = post(&gw, "web-0").await;
    for _ in 0..4 {
        assert_eq!(post(&gw, "web-0").await.0, 202);
    }
    gw.stop().await;
    let objects = api.objects("shop");
    assert_eq!(objects.len(), 1);
    assert_eq!(count(&objects[0]), 5);
    assert_eq!(objects[0]["metadata"]["name"], body["name"]);
}

#[tokio::test]
async fn a_coalesced_duplicate_costs_no_api_call() {
    let api = api().await;
    let mut gw = start_kube(&api, |c| c.dedup.status_interval = Duration::from_secs(300)).await;
    post(&gw, "web-0").await;
    api.reset_calls();
    for _ in 0..100 {
        assert_eq!(post(&gw, "web-0").await.0, 202);
    }
    let during: usize =
        [Verb::Get, Verb::List, Verb::Create, Verb::Update, Verb::Patch].iter().map(|v| api.calls(*v)).sum();
    assert_eq!(during, 0, "100 duplicates inside one status interval: zero API calls");
    gw.stop().await;
    assert_eq!(api.calls(Verb::Update), 1, "one status write at shutdown carries all 100");
    assert_eq!(api.calls(Verb::Get), 0, "the read came from the watch cache");
    assert_eq!(count(&api.objects("shop")[0]), 101);
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_sharing_redis_make_one_request_for_sixty_alerts() {
    let api = api().await;
    let prefix = unique_prefix();
    let url = support::redis::shared().url();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let (url, prefix) = (url.clone(), prefix.clone());
        replicas.push(
            start_kube(&api, move |c| {
                c.state = StateBackend::Redis(url.parse().unwrap());
                c.redis.prefix = prefix;
            })
            .await,
        );
    }
    let sends = (0..60).map(|i| post(&replicas[i % 3], "web-0"));
    let results = futures::future::join_all(sends).await;
    assert_eq!(results.iter().filter(|(s, _)| *s == 201).count(), 1);
    assert_eq!(results.iter().filter(|(s, _)| *s == 202).count(), 59);
    for gw in &mut replicas {
        gw.stop().await;
    }
    let objects = api.objects("shop");
    assert_eq!(objects.len(), 1);
    assert_eq!(count(&objects[0]), 60);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_losing_everything_mid_incident_still_makes_one_request() {
    let api = api().await;
    let redis = RedisServer::start(ServerOptions::default());
    let url = redis.url();
    let mut gw = start_kube(&api, move |c| {
        c.state = StateBackend::Redis(url.parse().unwrap());
        c.redis.prefix = unique_prefix();
    })
    .await;
    let (_, first) = post(&gw, "web-0").await;
    assert_eq!(post(&gw, "web-0").await.0, 202);
    cached(&gw, &at(&first), Lookup::Open).await;
    // Redis restarts empty (as after a failover or eviction), mid-incident.
    redis.kill();
    redis.restart();
    eventually("the gateway to reach Redis again", || async { gw.get("/readyz").await.status() == 200 }).await;
    let (status, again) = post(&gw, "web-0").await;
    assert_eq!(status, 202, "the open request is the authority: {again}");
    assert_eq!(again["name"], first["name"]);
    assert_eq!(post(&gw, "web-0").await.0, 202, "and the state store learnt it again");
    gw.stop().await;
    let objects = api.objects("shop");
    assert_eq!(objects.len(), 1);
    assert_eq!(count(&objects[0]), 4);
}

#[tokio::test]
async fn a_terminal_phase_lets_the_next_occurrence_create_a_new_request() {
    let api = api().await;
    let mut gw = start_kube(&api, |_| {}).await;
    let (_, first) = post(&gw, "web-0").await;
    api.set_phase("shop", first["name"].as_str().unwrap(), "Completed");
    cached(&gw, &at(&first), Lookup::Terminal).await;
    gw.clock.advance(Duration::from_secs(1));
    let (status, second) = post(&gw, "web-0").await;
    assert_eq!(status, 201);
    assert_ne!(second["name"], first["name"]);
    assert_eq!(post(&gw, "web-0").await.0, 202, "the new request is the open one now");
    gw.stop().await;
    assert_eq!(api.objects("shop").len(), 2);
}

#[tokio::test]
async fn a_request_deleted_by_hand_is_not_believed_to_exist() {
    let api = api().await;
    let mut gw = start_kube(&api, |_| {}).await;
    let (_, first) = post(&gw, "web-0").await;
    cached(&gw, &at(&first), Lookup::Open).await;
    api.delete("shop", first["name"].as_str().unwrap());
    cached(&gw, &at(&first), Lookup::Missing).await;
    gw.clock.advance(Duration::from_secs(31));
    let (status, second) = post(&gw, "web-0").await;
    assert_eq!(status, 201);
    assert_ne!(second["name"], first["name"]);
    gw.stop().await;
    assert_eq!(api.objects("shop").len(), 1);
}

fn fast_faults(c: &mut Config) {
    c.kube.call_timeout = Duration::from_millis(200);
    c.kube.deadline = Duration::from_millis(400);
    c.kube.breaker_failures = 2;
    c.kube.breaker_cooldown = Duration::from_millis(300);
}

#[tokio::test]
async fn api_server_down_is_503_and_not_ready_then_recovers() {
    let api = api().await;
    let gw = start_kube(&api, fast_faults).await;
    api.set_down(true);
    for pod in ["web-0", "web-1"] {
        let resp = gw.alerts(&webhook(vec![alert("HighMemory", "shop", pod)])).await;
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().contains_key("retry-after"));
    }
    assert_eq!(gw.get("/readyz").await.status(), 503, "the circuit breaker is open");
    api.set_down(false);
    eventually("readiness to return", || async { gw.get("/readyz").await.status() == 200 }).await;
    // The refused alerts were recorded as open, and their requests get made.
    let (status, _) = post(&gw, "web-2").await;
    assert_eq!(status, 201);
    eventually("the requests refused earlier to be created", || async { api.objects("shop").len() == 3 }).await;
    let text = gw.get("/metrics").await.text().await.unwrap();
    assert!(text.contains(r#"tidegate_kube_api_calls_total{verb="create",outcome="server_error"}"#), "{text}");
}

#[tokio::test]
async fn server_errors_and_throttling_are_retried_within_the_deadline() {
    let api = api().await;
    let gw = start_kube(&api, |_| {}).await;
    api.fail_next_matching(1, Fault::InternalError, Some(Verb::Create), "");
    api.fail_next_matching(1, Fault::TooManyRequests, Some(Verb::Create), "");
    assert_eq!(post(&gw, "web-0").await.0, 201);
    assert_eq!(gw.metric(r#"tidegate_kube_api_calls_total{verb="create",outcome="ok"}"#).await, 1.0);
    assert_eq!(gw.metric(r#"tidegate_kube_api_calls_total{verb="create",outcome="server_error"}"#).await, 1.0);
    assert_eq!(gw.metric(r#"tidegate_kube_api_calls_total{verb="create",outcome="throttled"}"#).await, 1.0);
}

#[tokio::test]
async fn a_slow_api_server_times_out_into_503() {
    let api = api().await;
    let gw = start_kube(&api, fast_faults).await;
    api.fail_next(10, Fault::Delay(Duration::from_secs(2)));
    let (status, _) = post(&gw, "web-0").await;
    assert_eq!(status, 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_racing_to_create_converge_on_one_request() {
    // Separate state stores: both replicas believe the incident is new, and the API
    // server's 409 AlreadyExists settles it.
    let api = api().await;
    let clock = tidegate::clock::Clock::manual(std::time::SystemTime::now());
    let mut a = start_kube_at(&api, clock.clone(), |_| {}).await;
    let mut b = start_kube_at(&api, clock, |_| {}).await;
    let (ra, rb) = tokio::join!(post(&a, "web-0"), post(&b, "web-0"));
    let mut codes = [ra.0, rb.0];
    codes.sort();
    assert_eq!(codes, [201, 202], "one creates, the other finds it exists: {ra:?} {rb:?}");
    a.stop().await;
    b.stop().await;
    assert_eq!(api.objects("shop").len(), 1);
}
