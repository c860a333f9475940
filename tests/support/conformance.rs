//! The behavioural contract of a `StateStore`: one definition of the dedup rule,
//! run against every backend.
//!
//! A backend's test file provides an async factory `fn(window: Duration) ->
//! Arc<dyn StateStore>` and invokes `conformance_suite!(factory)`, which expands to
//! one test per case below. Time is passed to `observe` explicitly, so windows are
//! tested at exact boundaries without waiting.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tidegate::signal::{Fingerprint, SignalStatus, TargetResource};
use tidegate::state::{Entry, Observation, StateStore, Verdict};

pub const WINDOW: Duration = Duration::from_secs(300);
const T0: u32 = 1_800_000_000;

/// Expands to one `#[tokio::test]` per conformance case.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:path) => {
        $crate::conformance_suite!(@cases $factory;
            first_firing_opens_an_incident,
            repeat_within_window_is_a_duplicate_that_counts,
            each_duplicate_slides_the_window,
            window_lapse_opens_a_new_incident_with_a_new_epoch,
            resolved_reports_the_open_incident_without_counting,
            resolved_for_an_unknown_incident_records_nothing,
            resolved_after_the_window_is_unknown,
            batch_is_answered_in_order_and_sees_its_own_writes,
            fingerprints_are_independent,
            fifty_concurrent_observers_open_exactly_one_incident,
        );
    };
    (@cases $factory:path; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let store = $factory($crate::support::conformance::WINDOW).await;
                $crate::support::conformance::$case(store).await;
            }
        )+
    };
}

/// A fingerprint unique to a case, so cases may share one server.
fn fp(case: &str, n: u32) -> Fingerprint {
    let target = TargetResource {
        kind: "Pod".into(),
        name: format!("p{n}"),
        namespace: "ns".into(),
    };
    Fingerprint::new(case, "ns", &target)
}

fn fire(fingerprint: Fingerprint) -> Observation {
    Observation {
        fingerprint,
        status: SignalStatus::Firing,
    }
}

fn resolve(fingerprint: Fingerprint) -> Observation {
    Observation {
        fingerprint,
        status: SignalStatus::Resolved,
    }
}

async fn one(store: &dyn StateStore, o: Observation, now: u32) -> Verdict {
    let mut v = store.observe(&[o], now).await.expect("store answers");
    assert_eq!(v.len(), 1);
    v.remove(0)
}

fn entry(first: u32, last: u32, count: u32) -> Entry {
    Entry {
        first_seen_s: first,
        last_seen_s: last,
        count,
    }
}

pub async fn first_firing_opens_an_incident(store: Arc<dyn StateStore>) {
    let v = one(&*store, fire(fp("first", 0)), T0).await;
    assert_eq!(v, Verdict::New(entry(T0, T0, 1)));
}

pub async fn repeat_within_window_is_a_duplicate_that_counts(store: Arc<dyn StateStore>) {
    let f = fp("repeat", 0);
    one(&*store, fire(f), T0).await;
    assert_eq!(
        one(&*store, fire(f), T0 + 10).await,
        Verdict::Duplicate(entry(T0, T0 + 10, 2))
    );
    assert_eq!(
        one(&*store, fire(f), T0 + 20).await,
        Verdict::Duplicate(entry(T0, T0 + 20, 3))
    );
}

pub async fn each_duplicate_slides_the_window(store: Arc<dyn StateStore>) {
    let f = fp("slide", 0);
    let w = WINDOW.as_secs() as u32;
    one(&*store, fire(f), T0).await;
    assert_eq!(
        one(&*store, fire(f), T0 + w - 1).await,
        Verdict::Duplicate(entry(T0, T0 + w - 1, 2))
    );
    // Two windows after the first sighting, but within one of the last.
    let later = T0 + 2 * w - 2;
    assert_eq!(
        one(&*store, fire(f), later).await,
        Verdict::Duplicate(entry(T0, later, 3))
    );
}

pub async fn window_lapse_opens_a_new_incident_with_a_new_epoch(store: Arc<dyn StateStore>) {
    let f = fp("lapse", 0);
    let w = WINDOW.as_secs() as u32;
    one(&*store, fire(f), T0).await;
    // Exactly one window after the last sighting is outside the window.
    assert_eq!(
        one(&*store, fire(f), T0 + w).await,
        Verdict::New(entry(T0 + w, T0 + w, 1))
    );
    assert_eq!(
        one(&*store, fire(f), T0 + w + 1).await,
        Verdict::Duplicate(entry(T0 + w, T0 + w + 1, 2))
    );
}

pub async fn resolved_reports_the_open_incident_without_counting(store: Arc<dyn StateStore>) {
    let f = fp("resolved-open", 0);
    one(&*store, fire(f), T0).await;
    assert_eq!(
        one(&*store, resolve(f), T0 + 5).await,
        Verdict::ResolvedOpen(entry(T0, T0, 1))
    );
    assert_eq!(
        one(&*store, fire(f), T0 + 6).await,
        Verdict::Duplicate(entry(T0, T0 + 6, 2))
    );
}

pub async fn resolved_for_an_unknown_incident_records_nothing(store: Arc<dyn StateStore>) {
    let f = fp("resolved-unknown", 0);
    assert_eq!(one(&*store, resolve(f), T0).await, Verdict::ResolvedUnknown);
    assert_eq!(
        one(&*store, fire(f), T0 + 1).await,
        Verdict::New(entry(T0 + 1, T0 + 1, 1))
    );
}

pub async fn resolved_after_the_window_is_unknown(store: Arc<dyn StateStore>) {
    let f = fp("resolved-late", 0);
    one(&*store, fire(f), T0).await;
    assert_eq!(
        one(&*store, resolve(f), T0 + WINDOW.as_secs() as u32).await,
        Verdict::ResolvedUnknown
    );
}

pub async fn batch_is_answered_in_order_and_sees_its_own_writes(store: Arc<dyn StateStore>) {
    let (a, b) = (fp("batch", 0), fp("batch", 1));
    let verdicts = store
        .observe(&[fire(a), fire(b), fire(a), resolve(b)], T0)
        .await
        .unwrap();
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

pub async fn fingerprints_are_independent(store: Arc<dyn StateStore>) {
    for n in 0..20 {
        assert_eq!(
            one(&*store, fire(fp("independent", n)), T0).await,
            Verdict::New(entry(T0, T0, 1))
        );
    }
    assert_eq!(
        one(&*store, fire(fp("independent", 3)), T0 + 1).await,
        Verdict::Duplicate(entry(T0, T0 + 1, 2))
    );
}

pub async fn fifty_concurrent_observers_open_exactly_one_incident(store: Arc<dyn StateStore>) {
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
    assert_eq!(
        counts,
        (1..=50).collect::<BTreeSet<u32>>(),
        "every observer got a distinct count"
    );
}
