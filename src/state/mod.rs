//! Shared decision state: which incidents are open, since when, and how often
//! seen; which (namespace, alert name) scopes are in a storm; and each source's
//! rate-limit budget.
//!
//! One trait, [`StateStore`], with an in-process backend ([`memory`]) and a Redis
//! backend. Both answer a whole batch of observations in one call, which for Redis
//! is one network round trip. The dedup rule itself is defined by the conformance
//! suite in `tests/support/conformance.rs`, which every backend must pass.
//!
//! Stores keep fixed-size metadata only (a fingerprint and three integers), never
//! documents: everything needed to name and update a RemediationRequest is derivable
//! from the fingerprint and the first-seen epoch.

mod backend;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::section::ConfigError;
use crate::signal::{Fingerprint, SignalStatus, TargetResource};
pub use backend::{Settings, StateBackend};

/// A boxed future, so that stores can sit behind `Arc<dyn StateStore>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One signal's question to the store.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    pub fingerprint: Fingerprint,
    pub status: SignalStatus,
    /// The signal's storm scope; only firing signals count towards detection.
    /// `None` for signals that never take part.
    pub storm: Option<StormKey>,
}

/// A signal's place in storm detection: its (namespace, alert name) scope and the
/// resource it is about, both hashed to fixed sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StormKey {
    pub scope: [u8; 16],
    pub resource: [u8; 8],
}

impl StormKey {
    /// The scope is per namespace and alert name (and cluster), never global.
    pub fn new(namespace: &str, name: &str, target: &TargetResource) -> Self {
        Self::in_scope(Self::scope(namespace, name, &target.cluster), target)
    }

    /// The key of `target` in a scope already hashed by [`Self::scope`]: a webhook's
    /// alerts mostly share one scope, so it is hashed once for them.
    pub fn in_scope(scope: [u8; 16], target: &TargetResource) -> Self {
        let resource = digest(&[&target.kind, &target.namespace, &target.name]);
        StormKey { scope, resource: resource[..8].try_into().expect("8 of 32") }
    }

    /// The hash of a (namespace, alert name) scope, in `cluster` when a signal
    /// names one: two clusters' storms are two storms. Without a cluster the hash
    /// is what it was before clusters took part, so open windows survive an upgrade.
    pub fn scope(namespace: &str, name: &str, cluster: &str) -> [u8; 16] {
        let hash = match cluster {
            "" => digest(&[namespace, name]),
            cluster => digest(&[namespace, name, cluster]),
        };
        hash[..16].try_into().expect("16 of 32")
    }
}

/// SHA-256 over length-prefixed parts, so that no two lists of parts collide.
pub(crate) fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// `dedup`: what counts as a repeat. How often a repeat is written to its request
/// is the status writer's (`status_writer`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// Repeats within this long of the last occurrence are duplicates; each
    /// duplicate restarts the window.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub window: Duration,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig { window: Duration::from_secs(300) }
    }
}

impl DedupConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !whole_seconds(self.window) {
            return Err(ConfigError::invalid(
                "dedup.window",
                "must be a whole number of seconds, from 1s to 4294967295s",
            ));
        }
        Ok(())
    }
}

/// `storm`: when many alerts are one incident, and how long its aggregation
/// window lives. The store works in whole seconds.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StormConfig {
    /// A rate storm is more than this many firing alerts of one alert name in one
    /// namespace within `rate_window`.
    pub rate_threshold: u32,
    /// The span over which a rate storm's alerts are counted.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub rate_window: Duration,
    /// A pattern storm is the same alert name on more than this many distinct
    /// resources of one namespace within `pattern_window`.
    pub pattern_threshold: u32,
    /// The span over which a pattern storm's resources are counted.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub pattern_window: Duration,
    /// An aggregation window closes after this long without an alert, or at
    /// `max_duration`, whichever comes first.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub inactivity: Duration,
    /// An aggregation window closes this long after it opened, at the latest.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub max_duration: Duration,
    /// Most affected resources listed on an aggregated request; counts go on beyond
    /// it.
    pub affected_resources_cap: usize,
}

impl Default for StormConfig {
    fn default() -> Self {
        StormConfig {
            rate_threshold: 10,
            rate_window: Duration::from_secs(60),
            pattern_threshold: 5,
            pattern_window: Duration::from_secs(120),
            inactivity: Duration::from_secs(60),
            max_duration: Duration::from_secs(300),
            affected_resources_cap: 100,
        }
    }
}

impl StormConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, d) in [
            ("storm.rate_window", self.rate_window),
            ("storm.pattern_window", self.pattern_window),
            ("storm.inactivity", self.inactivity),
            ("storm.max_duration", self.max_duration),
        ] {
            if !whole_seconds(d) {
                return Err(ConfigError::invalid(key, "must be a whole number of seconds, from 1s to 4294967295s"));
            }
        }
        if self.affected_resources_cap == 0 || self.affected_resources_cap > 1000 {
            return Err(ConfigError::invalid("storm.affected_resources_cap", "must be between 1 and 1000"));
        }
        Ok(())
    }

    pub fn rate_window_s(&self) -> u32 {
        self.rate_window.as_secs() as u32
    }

    pub fn pattern_window_s(&self) -> u32 {
        self.pattern_window.as_secs() as u32
    }

    pub fn inactivity_s(&self) -> u32 {
        self.inactivity.as_secs() as u32
    }

    pub fn max_duration_s(&self) -> u32 {
        self.max_duration.as_secs() as u32
    }
}

/// At least a second, whole, and few enough seconds for the store's `u32`s.
fn whole_seconds(d: Duration) -> bool {
    d >= Duration::from_secs(1) && d.subsec_nanos() == 0 && d.as_secs() <= u64::from(u32::MAX)
}

/// What kind of storm opened an aggregation window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StormKind {
    Rate,
    Pattern,
}

impl StormKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StormKind::Rate => "rate",
            StormKind::Pattern => "pattern",
        }
    }

    /// The kind [`as_str`](Self::as_str) spelled; anything else is a rate storm,
    /// the kind that needs nothing but a count.
    pub fn parse(s: &str) -> Self {
        if s == StormKind::Pattern.as_str() {
            StormKind::Pattern
        } else {
            StormKind::Rate
        }
    }
}

/// A firing alert folded into a storm's aggregation window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Folded {
    /// The second the window opened: with the scope, the window's identity.
    pub window_id: u32,
    pub kind: StormKind,
    /// Alerts folded into this window so far, this one included.
    pub alert_count: u32,
    /// Distinct resources folded into this window so far (approximate beyond a few
    /// thousand).
    pub resource_count: u32,
    /// Whether this alert opened the window.
    pub opened: bool,
}

/// A storm's aggregation window that an authority (the sink, which holds its
/// aggregated request) knows is open, though the store may have lost it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenWindow {
    /// The second the window opened.
    pub id: u32,
    pub kind: StormKind,
    /// Alerts counted in it so far.
    pub alerts: u32,
}

/// Rate-limit settings for one class of sources: GCRA with `rate` per second and
/// room for `burst` back-to-back requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub rate_per_s: f64,
    pub burst: u32,
}

impl RateLimit {
    /// Milliseconds between requests at the sustained rate (GCRA's T).
    pub fn emission_interval_ms(&self) -> u64 {
        (1000.0 / self.rate_per_s).ceil().max(1.0) as u64
    }

    /// How far ahead of now a source's theoretical arrival time may run (GCRA's τ).
    pub fn tolerance_ms(&self) -> u64 {
        self.emission_interval_ms() * (self.burst.max(1) as u64 - 1)
    }
}

/// Whether a source may send now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    Limited { retry_after_ms: u64 },
}

/// A request to charge to its source's rate-limit budget.
#[derive(Clone, Copy, Debug)]
pub struct Charge<'a> {
    pub source: &'a str,
    pub limit: RateLimit,
    pub now_ms: u64,
}

/// The answer to a charged batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The source is over its limit; nothing was recorded.
    Limited { retry_after_ms: u64 },
    /// One verdict per observation, in order.
    Decided(Vec<Verdict>),
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
    /// An acknowledgement of an open incident. Nothing was counted, and its
    /// last-seen time stands: a person's answer is not an occurrence.
    AcknowledgedOpen(Entry),
    /// An acknowledgement with no open incident. Nothing was recorded.
    AcknowledgedUnknown,
    /// A firing alert in a scope that is in a storm: counted in the storm's
    /// aggregation window instead of getting a request of its own.
    Folded(Folded),
    /// A firing signal of an incident whose last signal was a resolution: a
    /// firing → resolved → firing transition, counted as [`New`](Verdict::New)
    /// (`opened`) or [`Duplicate`](Verdict::Duplicate) would be. `transitions` is
    /// how many the incident made within the flap window ([`FlapRule`]), this one
    /// included, at most [`FlapRule::keep`].
    Refired { entry: Entry, opened: bool, transitions: u32 },
}

impl Verdict {
    /// The verdict as dedup sees it (a re-fire is a new incident or a repeat), and
    /// the flap transitions it carries (0 for anything but a re-fire).
    pub fn flaps(self) -> (Verdict, u32) {
        match self {
            Verdict::Refired { entry, opened: true, transitions } => (Verdict::New(entry), transitions),
            Verdict::Refired { entry, opened: false, transitions } => (Verdict::Duplicate(entry), transitions),
            other => (other, 0),
        }
    }
}

/// How a store counts an incident's firing → resolved → firing transitions
/// (`flap` in the configuration): those of the last `window_s` seconds, at most
/// `keep` of them (one more than the threshold is all a decision needs, and keeps
/// each incident's record to a few bytes). A record lives `window_s` after its
/// incident's last resolution or transition, and no longer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlapRule {
    pub window_s: u32,
    pub keep: u32,
}

impl Default for FlapRule {
    /// `flap`'s defaults: 30 minutes, threshold 3.
    fn default() -> Self {
        FlapRule { window_s: 1800, keep: 4 }
    }
}

/// A backend's own error, boxed so that [`StateError`] and the trait name no
/// backend's types.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The key of one inhibit rule's hold on its targets: the rule, whether the source
/// also matched the rule's target side, and the values of the rule's `equal`
/// labels, hashed to a fixed size (see `pipeline::inhibit`).
pub type InhibitKey = [u8; 16];

/// A source incident holding an inhibit rule's targets back: its fingerprint and
/// the request its targets are counted on. Bounded: a namespace and a name are at
/// most 63 and 253 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inhibitor {
    pub source: Fingerprint,
    /// The source incident's occurrence epoch.
    pub first_seen_s: u32,
    pub namespace: String,
    pub name: String,
}

/// Why the store could not answer. Every variant means "nothing was recorded for
/// this batch"; the caller answers 503 so that the sender retries.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state store is full ({max_entries} open incidents); refusing new incidents rather than evicting open ones"
    )]
    Full { max_entries: usize },
    #[error("Redis refused a write for lack of memory: {0}")]
    OutOfMemory(#[source] BackendError),
    #[error("Redis' used_memory has reached its maxmemory")]
    AtMaxmemory,
    #[error("state store is unreachable: {0}")]
    Unavailable(#[source] BackendError),
    #[error("cannot use the Redis TLS files: {0}")]
    Tls(#[source] BackendError),
    #[error("unexpected reply from the {script} script: {what}")]
    Reply { script: &'static str, what: String },
    #[error("unexpected reply from the {script} script: {source}")]
    ReplyType {
        script: &'static str,
        #[source]
        source: BackendError,
    },
    #[error("the store was asked something it cannot answer: {0}")]
    Misuse(&'static str),
    #[error("state store did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl StateError {
    /// Every value [`StateError::label`] takes, for metrics made at 0.
    pub const CAUSES: &'static [&'static str] = &["full", "oom", "unavailable", "timeout"];

    /// The metric label for this error.
    pub fn label(&self) -> &'static str {
        match self {
            StateError::Full { .. } => "full",
            StateError::OutOfMemory(_) | StateError::AtMaxmemory => "oom",
            StateError::Unavailable(_)
            | StateError::Tls(_)
            | StateError::Reply { .. }
            | StateError::ReplyType { .. }
            | StateError::Misuse(_) => "unavailable",
            StateError::Timeout(_) => "timeout",
        }
    }
}

/// What [`StateStore::admit_and_observe`] does by default, in two calls: for stores
/// that cannot do both in one.
pub async fn admit_then_observe<S: StateStore + ?Sized>(
    store: &S,
    charge: Charge<'_>,
    batch: &[Observation],
    now_s: u32,
) -> Result<Decision, StateError> {
    match store.admit(charge.source, charge.limit, charge.now_ms).await? {
        Admission::Limited { retry_after_ms } => Ok(Decision::Limited { retry_after_ms }),
        Admission::Allowed => store.observe(batch, now_s).await.map(Decision::Decided),
    }
}

/// Decision state shared by every request (and, for Redis, every replica).
pub trait StateStore: Send + Sync + 'static {
    /// Applies the observations in order, each atomically, and answers each. On
    /// error the caller answers 503 and the sender retries the whole batch; any
    /// observation applied before the failure is then seen again as a duplicate, so
    /// an alert may be counted twice but is never lost.
    fn observe<'a>(&'a self, batch: &'a [Observation], now_s: u32) -> BoxFuture<'a, Result<Vec<Verdict>, StateError>>;

    /// Records `entry` as the open incident of `observation`'s fingerprint, last
    /// seen `now_s`: how an authority (the cluster's own requests) repairs state that
    /// was lost or is out of date.
    fn adopt<'a>(
        &'a self,
        observation: &'a Observation,
        entry: Entry,
        now_s: u32,
    ) -> BoxFuture<'a, Result<(), StateError>>;

    /// Takes `window` back as the open aggregation window of `observation`'s storm
    /// scope, after the store lost it (restart, failover, eviction), and folds the
    /// firing `observation` into it: its alert count goes on from `window.alerts`.
    /// The incident [`observe`](Self::observe) has just opened for `observation` is
    /// removed, so that its repeats fold too rather than count on a request that was
    /// never made.
    fn adopt_window<'a>(
        &'a self,
        observation: &'a Observation,
        window: OpenWindow,
        now_s: u32,
    ) -> BoxFuture<'a, Result<Folded, StateError>>;

    /// Charges one request to `source` under `limit` (GCRA). A limited request
    /// changes nothing.
    fn admit<'a>(
        &'a self,
        source: &'a str,
        limit: RateLimit,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Admission, StateError>>;

    /// [`admit`](Self::admit), then [`observe`](Self::observe) if the request is
    /// allowed: what the request path asks, in one round trip where the backend can.
    /// A limited request changes nothing.
    fn admit_and_observe<'a>(
        &'a self,
        charge: Charge<'a>,
        batch: &'a [Observation],
        now_s: u32,
    ) -> BoxFuture<'a, Result<Decision, StateError>> {
        Box::pin(admit_then_observe(self, charge, batch, now_s))
    }

    /// Records `id` as seen for `ttl` and answers whether this is its first
    /// sighting in that time: atomically, so of two replicas racing on one id
    /// exactly one sees `true`. The replay store of signed webhooks: `id` is a digest
    /// of a message id, fixed-size whatever the sender sends.
    fn first_sighting(&self, id: [u8; 16], ttl: Duration) -> BoxFuture<'_, Result<bool, StateError>>;

    /// Forgets a sighting, so that the retry of a message that was refused after
    /// [`first_sighting`](Self::first_sighting) (the sink was down, say) is not
    /// taken for a replay.
    fn forget_sighting(&self, id: [u8; 16]) -> BoxFuture<'_, Result<(), StateError>>;

    /// The inhibitor holding each key until a second after `now_s`, in order; `None`
    /// for a key no live source holds. Read-only.
    fn inhibitors<'a>(
        &'a self,
        keys: &'a [InhibitKey],
        now_s: u32,
    ) -> BoxFuture<'a, Result<Vec<Option<Inhibitor>>, StateError>>;

    /// Records each inhibitor as holding its key from `now_s` until `until_s` (exclusive),
    /// replacing whatever held it: an open source incident says so again on every
    /// sighting, so a key lives as long as its source's incident and no longer.
    fn hold_inhibitors<'a>(
        &'a self,
        holds: &'a [(InhibitKey, Inhibitor)],
        now_s: u32,
        until_s: u32,
    ) -> BoxFuture<'a, Result<(), StateError>>;

    /// Ends each hold of `releases` that its inhibitor still holds (the same
    /// source incident: fingerprint and occurrence epoch), as one atomic step per
    /// key: a resolved source lets its targets go at once rather than a dedup
    /// window later. A key another source holds now stays held. Returns how many
    /// holds ended.
    fn release_inhibitors<'a>(
        &'a self,
        releases: &'a [(InhibitKey, Inhibitor)],
    ) -> BoxFuture<'a, Result<usize, StateError>>;

    /// Cheap liveness check used by `/readyz`.
    fn ping(&self) -> BoxFuture<'_, Result<(), StateError>>;

    /// Number of entries held, for the `tidegate_state_entries` gauge.
    fn entries(&self) -> BoxFuture<'_, Result<u64, StateError>>;
}
