//! Scope and inhibition end to end with the real senders (Debian's Alertmanager 0.25,
//! and Prometheus 2.42 for scope): signals held back are answered 2xx, so the
//! senders' own failure counters stay at zero (no notification lost), and the
//! requests written say what was held back and where it was counted.
//!
//! The inhibition cases post alerts into Alertmanager's own API, as a ruler does,
//! so that a node alert and fifty pod alerts carrying its `node` label come from
//! one real Alertmanager in the order the case needs.

mod support;

use std::time::Duration;

use serde_json::json;
use support::redis::{RedisServer, ServerOptions};
use support::senders::{sample, Alertmanager, Gateway, Rig};
use tidegate::config::StateBackend;
use tidegate::pipeline::inhibit::kubernetes_examples;
use tidegate::pipeline::scope::ScopeMode;
use tidegate::remediation::{InhibitedStatus, RemediationRequest};

const DELIVERY: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

/// Posts `alerts` (label sets) to Alertmanager's API as firing alerts, at once.
async fn fire(am: &Alertmanager, alerts: &[serde_json::Value]) {
    let body: Vec<_> = alerts.iter().map(|labels| json!({ "labels": labels, "annotations": {} })).collect();
    let url = format!("{}/api/v2/alerts", am.process.url());
    let response = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "Alertmanager refused the alerts: {}", response.status());
}

fn node_not_ready(node: &str) -> serde_json::Value {
    json!({ "alertname": "KubeNodeNotReady", "node": node, "severity": "warning" })
}

fn pods_on(node: &str, n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            json!({
                "alertname": "KubePodNotReady", "namespace": "shop", "pod": format!("web-{i}"),
                "node": node, "severity": "warning",
            })
        })
        .collect()
}

fn inhibited(rr: &RemediationRequest) -> InhibitedStatus {
    rr.status.as_ref().and_then(|s| s.inhibited.clone()).unwrap_or_default()
}

async fn wait(what: &str, logs: impl Fn() -> String, check: impl FnMut() -> bool) {
    let mut check = check;
    let done = support::poll_within(DELIVERY, POLL, || std::future::ready(check())).await;
    assert!(done, "timed out waiting for {what}\n{}", logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_not_ready_node_holds_back_50_pod_alerts_from_a_real_alertmanager() {
    let mut gw = Gateway::start(|c| c.inhibit_rules = kubernetes_examples()).await;
    let am = Alertmanager::start(&gw.webhook_url(), "1h").await;
    let logs = || am.process.log_tail();

    fire(&am, &[node_not_ready("node-1")]).await;
    wait("the node's request", logs, || gw.requests().len() == 1).await;
    fire(&am, &pods_on("node-1", 50)).await;
    wait("50 pods counted on the node's request", logs, || {
        gw.requests().first().is_some_and(|rr| inhibited(rr).count == 50)
    })
    .await;
    let metrics = gw.metrics().await;
    gw.stop().await;

    let requests = gw.requests();
    assert_eq!(requests.len(), 1, "no pod opened a request of its own: {requests:#?}");
    let node = &requests[0];
    assert_eq!((node.spec.signal_name.as_str(), node.spec.target_resource.kind.as_str()), ("KubeNodeNotReady", "Node"));
    let held = inhibited(node);
    assert_eq!(held.count, 50);
    assert_eq!(held.resources.len(), 50, "every pod listed, below the cap");
    assert!(held.resources.iter().all(|r| r.kind == "Pod" && r.namespace == "shop"));
    let counted = sample(&metrics, r#"tidegate_signals_received_total{source="prometheus-alert",outcome="inhibited"}"#);
    assert_eq!(counted, 50.0);
    let am = am.settled_counters().await;
    assert_eq!(am.failed, 0, "no notification lost: {am:?}");
    assert_eq!(am.requests_failed, 0, "every notification answered 2xx: {am:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_restart_the_sink_teaches_the_embedded_store_its_sources_again() {
    let mut gw = Gateway::start(|c| c.inhibit_rules = kubernetes_examples()).await;
    let am = Alertmanager::start(&gw.webhook_url(), "1h").await;
    let logs = || am.process.log_tail();
    fire(&am, &[node_not_ready("node-1")]).await;
    wait("the node's request", logs, || gw.requests().len() == 1).await;

    // The embedded store starts empty: only the sink directory knows the node.
    gw.restart().await;
    fire(&am, &pods_on("node-1", 5)).await;
    wait("5 pods counted on the node's request", logs, || {
        gw.requests().first().is_some_and(|rr| inhibited(rr).count == 5)
    })
    .await;

    assert_eq!(gw.requests().len(), 1, "{:#?}", gw.requests());
    assert_eq!(am.settled_counters().await.failed, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_on_another_node_are_not_held_back() {
    let gw = Gateway::start(|c| c.inhibit_rules = kubernetes_examples()).await;
    let am = Alertmanager::start(&gw.webhook_url(), "1h").await;
    let logs = || am.process.log_tail();

    fire(&am, &[node_not_ready("node-1")]).await;
    wait("the node's request", logs, || gw.requests().len() == 1).await;
    fire(&am, &pods_on("node-2", 3)).await;
    wait("three pod requests", logs, || gw.requests().len() == 4).await;

    assert!(gw.requests().iter().all(|rr| inhibited(rr).count == 0));
    assert_eq!(am.settled_counters().await.failed, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_sharing_redis_hold_back_what_the_other_opened() {
    let redis = RedisServer::start(ServerOptions { maxmemory: "16mb".into(), ..Default::default() });
    let url = redis.url();
    let shared = |c: &mut tidegate::config::Config| {
        c.inhibit_rules = kubernetes_examples();
        c.state = StateBackend::Redis(url.parse().unwrap());
        c.redis.prefix = "held-back:".into();
    };
    let a = Gateway::start(shared).await;
    let b = Gateway::start(|c| {
        shared(c);
        // One sink directory: a shared cluster, as two replicas have.
        c.sink = a.config.sink.clone();
    })
    .await;
    let am_a = Alertmanager::start(&a.webhook_url(), "1h").await;
    let am_b = Alertmanager::start(&b.webhook_url(), "1h").await;
    let logs = || format!("{}\n{}", am_a.process.log_tail(), am_b.process.log_tail());

    fire(&am_a, &[node_not_ready("node-1")]).await;
    wait("the node's request", logs, || a.requests().len() == 1).await;
    fire(&am_b, &pods_on("node-1", 5)).await;
    wait("5 pods counted on the node's request", logs, || {
        a.requests().first().is_some_and(|rr| inhibited(rr).count == 5)
    })
    .await;

    assert_eq!(a.requests().len(), 1, "replica b opened nothing: {:#?}", a.requests());
    assert_eq!((am_a.settled_counters().await.failed, am_b.settled_counters().await.failed), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_out_of_scope_namespace_creates_nothing_and_loses_nothing() {
    let rig = Rig::start("1h", |c| {
        c.scope.mode = ScopeMode::OptIn;
        c.scope.namespaces = ["shop".to_string()].into();
    })
    .await;
    rig.target.set("batch", ["report-0"], 1.0);
    rig.target.set("shop", ["web-0"], 1.0);

    rig.wait_for("the shop request", DELIVERY, || async { !rig.gateway.requests().is_empty() }).await;
    let out_of_scope = r#"tidegate_signals_received_total{source="prometheus-alert",outcome="out_of_scope"}"#;
    rig.wait_for("the batch alert answered", DELIVERY, || async {
        sample(&rig.gateway.metrics().await, out_of_scope) >= 1.0
    })
    .await;

    let requests = rig.gateway.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0].metadata.namespace.as_deref(), Some("shop"));
    let am = rig.alertmanager.settled_counters().await;
    assert_eq!((am.failed, am.requests_failed), (0, 0), "both groups answered 2xx: {am:?}\n{}", rig.logs());
    assert_eq!(am.delivered(), 2, "one notification per group: {am:?}");

    // What the sender is told: 2xx, the status and the change that would bring it in.
    let webhook = json!({
        "version": "4", "status": "firing", "receiver": "tidegate", "groupKey": "{}:{}",
        "alerts": [{ "status": "firing", "labels": { "alertname": "Backlog", "namespace": "batch", "pod": "report-1" },
                     "annotations": {}, "startsAt": "2026-12-05T12:00:00Z" }],
    });
    let response = reqwest::Client::new().post(rig.gateway.webhook_url()).json(&webhook).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "out_of_scope");
    assert_eq!(body["hint"], "add batch to scope.namespaces in tidegate's configuration");
    assert_eq!(rig.gateway.requests().len(), 1);
}
