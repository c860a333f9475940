//! Silences with the directory sink: a silence file keeps matching alerts from
//! opening requests, answers them `silenced` with its name, counts them in its own
//! status, and stops holding when it is expired; an incident already open is
//! counted on its request as usual, whose status names the silence active on it
//! while it is; and the rules apply in the order docs/safety.md gives (admission,
//! then silences, then storms and dedup). A silence's status is written by the
//! requests' status writer: coalesced per interval, drained by a graceful stop.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;
use support::{alert, eventually, start_with, webhook, Gateway};
use tidegate::silence::dir::DirSilences;
use tidegate::silence::resource::{RemediationSilence, RemediationSilenceSpec};
use tidegate::silence::store::SilenceStore;
use tidegate::silence::SilenceRef;

fn now(gw: &Gateway) -> Timestamp {
    Timestamp::from_millisecond(gw.clock.now_ms() as i64).unwrap()
}

fn store(gw: &Gateway) -> Arc<DirSilences> {
    let dir: PathBuf = gw.dir.path().join(tidegate::silence::DEFAULT_DIR);
    Arc::new(DirSilences::new(dir).unwrap())
}

/// Writes a silence of `matchers` in `namespace`, active from a minute before the
/// gateway's now for an hour, and waits until the gateway honours it.
async fn silence(gw: &Gateway, namespace: &str, name: &str, matchers: &[&str]) -> SilenceRef {
    let start = now(gw) - jiff::SignedDuration::from_mins(1);
    let spec = RemediationSilenceSpec {
        matchers: matchers.iter().map(|m| m.to_string()).collect(),
        starts_at: Time(start),
        ends_at: Time(start + jiff::SignedDuration::from_hours(1)),
        comment: "node drain".into(),
        created_by: Some("test".into()),
        time_intervals: Vec::new(),
    };
    let mut object = RemediationSilence::new(name, spec);
    object.metadata.namespace = Some(namespace.into());
    store(gw).create(&object).await.unwrap();
    let silences = gw.running().silences.as_ref().expect("silences enabled").silences.clone();
    let at = SilenceRef { namespace: namespace.into(), name: name.into() };
    let wanted = at.clone();
    eventually("the gateway to honour the new silence", move || {
        let silences = silences.clone();
        let wanted = wanted.clone();
        async move { silences.known().iter().any(|(at, _)| *at == wanted) }
    })
    .await;
    at
}

/// Expires the silence at `at` now, and waits until the gateway sees it ended.
async fn expire(gw: &Gateway, at: &SilenceRef) {
    store(gw).expire(at, now(gw)).await.unwrap();
    let silences = gw.running().silences.as_ref().unwrap().silences.clone();
    let expired_at = now(gw);
    eventually("the gateway to see the silence expired", || {
        let silences = silences.clone();
        async move { silences.known().iter().all(|(_, k)| k.silence.as_ref().unwrap().ends_at <= expired_at) }
    })
    .await;
}

async fn post(gw: &Gateway, alerts: Vec<Value>) -> (u16, Value) {
    let resp = gw.alerts(&webhook(alerts)).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn status_of(gw: &Gateway, at: &SilenceRef) -> tidegate::silence::resource::RemediationSilenceStatus {
    let path = store(gw).path_of(at);
    tidegate::silence::dir::read(&path).unwrap().unwrap().status.unwrap_or_default()
}

#[tokio::test]
async fn a_silenced_alert_opens_no_request_and_is_answered_with_the_silence() {
    let gw = start_with(|_| {}).await;
    let at = silence(&gw, "shop", "drain", &[r#"alertname=~"Kube.*""#, "namespace=shop"]).await;

    let (status, body) = post(&gw, vec![alert("KubePodCrashLooping", "shop", "web-1")]).await;

    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "silenced");
    assert_eq!(body["silence"], serde_json::json!({"namespace": "shop", "name": "drain"}));
    assert!(gw.requests().is_empty(), "a silenced alert creates no request");
    assert_eq!(gw.metric("tidegate_signals_silenced_total{source=\"prometheus-alert\"}").await, 1.0);
    eventually("the silence's status to count the alert", || async {
        let s = status_of(&gw, &at);
        s.matched_signals == 1 && s.last_matched_at.is_some() && s.state.as_deref() == Some("active")
    })
    .await;
    // Another namespace's alert of the same name is not this silence's business.
    let (status, body) = post(&gw, vec![alert("KubePodCrashLooping", "bank", "web-1")]).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("created")), "{body}");
}

#[tokio::test]
async fn a_silences_count_waits_in_the_requests_status_writer_and_a_graceful_stop_writes_it() {
    // One write per silence per status_writer.interval, as for requests: a minute
    // here, so nothing is written before the stop.
    let mut gw = start_with(|c| c.status_writer.interval = Duration::from_secs(60)).await;
    let at = silence(&gw, "shop", "drain", &["alertname=KubePodCrashLooping"]).await;

    let (status, body) = post(&gw, vec![alert("KubePodCrashLooping", "shop", "web-1")]).await;

    assert_eq!((status, body["status"].as_str()), (202, Some("silenced")), "{body}");
    eventually("the status writer to hold the silence's write", || async {
        gw.metric("tidegate_status_updates_pending").await >= 1.0
    })
    .await;
    let written = r#"tidegate_sink_writes_total{op="update_silence_status",outcome="ok"}"#;
    assert_eq!(gw.metric(written).await, 0.0, "held for the interval");
    assert_eq!(status_of(&gw, &at).matched_signals, 0);
    gw.stop().await;
    let s = status_of(&gw, &at);
    assert_eq!((s.matched_signals, s.state.as_deref()), (1, Some("active")), "the stop drained it: {s:?}");
}

#[tokio::test]
async fn an_expired_silence_lets_the_next_alert_open_a_request() {
    let gw = start_with(|_| {}).await;
    let at = silence(&gw, "shop", "drain", &["alertname=KubePodCrashLooping"]).await;
    let (_, body) = post(&gw, vec![alert("KubePodCrashLooping", "shop", "web-1")]).await;
    assert_eq!(body["status"], "silenced");

    expire(&gw, &at).await;
    let (status, body) = post(&gw, vec![alert("KubePodCrashLooping", "shop", "web-1")]).await;

    assert_eq!((status, body["status"].as_str()), (201, Some("created")), "{body}");
    assert_eq!(gw.requests().len(), 1);
    eventually("the silence's status to say expired", || async {
        status_of(&gw, &at).state.as_deref() == Some("expired")
    })
    .await;
}

#[tokio::test]
async fn an_alert_of_an_open_incident_is_counted_on_its_request_not_silenced() {
    let gw = start_with(|_| {}).await;
    let (status, _) = post(&gw, vec![alert("KubePodCrashLooping", "shop", "web-1")]).await;
    assert_eq!(status, 201);
    silence(&gw, "shop", "late", &["alertname=KubePodCrashLooping"]).await;
    gw.sink_sees(
        &tidegate::sink::RequestRef {
            namespace: "shop".into(),
            name: gw.only_request().metadata.name.clone().unwrap(),
        },
        tidegate::sink::Lookup::Open,
    )
    .await;

    let (status, body) = post(&gw, vec![alert("KubePodCrashLooping", "shop", "web-1")]).await;

    assert_eq!((status, body["status"].as_str()), (202, Some("duplicate")), "{body}");
    eventually("the repeat to be counted on the open request", || async {
        support::occurrences(&gw.only_request()) == 2
    })
    .await;
}

/// The only request's `status.silencedBy`.
fn silenced_by(gw: &Gateway) -> Option<tidegate::remediation::SilencedBy> {
    gw.only_request().status.and_then(|s| s.silenced_by)
}

/// Opens a request for web-1's crash loop in `shop` and waits until the sink holds it open.
async fn open_request(gw: &Gateway) {
    let (status, _) = post(gw, vec![alert("KubePodCrashLooping", "shop", "web-1")]).await;
    assert_eq!(status, 201);
    let at =
        tidegate::sink::RequestRef { namespace: "shop".into(), name: gw.only_request().metadata.name.clone().unwrap() };
    gw.sink_sees(&at, tidegate::sink::Lookup::Open).await;
}

#[tokio::test]
async fn an_open_requests_status_names_the_silence_active_on_it_until_the_silence_is_expired() {
    let gw = start_with(|_| {}).await;
    open_request(&gw).await;
    let at = silence(&gw, "shop", "late", &["alertname=KubePodCrashLooping"]).await;
    let ends = tidegate::silence::dir::read(&store(&gw).path_of(&at)).unwrap().unwrap().spec.ends_at;

    let (status, body) = post(&gw, vec![alert("KubePodCrashLooping", "shop", "web-1")]).await;

    assert_eq!((status, body["status"].as_str()), (202, Some("duplicate")), "{body}");
    eventually("the request's status to name the silence and its end", || async {
        silenced_by(&gw)
            .is_some_and(|by| (by.namespace.as_str(), by.name.as_str(), &by.until) == ("shop", "late", &ends))
    })
    .await;
    assert_eq!(support::occurrences(&gw.only_request()), 2, "the repeat is counted all the same");
    // Expired with no occurrence after: the mark goes without waiting for one.
    store(&gw).expire(&at, now(&gw)).await.unwrap();
    eventually("the mark to be cleared once the silence is expired", || async { silenced_by(&gw).is_none() }).await;
}

#[tokio::test]
async fn an_occurrence_no_silence_matches_clears_the_mark() {
    let gw = start_with(|_| {}).await;
    open_request(&gw).await;
    // Matches warnings only: the incident's identity has no severity in it.
    silence(&gw, "shop", "warnings", &["alertname=KubePodCrashLooping", "severity=warning"]).await;
    let mut warning = alert("KubePodCrashLooping", "shop", "web-1");
    warning["labels"]["severity"] = "warning".into();
    post(&gw, vec![warning]).await;
    eventually("the request to be marked", || async { silenced_by(&gw).is_some() }).await;

    let (status, body) = post(&gw, vec![alert("KubePodCrashLooping", "shop", "web-1")]).await;

    assert_eq!((status, body["status"].as_str()), (202, Some("duplicate")), "{body}");
    eventually("the critical repeat, which no silence matches, to clear the mark", || async {
        silenced_by(&gw).is_none() && support::occurrences(&gw.only_request()) == 3
    })
    .await;
}

#[tokio::test]
async fn a_silence_comes_before_storms_and_silenced_alerts_count_toward_none() {
    let gw = start_with(|c| {
        c.storm.rate_threshold = 3;
        c.storm.pattern_threshold = 3;
    })
    .await;
    let at = silence(&gw, "shop", "drain", &["alertname=KubePodCrashLooping"]).await;
    // Ten pods' alerts: a storm by both rules, were they not silenced.
    let alerts = (0..10).map(|i| alert("KubePodCrashLooping", "shop", &format!("web-{i}"))).collect();

    let (status, body) = post(&gw, alerts).await;

    assert_eq!(status, 207, "{body}");
    assert_eq!(body["summary"]["silenced"], 10, "{body}");
    assert!(gw.requests().is_empty(), "no storm request, no single request");
    // Expired: the next two alerts are the first the storm rules see, under the
    // threshold of three, so each opens its own request.
    expire(&gw, &at).await;
    let alerts = (0..2).map(|i| alert("KubePodCrashLooping", "shop", &format!("db-{i}"))).collect();
    let (_, body) = post(&gw, alerts).await;
    assert_eq!(body["summary"]["created"], 2, "silenced alerts counted toward no storm: {body}");
    assert!(gw.requests().iter().all(|rr| rr.spec.storm.is_none()));
}

#[tokio::test]
async fn admission_comes_before_silences_a_rate_limited_sender_is_refused_even_when_silenced() {
    let gw = start_with(|c| {
        c.rate_limit.rate = 0.01;
        c.rate_limit.burst = 1;
    })
    .await;
    silence(&gw, "shop", "drain", &["alertname=KubePodCrashLooping"]).await;
    let (first, body) = post(&gw, vec![alert("KubePodCrashLooping", "shop", "web-1")]).await;
    assert_eq!((first, body["status"].as_str()), (202, Some("silenced")));

    let resp = gw.alerts(&webhook(vec![alert("KubePodCrashLooping", "shop", "web-1")])).await;

    assert_eq!(resp.status().as_u16(), 503, "over its rate: refused to be retried, silence or not");
    assert!(resp.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn a_silence_longer_than_the_configured_maximum_is_ignored_and_says_why() {
    let gw = start_with(|c| c.silence.max_duration = Duration::from_secs(1800)).await;
    let at = silence(&gw, "shop", "long", &["alertname=KubePodCrashLooping"]).await;

    let (status, body) = post(&gw, vec![alert("KubePodCrashLooping", "shop", "web-1")]).await;

    assert_eq!((status, body["status"].as_str()), (201, Some("created")), "{body}");
    eventually("the silence's status to say it is ignored", || async {
        let s = status_of(&gw, &at);
        s.state.as_deref() == Some("ignored") && s.reason.as_deref().is_some_and(|r| r.contains("max_duration"))
    })
    .await;
    assert_eq!(gw.metric("tidegate_silences_ignored_total{reason=\"too_long\"}").await, 1.0);
}
