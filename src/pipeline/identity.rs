//! Which cluster a signal is about: a central tidegate fed by several clusters'
//! senders must not take two clusters' `web-0` in `shop` for one incident.
//!
//! A signal names its cluster with one of `identity.cluster_labels`, or takes its
//! sender's from `identity.sender_clusters` (for sources whose payload names none:
//! CloudEvents from Falco, Kubernetes Events). The cluster then takes part in the
//! fingerprint, the storm scope and the request (`spec.targetResource.cluster`),
//! and owner chains are followed only for the local cluster's signals, since the
//! metadata caches see only the local cluster.
//!
//! This step must never change the identity of a signal that names no cluster:
//! its fingerprint, and so its request names, stay what they always were.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::heartbeat::Sender;
use crate::section::ConfigError;
use crate::signal::{Fingerprint, Signal, TargetResource};
use crate::state::BoxFuture;
use crate::workload::Owners;

/// `identity`: what tells clusters apart.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Labels that name a signal's cluster, the first one present winning. A signal
    /// with one is a different incident in each cluster; one without keeps the
    /// fingerprint it has always had.
    pub cluster_labels: Vec<String>,
    /// The cluster this gateway runs in (as the labels spell it): owner chains are
    /// followed only for its signals and for those that name no cluster. Unset:
    /// every signal is local.
    pub local_cluster: Option<String>,
    /// The cluster of each sender whose signals name none (CloudEvents, Kubernetes
    /// Events), by the authenticated sender's configured name.
    pub sender_clusters: BTreeMap<String, String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig { cluster_labels: vec!["cluster".into()], local_cluster: None, sender_clusters: BTreeMap::new() }
    }
}

impl IdentityConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster_labels.iter().any(String::is_empty) {
            return Err(ConfigError::invalid("identity.cluster_labels", "a label name cannot be empty"));
        }
        if self.local_cluster.as_deref() == Some("") {
            return Err(ConfigError::invalid("identity.local_cluster", "cannot be empty; leave it unset instead"));
        }
        if self.sender_clusters.iter().any(|(sender, cluster)| sender.is_empty() || cluster.is_empty()) {
            return Err(ConfigError::invalid("identity.sender_clusters", "sender and cluster names cannot be empty"));
        }
        Ok(())
    }

    /// Whether `target` is in the cluster this gateway runs in.
    pub fn is_local(&self, target: &TargetResource) -> bool {
        match &self.local_cluster {
            Some(local) => target.cluster.is_empty() || target.cluster == *local,
            None => true,
        }
    }

    /// `signals` from `sender`, each that names a cluster placed in it (target and
    /// fingerprint). Borrows `signals` unchanged when none does, the common case
    /// of a single-cluster deployment.
    pub fn place<'s, 'a>(&self, signals: &'s [Signal<'a>], sender: &Sender<'_>) -> Cow<'s, [Signal<'a>]> {
        let from_sender = sender.label.and_then(|name| self.sender_clusters.get(name));
        let cluster_of = |signal: &Signal<'a>| -> Option<String> {
            let labelled = self.cluster_labels.iter().find_map(|l| signal.labels.get(l).filter(|v| !v.is_empty()));
            labelled.map(str::to_string).or_else(|| from_sender.cloned())
        };
        let mut out: Option<Vec<Signal<'a>>> = None;
        for (i, signal) in signals.iter().enumerate() {
            match cluster_of(signal).filter(|c| *c != signal.target.cluster) {
                Some(cluster) => {
                    let mut placed = signal.clone();
                    placed.target.cluster = cluster;
                    placed.fingerprint = Fingerprint::new(&placed.name, &placed.namespace, &placed.target);
                    out.get_or_insert_with(|| signals[..i].to_vec()).push(placed);
                }
                None => {
                    if let Some(out) = &mut out {
                        out.push(signal.clone());
                    }
                }
            }
        }
        match out {
            Some(placed) => Cow::Owned(placed),
            None => Cow::Borrowed(signals),
        }
    }
}

/// An owner resolver that follows owner chains only in the local cluster: a remote
/// target keeps its own identity, since the caches know nothing of its owners (and
/// a local object of the same name is someone else).
pub struct LocalOwners {
    pub inner: Arc<dyn Owners>,
    pub identity: IdentityConfig,
}

impl Owners for LocalOwners {
    fn top<'a>(&'a self, target: &'a TargetResource) -> BoxFuture<'a, Option<TargetResource>> {
        Box::pin(async move {
            if !self.identity.is_local(target) {
                return None;
            }
            let mut top = self.inner.top(target).await?;
            top.cluster = target.cluster.clone();
            Some(top)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::lifecycle_tests::signal;

    const SENDER: Sender<'static> = Sender { name: "am", label: Some("am") };

    #[test]
    fn a_signal_without_a_cluster_keeps_the_fingerprint_of_the_previous_release() {
        // Computed by tidegate before clusters took part (main at f9b7c80):
        // SHA-256 of "KubePodCrashLooping:shop:Pod:web-0".
        let before = "822fa5f0e22b0b9389dbfa4295d59b2b5ee8b4205841766ab689e6e0525289ba";
        let signals = [signal("KubePodCrashLooping", "shop", "web-0")];

        let placed = IdentityConfig::default().place(&signals, &SENDER);

        assert!(matches!(placed, Cow::Borrowed(_)), "nothing is copied");
        assert_eq!(placed[0].fingerprint.to_hex(), before);
        assert_eq!(placed[0].target.cluster, "");
    }

    #[test]
    fn the_cluster_label_makes_two_clusters_two_incidents() {
        let mut eu = signal("KubePodCrashLooping", "shop", "web-0");
        eu.labels.push("cluster", "eu-1");
        let mut us = eu.clone();
        us.labels.push("cluster", "us-1");
        let signals = [eu, us, signal("KubePodCrashLooping", "shop", "web-0")];

        let placed = IdentityConfig::default().place(&signals, &SENDER);

        assert_eq!((placed[0].target.cluster.as_str(), placed[1].target.cluster.as_str()), ("eu-1", "us-1"));
        assert_ne!(placed[0].fingerprint, placed[1].fingerprint);
        assert_ne!(placed[0].fingerprint, placed[2].fingerprint, "nor is either the unlabelled one");
        assert_eq!(placed[0].fingerprint, Fingerprint::new("KubePodCrashLooping", "shop", &placed[0].target));
    }

    #[test]
    fn a_sender_without_labels_takes_its_configured_cluster_and_a_label_wins_over_it() {
        let config =
            IdentityConfig { sender_clusters: [("falco-eu".into(), "eu-1".into())].into(), ..Default::default() };
        let falco = Sender { name: "falco-eu", label: Some("falco-eu") };
        let mut labelled = signal("Read sensitive file", "shop", "web-0");
        labelled.labels.push("cluster", "us-1");
        let signals = [signal("Read sensitive file", "shop", "web-0"), labelled];

        let placed = config.place(&signals, &falco);

        assert_eq!(placed[0].target.cluster, "eu-1");
        assert_eq!(placed[1].target.cluster, "us-1");
        let unconfigured = config.place(&signals[..1], &SENDER);
        assert_eq!(unconfigured[0].target.cluster, "", "another sender's signals stay unplaced");
    }

    #[test]
    fn only_the_local_cluster_and_unplaced_targets_are_local() {
        let config = IdentityConfig { local_cluster: Some("eu-1".into()), ..Default::default() };
        let mut target = TargetResource::new("Pod", "web-0", "shop");
        assert!(config.is_local(&target));
        target.cluster = "eu-1".into();
        assert!(config.is_local(&target));
        target.cluster = "us-1".into();
        assert!(!config.is_local(&target));
        assert!(IdentityConfig::default().is_local(&target), "unset: every signal is local");
    }

    struct EveryPodIsWebs;
    impl Owners for EveryPodIsWebs {
        fn top<'a>(&'a self, target: &'a TargetResource) -> BoxFuture<'a, Option<TargetResource>> {
            Box::pin(async move { Some(TargetResource::new("Deployment", "web", &target.namespace)) })
        }
    }

    #[tokio::test]
    async fn owner_chains_are_followed_in_the_local_cluster_only_and_keep_the_cluster() {
        let identity = IdentityConfig { local_cluster: Some("eu-1".into()), ..Default::default() };
        let owners = LocalOwners { inner: Arc::new(EveryPodIsWebs), identity };
        let mut target = TargetResource::new("Pod", "web-0", "shop");
        target.cluster = "eu-1".into();

        let local = owners.top(&target).await.expect("local: followed");
        target.cluster = "us-1".into();
        let remote = owners.top(&target).await;

        assert_eq!((local.kind.as_str(), local.name.as_str(), local.cluster.as_str()), ("Deployment", "web", "eu-1"));
        assert_eq!(remote, None, "a remote pod keeps its own identity");
    }
}
