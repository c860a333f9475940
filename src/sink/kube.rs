//! The production sink: RemediationRequest custom resources through the
//! Kubernetes API, with the cluster as the authority on open incidents.
//!
//! - Creation is idempotent: a request's name comes from its identity, so a retry
//!   or a racing replica gets 409 AlreadyExists, which means "exists", never an
//!   error and never a second request.
//! - Status is written through the status subresource with the object's
//!   resourceVersion; a conflict re-reads and re-applies (counts only move forward).
//!   The read comes from a watch-fed cache when it has the object, so a write costs
//!   one API call.
//! - Watch-fed caches (kube-runtime reflectors) of tidegate's requests and of
//!   namespaces answer "is this incident still open?" and "which environment is
//!   this namespace?" without an API call per alert. Deletions are known exactly
//!   from the watch: its delete events, and a re-list (after a gap or `410 Gone`)
//!   that no longer has a request it had. A request the cache lacks and the watch
//!   never reported deleted is one the watch has not delivered yet.
//! - 5xx, 429, timeouts and connection failures are retried with jittered
//!   exponential backoff within the operation's deadline; past it the caller gets
//!   an error (answered 503). A circuit breaker stops calling a failing API server
//!   for a cool-down and turns readiness off meanwhile.

pub mod access;
pub mod doctor;
mod index;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{is_terminal, Created, LastRequest, Lookup, OpenRequest, Phase, RequestRef, Sink, SinkError};
use crate::kube_api::{code, outcome};
use crate::remediation::{labels, RemediationRequest, RemediationRequestStatus, StatusUpdate};
use crate::section::ConfigError;
use crate::signal::Fingerprint;
use crate::state::BoxFuture;
use crate::telemetry::{ApiLabels, Metrics};
use crate::workload::NamespaceLabels;
use prometheus_client::metrics::gauge::Gauge;

/// `kube`: how the sink and the owner lookups talk to the API server.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KubeConfig {
    /// One API call's timeout. A create is given all of `kube.deadline` instead,
    /// so a slow API server sees it once; past this timeout the watch showing its
    /// object answers for it.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub call_timeout: Duration,
    /// One operation's budget, retries of 5xx/429/timeouts included; past it the
    /// caller gets 503.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub deadline: Duration,
    /// Consecutive failed operations that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls (and keeps `/readyz` at 503).
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub breaker_cooldown: Duration,
    /// How long start-up waits for the first list of requests and namespaces.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub sync_timeout: Duration,
    /// Attribute a signal about a Pod (or ReplicaSet, Job) to its top controller
    /// (Deployment, StatefulSet, DaemonSet, CronJob) through ownerReferences, so that
    /// a workload's pods are one incident.
    pub owner_chain: bool,
    /// How long one owner lookup the caches cannot answer may take (one GET); past
    /// it the signal keeps the pod's identity.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub owner_lookup_timeout: Duration,
    /// Most creates of requests sent to the API server at once; more wait their
    /// turn here, so a burst does not make a slow API server slower.
    pub creates_in_flight: usize,
}

impl Default for KubeConfig {
    fn default() -> Self {
        KubeConfig {
            call_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(5),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(10),
            sync_timeout: Duration::from_secs(30),
            owner_chain: true,
            owner_lookup_timeout: Duration::from_millis(500),
            creates_in_flight: 16,
        }
    }
}

impl KubeConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.call_timeout < Duration::from_millis(10) || self.deadline < self.call_timeout {
            return Err(ConfigError::invalid(
                "kube.deadline",
                "must be at least kube.call_timeout (itself at least 10ms)",
            ));
        }
        if self.breaker_failures == 0 {
            return Err(ConfigError::invalid("kube.breaker_failures", "must be at least 1"));
        }
        if self.creates_in_flight == 0 {
            return Err(ConfigError::invalid("kube.creates_in_flight", "must be at least 1"));
        }
        Ok(())
    }
}

/// Annotation with which each create marks its request (a random token), so that a
/// retried create recognises its own earlier attempt.
pub const CREATE_MARK: &str = "tidegate.dev/create-id";

/// Requests the watch reported deleted that this replica remembers, at most. Past
/// it the oldest are forgotten: one of those repeated within the dedup window
/// would look merely unseen, and be created again under its old name.
const DELETED_REMEMBERED: usize = 10_000;

pub struct KubeSink {
    client: Client,
    requests: Store<RemediationRequest>,
    /// The watched requests by fingerprint, for [`Sink::open_request`] and
    /// [`Sink::last_request`].
    index: Arc<index::FingerprintIndex>,
    deleted: Arc<Mutex<Deleted>>,
    namespaces: Store<Namespace>,
    breaker: Breaker,
    /// Turns to send a create (`kube.creates_in_flight`).
    creates: tokio::sync::Semaphore,
    /// Told whenever the watch has put requests in `requests`, for a create waiting
    /// to see its own object land.
    applied: tokio::sync::watch::Sender<()>,
    config: KubeConfig,
    metrics: Arc<Metrics>,
}

impl KubeSink {
    /// Starts the watches and waits (up to `kube.sync_timeout`) until both caches
    /// have listed once: before that, the cache could not vouch for open incidents.
    pub async fn start(client: Client, config: &KubeConfig, metrics: Arc<Metrics>) -> Result<Self, SinkError> {
        let sync_timeout = config.sync_timeout;
        let managed = format!("{}=tidegate", labels::MANAGED_BY);
        let (requests, writer) = reflector::store();
        let deleted = Arc::new(Mutex::new(Deleted::default()));
        let mut deletions = Deletions { deleted: deleted.clone(), store: requests.clone(), before_relist: None };
        let index = Arc::new(index::FingerprintIndex::new());
        let follower = index.clone();
        let applied = tokio::sync::watch::Sender::new(());
        let announcer = applied.clone();
        let stream =
            watcher(Api::<RemediationRequest>::all(client.clone()), watcher::Config::default().labels(&managed))
                .default_backoff()
                // managedFields are a large part of each cached request, and nothing
                // here reads them; a status write without them keeps the server's.
                .modify(|rr| rr.managed_fields_mut().clear())
                .reflect(writer)
                .inspect(move |event| {
                    follower.follow(event);
                    deletions.follow(event);
                    // After a re-list the store holds its objects only from
                    // `InitDone` on, not at each `InitApply`.
                    if let Ok(watcher::Event::Apply(_) | watcher::Event::InitDone) = event {
                        announcer.send_replace(());
                    }
                });
        tokio::spawn(drain(stream, "remediationrequests"));
        let (namespaces, writer) = reflector::store();
        let stream = watcher(Api::<Namespace>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .applied_objects();
        tokio::spawn(drain(stream, "namespaces"));
        let synced = async {
            requests.wait_until_ready().await.ok();
            namespaces.wait_until_ready().await.ok();
        };
        tokio::time::timeout(sync_timeout, synced).await.map_err(|_| SinkError::NotSynced(sync_timeout))?;
        let breaker = Breaker::new(config.breaker_failures, config.breaker_cooldown, metrics.kube_breaker_open.clone());
        let creates = tokio::sync::Semaphore::new(config.creates_in_flight);
        Ok(KubeSink {
            client,
            requests,
            index,
            deleted,
            namespaces,
            breaker,
            creates,
            applied,
            config: config.clone(),
            metrics,
        })
    }

    /// The namespace-label view, for environment classification.
    pub fn namespace_labels(&self) -> Arc<dyn NamespaceLabels> {
        Arc::new(NamespaceCache(self.namespaces.clone()))
    }

    /// The `tidegate.dev/remediate` labels of namespaces, for scope, from the same
    /// cache.
    pub fn remediate_labels(&self) -> Arc<dyn crate::workload::RemediateLabels> {
        Arc::new(NamespaceCache(self.namespaces.clone()))
    }

    fn api(&self, namespace: &str) -> Api<RemediationRequest> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Runs one API operation with the call timeout, retries, backoff and the
    /// breaker.
    async fn call<T, F, Fut>(&self, verb: &'static str, op: F) -> Result<T, kube::Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        self.call_within(verb, self.config.call_timeout, op).await
    }

    /// [`Self::call`] with `timeout` for each attempt, cut to what is left of the
    /// operation's deadline.
    async fn call_within<T, F, Fut>(&self, verb: &'static str, timeout: Duration, op: F) -> Result<T, kube::Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            if !self.breaker.allow() {
                self.count(verb, "circuit_open");
                return Err(unavailable("the circuit breaker is open: the API server has been failing"));
            }
            let left = self.config.deadline.saturating_sub(started.elapsed());
            let result = match tokio::time::timeout(timeout.min(left), op()).await {
                Ok(result) => result.map_err(|e| (outcome(&e), e)),
                Err(_) => Err(("timeout", unavailable("the API call timed out"))),
            };
            match result {
                Ok(value) => {
                    self.breaker.success();
                    self.count(verb, "ok");
                    return Ok(value);
                }
                Err((counted, e)) if retryable(&e) => {
                    self.count(verb, counted);
                    attempt += 1;
                    let backoff = jittered(Duration::from_millis(50) * 2u32.saturating_pow(attempt.min(6)));
                    if started.elapsed() + backoff >= self.config.deadline {
                        self.breaker.failure();
                        return Err(e);
                    }
                    tracing::debug!(verb, attempt, error = %e, ?backoff, "retrying the Kubernetes API");
                    tokio::time::sleep(backoff).await;
                }
                Err((counted, e)) => {
                    // A definite answer (404, 409, 422...) means the server is healthy.
                    self.breaker.success();
                    self.count(verb, counted);
                    return Err(e);
                }
            }
        }
    }

    /// The request at `at` made by the create marked `mark`, once the watch shows
    /// it, looked for from a call timeout on: before that, the create's own answer
    /// is the expected one.
    async fn landed(&self, at: &RequestRef, mark: &str) -> RemediationRequest {
        tokio::time::sleep(self.config.call_timeout).await;
        let mut applied = self.applied.subscribe();
        loop {
            if let Some(rr) = self.cached(at).filter(|rr| made_by(rr, mark)) {
                self.count("create", "landed");
                return (*rr).clone();
            }
            // Never an error: `self` holds the sender.
            let _ = applied.changed().await;
        }
    }

    /// The request at `at` in the watch cache.
    fn cached(&self, at: &RequestRef) -> Option<Arc<RemediationRequest>> {
        self.requests.get(&ObjectRef::new(&at.name).within(&at.namespace))
    }

    /// A clone of every open request of a single incident in the watch cache that
    /// `wanted` keeps.
    fn open_cached(&self, wanted: impl Fn(&RemediationRequest) -> bool) -> Vec<RemediationRequest> {
        let open = self.requests.state().into_iter();
        open.filter(|rr| !terminal(rr) && rr.spec.storm.is_none() && wanted(rr)).map(|rr| (*rr).clone()).collect()
    }

    fn count(&self, verb: &'static str, outcome: &'static str) {
        self.metrics.api_calls.get_or_create(&ApiLabels { verb, outcome }).inc();
    }

    /// Applies `apply` to the gateway-owned fields of the status of the request at
    /// `at`, starting from `known` (an object just returned by the API server) or
    /// the watch cache, and reading from the API server only when neither has it or
    /// a write conflicts. Every `apply` is idempotent, so a write retried after an
    /// unclear outcome changes nothing twice.
    async fn write_status(
        &self,
        at: &RequestRef,
        apply: impl Fn(&mut RemediationRequestStatus),
        known: Option<RemediationRequest>,
    ) -> Result<RemediationRequest, SinkError> {
        let api = self.api(&at.namespace);
        let mut cached = known.or_else(|| self.cached(at).map(|rr| (*rr).clone()));
        for _ in 0..5 {
            let current = match cached.take() {
                Some(rr) => rr,
                None => match self.call("get", || api.get(&at.name)).await {
                    Ok(rr) => rr,
                    Err(e) if code(&e) == Some(404) => return Err(SinkError::NotFound(at.clone())),
                    Err(e) => return Err(sink_error(e)),
                },
            };
            let mut next = current.clone();
            apply(next.status.get_or_insert_with(Default::default));
            if next.status == current.status {
                return Ok(current); // Nothing new: the cheapest write is none.
            }
            let pp = PostParams::default();
            match self.call("update_status", || api.replace_status(&at.name, &pp, &next)).await {
                Ok(written) => return Ok(written),
                // Someone wrote since we read (or the cache was stale): read again.
                Err(e) if code(&e) == Some(409) => continue,
                Err(e) if code(&e) == Some(404) => return Err(SinkError::NotFound(at.clone())),
                Err(e) => return Err(sink_error(e)),
            }
        }
        Err(SinkError::Conflicting(at.clone()))
    }

    /// Sets or removes the `tidegate.dev/flapping` label as the status of `written`
    /// (the request as a status write left it) calls for. A merge patch of the
    /// label alone, conditional on the object being as read: a status written in
    /// between (another replica's mark or clearing) makes it read again and decide
    /// anew, so the label always ends as the last status says.
    async fn label_flapping(&self, at: &RequestRef, written: RemediationRequest) -> Result<(), SinkError> {
        let api = self.api(&at.namespace);
        let mut current = written;
        for _ in 0..5 {
            let wanted = crate::remediation::flapping_label(current.status.as_ref());
            if current.labels().get(labels::FLAPPING).map(String::as_str) == wanted {
                return Ok(());
            }
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": current.resource_version(), "labels": { labels::FLAPPING: wanted } }
            });
            let pp = PatchParams::default();
            let (api, pp, patch) = (&api, &pp, &patch);
            match self.call("patch", || async move { api.patch(&at.name, pp, &Patch::Merge(patch)).await }).await {
                Ok(_) => return Ok(()),
                Err(e) if code(&e) == Some(409) => {}
                Err(e) if code(&e) == Some(404) => return Err(SinkError::NotFound(at.clone())),
                Err(e) => return Err(sink_error(e)),
            }
            current = match self.call("get", || api.get(&at.name)).await {
                Ok(rr) => rr,
                Err(e) if code(&e) == Some(404) => return Err(SinkError::NotFound(at.clone())),
                Err(e) => return Err(sink_error(e)),
            };
        }
        Err(SinkError::Conflicting(at.clone()))
    }
}

/// Requests the watch reported deleted, oldest first, bounded.
#[derive(Default)]
struct Deleted {
    set: HashSet<RequestRef>,
    order: VecDeque<RequestRef>,
}

impl Deleted {
    fn contains(&self, at: &RequestRef) -> bool {
        self.set.contains(at)
    }
}

fn lock(deleted: &Mutex<Deleted>) -> std::sync::MutexGuard<'_, Deleted> {
    deleted.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps [`Deleted`] in step with the watch of requests, which the reflector has
/// applied to `store` by the time an event gets here.
struct Deletions {
    deleted: Arc<Mutex<Deleted>>,
    store: Store<RemediationRequest>,
    /// The requests cached when a re-list began (after a watch gap or `410 Gone`).
    before_relist: Option<HashSet<RequestRef>>,
}

impl Deletions {
    /// A delete event adds its request; so does a re-list that no longer has a
    /// request cached before it (deleted while no watch was open). A request seen
    /// again (re-created under its name) leaves the set.
    fn follow(&mut self, event: &Result<watcher::Event<RemediationRequest>, watcher::Error>) {
        match event {
            Ok(watcher::Event::Delete(rr)) => self.gone(reference(rr)),
            Ok(watcher::Event::Apply(rr) | watcher::Event::InitApply(rr)) => {
                if let Some(at) = reference(rr) {
                    let mut deleted = lock(&self.deleted);
                    if deleted.set.remove(&at) {
                        deleted.order.retain(|d| *d != at);
                    }
                }
            }
            Ok(watcher::Event::Init) => {
                self.before_relist = Some(self.store.state().iter().filter_map(|rr| reference(rr)).collect());
            }
            Ok(watcher::Event::InitDone) => {
                let Some(before) = self.before_relist.take() else { return };
                let now: HashSet<RequestRef> = self.store.state().iter().filter_map(|rr| reference(rr)).collect();
                for at in before.into_iter().filter(|at| !now.contains(at)) {
                    self.gone(Some(at));
                }
            }
            Err(_) => {}
        }
    }

    fn gone(&self, at: Option<RequestRef>) {
        let Some(at) = at else { return };
        let mut deleted = lock(&self.deleted);
        if deleted.set.insert(at.clone()) {
            deleted.order.push_back(at);
        }
        while deleted.order.len() > DELETED_REMEMBERED {
            if let Some(old) = deleted.order.pop_front() {
                deleted.set.remove(&old);
            }
        }
    }
}

fn reference(rr: &RemediationRequest) -> Option<RequestRef> {
    Some(RequestRef { namespace: rr.namespace()?, name: rr.name_any() })
}

async fn drain<S: futures::Stream<Item = Result<T, watcher::Error>> + Send, T>(stream: S, what: &'static str) {
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        if let Err(e) = event {
            tracing::warn!(error = %e, "watch of {what} failed; it will resume");
        }
    }
}

impl Sink for KubeSink {
    fn create<'a>(&'a self, request: &'a RemediationRequest) -> BoxFuture<'a, Result<Created, SinkError>> {
        Box::pin(async move {
            let namespace = request.namespace().unwrap_or_else(|| "default".into());
            let at = RequestRef { namespace: namespace.clone(), name: request.name_any() };
            let api = self.api(&namespace);
            let pp = PostParams::default();
            // A mark of this create, to know its own object from someone else's:
            // in the watch when its answer is late, and in the 409 of a retry after
            // a 5xx or a broken connection that came after it landed.
            let mark = uuid::Uuid::new_v4().simple().to_string();
            let mut marked = request.clone();
            marked.annotations_mut().insert(CREATE_MARK.into(), mark.clone());
            let attempts = AtomicU32::new(0);
            let attempt = || {
                attempts.fetch_add(1, Ordering::Relaxed);
                api.create(&pp, &marked)
            };
            // The reply carries the resourceVersion the status write needs: the new
            // object is usually not in the watch cache yet (unless `landed` answers),
            // and reading it back would cost a GET.
            // The wait for a turn is not the API server's time: it counts against no
            // call timeout, so a queued create is never sent twice for having waited.
            // (The semaphore is never closed, so a turn always comes.)
            let turn = self.creates.acquire().await.ok();
            // A create slow to answer is given the operation's whole deadline, not
            // cancelled at the call timeout and sent again: the API server is slow
            // already (a cold one takes seconds over its first creates), and a
            // second copy only adds to its work. One that landed while its answer is
            // late shows in the watch, which answers for it past the call timeout.
            let outcome = tokio::select! {
                outcome = self.call_within("create", self.config.deadline, attempt) => outcome,
                landed = self.landed(&at, &mark) => Ok(landed),
            };
            drop(turn);
            let created = match outcome {
                Ok(created) => created,
                Err(e) if code(&e) == Some(409) && attempts.load(Ordering::Relaxed) > 1 => {
                    match self.call("get", || api.get(&at.name)).await {
                        Ok(existing) if made_by(&existing, &mark) => existing,
                        _ => return Ok(Created::AlreadyExists),
                    }
                }
                Err(e) if code(&e) == Some(409) => return Ok(Created::AlreadyExists),
                Err(e) => return Err(sink_error(e)),
            };
            // The API server drops status on create (it is a subresource).
            if let Some(built) = &request.status {
                let written = self.write_status(&at, |status| status.merge(built), Some(created)).await?;
                if built.flapping() {
                    self.label_flapping(&at, written).await?;
                }
            }
            Ok(Created::Created)
        })
    }

    fn update_status<'a>(
        &'a self,
        at: &'a RequestRef,
        update: &'a StatusUpdate,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let written = self.write_status(at, |status| status.apply(update), None).await?;
            if update.flap.is_some() {
                self.label_flapping(at, written).await?;
            }
            Ok(())
        })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            if self.breaker.is_open() {
                return Err(SinkError::CircuitOpen);
            }
            Ok(())
        })
    }

    fn lookup(&self, at: &RequestRef) -> Lookup {
        match self.cached(at) {
            Some(rr) => phase(&rr).lookup(prior_failures(&rr)),
            None if lock(&self.deleted).contains(at) => Lookup::Deleted,
            None => Lookup::Missing,
        }
    }

    fn last_request(&self, fingerprint: &Fingerprint) -> Option<LastRequest> {
        self.index.last_request(fingerprint)
    }

    /// A clone of every open request: asked at start and once per dedup window
    /// (the inhibit rules' recovery), never per alert.
    fn open_requests(&self) -> BoxFuture<'_, Result<Vec<RemediationRequest>, SinkError>> {
        Box::pin(std::future::ready(Ok(self.open_cached(|_| true))))
    }

    /// Clones only the flapping ones.
    fn flapping_requests(&self) -> BoxFuture<'_, Result<Vec<RemediationRequest>, SinkError>> {
        Box::pin(std::future::ready(Ok(self.open_cached(crate::remediation::marked_flapping))))
    }

    fn open_request(&self, fingerprint: &Fingerprint) -> Option<OpenRequest> {
        self.index.open_request(fingerprint)
    }
}

/// Whether `rr` is the object of the create marked `mark` ([`CREATE_MARK`]).
fn made_by(rr: &RemediationRequest, mark: &str) -> bool {
    rr.annotations().get(CREATE_MARK).is_some_and(|m| m == mark)
}

fn terminal(rr: &RemediationRequest) -> bool {
    is_terminal(rr.status.as_ref().and_then(|s| s.phase.as_deref()))
}

fn phase(rr: &RemediationRequest) -> Phase {
    Phase::of(rr.status.as_ref().and_then(|s| s.phase.as_deref()))
}

fn prior_failures(rr: &RemediationRequest) -> u32 {
    rr.status.as_ref().and_then(|s| s.backoff.as_ref()).map_or(0, |b| b.prior_failures)
}

struct NamespaceCache(Store<Namespace>);

impl NamespaceLabels for NamespaceCache {
    fn environment(&self, namespace: &str) -> Option<String> {
        self.0.get(&ObjectRef::new(namespace))?.labels().get("environment").cloned()
    }
}

impl crate::workload::RemediateLabels for NamespaceCache {
    /// Workloads' labels are not cached: their namespace decides.
    fn workload(&self, _target: &crate::signal::TargetResource) -> Option<bool> {
        None
    }

    fn reads_workload(&self, _kind: &str) -> bool {
        false
    }

    fn namespace(&self, namespace: &str) -> Option<bool> {
        let ns = self.0.get(&ObjectRef::new(namespace))?;
        crate::workload::remediate_value(ns.labels().get(crate::workload::REMEDIATE_LABEL).map(String::as_str))
    }
}

fn retryable(e: &kube::Error) -> bool {
    match code(e) {
        Some(c) => c == 429 || c >= 500,
        None => true, // transport failures and timeouts
    }
}

fn unavailable(reason: &str) -> kube::Error {
    kube::Error::Service(reason.to_string().into())
}

fn sink_error(e: kube::Error) -> SinkError {
    match code(&e) {
        Some(422) => SinkError::Rejected(e),
        _ => SinkError::Unavailable(e),
    }
}

/// Full jitter on the upper half: spreads retries of many callers apart.
fn jittered(d: Duration) -> Duration {
    let noise = uuid::Uuid::new_v4().as_u128() as u64 % 1000;
    d / 2 + d.mul_f64(noise as f64 / 2000.0)
}

/// Consecutive-failure circuit breaker.
struct Breaker {
    /// `tidegate_kube_breaker_open`: 1 from opening until a call succeeds.
    open: Gauge,
    failures: AtomicU32,
    threshold: u32,
    cooldown: Duration,
    /// When the circuit opened, in ms since `epoch`; 0 when closed.
    opened_ms: AtomicU64,
    epoch: Instant,
}

impl Breaker {
    fn new(threshold: u32, cooldown: Duration, open: Gauge) -> Self {
        Breaker {
            open,
            failures: AtomicU32::new(0),
            threshold,
            cooldown,
            opened_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn is_open(&self) -> bool {
        let opened = self.opened_ms.load(Ordering::Relaxed);
        opened != 0 && self.now_ms() - opened < self.cooldown.as_millis() as u64
    }

    /// Closed, or open long enough that one probe may pass.
    fn allow(&self) -> bool {
        !self.is_open()
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.opened_ms.store(0, Ordering::Relaxed);
        self.open.set(0);
    }

    fn failure(&self) {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= self.threshold {
            self.opened_ms.store(self.now_ms(), Ordering::Relaxed);
            self.open.set(1);
        }
    }
}
