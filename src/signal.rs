//! The normalised form of every input: a [`Signal`] and its [`Fingerprint`].
//!
//! Adapters in `ingest` produce signals; nothing downstream looks at the original
//! payload again. A signal borrows its text from the payload where it can: most
//! alerts are duplicates, and a duplicate needs nothing but its fingerprint, so the
//! request path does not copy labels it will never write. This module never does I/O.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where a signal came from: one value per source in the source table (`ingest`),
/// which is also the CRD's `signalType` enum. Which types exist is the table's
/// to say, so reading one (`parse`, `Deserialize`) and describing them
/// (`JsonSchema`) are implemented beside the table, in `ingest::signal_type`: this
/// module stays below every other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SignalType(&'static str);

impl SignalType {
    /// Alerts from Prometheus, through Alertmanager or straight from a ruler.
    pub const PROMETHEUS_ALERT: SignalType = SignalType("prometheus-alert");
    /// Warning events of the Kubernetes API.
    pub const KUBERNETES_EVENT: SignalType = SignalType("kubernetes-event");

    pub const fn new(name: &'static str) -> Self {
        SignalType(name)
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl Serialize for SignalType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

/// Whether the condition is still present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalStatus {
    Firing,
    Resolved,
    /// A person took the incident on (PagerDuty's `acknowledge`): not an
    /// occurrence. Recorded on the incident's open request, if it has one; it never
    /// opens one, never counts towards a storm and never extends the dedup window.
    Acknowledged,
}

/// The Kubernetes object a signal is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct TargetResource {
    /// Kind, for example `Pod`; empty when the signal names no resource.
    pub kind: String,
    /// The object's name; empty when the signal names no resource.
    pub name: String,
    /// The object's namespace; empty for cluster-scoped kinds such as `Node`.
    pub namespace: String,
    /// The cluster the resource is in, when the signal names one
    /// (`identity.cluster_labels`, or the sender's `identity.sender_clusters`);
    /// absent for a signal that names none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
}

/// Label names that identify the target resource, most specific first, with the
/// Kubernetes kind each one names.
const RESOURCE_LABELS: [(&str, &str); 6] = [
    ("pod", "Pod"),
    ("deployment", "Deployment"),
    ("statefulset", "StatefulSet"),
    ("daemonset", "DaemonSet"),
    ("node", "Node"),
    ("service", "Service"),
];

/// Kinds a signal may name that are not namespaced.
const CLUSTER_SCOPED: [&str; 3] = ["Node", "Namespace", "PersistentVolume"];

impl TargetResource {
    /// A `kind` named `name` in `namespace`, or in none if the kind is cluster-scoped.
    pub fn new(kind: &str, name: &str, namespace: &str) -> Self {
        let namespaced = !CLUSTER_SCOPED.contains(&kind);
        TargetResource {
            kind: kind.to_string(),
            name: name.to_string(),
            namespace: if namespaced { namespace.to_string() } else { String::new() },
            cluster: String::new(),
        }
    }

    /// Resolves the target from alert labels in the order
    /// pod > deployment > statefulset > daemonset > node > service.
    pub fn from_labels(labels: &Labels<'_>, namespace: &str) -> Self {
        RESOURCE_LABELS
            .iter()
            .find_map(|(label, kind)| {
                let name = labels.get(label).filter(|v| !v.is_empty())?;
                Some(TargetResource::new(kind, name, namespace))
            })
            .unwrap_or_default()
    }
}

/// The namespace of an alert: `namespace`, then `exported_namespace`, then `default`.
pub fn namespace_from_labels<'a>(labels: &Labels<'a>) -> Cow<'a, str> {
    ["namespace", "exported_namespace"]
        .iter()
        .find_map(|key| labels.get_cow(key).filter(|v| !v.is_empty()))
        .cloned()
        .unwrap_or(Cow::Borrowed("default"))
}

/// Labels or annotations: string pairs in payload order, borrowed from the payload
/// where it has them verbatim. A name given twice means its last value, as in a map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Labels<'a> {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_cow(name).map(|v| v.as_ref())
    }

    pub fn get_cow(&self, name: &str) -> Option<&Cow<'a, str>> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Adds `name` with `value`; a name given again means its last value.
    pub fn push(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, str>>) {
        self.0.push((name.into(), value.into()));
    }

    /// How many pairs, a name given twice counted twice.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every name, in payload order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_ref())
    }

    /// Owned, sorted, one value per name.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }
}

impl<K: Into<Cow<'static, str>>, V: Into<Cow<'static, str>>> FromIterator<(K, V)> for Labels<'static> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        Labels(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Labels<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Pairs<'a> {
            type Value = Labels<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
                while let Some((Text(k), Text(v))) = map.next_entry()? {
                    pairs.push((k, v));
                }
                Ok(Labels(pairs))
            }
        }
        deserializer.deserialize_map(Pairs(std::marker::PhantomData))
    }
}

/// A string borrowed from the input when it holds it verbatim (no escapes).
/// (`Cow<str>` itself always deserialises owned.)
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visitor(std::marker::PhantomData))
    }
}

/// One normalised alert or event, borrowing from the payload it came in.
#[derive(Clone, Debug)]
pub struct Signal<'a> {
    /// The alert name, or the event reason.
    pub name: Cow<'a, str>,
    pub severity: Cow<'a, str>,
    pub namespace: Cow<'a, str>,
    pub target: TargetResource,
    pub labels: Labels<'a>,
    pub annotations: Labels<'a>,
    pub firing_time: Option<Timestamp>,
    pub received_time: Timestamp,
    pub signal_type: SignalType,
    /// Who sent it: the Alertmanager receiver, or the event's reporting component.
    pub source: Cow<'a, str>,
    pub status: SignalStatus,
    pub fingerprint: Fingerprint,
}

/// SHA-256 over `name:namespace:kind:resource-name`, followed by a NUL byte and
/// the target's cluster when it names one.
///
/// Labels other than those do not take part, so the fingerprint is stable across
/// label order, extra labels, replicas and restarts. A signal that names no cluster
/// keeps the fingerprint it had before clusters took part (a NUL, which neither a
/// Kubernetes name nor a label value in practice holds, keeps the two apart).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn new(name: &str, namespace: &str, target: &TargetResource) -> Self {
        let mut hasher = Sha256::new();
        for (i, part) in [name, namespace, &target.kind, &target.name].iter().enumerate() {
            if i > 0 {
                hasher.update(b":");
            }
            hasher.update(part.as_bytes());
        }
        if !target.cluster.is_empty() {
            hasher.update(b"\0");
            hasher.update(target.cluster.as_bytes());
        }
        Fingerprint(hasher.finalize().into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64-character lowercase hex form used in specs and API responses.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A lossless encoding that fits a Kubernetes label value (at most 63
    /// characters, alphanumeric at both ends): unpadded lowercase base32, 52
    /// characters. Lookups by label use this same function, so nothing is ever
    /// compared against a truncated value.
    pub fn label_value(&self) -> String {
        data_encoding::BASE32_NOPAD.encode(&self.0).to_ascii_lowercase()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// A firing Prometheus alert for tests: `name` about `target`, in `namespace`,
/// with `labels` (a `severity` label sets its severity, else `warning`), received
/// at the epoch.
#[cfg(test)]
pub(crate) fn test_signal(
    name: &str,
    namespace: &str,
    target: TargetResource,
    labels: &[(&str, &str)],
) -> Signal<'static> {
    let labels: Labels<'static> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Signal {
        name: name.to_string().into(),
        severity: labels.get("severity").unwrap_or("warning").to_string().into(),
        namespace: namespace.to_string().into(),
        fingerprint: Fingerprint::new(name, namespace, &target),
        target,
        labels,
        annotations: Labels::default(),
        firing_time: None,
        received_time: jiff::Timestamp::UNIX_EPOCH,
        signal_type: SignalType::PROMETHEUS_ALERT,
        source: "test".into(),
        status: SignalStatus::Firing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels<'static> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn fingerprint_is_sha256_of_name_namespace_kind_resource() {
        let target = TargetResource {
            kind: "Pod".into(),
            name: "web-0".into(),
            namespace: "shop".into(),
            cluster: String::new(),
        };
        let fp = Fingerprint::new("HighMemory", "shop", &target);
        let expected: [u8; 32] = Sha256::digest(b"HighMemory:shop:Pod:web-0").into();
        assert_eq!(fp.as_bytes(), &expected);
        assert_eq!(fp.to_hex().len(), 64);
    }

    #[test]
    fn fingerprint_ignores_label_order_and_extra_labels() {
        let a = labels(&[("pod", "web-0"), ("namespace", "shop"), ("team", "x")]);
        let b = labels(&[("team", "y"), ("namespace", "shop"), ("pod", "web-0"), ("zone", "z")]);
        let fp = |l: &Labels| {
            let ns = namespace_from_labels(l);
            Fingerprint::new("HighMemory", &ns, &TargetResource::from_labels(l, &ns))
        };
        assert_eq!(fp(&a), fp(&b));
    }

    #[test]
    fn resource_resolution_prefers_pod_then_deployment_statefulset_daemonset_node_service() {
        let mut l = vec![
            ("service", "svc"),
            ("node", "n1"),
            ("daemonset", "ds"),
            ("statefulset", "sts"),
            ("deployment", "dep"),
            ("pod", "p"),
        ];
        let order = [
            ("pod", "Pod", "p"),
            ("deployment", "Deployment", "dep"),
            ("statefulset", "StatefulSet", "sts"),
            ("daemonset", "DaemonSet", "ds"),
            ("node", "Node", "n1"),
            ("service", "Service", "svc"),
        ];
        for (label, kind, name) in order {
            let t = TargetResource::from_labels(&labels(&l), "ns");
            assert_eq!((t.kind.as_str(), t.name.as_str()), (kind, name));
            l.retain(|(k, _)| *k != label);
        }
        assert_eq!(TargetResource::from_labels(&labels(&l), "ns"), TargetResource::default());
    }

    #[test]
    fn labels_borrow_verbatim_text_and_a_repeated_name_means_its_last_value() {
        let l: Labels = serde_json::from_str(r#"{"pod":"a","team":"x\"y","pod":"b"}"#).unwrap();
        assert_eq!(l.get("pod"), Some("b"));
        assert!(matches!(l.get_cow("pod"), Some(Cow::Borrowed(_))));
        assert_eq!(l.get("team"), Some("x\"y"));
        assert_eq!(l.to_map(), labels(&[("pod", "b"), ("team", "x\"y")]).to_map());
        assert!(serde_json::from_str::<Labels>(r#"{"pod":1}"#).is_err());
    }

    #[test]
    fn node_target_is_cluster_scoped() {
        let t = TargetResource::from_labels(&labels(&[("node", "n1")]), "shop");
        assert_eq!(t.namespace, "");
    }

    #[test]
    fn empty_resource_label_is_skipped() {
        let t = TargetResource::from_labels(&labels(&[("pod", ""), ("deployment", "api")]), "shop");
        assert_eq!((t.kind.as_str(), t.name.as_str()), ("Deployment", "api"));
    }

    #[test]
    fn namespace_falls_back_to_exported_namespace_then_default() {
        assert_eq!(namespace_from_labels(&labels(&[("namespace", "a"), ("exported_namespace", "b")])), "a");
        assert_eq!(namespace_from_labels(&labels(&[("exported_namespace", "b")])), "b");
        assert_eq!(namespace_from_labels(&labels(&[("namespace", ""), ("exported_namespace", "b")])), "b");
        assert_eq!(namespace_from_labels(&labels(&[])), "default");
    }

    #[test]
    fn label_value_is_lossless_and_fits_a_label() {
        let fp = Fingerprint::new("a", "b", &TargetResource::default());
        let v = fp.label_value();
        assert_eq!(v.len(), 52);
        assert!(v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        let decoded = data_encoding::BASE32_NOPAD.decode(v.to_ascii_uppercase().as_bytes()).unwrap();
        assert_eq!(decoded.as_slice(), fp.as_bytes());
    }
}
