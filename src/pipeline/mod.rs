//! The decision path: signals in, outcomes out.
//!
//! For a batch of signals the pipeline asks the state store once (one round trip
//! for Redis), then acts on each verdict: a new incident creates its
//! RemediationRequest before the caller is answered; a duplicate or a resolution is
//! handed to the [`coalesce::Coalescer`], which writes the request's status at most
//! once per interval.
//!
//! In Kubernetes mode a signal about a pod is first attributed to its workload
//! ([`crate::workload`]), so that every fingerprint below names the workload.
//!
//! A 2xx answer is only ever given for a signal whose state write succeeded, and a
//! created request only after the sink confirmed it.

pub mod classify;
pub mod coalesce;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::audit;
use crate::clock::Clock;
use crate::remediation::{self, RemediationRequest, StatusUpdate, StormUpdate, NO_WRITER};
use crate::section::ConfigError;
use crate::signal::{Fingerprint, Signal, SignalStatus};
use crate::sink::{Created, Lookup, RequestRef, Sink, SinkError};
use crate::state::{
    Admission, Charge, Decision, DedupConfig, Entry, Folded, Observation, OpenWindow, RateLimit, StateError,
    StateStore, StormConfig, StormKey, Verdict,
};
use crate::telemetry::trace::{self, TraceConfig};
use crate::telemetry::{ClassLabels, Metrics, StormLabels};
use crate::workload::{self, Owners};
use classify::{Classifier, ClassifyConfig, NamespaceLabels};
use coalesce::{Coalescer, Incident};

/// What happened to one signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub fingerprint: Fingerprint,
    pub status: OutcomeStatus,
    /// The request the signal was counted in; `None` for a resolution of an
    /// incident tidegate does not know.
    pub request: Option<RequestRef>,
    pub count: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeStatus {
    Created,
    Duplicate,
    Resolved,
    /// Folded into a storm's aggregated request; `opened` when this alert opened
    /// the window and so created that request.
    Aggregated {
        opened: bool,
    },
}

impl OutcomeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeStatus::Created => "created",
            OutcomeStatus::Duplicate => "duplicate",
            OutcomeStatus::Resolved => "resolved",
            OutcomeStatus::Aggregated { .. } => "aggregated",
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
    coalescer: Coalescer,
    classifier: Classifier,
    storm: StormConfig,
    /// The dedup window, in seconds: an open request whose incident was last seen
    /// longer ago than this is history, not an incident to count on.
    window_s: u32,
    placement: PlacementConfig,
    /// Per-source rate limit; `None` when disabled.
    rate_limit: Option<RateLimit>,
    owners: Option<Arc<dyn Owners>>,
    /// Storm windows seen by this replica, (scope, opening second) → last alert.
    windows: Mutex<HashMap<([u8; 16], u32), u32>>,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Whether spans are recorded, so that created requests name their trace.
    traced: bool,
}

/// `placement`: which namespace requests go to.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PlacementConfig {
    /// Namespace for requests about cluster-scoped targets (nodes). Unset: they go
    /// to the signal's namespace.
    pub control_namespace: Option<String>,
    /// Put every request in `control_namespace`.
    pub all_in_control_namespace: bool,
}

impl PlacementConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.control_namespace.as_deref().is_some_and(|ns| !crate::ingest::is_dns1123_label(ns)) {
            return Err(ConfigError::invalid("placement.control_namespace", "must be a Kubernetes namespace name"));
        }
        if self.all_in_control_namespace && self.control_namespace.is_none() {
            return Err(ConfigError::invalid(
                "placement.all_in_control_namespace",
                "needs placement.control_namespace",
            ));
        }
        Ok(())
    }
}

/// `rate_limit`: requests per source, decided in the state store, so that replicas
/// sharing Redis share each source's budget.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Whether sources are rate-limited at all.
    pub enabled: bool,
    /// Sustained requests per second per source: far above what one Alertmanager
    /// sends in a storm, so that only abusive sources are refused.
    pub rate: f64,
    /// Requests a source may send back to back above the rate.
    pub burst: u32,
    /// The status of a refusal: `503`, which Alertmanager and Prometheus retry, or
    /// `429`, for senders that honour it; Alertmanager treats a 429 like any 4xx and
    /// drops the notification (docs/delivery.md).
    pub refusal_status: u16,
    /// Proxies whose `X-Forwarded-For` / `X-Real-IP` are believed, as CIDRs. Empty:
    /// the source is the peer address.
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { enabled: true, rate: 1000.0, burst: 5000, refusal_status: 503, trusted_proxies: Vec::new() }
    }
}

impl RateLimitConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason| Err(ConfigError::invalid(key, reason));
        if !(self.rate > 0.0 && self.rate <= 1_000_000.0) {
            return invalid("rate_limit.rate", "must be more than 0 and at most 1000000 requests per second");
        }
        if !matches!(self.refusal_status, 429 | 503) {
            return invalid("rate_limit.refusal_status", "must be 503 (retried by Alertmanager) or 429");
        }
        if self.burst == 0 {
            return invalid("rate_limit.burst", "must be at least 1");
        }
        Ok(())
    }

    /// The limit each source is charged against; `None` when disabled.
    pub fn limit(&self) -> Option<RateLimit> {
        self.enabled.then_some(RateLimit { rate_per_s: self.rate, burst: self.burst })
    }
}

/// What a pipeline decides with, besides its configuration.
pub struct Parts {
    pub state: Arc<dyn StateStore>,
    pub sink: Arc<dyn Sink>,
    /// Who owns a pod, for incident identity; `None` keeps every signal's own target.
    pub owners: Option<Arc<dyn Owners>>,
    /// Namespace labels, for environment classification, where a cluster has them.
    pub namespace_labels: Option<Arc<dyn NamespaceLabels>>,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
}

/// What the pipeline reads: the sections of the rules it applies.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub classify: ClassifyConfig,
    pub dedup: DedupConfig,
    pub storm: StormConfig,
    pub placement: PlacementConfig,
    pub rate_limit: RateLimitConfig,
    pub trace: TraceConfig,
}

impl Pipeline {
    /// A pipeline deciding as `config` says, with the parts built before it.
    pub fn build(config: &Settings, parts: Parts) -> Self {
        let Parts { state, sink, owners, namespace_labels, clock, metrics } = parts;
        let mut classifier = Classifier::new(&config.classify);
        if let Some(labels) = namespace_labels {
            classifier = classifier.with_namespace_labels(labels);
        }
        Pipeline {
            state,
            coalescer: Coalescer::new(sink.clone(), &config.dedup, metrics.clone()),
            sink,
            classifier,
            storm: config.storm,
            window_s: config.dedup.window.as_secs() as u32,
            placement: config.placement.clone(),
            rate_limit: config.rate_limit.limit(),
            owners,
            windows: Mutex::default(),
            clock,
            metrics,
            traced: config.trace.enabled(),
        }
    }

    /// Storm windows this replica has folded alerts into that are still open.
    pub fn open_windows(&self) -> usize {
        let now = self.clock.now_s();
        let rules = &self.storm;
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.retain(|(_, opened), last| {
            now.saturating_sub(*last) < rules.inactivity_s() && now.saturating_sub(*opened) < rules.max_duration_s()
        });
        windows.len()
    }

    /// Charges a request from `source` that will not be decided (it was refused
    /// before its signals were read): a bad request never gets round the limit.
    pub async fn admit(&self, source: &str) -> Result<Admission, PipelineError> {
        let Some(charge) = self.charge(source) else { return Ok(Admission::Allowed) };
        let admitted =
            self.state.admit(charge.source, charge.limit, charge.now_ms).instrument(decide_span("admit")).await;
        Ok(admitted.inspect_err(|e| self.failed(e))?)
    }

    /// What a request from `source` costs it, when sources are rate-limited.
    fn charge<'a>(&self, source: &'a str) -> Option<Charge<'a>> {
        self.rate_limit.map(|limit| Charge { source, limit, now_ms: self.clock.now_ms() })
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

    /// Writes every pending status now, waiting at most `deadline`: the last step of
    /// a shutdown.
    pub async fn drain(&self, deadline: std::time::Duration) {
        self.coalescer.shutdown(deadline).await;
    }

    /// Decides a batch of signals from `source`, in order, after charging the
    /// request to the source's rate limit (in the same round trip, where the store
    /// can). `source` is the authenticated sender (its address where authentication
    /// is off): the rate-limit key, and the submitter of the requests created.
    pub async fn process(&self, signals: &[Signal<'_>], source: &str) -> Result<Processed, PipelineError> {
        let charge = self.charge(source);
        let signals = match &self.owners {
            Some(owners) => workload::attribute(owners.as_ref(), signals).await,
            None => Cow::Borrowed(signals),
        };
        let signals = signals.as_ref();
        let mut scope = None;
        let observations: Vec<Observation> = signals.iter().map(|s| observation(s, &mut scope)).collect();
        let now = self.clock.now_s();
        let decision = match charge {
            Some(charge) => {
                self.state
                    .admit_and_observe(charge, &observations, now)
                    .instrument(decide_span("admit_and_observe"))
                    .await
            }
            None => {
                self.state.observe(&observations, now).instrument(decide_span("observe")).await.map(Decision::Decided)
            }
        };
        let verdicts = match decision.inspect_err(|e| self.failed(e))? {
            Decision::Limited { retry_after_ms } => return Ok(Processed::Limited { retry_after_ms }),
            Decision::Decided(verdicts) => verdicts,
        };
        // Most verdicts (repeats, resolutions, alerts folded into an open storm) need
        // no I/O: answer those at once, and only make futures for the rest.
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(signals.len());
        // Windows the store opened in this batch that go on in an aggregated request
        // the sink still holds: (scope, the store's window id) → that request's window.
        let mut rejoined = HashMap::new();
        let mut slow = Vec::new();
        for (i, ((signal, asked), verdict)) in signals.iter().zip(&observations).zip(verdicts).enumerate() {
            match self.act_now(signal, asked, verdict, &mut rejoined) {
                Ok(outcome) => outcomes.push(Some(outcome)),
                Err(work) => {
                    outcomes.push(None);
                    slow.push(async move { (i, self.act(signal, asked, work, source).await) });
                }
            }
        }
        let mut first_error = None;
        for (i, result) in futures::future::join_all(slow).await {
            match result {
                Ok(outcome) => outcomes[i] = Some(outcome),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(Processed::Decided(outcomes.into_iter().flatten().collect())),
        }
    }

    /// Acts on a verdict that needs no I/O, or says what [`Self::act`] must do.
    fn act_now(
        &self,
        signal: &Signal<'_>,
        asked: &Observation,
        verdict: Verdict,
        rejoined: &mut HashMap<([u8; 16], u32), OpenWindow>,
    ) -> Result<Outcome, Slow> {
        match verdict {
            Verdict::Folded(folded) => {
                let scope = asked.storm.expect("only alerts with a storm scope fold").scope;
                if let Some(window) = rejoined.get(&(scope, folded.window_id)) {
                    return Err(Slow::Rejoin(scope, *window));
                }
                if folded.opened {
                    // The store opened a window, but the sink may still hold the
                    // scope's aggregated request from before the store lost its
                    // window: then the storm goes on there, with every alert of this
                    // batch the store folded into its new window.
                    if let Some((_, window)) = self.open_window(signal, asked, self.clock.now_s()) {
                        rejoined.insert((scope, folded.window_id), window);
                        return Err(Slow::Rejoin(scope, window));
                    }
                    return Err(Slow::OpenStorm(scope, folded));
                }
                let (outcome, incident, at, update) = self.folded(signal, &scope, folded);
                self.coalescer.repeat(incident, &at, update);
                Ok(outcome)
            }
            Verdict::New(entry) => Err(Slow::New(entry)),
            Verdict::Duplicate(entry) => {
                let at = self.reference(signal, &entry);
                match self.sink.lookup(&at) {
                    Lookup::Terminal | Lookup::Deleted => Err(Slow::Reopen),
                    Lookup::Missing if !self.coalescer.creating(&incident(signal, &entry)) => Err(Slow::Ensure(entry)),
                    Lookup::Open | Lookup::Unknown | Lookup::Missing => Ok(self.duplicate(signal, entry, at)),
                }
            }
            Verdict::ResolvedOpen(entry) => {
                let at = self.reference(signal, &entry);
                let resolved = StatusUpdate { resolved_at_s: Some(self.clock.now_s()), ..uncounted(&entry) };
                self.coalescer.record(incident(signal, &entry), &at, resolved);
                Ok(self.outcome(signal, OutcomeStatus::Resolved, Some(at), entry.count))
            }
            Verdict::ResolvedUnknown => Ok(self.outcome(signal, OutcomeStatus::Resolved, None, 0)),
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
            Slow::New(entry) => {
                let now = self.clock.now_s();
                if let Some(outcome) = self.count_on_open(signal, asked, None, now).await? {
                    return Ok(outcome);
                }
                // Likewise for a storm whose aggregated request's window is still
                // open: the alert folds into it instead of opening an incident. Only a
                // window opened before this alert was decided: the store folds every
                // alert after a window it knows, so a window it opened in the same
                // second, after deciding this one, is no window it lost, and this
                // alert came before the storm.
                let lost = self.open_window(signal, asked, now).filter(|(_, w)| w.id < entry.first_seen_s);
                if let Some((scope, window)) = lost {
                    return self.rejoin(signal, asked, scope, window, now).await;
                }
                self.open(signal, entry, by).await
            }
            // Another replica may be creating it right now, or may have failed to:
            // the create is idempotent, so whichever lands first makes the one
            // request, and the other counts this occurrence on it. Unless the sink
            // holds the incident open in another request: the store's entry is then
            // one it made after forgetting the incident, a moment before the alert
            // that found it new counted it on that request (the other replica's, or
            // this one's, still on its way).
            Slow::Ensure(entry) => {
                let at = self.reference(signal, &entry);
                if let Some(outcome) = self.count_on_open(signal, asked, Some(&at), self.clock.now_s()).await? {
                    return Ok(outcome);
                }
                self.open(signal, entry, by).await
            }
            Slow::Reopen => self.reopen(signal, asked, by).await,
        }
    }

    /// Counts `signal` on the request the sink holds open for its incident, other
    /// than `except`, if there is one: the state store forgot the incident (restart,
    /// failover, eviction), and is taught it again.
    async fn count_on_open(
        &self,
        signal: &Signal<'_>,
        asked: &Observation,
        except: Option<&RequestRef>,
        now: u32,
    ) -> Result<Option<Outcome>, PipelineError> {
        let open = self.sink.open_request(&signal.fingerprint).filter(|o| {
            o.storm.is_none() && now.saturating_sub(o.last_seen_s) < self.window_s && Some(&o.at) != except
        });
        let Some(open) = open else { return Ok(None) };
        // The store's count only answers the sender; the request's count is the
        // writers' tallies, which the store's loss did not touch.
        let count = open.count.min(u32::MAX as u64 - 1) as u32 + 1;
        let entry = Entry { first_seen_s: open.first_seen_s, last_seen_s: now, count };
        self.state.adopt(asked, entry, now).instrument(decide_span("adopt")).await.inspect_err(|e| self.failed(e))?;
        Ok(Some(self.duplicate(signal, entry, open.at)))
    }

    /// The storm window, still open by the storm rules, whose aggregated request the
    /// sink holds for `signal`'s scope.
    fn open_window(&self, signal: &Signal<'_>, asked: &Observation, now: u32) -> Option<([u8; 16], OpenWindow)> {
        let scope = asked.storm.filter(|_| signal.status == SignalStatus::Firing)?.scope;
        let open = self.sink.open_request(&remediation::storm_fingerprint(&signal.name, &signal.namespace))?;
        let kind = open.storm?;
        let rules = &self.storm;
        let live = now.saturating_sub(open.last_seen_s) < rules.inactivity_s()
            && now.saturating_sub(open.first_seen_s) < rules.max_duration_s();
        let window = OpenWindow { id: open.first_seen_s, kind, alerts: open.count.min(u32::MAX as u64) as u32 };
        live.then_some((scope, window))
    }

    /// Folds `signal` into a storm window the sink knows is open and the store had
    /// lost, teaching the store the window again.
    async fn rejoin(
        &self,
        signal: &Signal<'_>,
        asked: &Observation,
        scope: [u8; 16],
        window: OpenWindow,
        now: u32,
    ) -> Result<Outcome, PipelineError> {
        let adopted = self.state.adopt_window(asked, window, now).instrument(decide_span("adopt_window")).await;
        let folded = adopted.inspect_err(|e| self.failed(e))?;
        let (outcome, incident, at, update) = self.folded(signal, &scope, folded);
        self.coalescer.repeat(incident, &at, update);
        Ok(outcome)
    }

    /// Counts a duplicate on its open request.
    fn duplicate(&self, signal: &Signal<'_>, entry: Entry, at: RequestRef) -> Outcome {
        self.coalescer.repeat(incident(signal, &entry), &at, uncounted(&entry));
        self.outcome(signal, OutcomeStatus::Duplicate, Some(at), entry.count)
    }

    /// A controller finished the request, or it was deleted: this occurrence starts
    /// a new incident.
    async fn reopen(&self, signal: &Signal<'_>, asked: &Observation, by: &str) -> Result<Outcome, PipelineError> {
        let now = self.clock.now_s();
        let entry = Entry { first_seen_s: now, last_seen_s: now, count: 1 };
        self.state.adopt(asked, entry, now).instrument(decide_span("adopt")).await.inspect_err(|e| self.failed(e))?;
        self.open(signal, entry, by).await
    }

    /// Creates the request of a new incident.
    async fn open(&self, signal: &Signal<'_>, entry: Entry, by: &str) -> Result<Outcome, PipelineError> {
        let class = self.classify(signal);
        let at = self.reference(signal, &entry);
        let update = uncounted(&entry);
        let mut request = remediation::build(signal, &at.namespace, entry.first_seen_s, &class, &update);
        self.name_trace(&mut request);
        let status = match self.create(incident(signal, &entry), request, &at, update, by).await {
            Ok(Created::Created) => OutcomeStatus::Created,
            Ok(Created::AlreadyExists) => OutcomeStatus::Duplicate,
            Err(e) => {
                self.metrics.signal(signal.signal_type.as_str(), "failed");
                return Err(e.into());
            }
        };
        Ok(self.outcome(signal, status, Some(at), entry.count))
    }

    /// What happened to `signal`, counted in the signals metric.
    fn outcome(&self, signal: &Signal<'_>, status: OutcomeStatus, request: Option<RequestRef>, count: u32) -> Outcome {
        self.metrics.signal(signal.signal_type.as_str(), status.as_str());
        Outcome { fingerprint: signal.fingerprint, status, request, count }
    }

    /// Creates `request`, annotated with who submitted it (`by`). If it exists
    /// already, the occurrence is counted on it as a repeat. If the sink fails, the
    /// request goes to the status writer, which keeps trying: the incident is
    /// recorded as open, so the sender's retry will be a duplicate, and the request
    /// it is counted in must get made. Each request created is one audit event,
    /// naming its submitter.
    async fn create(
        &self,
        incident: Incident,
        mut request: RemediationRequest,
        at: &RequestRef,
        update: StatusUpdate,
        by: &str,
    ) -> Result<Created, SinkError> {
        let annotations = request.metadata.annotations.get_or_insert_with(Default::default);
        annotations.insert(remediation::SUBMITTED_BY_ANNOTATION.to_string(), by.to_string());
        let span =
            tracing::info_span!(target: trace::TARGET, "create", rr.namespace = %at.namespace, rr.name = %at.name);
        match self.sink.create(&request).instrument(span).await {
            Ok(Created::Created) => {
                self.metrics.requests_created.inc();
                let spec = &request.spec;
                audit::request_created(by, &at.namespace, &at.name, &spec.signal_name, &spec.signal_fingerprint);
                Ok(Created::Created)
            }
            Ok(Created::AlreadyExists) => {
                self.coalescer.repeat(incident, at, update);
                Ok(Created::AlreadyExists)
            }
            Err(e) => {
                tracing::warn!(error = %e, name = %at.name, "create failed; handing it to the status writer");
                self.coalescer.record_create(incident, request, at, update);
                Err(e)
            }
        }
    }

    /// Where a signal's requests live: its namespace, or the control namespace for
    /// cluster-scoped targets (and for everything, when so configured).
    fn namespace_for(&self, signal: &Signal<'_>) -> String {
        let cluster_scoped = !signal.target.kind.is_empty() && signal.target.namespace.is_empty();
        match &self.placement {
            PlacementConfig { control_namespace: Some(control), all_in_control_namespace: true } => control.clone(),
            PlacementConfig { control_namespace: Some(control), .. } if cluster_scoped => control.clone(),
            _ => signal.namespace.to_string(),
        }
    }

    fn reference(&self, signal: &Signal<'_>, entry: &Entry) -> RequestRef {
        RequestRef {
            namespace: self.namespace_for(signal),
            name: remediation::request_name(&signal.name, signal.fingerprint.as_bytes(), entry.first_seen_s),
        }
    }

    /// Records the trace this request is created in, when it is sampled.
    fn name_trace(&self, request: &mut RemediationRequest) {
        if let Some(id) = self.traced.then(trace::sampled_trace_id).flatten() {
            remediation::annotate(request, remediation::TRACE_ID_ANNOTATION, id);
        }
    }

    /// Counts a state store failure by cause.
    fn failed(&self, e: &StateError) {
        self.metrics.state_error(e.cause());
    }

    fn classify(&self, signal: &Signal<'_>) -> remediation::Classification {
        let class = self.classifier.classify(signal);
        let labels = ClassLabels { environment: class.environment.clone(), priority: class.priority.clone() };
        self.metrics.classifications.get_or_create(&labels).inc();
        class
    }

    /// Counts a storm's alert on its aggregated request, creating the request when
    /// this alert opened the window.
    async fn fold(
        &self,
        signal: &Signal<'_>,
        scope: &[u8; 16],
        folded: Folded,
        by: &str,
    ) -> Result<Outcome, PipelineError> {
        let (outcome, incident, at, update) = self.folded(signal, scope, folded);
        if !folded.opened {
            self.coalescer.repeat(incident, &at, update);
            return Ok(outcome);
        }
        self.metrics.storms.get_or_create(&StormLabels { r#type: folded.kind.as_str() }).inc();
        audit::storm_opened(by, &at.namespace, &at.name, folded.kind.as_str(), &signal.name, &hex::encode(scope));
        let class = self.classify(signal);
        let mut request = remediation::build_storm(signal, scope, &folded, &class, &update);
        self.name_trace(&mut request);
        self.create(incident, request, &at, update, by).await?;
        Ok(outcome)
    }

    /// A folded alert's outcome, and the status update of its aggregated request, to
    /// be counted as a repeat unless the alert opened the window (the request's
    /// creation counts that one).
    fn folded(
        &self,
        signal: &Signal<'_>,
        scope: &[u8; 16],
        folded: Folded,
    ) -> (Outcome, Incident, RequestRef, StatusUpdate) {
        let at = RequestRef {
            namespace: self.namespace_for(signal),
            name: remediation::storm_request_name(&signal.name, scope, folded.window_id),
        };
        let incident = Incident::Storm(*scope, folded.window_id);
        let now = self.clock.now_s();
        let update = StatusUpdate {
            first_seen_s: folded.window_id,
            last_seen_s: now,
            writer: NO_WRITER,
            count: 0,
            resolved_at_s: None,
            storm: Some(StormUpdate {
                resource_count: folded.resource_count as u64,
                resources: vec![signal.target.clone()],
                cap: self.storm.affected_resources_cap,
            }),
        };
        self.windows.lock().unwrap_or_else(|p| p.into_inner()).insert((*scope, folded.window_id), now);
        self.metrics.alerts_aggregated.inc();
        let status = OutcomeStatus::Aggregated { opened: folded.opened };
        let outcome = self.outcome(signal, status, Some(at.clone()), folded.alert_count);
        (outcome, incident, at, update)
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

/// What the state store is asked about a signal. Resolutions carry their scope too
/// (never counted): on Cluster it places their dedup keys. `last` remembers the
/// previous signal's scope, which the next one usually shares.
fn observation<'a>(s: &'a Signal<'_>, last: &mut Option<(&'a str, &'a str, [u8; 16])>) -> Observation {
    let scope = match *last {
        Some((namespace, name, scope)) if namespace == s.namespace && name == s.name => scope,
        _ => {
            let scope = StormKey::scope(&s.namespace, &s.name);
            *last = Some((&s.namespace, &s.name, scope));
            scope
        }
    };
    Observation { fingerprint: s.fingerprint, status: s.status, storm: Some(StormKey::in_scope(scope, &s.target)) }
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
    StatusUpdate {
        first_seen_s: entry.first_seen_s,
        last_seen_s: entry.last_seen_s,
        writer: NO_WRITER,
        count: 0,
        resolved_at_s: None,
        storm: None,
    }
}
