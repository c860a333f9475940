//! The `RemediationSilence` custom resource: what people write to stop tidegate
//! from opening requests during planned work.
//!
//! Defined once here; the CRD YAML (`tidegate crd`), the silence directory's files
//! and the cluster watch all derive from these types. The API server itself refuses
//! a silence longer than [`MAX_DURATION_DAYS`] days, one ending before it starts, and
//! any change of the spec except moving `endsAt` earlier (expiring it): those CEL
//! rules are on the spec below. The gateway owns the status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::interval::TimeIntervalSpec;

/// The longest silence the CRD accepts. A gateway may be configured lower
/// (`silence.max_duration`), never higher.
pub const MAX_DURATION_DAYS: u32 = 30;

/// A silence: while it is active, firing signals it matches open no request.
// (A plain comment, not a doc comment: doc comments become the CRD's descriptions.)
// The CEL rules: a duration of at most 30 days (720h, spelled out in the rule, which
// cannot read a Rust constant), endsAt not before startsAt, and on update every
// field as it was except endsAt, which may only move earlier.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "remediation.tidegate.dev",
    version = "v1alpha1",
    kind = "RemediationSilence",
    namespaced,
    shortname = "rsil",
    status = "RemediationSilenceStatus",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Ends","type":"date","jsonPath":".spec.endsAt"}"#,
    printcolumn = r#"{"name":"Matched","type":"integer","jsonPath":".status.matchedSignals"}"#,
    printcolumn = r#"{"name":"Comment","type":"string","jsonPath":".spec.comment","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("timestamp(self.endsAt) >= timestamp(self.startsAt)").message("endsAt must not be before startsAt"),
    validation = Rule::new("timestamp(self.endsAt) - timestamp(self.startsAt) <= duration('720h')").message("a silence lasts at most 30 days"),
    validation = Rule::new(
        "self.matchers == oldSelf.matchers && self.startsAt == oldSelf.startsAt && self.comment == oldSelf.comment \
         && has(self.createdBy) == has(oldSelf.createdBy) && (!has(self.createdBy) || self.createdBy == oldSelf.createdBy) \
         && has(self.timeIntervals) == has(oldSelf.timeIntervals) && (!has(self.timeIntervals) || self.timeIntervals == oldSelf.timeIntervals)"
    ).message("a silence's spec is immutable except endsAt"),
    validation = Rule::new("timestamp(self.endsAt) <= timestamp(oldSelf.endsAt)").message("endsAt may only move earlier (expire the silence)")
)]
#[serde(rename_all = "camelCase")]
pub struct RemediationSilenceSpec {
    /// Alertmanager matchers, all of which a signal must match: `alertname="KubePodCrashLooping"`,
    /// `pod=~"web-.*"`, `severity!="info"`, `team!~"db|infra"`. Regexes are anchored. A
    /// signal's labels are its own plus alertname (the signal's name), namespace and severity.
    #[schemars(length(min = 1, max = 64))]
    pub matchers: Vec<String>,
    /// When the silence begins to hold new requests back.
    pub starts_at: Time,
    /// When the silence ends; moving it earlier expires the silence.
    pub ends_at: Time,
    /// Why: the planned work this silence covers.
    #[schemars(length(min = 1, max = 1024))]
    pub comment: String,
    /// Who created the silence (`tidegate silence add` writes the user it runs as).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Recurring windows in Alertmanager's time_intervals syntax: the silence is
    /// active between startsAt and endsAt only while one of them holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub time_intervals: Vec<TimeIntervalSpec>,
}

/// What the gateway records about a silence.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationSilenceStatus {
    /// `pending`, `active`, `expired`, or `ignored` (see `reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Why the gateway ignores this silence, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Firing signals that opened no request because of this silence, counted by
    /// every gateway replica (signals of incidents already open are counted on their
    /// requests instead).
    #[serde(default)]
    pub matched_signals: u64,
    /// When the silence last held a signal back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_matched_at: Option<Time>,
    /// Each gateway writer's share of `matchedSignals`, as in a request's
    /// `status.deduplication.tallies`: a writer states its whole share on every
    /// write, so a write retried after an unclear outcome never counts twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::remediation::MAX_TALLIES))]
    pub tallies: Vec<crate::remediation::Tally>,
}

/// Every CRD the gateway uses, as one YAML stream: what `tidegate crd` prints and
/// `deploy/crd.yaml` holds.
pub fn crds_yaml() -> Result<String, serde_norway::Error> {
    let requests = serde_norway::to_string(&crate::remediation::RemediationRequest::crd())?;
    let silences = serde_norway::to_string(&RemediationSilence::crd())?;
    Ok(format!("{requests}---\n{silences}"))
}
