//! Where silences are kept: the cluster ([`super::kube::KubeSilences`]) or a
//! directory ([`super::dir::DirSilences`]). The CLI creates, lists and expires
//! through this trait; the gateway writes statuses through it. Neither is on the
//! signal path: the pipeline reads [`super::Silences`], fed by the watches.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::resource::{RemediationSilence, RemediationSilenceStatus};
use super::SilenceRef;
use crate::remediation::raise_tally;
use crate::state::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the Kubernetes API refused or failed: {0}")]
    Kube(#[source] ::kube::Error),
    #[error("silence I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("silence file {path} is unreadable: {source}")]
    Corrupt { path: String, source: serde_norway::Error },
    #[error("silence {0} does not exist")]
    NotFound(SilenceRef),
    #[error("silence {0} exists already")]
    Exists(SilenceRef),
}

impl StoreError {
    /// The outcome a failed status write is counted under, in the sink's words
    /// (`SinkError::LABELS`), so that one vocabulary covers every status write,
    /// mapped as the Kubernetes sink maps the API's answers: only an invalid object
    /// (422) is `rejected`. A conflict (`Exists`, from a status patch that lost a
    /// race) is `unavailable`: retried, as the sink's conflicts are.
    pub fn label(&self) -> &'static str {
        match self {
            StoreError::Kube(e) => match crate::kube_api::code(e) {
                Some(422) => "rejected",
                _ => "unavailable",
            },
            StoreError::Io(_) => "io",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::NotFound(_) => "not_found",
            StoreError::Exists(_) => "unavailable",
        }
    }
}

/// What a status write changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusChange {
    /// Who counted `matched`: one gateway process's count of one silence (see
    /// [`super::status`]); unused while `matched` is 0.
    pub writer: u64,
    /// Every signal `writer` counted as matched by the silence, in all (not since
    /// its last write): writing it twice counts nothing twice.
    pub matched: u64,
    pub last_matched_at: Option<Timestamp>,
    /// The state to record, and why when ignored.
    pub state: Option<(String, Option<String>)>,
}

impl StatusChange {
    /// Folds a later change of the same writer into this one.
    pub fn merge(&mut self, later: StatusChange) {
        if later.matched > 0 {
            self.writer = later.writer;
        }
        self.matched = self.matched.max(later.matched);
        self.last_matched_at = self.last_matched_at.max(later.last_matched_at);
        if later.state.is_some() {
            self.state = later.state;
        }
    }

    /// Applies this change to `status`: the writer's tally is raised to `matched`,
    /// times never move backwards.
    pub fn apply(&self, status: &mut RemediationSilenceStatus) {
        if self.matched > 0 {
            let writer = format!("{:016x}", self.writer);
            raise_tally(&mut status.tallies, &mut status.matched_signals, &writer, self.matched);
        }
        if let Some(at) = self.last_matched_at {
            if status.last_matched_at.as_ref().is_none_or(|t| t.0 < at) {
                status.last_matched_at = Some(Time(at));
            }
        }
        if let Some((state, reason)) = &self.state {
            status.state = Some(state.clone());
            status.reason = reason.clone();
        }
    }
}

pub trait SilenceStore: Send + Sync + 'static {
    /// Silences in `namespace`, or in every namespace.
    fn list<'a>(&'a self, namespace: Option<&'a str>) -> BoxFuture<'a, Result<Vec<RemediationSilence>, StoreError>>;

    /// Creates `silence`, which names its namespace and name.
    fn create<'a>(&'a self, silence: &'a RemediationSilence) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Ends the silence at `now` (at its start, if it has not started): its
    /// `endsAt` only ever moves earlier.
    fn expire<'a>(&'a self, at: &'a SilenceRef, now: Timestamp) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Tells the silence's readers that the gateway ignores it, where the store has
    /// a way to: a Kubernetes Warning Event on the silence, named after its version
    /// so that each version is warned of once, whichever replica warns first. The
    /// files have no such place: their status and the gateway's log say it.
    fn warn_ignored<'a>(&'a self, ignored: &'a Ignored) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Folds `change` into the silence's status.
    fn write_status<'a>(
        &'a self,
        at: &'a SilenceRef,
        change: &'a StatusChange,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// A silence the gateway ignores, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Ignored {
    pub at: SilenceRef,
    pub uid: Option<String>,
    /// The version of its spec ([`super::Known::version`]).
    pub version: String,
    /// Why, in words.
    pub message: String,
}

/// The `endsAt` that expires a silence at `now`: never later than it was, never
/// before its start.
pub fn expired_end(silence: &RemediationSilence, now: Timestamp) -> Timestamp {
    now.max(silence.spec.starts_at.0).min(silence.spec.ends_at.0)
}
