//! A `tidegate doctor` check's result, and the report of many: the vocabulary
//! every component's checks are written in.
//!
//! The checks themselves live beside what they look at (the listener in
//! [`crate::doctor`], Redis in `state::redis::doctor`, Kubernetes in
//! `sink::kube::doctor`), so a component brings its own. This module only
//! describes results; it runs nothing and imports nothing from the crate.

use std::fmt;

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Worth knowing, nothing to fix (what a Redis restart loses, say).
    Info,
    /// Works, but a risk or a setting worth changing.
    Warn,
    /// Will not work, or can lose incidents: `tidegate doctor` exits non-zero.
    Fail,
    /// Does not apply to this configuration, or could not run (what it needs failed).
    Skip,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Outcome::Ok => "ok",
            Outcome::Info => "info",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "skip",
        })
    }
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked, short: `redis policy`.
    pub name: String,
    pub outcome: Outcome,
    /// What was seen.
    pub detail: String,
    /// What to do about it; set on every warning and failure.
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { name: name.into(), outcome: Outcome::Ok, detail: detail.into(), fix: None }
    }

    pub fn info(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { name: name.into(), outcome: Outcome::Info, detail: detail.into(), fix: None }
    }

    pub fn skip(name: impl Into<String>, why: impl Into<String>) -> Check {
        Check { name: name.into(), outcome: Outcome::Skip, detail: why.into(), fix: None }
    }

    pub fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name: name.into(), outcome: Outcome::Warn, detail: detail.into(), fix: Some(fix.into()) }
    }

    pub fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name: name.into(), outcome: Outcome::Fail, detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// Every check's result, in order; `Display` prints one line per check.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether any check failed: the exit code is then non-zero.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.outcome == Outcome::Fail)
    }

    /// The check named `name`.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            write!(f, "{:<4}  {:<width$}  {}", c.outcome, c.name, c.detail)?;
            if let Some(fix) = &c.fix {
                write!(f, " | fix: {fix}")?;
            }
            writeln!(f)?;
        }
        let count = |o| self.checks.iter().filter(|c| c.outcome == o).count();
        let (failed, warned) = (count(Outcome::Fail), count(Outcome::Warn));
        writeln!(f, "{} checks: {failed} failed, {warned} warned, {} skipped", self.checks.len(), count(Outcome::Skip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_prints_one_line_per_check_and_a_fix_for_each_failure() {
        let report = Report {
            checks: vec![
                Check::ok("config", "valid"),
                Check::fail("listener", "cannot bind 127.0.0.1:80", "use a port above 1023"),
                Check::skip("redis", "state is memory"),
            ],
        };
        let printed = report.to_string();
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines.len(), 4, "{printed}");
        assert_eq!(lines[0], "ok    config    valid");
        assert_eq!(lines[1], "FAIL  listener  cannot bind 127.0.0.1:80 | fix: use a port above 1023");
        assert_eq!(lines[2], "skip  redis     state is memory");
        assert_eq!(lines[3], "3 checks: 1 failed, 0 warned, 1 skipped");
    }
}
