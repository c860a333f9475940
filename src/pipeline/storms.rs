//! Storms: many alerts of one name in one namespace are one incident, counted on one
//! aggregated request per window instead of a request each.
//!
//! Every storm rule the pipeline applies is here: the key an alert takes part in
//! detection with, when an aggregation window is still open (the `storm.inactivity`
//! and `storm.max_duration` rules, [`Storms::live`]), how a folded alert is counted
//! on its window's request, creating that request when the alert opened the window,
//! and rejoining a window the sink still holds after the state store lost it.
//!
//! What stays elsewhere, because it is not the pipeline's: detection itself (when a
//! scope is in a storm and a window opens, by the `storm.*` thresholds of
//! [`StormConfig`]) is state, decided by the state store atomically across replicas
//! (`state/memory.rs`, `state/redis/decide.lua`, one conformance suite); the
//! aggregated request's name and document are the request type's
//! (`remediation::storm_request_name`, `remediation::build_storm`).
//!
//! This step never creates a request for an alert the store did not fold, and never
//! counts a folded alert anywhere but on its window's request.

use std::collections::HashMap;
use std::sync::Mutex;

use tracing::Instrument;

use super::{decide_span, Outcome, OutcomeStatus, Pipeline, PipelineError, Slow};
use crate::audit;
use crate::remediation::{self, StatusUpdate, StormUpdate};
use crate::signal::{Signal, SignalStatus};
use crate::sink::RequestRef;
use crate::state::{Folded, Observation, OpenWindow, StormConfig, StormKey};
use crate::telemetry::StormLabels;

use super::status_writer::Incident;

/// The storm rules, and the windows this replica has folded alerts into.
pub(super) struct Storms {
    rules: StormConfig,
    /// (scope, opening second) → second of the last alert folded in.
    windows: Mutex<HashMap<([u8; 16], u32), u32>>,
}

impl Storms {
    pub(super) fn new(rules: StormConfig) -> Self {
        Storms { rules, windows: Mutex::default() }
    }

    /// Whether a window opened at `opened`, whose last alert came at `last`, is still
    /// open at `now`: it closes after `storm.inactivity` without an alert, or
    /// `storm.max_duration` after it opened, whichever comes first.
    pub(super) fn live(&self, opened: u32, last: u32, now: u32) -> bool {
        now.saturating_sub(last) < self.rules.inactivity_s() && now.saturating_sub(opened) < self.rules.max_duration_s()
    }

    /// Notes an alert folded into a window at `now`.
    fn seen(&self, scope: [u8; 16], window_id: u32, now: u32) {
        self.windows.lock().unwrap_or_else(|p| p.into_inner()).insert((scope, window_id), now);
    }

    /// Windows this replica has folded alerts into that are still open at `now`.
    fn open(&self, now: u32) -> usize {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.retain(|(_, opened), last| self.live(*opened, *last, now));
        windows.len()
    }
}

/// A signal's storm key: its (namespace, alert name) scope and its resource. `last`
/// remembers the previous signal's scope, which the next one usually shares, so a
/// webhook's scope is hashed once.
pub(super) fn key<'a>(s: &'a Signal<'_>, last: &mut Option<(&'a str, &'a str, &'a str, [u8; 16])>) -> StormKey {
    let cluster = s.target.cluster.as_str();
    let scope = match *last {
        Some((namespace, name, at, scope)) if namespace == s.namespace && name == s.name && at == cluster => scope,
        _ => {
            let scope = StormKey::scope(&s.namespace, &s.name, cluster);
            *last = Some((&s.namespace, &s.name, cluster, scope));
            scope
        }
    };
    StormKey::in_scope(scope, &s.target)
}

impl Pipeline {
    /// Storm windows this replica has folded alerts into that are still open.
    pub fn open_windows(&self) -> usize {
        self.storms.open(self.clock.now_s())
    }

    /// Acts on an alert the store folded into a storm window, without I/O where it
    /// can: counted on the window's request, unless the alert opened the window (its
    /// request is created) or the window goes on in a request the sink still holds.
    /// `rejoined` holds the windows of this batch found to go on that way.
    pub(super) fn fold_now(
        &self,
        signal: &Signal<'_>,
        asked: &Observation,
        folded: Folded,
        rejoined: &mut HashMap<([u8; 16], u32), OpenWindow>,
    ) -> Result<Outcome, Slow> {
        let scope = asked.storm.expect("only alerts with a storm scope fold").scope;
        if let Some(window) = rejoined.get(&(scope, folded.window_id)) {
            return Err(Slow::Rejoin(scope, *window));
        }
        if folded.opened {
            // The store opened a window, but the sink may still hold the scope's
            // aggregated request from before the store lost its window: then the
            // storm goes on there, with every alert of this batch the store folded
            // into its new window.
            if let Some((_, window)) = self.open_window(signal, asked, self.clock.now_s()) {
                rejoined.insert((scope, folded.window_id), window);
                return Err(Slow::Rejoin(scope, window));
            }
            return Err(Slow::OpenStorm(scope, folded));
        }
        let (outcome, incident, at, update) = self.folded(signal, &scope, folded);
        self.status_writer.repeat(incident, &at, update);
        Ok(outcome)
    }

    /// The storm window, still open by the storm rules, whose aggregated request the
    /// sink holds for `signal`'s scope.
    pub(super) fn open_window(
        &self,
        signal: &Signal<'_>,
        asked: &Observation,
        now: u32,
    ) -> Option<([u8; 16], OpenWindow)> {
        let scope = asked.storm.filter(|_| signal.status == SignalStatus::Firing)?.scope;
        let open = self.sink.open_request(&remediation::storm_fingerprint(
            &signal.name,
            &signal.namespace,
            &signal.target.cluster,
        ))?;
        let kind = open.storm?;
        let live = self.storms.live(open.first_seen_s, open.last_seen_s, now);
        let window = OpenWindow { id: open.first_seen_s, kind, alerts: open.count.min(u32::MAX as u64) as u32 };
        live.then_some((scope, window))
    }

    /// Folds `signal` into a storm window the sink knows is open and the store had
    /// lost, teaching the store the window again.
    pub(super) async fn rejoin(
        &self,
        signal: &Signal<'_>,
        asked: &Observation,
        scope: [u8; 16],
        window: OpenWindow,
        now: u32,
    ) -> Result<Outcome, PipelineError> {
        let adopted = self.state.adopt_window(asked, window, now).instrument(decide_span("adopt_window")).await;
        let folded = adopted.inspect_err(|e| self.failed(e))?;
        let (outcome, incident, at, update) = self.folded(signal, &scope, folded);
        self.status_writer.repeat(incident, &at, update);
        Ok(outcome)
    }

    /// Counts a storm's alert on its aggregated request, creating the request when
    /// this alert opened the window.
    pub(super) async fn fold(
        &self,
        signal: &Signal<'_>,
        scope: &[u8; 16],
        folded: Folded,
        by: &str,
    ) -> Result<Outcome, PipelineError> {
        let (outcome, incident, at, update) = self.folded(signal, scope, folded);
        if !folded.opened {
            self.status_writer.repeat(incident, &at, update);
            return Ok(outcome);
        }
        self.metrics.storms.get_or_create(&StormLabels { r#type: folded.kind.as_str() }).inc();
        audit::storm_opened(by, &at.namespace, &at.name, folded.kind.as_str(), &signal.name, &hex::encode(scope));
        let class = self.classify(signal);
        let mut request = remediation::build_storm(signal, scope, &folded, &class, &update);
        self.name_trace(&mut request);
        self.create(incident, request, &at, update, by).await?;
        Ok(outcome)
    }

    /// A folded alert's outcome, and the status update of its aggregated request, to
    /// be counted as a repeat unless the alert opened the window (the request's
    /// creation counts that one).
    fn folded(
        &self,
        signal: &Signal<'_>,
        scope: &[u8; 16],
        folded: Folded,
    ) -> (Outcome, Incident, RequestRef, StatusUpdate) {
        let at = RequestRef {
            namespace: self.namespace_for(signal),
            name: remediation::storm_request_name(&signal.name, scope, folded.window_id),
        };
        let incident = Incident::Storm(*scope, folded.window_id);
        let now = self.clock.now_s();
        let update = StatusUpdate {
            storm: Some(StormUpdate {
                resource_count: folded.resource_count as u64,
                resources: vec![signal.target.clone()],
                cap: self.storms.rules.affected_resources_cap,
            }),
            ..StatusUpdate::seen(folded.window_id, now)
        };
        self.storms.seen(*scope, folded.window_id, now);
        self.metrics.alerts_aggregated.inc();
        let status = OutcomeStatus::Aggregated { opened: folded.opened };
        let outcome = self.outcome(signal, status, Some(at.clone()), folded.alert_count);
        (outcome, incident, at, update)
    }
}
