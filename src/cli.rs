//! Command-line interface.
//!
//! The layers, from the bottom: defaults, the YAML config file, a `TIDEGATE_*`
//! variable for any key ([`Config::load`]), then the flags of `serve`, which are
//! shorthands for the keys set most often ([`config::FLAGS`]). Flags, variables
//! and the names of earlier releases all go through the one key table in
//! [`config`]; nothing here repeats a key.

use std::path::PathBuf;

use clap::{Arg, Args, Parser, Subcommand};

pub mod silence;

use crate::capacity::Load;
use crate::config::{self, Config, ConfigError};
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
    /// Print the CustomResourceDefinitions (RemediationRequest, RemediationSilence) as YAML.
    Crd,
    /// Add, list or expire silences, where the gateway with this configuration reads them.
    Silence(silence::SilenceArgs),
    /// Check a configuration against the Redis, Kubernetes API and sink it names:
    /// one line per check, with a fix for each failure; exits 1 if any failed.
    Doctor(Box<DoctorArgs>),
}

/// `tidegate serve`'s flags: `--config`, and a shorthand per key of
/// [`config::FLAGS`], each read through the key table like the file and the
/// variables, so a flag's values, its checks and its errors are the key's own.
#[derive(Clone, Debug, Default)]
pub struct ServeArgs {
    /// YAML configuration file; flags and environment variables override it.
    pub config: Option<PathBuf>,
    /// `(flag, raw value)` of each flag given.
    pub flags: Vec<(&'static str, String)>,
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let config = matches.get_one::<PathBuf>(CONFIG).cloned();
        let given =
            config::FLAGS.iter().filter_map(|(flag, _)| Some((*flag, matches.get_one::<String>(flag)?.clone())));
        Ok(ServeArgs { config, flags: given.collect() })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for ServeArgs {
    fn augment_args(command: clap::Command) -> clap::Command {
        let keys = config::keys();
        let config = Arg::new(CONFIG)
            .long(CONFIG)
            .env("TIDEGATE_CONFIG")
            .value_parser(clap::value_parser!(PathBuf))
            .help("YAML configuration file; flags and environment variables override it.");
        let flags = config::FLAGS.iter().map(|(flag, path)| {
            let meaning = keys.iter().find(|k| k.path == *path).map_or("", |k| k.meaning.as_str());
            Arg::new(*flag).long(*flag).value_name("VALUE").help(format!("`{path}`: {meaning}"))
        });
        command.arg(config).args(flags).after_help(
            "Every key of the config file can also be set with a TIDEGATE_* variable; `tidegate config` lists them \
             with their defaults.",
        )
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

/// The `--config` flag's name and id.
const CONFIG: &str = "config";

impl ServeArgs {
    /// The file's config with environment variables and flags laid over it.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let config = Config::load_with(self.config.as_deref(), utf8_vars(), &self.flags)?;
        config.validate()?;
        Ok(config)
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
        assert_eq!(config.dedup.window, std::time::Duration::from_secs(600));
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
