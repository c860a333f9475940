//! The decision path: signals in, outcomes out.
//!
//! One batch of signals goes through these steps, in this order (DESIGN.md §9),
//! each in a file of its own:
//!
//! 1. identity: a signal about a pod is attributed to its workload
//!    ([`crate::workload`]), so that every fingerprint below names the workload;
//! 2. [`admission`]: the batch is charged to its source's rate limit and the state
//!    store is asked about every signal still unanswered, in one round trip (one
//!    for Redis);
//! 3. each verdict is acted on: [`storms`] (alerts folded into an aggregated
//!    request), dedup (a duplicate or a resolution is counted on its request by the
//!    [`status_writer`], which writes each request's status at most once per
//!    interval), [`requests`] (a new incident's request is created before the
//!    caller is answered), and [`recovery`] where the store and the sink disagree
//!    (the store forgot an incident or a storm window the sink still holds open, or
//!    the sink finished a request the store still counts on).
//!
//! # Where a new rule goes
//!
//! A rule is a file in this folder with an `impl Pipeline` block, and one line in
//! the flow of [`Pipeline::process`]:
//!
//! - a rule that holds a signal back before it is counted (heartbeats, scope,
//!   silences, inhibition) answers it with [`Batch::hold`] at the marked place
//!   *before admission*: the state store never sees a held signal, so it neither
//!   counts it nor lets it feed a storm. Such a step only decides: the batch may
//!   still be refused by the rate limit, and a refused batch must leave no trace
//!   (its sender retries it). What the rule records for what it held (a count on a
//!   silence's status, an audit event) it records at the second marked place, after
//!   admission;
//! - a rule about whether a new incident gets a request at all (back-off after
//!   `Failed`, a latch: [`backoff`]) is asked where [`recovery`] would open one;
//! - its configuration is a section of its own, read by the rule's file, and its
//!   state, if it needs memory, is in the state store (an accelerator) and the
//!   sink (the authority), never only in this process.
//!
//! A 2xx answer is only ever given for a signal whose state write succeeded, and a
//! created request only after the sink confirmed it. This module never answers a
//! signal it has not recorded (counted in the store, on a request, or held and
//! counted by the rule that held it).

pub mod acknowledge;
pub mod admission;
pub mod backoff;
pub mod classify;
pub mod flap;
#[cfg(test)]
mod flap_tests;
pub mod heartbeat;
pub mod held;
pub mod identity;
pub mod inhibit;
#[cfg(test)]
pub(crate) mod lifecycle_tests;
pub mod placement;
pub mod recovery;
pub mod requests;
pub mod scope;
pub mod silences;
pub mod status_writer;
pub mod storms;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::clock::Clock;
use crate::remediation::StatusUpdate;
use crate::signal::{Fingerprint, Signal};
use crate::sink::{RequestRef, Sink, SinkError};
use crate::state::{Decision, Entry, Folded, Observation, OpenWindow, RateLimit, StateError, StateStore, Verdict};
use crate::state::{DedupConfig, StormConfig};
use crate::telemetry::trace::TraceConfig;
use crate::telemetry::{trace, Metrics};
use crate::workload::{self, Owners};
use admission::Asked;
use backoff::LifecycleConfig;
use classify::{Classifier, ClassifyConfig, NamespaceLabels};
use heartbeat::{HeartbeatConfig, Heartbeats};
use identity::{IdentityConfig, LocalOwners};
pub use status_writer::StatusWriterConfig;
use status_writer::{Incident, StatusWriter};
use storms::Storms;

pub use admission::RateLimitConfig;
pub use heartbeat::Sender;
pub use placement::PlacementConfig;

/// What happened to one signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub fingerprint: Fingerprint,
    pub status: OutcomeStatus,
    /// The request the signal was counted in; `None` for a resolution of an
    /// incident tidegate does not know, and for a signal out of scope. For an
    /// inhibited signal, the source's request.
    pub request: Option<RequestRef>,
    pub count: u32,
    /// For a signal out of scope, what would bring it in scope.
    pub hint: Option<String>,
    /// The silence that kept the signal from opening a request.
    pub silence: Option<crate::silence::SilenceRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeStatus {
    Created,
    Duplicate,
    Resolved,
    /// A heartbeat ([`heartbeat`]): its sender's last-seen time was updated, and
    /// nothing else happened.
    Heartbeat,
    /// Held back: the incident's last request failed and its back-off lasts until
    /// `until_s`. Counted on that request.
    BackingOff {
        until_s: u32,
    },
    /// Held back: the incident's last request waits for a person
    /// (`ManualReviewRequired`). Counted on that request.
    Held,
    /// Folded into a storm's aggregated request; `opened` when this alert opened
    /// the window and so created that request.
    Aggregated {
        opened: bool,
    },
    /// Outside `scope`: nothing was created or counted in the state store.
    OutOfScope,
    /// Held back by an inhibit rule: counted on the source's request.
    Inhibited,
    /// A silence kept it from opening a request (see [`silences`]).
    Silenced,
    /// An acknowledgement ([`acknowledge`]): `recorded` on its incident's open
    /// request, or there was none. Counts nothing.
    Acknowledged {
        recorded: bool,
    },
}

impl OutcomeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeStatus::Created => "created",
            OutcomeStatus::Duplicate => "duplicate",
            OutcomeStatus::Resolved => "resolved",
            OutcomeStatus::Heartbeat => "heartbeat",
            OutcomeStatus::BackingOff { .. } => "backing_off",
            OutcomeStatus::Held => "held",
            OutcomeStatus::Aggregated { .. } => "aggregated",
            OutcomeStatus::OutOfScope => "out_of_scope",
            OutcomeStatus::Inhibited => "inhibited",
            OutcomeStatus::Silenced => "silenced",
            OutcomeStatus::Acknowledged { recorded: true } => "acknowledged",
            OutcomeStatus::Acknowledged { recorded: false } => "acknowledged_unknown",
        }
    }

    /// Whether a request was created for this signal.
    pub fn created(self) -> bool {
        matches!(self, OutcomeStatus::Created | OutcomeStatus::Aggregated { opened: true })
    }
}

/// What became of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Processed {
    /// Its source is over its rate limit; nothing was recorded.
    Limited { retry_after_ms: u64 },
    /// One outcome per signal, in order.
    Decided(Vec<Outcome>),
}

/// Why a batch could not be decided. Both mean "try again": answered 503.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

pub struct Pipeline {
    state: Arc<dyn StateStore>,
    sink: Arc<dyn Sink>,
    status_writer: StatusWriter,
    classifier: Classifier,
    heartbeats: Heartbeats,
    identity: IdentityConfig,
    lifecycle: LifecycleConfig,
    flap: flap::FlapConfig,
    /// Requests this process has audited holding an incident back: one event per
    /// incident, not per alert. Bounded: cleared when full.
    held_audited: Mutex<HashSet<RequestRef>>,
    storms: Storms,
    /// The dedup window, in seconds: an open request whose incident was last seen
    /// longer ago than this is history, not an incident to count on.
    window_s: u32,
    placement: PlacementConfig,
    /// Per-source rate limit; `None` when disabled.
    rate_limit: Option<RateLimit>,
    owners: Option<Arc<dyn Owners>>,
    /// Scope and inhibition: signals held back before the state store counts them.
    held: held::HoldBack,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Whether spans are recorded, so that created requests name their trace.
    traced: bool,
    /// The silences honoured, if any.
    silences: Option<crate::silence::status::SilenceKeeper>,
    /// Requests marked with the silence active on their incidents.
    silence_marks: Arc<silences::Marks>,
}

/// What a pipeline decides with, besides its configuration.
pub struct Parts {
    pub state: Arc<dyn StateStore>,
    pub sink: Arc<dyn Sink>,
    /// Who owns a pod, for incident identity; `None` keeps every signal's own target.
    pub owners: Option<Arc<dyn Owners>>,
    /// Namespace labels, for environment classification, where a cluster has them.
    pub namespace_labels: Option<Arc<dyn NamespaceLabels>>,
    /// `tidegate.dev/remediate` labels, for scope, where a cluster has them.
    pub remediate_labels: Option<Arc<dyn scope::RemediateLabels>>,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
}

/// What the pipeline reads: the sections of the rules it applies.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub classify: ClassifyConfig,
    pub dedup: DedupConfig,
    pub status_writer: StatusWriterConfig,
    pub storm: StormConfig,
    pub placement: PlacementConfig,
    pub rate_limit: RateLimitConfig,
    pub trace: TraceConfig,
    pub heartbeat: HeartbeatConfig,
    pub identity: IdentityConfig,
    pub lifecycle: LifecycleConfig,
    pub flap: flap::FlapConfig,
    pub scope: scope::ScopeConfig,
    pub inhibit_rules: Vec<inhibit::InhibitRuleConfig>,
}

/// One batch on its way through the flow: its signals, and the outcome of each one
/// a step has answered so far.
pub struct Batch<'s, 'a> {
    signals: &'s [Signal<'a>],
    outcomes: Vec<Option<Outcome>>,
}

impl<'s, 'a> Batch<'s, 'a> {
    fn new(signals: &'s [Signal<'a>]) -> Self {
        Batch { signals, outcomes: vec![None; signals.len()] }
    }

    /// The signals no step has answered yet, with their places in the batch.
    pub fn unanswered(&self) -> impl Iterator<Item = (usize, &'s Signal<'a>)> + '_ {
        let signals = self.signals;
        self.outcomes.iter().enumerate().filter(|(_, o)| o.is_none()).map(move |(i, _)| (i, &signals[i]))
    }

    /// Answers the `i`th signal before the state store sees it: it is held back.
    pub fn hold(&mut self, i: usize, outcome: Outcome) {
        self.outcomes[i] = Some(outcome);
    }

    /// One outcome per signal, in order, once every signal is answered.
    fn into_outcomes(self) -> Vec<Outcome> {
        debug_assert!(self.outcomes.iter().all(Option::is_some), "every signal is answered");
        self.outcomes.into_iter().flatten().collect()
    }
}

impl Pipeline {
    /// A pipeline deciding as `config` says, with the parts built before it.
    pub fn build(config: &Settings, parts: Parts) -> Self {
        let Parts { state, sink, owners, namespace_labels, remediate_labels, clock, metrics } = parts;
        let held = held::HoldBack::build(config, remediate_labels);
        let mut classifier = Classifier::new(&config.classify);
        if let Some(labels) = namespace_labels {
            classifier = classifier.with_namespace_labels(labels);
        }
        Pipeline {
            state,
            status_writer: StatusWriter::new(sink.clone(), &config.status_writer, metrics.clone()),
            sink,
            classifier,
            heartbeats: Heartbeats::build(&config.heartbeat, clock.clone(), metrics.clone()),
            identity: config.identity.clone(),
            lifecycle: config.lifecycle,
            flap: config.flap,
            held_audited: Mutex::default(),
            storms: Storms::new(config.storm),
            window_s: config.dedup.window.as_secs() as u32,
            placement: config.placement.clone(),
            rate_limit: config.rate_limit.limit(),
            owners: owners
                .map(|inner| Arc::new(LocalOwners { inner, identity: config.identity.clone() }) as Arc<dyn Owners>),
            held,
            clock,
            metrics,
            traced: config.trace.enabled(),
            silences: None,
            silence_marks: Arc::default(),
        }
    }

    /// Whether state and sink can take writes, for `/readyz`.
    pub async fn ready(&self) -> Result<(), PipelineError> {
        self.state.ping().await?;
        self.sink.ready().await?;
        Ok(())
    }

    /// Entries the state store holds, for the `tidegate_state_entries` gauge.
    pub async fn entries(&self) -> Result<u64, PipelineError> {
        Ok(self.state.entries().await?)
    }

    /// Teaches the state store the inhibit rules' sources the sink holds open (see
    /// [`held::HoldBack::recover`]); how many holds it taught.
    pub async fn recover_holds(&self) -> Result<usize, PipelineError> {
        self.held.recover(&*self.sink, &*self.state, self.clock.now_s()).await
    }

    /// Writes every pending status now, waiting at most `deadline`: the last step of
    /// a shutdown.
    pub async fn drain(&self, deadline: std::time::Duration) {
        // Silences' statuses too: they go through the same writer, and a state that
        // changed since the keeper's last tick is handed on first.
        if let Some(keeper) = &self.silences {
            silences::hand_on_states(keeper, &self.status_writer);
        }
        self.status_writer.shutdown(deadline).await;
    }

    /// Decides a batch of signals from `sender`, in order, after charging the
    /// request to the sender's rate limit (in the same round trip, where the store
    /// can). The sender's name (its address where authentication is off) is the
    /// rate-limit key, and the submitter of the requests created.
    pub async fn process(&self, signals: &[Signal<'_>], sender: &Sender<'_>) -> Result<Processed, PipelineError> {
        let source = sender.name;
        self.heartbeats.heard_from(sender);
        let placed = self.identity.place(signals, sender);
        let signals = self.attribute(&placed).await;
        let mut batch = Batch::new(signals.as_ref());
        let now = self.clock.now_s();
        // Rules that hold a signal back before it is counted go here, one line each,
        // in DESIGN.md §9's order; they decide, and write nothing yet.
        let beats = self.hold_heartbeats(&mut batch);
        if !beats.is_empty() && batch.unanswered().next().is_none() {
            // Only heartbeats: nothing to ask the store, but the batch is charged.
            if let crate::state::Admission::Limited { retry_after_ms } = self.admit(source).await? {
                return Ok(Processed::Limited { retry_after_ms });
            }
            self.heard_heartbeats(&batch, &beats, sender);
            return Ok(Processed::Decided(batch.into_outcomes()));
        }
        let mut held = self.held.scope(&mut batch);
        let silenced = self.silence(&mut batch);
        held.extend(
            self.held.inhibit(&mut batch, &*self.state, &*self.sink, now).await.inspect_err(|e| self.failed(e))?,
        );
        let (asked, verdicts) = match self.admit_and_observe(&batch, source).await? {
            (_, Decision::Limited { retry_after_ms }) => return Ok(Processed::Limited { retry_after_ms }),
            (asked, Decision::Decided(verdicts)) => (asked, verdicts),
        };
        // Rules that record what they held (now that the batch is admitted) go here.
        self.heard_heartbeats(&batch, &beats, sender);
        self.record_silenced(silenced);
        self.held.record(&batch, &held, &self.status_writer, &self.metrics, source, now);
        self.act_on(&mut batch, &asked, verdicts, source).await?;
        let outcomes = batch.into_outcomes();
        // Sources of inhibit rules hold their targets back while their requests are
        // open: said again on every sighting, in one write for the batch. Every
        // outcome stands without it: a hold that fails lets targets open requests
        // of their own, as they would without the rule.
        if let Err(e) = self.held.hold(signals.as_ref(), &outcomes, &*self.state, now).await {
            self.failed(&e);
            tracing::warn!(error = %e, "could not record inhibit rules' sources; their targets are not held back");
        }
        Ok(Processed::Decided(outcomes))
    }

    /// Identity: `signals`, each about a pod attributed to its workload, where owners
    /// are known (in the local cluster only: [`identity`]).
    async fn attribute<'s, 'a>(&self, signals: &'s [Signal<'a>]) -> Cow<'s, [Signal<'a>]> {
        match &self.owners {
            Some(owners) => workload::attribute(owners.as_ref(), signals).await,
            None => Cow::Borrowed(signals),
        }
    }

    /// Heartbeats: answers each one in `batch`, to go no further; their places.
    fn hold_heartbeats(&self, batch: &mut Batch<'_, '_>) -> Vec<usize> {
        let beats: Vec<usize> =
            batch.unanswered().filter(|(_, s)| self.heartbeats.is_heartbeat(s)).map(|(i, _)| i).collect();
        for &i in &beats {
            let fingerprint = batch.signals[i].fingerprint;
            batch.hold(
                i,
                Outcome {
                    fingerprint,
                    status: OutcomeStatus::Heartbeat,
                    request: None,
                    count: 0,
                    hint: None,
                    silence: None,
                },
            );
        }
        beats
    }

    /// Records the heartbeats at `beats` of an admitted batch.
    fn heard_heartbeats(&self, batch: &Batch<'_, '_>, beats: &[usize], sender: &Sender<'_>) {
        for &i in beats {
            self.metrics.signal(batch.signals[i].signal_type.as_str(), OutcomeStatus::Heartbeat.as_str());
        }
        if !beats.is_empty() {
            self.heartbeats.beat(sender);
        }
    }

    /// Acts on the store's verdict for each signal it was asked about. Most
    /// verdicts (repeats, resolutions, alerts folded into an open storm) need no
    /// I/O: those are answered at once, and futures are made only for the rest.
    async fn act_on(
        &self,
        batch: &mut Batch<'_, '_>,
        asked: &Asked,
        verdicts: Vec<Verdict>,
        source: &str,
    ) -> Result<(), PipelineError> {
        // Windows the store opened in this batch that go on in an aggregated request
        // the sink still holds: (scope, the store's window id) → that request's window.
        let mut rejoined = HashMap::new();
        let mut slow = Vec::new();
        let signals = batch.signals;
        for ((&i, observation), verdict) in asked.places.iter().zip(&asked.observations).zip(verdicts) {
            let signal = &signals[i];
            // A re-fire is decided as dedup decides it, then marks its request.
            let (verdict, transitions) = verdict.flaps();
            match self.act_now(signal, observation, verdict, &mut rejoined, source) {
                Ok(outcome) => {
                    if transitions > 0 {
                        self.flapped(signal, &outcome, transitions);
                    }
                    batch.outcomes[i] = Some(outcome)
                }
                Err(work) => slow.push(async move {
                    let result = self.act(signal, observation, work, source).await;
                    if let (Ok(outcome), true) = (&result, transitions > 0) {
                        self.flapped(signal, outcome, transitions);
                    }
                    (i, result)
                }),
            }
        }
        let mut first_error = None;
        for (i, result) in futures::future::join_all(slow).await {
            match result {
                Ok(outcome) => batch.outcomes[i] = Some(outcome),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Acts on a verdict that needs no I/O, or says what [`Self::act`] must do.
    fn act_now(
        &self,
        signal: &Signal<'_>,
        asked: &Observation,
        verdict: Verdict,
        rejoined: &mut HashMap<([u8; 16], u32), OpenWindow>,
        by: &str,
    ) -> Result<Outcome, Slow> {
        match verdict {
            Verdict::Folded(folded) => self.fold_now(signal, asked, folded, rejoined),
            Verdict::New(entry) => Err(Slow::New(entry)),
            Verdict::Duplicate(entry) => self.duplicate_now(signal, entry, by),
            Verdict::ResolvedOpen(entry) => {
                let at = self.locate(signal, &entry);
                let resolved = StatusUpdate { resolved_at_s: Some(self.clock.now_s()), ..uncounted(&entry) };
                self.status_writer.record(incident(signal, &entry), &at, resolved);
                Ok(self.outcome(signal, OutcomeStatus::Resolved, Some(at), entry.count))
            }
            Verdict::ResolvedUnknown => Ok(self.outcome(signal, OutcomeStatus::Resolved, None, 0)),
            Verdict::AcknowledgedOpen(entry) => Ok(self.acknowledge_now(signal, Some(entry))),
            Verdict::AcknowledgedUnknown => Ok(self.acknowledge_now(signal, None)),
            // Decided as dedup decides it; `act_on` marks the request.
            refired @ Verdict::Refired { .. } => self.act_now(signal, asked, refired.flaps().0, rejoined, by),
        }
    }

    /// Does what [`Self::act_now`] could not: create a request, or repair the state
    /// store.
    /// `by` is who submitted the signal, for the requests it creates.
    async fn act(
        &self,
        signal: &Signal<'_>,
        asked: &Observation,
        slow: Slow,
        by: &str,
    ) -> Result<Outcome, PipelineError> {
        match slow {
            Slow::OpenStorm(scope, folded) => self.fold(signal, &scope, folded, by).await,
            Slow::Rejoin(scope, window) => self.rejoin(signal, asked, scope, window, self.clock.now_s()).await,
            Slow::New(entry) => self.open_new(signal, asked, entry, by).await,
            Slow::Ensure(entry) => self.ensure(signal, asked, entry, by).await,
            Slow::Reopen => self.reopen(signal, asked, by).await,
        }
    }

    /// What happened to `signal`, counted in the signals metric.
    fn outcome(&self, signal: &Signal<'_>, status: OutcomeStatus, request: Option<RequestRef>, count: u32) -> Outcome {
        self.metrics.signal(signal.signal_type.as_str(), status.as_str());
        Outcome { fingerprint: signal.fingerprint, status, request, count, hint: None, silence: None }
    }

    /// Counts a state store failure by cause.
    fn failed(&self, e: &StateError) {
        self.metrics.state_error(e.label());
    }
}

/// What a verdict needs that takes I/O.
enum Slow {
    /// A new incident: its request is created (or an open one adopted).
    New(Entry),
    /// An alert of a storm whose window the store lost and the sink still holds.
    Rejoin([u8; 16], OpenWindow),
    /// A duplicate whose request is finished or gone: a new incident starts.
    Reopen,
    /// A duplicate whose request the sink has not seen and no one reported deleted:
    /// not created yet, or too new for the sink's view. It is created, idempotently.
    Ensure(Entry),
    /// An alert that opened a storm window: the aggregated request is created.
    OpenStorm([u8; 16], Folded),
}

/// The span of one state-store round trip, `op` naming the call.
fn decide_span(op: &'static str) -> tracing::Span {
    tracing::info_span!(target: trace::TARGET, "decide", state.op = op)
}

/// The incident a signal's entry stands for.
fn incident(signal: &Signal<'_>, entry: &Entry) -> Incident {
    Incident::Signal(signal.fingerprint, entry.first_seen_s)
}

/// An update of `entry`'s times that counts no repeat.
fn uncounted(entry: &Entry) -> StatusUpdate {
    StatusUpdate::seen(entry.first_seen_s, entry.last_seen_s)
}

#[cfg(test)]
mod tests;
