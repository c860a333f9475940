//! `tidegate doctor`'s Kubernetes checks: the API server is reachable, the CRD this
//! build writes is installed with its schema, and the identity the gateway runs as
//! holds every grant the sink needs (one SelfSubjectAccessReview per verb).
//!
//! They read and never write, but for the reviews, which the API server does not
//! store.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion,
};
use kube::api::{Api, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::Value;

use super::access::{self, Permission};
use super::KubeConfig;
use crate::check::Check;
use crate::remediation::RemediationRequest;

/// How long one Kubernetes check may take.
fn budget(config: &KubeConfig) -> Duration {
    config.deadline.max(Duration::from_secs(5))
}

/// Why a check's call to the API server has no answer.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// `fut`, or a timeout error after `budget`.
async fn within<T>(budget: Duration, fut: impl Future<Output = kube::Result<T>>) -> Result<T, CallError> {
    match tokio::time::timeout(budget, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(CallError::Timeout(budget)),
    }
}

/// Reachability, the CRD, and every grant the sink needs (with `scope_labels`,
/// also the workload label caches').
pub async fn checks(config: &KubeConfig, scope_labels: bool, client: Option<Client>) -> Vec<Check> {
    let budget = budget(config);
    let needed = access::needed(config.owner_chain, scope_labels);
    let (client, reached) = match kube_reach(client, budget).await {
        Ok(reached) => reached,
        Err(check) => {
            let mut checks = vec![check, Check::skip("crd", "Kubernetes is not reachable")];
            checks.extend(needed.iter().map(|p| Check::skip(grant_name(p), "Kubernetes is not reachable")));
            return checks;
        }
    };
    let mut checks = vec![reached, crd(&client, &RemediationRequest::crd(), budget).await];
    let grants = needed.iter().map(|p| grant(&client, p, budget));
    checks.extend(futures::future::join_all(grants).await);
    checks
}

async fn kube_reach(client: Option<Client>, budget: Duration) -> Result<(Client, Check), Check> {
    const NAME: &str = "kubernetes";
    let fix = "run doctor where the gateway runs, with its service account, or set KUBECONFIG to a kubeconfig \
               that reaches the API server";
    let (client, at) = match client {
        Some(client) => (client, String::new()),
        None => {
            let config = kube::Config::infer().await.map_err(|e| Check::fail(NAME, format!("no client: {e}"), fix))?;
            let at = format!(" at {}", config.cluster_url);
            (Client::try_from(config).map_err(|e| Check::fail(NAME, format!("no client: {e}"), fix))?, at)
        }
    };
    let version = within(budget, client.apiserver_version())
        .await
        .map_err(|e| Check::fail(NAME, format!("API server{at} unreachable: {e}"), fix))?;
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let who = within(budget, reviews.create(&PostParams::default(), &SelfSubjectReview::default()))
        .await
        .ok()
        .and_then(|r| r.status?.user_info?.username)
        .map_or(String::new(), |user| format!(", as {user}"));
    Ok((client, Check::ok(NAME, format!("Kubernetes {}{at}{who}", version.git_version))))
}

/// How to install the CRD this build writes.
const CRD_FIX: &str = "install this build's CRD: tidegate crd | kubectl apply -f - (or kubectl apply -k deploy/)";

/// The CRD `expected` is installed, serves its version, and has its schema.
pub async fn crd(client: &Client, expected: &CustomResourceDefinition, budget: Duration) -> Check {
    const NAME: &str = "crd";
    let name = expected.name_any();
    let version = &expected.spec.versions[0];
    let fix = CRD_FIX;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let installed = match tokio::time::timeout(budget, crds.get_opt(&name)).await {
        Ok(Ok(Some(installed))) => installed,
        Ok(Ok(None)) => return Check::fail(NAME, format!("{name} is not installed"), fix),
        Ok(Err(kube::Error::Api(status))) if status.code == 403 => {
            return crd_served(client, expected, budget).await;
        }
        Ok(Err(e)) => return Check::fail(NAME, format!("cannot read {name}: {e}"), fix),
        Err(_) => return Check::fail(NAME, format!("cannot read {name}: no answer within {budget:?}"), fix),
    };
    let Some(served) = installed.spec.versions.iter().find(|v| v.name == version.name && v.served) else {
        let versions: Vec<&str> =
            installed.spec.versions.iter().filter(|v| v.served).map(|v| v.name.as_str()).collect();
        return Check::fail(NAME, format!("{name} serves {versions:?}; this build writes {}", version.name), fix);
    };
    let schema = |v: &CustomResourceDefinitionVersion| {
        serde_json::to_value(v.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref())).unwrap_or(Value::Null)
    };
    let mut differences = Vec::new();
    differ(&schema(version), &schema(served), String::new(), &mut differences);
    if !differences.is_empty() {
        let shown: Vec<&str> = differences.iter().take(3).map(String::as_str).collect();
        let more = differences.len().saturating_sub(shown.len());
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        return Check::fail(
            NAME,
            format!("{name} {}: the schema differs from this build's at {}{more}", version.name, shown.join(", ")),
            fix,
        );
    }
    Check::ok(NAME, format!("{name} serves {} with this build's schema", version.name))
}

/// With no right to read CRDs, the version through discovery (which everyone may
/// read); the schema cannot be compared.
async fn crd_served(client: &Client, expected: &CustomResourceDefinition, budget: Duration) -> Check {
    const NAME: &str = "crd";
    let version = &expected.spec.versions[0].name;
    let group_version = format!("{}/{version}", expected.spec.group);
    let plural = &expected.spec.names.plural;
    let served = within(budget, client.list_api_group_resources(&group_version)).await;
    match served {
        Ok(list) if list.resources.iter().any(|r| &r.name == plural) => Check::warn(
            NAME,
            format!("{plural}.{group_version} is served; this identity may not read CRDs, so the schema was not compared"),
            format!(
                "compare as an admin: doctor with an admin kubeconfig, or diff <(tidegate crd) <(kubectl get crd {} -o yaml)",
                expected.name_any()
            ),
        ),
        _ => Check::fail(
            NAME,
            format!("{plural}.{group_version} is not served"),
            CRD_FIX,
        ),
    }
}

/// The paths at which two JSON values differ.
fn differ(expected: &Value, found: &Value, path: String, out: &mut Vec<String>) {
    match (expected, found) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let (x, y) = (a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null));
                differ(x, y, format!("{path}.{key}"), out);
            }
        }
        (a, b) if a != b => out.push(if path.is_empty() { ".".into() } else { path }),
        _ => {}
    }
}

/// The check's name for a permission: the namespace watch has its own.
fn grant_name(p: &Permission) -> String {
    match p.resource.as_str() {
        "namespaces" => "namespace watch".into(),
        resource => format!("rbac {resource}"),
    }
}

/// Asks the API server, one SelfSubjectAccessReview per verb, whether this identity
/// holds `permission` cluster-wide.
pub async fn grant(client: &Client, permission: &Permission, budget: Duration) -> Check {
    let name = grant_name(permission);
    let (resource, subresource) = match permission.resource.split_once('/') {
        Some((resource, sub)) => (resource.to_string(), Some(sub.to_string())),
        None => (permission.resource.clone(), None),
    };
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let asks = permission.verbs.iter().map(|verb| {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(permission.group.clone()),
                    resource: Some(resource.clone()),
                    subresource: subresource.clone(),
                    verb: Some(verb.to_string()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let reviews = reviews.clone();
        async move {
            let answer = within(budget, reviews.create(&PostParams::default(), &review)).await;
            (*verb, answer.map(|r| r.status.is_some_and(|s| s.allowed)))
        }
    });
    let answers = futures::future::join_all(asks).await;
    let group = if permission.group.is_empty() { "core".to_string() } else { permission.group.clone() };
    let what = format!("{} ({group})", permission.resource);
    if let Some((verb, Err(e))) = answers.iter().find(|(_, a)| a.is_err()) {
        return Check::fail(
            name,
            format!("cannot ask whether {verb} {what} is allowed: {e}"),
            "check that the API server answers SelfSubjectAccessReviews",
        );
    }
    let denied: Vec<&str> = answers.iter().filter(|(_, a)| matches!(a, Ok(false))).map(|(v, _)| *v).collect();
    if denied.is_empty() {
        return Check::ok(name, format!("{what}: {} allowed", permission.verbs.join(", ")));
    }
    Check::fail(
        name,
        format!("{what}: {} denied, needed to {}", denied.join(", "), permission.purpose),
        "grant tidegate's ClusterRole to the identity the gateway runs as: kubectl apply -f deploy/rbac.yaml \
         (it binds the service account tidegate-system/tidegate)",
    )
}

#[cfg(test)]
mod tests {
    use super::differ;

    #[test]
    fn schemas_differ_at_the_paths_that_differ() {
        let a = serde_json::json!({"properties": {"spec": {"type": "object"}, "status": {"type": "object"}}});
        let b = serde_json::json!({"properties": {"spec": {"type": "string"}}});
        let mut out = Vec::new();
        differ(&a, &b, String::new(), &mut out);
        assert_eq!(out, [".properties.spec.type", ".properties.status"]);
    }
}
