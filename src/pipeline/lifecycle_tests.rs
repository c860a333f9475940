//! A pipeline over the embedded store and the real directory sink in a temp dir
//! (its index is the authority the outcome rules read), on a manual clock: the
//! rules of an incident's life (heartbeats, clusters, back-off, latch), decided end
//! to end without a server.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::{Outcome, OutcomeStatus, Parts, Pipeline, Processed, Sender, Settings};
use crate::clock::Clock;
use crate::remediation::RemediationRequest;
use crate::signal::{Signal, TargetResource};
use crate::sink::dir::DirSink;
use crate::sink::{Lookup, RequestRef, Sink};
use crate::state::memory::MemoryStore;
use crate::telemetry::Metrics;

/// A firing alert `name` about pod `pod` (none if empty) in `namespace`.
pub fn signal(name: &str, namespace: &str, pod: &str) -> Signal<'static> {
    let target = if pod.is_empty() { TargetResource::default() } else { TargetResource::new("Pod", pod, namespace) };
    let mut labels = vec![("alertname", name)];
    if !pod.is_empty() {
        labels.push(("pod", pod));
    }
    Signal { severity: "critical".into(), ..crate::signal::test_signal(name, namespace, target, &labels) }
}

pub struct Rig {
    pub pipeline: Pipeline,
    pub sink: Arc<DirSink>,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    pub dir: tempfile::TempDir,
}

impl Rig {
    /// A pipeline configured by `tweak`, at 1,700,000,000 s on a manual clock, over
    /// the embedded store and a directory sink indexing two hours back.
    pub fn new(tweak: impl FnOnce(&mut Settings)) -> Rig {
        let mut config = Settings::default();
        tweak(&mut config);
        let clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let memory = crate::state::memory::MemoryConfig::default();
        let state = MemoryStore::new(&memory, config.dedup.window, &config.storm, clock.clone());
        let state = Arc::new(state.with_flap(config.flap.rule()));
        let sink = Arc::new(DirSink::new(dir.path(), Duration::from_secs(7200)).unwrap());
        let parts = Parts {
            state,
            sink: sink.clone(),
            owners: None,
            namespace_labels: None,
            remediate_labels: None,
            clock: clock.clone(),
            metrics: metrics.clone(),
        };
        Rig { pipeline: Pipeline::build(&config, parts), sink, clock, metrics, dir }
    }

    /// Decides `signals` from the authenticated sender `sender`.
    pub async fn send(&self, sender: &str, signals: &[Signal<'_>]) -> Vec<Outcome> {
        match self.pipeline.process(signals, &Sender { name: sender, label: Some(sender) }).await.unwrap() {
            Processed::Decided(outcomes) => outcomes,
            Processed::Limited { .. } => panic!("rate-limited"),
        }
    }

    /// Every request in the sink directory, with pending status writes flushed.
    pub async fn requests(&self) -> Vec<RemediationRequest> {
        self.pipeline.drain(Duration::from_secs(5)).await;
        let mut out = Vec::new();
        for ns in std::fs::read_dir(self.dir.path()).unwrap() {
            for file in std::fs::read_dir(ns.unwrap().path()).unwrap() {
                let path = file.unwrap().path();
                if path.extension().is_some_and(|e| e == "yaml") {
                    out.push(serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap());
                }
            }
        }
        out
    }

    /// Writes `phase` into the manifest at `at`, as a controller would, and waits
    /// until the sink's index has seen it as `seen`.
    pub async fn set_phase(&self, at: &RequestRef, phase: &str, seen: Lookup) {
        self.pipeline.drain(Duration::from_secs(5)).await;
        let path = self.sink.path_of(at);
        let mut request: RemediationRequest = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        request.status.get_or_insert_with(Default::default).phase = Some(phase.to_string());
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_norway::to_string(&request).unwrap()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        for _ in 0..500 {
            if self.sink.lookup(at) == seen {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the index never saw {at:?} as {seen:?}");
    }

    /// The value of the series spelled exactly `series` in the metrics.
    pub fn sample(&self, series: &str) -> Option<f64> {
        self.metrics.encode().lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }
}

pub fn statuses(outcomes: &[Outcome]) -> Vec<OutcomeStatus> {
    outcomes.iter().map(|o| o.status).collect()
}

#[tokio::test]
async fn a_heartbeat_makes_no_request_and_its_neighbours_are_decided_in_order() {
    let rig = Rig::new(|_| {});
    let batch = [signal("KubePodCrashLooping", "shop", "web-0"), signal("Watchdog", "monitoring", "")];

    let outcomes = rig.send("am-eu", &batch).await;

    assert_eq!(statuses(&outcomes), [OutcomeStatus::Created, OutcomeStatus::Heartbeat]);
    assert_eq!(outcomes[1].request, None);
    let requests = rig.requests().await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].spec.signal_name, "KubePodCrashLooping");
    assert_eq!(rig.sample("tidegate_heartbeat_last_seen_timestamp_seconds{sender=\"am-eu\"}"), Some(1_700_000_000.0));
    let heartbeats = "tidegate_signals_received_total{source=\"prometheus-alert\",outcome=\"heartbeat\"}";
    assert_eq!(rig.sample(heartbeats), Some(1.0));
}

#[tokio::test]
async fn heartbeats_alone_never_reach_state_or_storms() {
    let rig = Rig::new(|c| {
        c.storm.rate_threshold = 2;
    });
    let beats: Vec<_> = (0..10).map(|_| signal("Watchdog", "monitoring", "")).collect();

    for _ in 0..3 {
        let outcomes = rig.send("am-eu", &beats).await;
        assert!(outcomes.iter().all(|o| o.status == OutcomeStatus::Heartbeat), "{outcomes:?}");
        rig.clock.advance(Duration::from_secs(1));
    }

    assert!(rig.requests().await.is_empty());
    assert_eq!(rig.pipeline.entries().await.unwrap(), 0, "nothing in the state store");
    assert_eq!(rig.sample("tidegate_heartbeat_last_seen_timestamp_seconds{sender=\"am-eu\"}"), Some(1_700_000_002.0));
}

#[tokio::test]
async fn two_clusters_web_0_are_two_requests_and_an_unlabelled_one_keeps_its_request_name() {
    let rig = Rig::new(|_| {});
    let mut eu = signal("KubePodCrashLooping", "shop", "web-0");
    eu.labels.push("cluster", "eu-1");
    let mut us = signal("KubePodCrashLooping", "shop", "web-0");
    us.labels.push("cluster", "us-1");
    let plain = signal("KubePodCrashLooping", "shop", "web-0");

    let outcomes = rig.send("am", &[eu, us, plain]).await;

    assert_eq!(statuses(&outcomes), [OutcomeStatus::Created; 3]);
    // The request name tidegate gave this alert before clusters took part (main at
    // f9b7c80): the fingerprint's first 6 bytes, the epoch 1,700,000,000 in base 36.
    let plain_at = outcomes[2].request.as_ref().unwrap();
    assert_eq!(plain_at.name, "kubepodcrashlooping-822fa5f0e22b-s44we8");
    assert_eq!(outcomes[2].fingerprint.to_hex(), "822fa5f0e22b0b9389dbfa4295d59b2b5ee8b4205841766ab689e6e0525289ba");
    let mut clusters: Vec<_> = rig.requests().await.iter().map(|rr| rr.spec.target_resource.cluster.clone()).collect();
    clusters.sort();
    assert_eq!(clusters, ["", "eu-1", "us-1"]);
}

#[tokio::test]
async fn storms_are_scoped_by_cluster() {
    let rig = Rig::new(|c| {
        c.storm.rate_threshold = 3;
        c.storm.pattern_threshold = 1000;
    });
    let in_cluster = |cluster: &str, pod: usize| {
        let mut s = signal("KubePodCrashLooping", "shop", &format!("web-{pod}"));
        s.labels.push("cluster", cluster.to_string());
        s
    };
    // Three alerts in each of two clusters: at the threshold in each, over it only
    // if the clusters were one scope.
    let batch: Vec<_> = (0..3).flat_map(|i| [in_cluster("eu-1", i), in_cluster("us-1", i)]).collect();

    let outcomes = rig.send("am", &batch).await;

    assert_eq!(statuses(&outcomes), [OutcomeStatus::Created; 6], "no storm: {outcomes:?}");
}

#[tokio::test]
async fn after_a_failure_the_incident_backs_off_counting_on_the_failed_request_then_opens_with_its_failures() {
    let rig = Rig::new(|_| {});
    let alert = [signal("KubePodCrashLooping", "shop", "web-0")];
    let first = rig.send("am", &alert).await.remove(0);
    let failed = first.request.clone().unwrap();
    rig.set_phase(&failed, "Failed", Lookup::Failed { prior_failures: 0 }).await;

    rig.clock.advance(Duration::from_secs(60));
    let held = rig.send("am", &alert).await.remove(0);
    rig.clock.advance(Duration::from_secs(400));
    let after_the_window = rig.send("am", &alert).await.remove(0);
    rig.clock.advance(Duration::from_secs(100));
    let next = rig.send("am", &alert).await.remove(0);

    assert_eq!(held.status, OutcomeStatus::BackingOff { until_s: 1_700_000_300 });
    assert_eq!(held.request.as_ref(), Some(&failed));
    // 460 s on: past the dedup window, and past the back-off too.
    assert_eq!(after_the_window.status, OutcomeStatus::Created);
    assert_eq!(next.status, OutcomeStatus::Duplicate, "{next:?}");
    let requests = rig.requests().await;
    let by_name = |at: &RequestRef| requests.iter().find(|rr| rr.metadata.name.as_deref() == Some(&at.name)).unwrap();
    let status = |at: &RequestRef| by_name(at).status.clone().unwrap();
    assert_eq!(status(&failed).deduplication.unwrap().occurrence_count, 2, "the held one is counted on it");
    assert_eq!(status(&failed).backoff.unwrap().until.map(|t| t.0.as_second()), Some(1_700_000_300));
    let second = after_the_window.request.unwrap();
    assert_eq!(status(&second).backoff.map(|b| b.prior_failures), Some(1));
    assert_eq!(rig.sample("tidegate_signals_held_back_total{reason=\"failure_backoff\"}"), Some(1.0));
}

#[tokio::test]
async fn the_backoff_is_held_when_the_state_store_forgot_the_incident() {
    let rig = Rig::new(|_| {});
    let alert = [signal("KubePodCrashLooping", "shop", "web-0")];
    let failed = rig.send("am", &alert).await.remove(0).request.unwrap();
    rig.set_phase(&failed, "Failed", Lookup::Failed { prior_failures: 0 }).await;
    // Past the dedup window (5m) but not the back-off: the store has no entry, so
    // the decision rests on the sink's record alone.
    rig.clock.advance(Duration::from_secs(299));
    let held = rig.send("am", &alert).await.remove(0);
    let again = rig.send("am", &alert).await.remove(0);
    rig.clock.advance(Duration::from_secs(1));
    let opened = rig.send("am", &alert).await.remove(0);

    assert_eq!(held.status, OutcomeStatus::BackingOff { until_s: 1_700_000_300 });
    assert_eq!(again.status, OutcomeStatus::BackingOff { until_s: 1_700_000_300 }, "the store learnt the hold");
    assert_eq!(opened.status, OutcomeStatus::Created);
}

#[tokio::test]
async fn manual_review_latches_beyond_the_dedup_window_and_a_deletion_releases_it() {
    let rig = Rig::new(|_| {});
    let alert = [signal("KubePodCrashLooping", "shop", "web-0")];
    let latched = rig.send("am", &alert).await.remove(0).request.unwrap();
    rig.set_phase(&latched, "ManualReviewRequired", Lookup::Latched).await;

    let mut held = Vec::new();
    for wait in [10, 3600, 86_400] {
        rig.clock.advance(Duration::from_secs(wait));
        held.push(rig.send("am", &alert).await.remove(0));
    }
    assert!(held.iter().all(|o| o.status == OutcomeStatus::Held && o.request.as_ref() == Some(&latched)), "{held:?}");
    rig.pipeline.drain(Duration::from_secs(5)).await;
    std::fs::remove_file(rig.sink.path_of(&latched)).unwrap();
    for _ in 0..500 {
        if rig.sink.lookup(&latched) == Lookup::Deleted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let released = rig.send("am", &alert).await.remove(0);

    assert_eq!(released.status, OutcomeStatus::Created);
    assert_eq!(rig.sample("tidegate_signals_held_back_total{reason=\"manual_review\"}"), Some(3.0));
}
