//! Smoke tests of the fake Kubernetes API (`tests/support/kube_api.rs`), each driven
//! through the real `kube::Api`, `watcher` and `reflector`.
//!
//! Included by path so this binary does not depend on `support/mod.rs`.

#[path = "support/kube_api.rs"]
mod kube_api;

use std::future::Future;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::Status;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use kube_api::{FakeApi, Fault, Verb};
use serde_json::{json, Value};
use tidegate::remediation::RemediationRequest;

const NS: &str = "prod";

/// A valid request named `name`, with `labels`, and a status the server must drop.
fn request(name: &str, labels: &[(&str, &str)]) -> RemediationRequest {
    let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    serde_json::from_value(json!({
        "apiVersion": "remediation.tidegate.dev/v1alpha1",
        "kind": "RemediationRequest",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "signalFingerprint": "ab".repeat(32),
            "signalName": "KubePodCrashLooping",
            "severity": "critical",
            "signalType": "prometheus-alert",
            "signalSource": "alertmanager",
            "targetResource": {"kind": "Pod", "name": "web-0", "namespace": NS},
            "receivedTime": "2024-05-01T10:00:00Z",
            "environment": "production",
            "priority": "P1"
        },
        "status": {"phase": "Pending"}
    }))
    .unwrap()
}

async fn setup() -> (FakeApi, Api<RemediationRequest>) {
    let fake = FakeApi::start().await;
    fake.insert_namespace(NS, &[("env", "production")]);
    let api = Api::namespaced(fake.client(), NS);
    (fake, api)
}

/// The `Status` of a failed call.
fn status<T: std::fmt::Debug>(result: kube::Result<T>) -> Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn rv(rr: &RemediationRequest) -> u64 {
    rr.resource_version().unwrap().parse().unwrap()
}

/// Polls `check` until it holds, for at most 5 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test]
async fn names_agree_with_the_resource_type() {
    assert_eq!(RemediationRequest::group(&()), kube_api::GROUP);
    assert_eq!(RemediationRequest::version(&()), kube_api::VERSION);
    assert_eq!(RemediationRequest::plural(&()), kube_api::PLURAL);
}

#[tokio::test]
async fn create_get_and_already_exists() {
    let (fake, api) = setup().await;
    let created = api.create(&PostParams::default(), &request("rr-1", &[])).await.unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    assert_eq!(meta.namespace.as_deref(), Some(NS));
    assert_eq!(rv(&created), fake.resource_version());
    assert_eq!(created.status, None, "status subresource: create drops status");

    let got = api.get("rr-1").await.unwrap();
    assert_eq!(serde_json::to_value(&got).unwrap(), serde_json::to_value(&created).unwrap());

    let again = status(api.create(&PostParams::default(), &request("rr-1", &[])).await);
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    let details = again.details.unwrap();
    assert_eq!((details.name.as_str(), details.group.as_str()), ("rr-1", kube_api::GROUP));
    assert_eq!(details.kind, "remediationrequests");
    assert_eq!(fake.calls(Verb::Create), 2);
    assert_eq!(fake.calls(Verb::Get), 1);
    assert_eq!(fake.objects(NS).len(), 1);
}

#[tokio::test]
async fn missing_objects_and_namespaces_are_not_found() {
    let (fake, api) = setup().await;
    let missing = status(api.get("nope").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert!(status(api.delete("nope", &DeleteParams::default()).await).is_not_found());

    let elsewhere: Api<RemediationRequest> = Api::namespaced(fake.client(), "no-such-ns");
    let err = status(elsewhere.create(&PostParams::default(), &request("rr-1", &[])).await);
    assert_eq!(err.code, 404);
    assert_eq!(err.details.unwrap().kind, "namespaces");
}

#[tokio::test]
async fn invalid_names_and_mismatched_namespaces_are_refused() {
    let (fake, api) = setup().await;
    let err = status(api.create(&PostParams::default(), &request("Not_A_Name", &[])).await);
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert_eq!(err.details.unwrap().causes[0].field, "metadata.name");

    let err = status(api.create(&PostParams::default(), &request("rr-1", &[("bad key!", "x")])).await);
    assert_eq!(err.code, 422);

    let mut other_ns = request("rr-1", &[]);
    other_ns.metadata.namespace = Some("default".into());
    let err = status(api.create(&PostParams::default(), &other_ns).await);
    // What a real API server answers (the namespace check precedes validation).
    assert_eq!((err.code, err.reason.as_str()), (400, "BadRequest"));
    assert!(fake.objects(NS).is_empty());
}

#[tokio::test]
async fn stale_status_writes_conflict() {
    let (fake, api) = setup().await;
    let created = api.create(&PostParams::default(), &request("rr-1", &[])).await.unwrap();
    fake.set_phase(NS, "rr-1", "Processing");

    // PUT /status with the resourceVersion from before the controller's write.
    let mut stale = created.clone();
    stale.status = Some(Default::default());
    let err = status(api.replace_status("rr-1", &PostParams::default(), &stale).await);
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));

    // A merge patch that carries a resourceVersion is conditional on it.
    let patch = json!({"metadata": {"resourceVersion": created.resource_version()}, "status": {"phase": "Done"}});
    let err = status(api.patch_status("rr-1", &PatchParams::default(), &Patch::Merge(&patch)).await);
    assert!(err.is_conflict());

    // Fresh writes succeed, change only status, and bump the resourceVersion.
    let current = api.get("rr-1").await.unwrap();
    let patch = json!({"metadata": {"resourceVersion": current.resource_version()}, "status": {"phase": "Done"}});
    let patched = api.patch_status("rr-1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    assert_eq!(patched.status.as_ref().unwrap().phase.as_deref(), Some("Done"));
    assert_eq!(patched.spec, created.spec);
    assert!(rv(&patched) > rv(&current));

    let mut replaced = patched.clone();
    replaced.status.as_mut().unwrap().phase = Some("Closed".into());
    replaced.spec.priority = "P4".into(); // ignored: a status write changes only status
    let replaced = api.replace_status("rr-1", &PostParams::default(), &replaced).await.unwrap();
    assert_eq!(replaced.status.unwrap().phase.as_deref(), Some("Closed"));
    assert_eq!(replaced.spec, created.spec);

    // An unconditional merge patch applies to whatever is current; a no-op changes nothing.
    let before = fake.resource_version();
    let noop = json!({"status": {"phase": "Closed"}});
    api.patch_status("rr-1", &PatchParams::default(), &Patch::Merge(&noop)).await.unwrap();
    assert_eq!(fake.resource_version(), before, "a no-op write is not a change");
}

#[tokio::test]
async fn spec_is_immutable_but_metadata_is_not() {
    let (_fake, api) = setup().await;
    let created = api.create(&PostParams::default(), &request("rr-1", &[])).await.unwrap();

    let change = json!({"spec": {"priority": "P4"}});
    let err = status(api.patch("rr-1", &PatchParams::default(), &Patch::Merge(&change)).await);
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert_eq!(err.details.unwrap().causes[0].field, "spec");

    let mut replaced = created.clone();
    replaced.spec.severity = "info".into();
    assert!(status(api.replace("rr-1", &PostParams::default(), &replaced).await).is_invalid());

    // Labels may change; status sent to the main resource is ignored.
    let labels = json!({"metadata": {"labels": {"team": "sre"}}, "status": {"phase": "Hacked"}});
    let patched = api.patch("rr-1", &PatchParams::default(), &Patch::Merge(&labels)).await.unwrap();
    assert_eq!(patched.labels().get("team").map(String::as_str), Some("sre"));
    assert_eq!(patched.status, None);
    assert_eq!(patched.metadata.generation, Some(1));

    // RFC 6902: a failing `test` rejects the whole patch with 422.
    let ops: Value = json!([
        {"op": "test", "path": "/spec/priority", "value": "P9"},
        {"op": "add", "path": "/metadata/labels/x", "value": "y"}
    ]);
    let err = status(
        api.patch("rr-1", &PatchParams::default(), &Patch::Json::<()>(serde_json::from_value(ops).unwrap())).await,
    );
    assert_eq!(err.code, 422);
    let ops: Value = json!([
        {"op": "test", "path": "/spec/priority", "value": "P1"},
        {"op": "add", "path": "/status", "value": {"phase": "Queued"}}
    ]);
    let patched = api
        .patch_status("rr-1", &PatchParams::default(), &Patch::Json::<()>(serde_json::from_value(ops).unwrap()))
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().phase.as_deref(), Some("Queued"));

    // Server-side apply is not supported by the fake.
    let err = status(api.patch("rr-1", &PatchParams::apply("test"), &Patch::Apply(&created)).await);
    assert_eq!(err.code, 415);
}

#[tokio::test]
async fn list_with_label_and_field_selectors() {
    let (fake, api) = setup().await;
    fake.insert_namespace("staging", &[]);
    let sev = |s| [("tidegate.dev/severity", s), ("app.kubernetes.io/managed-by", "tidegate")];
    for (name, severity) in [("a", "critical"), ("b", "warning"), ("c", "info")] {
        api.create(&PostParams::default(), &request(name, &sev(severity))).await.unwrap();
    }
    let staging: Api<RemediationRequest> = Api::namespaced(fake.client(), "staging");
    staging.create(&PostParams::default(), &request("d", &[("tidegate.dev/severity", "critical")])).await.unwrap();
    api.create(&PostParams::default(), &request("e", &[])).await.unwrap();

    let names = |api: Api<RemediationRequest>, selector: &'static str| async move {
        let list = api.list(&ListParams::default().labels(selector)).await.unwrap();
        list.items.iter().map(|o| o.name_any()).collect::<Vec<_>>().join(",")
    };
    assert_eq!(names(api.clone(), "tidegate.dev/severity=critical").await, "a");
    assert_eq!(names(api.clone(), "tidegate.dev/severity==warning").await, "b");
    assert_eq!(names(api.clone(), "tidegate.dev/severity!=critical").await, "b,c,e");
    assert_eq!(names(api.clone(), "tidegate.dev/severity in (critical, info)").await, "a,c");
    assert_eq!(names(api.clone(), "tidegate.dev/severity notin (critical)").await, "b,c,e");
    assert_eq!(names(api.clone(), "tidegate.dev/severity").await, "a,b,c");
    assert_eq!(names(api.clone(), "!tidegate.dev/severity").await, "e");
    assert_eq!(
        names(api.clone(), "app.kubernetes.io/managed-by=tidegate,tidegate.dev/severity in (info,warning)").await,
        "b,c"
    );
    let all: Api<RemediationRequest> = Api::all(fake.client());
    assert_eq!(names(all.clone(), "tidegate.dev/severity=critical").await, "a,d");

    let by_name = api.list(&ListParams::default().fields("metadata.name=b")).await.unwrap();
    assert_eq!(by_name.items.len(), 1);
    let list = all.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.metadata.resource_version, Some(fake.resource_version().to_string()));
    assert!(status(api.list(&ListParams::default().labels("a in (")).await).code == 400);

    // Paging: limit and continue cover everything exactly once.
    let mut seen = Vec::new();
    let mut params = ListParams::default().limit(2);
    loop {
        let page = all.list(&params).await.unwrap();
        seen.extend(page.items.iter().map(|o| o.name_any()));
        match page.metadata.continue_ {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(seen.join(","), "a,b,c,e,d");
    assert_eq!(fake.calls(Verb::List), 15);
}

#[tokio::test]
async fn namespaces_are_served_too() {
    let (fake, _api) = setup().await;
    let namespaces: Api<Namespace> = Api::all(fake.client());
    let prod = namespaces.get(NS).await.unwrap();
    assert_eq!(prod.labels().get("env").map(String::as_str), Some("production"));
    assert_eq!(prod.labels().get("kubernetes.io/metadata.name").map(String::as_str), Some(NS));
    assert_eq!(prod.status.unwrap().phase.as_deref(), Some("Active"));

    let mut ns = Namespace::default();
    ns.metadata.name = Some("team-a".into());
    ns.metadata.labels = Some([("tier".to_string(), "gold".to_string())].into());
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let gold = namespaces.list(&ListParams::default().labels("tier=gold")).await.unwrap();
    assert_eq!(gold.items.len(), 1);
    assert!(status(namespaces.create(&PostParams::default(), &ns).await).is_already_exists());
    let names: Vec<String> =
        namespaces.list(&ListParams::default()).await.unwrap().items.iter().map(|n| n.name_any()).collect();
    assert_eq!(names, ["default", NS, "team-a"]);

    // Deleting a namespace deletes what is in it.
    fake.insert(NS, serde_json::to_value(request("rr-1", &[])).unwrap());
    namespaces.delete(NS, &DeleteParams::default()).await.unwrap();
    assert!(fake.objects(NS).is_empty());
}

#[tokio::test]
async fn reflector_follows_creates_deletes_and_dropped_watches() {
    let (fake, api) = setup().await;
    api.create(&PostParams::default(), &request("before", &[])).await.unwrap();

    let (reader, writer) = reflector::store::<RemediationRequest>();
    let stream =
        reflector(writer, watcher(api.clone(), watcher::Config::default())).default_backoff().applied_objects();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    within("initial list", reader.wait_until_ready()).await.unwrap();
    assert_eq!(reader.state().len(), 1);
    eventually("watch open", || fake.open_watches() == 1).await;

    api.create(&PostParams::default(), &request("after", &[])).await.unwrap();
    eventually("created object seen", || reader.state().len() == 2).await;

    fake.set_phase(NS, "after", "Processing");
    let phase = |r: &reflector::Store<RemediationRequest>| {
        let obj = r.state().into_iter().find(|o| o.name_any() == "after");
        obj.and_then(|o| o.status.as_ref().and_then(|s| s.phase.clone()))
    };
    eventually("phase seen", || phase(&reader).as_deref() == Some("Processing")).await;

    api.delete("before", &DeleteParams::default()).await.unwrap();
    eventually("delete seen", || reader.state().len() == 1).await;

    // Cut the watch; changes made while the watcher reconnects are not lost.
    let watches_before = fake.calls(Verb::Watch);
    fake.drop_watches();
    fake.delete(NS, "after");
    api.create(&PostParams::default(), &request("during-outage", &[])).await.unwrap();
    eventually("rewatched", || fake.calls(Verb::Watch) > watches_before).await;
    eventually("state after reconnect", || {
        reader.state().iter().map(|o| o.name_any()).collect::<Vec<_>>() == ["during-outage"]
    })
    .await;
    assert_eq!(fake.calls(Verb::List), 1, "resuming from the last resourceVersion needs no relist");

    // A change the watcher missed, then compaction: resuming gets 410 Gone, and the
    // watcher relists.
    fake.set_down(true);
    fake.insert(NS, serde_json::to_value(request("while-down", &[])).unwrap());
    fake.compact();
    fake.set_down(false);
    eventually("relisted", || fake.calls(Verb::List) == 2 && reader.state().len() == 2).await;
    task.abort();
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_and_bookmark() {
    let (fake, api) = setup().await;
    api.create(&PostParams::default(), &request("one", &[])).await.unwrap();
    let mut events = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut init = Vec::new();
    loop {
        match within("initial events", events.next()).await.unwrap().unwrap() {
            watcher::Event::Init => {}
            watcher::Event::InitApply(obj) => init.push(obj.name_any()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(init, ["one"]);
    assert_eq!(fake.calls(Verb::List), 0);
    let watch = fake.requests().into_iter().find(|c| c.verb == Verb::Watch).unwrap();
    assert!(watch.uri.contains("sendInitialEvents=true") && watch.uri.contains("resourceVersionMatch=NotOlderThan"));

    api.create(&PostParams::default(), &request("two", &[])).await.unwrap();
    match within("apply", events.next()).await.unwrap().unwrap() {
        watcher::Event::Apply(obj) => assert_eq!(obj.name_any(), "two"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn raw_watch_events_bookmarks_and_gone() {
    let (fake, api) = setup().await;
    let first = api.create(&PostParams::default(), &request("one", &[("k", "a")])).await.unwrap();
    let start = first.resource_version().unwrap();

    let params = WatchParams::default().labels("k=a").timeout(2);
    let mut stream = api.watch(&params, &start).await.unwrap().boxed();
    api.create(&PostParams::default(), &request("two", &[("k", "a")])).await.unwrap();
    api.create(&PostParams::default(), &request("other", &[("k", "b")])).await.unwrap();
    // Relabelling out of the selector arrives as DELETED.
    let relabel = json!({"metadata": {"labels": {"k": "b"}}});
    api.patch("two", &PatchParams::default(), &Patch::Merge(&relabel)).await.unwrap();
    fake.bookmark();
    let mut seen = Vec::new();
    while let Some(event) = within("watch events", stream.try_next()).await.unwrap() {
        seen.push(match event {
            WatchEvent::Added(o) => format!("ADDED {}", o.name_any()),
            WatchEvent::Modified(o) => format!("MODIFIED {}", o.name_any()),
            WatchEvent::Deleted(o) => format!("DELETED {}", o.name_any()),
            WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
            WatchEvent::Error(e) => format!("ERROR {}", e.code),
        });
    }
    // ...and the stream ends cleanly after timeoutSeconds.
    let now = fake.resource_version();
    assert_eq!(seen, ["ADDED two".to_string(), "DELETED two".into(), format!("BOOKMARK {now}")]);

    fake.compact();
    let mut stream = api.watch(&WatchParams::default(), &start).await.unwrap().boxed();
    match within("gone", stream.try_next()).await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn injected_faults_reach_the_client() {
    let (fake, api) = setup().await;
    api.create(&PostParams::default(), &request("rr-1", &[])).await.unwrap();

    fake.fail_next(1, Fault::InternalError);
    let err = status(api.get("rr-1").await);
    assert_eq!((err.code, err.reason.as_str()), (500, "InternalError"));
    api.get("rr-1").await.unwrap();

    fake.fail_next_matching(2, Fault::TooManyRequests, Some(Verb::Create), "");
    let err = status(api.create(&PostParams::default(), &request("rr-2", &[])).await);
    assert_eq!((err.code, err.reason.as_str()), (429, "TooManyRequests"));
    api.get("rr-1").await.unwrap(); // not a create: unaffected
    assert_eq!(status(api.create(&PostParams::default(), &request("rr-2", &[])).await).code, 429);
    api.create(&PostParams::default(), &request("rr-2", &[])).await.unwrap();

    fake.fail_next_matching(1, Fault::InternalError, None, "/status");
    api.get("rr-2").await.unwrap();
    let phase = json!({"status": {"phase": "X"}});
    assert_eq!(status(api.patch_status("rr-2", &PatchParams::default(), &Patch::Merge(&phase)).await).code, 500);

    fake.set_down(true);
    assert_eq!(status(api.get("rr-1").await).code, 503);
    fake.set_down(false);
    api.get("rr-1").await.unwrap();

    // A delay past the client's timeout fails the call, though the write lands.
    let impatient: Api<RemediationRequest> =
        Api::namespaced(fake.client_with(|c| c.read_timeout = Some(Duration::from_millis(300))), NS);
    fake.fail_next(1, Fault::Delay(Duration::from_secs(2)));
    let started = Instant::now();
    let result = impatient.create(&PostParams::default(), &request("rr-3", &[])).await;
    assert!(result.is_err(), "expected a timeout, got {result:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(fake.object(NS, "rr-3").is_some());
    assert!(status(api.create(&PostParams::default(), &request("rr-3", &[])).await).is_already_exists());

    assert_eq!(fake.calls(Verb::Create), 6);
    assert_eq!(fake.calls(Verb::Patch), 1);
    fake.reset_calls();
    assert_eq!(fake.calls(Verb::Get), 0);
}
