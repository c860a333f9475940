//! The PagerDuty Events API v2 (`POST /v2/enqueue`), which many tools post to
//! (Alertmanager's `pagerduty_configs` with `url:` set, Grafana, Zabbix, Datadog):
//! one event per request, `{routing_key, event_action, dedup_key, payload{summary,
//! source, severity, timestamp, component, group, class, custom_details}}`.
//!
//! - `trigger` fires; `resolve` is a resolution (recorded on the open request, or
//!   nothing); `acknowledge` is a person's answer, not an occurrence: recorded on
//!   the open request (`status.acknowledgedAt`, see `pipeline::acknowledge`), or
//!   nothing; answered as PagerDuty answers it, and it never creates a request.
//! - `dedup_key` is the sender's own identity of its incident, so it is the
//!   fingerprint ([`super::keyed_fingerprint`]) and the signal's name: every event
//!   under one key is one incident, named alike, whatever its summary says
//!   (Alertmanager's reads `[FIRING:1] …`, then `[FIRING:2] …` as its group grows,
//!   then `[RESOLVED] …`; a name that changed would name another request). A trigger
//!   without one gets a key made from its content (summary, namespace, target),
//!   answered back as PagerDuty answers a key it made, so the sender can resolve it.
//! - `routing_key` is the credential: a token in the body, checked as a bearer
//!   token of `auth.authenticators` (the one a sender's `routing_key` is written in).
//! - The summary is the annotation `summary`; the namespace and target are read
//!   from `custom_details` as from an alert's labels (`namespace`, `pod`,
//!   `deployment`, …), whose scalar values become the signal's labels with
//!   `component`, `group` and `class`. The request lives in that namespace, so a
//!   resolve finds it only if its details name the same one (Alertmanager's do: its
//!   details are the same templates); a resolve with none looks in `default`.
//!
//! Answered `202 {"status":"success","message":"Event processed","dedup_key":…}`,
//! an invalid event `400 {"status":"invalid event","message":"Event object is
//! invalid","errors":[…]}`, as PagerDuty does; what may succeed later is the
//! gateway's 503 with `Retry-After` (Alertmanager's PagerDuty notifier retries 5xx).

use std::borrow::Cow;

use axum::http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::answer::{json, Answer, Answered, Invalid, Reply};
use super::{keyed_fingerprint, parse_json, Credential, IngestError, Parse, Parsed, Payload, Source, JSON};
use crate::signal::{namespace_from_labels, Fingerprint, Labels, Signal, SignalStatus, SignalType, TargetResource};

/// What PagerDuty events are, on the request and in metrics.
pub const SIGNAL_TYPE: SignalType = SignalType::new("pagerduty-event");

/// PagerDuty's Events API v2 endpoint. Its senders put their credential in the body
/// (`routing_key`); most can send a token or a password in the head instead.
pub const SOURCE: Source = Source {
    name: "pagerduty",
    route: "/v2/enqueue",
    media_types: JSON,
    parser: |_| Box::new(parse as Parse),
    signal_type: SIGNAL_TYPE,
    answer: &AsPagerDuty,
    credentials: &Credential::head_and(Credential::TokenInBody { read: routing_key }),
};

/// PagerDuty's longest `summary` and `dedup_key`.
const MAX_SUMMARY: usize = 1024;
const MAX_DEDUP_KEY: usize = 255;

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(default, borrow)]
    routing_key: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    event_action: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    dedup_key: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    payload: Option<EventPayload<'a>>,
    #[serde(default, borrow)]
    client: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    client_url: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct EventPayload<'a> {
    #[serde(default, borrow)]
    summary: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    severity: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    component: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    group: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    class: Option<Cow<'a, str>>,
    #[serde(default)]
    custom_details: Option<Value>,
}

/// The `routing_key` of a body, for the authenticators.
fn routing_key(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Key {
        routing_key: Option<String>,
    }
    serde_json::from_slice::<Key>(body).ok()?.routing_key.filter(|k| !k.trim().is_empty())
}

/// A present, non-blank string field, or the error PagerDuty gives for it.
fn required<'a>(value: Option<Cow<'a, str>>, path: &str) -> Result<Cow<'a, str>, IngestError> {
    value.filter(|v| !v.trim().is_empty()).ok_or_else(|| IngestError::invalid(path, "missing or blank"))
}

/// Parses one event into one result.
pub fn parse<'a>(payload: &Payload<'a>) -> Result<Parsed<'a>, IngestError> {
    let event: Event<'a> = parse_json(payload.body)?;
    required(event.routing_key, "$.routing_key")?;
    let action = required(event.event_action, "$.event_action")?;
    let dedup_key = event.dedup_key.filter(|k| !k.is_empty());
    if dedup_key.as_ref().is_some_and(|k| k.chars().count() > MAX_DEDUP_KEY) {
        return Err(IngestError::invalid("$.dedup_key", format!("longer than {MAX_DEDUP_KEY} characters")));
    }
    let status = match &*action {
        "trigger" => SignalStatus::Firing,
        "resolve" => SignalStatus::Resolved,
        "acknowledge" => SignalStatus::Acknowledged,
        other => {
            let reason = format!("{other:?} is not one of \"trigger\", \"acknowledge\", \"resolve\"");
            return Err(IngestError::invalid("$.event_action", reason));
        }
    };
    match status {
        SignalStatus::Resolved if dedup_key.is_none() => {
            return Err(IngestError::invalid("$.dedup_key", "missing or blank; a resolve names the incident it ends"));
        }
        SignalStatus::Acknowledged if dedup_key.is_none() => {
            return Err(IngestError::invalid("$.dedup_key", "missing or blank"));
        }
        _ => {}
    }
    let details = match &event.payload {
        None if status == SignalStatus::Firing => return Err(IngestError::invalid("$.payload", "missing")),
        None => None,
        Some(p) => p.custom_details.as_ref(),
    };
    let labels = labels(details, event.payload.as_ref());
    let namespace = namespace_from_labels(&labels);
    let target = TargetResource::from_labels(&labels, &namespace);
    let (summary, severity, source, firing_time, mut annotations) = match event.payload {
        Some(p) => described(p, status)?,
        None => (None, Cow::Borrowed("unknown"), Cow::Borrowed("pagerduty"), None, Labels::default()),
    };
    let key = match dedup_key {
        Some(key) => key,
        None => Cow::Owned(Fingerprint::new(summary.as_deref().unwrap_or(""), &namespace, &target).to_hex()),
    };
    let name = key.clone();
    if let Some(client) = event.client.filter(|c| !c.is_empty()) {
        annotations.push("pagerduty.com/client", client);
    }
    if let Some(url) = event.client_url.filter(|u| !u.is_empty()) {
        annotations.push("pagerduty.com/client-url", url);
    }
    let fingerprint = keyed_fingerprint(SIGNAL_TYPE, &key);
    annotations.push(super::INCIDENT_KEY, key);
    Ok(vec![Ok(Signal {
        name,
        severity,
        namespace,
        target,
        labels,
        annotations,
        firing_time,
        received_time: payload.received,
        signal_type: SIGNAL_TYPE,
        source,
        status,
        fingerprint,
    })])
}

type Described<'a> = (Option<Cow<'a, str>>, Cow<'a, str>, Cow<'a, str>, Option<Timestamp>, Labels<'a>);

/// Summary, severity, source, time and annotations from a payload; a trigger's
/// must have PagerDuty's required fields, a resolve's or an acknowledge's may have
/// none.
fn described(p: EventPayload<'_>, status: SignalStatus) -> Result<Described<'_>, IngestError> {
    let firing = status == SignalStatus::Firing;
    let summary = match firing {
        true => Some(required(p.summary, "$.payload.summary")?),
        false => p.summary.filter(|s| !s.trim().is_empty()),
    };
    if summary.as_ref().is_some_and(|s| s.chars().count() > MAX_SUMMARY) {
        return Err(IngestError::invalid("$.payload.summary", format!("longer than {MAX_SUMMARY} characters")));
    }
    let source = match firing {
        true => required(p.source, "$.payload.source")?,
        false => p.source.filter(|s| !s.trim().is_empty()).unwrap_or(Cow::Borrowed("pagerduty")),
    };
    let severity = match (p.severity, firing) {
        (None, false) => Cow::Borrowed("unknown"),
        (severity, _) => severity_of(required(severity, "$.payload.severity")?)?,
    };
    let firing_time =
        match p.timestamp.filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(t.parse::<Timestamp>().map_err(|_| {
                IngestError::invalid("$.payload.timestamp", format!("{:?} is not an ISO 8601 time", &*t))
            })?),
        };
    let mut annotations = Labels::default();
    if let Some(summary) = &summary {
        annotations.push("summary", summary.clone());
    }
    Ok((summary, severity, source, firing_time, annotations))
}

/// PagerDuty's four severities as the three the priority rules know: `error` is
/// a warning, as Falco's errors are.
fn severity_of(severity: Cow<'_, str>) -> Result<Cow<'_, str>, IngestError> {
    match &*severity {
        "critical" | "warning" | "info" => Ok(severity),
        "error" => Ok(Cow::Borrowed("warning")),
        other => Err(IngestError::invalid(
            "$.payload.severity",
            format!("{other:?} is not one of \"critical\", \"error\", \"warning\", \"info\""),
        )),
    }
}

/// The event's labels: `custom_details`' scalar members as text (where a sender
/// puts `namespace`, `pod` and the like), then `component`, `group` and `class`.
fn labels<'a>(details: Option<&Value>, payload: Option<&EventPayload<'a>>) -> Labels<'a> {
    let mut labels = Labels::default();
    if let Some(Value::Object(details)) = details {
        for (name, value) in details {
            let text = match value {
                Value::String(s) if !s.is_empty() => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            labels.push(name.clone(), text);
        }
    }
    if let Some(p) = payload {
        for (name, value) in [("component", &p.component), ("group", &p.group), ("class", &p.class)] {
            if let Some(value) = value.as_ref().filter(|v| !v.is_empty()) {
                labels.push(name, value.clone());
            }
        }
    }
    labels
}

/// As PagerDuty's Events API answers.
#[derive(Debug)]
struct AsPagerDuty;

#[derive(Serialize)]
struct Accepted<'a> {
    status: &'static str,
    message: &'static str,
    dedup_key: &'a str,
}

#[derive(Serialize)]
struct Refused {
    status: &'static str,
    message: &'static str,
    errors: Vec<String>,
}

impl Answer for AsPagerDuty {
    fn recorded(&self, answered: &Answered<'_>) -> Reply {
        // The key the event was recorded under: the sender's, or the one made for it.
        let key = answered.recorded.first().and_then(|r| r.signal.annotations.get(super::INCIDENT_KEY)).unwrap_or("");
        let body = Accepted { status: "success", message: "Event processed", dedup_key: key };
        Reply::Own(json(StatusCode::ACCEPTED, &body, 96 + key.len()))
    }

    fn invalid(&self, invalid: &Invalid<'_>) -> Reply {
        let body = Refused { status: "invalid event", message: "Event object is invalid", errors: invalid.reasons() };
        Reply::Own(json(StatusCode::BAD_REQUEST, &body, 256))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Alertmanager 0.25's PagerDuty notifier posts for one firing alert.
    const ALERTMANAGER: &str = include_str!("../../tests/fixtures/pagerduty/alertmanager-0.25-trigger.json");
    /// And its resolve, once the alert ended.
    const RESOLVE: &str = include_str!("../../tests/fixtures/pagerduty/alertmanager-0.25-resolve.json");
    /// A trigger with every field PagerDuty documents.
    const ALL_FIELDS: &str = include_str!("../../tests/fixtures/pagerduty/events-v2-trigger-all-fields.json");

    fn parse_str(body: &str) -> Result<Parsed<'_>, IngestError> {
        parse(&crate::ingest::payload(body))
    }

    fn one(body: &str) -> Signal<'_> {
        let mut parsed = parse_str(body).unwrap();
        assert_eq!(parsed.len(), 1);
        parsed.remove(0).unwrap()
    }

    #[test]
    fn alertmanagers_trigger_is_a_firing_signal_keyed_by_its_dedup_key() {
        let s = one(ALERTMANAGER);
        assert_eq!(s.status, SignalStatus::Firing);
        assert_eq!(s.annotations.get("summary"), Some("[FIRING:1] KubePodCrashLooping shop (web-0 critical)"));
        assert_eq!((&*s.severity, &*s.source), ("warning", "Alertmanager"));
        let key = s.annotations.get(crate::ingest::INCIDENT_KEY).unwrap();
        assert_eq!(key.len(), 64, "Alertmanager's key is the SHA-256 of its group key");
        assert_eq!((s.fingerprint, &*s.name), (keyed_fingerprint(SIGNAL_TYPE, key), key));
        assert_eq!((&*s.namespace, s.target.clone()), ("default", TargetResource::default()), "no details named them");
    }

    #[test]
    fn a_resolve_of_the_same_key_is_the_same_incident_whatever_its_summary() {
        let firing = one(ALERTMANAGER);
        let resolved = one(RESOLVE);
        assert_eq!(resolved.status, SignalStatus::Resolved);
        assert_ne!(resolved.annotations.get("summary"), firing.annotations.get("summary"));
        assert_eq!((resolved.fingerprint, &resolved.name), (firing.fingerprint, &firing.name));
    }

    #[test]
    fn a_trigger_with_every_field_is_named_by_its_key_and_labelled_by_its_details() {
        let s = one(ALL_FIELDS);
        assert_eq!((&*s.name, &*s.severity, &*s.source), ("samplekeyhere", "critical", "prod-datapipe03.example.com"));
        assert_eq!(s.labels.get("class"), Some("disk"));
        assert_eq!(s.firing_time.unwrap().to_string(), "2015-07-17T08:42:58.315Z");
        assert_eq!((s.labels.get("component"), s.labels.get("group")), (Some("mysql"), Some("prod-datapipe")));
        assert_eq!((s.labels.get("free space"), s.labels.get("load avg")), (Some("1%"), Some("0.75")));
        assert_eq!(s.annotations.get("summary"), Some("DISK at 99% on machine prod-datapipe03.example.com"));
        assert_eq!(s.annotations.get("pagerduty.com/client"), Some("Sample Monitoring Service"));
        assert_eq!(s.annotations.get(crate::ingest::INCIDENT_KEY), Some("samplekeyhere"));
    }

    #[test]
    fn details_name_the_namespace_and_target_as_alert_labels_do() {
        let body = r#"{"routing_key":"k","event_action":"trigger","dedup_key":"d",
            "payload":{"summary":"s","source":"h","severity":"info","custom_details":{"namespace":"shop","pod":"web-0","n":2,"list":[1]}}}"#;
        let s = one(body);
        assert_eq!((&*s.namespace, s.target.clone()), ("shop", TargetResource::new("Pod", "web-0", "shop")));
        assert_eq!(s.labels.get("n"), Some("2"));
        assert_eq!(s.labels.get("list"), None, "only scalars are labels");
        assert_eq!(s.fingerprint, keyed_fingerprint(SIGNAL_TYPE, "d"), "the key alone is the incident");
    }

    #[test]
    fn a_trigger_without_a_key_gets_one_from_its_content() {
        let body = r#"{"routing_key":"k","event_action":"trigger","payload":{"summary":"disk full","source":"h","severity":"error"}}"#;
        let (a, b) = (one(body), one(body));
        let key = a.annotations.get(crate::ingest::INCIDENT_KEY).unwrap().to_string();
        assert_eq!(key, Fingerprint::new("disk full", "default", &TargetResource::default()).to_hex());
        assert_eq!((a.fingerprint, &a.name), (b.fingerprint, &b.name), "the same event, the same incident");
        assert_eq!(a.fingerprint, keyed_fingerprint(SIGNAL_TYPE, &key), "a resolve under the answered key meets it");
    }

    #[test]
    fn an_acknowledge_is_an_acknowledged_signal_of_its_keys_incident_and_needs_a_key() {
        let ack = one(r#"{"routing_key":"k","event_action":"acknowledge","dedup_key":"d"}"#);
        assert_eq!(ack.status, SignalStatus::Acknowledged);
        assert_eq!((ack.fingerprint, &*ack.name), (keyed_fingerprint(SIGNAL_TYPE, "d"), "d"), "the trigger's incident");
        assert_eq!(ack.annotations.get(crate::ingest::INCIDENT_KEY), Some("d"));
        let err = parse_str(r#"{"routing_key":"k","event_action":"acknowledge"}"#).unwrap_err();
        assert_eq!(err, IngestError::invalid("$.dedup_key", "missing or blank"));
    }

    #[test]
    fn invalid_events_name_the_field_at_fault() {
        let cases = [
            (r#"{"event_action":"trigger"}"#, "$.routing_key"),
            (r#"{"routing_key":"k"}"#, "$.event_action"),
            (r#"{"routing_key":"k","event_action":"escalate"}"#, "$.event_action"),
            (r#"{"routing_key":"k","event_action":"trigger"}"#, "$.payload"),
            (r#"{"routing_key":"k","event_action":"resolve"}"#, "$.dedup_key"),
            (
                r#"{"routing_key":"k","event_action":"trigger","payload":{"source":"h","severity":"info"}}"#,
                "$.payload.summary",
            ),
            (
                r#"{"routing_key":"k","event_action":"trigger","payload":{"summary":"s","severity":"info"}}"#,
                "$.payload.source",
            ),
            (
                r#"{"routing_key":"k","event_action":"trigger","payload":{"summary":"s","source":"h","severity":"fatal"}}"#,
                "$.payload.severity",
            ),
            (
                r#"{"routing_key":"k","event_action":"trigger","payload":{"summary":"s","source":"h","severity":"info","timestamp":"noon"}}"#,
                "$.payload.timestamp",
            ),
        ];
        for (body, at) in cases {
            let err = parse_str(body).unwrap_err();
            assert!(matches!(&err, IngestError::Invalid { path, .. } if path == at), "{body}: {err:?}");
        }
        let err = parse_str(r#"{"routing_key":7}"#).unwrap_err();
        assert!(matches!(err, IngestError::Malformed { ref path, .. } if path == "$.routing_key"), "{err:?}");
    }

    #[test]
    fn the_routing_key_is_read_for_the_authenticators() {
        assert_eq!(routing_key(ALERTMANAGER.as_bytes()).as_deref(), Some("tidegate-routing-key-0123456789ab"));
        assert_eq!(routing_key(br#"{"routing_key":" "}"#), None);
        assert_eq!(routing_key(b"not json"), None);
    }
}
