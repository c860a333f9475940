//! `tidegate doctor`: checks a configuration against the real systems it names,
//! before a gateway goes live.
//!
//! Each check is a small function that looks at one thing (the listener, the sink
//! directory, Redis' memory settings, one RBAC grant…) and returns a [`Check`]: an
//! outcome, what it saw, and for every warning or failure how to fix it. The host's
//! checks are in [`host`]; every component brings its own from its section
//! (`state::Settings::doctor`, `sink::Settings::doctor`), so this module never
//! tells backends apart. A check that does not apply to the configuration (Redis
//! with `state: memory`, Kubernetes with a `dir:` sink) is reported as skipped,
//! never left out, so the output always says what was and was not looked at.
//!
//! Doctor reads; it never changes what it checks. The one exception is a probe file
//! it writes into the sink directory and removes at once, the only way to know the
//! directory is writable. It does not create a missing directory: it reports it.
//! Printing belongs to the caller (`main`), through [`Report`]'s `Display`.

pub mod host;

use std::sync::Arc;

use kube::Client;

use crate::capacity::Load;
pub use crate::check::{Check, Outcome, Report};
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::context::Context;
pub use crate::sink::dir::doctor::writable as sink_dir;
pub use crate::sink::kube::doctor::{crd, grant};
use crate::telemetry::Metrics;
pub use host::listener;

/// What the checks take besides the configuration.
#[derive(Clone, Default)]
pub struct Options {
    /// The load Redis must hold (`tidegate doctor --incidents`); unset, headroom is
    /// skipped.
    pub load: Option<Load>,
    /// The client to check Kubernetes with, instead of the in-cluster or kubeconfig
    /// one (`kube::Client::try_default`, as `serve` uses).
    pub kube_client: Option<Client>,
}

/// Names of the checks after `config`, in order, for a configuration that did not
/// load: each is then skipped.
const AFTER_CONFIG: &[&str] = &["listener", "redis", "sink dir", "kubernetes"];

/// The report of a configuration that did not load or validate: nothing else can
/// be checked.
pub fn invalid(error: &ConfigError) -> Report {
    let mut checks = vec![Check::fail(
        "config",
        error.to_string(),
        "correct that key in the file or the TIDEGATE_* variable named; `tidegate config` lists every key, its \
         variable and default",
    )];
    checks.extend(AFTER_CONFIG.iter().map(|name| Check::skip(*name, "needs a valid configuration")));
    Report { checks }
}

/// Runs every check that `config` calls for: the host's, then each component's.
pub async fn run(config: &Config, options: &Options) -> Report {
    if let Err(e) = config.validate() {
        return invalid(&e);
    }
    let ctx = Context::new(Clock::System, Arc::new(Metrics::new()))
        .with_kube_client(options.kube_client.clone())
        .with_load(options.load);
    let mut checks = vec![Check::ok("config", format!("valid; state {}, sink {}", config.state, config.sink))];
    if !config.deprecated.is_empty() {
        let fix = "spell them as `tidegate config` lists the keys; the old spellings are read for now";
        checks.push(Check::warn("deprecated keys", config.deprecated.join("; "), fix));
    }
    checks.push(listener(config.listen));
    checks.extend(config.state_settings().doctor(&ctx).await);
    checks.extend(config.sink_settings().doctor(&ctx).await);
    Report { checks }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_invalid_config_fails_naming_the_key_and_skips_the_rest() {
        let mut config = Config::default();
        config.dedup.window = Duration::from_millis(1500);
        let report = invalid(&config.validate().unwrap_err());
        let failed = report.get("config").unwrap();
        assert_eq!(failed.outcome, Outcome::Fail);
        assert!(failed.detail.starts_with("dedup.window:"), "{}", failed.detail);
        assert!(failed.fix.is_some());
        assert!(report.checks[1..].iter().all(|c| c.outcome == Outcome::Skip), "{report}");
        assert!(report.failed());
    }
}
