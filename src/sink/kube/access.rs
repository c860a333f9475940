//! What `--sink kube` may do in the cluster: every API group, resource and verb the
//! sink and the owner caches use, in one list.
//!
//! `deploy/rbac.yaml` grants exactly this list (tests/deploy.rs compares the two),
//! and `tidegate doctor` asks the API server, verb by verb, whether the identity it
//! runs as holds it. The groups and plurals come from the Rust types the sink reads
//! and writes, so a rename cannot leave the list naming the old ones.
//!
//! This module only describes; it never calls the API server.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Resource;

use crate::remediation::RemediationRequest;

/// Verbs on one resource of one API group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    /// The API group; empty for the core group.
    pub group: String,
    /// The plural, with `/subresource` for a subresource.
    pub resource: String,
    pub verbs: &'static [&'static str],
    /// What the verbs are for, to tell an operator why a missing one matters.
    pub purpose: &'static str,
    /// Only needed with `kube.owner_chain` on.
    pub owner_chain: bool,
    /// Only needed with `scope.mode` `opt-in` or `opt-out`.
    pub scope: bool,
}

/// Verbs of the metadata watch caches of [`crate::workload::owners`]: list and watch, and a
/// get for an object the caches do not hold yet.
const OWNER_VERBS: &[&str] = &["get", "list", "watch"];

/// Verbs of the workload label caches of [`crate::workload::labels`]: list and watch
/// only, since a workload the caches miss says nothing and its namespace decides.
const LABEL_VERBS: &[&str] = &["list", "watch"];

fn permission<K: Resource<DynamicType = ()>>(
    subresource: Option<&str>,
    verbs: &'static [&'static str],
    purpose: &'static str,
) -> Permission {
    let plural = K::plural(&()).into_owned();
    let resource = match subresource {
        Some(sub) => format!("{plural}/{sub}"),
        None => plural,
    };
    Permission { group: K::group(&()).into_owned(), resource, verbs, purpose, owner_chain: false, scope: false }
}

/// Everything the sink and the owner caches may do, cluster-wide: alerts may name
/// any namespace.
pub fn permissions() -> Vec<Permission> {
    let owners = |p: Permission| Permission { owner_chain: true, ..p };
    let scope = |p: Permission| Permission { scope: true, ..p };
    vec![
        // Never update or delete: the spec is immutable and deletion belongs to
        // downstream controllers. Patch only the `tidegate.dev/flapping` label.
        permission::<RemediationRequest>(
            None,
            &["create", "get", "list", "watch", "patch"],
            "create requests, cache and confirm open ones, and label flapping ones",
        ),
        permission::<RemediationRequest>(Some("status"), &["update"], "record duplicates, storms and resolutions"),
        permission::<Namespace>(None, &["list", "watch"], "the namespace watch: each namespace's environment label"),
        owners(permission::<Pod>(None, OWNER_VERBS, "find a pod's controller (kube.owner_chain)")),
        owners(permission::<ReplicaSet>(None, OWNER_VERBS, "follow a ReplicaSet to its Deployment (kube.owner_chain)")),
        owners(permission::<Job>(None, OWNER_VERBS, "follow a Job to its CronJob (kube.owner_chain)")),
        scope(permission::<Deployment>(None, LABEL_VERBS, "read Deployments' tidegate.dev/remediate label (scope)")),
        scope(permission::<StatefulSet>(None, LABEL_VERBS, "read StatefulSets' tidegate.dev/remediate label (scope)")),
        scope(permission::<DaemonSet>(None, LABEL_VERBS, "read DaemonSets' tidegate.dev/remediate label (scope)")),
        scope(permission::<CronJob>(None, LABEL_VERBS, "read CronJobs' tidegate.dev/remediate label (scope)")),
    ]
}

/// What a gateway needs with `kube.owner_chain` on or off, and with a `scope.mode`
/// that reads labels or not.
pub fn needed(owner_chain: bool, scope: bool) -> Vec<Permission> {
    permissions().into_iter().filter(|p| (owner_chain || !p.owner_chain) && (scope || !p.scope)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_lookups_and_scope_labels_need_their_grants_only_when_on() {
        let resources = |owner_chain, scope| -> Vec<String> {
            needed(owner_chain, scope).into_iter().map(|p| p.resource).collect()
        };
        assert_eq!(resources(false, false), ["remediationrequests", "remediationrequests/status", "namespaces"]);
        assert_eq!(resources(true, false)[3..], ["pods", "replicasets", "jobs"]);
        assert_eq!(resources(false, true)[3..], ["deployments", "statefulsets", "daemonsets", "cronjobs"]);
        assert_eq!(needed(true, true), permissions());
    }
}
