//! Inhibition: while a source incident's request is open, the signals it explains
//! open no requests of their own.
//!
//! Rules are Alertmanager's `inhibit_rules` (`source_matchers`, `target_matchers`,
//! `equal`), applied to every source tidegate takes, not only to what passes
//! through an Alertmanager. When a signal matching a rule's source matchers opens
//! (or repeats on) its own request, it *holds* the rule's key for the values of the
//! `equal` labels: an entry in the state store, shared by every replica, that lives
//! as long as the source's incident (the dedup window after its last sighting), or
//! until the source resolves. A signal matching the rule's target matchers with the
//! same `equal` values finds the key held and is counted on the source's request
//! (`status.inhibited`) instead.
//!
//! Each source also holds its rule's *marker*, a key of the rule alone: a target
//! first asks which of its rules are marked, and computes and looks up its own keys
//! only for those. In the usual state, no source open anywhere, a signal costs its
//! match against the rules and one small read per batch.
//!
//! Matching is not a scan of every rule: each side of the rules is indexed by one
//! equality matcher (as silences are), so a signal checks the rules filed under its
//! own value of an indexed label, and the few with no equality matcher; rules that
//! repeat one side (fifty rules with one target side) check it once.
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

use std::collections::HashMap;

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

/// The side byte of a rule's marker key: neither side, so no hold's key is a marker.
const MARKER: u8 = 2;

/// A compiled rule.
#[derive(Clone, Debug)]
struct Rule {
    /// The hasher after the rule's id, a digest of its text (replicas with the
    /// same rules share keys, whatever order the rules are listed in): every key
    /// of the rule starts so.
    keyed: Sha256,
    /// The key every source of the rule also holds (see [`Inhibition::marker`]).
    marker: InhibitKey,
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
        let id: [u8; 16] = h.finalize()[..16].try_into().expect("16 of 32");
        let keyed = Sha256::new().chain_update(id);
        let marker = keyed.clone().chain_update([MARKER]).finalize()[..16].try_into().expect("16 of 32");
        Ok(Rule { keyed, marker, source, target, equal: rule.equal.clone() })
    }

    /// The key of this rule's hold for `signal`'s `equal` values.
    fn key(&self, signal: &Signal<'_>, side: Side) -> InhibitKey {
        let mut h = self.keyed.clone();
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

/// One side of every rule, found by an equality matcher rather than scanned: a
/// signal checks only the rules indexed under its own value of an indexed label,
/// and those with no equality matcher at all.
#[derive(Clone, Debug, Default)]
struct SideIndex {
    /// The distinct matcher lists of this side: rules that repeat one (fifty
    /// rules with one target side) check it once per signal.
    groups: Vec<Group>,
    /// Label name → value → the groups with that equality matcher (each group
    /// under one), sorted by label name so that every replica visits them alike.
    by_label: Vec<(String, HashMap<String, Vec<usize>>)>,
    /// Groups with no equality matcher: checked for every signal.
    unindexed: Vec<usize>,
}

#[derive(Clone, Debug)]
struct Group {
    matchers: Vec<Matcher>,
    /// Indices into the rules, ascending.
    rules: Vec<usize>,
}

impl SideIndex {
    fn build<'r>(sides: impl Iterator<Item = &'r [Matcher]>) -> Self {
        let mut index = SideIndex::default();
        for (rule, matchers) in sides.enumerate() {
            let mut sorted = matchers.to_vec();
            sorted.sort_by(|a, b| (a.name(), a.op().as_str(), a.value()).cmp(&(b.name(), b.op().as_str(), b.value())));
            sorted.dedup();
            if let Some(group) = index.groups.iter_mut().find(|g| g.matchers == sorted) {
                group.rules.push(rule);
                continue;
            }
            let group = index.groups.len();
            // A non-empty value is the rarer one: most signals lack most labels.
            let equal = || sorted.iter().filter_map(|m| Some((m.name(), m.equal_value()?)));
            match equal().find(|(_, v)| !v.is_empty()).or_else(|| equal().next()) {
                Some((name, value)) => {
                    let at = match index.by_label.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
                        Ok(at) => at,
                        Err(at) => {
                            index.by_label.insert(at, (name.to_string(), HashMap::new()));
                            at
                        }
                    };
                    index.by_label[at].1.entry(value.to_string()).or_default().push(group);
                }
                None => index.unindexed.push(group),
            }
            index.groups.push(Group { matchers: sorted, rules: vec![rule] });
        }
        index
    }

    /// Calls `found` with every rule this side of which `signal` matches, each
    /// once, in no particular order.
    fn each_match(&self, signal: &Signal<'_>, mut found: impl FnMut(usize)) {
        let mut check = |group: usize| {
            let group = &self.groups[group];
            if matches(&group.matchers, signal) {
                group.rules.iter().for_each(|&r| found(r));
            }
        };
        self.unindexed.iter().for_each(|&g| check(g));
        for (name, values) in &self.by_label {
            // A label the signal lacks is the empty value, which `name=""` matches.
            if let Some(groups) = values.get(label_of(signal, name).unwrap_or("")) {
                groups.iter().for_each(|&g| check(g));
            }
        }
    }
}

/// A rule whose target side a signal matched: what it asks the store about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Targeted {
    rule: usize,
    /// The signal matches the rule's source side too: only sources that do not
    /// hold it back.
    also_source: bool,
}

impl Targeted {
    /// The rule, as an index into the configured rules.
    pub fn rule(&self) -> usize {
        self.rule
    }
}

/// The configured rules, indexed by side.
#[derive(Clone, Debug, Default)]
pub struct Inhibition {
    rules: Vec<Rule>,
    targets: SideIndex,
    sources: SideIndex,
}

impl Inhibition {
    /// The rules `inhibit_rules` lists (validated at load).
    pub fn new(rules: &[InhibitRuleConfig]) -> Result<Self, ConfigError> {
        let rules = Rule::compile_all(rules)?;
        let targets = SideIndex::build(rules.iter().map(|r| r.target.as_slice()));
        let sources = SideIndex::build(rules.iter().map(|r| r.source.as_slice()));
        Ok(Inhibition { rules, targets, sources })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// The rules whose target side `signal` matches, appended to `out` in the
    /// order of the rules.
    pub fn targeted(&self, signal: &Signal<'_>, out: &mut Vec<Targeted>) {
        let start = out.len();
        self.targets.each_match(signal, |rule| out.push(Targeted { rule, also_source: false }));
        if out.len() == start {
            return;
        }
        // Rules whose source side it matches too: few (usually none), so a list.
        let mut sources = Vec::new();
        self.sources.each_match(signal, |rule| sources.push(rule));
        let found = &mut out[start..];
        for t in found.iter_mut() {
            t.also_source = sources.contains(&t.rule);
        }
        found.sort_unstable();
    }

    /// The key every source of `rule` holds besides its own, as long as its own:
    /// while no source of a rule is held, the rule's targets need not compute and
    /// look up their keys, one per rule and side, and one read of the rules'
    /// markers tells.
    pub fn marker(&self, rule: usize) -> InhibitKey {
        self.rules[rule].marker
    }

    /// The keys whose holder would hold `signal` back by the rules it is
    /// `targeted` by: for each, sources of the rule's source side only, and unless
    /// it also matches the source side, sources of both sides too.
    pub fn target_keys_of(&self, signal: &Signal<'_>, targeted: &[Targeted], out: &mut Vec<InhibitKey>) {
        for t in targeted {
            let rule = &self.rules[t.rule];
            out.push(rule.key(signal, Side::SourceOnly));
            if !t.also_source {
                out.push(rule.key(signal, Side::Both));
            }
        }
    }

    /// The keys whose holder would hold `signal` back, by every rule whose target
    /// side it matches.
    pub fn target_keys(&self, signal: &Signal<'_>, out: &mut Vec<InhibitKey>) {
        let mut targeted = Vec::new();
        self.targeted(signal, &mut targeted);
        self.target_keys_of(signal, &targeted, out);
    }

    /// The keys `signal` holds while its own request is open: one per rule whose
    /// source side it matches, in the order of the rules, each with the rule.
    pub fn source_keys(&self, signal: &Signal<'_>, out: &mut Vec<(usize, InhibitKey)>) {
        let start = out.len();
        self.sources.each_match(signal, |rule| out.push((rule, [0; 16])));
        let found = &mut out[start..];
        found.sort_unstable_by_key(|(rule, _)| *rule);
        for (rule, key) in found.iter_mut() {
            let rule = &self.rules[*rule];
            let side = if matches(&rule.target, signal) { Side::Both } else { Side::SourceOnly };
            *key = rule.key(signal, side);
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
        crate::signal::test_signal(name, "shop", target, labels)
    }

    fn sources(rules: &Inhibition, signal: &Signal<'_>) -> Vec<InhibitKey> {
        let mut out = Vec::new();
        rules.source_keys(signal, &mut out);
        out.into_iter().map(|(_, key)| key).collect()
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
        let held = sources(&rules, &node);
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
        let held = sources(&rules, &node);
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
        let held = sources(&rules, &critical);
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
        let held = sources(&rules, &both);
        assert!(!keys(|out| rules.target_keys(&both, out)).contains(&held[0]), "not by itself");
        assert!(!keys(|out| rules.target_keys(&other_both, out)).contains(&held[0]), "not by its like");
        assert!(keys(|out| rules.target_keys(&target_only, out)).contains(&held[0]), "a pure target is");
    }

    #[test]
    fn a_missing_equal_label_is_the_empty_value_on_both_sides() {
        let rules = Inhibition::new(&kubernetes_examples()).unwrap();
        let node = signal("KubeNodeNotReady", &[]);
        let pod = signal("KubePodNotReady", &[]);
        let held = sources(&rules, &node);
        assert!(keys(|out| rules.target_keys(&pod, out)).contains(&held[0]));
    }

    #[test]
    fn rules_share_keys_across_orderings_and_refuse_empty_sides_and_bad_matchers() {
        let mut reversed = kubernetes_examples();
        reversed.reverse();
        let (a, b) = (Inhibition::new(&kubernetes_examples()).unwrap(), Inhibition::new(&reversed).unwrap());
        let node = signal("KubeNodeNotReady", &[("node", "n1")]);
        let (mut ka, mut kb) = (sources(&a, &node), sources(&b, &node));
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

    /// What a scan of every rule answers, in the order of the rules: what the
    /// index must answer.
    fn scanned(rules: &Inhibition, signal: &Signal<'_>) -> (Vec<InhibitKey>, Vec<InhibitKey>) {
        let (mut targets, mut sources) = (Vec::new(), Vec::new());
        for rule in &rules.rules {
            let (target, source) = (matches(&rule.target, signal), matches(&rule.source, signal));
            if target {
                targets.push(rule.key(signal, Side::SourceOnly));
                if !source {
                    targets.push(rule.key(signal, Side::Both));
                }
            }
            if source {
                sources.push(rule.key(signal, if target { Side::Both } else { Side::SourceOnly }));
            }
        }
        (targets, sources)
    }

    #[test]
    fn fifty_rules_with_one_target_side_check_it_once_and_their_sources_are_indexed() {
        // The ingest bench's rules: every alert matches the target side, none the source.
        let config: Vec<InhibitRuleConfig> = (0..50)
            .map(|i| InhibitRuleConfig {
                source_matchers: vec![format!("alertname=\"NodeDown{i}\"")],
                target_matchers: vec!["alertname=~\".+\"".into()],
                equal: vec!["namespace".into()],
            })
            .collect();
        let rules = Inhibition::new(&config).unwrap();
        assert_eq!(rules.targets.groups.len(), 1, "one target side, checked once");
        assert_eq!(rules.targets.groups[0].rules, (0..50).collect::<Vec<_>>());
        assert_eq!(rules.sources.unindexed.len(), 0);
        assert_eq!(rules.sources.by_label.len(), 1);
        assert_eq!(rules.sources.by_label[0].1.len(), 50, "each source side under its alertname");
        let pod = signal("KubePodCrashLooping", &[("pod", "web-1")]);
        let mut targeted = Vec::new();
        rules.targeted(&pod, &mut targeted);
        assert_eq!(targeted.len(), 50);
        assert!(targeted.iter().all(|t| !t.also_source));
        let node = signal("NodeDown7", &[]);
        assert_eq!(sources(&rules, &node), scanned(&rules, &node).1);
        assert_eq!(sources(&rules, &node).len(), 1);
    }

    #[test]
    fn an_equality_on_the_empty_value_finds_signals_that_lack_the_label() {
        let rule = InhibitRuleConfig {
            source_matchers: vec![r#"alertname="NodeDown""#.into()],
            target_matchers: vec![r#"team="""#.into(), r#"alertname=~"Pod.*""#.into()],
            equal: vec![],
        };
        let rules = Inhibition::new(&[rule]).unwrap();
        let unowned = signal("PodDown", &[]);
        let owned = signal("PodDown", &[("team", "shop")]);
        assert_eq!(keys(|out| rules.target_keys(&unowned, out)).len(), 2);
        assert!(keys(|out| rules.target_keys(&owned, out)).is_empty());
    }

    #[test]
    fn markers_are_one_per_rule_and_never_a_holds_key() {
        let rules = Inhibition::new(&kubernetes_examples()).unwrap();
        assert_ne!(rules.marker(0), rules.marker(1));
        let node = signal("KubeNodeNotReady", &[]);
        let pod = signal("KubePodNotReady", &[]);
        let every = [sources(&rules, &node), keys(|out| rules.target_keys(&pod, out))].concat();
        assert!(!every.contains(&rules.marker(0)) && !every.contains(&rules.marker(1)));
    }

    use proptest::prelude::*;

    const NAMES: [&str; 6] = ["alertname", "namespace", "severity", "node", "pod", "team"];
    const VALUES: [&str; 4] = ["", "a", "b", "c"];
    const PATTERNS: [&str; 5] = ["a|b", ".*", ".+", "b.*", ""];

    fn a_matcher() -> impl Strategy<Value = String> {
        (0..NAMES.len(), 0..4usize, 0..VALUES.len(), 0..PATTERNS.len()).prop_map(|(n, op, v, p)| {
            let (op, value) = match op {
                0 => ("=", VALUES[v]),
                1 => ("!=", VALUES[v]),
                2 => ("=~", PATTERNS[p]),
                _ => ("!~", PATTERNS[p]),
            };
            format!("{}{op}\"{value}\"", NAMES[n])
        })
    }

    fn a_rule() -> impl Strategy<Value = InhibitRuleConfig> {
        (
            prop::collection::vec(a_matcher(), 1..4),
            prop::collection::vec(a_matcher(), 1..4),
            prop::collection::vec(prop::sample::select(&NAMES[..]), 0..3),
        )
            .prop_map(|(source_matchers, target_matchers, equal)| InhibitRuleConfig {
                source_matchers,
                target_matchers,
                equal: equal.into_iter().map(String::from).collect(),
            })
    }

    /// A signal: its name, namespace and severity, and labels (which may repeat
    /// or contradict those three, as payloads do).
    fn a_signal() -> impl Strategy<Value = Signal<'static>> {
        (
            0..VALUES.len(),
            0..VALUES.len(),
            0..VALUES.len(),
            prop::collection::vec((0..NAMES.len(), 0..VALUES.len()), 0..5),
            prop::bool::ANY,
        )
            .prop_map(|(name, namespace, severity, labels, clustered)| {
                let labels: Vec<(&str, &str)> = labels.into_iter().map(|(n, v)| (NAMES[n], VALUES[v])).collect();
                let mut s = signal(VALUES[name], &labels);
                s.namespace = VALUES[namespace].into();
                s.severity = VALUES[severity].into();
                if clustered {
                    s.target.cluster = "eu-1".into();
                }
                s
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The index answers exactly what a scan of every rule would, in the same
        /// order, on both sides; and through the markers' path (every rule marked).
        #[test]
        fn the_index_answers_what_a_scan_would(
            rules in prop::collection::vec(a_rule(), 1..12),
            signals in prop::collection::vec(a_signal(), 1..8),
        ) {
            let rules = Inhibition::new(&rules).unwrap();
            for signal in &signals {
                let (targets, sources_) = scanned(&rules, signal);
                prop_assert_eq!(&keys(|out| rules.target_keys(signal, out)), &targets);
                prop_assert_eq!(&sources(&rules, signal), &sources_);
                let mut targeted = Vec::new();
                rules.targeted(signal, &mut targeted);
                let mut via_markers = Vec::new();
                rules.target_keys_of(signal, &targeted, &mut via_markers);
                prop_assert_eq!(via_markers, targets);
            }
        }
    }
}
