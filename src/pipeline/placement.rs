//! Placement: which namespace an incident's request goes to, and its name there.
//!
//! Every replica derives the same place and name for one incident, from the signal
//! and its first-seen second alone: that is what makes a create idempotent. This
//! step never asks the sink or the store anything.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Pipeline;
use crate::remediation;
use crate::section::ConfigError;
use crate::signal::Signal;
use crate::sink::RequestRef;
use crate::state::Entry;

/// `placement`: which namespace requests go to.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PlacementConfig {
    /// Namespace for requests about cluster-scoped targets (nodes). Unset: they go
    /// to the signal's namespace.
    pub control_namespace: Option<String>,
    /// Put every request in `control_namespace`.
    pub all_in_control_namespace: bool,
}

impl PlacementConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.control_namespace.as_deref().is_some_and(|ns| !crate::ingest::is_dns1123_label(ns)) {
            return Err(ConfigError::invalid("placement.control_namespace", "must be a Kubernetes namespace name"));
        }
        if self.all_in_control_namespace && self.control_namespace.is_none() {
            return Err(ConfigError::invalid(
                "placement.all_in_control_namespace",
                "needs placement.control_namespace",
            ));
        }
        Ok(())
    }

    /// Where a signal's requests live: its namespace, or the control namespace for
    /// cluster-scoped targets (and for everything, when so configured).
    fn namespace_for(&self, signal: &Signal<'_>) -> String {
        let cluster_scoped = !signal.target.kind.is_empty() && signal.target.namespace.is_empty();
        match self {
            PlacementConfig { control_namespace: Some(control), all_in_control_namespace: true } => control.clone(),
            PlacementConfig { control_namespace: Some(control), .. } if cluster_scoped => control.clone(),
            _ => signal.namespace.to_string(),
        }
    }
}

impl Pipeline {
    /// Where a signal's requests live.
    pub(super) fn namespace_for(&self, signal: &Signal<'_>) -> String {
        self.placement.namespace_for(signal)
    }

    /// The request of the incident `entry` stands for, where the sink holds it: a
    /// signal that carries no details (PagerDuty's `resolve` and `acknowledge` have
    /// no payload) names no namespace, so the one its trigger gave is the sink's to
    /// say. Until the sink's view has the request (just created), where it was put.
    pub(super) fn locate(&self, signal: &Signal<'_>, entry: &Entry) -> RequestRef {
        self.sink
            .open_request(&signal.fingerprint)
            .filter(|open| open.storm.is_none() && open.first_seen_s == entry.first_seen_s)
            .map_or_else(|| self.reference(signal, entry), |open| open.at)
    }

    /// The request of the incident `entry` stands for.
    pub(super) fn reference(&self, signal: &Signal<'_>, entry: &Entry) -> RequestRef {
        RequestRef {
            namespace: self.namespace_for(signal),
            name: remediation::request_name(&signal.name, signal.fingerprint.as_bytes(), entry.first_seen_s),
        }
    }
}
