//! Admission: a batch is charged to its source's rate limit, and the state store is
//! asked about its signals, in one round trip where the store can.
//!
//! The limit is decided in the state store, so that replicas sharing Redis share
//! each source's budget. A refused batch records nothing: its sender retries it.
//! This step never answers a signal itself; it only asks the store what each one is.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::{decide_span, storms, Batch, Pipeline, PipelineError};
use crate::section::ConfigError;
use crate::signal::Signal;
use crate::state::{Admission, Charge, Decision, Observation, RateLimit};

/// `rate_limit`: requests per source, decided in the state store, so that replicas
/// sharing Redis share each source's budget.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Whether sources are rate-limited at all.
    pub enabled: bool,
    /// Sustained requests per second per source: far above what one Alertmanager
    /// sends in a storm, so that only abusive sources are refused.
    pub rate: f64,
    /// Requests a source may send back to back above the rate.
    pub burst: u32,
    /// The status of a refusal: `503`, which Alertmanager and Prometheus retry, or
    /// `429`, for senders that honour it; Alertmanager treats a 429 like any 4xx and
    /// drops the notification (docs/delivery.md).
    pub refusal_status: u16,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { enabled: true, rate: 1000.0, burst: 5000, refusal_status: 503 }
    }
}

impl RateLimitConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason| Err(ConfigError::invalid(key, reason));
        if !(self.rate > 0.0 && self.rate <= 1_000_000.0) {
            return invalid("rate_limit.rate", "must be more than 0 and at most 1000000 requests per second");
        }
        if !matches!(self.refusal_status, 429 | 503) {
            return invalid("rate_limit.refusal_status", "must be 503 (retried by Alertmanager) or 429");
        }
        if self.burst == 0 {
            return invalid("rate_limit.burst", "must be at least 1");
        }
        Ok(())
    }

    /// The limit each source is charged against; `None` when disabled.
    pub fn limit(&self) -> Option<RateLimit> {
        self.enabled.then_some(RateLimit { rate_per_s: self.rate, burst: self.burst })
    }
}

impl Pipeline {
    /// Charges a request from `source` that will not be decided (it was refused
    /// before its signals were read): a bad request never gets round the limit.
    pub async fn admit(&self, source: &str) -> Result<Admission, PipelineError> {
        let Some(charge) = self.charge(source) else { return Ok(Admission::Allowed) };
        let admitted =
            self.state.admit(charge.source, charge.limit, charge.now_ms).instrument(decide_span("admit")).await;
        Ok(admitted.inspect_err(|e| self.failed(e))?)
    }

    /// What a request from `source` costs it, when sources are rate-limited.
    fn charge<'a>(&self, source: &'a str) -> Option<Charge<'a>> {
        self.rate_limit.map(|limit| Charge { source, limit, now_ms: self.clock.now_ms() })
    }

    /// Charges the batch to `source` and asks the store about each signal no step
    /// has answered: what it asked, and the store's answer.
    pub(super) async fn admit_and_observe(
        &self,
        batch: &Batch<'_, '_>,
        source: &str,
    ) -> Result<(Asked, Decision), PipelineError> {
        let charge = self.charge(source);
        let mut scope = None;
        let mut asked = Asked {
            places: Vec::with_capacity(batch.signals.len()),
            observations: Vec::with_capacity(batch.signals.len()),
        };
        for (i, signal) in batch.unanswered() {
            asked.places.push(i);
            asked.observations.push(observation(signal, &mut scope));
        }
        let now = self.clock.now_s();
        let decision = match charge {
            Some(charge) => {
                self.state
                    .admit_and_observe(charge, &asked.observations, now)
                    .instrument(decide_span("admit_and_observe"))
                    .await
            }
            None => self
                .state
                .observe(&asked.observations, now)
                .instrument(decide_span("observe"))
                .await
                .map(Decision::Decided),
        };
        Ok((asked, decision.inspect_err(|e| self.failed(e))?))
    }
}

/// What the store was asked about a batch: one observation per signal no step had
/// answered, and each one's place in the batch.
pub(super) struct Asked {
    pub(super) places: Vec<usize>,
    pub(super) observations: Vec<Observation>,
}

/// What the state store is asked about a signal. Resolutions carry their storm key
/// too (never counted): on Cluster it places their dedup keys. `last` remembers the
/// previous signal's scope, which the next one usually shares.
pub(super) fn observation<'a>(s: &'a Signal<'_>, last: &mut Option<(&'a str, &'a str, [u8; 16])>) -> Observation {
    Observation { fingerprint: s.fingerprint, status: s.status, storm: Some(storms::key(s, last)) }
}
