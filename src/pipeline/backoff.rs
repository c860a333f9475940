//! The outcome rule, last in the pipeline (docs/safety.md): what a controller made
//! of an incident's last request holds its next one back.
//!
//! - After `Failed`, a new occurrence opens no new request until the back-off has
//!   passed: `lifecycle.failure_backoff`, doubled for each consecutive failure of
//!   the incident, at most `lifecycle.failure_backoff_max`; a `Completed` request
//!   starts the count again. The back-off runs from the failed attempt's start (its
//!   request's first-seen second): the next attempt starts no sooner than that
//!   long after the last one started, which every replica computes alike from the
//!   sink, whatever it restarted or lost.
//! - `ManualReviewRequired` latches: no new request for the incident until a
//!   person changes the phase or deletes the request.
//!
//! Occurrences held back are counted on the request that holds them. The facts
//! come from the sink's authority only ([`LastRequest`]), never from the state
//! store, so restarts, Redis loss and replicas change nothing. The rule itself
//! ([`LifecycleConfig::hold`]) is a pure decision; the pipeline's part here asks it
//! where [`super::recovery`] would open a request. It must never make a held-back
//! signal disappear: each is counted on its request, in a metric, and audited once.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::status_writer::Incident;
use super::{decide_span, Outcome, OutcomeStatus, Pipeline, PipelineError};
use crate::audit;
use crate::remediation::StatusUpdate;
use crate::section::ConfigError;
use crate::signal::Signal;
use crate::sink::{LastRequest, Phase};
use crate::state::{Entry, Observation};
use crate::telemetry::ReasonLabels;

/// `lifecycle`: how an incident's last request holds back the next.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// After a request of an incident ends `Failed`, its next request waits this
    /// long after the failed one began; doubled for each further consecutive
    /// failure of the incident.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub failure_backoff: Duration,
    /// The longest back-off, however many failures in a row.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub failure_backoff_max: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig { failure_backoff: Duration::from_secs(300), failure_backoff_max: Duration::from_secs(3600) }
    }
}

impl LifecycleConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.failure_backoff.subsec_nanos() != 0 || self.failure_backoff_max.subsec_nanos() != 0 {
            return Err(ConfigError::invalid("lifecycle.failure_backoff", "must be whole seconds"));
        }
        if self.failure_backoff_max < self.failure_backoff {
            return Err(ConfigError::invalid("lifecycle.failure_backoff_max", "must be at least failure_backoff"));
        }
        Ok(())
    }

    /// The back-off after `failures` consecutive failures (at least 1), in seconds.
    pub fn backoff_s(&self, failures: u32) -> u32 {
        let base = self.failure_backoff.as_secs();
        let doubled = base.saturating_mul(1u64 << failures.saturating_sub(1).min(32));
        doubled.min(self.failure_backoff_max.as_secs()).min(u64::from(u32::MAX)) as u32
    }

    /// Whether, and how, `last` (an incident's newest request) holds a new request
    /// for the incident back at `now_s`.
    pub fn hold(&self, last: &LastRequest, now_s: u32) -> Option<Hold> {
        match last.phase {
            Phase::ManualReview => Some(Hold::Latched),
            Phase::Failed => {
                let until_s = last.first_seen_s.saturating_add(self.backoff_s(failures(last)));
                (now_s < until_s).then_some(Hold::BackingOff { until_s })
            }
            Phase::Active | Phase::Ended => None,
        }
    }
}

/// The consecutive failures of an incident whose newest request is `last`,
/// counting `last` itself if it failed.
pub fn failures(last: &LastRequest) -> u32 {
    match last.phase {
        Phase::Failed => last.prior_failures.saturating_add(1),
        _ => 0,
    }
}

/// Why a new request is held back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The last request failed; no new one before `until_s`.
    BackingOff { until_s: u32 },
    /// The last request waits for a person (`ManualReviewRequired`).
    Latched,
}

impl Hold {
    /// Every hold's [`Hold::reason`], for the series made at 0 at start.
    pub const REASONS: [&'static str; 2] = [Hold::BackingOff { until_s: 0 }.reason(), Hold::Latched.reason()];

    /// The metric and audit label of the hold.
    pub const fn reason(self) -> &'static str {
        match self {
            Hold::BackingOff { .. } => "failure_backoff",
            Hold::Latched => "manual_review",
        }
    }
}

/// Held requests remembered for auditing once; past this the memory starts over
/// (an incident may then be audited again, never not at all).
const HELD_AUDITED_MAX: usize = 10_000;

impl Pipeline {
    /// Opens the incident `entry` describes, unless the sink's record of its last
    /// request holds it back: then the occurrence is counted on that request, and
    /// the state store taught to count the next ones there too. With `adopt`,
    /// `entry` is new to the store, and taught to it before the create.
    pub(super) async fn open_unless_held(
        &self,
        signal: &Signal<'_>,
        asked: &Observation,
        entry: Entry,
        adopt: bool,
        by: &str,
    ) -> Result<Outcome, PipelineError> {
        let now = self.clock.now_s();
        let last = self.sink.last_request(&signal.fingerprint);
        if let Some((last, hold)) = last.as_ref().and_then(|l| Some((l, self.lifecycle.hold(l, now)?))) {
            let count = last.count.min(u64::from(u32::MAX) - 1) as u32 + 1;
            let held = Entry { first_seen_s: last.first_seen_s, last_seen_s: now, count };
            self.state
                .adopt(asked, held, now)
                .instrument(decide_span("adopt"))
                .await
                .inspect_err(|e| self.failed(e))?;
            return Ok(self.hold_back(signal, last, hold, count, by));
        }
        if adopt {
            self.state
                .adopt(asked, entry, now)
                .instrument(decide_span("adopt"))
                .await
                .inspect_err(|e| self.failed(e))?;
        }
        self.open(signal, entry, last.as_ref().map_or(0, failures), by).await
    }

    /// Counts `signal` on `last`, the request that holds its incident back, and
    /// says why. Audited once per held request and process.
    pub(super) fn hold_back(
        &self,
        signal: &Signal<'_>,
        last: &LastRequest,
        hold: Hold,
        count: u32,
        by: &str,
    ) -> Outcome {
        let update = StatusUpdate {
            backoff_until_s: match hold {
                Hold::BackingOff { until_s } => Some(until_s),
                Hold::Latched => None,
            },
            ..StatusUpdate::seen(last.first_seen_s, self.clock.now_s())
        };
        self.status_writer.repeat(Incident::Signal(signal.fingerprint, last.first_seen_s), &last.at, update);
        self.metrics.held_back.get_or_create(&ReasonLabels { reason: hold.reason() }).inc();
        let first = {
            let mut audited = self.held_audited.lock().unwrap_or_else(|p| p.into_inner());
            if audited.len() >= HELD_AUDITED_MAX {
                audited.clear();
            }
            audited.insert(last.at.clone())
        };
        if first {
            let fingerprint = signal.fingerprint.to_hex();
            audit::held_back(by, &last.at.namespace, &last.at.name, hold.reason(), &signal.name, &fingerprint);
        }
        let status = match hold {
            Hold::BackingOff { until_s } => OutcomeStatus::BackingOff { until_s },
            Hold::Latched => OutcomeStatus::Held,
        };
        self.outcome(signal, status, Some(last.at.clone()), count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::RequestRef;

    fn last(phase: Phase, prior_failures: u32) -> LastRequest {
        LastRequest {
            at: RequestRef { namespace: "shop".into(), name: "r".into() },
            first_seen_s: 1000,
            last_seen_s: 1000,
            count: 1,
            phase,
            prior_failures,
        }
    }

    #[test]
    fn the_backoff_doubles_per_consecutive_failure_up_to_the_max() {
        let config = LifecycleConfig::default();
        let backoffs: Vec<u32> = (1..=7).map(|n| config.backoff_s(n)).collect();
        assert_eq!(backoffs, [300, 600, 1200, 2400, 3600, 3600, 3600]);
        assert_eq!(config.backoff_s(u32::MAX), 3600, "no overflow");
    }

    #[test]
    fn a_failed_request_holds_until_its_start_plus_the_backoff() {
        let config = LifecycleConfig::default();
        let failed_twice_before = last(Phase::Failed, 2);
        assert_eq!(failures(&failed_twice_before), 3);
        let until_s = 1000 + 1200;
        assert_eq!(config.hold(&failed_twice_before, until_s - 1), Some(Hold::BackingOff { until_s }));
        assert_eq!(config.hold(&failed_twice_before, until_s), None, "the back-off has passed");
    }

    #[test]
    fn manual_review_latches_for_ever_and_other_phases_hold_nothing() {
        let config = LifecycleConfig::default();
        assert_eq!(config.hold(&last(Phase::ManualReview, 0), u32::MAX), Some(Hold::Latched));
        assert_eq!(config.hold(&last(Phase::Ended, 4), 1001), None, "a Completed request resets");
        assert_eq!(failures(&last(Phase::Ended, 4)), 0);
        assert_eq!(config.hold(&last(Phase::Active, 0), 1001), None);
    }

    #[test]
    fn validation_names_the_key() {
        let config = LifecycleConfig { failure_backoff_max: Duration::from_secs(60), ..Default::default() };
        assert!(config.validate().unwrap_err().to_string().starts_with("lifecycle.failure_backoff_max"));
    }
}
