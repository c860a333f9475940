//! Silences in the cluster: `RemediationSilence` objects in every namespace.
//!
//! [`watch`] follows them with one watch (as the sink follows requests), so a
//! silence created or expired with kubectl or `tidegate silence` takes effect as
//! soon as the API server tells the watch, without an API call per signal. The
//! same type is the CLI's and the status writer's way to the API, and how the
//! gateway tells a silence's owners it ignores it: a Warning Event on the silence
//! (events.k8s.io/v1), which `kubectl describe rsil` shows.

use std::sync::Arc;

use futures::StreamExt;
use jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;

use super::resource::RemediationSilence;
use super::store::{expired_end, Ignored, SilenceStore, StatusChange, StoreError};
use super::{SilenceRef, Silences};
use crate::state::BoxFuture;

/// Who reports the events the gateway writes about silences.
const REPORTING_CONTROLLER: &str = "tidegate.dev/gateway";

pub struct KubeSilences {
    client: Client,
}

impl KubeSilences {
    pub fn new(client: Client) -> Self {
        KubeSilences { client }
    }

    fn api(&self, namespace: &str) -> Api<RemediationSilence> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

/// Follows every silence in the cluster into `silences` until the process ends.
/// A re-list (after a gap, or `410 Gone`) replaces them all, so a silence deleted
/// while the watch was down is forgotten. Returns once the first list is in, or
/// failed (the watch keeps trying: a gateway whose account may not list silences
/// still serves, and says why in its log), or `sync_timeout` passed.
pub async fn watch(client: Client, silences: Arc<Silences>, sync_timeout: std::time::Duration) {
    let stream = watcher(Api::<RemediationSilence>::all(client), watcher::Config::default()).default_backoff();
    let (first, listed) = tokio::sync::oneshot::channel::<Result<usize, watcher::Error>>();
    let mut first = Some(first);
    tokio::spawn(async move {
        let mut listing: Option<Vec<RemediationSilence>> = None;
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(s)) => silences.upsert(&s),
                Ok(watcher::Event::Delete(s)) => {
                    if let Some(at) = super::reference(&s) {
                        silences.remove(&at);
                    }
                }
                Ok(watcher::Event::Init) => listing = Some(Vec::new()),
                Ok(watcher::Event::InitApply(s)) => listing.get_or_insert_with(Vec::new).push(s),
                Ok(watcher::Event::InitDone) => {
                    let listed = listing.take().unwrap_or_default();
                    let count = listed.len();
                    silences.replace_all(&listed);
                    if let Some(tell) = first.take() {
                        let _ = tell.send(Ok(count));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watching silences failed; retrying");
                    if let Some(tell) = first.take() {
                        let _ = tell.send(Err(e));
                    }
                }
            }
        }
    });
    match tokio::time::timeout(sync_timeout, listed).await {
        Ok(Ok(Ok(count))) => tracing::info!(silences = count, "listed the cluster's silences"),
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "cannot list silences yet: none is honoured until the watch succeeds")
        }
        _ => tracing::warn!(?sync_timeout, "silences not listed in time: none is honoured until the watch lists them"),
    }
}

fn kube_error(at: &SilenceRef, e: kube::Error) -> StoreError {
    match &e {
        kube::Error::Api(status) if status.code == 404 => StoreError::NotFound(at.clone()),
        kube::Error::Api(status) if status.code == 409 => StoreError::Exists(at.clone()),
        _ => StoreError::Kube(e),
    }
}

impl SilenceStore for KubeSilences {
    fn list<'a>(&'a self, namespace: Option<&'a str>) -> BoxFuture<'a, Result<Vec<RemediationSilence>, StoreError>> {
        Box::pin(async move {
            let api = match namespace {
                Some(ns) => self.api(ns),
                None => Api::all(self.client.clone()),
            };
            let list = api.list(&ListParams::default()).await.map_err(StoreError::Kube)?;
            Ok(list.items)
        })
    }

    fn create<'a>(&'a self, silence: &'a RemediationSilence) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let namespace = silence.metadata.namespace.as_deref().unwrap_or("default");
            let at = SilenceRef {
                namespace: namespace.to_string(),
                name: silence.metadata.name.clone().unwrap_or_default(),
            };
            self.api(namespace).create(&PostParams::default(), silence).await.map_err(|e| kube_error(&at, e))?;
            Ok(())
        })
    }

    fn expire<'a>(&'a self, at: &'a SilenceRef, now: Timestamp) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let api = self.api(&at.namespace);
            let current = api.get(&at.name).await.map_err(|e| kube_error(at, e))?;
            let end = expired_end(&current, now);
            // The resourceVersion makes it a compare-and-swap: an endsAt someone
            // moved meanwhile is not overwritten with a later one.
            let patch = json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "spec": {"endsAt": end.to_string()},
            });
            api.patch(&at.name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(|e| kube_error(at, e))?;
            Ok(())
        })
    }

    fn warn_ignored<'a>(&'a self, ignored: &'a Ignored) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            use k8s_openapi::api::core::v1::ObjectReference;
            use k8s_openapi::api::events::v1::Event;
            use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
            use kube::api::ObjectMeta;
            let at = &ignored.at;
            // Named after the silence's version: a replica (or a restart) warning of
            // the same version again finds it exists, and one event stands.
            let mut name: String = at.name.chars().take(200).collect();
            name.push_str(&format!(".ignored-{}", ignored.version));
            let event = Event {
                metadata: ObjectMeta { name: Some(name), namespace: Some(at.namespace.clone()), ..Default::default() },
                event_time: Some(MicroTime(Timestamp::now())),
                type_: Some("Warning".into()),
                reason: Some("SilenceIgnored".into()),
                action: Some("Ignore".into()),
                note: Some(ignored.message.chars().take(1024).collect()),
                reporting_controller: Some(REPORTING_CONTROLLER.into()),
                reporting_instance: Some(REPORTING_CONTROLLER.into()),
                regarding: Some(ObjectReference {
                    api_version: Some("remediation.tidegate.dev/v1alpha1".into()),
                    kind: Some("RemediationSilence".into()),
                    name: Some(at.name.clone()),
                    namespace: Some(at.namespace.clone()),
                    uid: ignored.uid.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let api: Api<Event> = Api::namespaced(self.client.clone(), &at.namespace);
            match api.create(&PostParams::default(), &event).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                Err(e) => Err(StoreError::Kube(e)),
            }
        })
    }

    fn write_status<'a>(
        &'a self,
        at: &'a SilenceRef,
        change: &'a StatusChange,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let api = self.api(&at.namespace);
            let current = api.get_status(&at.name).await.map_err(|e| kube_error(at, e))?;
            let mut status = current.status.unwrap_or_default();
            change.apply(&mut status);
            // A conflict (another replica wrote first) fails this write; the caller
            // keeps the change and folds it into the next one.
            let patch = json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "status": status,
            });
            api.patch_status(&at.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| kube_error(at, e))?;
            Ok(())
        })
    }
}
