//! Kubernetes core/v1 Events.
//!
//! Only `Warning` events become signals; the target resource is the event's
//! `involvedObject` and the signal name is its `reason`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Deserialize;

use super::answer::Results;
use super::{parse_json, Credential, IngestError, Parse, Parsed, Payload, Source, JSON};
use crate::signal::{Fingerprint, Signal, SignalStatus, SignalType, TargetResource};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
    involved_object: ObjectReference,
    #[serde(default)]
    first_timestamp: Option<Timestamp>,
    #[serde(default)]
    event_time: Option<Timestamp>,
    #[serde(default)]
    last_timestamp: Option<Timestamp>,
    #[serde(default)]
    source: EventSource,
    #[serde(default)]
    reporting_component: String,
    #[serde(default)]
    metadata: Metadata,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectReference {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    api_version: String,
}

#[derive(Debug, Default, Deserialize)]
struct EventSource {
    #[serde(default)]
    component: String,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    namespace: String,
}

/// core/v1 Events, as event exporters forward them.
pub const SOURCE: Source = Source {
    name: "k8s_event",
    route: "/api/v1/signals/kubernetes-event",
    media_types: JSON,
    parser: |_| Box::new(parse as Parse),
    signal_type: SignalType::KUBERNETES_EVENT,
    answer: &Results,
    credentials: &Credential::HEAD,
};

/// Parses an Event body into exactly one result.
pub fn parse<'a>(payload: &Payload<'a>) -> Result<Parsed<'a>, IngestError> {
    let received = payload.received;
    let event: Event = parse_json(payload.body)?;
    match event.kind.as_deref() {
        Some("Warning") => {}
        Some(other) => return Err(IngestError::NotWarning(other.to_string())),
        None => return Err(IngestError::NotWarning(String::new())),
    }
    if event.reason.trim().is_empty() {
        return Err(IngestError::invalid("$.reason", "missing; the reason names the signal"));
    }
    let object = event.involved_object;
    for (value, path) in [(&object.kind, "$.involvedObject.kind"), (&object.name, "$.involvedObject.name")] {
        if value.is_empty() {
            return Err(IngestError::invalid(path, "missing; it identifies the target resource"));
        }
    }
    let namespace = [&object.namespace, &event.metadata.namespace]
        .into_iter()
        .find(|ns| !ns.is_empty())
        .cloned()
        .unwrap_or_else(|| "default".into());
    let target =
        TargetResource { kind: object.kind.clone(), name: object.name.clone(), namespace: object.namespace.clone() };
    let fingerprint = Fingerprint::new(&event.reason, &namespace, &target);
    let mut labels = BTreeMap::from([
        ("reason".to_string(), event.reason.clone()),
        ("kind".to_string(), object.kind),
        ("name".to_string(), object.name),
        ("namespace".to_string(), namespace.clone()),
    ]);
    for (key, value) in [("uid", object.uid), ("apiVersion", object.api_version)] {
        if !value.is_empty() {
            labels.insert(key.to_string(), value);
        }
    }
    let annotations = BTreeMap::from([("message".to_string(), event.message)]);
    let source = [event.source.component, event.reporting_component]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "kubernetes".into());
    Ok(vec![Ok(Signal {
        name: event.reason.into(),
        severity: "warning".into(),
        namespace: namespace.into(),
        target,
        labels: labels.into_iter().collect(),
        annotations: annotations.into_iter().collect(),
        firing_time: event.first_timestamp.or(event.event_time).or(event.last_timestamp),
        received_time: received,
        signal_type: SignalType::KUBERNETES_EVENT,
        source: source.into(),
        status: SignalStatus::Firing,
        fingerprint,
    })])
}

#[cfg(test)]
mod tests {
    use super::*;

    const WARNING: &str = r#"{"apiVersion":"v1","kind":"Event","type":"Warning","reason":"BackOff",
        "message":"Back-off restarting failed container","count":5,
        "involvedObject":{"kind":"Pod","name":"web-0","namespace":"shop","uid":"u1","apiVersion":"v1"},
        "firstTimestamp":"2026-11-25T10:00:00Z","lastTimestamp":"2026-11-25T10:05:00Z",
        "source":{"component":"kubelet","host":"node-1"},"metadata":{"name":"web-0.abc","namespace":"shop"}}"#;

    fn parse_str(body: &str) -> Result<Parsed<'_>, IngestError> {
        parse(&crate::ingest::payload(body))
    }

    #[test]
    fn warning_event_targets_its_involved_object() {
        let parsed = parse_str(WARNING).unwrap();
        let s = parsed[0].as_ref().unwrap();
        assert_eq!(s.name, "BackOff");
        assert_eq!(s.target, TargetResource { kind: "Pod".into(), name: "web-0".into(), namespace: "shop".into() });
        assert_eq!(s.fingerprint, Fingerprint::new("BackOff", "shop", &s.target));
        assert_eq!(s.source, "kubelet");
        assert_eq!(s.firing_time.unwrap().to_string(), "2026-11-25T10:00:00Z");
    }

    #[test]
    fn normal_event_is_rejected_with_its_type() {
        let body = WARNING.replace("\"Warning\"", "\"Normal\"");
        assert_eq!(parse_str(&body).unwrap_err(), IngestError::NotWarning("Normal".into()));
    }

    #[test]
    fn event_without_involved_object_name_is_invalid() {
        let body = WARNING.replace("\"name\":\"web-0\",", "");
        let err = parse_str(&body).unwrap_err();
        assert_eq!(err, IngestError::invalid("$.involvedObject.name", "missing; it identifies the target resource"));
    }
}
