//! Silences against the real API server: the CRD's CEL rules, `kubectl get rsil`'s
//! columns, tenancy by namespaced RBAC (the shipped `tidegate-silencer` role bound
//! in one namespace silences that namespace only, through `tidegate silence`, the
//! binary, with a kubeconfig of that account), a gateway in kube mode honouring
//! a silence of its own namespace only, naming the silence active on an open
//! request in its status while it is, and warning with one Event per version of a
//! silence it ignores.

mod support;

use std::path::Path;
use std::process::Command;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use support::kube::Kube;
use support::{alert, eventually, eventually_within, webhook};
use tidegate::remediation::RemediationRequest;
use tidegate::silence::resource::RemediationSilence;

/// How long the API server, its watches and the gateway's writes get, loaded.
const SLOW: std::time::Duration = std::time::Duration::from_secs(30);

/// The `silence.max_duration` of every gateway here. The tests of this binary share
/// one API server and every gateway watches every namespace's silences and records
/// their state, so their rules must agree (as a release's replicas' do), or one
/// gateway's state of another test's silence would stand in that test's way.
const MAX_DURATION: SignedDuration = SignedDuration::from_mins(150);

/// A gateway on tidegate's service account, with this binary's silence rules.
async fn gateway(kube: &Kube) -> support::Gateway {
    support::start_kube_as(kube.gateway_client(), tidegate::clock::Clock::System, |c| {
        c.silence.max_duration = MAX_DURATION.unsigned_abs()
    })
    .await
}

fn silence(name: &str, matchers: &[&str], starts: Timestamp, ends: Timestamp) -> Value {
    json!({
        "apiVersion": "remediation.tidegate.dev/v1alpha1",
        "kind": "RemediationSilence",
        "metadata": {"name": name},
        "spec": {"matchers": matchers, "startsAt": starts.to_string(), "endsAt": ends.to_string(), "comment": "drain"},
    })
}

async fn create(api: &Api<RemediationSilence>, object: Value) -> Result<RemediationSilence, kube::Error> {
    api.create(&PostParams::default(), &serde_json::from_value(object).unwrap()).await
}

fn refused_with(result: Result<impl std::fmt::Debug, kube::Error>, message: &str) {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains(message), "{:?} lacks {message:?}", status.message);
        }
        other => panic!("expected a 422 naming {message:?}, got {other:?}"),
    }
}

async fn merge(api: &Api<RemediationSilence>, name: &str, patch: Value) -> Result<RemediationSilence, kube::Error> {
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await
}

#[tokio::test]
async fn the_crd_refuses_long_silences_and_every_change_but_an_earlier_end() {
    let kube = Kube::new().await;
    let ns = kube.namespace("rsil-cel", &[]).await;
    let api: Api<RemediationSilence> = Api::namespaced(kube.admin.clone(), &ns);
    let now = Timestamp::now();

    let long = silence("long", &["alertname=X"], now, now + SignedDuration::from_hours(31 * 24));
    refused_with(create(&api, long).await, "a silence lasts at most 30 days");
    let backwards = silence("backwards", &["alertname=X"], now, now - SignedDuration::from_hours(1));
    refused_with(create(&api, backwards).await, "endsAt must not be before startsAt");
    let mut no_comment = silence("nocomment", &["alertname=X"], now, now + SignedDuration::from_hours(1));
    no_comment["spec"]["comment"] = json!("");
    assert!(
        matches!(create(&api, no_comment).await, Err(kube::Error::Api(s)) if s.code == 422),
        "a comment is required"
    );

    let ends = now + SignedDuration::from_hours(2);
    create(&api, silence("drain", &["alertname=X"], now, ends)).await.expect("a 2-hour silence");
    let later = (ends + SignedDuration::from_hours(1)).to_string();
    refused_with(merge(&api, "drain", json!({"spec": {"endsAt": later}})).await, "endsAt may only move earlier");
    refused_with(merge(&api, "drain", json!({"spec": {"matchers": ["alertname=Y"]}})).await, "immutable except endsAt");
    refused_with(merge(&api, "drain", json!({"spec": {"comment": "other"}})).await, "immutable except endsAt");
    let earlier = (now + SignedDuration::from_hours(1)).to_string();
    let expired = merge(&api, "drain", json!({"spec": {"endsAt": earlier}})).await.expect("an earlier end");
    assert_eq!(expired.spec.ends_at.0, now + SignedDuration::from_hours(1));
}

/// Runs `tidegate silence <args> --sink kube` with `kubeconfig`: exit success, stdout, stderr.
fn cli(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidegate"));
    command.arg("silence").args(args).args(["--sink", "kube"]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TIDEGATE_") {
            command.env_remove(name);
        }
    }
    let out = command.env("KUBECONFIG", kubeconfig).output().expect("run tidegate");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A service account in `ns` bound there (a RoleBinding) to the shipped
/// `tidegate-silencer` ClusterRole; its token.
async fn silencer_in(kube: &Kube, ns: &str) -> String {
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "oncall"}})).unwrap();
    Api::<ServiceAccount>::namespaced(kube.admin.clone(), ns).create(&PostParams::default(), &sa).await.unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "oncall-silencer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "tidegate-silencer"},
        "subjects": [{"kind": "ServiceAccount", "name": "oncall", "namespace": ns}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(kube.admin.clone(), ns).create(&PostParams::default(), &binding).await.unwrap();
    support::kube::token(&kube.admin, ns, "oncall").await
}

#[tokio::test]
async fn a_silencer_of_one_namespace_silences_it_alone_and_its_silence_matches_its_signals_alone() {
    let kube = Kube::new().await;
    let a = kube.namespace("rsil-a", &[]).await;
    let b = kube.namespace("rsil-b", &[]).await;
    let token = silencer_in(&kube, &a).await;
    let dir = tempfile::tempdir().unwrap();
    let config = support::kubeconfig(dir.path(), "silencer", &token);
    // The system clock (as every gateway here has): the CLI stamps silences with the real time.
    let gw = gateway(&kube).await;

    // Bindings take effect a moment after they are written.
    let mut added = None;
    for _ in 0..100 {
        let matcher = format!("namespace={a}");
        let (ok, out, err) =
            cli(&config, &["add", "alertname=KubePodCrashLooping", &matcher, "--for", "2h", "--comment", "node drain"]);
        if ok {
            added = Some(out);
            break;
        }
        assert!(err.contains("forbidden") || err.contains("Forbidden"), "{err}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = added.expect("the silencer of a may silence a");
    let name = out.lines().last().unwrap().trim().to_string();
    assert!(name.starts_with("silence-"), "the last line names the silence: {out:?}");
    let (ok, _, err) =
        cli(&config, &["add", "alertname=KubePodCrashLooping", "--for", "2h", "--comment", "x", "-n", &b]);
    assert!(!ok && err.to_lowercase().contains("forbidden"), "a silencer of a may not silence b: {err}");

    // The gateway honours a's silence for a's signals only.
    let silences = gw.running().silences.as_ref().expect("silences enabled").silences.clone();
    eventually("the gateway to see the silence", || {
        let silences = silences.clone();
        let name = name.clone();
        async move { silences.known().iter().any(|(at, k)| at.name == name && k.silence.is_ok()) }
    })
    .await;
    let (status, body) = post(&gw, &a, "web-1").await;
    assert_eq!(
        (status, body["status"].as_str(), body["silence"]["name"].as_str()),
        (202, Some("silenced"), Some(name.as_str())),
        "{body}"
    );
    let (status, body) = post(&gw, &b, "web-1").await;
    assert_eq!((status, body["status"].as_str()), (201, Some("created")), "{body}");

    // `kubectl get rsil`: the state, end and matched count the gateway wrote.
    let listed = table(&kube, &a).await;
    let columns: Vec<&str> =
        listed["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for wanted in ["State", "Ends", "Matched"] {
        assert!(columns.contains(&wanted), "{columns:?}");
    }
    eventually("the silence's row to show it active and matched", || async {
        let rows = table(&kube, &a).await;
        let row = &rows["rows"][0]["cells"];
        let at = |c: &str| columns.iter().position(|n| *n == c).unwrap();
        row[at("State")] == "active" && row[at("Matched")].as_u64().is_some_and(|n| n >= 1)
    })
    .await;

    let (ok, out, _) = cli(&config, &["list", "-n", &a]);
    assert!(ok && out.contains(&name) && out.contains("active"), "{out}");
    let (ok, _, err) = cli(&config, &["expire", &name, "-n", &a]);
    assert!(ok, "{err}");
    eventually("the expired silence to let a's next alert open a request", || async {
        let (status, _) = post(&gw, &a, "web-2").await;
        status == 201
    })
    .await;
}

async fn post(gw: &support::Gateway, ns: &str, pod: &str) -> (u16, Value) {
    let resp = gw.alerts(&webhook(vec![alert("KubePodCrashLooping", ns, pod)])).await;
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// The silences of `ns` as `kubectl get rsil` asks for them: a server-side Table.
async fn table(kube: &Kube, ns: &str) -> Value {
    let request = axum::http::Request::get(format!(
        "/apis/remediation.tidegate.dev/v1alpha1/namespaces/{ns}/remediationsilences"
    ))
    .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    .body(Vec::new())
    .unwrap();
    let text = kube.admin.request_text(request).await.expect("a table");
    serde_json::from_str(&text).unwrap()
}

/// Waits until the gateway `gw` knows the silence `namespace/name`, understood or not.
async fn gateway_knows(gw: &support::Gateway, namespace: &str, name: &str) {
    let silences = gw.running().silences.as_ref().expect("silences enabled").silences.clone();
    let wanted = tidegate::silence::SilenceRef { namespace: namespace.into(), name: name.into() };
    eventually_within("the gateway to see the silence", SLOW, || {
        let (silences, wanted) = (silences.clone(), wanted.clone());
        async move { silences.known().iter().any(|(at, _)| *at == wanted) }
    })
    .await;
}

#[tokio::test]
async fn an_open_requests_status_names_the_silence_active_on_it_until_the_silence_is_expired() {
    let kube = Kube::new().await;
    let ns = kube.namespace("rsil-open", &[]).await;
    let gw = gateway(&kube).await;
    let (status, body) = post(&gw, &ns, "web-1").await;
    assert_eq!(status, 201, "{body}");
    let name = body["name"].as_str().unwrap().to_string();
    let at = tidegate::sink::RequestRef { namespace: ns.clone(), name: name.clone() };
    gw.sink_sees(&at, tidegate::sink::Lookup::Open).await;
    let silences: Api<RemediationSilence> = Api::namespaced(kube.admin.clone(), &ns);
    let now = Timestamp::now();
    let matchers = ["alertname=KubePodCrashLooping"];
    let created = create(
        &silences,
        silence("maintenance", &matchers, now - SignedDuration::from_mins(1), now + SignedDuration::from_hours(2)),
    )
    .await
    .unwrap();
    gateway_knows(&gw, &ns, "maintenance").await;
    let requests: Api<RemediationRequest> = Api::namespaced(kube.admin.clone(), &ns);
    let silenced_by = || async { requests.get(&name).await.unwrap().status.and_then(|s| s.silenced_by) };

    let (status, body) = post(&gw, &ns, "web-1").await;

    assert_eq!((status, body["status"].as_str()), (202, Some("duplicate")), "{body}");
    eventually_within("the request's status to name the silence and its end", SLOW, || async {
        silenced_by().await.is_some_and(|by| {
            (by.namespace.as_str(), by.name.as_str(), &by.until) == (ns.as_str(), "maintenance", &created.spec.ends_at)
        })
    })
    .await;
    // Expired (its end moved to now), with no occurrence after: the mark goes.
    merge(&silences, "maintenance", json!({"spec": {"endsAt": Timestamp::now().to_string()}})).await.unwrap();
    eventually_within("the mark to be cleared once the silence is expired", SLOW, || async {
        silenced_by().await.is_none()
    })
    .await;
}

#[tokio::test]
async fn an_ignored_silence_gets_one_warning_event_per_version_not_one_per_signal() {
    use k8s_openapi::api::events::v1::Event;
    let kube = Kube::new().await;
    let ns = kube.namespace("rsil-ignored", &[]).await;
    let gw = gateway(&kube).await;
    let silences: Api<RemediationSilence> = Api::namespaced(kube.admin.clone(), &ns);
    let now = Timestamp::now();
    let start = now - SignedDuration::from_mins(1);
    let matchers = ["alertname=KubePodCrashLooping"];
    let created = create(&silences, silence("long", &matchers, start, now + MAX_DURATION * 2)).await.unwrap();
    let events: Api<Event> = Api::namespaced(kube.admin.clone(), &ns);
    let warned = || async {
        let listed = events.list(&ListParams::default()).await.unwrap().items;
        listed
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("long"))
            .collect::<Vec<_>>()
    };
    eventually_within("a Warning Event on the ignored silence", SLOW, || async { !warned().await.is_empty() }).await;
    let event = warned().await.remove(0);
    assert_eq!((event.type_.as_deref(), event.reason.as_deref()), (Some("Warning"), Some("SilenceIgnored")));
    assert!(event.note.as_deref().is_some_and(|n| n.contains("silence.max_duration")), "{:?}", event.note);
    let regarding = event.regarding.unwrap();
    assert_eq!((regarding.kind.as_deref(), regarding.uid), (Some("RemediationSilence"), created.metadata.uid));

    // Signals it would match open requests, and warn of nothing more.
    for pod in ["web-1", "web-2", "web-3"] {
        let (status, body) = post(&gw, &ns, pod).await;
        assert_eq!(status, 201, "an ignored silence holds nothing back: {body}");
    }
    // The gateway has read back the status it wrote: what a second warning would follow.
    let known = gw.running().silences.as_ref().unwrap().silences.clone();
    eventually_within("the gateway to read the silence's status back as ignored", SLOW, || {
        let known = known.clone();
        async move { known.known().iter().any(|(at, k)| at.name == "long" && k.status.state.as_deref() == Some("ignored")) }
    })
    .await;
    assert_eq!(warned().await.len(), 1, "one event for this version of the silence");

    // A new version (its end moved earlier, still too long): one event more.
    merge(
        &silences,
        "long",
        json!({"spec": {"endsAt": (now + MAX_DURATION + SignedDuration::from_hours(1)).to_string()}}),
    )
    .await
    .unwrap();
    eventually_within("a second event, for the new version", SLOW, || async { warned().await.len() == 2 }).await;
}
