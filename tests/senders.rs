//! End to end with the real senders: Debian's Prometheus 2.42 fires real alerting
//! rules on gauges the test serves, Debian's Alertmanager 0.25 groups them and posts
//! webhooks to the gateway. Every case asserts on Alertmanager's own counters (a
//! webhook notification that failed for good is an alert lost) and on the
//! RemediationRequests written, not on the gateway's answers alone.
//!
//! Timings are those of `support/senders`: 1 s scrape, evaluation, resend delay,
//! group wait and group interval, so a gauge set to 1 reaches the gateway in about
//! 3 s. Each case runs its own Prometheus, Alertmanager and gateway. The
//! `prometheus_direct_` cases have Prometheus post to the gateway's `/api/v2/alerts`
//! itself, with no Alertmanager, and assert on Prometheus' notifier counters.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::occurrences;
use support::redis::{RedisServer, ServerOptions};
use support::senders::{sample, Accounting, Gateway, GaugeTarget, Prometheus, Rig};
use tidegate::config::StateBackend;
use tidegate::remediation::RemediationRequest;

/// How long a case waits for the senders to deliver something: the ~3 s path plus
/// Prometheus' start-up and a loaded machine's slack.
const DELIVERY: Duration = Duration::from_secs(30);

fn pods(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("web-{i}")).collect()
}

fn names(pods: &[String]) -> impl Iterator<Item = &str> {
    pods.iter().map(String::as_str)
}

/// The most resources an aggregated request may list (`storm.affected_resources_cap`):
/// a storm smaller than this is accounted for pod by pod.
const LIST_CAP: usize = 1000;

#[tokio::test(flavor = "multi_thread")]
async fn a_firing_alert_becomes_one_request() {
    let rig = Rig::start("1h", |_| {}).await;
    rig.target.set("shop", ["web-0"], 1.0);

    rig.wait_for("the first request", DELIVERY, || async { !rig.gateway.requests().is_empty() }).await;
    // Prometheus goes on re-sending the alert every second; Alertmanager must not
    // notify again (nothing changed, repeat_interval 1h), and nothing else appears.
    let sent = rig.prometheus.alerts_sent().await;
    rig.wait_for("three more sends from Prometheus", DELIVERY, || async {
        rig.prometheus.alerts_sent().await >= sent + 3.0
    })
    .await;

    let requests = rig.gateway.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}\n{}", rig.logs());
    let rr = &requests[0];
    assert_eq!(rr.spec.signal_name, "KubePodCrashLooping");
    assert_eq!((rr.spec.target_resource.kind.as_str(), rr.spec.target_resource.name.as_str()), ("Pod", "web-0"));
    assert_eq!(rr.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(rr.spec.severity, "critical");
    assert_eq!(occurrences(rr), 1);
    let am = rig.alertmanager.settled_counters().await;
    assert_eq!((am.notifications, am.failed, am.delivered()), (1, 0, 1), "{am:?}\n{}", rig.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn repeats_are_counted_on_the_one_request() {
    // Alertmanager re-notifies an unchanged group only after repeat_interval (checked
    // at each 1 s group_interval flush), so these are the repeats a real sender makes.
    let mut rig = Rig::start("2s", |_| {}).await;
    rig.target.set("shop", ["web-0"], 1.0);

    rig.wait_for("three notifications", DELIVERY * 2, || async { rig.alertmanager.counters().await.delivered() >= 3 })
        .await;
    // Once the gateway has stopped no notification can be delivered any more, so
    // Alertmanager's count of delivered ones is final (its failed ones take 10 s).
    rig.gateway.stop().await;
    let am = rig.alertmanager.settled_counters().await;

    let requests = rig.gateway.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(occurrences(&requests[0]), am.delivered(), "every delivered notification is counted, once");
    assert_eq!(am.failed, 0, "{am:?}\n{}", rig.logs());
}

/// Fires web-0's alert in `shop`, waits for its request, resolves the alert and waits
/// until `status.signalResolvedAt` is recorded; fails, with `logs`, unless that one
/// request is all there is.
async fn fire_then_resolve(
    target: &GaugeTarget,
    gateway: &Gateway,
    logs: impl Fn() -> String,
) -> Vec<RemediationRequest> {
    let poll = Duration::from_millis(200);
    target.set("shop", ["web-0"], 1.0);
    let fired = support::poll_within(DELIVERY, poll, || async { !gateway.requests().is_empty() }).await;
    assert!(fired, "timed out waiting for the request\n{}", logs());

    target.set("shop", ["web-0"], 0.0);
    let resolved = |rr: &RemediationRequest| rr.status.as_ref().and_then(|s| s.signal_resolved_at.as_ref()).is_some();
    let recorded = support::poll_within(DELIVERY, poll, || async { gateway.requests().iter().any(resolved) }).await;
    assert!(recorded, "timed out waiting for signalResolvedAt\n{}", logs());

    let requests = gateway.requests();
    assert_eq!(requests.len(), 1, "the resolution is recorded, not a new request: {requests:#?}");
    requests
}

#[tokio::test(flavor = "multi_thread")]
async fn resolution_is_recorded_as_signal_resolved_at() {
    let rig = Rig::start("1h", |_| {}).await;

    let requests = fire_then_resolve(&rig.target, &rig.gateway, || rig.logs()).await;

    assert_eq!(occurrences(&requests[0]), 1, "a resolution is not an occurrence");
    let am = rig.alertmanager.settled_counters().await;
    assert_eq!((am.notifications, am.failed, am.delivered()), (2, 0, 2), "firing, then resolved: {am:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storm_of_2000_pods_in_one_group_is_accounted_for_in_full() {
    // The default body limit on purpose: one notification of this group carries all
    // 2,000 alerts, about 0.9 MB as Alertmanager 0.25 renders them (some 450 B an
    // alert, measured), and must be accepted. The aggregated request lists at most 100
    // resources and counts the rest, so pods are accounted for by count.
    let rig = Rig::start("1h", |_| {}).await;
    let storm = pods(0..2000);
    rig.target.set("shop", names(&storm), 1.0);

    let accounted = || async {
        let accounting = Accounting::of(rig.gateway.requests());
        accounting.individual.len() as u64 + accounting.aggregated_resource_count() == 2000
    };
    rig.wait_for("every pod accounted for", Duration::from_secs(60), accounted).await;

    let am = rig.alertmanager.settled_counters().await;
    assert_eq!(am.failed, 0, "{am:?}\n{}", rig.logs());
    let accounting = Accounting::of(rig.gateway.requests());
    assert_eq!(accounting.aggregated.len(), 1, "one storm, one aggregated request");
    assert!(accounting.aggregated[0].metadata.name.as_deref().unwrap().starts_with("storm-"));
    let individual: BTreeSet<String> =
        accounting.individual.iter().map(|rr| rr.spec.target_resource.name.clone()).collect();
    assert_eq!(individual.len(), accounting.individual.len(), "one individual request per pod");
    let listed = accounting.pods();
    let all: BTreeSet<String> = storm.iter().cloned().collect();
    assert!(listed.is_subset(&all), "only the storm's pods");
    let on_both = accounting.aggregated.iter().filter_map(|rr| rr.status.as_ref()?.storm.as_ref());
    let on_both = on_both.flat_map(|s| &s.affected_resources).filter(|r| individual.contains(&r.name)).count();
    assert_eq!(on_both, 0, "a pod with a request of its own is not also aggregated");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_restart_mid_incident_creates_no_second_request() {
    let mut rig = Rig::start("2s", |_| {}).await;
    rig.target.set("shop", ["web-0"], 1.0);
    rig.wait_for("the request", DELIVERY, || async { !rig.gateway.requests().is_empty() }).await;

    rig.gateway.restart().await;
    let before = occurrences(&rig.gateway.requests()[0]);
    let delivered = rig.alertmanager.counters().await.delivered();
    // Two more deliveries: at least one reached the new gateway and was decided there.
    rig.wait_for("repeats after the restart", DELIVERY, || async {
        rig.alertmanager.counters().await.delivered() >= delivered + 2
    })
    .await;
    rig.gateway.stop().await;

    let requests = rig.gateway.requests();
    assert_eq!(requests.len(), 1, "no second request for the open incident: {requests:#?}");
    assert!(occurrences(&requests[0]) > before, "the count goes on: {} then {}", before, occurrences(&requests[0]));
    let am = rig.alertmanager.settled_counters().await;
    assert_eq!(am.failed, 0, "the restart cost no notification: {am:?}\n{}", rig.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_for_10s_mid_storm_means_503s_retries_and_nothing_lost() {
    // 300 pods: a storm (past the pattern threshold of 5) whose notification stays
    // well inside the default body limit (about 135 kB of 256 KiB), so that only
    // Redis' outage can refuse it.
    let redis = RedisServer::start(ServerOptions { maxmemory: "16mb".into(), ..Default::default() });
    let url = redis.url();
    let rig = Rig::start("1h", |c| {
        c.state = StateBackend::Redis(url.parse().unwrap());
        c.redis.timeout = Duration::from_millis(500);
        c.storm.affected_resources_cap = LIST_CAP;
    })
    .await;
    let (first, during) = (pods(0..200), pods(200..300));
    rig.target.set("shop", names(&first), 1.0);
    let covered = |want: BTreeSet<String>| {
        let gateway = &rig.gateway;
        async move { Accounting::of(gateway.requests()).pods() == want }
    };
    rig.wait_for("the first 200 pods", DELIVERY, || covered(first.iter().cloned().collect())).await;
    let before = rig.alertmanager.settled_counters().await;

    // The outage: its length is the subject, so it is measured, not polled for.
    // Meanwhile 100 more pods join the storm, so Alertmanager has a changed group
    // to deliver and the gateway must refuse it.
    redis.kill();
    let down = Instant::now();
    rig.target.set("shop", names(&during), 1.0);
    rig.wait_for("/readyz at 503", Duration::from_secs(10), || async {
        rig.gateway.get("/readyz").await.status() == 503
    })
    .await;
    rig.wait_for("Alertmanager's failed requests", Duration::from_secs(10), || async {
        rig.alertmanager.counters().await.requests_failed > before.requests_failed
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    redis.restart();
    let after_outage = rig.alertmanager.counters().await;

    // How the group gets delivered once Redis is back (see support/senders/alertmanager.rs):
    // the flush that met the outage retries with backoff (0.5 s, then ×1.5 ±50%)
    // until its 10 s deadline. If a retry falls after the restart, it is delivered;
    // if the deadline comes first, that notification fails for good, and since
    // nothing was logged as sent, the next flush (at once: the 1 s group timer has
    // long fired) sends the whole group again. Either way within a few seconds.
    let all: BTreeSet<String> = first.iter().chain(&during).cloned().collect();
    rig.wait_for("every pod accounted for after recovery", DELIVERY, || covered(all.clone())).await;
    rig.wait_for("a delivery after the outage", DELIVERY, || async {
        rig.alertmanager.counters().await.delivered() > after_outage.delivered()
    })
    .await;
    let recovered = rig.alertmanager.counters().await;

    let refused = support::senders::family_sum(&rig.gateway.metrics().await, "tidegate_state_errors_total");
    assert!(refused > 0.0, "the gateway answered 503 while Redis was down");
    let am = rig.alertmanager.settled_counters().await;
    assert!(am.requests_failed > before.requests_failed, "{am:?}");
    assert_eq!(rig.gateway.get("/readyz").await.status(), 200, "ready again");
    // A notification may have given up (its 10 s deadline spans the outage); then the
    // next flush sent the group again, and that is the delivery above. None may fail
    // after it.
    assert_eq!(am.failed, recovered.failed, "no notification failed after recovery: {am:?}\n{}", rig.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tight_rate_limit_loses_nothing() {
    // One request per second with a burst of one, and three namespaces, so three
    // groups notify at the same moment and two are refused. A refusal must be one
    // Alertmanager retries (503): then every notification is delivered on a retry
    // and none fails.
    let rig = Rig::start("1h", |c| {
        c.rate_limit.rate = 1.0;
        c.rate_limit.burst = 1;
    })
    .await;
    let namespaces = ["shop", "search", "cart"];
    for ns in namespaces {
        rig.target.set(ns, ["web-0"], 1.0);
    }

    rig.wait_for("a request in every namespace", DELIVERY, || async {
        rig.gateway.requests().len() == namespaces.len()
    })
    .await;

    let limited = sample(&rig.gateway.metrics().await, r#"tidegate_rate_limited_total{source_class="peer"}"#);
    assert!(limited > 0.0, "the limit refused something");
    let am = rig.alertmanager.settled_counters().await;
    assert!(am.requests_failed > 0, "Alertmanager saw the refusals: {am:?}");
    assert_eq!(am.failed, 0, "every refused notification was retried and delivered: {am:?}\n{}", rig.logs());
    let requests = rig.gateway.requests();
    let seen: BTreeSet<_> = requests.iter().map(|rr| rr.metadata.namespace.clone().unwrap()).collect();
    assert_eq!(seen, namespaces.iter().map(|n| n.to_string()).collect());
    assert!(requests.iter().all(|rr| occurrences(rr) == 1), "one delivery each");
}

#[tokio::test(flavor = "multi_thread")]
async fn alertmanager_through_its_pagerduty_integration_repeats_and_resolves_one_request() {
    // The routing key is the credential: the gateway knows it as a bearer token.
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("routing-key");
    std::fs::write(&key_file, format!("{ROUTING_KEY}\n")).unwrap();
    let auth = format!("authenticators:\n  keys: {{bearer: {{tokens: {{alertmanager-pd: {}}}}}}}", key_file.display());
    let mut rig = Rig::start_pagerduty("2s", |c| c.auth = serde_norway::from_str(&auth).unwrap(), ROUTING_KEY).await;
    rig.target.set("shop", ["web-0"], 1.0);

    // repeat_interval 2s: Alertmanager triggers again under the same dedup_key.
    rig.wait_for("three triggers", DELIVERY * 2, || async { rig.alertmanager.counters().await.delivered() >= 3 }).await;
    rig.target.set("shop", ["web-0"], 0.0);
    let resolved = |rr: &RemediationRequest| rr.status.as_ref().and_then(|s| s.signal_resolved_at.as_ref()).is_some();
    rig.wait_for("the resolve", DELIVERY, || async { rig.gateway.requests().iter().any(resolved) }).await;
    rig.gateway.stop().await;
    let am = rig.alertmanager.settled_counters().await;

    assert_eq!(
        am.failed,
        0,
        "alertmanager_notifications_failed_total{{integration=\"pagerduty\"}}: {am:?}\n{}",
        rig.logs()
    );
    assert_eq!(am.requests_failed, 0, "every request answered 2xx: {am:?}");
    let requests = rig.gateway.requests();
    assert_eq!(requests.len(), 1, "one incident under one dedup_key: {requests:#?}");
    let rr = &requests[0];
    assert_eq!(serde_json::to_value(rr.spec.signal_type).unwrap(), "pagerduty-event");
    assert_eq!(rr.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!((rr.spec.target_resource.kind.as_str(), rr.spec.target_resource.name.as_str()), ("Pod", "web-0"));
    assert_eq!(rr.spec.signal_annotations["tidegate.dev/incident-key"].len(), 64, "Alertmanager's group key hash");
    let annotations = rr.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations[tidegate::remediation::SUBMITTED_BY_ANNOTATION], "alertmanager-pd");
    // Every delivered trigger counted once; the one resolve is no occurrence.
    assert_eq!(occurrences(rr), am.delivered() - 1, "{am:?}");
}

/// The routing key Alertmanager's PagerDuty receiver sends.
const ROUTING_KEY: &str = "tidegate-routing-key-0123456789ab";

/// Prometheus posting straight to the gateway's `/api/v2/alerts`, as it posts to an
/// Alertmanager: no Alertmanager in between. Its notifier never retries; a firing
/// alert is sent again every resend delay (1 s here), a resolved one likewise.
struct Direct {
    target: GaugeTarget,
    gateway: Gateway,
    prometheus: Prometheus,
}

impl Direct {
    async fn start() -> Direct {
        let target = GaugeTarget::start().await;
        let gateway = Gateway::start(|_| {}).await;
        let prometheus = Prometheus::start(&target.addr(), &gateway.addr()).await;
        Direct { target, gateway, prometheus }
    }

    async fn wait_for<F, Fut>(&self, what: &str, limit: Duration, check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        if !support::poll_within(limit, Duration::from_millis(200), check).await {
            panic!("timed out after {limit:?} waiting for {what}\n{}", self.prometheus.process.log_tail());
        }
    }

    /// The occurrence count of the one request, 0 before there is one.
    fn occurrences(&self) -> u64 {
        let requests = self.gateway.requests();
        let dedup = requests.first().and_then(|rr| rr.status.as_ref()?.deduplication.as_ref());
        dedup.map_or(0, |d| d.occurrence_count)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_direct_a_firing_alert_becomes_one_request() {
    let rig = Direct::start().await;
    rig.target.set("shop", ["web-0"], 1.0);

    rig.wait_for("the first request", DELIVERY, || async { !rig.gateway.requests().is_empty() }).await;
    // Prometheus' first sends can precede its notifier's discovery of the static
    // target (discovery updates are throttled to every 5 s): those alerts are counted
    // in `_dropped_total` and sent again a resend delay later. Once one was
    // delivered, nothing more may be dropped.
    let first = rig.prometheus.notifications().await;
    rig.wait_for("three more sends", DELIVERY, || async {
        rig.prometheus.notifications().await.sent >= first.sent + 3.0
    })
    .await;

    let requests = rig.gateway.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let rr = &requests[0];
    assert_eq!(rr.spec.signal_name, "KubePodCrashLooping");
    assert_eq!((rr.spec.target_resource.kind.as_str(), rr.spec.target_resource.name.as_str()), ("Pod", "web-0"));
    assert_eq!(rr.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(rr.spec.signal_type.as_str(), "prometheus-alert");
    let port = format!(":{}", rig.prometheus.process.port());
    assert!(rr.spec.signal_source.ends_with(&port), "the generatorURL's origin: {}", rr.spec.signal_source);
    let n = rig.prometheus.notifications().await;
    assert_eq!(n.errors, 0.0, "{n:?}\n{}", rig.prometheus.process.log_tail());
    assert_eq!(n.dropped, first.dropped, "dropped after delivery began: {n:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_direct_resends_are_counted_on_the_one_request() {
    let mut rig = Direct::start().await;
    rig.target.set("shop", ["web-0"], 1.0);

    rig.wait_for("three occurrences", DELIVERY, || async { rig.occurrences() >= 3 }).await;
    // Once the gateway has stopped, every later send fails at once, so the alerts
    // Prometheus got a 2xx for are final: those sent less those in failed requests
    // (one alert a request: one rule, one series, sent every second).
    rig.gateway.stop().await;
    rig.wait_for("a send refused by the stopped gateway", DELIVERY, || async {
        rig.prometheus.notifications().await.errors >= 1.0
    })
    .await;
    let n = rig.prometheus.notifications().await;

    let requests = rig.gateway.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(occurrences(&requests[0]) as f64, n.sent - n.errors, "every delivered send is counted, once: {n:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_direct_resolution_is_recorded_as_signal_resolved_at() {
    let rig = Direct::start().await;

    // Prometheus sends the resolved alert with `endsAt` at its resolution, in the past.
    fire_then_resolve(&rig.target, &rig.gateway, || rig.prometheus.process.log_tail()).await;

    let n = rig.prometheus.notifications().await;
    assert_eq!(n.errors, 0.0, "{n:?}\n{}", rig.prometheus.process.log_tail());
    assert!(n.sent >= 2.0, "firing, then resolved: {n:?}");
}
