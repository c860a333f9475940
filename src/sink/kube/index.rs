//! The Kubernetes sink's answer to "which open request does this fingerprint
//! have?", kept from the watch of requests so that a lookup is one hash probe
//! instead of a scan of the whole watch cache.
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

use crate::remediation::{labels, RemediationRequest};
use crate::signal::Fingerprint;
use crate::sink::{is_terminal, OpenRequest, RequestRef};
use crate::state::StormKind;

/// Open requests by the fingerprint in their label.
#[derive(Default)]
pub struct OpenIndex {
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
    /// The scope each indexed request is filed under, to find it again on change.
    scopes_of: HashMap<RequestRef, Fingerprint>,
    scopes: HashMap<Fingerprint, Scope>,
}

/// The open requests of one fingerprint: nearly always one.
struct Scope {
    members: Vec<OpenRequest>,
    /// Which member a lookup answers: the most recently opened.
    newest: usize,
}

impl OpenIndex {
    pub fn new() -> Self {
        OpenIndex::default()
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
        let scope = inner.live.scopes.get(fingerprint)?;
        Some(scope.members[scope.newest].clone())
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

impl Requests {
    /// Files `rr` under its fingerprint if it can be an incident's open request,
    /// replacing what was filed for its name before.
    fn put(&mut self, rr: &RemediationRequest) {
        let Some(at) = reference(rr) else { return };
        self.remove(&at);
        let Some((fingerprint, open)) = candidate(rr, at) else { return };
        self.scopes_of.insert(open.at.clone(), fingerprint);
        match self.scopes.get_mut(&fingerprint) {
            Some(scope) => {
                scope.members.push(open);
                scope.elect();
            }
            None => {
                self.scopes.insert(fingerprint, Scope { members: vec![open], newest: 0 });
            }
        }
    }

    fn remove(&mut self, at: &RequestRef) {
        let Some(fingerprint) = self.scopes_of.remove(at) else { return };
        let Some(scope) = self.scopes.get_mut(&fingerprint) else { return };
        scope.members.retain(|open| open.at != *at);
        if scope.members.is_empty() {
            self.scopes.remove(&fingerprint);
        } else {
            scope.elect();
        }
    }
}

impl Scope {
    /// Picks the member opened last; between equals, the greatest address, so the
    /// answer never depends on the order events came in.
    fn elect(&mut self) {
        self.newest = (0..self.members.len())
            .max_by(|&a, &b| {
                let (a, b) = (&self.members[a], &self.members[b]);
                (a.first_seen_s, &a.at).cmp(&(b.first_seen_s, &b.at))
            })
            .unwrap_or(0);
    }
}

/// What a lookup of its fingerprint answers with `rr` (at `at`), if `rr` can be an
/// open request: a request of ours (a fingerprint label), no terminal phase, and
/// either its status's count or, before its status is written, its name's epoch.
fn candidate(rr: &RemediationRequest, at: RequestRef) -> Option<(Fingerprint, OpenRequest)> {
    let fingerprint = label_fingerprint(rr.labels().get(labels::FINGERPRINT)?)?;
    let status = rr.status.as_ref();
    if is_terminal(status.and_then(|s| s.phase.as_deref())) {
        return None;
    }
    let storm = rr.spec.storm.as_ref().map(|s| StormKind::parse(&s.kind));
    let open = match status.and_then(|s| s.deduplication.as_ref()) {
        Some(dedup) => OpenRequest {
            at,
            first_seen_s: dedup.first_seen_at.0.as_second() as u32,
            last_seen_s: dedup.last_seen_at.0.as_second() as u32,
            count: dedup.occurrence_count,
            storm,
        },
        // Created, but its status is not written yet: the API server drops status on
        // create, and the write after it may have failed and be waiting for a retry.
        // It is still the incident's open request, holding the occurrence that
        // created it; its name says since when.
        None => {
            let first_seen_s = crate::remediation::request_epoch(&at.name)?;
            OpenRequest { at, first_seen_s, last_seen_s: first_seen_s, count: 1, storm }
        }
    };
    Some((fingerprint, open))
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
    use crate::remediation::{time_s, Deduplication, RemediationRequestSpec, RemediationRequestStatus, StormSpec};
    use crate::signal::{SignalType, TargetResource};

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
        if shape.dedup.is_some() || shape.phase.is_some() {
            rr.status = Some(RemediationRequestStatus {
                deduplication: shape.dedup.map(|(first, last, count)| Deduplication {
                    first_seen_at: time_s(first),
                    last_seen_at: time_s(last),
                    occurrence_count: count,
                    tallies: Vec::new(),
                }),
                phase: shape.phase.map(String::from),
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
        let phase =
            prop::sample::select(vec![None, Some("Pending"), Some("Running"), Some("Completed"), Some("Failed")]);
        let dedup = prop::option::of((0u32..4, 0u32..8, 1u64..5));
        (0u8..2, 0u8..8, 0u8..5, dedup, phase, any::<bool>()).prop_map(
            |(namespace, name, label, dedup, phase, storm)| Shape { namespace, name, label, dedup, phase, storm },
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
            let mut index = OpenIndex::new();
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
                        index = OpenIndex::new();
                        continue;
                    }
                };
                if let Ok(event) = &event {
                    writer.apply_watcher_event(event);
                }
                index.follow(&event);
                for fingerprint in fingerprints() {
                    prop_assert_eq!(index.open_request(&fingerprint), scan(&store, &fingerprint));
                }
            }
        }
    }

    #[test]
    fn a_relist_replaces_what_the_watch_had_only_when_it_is_complete() {
        let fp = fingerprints()[0];
        let open = Shape { namespace: 0, name: 1, label: 0, dedup: Some((1, 2, 3)), phase: None, storm: false };
        let index = OpenIndex::new();
        index.follow(&Ok(watcher::Event::Apply(build(&open))));
        index.follow(&Ok(watcher::Event::Init));
        assert!(index.open_request(&fp).is_some(), "the old view answers until the re-list is complete");
        index.follow(&Ok(watcher::Event::InitDone));
        assert_eq!(index.open_request(&fp), None, "the re-list no longer had it");
    }
}
