//! The Kubernetes sink's answers to "which open request does this fingerprint
//! have?" and "which was its last request, finished or not?", kept from the watch
//! of requests so that a lookup is one hash probe instead of a scan of the whole
//! watch cache.
//!
//! It follows the watch events exactly as kube-runtime's reflector store does
//! (an apply or delete changes the live view at once; a re-list is gathered aside
//! and replaces the live view when it is complete), so its answers are the ones a
//! scan of the store would give after the same events. It must never decide
//! anything itself, nor call the API server: it only mirrors what the watch said.
//!
//! An incident's requests and a storm's aggregated requests are found the same
//! way: an aggregated request carries its scope's fingerprint in the fingerprint
//! label.

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use kube::runtime::watcher;
use kube::ResourceExt;

use crate::remediation::{labels, Deduplication, RemediationRequest};
use crate::signal::Fingerprint;
use crate::sink::{is_terminal, LastRequest, OpenRequest, RequestRef};
use crate::state::StormKind;

/// Open and last requests by the fingerprint in their label.
#[derive(Default)]
pub struct FingerprintIndex {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    live: Requests,
    /// What the re-list under way has delivered so far (the reflector's buffer).
    relist: Requests,
}

#[derive(Default)]
struct Requests {
    /// The fingerprint each indexed request is filed under, to find it again on change.
    fingerprint_of: HashMap<RequestRef, Fingerprint>,
    open: HashMap<Fingerprint, Scope<OpenRequest>>,
    /// Every request with a written count, whatever its phase: the back-off rules
    /// decide from the last finished one.
    last: HashMap<Fingerprint, Scope<LastRequest>>,
}

/// The indexed requests of one fingerprint: a few at most (an incident's requests
/// until retention deletes the finished ones). All are kept,
/// not only the newest, so that deleting the newest leaves the next newest to
/// answer, as a scan would.
struct Scope<T> {
    members: Vec<T>,
    /// Which member a lookup answers: the most recently opened.
    newest: usize,
}

impl FingerprintIndex {
    pub fn new() -> Self {
        FingerprintIndex::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // Every mutation leaves both maps consistent before it can panic.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The open request of `fingerprint` opened last, if any. Allocates nothing but
    /// the answer.
    pub fn open_request(&self, fingerprint: &Fingerprint) -> Option<OpenRequest> {
        let inner = self.read();
        Some(inner.live.open.get(fingerprint)?.newest().clone())
    }

    /// The request of `fingerprint` opened last, whatever its phase, among those
    /// with a written count. Allocates nothing but the answer.
    pub fn last_request(&self, fingerprint: &Fingerprint) -> Option<LastRequest> {
        let inner = self.read();
        Some(inner.live.last.get(fingerprint)?.newest().clone())
    }

    /// Applies one watch event, after the reflector applied it to its store.
    pub fn follow(&self, event: &Result<watcher::Event<RemediationRequest>, watcher::Error>) {
        let Ok(event) = event else { return };
        let mut inner = self.write();
        match event {
            watcher::Event::Apply(rr) => inner.live.put(rr),
            watcher::Event::Delete(rr) => {
                if let Some(at) = reference(rr) {
                    inner.live.remove(&at);
                }
            }
            watcher::Event::Init => inner.relist = Requests::default(),
            watcher::Event::InitApply(rr) => inner.relist.put(rr),
            watcher::Event::InitDone => inner.live = std::mem::take(&mut inner.relist),
        }
    }
}

/// What a [`Scope`] files: a request, ranked by when it opened.
trait Member {
    fn at(&self) -> &RequestRef;
    /// Greatest answers. Ties of the second are broken by the address, so the
    /// answer never depends on the order events came in.
    fn rank(&self) -> (u32, &str, &str);
}

impl Member for OpenRequest {
    fn at(&self) -> &RequestRef {
        &self.at
    }

    fn rank(&self) -> (u32, &str, &str) {
        (self.first_seen_s, &self.at.namespace, &self.at.name)
    }
}

impl Member for LastRequest {
    fn at(&self) -> &RequestRef {
        &self.at
    }

    /// The scan this replaced ranked by `(first_seen_s, name)`: the name first.
    fn rank(&self) -> (u32, &str, &str) {
        (self.first_seen_s, &self.at.name, &self.at.namespace)
    }
}

impl Requests {
    /// Files `rr` under its fingerprint if it can answer a lookup, replacing what
    /// was filed for its name before.
    fn put(&mut self, rr: &RemediationRequest) {
        let Some(at) = reference(rr) else { return };
        self.remove(&at);
        let Some(fingerprint) = rr.labels().get(labels::FINGERPRINT).and_then(|v| label_fingerprint(v)) else {
            return;
        };
        let open = open_candidate(rr, at.clone());
        let last = last_candidate(rr, at.clone());
        if open.is_none() && last.is_none() {
            return;
        }
        self.fingerprint_of.insert(at, fingerprint);
        if let Some(open) = open {
            file(&mut self.open, fingerprint, open);
        }
        if let Some(last) = last {
            file(&mut self.last, fingerprint, last);
        }
    }

    fn remove(&mut self, at: &RequestRef) {
        let Some(fingerprint) = self.fingerprint_of.remove(at) else { return };
        unfile(&mut self.open, &fingerprint, at);
        unfile(&mut self.last, &fingerprint, at);
    }
}

fn file<T: Member>(scopes: &mut HashMap<Fingerprint, Scope<T>>, fingerprint: Fingerprint, member: T) {
    match scopes.get_mut(&fingerprint) {
        Some(scope) => {
            scope.members.push(member);
            scope.elect();
        }
        None => {
            scopes.insert(fingerprint, Scope { members: vec![member], newest: 0 });
        }
    }
}

fn unfile<T: Member>(scopes: &mut HashMap<Fingerprint, Scope<T>>, fingerprint: &Fingerprint, at: &RequestRef) {
    let Some(scope) = scopes.get_mut(fingerprint) else { return };
    scope.members.retain(|member| member.at() != at);
    if scope.members.is_empty() {
        scopes.remove(fingerprint);
    } else {
        scope.elect();
    }
}

impl<T: Member> Scope<T> {
    /// Picks the member ranked greatest.
    fn elect(&mut self) {
        self.newest =
            (0..self.members.len()).max_by(|&a, &b| self.members[a].rank().cmp(&self.members[b].rank())).unwrap_or(0);
    }

    fn newest(&self) -> &T {
        &self.members[self.newest]
    }
}

/// What a lookup of its fingerprint's last request answers with `rr` (at `at`):
/// any request whose status has a count, whatever its phase.
fn last_candidate(rr: &RemediationRequest, at: RequestRef) -> Option<LastRequest> {
    let (first_seen_s, last_seen_s, count) = counted(rr.status.as_ref()?.deduplication.as_ref()?);
    let (phase, prior_failures) = (super::phase(rr), super::prior_failures(rr));
    Some(LastRequest { at, first_seen_s, last_seen_s, count, phase, prior_failures })
}

/// A written count's first and last second and occurrences.
fn counted(dedup: &Deduplication) -> (u32, u32, u64) {
    (dedup.first_seen_at.0.as_second() as u32, dedup.last_seen_at.0.as_second() as u32, dedup.occurrence_count)
}

/// What a lookup of its fingerprint's open request answers with `rr` (at `at`), if
/// `rr` can be an open request: no terminal phase, and either its status's count
/// or, before its status is written, its name's epoch.
fn open_candidate(rr: &RemediationRequest, at: RequestRef) -> Option<OpenRequest> {
    let status = rr.status.as_ref();
    if is_terminal(status.and_then(|s| s.phase.as_deref())) {
        return None;
    }
    let storm = rr.spec.storm.as_ref().map(|s| StormKind::parse(&s.kind));
    let open = match status.and_then(|s| s.deduplication.as_ref()) {
        Some(dedup) => {
            let (first_seen_s, last_seen_s, count) = counted(dedup);
            OpenRequest { at, first_seen_s, last_seen_s, count, storm }
        }
        // Created, but its status is not written yet: the API server drops status on
        // create, and the write after it may have failed and be waiting for a retry.
        // It is still the incident's open request, holding the occurrence that
        // created it; its name says since when.
        None => {
            let first_seen_s = crate::remediation::request_epoch(&at.name)?;
            OpenRequest { at, first_seen_s, last_seen_s: first_seen_s, count: 1, storm }
        }
    };
    Some(open)
}

/// The fingerprint whose [`Fingerprint::label_value`] is exactly `value`; `None`
/// for a label no fingerprint writes (no lookup could match it).
fn label_fingerprint(value: &str) -> Option<Fingerprint> {
    let decoded = data_encoding::BASE32_NOPAD.decode(value.to_ascii_uppercase().as_bytes()).ok()?;
    let fingerprint = Fingerprint::from_bytes(decoded.try_into().ok()?);
    (fingerprint.label_value() == value).then_some(fingerprint)
}

fn reference(rr: &RemediationRequest) -> Option<RequestRef> {
    Some(RequestRef { namespace: rr.namespace()?, name: rr.name_any() })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::runtime::reflector::{self, Store};
    use proptest::prelude::*;

    use super::*;
    use crate::remediation::{time_s, Backoff, RemediationRequestSpec, RemediationRequestStatus, StormSpec};
    use crate::signal::{SignalType, TargetResource};
    use crate::sink::Phase;

    /// The lookup as it was before the index: a scan of the reflector's store (with
    /// ties broken as the index breaks them; the scan's order was arbitrary).
    fn scan(store: &Store<RemediationRequest>, fingerprint: &Fingerprint) -> Option<OpenRequest> {
        let value = fingerprint.label_value();
        store
            .state()
            .into_iter()
            .filter(|rr| {
                rr.labels().get(labels::FINGERPRINT) == Some(&value)
                    && !is_terminal(rr.status.as_ref().and_then(|s| s.phase.as_deref()))
            })
            .filter_map(|rr| {
                let at = RequestRef { namespace: rr.namespace()?, name: rr.name_any() };
                let storm = rr.spec.storm.as_ref().map(|s| StormKind::parse(&s.kind));
                match rr.status.as_ref().and_then(|s| s.deduplication.as_ref()) {
                    Some(dedup) => Some(OpenRequest {
                        at,
                        first_seen_s: dedup.first_seen_at.0.as_second() as u32,
                        last_seen_s: dedup.last_seen_at.0.as_second() as u32,
                        count: dedup.occurrence_count,
                        storm,
                    }),
                    None => {
                        let first_seen_s = crate::remediation::request_epoch(&at.name)?;
                        Some(OpenRequest { at, first_seen_s, last_seen_s: first_seen_s, count: 1, storm })
                    }
                }
            })
            .max_by(|a, b| (a.first_seen_s, &a.at).cmp(&(b.first_seen_s, &b.at)))
    }

    /// `KubeSink::last_request` as it was before the index: a scan of the store for
    /// the newest request with a written count, by `(first_seen_s, name)` (with
    /// ties of both broken by the namespace, as the index breaks them; the scan's
    /// order was arbitrary).
    fn scan_last(store: &Store<RemediationRequest>, fingerprint: &Fingerprint) -> Option<LastRequest> {
        let value = fingerprint.label_value();
        store
            .state()
            .into_iter()
            .filter(|rr| rr.labels().get(labels::FINGERPRINT) == Some(&value))
            .filter_map(|rr| {
                let status = rr.status.as_ref()?;
                let dedup = status.deduplication.as_ref()?;
                Some(LastRequest {
                    at: RequestRef { namespace: rr.namespace()?, name: rr.name_any() },
                    first_seen_s: dedup.first_seen_at.0.as_second() as u32,
                    last_seen_s: dedup.last_seen_at.0.as_second() as u32,
                    count: dedup.occurrence_count,
                    phase: Phase::of(status.phase.as_deref()),
                    prior_failures: status.backoff.as_ref().map_or(0, |b| b.prior_failures),
                })
            })
            .max_by(|a, b| {
                (a.first_seen_s, &a.at.name, &a.at.namespace).cmp(&(b.first_seen_s, &b.at.name, &b.at.namespace))
            })
    }

    fn fingerprints() -> Vec<Fingerprint> {
        (0..3u8).map(|i| Fingerprint::from_bytes([i; 32])).collect()
    }

    /// One request as the watch may report it.
    #[derive(Clone, Debug)]
    struct Shape {
        namespace: u8,
        name: u8,
        /// Index into [`fingerprints`]; 3 = a label no fingerprint writes, 4 = none.
        label: u8,
        /// `None`: no status written yet.
        dedup: Option<(u32, u32, u64)>,
        phase: Option<&'static str>,
        /// `status.backoff.priorFailures`, when a backoff is written.
        prior_failures: Option<u32>,
        storm: bool,
    }

    fn build(shape: &Shape) -> RemediationRequest {
        let fps = fingerprints();
        // Names with and without a parsable epoch (`request_epoch`).
        let name = match shape.name % 4 {
            0 => format!("disk-full-{}", shape.name),
            _ => format!("disk-full-x-{}", ["10", "zz", "1a"][(shape.name % 3) as usize]),
        };
        let name = format!("{name}-{}", shape.name / 4);
        let mut rr = RemediationRequest::new(
            &name,
            RemediationRequestSpec {
                signal_fingerprint: String::new(),
                signal_name: "DiskFull".into(),
                severity: "critical".into(),
                signal_type: SignalType::PROMETHEUS_ALERT,
                signal_source: "test".into(),
                target_resource: TargetResource::default(),
                firing_time: None,
                received_time: time_s(0),
                signal_labels: BTreeMap::new(),
                signal_annotations: BTreeMap::new(),
                environment: "production".into(),
                priority: "P1".into(),
                priority_rule: String::new(),
                storm: shape.storm.then(|| StormSpec {
                    kind: "rate".into(),
                    window_id: String::new(),
                    affected_resources: Vec::new(),
                }),
            },
        );
        rr.metadata.namespace = Some(["prod", "dev"][(shape.namespace % 2) as usize].into());
        let label = match shape.label {
            i @ 0..=2 => Some(fps[i as usize].label_value()),
            3 => Some(fps[0].label_value().to_ascii_uppercase()),
            _ => None,
        };
        if let Some(label) = label {
            rr.metadata.labels = Some(BTreeMap::from([(labels::FINGERPRINT.to_string(), label)]));
        }
        if shape.dedup.is_some() || shape.phase.is_some() || shape.prior_failures.is_some() {
            rr.status = Some(RemediationRequestStatus {
                deduplication: shape.dedup.map(|(first, last, count)| Deduplication {
                    first_seen_at: time_s(first),
                    last_seen_at: time_s(last),
                    occurrence_count: count,
                    tallies: Vec::new(),
                }),
                phase: shape.phase.map(String::from),
                backoff: shape.prior_failures.map(|prior_failures| Backoff { prior_failures, until: None }),
                ..Default::default()
            });
        }
        rr
    }

    #[derive(Clone, Debug)]
    enum Step {
        Apply(Shape),
        Delete(Shape),
        Init,
        InitApply(Shape),
        InitDone,
        /// A watch error: nothing changes.
        Failed,
        /// The process restarts: a new store and a new index, both empty.
        Restart,
    }

    fn shape() -> impl Strategy<Value = Shape> {
        let phase = prop::sample::select(vec![
            None,
            Some("Pending"),
            Some("Running"),
            Some("Completed"),
            Some("Failed"),
            Some("ManualReviewRequired"),
        ]);
        let dedup = prop::option::of((0u32..4, 0u32..8, 1u64..5));
        let prior_failures = prop::option::of(0u32..3);
        (0u8..2, 0u8..8, 0u8..5, dedup, phase, prior_failures, any::<bool>()).prop_map(
            |(namespace, name, label, dedup, phase, prior_failures, storm)| Shape {
                namespace,
                name,
                label,
                dedup,
                phase,
                prior_failures,
                storm,
            },
        )
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => shape().prop_map(Step::Apply),
            2 => shape().prop_map(Step::Delete),
            1 => Just(Step::Init),
            4 => shape().prop_map(Step::InitApply),
            1 => Just(Step::InitDone),
            1 => Just(Step::Failed),
            1 => Just(Step::Restart),
        ]
    }

    proptest! {
        #[test]
        fn the_index_answers_what_a_scan_of_the_watch_cache_answers(steps in prop::collection::vec(step(), 0..60)) {
            let (mut store, mut writer) = reflector::store::<RemediationRequest>();
            let mut index = FingerprintIndex::new();
            for step in steps {
                let event = match step {
                    Step::Apply(s) => Ok(watcher::Event::Apply(build(&s))),
                    Step::Delete(s) => Ok(watcher::Event::Delete(build(&s))),
                    Step::Init => Ok(watcher::Event::Init),
                    Step::InitApply(s) => Ok(watcher::Event::InitApply(build(&s))),
                    Step::InitDone => Ok(watcher::Event::InitDone),
                    Step::Failed => Err(watcher::Error::NoResourceVersion),
                    Step::Restart => {
                        (store, writer) = reflector::store();
                        index = FingerprintIndex::new();
                        continue;
                    }
                };
                if let Ok(event) = &event {
                    writer.apply_watcher_event(event);
                }
                index.follow(&event);
                for fingerprint in fingerprints() {
                    prop_assert_eq!(index.open_request(&fingerprint), scan(&store, &fingerprint));
                    prop_assert_eq!(index.last_request(&fingerprint), scan_last(&store, &fingerprint));
                }
            }
        }
    }

    #[test]
    fn a_relist_replaces_what_the_watch_had_only_when_it_is_complete() {
        let fp = fingerprints()[0];
        let open = Shape {
            namespace: 0,
            name: 1,
            label: 0,
            dedup: Some((1, 2, 3)),
            phase: None,
            prior_failures: None,
            storm: false,
        };
        let index = FingerprintIndex::new();
        index.follow(&Ok(watcher::Event::Apply(build(&open))));
        index.follow(&Ok(watcher::Event::Init));
        assert!(index.open_request(&fp).is_some(), "the old view answers until the re-list is complete");
        index.follow(&Ok(watcher::Event::InitDone));
        assert_eq!(index.open_request(&fp), None, "the re-list no longer had it");
    }

    #[test]
    fn the_last_request_is_the_newest_finished_or_not_and_the_next_newest_once_it_is_deleted() {
        let fp = fingerprints()[0];
        let request = |name, first_seen, phase| Shape {
            namespace: 0,
            name,
            label: 0,
            dedup: Some((first_seen, first_seen, 1)),
            phase,
            prior_failures: Some(1),
            storm: false,
        };
        let failed = request(0, 1, Some("Failed"));
        let running = request(4, 2, Some("Running"));
        let index = FingerprintIndex::new();
        index.follow(&Ok(watcher::Event::Apply(build(&failed))));
        index.follow(&Ok(watcher::Event::Apply(build(&running))));
        let last = index.last_request(&fp).expect("a last request");
        assert_eq!((last.first_seen_s, last.phase), (2, Phase::Active));
        index.follow(&Ok(watcher::Event::Delete(build(&running))));
        let last = index.last_request(&fp).expect("the failed one is still there");
        assert_eq!((last.first_seen_s, last.phase, last.prior_failures), (1, Phase::Failed, 1));
        assert_eq!(index.open_request(&fp), None, "a failed request is no open one");
    }
}
