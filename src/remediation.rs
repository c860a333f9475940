//! The `RemediationRequest` custom resource: the gateway's only output.
//!
//! Defined once here; the CRD YAML (`tidegate crd`), the directory sink's manifests
//! and the Kubernetes sink all derive from these types. The spec is written once, at
//! creation, and never changed; the gateway owns only the status fields below, and
//! downstream controllers own `status.phase`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::signal::{Labels, Signal, SignalType, TargetResource};

/// Longest label or annotation value copied into the spec; longer values are cut at
/// a character boundary so that one chatty alert cannot bloat the object.
pub const MAX_VALUE_BYTES: usize = 1024;

/// Label keys put on every RemediationRequest.
pub mod labels {
    pub const FINGERPRINT: &str = "tidegate.dev/fingerprint";
    pub const SIGNAL: &str = "tidegate.dev/signal";
    pub const SEVERITY: &str = "tidegate.dev/severity";
    pub const PRIORITY: &str = "tidegate.dev/priority";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// `"true"` while the request's `Flapping` condition is `True`; absent
    /// otherwise, so that `-l '!tidegate.dev/flapping'` selects the calm ones.
    pub const FLAPPING: &str = "tidegate.dev/flapping";
}

/// What the incident is: written once, when the request is created, and never changed.
// (A plain comment, not a doc comment: doc comments become the CRD's descriptions.)
// The spec is immutable: `KubeSchema`, in place of `JsonSchema`, puts the CEL
// transition rule `self == oldSelf` on `spec` in the generated CRD, so the API server
// rejects any update that changes it. Status writes go through the status subresource.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "remediation.tidegate.dev",
    version = "v1alpha1",
    kind = "RemediationRequest",
    namespaced,
    shortname = "rr",
    doc = "A request for remediation of one incident, opened by tidegate when the incident's first signal arrives and counted on while it repeats.",
    status = "RemediationRequestStatus",
    // What on-call needs at a glance (`kubectl get rr`); `-o wide` adds the rest.
    printcolumn = r#"{"name":"Signal","type":"string","jsonPath":".spec.signalName"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetResource.name"}"#,
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.targetResource.kind","priority":1}"#,
    printcolumn = r#"{"name":"Priority","type":"string","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Count","type":"integer","jsonPath":".status.deduplication.occurrenceCount"}"#,
    printcolumn = r#"{"name":"Storm","type":"string","jsonPath":".spec.storm.type"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Flapping","type":"string","jsonPath":".status.conditions[?(@.type==\"Flapping\")].status","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Severity","type":"string","jsonPath":".spec.severity","priority":1}"#,
    printcolumn = r#"{"name":"Last Seen","type":"date","jsonPath":".status.deduplication.lastSeenAt","priority":1}"#,
    printcolumn = r#"{"name":"Fingerprint","type":"string","jsonPath":".spec.signalFingerprint","priority":1}"#
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable"))]
#[serde(rename_all = "camelCase")]
pub struct RemediationRequestSpec {
    /// The incident's identity: SHA-256 hex of `name:namespace:kind:resource-name`,
    /// the same for every repeat of the incident.
    pub signal_fingerprint: String,
    /// The alert name (Alertmanager's `alertname`), or the event's reason.
    pub signal_name: String,
    /// The signal's severity as its sender wrote it, such as `critical` or `warning`.
    pub severity: String,
    /// Where the signal came from, such as `prometheus-alert`.
    pub signal_type: SignalType,
    /// Who sent the signal: the Alertmanager receiver, or the event's reporting
    /// component.
    pub signal_source: String,
    /// The Kubernetes object the incident is about: a Pod's top controller when its
    /// owners are known, the named resource otherwise.
    pub target_resource: TargetResource,
    /// When the sender says the condition started firing, if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firing_time: Option<Time>,
    /// When tidegate received the signal that opened this request.
    pub received_time: Time,
    /// The labels of the signal that opened this request, each value cut at 1024
    /// bytes.
    #[serde(default)]
    pub signal_labels: BTreeMap<String, String>,
    /// The annotations of the signal that opened this request (summary, runbook...),
    /// each value cut at 1024 bytes.
    #[serde(default)]
    pub signal_annotations: BTreeMap<String, String>,
    /// The environment the target runs in, such as `production`: from its
    /// namespace's `environment` label, `classify.namespaces`, or the default.
    pub environment: String,
    /// How urgent the incident is, from `P0` (most urgent) to `P3`.
    pub priority: String,
    /// The priority rule (`classify.priorities`) that chose `priority`.
    #[serde(default)]
    pub priority_rule: String,
    /// Set on a request that aggregates an alert storm: many alerts, or many
    /// resources, counted as one incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormSpec>,
}

/// What an aggregated request is about.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StormSpec {
    /// `rate` (too many alerts) or `pattern` (too many resources).
    #[serde(rename = "type")]
    pub kind: String,
    /// The aggregation window: the second it opened, RFC 3339.
    pub window_id: String,
    /// The resources known when the request was created; later ones are listed in
    /// `status.storm`.
    pub affected_resources: Vec<TargetResource>,
}

/// Counts of an aggregated request, kept beyond the list's cap.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StormStatus {
    /// Alerts counted in the storm so far.
    pub alert_count: u64,
    /// Distinct resources the storm's alerts named, including those beyond the list.
    pub resource_count: u64,
    /// Affected resources, at most `storm.affected_resources_cap`.
    #[serde(default)]
    pub affected_resources: Vec<TargetResource>,
}

/// What the gateway records about an open request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationRequestStatus {
    /// How often the incident occurred, and when first and last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplication: Option<Deduplication>,
    /// Counts of an aggregated request (one with `spec.storm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormStatus>,
    /// When the sender reported the condition resolved; unset while it fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_resolved_at: Option<Time>,
    /// Signals an inhibit rule held back while this request was open, counted here
    /// instead of opening requests of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inhibited: Option<InhibitedStatus>,
    /// Where remediation stands: owned by downstream controllers; the gateway
    /// preserves it. Terminal phases, after which the next occurrence is a new
    /// incident: `Completed`, `Failed`, `Cancelled`, `TimedOut`, `Skipped`. After
    /// `Failed` the next request waits out a back-off (see `backoff`).
    /// `ManualReviewRequired` is not terminal: it latches, and no new request is made
    /// for the incident until a person changes the phase or deletes the request;
    /// occurrences meanwhile are counted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Written by the gateway: how this request's incident backs off after failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// When a person last acknowledged the incident at its sender (PagerDuty's
    /// `acknowledge`); unset until one does. Not an occurrence: it counts nothing
    /// and opens nothing. A controller may hold automatic remediation while a
    /// person is on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<Time>,
    /// Set while a RemediationSilence is active on this request's incident: its
    /// occurrences are still counted here, and a controller should hold its work
    /// until this is unset or `until` has passed. The gateway sets it when an
    /// occurrence the silence matches arrives, and clears it at the next occurrence
    /// no silence matches, and when the silence ends, is expired or deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silenced_by: Option<SilencedBy>,
    /// Conditions, by Kubernetes' conventions. The gateway writes `Flapping`: `True`
    /// while the incident went firing → resolved → firing more than
    /// `flap.threshold` times within `flap.window`, `False` once a window passed
    /// without a transition. Others' conditions are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Written by the gateway once the incident flapped: its transitions when last
    /// counted, and the latest one's time, which `Flapping` clears a window after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flapping: Option<FlapStatus>,
}

/// An incident's firing → resolved → firing transitions, once it flapped.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlapStatus {
    /// Transitions within `flap.window` when last counted (counted up to one more
    /// than `flap.threshold`).
    pub transitions: u32,
    /// When the latest transition was seen.
    pub last_transition_at: Time,
}

/// The type of the condition the gateway writes on flapping incidents.
pub const FLAPPING_CONDITION: &str = "Flapping";

/// What a status update says about flapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlapUpdate {
    /// The incident made `transitions` transitions within `window_s`, the latest at
    /// `at_s`: more than the threshold.
    Flapping { transitions: u32, at_s: u32, window_s: u32 },
    /// No transition since `last_s` for a window: cleared at `at_s`, unless the
    /// request has seen a later transition by then.
    Settled { last_s: u32, at_s: u32, window_s: u32 },
}

impl FlapUpdate {
    fn at_s(&self) -> u32 {
        match self {
            FlapUpdate::Flapping { at_s, .. } | FlapUpdate::Settled { at_s, .. } => *at_s,
        }
    }
}

/// The silence active on a request's incident.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SilencedBy {
    /// The silence's namespace.
    pub namespace: String,
    /// The silence's name.
    pub name: String,
    /// The silence's `endsAt` when the gateway last saw it match (a silence with
    /// `timeIntervals` may pause before then; the gateway then clears this field).
    pub until: Time,
}

/// An incident's back-off after failed remediations.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    /// Requests of this incident that ended `Failed` in a row just before this one.
    #[serde(default)]
    pub prior_failures: u32,
    /// Once this request failed and held an occurrence back: no new request for its
    /// incident before this time. Occurrences until then are counted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Time>,
}

/// How often an incident occurred.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deduplication {
    /// When the incident's first occurrence was received.
    pub first_seen_at: Time,
    /// When its latest occurrence was received.
    pub last_seen_at: Time,
    /// Occurrences counted on this request: the one that created it and every
    /// writer's tally, including tallies dropped from the list.
    pub occurrence_count: u64,
    /// Each gateway writer's share of `occurrenceCount`, most recently raised last,
    /// at most 16. A writer states its whole share on every write, so a write retried
    /// after an unclear outcome never counts twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_TALLIES))]
    pub tallies: Vec<Tally>,
}

/// The repeats one writer (a gateway process's count of one incident) counted on a
/// request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Tally {
    /// The writer: a gateway process's count of one incident, as 16 hex digits.
    pub writer: String,
    /// The occurrences this writer counted on the request in all.
    pub count: u64,
}

/// Tallies a request keeps. The least recently raised is dropped, its count staying
/// in the total: its process forgot the incident long before this many other
/// writers counted it (see `TALLY_HORIZON` in [`crate::pipeline::status_writer`]).
pub const MAX_TALLIES: usize = 16;

impl Deduplication {
    /// Raises `writer`'s tally to `count`.
    fn tally(&mut self, writer: &str, count: u64) {
        raise_tally(&mut self.tallies, &mut self.occurrence_count, writer, count);
    }
}

/// Raises `writer`'s tally in `tallies` to `count`, adding what it raised by to
/// `total`; past [`MAX_TALLIES`] the least recently raised goes, its count staying
/// in the total.
pub fn raise_tally(tallies: &mut Vec<Tally>, total: &mut u64, writer: &str, count: u64) {
    let mut known = 0;
    if let Some(i) = tallies.iter().position(|t| t.writer == writer) {
        known = tallies[i].count;
        if count <= known {
            return;
        }
        tallies.remove(i);
    }
    *total += count - known;
    tallies.push(Tally { writer: writer.to_string(), count });
    if tallies.len() > MAX_TALLIES {
        tallies.remove(0);
    }
}

/// The signals inhibition held back on a source's request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InhibitedStatus {
    /// Signals held back: every writer's tally, including tallies dropped from the
    /// list.
    pub count: u64,
    /// The distinct resources held back, at most `storm.affected_resources_cap`.
    #[serde(default)]
    pub resources: Vec<TargetResource>,
    /// Each gateway writer's share of `count`, as in `deduplication.tallies`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_TALLIES))]
    pub tallies: Vec<Tally>,
}

/// The writer of updates that count nothing.
pub const NO_WRITER: u64 = 0;

/// The gateway-owned part of a status, as computed from dedup state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusUpdate {
    pub first_seen_s: u32,
    pub last_seen_s: u32,
    /// Who counts: one gateway process's tally of one incident, or [`NO_WRITER`]
    /// for an update that counts nothing beyond the occurrence that created the
    /// request (a creation, a resolution).
    pub writer: u64,
    /// The occurrences `writer` has counted on the request in all (not since its last
    /// write): applying an update twice counts nothing twice.
    pub count: u64,
    pub resolved_at_s: Option<u32>,
    pub storm: Option<StormUpdate>,
    /// Set on a failed request that held an occurrence back: no new request for its
    /// incident before this second.
    pub backoff_until_s: Option<u32>,
    /// Signals held back by inhibition, counted by the same `writer`.
    pub inhibited: Option<InhibitedUpdate>,
    /// When the incident was acknowledged (see `acknowledgedAt`).
    pub acknowledged_at_s: Option<u32>,
    /// The incident flaps, or has settled.
    pub flap: Option<FlapUpdate>,
    /// Sets or clears `status.silencedBy`; `None` leaves it as it is.
    pub silenced_by: Option<SilenceMark>,
}

/// What an update says of the silence active on a request's incident.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SilenceMark {
    /// The order this process saw it in: of two marks merged, the later stands.
    pub seq: u64,
    /// The silence active on the incident; `None` when none is.
    pub silence: Option<SilencedBy>,
}

/// The signals one writer held back on a source's request, in all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InhibitedUpdate {
    pub count: u64,
    pub resources: Vec<TargetResource>,
    /// Most resources listed.
    pub cap: usize,
}

impl InhibitedUpdate {
    fn merge(&mut self, other: &InhibitedUpdate) {
        self.count = self.count.max(other.count);
        self.cap = self.cap.max(other.cap);
        union_capped(&mut self.resources, &other.resources, self.cap);
    }
}

/// What an aggregated request's update adds besides its alerts, which are the
/// update's occurrences.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StormUpdate {
    pub resource_count: u64,
    pub resources: Vec<TargetResource>,
    /// Most resources listed.
    pub cap: usize,
}

impl StormUpdate {
    fn merge(&mut self, other: &StormUpdate) {
        self.resource_count = self.resource_count.max(other.resource_count);
        self.cap = self.cap.max(other.cap);
        union_capped(&mut self.resources, &other.resources, self.cap);
    }
}

/// Adds the resources of `more` missing from `list`, up to `cap` entries.
fn union_capped(list: &mut Vec<TargetResource>, more: &[TargetResource], cap: usize) {
    for r in more {
        if list.len() >= cap {
            break;
        }
        if !list.contains(r) {
            list.push(r.clone());
        }
    }
}

impl StatusUpdate {
    /// An update that says only when the incident was first and last seen: no
    /// writer, no count, nothing else set. Every other update is this one with the
    /// fields it carries (`StatusUpdate { count, ..StatusUpdate::seen(first, last) }`),
    /// so a new field is added here once.
    pub fn seen(first_seen_s: u32, last_seen_s: u32) -> Self {
        StatusUpdate {
            first_seen_s,
            last_seen_s,
            writer: NO_WRITER,
            count: 0,
            resolved_at_s: None,
            storm: None,
            backoff_until_s: None,
            inhibited: None,
            acknowledged_at_s: None,
            flap: None,
            silenced_by: None,
        }
    }

    /// Merges a later update of the same writer into this one. Counts and times only
    /// move forward, so updates applied out of order never regress.
    pub fn merge(&mut self, other: &StatusUpdate) {
        if self.writer == NO_WRITER {
            (self.writer, self.count) = (other.writer, other.count);
        } else if other.writer != NO_WRITER {
            debug_assert_eq!(self.writer, other.writer, "one writer's updates merge");
            self.count = self.count.max(other.count);
        }
        self.first_seen_s = self.first_seen_s.min(other.first_seen_s);
        self.last_seen_s = self.last_seen_s.max(other.last_seen_s);
        self.resolved_at_s = self.resolved_at_s.max(other.resolved_at_s);
        self.acknowledged_at_s = self.acknowledged_at_s.max(other.acknowledged_at_s);
        self.backoff_until_s = self.backoff_until_s.max(other.backoff_until_s);
        match (&mut self.storm, &other.storm) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, Some(theirs)) => self.storm = Some(theirs.clone()),
            _ => {}
        }
        match (&mut self.inhibited, &other.inhibited) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, Some(theirs)) => self.inhibited = Some(theirs.clone()),
            _ => {}
        }
        // The later word on flapping wins; at one second, that it flaps.
        if let Some(theirs) = &other.flap {
            let later = self.flap.as_ref().is_none_or(|mine| {
                (theirs.at_s(), matches!(theirs, FlapUpdate::Flapping { .. }))
                    > (mine.at_s(), matches!(mine, FlapUpdate::Flapping { .. }))
            });
            if later {
                self.flap = Some(theirs.clone());
            }
        }
        if let Some(theirs) = &other.silenced_by {
            if self.silenced_by.as_ref().is_none_or(|mine| mine.seq < theirs.seq) {
                self.silenced_by = Some(theirs.clone());
            }
        }
    }
}

impl RemediationRequestStatus {
    /// Applies a gateway update, never moving counts or times backwards and never
    /// touching fields the gateway does not own. The occurrences it adds are what
    /// its writer counted since its tally here was last raised. The first status
    /// written holds the occurrence that created the request, whoever writes it:
    /// the API server drops status on create.
    pub fn apply(&mut self, update: &StatusUpdate) {
        let dedup = self.deduplication.get_or_insert_with(|| Deduplication {
            first_seen_at: time_s(update.first_seen_s),
            last_seen_at: time_s(update.last_seen_s),
            occurrence_count: 1,
            tallies: Vec::new(),
        });
        if (update.first_seen_s as i64) < dedup.first_seen_at.0.as_second() {
            dedup.first_seen_at = time_s(update.first_seen_s);
        }
        if (update.last_seen_s as i64) > dedup.last_seen_at.0.as_second() {
            dedup.last_seen_at = time_s(update.last_seen_s);
        }
        // A writer that only held signals back has counted no repeat yet.
        if update.writer != NO_WRITER && update.count > 0 {
            dedup.tally(&format!("{:016x}", update.writer), update.count);
        }
        if let Some(held) = &update.inhibited {
            let inhibited = self.inhibited.get_or_insert_with(Default::default);
            raise_tally(&mut inhibited.tallies, &mut inhibited.count, &format!("{:016x}", update.writer), held.count);
            union_capped(&mut inhibited.resources, &held.resources, held.cap);
        }
        if let Some(update) = &update.storm {
            let storm = self.storm.get_or_insert_with(Default::default);
            storm.alert_count = dedup.occurrence_count;
            storm.resource_count = storm.resource_count.max(update.resource_count);
            union_capped(&mut storm.affected_resources, &update.resources, update.cap);
        }
        if let Some(until) = update.backoff_until_s {
            let backoff = self.backoff.get_or_insert_with(Default::default);
            if backoff.until.as_ref().is_none_or(|t| t.0.as_second() < until as i64) {
                backoff.until = Some(time_s(until));
            }
        }
        if let Some(at) = update.resolved_at_s {
            let newer = self.signal_resolved_at.as_ref().is_none_or(|t| t.0.as_second() < at as i64);
            if newer {
                self.signal_resolved_at = Some(time_s(at));
            }
        }
        if let Some(at) = update.acknowledged_at_s {
            if self.acknowledged_at.as_ref().is_none_or(|t| t.0.as_second() < at as i64) {
                self.acknowledged_at = Some(time_s(at));
            }
        }
        if let Some(mark) = &update.silenced_by {
            self.silenced_by = mark.silence.clone();
        }
        if let Some(flap) = &update.flap {
            self.apply_flap(flap);
        }
    }

    /// Whether the `Flapping` condition is `True`.
    pub fn flapping(&self) -> bool {
        self.conditions.iter().any(|c| is_flapping_condition(&c.type_, &c.status))
    }

    /// Marks the request flapping, or clears the mark if no transition came after
    /// the one the clearing was decided on. Idempotent, and never undoes a later
    /// transition: a mark only moves `lastTransitionAt` forward.
    fn apply_flap(&mut self, flap: &FlapUpdate) {
        let last_s = self.flapping.as_ref().map(|f| f.last_transition_at.0.as_second());
        match *flap {
            FlapUpdate::Flapping { transitions, at_s, window_s } => {
                // An older mark, or the very mark a clearing already answered
                // (written late: a retry), changes nothing.
                if last_s.is_some_and(|last| last > at_s as i64 || (last == at_s as i64 && !self.flapping())) {
                    return;
                }
                self.flapping = Some(FlapStatus { transitions, last_transition_at: time_s(at_s) });
                let message =
                    format!("{transitions} firing -> resolved -> firing transitions within {}", span(window_s));
                self.set_condition("True", "TransitionsOverThreshold", message, at_s);
            }
            FlapUpdate::Settled { last_s: settled_on, at_s, window_s } => {
                if last_s != Some(settled_on as i64) {
                    return;
                }
                let message = format!("no firing -> resolved -> firing transition for {}", span(window_s));
                self.set_condition("False", "Settled", message, at_s);
            }
        }
    }

    /// Sets the gateway's condition; its `lastTransitionTime` moves only when its
    /// status changes, as Kubernetes' conventions say.
    fn set_condition(&mut self, status: &str, reason: &str, message: String, at_s: u32) {
        let found = self.conditions.iter_mut().find(|c| c.type_ == FLAPPING_CONDITION);
        match found {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = time_s(at_s);
                }
                (c.status, c.reason, c.message) = (status.to_string(), reason.to_string(), message);
            }
            None => self.conditions.push(Condition {
                type_: FLAPPING_CONDITION.to_string(),
                status: status.to_string(),
                reason: reason.to_string(),
                message,
                last_transition_time: time_s(at_s),
                observed_generation: None,
            }),
        }
    }
}

/// Seconds as people write them: `30m`, `1h`, `90s`.
fn span(secs: u32) -> String {
    match secs {
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

impl RemediationRequestStatus {
    /// Merges the gateway-owned part of `built` (a status made by [`Self::apply`])
    /// into this one, as applying its updates again would.
    pub fn merge(&mut self, built: &RemediationRequestStatus) {
        if self.backoff.is_none() {
            self.backoff = built.backoff.clone();
        }
        if built.flapping.as_ref().is_some_and(|theirs| {
            self.flapping.as_ref().is_none_or(|mine| mine.last_transition_at < theirs.last_transition_at)
        }) {
            self.flapping = built.flapping.clone();
            self.conditions.retain(|c| c.type_ != FLAPPING_CONDITION);
            let theirs = built.conditions.iter().filter(|c| c.type_ == FLAPPING_CONDITION);
            self.conditions.extend(theirs.cloned());
        }
        let Some(theirs) = &built.deduplication else { return };
        let Some(mine) = &mut self.deduplication else {
            self.deduplication = built.deduplication.clone();
            self.storm = built.storm.clone();
            self.signal_resolved_at = built.signal_resolved_at.clone();
            self.inhibited = built.inhibited.clone();
            self.acknowledged_at = built.acknowledged_at.clone();
            self.silenced_by = built.silenced_by.clone();
            return;
        };
        mine.first_seen_at = mine.first_seen_at.clone().min(theirs.first_seen_at.clone());
        mine.last_seen_at = mine.last_seen_at.clone().max(theirs.last_seen_at.clone());
        for tally in &theirs.tallies {
            mine.tally(&tally.writer, tally.count);
        }
        if let Some(theirs) = &built.storm {
            let storm = self.storm.get_or_insert_with(Default::default);
            storm.alert_count = mine.occurrence_count;
            storm.resource_count = storm.resource_count.max(theirs.resource_count);
            let cap = theirs.affected_resources.len().max(storm.affected_resources.len());
            union_capped(&mut storm.affected_resources, &theirs.affected_resources, cap);
        }
        self.signal_resolved_at = self.signal_resolved_at.clone().max(built.signal_resolved_at.clone());
        self.acknowledged_at = self.acknowledged_at.clone().max(built.acknowledged_at.clone());
        if let Some(theirs) = &built.inhibited {
            let inhibited = self.inhibited.get_or_insert_with(Default::default);
            for tally in &theirs.tallies {
                raise_tally(&mut inhibited.tallies, &mut inhibited.count, &tally.writer, tally.count);
            }
            let cap = theirs.resources.len().max(inhibited.resources.len());
            union_capped(&mut inhibited.resources, &theirs.resources, cap);
        }
    }
}

/// A Kubernetes timestamp from whole Unix seconds.
pub fn time_s(secs: u32) -> Time {
    Time(Timestamp::from_second(secs as i64).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The request's name: readable signal name, fingerprint and occurrence epoch (the
/// first-seen second, base 36). Every replica derives the same name for the same
/// incident, which is what makes creation idempotent.
pub fn request_name<const N: usize>(signal_name: &str, id: &[u8; N], epoch_s: u32) -> String {
    // The name takes the id's first 6 bytes: a shorter id does not compile.
    const { assert!(N >= 6, "request names take 6 bytes of the id") };
    // Readable part, hex of the id, base-36 epoch: at most 30 + 1 + 12 + 1 + 7.
    let mut name = String::with_capacity(51);
    fn push(name: &mut String, c: char) {
        if c.is_ascii_alphanumeric() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    'chars: for c in signal_name.chars() {
        if c.is_ascii() {
            if name.len() == 30 {
                break;
            }
            push(&mut name, c.to_ascii_lowercase());
            continue;
        }
        // Anything else may lowercase to several characters, some of them ASCII
        // (the Kelvin sign to `k`).
        for l in c.to_lowercase() {
            if name.len() == 30 {
                break 'chars;
            }
            push(&mut name, l);
        }
    }
    name.truncate(name.trim_end_matches('-').len());
    if name.is_empty() {
        name.push_str("signal");
    }
    name.push('-');
    let mut hex = [0u8; 12];
    hex::encode_to_slice(&id[..6], &mut hex).expect("12 hex digits for 6 bytes");
    name.push_str(std::str::from_utf8(&hex).expect("hex is ASCII"));
    name.push('-');
    name.push_str(&base36(epoch_s as u64));
    name
}

/// The epoch a request's name was derived from ([`request_name`],
/// [`storm_request_name`]): the first-seen second of its incident, or its storm
/// window's opening second. `None` for a name tidegate did not derive.
pub fn request_epoch(name: &str) -> Option<u32> {
    let (_, digits) = name.rsplit_once('-')?;
    if digits.is_empty() || digits.len() > 7 {
        return None;
    }
    digits.chars().try_fold(0u64, |n, c| Some(n * 36 + c.to_digit(36)? as u64)).and_then(|n| n.try_into().ok())
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

/// A Kubernetes label value: at most 63 characters of `[A-Za-z0-9._-]`, starting and
/// ending with an alphanumeric. Used for human-facing labels only; the fingerprint
/// label uses [`crate::signal::Fingerprint::label_value`], which needs no cutting.
pub fn label_value(raw: &str) -> String {
    let cleaned: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .take(63)
        .collect();
    cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// Cuts a string to at most `max` bytes on a character boundary.
pub fn cut(value: &str, max: usize) -> String {
    if value.len() <= max {
        return value.to_string();
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_string()
}

/// Classification results that go into the spec.
#[derive(Clone, Debug)]
pub struct Classification {
    pub environment: String,
    pub priority: String,
    /// The name of the priority rule that matched.
    pub rule: String,
}

/// Annotation naming the priority rule that chose the request's priority.
pub const PRIORITY_RULE_ANNOTATION: &str = "tidegate.dev/priority-rule";
/// Who submitted the signal that created a request: the authenticated sender's
/// name, or its address where authentication is off.
pub const SUBMITTED_BY_ANNOTATION: &str = "tidegate.dev/submitted-by";

/// Annotation naming the trace (its W3C trace id) a request was created in, set
/// when tracing is on and the trace is sampled.
pub const TRACE_ID_ANNOTATION: &str = "tidegate.dev/trace-id";

/// Whether `rr` is marked flapping: its `Flapping` condition is `True`.
pub fn marked_flapping(rr: &RemediationRequest) -> bool {
    rr.status.as_ref().is_some_and(|s| s.flapping())
}

/// Whether a condition of type `kind` with `status` marks a request flapping; for
/// readers of a manifest's conditions without the whole status.
pub fn is_flapping_condition(kind: &str, status: &str) -> bool {
    kind == FLAPPING_CONDITION && status == "True"
}

/// The `tidegate.dev/flapping` label value `status` calls for: `"true"` while its
/// `Flapping` condition is `True`, none otherwise.
pub fn flapping_label(status: Option<&RemediationRequestStatus>) -> Option<&'static str> {
    status.is_some_and(|s| s.flapping()).then_some("true")
}

/// Sets or removes the `tidegate.dev/flapping` label as `rr`'s status calls for;
/// whether that changed anything.
pub fn label_flapping(rr: &mut RemediationRequest) -> bool {
    let wanted = flapping_label(rr.status.as_ref());
    let labels = rr.metadata.labels.get_or_insert_with(Default::default);
    if labels.get(labels::FLAPPING).map(String::as_str) == wanted {
        return false;
    }
    match wanted {
        Some(value) => labels.insert(labels::FLAPPING.to_string(), value.to_string()),
        None => labels.remove(labels::FLAPPING),
    };
    true
}

/// Sets the annotation `key` of a request being built.
pub fn annotate(request: &mut RemediationRequest, key: &str, value: String) {
    request.metadata.annotations.get_or_insert_with(Default::default).insert(key.to_string(), value);
}

/// The name of a storm's aggregated request: readable signal name, a prefix of the
/// scope hash and the window's opening second. Every replica derives the same one.
pub fn storm_request_name(signal_name: &str, scope: &[u8; 16], window_id: u32) -> String {
    request_name(&format!("storm-{signal_name}"), scope, window_id)
}

/// Builds the request for a new incident.
pub fn build(
    signal: &Signal<'_>,
    namespace: &str,
    epoch_s: u32,
    class: &Classification,
    status: &StatusUpdate,
) -> RemediationRequest {
    let name = request_name(&signal.name, signal.fingerprint.as_bytes(), epoch_s);
    build_named(signal, &name, namespace, class, status)
}

/// What an aggregated request is about: the namespace its storm is in, in
/// `cluster` (empty: none named).
fn storm_target(namespace: &str, cluster: &str) -> TargetResource {
    TargetResource {
        kind: "Namespace".into(),
        name: namespace.to_string(),
        namespace: String::new(),
        cluster: cluster.to_string(),
    }
}

/// The fingerprint of the aggregated requests of a storm scope: the alert name in
/// the namespace (of `cluster`, if named), about no one resource. The sink finds a
/// scope's open aggregated request by it.
pub fn storm_fingerprint(signal_name: &str, namespace: &str, cluster: &str) -> crate::signal::Fingerprint {
    crate::signal::Fingerprint::new(signal_name, namespace, &storm_target(namespace, cluster))
}

/// Builds the aggregated request of a storm window that `signal` opened. Its
/// fingerprint is the scope's: the alert name in the namespace, no resource.
pub fn build_storm(
    signal: &Signal<'_>,
    scope: &[u8; 16],
    folded: &crate::state::Folded,
    class: &Classification,
    status: &StatusUpdate,
) -> RemediationRequest {
    let name = storm_request_name(&signal.name, scope, folded.window_id);
    let mut aggregate = signal.clone();
    aggregate.fingerprint = storm_fingerprint(&signal.name, &signal.namespace, &signal.target.cluster);
    aggregate.target = storm_target(&signal.namespace, &signal.target.cluster);
    let mut rr = build_named(&aggregate, &name, &signal.namespace, class, status);
    rr.spec.storm = Some(StormSpec {
        kind: folded.kind.as_str().to_string(),
        window_id: time_s(folded.window_id).0.to_string(),
        affected_resources: vec![signal.target.clone()],
    });
    rr
}

fn build_named(
    signal: &Signal<'_>,
    name: &str,
    namespace: &str,
    class: &Classification,
    status: &StatusUpdate,
) -> RemediationRequest {
    let fp_hex = signal.fingerprint.to_hex();
    let cut_all = |l: &Labels<'_>| l.to_map().into_iter().map(|(k, v)| (k, cut(&v, MAX_VALUE_BYTES))).collect();
    let spec = RemediationRequestSpec {
        signal_fingerprint: fp_hex,
        // Cut like every value: the fingerprint, not the name, is the identity.
        signal_name: cut(&signal.name, MAX_VALUE_BYTES),
        severity: cut(&signal.severity, MAX_VALUE_BYTES),
        signal_type: signal.signal_type,
        signal_source: cut(&signal.source, MAX_VALUE_BYTES),
        target_resource: signal.target.clone(),
        firing_time: signal.firing_time.map(Time),
        received_time: Time(signal.received_time),
        signal_labels: cut_all(&signal.labels),
        signal_annotations: cut_all(&signal.annotations),
        environment: class.environment.clone(),
        priority: class.priority.clone(),
        priority_rule: class.rule.clone(),
        storm: None,
    };
    let mut rr = RemediationRequest::new(name, spec);
    rr.metadata.annotations = Some(BTreeMap::from([(PRIORITY_RULE_ANNOTATION.to_string(), class.rule.clone())]));
    rr.metadata.namespace = Some(namespace.to_string());
    rr.metadata.labels = Some(BTreeMap::from([
        (labels::FINGERPRINT.to_string(), signal.fingerprint.label_value()),
        (labels::SIGNAL.to_string(), label_value(&signal.name)),
        (labels::SEVERITY.to_string(), label_value(&signal.severity)),
        (labels::PRIORITY.to_string(), label_value(&class.priority)),
        (labels::MANAGED_BY.to_string(), "tidegate".to_string()),
    ]));
    let mut st = RemediationRequestStatus::default();
    st.apply(status);
    rr.status = Some(st);
    rr
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;

    #[test]
    fn request_name_is_a_dns_subdomain_and_deterministic() {
        let fp = [0xab; 32];
        let name = request_name("KubePodCrashLooping:rate5m", &fp, 1_700_000_000);
        assert_eq!(name, "kubepodcrashlooping-rate5m-abababababab-s44we8");
        assert_eq!(name, request_name("KubePodCrashLooping:rate5m", &fp, 1_700_000_000));
        assert_ne!(name, request_name("KubePodCrashLooping:rate5m", &fp, 1_700_000_001));
        assert_eq!(request_epoch(&name), Some(1_700_000_000), "the epoch reads back from the name");
        assert!(request_name("!!!", &fp, 0).starts_with("signal-"));
        // Non-ASCII lowercases as Unicode says, and only ASCII survives.
        assert!(request_name("\u{212A}ube-Ärger", &fp, 0).starts_with("kube-rger-"));
    }

    #[test]
    fn label_value_fits_kubernetes_rules() {
        assert_eq!(label_value("Kube:Pod Crash"), "Kube_Pod_Crash");
        assert_eq!(label_value("_x_"), "x");
        assert_eq!(label_value(&"a".repeat(100)).len(), 63);
    }

    #[test]
    fn cut_respects_char_boundaries() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("abc", 10), "abc");
    }

    #[test]
    fn status_never_moves_backwards() {
        let mut status = RemediationRequestStatus { phase: Some("Processing".into()), ..Default::default() };
        let update = |last_seen_s, count, resolved_at_s| StatusUpdate {
            writer: 1,
            count,
            resolved_at_s,
            ..StatusUpdate::seen(100, last_seen_s)
        };
        status.apply(&update(150, 7, None));
        status.apply(&update(120, 5, Some(160)));
        let d = status.deduplication.as_ref().unwrap();
        assert_eq!(d.occurrence_count, 1 + 7, "the creating occurrence and writer 1's repeats");
        assert_eq!(d.last_seen_at.0.as_second(), 150);
        assert_eq!(status.signal_resolved_at.as_ref().unwrap().0.as_second(), 160);
        assert_eq!(status.phase.as_deref(), Some("Processing"));
    }

    #[test]
    fn writers_add_up_and_a_repeated_write_counts_nothing_twice() {
        let update = |writer, count| StatusUpdate { writer, count, ..StatusUpdate::seen(100, 100) };
        let mut status = RemediationRequestStatus::default();
        for (writer, count) in [(1, 3), (2, 5), (1, 3), (1, 4), (2, 2), (2, 5)] {
            status.apply(&update(writer, count));
        }
        let d = status.deduplication.as_ref().unwrap();
        assert_eq!(d.occurrence_count, 1 + 4 + 5, "the creating occurrence, writer 1's 4 and writer 2's 5");
        assert_eq!(d.tallies.iter().map(|t| t.count).collect::<Vec<_>>(), [5, 4], "last raised last");

        // Past the cap the oldest tally goes, and its count stays in the total.
        for writer in 3..20 {
            status.apply(&update(writer, 1));
        }
        let d = status.deduplication.as_ref().unwrap();
        assert_eq!(d.tallies.len(), MAX_TALLIES);
        assert_eq!(d.occurrence_count, 10 + 17);
        assert!(d.tallies.iter().all(|t| t.writer != format!("{:016x}", 1)));
    }

    #[test]
    fn storm_status_keeps_counts_beyond_the_list_cap() {
        let resource = |n: u32| TargetResource {
            kind: "Pod".into(),
            name: format!("p{n}"),
            namespace: "ns".into(),
            cluster: String::new(),
        };
        let storm = |alerts, resources: Vec<TargetResource>| StatusUpdate {
            writer: 1,
            count: alerts,
            storm: Some(StormUpdate { resource_count: alerts, resources, cap: 2 }),
            ..StatusUpdate::seen(100, 100)
        };
        let mut update = storm(2, vec![resource(1), resource(2)]);
        update.merge(&storm(3, vec![resource(3)]));
        let mut status = RemediationRequestStatus::default();
        status.apply(&update);
        status.apply(&storm(1, vec![resource(4)]));
        let s = status.storm.unwrap();
        assert_eq!((s.alert_count, s.resource_count), (1 + 3, 3), "the opening alert and 3 folded");
        assert_eq!(s.affected_resources, vec![resource(1), resource(2)]);
    }

    #[test]
    fn inhibited_signals_add_up_by_writer_and_list_resources_up_to_the_cap() {
        let resource = |n: u32| TargetResource {
            kind: "Pod".into(),
            name: format!("p{n}"),
            namespace: "ns".into(),
            cluster: String::new(),
        };
        let held = |writer, count, pod: u32| StatusUpdate {
            writer,
            inhibited: Some(InhibitedUpdate { count, resources: vec![resource(pod)], cap: 2 }),
            ..StatusUpdate::seen(100, 100)
        };
        let mut status = RemediationRequestStatus::default();
        for (writer, count, pod) in [(1, 1, 1), (1, 2, 2), (2, 1, 3), (1, 2, 2)] {
            status.apply(&held(writer, count, pod));
        }
        let inhibited = status.inhibited.as_ref().unwrap();
        assert_eq!(inhibited.count, 2 + 1, "writer 1's two and writer 2's one, the repeated write counted once");
        assert_eq!(inhibited.resources, vec![resource(1), resource(2)], "capped at 2");
        let d = status.deduplication.as_ref().unwrap();
        assert_eq!((d.occurrence_count, d.tallies.len()), (1, 0), "holding signals back counts no occurrence");
    }

    fn flap(flap: FlapUpdate) -> StatusUpdate {
        StatusUpdate { flap: Some(flap), ..StatusUpdate::seen(100, 100) }
    }

    fn flapping_condition(status: &RemediationRequestStatus) -> (&str, &str, i64) {
        let c = status.conditions.iter().find(|c| c.type_ == FLAPPING_CONDITION).expect("a Flapping condition");
        (c.status.as_str(), c.reason.as_str(), c.last_transition_time.0.as_second())
    }

    #[test]
    fn flapping_is_a_condition_whose_transition_time_moves_only_when_its_status_does() {
        let mut rr = RemediationRequest::new("r", test_spec());
        let status = rr.status.get_or_insert_with(Default::default);
        status.conditions.push(Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Controller".into(),
            message: String::new(),
            last_transition_time: time_s(1),
            observed_generation: None,
        });
        status.apply(&flap(FlapUpdate::Flapping { transitions: 4, at_s: 200, window_s: 1800 }));
        status.apply(&flap(FlapUpdate::Flapping { transitions: 4, at_s: 260, window_s: 1800 }));
        assert_eq!(flapping_condition(status), ("True", "TransitionsOverThreshold", 200));
        assert_eq!(status.flapping.as_ref().unwrap().last_transition_at.0.as_second(), 260);
        assert_eq!(status.conditions.len(), 2, "a controller's condition is kept");
        assert!(label_flapping(&mut rr));
        assert_eq!(rr.labels().get(labels::FLAPPING).map(String::as_str), Some("true"));
        assert!(!label_flapping(&mut rr), "already labelled");
    }

    #[test]
    fn a_clearing_applies_only_if_no_transition_came_after_the_one_it_was_decided_on() {
        let mut rr = RemediationRequest::new("r", test_spec());
        let status = rr.status.get_or_insert_with(Default::default);
        status.apply(&flap(FlapUpdate::Flapping { transitions: 4, at_s: 200, window_s: 1800 }));
        status.apply(&flap(FlapUpdate::Flapping { transitions: 4, at_s: 300, window_s: 1800 }));
        status.apply(&flap(FlapUpdate::Settled { last_s: 200, at_s: 2000, window_s: 1800 }));
        assert_eq!(flapping_condition(status).0, "True", "decided on a stale transition");
        assert!(label_flapping(&mut rr));
        let status = rr.status.as_mut().unwrap();
        status.apply(&flap(FlapUpdate::Settled { last_s: 300, at_s: 2100, window_s: 1800 }));
        assert_eq!(flapping_condition(status), ("False", "Settled", 2100));
        assert!(label_flapping(&mut rr) && !rr.labels().contains_key(labels::FLAPPING), "the label goes");
        // A late write (a retry) of the mark it cleared changes nothing; a later one marks again.
        let status = rr.status.as_mut().unwrap();
        status.apply(&flap(FlapUpdate::Flapping { transitions: 4, at_s: 300, window_s: 1800 }));
        assert_eq!(flapping_condition(status).0, "False");
        status.apply(&flap(FlapUpdate::Flapping { transitions: 4, at_s: 2300, window_s: 1800 }));
        assert_eq!(flapping_condition(status), ("True", "TransitionsOverThreshold", 2300));
    }

    #[test]
    fn the_later_flap_update_wins_a_merge() {
        let mut update = flap(FlapUpdate::Flapping { transitions: 4, at_s: 300, window_s: 1800 });
        update.merge(&flap(FlapUpdate::Settled { last_s: 100, at_s: 299, window_s: 1800 }));
        assert!(matches!(update.flap, Some(FlapUpdate::Flapping { at_s: 300, .. })));
        update.merge(&flap(FlapUpdate::Settled { last_s: 300, at_s: 2100, window_s: 1800 }));
        assert!(matches!(update.flap, Some(FlapUpdate::Settled { at_s: 2100, .. })));
    }

    fn test_spec() -> RemediationRequestSpec {
        RemediationRequestSpec {
            signal_fingerprint: String::new(),
            signal_name: "A".into(),
            severity: String::new(),
            signal_type: SignalType::PROMETHEUS_ALERT,
            signal_source: String::new(),
            target_resource: TargetResource::default(),
            firing_time: None,
            received_time: time_s(0),
            signal_labels: BTreeMap::new(),
            signal_annotations: BTreeMap::new(),
            environment: String::new(),
            priority: String::new(),
            priority_rule: String::new(),
            storm: None,
        }
    }
}
