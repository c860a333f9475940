//! An incident's life against a real kube-apiserver and etcd: the test plays the
//! controller, writing `status.phase` as one would, and tidegate (over real HTTP,
//! as the service account `deploy/` defines) holds new requests back after
//! `Failed` and while `ManualReviewRequired`. Time is the gateway's manual clock;
//! the back-off is measured on it, so request times are exact.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::kube::Kube;
use support::redis::{RedisServer, ServerOptions};
use support::{alert, eventually, start_kube, start_kube_as, unique_prefix, webhook, Gateway};
use tidegate::config::StateBackend;
use tidegate::remediation::RemediationRequest;
use tidegate::sink::{Lookup, RequestRef};

async fn setup() -> (Kube, String) {
    let kube = Kube::new().await;
    let ns = kube.namespace("life", &[]).await;
    (kube, ns)
}

async fn post(gw: &Gateway, ns: &str) -> (u16, Value) {
    let resp = gw.alerts(&webhook(vec![alert("HighMemory", ns, "web-0")])).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn at(body: &Value) -> RequestRef {
    RequestRef { namespace: body["namespace"].as_str().unwrap().into(), name: body["name"].as_str().unwrap().into() }
}

fn count(rr: &RemediationRequest) -> u64 {
    rr.status.as_ref().and_then(|s| s.deduplication.as_ref()).map_or(0, |d| d.occurrence_count)
}

fn first_seen(rr: &RemediationRequest) -> i64 {
    rr.status.as_ref().and_then(|s| s.deduplication.as_ref()).map(|d| d.first_seen_at.0.as_second()).unwrap()
}

fn backoff(rr: &RemediationRequest) -> (u32, Option<i64>) {
    let backoff = rr.status.as_ref().and_then(|s| s.backoff.as_ref());
    (backoff.map_or(0, |b| b.prior_failures), backoff.and_then(|b| b.until.as_ref()).map(|t| t.0.as_second()))
}

/// The test as the controller: ends the request `body` names with `phase`, and
/// waits until the gateway's cache has seen it.
async fn end(kube: &Kube, gw: &Gateway, body: &Value, phase: &str, seen: Lookup) {
    kube.set_phase(body["namespace"].as_str().unwrap(), body["name"].as_str().unwrap(), phase).await;
    gw.sink_sees(&at(body), seen).await;
}

/// Moves the manual clock to `t0 + secs`.
fn at_second(gw: &Gateway, t0: u64, secs: u64) {
    let now = gw.clock.now_ms() / 1000;
    assert!(t0 + secs >= now, "the clock only moves forward");
    gw.clock.advance(Duration::from_secs(t0 + secs - now));
}

#[tokio::test]
async fn three_failures_back_off_5_10_and_20_minutes_counting_what_they_hold_back() {
    let (kube, ns) = setup().await;
    let mut gw = start_kube(&kube, |_| {}).await;
    let failed = Lookup::Failed { prior_failures: 0 };
    let t0 = gw.clock.now_ms() / 1000;

    let (status, first) = post(&gw, &ns).await;
    assert_eq!(status, 201);
    end(&kube, &gw, &first, "Failed", failed).await;
    for second in [60, 299] {
        at_second(&gw, t0, second);
        let (status, held) = post(&gw, &ns).await;
        assert_eq!((status, held["status"].as_str()), (202, Some("backing_off")), "at t0+{second}: {held}");
        assert_eq!(held["name"], first["name"], "counted on the failed request");
        assert_eq!(
            held["until"].as_str(),
            Some(tidegate::remediation::time_s((t0 + 300) as u32).0.to_string().as_str())
        );
    }
    at_second(&gw, t0, 300);
    let (status, second) = post(&gw, &ns).await;
    assert_eq!(status, 201, "the back-off has passed: {second}");

    end(&kube, &gw, &second, "Failed", Lookup::Failed { prior_failures: 1 }).await;
    at_second(&gw, t0, 300 + 599);
    assert_eq!(post(&gw, &ns).await.1["status"], "backing_off", "twice as long after the second failure");
    at_second(&gw, t0, 900);
    let (status, third) = post(&gw, &ns).await;
    assert_eq!(status, 201, "{third}");

    end(&kube, &gw, &third, "Failed", Lookup::Failed { prior_failures: 2 }).await;
    at_second(&gw, t0, 900 + 1199);
    assert_eq!(post(&gw, &ns).await.1["status"], "backing_off", "four times as long after the third");
    at_second(&gw, t0, 2100);
    let (status, fourth) = post(&gw, &ns).await;
    assert_eq!(status, 201, "{fourth}");
    gw.stop().await;

    let mut requests = kube.requests(&ns).await;
    requests.sort_by_key(first_seen);
    let times: Vec<i64> = requests.iter().map(|rr| first_seen(rr) - t0 as i64).collect();
    assert_eq!(times, [0, 300, 900, 2100], "each attempt waits out the back-off of the one before");
    let counts: Vec<u64> = requests.iter().map(count).collect();
    assert_eq!(counts, [3, 2, 2, 1], "what the back-off held is counted on the failed request");
    let backoffs: Vec<_> = requests.iter().map(backoff).collect();
    let until = |s: u64| Some((t0 + s) as i64);
    assert_eq!(backoffs, [(0, until(300)), (1, until(900)), (2, until(2100)), (3, None)]);
}

#[tokio::test]
async fn a_completed_request_resets_the_backoff() {
    let (kube, ns) = setup().await;
    let mut gw = start_kube(&kube, |_| {}).await;
    let t0 = gw.clock.now_ms() / 1000;
    let (_, first) = post(&gw, &ns).await;
    end(&kube, &gw, &first, "Failed", Lookup::Failed { prior_failures: 0 }).await;
    at_second(&gw, t0, 300);
    let (_, second) = post(&gw, &ns).await;
    end(&kube, &gw, &second, "Completed", Lookup::Terminal).await;
    at_second(&gw, t0, 301);

    let (status, third) = post(&gw, &ns).await;

    assert_eq!(status, 201, "no back-off after a success: {third}");
    end(&kube, &gw, &third, "Failed", Lookup::Failed { prior_failures: 0 }).await;
    at_second(&gw, t0, 301 + 299);
    assert_eq!(post(&gw, &ns).await.1["status"], "backing_off", "5 minutes again, not 10");
    at_second(&gw, t0, 301 + 300);
    assert_eq!(post(&gw, &ns).await.0, 201);
    gw.stop().await;
}

#[tokio::test]
async fn manual_review_latches_beyond_the_dedup_window_until_the_request_is_deleted() {
    let (kube, ns) = setup().await;
    let mut gw = start_kube(&kube, |_| {}).await;
    let (_, first) = post(&gw, &ns).await;
    end(&kube, &gw, &first, "ManualReviewRequired", Lookup::Latched).await;

    for wait in [Duration::from_secs(60), Duration::from_secs(3600), Duration::from_secs(7 * 86_400)] {
        gw.clock.advance(wait);
        let (status, held) = post(&gw, &ns).await;
        assert_eq!((status, held["status"].as_str()), (202, Some("held")), "after {wait:?}: {held}");
        assert_eq!(held["name"], first["name"]);
    }
    kube.delete(&ns, first["name"].as_str().unwrap()).await;
    gw.sink_sees(&at(&first), Lookup::Deleted).await;
    let (status, next) = post(&gw, &ns).await;
    assert_eq!(status, 201, "a person acted: {next}");
    gw.stop().await;
    assert_eq!(kube.requests(&ns).await.len(), 1, "the latched one deleted, the new one open");
}

#[tokio::test]
async fn a_person_changing_the_phase_releases_the_latch() {
    let (kube, ns) = setup().await;
    let mut gw = start_kube(&kube, |_| {}).await;
    let (_, first) = post(&gw, &ns).await;
    end(&kube, &gw, &first, "ManualReviewRequired", Lookup::Latched).await;
    gw.clock.advance(Duration::from_secs(3600));
    assert_eq!(post(&gw, &ns).await.1["status"], "held");

    end(&kube, &gw, &first, "Completed", Lookup::Terminal).await;
    let (status, next) = post(&gw, &ns).await;

    assert_eq!(status, 201, "{next}");
    gw.stop().await;
    let mut requests = kube.requests(&ns).await;
    requests.sort_by_key(first_seen);
    assert_eq!(count(&requests[0]), 2, "the held occurrence is on the latched request");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_and_a_redis_loss_during_a_backoff_open_nothing_early_and_lose_nothing() {
    let (kube, ns) = setup().await;
    let redis = RedisServer::start(ServerOptions::default());
    let prefix = unique_prefix();
    let replica = |url: String, prefix: String| {
        move |c: &mut tidegate::config::Config| {
            c.state = StateBackend::Redis(url.parse().unwrap());
            c.redis.prefix = prefix;
        }
    };
    let mut a = start_kube(&kube, replica(redis.url(), prefix.clone())).await;
    // The replicas share one clock, as NTP-synchronised hosts do.
    let mut b = start_kube_as(kube.gateway_client(), a.clock.clone(), replica(redis.url(), prefix)).await;
    let t0 = a.clock.now_ms() / 1000;
    let (_, first) = post(&a, &ns).await;
    kube.set_phase(&ns, first["name"].as_str().unwrap(), "Failed").await;
    for gw in [&a, &b] {
        gw.sink_sees(&at(&first), Lookup::Failed { prior_failures: 0 }).await;
    }
    at_second(&a, t0, 10);
    assert_eq!(post(&a, &ns).await.1["status"], "backing_off");
    assert_eq!(post(&b, &ns).await.1["status"], "backing_off");

    // Redis restarts empty mid-back-off: the cluster still says the incident failed.
    redis.kill();
    redis.restart();
    for gw in [&a, &b] {
        eventually("the replica to reach Redis again", || async { gw.get("/readyz").await.status() == 200 }).await;
    }
    at_second(&a, t0, 299);
    for gw in [&a, &b, &a, &b] {
        let (status, held) = post(gw, &ns).await;
        assert_eq!((status, held["status"].as_str()), (202, Some("backing_off")), "not early: {held}");
    }
    at_second(&a, t0, 300);
    let (sa, from_a) = post(&a, &ns).await;
    let (sb, from_b) = post(&b, &ns).await;
    assert_eq!(from_a["name"], from_b["name"], "one new request, whichever replica made it");
    assert!(sa == 201 || sb == 201, "{from_a} {from_b}");
    a.stop().await;
    b.stop().await;

    let mut requests = kube.requests(&ns).await;
    requests.sort_by_key(first_seen);
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(count(&requests[0]), 7, "the failed request counts itself and the six held back");
    assert_eq!(count(&requests[1]), 2);
}
