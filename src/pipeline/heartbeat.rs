//! Heartbeats: alerts a sender fires all the time to prove that its path to
//! tidegate works (kube-prometheus-stack's always-firing `Watchdog`), and the
//! last-seen times of the senders that must be heard from.
//!
//! A heartbeat is the second rule of the pipeline (docs/safety.md), right after
//! admission: it updates `tidegate_heartbeat_last_seen_timestamp_seconds{sender}`
//! and goes no further. This step must never let a heartbeat reach the state store,
//! a storm count or the sink, and must never label a metric with a name a client
//! chose: the `sender` label is an authenticated sender's configured name (or
//! [`UNAUTHENTICATED`]), and the per-sender last-seen gauge exists only for the
//! senders `heartbeat.expect` names.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::audit;
use crate::clock::Clock;
use crate::section::ConfigError;
use crate::signal::Signal;
use crate::telemetry::{Metrics, SenderNameLabels};

/// The `sender` label of signals from a sender that did not authenticate (auth is
/// off, or the route takes anonymous senders): one value, so that addresses never
/// become label values.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// `heartbeat`: alerts that only prove a sender is alive, and the senders that
/// must be heard from.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Alert names that are heartbeats: never a request, never counted in storms;
    /// each updates `tidegate_heartbeat_last_seen_timestamp_seconds{sender}`.
    pub alertnames: Vec<String>,
    /// Senders that must be heard from (authenticated senders' configured names, or
    /// `unauthenticated`), each with the longest it may normally stay silent (with
    /// Alertmanager, its heartbeat route's `repeat_interval`). Each gets
    /// `tidegate_sender_last_seen_timestamp_seconds{sender}`, from any signal or
    /// heartbeat, for the `TidegateSenderSilent` and `TidegateHeartbeatMissing` alerts.
    #[serde(with = "crate::section::duration_map")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub expect: BTreeMap<String, Duration>,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig { alertnames: vec!["Watchdog".into()], expect: BTreeMap::new() }
    }
}

impl HeartbeatConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.alertnames.iter().any(|name| name.is_empty()) {
            return Err(ConfigError::invalid("heartbeat.alertnames", "an alert name cannot be empty"));
        }
        if self.expect.keys().any(|sender| sender.is_empty()) {
            return Err(ConfigError::invalid("heartbeat.expect", "a sender name cannot be empty"));
        }
        if self.expect.values().any(|interval| interval.as_secs() == 0) {
            return Err(ConfigError::invalid("heartbeat.expect", "each interval must be at least 1s"));
        }
        Ok(())
    }
}

/// Who submitted a batch of signals.
#[derive(Clone, Copy, Debug)]
pub struct Sender<'a> {
    /// The rate-limit key and the requests' submitter: the authenticated name, or
    /// the sender's address.
    pub name: &'a str,
    /// The configured name of an authenticated sender, bounded by the
    /// configuration: the only sender name a metric label may carry.
    pub label: Option<&'a str>,
}

impl Sender<'_> {
    /// The sender's metric label value.
    pub fn metric_name(&self) -> &str {
        self.label.unwrap_or(UNAUTHENTICATED)
    }
}

/// The heartbeat step: which signals are heartbeats, and the gauges they feed.
pub struct Heartbeats {
    alertnames: Vec<String>,
    expect: BTreeMap<String, Duration>,
    /// Senders whose first heartbeat this process has audited: bounded like the
    /// metric labels.
    audited: Mutex<BTreeSet<String>>,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl Heartbeats {
    /// The step as `config` says. Every expected sender counts as heard from at
    /// start-up, so that one that never sends goes silent (and is alerted on) one
    /// interval later, rather than never being a series at all.
    pub fn build(config: &HeartbeatConfig, clock: Clock, metrics: Arc<Metrics>) -> Self {
        let now = seconds(&clock);
        for (sender, interval) in &config.expect {
            let labels = SenderNameLabels { sender: sender.clone() };
            metrics.sender_last_seen.get_or_create(&labels).set(now);
            metrics.sender_expected_interval.get_or_create(&labels).set(interval.as_secs_f64());
        }
        Heartbeats {
            alertnames: config.alertnames.clone(),
            expect: config.expect.clone(),
            audited: Mutex::default(),
            clock,
            metrics,
        }
    }

    /// Whether `signal` is a heartbeat.
    pub fn is_heartbeat(&self, signal: &Signal<'_>) -> bool {
        self.alertnames.iter().any(|name| *name == signal.name)
    }

    /// Records that `sender` was heard from: any request it made, admitted or not,
    /// proves its path to tidegate works.
    pub fn heard_from(&self, sender: &Sender<'_>) {
        let name = sender.metric_name();
        if self.expect.contains_key(name) {
            let labels = SenderNameLabels { sender: name.to_string() };
            self.metrics.sender_last_seen.get_or_create(&labels).set(seconds(&self.clock));
        }
    }

    /// Records an admitted heartbeat of `sender`. The first one of each sender is
    /// audited, once per process: a heartbeat is not an incident, and one event per
    /// alert would flood the audit log at the sender's repeat rate.
    pub fn beat(&self, sender: &Sender<'_>) {
        let name = sender.metric_name();
        let labels = SenderNameLabels { sender: name.to_string() };
        self.metrics.heartbeat_last_seen.get_or_create(&labels).set(seconds(&self.clock));
        // A sign of life too, and never older than the heartbeat it came with.
        self.heard_from(sender);
        let mut audited = self.audited.lock().unwrap_or_else(|p| p.into_inner());
        if !audited.contains(name) {
            audited.insert(name.to_string());
            audit::heartbeat_heard(sender.name, name);
        }
    }
}

/// The clock's time in seconds, to the millisecond.
fn seconds(clock: &Clock) -> f64 {
    clock.now_ms() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Metrics;
    use std::time::UNIX_EPOCH;

    fn step(expect: &[(&str, u64)]) -> (Heartbeats, Clock, Arc<Metrics>) {
        let clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let metrics = Arc::new(Metrics::new());
        let config = HeartbeatConfig {
            expect: expect.iter().map(|(s, i)| (s.to_string(), Duration::from_secs(*i))).collect(),
            ..HeartbeatConfig::default()
        };
        (Heartbeats::build(&config, clock.clone(), metrics.clone()), clock, metrics)
    }

    fn gauge(metrics: &Metrics, name: &str, sender: &str) -> Option<f64> {
        let series = format!("tidegate_{name}{{sender=\"{sender}\"}} ");
        metrics.encode().lines().find_map(|l| l.strip_prefix(&series)?.parse().ok())
    }

    #[test]
    fn an_expected_sender_counts_as_heard_at_start_and_each_time_it_sends() {
        let (heartbeats, clock, metrics) = step(&[("am-eu", 300)]);
        assert_eq!(gauge(&metrics, "sender_last_seen_timestamp_seconds", "am-eu"), Some(1_700_000_000.0));
        assert_eq!(gauge(&metrics, "sender_expected_interval_seconds", "am-eu"), Some(300.0));

        clock.advance(Duration::from_millis(2500));
        heartbeats.heard_from(&Sender { name: "am-eu", label: Some("am-eu") });

        assert_eq!(gauge(&metrics, "sender_last_seen_timestamp_seconds", "am-eu"), Some(1_700_000_002.5));
        assert_eq!(gauge(&metrics, "heartbeat_last_seen_timestamp_seconds", "am-eu"), None, "no heartbeat yet");
    }

    #[test]
    fn a_heartbeat_feeds_its_senders_gauge_and_unexpected_senders_get_no_last_seen_series() {
        let (heartbeats, clock, metrics) = step(&[]);
        clock.advance(Duration::from_secs(7));
        heartbeats.beat(&Sender { name: "am-us", label: Some("am-us") });
        heartbeats.beat(&Sender { name: "10.0.0.9:4711", label: None });
        heartbeats.heard_from(&Sender { name: "am-ap", label: Some("am-ap") });

        assert_eq!(gauge(&metrics, "heartbeat_last_seen_timestamp_seconds", "am-us"), Some(1_700_000_007.0));
        assert_eq!(gauge(&metrics, "heartbeat_last_seen_timestamp_seconds", UNAUTHENTICATED), Some(1_700_000_007.0));
        let text = metrics.encode();
        assert!(!text.contains("10.0.0.9"), "an address is never a label value:\n{text}");
        assert!(!text.contains("sender_last_seen_timestamp_seconds{"), "only expected senders:\n{text}");
    }

    #[test]
    fn heartbeat_names_are_matched_exactly() {
        let (heartbeats, _, _) = step(&[]);
        let mut signal = crate::pipeline::lifecycle_tests::signal("Watchdog", "monitoring", "");
        assert!(heartbeats.is_heartbeat(&signal));
        signal.name = "WatchdogX".into();
        assert!(!heartbeats.is_heartbeat(&signal));
    }

    #[test]
    fn validation_names_the_key() {
        let config = HeartbeatConfig { alertnames: vec![String::new()], ..HeartbeatConfig::default() };
        assert!(config.validate().unwrap_err().to_string().starts_with("heartbeat.alertnames"));
        let config = HeartbeatConfig {
            expect: [("am".to_string(), Duration::from_millis(500))].into(),
            ..HeartbeatConfig::default()
        };
        assert!(config.validate().unwrap_err().to_string().starts_with("heartbeat.expect"));
    }
}
