//! How a CloudEvent becomes a signal: a mapping per event `type`, from
//! configuration (`cloudevents.types`), read through JSON pointers (RFC 6901) into
//! the event in its structured form.
//!
//! The binding (`mod.rs`) hands over an event whose required attributes it has
//! checked, in structured form whatever its content mode, and says where in the
//! request each pointer's value was, so an error here names the member or header
//! at fault. The mapping never looks at HTTP.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::SIGNAL_TYPE;
use crate::ingest::IngestError;
use crate::signal::{Fingerprint, Labels, Signal, SignalStatus, TargetResource};

/// `cloudevents`: how events of each type become signals.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CloudEventsConfig {
    /// Event `type` → its mapping; an event of any other type is refused with 400.
    ///
    /// The default maps Falco's `falco.rule.output.v1`, as Falcosidekick sends it
    /// (see [`FALCO`]). Setting `types` replaces the default: keep that entry to
    /// keep taking Falco's events.
    pub types: BTreeMap<String, Mapping>,
}

/// How events of one type become a signal. Every value is read through JSON
/// pointers into the event; a pointer to a missing, `null` or empty value reads
/// nothing, and the next pointer of the list is tried.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// The signal name. Required: an event where it reads nothing is refused (400).
    pub name: Pointers,
    /// The severity. Absent: `unknown`.
    #[serde(default)]
    pub severity: Option<SeverityMapping>,
    /// The namespace; `default` when it reads nothing.
    #[serde(default)]
    pub namespace: Pointers,
    /// Candidate targets, in order; the first whose name reads something is the
    /// target. None: the signal names no resource.
    #[serde(default)]
    pub target: Vec<TargetMapping>,
    /// Labels of the signal (`spec.signalLabels`), by name; those that read nothing
    /// are left out.
    #[serde(default)]
    pub labels: BTreeMap<String, Pointers>,
    /// Annotations of the signal (`spec.signalAnnotations`), likewise. The event's
    /// `type` and `id` are always added, as `cloudevents.io/type` and `cloudevents.io/id`.
    #[serde(default)]
    pub annotations: BTreeMap<String, Pointers>,
}

/// Where the severity is read, and how a sender's words become tidegate's.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SeverityMapping {
    pub from: Pointers,
    /// Value read (case-insensitively) → severity. Empty: the value as read.
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    /// When `from` reads nothing, or a value `map` does not name. Default `unknown`.
    #[serde(default = "unknown")]
    pub default: String,
}

/// One candidate target: a Kubernetes kind and where its name is read. The
/// namespace is the signal's, or none for a cluster-scoped kind such as `Node`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetMapping {
    pub kind: String,
    pub name: Pointers,
}

/// JSON pointers into the event in its structured form, tried in order: written as
/// one pointer or a list.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pointers(pub Vec<String>);

fn unknown() -> String {
    "unknown".into()
}

/// The default mapping: Falco's events as Falcosidekick's CloudEvents output sends
/// them (`ce-type: falco.rule.output.v1`, the Falco payload as data). Falco's eight
/// priorities fold into the three severities the priority rules know: Emergency,
/// Alert and Critical are critical; Error and Warning warning; the rest info.
/// Falco's own `hostname` is the node where Falco runs (its Helm chart sets it to the
/// node name), so an event outside a pod targets that node.
pub const FALCO: &str = r#"
falco.rule.output.v1:
  name: [/data/rule, /rule]
  severity:
    from: [/data/priority, /priority]
    map:
      emergency: critical
      alert: critical
      critical: critical
      error: warning
      warning: warning
      notice: info
      informational: info
      debug: info
  namespace: /data/output_fields/k8s.ns.name
  target:
    - {kind: Pod, name: /data/output_fields/k8s.pod.name}
    - {kind: Node, name: [/data/hostname, /hostname]}
  labels:
    rule: [/data/rule, /rule]
    priority: [/data/priority, /priority]
    source: [/data/source, /eventsource]
    hostname: [/data/hostname, /hostname]
    container_id: /data/output_fields/container.id
  annotations:
    falco.org/output: /data/output
    falco.org/tags: /data/tags
"#;

impl Default for CloudEventsConfig {
    fn default() -> Self {
        CloudEventsConfig { types: serde_norway::from_str(FALCO).expect("the Falco mapping parses") }
    }
}

/// Why a CloudEvents mapping could never read anything, naming the type at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MappingError {
    #[error("an event type must not be empty")]
    EmptyType,
    #[error("{ty:?}: severity: a severity must not be empty")]
    EmptySeverity { ty: String },
    #[error("{ty:?}: target: kind must not be empty")]
    EmptyTargetKind { ty: String },
    #[error("{ty:?}: labels and annotations need a name")]
    UnnamedField { ty: String },
    #[error("{ty:?}: {field}: {source}")]
    Pointers {
        ty: String,
        field: String,
        #[source]
        source: PointerError,
    },
}

/// Why a field's pointers could never read anything.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PointerError {
    #[error("needs at least one JSON pointer, such as /data/rule")]
    None,
    #[error("{0:?} is not a JSON pointer (RFC 6901), such as /data/rule")]
    NotAPointer(String),
}

impl CloudEventsConfig {
    /// Rejects a mapping that could never read anything, naming the type at fault.
    pub fn validate(&self) -> Result<(), MappingError> {
        for (ty, m) in &self.types {
            if ty.trim().is_empty() {
                return Err(MappingError::EmptyType);
            }
            let ty = || ty.clone();
            let mut fields = vec![("name", &m.name)];
            if !m.namespace.0.is_empty() {
                fields.push(("namespace", &m.namespace));
            }
            if let Some(severity) = &m.severity {
                fields.push(("severity.from", &severity.from));
                if severity.default.trim().is_empty() || severity.map.values().any(|s| s.trim().is_empty()) {
                    return Err(MappingError::EmptySeverity { ty: ty() });
                }
            }
            for target in &m.target {
                if target.kind.trim().is_empty() {
                    return Err(MappingError::EmptyTargetKind { ty: ty() });
                }
                fields.push(("target.name", &target.name));
            }
            for (name, pointers) in m.labels.iter().chain(&m.annotations) {
                if name.trim().is_empty() {
                    return Err(MappingError::UnnamedField { ty: ty() });
                }
                fields.push((name.as_str(), pointers));
            }
            for (field, pointers) in fields {
                pointers.check().map_err(|source| MappingError::Pointers { ty: ty(), field: field.into(), source })?;
            }
        }
        Ok(())
    }
}

impl Pointers {
    fn check(&self) -> Result<(), PointerError> {
        if self.0.is_empty() {
            return Err(PointerError::None);
        }
        for pointer in &self.0 {
            let bad_escape =
                pointer.match_indices('~').any(|(i, _)| !matches!(pointer.as_bytes().get(i + 1), Some(b'0' | b'1')));
            if !pointer.starts_with('/') || bad_escape {
                return Err(PointerError::NotAPointer(pointer.clone()));
            }
        }
        Ok(())
    }

    /// The first value one of the pointers reads in `event`, as text.
    fn read(&self, event: &Value) -> Option<String> {
        self.0.iter().find_map(|pointer| text(event.pointer(pointer)?))
    }
}

impl fmt::Display for Pointers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" or "))
    }
}

impl<'de> Deserialize<'de> for Pointers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Pointers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON pointer such as /data/rule, or a list of them")
            }
            fn visit_str<E>(self, v: &str) -> Result<Pointers, E> {
                Ok(Pointers(vec![v.to_string()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Pointers, A::Error> {
                let mut pointers = Vec::new();
                while let Some(p) = seq.next_element()? {
                    pointers.push(p);
                }
                Ok(Pointers(pointers))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Serialize for Pointers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => serializer.serialize_str(one),
            many => many.serialize(serializer),
        }
    }
}

impl JsonSchema for Pointers {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Pointers".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A JSON pointer into the event, or a list of them tried in order.",
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
        })
    }
}

/// A value as text: strings as they are, numbers and booleans as JSON writes them,
/// lists and objects as compact JSON; `null` and empty values read nothing.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => (!s.is_empty()).then(|| s.clone()),
        Value::Array(a) if a.is_empty() => None,
        Value::Object(o) if o.is_empty() => None,
        other => Some(other.to_string()),
    }
}

/// A CloudEvent whose required attributes are present, in structured form.
pub struct Event {
    pub id: String,
    pub source: String,
    pub ty: String,
    pub time: Option<Timestamp>,
    /// The whole event as structured mode writes it: attributes, extensions and
    /// `data`.
    pub structured: Value,
}

impl CloudEventsConfig {
    /// `event` as a signal, through the mapping of its type. `locate` names where
    /// the value a pointer reads was in the request.
    pub fn signal<'a>(
        &self,
        event: Event,
        locate: &dyn Fn(&str) -> String,
        received: Timestamp,
    ) -> Result<Signal<'a>, IngestError> {
        let Event { id, source, ty, time, structured: event } = event;
        let Some(mapping) = self.types.get(&ty) else {
            let configured: Vec<&str> = self.types.keys().map(String::as_str).collect();
            let reason = match configured.as_slice() {
                [] => format!("no mapping for event type {ty:?}: no types are configured (cloudevents.types)"),
                types => format!("no mapping for event type {ty:?}; configured types: {}", types.join(", ")),
            };
            return Err(IngestError::invalid(locate("/type"), reason));
        };
        let name = mapping.name.read(&event).ok_or_else(|| {
            let reason = format!("missing; the mapping for {ty:?} takes the signal name from {}", mapping.name);
            IngestError::invalid(locate(&mapping.name.0[0]), reason)
        })?;
        let severity = match &mapping.severity {
            None => unknown(),
            Some(severity) => match severity.from.read(&event) {
                Some(value) if severity.map.is_empty() => Some(value),
                Some(value) => {
                    severity.map.iter().find(|(k, _)| k.eq_ignore_ascii_case(&value)).map(|(_, s)| s.clone())
                }
                None => None,
            }
            .unwrap_or_else(|| severity.default.clone()),
        };
        let namespace = mapping.namespace.read(&event).unwrap_or_else(|| "default".into());
        let target = mapping
            .target
            .iter()
            .find_map(|t| Some(TargetResource::new(&t.kind, &t.name.read(&event)?, &namespace)))
            .unwrap_or_default();
        let read_all = |fields: &BTreeMap<String, Pointers>| {
            let mut out = Labels::default();
            for (field, pointers) in fields {
                if let Some(value) = pointers.read(&event) {
                    out.push(field.clone(), value);
                }
            }
            out
        };
        let labels = read_all(&mapping.labels);
        let mut annotations = read_all(&mapping.annotations);
        annotations.push("cloudevents.io/type", ty);
        annotations.push("cloudevents.io/id", id);
        Ok(Signal {
            fingerprint: Fingerprint::new(&name, &namespace, &target),
            name: name.into(),
            severity: severity.into(),
            namespace: namespace.into(),
            target,
            labels,
            annotations,
            firing_time: time,
            received_time: received,
            signal_type: SIGNAL_TYPE,
            source: source.into(),
            status: SignalStatus::Firing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_are_written_as_one_or_a_list_and_checked() {
        let config: CloudEventsConfig = serde_norway::from_str("types: {t: {name: data/x}}").unwrap();
        let err = config.validate().unwrap_err();
        let at = |pointer: &str| MappingError::Pointers {
            ty: "t".into(),
            field: "name".into(),
            source: PointerError::NotAPointer(pointer.into()),
        };
        assert_eq!(err, at("data/x"));
        assert!(err.to_string().contains("\"data/x\" is not a JSON pointer"), "{err}");
        let config: CloudEventsConfig = serde_norway::from_str("types: {t: {name: [/a, /b~2]}}").unwrap();
        assert_eq!(config.validate().unwrap_err(), at("/b~2"));
        assert!(serde_norway::from_str::<CloudEventsConfig>("types: {t: {name: /a, nmae: /b}}").is_err());
        CloudEventsConfig::default().validate().unwrap();
    }

    #[test]
    fn the_readme_shows_the_default_mapping() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```yaml\ncloudevents:\n  types:\n").expect("the README shows the Falco mapping") + 8;
        let block = &readme[start..start + readme[start..].find("```").unwrap()];
        #[derive(Deserialize)]
        struct Section {
            cloudevents: CloudEventsConfig,
        }
        let shown: Section = serde_norway::from_str(block).unwrap();
        assert_eq!(shown.cloudevents, CloudEventsConfig::default());
    }
}
