//! The shipped RBAC (`deploy/rbac.yaml`) is exactly what `--sink kube` needs.
//!
//! Enough: every other kube test runs as the service account `deploy/` defines,
//! bound to that role. Needed: for each verb the role grants, a gateway runs as an
//! account bound to the role without that one verb, and the behaviour that verb
//! serves is shown to break, next to the same behaviour working with the whole
//! role. A grant that no behaviour here needs fails the test (remove it from the
//! role), and so does a behaviour that works without its grant.
//!
//! The scenarios run one after another: several watch counts are cluster-wide,
//! and another scenario's objects would blur them.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use axum::http::Method;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::ResourceExt;
use serde_json::Value;
use support::kube::proxy::Matching;
use support::kube::{manifests, Kube};
use support::{alert, eventually, resolved, webhook, Gateway};
use tidegate::clock::Clock;
use tidegate::config::{Config, SinkTarget};
use tidegate::gateway::{self, Overrides};
use tidegate::pipeline::scope::ScopeMode;
use tidegate::remediation::labels::FLAPPING;
use tidegate::sink::{Lookup, RequestRef};
use tidegate::workload::REMEDIATE_LABEL;

/// One verb on one resource of one API group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    group: String,
    resource: String,
    verb: String,
}

/// The role of tidegate's own account (rbac.yaml also defines its senders' role).
fn shipped_role() -> ClusterRole {
    let roles = manifests::<ClusterRole>("rbac.yaml", "ClusterRole");
    roles.into_iter().find(|r| r.metadata.name.as_deref() == Some("tidegate")).expect("the tidegate ClusterRole")
}

fn grants(role: &ClusterRole) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in role.rules.clone().unwrap_or_default() {
        for group in rule.api_groups.clone().unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    out.insert(Grant { group: group.clone(), resource: resource.clone(), verb: verb.clone() });
                }
            }
        }
    }
    out
}

/// `grants` as rules, one per grant.
fn rules(grants: &BTreeSet<Grant>) -> Vec<PolicyRule> {
    grants
        .iter()
        .map(|g| PolicyRule {
            api_groups: Some(vec![g.group.clone()]),
            resources: Some(vec![g.resource.clone()]),
            verbs: vec![g.verb.clone()],
            ..PolicyRule::default()
        })
        .collect()
}

/// A gateway as an account with `token`, through `kube`'s proxy; `Err` if it could
/// not start (its caches never listed).
async fn start(kube: &Kube, token: &str, tweak: impl FnOnce(&mut Config)) -> Result<Gateway, String> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config { listen: "127.0.0.1:0".parse().unwrap(), sink: SinkTarget::Kube, ..Config::default() };
    config.http.shutdown_delay = Duration::ZERO;
    config.status_writer.interval = Duration::from_millis(20);
    config.kube.sync_timeout = Duration::from_secs(3);
    tweak(&mut config);
    let clock = Clock::manual(SystemTime::now());
    let overrides = Overrides { kube_client: Some(kube.client_as(token)) };
    let running = gateway::start_with(config.clone(), clock.clone(), overrides).await.map_err(|e| e.to_string())?;
    Ok(Gateway::new(running, clock, dir, config))
}

/// Waits until the proxy has answered a request matching `matching` with 403.
async fn refused(kube: &Kube, matching: Matching) {
    eventually("the API server to refuse the request", || {
        let seen = kube.proxy.calls().iter().any(|c| c.status == 403 && matching.covers(c));
        async move { seen }
    })
    .await;
}

/// Whether `check` comes true within two seconds. Only used after [`refused`]
/// showed the cause, so the wait is a confirmation, not a guess.
async fn within_two_seconds<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn post(gw: &Gateway, ns: &str, name: &str, pod: &str) -> (u16, Value) {
    let resp = gw.alerts(&webhook(vec![alert(name, ns, pod)])).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Deployment `web` → ReplicaSet `web-rs` → Pod `web-rs-a`, and CronJob `nightly`
/// → Job `nightly-1` → Pod `nightly-1-a`, in `ns`.
async fn workloads(kube: &Kube, ns: &str) {
    let web = kube.create_object(ns, "Deployment", "web", None).await;
    let rs = kube.create_object(ns, "ReplicaSet", "web-rs", Some(&web)).await;
    kube.create_object(ns, "Pod", "web-rs-a", Some(&rs)).await;
    let nightly = kube.create_object(ns, "CronJob", "nightly", None).await;
    let job = kube.create_object(ns, "Job", "nightly-1", Some(&nightly)).await;
    kube.create_object(ns, "Pod", "nightly-1-a", Some(&job)).await;
}

/// A workload of the kind `resource` names, with a pod of its own, in `ns`: the
/// pod alerted on, and the workload's kind and name.
async fn workload_of(kube: &Kube, ns: &str, resource: &str) -> (&'static str, &'static str, &'static str) {
    match resource {
        "deployments" | "cronjobs" => {
            workloads(kube, ns).await;
            if resource == "cronjobs" {
                ("nightly-1-a", "CronJob", "nightly")
            } else {
                ("web-rs-a", "Deployment", "web")
            }
        }
        "statefulsets" => {
            let db = kube.create_object(ns, "StatefulSet", "db", None).await;
            kube.create_object(ns, "Pod", "db-0", Some(&db)).await;
            ("db-0", "StatefulSet", "db")
        }
        _ => {
            let agent = kube.create_object(ns, "DaemonSet", "agent", None).await;
            kube.create_object(ns, "Pod", "agent-a", Some(&agent)).await;
            ("agent-a", "DaemonSet", "agent")
        }
    }
}

/// Whether the alert about `pod` is answered out of scope.
async fn out_of_scope(gw: &Gateway, ns: &str, pod: &str) -> bool {
    post(gw, ns, "Probe", pod).await.1["status"] == "out_of_scope"
}

/// The requests' targets in `ns`, as `Kind/name`.
async fn targets(kube: &Kube, ns: &str) -> Vec<String> {
    let requests = kube.requests(ns).await;
    requests.iter().map(|rr| format!("{}/{}", rr.spec.target_resource.kind, rr.spec.target_resource.name)).collect()
}

/// The pod alerted on for a scenario about `resource`'s owner lookups, and the
/// top controller it has.
fn chain_for(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "jobs" => ("nightly-1-a", "CronJob/nightly"),
        _ => ("web-rs-a", "Deployment/web"),
    }
}

/// The path of `resource`'s list and watch requests.
fn collection(resource: &str) -> &'static str {
    match resource {
        "pods" => "/api/v1/pods?",
        "replicasets" => "/apis/apps/v1/replicasets?",
        "jobs" => "/apis/batch/v1/jobs?",
        "deployments" => "/apis/apps/v1/deployments?",
        "statefulsets" => "/apis/apps/v1/statefulsets?",
        "daemonsets" => "/apis/apps/v1/daemonsets?",
        "cronjobs" => "/apis/batch/v1/cronjobs?",
        "namespaces" => "/api/v1/namespaces?",
        _ => "/apis/remediation.tidegate.dev/v1alpha1/remediationrequests?",
    }
}

const GET_METADATA: &str = r#"tidegate_kube_api_calls_total{verb="get_metadata",outcome="ok"}"#;

/// Runs the behaviour `grant` serves as an account with `granted`; whether it works.
async fn behaves(kube: &Kube, grant: &Grant, granted: &BTreeSet<Grant>, tag: &str) -> bool {
    let token = kube.account_with_rules(tag, rules(granted)).await;
    let without = !granted.contains(grant);
    let ns = kube.namespace("rbac", &[("environment", "prod")]).await;
    let path = collection(&grant.resource);
    match (grant.resource.as_str(), grant.verb.as_str()) {
        // Both caches must list before the gateway vouches for anything.
        ("remediationrequests" | "namespaces", "list") => start(kube, &token, |_| {}).await.is_ok(),
        ("remediationrequests", "create") => {
            let mut gw = start(kube, &token, |_| {}).await.expect("starts");
            let created = post(&gw, &ns, "Probe", "web-0").await.0 == 201;
            gw.stop().await;
            created
        }
        ("remediationrequests/status", "update") => {
            // The occurrence count lives in status: without it, 503 (the sender retries).
            let mut gw = start(kube, &token, |_| {}).await.expect("starts");
            let counted = post(&gw, &ns, "Probe", "web-0").await.0 == 201;
            gw.stop().await;
            counted
        }
        ("remediationrequests", "get") => {
            // A status write that conflicts (a controller wrote since the cache was
            // fed) reads the request again.
            let mut gw = start(kube, &token, |_| {}).await.expect("starts");
            let (_, body) = post(&gw, &ns, "Probe", "web-0").await;
            let at = RequestRef { namespace: ns.clone(), name: body["name"].as_str().unwrap().into() };
            let sink = gw.running().sink.clone();
            eventually("the cache to hold the request", || {
                let open = sink.lookup(&at) == Lookup::Open;
                async move { open }
            })
            .await;
            kube.proxy.hold_watches("/remediationrequests");
            kube.set_phase(&ns, &at.name, "Processing").await;
            assert_eq!(post(&gw, &ns, "Probe", "web-0").await.0, 202);
            gw.stop().await;
            kube.proxy.release();
            let requests = kube.requests(&ns).await;
            requests[0].status.as_ref().and_then(|s| s.deduplication.as_ref()).is_some_and(|d| d.occurrence_count == 2)
        }
        ("remediationrequests", "patch") => {
            // A flapping incident's request gets the `tidegate.dev/flapping` label.
            let mut gw = start(kube, &token, |c| c.flap.threshold = 1).await.expect("starts");
            let firing = alert("Probe", &ns, "web-0");
            let flaps = webhook(vec![firing.clone(), resolved(firing.clone()), firing.clone()]);
            gw.alerts(&webhook(vec![firing.clone()])).await;
            gw.alerts(&flaps).await;
            gw.alerts(&flaps).await;
            let labelled = within_two_seconds(|| async {
                let requests = kube.requests(&ns).await;
                requests.iter().any(|rr| rr.labels().get(FLAPPING).is_some_and(|v| v == "true"))
            })
            .await;
            gw.stop().await;
            labelled
        }
        ("remediationrequests", "watch") => {
            // A controller's terminal phase reaches the cache through the watch.
            let mut gw = start(kube, &token, |_| {}).await.expect("starts");
            let (_, body) = post(&gw, &ns, "Probe", "web-0").await;
            let at = RequestRef { namespace: ns.clone(), name: body["name"].as_str().unwrap().into() };
            if without {
                refused(kube, Matching::new(Method::GET, path)).await;
            }
            kube.set_phase(&ns, &at.name, "Completed").await;
            let sink = gw.running().sink.clone();
            let seen = within_two_seconds(|| {
                let terminal = sink.lookup(&at) == Lookup::Terminal;
                async move { terminal }
            })
            .await;
            gw.stop().await;
            seen
        }
        ("namespaces", "watch") => {
            // A namespace made after start is classified by its environment label.
            let mut gw = start(kube, &token, |_| {}).await.expect("starts");
            if without {
                refused(kube, Matching::new(Method::GET, path)).await;
            }
            let late = kube.namespace("late", &[("environment", "prod")]).await;
            let mut n = 0;
            let classified = within_two_seconds(|| {
                n += 1;
                let (gw, late) = (&gw, &late);
                async move {
                    let (_, body) = post(gw, late, &format!("Probe{n}"), "web-0").await;
                    let name = body["name"].as_str().unwrap_or_default().to_string();
                    let requests = kube.requests(late).await;
                    requests
                        .iter()
                        .any(|rr| rr.metadata.name.as_deref() == Some(&name) && rr.spec.environment == "production")
                }
            })
            .await;
            gw.stop().await;
            classified
        }
        (resource @ ("deployments" | "statefulsets" | "daemonsets" | "cronjobs"), "list") => {
            // Scope knows a workload labelled before start from the first signal on:
            // the gateway does not start until the label caches have listed.
            let (pod, kind, name) = workload_of(kube, &ns, resource).await;
            kube.label_object(&ns, kind, name, REMEDIATE_LABEL, Some("false")).await;
            let Ok(mut gw) = start(kube, &token, |c| c.scope.mode = ScopeMode::OptOut).await else {
                return false;
            };
            gw.owner_caches_listed().await;
            let out = out_of_scope(&gw, &ns, pod).await;
            gw.stop().await;
            out
        }
        (resource @ ("deployments" | "statefulsets" | "daemonsets" | "cronjobs"), "watch") => {
            // A workload labelled after start is known from the watch, without a GET.
            let mut gw = start(kube, &token, |c| c.scope.mode = ScopeMode::OptOut).await.expect("starts");
            gw.owner_caches_listed().await;
            if without {
                refused(kube, Matching::new(Method::GET, path).watching()).await;
            }
            let (pod, kind, name) = workload_of(kube, &ns, resource).await;
            kube.label_object(&ns, kind, name, REMEDIATE_LABEL, Some("false")).await;
            let learnt = within_two_seconds(|| out_of_scope(&gw, &ns, pod)).await;
            gw.stop().await;
            learnt
        }
        (resource, "get") => {
            // An owner the caches lack is read with one GET.
            let (pod, top) = chain_for(resource);
            let gw = start(kube, &token, |_| {}).await.expect("starts");
            gw.owner_caches_listed().await;
            kube.proxy.hold_watches(path.trim_end_matches('?'));
            workloads(kube, &ns).await;
            post(&gw, &ns, "Probe", pod).await;
            kube.proxy.release();
            let mut gw = gw;
            gw.stop().await;
            targets(kube, &ns).await == [top]
        }
        (resource, "list") => {
            // Objects that existed at start are known without a GET.
            let (pod, top) = chain_for(resource);
            workloads(kube, &ns).await;
            let mut gw = start(kube, &token, |_| {}).await.expect("starts");
            if without {
                refused(kube, Matching::new(Method::GET, path)).await;
            } else {
                gw.owner_caches_listed().await;
            }
            let cached = kind_cached_without_get(&gw, &ns, pod, top, kube).await;
            gw.stop().await;
            cached
        }
        (resource, "watch") => {
            // Objects made after start are learnt from the watch, without a GET.
            let (pod, top) = chain_for(resource);
            let mut gw = start(kube, &token, |_| {}).await.expect("starts");
            let kind = match resource {
                "pods" => "Pod",
                "replicasets" => "ReplicaSet",
                _ => "Job",
            };
            gw.owner_caches_listed().await;
            if without {
                refused(kube, Matching::new(Method::GET, path).watching()).await;
            }
            let gauge = |kind: &str| format!(r#"tidegate_kube_owner_cache_objects{{kind="{kind}"}}"#);
            let mut before = Vec::new();
            for other in ["Pod", "ReplicaSet", "Job"] {
                before.push((other, gw.metric(&gauge(other)).await));
            }
            workloads(kube, &ns).await;
            // The watches report what `workloads` made within moments: the granted
            // ones surely, the one under test only if it is granted.
            let mut learnt = true;
            for (other, before) in before {
                let made = if other == "Pod" { 2.0 } else { 1.0 };
                let series = gauge(other);
                let check = || async { gw.metric(&series).await >= before + made };
                if other == kind {
                    learnt = within_two_seconds(check).await;
                } else {
                    eventually("a granted watch to report new objects", check).await;
                }
            }
            let cached = learnt && kind_cached_without_get(&gw, &ns, pod, top, kube).await;
            gw.stop().await;
            cached
        }
        other => panic!("no behaviour is known to need {other:?}: take it out of deploy/rbac.yaml"),
    }
}

/// Whether an alert about `pod` is attributed to `top` without any owner GET.
async fn kind_cached_without_get(gw: &Gateway, ns: &str, pod: &str, top: &str, kube: &Kube) -> bool {
    let gets = gw.metric(GET_METADATA).await;
    post(gw, ns, "Probe", pod).await;
    let no_get = gw.metric(GET_METADATA).await == gets;
    no_get && targets(kube, ns).await == [top]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_verb_of_the_shipped_role_is_needed_and_the_role_is_enough() {
    let kube = Kube::new().await;
    let all = grants(&shipped_role());
    let mut report = Vec::new();
    for (i, grant) in all.iter().enumerate() {
        let mut fewer = all.clone();
        fewer.remove(grant);
        let with = behaves(&kube, grant, &all, &format!("rbac-all-{i}")).await;
        let without = behaves(&kube, grant, &fewer, &format!("rbac-less-{i}")).await;
        report.push(format!("{}/{} {}: with {with}, without {without}", grant.group, grant.resource, grant.verb));
        assert!(with, "with the whole role, what {grant:?} serves must work:\n{}", report.join("\n"));
        assert!(!without, "without {grant:?} nothing broke: it is not needed:\n{}", report.join("\n"));
    }
    eprintln!("{}", report.join("\n"));
}
