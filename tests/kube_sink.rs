//! `--sink kube` against a real kube-apiserver and etcd: tidegate over real HTTP,
//! through the real `kube::Client`, as the service account `deploy/` defines, with
//! faults injected by a proxy in front of the API server (`testkit/src/kube/`).
//! Every test has namespaces and a proxy of its own; they share one API server.

mod support;

use std::time::Duration;

use axum::http::Method;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use support::kube::proxy::{Fault, Matching};
use support::kube::Kube;
use support::redis::{RedisServer, ServerOptions};
use support::{alert, eventually, start_kube, start_kube_as, unique_prefix, webhook, Gateway};
use tidegate::config::{Config, StateBackend};
use tidegate::remediation::RemediationRequest;
use tidegate::sink::{Lookup, RequestRef};
use tidegate::state::StateStore;

/// The test's cluster view and a namespace labelled `environment: prod`.
async fn setup() -> (Kube, String) {
    let kube = Kube::new().await;
    let ns = kube.namespace("shop", &[("environment", "prod")]).await;
    (kube, ns)
}

fn count(rr: &RemediationRequest) -> u64 {
    rr.status.as_ref().and_then(|s| s.deduplication.as_ref()).map_or(0, |d| d.occurrence_count)
}

async fn post(gw: &Gateway, ns: &str, pod: &str) -> (u16, Value) {
    let resp = gw.alerts(&webhook(vec![alert("HighMemory", ns, pod)])).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn at(body: &Value) -> RequestRef {
    RequestRef { namespace: body["namespace"].as_str().unwrap().into(), name: body["name"].as_str().unwrap().into() }
}

/// Waits until this gateway's watch-fed cache sees the request as `expected`.
async fn cached(gw: &Gateway, at: &RequestRef, expected: Lookup) {
    gw.sink_sees(at, expected).await
}

/// Requests to RemediationRequests other than watches, as the proxy saw them.
fn request_calls(kube: &Kube, method: Method) -> usize {
    kube.proxy
        .calls()
        .iter()
        .filter(|c| c.method == method && c.uri.contains("/remediationrequests") && !c.is_watch())
        .count()
}

#[tokio::test]
async fn new_alert_creates_a_remediation_request_with_status_and_labels() {
    let (kube, ns) = setup().await;
    let mut gw = start_kube(&kube, |_| {}).await;
    let (status, body) = post(&gw, &ns, "web-0").await;
    assert_eq!(status, 201, "{body}");
    gw.stop().await;
    let rr = &kube.requests(&ns).await[0];
    assert_eq!(rr.metadata.name.as_deref(), body["name"].as_str());
    assert_eq!(rr.spec.signal_name, "HighMemory");
    assert_eq!(rr.spec.environment, "production", "from the namespace's environment label");
    assert_eq!(rr.spec.priority, "P0");
    assert_eq!(count(rr), 1, "status is written through the subresource after create");
    let labels = rr.metadata.labels.clone().unwrap_or_default();
    let fingerprint = body["fingerprint"].as_str().unwrap();
    let fp = tidegate::signal::Fingerprint::from_bytes(hex::decode(fingerprint).unwrap().try_into().unwrap());
    assert_eq!(labels["tidegate.dev/fingerprint"], fp.label_value());
    assert_eq!(labels["tidegate.dev/priority"], "P0");
}

#[tokio::test]
async fn a_namespace_without_an_environment_label_is_classified_by_default() {
    let kube = Kube::new().await;
    let ns = kube.namespace("plain", &[]).await;
    let mut gw = start_kube(&kube, |_| {}).await;
    assert_eq!(post(&gw, &ns, "web-0").await.0, 201);
    gw.stop().await;
    assert_eq!(kube.requests(&ns).await[0].spec.environment, "unknown");
}

#[tokio::test]
async fn duplicates_update_the_status_count_and_never_the_spec() {
    let (kube, ns) = setup().await;
    let mut gw = start_kube(&kube, |_| {}).await;
    let (_, body) = post(&gw, &ns, "web-0").await;
    let spec_before = kube.requests(&ns).await[0].spec.clone();
    for _ in 0..4 {
        assert_eq!(post(&gw, &ns, "web-0").await.0, 202);
    }
    gw.stop().await;
    let objects = kube.requests(&ns).await;
    assert_eq!(objects.len(), 1);
    assert_eq!(count(&objects[0]), 5);
    assert_eq!(objects[0].metadata.name.as_deref(), body["name"].as_str());
    assert_eq!(objects[0].spec, spec_before);
    assert_eq!(objects[0].metadata.generation, Some(1), "the spec was never written again");
}

#[tokio::test]
async fn the_api_server_refuses_any_change_to_a_spec() {
    let (kube, ns) = setup().await;
    let mut gw = start_kube(&kube, |_| {}).await;
    let (_, body) = post(&gw, &ns, "web-0").await;
    gw.stop().await;
    let api: Api<RemediationRequest> = Api::namespaced(kube.admin.clone(), &ns);
    let change = json!({"spec": {"priority": "P3"}});
    let refused = api.patch(body["name"].as_str().unwrap(), &PatchParams::default(), &Patch::Merge(&change)).await;
    match refused {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422);
            assert!(status.message.contains("spec is immutable"), "the CRD's CEL rule: {}", status.message);
        }
        other => panic!("expected 422, got {other:?}"),
    }
}

#[tokio::test]
async fn a_coalesced_duplicate_costs_no_api_call() {
    let (kube, ns) = setup().await;
    let mut gw = start_kube(&kube, |c| c.status_writer.interval = Duration::from_secs(300)).await;
    let (_, first) = post(&gw, &ns, "web-0").await;
    cached(&gw, &at(&first), Lookup::Open).await;
    let before = kube.proxy.calls().iter().filter(|c| !c.is_watch()).count();
    for _ in 0..100 {
        assert_eq!(post(&gw, &ns, "web-0").await.0, 202);
    }
    let during = kube.proxy.calls().iter().filter(|c| !c.is_watch()).count() - before;
    assert_eq!(during, 0, "100 duplicates inside one status interval: zero API calls");
    let gets = request_calls(&kube, Method::GET);
    gw.stop().await;
    assert_eq!(request_calls(&kube, Method::PUT), 2, "the status after create, and one write carrying all 100");
    assert_eq!(request_calls(&kube, Method::GET), gets, "the read came from the watch cache");
    assert_eq!(count(&kube.requests(&ns).await[0]), 101);
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_sharing_redis_make_one_request_for_sixty_alerts() {
    let (kube, ns) = setup().await;
    let prefix = unique_prefix();
    let url = support::redis::shared().url();
    let clock = tidegate::clock::Clock::manual(std::time::SystemTime::now());
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let (url, prefix) = (url.clone(), prefix.clone());
        replicas.push(
            start_kube_as(kube.gateway_client(), clock.clone(), move |c| {
                c.state = StateBackend::Redis(url.parse().unwrap());
                c.redis.prefix = prefix;
            })
            .await,
        );
    }
    let sends = (0..60).map(|i| post(&replicas[i % 3], &ns, "web-0"));
    let results = futures::future::join_all(sends).await;
    assert_eq!(results.iter().filter(|(s, _)| *s == 201).count(), 1, "{results:?}");
    assert_eq!(results.iter().filter(|(s, _)| *s == 202).count(), 59);
    for gw in &mut replicas {
        gw.stop().await;
    }
    let objects = kube.requests(&ns).await;
    assert_eq!(objects.len(), 1);
    assert_eq!(count(&objects[0]), 60);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_losing_everything_mid_incident_still_makes_one_request() {
    let (kube, ns) = setup().await;
    let redis = RedisServer::start(ServerOptions::default());
    let url = redis.url();
    let mut gw = start_kube(&kube, move |c| {
        c.state = StateBackend::Redis(url.parse().unwrap());
        c.redis.prefix = unique_prefix();
    })
    .await;
    let (_, first) = post(&gw, &ns, "web-0").await;
    assert_eq!(post(&gw, &ns, "web-0").await.0, 202);
    // Both occurrences are on the request, as the gateway's cache of it shows: what
    // Redis loses next is only what the cluster already has.
    let fingerprint = hex::decode(first["fingerprint"].as_str().unwrap()).unwrap();
    let fingerprint = tidegate::signal::Fingerprint::from_bytes(fingerprint.try_into().unwrap());
    let sink = gw.running().sink.clone();
    eventually("the count of 2 to reach the cache", || {
        let count = sink.open_request(&fingerprint).map(|open| open.count);
        async move { count == Some(2) }
    })
    .await;
    // Redis restarts empty (as after a failover or eviction), mid-incident.
    redis.kill();
    redis.restart();
    eventually("the gateway to reach Redis again", || async { gw.get("/readyz").await.status() == 200 }).await;
    let (status, again) = post(&gw, &ns, "web-0").await;
    assert_eq!(status, 202, "the open request is the authority: {again}");
    assert_eq!(again["name"], first["name"]);
    assert_eq!(post(&gw, &ns, "web-0").await.0, 202, "and the state store learnt it again");
    gw.stop().await;
    let objects = kube.requests(&ns).await;
    assert_eq!(objects.len(), 1);
    assert_eq!(count(&objects[0]), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_losing_everything_while_status_writes_wait_loses_no_count() {
    let (kube, ns) = setup().await;
    let redis = RedisServer::start(ServerOptions::default());
    let url = redis.url();
    // Status writes wait: a long interval here, a failing API server in production.
    let mut gw = start_kube(&kube, move |c| {
        c.state = StateBackend::Redis(url.parse().unwrap());
        c.redis.prefix = unique_prefix();
        c.status_writer.interval = Duration::from_secs(300);
    })
    .await;
    let (_, first) = post(&gw, &ns, "web-0").await;
    cached(&gw, &at(&first), Lookup::Open).await;
    for _ in 0..4 {
        assert_eq!(post(&gw, &ns, "web-0").await.0, 202);
    }
    // The cluster counts 1; occurrences 2 to 5 wait in the status writer when Redis
    // restarts empty.
    redis.kill();
    redis.restart();
    eventually("the gateway to reach Redis again", || async { gw.get("/readyz").await.status() == 200 }).await;
    // The answer's count is the store's, taught again from the cluster's 1; the
    // request's count is the tallies, which Redis never held.
    let (status, again) = post(&gw, &ns, "web-0").await;
    assert_eq!((status, &again["name"]), (202, &first["name"]), "counted on the open request: {again}");
    gw.stop().await;
    assert_eq!(count(&kube.requests(&ns).await[0]), 6, "no occurrence lost");
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_two_replicas_hold_when_redis_loses_everything_add_up() {
    // Each replica's repeats wait in its status writer when Redis restarts empty.
    // Counts copied from Redis would let one replica's larger count hide the other's;
    // tallies add up.
    let (kube, ns) = setup().await;
    let redis = RedisServer::start(ServerOptions::default());
    let prefix = unique_prefix();
    let replica = |url: String, prefix: String| {
        move |c: &mut tidegate::config::Config| {
            c.state = StateBackend::Redis(url.parse().unwrap());
            c.redis.prefix = prefix;
            c.status_writer.interval = Duration::from_secs(300);
        }
    };
    let mut a = start_kube(&kube, replica(redis.url(), prefix.clone())).await;
    let mut b = start_kube(&kube, replica(redis.url(), prefix)).await;
    let (_, first) = post(&a, &ns, "web-0").await;
    cached(&a, &at(&first), Lookup::Open).await;
    cached(&b, &at(&first), Lookup::Open).await;
    for gw in [&a, &a, &a, &b, &b, &b, &b] {
        assert_eq!(post(gw, &ns, "web-0").await.0, 202);
    }
    redis.kill();
    redis.restart();
    for gw in [&a, &b, &b] {
        eventually("the gateway to reach Redis again", || async { gw.get("/readyz").await.status() == 200 }).await;
        let (status, again) = post(gw, &ns, "web-0").await;
        assert_eq!((status, &again["name"]), (202, &first["name"]), "{again}");
    }
    a.stop().await;
    b.stop().await;
    assert_eq!(count(&kube.requests(&ns).await[0]), 1 + 3 + 4 + 3, "every acknowledged occurrence");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeat_racing_the_repair_of_a_forgotten_incident_counts_on_its_open_request() {
    // Redis forgot the incident; the alert that finds it new makes an entry first
    // seen now, and counts on the open request a moment later. A repeat decided in
    // between is a duplicate of that entry, whose request does not exist.
    let (kube, ns) = setup().await;
    let url = support::redis::shared().url();
    let mut before = start_kube(&kube, |_| {}).await;
    let (status, created) = post(&before, &ns, "web-0").await;
    assert_eq!(status, 201, "{created}");
    before.stop().await;
    before.clock.advance(Duration::from_secs(2));
    let (clock, prefix) = (before.clock.clone(), unique_prefix());
    let config = tidegate::state::redis::RedisConfig { prefix: prefix.clone(), ..Default::default() };
    let storms = tidegate::state::StormConfig::default();
    let metrics = std::sync::Arc::new(tidegate::telemetry::Metrics::new());
    let store = tidegate::state::redis::RedisStore::connect(
        &url.parse().unwrap(),
        &config,
        Duration::from_secs(300),
        &storms,
        metrics,
    )
    .await
    .unwrap();
    let fingerprint = hex::decode(created["fingerprint"].as_str().unwrap()).unwrap();
    let target = tidegate::signal::TargetResource {
        kind: "Pod".into(),
        name: "web-0".into(),
        namespace: ns.clone(),
        cluster: String::new(),
    };
    let observation = tidegate::state::Observation {
        fingerprint: tidegate::signal::Fingerprint::from_bytes(fingerprint.try_into().unwrap()),
        status: tidegate::signal::SignalStatus::Firing,
        storm: Some(tidegate::state::StormKey::in_scope(
            tidegate::state::StormKey::scope(&ns, "HighMemory", ""),
            &target,
        )),
    };
    let verdicts = store.observe(&[observation], clock.now_s()).await.unwrap();
    assert!(matches!(verdicts[0], tidegate::state::Verdict::New(_)), "{verdicts:?}");

    let mut gw = start_kube_as(kube.gateway_client(), clock, move |c| {
        c.state = StateBackend::Redis(url.parse().unwrap());
        c.redis.prefix = prefix;
    })
    .await;
    cached(&gw, &at(&created), Lookup::Open).await;
    let (status, again) = post(&gw, &ns, "web-0").await;
    assert_eq!((status, &again["name"]), (202, &created["name"]), "counted on the open request: {again}");
    gw.stop().await;
    assert_eq!(kube.requests(&ns).await.len(), 1, "one request for the incident");
}

#[tokio::test]
async fn a_request_whose_status_is_not_written_yet_is_still_the_open_incident() {
    // The API server drops status on create, and when the write after it fails the
    // request stands without one until the status writer's retry. A gateway whose
    // state forgot the incident meanwhile (Redis restarted; here a second gateway on
    // an empty embedded store) must count on that request, not open another.
    let (kube, ns) = setup().await;
    let mut before = start_kube(&kube, |_| {}).await;
    let (status, created) = post(&before, &ns, "web-0").await;
    assert_eq!(status, 201, "{created}");
    before.stop().await;
    let api: Api<RemediationRequest> = Api::namespaced(kube.admin.clone(), &ns);
    let name = created["name"].as_str().unwrap();
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&json!({"status": null}))).await.unwrap();
    assert_eq!(kube.requests(&ns).await[0].status, None, "as if the status write had failed");

    before.clock.advance(Duration::from_secs(2));
    let mut gw = start_kube_as(kube.gateway_client(), before.clock.clone(), |_| {}).await;
    cached(&gw, &at(&created), Lookup::Open).await;
    let (status, again) = post(&gw, &ns, "web-0").await;
    assert_eq!((status, &again["name"]), (202, &created["name"]), "counted on the open request: {again}");
    gw.stop().await;
    let objects = kube.requests(&ns).await;
    assert_eq!(objects.len(), 1, "one request for the incident");
    assert_eq!(count(&objects[0]), 2);
}

#[tokio::test]
async fn a_terminal_phase_lets_the_next_occurrence_create_a_new_request() {
    let (kube, ns) = setup().await;
    let mut gw = start_kube(&kube, |_| {}).await;
    let (_, first) = post(&gw, &ns, "web-0").await;
    kube.set_phase(&ns, first["name"].as_str().unwrap(), "Completed").await;
    cached(&gw, &at(&first), Lookup::Terminal).await;
    gw.clock.advance(Duration::from_secs(1));
    let (status, second) = post(&gw, &ns, "web-0").await;
    assert_eq!(status, 201);
    assert_ne!(second["name"], first["name"]);
    assert_eq!(post(&gw, &ns, "web-0").await.0, 202, "the new request is the open one now");
    gw.stop().await;
    assert_eq!(kube.requests(&ns).await.len(), 2);
}

#[tokio::test]
async fn a_request_deleted_by_hand_is_gone_as_soon_as_the_watch_reports_it() {
    let (kube, ns) = setup().await;
    let mut gw = start_kube(&kube, |_| {}).await;
    let (_, first) = post(&gw, &ns, "web-0").await;
    cached(&gw, &at(&first), Lookup::Open).await;
    kube.delete(&ns, first["name"].as_str().unwrap()).await;
    cached(&gw, &at(&first), Lookup::Deleted).await;
    let gets = request_calls(&kube, Method::GET);
    // Within a second of its creation: no grace period, no guess.
    gw.clock.advance(Duration::from_secs(1));
    let (status, second) = post(&gw, &ns, "web-0").await;
    assert_eq!(status, 201, "{second}");
    assert_ne!(second["name"], first["name"]);
    assert_eq!(request_calls(&kube, Method::GET), gets, "the watch said so: no GET needed");
    gw.stop().await;
    let left = kube.requests(&ns).await;
    assert_eq!(left.len(), 1);
    assert_eq!(count(&left[0]), 1, "no repeat was counted on the deleted request");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_not_yet_in_the_cache_is_counted_through_one_idempotent_create() {
    // Replica `b` shares Redis with `a` but its watch of requests lags (held by the
    // proxy): the request `a` created is a duplicate for `b`, which its cache has
    // not seen and the watch never reported deleted. So it is not gone: `b` creates
    // it (the name is the incident's), the API server says it exists, and `b`
    // counts the occurrence on it. One call, no guess from its age.
    let (kube, ns) = setup().await;
    let prefix = unique_prefix();
    let url = support::redis::shared().url();
    let clock = tidegate::clock::Clock::manual(std::time::SystemTime::now());
    let config = |c: &mut Config| {
        c.state = StateBackend::Redis(url.parse().unwrap());
        c.redis.prefix = prefix.clone();
    };
    let lagging = Kube::new().await;
    let mut b = start_kube_as(lagging.gateway_client(), clock.clone(), config).await;
    lagging.proxy.hold_watches("/remediationrequests");
    let mut a = start_kube_as(kube.gateway_client(), clock, config).await;
    let (_, first) = post(&a, &ns, "web-0").await;
    let (status, second) = post(&b, &ns, "web-0").await;
    assert_eq!(status, 202, "{second}");
    assert_eq!(second["name"], first["name"]);
    let creates: Vec<u16> = lagging
        .proxy
        .calls()
        .iter()
        .filter(|c| c.method == Method::POST && c.uri.contains("/remediationrequests"))
        .map(|c| c.status)
        .collect();
    assert_eq!(creates, [409], "one create, answered AlreadyExists");
    lagging.proxy.release();
    a.stop().await;
    b.stop().await;
    let objects = kube.requests(&ns).await;
    assert_eq!(objects.len(), 1);
    assert_eq!(count(&objects[0]), 2);
}

#[tokio::test]
async fn a_request_deleted_while_the_watch_was_away_is_known_gone_after_the_relist() {
    let (kube, ns) = setup().await;
    let mut gw = start_kube(&kube, |_| {}).await;
    let (_, first) = post(&gw, &ns, "web-0").await;
    cached(&gw, &at(&first), Lookup::Open).await;
    // The watch is cut and its history is gone (410): the delete is never an event,
    // only a re-list that lacks the request.
    kube.proxy.fail_next(1, Fault::Gone, Matching::watches("/remediationrequests"));
    kube.proxy.cut_watches();
    kube.delete(&ns, first["name"].as_str().unwrap()).await;
    cached(&gw, &at(&first), Lookup::Deleted).await;
    gw.clock.advance(Duration::from_secs(1));
    let (status, second) = post(&gw, &ns, "web-0").await;
    assert_eq!(status, 201, "{second}");
    assert_ne!(second["name"], first["name"]);
    gw.stop().await;
    assert_eq!(kube.requests(&ns).await.len(), 1);
}

#[tokio::test]
async fn a_status_write_that_conflicts_is_read_again_and_applied() {
    let (kube, ns) = setup().await;
    let mut gw = start_kube(&kube, |_| {}).await;
    let (_, first) = post(&gw, &ns, "web-0").await;
    let name = first["name"].as_str().unwrap();
    cached(&gw, &at(&first), Lookup::Open).await;
    // The cache stops learning; a controller writes meanwhile, so the cached
    // resourceVersion is stale and the gateway's next status write gets 409.
    kube.proxy.hold_watches("/remediationrequests");
    kube.set_phase(&ns, name, "Processing").await;
    assert_eq!(post(&gw, &ns, "web-0").await.0, 202);
    gw.stop().await;
    let rr = &kube.requests(&ns).await[0];
    assert_eq!(count(rr), 2);
    assert_eq!(rr.status.as_ref().unwrap().phase.as_deref(), Some("Processing"), "the controller's phase is kept");
    let conflicts = kube.proxy.calls().iter().filter(|c| c.method == Method::PUT && c.status == 409).count();
    assert_eq!(conflicts, 1, "{:?}", kube.proxy.calls());
    kube.proxy.release();
}

#[tokio::test]
async fn the_request_cache_follows_cut_watches_and_relists_after_410_gone() {
    let (kube, ns) = setup().await;
    let gw = start_kube(&kube, |_| {}).await;
    let (_, first) = post(&gw, &ns, "web-0").await;
    cached(&gw, &at(&first), Lookup::Open).await;
    let lists = |kube: &Kube| {
        let calls = kube.proxy.calls();
        calls
            .iter()
            .filter(|c| c.method == Method::GET && c.uri.contains("/remediationrequests?") && !c.is_watch())
            .count()
    };
    let listed = lists(&kube);

    // A cut watch resumes from its resourceVersion: nothing is missed, no re-list.
    kube.proxy.cut_watches();
    kube.set_phase(&ns, first["name"].as_str().unwrap(), "Processing").await;
    let (_, second) = post(&gw, &ns, "web-1").await;
    cached(&gw, &at(&second), Lookup::Open).await;
    assert_eq!(lists(&kube), listed, "resumed, not re-listed");

    // History gone (410): the watcher re-lists and sees what changed meanwhile.
    kube.proxy.fail_next(1, Fault::Gone, Matching::watches("/remediationrequests"));
    kube.proxy.cut_watches();
    kube.set_phase(&ns, first["name"].as_str().unwrap(), "Completed").await;
    cached(&gw, &at(&first), Lookup::Terminal).await;
    eventually("a re-list after 410", || async { lists(&kube) > listed }).await;
}

fn fast_faults(c: &mut Config) {
    c.kube.call_timeout = Duration::from_millis(200);
    c.kube.deadline = Duration::from_millis(400);
    c.kube.breaker_failures = 2;
    c.kube.breaker_cooldown = Duration::from_millis(300);
}

#[tokio::test]
async fn api_server_down_is_503_and_not_ready_then_recovers() {
    let (kube, ns) = setup().await;
    let gw = start_kube(&kube, fast_faults).await;
    kube.proxy.set_down(true);
    for pod in ["web-0", "web-1"] {
        let resp = gw.alerts(&webhook(vec![alert("HighMemory", &ns, pod)])).await;
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().contains_key("retry-after"));
    }
    assert_eq!(gw.get("/readyz").await.status(), 503, "the circuit breaker is open");
    kube.proxy.set_down(false);
    eventually("readiness to return", || async { gw.get("/readyz").await.status() == 200 }).await;
    // The refused alerts were recorded as open, and their requests get made.
    let (status, _) = post(&gw, &ns, "web-2").await;
    assert_eq!(status, 201);
    support::eventually_within("the requests refused earlier to be created", Duration::from_secs(20), || async {
        kube.requests(&ns).await.len() == 3
    })
    .await;
    let text = gw.get("/metrics").await.text().await.unwrap();
    assert!(text.contains(r#"tidegate_kube_api_calls_total{verb="create",outcome="server_error"}"#), "{text}");
}

#[tokio::test]
async fn server_errors_and_throttling_are_retried_within_the_deadline() {
    let (kube, ns) = setup().await;
    let gw = start_kube(&kube, |_| {}).await;
    let creates = Matching::new(Method::POST, "/remediationrequests");
    kube.proxy.fail_next(1, Fault::InternalError, creates.clone());
    kube.proxy.fail_next(1, Fault::TooManyRequests, creates);
    assert_eq!(post(&gw, &ns, "web-0").await.0, 201);
    assert_eq!(gw.metric(r#"tidegate_kube_api_calls_total{verb="create",outcome="ok"}"#).await, 1.0);
    assert_eq!(gw.metric(r#"tidegate_kube_api_calls_total{verb="create",outcome="server_error"}"#).await, 1.0);
    assert_eq!(gw.metric(r#"tidegate_kube_api_calls_total{verb="create",outcome="throttled"}"#).await, 1.0);
}

#[tokio::test]
async fn a_slow_api_server_times_out_into_503() {
    let (kube, ns) = setup().await;
    let gw = start_kube(&kube, fast_faults).await;
    // Slow answers, and a watch as slow: nothing shows the create landed.
    kube.proxy.hold_watches("/remediationrequests");
    let creates = Matching::new(Method::POST, "/remediationrequests");
    kube.proxy.fail_next(10, Fault::Delay(Duration::from_secs(2)), creates);
    let (status, _) = post(&gw, &ns, "web-0").await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn a_create_that_landed_while_its_answer_is_late_is_reported_created_from_the_watch() {
    let (kube, ns) = setup().await;
    // The default 2 s call timeout and 5 s deadline: the answer, held 8 s, comes
    // after both, but the object lands at once and the watch shows it.
    let mut gw = start_kube(&kube, |_| {}).await;
    let creates = Matching::new(Method::POST, "/remediationrequests");
    kube.proxy.fail_next(1, Fault::Delay(Duration::from_secs(8)), creates.clone());
    let (status, body) = post(&gw, &ns, "web-0").await;
    assert_eq!(status, 201, "the watch showed this create's own request: {body}");
    let answers: Vec<u16> = kube.proxy.calls().iter().filter(|c| creates.covers(c)).map(|c| c.status).collect();
    assert_eq!(answers, [201], "sent once: the late answer is waited for, not sent again");
    assert_eq!(gw.metric(r#"tidegate_kube_api_calls_total{verb="create",outcome="landed"}"#).await, 1.0);
    gw.stop().await;
    let objects = kube.requests(&ns).await;
    assert_eq!(objects.len(), 1);
    assert_eq!(count(&objects[0]), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_the_api_server_is_slow_to_apply_is_sent_once() {
    // As a cold API server: creates applied one at a time, 1.5 s each, with two
    // in flight. The second is applied only after 1.5 s and answered after 3 s,
    // past the 2 s call timeout, and is waited for, not sent again.
    let (kube, ns) = setup().await;
    let mut gw = start_kube(&kube, |c| c.kube.creates_in_flight = 2).await;
    let creates = Matching::new(Method::POST, "/remediationrequests");
    kube.proxy.fail_next(2, Fault::Queue(Duration::from_millis(1500)), creates.clone());
    let (a, b) = (webhook(vec![alert("SlowA", &ns, "web-0")]), webhook(vec![alert("SlowB", &ns, "web-0")]));
    let (first, second) = tokio::join!(gw.alerts(&a), gw.alerts(&b));
    assert_eq!([first.status().as_u16(), second.status().as_u16()], [201, 201]);
    assert_eq!(kube.proxy.count(&creates), 2, "{:?}", kube.proxy.calls());
    assert_eq!(gw.metric(r#"tidegate_kube_api_calls_total{verb="create",outcome="timeout"}"#).await, 0.0);
    gw.stop().await;
    assert_eq!(kube.requests(&ns).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_api_server_sees_each_new_incident_created_exactly_once() {
    // An API server that serves creates one at a time, 150 ms each: 24 sent at once
    // would leave the last waiting 3.6 s, past the 2 s call timeout, and be sent
    // again. Eight in flight wait at most 1.2 s each.
    const INCIDENTS: usize = 24;
    let (kube, ns) = setup().await;
    let mut gw = start_kube(&kube, |c| c.kube.creates_in_flight = 8).await;
    let creates = Matching::new(Method::POST, "/remediationrequests");
    kube.proxy.fail_next(usize::MAX, Fault::Queue(Duration::from_millis(150)), creates.clone());
    // A distinct alert name each: new incidents, never a storm.
    let gw_ref = &gw;
    let posts = (0..INCIDENTS).map(|n| {
        let body = webhook(vec![alert(&format!("Slow{n}"), &ns, "web-0")]);
        async move { gw_ref.alerts(&body).await }
    });
    let codes: Vec<u16> = futures::future::join_all(posts).await.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(codes, vec![201; INCIDENTS]);
    assert_eq!(kube.proxy.count(&creates), INCIDENTS, "{:?}", kube.proxy.calls());
    assert_eq!(gw.metric(r#"tidegate_kube_api_calls_total{verb="create",outcome="ok"}"#).await, INCIDENTS as f64);
    kube.proxy.clear_faults();
    gw.stop().await;
    assert_eq!(kube.requests(&ns).await.len(), INCIDENTS);
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_racing_to_create_converge_on_one_request() {
    // Separate state stores: both replicas believe the incident is new, and the API
    // server's 409 AlreadyExists settles it.
    let (kube, ns) = setup().await;
    let clock = tidegate::clock::Clock::manual(std::time::SystemTime::now());
    let mut a = start_kube_as(kube.gateway_client(), clock.clone(), |_| {}).await;
    let mut b = start_kube_as(kube.gateway_client(), clock, |_| {}).await;
    let (ra, rb) = tokio::join!(post(&a, &ns, "web-0"), post(&b, &ns, "web-0"));
    let mut codes = [ra.0, rb.0];
    codes.sort();
    assert_eq!(codes, [201, 202], "one creates, the other finds it exists: {ra:?} {rb:?}");
    a.stop().await;
    b.stop().await;
    assert_eq!(kube.requests(&ns).await.len(), 1);
}

#[tokio::test]
async fn a_storm_of_distinct_pods_becomes_one_aggregated_request() {
    let (kube, ns) = setup().await;
    let mut gw = start_kube(&kube, |_| {}).await;
    let alerts: Vec<Value> = (0..12).map(|n| alert("HighMemory", &ns, &format!("bare-{n}"))).collect();
    let resp = gw.alerts(&webhook(alerts)).await;
    assert_eq!(resp.status(), 207);
    gw.stop().await;
    let requests = kube.requests(&ns).await;
    let aggregated: Vec<_> = requests.iter().filter(|rr| rr.spec.storm.is_some()).collect();
    assert_eq!(aggregated.len(), 1, "{requests:?}");
    let individual: u64 = requests.iter().filter(|rr| rr.spec.storm.is_none()).map(count).sum();
    let folded = aggregated[0].status.as_ref().unwrap().storm.as_ref().unwrap().alert_count;
    assert_eq!(individual + folded, 12, "every alert counted in exactly one request");
}

#[tokio::test]
async fn status_written_on_create_is_dropped_by_the_subresource_and_written_after() {
    // What the sink relies on: the API server ignores status on create.
    let (kube, ns) = setup().await;
    let mut gw = start_kube(&kube, |_| {}).await;
    let (_, body) = post(&gw, &ns, "web-0").await;
    gw.stop().await;
    let mut copy = kube.requests(&ns).await.remove(0);
    copy.metadata = kube::api::ObjectMeta { name: Some("copy".into()), ..Default::default() };
    let api: Api<RemediationRequest> = Api::namespaced(kube.admin.clone(), &ns);
    let created = api.create(&PostParams::default(), &copy).await.unwrap();
    assert!(copy.status.is_some() && created.status.is_none(), "{body}");
}
