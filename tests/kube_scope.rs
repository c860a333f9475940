//! Scope in a cluster: the `tidegate.dev/remediate` label on a signal's top
//! workload, else on its namespace, decides, read from watch caches of real
//! objects in a real API server, as the gateway's shipped service account
//! (`deploy/rbac.yaml`) reads them. No controller manager runs, so the tests make
//! the ReplicaSets, Jobs and Pods a workload's controllers would.

mod support;

use std::time::{Duration, Instant};

use axum::http::Method;
use serde_json::Value;
use support::kube::proxy::Matching;
use support::kube::Kube;
use support::{alert, eventually_within, start_kube, webhook, Gateway};
use tidegate::pipeline::scope::ScopeMode;
use tidegate::workload::REMEDIATE_LABEL;

/// How long a label change may take to reach the gateway here: the issue asks for
/// a second or two; the limit is generous for a loaded machine, and the time taken
/// is printed.
const RELABEL_LIMIT: Duration = Duration::from_secs(15);

async fn crash(gw: &Gateway, ns: &str, pod: &str) -> (u16, Value) {
    let resp = gw.alerts(&webhook(vec![alert("KubePodCrashLooping", ns, pod)])).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Posts the alert about `pod` until it is answered with `status`; how long that took.
async fn until_answered(gw: &Gateway, ns: &str, pod: &str, status: &'static str) -> (Duration, Value) {
    let started = Instant::now();
    let last = std::sync::Mutex::new(Value::Null);
    eventually_within(&format!("the alert about {pod} to be answered {status}"), RELABEL_LIMIT, || async {
        let (code, body) = crash(gw, ns, pod).await;
        assert!((200..300).contains(&code), "always 2xx: {code} {body}");
        let done = body["status"] == status;
        *last.lock().unwrap() = body;
        done
    })
    .await;
    (started.elapsed(), last.into_inner().unwrap())
}

const OUT_OF_SCOPE: &str = r#"tidegate_signals_received_total{source="prometheus-alert",outcome="out_of_scope"}"#;
const GET_METADATA: &str = r#"tidegate_kube_api_calls_total{verb="get_metadata",outcome="ok"}"#;

#[tokio::test(flavor = "multi_thread")]
async fn labelling_a_deployment_false_takes_its_pods_out_of_scope_without_a_restart_and_relabelling_brings_them_back() {
    let kube = Kube::new().await;
    let ns = kube.namespace("scope", &[]).await;
    let web = kube.create_object(&ns, "Deployment", "web", None).await;
    let rs = kube.create_object(&ns, "ReplicaSet", "web-5b7d9", Some(&web)).await;
    kube.create_object(&ns, "Pod", "web-5b7d9-abcde", Some(&rs)).await;
    let mut gw = start_kube(&kube, |c| c.scope.mode = ScopeMode::OptOut).await;
    gw.owner_caches_listed().await;
    let (status, first) = crash(&gw, &ns, "web-5b7d9-abcde").await;
    assert_eq!((status, first["status"].as_str()), (201, Some("created")), "opt-out: unlabelled is in scope");
    let gets = gw.metric(GET_METADATA).await;

    kube.label_object(&ns, "Deployment", "web", REMEDIATE_LABEL, Some("false")).await;
    let (took_out, body) = until_answered(&gw, &ns, "web-5b7d9-abcde", "out_of_scope").await;
    assert_eq!(
        body["hint"],
        format!("kubectl label deployment/web -n {ns} tidegate.dev/remediate=true --overwrite"),
        "the hint names the object that decided: {body}"
    );
    assert!(gw.metric(OUT_OF_SCOPE).await >= 1.0);

    kube.label_object(&ns, "Deployment", "web", REMEDIATE_LABEL, Some("true")).await;
    let (took_back, body) = until_answered(&gw, &ns, "web-5b7d9-abcde", "duplicate").await;
    assert_eq!(body["name"], first["name"], "back in scope, counted on the incident's request");
    eprintln!("relabel reached the gateway: out of scope after {took_out:?}, back in after {took_back:?}");

    // Every answer came from the caches: no owner GET, and no read of the Deployment.
    assert_eq!(gw.metric(GET_METADATA).await, gets, "no GET per signal");
    let reads = kube.proxy.count(&Matching::new(Method::GET, &format!("/apis/apps/v1/namespaces/{ns}/deployments")));
    assert_eq!(reads, 0, "the Deployment is never read by name");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_label_beats_its_namespace_label_both_ways_from_the_first_signal() {
    let kube = Kube::new().await;
    // `shop` opted in, but its StatefulSet `db` said no; `infra` opted out, but its
    // CronJob `nightly` said yes. Labelled before the gateway starts: the caches'
    // first list must know them, or `db` would be remediated once.
    let shop = kube.namespace("scope-in", &[(REMEDIATE_LABEL, "true")]).await;
    let infra = kube.namespace("scope-out", &[(REMEDIATE_LABEL, "false")]).await;
    let db = kube.create_object(&shop, "StatefulSet", "db", None).await;
    kube.create_object(&shop, "Pod", "db-0", Some(&db)).await;
    let agent = kube.create_object(&shop, "DaemonSet", "agent", None).await;
    kube.create_object(&shop, "Pod", "agent-x7k2p", Some(&agent)).await;
    let nightly = kube.create_object(&infra, "CronJob", "nightly", None).await;
    let job = kube.create_object(&infra, "Job", "nightly-29012345", Some(&nightly)).await;
    kube.create_object(&infra, "Pod", "nightly-29012345-q8w4z", Some(&job)).await;
    kube.create_object(&infra, "Pod", "debug", None).await;
    kube.label_object(&shop, "StatefulSet", "db", REMEDIATE_LABEL, Some("false")).await;
    kube.label_object(&infra, "CronJob", "nightly", REMEDIATE_LABEL, Some("true")).await;
    let mut gw = start_kube(&kube, |c| c.scope.mode = ScopeMode::OptIn).await;
    gw.owner_caches_listed().await;

    let (status, body) = crash(&gw, &shop, "db-0").await;
    assert_eq!((status, body["status"].as_str()), (202, Some("out_of_scope")), "{body}");
    assert_eq!(body["hint"], format!("kubectl label statefulset/db -n {shop} tidegate.dev/remediate=true --overwrite"));
    let (status, body) = crash(&gw, &shop, "agent-x7k2p").await;
    assert_eq!(status, 201, "an unlabelled workload follows its namespace: {body}");
    let (status, body) = crash(&gw, &infra, "nightly-29012345-q8w4z").await;
    assert_eq!(status, 201, "the CronJob said yes in a namespace that said no: {body}");
    let (status, body) = crash(&gw, &infra, "debug").await;
    assert_eq!(body["status"], "out_of_scope", "{status} {body}");
    assert_eq!(
        body["hint"],
        format!("kubectl label pod/debug -n {infra} tidegate.dev/remediate=true --overwrite"),
        "a bare pod is its own workload"
    );
    gw.stop().await;

    let targets = |requests: Vec<tidegate::remediation::RemediationRequest>| -> Vec<String> {
        requests.iter().map(|rr| format!("{}/{}", rr.spec.target_resource.kind, rr.spec.target_resource.name)).collect()
    };
    assert_eq!(targets(kube.requests(&shop).await), ["DaemonSet/agent"]);
    assert_eq!(targets(kube.requests(&infra).await), ["CronJob/nightly"]);
}
