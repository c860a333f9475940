//! The silence status keeper: counts what each silence matched and records its
//! state, so `kubectl get rsil` shows which silences hold and what they hid.
//!
//! Matches are counted in memory on the signal path (no I/O) and written at most
//! once per `status_writer.interval` per silence, as the request status writer
//! coalesces repeats. Counts are written as requests' are: as tallies, each this
//! process's whole count of one silence under a writer id of its own, which the
//! status adds once (`matchedSignals` is every writer's tally). So a write retried
//! after an unclear outcome (a timeout after the API server applied it) counts
//! nothing twice, and replicas never overwrite each other's counts. Each silence's
//! state (`pending`, `active`, `expired`, or `ignored` with the reason) is checked
//! every second and written when it changes, with one audit event when a silence
//! is first seen (created) and when it expires, and one per incident it first
//! matches: never one per alert.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use super::store::{Ignored, SilenceStore, StatusChange};
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
    /// This process's half of its writer ids: random, so that processes (and
    /// restarts) never share one.
    process: u32,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<SilenceRef, StatusChange>,
    /// What this process counted of each silence: its writer id and count.
    tallies: HashMap<SilenceRef, (u64, u64)>,
    /// Writer ids handed out: the low half of the next one.
    writers: u32,
    /// Silences newly ignored, to be warned of with the next write.
    ignored: Vec<Ignored>,
    /// Incidents each silence has matched, for the first-match audit event.
    incidents: HashMap<SilenceRef, HashSet<Fingerprint>>,
    /// The state (and reason) this process last recorded for each silence, so that one not yet
    /// reflected back by the source is not written again.
    recorded: HashMap<SilenceRef, (String, Option<String>)>,
    /// The silences this process audited as created, and as expired: a status not
    /// yet written (or a write that failed) must not audit either twice.
    audited: HashSet<(SilenceRef, &'static str)>,
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
        let process = (uuid::Uuid::new_v4().as_u64_pair().0 as u32).max(1);
        let shared = Arc::new(Shared { silences, store, inner: Mutex::default(), interval, metrics, clock, process });
        tokio::spawn(run(Arc::downgrade(&shared)));
        SilenceKeeper { shared }
    }

    pub fn silences(&self) -> &Arc<Silences> {
        &self.shared.silences
    }

    /// Counts a firing signal of `incident` that `silence` matched at `now`.
    pub fn matched(&self, silence: &Silence, incident: &Fingerprint, now: Timestamp) {
        let mut inner = self.shared.lock();
        let Inner { tallies, writers, .. } = &mut *inner;
        let (writer, matched) = tallies.entry(silence.at.clone()).or_insert_with(|| {
            *writers = writers.wrapping_add(1);
            ((self.shared.process as u64) << 32 | *writers as u64, 0)
        });
        *matched += 1;
        let change = StatusChange { writer: *writer, matched: *matched, last_matched_at: Some(now), state: None };
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
        inner.tallies.retain(|at, _| live.contains(at));
        inner.audited.retain(|(at, _)| live.contains(at));
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
            if inner.recorded.get(at).is_some_and(|(s, r)| s == state && *r == reason) {
                continue;
            }
            if on_record.is_none() && inner.audited.insert((at.clone(), audit::SILENCE_CREATED)) {
                let ends = k.silence.as_ref().map(|s| s.ends_at.to_string()).unwrap_or_default();
                audit::silence_created(&at.namespace, &at.name, &ends);
            }
            match (&k.silence, state) {
                (Err(e), _) => {
                    tracing::warn!(silence = %at, reason = %e, "ignoring a silence");
                    self.metrics.silences_ignored.get_or_create(&ReasonLabels { reason: e.cause() }).inc();
                    let message = format!("tidegate ignores this silence: {e}");
                    inner.ignored.push(Ignored { at: at.clone(), uid: k.uid.clone(), version: k.version(), message });
                }
                (Ok(_), "expired") if inner.audited.insert((at.clone(), audit::SILENCE_EXPIRED)) => {
                    audit::silence_expired(&at.namespace, &at.name);
                }
                _ => {}
            }
            inner.recorded.insert(at.clone(), (state.to_string(), reason.clone()));
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
        let ignored = std::mem::take(&mut self.lock().ignored);
        for silence in &ignored {
            // Best effort, as Kubernetes events are: the status and the metric stand.
            if let Err(e) = self.store.warn_ignored(silence).await {
                tracing::warn!(silence = %silence.at, error = %e, "could not write an event on an ignored silence");
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::silence::resource::{RemediationSilence, RemediationSilenceStatus};
    use crate::silence::store::StoreError;
    use crate::silence::tests::{rules, spec};
    use crate::state::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A store of one silence whose first `unclear` status writes land but answer
    /// an error, as a write that timed out after the API server applied it.
    #[derive(Default)]
    struct Landing {
        status: Mutex<RemediationSilenceStatus>,
        unclear: AtomicUsize,
    }

    impl SilenceStore for Landing {
        fn list<'a>(&'a self, _: Option<&'a str>) -> BoxFuture<'a, Result<Vec<RemediationSilence>, StoreError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn create<'a>(&'a self, _: &'a RemediationSilence) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async { Ok(()) })
        }
        fn expire<'a>(&'a self, _: &'a SilenceRef, _: Timestamp) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async { Ok(()) })
        }
        fn warn_ignored<'a>(&'a self, _: &'a Ignored) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async { Ok(()) })
        }
        fn write_status<'a>(
            &'a self,
            _: &'a SilenceRef,
            change: &'a StatusChange,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            change.apply(&mut self.status.lock().unwrap());
            let unclear = self.unclear.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            Box::pin(async move {
                match unclear {
                    true => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
                    false => Ok(()),
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_write_retried_after_an_unclear_outcome_counts_no_match_twice() {
        let store = Arc::new(Landing { unclear: AtomicUsize::new(2), ..Default::default() });
        let at = SilenceRef { namespace: "shop".into(), name: "drain".into() };
        let spec = spec(&["alertname=X"], "2026-12-05T00:00:00Z", "2026-12-06T00:00:00Z");
        let silence = Silence::compile(at.clone(), &spec, &rules()).unwrap();
        let keeper = SilenceKeeper::start(
            Silences::new(rules()),
            store.clone(),
            Duration::from_secs(3600),
            Arc::new(Metrics::new()),
            Clock::System,
        );
        let noon: Timestamp = "2026-12-05T12:00:00Z".parse().unwrap();
        for round in 0..3u8 {
            for n in 0..10u8 {
                let incident = Fingerprint::from_bytes([round * 10 + n; 32]);
                keeper.matched(&silence, &incident, noon);
            }
            keeper.flush().await;
        }
        keeper.flush().await;
        assert_eq!(store.unclear.load(Ordering::SeqCst), 0, "two writes landed unclearly");
        assert_eq!(store.status.lock().unwrap().matched_signals, 30, "thirty matches, each counted once");
    }
}
