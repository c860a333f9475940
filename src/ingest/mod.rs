//! Source adapters: bytes in, [`Signal`]s out, and the table of every source.
//!
//! One adapter per source, one file each, and one entry per source in [`SOURCES`]:
//! its route, the media types it accepts, its parser (built from its configuration
//! section), its signal type, what its sender can present to prove who it is and how
//! it expects to be answered. The router, the authenticators of each route, the
//! metric labels, the fuzz target and the CRD's `signalType` enum are derived from
//! the table, so adding a source is one file and one entry.
//!
//! Adapters parse and validate; they never do I/O, hold state or consult the clock
//! (the receive time is passed in). Every rejection names the JSON path at fault, so
//! a sender can fix its payload without reading our code.

pub mod alertmanager;
pub mod alertmanager_v2;
pub mod answer;
pub mod cloudevents;
pub mod grafana;
pub mod k8s_event;
pub mod pagerduty;
mod signal_type;

use axum::http::HeaderMap;
use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use answer::{Answer, Answered, Failure, Invalid, Recorded, Reply};

use crate::section::ConfigError;
use crate::signal::{Fingerprint, Signal, SignalType, TargetResource};

/// Every source tidegate accepts.
pub const SOURCES: &[Source] = &[
    alertmanager::WEBHOOK,
    alertmanager_v2::SOURCE,
    k8s_event::SOURCE,
    grafana::WEBHOOK,
    cloudevents::SOURCE,
    pagerduty::SOURCE,
    // A new source: its file, its `pub mod` above and its line here.
];

/// One kind of sender: where it posts, what it sends, how it proves who it is and
/// what it expects back.
#[derive(Debug)]
pub struct Source {
    /// Its file in `src/ingest/`, and its fuzz corpus (`fuzz/corpus/ingest_<name>`).
    pub name: &'static str,
    /// The path it posts to.
    pub route: &'static str,
    /// Media types accepted, by essence (`type/subtype`, no parameters); a pattern
    /// `application/*+json` accepts every JSON-based type.
    pub media_types: &'static [&'static str],
    /// Builds its parser from the configuration sections it reads.
    pub parser: fn(&Settings) -> Box<dyn Parser>,
    /// What its signals are, on the request (`spec.signalType`) and in metrics.
    pub signal_type: SignalType,
    /// How its sender expects to be answered.
    pub answer: &'static dyn Answer,
    /// What its sender can present: the configured authenticators that check these
    /// guard the route, unless `auth.endpoints` names its own list.
    pub credentials: &'static [Credential],
}

/// What a sender can present to prove who it is.
#[derive(Clone, Copy, Debug)]
pub enum Credential {
    /// A static token (`Authorization: Bearer`).
    Token,
    /// A user and password (`Authorization: Basic`).
    Password,
    /// A Kubernetes service-account token (`Authorization: Bearer`).
    ServiceAccountToken,
    /// The verified client certificate of its TLS connection.
    ClientCertificate,
    /// A Standard Webhooks signature over the body.
    StandardWebhooksSignature,
    /// Grafana Alerting's signature over the body.
    GrafanaSignature,
    /// A static token inside the body, where the source's `read` finds it (the
    /// PagerDuty Events API's `routing_key`): checked as a bearer token once the
    /// body is read, when the head presents nothing.
    TokenInBody { read: ReadToken },
}

/// Where a source finds the token its sender puts in the body.
pub type ReadToken = fn(&[u8]) -> Option<String>;

impl Credential {
    /// What any HTTP client can present in its head: tokens, passwords,
    /// certificates.
    pub const HEAD: [Credential; 4] =
        [Credential::Token, Credential::Password, Credential::ServiceAccountToken, Credential::ClientCertificate];

    /// `extra`, and whatever any HTTP client can present.
    pub const fn head_and(extra: Credential) -> [Credential; 5] {
        let [a, b, c, d] = Credential::HEAD;
        [extra, a, b, c, d]
    }

    /// The kind of authenticator (`auth.authenticators.*`) that checks it.
    pub fn authenticator(self) -> &'static str {
        use crate::auth::kind;
        match self {
            Credential::Token | Credential::TokenInBody { .. } => kind::BEARER,
            Credential::Password => kind::BASIC,
            Credential::ServiceAccountToken => kind::KUBERNETES,
            Credential::ClientCertificate => kind::CLIENT_CERTIFICATE,
            Credential::StandardWebhooksSignature => kind::STANDARD_WEBHOOKS,
            Credential::GrafanaSignature => kind::GRAFANA,
        }
    }
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

/// What the parsers are built from: `ingest`, which every signal is held to, and
/// the section of each source that has one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub ingest: IngestConfig,
    pub cloudevents: cloudevents::CloudEventsConfig,
}

/// A source's parser, built from its section.
pub trait Parser: Send + Sync {
    /// Bytes in, a result per signal out; no I/O, no state, no clock.
    fn parse<'a>(&self, payload: &Payload<'a>) -> Result<Parsed<'a>, IngestError>;
}

/// The parser of a source with no section of its own: a function.
pub type Parse = for<'a> fn(&Payload<'a>) -> Result<Parsed<'a>, IngestError>;

impl Parser for Parse {
    fn parse<'a>(&self, payload: &Payload<'a>) -> Result<Parsed<'a>, IngestError> {
        self(payload)
    }
}

/// A source ready to take payloads: its table entry and its parser, built from
/// its sections.
pub struct Adapter {
    pub source: &'static Source,
    parser: Box<dyn Parser>,
    limits: IngestConfig,
}

impl Adapter {
    pub fn build(source: &'static Source, settings: &Settings) -> Self {
        Adapter { source, parser: (source.parser)(settings), limits: settings.ingest.clone() }
    }

    /// Every source of the table, built.
    pub fn all(settings: &Settings) -> Vec<Adapter> {
        SOURCES.iter().map(|source| Adapter::build(source, settings)).collect()
    }

    /// Parses a payload with the source's parser, then holds every signal to what
    /// any request must be: a bounded number of labels (`ingest.max_labels`), and
    /// an identity Kubernetes can hold. The handler and the fuzz targets both parse
    /// through here.
    pub fn parse<'a>(&self, payload: &Payload<'a>) -> Result<Parsed<'a>, IngestError> {
        let mut parsed = self.parser.parse(payload)?;
        for result in &mut parsed {
            if let Err(e) = result.as_ref().map_or(Ok(()), |signal| admissible(signal, &self.limits)) {
                *result = Err(e);
            }
        }
        Ok(parsed)
    }
}

/// The annotation that holds a sender's own name for its incident (PagerDuty's
/// `dedup_key`), on a signal fingerprinted by it ([`keyed_fingerprint`]).
pub const INCIDENT_KEY: &str = "tidegate.dev/incident-key";

/// The fingerprint of a signal whose sender names its incidents itself: SHA-256
/// over `<signal type>/<key>:::`, the key where the name stands and nothing else,
/// so every event under one key is one incident whatever its text or details say
/// (as the sender means it), and no alert of another source can meet it. Signals
/// without a key keep [`Fingerprint::new`] over their name, namespace and target.
pub fn keyed_fingerprint(signal_type: SignalType, key: &str) -> Fingerprint {
    Fingerprint::new(&format!("{}/{key}", signal_type.as_str()), "", &TargetResource::default())
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
            reason: format!("{:?} {reason}", excerpt(&signal.namespace)),
        });
    }
    let target = &signal.target;
    if target.name.len() > MAX_NAME_BYTES || target.kind.len() > MAX_LABEL_BYTES {
        let reason = format!("{} {:?} is longer than Kubernetes allows", excerpt(&target.kind), excerpt(&target.name));
        return Err(IngestError::Identity { field: "target", reason });
    }
    Ok(())
}

/// A value short enough to quote in an error.
fn excerpt(value: &str) -> &str {
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

/// What a parser reads: the body and its headers, and when it was received.
pub struct Payload<'a> {
    pub body: &'a [u8],
    pub headers: &'a HeaderMap,
    pub received: Timestamp,
}

impl Source {
    /// The kinds of authenticator that check what its sender can present.
    pub fn authenticators(&self) -> Vec<&'static str> {
        let mut kinds: Vec<&'static str> = self.credentials.iter().map(|c| c.authenticator()).collect();
        kinds.dedup();
        kinds
    }

    /// Where its sender puts a token in the body, if it does.
    pub fn token_in_body(&self) -> Option<ReadToken> {
        self.credentials.iter().find_map(|c| match c {
            Credential::TokenInBody { read } => Some(*read),
            _ => None,
        })
    }

    /// Whether a request of media type `essence` (lowercase) is for this source.
    pub fn accepts(&self, essence: &str) -> bool {
        self.media_types.iter().any(|accepted| match accepted.strip_prefix("application/*") {
            Some(suffix) => essence.starts_with("application/") && essence.ends_with(suffix),
            None => *accepted == essence,
        })
    }
}

/// A payload of `body` alone, received at the epoch, for parser tests.
#[cfg(test)]
pub fn payload(body: &str) -> Payload<'_> {
    static HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);
    Payload { body: body.as_bytes(), headers: &HEADERS, received: Timestamp::UNIX_EPOCH }
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
    /// Every value [`IngestError::label`] takes, for metrics made at 0.
    pub const KINDS: &'static [&'static str] =
        &["malformed", "invalid", "no_alerts", "not_warning", "over_limit", "invalid_identity"];

    pub fn label(&self) -> &'static str {
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
        let types: Vec<_> = signal_types().collect();
        for (i, t) in types.iter().enumerate() {
            assert!(SOURCES.iter().any(|s| s.signal_type == *t), "{} is a source's", t.as_str());
            assert!(!types[..i].contains(t), "{} twice", t.as_str());
        }
        assert!(SOURCES.iter().all(|s| types.contains(&s.signal_type)), "every source's type");
        let shared = SOURCES.iter().filter(|s| s.signal_type == SignalType::PROMETHEUS_ALERT).count();
        assert_eq!(shared, 2, "both Alertmanager formats are prometheus-alert, listed once");
        assert_eq!(SignalType::parse("kubernetes-event"), Some(SignalType::KUBERNETES_EVENT));
        assert_eq!(SignalType::parse("carrier-pigeon"), None);
    }

    #[test]
    fn a_route_is_guarded_by_the_authenticators_of_what_its_sender_presents() {
        let head = ["bearer", "basic", "kubernetes", "client_certificate"];
        assert_eq!(alertmanager::WEBHOOK.authenticators(), head);
        assert_eq!(grafana::WEBHOOK.authenticators(), [&["grafana"][..], &head].concat());
        assert_eq!(cloudevents::SOURCE.authenticators(), [&["standard_webhooks"][..], &head].concat());
        for source in SOURCES.iter().filter(|s| s.token_in_body().is_some()) {
            assert!(source.authenticators().contains(&"bearer"), "a token in the body is checked as a bearer token");
        }
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
