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
    /// A controller finished it (a terminal phase): the next occurrence is a new incident.
    Terminal,
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

    /// Every request of a single incident (not a storm's) the sink's authority
    /// holds open, whole: how rules that keep open incidents in the state store
    /// (inhibition's sources) are taught them again after the store lost them. May
    /// cost I/O (the directory sink reads the manifests); called at start and then
    /// once per dedup window, never per signal.
    fn open_requests(&self) -> BoxFuture<'_, Result<Vec<RemediationRequest>, SinkError>>;
}
