//! Flapping: an incident that goes firing → resolved → firing more than
//! `flap.threshold` times within `flap.window` is marked on its request (the
//! `Flapping` condition and the `tidegate.dev/flapping: "true"` label), because
//! that is where automatic remediation most often makes things worse. The mark
//! clears a window after the incident's last transition.
//!
//! Flapping marks a request; it never holds a signal back, opens or withholds a
//! request, or changes a count (docs/safety.md). Transitions are counted in the
//! state store, where every replica's signals of an incident meet in order, in one
//! atomic step per signal ([`crate::state::FlapRule`]); the mark and its clearing
//! live on the request, the sink's authority, so a restart or a store's loss
//! never unmarks or re-marks anything by itself. This module must never put a
//! client's string in a metric label.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status_writer::Incident;
use super::{Outcome, Pipeline, PipelineError};
use crate::remediation::{request_epoch, FlapUpdate, StatusUpdate};
use crate::section::ConfigError;
use crate::signal::{Fingerprint, Signal};
use crate::sink::RequestRef;
use crate::state::{Entry, FlapRule};
use crate::telemetry::SourceLabels;

/// `flap`: when an incident flaps.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct FlapConfig {
    /// An incident flaps once it went firing → resolved → firing more than this
    /// many times within `window`.
    pub threshold: u32,
    /// The span transitions are counted over; a request's `Flapping` condition
    /// clears this long after its incident's last transition.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub window: Duration,
}

impl Default for FlapConfig {
    fn default() -> Self {
        FlapConfig { threshold: 3, window: Duration::from_secs(1800) }
    }
}

impl FlapConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let secs = self.window.as_secs();
        if secs == 0 || self.window.subsec_nanos() != 0 || secs > u64::from(u32::MAX) {
            return Err(ConfigError::invalid("flap.window", "must be a whole number of seconds, at least 1s"));
        }
        if self.threshold == 0 || self.threshold > 100 {
            return Err(ConfigError::invalid("flap.threshold", "must be between 1 and 100"));
        }
        Ok(())
    }

    /// How the state store counts transitions for this rule: one more than the
    /// threshold is all it needs to keep.
    pub fn rule(&self) -> FlapRule {
        FlapRule { window_s: self.window.as_secs() as u32, keep: self.threshold + 1 }
    }

    pub fn window_s(&self) -> u32 {
        self.window.as_secs() as u32
    }

    /// Whether `transitions` within the window are flapping.
    pub fn flapping(&self, transitions: u32) -> bool {
        transitions > self.threshold
    }

    /// When the mark of a request whose last transition was at `last_s` clears.
    pub fn settles_at(&self, last_s: u32) -> u32 {
        last_s.saturating_add(self.window_s())
    }
}

/// What the sweep found and cleared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub flapping: usize,
    pub cleared: usize,
}

impl Pipeline {
    /// Counts a transition of `signal`'s incident (the `transitions`th within the
    /// window) and, past the threshold, marks the request the signal was counted
    /// on. The mark goes through the status writer, like every status change.
    pub(super) fn flapped(&self, signal: &Signal<'_>, outcome: &Outcome, transitions: u32) {
        let source = SourceLabels { source: signal.signal_type.as_str() };
        self.metrics.flap_transitions.get_or_create(&source).inc();
        let Some(at) = outcome.request.as_ref().filter(|_| self.flap.flapping(transitions)) else {
            return;
        };
        let now = self.clock.now_s();
        let flap = FlapUpdate::Flapping { transitions, at_s: now, window_s: self.flap.window_s() };
        if transitions == self.flap.threshold + 1 {
            // The transition that crossed the threshold; later ones re-mark.
            self.metrics.flapping_marked.inc();
        }
        let epoch = request_epoch(&at.name).unwrap_or(now);
        let incident = Incident::Signal(signal.fingerprint, epoch);
        self.status_writer.record(incident, at, flap_update(epoch, now, flap));
    }

    /// Clears the `Flapping` condition of every open request whose incident made no
    /// transition for a window. Every replica may sweep: a clearing names the
    /// transition it was decided on, and a request that saw a later one keeps its
    /// mark ([`FlapUpdate::Settled`]).
    pub async fn settle_flapping(&self) -> Result<Swept, PipelineError> {
        let now = self.clock.now_s();
        let mut swept = Swept::default();
        for rr in self.sink.flapping_requests().await? {
            // Read again: the mark may have been cleared since the sink listed it.
            let Some(status) = rr.status.as_ref().filter(|s| s.flapping()) else { continue };
            let Some(flapping) = &status.flapping else { continue };
            swept.flapping += 1;
            let last_s = flapping.last_transition_at.0.as_second().clamp(0, i64::from(u32::MAX)) as u32;
            if now < self.flap.settles_at(last_s) {
                continue;
            }
            let (Some(namespace), Some(name)) = (rr.metadata.namespace.clone(), rr.metadata.name.clone()) else {
                continue;
            };
            let mut fingerprint = [0u8; 32];
            let (Ok(()), Some(epoch)) =
                (hex::decode_to_slice(&rr.spec.signal_fingerprint, &mut fingerprint), request_epoch(&name))
            else {
                continue;
            };
            let seen_s = status.deduplication.as_ref().map_or(epoch, |d| d.last_seen_at.0.as_second() as u32);
            let at = RequestRef { namespace, name };
            let flap = FlapUpdate::Settled { last_s, at_s: now, window_s: self.flap.window_s() };
            let incident = Incident::Signal(Fingerprint::from_bytes(fingerprint), epoch);
            self.status_writer.record(incident, &at, flap_update(epoch, seen_s, flap));
            self.metrics.flapping_cleared.inc();
            swept.cleared += 1;
        }
        Ok(swept)
    }
}

/// An update that says only `flap`, about the request of the incident first seen
/// at `first_s` and last seen at `seen_s` (times only move forward when applied,
/// so they change nothing on a request that has them already).
fn flap_update(first_s: u32, seen_s: u32, flap: FlapUpdate) -> StatusUpdate {
    let times = Entry { first_seen_s: first_s, last_seen_s: seen_s, count: 0 };
    StatusUpdate { flap: Some(flap), ..super::uncounted(&times) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_the_threshold_flaps_and_the_store_keeps_one_more() {
        let config = FlapConfig::default();
        assert!(!config.flapping(3));
        assert!(config.flapping(4));
        assert_eq!(config.rule(), FlapRule { window_s: 1800, keep: 4 });
        assert_eq!(config.settles_at(1000), 2800);
    }

    #[test]
    fn validation_names_the_key() {
        let zero = FlapConfig { threshold: 0, ..Default::default() };
        assert!(zero.validate().unwrap_err().to_string().starts_with("flap.threshold"));
        let fraction = FlapConfig { window: Duration::from_millis(1500), ..Default::default() };
        assert!(fraction.validate().unwrap_err().to_string().starts_with("flap.window"));
    }
}
