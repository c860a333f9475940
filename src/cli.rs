//! Command-line interface.
//!
//! Flags and `TIDEGATE_*` environment variables override the YAML config file;
//! clap applies "flag beats environment" and [`ServeArgs::apply`] lays both over the
//! file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{parse_duration, Config, ConfigError, LogFormat, SinkTarget, StateBackend};

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
    /// Print the RemediationRequest CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// YAML configuration file; flags and environment variables override it.
    #[arg(long, env = "TIDEGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "TIDEGATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// `memory` or a Redis URL [default: memory].
    #[arg(long, env = "TIDEGATE_STATE")]
    pub state: Option<StateBackend>,
    /// `dir:<path>` or `kube` [default: dir:./remediations].
    #[arg(long, env = "TIDEGATE_SINK")]
    pub sink: Option<SinkTarget>,
    /// Largest request body in bytes [default: 262144].
    #[arg(long, env = "TIDEGATE_BODY_LIMIT")]
    pub body_limit: Option<usize>,
    /// Dedup window, e.g. `5m` [default: 5m].
    #[arg(long, env = "TIDEGATE_DEDUP_WINDOW", value_parser = parse_duration)]
    pub dedup_window: Option<Duration>,
    /// Minimum interval between status writes to one request [default: 1s].
    #[arg(long, env = "TIDEGATE_STATUS_INTERVAL", value_parser = parse_duration)]
    pub status_interval: Option<Duration>,
    /// Most open incidents the embedded store holds [default: 1000000].
    #[arg(long, env = "TIDEGATE_MEMORY_MAX_ENTRIES")]
    pub memory_max_entries: Option<usize>,
    /// Keep serving this long after SIGTERM with readiness at 503 [default: 5s].
    #[arg(long, env = "TIDEGATE_SHUTDOWN_DELAY", value_parser = parse_duration)]
    pub shutdown_delay: Option<Duration>,
    /// Log format [default: text].
    #[arg(long, env = "TIDEGATE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `tidegate=debug` [default: info].
    #[arg(long, env = "TIDEGATE_LOG")]
    pub log: Option<String>,
    /// Threads that run requests [default: one per core; one with a Redis state].
    #[arg(long, env = "TIDEGATE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

impl ServeArgs {
    /// The file's config with environment variables and flags laid over it.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::from_file(self.config.as_deref())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "listen: 0.0.0.0:9000\ndedup:\n  window: 2m\n").unwrap();
        let path = path.to_str().unwrap();
        let cli =
            Cli::parse_from(["tidegate", "serve", "--config", path, "--dedup-window", "10m", "--worker-threads", "3"]);
        let Command::Serve(args) = cli.command else { panic!("serve") };
        let config = args.load().unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.dedup.window, Duration::from_secs(600));
        assert_eq!(config.worker_threads(), 3);
    }
}
