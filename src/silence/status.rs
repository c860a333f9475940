//! The silence status keeper: counts what each silence matched and records its
//! state, so `kubectl get rsil` shows which silences hold and what they hid.
//!
//! Matches are counted in memory on the signal path (no I/O) and written at most
//! once per `status_writer.interval` per silence, as the request status writer
//! coalesces repeats; a failed write keeps its counts for the next. Each silence's
//! state (`pending`, `active`, `expired`, or `ignored` with the reason) is checked
//! every second and written when it changes, with one audit event when a silence
//! is first seen (created) and when it expires, and one per incident it first
//! matches: never one per alert.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use super::store::{SilenceStore, StatusChange};
use super::{Silence, SilenceRef, Silences};
use crate::audit;
use crate::clock::Clock;
use crate::signal::Fingerprint;
use crate::telemetry::{Metrics, ReasonLabels};

/// Incidents remembered per silence for "first matched" audit events; past it, a
/// silence matching more incidents audits no more of them (the count goes on).
const INCIDENTS_REMEMBERED: usize = 10_000;

#[derive(Clone)]
pub struct SilenceKeeper {
    shared: Arc<Shared>,
}

struct Shared {
    silences: Arc<Silences>,
    store: Arc<dyn SilenceStore>,
    inner: Mutex<Inner>,
    interval: Duration,
    metrics: Arc<Metrics>,
    clock: Clock,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<SilenceRef, StatusChange>,
    /// Incidents each silence has matched, for the first-match audit event.
    incidents: HashMap<SilenceRef, HashSet<Fingerprint>>,
    /// The state this process last recorded for each silence, so that one not yet
    /// reflected back by the source is not written again.
    recorded: HashMap<SilenceRef, String>,
}

impl SilenceKeeper {
    /// Starts the keeper's task. Must be called within a tokio runtime.
    pub fn start(
        silences: Arc<Silences>,
        store: Arc<dyn SilenceStore>,
        interval: Duration,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Self {
        let shared = Arc::new(Shared { silences, store, inner: Mutex::default(), interval, metrics, clock });
        tokio::spawn(run(Arc::downgrade(&shared)));
        SilenceKeeper { shared }
    }

    pub fn silences(&self) -> &Arc<Silences> {
        &self.shared.silences
    }

    /// Counts a firing signal of `incident` that `silence` matched at `now`.
    pub fn matched(&self, silence: &Silence, incident: &Fingerprint, now: Timestamp) {
        let mut inner = self.shared.lock();
        let change = StatusChange { matched: 1, last_matched_at: Some(now), state: None };
        inner.pending.entry(silence.at.clone()).or_default().merge(change);
        let seen = inner.incidents.entry(silence.at.clone()).or_default();
        if seen.len() < INCIDENTS_REMEMBERED && seen.insert(*incident) {
            audit::silence_matched(&silence.at.namespace, &silence.at.name, &incident.to_hex());
        }
    }

    /// Writes every pending change now: the last step of a shutdown.
    pub async fn flush(&self) {
        self.shared.flush().await;
    }

    /// Records every silence's state now, as the keeper's task does every second.
    pub fn check_states(&self) {
        self.shared.check_states();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_states(&self) {
        let now = Timestamp::from_millisecond(self.clock.now_ms() as i64).unwrap_or(Timestamp::UNIX_EPOCH);
        let known = self.silences.known();
        let mut inner = self.lock();
        let live: HashSet<&SilenceRef> = known.iter().map(|(at, _)| at).collect();
        inner.recorded.retain(|at, _| live.contains(at));
        inner.incidents.retain(|at, _| live.contains(at));
        let mut active = 0;
        let pruned_by = self.silences.pruned_by();
        let ended = known
            .iter()
            .any(|(_, k)| k.silence.as_ref().is_ok_and(|s| s.ends_at <= now && s.ends_at.as_second() > pruned_by));
        for (at, k) in &known {
            let (state, reason) = match &k.silence {
                Ok(s) => (s.state(now).as_str(), None),
                Err(e) => ("ignored", Some(e.to_string())),
            };
            active += i64::from(state == "active");
            let on_record = k.status.state.as_deref();
            if on_record == Some(state) && k.status.reason == reason {
                continue;
            }
            if inner.recorded.get(at).map(String::as_str) == Some(state) {
                continue;
            }
            if on_record.is_none() {
                let ends = k.silence.as_ref().map(|s| s.ends_at.to_string()).unwrap_or_default();
                audit::silence_created(&at.namespace, &at.name, &ends);
            }
            match (&k.silence, state) {
                (Err(e), _) => {
                    tracing::warn!(silence = %at, reason = %e, "ignoring a silence");
                    self.metrics.silences_ignored.get_or_create(&ReasonLabels { reason: e.cause() }).inc();
                }
                (Ok(_), "expired") => audit::silence_expired(&at.namespace, &at.name),
                _ => {}
            }
            inner.recorded.insert(at.clone(), state.to_string());
            let change = StatusChange { state: Some((state.to_string(), reason)), ..Default::default() };
            inner.pending.entry(at.clone()).or_default().merge(change);
        }
        self.metrics.silences_active.set(active);
        drop(inner);
        if ended {
            self.silences.prune(now);
        }
    }

    async fn flush(&self) {
        let pending = std::mem::take(&mut self.lock().pending);
        for (at, change) in pending {
            if let Err(e) = self.store.write_status(&at, &change).await {
                match e {
                    // Deleted meanwhile: its counts go with it.
                    super::store::StoreError::NotFound(_) => {}
                    e => {
                        tracing::warn!(silence = %at, error = %e, "silence status write failed; retrying with the next");
                        let mut inner = self.lock();
                        let later = inner.pending.remove(&at);
                        let mut kept = change;
                        if let Some(later) = later {
                            kept.merge(later);
                        }
                        // Its state is written again with the next write, whatever it is then.
                        inner.recorded.remove(&at);
                        inner.pending.insert(at, kept);
                    }
                }
            }
        }
    }
}

/// Checks states every second and writes pending changes every interval, until
/// the keeper is dropped.
async fn run(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flush = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        shared.check_states();
        if last_flush.elapsed() >= shared.interval {
            last_flush = tokio::time::Instant::now();
            shared.flush().await;
        }
    }
}
