//! Environment and priority of a signal.
//!
//! Environment: the namespace's `environment` label (from a watch-fed cache, in
//! Kubernetes mode), then the configured namespace map, then the default; every
//! value normalised through the alias table so that `prod` and `production` match
//! the same rules. Priority: the first rule of the configured table whose
//! severity, environment and label matchers all match. Never any I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::remediation::Classification;
use crate::section::ConfigError;
use crate::signal::Signal;

/// `classify`: how a signal's environment and priority are decided.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifyConfig {
    /// Environment recorded when nothing else decides it.
    pub default_environment: String,
    /// Namespace → environment, used when the namespace has no `environment` label.
    pub namespaces: std::collections::BTreeMap<String, String>,
    /// Environment spellings → canonical name, so `prod` and `production` match the
    /// same rules.
    pub aliases: std::collections::BTreeMap<String, String>,
    /// Priority rules, first match wins.
    pub priorities: Vec<PriorityRule>,
}

/// One row of the priority table. Empty matchers match everything.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriorityRule {
    /// Shown on the request as `spec.priorityRule` and an annotation.
    pub name: String,
    /// Severities this rule applies to (case-insensitive); absent: any.
    #[serde(default)]
    pub severity: Option<Vec<String>>,
    /// Environments (after aliasing); absent: any.
    #[serde(default)]
    pub environment: Option<Vec<String>>,
    /// Labels that must all be present with these values.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `P0` (most urgent) to `P3`.
    pub priority: String,
}

impl PriorityRule {
    fn new(name: &str, severity: &[&str], environment: &[&str], priority: &str) -> Self {
        let list = |v: &[&str]| (!v.is_empty()).then(|| v.iter().map(|s| s.to_string()).collect());
        PriorityRule {
            name: name.into(),
            severity: list(severity),
            environment: list(environment),
            labels: Default::default(),
            priority: priority.into(),
        }
    }

    /// Whether this rule matches anything at all.
    pub fn is_catch_all(&self) -> bool {
        self.severity.is_none() && self.environment.is_none() && self.labels.is_empty()
    }
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        let aliases = [
            ("prod", "production"),
            ("prd", "production"),
            ("stage", "staging"),
            ("stg", "staging"),
            ("dev", "development"),
        ];
        ClassifyConfig {
            default_environment: "unknown".into(),
            namespaces: Default::default(),
            aliases: aliases.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            priorities: vec![
                PriorityRule::new("critical-production", &["critical"], &["production"], "P0"),
                PriorityRule::new("critical", &["critical"], &[], "P1"),
                PriorityRule::new("warning-production", &["warning"], &["production"], "P1"),
                PriorityRule::new("warning", &["warning"], &[], "P2"),
                PriorityRule::new("default", &[], &[], "P3"),
            ],
        }
    }
}

impl ClassifyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.default_environment.trim().is_empty() {
            return Err(ConfigError::invalid("classify.default_environment", "must not be empty"));
        }
        let invalid = |reason: String| Err(ConfigError::invalid("classify.priorities", reason));
        let rules = &self.priorities;
        let mut names = std::collections::HashSet::new();
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("rule {i} ({:?})", rule.name);
            if rule.name.trim().is_empty() {
                return invalid(format!("rule {i}: name must not be empty"));
            }
            if !names.insert(rule.name.as_str()) {
                return invalid(format!("{at}: duplicate name"));
            }
            if !matches!(rule.priority.as_str(), "P0" | "P1" | "P2" | "P3") {
                return invalid(format!("{at}: priority must be one of P0, P1, P2, P3, got {:?}", rule.priority));
            }
            if rule.severity.as_ref().is_some_and(Vec::is_empty) || rule.environment.as_ref().is_some_and(Vec::is_empty)
            {
                return invalid(format!(
                    "{at}: an empty list matches nothing; leave the matcher out to match anything"
                ));
            }
            if rule.is_catch_all() && i + 1 < rules.len() {
                return invalid(format!(
                    "{at} matches everything, so the {} rule(s) after it can never match",
                    rules.len() - i - 1
                ));
            }
        }
        Ok(())
    }
}

pub use crate::workload::NamespaceLabels;

/// Name of the priority rule applied when no configured rule matches.
pub const FALLBACK_RULE: &str = "fallback";

#[derive(Clone)]
pub struct Classifier {
    default_environment: String,
    namespaces: BTreeMap<String, String>,
    aliases: BTreeMap<String, String>,
    rules: Vec<PriorityRule>,
    labels: Option<Arc<dyn NamespaceLabels>>,
}

impl Classifier {
    /// A classifier for a validated config.
    pub fn new(config: &ClassifyConfig) -> Self {
        let lower = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.to_ascii_lowercase())).collect()
        };
        Classifier {
            default_environment: config.default_environment.to_ascii_lowercase(),
            namespaces: config.namespaces.clone(),
            aliases: lower(&config.aliases),
            rules: config.priorities.clone(),
            labels: None,
        }
    }

    /// Consults `labels` first for each namespace's environment.
    pub fn with_namespace_labels(mut self, labels: Arc<dyn NamespaceLabels>) -> Self {
        self.labels = Some(labels);
        self
    }

    /// The canonical spelling of an environment.
    pub fn normalise(&self, environment: &str) -> String {
        let lower = environment.trim().to_ascii_lowercase();
        self.aliases.get(&lower).cloned().unwrap_or(lower)
    }

    pub fn environment(&self, namespace: &str) -> String {
        let raw = self
            .labels
            .as_ref()
            .and_then(|l| l.environment(namespace))
            .or_else(|| self.namespaces.get(namespace).cloned())
            .unwrap_or_else(|| self.default_environment.clone());
        self.normalise(&raw)
    }

    pub fn classify(&self, signal: &Signal) -> Classification {
        let environment = self.environment(&signal.namespace);
        let severity = signal.severity.to_ascii_lowercase();
        let matches = |rule: &PriorityRule| {
            rule.severity.as_ref().is_none_or(|s| s.iter().any(|s| s.eq_ignore_ascii_case(&severity)))
                && rule.environment.as_ref().is_none_or(|envs| envs.iter().any(|e| self.normalise(e) == environment))
                && rule.labels.iter().all(|(k, v)| signal.labels.get(k) == Some(v))
        };
        let (priority, rule) = match self.rules.iter().find(|r| matches(r)) {
            Some(rule) => (rule.priority.clone(), rule.name.clone()),
            None => ("P3".to_string(), FALLBACK_RULE.to_string()),
        };
        Classification { environment, priority, rule }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::TargetResource;

    fn signal(severity: &str, namespace: &str, labels: &[(&str, &str)]) -> Signal<'static> {
        let signal = crate::signal::test_signal("A", namespace, TargetResource::default(), labels);
        Signal { severity: severity.to_string().into(), ..signal }
    }

    struct Labels;
    impl NamespaceLabels for Labels {
        fn environment(&self, namespace: &str) -> Option<String> {
            (namespace == "labelled").then(|| "PRD".to_string())
        }
    }

    fn config() -> ClassifyConfig {
        let mut config = ClassifyConfig::default();
        config.namespaces.insert("shop".into(), "prod".into());
        config
    }

    #[test]
    fn environment_comes_from_labels_then_map_then_default_normalised() {
        let c = Classifier::new(&config()).with_namespace_labels(Arc::new(Labels));
        assert_eq!(c.environment("labelled"), "production");
        assert_eq!(c.environment("shop"), "production");
        assert_eq!(c.environment("elsewhere"), "unknown");
    }

    #[test]
    fn default_table_ranks_by_severity_and_environment() {
        let c = Classifier::new(&config());
        let class = c.classify(&signal("critical", "shop", &[]));
        assert_eq!((class.priority.as_str(), class.rule.as_str()), ("P0", "critical-production"));
        assert_eq!(c.classify(&signal("Critical", "dev", &[])).priority, "P1");
        assert_eq!(c.classify(&signal("warning", "shop", &[])).priority, "P1");
        assert_eq!(c.classify(&signal("warning", "dev", &[])).priority, "P2");
        let class = c.classify(&signal("info", "shop", &[]));
        assert_eq!((class.priority.as_str(), class.rule.as_str()), ("P3", "default"));
    }

    #[test]
    fn first_matching_rule_wins_and_label_matchers_must_all_match() {
        let mut config = config();
        config.priorities.insert(
            0,
            PriorityRule {
                name: "payments".into(),
                severity: None,
                environment: Some(vec!["production".into()]),
                labels: [("team".to_string(), "payments".to_string())].into(),
                priority: "P0".into(),
            },
        );
        let c = Classifier::new(&config);
        assert_eq!(c.classify(&signal("info", "shop", &[("team", "payments")])).rule, "payments");
        assert_eq!(c.classify(&signal("info", "shop", &[("team", "search")])).rule, "default");
    }
}
