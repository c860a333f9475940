//! Shared decision state: which incidents are open, since when, and how often seen.
//!
//! One trait, [`StateStore`], with an in-process backend ([`memory`]) and a Redis
//! backend. Both answer a whole batch of observations in one call, which for Redis
//! is one network round trip. The dedup rule itself is defined by the conformance
//! suite in `tests/support/conformance.rs`, which every backend must pass.
//!
//! Stores keep fixed-size metadata only (a fingerprint and three integers), never
//! documents: everything needed to name and update a RemediationRequest is derivable
//! from the fingerprint and the first-seen epoch.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;

use crate::signal::{Fingerprint, SignalStatus};

/// A boxed future, so that stores can sit behind `Arc<dyn StateStore>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One signal's question to the store.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    pub fingerprint: Fingerprint,
    pub status: SignalStatus,
}

/// The dedup entry of an open incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The occurrence epoch: part of the RemediationRequest's name.
    pub first_seen_s: u32,
    pub last_seen_s: u32,
    pub count: u32,
}

/// The store's answer for one observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No open incident had this fingerprint; one was opened.
    New(Entry),
    /// An open incident was seen again; its count and last-seen were updated.
    Duplicate(Entry),
    /// A resolved signal for an open incident. Nothing was counted.
    ResolvedOpen(Entry),
    /// A resolved signal with no open incident. Nothing was recorded.
    ResolvedUnknown,
}

/// Why the store could not answer. Every variant means "nothing was recorded for
/// this batch"; the caller answers 503 so that the sender retries.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state store is full ({max_entries} open incidents); refusing new incidents rather than evicting open ones"
    )]
    Full { max_entries: usize },
    #[error("state store is out of memory: {0}")]
    OutOfMemory(String),
    #[error("state store is unreachable: {0}")]
    Unavailable(String),
    #[error("state store did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl StateError {
    /// The metric label for this error: one place maps errors to causes.
    pub fn cause(&self) -> &'static str {
        match self {
            StateError::Full { .. } => "full",
            StateError::OutOfMemory(_) => "oom",
            StateError::Unavailable(_) => "unavailable",
            StateError::Timeout(_) => "timeout",
        }
    }
}

/// Decision state shared by every request (and, for Redis, every replica).
pub trait StateStore: Send + Sync + 'static {
    /// Applies the observations in order, each atomically, and answers each. On
    /// error the caller answers 503 and the sender retries the whole batch; any
    /// observation applied before the failure is then seen again as a duplicate, so
    /// an alert may be counted twice but is never lost.
    fn observe<'a>(&'a self, batch: &'a [Observation], now_s: u32) -> BoxFuture<'a, Result<Vec<Verdict>, StateError>>;

    /// Cheap liveness check used by `/readyz`.
    fn ping(&self) -> BoxFuture<'_, Result<(), StateError>>;

    /// Number of entries held, for the `tidegate_state_entries` gauge.
    fn entries(&self) -> BoxFuture<'_, Result<u64, StateError>>;

    /// A short name for logs and metrics.
    fn backend(&self) -> &'static str;
}
