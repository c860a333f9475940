//! The one configuration type, and how it is loaded.
//!
//! Every component owns its section: the section's type, its defaults (its
//! `Default` impl, the only place a default is written) and its checks live beside
//! the code that reads it, and the component builds itself from it. [`Config`]
//! only composes the sections.
//!
//! Loaded once at start-up, in layers: defaults, then the YAML file given with
//! `--config`, then a `TIDEGATE_*` environment variable for any key, then flags.
//! The keys, their variables, defaults and meanings all come from the types
//! themselves (their JSON schema and `Default`), so `tidegate config` and the
//! README's table cannot drift from the code. [`Config::validate`] runs before
//! anything starts; nothing reads the environment or the file later.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::auth::AuthConfig;
pub use crate::http::HttpConfig;
pub use crate::ingest::cloudevents::CloudEventsConfig;
pub use crate::ingest::IngestConfig;
pub use crate::pipeline::backoff::LifecycleConfig;
pub use crate::pipeline::classify::{ClassifyConfig, PriorityRule};
pub use crate::pipeline::heartbeat::HeartbeatConfig;
pub use crate::pipeline::identity::IdentityConfig;
pub use crate::pipeline::{PlacementConfig, RateLimitConfig, StatusWriterConfig};
pub use crate::section::{duration, optional_duration, parse_duration, ConfigError};
pub use crate::sink::kube::KubeConfig;
pub use crate::sink::SinkTarget;
pub use crate::state::memory::MemoryConfig;
pub use crate::state::redis::RedisConfig;
pub use crate::state::{DedupConfig, StateBackend, StormConfig};
pub use crate::telemetry::trace::TraceConfig;
pub use crate::telemetry::{LogConfig, LogFormat};

/// Everything `tidegate serve` can be told.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds. Off loopback, senders must authenticate.
    pub listen: SocketAddr,
    /// Where decision state lives: `memory`, or a Redis URL (`redis://`,
    /// `redis+sentinel://`, `redis+cluster://`, or `rediss…` over TLS).
    #[schemars(with = "String")]
    pub state: StateBackend,
    /// Where RemediationRequests go: `dir:<path>` or `kube`.
    #[schemars(with = "String")]
    pub sink: SinkTarget,
    pub http: HttpConfig,
    pub dedup: DedupConfig,
    pub status_writer: StatusWriterConfig,
    pub memory: MemoryConfig,
    pub redis: RedisConfig,
    pub storm: StormConfig,
    pub rate_limit: RateLimitConfig,
    pub placement: PlacementConfig,
    /// Which targets may be remediated at all (`docs/safety.md`).
    pub scope: crate::pipeline::scope::ScopeConfig,
    /// Alertmanager-format inhibit rules across every source; none by default
    /// (`docs/safety.md` has the Kubernetes examples).
    pub inhibit_rules: Vec<crate::pipeline::inhibit::InhibitRuleConfig>,
    pub kube: KubeConfig,
    pub classify: ClassifyConfig,
    pub heartbeat: HeartbeatConfig,
    pub identity: IdentityConfig,
    pub lifecycle: LifecycleConfig,
    /// When an incident flaps (README, Flapping).
    pub flap: crate::pipeline::flap::FlapConfig,
    pub cloudevents: CloudEventsConfig,
    pub ingest: IngestConfig,
    /// Who may submit signals: authenticators, and which routes use which; `none`
    /// turns authentication off on purpose. See README, Authentication.
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub trace: TraceConfig,
    pub runtime: RuntimeConfig,
    pub silence: crate::silence::SilenceConfig,
    /// What the configuration spelled the way of an earlier release, to warn about.
    #[serde(skip)]
    #[schemars(skip)]
    pub deprecated: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            state: StateBackend::Memory,
            sink: SinkTarget::Dir(PathBuf::from("./remediations")),
            http: Default::default(),
            dedup: Default::default(),
            status_writer: Default::default(),
            memory: Default::default(),
            redis: Default::default(),
            storm: Default::default(),
            rate_limit: Default::default(),
            placement: Default::default(),
            scope: Default::default(),
            inhibit_rules: Default::default(),
            kube: Default::default(),
            classify: Default::default(),
            heartbeat: Default::default(),
            identity: Default::default(),
            lifecycle: Default::default(),
            flap: Default::default(),
            cloudevents: Default::default(),
            ingest: Default::default(),
            auth: Default::default(),
            log: Default::default(),
            trace: Default::default(),
            runtime: Default::default(),
            silence: Default::default(),
            deprecated: Vec::new(),
        }
    }
}

/// `runtime`: the async runtime.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Threads that run requests. Unset: one per core with the embedded store, and
    /// one with Redis, which measured faster (see `Config::worker_threads`).
    pub worker_threads: Option<usize>,
}

impl Config {
    /// Threads that run requests: `runtime.worker_threads`, or by default one per
    /// core with the embedded store, and one with Redis. With Redis a replica's own
    /// work per alert is small beside the round trip, and one thread sends the
    /// Redis commands of concurrent requests together and never has to wake another
    /// thread for a reply: `BENCH_STATE=redis cargo bench --bench ingest` measured
    /// 7.1 µs of gateway CPU per alert on one thread against 8.6 µs on two, Redis'
    /// own CPU per alert 6.8 µs against 7.5 µs, and 20% more alerts/s. One thread
    /// takes about as many alerts per second as one Redis primary decides; past
    /// that, replicas (and Cluster primaries) are how a Redis deployment grows.
    pub fn worker_threads(&self) -> usize {
        self.runtime.worker_threads.unwrap_or_else(|| self.state.default_worker_threads())
    }

    /// How long after its last write a request may still hold an open incident or
    /// storm window: the longer of the dedup window and a storm's longest life,
    /// twice over, so that a status write held back by the write cap or a crash
    /// still leaves its incident inside.
    pub fn open_horizon(&self) -> Duration {
        let open = 2 * self.dedup.window.max(self.storm.max_duration);
        // A failed request holds its incident back for up to the longest back-off.
        open.max(self.lifecycle.failure_backoff_max) + Duration::from_secs(60)
    }

    /// Rejects values no deployment should run with, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.http.validate()?;
        self.dedup.validate()?;
        self.status_writer.validate(self.dedup.window)?;
        self.memory.validate()?;
        self.redis.validate()?;
        self.storm.validate()?;
        self.rate_limit.validate()?;
        self.placement.validate()?;
        self.scope.validate()?;
        crate::pipeline::inhibit::validate(&self.inhibit_rules)?;
        self.kube.validate()?;
        self.classify.validate()?;
        self.heartbeat.validate()?;
        self.identity.validate()?;
        self.lifecycle.validate()?;
        self.flap.validate()?;
        self.ingest.validate()?;
        self.trace.validate()?;
        self.silence.validate()?;
        self.cloudevents.validate().map_err(|e| ConfigError::refused("cloudevents.types", e))?;
        if !self.listen.ip().is_loopback() && !self.auth.enabled() && !self.auth.none {
            return Err(ConfigError::invalid(
                "listen",
                format!(
                    "{} is not a loopback address, and no authenticator is configured: anyone who can reach it \
                     could create RemediationRequests. Configure `auth` (see README, Authentication), or write \
                     `auth: none` (TIDEGATE_AUTH=none) to accept unauthenticated senders on purpose",
                    self.listen
                ),
            ));
        }
        if matches!(self.runtime.worker_threads, Some(n) if n == 0 || n > 1024) {
            return Err(ConfigError::invalid("runtime.worker_threads", "must be between 1 and 1024"));
        }
        self.state_settings().validate()?;
        self.sink_settings().validate()
    }

    /// What the state store is built from.
    pub fn state_settings(&self) -> crate::state::Settings {
        crate::state::Settings {
            backend: self.state.clone(),
            memory: self.memory.clone(),
            redis: self.redis.clone(),
            window: self.dedup.window,
            storm: self.storm,
            flap: self.flap.rule(),
        }
    }

    /// What the pipeline is built from.
    pub fn pipeline_settings(&self) -> crate::pipeline::Settings {
        crate::pipeline::Settings {
            classify: self.classify.clone(),
            dedup: self.dedup.clone(),
            status_writer: self.status_writer.clone(),
            storm: self.storm,
            placement: self.placement.clone(),
            rate_limit: self.rate_limit.clone(),
            trace: self.trace.clone(),
            heartbeat: self.heartbeat.clone(),
            identity: self.identity.clone(),
            lifecycle: self.lifecycle,
            flap: self.flap,
            scope: self.scope.clone(),
            inhibit_rules: self.inhibit_rules.clone(),
        }
    }

    /// What the HTTP front door reads.
    pub fn http_settings(&self) -> crate::http::Settings {
        let sources = crate::ingest::Settings { ingest: self.ingest.clone(), cloudevents: self.cloudevents.clone() };
        crate::http::Settings { http: self.http.clone(), refusal_status: self.rate_limit.refusal_status, sources }
    }

    /// What the sink is built from.
    /// What silences read.
    pub fn silence_settings(&self) -> crate::silence::Settings {
        let sink_dir = match &self.sink {
            SinkTarget::Dir(path) => Some(path.as_path()),
            SinkTarget::Kube => None,
        };
        crate::silence::Settings {
            silence: self.silence.clone(),
            dir: crate::silence::directory(&self.silence, sink_dir),
            control_namespace: self.placement.control_namespace.clone(),
            sync_timeout: self.kube.sync_timeout,
        }
    }

    pub fn sink_settings(&self) -> crate::sink::Settings {
        crate::sink::Settings {
            target: self.sink.clone(),
            kube: self.kube.clone(),
            horizon: self.open_horizon(),
            scope_labels: self.scope.reads_labels(),
        }
    }
}

impl Config {
    /// Defaults overlaid with the YAML file at `path`, if given.
    pub fn from_file(path: Option<&Path>) -> Result<Self, ConfigError> {
        Config::load(path, std::iter::empty())
    }

    /// Defaults, overlaid with the YAML file at `path` if given, then with every
    /// `TIDEGATE_*` variable of `vars` that names a key (see [`keys`]).
    pub fn load(path: Option<&Path>, vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        Config::load_with(path, vars, &[])
    }

    /// [`Config::load`], then `flags` laid over it: `(flag, raw value)`, each flag
    /// one of [`FLAGS`].
    pub fn load_with(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
        flags: &[(&str, String)],
    ) -> Result<Self, ConfigError> {
        let mut tree = match path {
            Some(path) => read_file(path)?,
            None => Value::Object(Default::default()),
        };
        let mut deprecated = move_keys(&mut tree);
        let vars: BTreeMap<String, String> =
            vars.into_iter().filter(|(name, _)| name.starts_with(ENV_PREFIX)).collect();
        // Where each value set by a variable or a flag came from, to name it in an error.
        let mut given: Vec<(String, String)> = Vec::new();
        let keys = keys();
        for key in &keys {
            let old = old_variables(&key.path).into_iter().find(|name| vars.contains_key(name));
            let (name, raw) = match (vars.get(&key.env), old) {
                (Some(raw), old) => {
                    if let Some(old) = old {
                        deprecated.push(format!("{old} is ignored: {} is set", key.env));
                    }
                    (key.env.clone(), raw)
                }
                (None, Some(old)) => {
                    deprecated.push(format!("{old} is an old name of {}: use that", key.env));
                    let raw = &vars[&old];
                    (old, raw)
                }
                (None, None) => continue,
            };
            set(&mut tree, &key.path, key.parse(raw));
            given.push((name, key.path.clone()));
        }
        for (flag, raw) in flags {
            let Some(&(_, path)) = FLAGS.iter().find(|(f, _)| f == flag) else { continue };
            let key = keys.iter().find(|k| k.path == path).expect("every flag names a key");
            set(&mut tree, path, key.parse(raw));
            given.push((format!("--{flag}"), path.to_string()));
        }
        let mut config: Config = serde_path_to_error::deserialize(tree).map_err(|error| {
            let path = error.path().to_string();
            let at = match given.iter().rev().find(|(_, key)| path.starts_with(key.as_str())) {
                Some((name, key)) => format!("{name} ({key})"),
                None => match path {
                    _ if path == "." => "config".to_string(),
                    _ => path,
                },
            };
            ConfigError::Value { at, source: error.into_inner() }
        })?;
        config.deprecated = deprecated;
        Ok(config)
    }
}

/// Keys that moved to the section of the component that reads them, `(old, new)`.
/// A file or a variable that still spells one the old way keeps working, with a
/// warning at start-up and from `tidegate doctor`, so no configuration of an
/// earlier release breaks.
pub const MOVED: &[(&str, &str)] = &[
    ("rate_limit.trusted_proxies", "http.trusted_proxies"),
    ("dedup.status_interval", "status_writer.interval"),
    ("dedup.max_status_writes_per_s", "status_writer.max_writes_per_s"),
];

/// Variables of earlier releases, before every key had its own, `(variable, key)`:
/// still read, with a warning, when the key's own variable is not set.
pub const OLD_VARIABLES: &[(&str, &str)] = &[
    ("TIDEGATE_BODY_LIMIT", "http.body_limit"),
    ("TIDEGATE_STATUS_INTERVAL", "status_writer.interval"),
    ("TIDEGATE_SHUTDOWN_DELAY", "http.shutdown_delay"),
    ("TIDEGATE_LOG", "log.filter"),
    ("TIDEGATE_WORKER_THREADS", "runtime.worker_threads"),
];

/// The flags of `tidegate serve` and `doctor`, `(flag, key)`: shorthands for the
/// keys set most often, read through the same table as the file and the variables.
pub const FLAGS: &[(&str, &str)] = &[
    ("listen", "listen"),
    ("state", "state"),
    ("sink", "sink"),
    ("body-limit", "http.body_limit"),
    ("dedup-window", "dedup.window"),
    ("status-interval", "status_writer.interval"),
    ("memory-max-entries", "memory.max_entries"),
    ("shutdown-delay", "http.shutdown_delay"),
    ("log-format", "log.format"),
    ("log", "log.filter"),
    ("worker-threads", "runtime.worker_threads"),
];

/// The variable a key is set with: `TIDEGATE_` and its path, upper case.
fn variable(path: &str) -> String {
    format!("{ENV_PREFIX}{}", path.replace('.', "_").to_ascii_uppercase())
}

/// Every variable of an earlier release that set the key at `path`.
fn old_variables(path: &str) -> Vec<String> {
    let old = OLD_VARIABLES.iter().filter(|(_, key)| *key == path).map(|(name, _)| name.to_string());
    let moved = MOVED.iter().filter(|(_, new)| *new == path).map(|(old, _)| variable(old));
    old.chain(moved).collect()
}

/// Moves each key of [`MOVED`] that `tree` spells the old way to where it lives
/// now; returns a warning for each.
fn move_keys(tree: &mut Value) -> Vec<String> {
    let mut warnings = Vec::new();
    for (old, new) in MOVED {
        let (section, key) = old.rsplit_once('.').expect("a moved key is in a section");
        let Some(value) = tree.get_mut(section).and_then(Value::as_object_mut).and_then(|s| s.remove(key)) else {
            continue;
        };
        let (new_section, new_key) = new.rsplit_once('.').expect("a moved key is in a section");
        if tree.get(new_section).and_then(|s| s.get(new_key)).is_some() {
            warnings.push(format!("{old} is ignored: {new} is set"));
        } else {
            set(tree, new, value);
            warnings.push(format!("{old} is now {new}: rename it in the config file"));
        }
    }
    warnings
}

fn read_file(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_norway::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
}

/// Sets `path` (dotted) in `tree`, creating the sections on the way.
fn set(tree: &mut Value, path: &str, value: Value) {
    let mut node = tree;
    for part in path.split('.') {
        if !node.is_object() {
            *node = Value::Object(Default::default());
        }
        node = node.as_object_mut().expect("made an object").entry(part).or_insert(Value::Null);
    }
    *node = value;
}

/// Every environment variable that sets a key starts with this.
pub const ENV_PREFIX: &str = "TIDEGATE_";

/// One key of the configuration: a value that is not itself a section.
#[derive(Clone, Debug)]
pub struct Key {
    /// Dotted, as in the YAML file: `http.body_limit`.
    pub path: String,
    /// The variable that sets it: `TIDEGATE_HTTP_BODY_LIMIT`.
    pub env: String,
    /// The first paragraph of its documentation.
    pub meaning: String,
    /// Its default, as the YAML file would spell it.
    pub default: Value,
    /// Whether its value is a string, taken from a variable as written; other
    /// values are read as YAML (`true`, `5`, `[a, b]`, `{k: v}`).
    text: bool,
}

impl Key {
    fn parse(&self, raw: &str) -> Value {
        if self.text {
            return Value::String(raw.to_string());
        }
        // What YAML cannot read is passed on as text, for the key's own type to
        // refuse with a message that names it.
        serde_norway::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
    }
}

/// Every key, in the order of the schema (sections alphabetically, then keys).
pub fn keys() -> Vec<Key> {
    let schema = schemars::schema_for!(Config);
    let root = schema.as_value();
    let defaults = serde_json::to_value(Config::default()).expect("the defaults serialize");
    let mut keys = Vec::new();
    walk(root, root, &defaults, "", &mut keys);
    keys
}

fn walk(root: &Value, schema: &Value, defaults: &Value, prefix: &str, keys: &mut Vec<Key>) {
    let Some(properties) = resolve(root, schema)["properties"].as_object() else { return };
    for (name, property) in properties {
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        let resolved = resolve(root, property);
        let default = &defaults[name.as_str()];
        if resolved["properties"].is_object() {
            walk(root, resolved, default, &path, keys);
            continue;
        }
        let described = property["description"].as_str().or(resolved["description"].as_str()).unwrap_or("");
        let meaning = described.split("\n\n").next().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ");
        let types = &resolved["type"];
        let text = types == "string" || types.as_array().is_some_and(|t| t.iter().any(|t| t == "string"));
        let env = variable(&path);
        keys.push(Key { path, env, meaning, default: default.clone(), text });
    }
}

/// `schema`, or the definition its `$ref` names.
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/$defs/")) {
        Some(name) => &root["$defs"][name],
        None => schema,
    }
}

/// The configuration table: every key, its variable, default and meaning, as the
/// README shows it (`tidegate config`).
pub fn table() -> String {
    let mut out = String::from("| Key | Environment variable | Default | Meaning |\n|---|---|---|---|\n");
    for key in keys() {
        let default = match &key.default {
            Value::Null => "none".to_string(),
            Value::String(s) if s.is_empty() => "empty".to_string(),
            Value::String(s) => format!("`{s}`"),
            Value::Array(a) if a.is_empty() => "none".to_string(),
            Value::Object(o) if o.is_empty() => "none".to_string(),
            Value::Array(_) | Value::Object(_) => "see `tidegate config --defaults`".to_string(),
            scalar => format!("`{scalar}`"),
        };
        let meaning = key.meaning.replace('|', "\\|");
        out.push_str(&format!("| `{}` | `{}` | {default} | {meaning} |\n", key.path, key.env));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_overrides_defaults_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "listen: 0.0.0.0:9000\ndedup:\n  window: 2m\nsink: dir:/tmp/x\n").unwrap();
        let c = Config::from_file(Some(&path)).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.dedup.window, Duration::from_secs(120));
        assert_eq!(c.status_writer.interval, Duration::from_secs(1));
        assert_eq!(c.sink, SinkTarget::Dir("/tmp/x".into()));

        std::fs::write(&path, "dedup:\n  windw: 2m\n").unwrap();
        let err = Config::from_file(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("unknown field `windw`"), "{err}");
        assert!(err.starts_with("dedup.windw"), "{err}");
    }

    #[test]
    fn every_key_has_a_variable_and_variables_override_the_file() {
        let keys = keys();
        let mut names: Vec<&str> = keys.iter().map(|k| k.env.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), keys.len(), "two keys share a variable");
        for path in ["listen", "http.body_limit", "redis.tls.ca_file", "kube.owner_chain", "classify.namespaces"] {
            assert!(keys.iter().any(|k| k.path == path), "{path} is not a key");
        }
        assert!(!keys.iter().any(|k| k.path == "http" || k.path == "redis.tls"), "a section listed as a key");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "dedup:\n  window: 2m\nredis:\n  prefix: \"file:\"\n").unwrap();
        let vars = [
            ("TIDEGATE_DEDUP_WINDOW", "10m"),
            ("TIDEGATE_REDIS_PREFIX", "env:"),
            ("TIDEGATE_KUBE_OWNER_CHAIN", "false"),
            ("TIDEGATE_HTTP_BODY_LIMIT", "2048"),
            ("TIDEGATE_CLASSIFY_NAMESPACES", "{payments: production}"),
            ("TIDEGATE_RATE_LIMIT_TRUSTED_PROXIES", "[10.0.0.0/8]"),
            ("TIDEGATE_NOT_A_KEY", "ignored"),
            ("HOME", "/root"),
        ];
        let c = Config::load(Some(&path), vars.map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
        assert_eq!(c.dedup.window, Duration::from_secs(600));
        assert_eq!(c.redis.prefix, "env:");
        assert!(!c.kube.owner_chain);
        assert_eq!(c.http.body_limit, 2048);
        assert_eq!(c.classify.namespaces["payments"], "production");
        assert_eq!(c.http.trusted_proxies, vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]);
        assert_eq!(
            c.deprecated,
            ["TIDEGATE_RATE_LIMIT_TRUSTED_PROXIES is an old name of TIDEGATE_HTTP_TRUSTED_PROXIES: use that"]
        );

        let bad = [("TIDEGATE_DEDUP_WINDOW".to_string(), "soon".to_string())];
        let err = Config::load(None, bad).unwrap_err().to_string();
        assert!(err.starts_with("TIDEGATE_DEDUP_WINDOW (dedup.window): invalid duration"), "{err}");
    }

    #[test]
    fn keys_spelled_as_earlier_releases_did_still_work_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "rate_limit:\n  burst: 7\n  trusted_proxies: [10.0.0.0/8]\n").unwrap();
        let vars = [("TIDEGATE_BODY_LIMIT", "4096"), ("TIDEGATE_LOG", "debug"), ("TIDEGATE_LOG_FILTER", "warn")];
        let c = Config::load(Some(&path), vars.map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
        assert_eq!(c.http.trusted_proxies, vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]);
        assert_eq!(c.rate_limit.burst, 7);
        assert_eq!(c.http.body_limit, 4096);
        assert_eq!(c.log.filter, "warn", "the key's own variable wins over an old name");
        assert_eq!(
            c.deprecated,
            [
                "rate_limit.trusted_proxies is now http.trusted_proxies: rename it in the config file",
                "TIDEGATE_BODY_LIMIT is an old name of TIDEGATE_HTTP_BODY_LIMIT: use that",
                "TIDEGATE_LOG is ignored: TIDEGATE_LOG_FILTER is set",
            ]
        );
        std::fs::write(&path, "http:\n  trusted_proxies: []\nrate_limit:\n  trusted_proxies: [10.0.0.0/8]\n").unwrap();
        let c = Config::from_file(Some(&path)).unwrap();
        assert!(c.http.trusted_proxies.is_empty(), "the new spelling wins");
        assert_eq!(c.deprecated, ["rate_limit.trusted_proxies is ignored: http.trusted_proxies is set"]);
        assert!(Config::from_file(None).unwrap().deprecated.is_empty());
    }

    #[test]
    fn every_flag_names_a_key_and_a_bad_value_names_the_flag() {
        let keys = keys();
        let moved = MOVED.iter().map(|(old, new)| (*old, *new));
        for (flag, path) in FLAGS.iter().chain(OLD_VARIABLES).copied().chain(moved) {
            assert!(keys.iter().any(|k| k.path == *path), "{flag} names {path}, which is not a key");
        }
        let flags = [("dedup-window", "10m".to_string()), ("worker-threads", "3".to_string())];
        let c = Config::load_with(None, std::iter::empty(), &flags).unwrap();
        assert_eq!((c.dedup.window, c.runtime.worker_threads), (Duration::from_secs(600), Some(3)));
        let vars = [("TIDEGATE_DEDUP_WINDOW".to_string(), "2m".to_string())];
        let err = Config::load_with(None, vars, &[("dedup-window", "soon".into())]).unwrap_err().to_string();
        assert!(err.starts_with("--dedup-window (dedup.window): invalid duration"), "{err}");
    }

    /// The README's table is `tidegate config`'s output, and its priority table the
    /// default one: regenerate with `cargo run -q -- config`.
    #[test]
    fn the_readme_documents_every_key_and_default() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let (begin, end) = ("<!-- tidegate config: begin -->\n", "<!-- tidegate config: end -->");
        let start = readme.find(begin).expect("the README marks its configuration table") + begin.len();
        let documented = &readme[start..start + readme[start..].find(end).expect("the table's end marker")];
        assert!(documented == table(), "README.md's configuration table is stale; it should read:\n{}", table());

        let yaml = readme.split("```yaml\nclassify:\n  priorities:\n").nth(1).expect("the default priority table");
        let yaml = format!("priorities:\n{}", &yaml[..yaml.find("```").unwrap()]);
        let documented: ClassifyConfig = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(documented.priorities, ClassifyConfig::default().priorities);
    }

    #[test]
    fn the_defaults_read_back_as_themselves() {
        let written = serde_norway::to_string(&Config::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("defaults.yaml");
        std::fs::write(&path, &written).unwrap();
        assert_eq!(Config::from_file(Some(&path)).unwrap(), Config::default(), "{written}");
    }

    #[test]
    fn bad_values_fail_validation_naming_the_key() {
        let mut c = Config::default();
        c.dedup.window = Duration::from_millis(1500);
        assert!(c.validate().unwrap_err().to_string().starts_with("dedup.window:"));
        let mut c = Config::default();
        c.http.body_limit = 10;
        assert!(c.validate().unwrap_err().to_string().starts_with("http.body_limit:"));
        let mut c = Config::default();
        let falco = c.cloudevents.types.get_mut("falco.rule.output.v1").unwrap();
        falco.name = crate::ingest::cloudevents::Pointers(vec!["rule".into()]);
        assert!(c.validate().unwrap_err().to_string().starts_with("cloudevents.types: \"falco.rule.output.v1\""));
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn worker_threads_default_to_the_cores_and_to_one_with_redis() {
        let mut c = Config::default();
        assert_eq!(c.worker_threads(), std::thread::available_parallelism().unwrap().get());
        c.state = "redis://h:6379".parse().unwrap();
        assert_eq!(c.worker_threads(), 1);
        c.runtime.worker_threads = Some(4);
        assert_eq!(c.worker_threads(), 4);
        c.runtime.worker_threads = Some(0);
        assert!(c.validate().unwrap_err().to_string().starts_with("runtime.worker_threads:"));
    }

    #[test]
    fn redis_tls_files_need_a_tls_url_and_come_as_a_pair() {
        let mut c = Config { state: "redis://h:6379".parse().unwrap(), ..Config::default() };
        c.redis.tls.ca_file = Some("/ca.pem".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("redis.tls:") && err.contains("rediss"), "{err}");
        c.state = "rediss+cluster://a:1,b:2".parse().unwrap();
        assert!(c.validate().is_ok());
        c.redis.tls.cert_file = Some("/client.pem".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("cert_file and key_file go together"), "{err}");
        c.redis.tls.key_file = Some("/client.key".into());
        assert!(c.validate().is_ok());
    }
}
