//! Scope: whether tidegate may act on a signal's target at all.
//!
//! `scope.mode` is `all` (every signal, the default), `opt-in` (only targets whose
//! owners asked for remediation) or `opt-out` (every target except those whose
//! owners said no). In a cluster the label [`REMEDIATE_LABEL`] (`"true"` or
//! `"false"`) on the target's top workload decides, else the same label on its
//! namespace; the `scope.namespaces` list stands in for namespace labels outside a
//! cluster (the directory sink) and for namespaces nobody labelled. Labels are read
//! from caches a watch keeps ([`RemediateLabels`]), never with an API call per
//! signal.
//!
//! The step runs after a signal is attributed to its workload and before the state
//! store sees it: an out-of-scope signal creates nothing and does not count toward
//! storms. It is answered 2xx with a hint naming the `kubectl label` command (or the
//! configuration key) that would bring it into scope; the pipeline counts it in
//! `tidegate_signals_received_total{outcome="out_of_scope"}` and audits it once per
//! incident. This module decides only: it never writes anything.

use std::collections::BTreeSet;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::identity::IdentityConfig;
use crate::section::ConfigError;
use crate::signal::{Signal, TargetResource};
pub use crate::workload::{remediate_value, RemediateLabels, REMEDIATE_LABEL};

/// `scope.mode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ScopeMode {
    /// Every signal is in scope; labels are not read.
    #[default]
    All,
    /// Only targets labelled (or whose namespace is labelled, or listed)
    /// `tidegate.dev/remediate: "true"`.
    OptIn,
    /// Every target except those labelled (or whose namespace is labelled, or
    /// listed) `tidegate.dev/remediate: "false"`.
    OptOut,
}

/// `scope`: which targets tidegate may remediate.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ScopeConfig {
    /// `all` (default), `opt-in` or `opt-out`.
    pub mode: ScopeMode,
    /// Namespaces opted in (`opt-in`) or out (`opt-out`) by configuration: what
    /// namespace labels say in a cluster, for the directory sink, and for
    /// namespaces without the label. A label on the workload or the namespace
    /// overrides the list.
    pub namespaces: BTreeSet<String>,
    /// Whether signals about cluster-scoped targets (nodes), which have no
    /// namespace to label, are in scope under `opt-in`. Under `opt-out` they always
    /// are.
    pub cluster_scoped: bool,
}

impl ScopeConfig {
    /// Whether the step reads labels at all: not with `all`.
    pub fn reads_labels(&self) -> bool {
        self.mode != ScopeMode::All
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(bad) = self.namespaces.iter().find(|ns| !crate::ingest::is_dns1123_label(ns)) {
            return Err(ConfigError::invalid(
                "scope.namespaces",
                format!("{bad:?} is not a Kubernetes namespace name"),
            ));
        }
        if self.mode == ScopeMode::All && !self.namespaces.is_empty() {
            return Err(ConfigError::invalid("scope.namespaces", "needs scope.mode opt-in or opt-out"));
        }
        Ok(())
    }
}

/// What decided that a signal is out of scope: a bounded set, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    /// The workload's own label.
    Workload,
    /// The namespace's label.
    Namespace,
    /// `scope.namespaces`.
    Config,
    /// Nothing said anything: the mode's default (opt-in's "no").
    Default,
}

/// Why a signal is out of scope, and what would bring it in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutOfScope {
    pub decided_by: DecidedBy,
    /// The command (or configuration change) that would bring the signal in scope.
    pub hint: String,
}

/// The scope step: config and, in a cluster, the label caches.
pub struct Scope {
    config: ScopeConfig,
    labels: Option<Arc<dyn RemediateLabels>>,
    /// Which signals are about the cluster the label caches watch.
    identity: IdentityConfig,
}

impl Scope {
    /// `labels` is `None` outside a cluster: the configuration alone decides.
    pub fn new(config: &ScopeConfig, labels: Option<Arc<dyn RemediateLabels>>) -> Self {
        Scope { config: config.clone(), labels, identity: IdentityConfig::default() }
    }

    /// Reads the label caches only for signals about the local cluster
    /// (`identity.local_cluster`): another cluster's namespace of the same name is
    /// not the one labelled here, so the configuration alone decides for it.
    pub fn local_to(mut self, identity: &IdentityConfig) -> Self {
        self.identity = identity.clone();
        self
    }

    /// Whether the step can rule anything out: with `all`, the pipeline skips it.
    pub fn active(&self) -> bool {
        self.config.mode != ScopeMode::All
    }

    /// `None` when `signal` is in scope.
    pub fn decide(&self, signal: &Signal<'_>) -> Option<OutOfScope> {
        let opt_in = match self.config.mode {
            ScopeMode::All => return None,
            ScopeMode::OptIn => true,
            ScopeMode::OptOut => false,
        };
        let namespace = signal.target.namespace.as_str();
        let namespace = if namespace.is_empty() { signal.namespace.as_ref() } else { namespace };
        if namespace.is_empty() {
            // Nothing to label: `scope.cluster_scoped` decides under opt-in.
            return (opt_in && !self.config.cluster_scoped).then(|| OutOfScope {
                decided_by: DecidedBy::Config,
                hint: "set scope.cluster_scoped: true in tidegate's configuration".to_string(),
            });
        }
        // Another cluster's namespace of the same name is not the one labelled here.
        let labels = self.labels.as_deref().filter(|_| self.identity.is_local(&signal.target));
        let workload = labels.and_then(|l| l.workload(&signal.target));
        let labelled = labels.and_then(|l| l.namespace(namespace));
        let listed = self.config.namespaces.contains(namespace);
        let (remediate, decided_by) = match (workload, labelled) {
            (Some(value), _) => (value, DecidedBy::Workload),
            (None, Some(value)) => (value, DecidedBy::Namespace),
            // The list names the namespaces that are not what the mode makes them.
            (None, None) if listed => (opt_in, DecidedBy::Config),
            (None, None) => (!opt_in, DecidedBy::Default),
        };
        if remediate {
            return None;
        }
        Some(OutOfScope { decided_by, hint: hint(&signal.target, namespace, labels, decided_by) })
    }
}

/// The narrowest change that brings a signal about `target` into scope, whatever
/// said no. In a cluster, a label set to `"true"`: the workload's when its kind's
/// labels are read (it overrides the namespace's label and the list, and brings
/// nothing else in), else the namespace's (which overrides the list). Outside a
/// cluster (`labels` is `None`), the configuration's list.
fn hint(target: &TargetResource, namespace: &str, labels: Option<&dyn RemediateLabels>, by: DecidedBy) -> String {
    match labels {
        Some(labels) if !target.namespace.is_empty() && labels.reads_workload(&target.kind) => format!(
            "kubectl label {}/{} -n {namespace} {REMEDIATE_LABEL}=true --overwrite",
            target.kind.to_ascii_lowercase(),
            target.name
        ),
        Some(_) => format!("kubectl label namespace {namespace} {REMEDIATE_LABEL}=true --overwrite"),
        None if by == DecidedBy::Config => {
            format!("remove {namespace} from scope.namespaces in tidegate's configuration")
        }
        None => format!("add {namespace} to scope.namespaces in tidegate's configuration"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Label caches as a cluster would hold them: every kind but Services is read.
    #[derive(Default)]
    struct Cluster {
        workloads: HashMap<String, bool>,
        namespaces: HashMap<String, bool>,
    }

    impl RemediateLabels for Cluster {
        fn workload(&self, target: &TargetResource) -> Option<bool> {
            self.workloads.get(&target.name).copied()
        }
        fn reads_workload(&self, kind: &str) -> bool {
            kind != "Service"
        }
        fn namespace(&self, namespace: &str) -> Option<bool> {
            self.namespaces.get(namespace).copied()
        }
    }

    fn signal(namespace: &str, kind: &str, name: &str) -> Signal<'static> {
        let target_ns = if kind == "Node" { "" } else { namespace };
        let target = TargetResource {
            kind: kind.into(),
            name: name.into(),
            namespace: target_ns.into(),
            cluster: String::new(),
        };
        crate::signal::test_signal("KubePodCrashLooping", namespace, target, &[])
    }

    fn config(mode: ScopeMode, namespaces: &[&str]) -> ScopeConfig {
        ScopeConfig { mode, namespaces: namespaces.iter().map(|s| s.to_string()).collect(), cluster_scoped: false }
    }

    fn in_cluster(mode: ScopeMode, cluster: Cluster) -> Scope {
        Scope::new(&config(mode, &[]), Some(Arc::new(cluster)))
    }

    #[test]
    fn mode_all_decides_nothing_whatever_the_labels() {
        let cluster = Cluster { namespaces: HashMap::from([("shop".into(), false)]), ..Default::default() };
        let scope = in_cluster(ScopeMode::All, cluster);
        assert!(!scope.active());
        assert_eq!(scope.decide(&signal("shop", "Deployment", "web")), None);
    }

    #[test]
    fn opt_in_refuses_what_nobody_labelled_and_names_the_workloads_label_command() {
        let scope = in_cluster(ScopeMode::OptIn, Cluster::default());
        let out = scope.decide(&signal("shop", "Deployment", "web")).expect("out of scope");
        assert_eq!(out.decided_by, DecidedBy::Default);
        assert_eq!(out.hint, "kubectl label deployment/web -n shop tidegate.dev/remediate=true --overwrite");
    }

    #[test]
    fn the_hint_names_the_namespace_when_the_targets_kind_is_not_read() {
        let scope = in_cluster(ScopeMode::OptIn, Cluster::default());
        let out = scope.decide(&signal("shop", "Service", "web")).expect("out of scope");
        assert_eq!(out.hint, "kubectl label namespace shop tidegate.dev/remediate=true --overwrite");
    }

    #[test]
    fn opt_in_takes_a_labelled_namespace() {
        let cluster = Cluster { namespaces: HashMap::from([("shop".into(), true)]), ..Default::default() };
        assert_eq!(in_cluster(ScopeMode::OptIn, cluster).decide(&signal("shop", "Deployment", "web")), None);
    }

    #[test]
    fn the_workload_label_beats_the_namespace_label_both_ways_in_both_modes() {
        for mode in [ScopeMode::OptIn, ScopeMode::OptOut] {
            let cluster = Cluster {
                workloads: HashMap::from([("web".into(), false), ("db".into(), true)]),
                namespaces: HashMap::from([("shop".into(), true), ("infra".into(), false)]),
            };
            let scope = in_cluster(mode, cluster);
            let out = scope.decide(&signal("shop", "Deployment", "web")).expect("the workload said no");
            assert_eq!(out.decided_by, DecidedBy::Workload, "{mode:?}");
            assert_eq!(out.hint, "kubectl label deployment/web -n shop tidegate.dev/remediate=true --overwrite");
            assert_eq!(scope.decide(&signal("infra", "StatefulSet", "db")), None, "{mode:?}: the workload said yes");
            let out = scope.decide(&signal("infra", "StatefulSet", "cache")).expect("the namespace said no");
            assert_eq!(out.decided_by, DecidedBy::Namespace, "{mode:?}: an unlabelled workload follows its namespace");
            assert_eq!(scope.decide(&signal("shop", "StatefulSet", "cache")), None, "{mode:?}");
        }
    }

    #[test]
    fn opt_out_takes_everything_but_what_is_labelled_false() {
        let cluster = Cluster { namespaces: HashMap::from([("batch".into(), false)]), ..Default::default() };
        let scope = in_cluster(ScopeMode::OptOut, cluster);
        assert_eq!(scope.decide(&signal("shop", "Deployment", "web")), None);
        let out = scope.decide(&signal("batch", "CronJob", "report")).expect("namespace opted out");
        assert_eq!(out.decided_by, DecidedBy::Namespace);
        assert_eq!(out.hint, "kubectl label cronjob/report -n batch tidegate.dev/remediate=true --overwrite");
    }

    #[test]
    fn outside_a_cluster_the_namespace_list_decides_and_the_hint_names_it() {
        let opt_in = Scope::new(&config(ScopeMode::OptIn, &["shop"]), None);
        assert_eq!(opt_in.decide(&signal("shop", "Deployment", "web")), None);
        let out = opt_in.decide(&signal("batch", "Deployment", "x")).expect("not listed");
        assert_eq!(out.hint, "add batch to scope.namespaces in tidegate's configuration");
        let opt_out = Scope::new(&config(ScopeMode::OptOut, &["batch"]), None);
        assert_eq!(opt_out.decide(&signal("shop", "Deployment", "web")), None);
        let out = opt_out.decide(&signal("batch", "Deployment", "x")).expect("listed out");
        assert_eq!(
            (out.decided_by, out.hint.as_str()),
            (DecidedBy::Config, "remove batch from scope.namespaces in tidegate's configuration")
        );
    }

    #[test]
    fn a_namespace_label_overrides_the_list() {
        let cluster = Cluster { namespaces: HashMap::from([("batch".into(), true)]), ..Default::default() };
        let scope = Scope::new(&config(ScopeMode::OptOut, &["batch"]), Some(Arc::new(cluster)));
        assert_eq!(scope.decide(&signal("batch", "Deployment", "x")), None);
    }

    #[test]
    fn another_clusters_namespace_is_decided_by_the_list_not_the_local_labels() {
        let cluster = Cluster { namespaces: HashMap::from([("shop".into(), true)]), ..Default::default() };
        let identity = IdentityConfig { local_cluster: Some("eu-1".into()), ..Default::default() };
        let scope = in_cluster(ScopeMode::OptIn, cluster).local_to(&identity);
        let mut local = signal("shop", "Deployment", "web");
        local.target.cluster = "eu-1".into();
        assert_eq!(scope.decide(&local), None, "the local namespace is labelled in");
        let mut remote = signal("shop", "Deployment", "web");
        remote.target.cluster = "us-1".into();
        let out = scope.decide(&remote).expect("us-1's shop is not the labelled one");
        assert_eq!(
            (out.decided_by, out.hint.as_str()),
            (DecidedBy::Default, "add shop to scope.namespaces in tidegate's configuration")
        );
    }

    #[test]
    fn cluster_scoped_targets_follow_scope_cluster_scoped_under_opt_in() {
        let node = signal("", "Node", "node-1");
        let mut c = config(ScopeMode::OptIn, &[]);
        assert!(Scope::new(&c, None).decide(&node).is_some());
        c.cluster_scoped = true;
        assert_eq!(Scope::new(&c, None).decide(&node), None);
        assert_eq!(Scope::new(&config(ScopeMode::OptOut, &[]), None).decide(&node), None);
    }

    /// A cluster whose Deployment `web` (in `shop`, labelled in) is relabelled
    /// while the pipeline runs, and whose pod `web-1` the owner chain attributes to it.
    struct Relabelled(std::sync::Mutex<Option<bool>>);

    impl RemediateLabels for Relabelled {
        fn workload(&self, target: &TargetResource) -> Option<bool> {
            (target.kind == "Deployment" && target.name == "web").then(|| *self.0.lock().unwrap()).flatten()
        }
        fn reads_workload(&self, kind: &str) -> bool {
            kind == "Deployment"
        }
        fn namespace(&self, namespace: &str) -> Option<bool> {
            (namespace == "shop").then_some(true)
        }
    }

    impl crate::workload::Owners for Relabelled {
        fn top<'a>(&'a self, target: &'a TargetResource) -> crate::state::BoxFuture<'a, Option<TargetResource>> {
            let web = TargetResource { kind: "Deployment".into(), name: "web".into(), ..target.clone() };
            Box::pin(async move { (target.name == "web-1").then_some(web) })
        }
    }

    #[tokio::test]
    async fn through_the_pipeline_a_pods_alert_follows_its_deployments_label_over_its_namespaces() {
        use crate::pipeline::{OutcomeStatus, Parts, Pipeline, Processed, Sender, Settings};
        for mode in [ScopeMode::OptIn, ScopeMode::OptOut] {
            let mut config = Settings::default();
            config.scope.mode = mode;
            let clock = crate::clock::Clock::manual(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30));
            let memory = crate::state::memory::MemoryConfig::default();
            let state =
                crate::state::memory::MemoryStore::new(&memory, config.dedup.window, &config.storm, clock.clone());
            let dir = tempfile::tempdir().unwrap();
            let sink = crate::sink::dir::DirSink::new(dir.path(), std::time::Duration::from_secs(7200)).unwrap();
            let cluster = Arc::new(Relabelled(Some(false).into()));
            let parts = Parts {
                state: Arc::new(state),
                sink: Arc::new(sink),
                owners: Some(cluster.clone()),
                namespace_labels: None,
                remediate_labels: Some(cluster.clone()),
                clock,
                metrics: Arc::new(crate::telemetry::Metrics::new()),
            };
            let pipeline = Pipeline::build(&config, parts);
            let crash =
                [crate::workload::pod_alert("KubePodCrashLooping", "web-1", crate::signal::SignalStatus::Firing)];
            let send = || async {
                match pipeline.process(&crash, &Sender { name: "test", label: None }).await.unwrap() {
                    Processed::Decided(outcomes) => outcomes.into_iter().next().unwrap(),
                    Processed::Limited { .. } => panic!("rate-limited"),
                }
            };
            let out = send().await;
            assert_eq!(out.status, OutcomeStatus::OutOfScope, "{mode:?}: the Deployment said no, its namespace yes");
            let hint = "kubectl label deployment/web -n shop tidegate.dev/remediate=true --overwrite";
            assert_eq!(out.hint.as_deref(), Some(hint));
            *cluster.0.lock().unwrap() = None;
            assert_eq!(send().await.status, OutcomeStatus::Created, "{mode:?}: unlabelled, the namespace decides");
            *cluster.0.lock().unwrap() = Some(false);
            assert_eq!(send().await.status, OutcomeStatus::OutOfScope, "{mode:?}: relabelled, no restart");
        }
    }

    #[test]
    fn only_true_and_false_are_label_values() {
        assert_eq!(remediate_value(Some("true")), Some(true));
        assert_eq!(remediate_value(Some("false")), Some(false));
        assert_eq!(remediate_value(Some("yes")), None);
        assert_eq!(remediate_value(None), None);
    }

    #[test]
    fn the_list_must_name_namespaces_and_needs_a_mode() {
        assert!(config(ScopeMode::OptIn, &["Not_A_Namespace"]).validate().is_err());
        assert!(config(ScopeMode::All, &["shop"]).validate().is_err());
        assert!(config(ScopeMode::OptIn, &["shop"]).validate().is_ok());
    }
}
