//! Alertmanager API v2 alerts: `POST /api/v2/alerts`, as Prometheus (and other
//! rulers) push them straight to an Alertmanager, here to tidegate instead.
//!
//! The body is a JSON array of `{labels, annotations, startsAt, endsAt,
//! generatorURL}`. There is no status field: an alert whose `endsAt` is not after the
//! time it was received is resolved, as Alertmanager decides it. Prometheus re-sends
//! every firing alert each `resend_delay` (with `endsAt` a few intervals ahead), so
//! most alerts here are duplicates. An alert that cannot be used fails alone; the
//! handler records the others and answers 400 naming it, as Alertmanager does.
//!
//! Named for the wire format (like `alertmanager.rs`), not for one sender: Thanos and
//! Loki rulers post the same array. The rules for names, namespaces, targets and
//! fingerprints are the webhook adapter's, shared, not restated.

use std::borrow::Cow;

use axum::response::IntoResponse;
use jiff::Timestamp;
use serde::Deserialize;

use super::alertmanager::{alert_name, set_time, AlertParts, Position};
use super::answer::{Answer, Answered, Invalid, Reply};
use super::{parse_json, Credential, IngestError, Parse, Parsed, Payload, Source, JSON};
use crate::signal::{Labels, Signal, SignalStatus, SignalType, Text};

/// One `PostableAlert`. Only `labels` is required by Alertmanager's schema; missing
/// labels are reported as a missing `alertname`, per alert.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Alert<'a> {
    #[serde(default, borrow)]
    labels: Labels<'a>,
    #[serde(default, borrow)]
    annotations: Labels<'a>,
    #[serde(default)]
    starts_at: Option<Timestamp>,
    #[serde(default)]
    ends_at: Option<Timestamp>,
    #[serde(default, borrow, rename = "generatorURL")]
    generator_url: Option<Text<'a>>,
}

/// Alertmanager's API v2 alert endpoint, for senders that push to an Alertmanager.
pub const SOURCE: Source = Source {
    name: "alertmanager_v2",
    route: "/api/v2/alerts",
    media_types: JSON,
    parser: |_| Box::new(parse as Parse),
    signal_type: SignalType::PROMETHEUS_ALERT,
    answer: &AsAlertmanager,
    credentials: &Credential::HEAD,
};

/// As an Alertmanager answers `POST /api/v2/alerts`: 200 with an empty body once
/// every alert is recorded. Its senders read nothing but the status, so a batch
/// with unusable alerts records the usable ones and is answered 400 naming the
/// others (a re-send of the batch only repeats duplicates).
#[derive(Debug)]
struct AsAlertmanager;

impl Answer for AsAlertmanager {
    fn recorded(&self, answered: &Answered<'_>) -> Reply {
        if answered.failures.is_empty() {
            Reply::Own(axum::http::StatusCode::OK.into_response())
        } else {
            Reply::Problem
        }
    }

    fn invalid(&self, _: &Invalid<'_>) -> Reply {
        Reply::Problem
    }
}

/// Parses an alert array into one result per alert.
pub fn parse<'a>(payload: &Payload<'a>) -> Result<Parsed<'a>, IngestError> {
    let alerts: Vec<Alert<'a>> = parse_json(payload.body)?;
    if alerts.is_empty() {
        // Alertmanager answers an empty array 200; with nothing to record, a 400 costs
        // the sender nothing and tells it its request did nothing.
        return Err(IngestError::invalid("$", "must contain at least one alert"));
    }
    let received = payload.received;
    Ok(alerts
        .into_iter()
        .enumerate()
        .map(|(index, alert)| signal(Position { list: "$", index }, alert, received))
        .collect())
}

fn signal<'a>(at: Position, alert: Alert<'a>, received: Timestamp) -> Result<Signal<'a>, IngestError> {
    let name = alert_name(&alert.labels, at)?;
    let ends_at = set_time(alert.ends_at);
    if let (Some(starts), Some(ends)) = (set_time(alert.starts_at), ends_at) {
        if ends < starts {
            return Err(IngestError::invalid(at.path("endsAt"), format!("{ends} is before startsAt {starts}")));
        }
    }
    // Alertmanager's rule (types.Alert.Resolved): resolved once endsAt is not after now.
    let status = match ends_at {
        Some(ends) if ends <= received => SignalStatus::Resolved,
        _ => SignalStatus::Firing,
    };
    let source = alert.generator_url.and_then(|Text(url)| origin(url)).unwrap_or(Cow::Borrowed("prometheus"));
    let parts = AlertParts { labels: alert.labels, annotations: alert.annotations, starts_at: alert.starts_at };
    Ok(parts.into_signal(name, status, SignalType::PROMETHEUS_ALERT, source, received))
}

/// `scheme://host[:port]` of a URL, without credentials: the sender's address, which
/// is what tells one Prometheus from another.
fn origin(url: Cow<'_, str>) -> Option<Cow<'_, str>> {
    let scheme_end = url.find("://")?;
    let rest = &url[scheme_end + 3..];
    let authority_end = scheme_end + 3 + rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host_start = url[..authority_end].rfind('@').map_or(scheme_end + 3, |at| at + 1);
    if host_start == authority_end || scheme_end == 0 {
        return None;
    }
    let keep = |u: &str| format!("{}{}", &u[..scheme_end + 3], &u[host_start..authority_end]);
    Some(match url {
        Cow::Borrowed(u) if host_start == scheme_end + 3 => Cow::Borrowed(&u[..authority_end]),
        u => Cow::Owned(keep(&u)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Prometheus 2.42 posts: compact, its key order, millisecond timestamps, and
    /// `&` escaped by Go's encoder.
    const PROMETHEUS: &str = r#"[{"annotations":{"summary":"web-0 in shop is crash looping"},"endsAt":"1970-01-01T00:00:04.000Z","startsAt":"1970-01-01T00:00:00.000Z","generatorURL":"http://prometheus-0:9090/graph?g0.expr=x+%3E+0\u0026g0.tab=1","labels":{"alertname":"KubePodCrashLooping","namespace":"shop","pod":"web-0","severity":"critical"}}]"#;

    fn parse_str(body: &str) -> Result<Parsed<'_>, IngestError> {
        parse(&crate::ingest::payload(body))
    }

    #[test]
    fn a_prometheus_alert_with_ends_at_ahead_is_firing_from_its_generator() {
        let parsed = parse_str(PROMETHEUS).unwrap();
        let s = parsed[0].as_ref().unwrap();
        assert_eq!(
            (&*s.name, &*s.namespace, s.target.kind.as_str(), s.target.name.as_str()),
            ("KubePodCrashLooping", "shop", "Pod", "web-0")
        );
        assert_eq!(
            (s.status, &*s.severity, &*s.source),
            (SignalStatus::Firing, "critical", "http://prometheus-0:9090")
        );
        assert_eq!(s.signal_type, SignalType::PROMETHEUS_ALERT);
    }

    #[test]
    fn ends_at_not_after_receipt_is_a_resolution_and_zero_ends_at_is_firing() {
        let at = |ends: &str| {
            let body = format!(r#"[{{"labels":{{"alertname":"A"}},"endsAt":"{ends}"}}]"#);
            let payload =
                Payload { received: "2026-11-27T10:00:00Z".parse().unwrap(), ..crate::ingest::payload(&body) };
            parse(&payload).unwrap()[0].as_ref().unwrap().status
        };
        assert_eq!(at("2026-11-27T09:59:59.999Z"), SignalStatus::Resolved);
        assert_eq!(at("2026-11-27T10:00:00Z"), SignalStatus::Resolved);
        assert_eq!(at("2026-11-27T10:00:00.001Z"), SignalStatus::Firing);
        assert_eq!(at("0001-01-01T00:00:00Z"), SignalStatus::Firing);
    }

    #[test]
    fn the_same_alert_has_the_webhooks_fingerprint() {
        let v2 = parse_str(PROMETHEUS).unwrap().remove(0).unwrap();
        let hook = r#"{"alerts":[{"status":"firing","labels":{"pod":"web-0","alertname":"KubePodCrashLooping","namespace":"shop"}}]}"#;
        let hook = crate::ingest::alertmanager::parse(&crate::ingest::payload(hook)).unwrap().remove(0).unwrap();
        assert_eq!(v2.fingerprint, hook.fingerprint);
    }

    #[test]
    fn invalid_alerts_fail_alone_with_their_path() {
        let parsed = parse_str(
            r#"[{"labels":{"alertname":"A"}},{"labels":{}},
                {"labels":{"alertname":"B"},"startsAt":"2026-11-27T10:00:00Z","endsAt":"2026-11-27T09:00:00Z"}]"#,
        )
        .unwrap();
        assert!(parsed[0].is_ok());
        assert_eq!(
            parsed[1].as_ref().unwrap_err(),
            &IngestError::invalid("$[1].labels", "missing required label \"alertname\"")
        );
        assert!(
            matches!(parsed[2], Err(IngestError::Invalid { ref path, .. }) if path == "$[2].endsAt"),
            "{:?}",
            parsed[2]
        );
    }

    #[test]
    fn malformed_bodies_name_the_path_and_an_empty_array_is_refused() {
        let err = parse_str(r#"[{"labels":{"alertname":"A"}},{"labels":{"alertname":7}}]"#).unwrap_err();
        assert!(matches!(err, IngestError::Malformed { ref path, .. } if path == "$[1].labels.alertname"), "{err:?}");
        let err = parse_str(r#"{"alerts":[]}"#).unwrap_err();
        assert!(matches!(err, IngestError::Malformed { ref path, .. } if path == "$"), "{err:?}");
        assert_eq!(parse_str("[]").unwrap_err(), IngestError::invalid("$", "must contain at least one alert"));
    }

    #[test]
    fn the_source_is_the_generators_origin_without_credentials() {
        let origin = |url: &str| origin(Cow::Borrowed(url)).map(Cow::into_owned);
        assert_eq!(origin("http://prom:9090/graph?g0.expr=up").as_deref(), Some("http://prom:9090"));
        assert_eq!(origin("https://prom.example").as_deref(), Some("https://prom.example"));
        assert_eq!(origin("https://u:p@prom.example/x").as_deref(), Some("https://prom.example"));
        assert_eq!(origin("not a url"), None);
        assert_eq!(origin("http:///path"), None);
        let parsed = parse_str(r#"[{"labels":{"alertname":"A"}}]"#).unwrap();
        assert_eq!(parsed[0].as_ref().unwrap().source, "prometheus");
    }
}
