//! The silence step: a firing signal that would open a new request opens none
//! while a silence matches it.
//!
//! It decides before admission and the state store see the batch, and records what
//! it held once the batch is admitted, so a silenced signal counts toward no storm
//! and no dedup window, and a batch refused by the rate limit leaves no count. Whether the
//! incident's request is already open is the sink's authority's answer
//! ([`Sink::open_request`], no I/O): a signal of an open incident is not silenced
//! here but counted on its request as usual, since hiding occurrences of an incident
//! already being worked on would only make its request wrong. A silenced signal is
//! answered 2xx (`"status":"silenced"`, naming the silence), counted in the
//! silence's status and in `tidegate_signals_silenced_total{source}`, and audited
//! once per incident by the [`SilenceKeeper`]. Resolutions pass: they open nothing.
//!
//! The silences' statuses (their counts, and the states the keeper checks every
//! second) are written by the pipeline's one [`StatusWriter`], as requests' are:
//! one interval, one write cap, one retry policy and one drain at shutdown for both.
//!
//! A controller must still be able to hold its work on an open request while a
//! silence covers its incident: each repeat counted on a request also says which
//! silence is active on it (`status.silencedBy`, with the silence's end), or that
//! none is, through the status writer with the repeat itself (so it costs no write
//! of its own). [`Marks`] remembers the requests this process marked, and a task
//! clears a mark once its silence ends, is expired or deleted, without waiting for
//! an occurrence that may not come for hours.
//!
//! Must never do I/O per signal, nor scan every silence: the index does the lookup.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::status_writer::{Incident, StatusWriter};
use super::{incident, uncounted, Batch, Outcome, OutcomeStatus, Pipeline};
use crate::clock::Clock;
use crate::remediation::{SilenceMark, SilencedBy, StatusUpdate};
use crate::signal::{Fingerprint, Signal, SignalStatus, SignalType};
use crate::silence::status::SilenceKeeper;
use crate::silence::{Silence, SilenceRef, State};
use crate::sink::RequestRef;
use crate::state::Entry;
use crate::telemetry::SourceLabels;

/// Marks remembered at most: past it, a new mark is still written, and cleared by
/// the next occurrence no silence matches rather than when its silence ends.
const MARKS_MAX: usize = 100_000;

/// Requests this process marked with the silence active on their incident.
#[derive(Default)]
pub(super) struct Marks {
    marked: Mutex<HashMap<RequestRef, Mark>>,
    /// Orders this process's marks: of two merged into one write, the later stands.
    seq: AtomicU64,
}

struct Mark {
    silence: Arc<Silence>,
    incident: Incident,
    /// The incident's times when marked, which a later write restates.
    entry: Entry,
}

impl Marks {
    fn lock(&self) -> MutexGuard<'_, HashMap<RequestRef, Mark>> {
        self.marked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mark(&self, silence: Option<&Silence>) -> SilenceMark {
        let silence = silence.map(|s| SilencedBy {
            namespace: s.at.namespace.clone(),
            name: s.at.name.clone(),
            until: Time(s.ends_at),
        });
        SilenceMark { seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1, silence }
    }
}

/// What the silence step held of a batch, to be recorded once the batch is admitted
/// (a batch refused by the rate limit leaves no trace: its sender retries it).
pub(super) struct Silenced {
    now: Timestamp,
    held: Vec<(Arc<Silence>, Fingerprint, SignalType)>,
}

impl Pipeline {
    /// Honours the silences `keeper` knows from now on, and writes their statuses.
    /// Must be called within a tokio runtime: it starts the task that records the
    /// silences' states and clears the marks of ended ones.
    pub fn with_silences(mut self, keeper: SilenceKeeper) -> Self {
        self.status_writer.write_silences_to(keeper.store().clone());
        let (marks, writer) = (Arc::downgrade(&self.silence_marks), self.status_writer.clone());
        tokio::spawn(keep_silences(marks, keeper.clone(), writer, self.clock.clone()));
        self.silences = Some(keeper);
        self
    }

    /// What a repeat of `signal`, counted on its open request `at`, says of the
    /// silence active on its incident: the one that matches it now, or none. `None`
    /// (leave the request's mark as it is) only when silences are off.
    pub(super) fn silence_mark(&self, signal: &Signal<'_>, at: &RequestRef, entry: &Entry) -> Option<SilenceMark> {
        let keeper = self.silences.as_ref()?;
        let index = keeper.silences().current();
        let found = match index.is_empty() {
            true => None,
            false => index.find(signal, timestamp(&self.clock)).cloned(),
        };
        let mut marked = self.silence_marks.lock();
        match &found {
            Some(silence) if marked.len() < MARKS_MAX || marked.contains_key(at) => {
                let mark = Mark { silence: silence.clone(), incident: incident(signal, entry), entry: *entry };
                marked.insert(at.clone(), mark);
            }
            Some(_) => {}
            None => {
                marked.remove(at);
            }
        }
        drop(marked);
        Some(self.silence_marks.mark(found.as_deref()))
    }

    /// The silence step: holds every unanswered firing signal an active silence
    /// matches, unless its incident's request is open. `None` when nothing was held
    /// (the usual case: one index lookup per firing signal, no allocation).
    pub(super) fn silence(&self, batch: &mut Batch<'_, '_>) -> Option<Silenced> {
        let keeper = self.silences.as_ref()?;
        let index = keeper.silences().current();
        if index.is_empty() {
            return None;
        }
        let now = timestamp(&self.clock);
        let mut held = Vec::new();
        let mut outcomes = Vec::new();
        for (i, signal) in batch.unanswered() {
            if signal.status != SignalStatus::Firing {
                continue;
            }
            if let Some(silence) = index.find(signal, now).filter(|_| !self.is_open(signal)) {
                outcomes.push((i, silenced(signal, &silence.at)));
                held.push((silence.clone(), signal.fingerprint, signal.signal_type));
            }
        }
        for (i, outcome) in outcomes {
            batch.hold(i, outcome);
        }
        (!held.is_empty()).then_some(Silenced { now, held })
    }

    /// Counts what the silence step held, now that the batch is admitted: in each
    /// silence's status (and its first-match audit event) and in the metrics.
    pub(super) fn record_silenced(&self, silenced: Option<Silenced>) {
        let (Some(keeper), Some(silenced)) = (&self.silences, silenced) else { return };
        for (silence, fingerprint, signal_type) in &silenced.held {
            self.status_writer.silence(&silence.at, keeper.matched(silence, fingerprint, silenced.now));
            self.metrics.signal(signal_type.as_str(), OutcomeStatus::Silenced.as_str());
            self.metrics.signals_silenced.get_or_create(&SourceLabels { source: signal_type.as_str() }).inc();
        }
    }

    /// Whether the sink holds `signal`'s incident open, within the dedup window.
    fn is_open(&self, signal: &Signal<'_>) -> bool {
        let now = self.clock.now_s();
        self.sink
            .open_request(&signal.fingerprint)
            .is_some_and(|o| o.storm.is_none() && now.saturating_sub(o.last_seen_s) < self.window_s)
    }
}

fn silenced(signal: &Signal<'_>, at: &SilenceRef) -> Outcome {
    Outcome {
        fingerprint: signal.fingerprint,
        status: OutcomeStatus::Silenced,
        request: None,
        count: 0,
        hint: None,
        silence: Some(at.clone()),
    }
}

fn timestamp(clock: &Clock) -> Timestamp {
    Timestamp::from_millisecond(clock.now_ms() as i64).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Every second, until the pipeline is dropped (`marks` with it): clears the marks
/// whose silence is no longer active (ended, expired, paused between its time
/// intervals, deleted or ignored), restates those whose silence's end moved, and
/// records the silences' states (warning of those newly ignored).
async fn keep_silences(marks: Weak<Marks>, keeper: SilenceKeeper, writer: StatusWriter, clock: Clock) {
    let silences = keeper.silences().clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(marks) = marks.upgrade() else { return };
        let now = timestamp(&clock);
        let mut writes = Vec::new();
        marks.lock().retain(|at, mark| {
            let current = silences.get(&mark.silence.at).filter(|s| s.state(now) == State::Active);
            let keep = current.is_some();
            match current {
                Some(s) if Arc::ptr_eq(&s, &mark.silence) => return true,
                Some(s) => mark.silence = s,
                None => {}
            }
            let update = StatusUpdate {
                silenced_by: Some(marks.mark(keep.then_some(&*mark.silence))),
                ..uncounted(&mark.entry)
            };
            writes.push((mark.incident, at.clone(), update));
            keep
        });
        for (incident, at, update) in writes {
            writer.record(incident, &at, update);
        }
        drop(marks);
        hand_on_states(&keeper, &writer);
        keeper.warn_ignored().await;
    }
}

/// Hands the silences' changed states to the status writer: at each tick, and at a
/// graceful stop, so that a state changed since the last tick is written too.
pub(super) fn hand_on_states(keeper: &SilenceKeeper, writer: &StatusWriter) {
    for (at, change) in keeper.check_states() {
        writer.silence(&at, change);
    }
}
