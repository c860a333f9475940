//! Incident identity follows the workload, not the pod.
//!
//! A crash-looping Deployment restarts and replaces its pods, and every pod name
//! would otherwise be a new fingerprint, so a new RemediationRequest (or, with
//! enough pods, a storm). [`attribute`] rewrites a signal about a Pod (or a
//! ReplicaSet or Job) to name its top controller instead, as an [`Owners`]
//! implementation finds it: the signal's `target` and `fingerprint` then name the
//! workload, while its labels keep the pod's own name.
//!
//! The pipeline calls [`attribute`] once per batch, before anything reads a
//! fingerprint. This module never drops a signal and never fails one: whatever
//! cannot be resolved keeps the identity it came with. [`owners`] is the [`Owners`]
//! of a Kubernetes cluster, from metadata-only watch caches; [`labels`] keeps the
//! workloads' [`REMEDIATE_LABEL`] from the same kind of caches, for scope.

pub mod labels;
pub mod owners;

use std::borrow::Cow;

use foldhash::HashMap;
use futures::stream::FuturesOrdered;
use futures::StreamExt;

use crate::signal::{Fingerprint, Signal, TargetResource};
use crate::state::BoxFuture;

/// Owner lookups of one batch in flight at once, at most: a notification about
/// thousands of new pods must not become thousands of GETs at once.
const LOOKUPS_IN_FLIGHT: usize = 16;

/// Finds the top controller of an object through its owner references.
pub trait Owners: Send + Sync + 'static {
    /// The top controller of `target`, or `None` when `target` has no controller,
    /// is not a kind this resolver follows, or cannot be resolved right now.
    fn top<'a>(&'a self, target: &'a TargetResource) -> BoxFuture<'a, Option<TargetResource>>;
}

/// Where namespace labels come from, when tidegate runs against a cluster: the
/// Kubernetes sink's namespace watch, read by classification.
pub trait NamespaceLabels: Send + Sync {
    /// The `environment` label of `namespace`, if the namespace is known and has one.
    fn environment(&self, namespace: &str) -> Option<String>;
}

/// The label that opts a workload or a namespace in (`"true"`) or out (`"false"`)
/// of remediation (`pipeline::scope`).
pub const REMEDIATE_LABEL: &str = "tidegate.dev/remediate";

/// The [`REMEDIATE_LABEL`] values a cluster's caches hold, without I/O. `None`:
/// the object is not known, or does not carry the label (or carries another value).
pub trait RemediateLabels: Send + Sync {
    /// The label of the workload `target` (a Deployment, StatefulSet, DaemonSet,
    /// CronJob, or a pod without a controller).
    fn workload(&self, target: &TargetResource) -> Option<bool>;
    /// Whether the labels of objects of `kind` are read at all: what a hint may
    /// tell a person to label.
    fn reads_workload(&self, kind: &str) -> bool;
    /// The label of `namespace`.
    fn namespace(&self, namespace: &str) -> Option<bool>;
}

/// Reads a label value as the scope does: only `"true"` and `"false"` say anything.
pub fn remediate_value(value: Option<&str>) -> Option<bool> {
    match value? {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// `signals`, with each one whose target has a controller rewritten to name that
/// controller. Borrows `signals` unchanged when no target has one (the common case
/// for signals that do not name pods), so nothing is copied then.
pub async fn attribute<'s, 'a>(owners: &dyn Owners, signals: &'s [Signal<'a>]) -> Cow<'s, [Signal<'a>]> {
    // One lookup per distinct target: a webhook often carries many alerts about one pod.
    let mut distinct: Vec<&TargetResource> = Vec::new();
    let mut slots: HashMap<&TargetResource, usize> = HashMap::default();
    let slot_of: Vec<usize> = signals
        .iter()
        .map(|signal| {
            *slots.entry(&signal.target).or_insert_with(|| {
                distinct.push(&signal.target);
                distinct.len() - 1
            })
        })
        .collect();
    // All of them at once (up to a bound): a lookup the caches cannot answer is a GET,
    // and one after another they made a notification about ten new pods wait ten
    // round trips while the machine idled.
    let mut tops: Vec<Option<TargetResource>> = Vec::with_capacity(distinct.len());
    let mut lookups = FuturesOrdered::new();
    for target in distinct {
        if lookups.len() >= LOOKUPS_IN_FLIGHT {
            tops.extend(lookups.next().await);
        }
        lookups.push_back(owners.top(target));
    }
    while let Some(top) = lookups.next().await {
        tops.push(top);
    }
    let mut out: Option<Vec<Signal<'a>>> = None;
    for (i, signal) in signals.iter().enumerate() {
        match tops[slot_of[i]].as_ref().filter(|top| **top != signal.target) {
            Some(top) => out.get_or_insert_with(|| signals[..i].to_vec()).push(Signal {
                fingerprint: Fingerprint::new(&signal.name, &signal.namespace, top),
                target: top.clone(),
                ..signal.clone()
            }),
            None => {
                if let Some(out) = &mut out {
                    out.push(signal.clone());
                }
            }
        }
    }
    match out {
        Some(rewritten) => Cow::Owned(rewritten),
        None => Cow::Borrowed(signals),
    }
}

/// An alert `name` about pod `pod` of namespace `shop`, as a test sends it.
#[cfg(test)]
pub(crate) fn pod_alert(name: &str, pod: &str, status: crate::signal::SignalStatus) -> Signal<'static> {
    use crate::signal::{Labels, SignalType};
    let target =
        TargetResource { kind: "Pod".into(), name: pod.into(), namespace: "shop".into(), cluster: String::new() };
    Signal {
        name: name.to_string().into(),
        severity: "critical".into(),
        namespace: "shop".into(),
        fingerprint: Fingerprint::new(name, "shop", &target),
        target,
        labels: [("pod", pod.to_string())].into_iter().collect::<Labels>(),
        annotations: Labels::default(),
        firing_time: None,
        received_time: jiff::Timestamp::UNIX_EPOCH,
        signal_type: SignalType::PROMETHEUS_ALERT,
        source: "test".into(),
        status,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::signal::SignalStatus;

    struct Table(HashMap<String, TargetResource>);

    impl Owners for Table {
        fn top<'a>(&'a self, target: &'a TargetResource) -> BoxFuture<'a, Option<TargetResource>> {
            Box::pin(async move { self.0.get(&target.name).cloned() })
        }
    }

    fn pod_signal(pod: &str) -> Signal<'static> {
        pod_alert("KubePodCrashLooping", pod, SignalStatus::Firing)
    }

    fn deployment(name: &str) -> TargetResource {
        TargetResource {
            kind: "Deployment".into(),
            name: name.into(),
            namespace: "shop".into(),
            cluster: String::new(),
        }
    }

    #[tokio::test]
    async fn pods_of_one_deployment_share_its_fingerprint_and_keep_their_names_in_labels() {
        let owners = Table(HashMap::from([("web-1".into(), deployment("web")), ("web-2".into(), deployment("web"))]));
        let signals = [pod_signal("web-1"), pod_signal("bare"), pod_signal("web-2")];
        let out = attribute(&owners, &signals).await;
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].target, deployment("web"));
        assert_eq!(out[0].fingerprint, Fingerprint::new("KubePodCrashLooping", "shop", &deployment("web")));
        assert_eq!(out[0].fingerprint, out[2].fingerprint);
        assert_eq!(out[0].labels.get("pod"), Some("web-1"));
        assert_eq!(out[2].labels.get("pod"), Some("web-2"));
        assert_eq!(out[1].target.name, "bare", "no controller: the pod's own identity");
        assert_eq!(out[1].fingerprint, signals[1].fingerprint);
    }

    /// Answers each lookup only once `expected` lookups are waiting at once, and
    /// counts the lookups.
    struct AllAtOnce {
        barrier: tokio::sync::Barrier,
        lookups: std::sync::atomic::AtomicUsize,
    }

    impl Owners for AllAtOnce {
        fn top<'a>(&'a self, target: &'a TargetResource) -> BoxFuture<'a, Option<TargetResource>> {
            Box::pin(async move {
                self.lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.barrier.wait().await;
                Some(deployment(&format!("of-{}", target.name)))
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_looks_up_its_distinct_targets_at_once_and_each_once() {
        let owners = AllAtOnce { barrier: tokio::sync::Barrier::new(3), lookups: Default::default() };
        let signals = [pod_signal("a"), pod_signal("b"), pod_signal("a"), pod_signal("c"), pod_signal("b")];
        // One after another, the first lookup would wait for the other two forever.
        let out = tokio::time::timeout(std::time::Duration::from_secs(60), attribute(&owners, &signals))
            .await
            .expect("the three lookups run at once");
        assert_eq!(owners.lookups.load(std::sync::atomic::Ordering::Relaxed), 3, "one lookup per distinct target");
        let names: Vec<&str> = out.iter().map(|s| s.target.name.as_str()).collect();
        assert_eq!(names, ["of-a", "of-b", "of-a", "of-c", "of-b"], "each signal keeps its place");
    }

    #[tokio::test]
    async fn signals_without_controllers_are_borrowed_unchanged() {
        let owners = Table(HashMap::new());
        let signals = [pod_signal("a"), pod_signal("b")];
        assert!(matches!(attribute(&owners, &signals).await, Cow::Borrowed(_)));
    }
}
