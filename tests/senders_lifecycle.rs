//! An incident's life with the real senders (Debian's Prometheus 2.42 and
//! Alertmanager 0.25, see `support/senders`): heartbeats, flapping. Each case asserts on
//! Alertmanager's own counters and on what the gateway wrote and exposes.

mod support;

use std::time::Duration;

use support::senders::prometheus::WATCHDOG_RULE;
use support::senders::{sample, Rig};
use tidegate::auth::AuthConfig;

const DELIVERY: Duration = Duration::from_secs(30);

/// The gateway's sender name for Alertmanager: a bearer token's configured name.
const SENDER: &str = "alertmanager-prod";

/// Alertmanager authenticating as [`SENDER`] with a bearer token; the gateway
/// expecting to hear from it every `interval`. Prometheus evaluates `rules` too.
async fn authenticated_rig(repeat_interval: &str, interval: Duration, rules: &str) -> (Rig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "am-secret-token\n").unwrap();
    let token = token.display().to_string();
    let yaml = format!("authenticators: {{t: {{bearer: {{tokens: {{{SENDER}: {token}}}}}}}}}");
    let auth: AuthConfig = serde_norway::from_str(&yaml).unwrap();
    let http_config = format!("{{authorization: {{type: Bearer, credentials_file: {token}}}}}");
    let tweak = |c: &mut tidegate::config::Config| {
        c.auth = auth;
        c.heartbeat.expect = [(SENDER.to_string(), interval)].into();
    };
    (Rig::start_with_rules(repeat_interval, tweak, &http_config, rules).await, dir)
}

fn gauge(metrics: &str, name: &str) -> f64 {
    sample(metrics, &format!("tidegate_{name}{{sender=\"{SENDER}\"}}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_watchdog_through_alertmanager_keeps_the_heartbeat_fresh_and_creates_nothing() {
    // kube-prometheus-stack's Watchdog rule, evaluated by the real Prometheus, sent
    // through the real Alertmanager, which re-notifies it every 2 s.
    let (rig, _dir) = authenticated_rig("2s", Duration::from_secs(2), WATCHDOG_RULE).await;

    rig.wait_for("two Watchdog notifications", DELIVERY, || async {
        rig.alertmanager.counters().await.delivered() >= 2
    })
    .await;
    let first = gauge(&rig.gateway.metrics().await, "heartbeat_last_seen_timestamp_seconds");
    assert!(first > 0.0, "the heartbeat gauge is there\n{}", rig.gateway.metrics().await);
    rig.wait_for("a later heartbeat to refresh the gauge", DELIVERY, || async {
        gauge(&rig.gateway.metrics().await, "heartbeat_last_seen_timestamp_seconds") > first
    })
    .await;

    let (rig, am, metrics) = stopped(rig).await;
    assert_eq!(am.failed, 0, "{am:?}\n{}", rig.logs());
    assert!(rig.gateway.requests().is_empty(), "a heartbeat is never a request: {:#?}", rig.gateway.requests());
    let heartbeats =
        sample(&metrics, "tidegate_signals_received_total{source=\"prometheus-alert\",outcome=\"heartbeat\"}");
    // Each notification carries the one Watchdog; an attempt Alertmanager gave up
    // on (a timeout on a loaded machine) may still have reached the gateway.
    let (delivered, attempts) = (am.delivered() as f64, am.requests as f64);
    assert!(heartbeats >= delivered && heartbeats <= attempts, "{heartbeats} heartbeats, {am:?}");
    assert!(heartbeats >= 2.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let last = gauge(&metrics, "heartbeat_last_seen_timestamp_seconds");
    assert!(now - last < 10.0, "fresh: {now} - {last}");
    assert!(gauge(&metrics, "sender_last_seen_timestamp_seconds") >= last, "a heartbeat is a sign of life too");
    assert_eq!(gauge(&metrics, "sender_expected_interval_seconds"), 2.0);
    assert_eq!(sample(&metrics, "tidegate_storms_detected_total{type=\"rate\"}"), 0.0);
}

/// Stops the gateway (a graceful stop writes every pending status), and answers the
/// rig, Alertmanager's settled counters and the gateway's last metrics.
async fn stopped(mut rig: Rig) -> (Rig, support::senders::alertmanager::Counters, String) {
    let handle = rig.gateway.metrics_handle();
    rig.gateway.stop().await;
    let am = rig.alertmanager.settled_counters().await;
    (rig, am, handle.encode())
}

/// `tidegate_signals_received_total` of the webhook's alerts with `outcome`.
fn received(metrics: &str, outcome: &str) -> f64 {
    sample(metrics, &format!("tidegate_signals_received_total{{source=\"prometheus-alert\",outcome=\"{outcome}\"}}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_that_flaps_through_alertmanager_marks_its_request_flapping() {
    // The real Prometheus fires and resolves web-0's alert as the test's gauge says;
    // the real Alertmanager notifies both, firing and resolved (send_resolved).
    let rig = Rig::start("1h", |_| {}).await;
    let firing_seen = |n: f64| {
        let rig = &rig;
        move || async move {
            let m = rig.gateway.metrics().await;
            received(&m, "created") + received(&m, "duplicate") >= n
        }
    };
    rig.target.set("shop", ["web-0"], 1.0);
    rig.wait_for("the first firing notification", DELIVERY, firing_seen(1.0)).await;
    // Four times resolved and firing again: one more than the default threshold (3).
    for n in 1..=4 {
        rig.target.set("shop", ["web-0"], 0.0);
        rig.wait_for(&format!("resolution {n}"), DELIVERY, || async {
            received(&rig.gateway.metrics().await, "resolved") >= n as f64
        })
        .await;
        rig.target.set("shop", ["web-0"], 1.0);
        rig.wait_for(&format!("firing {}", n + 1), DELIVERY, firing_seen(n as f64 + 1.0)).await;
        if n == 3 {
            let calm = rig.gateway.requests();
            assert!(calm.iter().all(|rr| !rr.status.as_ref().is_some_and(|s| s.flapping())), "{calm:#?}");
        }
    }
    let flapping = |rr: &tidegate::remediation::RemediationRequest| {
        let label = rr.metadata.labels.as_ref().and_then(|l| l.get(tidegate::remediation::labels::FLAPPING));
        rr.status.as_ref().is_some_and(|s| s.flapping()) && label.is_some_and(|v| v == "true")
    };
    rig.wait_for("the Flapping condition and label", DELIVERY, || async {
        rig.gateway.requests().iter().any(flapping)
    })
    .await;

    let (rig, am, metrics) = stopped(rig).await;
    assert_eq!((am.failed, am.requests_failed), (0, 0), "no notification lost: {am:?}\n{}", rig.logs());
    let requests = rig.gateway.requests();
    assert_eq!(requests.len(), 1, "flapping marks the request, it opens no other: {requests:#?}");
    let status = requests[0].status.as_ref().unwrap();
    assert_eq!(status.flapping.as_ref().map(|f| f.transitions), Some(4));
    assert_eq!(
        status.deduplication.as_ref().unwrap().occurrence_count as f64,
        received(&metrics, "created") + received(&metrics, "duplicate")
    );
    assert_eq!(sample(&metrics, "tidegate_flap_transitions_total{source=\"prometheus-alert\"}"), 4.0);
    assert_eq!(sample(&metrics, "tidegate_flapping_marked_total"), 1.0);
}
