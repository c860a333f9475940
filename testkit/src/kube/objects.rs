//! Workload objects as their controllers would make them, for the owner-chain
//! tests: Deployments, ReplicaSets, StatefulSets, DaemonSets, CronJobs, Jobs and
//! Pods with ownerReferences. No controller runs against the test API server, so
//! nothing acts on them there. On a real cluster (`TIDEGATE_TEST_KUBECONFIG`) they
//! are made inert for its controllers: no replicas, no parallelism, a suspended
//! CronJob, and pods without the labels the selectors match, so no controller
//! adopts, scales away or replaces the tests' pods.

use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

use super::Kube;

/// A created object, as an owner reference names it.
pub struct Object {
    pub api_version: String,
    pub kind: &'static str,
    pub name: String,
    pub uid: String,
}

/// (group, version, plural) of the kinds the tests make.
fn resource(kind: &str) -> (&'static str, &'static str, &'static str) {
    match kind {
        "Pod" => ("", "v1", "pods"),
        "ReplicaSet" => ("apps", "v1", "replicasets"),
        "Deployment" => ("apps", "v1", "deployments"),
        "StatefulSet" => ("apps", "v1", "statefulsets"),
        "DaemonSet" => ("apps", "v1", "daemonsets"),
        "Job" => ("batch", "v1", "jobs"),
        "CronJob" => ("batch", "v1", "cronjobs"),
        other => panic!("teach testkit/src/kube/objects.rs about {other}"),
    }
}

/// The smallest spec the API server accepts for `kind`.
fn spec(kind: &str) -> Value {
    let pod = |restart: &str| json!({"restartPolicy": restart, "containers": [{"name": "app", "image": "registry.example/app:1"}]});
    let template = |restart: &str| json!({"metadata": {"labels": {"app": "x"}}, "spec": pod(restart)});
    let selector = json!({"matchLabels": {"app": "x"}});
    let job = json!({"parallelism": 0, "template": template("Never")});
    match kind {
        "Pod" => pod("Always"),
        "Job" => job,
        "CronJob" => json!({"schedule": "0 3 * * *", "suspend": true, "jobTemplate": {"spec": job}}),
        "StatefulSet" => {
            json!({"replicas": 0, "selector": selector, "serviceName": "x", "template": template("Always")})
        }
        "DaemonSet" => json!({"selector": selector, "template": template("Always")}),
        _ => json!({"replicas": 0, "selector": selector, "template": template("Always")}),
    }
}

impl Kube {
    /// Creates `kind/name` in `namespace`, controlled by `owner`.
    pub async fn create_object(
        &self,
        namespace: &str,
        kind: &'static str,
        name: &str,
        owner: Option<&Object>,
    ) -> Object {
        let (group, version, plural) = resource(kind);
        let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let mut object = json!({
            "apiVersion": resource.api_version, "kind": kind, "metadata": {"name": name}, "spec": spec(kind)
        });
        if let Some(owner) = owner {
            object["metadata"]["ownerReferences"] = json!([{
                "apiVersion": owner.api_version, "kind": owner.kind, "name": owner.name, "uid": owner.uid,
                "controller": true
            }]);
        }
        let object: DynamicObject = serde_json::from_value(object).expect("an object");
        let api: Api<DynamicObject> = Api::namespaced_with(self.admin.clone(), namespace, &resource);
        let mut attempts = 0;
        let created = loop {
            match api.create(&PostParams::default(), &object).await {
                // On a real cluster a new namespace's `default` service account, which
                // pods need, appears a moment after the namespace.
                Err(kube::Error::Api(e)) if e.message.contains("serviceaccount") && attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => break other.unwrap_or_else(|e| panic!("create {kind} {namespace}/{name}: {e}")),
            }
        };
        Object { api_version: resource.api_version, kind, name: name.into(), uid: created.uid().expect("a uid") }
    }

    /// Sets label `key` of `kind/name` in `namespace` to `value`, or removes it
    /// (`None`), as `kubectl label` does.
    pub async fn label_object(&self, namespace: &str, kind: &str, name: &str, key: &str, value: Option<&str>) {
        let (group, version, plural) = resource(kind);
        let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let api: Api<DynamicObject> = Api::namespaced_with(self.admin.clone(), namespace, &resource);
        let patch = json!({"metadata": {"labels": {key: value}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("label {kind} {namespace}/{name}: {e}"));
    }
}
