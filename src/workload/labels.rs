//! Which workloads said `tidegate.dev/remediate`: the label caches scope reads.
//!
//! Scope (`pipeline::scope`) asks, for every signal, what the [`REMEDIATE_LABEL`]
//! of the signal's top workload says. The answer comes from memory, kept by
//! metadata-only watches (kube-rs `PartialObjectMeta`: no specs, no statuses):
//! - of Deployments, StatefulSets, DaemonSets and CronJobs, the kinds an owner
//!   chain ends at, watched here;
//! - of Pods, ReplicaSets and Jobs, which are their own top workload when nothing
//!   controls them, through the owner caches' watches ([`super::owners`]), which
//!   keep the label beside the controller, so no kind is watched twice.
//!
//! Only objects whose label says something (`"true"` or `"false"`) are kept: an
//! unlabelled cluster costs the watches and nothing else. The caches are listed
//! before the gateway takes signals ([`start`]): until then a workload labelled
//! `"false"` would look unlabelled, and be remediated.
//!
//! This module never calls the API server per signal and never decides scope: an
//! object it does not hold says nothing, and the namespace's label decides.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::{remediate_value, RemediateLabels, REMEDIATE_LABEL};
use crate::signal::TargetResource;

/// namespace → name → what the label says, for the objects whose label says something.
pub type Values = HashMap<Box<str>, HashMap<Box<str>, bool>>;

/// One kind's labelled objects, as its watch last reported them.
pub struct Labelled {
    kind: &'static str,
    values: RwLock<Values>,
    /// Whether the watch has listed once.
    listed: watch::Sender<bool>,
}

impl Labelled {
    pub fn new(kind: &'static str) -> Self {
        Labelled { kind, values: RwLock::default(), listed: watch::Sender::new(false) }
    }

    /// The kind, as an owner reference names it (`Deployment`).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// What `namespace/name`'s label says, if the object is known to say anything.
    pub fn get(&self, namespace: &str, name: &str) -> Option<bool> {
        self.read().get(namespace)?.get(name).copied()
    }

    /// An object the watch reports added or changed.
    pub fn apply(&self, meta: &ObjectMeta) {
        record(&mut self.write(), meta);
    }

    /// An object the watch reports deleted.
    pub fn delete(&self, meta: &ObjectMeta) {
        if let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) {
            forget(&mut self.write(), namespace, name);
        }
    }

    /// Swaps in what a (re-)list found, whole, so that objects deleted while the
    /// watch was down do not linger, and marks the kind listed.
    pub fn relisted(&self, fresh: Values) {
        *self.write() = fresh;
        self.listed.send_replace(true);
    }

    pub fn listed(&self) -> bool {
        *self.listed.borrow()
    }

    async fn wait_listed(&self) {
        let mut listed = self.listed.subscribe();
        let _ = listed.wait_for(|listed| *listed).await;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Values> {
        self.values.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Values> {
        self.values.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Records what `meta`'s label says in `values`, or forgets the object when its
/// label says nothing (any more).
pub fn record(values: &mut Values, meta: &ObjectMeta) {
    let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else { return };
    let label = meta.labels.as_ref().and_then(|labels| labels.get(REMEDIATE_LABEL));
    match remediate_value(label.map(String::as_str)) {
        Some(value) => {
            values.entry(namespace.into()).or_default().insert(name.into(), value);
        }
        None => forget(values, namespace, name),
    }
}

fn forget(values: &mut Values, namespace: &str, name: &str) {
    let Some(names) = values.get_mut(namespace) else { return };
    names.remove(name);
    if names.is_empty() {
        values.remove(namespace);
    }
}

/// The labels of every kind whose labels are read: the top kinds' own watches,
/// and the owner caches' kinds when the owner chain runs.
pub struct WorkloadLabels {
    kinds: Vec<Arc<Labelled>>,
}

impl WorkloadLabels {
    /// Starts the metadata watches of Deployments, StatefulSets, DaemonSets and
    /// CronJobs, cluster-wide, beside the kinds `kept` elsewhere (the owner caches'
    /// Pods, ReplicaSets and Jobs, when the owner chain runs). Returns at once.
    pub fn start(client: Client, kept: Vec<Arc<Labelled>>) -> Self {
        let mut kinds = vec![
            watched(Api::<PartialObjectMeta<Deployment>>::all(client.clone()), "Deployment"),
            watched(Api::<PartialObjectMeta<StatefulSet>>::all(client.clone()), "StatefulSet"),
            watched(Api::<PartialObjectMeta<DaemonSet>>::all(client.clone()), "DaemonSet"),
            watched(Api::<PartialObjectMeta<CronJob>>::all(client), "CronJob"),
        ];
        kinds.extend(kept);
        WorkloadLabels { kinds }
    }

    /// Whether the labels of `kind` are read: labelling an object of another kind
    /// changes nothing.
    pub fn reads(&self, kind: &str) -> bool {
        self.of(kind).is_some()
    }

    /// What the label of `target` says, as far as the caches know.
    pub fn get(&self, target: &TargetResource) -> Option<bool> {
        self.of(&target.kind)?.get(&target.namespace, &target.name)
    }

    fn of(&self, kind: &str) -> Option<&Labelled> {
        self.kinds.iter().find(|k| k.kind == kind).map(|k| &**k)
    }
}

/// The workload label caches did not list in time: the gateway cannot tell which
/// workloads said no, so it does not start (as the sink does not without its caches).
#[derive(Debug, thiserror::Error)]
#[error("the workload label caches (scope) did not list within {0:?}: may tidegate list and watch deployments, statefulsets, daemonsets and cronjobs?")]
pub struct NotListed(pub Duration);

/// Starts the workload label caches (beside those `kept` by the owner caches) and
/// waits, up to `timeout`, until all have listed; the labels scope reads are then
/// these, and `namespaces`' for a namespace.
pub async fn start(
    client: Client,
    kept: Vec<Arc<Labelled>>,
    namespaces: Arc<dyn RemediateLabels>,
    timeout: Duration,
) -> Result<Arc<dyn RemediateLabels>, NotListed> {
    let workloads = WorkloadLabels::start(client, kept);
    let all = futures::future::join_all(workloads.kinds.iter().map(|k| k.wait_listed()));
    tokio::time::timeout(timeout, all).await.map_err(|_| NotListed(timeout))?;
    Ok(Arc::new(ClusterLabels { workloads, namespaces }))
}

/// A cluster's labels: the workloads' from [`WorkloadLabels`], the namespaces'
/// from the sink's namespace cache.
struct ClusterLabels {
    workloads: WorkloadLabels,
    namespaces: Arc<dyn RemediateLabels>,
}

impl RemediateLabels for ClusterLabels {
    fn workload(&self, target: &TargetResource) -> Option<bool> {
        self.workloads.get(target)
    }

    fn reads_workload(&self, kind: &str) -> bool {
        self.workloads.reads(kind)
    }

    fn namespace(&self, namespace: &str) -> Option<bool> {
        self.namespaces.namespace(namespace)
    }
}

/// A [`Labelled`] for `kind`, kept in step with a metadata watch of `api`.
fn watched<K>(api: Api<PartialObjectMeta<K>>, kind: &'static str) -> Arc<Labelled>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let labelled = Arc::new(Labelled::new(kind));
    tokio::spawn(follow(api, labelled.clone()));
    labelled
}

/// Keeps `labelled` in step with a metadata watch of `api`, for as long as the
/// process runs.
async fn follow<K>(api: Api<PartialObjectMeta<K>>, labelled: Arc<Labelled>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut relist: Option<Values> = None;
    while let Some(event) = stream.next().await {
        match event {
            Err(e) => tracing::warn!(error = %e, kind = labelled.kind, "workload label watch failed; it will resume"),
            Ok(watcher::Event::Init) => relist = Some(Values::default()),
            Ok(watcher::Event::InitApply(object)) => {
                if let Some(values) = relist.as_mut() {
                    record(values, &object.metadata);
                }
            }
            Ok(watcher::Event::InitDone) => labelled.relisted(relist.take().unwrap_or_default()),
            Ok(watcher::Event::Apply(object)) => labelled.apply(&object.metadata),
            Ok(watcher::Event::Delete(object)) => labelled.delete(&object.metadata),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn meta(name: &str, remediate: Option<&str>) -> ObjectMeta {
        let labels = remediate.map(|v| BTreeMap::from([(REMEDIATE_LABEL.to_string(), v.to_string())]));
        ObjectMeta { name: Some(name.into()), namespace: Some("shop".into()), labels, ..ObjectMeta::default() }
    }

    #[test]
    fn a_label_is_kept_while_it_says_something_and_forgotten_when_it_stops() {
        let web = Labelled::new("Deployment");
        web.apply(&meta("web", Some("false")));
        assert_eq!(web.get("shop", "web"), Some(false));
        web.apply(&meta("web", Some("true")));
        assert_eq!(web.get("shop", "web"), Some(true), "a relabel replaces the value");
        web.apply(&meta("web", Some("yes")));
        assert_eq!(web.get("shop", "web"), None, "a value that says nothing is forgotten");
        assert!(web.read().is_empty(), "and its namespace with it");
        web.apply(&meta("web", Some("false")));
        web.delete(&meta("web", Some("false")));
        assert_eq!(web.get("shop", "web"), None);
    }

    #[test]
    fn unlabelled_objects_cost_nothing() {
        let mut values = Values::default();
        record(&mut values, &meta("web", None));
        assert!(values.is_empty());
    }

    #[test]
    fn a_relist_replaces_everything_and_marks_the_kind_listed() {
        let labelled = Labelled::new("StatefulSet");
        labelled.apply(&meta("gone", Some("false")));
        assert!(!labelled.listed());
        let mut fresh = Values::default();
        record(&mut fresh, &meta("db", Some("true")));
        labelled.relisted(fresh);
        assert!(labelled.listed());
        assert_eq!((labelled.get("shop", "gone"), labelled.get("shop", "db")), (None, Some(true)));
    }

    #[test]
    fn only_the_kinds_held_are_read() {
        let workloads = WorkloadLabels { kinds: vec![Arc::new(Labelled::new("Deployment"))] };
        workloads.kinds[0].apply(&meta("web", Some("false")));
        let target = |kind: &str| TargetResource {
            kind: kind.into(),
            name: "web".into(),
            namespace: "shop".into(),
            cluster: String::new(),
        };
        assert!(workloads.reads("Deployment") && !workloads.reads("Pod"));
        assert_eq!(workloads.get(&target("Deployment")), Some(false));
        assert_eq!(workloads.get(&target("StatefulSet")), None, "another kind of the same name");
    }
}
