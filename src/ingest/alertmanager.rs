//! Prometheus Alertmanager webhook payload, version 4, and the rules of its envelope
//! that Grafana's webhook shares (`grafana.rs`).
//!
//! Every alert in `alerts[]` becomes a signal; unknown fields are ignored because
//! Alertmanager adds fields without bumping the version. An alert that cannot be
//! used (no `alertname`) fails alone, so one bad alert does not cost the sender the
//! rest of its batch.

use std::borrow::Cow;
use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::answer::Results;
use super::{parse_json, Credential, IngestError, Parse, Parsed, Payload, Source, JSON};
use crate::signal::{
    namespace_from_labels, Fingerprint, Labels, Signal, SignalStatus, SignalType, TargetResource, Text,
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "U: Deserialize<'de>"))]
struct Webhook<'a, U> {
    #[serde(default, borrow)]
    receiver: Option<Text<'a>>,
    #[serde(default)]
    status: Option<Status>,
    #[serde(default, borrow, rename = "externalURL")]
    external_url: Option<Text<'a>>,
    #[serde(borrow)]
    alerts: Vec<Alert<'a, U>>,
}

/// One alert of the envelope: Alertmanager's fields, and the URLs and values Grafana
/// adds. Its URL fields are `U`: [`Text`] where a sender keeps them, [`IgnoredAny`]
/// where it does not, so Alertmanager's alerts do not pay for copying them.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "U: Deserialize<'de>"))]
pub(super) struct Alert<'a, U> {
    #[serde(default)]
    status: Option<Status>,
    #[serde(default, borrow)]
    labels: Labels<'a>,
    #[serde(default, borrow)]
    pub annotations: Labels<'a>,
    #[serde(default)]
    starts_at: Option<Timestamp>,
    #[serde(default = "none", rename = "generatorURL")]
    pub generator_url: Option<U>,
    /// Grafana only, as the rest: where to silence the alert.
    #[serde(default = "none", rename = "silenceURL")]
    pub silence_url: Option<U>,
    #[serde(default = "none", rename = "dashboardURL")]
    pub dashboard_url: Option<U>,
    #[serde(default = "none", rename = "panelURL")]
    pub panel_url: Option<U>,
    #[serde(default = "none", rename = "imageURL")]
    pub image_url: Option<U>,
    /// The rule's query results by reference ID; `null` when it has none.
    #[serde(default)]
    pub values: Option<BTreeMap<String, f64>>,
    /// The same as text (older Grafana sends only this).
    #[serde(default = "none")]
    pub value_string: Option<U>,
}

fn none<U>() -> Option<U> {
    None
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Firing,
    Resolved,
}

/// Alertmanager's webhook receiver (`webhook_configs`).
pub const WEBHOOK: Source = Source {
    name: "alertmanager",
    route: "/api/v1/signals/prometheus",
    media_types: JSON,
    parser: |_| Box::new(parse as Parse),
    signal_type: SignalType::PROMETHEUS_ALERT,
    answer: &Results,
    credentials: &Credential::HEAD,
};

/// Parses a webhook body into one result per alert.
pub fn parse<'a>(payload: &Payload<'a>) -> Result<Parsed<'a>, IngestError> {
    parse_envelope::<IgnoredAny>(payload, "alertmanager", SignalType::PROMETHEUS_ALERT, |_| {})
}

/// Parses a body of this envelope into one result per alert of `signal_type`, after
/// `annotate` has moved what the sender adds to an alert into its annotations.
/// `sender` names the sender in `signalSource` when the payload has no `externalURL`.
pub(super) fn parse_envelope<'a, U: Deserialize<'a>>(
    payload: &Payload<'a>,
    sender: &'static str,
    signal_type: SignalType,
    annotate: impl Fn(&mut Alert<'a, U>),
) -> Result<Parsed<'a>, IngestError> {
    let (body, received) = (payload.body, payload.received);
    let webhook: Webhook<'a, U> = parse_json(body)?;
    if webhook.alerts.is_empty() {
        return Err(IngestError::NoAlerts);
    }
    let text = |t: Option<Text<'a>>| t.map(|Text(t)| t).filter(|t| !t.is_empty());
    let source = match (text(webhook.external_url), text(webhook.receiver)) {
        (Some(url), _) => url,
        (None, Some(receiver)) => Cow::Owned(format!("{sender}/{receiver}")),
        (None, None) => Cow::Borrowed(sender),
    };
    let group_status = webhook.status;
    Ok(webhook
        .alerts
        .into_iter()
        .enumerate()
        .map(|(i, mut alert)| {
            annotate(&mut alert);
            signal(i, alert, group_status, &source, received, signal_type)
        })
        .collect())
}

fn signal<'a, U>(
    i: usize,
    alert: Alert<'a, U>,
    group_status: Option<Status>,
    source: &Cow<'a, str>,
    received: Timestamp,
    signal_type: SignalType,
) -> Result<Signal<'a>, IngestError> {
    let at = Position { list: "$.alerts", index: i };
    let name = alert_name(&alert.labels, at)?;
    let status = alert
        .status
        .or(group_status)
        .ok_or_else(|| IngestError::invalid(at.path("status"), "missing; expected \"firing\" or \"resolved\""))?;
    let status = match status {
        Status::Firing => SignalStatus::Firing,
        Status::Resolved => SignalStatus::Resolved,
    };
    let parts = AlertParts { labels: alert.labels, annotations: alert.annotations, starts_at: alert.starts_at };
    Ok(parts.into_signal(name, status, signal_type, source.clone(), received))
}

/// Where an alert sits in its payload: the JSON path of its errors.
#[derive(Clone, Copy)]
pub(super) struct Position {
    /// The path of the alert list: `$.alerts` in a webhook, `$` in an API v2 array.
    pub list: &'static str,
    pub index: usize,
}

impl Position {
    pub fn path(self, field: &str) -> String {
        format!("{}[{}].{field}", self.list, self.index)
    }
}

/// An alert's name: its `alertname` label, present and not blank. Both Alertmanager
/// formats follow this rule (Alertmanager itself does not require the label; we do,
/// because the name is part of the incident's identity).
pub(super) fn alert_name<'a>(labels: &Labels<'a>, at: Position) -> Result<Cow<'a, str>, IngestError> {
    match labels.get_cow("alertname") {
        Some(name) if !name.trim().is_empty() => Ok(name.clone()),
        Some(_) => Err(IngestError::invalid(at.path("labels.alertname"), "must not be empty")),
        None => Err(IngestError::invalid(at.path("labels"), "missing required label \"alertname\"")),
    }
}

/// Alertmanager and Grafana write the zero time (year 1) for "unset".
pub(super) fn set_time(t: Option<Timestamp>) -> Option<Timestamp> {
    t.filter(|t| t.as_second() > 0)
}

/// What both Alertmanager formats say about one alert, and the one way it becomes a
/// signal: namespace, target, fingerprint and severity from its labels.
pub(super) struct AlertParts<'a> {
    pub labels: Labels<'a>,
    pub annotations: Labels<'a>,
    pub starts_at: Option<Timestamp>,
}

impl<'a> AlertParts<'a> {
    pub fn into_signal(
        self,
        name: Cow<'a, str>,
        status: SignalStatus,
        signal_type: SignalType,
        source: Cow<'a, str>,
        received: Timestamp,
    ) -> Signal<'a> {
        let namespace = namespace_from_labels(&self.labels);
        let target = TargetResource::from_labels(&self.labels, &namespace);
        let fingerprint = Fingerprint::new(&name, &namespace, &target);
        Signal {
            severity: self.labels.get_cow("severity").cloned().unwrap_or(Cow::Borrowed("unknown")),
            name,
            namespace,
            target,
            labels: self.labels,
            annotations: self.annotations,
            firing_time: set_time(self.starts_at),
            received_time: received,
            signal_type,
            source,
            status,
            fingerprint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(body: &str) -> Result<Parsed<'_>, IngestError> {
        parse(&crate::ingest::payload(body))
    }

    #[test]
    fn every_alert_becomes_a_signal_and_unknown_fields_are_ignored() {
        let parsed = parse_str(
            r#"{"version":"4","status":"firing","someNewField":{"x":1},"alerts":[
                {"status":"firing","labels":{"alertname":"A","pod":"p1","namespace":"n"},"futureField":true},
                {"status":"resolved","labels":{"alertname":"B","node":"n1"}}]}"#,
        )
        .unwrap();
        assert_eq!(parsed.len(), 2);
        let a = parsed[0].as_ref().unwrap();
        assert_eq!((&*a.name, a.target.kind.as_str(), &*a.namespace), ("A", "Pod", "n"));
        let b = parsed[1].as_ref().unwrap();
        assert_eq!((b.status, b.target.kind.as_str(), &*b.namespace), (SignalStatus::Resolved, "Node", "default"));
    }

    #[test]
    fn missing_alertname_fails_only_that_alert() {
        let parsed = parse_str(
            r#"{"alerts":[{"status":"firing","labels":{"x":"y"}},{"status":"firing","labels":{"alertname":"A"}}]}"#,
        )
        .unwrap();
        assert_eq!(
            parsed[0].as_ref().unwrap_err(),
            &IngestError::invalid("$.alerts[0].labels", "missing required label \"alertname\"")
        );
        assert!(parsed[1].is_ok());
    }

    #[test]
    fn malformed_json_names_the_path() {
        let err = parse_str(r#"{"alerts":[{"status":"firing","labels":{"alertname":7}}]}"#).unwrap_err();
        match err {
            IngestError::Malformed { path, .. } => assert_eq!(path, "$.alerts[0].labels.alertname"),
            other => panic!("unexpected {other:?}"),
        }
        let err = parse_str(r#"{"alerts":[{"status":"burning","labels":{}}]}"#).unwrap_err();
        assert!(matches!(err, IngestError::Malformed { ref path, .. } if path == "$.alerts[0].status"), "{err:?}");
    }

    #[test]
    fn empty_alerts_is_rejected() {
        assert_eq!(parse_str(r#"{"alerts":[]}"#).unwrap_err(), IngestError::NoAlerts);
        assert!(matches!(parse_str(r#"{"version":"4"}"#).unwrap_err(), IngestError::Malformed { .. }));
    }

    #[test]
    fn zero_starts_at_means_unset() {
        let parsed = parse_str(
            r#"{"alerts":[{"status":"firing","labels":{"alertname":"A"},"startsAt":"0001-01-01T00:00:00Z"}]}"#,
        )
        .unwrap();
        assert_eq!(parsed[0].as_ref().unwrap().firing_time, None);
    }
}
