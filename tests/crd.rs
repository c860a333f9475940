//! The RemediationRequest CRD: the committed `deploy/crd.yaml` is exactly what
//! `tidegate crd` prints, and the generated definition has the shape the gateway and
//! its RBAC rely on; against the real API server, `kubectl get rr` shows the
//! columns on-call needs and `kubectl explain` a sentence for every field.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use serde::Deserialize;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, CustomResourceExt};
use serde_json::{json, Value};
use tidegate::remediation::RemediationRequest;

const COMMITTED: &str = include_str!("../deploy/crd.yaml");

/// What `tidegate crd` prints (src/main.rs).
fn generated_yaml() -> String {
    tidegate::silence::resource::crds_yaml().expect("the CRDs serialize to YAML")
}

fn only_version(crd: &CustomResourceDefinition) -> &CustomResourceDefinitionVersion {
    assert_eq!(crd.spec.versions.len(), 1, "one version expected");
    &crd.spec.versions[0]
}

fn root_schema(crd: &CustomResourceDefinition) -> &JSONSchemaProps {
    only_version(crd)
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the version has an openAPIV3Schema")
}

fn property<'a>(schema: &'a JSONSchemaProps, name: &str) -> Option<&'a JSONSchemaProps> {
    schema.properties.as_ref()?.get(name)
}

/// The schema a simple JSONPath such as `.spec.signalName` points at.
fn at_path<'a>(root: &'a JSONSchemaProps, json_path: &str) -> Option<&'a JSONSchemaProps> {
    let mut path = json_path.strip_prefix('.')?.to_string();
    // A filter (`conditions[?(@.type=="X")]`) selects items of an array: `conditions[]`.
    while let Some(start) = path.find("[?(") {
        let end = start + path[start..].find(")]")? + 2;
        path.replace_range(start..end, "[]");
    }
    path.split('.').try_fold(root, |schema, name| match name.strip_suffix("[]") {
        Some(array) => property(schema, array)?.items.as_ref().and_then(|items| match items {
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(s) => {
                Some(s.as_ref())
            }
            _ => None,
        }),
        None => property(schema, name),
    })
}

/// Every CRD `tidegate crd` prints.
fn all_crds() -> Vec<CustomResourceDefinition> {
    serde_norway::Deserializer::from_str(&generated_yaml())
        .map(|doc| CustomResourceDefinition::deserialize(doc).expect("a CRD"))
        .collect()
}

/// `kubectl get rr`: what on-call needs first, the rest with `-o wide`.
const COLUMNS: [(&str, &str, &str, i32); 12] = [
    ("Signal", "string", ".spec.signalName", 0),
    ("Target", "string", ".spec.targetResource.name", 0),
    ("Kind", "string", ".spec.targetResource.kind", 1),
    ("Priority", "string", ".spec.priority", 0),
    ("Count", "integer", ".status.deduplication.occurrenceCount", 0),
    ("Storm", "string", ".spec.storm.type", 0),
    ("Phase", "string", ".status.phase", 0),
    ("Flapping", "string", ".status.conditions[?(@.type==\"Flapping\")].status", 1),
    ("Age", "date", ".metadata.creationTimestamp", 0),
    ("Severity", "string", ".spec.severity", 1),
    ("Last Seen", "date", ".status.deduplication.lastSeenAt", 1),
    ("Fingerprint", "string", ".spec.signalFingerprint", 1),
];

#[test]
fn committed_crd_matches_the_generated_one() {
    let generated = generated_yaml();
    if COMMITTED != generated {
        let line = COMMITTED
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| COMMITTED.lines().count().min(generated.lines().count()))
            + 1;
        panic!(
            "deploy/crd.yaml is out of date with src/remediation.rs (first difference at line {line}).\n\
             Regenerate it with:\n\n    cargo run -q -- crd > deploy/crd.yaml\n"
        );
    }
}

#[test]
fn committed_crd_parses_as_a_crd() {
    // The first document is the RemediationRequest CRD; the silences' follows
    // (tests/silence_kube.rs checks that one against the API server).
    let first = COMMITTED.split("\n---\n").next().unwrap();
    let parsed: CustomResourceDefinition = serde_norway::from_str(first).expect("deploy/crd.yaml is a CRD");
    assert!(parsed == RemediationRequest::crd(), "deploy/crd.yaml differs from the generated CRD");
}

#[test]
fn group_version_and_names() {
    let crd = RemediationRequest::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("remediationrequests.remediation.tidegate.dev"));
    assert_eq!(crd.spec.group, "remediation.tidegate.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    let names = &crd.spec.names;
    assert_eq!(names.kind, "RemediationRequest");
    assert_eq!(names.plural, "remediationrequests");
    assert_eq!(names.singular.as_deref(), Some("remediationrequest"));
    assert_eq!(names.short_names.as_deref(), Some(&["rr".to_string()][..]));

    let version = only_version(&crd);
    assert_eq!(version.name, "v1alpha1");
    assert!(version.served, "v1alpha1 is served");
    assert!(version.storage, "v1alpha1 is the storage version");
    assert_ne!(version.deprecated, Some(true));
}

#[test]
fn status_is_a_subresource() {
    let crd = RemediationRequest::crd();
    let subresources = only_version(&crd).subresources.as_ref().expect("subresources");
    assert!(subresources.status.is_some(), "status subresource");
    assert!(subresources.scale.is_none(), "no scale subresource");
    let root = root_schema(&crd);
    assert!(property(root, "status").is_some(), "status in the schema");
    assert_eq!(root.required.as_deref(), Some(&["spec".to_string()][..]));
}

#[test]
fn spec_is_immutable() {
    let crd = RemediationRequest::crd();
    let root = root_schema(&crd);
    let spec = property(root, "spec").expect("spec in the schema");
    let rules = spec.x_kubernetes_validations.as_deref().unwrap_or_default();
    assert_eq!(rules.len(), 1, "one rule on spec: {rules:?}");
    assert_eq!(rules[0].rule, "self == oldSelf");
    assert_eq!(rules[0].message.as_deref(), Some("spec is immutable"));
    // A transition rule that may be skipped when there is no old value would not
    // protect anything.
    assert_ne!(rules[0].optional_old_self, Some(true));

    // Nowhere else: the gateway writes status, and the root carries metadata.
    assert!(root.x_kubernetes_validations.is_none(), "no rule on the root");
    let status = property(root, "status").expect("status in the schema");
    assert!(status.x_kubernetes_validations.is_none(), "no rule on status");
}

#[test]
fn printer_columns() {
    let crd = RemediationRequest::crd();
    let version = only_version(&crd);
    let columns: Vec<(&str, &str, &str, i32)> = version
        .additional_printer_columns
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|c| (c.name.as_str(), c.type_.as_str(), c.json_path.as_str(), c.priority.unwrap_or(0)))
        .collect();
    assert_eq!(columns, COLUMNS);
    // Every column but Age points at a schema field of the column's type; a renamed
    // field would otherwise leave an always-empty column.
    let root = root_schema(&crd);
    for (name, type_, path, _) in columns.iter().filter(|c| !c.2.starts_with(".metadata.")) {
        let field = at_path(root, path).unwrap_or_else(|| panic!("column {name}: {path} is not in the schema"));
        let schema_type = match field.format.as_deref() {
            Some("date-time") => "date",
            _ => field.type_.as_deref().unwrap_or_default(),
        };
        assert_eq!(schema_type, *type_, "column {name}: type of {path}");
    }
}

/// The paths under `schema` (named from `at`) whose schema has no description,
/// walking objects' properties and arrays' items; `additionalProperties` maps are
/// described as a whole.
fn undescribed(schema: &JSONSchemaProps, at: &str, out: &mut Vec<String>) {
    let described = schema.description.as_deref().is_some_and(|d| d.trim().ends_with('.') && d.len() > 10);
    if !described {
        out.push(format!("{at}: {:?}", schema.description));
    }
    // A Kubernetes type's own description (k8s-openapi's `Time`) says nothing of the
    // field: the field must have its own.
    if schema.description.as_deref().is_some_and(|d| d.starts_with("Time is a wrapper")) {
        out.push(format!("{at}: the generic description of Time"));
    }
    for (name, property) in schema.properties.iter().flatten() {
        undescribed(property, &format!("{at}.{name}"), out);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items {
        for (name, property) in items.properties.iter().flatten() {
            undescribed(property, &format!("{at}[].{name}"), out);
        }
    }
}

#[test]
fn every_spec_and_status_field_has_a_description() {
    for crd in all_crds() {
        let version = &crd.spec.versions[0];
        let root = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("a schema");
        let mut missing = Vec::new();
        for part in ["spec", "status"] {
            if let Some(schema) = property(root, part) {
                undescribed(
                    schema,
                    &format!("{}.{part}", crd.spec.names.singular.clone().unwrap_or_default()),
                    &mut missing,
                );
            }
        }
        assert!(missing.is_empty(), "fields without a sentence for `kubectl explain`:\n{}", missing.join("\n"));
    }
}

/// A request as the gateway writes one, with a storm, then its status as the
/// gateway and a downstream controller leave it.
async fn storm_request(kube: &support::kube::Kube, namespace: &str) -> RemediationRequest {
    let api: Api<RemediationRequest> = Api::namespaced(kube.admin.clone(), namespace);
    let request: RemediationRequest = serde_json::from_value(json!({
        "apiVersion": "remediation.tidegate.dev/v1alpha1",
        "kind": "RemediationRequest",
        "metadata": {"name": "kubepodcrashlooping-0123456789ab-t0"},
        "spec": {
            "signalFingerprint": "0123456789abcdef",
            "signalName": "KubePodCrashLooping",
            "severity": "critical",
            "signalType": "prometheus-alert",
            "signalSource": "tidegate",
            "targetResource": {"kind": "Deployment", "name": "checkout", "namespace": namespace},
            "receivedTime": "2026-11-25T10:00:00Z",
            "environment": "production",
            "priority": "P0",
            "priorityRule": "critical-production",
            "storm": {"type": "rate", "windowId": "2026-11-25T10:00:00Z", "affectedResources": []},
        },
    }))
    .expect("a request");
    let created = api.create(&PostParams::default(), &request).await.expect("create the request");
    let status = json!({"status": {
        "deduplication": {"firstSeenAt": "2026-11-25T10:00:00Z", "lastSeenAt": "2026-11-25T10:04:00Z", "occurrenceCount": 42},
        "phase": "Processing",
        "conditions": [{"type": "Flapping", "status": "True", "reason": "TransitionsOverThreshold",
            "message": "4 firing -> resolved -> firing transitions within 30m", "lastTransitionTime": "2026-11-25T10:04:00Z"}],
    }});
    let name = created.metadata.name.clone().unwrap();
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("write status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_shows_the_on_call_columns() {
    let kube = support::kube::Kube::new().await;
    let namespace = kube.namespace("columns", &[]).await;
    storm_request(&kube, &namespace).await;

    // What `kubectl get rr` asks for: the server prints the table.
    let request = axum::http::Request::get(format!(
        "/apis/remediation.tidegate.dev/v1alpha1/namespaces/{namespace}/remediationrequests?includeObject=None"
    ))
    .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    .body(Vec::new())
    .unwrap();
    let table: Value = kube.admin.request(request).await.expect("a Table");
    assert_eq!(table["kind"], "Table");
    let columns: Vec<(String, i64)> = table["columnDefinitions"]
        .as_array()
        .expect("columnDefinitions")
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["priority"].as_i64().unwrap_or(0)))
        .collect();
    let mut expected = vec![("Name".to_string(), 0)];
    expected.extend(COLUMNS.iter().map(|(name, _, _, priority)| (name.to_string(), *priority as i64)));
    assert_eq!(columns, expected);

    let rows = table["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1);
    let cells = rows[0]["cells"].as_array().expect("cells");
    let cell = |name: &str| cells[columns.iter().position(|(n, _)| n == name).unwrap()].clone();
    assert_eq!(cell("Signal"), "KubePodCrashLooping");
    assert_eq!(cell("Target"), "checkout");
    assert_eq!(cell("Kind"), "Deployment");
    assert_eq!(cell("Priority"), "P0");
    assert_eq!(cell("Count"), 42);
    assert_eq!(cell("Storm"), "rate");
    assert_eq!(cell("Phase"), "Processing");
    assert_eq!(cell("Flapping"), "True");
    assert_eq!(cell("Severity"), "critical");
    assert_eq!(cell("Fingerprint"), "0123456789abcdef");
    assert!(cell("Age").as_str().is_some_and(|age| age.ends_with('s') || age.ends_with('m')), "{:?}", cell("Age"));
}

/// The descriptions `kubectl explain` prints for `schema`'s fields, by path.
fn descriptions(schema: &Value, at: &str, out: &mut BTreeMap<String, String>) {
    for (name, property) in schema["properties"].as_object().into_iter().flatten() {
        let path = format!("{at}.{name}");
        // A published field may point at a shared definition, beside its own words.
        let described = property["description"].as_str().unwrap_or_default().to_string();
        out.insert(path.clone(), described);
        descriptions(property, &path, out);
        descriptions(&property["items"], &format!("{path}[]"), out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_has_a_sentence_for_every_field() {
    let kube = support::kube::Kube::new().await;
    // What `kubectl explain` reads: the API server's OpenAPI v3 for the group,
    // published a moment after the CRD is established.
    let path = "/openapi/v3/apis/remediation.tidegate.dev/v1alpha1";
    let key = "dev.tidegate.remediation.v1alpha1.RemediationRequest";
    let latest = std::sync::Mutex::new(Value::Null);
    let found = support::poll_within(Duration::from_secs(30), Duration::from_millis(200), || {
        let request = axum::http::Request::get(path).body(Vec::new()).unwrap();
        let (client, latest) = (kube.admin.clone(), &latest);
        async move {
            let Ok(document) = client.request::<Value>(request).await else { return false };
            let schema = document["components"]["schemas"][key].clone();
            let published = !schema.is_null();
            *latest.lock().unwrap() = schema;
            published
        }
    })
    .await;
    assert!(found, "{key} is not in {path}");
    let published = latest.into_inner().unwrap();

    let mut fields = BTreeMap::new();
    descriptions(&published, "remediationrequest", &mut fields);
    assert!(fields.contains_key("remediationrequest.spec.targetResource.name"), "{fields:?}");
    assert!(fields.contains_key("remediationrequest.status.deduplication.occurrenceCount"), "{fields:?}");
    let missing: Vec<&String> = fields
        .iter()
        .filter(|(path, _)| {
            path.starts_with("remediationrequest.spec") || path.starts_with("remediationrequest.status")
        })
        .filter(|(_, description)| !description.trim_end().ends_with('.'))
        .map(|(path, _)| path)
        .collect();
    assert!(missing.is_empty(), "`kubectl explain` shows no sentence for: {missing:?}");
    // The same words as the generated CRD: from the Rust doc comments.
    assert_eq!(
        fields["remediationrequest.spec.priority"],
        "How urgent the incident is, from `P0` (most urgent) to `P3`."
    );
}
