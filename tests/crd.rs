//! The RemediationRequest CRD: the committed `deploy/crd.yaml` is exactly what
//! `tidegate crd` prints, and the generated definition has the shape the gateway and
//! its RBAC rely on.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, JSONSchemaProps,
};
use kube::CustomResourceExt;
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
    let path = json_path.strip_prefix('.')?;
    path.split('.').try_fold(root, |schema, name| property(schema, name))
}

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
    assert_eq!(
        columns,
        [
            ("Fingerprint", "string", ".spec.signalFingerprint", 1),
            ("Signal", "string", ".spec.signalName", 0),
            ("Priority", "string", ".spec.priority", 0),
            ("Occurrences", "integer", ".status.deduplication.occurrenceCount", 0),
            ("Age", "date", ".metadata.creationTimestamp", 0),
        ]
    );

    // Every column but Age points at a schema field of the column's type; a renamed
    // field would otherwise leave an always-empty column.
    let root = root_schema(&crd);
    for (name, type_, path, _) in &columns[..4] {
        let field = at_path(root, path).unwrap_or_else(|| panic!("column {name}: {path} is not in the schema"));
        assert_eq!(field.type_.as_deref(), Some(*type_), "column {name}: type of {path}");
    }
}
