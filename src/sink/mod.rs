//! Where RemediationRequests go: a directory of manifests ([`dir`]) or, in a
//! cluster, the Kubernetes API.
//!
//! Sinks are idempotent. A request's name is derived from its identity, so a second
//! create of the same incident (a retry, a racing replica) reports
//! [`Created::AlreadyExists`] and never makes a second request. Sinks never touch a
//! spec after creation; status updates change gateway-owned fields only.

pub mod dir;
pub mod kube;
mod target;

use crate::remediation::{RemediationRequest, StatusUpdate};
use crate::signal::Fingerprint;
use crate::state::BoxFuture;
pub use target::{BuildError, Built, Settings, SinkTarget};

/// The outcome of a create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    Created,
    AlreadyExists,
}

/// A request's address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestRef {
    pub namespace: String,
    pub name: String,
}

/// What the sink's authority knows of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// It exists and no controller has finished it.
    Open,
    /// A controller finished it (a terminal phase other than `Failed`): the next
    /// occurrence is a new incident.
    Terminal,
    /// A controller finished it as `Failed`: the next occurrence is a new incident
    /// once the back-off has passed. `prior_failures` is its
    /// `status.backoff.priorFailures`.
    Failed { prior_failures: u32 },
    /// It waits for a person (`ManualReviewRequired`): no new request for its
    /// incident until the phase changes or the request is deleted.
    Latched,
    /// The authority reported it deleted: it is gone.
    Deleted,
    /// Not in the authority's view, and never reported deleted: not created yet, or
    /// created too recently for the view. Creating it (idempotently) settles which.
    Missing,
    /// This sink keeps no authority.
    Unknown,
}

/// Phases a downstream controller writes when it is done with a request: the next
/// occurrence of its incident is a new incident. The same set for every sink.
pub const TERMINAL_PHASES: [&str; 5] = ["Completed", "Failed", "Cancelled", "TimedOut", "Skipped"];

/// Whether `phase` says a controller is done with a request.
pub fn is_terminal(phase: Option<&str>) -> bool {
    phase.is_some_and(|p| TERMINAL_PHASES.contains(&p))
}

/// The terminal phase after which a new request backs off.
pub const FAILED_PHASE: &str = "Failed";
/// The phase that latches an incident until a person acts. Not terminal.
pub const MANUAL_REVIEW_PHASE: &str = "ManualReviewRequired";

/// What a request's phase means for its incident's next request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No phase, or one a controller is still working in.
    Active,
    /// `Failed`: the next request backs off.
    Failed,
    /// `ManualReviewRequired`: no next request until a person acts.
    ManualReview,
    /// Any other terminal phase (`Completed`...): the next request may come at once.
    Ended,
}

impl Phase {
    pub fn of(phase: Option<&str>) -> Phase {
        match phase {
            Some(FAILED_PHASE) => Phase::Failed,
            Some(MANUAL_REVIEW_PHASE) => Phase::ManualReview,
            p if is_terminal(p) => Phase::Ended,
            _ => Phase::Active,
        }
    }

    /// Whether a controller is done with the request.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Failed | Phase::Ended)
    }

    /// The [`Lookup`] of an existing request in this phase.
    pub fn lookup(self, prior_failures: u32) -> Lookup {
        match self {
            Phase::Active => Lookup::Open,
            Phase::Failed => Lookup::Failed { prior_failures },
            Phase::ManualReview => Lookup::Latched,
            Phase::Ended => Lookup::Terminal,
        }
    }
}

/// An incident's newest request, whatever its phase, as the sink's authority
/// knows it: what the outcome rules ([`crate::pipeline::backoff`]) decide from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastRequest {
    pub at: RequestRef,
    pub first_seen_s: u32,
    pub last_seen_s: u32,
    pub count: u64,
    pub phase: Phase,
    /// Its `status.backoff.priorFailures`.
    pub prior_failures: u32,
}

/// An open request found by fingerprint: an incident's, or a storm's aggregated
/// request (found by its scope's fingerprint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenRequest {
    pub at: RequestRef,
    /// For an aggregated request, the second its window opened.
    pub first_seen_s: u32,
    pub last_seen_s: u32,
    /// Occurrences, or for an aggregated request the alerts folded into it.
    pub count: u64,
    /// Set on an aggregated request: the kind of storm that opened it.
    pub storm: Option<crate::state::StormKind>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("the Kubernetes API cannot be reached: {0}")]
    Unavailable(#[source] ::kube::Error),
    #[error("the Kubernetes API refused the request as invalid: {0}")]
    Rejected(#[source] ::kube::Error),
    #[error("the Kubernetes API is failing (circuit open)")]
    CircuitOpen,
    #[error("the Kubernetes API did not list requests and namespaces within {0:?}")]
    NotSynced(std::time::Duration),
    #[error("the status of {0:?} kept conflicting")]
    Conflicting(RequestRef),
    #[error("remediation request {0:?} does not exist")]
    NotFound(RequestRef),
    #[error("sink I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("stored manifest {path} is unreadable: {source}")]
    Corrupt { path: String, source: serde_norway::Error },
}

impl SinkError {
    /// The metric label for this error.
    /// Every value [`SinkError::label`] takes, for metrics made at 0.
    pub const LABELS: &'static [&'static str] = &["unavailable", "rejected", "not_found", "io", "corrupt"];

    pub fn label(&self) -> &'static str {
        match self {
            SinkError::Unavailable(_)
            | SinkError::CircuitOpen
            | SinkError::NotSynced(_)
            | SinkError::Conflicting(_) => "unavailable",
            SinkError::Rejected(_) => "rejected",
            SinkError::NotFound(_) => "not_found",
            SinkError::Io(_) => "io",
            SinkError::Corrupt { .. } => "corrupt",
        }
    }
}

pub trait Sink: Send + Sync + 'static {
    /// Creates the request unless one with its name exists.
    fn create<'a>(&'a self, request: &'a RemediationRequest) -> BoxFuture<'a, Result<Created, SinkError>>;

    /// Applies `update` to the request's status. Fails with
    /// [`SinkError::NotFound`] if the request does not exist.
    fn update_status<'a>(
        &'a self,
        at: &'a RequestRef,
        update: &'a StatusUpdate,
    ) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Whether the sink can currently accept writes, for `/readyz`.
    fn ready(&self) -> BoxFuture<'_, Result<(), SinkError>>;

    /// What the sink's authority knows of the request at `at`, without I/O. No
    /// default: the sink is the record of open incidents (docs/delivery.md), so
    /// each sink says how it knows them, or answers [`Lookup::Unknown`] on purpose
    /// (and then a restart cannot find an incident's open request).
    fn lookup(&self, at: &RequestRef) -> Lookup;

    /// An open request for `fingerprint`, if the sink's authority knows one,
    /// without I/O. No default, for the same reason as [`Sink::lookup`].
    fn open_request(&self, fingerprint: &Fingerprint) -> Option<OpenRequest>;

    /// The newest request for `fingerprint` in any phase, if the sink's authority
    /// knows one, without I/O: the record the back-off and the manual-review latch
    /// are decided from, so that they survive restarts and a state store's loss.
    fn last_request(&self, fingerprint: &Fingerprint) -> Option<LastRequest>;

    /// Every request of a single incident (not a storm's) the sink's authority
    /// holds open, whole: how rules that keep open incidents in the state store
    /// (inhibition's sources) are taught them again after the store lost them. May
    /// cost I/O (the directory sink reads the manifests); called at start and then
    /// once per dedup window, never per signal.
    fn open_requests(&self) -> BoxFuture<'_, Result<Vec<RemediationRequest>, SinkError>>;

    /// The requests of [`Self::open_requests`] marked flapping (the `Flapping`
    /// condition): what the flap sweep settles, every tenth of a flap window. A sink
    /// that must read its requests to list them reads only these. As read now: one
    /// may have settled since the sink knew it flapping.
    fn flapping_requests(&self) -> BoxFuture<'_, Result<Vec<RemediationRequest>, SinkError>>;

    /// Status writes per second this sink affords, if it measures what its writes
    /// cost: the status writer's cap when `status_writer.max_writes_per_s` is unset.
    /// `None`, the default: the status writer's fixed default cap (a Kubernetes API
    /// server's load cannot be measured from here).
    fn affordable_status_writes(&self) -> Option<f64> {
        None
    }
}
