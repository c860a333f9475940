//! The silence step: a firing signal that would open a new request opens none
//! while a silence matches it.
//!
//! It runs after admission and before the state store observes anything, so a
//! silenced signal counts toward no storm and no dedup window. Whether the
//! incident's request is already open is the sink's authority's answer
//! ([`Sink::open_request`], no I/O): a signal of an open incident is not silenced
//! here but counted on its request as usual, since hiding occurrences of an incident
//! already being worked on would only make its request wrong. A silenced signal is
//! answered 2xx (`"status":"silenced"`, naming the silence), counted in the
//! silence's status and in `tidegate_signals_silenced_total{source}`, and audited
//! once per incident by the [`SilenceKeeper`]. Resolutions pass: they open nothing.
//!
//! Must never do I/O per signal, nor scan every silence: the index does the lookup.

use std::borrow::Cow;

use jiff::Timestamp;

use super::{Outcome, OutcomeStatus, Pipeline};
use crate::signal::{Signal, SignalStatus};
use crate::silence::status::SilenceKeeper;
use crate::silence::SilenceRef;
use crate::sink::Sink;

/// The signals of a batch a silence kept from opening a request.
pub struct Silenced<'s, 'a> {
    /// The signals that go on to the state store, in order.
    pub kept: Cow<'s, [Signal<'a>]>,
    /// For each signal of the batch, in order: its outcome if it was silenced.
    pub outcomes: Vec<Option<Outcome>>,
}

impl Pipeline {
    /// Honours the silences `keeper` knows from now on.
    pub fn with_silences(mut self, keeper: SilenceKeeper) -> Self {
        self.silences = Some(keeper);
        self
    }

    /// The silence step over a batch: `None` when no signal is silenced (the usual
    /// case, which costs one index lookup per firing signal and no allocation).
    pub(super) fn silence<'s, 'a>(&self, signals: &'s [Signal<'a>]) -> Option<Silenced<'s, 'a>> {
        let keeper = self.silences.as_ref()?;
        let index = keeper.silences().current();
        if index.is_empty() {
            return None;
        }
        let now_ms = self.clock.now_ms() as i64;
        let now = Timestamp::from_millisecond(now_ms).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut outcomes: Vec<Option<Outcome>> = Vec::new();
        for (i, signal) in signals.iter().enumerate() {
            if signal.status != SignalStatus::Firing {
                continue;
            }
            let Some(silence) = index.find(signal, now) else { continue };
            if self.is_open(self.sink.as_ref(), signal) {
                continue;
            }
            if outcomes.is_empty() {
                outcomes.resize_with(signals.len(), || None);
            }
            keeper.matched(silence, &signal.fingerprint, now);
            self.metrics.signal(signal.signal_type.as_str(), OutcomeStatus::Silenced.as_str());
            self.metrics
                .signals_silenced
                .get_or_create(&crate::telemetry::SourceLabels { source: signal.signal_type.as_str() })
                .inc();
            outcomes[i] = Some(silenced(signal, &silence.at));
        }
        if outcomes.is_empty() {
            return None;
        }
        let kept = signals.iter().zip(&outcomes).filter(|(_, o)| o.is_none()).map(|(s, _)| s.clone()).collect();
        Some(Silenced { kept: Cow::Owned(kept), outcomes })
    }

    /// Whether the sink holds `signal`'s incident open, within the dedup window.
    fn is_open(&self, sink: &dyn Sink, signal: &Signal<'_>) -> bool {
        let now = self.clock.now_s();
        sink.open_request(&signal.fingerprint)
            .is_some_and(|o| o.storm.is_none() && now.saturating_sub(o.last_seen_s) < self.window_s)
    }
}

fn silenced(signal: &Signal<'_>, at: &SilenceRef) -> Outcome {
    Outcome {
        fingerprint: signal.fingerprint,
        status: OutcomeStatus::Silenced,
        request: None,
        count: 0,
        silence: Some(at.clone()),
    }
}

/// Puts the outcomes of the signals that went on (`decided`, in order) back
/// between the silenced ones.
pub(super) fn merge(silenced: Vec<Option<Outcome>>, decided: Vec<Outcome>) -> Vec<Outcome> {
    let mut decided = decided.into_iter();
    silenced.into_iter().filter_map(|o| o.or_else(|| decided.next())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::Fingerprint;

    fn outcome(n: u8, status: OutcomeStatus) -> Outcome {
        Outcome { fingerprint: Fingerprint::from_bytes([n; 32]), status, request: None, count: 0, silence: None }
    }

    #[test]
    fn outcomes_keep_the_batchs_order_around_silenced_signals() {
        let silenced =
            vec![None, Some(outcome(1, OutcomeStatus::Silenced)), None, Some(outcome(3, OutcomeStatus::Silenced))];
        let decided = vec![outcome(0, OutcomeStatus::Created), outcome(2, OutcomeStatus::Duplicate)];
        let merged = merge(silenced, decided);
        let order: Vec<u8> = merged.iter().map(|o| o.fingerprint.as_bytes()[0]).collect();
        assert_eq!(order, [0, 1, 2, 3]);
        assert_eq!(merged[1].status, OutcomeStatus::Silenced);
    }
}
