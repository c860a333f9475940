//! Silences with the real senders: Debian's Prometheus 2.42 fires real rules and
//! Debian's Alertmanager 0.25 posts webhooks to a gateway with the directory sink,
//! whose silence directory the test writes like an operator (or `tidegate silence`).
//! Every case asserts that Alertmanager failed no notification (a silenced alert is
//! answered 2xx, never refused) and on the RemediationRequests written.

mod support;

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use support::senders::{sample, Rig};
use tidegate::silence::dir::DirSilences;
use tidegate::silence::interval::{TimeIntervalSpec, TimeRangeSpec};
use tidegate::silence::resource::{RemediationSilence, RemediationSilenceSpec};
use tidegate::silence::store::SilenceStore;
use tidegate::silence::SilenceRef;

const DELIVERY: Duration = Duration::from_secs(30);

fn store(rig: &Rig) -> Arc<DirSilences> {
    Arc::new(DirSilences::new(rig.gateway.dir.path().join(tidegate::silence::DEFAULT_DIR)).unwrap())
}

async fn add(rig: &Rig, namespace: &str, name: &str, intervals: Vec<TimeIntervalSpec>) -> SilenceRef {
    let now = Timestamp::now();
    let spec = RemediationSilenceSpec {
        matchers: vec!["alertname=KubePodCrashLooping".into()],
        starts_at: Time(now - SignedDuration::from_mins(1)),
        ends_at: Time(now + SignedDuration::from_hours(1)),
        comment: "maintenance".into(),
        created_by: Some("test".into()),
        time_intervals: intervals,
    };
    let mut object = RemediationSilence::new(name, spec);
    object.metadata.namespace = Some(namespace.into());
    store(rig).create(&object).await.unwrap();
    SilenceRef { namespace: namespace.into(), name: name.into() }
}

async fn metric(rig: &Rig, series: &str) -> f64 {
    sample(&rig.gateway.metrics().await, series)
}

fn pods_with_requests(rig: &Rig) -> Vec<String> {
    let mut pods: Vec<String> = rig.gateway.requests().iter().map(|rr| rr.spec.target_resource.name.clone()).collect();
    pods.sort();
    pods
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silence_holds_alertmanagers_alerts_until_it_is_expired() {
    let rig = Rig::start("1h", |_| {}).await;
    let at = add(&rig, "shop", "drain", Vec::new()).await;
    rig.wait_for("the silence to be active", DELIVERY, || async {
        metric(&rig, "tidegate_silences_active").await == 1.0
    })
    .await;

    rig.target.set("shop", ["web-0"], 1.0);
    rig.wait_for("the alert to be silenced", DELIVERY, || async {
        metric(&rig, "tidegate_signals_silenced_total{source=\"prometheus-alert\"}").await >= 1.0
    })
    .await;
    assert!(rig.gateway.requests().is_empty(), "silenced: no request\n{}", rig.logs());

    store(&rig).expire(&at, Timestamp::now()).await.unwrap();
    rig.wait_for("the silence to end", DELIVERY, || async { metric(&rig, "tidegate_silences_active").await == 0.0 })
        .await;
    // A new alert in the group: Alertmanager notifies the whole group again, and
    // with the silence over both pods open their requests.
    rig.target.set("shop", ["web-1"], 1.0);
    rig.wait_for("both pods' requests", DELIVERY, || async { pods_with_requests(&rig) == ["web-0", "web-1"] }).await;

    let am = rig.alertmanager.settled_counters().await;
    assert_eq!(am.failed, 0, "no notification lost to the silence: {am:?}\n{}", rig.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_maintenance_window_holds_only_while_it_is_open() {
    let rig = Rig::start("1h", |_| {}).await;
    // Open now for a few minutes (UTC), and one on another weekday for bank.
    let now = jiff::tz::TimeZone::UTC.to_datetime(Timestamp::now());
    let minute = now.hour() as i32 * 60 + now.minute() as i32;
    let hhmm = |m: i32| format!("{:02}:{:02}", m / 60, m % 60);
    let open = TimeIntervalSpec {
        times: vec![TimeRangeSpec { start_time: hhmm(minute), end_time: hhmm((minute + 5).min(24 * 60)) }],
        ..Default::default()
    };
    let tomorrow = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]
        [(now.weekday().to_sunday_zero_offset() as usize + 1) % 7];
    let closed = TimeIntervalSpec { weekdays: vec![tomorrow.into()], ..Default::default() };
    add(&rig, "shop", "window-open", vec![open]).await;
    add(&rig, "bank", "window-closed", vec![closed]).await;
    rig.wait_for("the open window's silence to be active", DELIVERY, || async {
        metric(&rig, "tidegate_silences_active").await == 1.0
    })
    .await;

    rig.target.set("shop", ["web-0"], 1.0);
    rig.target.set("bank", ["web-0"], 1.0);
    rig.wait_for("bank's request", DELIVERY, || async { !rig.gateway.requests().is_empty() }).await;
    rig.wait_for("shop's alert to be silenced", DELIVERY, || async {
        metric(&rig, "tidegate_signals_silenced_total{source=\"prometheus-alert\"}").await >= 1.0
    })
    .await;

    let namespaces: Vec<_> = rig.gateway.requests().iter().map(|rr| rr.metadata.namespace.clone().unwrap()).collect();
    assert_eq!(namespaces, ["bank"], "the window outside its weekday holds nothing\n{}", rig.logs());
    let am = rig.alertmanager.settled_counters().await;
    assert_eq!(am.failed, 0, "{am:?}\n{}", rig.logs());
}
