//! Source adapters: bytes in, [`Signal`]s out, and the table of every source.
//!
//! One adapter per source, one file each, and one entry per source in [`SOURCES`]:
//! its route, the media types it accepts, its parser, its signal type and how its
//! sender expects to be answered. The router, the metric labels and the CRD's
//! `signalType` enum are derived from the table, so adding a source is one file
//! and one entry.
//!
//! Adapters parse and validate; they never do I/O, hold state or consult the clock
//! (the receive time is passed in). Every rejection names the JSON path at fault, so
//! a sender can fix its payload without reading our code.

pub mod alertmanager;
pub mod alertmanager_v2;
pub mod cloudevents;
pub mod grafana;
pub mod k8s_event;
mod signal_type;

use axum::http::HeaderMap;
use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::section::ConfigError;
use crate::signal::{Signal, SignalType};

/// Every source tidegate accepts.
pub const SOURCES: &[Source] =
    &[alertmanager::WEBHOOK, alertmanager_v2::SOURCE, k8s_event::SOURCE, grafana::WEBHOOK, cloudevents::SOURCE];

/// One kind of sender: where it posts, what it sends, and what it expects back.
#[derive(Debug)]
pub struct Source {
    /// The path it posts to.
    pub route: &'static str,
    /// Media types accepted, by essence (`type/subtype`, no parameters); a pattern
    /// `application/*+json` accepts every JSON-based type.
    pub media_types: &'static [&'static str],
    pub parse: Parse,
    /// What its signals are, on the request (`spec.signalType`) and in metrics.
    pub signal_type: SignalType,
    pub answer: Answer,
    /// The kinds of authenticator (`crate::auth::kind`) its sender can present: the
    /// configured authenticators of these kinds guard the route, unless
    /// `auth.endpoints` names its own list.
    pub auth: &'static [&'static str],
}

/// How a sender expects success to be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 201 created or 202 otherwise for one signal; 207 with a result per signal for
    /// several.
    Results,
    /// As an Alertmanager answers `POST /api/v2/alerts`: 200 with an empty body once
    /// every alert is recorded. Its senders read nothing but the status, so a batch
    /// with invalid alerts records the valid ones and is answered 400 naming the
    /// invalid ones (a re-send of the batch only repeats duplicates).
    Alertmanager,
}

/// `ingest`: what every source's signals are held to, whatever their source.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Labels and annotations one alert may carry, together. An alert with more is
    /// refused alone (400): no rule writes that many, and its request could not
    /// hold them.
    pub max_labels: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig { max_labels: 256 }
    }
}

impl IngestConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_labels == 0 {
            return Err(ConfigError::invalid("ingest.max_labels", "must be at least 1"));
        }
        Ok(())
    }
}

/// Parses a payload with `source`'s parser, then holds every signal to what any
/// request must be: a bounded number of labels, and an identity Kubernetes can
/// hold, by `payload.config.ingest`. The handler and the fuzz targets both parse
/// through here.
pub fn parse<'a>(source: &Source, payload: &Payload<'a>) -> Result<Parsed<'a>, IngestError> {
    let config = &payload.config.ingest;
    let mut parsed = (source.parse)(payload)?;
    for result in &mut parsed {
        if let Err(e) = result.as_ref().map_or(Ok(()), |signal| admissible(signal, config)) {
            *result = Err(e);
        }
    }
    Ok(parsed)
}

/// The longest name of a Kubernetes object (a DNS-1123 subdomain), and of a
/// namespace or kind (a DNS-1123 label).
const MAX_NAME_BYTES: usize = 253;
const MAX_LABEL_BYTES: usize = 63;

/// Whether `signal` can become a request: its namespace names a directory and a
/// namespace, so it must be one Kubernetes could have (which also keeps `..` and
/// `/` out of the directory sink's paths); label names and target names are the
/// sizes Kubernetes allows. Values are not limited here: the request cuts them.
fn admissible(signal: &Signal<'_>, config: &IngestConfig) -> Result<(), IngestError> {
    let labels = signal.labels.len() + signal.annotations.len();
    if labels > config.max_labels {
        let reason = format!("{labels} labels and annotations, more than ingest.max_labels ({})", config.max_labels);
        return Err(IngestError::OverLimit { field: "labels", reason });
    }
    let longest = signal.labels.names().chain(signal.annotations.names()).map(str::len).max().unwrap_or(0);
    if longest > crate::remediation::MAX_VALUE_BYTES {
        let reason = format!("a name of {longest} bytes; at most {}", crate::remediation::MAX_VALUE_BYTES);
        return Err(IngestError::OverLimit { field: "labels", reason });
    }
    if !is_dns1123_label(&signal.namespace) {
        let reason = "is not a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)";
        return Err(IngestError::Identity {
            field: "namespace",
            reason: format!("{:?} {reason}", cut(&signal.namespace)),
        });
    }
    let target = &signal.target;
    if target.name.len() > MAX_NAME_BYTES || target.kind.len() > MAX_LABEL_BYTES {
        let reason = format!("{} {:?} is longer than Kubernetes allows", cut(&target.kind), cut(&target.name));
        return Err(IngestError::Identity { field: "target", reason });
    }
    Ok(())
}

/// A value short enough to quote in an error.
fn cut(value: &str) -> &str {
    let mut end = value.len().min(64);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// A DNS-1123 label, as Kubernetes checks namespace names: 1 to 63 characters of
/// `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns1123_label(name: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=MAX_LABEL_BYTES).contains(&name.len())
        && name.bytes().all(|c| alnum(c) || c == b'-')
        && name.bytes().next().is_some_and(alnum)
        && name.bytes().last().is_some_and(alnum)
}

/// A source's parser.
pub type Parse = for<'a> fn(&Payload<'a>) -> Result<Parsed<'a>, IngestError>;

/// What a parser reads: the body and its headers, when it was received, and the
/// configuration of the sources that have one.
pub struct Payload<'a> {
    pub body: &'a [u8],
    pub headers: &'a HeaderMap,
    pub received: Timestamp,
    /// The sections of the sources that have one.
    pub config: &'a Settings,
}

/// What the parsers read: `ingest`, and the section of each source that has one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub ingest: IngestConfig,
    pub cloudevents: cloudevents::CloudEventsConfig,
}

impl Source {
    /// Whether a request of media type `essence` (lowercase) is for this source.
    pub fn accepts(&self, essence: &str) -> bool {
        self.media_types.iter().any(|accepted| match accepted.strip_prefix("application/*") {
            Some(suffix) => essence.starts_with("application/") && essence.ends_with(suffix),
            None => *accepted == essence,
        })
    }
}

/// A payload of `body` alone, received at the epoch with the default configuration,
/// for parser tests.
#[cfg(test)]
pub fn payload(body: &str) -> Payload<'_> {
    static HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);
    static CONFIG: std::sync::LazyLock<Settings> = std::sync::LazyLock::new(Default::default);
    Payload { body: body.as_bytes(), headers: &HEADERS, received: Timestamp::UNIX_EPOCH, config: &CONFIG }
}

/// The essence of a `Content-Type` value: its `type/subtype`, lowercase, without
/// parameters.
pub fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// The media types of a JSON sender: `application/json` and any `application/*+json`.
pub const JSON: &[&str] = &["application/json", "application/*+json"];

/// Every signal type of the table, once each, in table order.
pub fn signal_types() -> impl Iterator<Item = SignalType> {
    SOURCES.iter().enumerate().filter_map(|(i, s)| {
        let first = SOURCES[..i].iter().all(|earlier| earlier.signal_type != s.signal_type);
        first.then_some(s.signal_type)
    })
}

/// Why a payload, or one alert in it, was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The body is not JSON of the expected shape.
    #[error("{path}: {reason}")]
    Malformed { path: String, reason: String },
    /// A field is present but its value is unacceptable.
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    /// A webhook with nothing in it.
    #[error("alerts: must contain at least one alert")]
    NoAlerts,
    /// A Kubernetes event that is not a warning.
    #[error("type: only Warning events become signals, got {0:?}")]
    NotWarning(String),
    /// More (or longer) than any request may hold.
    #[error("{field}: {reason}")]
    OverLimit { field: &'static str, reason: String },
    /// An identity (namespace, target) Kubernetes cannot hold.
    #[error("{field}: {reason}")]
    Identity { field: &'static str, reason: String },
}

impl IngestError {
    /// The metric label and problem-type slug for this error.
    pub fn kind(&self) -> &'static str {
        match self {
            IngestError::Malformed { .. } => "malformed",
            IngestError::Invalid { .. } => "invalid",
            IngestError::NoAlerts => "no_alerts",
            IngestError::NotWarning(_) => "not_warning",
            IngestError::OverLimit { .. } => "over_limit",
            IngestError::Identity { .. } => "invalid_identity",
        }
    }

    fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        IngestError::Invalid { path: path.into(), reason: reason.into() }
    }
}

/// Deserialises JSON, reporting the path of the first error.
fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, IngestError> {
    // Tracking the path costs on every field; only a failed parse needs it.
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_json appends " at line L column C"; keep it, it helps with big bodies.
        IngestError::Malformed {
            path: match path.as_str() {
                "." => "$".into(),
                // An array at the root: `[0].labels`, not `.[0].labels`.
                p if p.starts_with('[') => format!("${p}"),
                p => format!("$.{p}"),
            },
            reason: inner.to_string(),
        }
    })
}

/// What one payload turned into: a result per alert, in payload order.
pub type Parsed<'a> = Vec<Result<Signal<'a>, IngestError>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_has_a_route_of_its_own() {
        for (i, source) in SOURCES.iter().enumerate() {
            assert!(SOURCES[..i].iter().all(|s| s.route != source.route), "{} twice", source.route);
        }
    }

    #[test]
    fn signal_types_come_from_the_table_once_each() {
        let types: Vec<_> = signal_types().map(SignalType::as_str).collect();
        assert_eq!(types, ["prometheus-alert", "kubernetes-event", "grafana-alert", "cloudevent"]);
        assert_eq!(SignalType::parse("kubernetes-event"), Some(SignalType::KUBERNETES_EVENT));
        assert_eq!(SignalType::parse("carrier-pigeon"), None);
    }

    #[test]
    fn json_senders_accept_json_and_json_based_types_only() {
        let source = &SOURCES[0];
        for essence in ["application/json", "application/cloudevents+json"] {
            assert!(source.accepts(essence), "{essence}");
        }
        for essence in ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"] {
            assert!(!source.accepts(essence), "{essence}");
        }
    }
}
