//! Grafana Alerting's webhook contact point.
//!
//! Its payload is Alertmanager's webhook envelope (`alertmanager.rs`, whose rules for
//! names, namespaces, targets and fingerprints it shares) with `version: "1"`, an
//! `orgId`, and per alert the links a responder wants: the rule (`generatorURL`),
//! its silence, dashboard, panel and image, and the query `values`. Those are kept
//! as annotations under `grafana.com/`, so they cannot collide with the rule's own
//! annotations (rules often carry a `dashboard_url` of their own). Grafana accepts
//! any 2xx.
//!
//! A contact point with a custom payload template sends whatever the template makes;
//! only the default payload is understood.

use std::borrow::Cow;
use std::fmt::Write;

use super::alertmanager::{parse_envelope, Alert};
use super::answer::Results;
use super::{Credential, IngestError, Parse, Parsed, Payload, Source, JSON};
use crate::signal::{SignalType, Text};

/// What Grafana's alerts are, on the request and in metrics.
pub const SIGNAL_TYPE: SignalType = SignalType::new("grafana-alert");

/// Grafana's webhook contact point (integration type `webhook`). Grafana signs its
/// webhooks (HMAC), and can also send a token or a password.
pub const WEBHOOK: Source = Source {
    name: "grafana",
    route: "/api/v1/signals/grafana",
    media_types: JSON,
    parser: |_| Box::new(parse as Parse),
    signal_type: SIGNAL_TYPE,
    answer: &Results,
    credentials: &Credential::head_and(Credential::GrafanaSignature),
};

/// Parses a Grafana webhook body into one result per alert.
pub fn parse<'a>(payload: &Payload<'a>) -> Result<Parsed<'a>, IngestError> {
    parse_envelope(payload, "grafana", SIGNAL_TYPE, annotate)
}

/// Moves Grafana's links and values into the alert's annotations; empty ones are
/// left out (Grafana sends `""` for a rule with no dashboard or panel).
fn annotate<'a>(alert: &mut Alert<'a, Text<'a>>) {
    let links = [
        ("grafana.com/generator-url", alert.generator_url.take()),
        ("grafana.com/silence-url", alert.silence_url.take()),
        ("grafana.com/dashboard-url", alert.dashboard_url.take()),
        ("grafana.com/panel-url", alert.panel_url.take()),
        ("grafana.com/image-url", alert.image_url.take()),
    ];
    for (name, link) in links {
        if let Some(Text(url)) = link.filter(|Text(url)| !url.is_empty()) {
            alert.annotations.push(name, url);
        }
    }
    let values = alert.values.take().filter(|v| !v.is_empty()).map(|values| {
        // As Grafana's own message writes them: `B=44.2, C=1`.
        let mut text = String::new();
        for (i, (ref_id, value)) in values.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(text, "{sep}{ref_id}={value}");
        }
        Cow::Owned(text)
    });
    let value_string = alert.value_string.take().map(|Text(s)| s).filter(|s| !s.is_empty());
    if let Some(values) = values.or(value_string) {
        alert.annotations.push("grafana.com/values", values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::{Fingerprint, SignalStatus, TargetResource};

    const DOCS: &str = include_str!("../../tests/fixtures/grafana/webhook-firing-docs.json");
    const CURRENT: &str = include_str!("../../tests/fixtures/grafana/webhook-firing-default-payload-test.json");

    fn parse_str(body: &str) -> Result<Parsed<'_>, IngestError> {
        parse(&crate::ingest::payload(body))
    }

    #[test]
    fn every_alert_of_the_documented_payload_becomes_a_grafana_signal() {
        let parsed = parse_str(DOCS).unwrap();
        assert_eq!(parsed.len(), 2);
        let s = parsed[0].as_ref().unwrap();
        assert_eq!((&*s.name, &*s.namespace, s.status), ("High memory usage", "default", SignalStatus::Firing));
        assert_eq!(s.signal_type, SIGNAL_TYPE);
        assert_eq!(s.source, "https://play.grafana.org/");
        assert_eq!(s.target, TargetResource::default());
        assert_eq!(s.fingerprint, Fingerprint::new("High memory usage", "default", &TargetResource::default()));
        assert_eq!(s.firing_time.unwrap().to_string(), "2021-10-12T07:51:03.157076Z");
        assert_eq!(
            s.annotations.get("grafana.com/generator-url"),
            Some("https://play.grafana.org/alerting/1afz29v7z/edit")
        );
        assert!(s.annotations.get("grafana.com/silence-url").unwrap().contains("alertmanager=grafana"));
        assert_eq!(s.annotations.get("grafana.com/values"), Some("B=44.23943737541908, C=1"));
        assert_eq!(s.annotations.get("summary"), Some("This alert was triggered for zone us-1"));
        // Grafana sends "" for a rule without a dashboard or panel.
        assert_eq!(s.annotations.get("grafana.com/dashboard-url"), None);
        assert_eq!(s.annotations.get("grafana.com/panel-url"), None);
    }

    #[test]
    fn current_payload_with_null_values_and_unset_start_parses() {
        let parsed = parse_str(CURRENT).unwrap();
        let s = parsed[0].as_ref().unwrap();
        assert_eq!(s.name, "alert1");
        assert_eq!(s.firing_time, None);
        assert_eq!(s.annotations.get("grafana.com/values"), None);
        assert_eq!(
            s.annotations.get("grafana.com/silence-url"),
            Some("http://localhost/alerting/silence/new?alertmanager=grafana&matcher=alertname%3Dalert1&matcher=lbl1%3Dval1&orgId=1")
        );
    }

    #[test]
    fn dashboard_panel_and_image_links_are_kept_and_value_string_stands_in_for_values() {
        let body = r#"{"version":"1","status":"resolved","alerts":[{"status":"resolved","labels":{"alertname":"A"},
            "dashboardURL":"https://g/d/x","panelURL":"https://g/d/x?viewPanel=2","imageURL":"https://g/i.png",
            "valueString":"[ var='B' labels={} value=1 ]"}]}"#;
        let parsed = parse_str(body).unwrap();
        let s = parsed[0].as_ref().unwrap();
        assert_eq!(s.status, SignalStatus::Resolved);
        assert_eq!(s.annotations.get("grafana.com/dashboard-url"), Some("https://g/d/x"));
        assert_eq!(s.annotations.get("grafana.com/panel-url"), Some("https://g/d/x?viewPanel=2"));
        assert_eq!(s.annotations.get("grafana.com/image-url"), Some("https://g/i.png"));
        assert_eq!(s.annotations.get("grafana.com/values"), Some("[ var='B' labels={} value=1 ]"));
    }

    #[test]
    fn a_receiver_without_external_url_names_grafana() {
        let parsed =
            parse_str(r#"{"receiver":"ops","alerts":[{"status":"firing","labels":{"alertname":"A"}}]}"#).unwrap();
        assert_eq!(parsed[0].as_ref().unwrap().source, "grafana/ops");
    }

    #[test]
    fn a_malformed_url_names_its_path() {
        let body = r#"{"alerts":[{"status":"firing","labels":{"alertname":"A"},"panelURL":7}]}"#;
        let err = parse_str(body).unwrap_err();
        assert!(matches!(err, IngestError::Malformed { ref path, .. } if path == "$.alerts[0].panelURL"), "{err:?}");
    }
}
