//! Command-line interface.
//!
//! The layers, from the bottom: defaults, the YAML config file, a `TIDEGATE_*`
//! variable for any key ([`Config::load`]), then the flags below, which are
//! shorthands for the keys set most often. A few flags also read the variable
//! names of earlier releases (`TIDEGATE_BODY_LIMIT`, `TIDEGATE_LOG`, …), which
//! therefore still win over the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::capacity::Load;
use crate::config::{parse_duration, Config, ConfigError, LogFormat, SinkTarget, StateBackend};
use crate::doctor::{self, Report};

#[derive(Debug, Parser)]
#[command(name = "tidegate", version, about = "Alert-ingestion gateway: one RemediationRequest per incident")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(Box<ServeArgs>),
    /// Print every configuration key with its environment variable, default and
    /// meaning, as a Markdown table; with `--defaults`, the default configuration
    /// as YAML.
    Config {
        #[arg(long)]
        defaults: bool,
    },
    /// Print the Redis `maxmemory` and the embedded store's memory a load needs,
    /// from the per-incident figures the benches measured.
    Capacity {
        /// Distinct incidents per `dedup.window`.
        #[arg(long)]
        incidents: u64,
        /// (namespace, alert name) pairs storming at once.
        #[arg(long, default_value_t = 100)]
        storm_scopes: u64,
        /// Distinct senders within a rate-limit period.
        #[arg(long, default_value_t = 100)]
        sources: u64,
    },
    /// Print the RemediationRequest CustomResourceDefinition as YAML.
    Crd,
    /// Check a configuration against the Redis, Kubernetes API and sink it names:
    /// one line per check, with a fix for each failure; exits 1 if any failed.
    Doctor(Box<DoctorArgs>),
}

#[derive(Debug, Args)]
#[command(after_help = "Every key of the config file can also be set with a TIDEGATE_* variable; \
`tidegate config` lists them with their defaults.")]
pub struct ServeArgs {
    /// YAML configuration file; flags and environment variables override it.
    #[arg(long, env = "TIDEGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "TIDEGATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// `memory` or a Redis URL.
    #[arg(long, env = "TIDEGATE_STATE")]
    pub state: Option<StateBackend>,
    /// `dir:<path>` or `kube`.
    #[arg(long, env = "TIDEGATE_SINK")]
    pub sink: Option<SinkTarget>,
    /// `http.body_limit`: largest request body in bytes.
    #[arg(long, env = "TIDEGATE_BODY_LIMIT")]
    pub body_limit: Option<usize>,
    /// `dedup.window`, e.g. `5m`.
    #[arg(long, env = "TIDEGATE_DEDUP_WINDOW", value_parser = parse_duration)]
    pub dedup_window: Option<Duration>,
    /// `dedup.status_interval`: least time between status writes to one request.
    #[arg(long, env = "TIDEGATE_STATUS_INTERVAL", value_parser = parse_duration)]
    pub status_interval: Option<Duration>,
    /// `memory.max_entries`: most open incidents the embedded store holds.
    #[arg(long, env = "TIDEGATE_MEMORY_MAX_ENTRIES")]
    pub memory_max_entries: Option<usize>,
    /// `http.shutdown_delay`: keep serving this long after SIGTERM with readiness at 503.
    #[arg(long, env = "TIDEGATE_SHUTDOWN_DELAY", value_parser = parse_duration)]
    pub shutdown_delay: Option<Duration>,
    /// `log.format`.
    #[arg(long, env = "TIDEGATE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// `log.filter`, e.g. `info` or `tidegate=debug`.
    #[arg(long, env = "TIDEGATE_LOG")]
    pub log: Option<String>,
    /// Threads that run requests.
    #[arg(long, env = "TIDEGATE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

impl ServeArgs {
    /// The file's config with environment variables and flags laid over it.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(self.config.as_deref(), utf8_vars())?;
        self.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    fn apply(&self, c: &mut Config) {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *target = v.clone();
            }
        }
        set(&mut c.listen, &self.listen);
        set(&mut c.state, &self.state);
        set(&mut c.sink, &self.sink);
        set(&mut c.http.body_limit, &self.body_limit);
        set(&mut c.dedup.window, &self.dedup_window);
        set(&mut c.dedup.status_interval, &self.status_interval);
        set(&mut c.memory.max_entries, &self.memory_max_entries);
        set(&mut c.http.shutdown_delay, &self.shutdown_delay);
        set(&mut c.log.format, &self.log_format);
        set(&mut c.log.filter, &self.log);
        if self.worker_threads.is_some() {
            c.runtime.worker_threads = self.worker_threads;
        }
    }
}

/// `tidegate doctor`: the flags of `serve`, plus what doctor alone needs.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Distinct incidents expected per `dedup.window` at the worst; with it, doctor
    /// checks that Redis' `maxmemory` holds them, as `tidegate capacity` sizes it.
    #[arg(long)]
    pub incidents: Option<u64>,
    /// With `--incidents`: (namespace, alert name) pairs storming at once.
    #[arg(long, default_value_t = 100, requires = "incidents")]
    pub storm_scopes: u64,
    /// With `--incidents`: distinct senders within a rate-limit period.
    #[arg(long, default_value_t = 100, requires = "incidents")]
    pub sources: u64,
}

impl DoctorArgs {
    /// The load to check Redis' headroom against, if one was given.
    pub fn load(&self) -> Option<Load> {
        let (storm_scopes, sources) = (self.storm_scopes, self.sources);
        self.incidents.map(|incidents| Load { incidents, storm_scopes, sources })
    }

    /// Loads the configuration as `serve` would and runs every check.
    pub async fn examine(&self) -> Report {
        let options = doctor::Options { load: self.load(), kube_client: None };
        match self.serve.load() {
            Ok(config) => doctor::run(&config, &options).await,
            Err(e) => doctor::invalid(&e),
        }
    }
}

/// The environment's variables, leaving out any that is not UTF-8 (no key's
/// variable can be).
fn utf8_vars() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "listen: 0.0.0.0:9000\nauth: none\ndedup:\n  window: 2m\n").unwrap();
        let path = path.to_str().unwrap();
        let cli =
            Cli::parse_from(["tidegate", "serve", "--config", path, "--dedup-window", "10m", "--worker-threads", "3"]);
        let Command::Serve(args) = cli.command else { panic!("serve") };
        let config = args.load().unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.dedup.window, Duration::from_secs(600));
        assert_eq!(config.worker_threads(), 3);
    }

    #[test]
    fn storm_scopes_and_sources_go_with_incidents() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(["tidegate", "doctor"].iter().chain(args))?;
            let Command::Doctor(args) = cli.command else { panic!("doctor") };
            Ok::<_, clap::Error>(args.load())
        };
        assert_eq!(parse(&[]).unwrap(), None);
        let load = parse(&["--incidents", "5000", "--sources", "7"]).unwrap().unwrap();
        assert_eq!(load, Load { incidents: 5000, storm_scopes: 100, sources: 7 });
        assert!(parse(&["--sources", "7"]).is_err(), "--sources alone would check nothing");
    }
}
