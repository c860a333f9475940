//! CloudEvents 1.0 over HTTP (HTTP protocol binding 1.0.2): from a request to
//! events in structured form, for the mapping (`mapping.rs`) to turn into signals.
//!
//! The content mode follows `Content-Type`:
//! - `application/cloudevents+json`: structured; the body is the whole event;
//! - `application/cloudevents-batch+json`: a JSON array of structured events, each
//!   of which fails alone, as one alert of a webhook does;
//! - anything else (JSON only): binary; the attributes are `ce-*` headers, matched
//!   case-insensitively and percent-decoded once, and the body is the event's data.
//!   This is what Falcosidekick sends.
//!
//! Either way the mapping sees the event in its structured form, so one JSON pointer
//! (RFC 6901) names the same thing in every mode: `/type`, `/subject`, an extension
//! such as `/priority`, or `/data/output_fields/k8s.pod.name`. An event without a
//! required attribute, or of a type no mapping names, can never be accepted: 400.
//!
//! Written here rather than with the `cloudevents-sdk` crate, whose HTTP binding
//! reads `ce-*` values without percent-decoding them (binding §3.1.3.2) and refuses
//! any non-ASCII byte, has no batch mode on the receiving side, and names no field
//! in its errors; the tests post events the SDK builds, in all three modes, so the
//! SDK stays the reference this binding is held to.
//!
//! Every event type gets the one signal type `cloudevent`: the CRD's `signalType`
//! enum is fixed when the CRD is generated, before any configuration exists, so
//! the event type goes on the request as the annotation `cloudevents.io/type`.

mod mapping;

use jiff::Timestamp;
use serde_json::{Map, Value};

pub use mapping::{
    CloudEventsConfig, Event, Mapping, MappingError, PointerError, Pointers, SeverityMapping, TargetMapping, FALCO,
};

use super::answer::Results;
use super::{parse_json, Credential, IngestError, Parsed, Parser, Payload, Source, JSON};
use crate::signal::SignalType;

/// What CloudEvents are, on the request and in metrics, whatever their type.
pub const SIGNAL_TYPE: SignalType = SignalType::new("cloudevent");

/// CloudEvents in structured, batched or binary content mode. CloudEvents over
/// webhooks are signed the Standard Webhooks way (Falcosidekick and most brokers
/// can send a token instead).
pub const SOURCE: Source = Source {
    name: "cloudevents",
    route: "/api/v1/signals/cloudevents",
    media_types: JSON,
    parser: |sections| Box::new(Binding { mapping: sections.cloudevents.clone() }),
    signal_type: SIGNAL_TYPE,
    answer: &Results,
    credentials: &Credential::head_and(Credential::StandardWebhooksSignature),
};

/// The HTTP binding, with the mapping it hands events to.
struct Binding {
    mapping: CloudEventsConfig,
}

impl Parser for Binding {
    /// Parses one event, or a batch of them, into a result per event.
    fn parse<'a>(&self, payload: &Payload<'a>) -> Result<Parsed<'a>, IngestError> {
        let content_type = payload.headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let essence = super::essence(content_type.unwrap_or(""));
        let one = |event: Result<Map<String, Value>, IngestError>, at: At| {
            let event = validated(event?, at)?;
            self.mapping.signal(event, &|pointer| at.path(pointer), payload.received)
        };
        if essence.starts_with("application/cloudevents-batch") {
            let events: Vec<Value> = parse_json(payload.body)?;
            if events.is_empty() {
                return Err(IngestError::invalid("$", "an empty batch carries no events"));
            }
            return Ok(events
                .into_iter()
                .enumerate()
                .map(|(i, e)| one(structured(e, At::Batch(i)), At::Batch(i)))
                .collect());
        }
        let parsed = if essence.starts_with("application/cloudevents") {
            one(structured(parse_json(payload.body)?, At::Structured), At::Structured)?
        } else {
            one(binary(payload), At::Binary)?
        };
        Ok(vec![Ok(parsed)])
    }
}

/// An event with its required attributes checked: `specversion` 1.0, `id`,
/// `source` and `type`, and `time` when present an RFC 3339 time.
fn validated(event: Map<String, Value>, at: At) -> Result<Event, IngestError> {
    let version = required(&event, "specversion", at)?;
    if version != "1.0" {
        let reason = format!("unsupported version {version:?}; CloudEvents \"1.0\" is accepted");
        return Err(IngestError::invalid(at.path("/specversion"), reason));
    }
    let (id, source, ty) =
        (required(&event, "id", at)?, required(&event, "source", at)?, required(&event, "type", at)?);
    let time = match event.get("time") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(
            t.parse::<Timestamp>()
                .map_err(|_| IngestError::invalid(at.path("/time"), format!("{t:?} is not an RFC 3339 time")))?,
        ),
        Some(_) => return Err(IngestError::invalid(at.path("/time"), "must be an RFC 3339 time string")),
    };
    let (id, source, ty) = (id.to_string(), source.to_string(), ty.to_string());
    Ok(Event { id, source, ty, time, structured: Value::Object(event) })
}

/// Where an event is in the request, to name the part at fault.
#[derive(Clone, Copy)]
enum At {
    /// The body is the event.
    Structured,
    /// Element `i` of a batch.
    Batch(usize),
    /// Attributes in `ce-*` headers, the data in the body.
    Binary,
}

impl At {
    /// Where what `pointer` names is: a JSON path into the body, or a header.
    fn path(self, pointer: &str) -> String {
        let mut tokens = pointer.split('/').skip(1).map(|t| t.replace("~1", "/").replace("~0", "~"));
        let mut path = match self {
            At::Structured => "$".to_string(),
            At::Batch(i) => format!("$[{i}]"),
            At::Binary => match tokens.next() {
                Some(data) if data == "data" => "$".to_string(),
                Some(attribute) => return format!("ce-{attribute}"),
                None => "$".to_string(),
            },
        };
        for token in tokens {
            if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
                path.push_str(&format!("[{token}]"));
            } else if !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                path.push('.');
                path.push_str(&token);
            } else {
                path.push_str(&format!("[{token:?}]"));
            }
        }
        path
    }
}

/// A structured event, with data sent as `data_base64` decoded when it is JSON.
fn structured(event: Value, at: At) -> Result<Map<String, Value>, IngestError> {
    let Value::Object(mut event) = event else {
        return Err(IngestError::invalid(at.path(""), "a CloudEvent is a JSON object"));
    };
    match event.remove("data_base64") {
        None | Some(Value::Null) => {}
        Some(_) if event.get("data").is_some_and(|d| !d.is_null()) => {
            return Err(IngestError::invalid(at.path("/data_base64"), "an event has data or data_base64, not both"))
        }
        Some(Value::String(encoded)) => {
            let bytes = data_encoding::BASE64
                .decode(encoded.as_bytes())
                .map_err(|e| IngestError::invalid(at.path("/data_base64"), format!("not base64: {e}")))?;
            // Data that is not JSON is kept out of reach of the mapping's pointers.
            if let Ok(data) = serde_json::from_slice(&bytes) {
                event.insert("data".into(), data);
            }
        }
        Some(_) => return Err(IngestError::invalid(at.path("/data_base64"), "must be a base64 string")),
    }
    Ok(event)
}

/// A binary-mode event: `ce-*` headers, `Content-Type` as `datacontenttype`, and
/// the body as `data`.
fn binary(payload: &Payload<'_>) -> Result<Map<String, Value>, IngestError> {
    let mut event = Map::new();
    for (name, value) in payload.headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else { continue };
        if event.contains_key(attribute) {
            continue;
        }
        let text = header_text(value.as_bytes())
            .ok_or_else(|| IngestError::invalid(name.as_str(), "is not UTF-8 once percent-decoded"))?;
        event.insert(attribute.to_string(), Value::String(text));
    }
    if let Some(content_type) = payload.headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        event.insert("datacontenttype".into(), Value::String(content_type.to_string()));
    }
    if !payload.body.iter().all(u8::is_ascii_whitespace) {
        event.insert("data".into(), parse_json(payload.body)?);
    }
    Ok(event)
}

/// A `ce-*` header's value: unquoted if it is a quoted-string, then percent-decoded
/// once. A `%` not followed by two hex digits stays as it is: senders that do not
/// encode at all (Falcosidekick's SDK) send raw text.
fn header_text(raw: &[u8]) -> Option<String> {
    let unquoted;
    let raw = match raw {
        [b'"', inner @ .., b'"'] => {
            let mut out = Vec::with_capacity(inner.len());
            let mut bytes = inner.iter();
            while let Some(&b) = bytes.next() {
                out.push(if b == b'\\' { *bytes.next().unwrap_or(&b) } else { b });
            }
            unquoted = out;
            &unquoted[..]
        }
        raw => raw,
    };
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let escaped = (raw[i] == b'%').then(|| Some((hex(*raw.get(i + 1)?)? << 4) | hex(*raw.get(i + 2)?)?)).flatten();
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A required attribute: a non-empty string.
fn required<'e>(event: &'e Map<String, Value>, name: &str, at: At) -> Result<&'e str, IngestError> {
    let path = || at.path(&format!("/{name}"));
    match event.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(IngestError::invalid(path(), "must not be empty")),
        None | Some(Value::Null) => Err(IngestError::invalid(
            path(),
            match at {
                At::Binary => "missing required attribute (in binary mode, attributes are ce-* headers)",
                _ => "missing required attribute",
            },
        )),
        Some(_) => Err(IngestError::invalid(path(), "must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderName, HeaderValue};
    use jiff::Timestamp;

    use crate::signal::{Fingerprint, Signal, TargetResource};

    use super::*;

    /// Falcosidekick's request (`tests/fixtures/cloudevents/*.http`): its headers and body.
    const SIDEKICK: &str = include_str!("../../../tests/fixtures/cloudevents/falcosidekick-cloudevent-binary.http");
    const STRUCTURED: &str =
        include_str!("../../../tests/fixtures/cloudevents/cloudevents-structured-json-example.json");

    fn request(raw: &str) -> (HeaderMap, String) {
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let headers = head
            .lines()
            .skip(1)
            .map(|line| line.split_once(": ").unwrap())
            .map(|(k, v)| (HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(), v.parse().unwrap()))
            .collect();
        (headers, body.to_string())
    }

    fn parse_with<'a>(
        headers: &'a HeaderMap,
        body: &'a str,
        mapping: &CloudEventsConfig,
    ) -> Result<Parsed<'a>, IngestError> {
        let payload = Payload { body: body.as_bytes(), headers, received: Timestamp::UNIX_EPOCH };
        Binding { mapping: mapping.clone() }.parse(&payload)
    }

    fn one(parsed: Result<Parsed<'_>, IngestError>) -> Signal<'_> {
        let mut parsed = parsed.unwrap();
        assert_eq!(parsed.len(), 1);
        parsed.remove(0).unwrap()
    }

    fn structured_headers() -> HeaderMap {
        HeaderMap::from_iter([(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/cloudevents+json"),
        )])
    }

    /// A configuration mapping the CloudEvents spec's example type.
    fn example_config() -> CloudEventsConfig {
        let yaml = r#"types:
  com.example.someevent:
    name: /data/appinfoA
    severity: {from: /comexampleothervalue, map: {"5": warning}}
    namespace: [/subject, /comexampleextension1]
    target: [{kind: Deployment, name: /source}]
    labels: {b: /data/appinfoB, c: /data/appinfoC}
"#;
        let cloudevents: CloudEventsConfig = serde_norway::from_str(yaml).unwrap();
        cloudevents.validate().unwrap();
        cloudevents
    }

    #[test]
    fn falcosidekicks_binary_event_becomes_a_signal_about_the_falco_node() {
        let (headers, body) = request(SIDEKICK);
        let config = CloudEventsConfig::default();
        let s = one(parse_with(&headers, &body, &config));
        assert_eq!((&*s.name, &*s.severity, &*s.namespace), ("Read sensitive file untrusted", "warning", "default"));
        assert_eq!(s.target, TargetResource::new("Node", "97ade2b595f0", ""));
        assert_eq!(s.source, "https://falco.org");
        assert_eq!(s.signal_type, SIGNAL_TYPE);
        assert_eq!(s.firing_time.unwrap().to_string(), "2024-05-07T18:54:19.34108118Z");
        assert_eq!(s.labels.get("container_id"), Some("9656db3bb358"));
        assert_eq!(s.labels.get("source"), Some("syscall"));
        assert!(s.annotations.get("falco.org/output").unwrap().contains("file=/etc/shadow"));
        assert_eq!(
            s.annotations.get("falco.org/tags").unwrap(),
            r#"["T1555","container","filesystem","host","maturity_stable","mitre_credential_access"]"#
        );
        assert_eq!(s.annotations.get("cloudevents.io/type"), Some("falco.rule.output.v1"));
        assert_eq!(s.annotations.get("cloudevents.io/id"), Some("6a1f0b3e-2c4d-4e8f-8a7b-5c9d0e1f2a3b"));
    }

    #[test]
    fn a_falco_event_in_a_pod_targets_the_pod_in_its_namespace() {
        let (headers, body) = request(SIDEKICK);
        let body =
            body.replace(r#""output_fields":{"#, r#""output_fields":{"k8s.ns.name":"shop","k8s.pod.name":"web-0","#);
        let config = CloudEventsConfig::default();
        let s = one(parse_with(&headers, &body, &config));
        assert_eq!(s.target, TargetResource::new("Pod", "web-0", "shop"));
        assert_eq!(s.fingerprint, Fingerprint::new("Read sensitive file untrusted", "shop", &s.target));
    }

    #[test]
    fn falco_priorities_fold_into_three_severities() {
        let config = CloudEventsConfig::default();
        let (mut headers, body) = request(SIDEKICK);
        for (priority, severity) in [
            ("Emergency", "critical"),
            ("Alert", "critical"),
            ("Critical", "critical"),
            ("Error", "warning"),
            ("Warning", "warning"),
            ("Notice", "info"),
            ("Informational", "info"),
            ("Debug", "info"),
            ("Bogus", "unknown"),
        ] {
            let body = body.replace(r#""priority":"Warning""#, &format!(r#""priority":"{priority}""#));
            headers.insert("ce-priority", priority.parse().unwrap());
            assert_eq!(one(parse_with(&headers, &body, &config)).severity, severity, "{priority}");
        }
    }

    #[test]
    fn the_spec_example_maps_through_a_users_mapping_in_structured_mode() {
        let (headers, config) = (structured_headers(), example_config());
        let s = one(parse_with(&headers, STRUCTURED, &config));
        // `subject` is null, so the namespace comes from the next pointer.
        assert_eq!((&*s.name, &*s.severity, &*s.namespace), ("abc", "warning", "value"));
        assert_eq!(s.target, TargetResource::new("Deployment", "/mycontext", "value"));
        assert_eq!((s.labels.get("b"), s.labels.get("c")), (Some("123"), Some("true")));
        assert_eq!(s.firing_time.unwrap().to_string(), "2018-04-05T17:31:00Z");
    }

    #[test]
    fn binary_and_structured_modes_of_one_event_are_the_same_signal() {
        let config = example_config();
        let headers = structured_headers();
        let from_structured = one(parse_with(&headers, STRUCTURED, &config));
        let headers = HeaderMap::from_iter(
            [
                ("ce-specversion", "1.0"),
                ("ce-type", "com.example.someevent"),
                ("ce-source", "%2Fmycontext"),
                ("ce-id", "C234-1234-1234"),
                ("ce-time", "2018-04-05T17:31:00Z"),
                ("ce-comexampleextension1", "\"val\\ue\""),
                ("ce-comexampleothervalue", "5"),
                ("content-type", "application/json"),
            ]
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))),
        );
        let from_binary = one(parse_with(&headers, r#"{"appinfoA":"abc","appinfoB":123,"appinfoC":true}"#, &config));
        assert_eq!(from_binary.fingerprint, from_structured.fingerprint);
        assert_eq!(from_binary.labels, from_structured.labels);
        assert_eq!(from_binary.severity, from_structured.severity);
    }

    #[test]
    fn a_missing_required_attribute_is_named_where_it_was_expected() {
        let config = example_config();
        let body = STRUCTURED.replace(r#""id" : "C234-1234-1234","#, "");
        let err = parse_with(&structured_headers(), &body, &config).unwrap_err();
        assert_eq!(err, IngestError::invalid("$.id", "missing required attribute"));
        let (mut headers, body) = request(SIDEKICK);
        headers.remove("ce-source");
        let err = parse_with(&headers, &body, &config).unwrap_err();
        assert!(matches!(&err, IngestError::Invalid { path, .. } if path == "ce-source"), "{err:?}");
        let body = STRUCTURED.replace(r#""specversion" : "1.0""#, r#""specversion" : "0.3""#);
        let err = parse_with(&structured_headers(), &body, &config).unwrap_err();
        assert!(matches!(&err, IngestError::Invalid { path, .. } if path == "$.specversion"), "{err:?}");
    }

    #[test]
    fn an_unknown_type_is_refused_naming_the_configured_types() {
        let err = parse_with(&structured_headers(), STRUCTURED, &CloudEventsConfig::default()).unwrap_err();
        let reason = "no mapping for event type \"com.example.someevent\"; configured types: falco.rule.output.v1";
        assert_eq!(err, IngestError::invalid("$.type", reason));
    }

    #[test]
    fn a_missing_name_names_the_data_member_it_is_read_from() {
        let (headers, body) = request(SIDEKICK);
        let body = body.replace(r#""rule":"Read sensitive file untrusted","#, "");
        let mut headers = headers;
        headers.remove("ce-rule");
        let err = parse_with(&headers, &body, &CloudEventsConfig::default()).unwrap_err();
        let reason = "missing; the mapping for \"falco.rule.output.v1\" takes the signal name from /data/rule or /rule";
        assert_eq!(err, IngestError::invalid("$.rule", reason));
    }

    #[test]
    fn a_batch_fails_event_by_event() {
        let batch = include_str!("../../../tests/fixtures/cloudevents/cloudevents-batch-example.json");
        let headers = HeaderMap::from_iter([(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/cloudevents-batch+json"),
        )]);
        let mut config = example_config();
        let mapping = config.types["com.example.someevent"].clone();
        config.types.insert("com.example.someotherevent".into(), mapping);
        let parsed = parse_with(&headers, batch, &config).unwrap();
        // The spec's first element carries placeholder text, not base64.
        let err = parsed[0].as_ref().unwrap_err();
        assert!(matches!(err, IngestError::Invalid { path, .. } if path == "$[0].data_base64"), "{err:?}");
        assert_eq!(parsed[1].as_ref().unwrap().name, "abc");
        let err = parse_with(&headers, "[]", &config).unwrap_err();
        assert_eq!(err, IngestError::invalid("$", "an empty batch carries no events"));
    }

    #[test]
    fn malformed_data_names_its_path() {
        let (headers, _) = request(SIDEKICK);
        let err = parse_with(&headers, r#"{"rule": ["x"}"#, &CloudEventsConfig::default()).unwrap_err();
        assert!(matches!(err, IngestError::Malformed { ref path, .. } if path.starts_with("$.rule")), "{err:?}");
    }

    #[test]
    fn header_values_are_unquoted_and_percent_decoded_once() {
        assert_eq!(header_text(b"Read sensitive file").as_deref(), Some("Read sensitive file"));
        assert_eq!(header_text(b"a%20b%2525").as_deref(), Some("a b%25"));
        assert_eq!(header_text(b"%e2%82%ac 100%").as_deref(), Some("\u{20ac} 100%"));
        assert_eq!(header_text(b"\"quoted \\\" %41\"").as_deref(), Some("quoted \" A"));
        assert_eq!(header_text(b"%C0%A0"), None, "overlong UTF-8 is refused");
    }

    #[test]
    fn paths_name_data_members_and_headers() {
        assert_eq!(At::Binary.path("/data/output_fields/k8s.pod.name"), "$.output_fields[\"k8s.pod.name\"]");
        assert_eq!(At::Binary.path("/priority"), "ce-priority");
        assert_eq!(At::Batch(2).path("/data/a~1b/0"), "$[2].data[\"a/b\"][0]");
        assert_eq!(At::Structured.path("/id"), "$.id");
    }
}
