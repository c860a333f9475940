//! Holding signals back before the state store decides them: scope, then
//! inhibition (DESIGN.md §9, steps 3 and 5; `docs/safety.md` has the whole order).
//!
//! [`HoldBack::scope`] and [`HoldBack::inhibit`] run after a batch is attributed to
//! its workloads and before the store observes it, and answer the signals they
//! hold in the [`Batch`]: a held-back signal creates no dedup entry and does not
//! count toward storms. They only decide. Once the batch is admitted (a
//! rate-limited batch records nothing, held-back signals included),
//! [`HoldBack::record`] counts each held-back signal in
//! `tidegate_signals_received_total` under its outcome, an inhibited one also on
//! its source's request (`status.inhibited`) through the status writer, and audits
//! its incident's first. After the batch, [`HoldBack::hold`] records the inhibit
//! rules' sources that have open requests and releases those that resolved, and
//! [`HoldBack::recover`] teaches the store those the sink holds open after the
//! store lost them.
//!
//! Nothing here ever refuses a signal: every held-back signal is answered 2xx.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::inhibit::{Inhibition, Targeted};
use super::scope::{OutOfScope, RemediateLabels, Scope};
use super::status_writer::{Incident, StatusWriter};
use super::{Batch, Outcome, OutcomeStatus, PipelineError, Settings};
use crate::audit;
use crate::remediation::{self, InhibitedUpdate, RemediationRequest, StatusUpdate};
use crate::signal::{Fingerprint, Labels, Signal, SignalStatus};
use crate::sink::{Lookup, RequestRef, Sink};
use crate::state::{InhibitKey, Inhibitor, StateError, StateStore};
use crate::telemetry::Metrics;

/// Incidents remembered as audited; past it those older than the window go, then all
/// (an incident is then audited once more: never less than once).
const AUDITED_REMEMBERED: usize = 65_536;

/// Why a signal opens no request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    OutOfScope(OutOfScope),
    /// Held back by an inhibit rule whose source holds this request open.
    Inhibited(Inhibitor),
}

impl Held {
    fn reason(&self) -> &'static str {
        match self {
            Held::OutOfScope(_) => OutcomeStatus::OutOfScope.as_str(),
            Held::Inhibited(_) => OutcomeStatus::Inhibited.as_str(),
        }
    }
}

/// The scope and inhibition steps.
pub struct HoldBack {
    scope: Scope,
    inhibition: Inhibition,
    /// The dedup window, in seconds: how long a source holds its targets after its
    /// last sighting, and how long an incident stays audited.
    window_s: u32,
    /// Most resources listed under a request's `status.inhibited`.
    cap: usize,
    /// (fingerprint, reason) → when first audited.
    audited: Mutex<HashMap<(Fingerprint, &'static str), u32>>,
}

impl HoldBack {
    /// The steps `config` sets up; `labels` are a cluster's label caches, if any.
    pub fn build(config: &Settings, labels: Option<Arc<dyn RemediateLabels>>) -> Self {
        HoldBack {
            scope: Scope::new(&config.scope, labels).local_to(&config.identity),
            // `Config::validate` compiled these rules already.
            inhibition: Inhibition::new(&config.inhibit_rules).unwrap_or_default(),
            window_s: config.dedup.window.as_secs() as u32,
            cap: config.storm.affected_resources_cap,
            audited: Mutex::default(),
        }
    }

    /// Scope: holds back every unanswered signal out of scope.
    pub fn scope(&self, batch: &mut Batch<'_, '_>) -> Vec<(usize, Held)> {
        if !self.scope.active() {
            return Vec::new();
        }
        let held: Vec<(usize, Held)> =
            batch.unanswered().filter_map(|(i, s)| Some((i, Held::OutOfScope(self.scope.decide(s)?)))).collect();
        self.answer(batch, &held);
        held
    }

    /// Inhibition: holds back every unanswered firing signal whose inhibit key an
    /// open source holds. Only when a signal matches an inhibit rule's target side
    /// is the store asked: first which of the rules met have a source held at all
    /// (their markers: one small read, and in the usual state, no source anywhere,
    /// the only one), then the keys of the signals' rules that do.
    pub async fn inhibit(
        &self,
        batch: &mut Batch<'_, '_>,
        state: &dyn StateStore,
        sink: &dyn Sink,
        now: u32,
    ) -> Result<Vec<(usize, Held)>, StateError> {
        if self.inhibition.is_empty() {
            return Ok(Vec::new());
        }
        let mut targeted: Vec<Targeted> = Vec::new();
        let mut asking = Vec::new();
        for (i, signal) in batch.unanswered().filter(|(_, s)| s.status == SignalStatus::Firing) {
            let start = targeted.len();
            self.inhibition.targeted(signal, &mut targeted);
            if targeted.len() > start {
                asking.push((i, start..targeted.len()));
            }
        }
        if targeted.is_empty() {
            return Ok(Vec::new());
        }
        let mut rules: Vec<usize> = targeted.iter().map(Targeted::rule).collect();
        rules.sort_unstable();
        rules.dedup();
        let markers: Vec<InhibitKey> = rules.iter().map(|&r| self.inhibition.marker(r)).collect();
        let marked = state.inhibitors(&markers, now).await?;
        let live: Vec<usize> = rules.iter().zip(&marked).filter(|(_, m)| m.is_some()).map(|(&r, _)| r).collect();
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let signals = batch.signals;
        let mut keys: Vec<InhibitKey> = Vec::new();
        let mut of_live = Vec::new();
        let mut ranges = Vec::new();
        for (i, range) in asking {
            of_live.clear();
            of_live.extend(targeted[range].iter().filter(|t| live.binary_search(&t.rule()).is_ok()));
            let start = keys.len();
            self.inhibition.target_keys_of(&signals[i], &of_live, &mut keys);
            if keys.len() > start {
                ranges.push((i, start..keys.len()));
            }
        }
        // The alerts of one notification mostly share their keys (one node's pods).
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        let found = state.inhibitors(&unique, now).await?;
        let holder = |key: &InhibitKey| unique.binary_search(key).ok().and_then(|i| found[i].as_ref());
        let held: Vec<(usize, Held)> = ranges
            .into_iter()
            .filter_map(|(i, range)| {
                let signal = &signals[i];
                let source = keys[range]
                    .iter()
                    .filter_map(holder)
                    .find(|source| source.source != signal.fingerprint && open(sink, source))?;
                Some((i, Held::Inhibited(source.clone())))
            })
            .collect();
        self.answer(batch, &held);
        Ok(held)
    }

    /// Answers the held signals in `batch`; nothing is counted yet.
    fn answer(&self, batch: &mut Batch<'_, '_>, held: &[(usize, Held)]) {
        for (i, why) in held {
            let fingerprint = batch.signals[*i].fingerprint;
            let outcome = match why {
                Held::OutOfScope(out) => Outcome {
                    fingerprint,
                    status: OutcomeStatus::OutOfScope,
                    request: None,
                    count: 0,
                    hint: Some(out.hint.clone()),
                    silence: None,
                },
                Held::Inhibited(source) => Outcome {
                    fingerprint,
                    status: OutcomeStatus::Inhibited,
                    request: Some(RequestRef { namespace: source.namespace.clone(), name: source.name.clone() }),
                    count: 0,
                    hint: None,
                    silence: None,
                },
            };
            batch.hold(*i, outcome);
        }
    }

    /// Records the signals of an admitted batch held back from `by`: each counted
    /// in the signals metric, an inhibited one also on its source's request, and
    /// each incident's first audited.
    pub fn record(
        &self,
        batch: &Batch<'_, '_>,
        held: &[(usize, Held)],
        status_writer: &StatusWriter,
        metrics: &Metrics,
        by: &str,
        now: u32,
    ) {
        for (i, why) in held {
            let signal = &batch.signals[*i];
            let reason = why.reason();
            metrics.signal(signal.signal_type.as_str(), reason);
            let detail = match why {
                Held::OutOfScope(out) => out.hint.clone(),
                Held::Inhibited(source) => {
                    let at = RequestRef { namespace: source.namespace.clone(), name: source.name.clone() };
                    let held = InhibitedUpdate { count: 0, resources: vec![signal.target.clone()], cap: self.cap };
                    let update = StatusUpdate {
                        inhibited: Some(held),
                        ..StatusUpdate::seen(source.first_seen_s, source.first_seen_s)
                    };
                    status_writer.inhibited(Incident::Signal(source.source, source.first_seen_s), &at, update);
                    format!("{}/{}", at.namespace, at.name)
                }
            };
            if self.first_audit(signal.fingerprint, reason, now) {
                let fingerprint = signal.fingerprint.to_hex();
                audit::signal_held_back(by, &signal.namespace, &signal.name, &fingerprint, reason, &detail);
            }
        }
    }

    /// Records the sources among `signals` that opened or repeated on a request of
    /// their own as holding their rules' targets back for the dedup window (with
    /// their rules' markers), and ends the holds of those that resolved: a
    /// resolved source explains nothing any more, though its incident stays open
    /// a window for a repeat. At most one release and one write for the batch,
    /// none when no signal is a source.
    pub async fn hold(
        &self,
        signals: &[Signal<'_>],
        outcomes: &[Outcome],
        state: &dyn StateStore,
        now: u32,
    ) -> Result<(), StateError> {
        if self.inhibition.is_empty() {
            return Ok(());
        }
        let mut holds = Vec::new();
        let mut releases = Vec::new();
        let mut keys = Vec::new();
        for (signal, outcome) in signals.iter().zip(outcomes) {
            let Some(at) = outcome.request.as_ref() else { continue };
            let resolved = match (signal.status, outcome.status) {
                (SignalStatus::Firing, OutcomeStatus::Created | OutcomeStatus::Duplicate) => false,
                (SignalStatus::Resolved, OutcomeStatus::Resolved) => true,
                _ => continue,
            };
            let Some(first_seen_s) = remediation::request_epoch(&at.name) else { continue };
            keys.clear();
            self.inhibition.source_keys(signal, &mut keys);
            let inhibitor = Inhibitor {
                source: signal.fingerprint,
                first_seen_s,
                namespace: at.namespace.clone(),
                name: at.name.clone(),
            };
            for &(rule, key) in &keys {
                if resolved {
                    // Its rules' markers stay: another source may hold them, and a
                    // marker only spares targets a lookup.
                    releases.push((key, inhibitor.clone()));
                } else {
                    holds.push((key, inhibitor.clone()));
                    holds.push((self.inhibition.marker(rule), inhibitor.clone()));
                }
            }
        }
        // Releases first: a source firing again in the same batch holds again.
        if !releases.is_empty() {
            state.release_inhibitors(&releases).await?;
        }
        if holds.is_empty() {
            return Ok(());
        }
        state.hold_inhibitors(&holds, now, now.saturating_add(self.window_s)).await
    }

    /// Teaches the store the holds of every source whose request `sink` holds
    /// open, last seen within the dedup window and not resolved since: after a
    /// restart, or a Redis that lost its keys, the sink is the authority on open
    /// incidents, as it is for dedup. Each hold ends a window after its source's
    /// last sighting, as if the store had never lost it; the rules' markers a
    /// window from now, after every hold they stand for. Returns how many holds
    /// were taught, markers not counted.
    pub async fn recover(&self, sink: &dyn Sink, state: &dyn StateStore, now: u32) -> Result<usize, PipelineError> {
        if self.inhibition.is_empty() {
            return Ok(0);
        }
        // Holds by the second they end.
        let mut holds: std::collections::BTreeMap<u32, Vec<(InhibitKey, Inhibitor)>> = Default::default();
        let mut markers = Vec::new();
        let mut keys = Vec::new();
        for rr in sink.open_requests().await? {
            let Some(source) = source_of(&rr) else { continue };
            let status = rr.status.as_ref();
            let dedup = status.and_then(|s| s.deduplication.as_ref());
            let last_seen_s = dedup.map_or(source.first_seen_s, |d| d.last_seen_at.0.as_second() as u32);
            let until = last_seen_s.saturating_add(self.window_s);
            // Resolved at or after its last sighting: it let its targets go.
            let resolved = status.and_then(|s| s.signal_resolved_at.as_ref());
            if until <= now || resolved.is_some_and(|at| at.0.as_second() >= i64::from(last_seen_s)) {
                continue;
            }
            keys.clear();
            self.inhibition.source_keys(&source.signal, &mut keys);
            let inhibitor = Inhibitor {
                source: source.signal.fingerprint,
                first_seen_s: source.first_seen_s,
                namespace: source.at.namespace.clone(),
                name: source.at.name.clone(),
            };
            holds.entry(until).or_default().extend(keys.iter().map(|(_, k)| (*k, inhibitor.clone())));
            markers.extend(keys.iter().map(|(rule, _)| (self.inhibition.marker(*rule), inhibitor.clone())));
        }
        let mut taught = 0;
        for (until, holds) in holds {
            state.hold_inhibitors(&holds, now, until).await?;
            taught += holds.len();
        }
        if !markers.is_empty() {
            state.hold_inhibitors(&markers, now, now.saturating_add(self.window_s)).await?;
        }
        Ok(taught)
    }

    /// Whether this is the first time this replica holds `fingerprint`'s incident
    /// back for `reason`: not seen held back for a dedup window.
    fn first_audit(&self, fingerprint: Fingerprint, reason: &'static str, now: u32) -> bool {
        let mut audited = self.audited.lock().unwrap_or_else(|p| p.into_inner());
        let window_s = self.window_s;
        if audited.len() >= AUDITED_REMEMBERED {
            audited.retain(|_, at| now.saturating_sub(*at) < window_s);
            if audited.len() >= AUDITED_REMEMBERED {
                audited.clear();
            }
        }
        // Sliding: an incident seen again within the window is the same incident.
        match audited.insert((fingerprint, reason), now) {
            Some(at) => now.saturating_sub(at) >= window_s,
            None => true,
        }
    }
}

/// An open request, as the signal that opened it: what inhibit rules match.
struct Source {
    signal: Signal<'static>,
    at: RequestRef,
    first_seen_s: u32,
}

/// The signal that opened `rr`, as far as its spec keeps it (label values are cut
/// to fit, as on the request); `None` for what this gateway did not write.
fn source_of(rr: &RemediationRequest) -> Option<Source> {
    let at = RequestRef { namespace: rr.metadata.namespace.clone()?, name: rr.metadata.name.clone()? };
    let first_seen_s = remediation::request_epoch(&at.name)?;
    let spec = &rr.spec;
    let mut fingerprint = [0u8; 32];
    hex::decode_to_slice(&spec.signal_fingerprint, &mut fingerprint).ok()?;
    let labels: Labels<'static> = spec.signal_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let namespace = labels.get("namespace").unwrap_or(&at.namespace).to_string();
    let signal = Signal {
        name: spec.signal_name.clone().into(),
        severity: spec.severity.clone().into(),
        namespace: namespace.into(),
        target: spec.target_resource.clone(),
        labels,
        annotations: Labels::default(),
        firing_time: None,
        received_time: spec.received_time.0,
        signal_type: spec.signal_type,
        source: spec.signal_source.clone().into(),
        status: SignalStatus::Firing,
        fingerprint: Fingerprint::from_bytes(fingerprint),
    };
    Some(Source { signal, at, first_seen_s })
}

/// Whether the source's request is still open, as far as the sink knows without
/// I/O: a request a controller finished (`Failed` included), or that was deleted,
/// holds nothing back. One waiting for a person (latched) is open: its incident is.
fn open(sink: &dyn Sink, source: &Inhibitor) -> bool {
    let at = RequestRef { namespace: source.namespace.clone(), name: source.name.clone() };
    !matches!(sink.lookup(&at), Lookup::Terminal | Lookup::Failed { .. } | Lookup::Deleted)
}
