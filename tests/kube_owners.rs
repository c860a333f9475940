//! Incident identity follows the workload: with `--sink kube`, a signal about a pod
//! names the pod's top controller, found through ownerReferences of real objects
//! created in a real API server (no controller manager runs, so the tests create
//! the ReplicaSets and Pods a Deployment's controllers would).

mod support;

use std::time::Duration;

use axum::http::Method;
use serde_json::Value;
use support::kube::objects::Object;
use support::kube::proxy::{Fault, Matching};
use support::kube::Kube;
use support::{alert, start_kube, webhook, Gateway};
use tidegate::remediation::RemediationRequest;

async fn deployment(kube: &Kube, ns: &str, name: &str) -> Object {
    kube.create_object(ns, "Deployment", name, None).await
}

async fn replica_set(kube: &Kube, ns: &str, name: &str, owner: &Object) -> Object {
    kube.create_object(ns, "ReplicaSet", name, Some(owner)).await
}

async fn pod(kube: &Kube, ns: &str, name: &str, owner: Option<&Object>) -> Object {
    kube.create_object(ns, "Pod", name, owner).await
}

/// Deployment `web` → ReplicaSet `web-5b7d9` → `pods`, in `ns`.
async fn web_pods(kube: &Kube, ns: &str, pods: &[&str]) {
    let web = deployment(kube, ns, "web").await;
    let rs = replica_set(kube, ns, "web-5b7d9", &web).await;
    for name in pods {
        pod(kube, ns, name, Some(&rs)).await;
    }
}

async fn crash(gw: &Gateway, ns: &str, pods: &[&str]) -> (u16, Value) {
    let alerts = pods.iter().map(|p| alert("KubePodCrashLooping", ns, p)).collect();
    let resp = gw.alerts(&webhook(alerts)).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn requests(kube: &Kube, ns: &str) -> Vec<RemediationRequest> {
    kube.requests(ns).await
}

fn count(rr: &RemediationRequest) -> u64 {
    rr.status.as_ref().and_then(|s| s.deduplication.as_ref()).map_or(0, |d| d.occurrence_count)
}

fn target(rr: &RemediationRequest) -> (String, String) {
    (rr.spec.target_resource.kind.clone(), rr.spec.target_resource.name.clone())
}

async fn api_calls(gw: &Gateway) -> f64 {
    let text = gw.get("/metrics").await.text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("tidegate_kube_api_calls_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const GET_METADATA_OK: &str = r#"tidegate_kube_api_calls_total{verb="get_metadata",outcome="ok"}"#;

#[tokio::test]
async fn a_deployment_is_one_incident_across_pod_restarts_and_rollouts() {
    let kube = Kube::new().await;
    let ns = kube.namespace("owners", &[]).await;
    let web = deployment(&kube, &ns, "web").await;
    let old = replica_set(&kube, &ns, "web-6d4cf56db6", &web).await;
    let new = replica_set(&kube, &ns, "web-7f8b9c6d5e", &web).await;
    pod(&kube, &ns, "web-6d4cf56db6-abcde", Some(&old)).await;
    pod(&kube, &ns, "web-6d4cf56db6-fghij", Some(&old)).await;
    pod(&kube, &ns, "web-7f8b9c6d5e-klmno", Some(&new)).await;
    let mut gw = start_kube(&kube, |_| {}).await;
    let (status, first) = crash(&gw, &ns, &["web-6d4cf56db6-abcde"]).await;
    assert_eq!(status, 201, "{first}");
    for pod in ["web-6d4cf56db6-fghij", "web-7f8b9c6d5e-klmno"] {
        let (status, body) = crash(&gw, &ns, &[pod]).await;
        assert_eq!(status, 202, "a restarted or rolled-out pod is the same incident: {body}");
        assert_eq!(body["name"], first["name"]);
        assert_eq!(body["fingerprint"], first["fingerprint"]);
    }
    gw.stop().await;
    let all = requests(&kube, &ns).await;
    assert_eq!(all.len(), 1);
    assert_eq!(target(&all[0]), ("Deployment".into(), "web".into()));
    assert_eq!(count(&all[0]), 3);
    let labels = &all[0].spec.signal_labels;
    assert_eq!(labels.get("pod").map(String::as_str), Some("web-6d4cf56db6-abcde"), "the pod's own name is kept");
}

#[tokio::test]
async fn statefulsets_daemonsets_and_cronjobs_are_top_controllers_and_a_bare_pod_is_itself() {
    let kube = Kube::new().await;
    let ns = kube.namespace("owners", &[]).await;
    let db = kube.create_object(&ns, "StatefulSet", "db", None).await;
    let agent = kube.create_object(&ns, "DaemonSet", "agent", None).await;
    let nightly = kube.create_object(&ns, "CronJob", "nightly", None).await;
    let job = kube.create_object(&ns, "Job", "nightly-29012345", Some(&nightly)).await;
    pod(&kube, &ns, "db-0", Some(&db)).await;
    pod(&kube, &ns, "agent-x7k2p", Some(&agent)).await;
    pod(&kube, &ns, "nightly-29012345-q8w4z", Some(&job)).await;
    pod(&kube, &ns, "debug", None).await;
    let mut gw = start_kube(&kube, |_| {}).await;
    for pod in ["db-0", "agent-x7k2p", "nightly-29012345-q8w4z", "debug"] {
        assert_eq!(crash(&gw, &ns, &[pod]).await.0, 201);
    }
    gw.stop().await;
    let mut targets: Vec<_> = requests(&kube, &ns).await.iter().map(target).collect();
    targets.sort();
    let expected = [("CronJob", "nightly"), ("DaemonSet", "agent"), ("Pod", "debug"), ("StatefulSet", "db")];
    assert_eq!(targets, expected.map(|(k, n)| (k.to_string(), n.to_string())));
}

#[tokio::test]
async fn the_pods_of_one_deployment_are_one_incident_not_a_storm() {
    let kube = Kube::new().await;
    let ns = kube.namespace("owners", &[]).await;
    let pods: Vec<String> = (0..12).map(|n| format!("web-5b7d9-p{n}")).collect();
    let names: Vec<&str> = pods.iter().map(String::as_str).collect();
    web_pods(&kube, &ns, &names).await;
    let mut gw = start_kube(&kube, |_| {}).await;
    let (status, body) = crash(&gw, &ns, &names).await;
    assert_eq!(status, 207, "{body}");
    assert_eq!(body["summary"]["created"], 1, "{body}");
    assert_eq!(body["summary"]["duplicate"], 11, "{body}");
    gw.stop().await;
    let all = requests(&kube, &ns).await;
    assert_eq!(all.len(), 1, "one incident, no aggregated storm request");
    assert!(all[0].spec.storm.is_none());
    assert_eq!(count(&all[0]), 12);
}

#[tokio::test]
async fn a_cache_miss_costs_one_get_per_object_and_is_remembered() {
    let kube = Kube::new().await;
    let ns = kube.namespace("owners", &[]).await;
    let mut gw = start_kube(&kube, |c| c.status_writer.interval = Duration::from_secs(300)).await;
    gw.owner_caches_listed().await;
    // The caches learn nothing new from here on: the objects below are misses.
    kube.proxy.hold_watches("/pods");
    kube.proxy.hold_watches("/replicasets");
    web_pods(&kube, &ns, &["web-5b7d9-a"]).await;
    let (status, body) = crash(&gw, &ns, &["web-5b7d9-a"]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(gw.metric(GET_METADATA_OK).await, 2.0, "one GET for the pod, one for its ReplicaSet");
    assert_eq!(crash(&gw, &ns, &["web-5b7d9-a"]).await.0, 202);
    assert_eq!(gw.metric(GET_METADATA_OK).await, 2.0, "the answers are remembered");
    kube.proxy.release();
    gw.stop().await;
    assert_eq!(target(&requests(&kube, &ns).await[0]), ("Deployment".into(), "web".into()));
}

#[tokio::test]
async fn in_steady_state_an_alert_costs_no_api_call() {
    let kube = Kube::new().await;
    let ns = kube.namespace("owners", &[]).await;
    let pods: Vec<String> = (0..10).map(|n| format!("web-5b7d9-p{n}")).collect();
    web_pods(&kube, &ns, &pods.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let mut gw = start_kube(&kube, |c| c.status_writer.interval = Duration::from_secs(300)).await;
    gw.owner_caches_listed().await;
    assert_eq!(crash(&gw, &ns, &["web-5b7d9-p0"]).await.0, 201);
    let after_create = api_calls(&gw).await;
    for i in 0..100 {
        assert_eq!(crash(&gw, &ns, &[&format!("web-5b7d9-p{}", i % 10)]).await.0, 202);
    }
    let per_alert = (api_calls(&gw).await - after_create) / 100.0;
    eprintln!("Kubernetes API calls per alert in steady state: {per_alert}");
    assert_eq!(per_alert, 0.0);
    assert_eq!(gw.metric(GET_METADATA_OK).await, 0.0, "every owner came from the caches");
    gw.stop().await;
}

#[tokio::test]
async fn an_owner_that_cannot_be_read_leaves_the_pod_its_identity() {
    let kube = Kube::new().await;
    let ns = kube.namespace("owners", &[]).await;
    let mut gw = start_kube(&kube, |_| {}).await;
    gw.owner_caches_listed().await;
    kube.proxy.hold_watches("/pods");
    web_pods(&kube, &ns, &["web-5b7d9-a"]).await;
    kube.proxy.fail_next(1, Fault::InternalError, Matching::new(Method::GET, "/pods/web-5b7d9-a"));
    let (status, body) = crash(&gw, &ns, &["web-5b7d9-a"]).await;
    assert_eq!(status, 201, "never dropped: {body}");
    kube.proxy.release();
    gw.stop().await;
    assert_eq!(target(&requests(&kube, &ns).await[0]), ("Pod".into(), "web-5b7d9-a".into()));
}

#[tokio::test]
async fn with_the_owner_chain_off_a_pod_is_its_own_incident() {
    let kube = Kube::new().await;
    let ns = kube.namespace("owners", &[]).await;
    web_pods(&kube, &ns, &["web-5b7d9-a"]).await;
    let mut gw = start_kube(&kube, |c| c.kube.owner_chain = false).await;
    assert_eq!(crash(&gw, &ns, &["web-5b7d9-a"]).await.0, 201);
    gw.stop().await;
    assert_eq!(target(&requests(&kube, &ns).await[0]), ("Pod".into(), "web-5b7d9-a".into()));
}

#[tokio::test]
async fn a_long_owner_chain_is_followed_only_so_far() {
    // ReplicaSets owning ReplicaSets: nothing real does this, which is the point.
    let kube = Kube::new().await;
    let ns = kube.namespace("owners", &[]).await;
    let top = deployment(&kube, &ns, "root").await;
    let mut owner = top;
    for n in (1..=5).rev() {
        owner = replica_set(&kube, &ns, &format!("rs-{n}"), &owner).await;
    }
    pod(&kube, &ns, "deep", Some(&owner)).await; // deep → rs-1 → rs-2 → … → rs-5 → root
    let mut gw = start_kube(&kube, |_| {}).await;
    assert_eq!(crash(&gw, &ns, &["deep"]).await.0, 201);
    gw.stop().await;
    let expected = format!("rs-{}", tidegate::workload::owners::MAX_DEPTH);
    assert_eq!(target(&requests(&kube, &ns).await[0]), ("ReplicaSet".into(), expected));
}
