//! Who owns a pod: the [`Owners`] of `--sink kube`, from metadata-only watch caches.
//!
//! A pod's controller is named in its ownerReferences (`controller: true`): a
//! ReplicaSet, whose own controller is a Deployment; a StatefulSet or DaemonSet;
//! a Job, whose controller may be a CronJob. Only the kinds that can have a
//! controller worth following are watched (Pods, ReplicaSets, Jobs), with kube-rs
//! metadata watchers (`PartialObjectMetadata`, so no specs or statuses cross the
//! wire), and of each object only its controller reference is kept: a pod costs
//! its name and its controller's name in memory. A kind that is not watched
//! (Deployment, StatefulSet, DaemonSet, CronJob, or any custom controller) ends the
//! chain, which is also capped at [`MAX_DEPTH`] steps.
//!
//! The caches do not hold up start-up: until they have listed, and for an object
//! created since the last event, a miss costs one GET of that object's metadata
//! within `kube.owner_lookup_timeout`, whose answer is remembered for
//! [`REMEMBER_FOR`]. In steady state an alert costs no API call.
//!
//! The same watches keep, for scope, the `tidegate.dev/remediate` label of the
//! objects that carry it ([`super::labels`]): a pod, ReplicaSet or Job nothing
//! controls is its own top workload.
//!
//! This module never fails a signal: an owner that cannot be read (timeout, error,
//! forbidden) leaves the signal with the identity it came with.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use super::labels::{self, Labelled};
use super::Owners;
use crate::kube_api;
use crate::signal::TargetResource;
use crate::state::BoxFuture;
use crate::telemetry::{ApiLabels, KindLabels, Metrics};

/// Most owner references followed from the signal's target: pod → ReplicaSet →
/// Deployment is two; the cap only stops a pathological (or cyclic) chain.
pub const MAX_DEPTH: usize = 4;
/// How long the answer of a GET (found, absent, or failed) is reused: an alert
/// repeating about a pod the caches lack costs one GET per this period, not one
/// per alert.
pub const REMEMBER_FOR: Duration = Duration::from_secs(30);
/// Most remembered GET answers; past it the expired ones go, then all.
const REMEMBERED: usize = 10_000;

/// The kinds whose controllers are followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Followed {
    Pod,
    ReplicaSet,
    Job,
}

impl Followed {
    const ALL: [Followed; 3] = [Followed::Pod, Followed::ReplicaSet, Followed::Job];

    fn of(kind: &str) -> Option<Followed> {
        Followed::ALL.into_iter().find(|f| f.kind() == kind)
    }

    fn kind(self) -> &'static str {
        match self {
            Followed::Pod => "Pod",
            Followed::ReplicaSet => "ReplicaSet",
            Followed::Job => "Job",
        }
    }
}

/// A controller's kind: the usual ones without an allocation per object.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ControllerKind {
    Known(&'static str),
    Other(Box<str>),
}

const KNOWN_KINDS: [&str; 6] = ["ReplicaSet", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"];

impl ControllerKind {
    fn new(kind: &str) -> Self {
        match KNOWN_KINDS.iter().find(|k| **k == kind) {
            Some(known) => ControllerKind::Known(known),
            None => ControllerKind::Other(kind.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            ControllerKind::Known(kind) => kind,
            ControllerKind::Other(kind) => kind,
        }
    }
}

/// An object's controller, in the object's own namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Controller {
    kind: ControllerKind,
    name: Box<str>,
}

impl Controller {
    fn of(meta: &ObjectMeta) -> Option<Controller> {
        let owner = meta.owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))?;
        Some(Controller { kind: ControllerKind::new(&owner.kind), name: owner.name.as_str().into() })
    }
}

/// namespace → name → controller (`None`: the object exists and has none).
type Objects = HashMap<Box<str>, HashMap<Box<str>, Option<Controller>>>;

/// One followed kind's objects, as its watch last reported them.
struct Cache {
    followed: Followed,
    objects: RwLock<Objects>,
    synced: AtomicBool,
    /// The kind's labelled objects, from the same watch.
    labels: Arc<Labelled>,
}

impl Cache {
    /// `Some(controller or None)` if the object is cached, `None` if not.
    fn get(&self, namespace: &str, name: &str) -> Option<Option<Controller>> {
        let objects = self.objects.read().unwrap_or_else(|p| p.into_inner());
        objects.get(namespace)?.get(name).cloned()
    }
}

/// An answer of the API server itself, remembered for [`REMEMBER_FOR`].
type Answer = Result<Option<Controller>, ()>;

/// GET answers by (kind, namespace, name), with when they were given.
type Remembered = HashMap<(Followed, Box<str>, Box<str>), (Instant, Answer)>;

pub struct OwnerCache {
    client: Client,
    caches: [Arc<Cache>; 3],
    remembered: Mutex<Remembered>,
    lookup_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl OwnerCache {
    /// Starts the metadata watches of Pods, ReplicaSets and Jobs, cluster-wide, and
    /// returns at once: lookups fall back to GETs until the caches have listed.
    pub fn start(client: Client, lookup_timeout: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        let caches = Followed::ALL.map(|followed| {
            let labels = Arc::new(Labelled::new(followed.kind()));
            Arc::new(Cache { followed, objects: RwLock::default(), synced: AtomicBool::new(false), labels })
        });
        // `PartialObjectMeta` APIs ask for metadata only, lists and watches alike.
        tokio::spawn(follow(Api::<PartialObjectMeta<Pod>>::all(client.clone()), caches[0].clone(), metrics.clone()));
        let replica_sets = Api::<PartialObjectMeta<ReplicaSet>>::all(client.clone());
        tokio::spawn(follow(replica_sets, caches[1].clone(), metrics.clone()));
        tokio::spawn(follow(Api::<PartialObjectMeta<Job>>::all(client.clone()), caches[2].clone(), metrics.clone()));
        Arc::new(OwnerCache { client, caches, remembered: Mutex::default(), lookup_timeout, metrics })
    }

    /// Whether every watch has listed once.
    pub fn synced(&self) -> bool {
        self.caches.iter().all(|c| c.synced.load(Ordering::Relaxed))
    }

    /// The `tidegate.dev/remediate` labels the watches keep, one per kind.
    pub fn labels(&self) -> impl Iterator<Item = Arc<Labelled>> + '_ {
        self.caches.iter().map(|cache| cache.labels.clone())
    }

    fn cache(&self, followed: Followed) -> &Cache {
        &self.caches[Followed::ALL.iter().position(|f| *f == followed).expect("every followed kind has a cache")]
    }

    /// The controller of a followed object: from its cache, else from a remembered
    /// answer, else from one GET.
    async fn controller(&self, followed: Followed, namespace: &str, name: &str) -> Answer {
        if let Some(controller) = self.cache(followed).get(namespace, name) {
            return Ok(controller);
        }
        let key = (followed, Box::<str>::from(namespace), Box::<str>::from(name));
        let now = Instant::now();
        if let Some((at, answer)) = self.lock().get(&key) {
            if now.duration_since(*at) < REMEMBER_FOR {
                return answer.clone();
            }
        }
        let answer = self.fetch(followed, namespace, name).await;
        let mut remembered = self.lock();
        if remembered.len() >= REMEMBERED {
            remembered.retain(|_, (at, _)| now.duration_since(*at) < REMEMBER_FOR);
            if remembered.len() >= REMEMBERED {
                remembered.clear();
            }
        }
        remembered.insert(key, (now, answer.clone()));
        answer
    }

    /// One GET of the object's metadata, within the lookup timeout.
    async fn fetch(&self, followed: Followed, namespace: &str, name: &str) -> Answer {
        let meta = match followed {
            Followed::Pod => self.get_meta::<Pod>(namespace, name).await,
            Followed::ReplicaSet => self.get_meta::<ReplicaSet>(namespace, name).await,
            Followed::Job => self.get_meta::<Job>(namespace, name).await,
        };
        let outcome = match &meta {
            Ok(_) => "ok",
            Err(Some(e)) => kube_api::outcome(e),
            Err(None) => "timeout",
        };
        self.metrics.api_calls.get_or_create(&ApiLabels { verb: "get_metadata", outcome }).inc();
        match meta {
            Ok(meta) => Ok(Controller::of(&meta)),
            // Gone: it has no controller any more; the chain ends at the object.
            Err(Some(e)) if kube_api::code(&e) == Some(404) => Ok(None),
            Err(e) => {
                let kind = followed.kind();
                tracing::debug!(kind, namespace, name, error = ?e, "owner lookup failed; keeping the signal's identity");
                Err(())
            }
        }
    }

    /// `Err(None)` on timeout.
    async fn get_meta<K>(&self, namespace: &str, name: &str) -> Result<ObjectMeta, Option<kube::Error>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let api = Api::<PartialObjectMeta<K>>::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(self.lookup_timeout, api.get(name)).await {
            Ok(Ok(partial)) => Ok(partial.metadata),
            Ok(Err(e)) => Err(Some(e)),
            Err(_) => Err(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.remembered.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Owners for OwnerCache {
    fn top<'a>(&'a self, target: &'a TargetResource) -> BoxFuture<'a, Option<TargetResource>> {
        Box::pin(async move {
            let mut followed = Followed::of(&target.kind)?;
            if target.namespace.is_empty() {
                return None;
            }
            let mut name: Box<str> = target.name.as_str().into();
            let mut top = None;
            for _ in 0..MAX_DEPTH {
                // An owner that cannot be read: keep the signal's own identity, so
                // that a flaky lookup never splits an incident three ways.
                let Some(controller) = self.controller(followed, &target.namespace, &name).await.ok()? else {
                    break;
                };
                let next = Followed::of(controller.kind.as_str());
                name = controller.name.clone();
                top = Some(controller);
                match next {
                    Some(kind) => followed = kind,
                    None => break,
                }
            }
            let top = top?;
            Some(TargetResource {
                kind: top.kind.as_str().to_string(),
                name: top.name.into(),
                namespace: target.namespace.clone(),
                cluster: target.cluster.clone(),
            })
        })
    }
}

/// Keeps `cache` in step with a metadata watch of `api`, for as long as the process
/// runs. A re-list builds a fresh map and swaps it in whole, so objects deleted
/// while the watch was down do not linger.
async fn follow<K>(api: Api<PartialObjectMeta<K>>, cache: Arc<Cache>, metrics: Arc<Metrics>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let kind = cache.followed.kind();
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut relist: Option<(Objects, labels::Values)> = None;
    let mut count = 0i64;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, kind, "owner watch failed; it will resume");
                continue;
            }
        };
        match event {
            watcher::Event::Init => relist = Some(Default::default()),
            watcher::Event::InitApply(object) => {
                if let Some((objects, labelled)) = relist.as_mut() {
                    insert(objects, &object.metadata);
                    labels::record(labelled, &object.metadata);
                }
            }
            watcher::Event::InitDone => {
                let (fresh, labelled) = relist.take().unwrap_or_default();
                count = fresh.values().map(|names| names.len() as i64).sum();
                *cache.objects.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                cache.labels.relisted(labelled);
                cache.synced.store(true, Ordering::Relaxed);
            }
            watcher::Event::Apply(object) => {
                cache.labels.apply(&object.metadata);
                let mut objects = cache.objects.write().unwrap_or_else(|p| p.into_inner());
                count += i64::from(insert(&mut objects, &object.metadata));
            }
            watcher::Event::Delete(object) => {
                cache.labels.delete(&object.metadata);
                let mut objects = cache.objects.write().unwrap_or_else(|p| p.into_inner());
                count -= i64::from(remove(&mut objects, &object.metadata));
            }
        }
        // The gauge appears once the cache has listed: its absence means "not yet".
        if cache.synced.load(Ordering::Relaxed) {
            metrics.owner_cache_objects.get_or_create(&KindLabels { kind }).set(count);
        }
    }
}

/// Records an object's controller; whether it is new.
fn insert(objects: &mut Objects, meta: &ObjectMeta) -> bool {
    let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else { return false };
    let controller = Controller::of(meta);
    match objects.get_mut(namespace) {
        Some(names) => names.insert(name.into(), controller).is_none(),
        None => {
            objects.insert(namespace.into(), HashMap::from([(name.into(), controller)]));
            true
        }
    }
}

/// Forgets an object; whether it was there.
fn remove(objects: &mut Objects, meta: &ObjectMeta) -> bool {
    let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else { return false };
    let Some(names) = objects.get_mut(namespace) else { return false };
    let removed = names.remove(name).is_some();
    if names.is_empty() {
        objects.remove(namespace);
    }
    removed
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn meta(name: &str, owners: &[(&str, &str, bool)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            owner_references: Some(
                owners
                    .iter()
                    .map(|(kind, name, controller)| OwnerReference {
                        kind: kind.to_string(),
                        name: name.to_string(),
                        controller: Some(*controller),
                        ..OwnerReference::default()
                    })
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn only_the_controller_reference_counts() {
        let m = meta("web-1", &[("Node", "n1", false), ("ReplicaSet", "web-7d9", true)]);
        let c = Controller::of(&m).unwrap();
        assert_eq!((c.kind.as_str(), &*c.name), ("ReplicaSet", "web-7d9"));
        assert_eq!(Controller::of(&meta("bare", &[("Node", "n1", false)])), None);
    }

    #[test]
    fn insert_and_remove_keep_the_namespace_map_small() {
        let mut objects = Objects::default();
        assert!(insert(&mut objects, &meta("a", &[("ReplicaSet", "r", true)])));
        assert!(!insert(&mut objects, &meta("a", &[("ReplicaSet", "r2", true)])), "an update, not a new object");
        assert_eq!(objects["shop"]["a"].as_ref().unwrap().name.as_ref(), "r2");
        assert!(remove(&mut objects, &meta("a", &[])));
        assert!(objects.is_empty());
        assert!(!remove(&mut objects, &meta("a", &[])));
    }

    #[test]
    fn unusual_controller_kinds_are_kept_by_name() {
        assert_eq!(ControllerKind::new("Deployment"), ControllerKind::Known("Deployment"));
        assert_eq!(ControllerKind::new("Rollout").as_str(), "Rollout");
    }
}
