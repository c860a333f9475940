//! The status writer: each request's status, and each silence's, written at most
//! once per interval.
//!
//! A storm of duplicates must not become a storm of writes. The first update for a
//! request schedules one write `interval` later; updates arriving before then are
//! merged into it (counts and times only move forward), so each request is written
//! at most once per interval and the write always carries the latest count. A write
//! that fails is retried with backoff, and [`StatusWriter::shutdown`] writes everything
//! still pending before the process exits.
//!
//! Silences' statuses (`matchedSignals`, `lastMatchedAt`, their state) go through the
//! same queue, under [`Incident::Silence`]: a thousand silenced alerts are one write
//! per silence per interval, sharing the per-second cap, the retries and the drain
//! at shutdown with the requests' writes, through the [`SilenceStore`] instead of the
//! sink. They differ in one rule only: a silence not found was deleted (the gateway
//! counts only silences it was shown), so its change is dropped at once, where a
//! request not found may still be being created. Must never write a silence's
//! status by another way: two writers would each take the cap for themselves.
//!
//! Updates carry counts as tallies: each counts what this process counted of the
//! incident, in all, under a writer id of its own. The request's status adds each
//! writer's tally once (`RemediationRequestStatus::apply`), so a write retried after
//! an unclear outcome counts nothing twice, replicas never hide each other's counts,
//! and the state store losing its counts (a restart, a failover) costs none: it
//! decides which request an alert belongs to, never how many occurrences it has.
//! What a process counted and had not written when it died is what is lost.
//!
//! Writes across all requests are also capped per second: ten thousand open
//! incidents each repeating every few seconds must not become ten thousand writes a
//! second to an API server. Writes over the cap wait, due, and keep absorbing newer
//! counts, so the cap delays counts and never loses them
//! (`tidegate_status_write_lag_seconds` says how late writes go out). The cap is
//! `status_writer.max_writes_per_s` if set; unset, it is what the sink says it
//! affords ([`Sink::affordable_status_writes`]: the directory sink measures the CPU
//! its writes take), or [`DEFAULT_MAX_WRITES_PER_S`] for a sink that cannot say (the
//! Kubernetes API server's load is not measured from here). Letting the directory
//! sink's writes go as fast as they completed, without a cap, cost a third of the
//! ingest bench's throughput (docs/performance.md).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

// foldhash is seeded per process; the table is hit once per duplicate alert.
use foldhash::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

use crate::remediation::{RemediationRequest, StatusUpdate};
use crate::section::ConfigError;
use crate::signal::Fingerprint;
use crate::silence::store::{SilenceStore, StatusChange, StoreError};
use crate::silence::SilenceRef;
use crate::sink::{Created, RequestRef, Sink, SinkError};
use crate::telemetry::{trace, Metrics, SinkLabels, WriterLabels};

/// Longest wait between retries of a failing write. Short, because what waits is
/// what a crash would lose, and retries cannot hammer the sink: they share the
/// per-second write cap with every other write, and an open circuit answers them
/// without a call.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A request not found may still be being created (by this replica's pipeline or
/// another replica): retry this many times, with backoff, before giving up.
const NOT_FOUND_ATTEMPTS: u32 = 5;
/// Writes in flight at once.
const CONCURRENCY: usize = 32;
/// Status writes per second in all, with `status_writer.max_writes_per_s` unset and
/// a sink that does not say what it affords (the Kubernetes sink).
pub const DEFAULT_MAX_WRITES_PER_S: u32 = 200;
/// How long this process keeps counting an incident it no longer sees. A repeat
/// after that starts a tally under a new writer id, which is correct (tallies add
/// up) and costs an entry of the request's tally list. A process starts at most one
/// writer per incident per horizon, so however long the horizon, a request's list of
/// 16 drops only tallies whose process has forgotten them, unless more than about 8
/// processes count one incident at once.
const TALLY_HORIZON: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct StatusWriter {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// This process's half of its writer ids: random, so that processes (and
    /// restarts) never share one.
    process: u32,
    /// `status_writer.max_writes_per_s`, if set.
    max_per_s: Option<f64>,
    wake: Notify,
    drained: Notify,
    sink: Arc<dyn Sink>,
    /// Where silences' statuses are written, once silences are honoured.
    silence_store: std::sync::OnceLock<Arc<dyn SilenceStore>>,
    interval: Duration,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Inner {
    budget: Budget,
    /// Each incident's pending write, and what this process counted of each
    /// incident it saw within the tally horizon.
    incidents: Incidents,
    due: BinaryHeap<Reverse<(Instant, Incident)>>,
    /// Writes under way.
    in_flight: HashSet<Incident>,
    /// Writer ids handed out: the low half of the next one.
    writers: u32,
    /// When tallies past the horizon are next dropped.
    sweep_at: Option<Instant>,
    draining: bool,
}

/// What this process keeps of each incident (and of each silence's writes, whose
/// key is an [`Incident::Silence`]), in one table: a duplicate alert finds its
/// incident's tally and pending write in one lookup. With thousands of
/// incidents repeating, each lookup is a cache miss or two, and a second table
/// cost as much again (docs/performance.md).
#[derive(Default)]
struct Incidents {
    table: HashMap<Incident, Tracked>,
    /// Entries with a write pending.
    pending: usize,
    /// Entries with a tally.
    tallies: usize,
}

/// One incident's entry: never both `None` while in the table.
#[derive(Default)]
struct Tracked {
    pending: Option<Pending>,
    tally: Option<Counted>,
}

impl Incidents {
    fn pending(&self, incident: &Incident) -> Option<&Pending> {
        self.table.get(incident)?.pending.as_ref()
    }

    fn pending_mut(&mut self, incident: &Incident) -> Option<&mut Pending> {
        self.table.get_mut(incident)?.pending.as_mut()
    }

    #[cfg(test)]
    fn tally(&self, incident: &Incident) -> Option<&Counted> {
        self.table.get(incident)?.tally.as_ref()
    }

    /// Sets `incident`'s pending write, over any pending already.
    fn put_pending(&mut self, incident: Incident, pending: Pending) {
        if self.table.entry(incident).or_default().pending.replace(pending).is_none() {
            self.pending += 1;
        }
    }

    /// Takes `incident`'s pending write; its tally stays.
    fn take_pending(&mut self, incident: &Incident) -> Option<Pending> {
        let tracked = self.table.get_mut(incident)?;
        let taken = tracked.pending.take()?;
        self.pending -= 1;
        if tracked.tally.is_none() {
            self.table.remove(incident);
        }
        Some(taken)
    }

    /// Drops the tallies `stale` picks, except where a write is pending.
    fn sweep(&mut self, mut stale: impl FnMut(&Incident, &Counted) -> bool) {
        let tallies = &mut self.tallies;
        self.table.retain(|incident, tracked| {
            if tracked.pending.is_none() && tracked.tally.as_ref().is_some_and(|t| stale(incident, t)) {
                tracked.tally = None;
                *tallies -= 1;
            }
            tracked.pending.is_some() || tracked.tally.is_some()
        });
    }
}

/// One writer's count of one incident.
struct Counted {
    writer: u64,
    count: u64,
    /// Signals this process held back on the incident's request by inhibition.
    inhibited: u64,
    seen: Instant,
}

/// A token bucket of writes: refills at `max_per_s`, holds at most one second's worth.
#[derive(Default)]
struct Budget {
    tokens: f64,
    at: Option<Instant>,
}

/// Which incident a status write is for: what its request's name is derived from
/// (or which silence, for a silence's status).
/// Fixed-size, so that the pending table compares keys without following pointers:
/// it is hit once per duplicate alert, and comparing stored names cost a cache miss
/// each time. 40 bytes, as before silences shared the table: no variant may
/// outgrow `Signal`'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Incident {
    /// A signal's incident: its fingerprint and first-seen second.
    Signal(Fingerprint, u32),
    /// A storm's aggregation window: its scope and opening second.
    Storm([u8; 16], u32),
    /// A silence: 128 bits of the digest of its namespace and name (see
    /// [`Incident::silence`]); the name itself is kept with the pending write.
    Silence([u8; 16]),
}

const _: () = assert!(std::mem::size_of::<Incident>() == 40, "the pending table's key grew");

impl Incident {
    /// The key of `silence`'s status writes.
    fn silence(silence: &SilenceRef) -> Incident {
        let digest = crate::state::digest(&[&silence.namespace, &silence.name]);
        Incident::Silence(digest[..16].try_into().expect("16 of 32"))
    }
}

struct Pending {
    write: Write,
    attempts: u32,
}

/// What a pending write writes.
enum Write {
    Request {
        /// The request to write; the first one given for the incident.
        at: RequestRef,
        update: StatusUpdate,
        /// Set when the request may not exist yet (its create failed): the write then
        /// creates it, so an acknowledged incident always gets its request.
        create: Option<Box<RemediationRequest>>,
    },
    Silence {
        at: SilenceRef,
        change: StatusChange,
    },
}

impl Write {
    /// Folds `later`, a write for the same key, into this one.
    fn merge(&mut self, later: Write) {
        match (self, later) {
            (Write::Request { update, create, .. }, Write::Request { update: later, create: made, .. }) => {
                update.merge(&later);
                if create.is_none() {
                    *create = made;
                }
            }
            (Write::Silence { change, .. }, Write::Silence { change: later, .. }) => change.merge(later),
            // One key is one request or one silence, never both.
            _ => {}
        }
    }

    /// Failed writes of a missing object to retry before dropping them: a request
    /// may be being created still; a silence the gateway was shown was deleted.
    fn not_found_attempts(&self) -> u32 {
        match self {
            Write::Request { .. } => NOT_FOUND_ATTEMPTS,
            Write::Silence { .. } => 1,
        }
    }

    /// The `op` its outcome is counted under in `tidegate_sink_writes_total`.
    fn op(&self) -> &'static str {
        match self {
            Write::Request { .. } => "update_status",
            Write::Silence { .. } => SILENCE_OP,
        }
    }
}

/// The `op` of silences' status writes in `tidegate_sink_writes_total`.
pub const SILENCE_OP: &str = "update_silence_status";

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Silence(#[from] StoreError),
}

impl WriteError {
    fn label(&self) -> &'static str {
        match self {
            WriteError::Sink(e) => e.label(),
            WriteError::Silence(e) => e.label(),
        }
    }

    fn not_found(&self) -> bool {
        matches!(self, WriteError::Sink(SinkError::NotFound(_)) | WriteError::Silence(StoreError::NotFound(_)))
    }
}

/// `status_writer`: how often repeats are written to their requests, and matches to
/// their silences.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StatusWriterConfig {
    /// At most one status write per RemediationRequest, and per RemediationSilence,
    /// per interval; duplicates (and a silence's matches) in between are merged into
    /// the next write. Was `dedup.status_interval`.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// Status writes per second across all requests and silences, at most: bounds
    /// the load on the API server or the disk when many incidents repeat at once;
    /// counts wait, they are not lost. Unset: 200 with the Kubernetes sink; with the
    /// directory sink, what 3 % of the cores afford at the measured CPU cost of a
    /// write (about 200 on 2 cores). Was `dedup.max_status_writes_per_s`.
    pub max_writes_per_s: Option<u32>,
}

impl Default for StatusWriterConfig {
    fn default() -> Self {
        StatusWriterConfig { interval: Duration::from_secs(1), max_writes_per_s: None }
    }
}

impl StatusWriterConfig {
    /// `window` is `dedup.window`: a write per window at least.
    pub fn validate(&self, window: Duration) -> Result<(), ConfigError> {
        if self.interval < Duration::from_millis(10) || self.interval > window {
            return Err(ConfigError::invalid(
                "status_writer.interval",
                "must be at least 10ms and no longer than dedup.window",
            ));
        }
        if self.max_writes_per_s == Some(0) {
            return Err(ConfigError::invalid("status_writer.max_writes_per_s", "must be at least 1"));
        }
        Ok(())
    }
}

impl StatusWriter {
    /// Starts the writer task. Must be called within a tokio runtime.
    /// A status writer writing at most once per `status_writer.interval` per request
    /// and `status_writer.max_writes_per_s` in all (unset: what the sink affords).
    pub fn new(sink: Arc<dyn Sink>, config: &StatusWriterConfig, metrics: Arc<Metrics>) -> Self {
        let (interval, max_per_s) = (config.interval, config.max_writes_per_s.map(|n| n.max(1) as f64));
        let process = process_id();
        metrics.status_writer.get_or_create(&WriterLabels { writer: format!("{process:08x}") }).set(1);
        let first = max_per_s.or_else(|| sink.affordable_status_writes()).unwrap_or(DEFAULT_MAX_WRITES_PER_S as f64);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner { budget: Budget { tokens: first, at: Some(Instant::now()) }, ..Inner::default() }),
            max_per_s,
            process,
            wake: Notify::new(),
            drained: Notify::new(),
            sink,
            silence_store: std::sync::OnceLock::new(),
            interval,
            metrics,
        });
        tokio::spawn(writer(shared.clone()));
        StatusWriter { shared }
    }

    /// Schedules `update` for `incident`'s request, at `at`.
    pub fn record(&self, incident: Incident, at: &RequestRef, update: StatusUpdate) {
        self.enqueue(incident, at, update, None, false);
    }

    /// Counts one more repeat of `incident` by this process, and schedules `update`
    /// for its request carrying this process's tally: everything it counted of it.
    pub fn repeat(&self, incident: Incident, at: &RequestRef, update: StatusUpdate) {
        self.enqueue(incident, at, update, None, true);
    }

    /// Counts one more signal this process held back on `incident`'s request by
    /// inhibition, and schedules `update` for it carrying this process's tally of
    /// held-back signals (under the writer id of its repeats: one writer per
    /// process and incident).
    pub fn inhibited(&self, incident: Incident, at: &RequestRef, update: StatusUpdate) {
        self.enqueue(incident, at, update, None, false);
    }

    /// Schedules the creation of `request` (whose direct create failed), followed by
    /// `update` if it already exists by then.
    pub fn record_create(
        &self,
        incident: Incident,
        request: RemediationRequest,
        at: &RequestRef,
        update: StatusUpdate,
    ) {
        self.enqueue(incident, at, update, Some(Box::new(request)), false);
    }

    /// Whether this replica is still trying to create `incident`'s request (its
    /// direct create failed), or is writing it right now: a request the sink does not
    /// have yet is then not a deleted one.
    pub fn creating(&self, incident: &Incident) -> bool {
        let inner = self.shared.lock();
        let creates = |p: &Pending| matches!(p.write, Write::Request { create: Some(_), .. });
        inner.incidents.pending(incident).is_some_and(creates) || inner.in_flight.contains(incident)
    }

    /// Writes silences' statuses to `store` from now on. Set once, before the first
    /// [`StatusWriter::silence`]; a later store is ignored.
    pub fn write_silences_to(&self, store: Arc<dyn SilenceStore>) {
        let _ = self.shared.silence_store.set(store);
    }

    /// Schedules `change` for the status of the silence at `at`, coalesced, capped
    /// and retried as requests' writes are. Its count is the writer's whole tally
    /// (see [`StatusChange`]), so a retried write counts nothing twice.
    pub fn silence(&self, at: &SilenceRef, change: StatusChange) {
        let incident = Incident::silence(at);
        let mut inner = self.shared.lock();
        match inner.incidents.pending_mut(&incident) {
            // Merged in place, as a request's repeat is: the name is not cloned per match.
            Some(Pending { write: Write::Silence { change: pending, .. }, .. }) => {
                pending.merge(change);
                self.shared.metrics.status_coalesced.inc();
            }
            _ => {
                if self.schedule(incident, Write::Silence { at: at.clone(), change }, &mut inner) {
                    drop(inner);
                    self.shared.wake.notify_one();
                }
            }
        }
    }

    /// Requests with a write pending.
    pub fn pending(&self) -> usize {
        self.shared.lock().incidents.pending
    }

    /// Writes everything pending now and waits until done, or until `deadline`.
    pub async fn shutdown(&self, deadline: Duration) {
        let drained = self.shared.drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        {
            let mut inner = self.shared.lock();
            inner.draining = true;
            if inner.incidents.pending == 0 && inner.in_flight.is_empty() {
                return;
            }
        }
        self.shared.wake.notify_one();
        if tokio::time::timeout(deadline, drained).await.is_err() {
            tracing::error!(
                pending = self.pending(),
                "status writes still pending at shutdown deadline; they are lost"
            );
        }
    }

    fn enqueue(
        &self,
        incident: Incident,
        at: &RequestRef,
        mut update: StatusUpdate,
        create: Option<Box<RemediationRequest>>,
        repeat: bool,
    ) {
        let shared = &self.shared;
        let now = Instant::now();
        let mut guard = shared.lock();
        guard.sweep(now);
        let Inner { incidents, writers, .. } = &mut *guard;
        // One lookup for the tally and the pending write: see [`Incidents`].
        let tracked = incidents.table.entry(incident).or_default();
        if repeat || update.inhibited.is_some() {
            let tally = tracked.tally.get_or_insert_with(|| {
                incidents.tallies += 1;
                *writers = writers.wrapping_add(1);
                Counted {
                    writer: u64::from(shared.process) << 32 | u64::from(*writers),
                    count: 0,
                    inhibited: 0,
                    seen: now,
                }
            });
            tally.seen = now;
            update.writer = tally.writer;
            if repeat {
                tally.count += 1;
            } else if let Some(held) = update.inhibited.as_mut() {
                tally.inhibited += 1;
                held.count = tally.inhibited;
            }
            // A held-back signal leaves the repeats this writer counted as they are.
            update.count = tally.count;
            shared.metrics.status_tallies.set(incidents.tallies as i64);
        }
        match &mut tracked.pending {
            // Merged in place: the request's name is not cloned per duplicate.
            Some(Pending { write: Write::Request { update: pending, create: creating, .. }, .. }) => {
                pending.merge(&update);
                if creating.is_none() {
                    *creating = create;
                }
                shared.metrics.status_coalesced.inc();
            }
            _ => {
                if self.schedule(incident, Write::Request { at: at.clone(), update, create }, &mut guard) {
                    drop(guard);
                    shared.wake.notify_one();
                }
            }
        }
    }

    /// Schedules `write`, the first pending one for `incident` (its callers merge
    /// into one already pending), one interval from now (at once while draining).
    /// Whether the writer must be woken: it was idle (woken once the lock is
    /// released, so that it does not wait on it).
    #[must_use]
    fn schedule(&self, incident: Incident, write: Write, inner: &mut MutexGuard<'_, Inner>) -> bool {
        let shared = &self.shared;
        let due = if inner.draining { Instant::now() } else { Instant::now() + shared.interval };
        let Inner { incidents, due: queue, .. } = &mut **inner;
        let was_idle = queue.is_empty();
        incidents.put_pending(incident, Pending { write, attempts: 0 });
        queue.push(Reverse((due, incident)));
        shared.metrics.status_pending.set(incidents.pending as i64);
        was_idle
    }
}

impl Inner {
    /// Drops the tallies of incidents unseen for the tally horizon, every quarter
    /// of it. Only tallies with nothing on the way: a write carries its writer.
    fn sweep(&mut self, now: Instant) {
        let Inner { incidents, sweep_at, in_flight, .. } = self;
        if sweep_at.is_none_or(|at| now >= at) {
            incidents.sweep(|incident, t| now.duration_since(t.seen) >= TALLY_HORIZON && !in_flight.contains(incident));
            *sweep_at = Some(now + TALLY_HORIZON / 4);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Status writes per second, at most, right now.
    fn cap(&self) -> f64 {
        self.max_per_s
            .or_else(|| self.sink.affordable_status_writes())
            .unwrap_or(DEFAULT_MAX_WRITES_PER_S as f64)
            .max(1.0)
    }

    /// Takes the writes that are due, or the time the next one is.
    fn take_due(&self) -> Result<Vec<(Incident, Pending)>, Option<Instant>> {
        let now = Instant::now();
        let max_per_s = self.cap();
        let mut inner = self.lock();
        let budget = &mut inner.budget;
        let elapsed = budget.at.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        budget.tokens = (budget.tokens + elapsed.as_secs_f64() * max_per_s).min(max_per_s);
        budget.at = Some(now);
        let mut ready = Vec::new();
        let mut later = Vec::new();
        // The oldest due write's wait: how far behind the writes are.
        let lag = inner.due.peek().map_or(Duration::ZERO, |Reverse((due, _))| now.saturating_duration_since(*due));
        self.metrics.status_write_lag.set(lag.as_secs_f64());
        while let Some(Reverse((due, _))) = inner.due.peek() {
            if *due > now && !inner.draining {
                break;
            }
            // Over the cap, due writes wait (and keep merging); at shutdown, not.
            if inner.budget.tokens < 1.0 && !inner.draining {
                let refill = Duration::from_secs_f64((1.0 - inner.budget.tokens) / max_per_s);
                if ready.is_empty() {
                    inner.due.extend(later);
                    return Err(Some(now + refill));
                }
                break;
            }
            let Reverse((due, incident)) = inner.due.pop().expect("peeked");
            if inner.in_flight.contains(&incident) {
                // Never two writes to one request at once: wait for the first.
                later.push(Reverse((due.max(now) + self.interval.min(Duration::from_millis(50)), incident)));
                continue;
            }
            if let Some(p) = inner.incidents.take_pending(&incident) {
                inner.budget.tokens -= 1.0;
                inner.in_flight.insert(incident);
                ready.push((incident, p));
            }
        }
        inner.due.extend(later);
        self.metrics.status_pending.set(inner.incidents.pending as i64);
        if !ready.is_empty() {
            return Ok(ready);
        }
        if inner.draining && inner.incidents.pending == 0 && inner.in_flight.is_empty() {
            self.drained.notify_waiters();
        }
        Err(inner.due.peek().map(|Reverse((due, _))| *due))
    }

    /// Writes one pending update. It stands for many alerts, answered long before, so
    /// its spans start a trace of their own.
    async fn write(&self, p: &Pending) -> Result<(), WriteError> {
        let (at, update, create) = match &p.write {
            Write::Request { at, update, create } => (at, update, create),
            Write::Silence { at, change } => return self.write_silence(at, change).await,
        };
        let (namespace, name) = (&at.namespace, &at.name);
        if let Some(request) = create {
            let mut request = (**request).clone();
            request.status.get_or_insert_with(Default::default).apply(update);
            let span = tracing::info_span!(target: trace::TARGET, parent: None, "create", rr.namespace = %namespace, rr.name = %name);
            let created = self.sink.create(&request).instrument(span).await?;
            self.count("create", "ok");
            if created == Created::Created {
                self.metrics.requests_created.inc();
                return Ok(());
            }
        }
        let span = tracing::info_span!(target: trace::TARGET, parent: None, "update_status", rr.namespace = %namespace,
            rr.name = %name, count = update.count);
        Ok(self.sink.update_status(at, update).instrument(span).await?)
    }

    async fn write_silence(&self, at: &SilenceRef, change: &StatusChange) -> Result<(), WriteError> {
        // Set before the keeper hands over any change (`Pipeline::with_silences`).
        let Some(store) = self.silence_store.get() else {
            tracing::error!(silence = %at, "a silence status write without a silence store; dropped");
            return Ok(());
        };
        let span = tracing::info_span!(target: trace::TARGET, parent: None, "update_silence_status",
            silence.namespace = %at.namespace, silence.name = %at.name, matched = change.matched);
        Ok(store.write_status(at, change).instrument(span).await?)
    }

    fn finish(&self, incident: Incident, p: Pending, result: Result<(), WriteError>) {
        let op = p.write.op();
        let (namespace, name) = match &p.write {
            Write::Request { at, .. } => (&at.namespace, &at.name),
            Write::Silence { at, .. } => (&at.namespace, &at.name),
        };
        let mut inner = self.lock();
        inner.in_flight.remove(&incident);
        match result {
            Ok(()) => self.count(op, "ok"),
            Err(e) if e.not_found() && p.attempts + 1 >= p.write.not_found_attempts() => {
                // A request not created by anyone in all this time was deleted by
                // hand; a silence not found was deleted: its counts go with it.
                tracing::warn!(%namespace, %name, op, "dropping status update: its object no longer exists");
                self.count(op, "not_found");
            }
            Err(e) => {
                self.count(op, e.label());
                let attempts = p.attempts + 1;
                let backoff = (self.interval * 2u32.saturating_pow(attempts)).min(MAX_BACKOFF);
                tracing::warn!(%namespace, %name, op, error = %e, attempts, "status write failed; retrying");
                let Inner { incidents, due, draining, .. } = &mut *inner;
                if *draining && attempts >= 3 {
                    tracing::error!(%namespace, %name, op, "giving up on status write at shutdown");
                } else {
                    // What arrived meanwhile is later than what failed, and stands
                    // over it where the two differ (a silence's state).
                    let mut write = p.write;
                    if let Some(newer) = incidents.take_pending(&incident) {
                        write.merge(newer.write);
                    }
                    incidents.put_pending(incident, Pending { write, attempts });
                    due.push(Reverse((Instant::now() + backoff, incident)));
                }
            }
        }
        drop(inner);
        self.wake.notify_one();
    }

    fn count(&self, op: &'static str, outcome: &'static str) {
        self.metrics.sink_writes.get_or_create(&SinkLabels { op, outcome }).inc();
    }
}

/// 32 random bits, never zero, so that no writer id is
/// [`crate::remediation::NO_WRITER`].
fn process_id() -> u32 {
    (uuid::Uuid::new_v4().as_u64_pair().0 as u32).max(1)
}

async fn writer(shared: Arc<Shared>) {
    loop {
        match shared.take_due() {
            Ok(ready) => {
                futures::stream::iter(ready)
                    .for_each_concurrent(CONCURRENCY, |(incident, p)| {
                        let shared = &shared;
                        async move {
                            let result = shared.write(&p).await;
                            shared.finish(incident, p, result);
                        }
                    })
                    .await;
            }
            Err(next) => {
                let wake = shared.wake.notified();
                match next {
                    Some(at) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = wake => {}
                        }
                    }
                    None => wake.await,
                }
            }
        }
        if Arc::strong_count(&shared) == 1 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{Lookup, OpenRequest};
    use crate::state::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn dedup(interval: Duration, max_writes_per_s: u32) -> StatusWriterConfig {
        StatusWriterConfig { interval, max_writes_per_s: Some(max_writes_per_s) }
    }

    /// A sink that keeps one status and counts the writes to it, and whose first
    /// `unclear` writes land but answer an error, as a write that timed out after
    /// the server applied it.
    #[derive(Default)]
    struct Landing {
        status: Mutex<crate::remediation::RemediationRequestStatus>,
        writes: AtomicUsize,
        unclear: AtomicUsize,
        /// The writes per second it says it affords.
        affords: Option<f64>,
    }

    impl Sink for Landing {
        fn open_requests(&self) -> BoxFuture<'_, Result<Vec<RemediationRequest>, SinkError>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn flapping_requests(&self) -> BoxFuture<'_, Result<Vec<RemediationRequest>, SinkError>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn create<'a>(&'a self, _: &'a RemediationRequest) -> BoxFuture<'a, Result<Created, SinkError>> {
            Box::pin(async { Ok(Created::Created) })
        }
        fn update_status<'a>(
            &'a self,
            _: &'a RequestRef,
            update: &'a StatusUpdate,
        ) -> BoxFuture<'a, Result<(), SinkError>> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.status.lock().unwrap().apply(update);
            let unclear = self.unclear.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            Box::pin(async move {
                match unclear {
                    true => Err(SinkError::Io(std::io::Error::from(std::io::ErrorKind::TimedOut))),
                    false => Ok(()),
                }
            })
        }
        fn last_request(&self, _: &crate::signal::Fingerprint) -> Option<crate::sink::LastRequest> {
            None
        }
        fn ready(&self) -> BoxFuture<'_, Result<(), SinkError>> {
            Box::pin(async { Ok(()) })
        }
        fn affordable_status_writes(&self) -> Option<f64> {
            self.affords
        }
        // A test sink keeps no authority on open incidents.
        fn lookup(&self, _: &RequestRef) -> Lookup {
            Lookup::Unknown
        }
        fn open_request(&self, _: &Fingerprint) -> Option<OpenRequest> {
            None
        }
    }

    fn update(count: u64) -> StatusUpdate {
        StatusUpdate { writer: 1, count, ..StatusUpdate::seen(1, 1) }
    }

    fn incident(n: usize) -> Incident {
        Incident::Storm([0; 16], n as u32)
    }

    fn at(n: usize) -> RequestRef {
        RequestRef { namespace: "ns".into(), name: format!("rr-{n}") }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_write_per_request_per_interval_carrying_the_latest_count() {
        let sink = Arc::new(Landing::default());
        let c = StatusWriter::new(sink.clone(), &dedup(Duration::from_secs(1), 1000), Arc::new(Metrics::new()));
        for n in 1..=50 {
            c.record(incident(0), &at(0), update(n));
        }
        settle().await;
        assert_eq!(sink.writes.load(Ordering::SeqCst), 0, "nothing before the interval");
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(sink.writes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_retried_after_an_unclear_outcome_counts_nothing_twice() {
        let sink = Arc::new(Landing { unclear: AtomicUsize::new(3), ..Default::default() });
        let c = StatusWriter::new(sink.clone(), &dedup(Duration::from_secs(1), 1000), Arc::new(Metrics::new()));
        for round in 0..4 {
            for _ in 0..10 {
                c.repeat(incident(0), &at(0), update(0));
            }
            tokio::time::advance(Duration::from_secs(1 << round)).await;
            settle().await;
        }
        c.shutdown(Duration::from_secs(60)).await;
        let status = sink.status.lock().unwrap().clone();
        assert_eq!(sink.unclear.load(Ordering::SeqCst), 0, "three writes landed unclearly");
        assert_eq!(status.deduplication.unwrap().occurrence_count, 1 + 40, "the creating occurrence and 40 repeats");
    }

    #[tokio::test(start_paused = true)]
    async fn an_incident_unseen_past_the_horizon_is_counted_under_a_new_writer() {
        let c = StatusWriter::new(
            Arc::new(Landing::default()),
            &dedup(Duration::from_secs(1), 1000),
            Arc::new(Metrics::new()),
        );
        let tally = |n| {
            c.repeat(incident(n), &at(n), update(0));
            let inner = c.shared.lock();
            let t = inner.incidents.tally(&incident(n)).unwrap();
            (t.writer, t.count)
        };
        let (writer, _) = tally(0);
        assert_eq!(tally(0), (writer, 2), "one writer per incident while it is seen");
        assert_ne!(tally(1).0, writer, "one writer per incident");
        tokio::time::advance(TALLY_HORIZON).await;
        settle().await;
        let (later, count) = tally(0);
        assert_ne!(later, writer, "a new writer: the old one's tally may be gone from the request");
        assert_eq!(count, 1);
        assert_eq!(c.shared.lock().incidents.tallies, 1, "the other incident's tally was dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn writes_over_the_cap_wait_and_shutdown_writes_them_all() {
        let sink = Arc::new(Landing::default());
        let metrics = Arc::new(Metrics::new());
        let c = StatusWriter::new(sink.clone(), &dedup(Duration::from_millis(100), 2), metrics.clone());
        for n in 0..10 {
            c.record(incident(n), &at(n), update(1));
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
        assert_eq!(sink.writes.load(Ordering::SeqCst), 2, "a full bucket holds one second's writes");
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(sink.writes.load(Ordering::SeqCst), 4);
        assert!(metrics.status_write_lag.get() >= 0.5, "the backlog shows: {}", metrics.status_write_lag.get());
        c.shutdown(Duration::from_secs(5)).await;
        assert_eq!(sink.writes.load(Ordering::SeqCst), 10, "the cap never loses a count");
    }

    #[tokio::test(start_paused = true)]
    async fn unset_the_cap_is_what_the_sink_affords_and_set_it_is_the_configured_one() {
        for (configured, cap) in [(None, 5), (Some(3), 3)] {
            let sink = Arc::new(Landing { affords: Some(5.0), ..Default::default() });
            let config = StatusWriterConfig { interval: Duration::from_millis(100), max_writes_per_s: configured };
            let c = StatusWriter::new(sink.clone(), &config, Arc::new(Metrics::new()));
            for n in 0..20 {
                c.record(incident(n), &at(n), update(1));
            }
            tokio::time::advance(Duration::from_millis(100)).await;
            settle().await;
            assert_eq!(sink.writes.load(Ordering::SeqCst), cap, "configured {configured:?}: one second's writes");
            tokio::time::advance(Duration::from_secs(1)).await;
            settle().await;
            assert_eq!(sink.writes.load(Ordering::SeqCst), 2 * cap, "configured {configured:?}: and as many a second");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sink_that_cannot_say_what_it_affords_gets_the_default_cap() {
        let sink = Arc::new(Landing::default());
        let config = StatusWriterConfig { interval: Duration::from_millis(100), max_writes_per_s: None };
        let c = StatusWriter::new(sink.clone(), &config, Arc::new(Metrics::new()));
        for n in 0..(DEFAULT_MAX_WRITES_PER_S as usize + 50) {
            c.record(incident(n), &at(n), update(1));
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
        assert_eq!(sink.writes.load(Ordering::SeqCst), DEFAULT_MAX_WRITES_PER_S as usize);
    }

    fn silence_at(n: usize) -> SilenceRef {
        SilenceRef { namespace: "shop".into(), name: format!("s-{n}") }
    }

    fn matched(n: u64) -> StatusChange {
        StatusChange { writer: 7, matched: n, ..StatusChange::default() }
    }

    fn writes(metrics: &Metrics, op: &'static str, outcome: &'static str) -> u64 {
        metrics.sink_writes.get_or_create(&SinkLabels { op, outcome }).get()
    }

    #[test]
    fn a_silence_key_is_no_larger_than_a_signals() {
        assert_eq!(std::mem::size_of::<Incident>(), 40, "the key the pending table compares per duplicate alert");
        assert_ne!(Incident::silence(&silence_at(0)), Incident::silence(&silence_at(1)));
        let split = |namespace: &str, name: &str| SilenceRef { namespace: namespace.into(), name: name.into() };
        assert_ne!(Incident::silence(&split("ab", "c")), Incident::silence(&split("a", "bc")));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_writes_share_the_cap_with_requests_and_shutdown_drains_both() {
        use crate::silence::status::tests::Landing as SilenceLanding;
        let (sink, store) = (Arc::new(Landing::default()), Arc::new(SilenceLanding::default()));
        let metrics = Arc::new(Metrics::new());
        let c = StatusWriter::new(sink.clone(), &dedup(Duration::from_millis(100), 2), metrics.clone());
        c.write_silences_to(store.clone());
        for n in 0..5 {
            c.silence(&silence_at(n), matched(1));
        }
        tokio::time::advance(Duration::from_millis(10)).await;
        for n in 0..5 {
            c.record(incident(n), &at(n), update(1));
        }
        let total = || sink.writes.load(Ordering::SeqCst) + store.writes.load(Ordering::SeqCst);
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
        assert_eq!(total(), 2, "a full bucket holds one second's writes, of both kinds");
        assert_eq!(store.writes.load(Ordering::SeqCst), 2, "the silences were due first");
        for second in 1..=3 {
            tokio::time::advance(Duration::from_secs(1)).await;
            settle().await;
            assert_eq!(total(), 2 + 2 * second, "two writes a second, silences' and requests' together");
        }
        assert_eq!(sink.writes.load(Ordering::SeqCst), 3, "requests waited behind the silences");
        c.shutdown(Duration::from_secs(5)).await;
        assert_eq!((store.writes.load(Ordering::SeqCst), sink.writes.load(Ordering::SeqCst)), (5, 5), "all drained");
        assert_eq!(writes(&metrics, SILENCE_OP, "ok"), 5);
        assert_eq!(writes(&metrics, "update_status", "ok"), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silence_is_written_once_per_interval_carrying_its_latest_tally() {
        use crate::silence::status::tests::Landing as SilenceLanding;
        let store = Arc::new(SilenceLanding::default());
        let c = StatusWriter::new(
            Arc::new(Landing::default()),
            &dedup(Duration::from_secs(1), 1000),
            Arc::new(Metrics::new()),
        );
        c.write_silences_to(store.clone());
        for n in 1..=50 {
            c.silence(&silence_at(0), matched(n));
        }
        settle().await;
        assert_eq!(store.writes.load(Ordering::SeqCst), 0, "nothing before the interval");
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(store.writes.load(Ordering::SeqCst), 1);
        assert_eq!(store.status.lock().unwrap().matched_signals, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silence_status_write_retried_after_an_unclear_outcome_counts_no_match_twice() {
        use crate::clock::Clock;
        use crate::silence::status::tests::{drain, noon, Landing as SilenceLanding};
        use crate::silence::status::SilenceKeeper;
        use crate::silence::Silences;
        let store = Arc::new(SilenceLanding { unclear: AtomicUsize::new(2), ..Default::default() });
        let metrics = Arc::new(Metrics::new());
        let c = StatusWriter::new(Arc::new(Landing::default()), &dedup(Duration::from_secs(1), 1000), metrics.clone());
        c.write_silences_to(store.clone());
        let keeper =
            SilenceKeeper::new(Silences::new(crate::silence::tests::rules()), store.clone(), metrics, Clock::System);
        let (at, silence) = drain();
        for round in 0..3u8 {
            for n in 0..10u8 {
                let incident = Fingerprint::from_bytes([round * 10 + n; 32]);
                c.silence(&at, keeper.matched(&silence, &incident, noon()));
            }
            tokio::time::advance(Duration::from_secs(1 << round)).await;
            settle().await;
        }
        c.shutdown(Duration::from_secs(60)).await;
        assert_eq!(store.unclear.load(Ordering::SeqCst), 0, "two writes landed unclearly");
        assert_eq!(store.status.lock().unwrap().matched_signals, 30, "thirty matches, each counted once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_silence_drops_its_change_without_retrying() {
        use crate::silence::status::tests::Landing as SilenceLanding;
        let store = Arc::new(SilenceLanding::default());
        store.gone.store(true, Ordering::SeqCst);
        let metrics = Arc::new(Metrics::new());
        let c = StatusWriter::new(Arc::new(Landing::default()), &dedup(Duration::from_secs(1), 1000), metrics.clone());
        c.write_silences_to(store.clone());
        c.silence(&silence_at(0), matched(3));
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(store.writes.load(Ordering::SeqCst), 1);
        assert_eq!(c.pending(), 0, "nothing left to retry");
        tokio::time::advance(MAX_BACKOFF * 4).await;
        settle().await;
        assert_eq!(store.writes.load(Ordering::SeqCst), 1, "never tried again");
        assert_eq!(writes(&metrics, SILENCE_OP, "not_found"), 1);
    }
}
