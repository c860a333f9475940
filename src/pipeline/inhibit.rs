//! Inhibition: while a source incident's request is open, the signals it explains
//! open no requests of their own.
//!
//! Rules are Alertmanager's `inhibit_rules` (`source_matchers`, `target_matchers`,
//! `equal`), applied to every source tidegate takes, not only to what passes
//! through an Alertmanager. When a signal matching a rule's source matchers opens
//! (or repeats on) its own request, it *holds* the rule's key for the values of the
//! `equal` labels: an entry in the state store, shared by every replica, that lives
//! as long as the source's incident (the dedup window after its last sighting). A
//! signal matching the rule's target matchers with the same `equal` values finds
//! the key held and is counted on the source's request (`status.inhibited`)
//! instead.
//!
//! As in Alertmanager, a signal matching both sides of a rule is never held back by
//! itself, nor by another signal that matches both sides: such a source holds a key
//! of its own ([`Side::Both`]) that only pure targets look up. A signal held back
//! opens nothing, so it never holds anything back in turn.
//!
//! A label a signal lacks is the empty value, as in Alertmanager; `alertname`,
//! `namespace` and `severity` fall back to the signal's own name, namespace and
//! severity for sources whose labels do not carry them (Kubernetes Events,
//! CloudEvents).
//!
//! This module only computes keys and matches: the pipeline asks the store and
//! counts. It never writes anything itself.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::matcher::{self, Matcher};
use crate::section::ConfigError;
use crate::signal::Signal;
use crate::state::InhibitKey;

/// One entry of `inhibit_rules`, as Alertmanager writes it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InhibitRuleConfig {
    /// Matchers (Alertmanager syntax, e.g. `alertname="KubeNodeNotReady"`) a
    /// signal must all match to hold targets back.
    pub source_matchers: Vec<String>,
    /// Matchers a signal must all match to be held back.
    pub target_matchers: Vec<String>,
    /// Labels whose values source and target must share (a label missing on
    /// both is shared, as in Alertmanager).
    #[serde(default)]
    pub equal: Vec<String>,
}

/// Validates `inhibit_rules`.
pub fn validate(rules: &[InhibitRuleConfig]) -> Result<(), ConfigError> {
    Rule::compile_all(rules).map(|_| ())
}

/// Which sides of a rule a source matched: part of its key, so that a target that
/// also matches the source side looks up only sources that do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    SourceOnly,
    Both,
}

/// A compiled rule.
#[derive(Clone, Debug)]
struct Rule {
    /// A digest of the rule's text: replicas with the same rules share keys,
    /// whatever order the rules are listed in.
    id: [u8; 16],
    source: Vec<Matcher>,
    target: Vec<Matcher>,
    equal: Vec<String>,
}

impl Rule {
    fn compile_all(rules: &[InhibitRuleConfig]) -> Result<Vec<Rule>, ConfigError> {
        rules.iter().enumerate().map(|(i, r)| Rule::compile(i, r)).collect()
    }

    fn compile(i: usize, rule: &InhibitRuleConfig) -> Result<Rule, ConfigError> {
        let parse = |what: &str, list: &[String]| -> Result<Vec<Matcher>, ConfigError> {
            let mut out = Vec::new();
            for text in list {
                let parsed = matcher::parse_list(text)
                    .map_err(|e| ConfigError::invalid("inhibit_rules", format!("rule {i}: {what}: {e}")))?;
                out.extend(parsed);
            }
            if out.is_empty() {
                // An empty side would match every signal: a rule that holds
                // everything back is never what was meant.
                return Err(ConfigError::invalid("inhibit_rules", format!("rule {i}: {what} must not be empty")));
            }
            Ok(out)
        };
        let source = parse("source_matchers", &rule.source_matchers)?;
        let target = parse("target_matchers", &rule.target_matchers)?;
        if let Some(bad) = rule.equal.iter().find(|l| !matcher::is_label_name(l)) {
            return Err(ConfigError::invalid("inhibit_rules", format!("rule {i}: equal: {bad:?} is not a label name")));
        }
        let mut h = Sha256::new();
        for part in [&rule.source_matchers, &rule.target_matchers, &rule.equal] {
            h.update((part.len() as u32).to_be_bytes());
            for text in part {
                h.update((text.len() as u32).to_be_bytes());
                h.update(text.as_bytes());
            }
        }
        let id = h.finalize()[..16].try_into().expect("16 of 32");
        Ok(Rule { id, source, target, equal: rule.equal.clone() })
    }

    /// The key of this rule's hold for `signal`'s `equal` values.
    fn key(&self, signal: &Signal<'_>, side: Side) -> InhibitKey {
        let mut h = Sha256::new();
        h.update(self.id);
        h.update([side as u8]);
        for label in &self.equal {
            let value = label_of(signal, label).unwrap_or("");
            h.update((value.len() as u32).to_be_bytes());
            h.update(value.as_bytes());
        }
        // Holds never cross clusters, whatever `equal` lists: a node not ready in
        // one cluster explains nothing in another. A signal that names no cluster
        // keeps the key it always had.
        let cluster = &signal.target.cluster;
        if !cluster.is_empty() {
            h.update([u8::MAX]);
            h.update((cluster.len() as u32).to_be_bytes());
            h.update(cluster.as_bytes());
        }
        h.finalize()[..16].try_into().expect("16 of 32")
    }
}

/// A label of `signal` as rules see it.
fn label_of<'s>(signal: &'s Signal<'_>, name: &str) -> Option<&'s str> {
    signal.labels.get(name).or(match name {
        "alertname" => Some(signal.name.as_ref()),
        "namespace" => Some(signal.namespace.as_ref()),
        "severity" => Some(signal.severity.as_ref()),
        _ => None,
    })
}

fn matches(matchers: &[Matcher], signal: &Signal<'_>) -> bool {
    matcher::all_match(matchers, |name| label_of(signal, name))
}

/// The configured rules.
#[derive(Clone, Debug, Default)]
pub struct Inhibition {
    rules: Vec<Rule>,
}

impl Inhibition {
    /// The rules `inhibit_rules` lists (validated at load).
    pub fn new(rules: &[InhibitRuleConfig]) -> Result<Self, ConfigError> {
        Ok(Inhibition { rules: Rule::compile_all(rules)? })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// The keys whose holder would hold `signal` back: for each rule whose target
    /// side it matches, sources of the rule's source side only, and unless it also
    /// matches the source side, sources of both sides too.
    pub fn target_keys(&self, signal: &Signal<'_>, out: &mut Vec<InhibitKey>) {
        for rule in self.rules.iter().filter(|r| matches(&r.target, signal)) {
            out.push(rule.key(signal, Side::SourceOnly));
            if !matches(&rule.source, signal) {
                out.push(rule.key(signal, Side::Both));
            }
        }
    }

    /// The keys `signal` holds while its own request is open: one per rule whose
    /// source side it matches.
    pub fn source_keys(&self, signal: &Signal<'_>, out: &mut Vec<InhibitKey>) {
        for rule in self.rules.iter().filter(|r| matches(&r.source, signal)) {
            let side = if matches(&rule.target, signal) { Side::Both } else { Side::SourceOnly };
            out.push(rule.key(signal, side));
        }
    }
}

/// Rules a Kubernetes user needs most, as `docs/safety.md` and the README
/// show them (none is on by default): a node that is not ready holds back the
/// alerts of pods on it, and a critical alert its warning of the same name and
/// namespace, as kube-prometheus-stack's Alertmanager does.
pub fn kubernetes_examples() -> Vec<InhibitRuleConfig> {
    let rule = |source: &[&str], target: &[&str], equal: &[&str]| InhibitRuleConfig {
        source_matchers: source.iter().map(|s| s.to_string()).collect(),
        target_matchers: target.iter().map(|s| s.to_string()).collect(),
        equal: equal.iter().map(|s| s.to_string()).collect(),
    };
    vec![
        rule(&[r#"alertname="KubeNodeNotReady""#], &[r#"alertname=~"KubePod.*|KubeContainer.*""#], &["node"]),
        rule(&[r#"severity="critical""#], &[r#"severity="warning""#], &["alertname", "namespace"]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::TargetResource;

    fn signal(name: &str, labels: &[(&str, &str)]) -> Signal<'static> {
        let target = TargetResource {
            kind: "Pod".into(),
            name: name.to_lowercase(),
            namespace: "shop".into(),
            cluster: String::new(),
        };
        crate::pipeline::held::test_signal(name, "shop", target, labels)
    }

    fn keys(f: impl Fn(&mut Vec<InhibitKey>)) -> Vec<InhibitKey> {
        let mut out = Vec::new();
        f(&mut out);
        out
    }

    #[test]
    fn a_node_holds_back_the_pods_on_it_and_only_those() {
        let rules = Inhibition::new(&kubernetes_examples()).unwrap();
        let node = signal("KubeNodeNotReady", &[("node", "n1"), ("severity", "warning")]);
        let held = keys(|out| rules.source_keys(&node, out));
        assert_eq!(held.len(), 1, "the node rule's source; a warning is no critical source");
        let on_node = signal("KubePodCrashLooping", &[("node", "n1"), ("pod", "web-1")]);
        let elsewhere = signal("KubePodCrashLooping", &[("node", "n2"), ("pod", "web-2")]);
        assert!(keys(|out| rules.target_keys(&on_node, out)).contains(&held[0]));
        assert!(!keys(|out| rules.target_keys(&elsewhere, out)).contains(&held[0]));
    }

    #[test]
    fn a_source_holds_back_targets_in_its_own_cluster_only() {
        let rules = Inhibition::new(&kubernetes_examples()).unwrap();
        let in_cluster = |name: &str, labels: &[(&str, &str)], cluster: &str| {
            let mut s = signal(name, labels);
            s.target.cluster = cluster.into();
            s
        };
        let node = in_cluster("KubeNodeNotReady", &[("node", "n1")], "eu-1");
        let held = keys(|out| rules.source_keys(&node, out));
        let same = in_cluster("KubePodCrashLooping", &[("node", "n1")], "eu-1");
        let other = in_cluster("KubePodCrashLooping", &[("node", "n1")], "us-1");
        let unplaced = in_cluster("KubePodCrashLooping", &[("node", "n1")], "");
        assert!(keys(|out| rules.target_keys(&same, out)).contains(&held[0]));
        assert!(!keys(|out| rules.target_keys(&other, out)).contains(&held[0]), "another cluster's n1");
        assert!(!keys(|out| rules.target_keys(&unplaced, out)).contains(&held[0]), "a signal naming no cluster");
    }

    #[test]
    fn critical_holds_back_warning_of_the_same_alert_and_namespace() {
        let rules = Inhibition::new(&kubernetes_examples()).unwrap();
        let critical = signal("KubeQuotaExceeded", &[("severity", "critical")]);
        let held = keys(|out| rules.source_keys(&critical, out));
        let warning = signal("KubeQuotaExceeded", &[("severity", "warning")]);
        let other = signal("KubeQuotaAlmostFull", &[("severity", "warning")]);
        assert!(keys(|out| rules.target_keys(&warning, out)).contains(&held[0]));
        assert!(!keys(|out| rules.target_keys(&other, out)).contains(&held[0]), "alertname differs");
    }

    #[test]
    fn a_signal_matching_both_sides_is_held_back_by_neither_itself_nor_its_like() {
        let rule = InhibitRuleConfig {
            source_matchers: vec![r#"team="infra""#.into()],
            target_matchers: vec![r#"team=~"infra|shop""#.into()],
            equal: vec!["node".into()],
        };
        let rules = Inhibition::new(&[rule]).unwrap();
        let both = signal("DiskFull", &[("team", "infra"), ("node", "n1")]);
        let other_both = signal("DiskSlow", &[("team", "infra"), ("node", "n1")]);
        let target_only = signal("Latency", &[("team", "shop"), ("node", "n1")]);
        let held = keys(|out| rules.source_keys(&both, out));
        assert!(!keys(|out| rules.target_keys(&both, out)).contains(&held[0]), "not by itself");
        assert!(!keys(|out| rules.target_keys(&other_both, out)).contains(&held[0]), "not by its like");
        assert!(keys(|out| rules.target_keys(&target_only, out)).contains(&held[0]), "a pure target is");
    }

    #[test]
    fn a_missing_equal_label_is_the_empty_value_on_both_sides() {
        let rules = Inhibition::new(&kubernetes_examples()).unwrap();
        let node = signal("KubeNodeNotReady", &[]);
        let pod = signal("KubePodNotReady", &[]);
        let held = keys(|out| rules.source_keys(&node, out));
        assert!(keys(|out| rules.target_keys(&pod, out)).contains(&held[0]));
    }

    #[test]
    fn rules_share_keys_across_orderings_and_refuse_empty_sides_and_bad_matchers() {
        let mut reversed = kubernetes_examples();
        reversed.reverse();
        let (a, b) = (Inhibition::new(&kubernetes_examples()).unwrap(), Inhibition::new(&reversed).unwrap());
        let node = signal("KubeNodeNotReady", &[("node", "n1")]);
        let (mut ka, mut kb) = (keys(|o| a.source_keys(&node, o)), keys(|o| b.source_keys(&node, o)));
        ka.sort();
        kb.sort();
        assert_eq!(ka, kb);
        let empty = InhibitRuleConfig { source_matchers: vec![], target_matchers: vec!["a=b".into()], equal: vec![] };
        assert!(validate(&[empty]).unwrap_err().to_string().contains("source_matchers must not be empty"));
        let bad = InhibitRuleConfig {
            source_matchers: vec!["a=~\"(\"".into()],
            target_matchers: vec!["a=b".into()],
            equal: vec![],
        };
        assert!(validate(&[bad]).is_err());
        let bad_label = InhibitRuleConfig {
            source_matchers: vec!["a=b".into()],
            target_matchers: vec!["a=c".into()],
            equal: vec!["no-dash".into()],
        };
        assert!(validate(&[bad_label]).is_err());
    }
}
