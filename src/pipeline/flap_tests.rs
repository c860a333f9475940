//! Flapping decided end to end over the embedded store and the directory sink, on
//! a manual clock ([`super::lifecycle_tests::Rig`]).

use std::time::Duration;

use super::lifecycle_tests::{signal, statuses, Rig};
use super::OutcomeStatus;
use crate::remediation::{labels, RemediationRequest, FLAPPING_CONDITION};
use crate::signal::{Signal, SignalStatus};

fn resolved(s: &Signal<'static>) -> Signal<'static> {
    Signal { status: SignalStatus::Resolved, ..s.clone() }
}

/// The request's `Flapping` condition's status and reason, and its flapping label.
fn flapping(rr: &RemediationRequest) -> (Option<(String, String)>, Option<String>) {
    let condition = rr.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == FLAPPING_CONDITION));
    let label = rr.metadata.labels.as_ref().and_then(|l| l.get(labels::FLAPPING)).cloned();
    (condition.map(|c| (c.status.clone(), c.reason.clone())), label)
}

/// Sends `alert` firing, then `flaps` times resolved and firing again, a minute
/// apart; the last outcome.
async fn flap(rig: &Rig, alert: &Signal<'static>, flaps: usize) {
    rig.send("am", std::slice::from_ref(alert)).await;
    for _ in 0..flaps {
        rig.clock.advance(Duration::from_secs(60));
        let outcomes = rig.send("am", &[resolved(alert), alert.clone()]).await;
        assert_eq!(statuses(&outcomes), [OutcomeStatus::Resolved, OutcomeStatus::Duplicate]);
    }
}

#[tokio::test]
async fn three_transitions_are_calm_and_a_fourth_marks_the_request_flapping() {
    let rig = Rig::new(|_| {});
    let alert = signal("KubePodCrashLooping", "shop", "web-0");

    flap(&rig, &alert, 3).await;
    let calm = rig.requests().await;
    flap_once_more(&rig, &alert).await;
    let marked = rig.requests().await;

    assert_eq!(calm.len(), 1);
    assert_eq!(flapping(&calm[0]), (None, None), "threshold 3 is not exceeded by 3");
    assert_eq!(marked.len(), 1, "flapping marks the request, it opens none");
    let expected = (Some(("True".to_string(), "TransitionsOverThreshold".to_string())), Some("true".to_string()));
    assert_eq!(flapping(&marked[0]), expected);
    let status = marked[0].status.as_ref().unwrap();
    assert_eq!(
        status.flapping.as_ref().map(|f| (f.transitions, f.last_transition_at.0.as_second())),
        Some((4, 1_700_000_240))
    );
    assert_eq!(status.deduplication.as_ref().unwrap().occurrence_count, 5, "every firing counted, as before");
    let transitions = "tidegate_flap_transitions_total{source=\"prometheus-alert\"}";
    assert_eq!(rig.sample(transitions), Some(4.0));
    assert_eq!(rig.sample("tidegate_flapping_marked_total"), Some(1.0));
}

async fn flap_once_more(rig: &Rig, alert: &Signal<'static>) {
    rig.clock.advance(Duration::from_secs(60));
    rig.send("am", &[resolved(alert), alert.clone()]).await;
}

#[tokio::test]
async fn repeated_resolutions_and_firings_are_one_transition_each_way() {
    let rig = Rig::new(|c| c.flap.threshold = 1);
    let alert = signal("KubePodCrashLooping", "shop", "web-0");

    rig.send("am", &[alert.clone(), alert.clone()]).await;
    rig.clock.advance(Duration::from_secs(60));
    rig.send("am", &[resolved(&alert), resolved(&alert), alert.clone(), alert.clone()]).await;

    assert_eq!(flapping(&rig.requests().await[0]), (None, None), "one transition, at threshold 1");
    assert_eq!(rig.sample("tidegate_flap_transitions_total{source=\"prometheus-alert\"}"), Some(1.0));
}

#[tokio::test]
async fn the_mark_clears_a_window_after_the_last_transition_and_comes_back_with_the_next_flaps() {
    let rig = Rig::new(|c| c.flap.window = Duration::from_secs(600));
    let alert = signal("KubePodCrashLooping", "shop", "web-0");
    flap(&rig, &alert, 4).await;
    rig.pipeline.drain(Duration::from_secs(5)).await;

    // Still firing, and repeating: repeats are no transitions.
    rig.clock.advance(Duration::from_secs(299));
    rig.send("am", std::slice::from_ref(&alert)).await;
    rig.clock.advance(Duration::from_secs(300));
    let early = rig.pipeline.settle_flapping().await.unwrap();
    rig.clock.advance(Duration::from_secs(1));
    let due = rig.pipeline.settle_flapping().await.unwrap();
    let settled = rig.requests().await;

    assert_eq!((early.flapping, early.cleared), (1, 0), "599 s after the last transition");
    assert_eq!((due.flapping, due.cleared), (1, 1), "600 s after");
    assert_eq!(flapping(&settled[0]), (Some(("False".to_string(), "Settled".to_string())), None));
    assert_eq!(rig.sample("tidegate_flapping_cleared_total"), Some(1.0));
    assert_eq!(rig.pipeline.settle_flapping().await.unwrap(), Default::default(), "nothing left to clear");

    // Past the dedup window the alert opens a new request; four flaps mark it.
    rig.clock.advance(Duration::from_secs(600));
    flap(&rig, &alert, 4).await;
    let requests = rig.requests().await;
    let marked: Vec<_> = requests.iter().filter(|rr| flapping(rr).1.is_some()).collect();
    assert_eq!((requests.len(), marked.len()), (2, 1));
    assert_ne!(marked[0].metadata.name, settled[0].metadata.name);
}
