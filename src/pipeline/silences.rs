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
//! Must never do I/O per signal, nor scan every silence: the index does the lookup.

use std::sync::Arc;

use jiff::Timestamp;

use super::{Batch, Outcome, OutcomeStatus, Pipeline};
use crate::signal::{Fingerprint, Signal, SignalStatus, SignalType};
use crate::silence::status::SilenceKeeper;
use crate::silence::{Silence, SilenceRef};
use crate::telemetry::SourceLabels;

/// What the silence step held of a batch, to be recorded once the batch is admitted
/// (a batch refused by the rate limit leaves no trace: its sender retries it).
pub(super) struct Silenced {
    now: Timestamp,
    held: Vec<(Arc<Silence>, Fingerprint, SignalType)>,
}

impl Pipeline {
    /// Honours the silences `keeper` knows from now on.
    pub fn with_silences(mut self, keeper: SilenceKeeper) -> Self {
        self.silences = Some(keeper);
        self
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
        let now = Timestamp::from_millisecond(self.clock.now_ms() as i64).unwrap_or(Timestamp::UNIX_EPOCH);
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
            keeper.matched(silence, fingerprint, silenced.now);
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
