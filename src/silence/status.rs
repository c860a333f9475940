//! The silence status keeper: counts what each silence matched and decides its
//! state, so `kubectl get rsil` shows which silences hold and what they hid.
//!
//! Matches are counted in memory on the signal path (no I/O). The keeper writes no
//! status itself: each change it makes ([`SilenceKeeper::matched`],
//! [`SilenceKeeper::check_states`]) is handed to the pipeline's status writer
//! (`pipeline::status_writer`), which writes requests' statuses too, so silences'
//! writes are coalesced per `status_writer.interval`, share
//! `status_writer.max_writes_per_s` with requests', and are retried and drained at
//! shutdown as theirs are. Counts are written as requests' are: as tallies, each
//! this process's whole count of one silence under a writer id of its own, which
//! the status adds once (`matchedSignals` is every writer's tally). So a write
//! retried after an unclear outcome (a timeout after the API server applied it)
//! counts nothing twice, and replicas never overwrite each other's counts. A
//! process keeps its tally of a silence for as long as the silence exists, so its
//! writer id never changes under it. Each silence's state (`pending`, `active`,
//! `expired`, or `ignored` with the reason) is checked every second and handed on
//! when it changes, with one audit event when a silence is first seen (created) and
//! when it expires, and one per incident it first matches: never one per alert.
//! The Warning Event on an ignored silence is the keeper's own write
//! ([`SilenceKeeper::warn_ignored`]): one per version of the silence, not a status.
//!
//! Must never write a status by itself: a second writer would take a write cap of
//! its own.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

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
    metrics: Arc<Metrics>,
    clock: Clock,
    /// This process's half of its writer ids: random, so that processes (and
    /// restarts) never share one.
    process: u32,
}

#[derive(Default)]
struct Inner {
    /// What this process counted of each silence: its writer id and count.
    tallies: HashMap<SilenceRef, (u64, u64)>,
    /// Writer ids handed out: the low half of the next one.
    writers: u32,
    /// Silences newly ignored, to be warned of.
    ignored: Vec<Ignored>,
    /// Incidents each silence has matched, for the first-match audit event.
    incidents: HashMap<SilenceRef, HashSet<Fingerprint>>,
    /// The state (and reason) this process last handed on for each silence, so that
    /// one not yet reflected back by the source is not written again (the status
    /// writer retries it until it is written, or the silence is gone).
    recorded: HashMap<SilenceRef, (String, Option<String>)>,
    /// The silences this process audited as created, and as expired: a status not
    /// yet written must not audit either twice.
    audited: HashSet<(SilenceRef, &'static str)>,
}

impl SilenceKeeper {
    /// A keeper of `silences`' statuses, warning of ignored ones through `store`.
    /// Its owner calls [`SilenceKeeper::check_states`] every second.
    pub fn new(silences: Arc<Silences>, store: Arc<dyn SilenceStore>, metrics: Arc<Metrics>, clock: Clock) -> Self {
        let process = (uuid::Uuid::new_v4().as_u64_pair().0 as u32).max(1);
        let shared = Arc::new(Shared { silences, store, inner: Mutex::default(), metrics, clock, process });
        SilenceKeeper { shared }
    }

    pub fn silences(&self) -> &Arc<Silences> {
        &self.shared.silences
    }

    /// Where the silences are kept, and their statuses written.
    pub fn store(&self) -> &Arc<dyn SilenceStore> {
        &self.shared.store
    }

    /// Counts a firing signal of `incident` that `silence` matched at `now`, and
    /// returns the change to write to the silence's status: this process's whole
    /// tally of it, so writing it twice, or an older one after it, counts nothing
    /// twice.
    pub fn matched(&self, silence: &Silence, incident: &Fingerprint, now: Timestamp) -> StatusChange {
        let mut inner = self.shared.lock();
        let Inner { tallies, writers, .. } = &mut *inner;
        let (writer, matched) = tallies.entry(silence.at.clone()).or_insert_with(|| {
            *writers = writers.wrapping_add(1);
            ((self.shared.process as u64) << 32 | *writers as u64, 0)
        });
        *matched += 1;
        let change = StatusChange { writer: *writer, matched: *matched, last_matched_at: Some(now), state: None };
        let seen = inner.incidents.entry(silence.at.clone()).or_default();
        if seen.len() < INCIDENTS_REMEMBERED && seen.insert(*incident) {
            audit::silence_matched(&silence.at.namespace, &silence.at.name, &incident.to_hex());
        }
        change
    }

    /// Decides every silence's state now, and returns the states to write: those
    /// that differ from the silence's status and from what this process last
    /// handed on.
    pub fn check_states(&self) -> Vec<(SilenceRef, StatusChange)> {
        self.shared.check_states()
    }

    /// Writes a Warning Event on each silence newly ignored. Best effort, as
    /// Kubernetes events are: the status and the metric stand.
    pub async fn warn_ignored(&self) {
        let ignored = std::mem::take(&mut self.shared.lock().ignored);
        for silence in &ignored {
            if let Err(e) = self.shared.store.warn_ignored(silence).await {
                tracing::warn!(silence = %silence.at, error = %e, "could not write an event on an ignored silence");
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_states(&self) -> Vec<(SilenceRef, StatusChange)> {
        let now = Timestamp::from_millisecond(self.clock.now_ms() as i64).unwrap_or(Timestamp::UNIX_EPOCH);
        let known = self.silences.known();
        let mut inner = self.lock();
        let live: HashSet<&SilenceRef> = known.iter().map(|(at, _)| at).collect();
        inner.recorded.retain(|at, _| live.contains(at));
        inner.incidents.retain(|at, _| live.contains(at));
        inner.tallies.retain(|at, _| live.contains(at));
        inner.audited.retain(|(at, _)| live.contains(at));
        let mut active = 0;
        let mut changes = Vec::new();
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
            changes.push((at.clone(), StatusChange { state: Some((state.to_string(), reason)), ..Default::default() }));
        }
        self.metrics.silences_active.set(active);
        drop(inner);
        if ended {
            self.silences.prune(now);
        }
        changes
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::silence::resource::{RemediationSilence, RemediationSilenceStatus};
    use crate::silence::store::StoreError;
    use crate::silence::tests::{rules, spec};
    use crate::state::BoxFuture;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, UNIX_EPOCH};

    /// A store of one silence that counts the status writes to it, whose first
    /// `unclear` status writes land but answer an error, as a write that timed out
    /// after the API server applied it, and which answers `NotFound` while `gone`.
    #[derive(Default)]
    pub(crate) struct Landing {
        pub status: Mutex<RemediationSilenceStatus>,
        pub writes: AtomicUsize,
        pub unclear: AtomicUsize,
        pub gone: AtomicBool,
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
            at: &'a SilenceRef,
            change: &'a StatusChange,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            if self.gone.load(Ordering::SeqCst) {
                return Box::pin(async move { Err(StoreError::NotFound(at.clone())) });
            }
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

    fn drain_spec() -> crate::silence::resource::RemediationSilenceSpec {
        spec(&["alertname=X"], "2026-12-05T00:00:00Z", "2026-12-06T00:00:00Z")
    }

    /// `shop/drain`, for all of 2026-12-05.
    pub(crate) fn drain() -> (SilenceRef, Silence) {
        let at = SilenceRef { namespace: "shop".into(), name: "drain".into() };
        let silence = Silence::compile(at.clone(), &drain_spec(), &rules()).unwrap();
        (at, silence)
    }

    pub(crate) fn noon() -> Timestamp {
        "2026-12-05T12:00:00Z".parse().unwrap()
    }

    fn keeper(silences: Arc<Silences>, clock: Clock) -> SilenceKeeper {
        SilenceKeeper::new(silences, Arc::new(Landing::default()), Arc::new(Metrics::new()), clock)
    }

    #[test]
    fn each_match_hands_on_the_whole_tally_of_one_writer_per_silence() {
        let keeper = keeper(Silences::new(rules()), Clock::System);
        let (_, silence) = drain();
        let other = Silence::compile(
            SilenceRef { namespace: "shop".into(), name: "other".into() },
            &spec(&["alertname=Y"], "2026-12-05T00:00:00Z", "2026-12-06T00:00:00Z"),
            &rules(),
        )
        .unwrap();
        let changes: Vec<_> =
            (0..3u8).map(|n| keeper.matched(&silence, &Fingerprint::from_bytes([n; 32]), noon())).collect();
        assert_eq!(changes.iter().map(|c| c.matched).collect::<Vec<_>>(), [1, 2, 3], "tallies, not increments");
        assert!(changes.iter().all(|c| c.writer == changes[0].writer), "one writer per silence");
        assert_eq!(changes[2].last_matched_at, Some(noon()));
        assert_eq!(changes[2].state, None, "a match says nothing of the state");
        let elsewhere = keeper.matched(&other, &Fingerprint::from_bytes([0; 32]), noon());
        assert_ne!(elsewhere.writer, changes[0].writer, "one writer per silence");
        assert_eq!(elsewhere.matched, 1);
    }

    #[test]
    fn a_state_is_handed_on_once_and_again_when_it_changes() {
        let silences = Silences::new(rules());
        let mut object = RemediationSilence::new("drain", drain_spec());
        object.metadata.namespace = Some("shop".into());
        silences.upsert(&object);
        let clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(noon().as_second() as u64));
        let keeper = keeper(silences.clone(), clock.clone());
        let first = keeper.check_states();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1.state, Some(("active".to_string(), None)));
        assert!(keeper.check_states().is_empty(), "handed on once, whatever the status says meanwhile");
        clock.advance(Duration::from_secs(86_400));
        let later = keeper.check_states();
        assert_eq!(later.len(), 1, "a new state is handed on");
        assert_eq!(later[0].1.state, Some(("expired".to_string(), None)));
    }
}
