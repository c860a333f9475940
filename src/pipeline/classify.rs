//! Environment and priority of a signal.
//!
//! Environment is the configured default; priority follows severity. The storms
//! issue replaces this with namespace labels, alias tables and a priority rule
//! table, behind this same function.

use crate::remediation::Classification;
use crate::signal::Signal;

#[derive(Clone, Debug)]
pub struct Classifier {
    default_environment: String,
}

impl Classifier {
    pub fn new(default_environment: impl Into<String>) -> Self {
        Classifier {
            default_environment: default_environment.into(),
        }
    }

    pub fn classify(&self, signal: &Signal) -> Classification {
        let priority = match signal.severity.to_ascii_lowercase().as_str() {
            "critical" | "page" => "P1",
            "error" | "high" | "warning" => "P2",
            _ => "P3",
        };
        Classification {
            environment: self.default_environment.clone(),
            priority: priority.to_string(),
        }
    }
}
