//! The behavioural contract of a `StateStore`: one definition of the dedup rule,
//! run against every backend.
//!
//! A backend's test file includes this module (`#[macro_use] #[path =
//! "support/conformance.rs"] mod conformance;`), provides an async factory
//! `fn(window: Duration) -> Arc<dyn StateStore>` and invokes
//! `conformance_suite!(factory)`, which expands to one test per case below. The
//! cases are written inside one `cases!` list, which defines each case and, from
//! the same list, the `conformance_suite!` that runs it: a case cannot exist
//! without running. Time is passed to `observe` explicitly, so windows are tested
//! at exact boundaries without waiting.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tidegate::signal::{Fingerprint, SignalStatus, TargetResource};
use tidegate::state::{
    Admission, Charge, Decision, Entry, Folded, Inhibitor, Observation, OpenWindow, RateLimit, StateStore, StormKey,
    StormKind, Verdict,
};

pub const WINDOW: Duration = Duration::from_secs(300);
/// A multiple of every default storm window (60 s, 120 s), so cases start at the
/// beginning of a rate and a pattern window.
const T0: u32 = 1_800_000_000;

/// Defines the cases, and `conformance_suite!` with one `#[tokio::test]` for each.
/// `$d` is a `$`, so that the macro it defines can have variables of its own.
macro_rules! cases {
    ($d:tt $($(#[$meta:meta])* async fn $case:ident($store:ident: $ty:ty) $body:block)+) => {
        $($(#[$meta])* pub async fn $case($store: $ty) $body)+

        macro_rules! conformance_suite {
            ($d factory:path) => {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $case() {
                        let store = $d factory($crate::conformance::WINDOW).await;
                        $crate::conformance::$case(store).await;
                    }
                )+
            };
        }
    };
}

/// An id unique to a case, so cases may share one server.
fn sighting(case: &str, n: u8) -> [u8; 16] {
    let mut id = [n; 16];
    id[..case.len().min(15)].copy_from_slice(&case.as_bytes()[..case.len().min(15)]);
    id
}

/// An inhibit rule's source of a case.
fn inhibitor(case: &str, n: u32) -> Inhibitor {
    Inhibitor {
        source: fp(case, n),
        first_seen_s: T0 + n,
        namespace: "tidegate-system".into(),
        name: format!("kubenodenotready-{case}-{n}"),
    }
}

/// A fingerprint unique to a case, so cases may share one server.
fn fp(case: &str, n: u32) -> Fingerprint {
    let target =
        TargetResource { kind: "Pod".into(), name: format!("p{n}"), namespace: "ns".into(), cluster: String::new() };
    Fingerprint::new(case, "ns", &target)
}

fn fire(fingerprint: Fingerprint) -> Observation {
    Observation { fingerprint, status: SignalStatus::Firing, storm: None }
}

fn resolve(fingerprint: Fingerprint) -> Observation {
    Observation { fingerprint, status: SignalStatus::Resolved, storm: None }
}

fn acknowledge(fingerprint: Fingerprint) -> Observation {
    Observation { fingerprint, status: SignalStatus::Acknowledged, storm: None }
}

/// A firing alert named `name` about pod `p<n>` of `namespace`, taking part in storm
/// detection as the pipeline makes every firing alert do.
fn alert(name: &str, namespace: &str, n: u32) -> Observation {
    let target = TargetResource {
        kind: "Pod".into(),
        name: format!("p{n}"),
        namespace: namespace.into(),
        cluster: String::new(),
    };
    Observation {
        fingerprint: Fingerprint::new(name, namespace, &target),
        status: SignalStatus::Firing,
        storm: Some(StormKey::new(namespace, name, &target)),
    }
}

/// [`alert`], about pod `p<n>` of `ns` in `cluster`, as the pipeline places a
/// signal carrying a cluster label.
fn in_cluster(name: &str, cluster: &str, n: u32) -> Observation {
    let target =
        TargetResource { kind: "Pod".into(), name: format!("p{n}"), namespace: "ns".into(), cluster: cluster.into() };
    Observation {
        fingerprint: Fingerprint::new(name, "ns", &target),
        status: SignalStatus::Firing,
        storm: Some(StormKey::new("ns", name, &target)),
    }
}

fn folded(v: &Verdict) -> Folded {
    match v {
        Verdict::Folded(f) => *f,
        other => panic!("expected a folded alert, got {other:?}"),
    }
}

fn assert_not_storm(v: &Verdict) {
    assert!(matches!(v.flaps().0, Verdict::New(_) | Verdict::Duplicate(_)), "expected no storm, got {v:?}");
}

async fn one(store: &dyn StateStore, o: Observation, now: u32) -> Verdict {
    let mut v = store.observe(&[o], now).await.expect("store answers");
    assert_eq!(v.len(), 1);
    v.remove(0)
}

fn entry(first: u32, last: u32, count: u32) -> Entry {
    Entry { first_seen_s: first, last_seen_s: last, count }
}

/// The flap window of the default `FlapRule`: 30 minutes, 4 transitions kept.
const FLAP_WINDOW: u32 = 1800;

fn refired(entry: Entry, opened: bool, transitions: u32) -> Verdict {
    Verdict::Refired { entry, opened, transitions }
}

fn source(case: &str) -> String {
    format!("{case}-{}", std::process::id())
}

fn charge(source: &str) -> Charge<'_> {
    Charge { source, limit: LIMIT, now_ms: NOW_MS }
}

const LIMIT: RateLimit = RateLimit { rate_per_s: 1.0, burst: 3 };

const NOW_MS: u64 = T0 as u64 * 1000;

cases! { $

async fn first_firing_opens_an_incident(store: Arc<dyn StateStore>) {
    let v = one(&*store, fire(fp("first", 0)), T0).await;
    assert_eq!(v, Verdict::New(entry(T0, T0, 1)));
}

async fn repeat_within_window_is_a_duplicate_that_counts(store: Arc<dyn StateStore>) {
    let f = fp("repeat", 0);
    one(&*store, fire(f), T0).await;
    assert_eq!(one(&*store, fire(f), T0 + 10).await, Verdict::Duplicate(entry(T0, T0 + 10, 2)));
    assert_eq!(one(&*store, fire(f), T0 + 20).await, Verdict::Duplicate(entry(T0, T0 + 20, 3)));
}

async fn each_duplicate_slides_the_window(store: Arc<dyn StateStore>) {
    let f = fp("slide", 0);
    let w = WINDOW.as_secs() as u32;
    one(&*store, fire(f), T0).await;
    assert_eq!(one(&*store, fire(f), T0 + w - 1).await, Verdict::Duplicate(entry(T0, T0 + w - 1, 2)));
    // Two windows after the first sighting, but within one of the last.
    let later = T0 + 2 * w - 2;
    assert_eq!(one(&*store, fire(f), later).await, Verdict::Duplicate(entry(T0, later, 3)));
}

async fn window_lapse_opens_a_new_incident_with_a_new_epoch(store: Arc<dyn StateStore>) {
    let f = fp("lapse", 0);
    let w = WINDOW.as_secs() as u32;
    one(&*store, fire(f), T0).await;
    // Exactly one window after the last sighting is outside the window.
    assert_eq!(one(&*store, fire(f), T0 + w).await, Verdict::New(entry(T0 + w, T0 + w, 1)));
    assert_eq!(one(&*store, fire(f), T0 + w + 1).await, Verdict::Duplicate(entry(T0 + w, T0 + w + 1, 2)));
}

async fn resolved_reports_the_open_incident_without_counting(store: Arc<dyn StateStore>) {
    let f = fp("resolved-open", 0);
    one(&*store, fire(f), T0).await;
    assert_eq!(one(&*store, resolve(f), T0 + 5).await, Verdict::ResolvedOpen(entry(T0, T0, 1)));
    let refired = one(&*store, fire(f), T0 + 6).await;
    assert_eq!(refired.flaps().0, Verdict::Duplicate(entry(T0, T0 + 6, 2)), "counted as a repeat");
}

async fn a_firing_signal_after_a_resolution_is_a_transition_and_nothing_else_is(store: Arc<dyn StateStore>) {
    let f = fp("flap-count", 0);
    one(&*store, fire(f), T0).await;
    assert_eq!(one(&*store, fire(f), T0 + 1).await, Verdict::Duplicate(entry(T0, T0 + 1, 2)), "a repeat");
    one(&*store, resolve(f), T0 + 2).await;
    one(&*store, resolve(f), T0 + 3).await; // a resent resolution is the same one
    assert_eq!(one(&*store, fire(f), T0 + 4).await, refired(entry(T0, T0 + 4, 3), false, 1));
    assert_eq!(one(&*store, fire(f), T0 + 5).await, Verdict::Duplicate(entry(T0, T0 + 5, 4)), "resent firing");
    one(&*store, resolve(f), T0 + 6).await;
    assert_eq!(one(&*store, fire(f), T0 + 7).await, refired(entry(T0, T0 + 7, 5), false, 2));
    assert_eq!(one(&*store, fire(fp("flap-count", 1)), T0 + 7).await, Verdict::New(entry(T0 + 7, T0 + 7, 1)));
}

async fn a_transition_after_the_dedup_window_reopens_and_still_counts(store: Arc<dyn StateStore>) {
    let f = fp("flap-reopen", 0);
    let w = WINDOW.as_secs() as u32;
    one(&*store, fire(f), T0).await;
    one(&*store, resolve(f), T0 + 1).await;
    assert_eq!(one(&*store, fire(f), T0 + 2).await, refired(entry(T0, T0 + 2, 2), false, 1));
    // Resolved once its incident was no longer open, then firing again.
    assert_eq!(one(&*store, resolve(f), T0 + 2 + w).await, Verdict::ResolvedUnknown);
    let again = T0 + 3 + w;
    assert_eq!(one(&*store, fire(f), again).await, refired(entry(again, again, 1), true, 2));
}

async fn transitions_count_within_the_flap_window_and_at_most_the_rules_keep(store: Arc<dyn StateStore>) {
    let f = fp("flap-window", 0);
    one(&*store, fire(f), T0).await;
    let mut counted = Vec::new();
    for n in 1..=6 {
        one(&*store, resolve(f), T0 + 10 * n).await;
        counted.push(one(&*store, fire(f), T0 + 10 * n + 1).await.flaps().1);
    }
    assert_eq!(counted, [1, 2, 3, 4, 4, 4], "at most keep (4) are kept");
    // The first kept transition (at T0 + 31) drops out of the window at T0 + 31 + 1800.
    let late = T0 + 31 + FLAP_WINDOW;
    one(&*store, resolve(f), late - 1).await;
    let dedup_open = |v: Verdict| v.flaps().1;
    assert_eq!(dedup_open(one(&*store, fire(f), late).await), 4, "three kept within the window, and this one");
    one(&*store, resolve(f), late + FLAP_WINDOW).await;
    assert_eq!(dedup_open(one(&*store, fire(f), late + FLAP_WINDOW + 1).await), 1, "the rest aged out");
}

async fn a_batch_counts_transitions_in_its_order(store: Arc<dyn StateStore>) {
    let f = fp("flap-batch", 0);
    let verdicts = store.observe(&[fire(f), resolve(f), fire(f), fire(f), resolve(f), fire(f)], T0).await.unwrap();
    let transitions: Vec<u32> = verdicts.iter().map(|v| v.flaps().1).collect();
    assert_eq!(transitions, [0, 0, 1, 0, 0, 2]);
}

async fn resolved_for_an_unknown_incident_records_nothing(store: Arc<dyn StateStore>) {
    let f = fp("resolved-unknown", 0);
    assert_eq!(one(&*store, resolve(f), T0).await, Verdict::ResolvedUnknown);
    // Nothing in dedup; the resolution does make the next firing a flap transition.
    assert_eq!(one(&*store, fire(f), T0 + 1).await, refired(entry(T0 + 1, T0 + 1, 1), true, 1));
}

async fn resolved_after_the_window_is_unknown(store: Arc<dyn StateStore>) {
    let f = fp("resolved-late", 0);
    one(&*store, fire(f), T0).await;
    assert_eq!(one(&*store, resolve(f), T0 + WINDOW.as_secs() as u32).await, Verdict::ResolvedUnknown);
}

async fn acknowledged_reports_the_open_incident_without_counting_or_sliding_the_window(store: Arc<dyn StateStore>) {
    let f = fp("acked-open", 0);
    let w = WINDOW.as_secs() as u32;
    one(&*store, fire(f), T0).await;
    assert_eq!(one(&*store, acknowledge(f), T0 + w - 1).await, Verdict::AcknowledgedOpen(entry(T0, T0, 1)));
    // One window after the last sighting: the acknowledgement was none.
    assert_eq!(one(&*store, fire(f), T0 + w).await, Verdict::New(entry(T0 + w, T0 + w, 1)));
}

async fn acknowledged_for_an_unknown_incident_opens_nothing(store: Arc<dyn StateStore>) {
    let f = fp("acked-unknown", 0);
    assert_eq!(one(&*store, acknowledge(f), T0).await, Verdict::AcknowledgedUnknown);
    assert_eq!(one(&*store, acknowledge(f), T0 + 1).await, Verdict::AcknowledgedUnknown);
    assert_eq!(one(&*store, fire(f), T0 + 2).await, Verdict::New(entry(T0 + 2, T0 + 2, 1)));
    assert_eq!(one(&*store, acknowledge(f), T0 + WINDOW.as_secs() as u32 + 2).await, Verdict::AcknowledgedUnknown);
}

async fn batch_is_answered_in_order_and_sees_its_own_writes(store: Arc<dyn StateStore>) {
    let (a, b) = (fp("batch", 0), fp("batch", 1));
    let verdicts = store.observe(&[fire(a), fire(b), fire(a), resolve(b)], T0).await.unwrap();
    assert_eq!(
        verdicts,
        vec![
            Verdict::New(entry(T0, T0, 1)),
            Verdict::New(entry(T0, T0, 1)),
            Verdict::Duplicate(entry(T0, T0, 2)),
            Verdict::ResolvedOpen(entry(T0, T0, 1)),
        ]
    );
}

/// Storms opening, folding and repeats of every kind inside one batch, across two
/// scopes: a store may decide a batch in one step, but never differently from
/// deciding its observations one after another.
async fn a_batch_decides_as_one_at_a_time_would(store: Arc<dyn StateStore>) {
    let sequence = |case: &str| -> Vec<Observation> {
        let (a, b) = (format!("{case}-a"), format!("{case}-b"));
        let mut s: Vec<Observation> = vec![
            alert(&a, "ns", 0),
            alert(&a, "ns", 0), // a repeat before any storm
            Observation { status: SignalStatus::Resolved, ..alert(&a, "ns", 0) },
            Observation { status: SignalStatus::Acknowledged, ..alert(&a, "ns", 0) },
        ];
        for n in 1..12 {
            if n < 9 {
                s.push(alert(&a, "ns", n)); // the sixth distinct pod opens a pattern storm
            }
            s.push(alert(&b, "ns", n % 3)); // b repeats until its rate storms...
        }
        s.push(alert(&b, "ns", 3)); // ... and then folds a new pod
        s.push(alert(&a, "ns", 8)); // a repeat of a folded alert folds again
        s.push(alert(&a, "ns", 1)); // a pre-storm incident keeps its own count
        s.push(Observation { status: SignalStatus::Resolved, ..alert(&a, "ns", 2) });
        s.push(Observation { status: SignalStatus::Acknowledged, ..alert(&a, "ns", 8) }); // folded: unknown
        s.push(alert(&b, "other", 0)); // another namespace is another scope
        s
    };
    let batched = store.observe(&sequence("batched"), T0).await.unwrap();
    let mut single = Vec::new();
    for o in sequence("single") {
        single.push(one(&*store, o, T0).await);
    }
    assert_eq!(batched, single);
    assert!(batched.iter().any(|v| matches!(v, Verdict::Folded(f) if f.kind == StormKind::Pattern)));
    assert!(batched.iter().any(|v| matches!(v, Verdict::Folded(f) if f.kind == StormKind::Rate)));
}

async fn fingerprints_are_independent(store: Arc<dyn StateStore>) {
    for n in 0..20 {
        assert_eq!(one(&*store, fire(fp("independent", n)), T0).await, Verdict::New(entry(T0, T0, 1)));
    }
    assert_eq!(one(&*store, fire(fp("independent", 3)), T0 + 1).await, Verdict::Duplicate(entry(T0, T0 + 1, 2)));
}

async fn fifty_concurrent_observers_open_exactly_one_incident(store: Arc<dyn StateStore>) {
    let f = fp("concurrent", 0);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { one(&*store, fire(f), T0).await })
        })
        .collect();
    let mut counts = BTreeSet::new();
    let mut new = 0;
    for task in tasks {
        match task.await.unwrap() {
            Verdict::New(e) => {
                new += 1;
                counts.insert(e.count);
            }
            Verdict::Duplicate(e) => {
                counts.insert(e.count);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(new, 1);
    assert_eq!(counts, (1..=50).collect::<BTreeSet<u32>>(), "every observer got a distinct count");
}

// Storms, with the default rules: rate > 10 alerts per 60 s, pattern > 5 resources
// per 120 s, windows closing after 60 s idle or 300 s open.

async fn pattern_threshold_is_not_a_storm_but_one_more_resource_is(store: Arc<dyn StateStore>) {
    let batch: Vec<_> = (0..5).map(|n| alert("pattern", "ns", n)).collect();
    for v in store.observe(&batch, T0).await.unwrap() {
        assert_not_storm(&v);
    }
    let sixth = one(&*store, alert("pattern", "ns", 5), T0 + 1).await;
    assert_eq!(
        folded(&sixth),
        Folded { window_id: T0 + 1, kind: StormKind::Pattern, alert_count: 1, resource_count: 1, opened: true }
    );
}

async fn rate_threshold_is_not_a_storm_but_one_more_alert_is(store: Arc<dyn StateStore>) {
    // Repeats count towards detection, but stay with their own open incident.
    for i in 0..9 {
        assert_not_storm(&one(&*store, alert("rate", "ns", 0), T0 + i).await);
    }
    assert_not_storm(&one(&*store, alert("rate", "ns", 1), T0 + 9).await);
    let eleventh = one(&*store, alert("rate", "ns", 2), T0 + 10).await;
    assert_eq!(
        folded(&eleventh),
        Folded { window_id: T0 + 10, kind: StormKind::Rate, alert_count: 1, resource_count: 1, opened: true }
    );
    let repeat = one(&*store, alert("rate", "ns", 0), T0 + 11).await;
    assert!(matches!(repeat, Verdict::Duplicate(Entry { count: 10, .. })), "{repeat:?}");
}

async fn later_alerts_fold_into_the_open_window(store: Arc<dyn StateStore>) {
    let batch: Vec<_> = (0..6).map(|n| alert("fold", "ns", n)).collect();
    store.observe(&batch, T0).await.unwrap();
    // A new resource, a repeat of a folded one, and a repeat of a pre-storm incident.
    let v = store.observe(&[alert("fold", "ns", 6), alert("fold", "ns", 6), alert("fold", "ns", 0)], T0 + 5).await;
    let v = v.unwrap();
    let f: Vec<Folded> = v[..2].iter().map(folded).collect();
    assert!(f.iter().all(|f| f.window_id == T0 && !f.opened), "{f:?}");
    assert_eq!(f.iter().map(|f| (f.alert_count, f.resource_count)).collect::<Vec<_>>(), [(2, 2), (3, 2)]);
    assert_eq!(v[2], Verdict::Duplicate(entry(T0, T0 + 5, 2)), "a pre-storm incident keeps its own count");
}

async fn storms_are_per_cluster_and_each_clusters_pod_is_its_own_incident(store: Arc<dyn StateStore>) {
    // Five pods in each of two clusters: at the pattern threshold in each cluster,
    // over it were the clusters one scope; and `p<n>` of one cluster is no
    // duplicate of `p<n>` of the other.
    let batch: Vec<_> = (0..5).flat_map(|n| [in_cluster("clustered", "eu-1", n), in_cluster("clustered", "us-1", n)]).collect();
    for v in store.observe(&batch, T0).await.unwrap() {
        assert!(matches!(v, Verdict::New(_)), "{v:?}");
    }
}

async fn storms_are_per_namespace_and_alert_name(store: Arc<dyn StateStore>) {
    let batch: Vec<_> = (0..6).map(|n| alert("scoped", "a", n)).collect();
    let v = store.observe(&batch, T0).await.unwrap();
    folded(&v[5]);
    let elsewhere: Vec<_> =
        (0..5).map(|n| alert("scoped", "b", n)).chain((0..5).map(|n| alert("other", "a", n))).collect();
    for v in store.observe(&elsewhere, T0).await.unwrap() {
        assert_not_storm(&v);
    }
}

async fn window_closes_after_inactivity_then_individual_incidents_follow(store: Arc<dyn StateStore>) {
    let batch: Vec<_> = (0..6).map(|n| alert("idle", "ns", n)).collect();
    store.observe(&batch, T0).await.unwrap();
    assert_eq!(folded(&one(&*store, alert("idle", "ns", 7), T0 + 59).await).window_id, T0);
    // 60 s without an alert closes the window; in fresh rate and pattern windows the
    // next alert is an incident of its own.
    let later = T0 + 59 + 60 + 120;
    assert_not_storm(&one(&*store, alert("idle", "ns", 8), later).await);
}

async fn window_closes_at_its_maximum_duration(store: Arc<dyn StateStore>) {
    let batch: Vec<_> = (0..6).map(|n| alert("long", "ns", n)).collect();
    store.observe(&batch, T0).await.unwrap();
    for t in (30..300).step_by(30) {
        assert_eq!(folded(&one(&*store, alert("long", "ns", 6), T0 + t).await).window_id, T0);
    }
    // The window is 300 s old, so it is closed. The pattern window that began at
    // T0 + 240 has seen p6; four more resources are below the threshold, a fifth
    // opens a new window.
    let batch: Vec<_> = (10..15).map(|n| alert("long", "ns", n)).collect();
    let v = store.observe(&batch, T0 + 300).await.unwrap();
    v[..4].iter().for_each(assert_not_storm);
    let next = folded(&v[4]);
    assert_eq!((next.window_id, next.opened), (T0 + 300, true));
}

async fn resolved_and_acknowledged_alerts_never_count_towards_a_storm(store: Arc<dyn StateStore>) {
    let cases = [
        ("resolving", SignalStatus::Resolved, Verdict::ResolvedUnknown),
        ("acking", SignalStatus::Acknowledged, Verdict::AcknowledgedUnknown),
    ];
    for (name, status, unknown) in cases {
        let signals: Vec<_> = (0..20).map(|n| Observation { status, ..alert(name, "ns", n) }).collect();
        for v in store.observe(&signals, T0).await.unwrap() {
            assert_eq!(v, unknown);
        }
        let batch: Vec<_> = (0..5).map(|n| alert(name, "ns", n)).collect();
        for v in store.observe(&batch, T0).await.unwrap() {
            assert_not_storm(&v);
        }
    }
}

// Rate limiting: GCRA.



async fn burst_is_allowed_then_limited_with_retry_after(store: Arc<dyn StateStore>) {
    let src = source("burst");
    for _ in 0..3 {
        assert_eq!(store.admit(&src, LIMIT, NOW_MS).await.unwrap(), Admission::Allowed);
    }
    assert_eq!(store.admit(&src, LIMIT, NOW_MS).await.unwrap(), Admission::Limited { retry_after_ms: 1000 });
    assert_eq!(store.admit(&src, LIMIT, NOW_MS + 1000).await.unwrap(), Admission::Allowed);
}

async fn limited_requests_change_nothing(store: Arc<dyn StateStore>) {
    let src = source("refused");
    for _ in 0..3 {
        store.admit(&src, LIMIT, NOW_MS).await.unwrap();
    }
    for _ in 0..10 {
        assert!(matches!(store.admit(&src, LIMIT, NOW_MS + 500).await.unwrap(), Admission::Limited { .. }));
    }
    // The refusals did not push the budget back: one second in, one request fits.
    assert_eq!(store.admit(&src, LIMIT, NOW_MS + 1000).await.unwrap(), Admission::Allowed);
    assert!(matches!(store.admit(&src, LIMIT, NOW_MS + 1000).await.unwrap(), Admission::Limited { .. }));
}

async fn sources_have_independent_budgets(store: Arc<dyn StateStore>) {
    let (a, b) = (source("a"), source("b"));
    for _ in 0..3 {
        store.admit(&a, LIMIT, NOW_MS).await.unwrap();
    }
    assert!(matches!(store.admit(&a, LIMIT, NOW_MS).await.unwrap(), Admission::Limited { .. }));
    assert_eq!(store.admit(&b, LIMIT, NOW_MS).await.unwrap(), Admission::Allowed);
}


async fn a_charged_batch_is_charged_once_and_decided(store: Arc<dyn StateStore>) {
    let src = source("charged");
    let batch = [alert("charged", "ns", 0), alert("charged", "ns", 0)];
    let decision = store.admit_and_observe(charge(&src), &batch, T0).await.unwrap();
    assert_eq!(decision, Decision::Decided(vec![Verdict::New(entry(T0, T0, 1)), Verdict::Duplicate(entry(T0, T0, 2))]));
    // The burst is 3: the batch took one, whatever its size.
    for _ in 0..2 {
        assert_eq!(store.admit(&src, LIMIT, NOW_MS).await.unwrap(), Admission::Allowed);
    }
    assert!(matches!(store.admit(&src, LIMIT, NOW_MS).await.unwrap(), Admission::Limited { .. }));
}

async fn a_limited_charged_batch_records_nothing(store: Arc<dyn StateStore>) {
    let src = source("charged-limited");
    for _ in 0..3 {
        store.admit(&src, LIMIT, NOW_MS).await.unwrap();
    }
    let o = alert("charged-limited", "ns", 0);
    let decision = store.admit_and_observe(charge(&src), &[o, o], T0).await.unwrap();
    assert_eq!(decision, Decision::Limited { retry_after_ms: 1000 });
    assert_eq!(one(&*store, o, T0).await, Verdict::New(entry(T0, T0, 1)), "the limited batch was not recorded");
    // Nor did it push the budget back: one second in, one request fits.
    assert_eq!(store.admit(&src, LIMIT, NOW_MS + 1000).await.unwrap(), Admission::Allowed);
}

// Adoption: an authority re-seeds lost state.

async fn adopted_incident_continues_its_count(store: Arc<dyn StateStore>) {
    let o = alert("adopt", "ns", 0);
    store.adopt(&o, entry(T0 - 100, T0 - 50, 7), T0).await.unwrap();
    assert_eq!(one(&*store, o, T0 + 1).await, Verdict::Duplicate(entry(T0 - 100, T0 + 1, 8)));
}

async fn an_adopted_window_folds_its_alerts_and_their_repeats(store: Arc<dyn StateStore>) {
    // The store lost a window the sink's aggregated request says is open (opened at
    // T0 - 30 with 40 alerts), so a batch of two of its alerts was seen as new...
    let (o, other) = (alert("rejoin", "ns", 0), alert("rejoin", "ns", 1));
    let v = store.observe(&[o, other], T0).await.unwrap();
    assert!(v.iter().all(|v| matches!(v, Verdict::New(_))), "{v:?}");
    let window = OpenWindow { id: T0 - 30, kind: StormKind::Pattern, alerts: 40 };
    let first = store.adopt_window(&o, window, T0).await.unwrap();
    assert_eq!(
        (first.window_id, first.kind, first.alert_count, first.opened),
        (T0 - 30, StormKind::Pattern, 41, false)
    );
    // ...the second adoption of the same window counts on from the first...
    assert_eq!(store.adopt_window(&other, window, T0).await.unwrap().alert_count, 42);
    // ...and an adopted alert's repeat folds too: it has no incident of its own.
    let repeat = folded(&one(&*store, o, T0 + 1).await);
    assert_eq!((repeat.window_id, repeat.alert_count), (T0 - 30, 43));
}

// The replay store of signed webhooks.

async fn an_id_is_sighted_first_once_until_its_ttl_lapses(store: Arc<dyn StateStore>) {
    let (id, other) = (sighting("ttl", 0), sighting("ttl", 1));
    assert!(store.first_sighting(id, Duration::from_secs(1)).await.unwrap());
    assert!(!store.first_sighting(id, Duration::from_secs(1)).await.unwrap());
    assert!(store.first_sighting(other, Duration::from_secs(60)).await.unwrap());
    // Stores keep their own time here (Redis expires keys itself): poll.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !store.first_sighting(id, Duration::from_secs(60)).await.unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "the sighting outlived its ttl");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!store.first_sighting(other, Duration::from_secs(60)).await.unwrap(), "a longer ttl still holds");
}

async fn of_concurrent_sightings_of_one_id_exactly_one_is_first(store: Arc<dyn StateStore>) {
    let id = sighting("race", 0);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.first_sighting(id, Duration::from_secs(60)).await.unwrap() })
        })
        .collect();
    let mut firsts = 0;
    for task in tasks {
        firsts += task.await.unwrap() as u32;
    }
    assert_eq!(firsts, 1);
}

async fn a_forgotten_sighting_is_first_again(store: Arc<dyn StateStore>) {
    let id = sighting("forget", 0);
    assert!(store.first_sighting(id, Duration::from_secs(60)).await.unwrap());
    store.forget_sighting(id).await.unwrap();
    assert!(store.first_sighting(id, Duration::from_secs(60)).await.unwrap());
    assert!(!store.first_sighting(id, Duration::from_secs(60)).await.unwrap());
}

// Inhibition: which open source incident holds an inhibit rule's targets back.


async fn a_held_key_names_its_inhibitor_and_no_other_key_is_held(store: Arc<dyn StateStore>) {
    let (held, other) = (sighting("inhibit-held", 0), sighting("inhibit-held", 1));
    assert_eq!(store.inhibitors(&[held, other], T0).await.unwrap(), vec![None, None]);
    store.hold_inhibitors(&[(held, inhibitor("held", 1))], T0, T0 + 300).await.unwrap();
    let found = store.inhibitors(&[other, held, held], T0 + 1).await.unwrap();
    assert_eq!(found, vec![None, Some(inhibitor("held", 1)), Some(inhibitor("held", 1))]);
    assert_eq!(store.inhibitors(&[], T0 + 1).await.unwrap(), vec![]);
}

async fn a_later_hold_of_a_key_replaces_its_inhibitor(store: Arc<dyn StateStore>) {
    let key = sighting("inhibit-replace", 0);
    store.hold_inhibitors(&[(key, inhibitor("replace", 1))], T0, T0 + 300).await.unwrap();
    store.hold_inhibitors(&[(key, inhibitor("replace", 2))], T0 + 10, T0 + 310).await.unwrap();
    assert_eq!(store.inhibitors(&[key], T0 + 11).await.unwrap(), vec![Some(inhibitor("replace", 2))]);
}

async fn a_hold_lapses_at_its_end_unless_renewed(store: Arc<dyn StateStore>) {
    let (lapsing, renewed) = (sighting("inhibit-lapse", 0), sighting("inhibit-lapse", 1));
    let holds = [(lapsing, inhibitor("lapse", 1)), (renewed, inhibitor("lapse", 2))];
    store.hold_inhibitors(&holds, T0, T0 + 1).await.unwrap();
    store.hold_inhibitors(&holds[1..], T0, T0 + 60).await.unwrap();
    // Redis expires keys by its own clock: poll.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.inhibitors(&[lapsing], T0 + 1).await.unwrap()[0].is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the hold outlived its end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.inhibitors(&[renewed], T0 + 1).await.unwrap(), vec![Some(inhibitor("lapse", 2))]);
}

async fn a_resolved_source_releases_only_the_keys_it_still_holds(store: Arc<dyn StateStore>) {
    let (own, taken, later) = (sighting("inhibit-free", 0), sighting("inhibit-free", 1), sighting("inhibit-free", 2));
    let source = inhibitor("free", 1);
    // The same source's next incident (another epoch) is not the one resolving.
    let next_incident = Inhibitor { first_seen_s: T0 + 100, ..source.clone() };
    let holds = [(own, source.clone()), (taken, source.clone()), (later, next_incident.clone())];
    store.hold_inhibitors(&holds, T0, T0 + 300).await.unwrap();
    // Another source of the same key took `taken` over since.
    store.hold_inhibitors(&[(taken, inhibitor("free", 2))], T0 + 5, T0 + 305).await.unwrap();
    let releases = [(own, source.clone()), (taken, source.clone()), (later, source.clone())];
    let released = store.release_inhibitors(&releases).await.unwrap();
    assert_eq!(released, 1, "only the key the resolving incident still held");
    let found = store.inhibitors(&[own, taken, later], T0 + 6).await.unwrap();
    assert_eq!(found, vec![None, Some(inhibitor("free", 2)), Some(next_incident)]);
    assert_eq!(store.release_inhibitors(&releases[..1]).await.unwrap(), 0, "released once");
    assert_eq!(store.release_inhibitors(&[]).await.unwrap(), 0);
    // Firing again, it holds again.
    store.hold_inhibitors(&[(own, source.clone())], T0 + 7, T0 + 307).await.unwrap();
    assert_eq!(store.inhibitors(&[own], T0 + 8).await.unwrap(), vec![Some(source)]);
}
}
