//! The one configuration type.
//!
//! Loaded once at start-up, in layers: defaults, then the YAML file given with
//! `--config`, then `TIDEGATE_*` environment variables, then flags (the last two are
//! applied by `cli`). [`Config::validate`] runs before anything starts, and every
//! component receives the values it needs as arguments: nothing reads the
//! environment or the file later.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::ingest::cloudevents::CloudEventsConfig;
use crate::ingest::IngestConfig;
use crate::state::redis::connection::{TlsFiles, Topology};

/// Everything `tidegate serve` can be told.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Where decision state lives: `memory`, or a Redis URL. Default `memory`.
    pub state: StateBackend,
    /// Where RemediationRequests go: `dir:<path>` or `kube`. Default `dir:./remediations`.
    pub sink: SinkTarget,
    pub http: HttpConfig,
    pub dedup: DedupConfig,
    pub memory: MemoryConfig,
    pub redis: RedisConfig,
    pub storm: StormConfig,
    pub rate_limit: RateLimitConfig,
    pub placement: PlacementConfig,
    pub kube: KubeConfig,
    pub classify: ClassifyConfig,
    /// How CloudEvents become signals, per event type.
    pub cloudevents: CloudEventsConfig,
    pub ingest: IngestConfig,
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Threads that run requests. Default: see [`Config::worker_threads`].
    pub worker_threads: Option<usize>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest accepted request body, in bytes. Default 25165824 (24 MiB): twice a
    /// 10,000-alert Alertmanager notification of kube-prometheus-stack's
    /// `KubePodCrashLooping` (11.1 MB, measured; see docs/delivery.md). Only a body no
    /// legitimate sender produces is answered 413, which a sender never retries.
    pub body_limit: usize,
    /// Body bytes that all requests together may hold while they are read and
    /// decided. A request that would go over waits up to `body_budget_wait`, then is
    /// answered 503 with `Retry-After`: memory stays bounded and nothing is refused
    /// for good. Default: an eighth of the memory the process may use (its cgroup's
    /// limit, else the machine's), at least twice `body_limit`, at most 1 GiB.
    pub body_budget: Option<u64>,
    /// How long a request may wait for room in `body_budget`. Default `2s`.
    #[serde(with = "duration")]
    pub body_budget_wait: Duration,
    /// How long one request may take before it is answered 503. Default `10s`.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// After SIGTERM, how long to keep serving with readiness at 503, so that load
    /// balancers stop sending before the listener closes. Default `5s`.
    #[serde(with = "duration")]
    pub shutdown_delay: Duration,
    /// Then, how long in-flight requests and pending status writes may take.
    /// Default `20s`: delay plus grace stays inside Kubernetes' default 30 s.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// `Retry-After` sent with 503 answers, in seconds. Default 5.
    pub retry_after_secs: u32,
    /// How long a client may take to send a request's head (and, on a kept-alive
    /// connection, to start the next one) before its connection is closed: a slow
    /// or silent client cannot hold a connection.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body, from the end of its
    /// head; a slower one is answered 503 with `Retry-After` and its budget freed.
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; a larger one is
    /// answered 431.
    pub max_header_bytes: usize,
    /// Connections open at once, at most; further clients wait to be accepted.
    pub max_connections: usize,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// Repeats within this long of the last occurrence are duplicates; each
    /// duplicate restarts the window. Default `5m`.
    #[serde(with = "duration")]
    pub window: Duration,
    /// At most one status write per RemediationRequest per interval; duplicates in
    /// between are folded into the next write. Default `1s`.
    #[serde(with = "duration")]
    pub status_interval: Duration,
    /// Status writes per second across all requests, at most: bounds the load on
    /// the disk or the API server when many incidents repeat at once; counts wait,
    /// they are not lost. Default 200.
    pub max_status_writes_per_s: u32,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Most open incidents the embedded store holds; beyond it new incidents are
    /// refused with 503 rather than evicting open ones. Default 1,000,000.
    pub max_entries: usize,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Every key tidegate writes starts with this; replicas sharing state must use
    /// the same prefix. Default `tg:`.
    pub prefix: String,
    /// A Redis call slower than this is answered 503 and retried by the sender.
    /// Default `1s`.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// How often Redis memory and key gauges are refreshed. Default `15s`.
    #[serde(with = "duration")]
    pub monitor_interval: Duration,
    /// PEM files for a `rediss…` state URL; by default the system's trust store.
    pub tls: TlsFiles,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StormConfig {
    /// A rate storm is more than this many firing alerts of one alert name in one
    /// namespace within `rate_window`. Default 10.
    pub rate_threshold: u32,
    /// Default `1m`.
    #[serde(with = "duration")]
    pub rate_window: Duration,
    /// A pattern storm is the same alert name on more than this many distinct
    /// resources of one namespace within `pattern_window`. Default 5.
    pub pattern_threshold: u32,
    /// Default `2m`.
    #[serde(with = "duration")]
    pub pattern_window: Duration,
    /// An aggregation window closes after this long without an alert. Default `60s`.
    #[serde(with = "duration")]
    pub inactivity: Duration,
    /// ... or this long after it opened. Default `5m`.
    #[serde(with = "duration")]
    pub max_duration: Duration,
    /// Most affected resources listed on an aggregated request; counts go on beyond
    /// it. Default 100.
    pub affected_resources_cap: usize,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Default `true`.
    pub enabled: bool,
    /// Sustained requests per second per source. Default 1000: far above what one
    /// Alertmanager sends in a storm, so only abusive sources are refused.
    pub rate: f64,
    /// Requests a source may send back to back above the rate. Default 5000.
    pub burst: u32,
    /// The status of a refusal: `503` (the default), which Alertmanager and
    /// Prometheus retry, or `429`, for senders that honour it; Alertmanager treats
    /// a 429 like any 4xx and drops the notification (docs/delivery.md).
    pub refusal_status: u16,
    /// Proxies whose `X-Forwarded-For` / `X-Real-IP` are believed, as CIDRs.
    /// Default none: the source is the peer address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PlacementConfig {
    /// Namespace for requests about cluster-scoped targets (nodes). Default none:
    /// they go to the signal's namespace.
    pub control_namespace: Option<String>,
    /// Put every request in `control_namespace`. Default `false`.
    pub all_in_control_namespace: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KubeConfig {
    /// One API call's timeout. Default `2s`.
    #[serde(with = "duration")]
    pub call_timeout: Duration,
    /// One operation's budget, retries of 5xx/429/timeouts included; past it the
    /// caller gets 503. Default `5s`.
    #[serde(with = "duration")]
    pub deadline: Duration,
    /// Consecutive failed operations that open the circuit breaker. Default 5.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls (and keeps `/readyz` at 503). Default `10s`.
    #[serde(with = "duration")]
    pub breaker_cooldown: Duration,
    /// How long start-up waits for the first list of requests and namespaces. Default `30s`.
    #[serde(with = "duration")]
    pub sync_timeout: Duration,
    /// Attribute a signal about a Pod (or ReplicaSet, Job) to its top controller
    /// (Deployment, StatefulSet, DaemonSet, CronJob) through ownerReferences, so that
    /// a workload's pods are one incident. Default `true`.
    pub owner_chain: bool,
    /// How long one owner lookup the caches cannot answer may take (one GET); past
    /// it the signal keeps the pod's identity. Default `500ms`.
    #[serde(with = "duration")]
    pub owner_lookup_timeout: Duration,
}

impl Default for KubeConfig {
    fn default() -> Self {
        KubeConfig {
            call_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(5),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(10),
            sync_timeout: Duration::from_secs(30),
            owner_chain: true,
            owner_lookup_timeout: Duration::from_millis(500),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifyConfig {
    /// Environment recorded when nothing else decides it. Default `unknown`.
    pub default_environment: String,
    /// Namespace → environment, used when the namespace has no `environment` label.
    pub namespaces: std::collections::BTreeMap<String, String>,
    /// Environment spellings → canonical name, so `prod` and `production` match the
    /// same rules. Default: prod/prd → production, stage/stg → staging,
    /// dev → development.
    pub aliases: std::collections::BTreeMap<String, String>,
    /// Priority rules, first match wins. Default: see README.
    pub priorities: Vec<PriorityRule>,
}

/// One row of the priority table. Empty matchers match everything.
#[derive(Clone, Debug, Deserialize, PartialEq)]
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

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `tidegate=debug`. Default `info`.
    pub filter: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            state: StateBackend::Memory,
            sink: SinkTarget::Dir(PathBuf::from("./remediations")),
            http: HttpConfig::default(),
            dedup: DedupConfig::default(),
            memory: MemoryConfig::default(),
            redis: RedisConfig::default(),
            storm: StormConfig::default(),
            rate_limit: RateLimitConfig::default(),
            placement: PlacementConfig::default(),
            kube: KubeConfig::default(),
            classify: ClassifyConfig::default(),
            cloudevents: CloudEventsConfig::default(),
            ingest: IngestConfig::default(),
            log: LogConfig::default(),
            runtime: RuntimeConfig::default(),
        }
    }
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
        self.runtime.worker_threads.unwrap_or_else(|| match self.state {
            StateBackend::Redis(_) => 1,
            StateBackend::Memory => std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }
}

impl Config {
    /// How long after its last write a request may still hold an open incident or
    /// storm window: the longer of the dedup window and a storm's longest life,
    /// twice over, so that a status write held back by the write cap or a crash
    /// still leaves its incident inside.
    pub fn open_horizon(&self) -> Duration {
        2 * self.dedup.window.max(self.storm.max_duration) + Duration::from_secs(60)
    }

    /// Body bytes in flight, at most: `http.body_budget`, or by default an eighth of
    /// the memory this process may use, at least twice `http.body_limit` and at most
    /// 1 GiB. Parsing roughly doubles a body's footprint while it is decided, so an
    /// eighth keeps bodies well inside a quarter of memory.
    pub fn body_budget(&self) -> u64 {
        self.http.body_budget.unwrap_or_else(|| {
            let floor = 2 * self.http.body_limit as u64;
            (memory_limit() / 8).clamp(floor, floor.max(1 << 30))
        })
    }
}

/// The memory this process may use: its cgroup's limit (v2, then v1), else the
/// machine's total, else 4 GiB when neither can be read.
fn memory_limit() -> u64 {
    let read = |path: &str| std::fs::read_to_string(path).ok()?.trim().parse::<u64>().ok();
    let machine = || {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().strip_suffix("kB")?;
        kib.trim().parse::<u64>().ok().map(|kib| kib * 1024)
    };
    let total = machine().unwrap_or(4 << 30);
    // An unlimited cgroup reads "max" (v2) or a huge number (v1).
    let cgroup = read("/sys/fs/cgroup/memory.max").or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"));
    cgroup.map_or(total, |limit| limit.min(total))
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_limit: 24 * 1024 * 1024,
            body_budget: None,
            body_budget_wait: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(20),
            retry_after_secs: 5,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_connections: 4096,
        }
    }
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            window: Duration::from_secs(300),
            status_interval: Duration::from_secs(1),
            max_status_writes_per_s: 200,
        }
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { max_entries: 1_000_000 }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            prefix: "tg:".into(),
            timeout: Duration::from_secs(1),
            monitor_interval: Duration::from_secs(15),
            tls: TlsFiles::default(),
        }
    }
}

impl Default for StormConfig {
    fn default() -> Self {
        StormConfig {
            rate_threshold: 10,
            rate_window: Duration::from_secs(60),
            pattern_threshold: 5,
            pattern_window: Duration::from_secs(120),
            inactivity: Duration::from_secs(60),
            max_duration: Duration::from_secs(300),
            affected_resources_cap: 100,
        }
    }
}

impl StormConfig {
    pub fn rules(&self) -> crate::state::StormRules {
        crate::state::StormRules {
            rate_threshold: self.rate_threshold,
            rate_window_s: self.rate_window.as_secs() as u32,
            pattern_threshold: self.pattern_threshold,
            pattern_window_s: self.pattern_window.as_secs() as u32,
            inactivity_s: self.inactivity.as_secs() as u32,
            max_duration_s: self.max_duration.as_secs() as u32,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { enabled: true, rate: 1000.0, burst: 5000, refusal_status: 503, trusted_proxies: Vec::new() }
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

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, filter: "info".into() }
    }
}

/// A configuration that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Config {
    /// Defaults overlaid with the YAML file at `path`, if given.
    pub fn from_file(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_norway::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), reason: e.to_string() })
    }

    /// Rejects values no deployment should run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| Err(ConfigError::Invalid { key, reason: reason.to_string() });
        if !(1024..=64 * 1024 * 1024).contains(&self.http.body_limit) {
            return invalid("http.body_limit", "must be between 1024 and 67108864 bytes");
        }
        if self.http.body_budget.is_some_and(|budget| budget < self.http.body_limit as u64) {
            return invalid(
                "http.body_budget",
                "must be at least http.body_limit, or the largest body could never be read",
            );
        }
        if self.http.body_budget.is_some_and(|budget| budget > u32::MAX as u64 * 16) {
            return invalid("http.body_budget", "must be at most 64 GiB");
        }
        if self.http.request_timeout < Duration::from_millis(100) {
            return invalid("http.request_timeout", "must be at least 100ms");
        }
        if self.http.header_read_timeout < Duration::from_millis(100) {
            return invalid("http.header_read_timeout", "must be at least 100ms");
        }
        if self.http.body_read_timeout < Duration::from_millis(100) {
            return invalid("http.body_read_timeout", "must be at least 100ms");
        }
        if !(1024..=1024 * 1024).contains(&self.http.max_header_bytes) {
            return invalid("http.max_header_bytes", "must be between 1024 and 1048576 bytes");
        }
        if self.http.max_connections == 0 {
            return invalid("http.max_connections", "must be at least 1");
        }
        if self.http.retry_after_secs == 0 {
            return invalid("http.retry_after_secs", "must be at least 1");
        }
        if self.dedup.window < Duration::from_secs(1) || self.dedup.window.subsec_nanos() != 0 {
            return invalid("dedup.window", "must be a whole number of seconds, at least 1s");
        }
        if self.dedup.status_interval < Duration::from_millis(10) || self.dedup.status_interval > self.dedup.window {
            return invalid("dedup.status_interval", "must be at least 10ms and no longer than dedup.window");
        }
        if self.dedup.max_status_writes_per_s == 0 {
            return invalid("dedup.max_status_writes_per_s", "must be at least 1");
        }
        if self.memory.max_entries == 0 {
            return invalid("memory.max_entries", "must be at least 1");
        }
        if self.redis.prefix.is_empty() || self.redis.prefix.contains(['{', '}']) {
            return invalid("redis.prefix", "must be non-empty and free of '{' and '}' (they are Cluster hash tags)");
        }
        if self.redis.timeout < Duration::from_millis(10) {
            return invalid("redis.timeout", "must be at least 10ms");
        }
        if self.redis.monitor_interval < Duration::from_secs(1) {
            return invalid("redis.monitor_interval", "must be at least 1s");
        }
        if matches!(self.runtime.worker_threads, Some(n) if n == 0 || n > 1024) {
            return invalid("runtime.worker_threads", "must be between 1 and 1024");
        }
        let tls_state = matches!(&self.state, StateBackend::Redis(topology) if topology.tls());
        if !self.redis.tls.is_empty() && !tls_state {
            return invalid("redis.tls", "is set, but the state is not a rediss:// (TLS) Redis URL");
        }
        if self.redis.tls.cert_file.is_some() != self.redis.tls.key_file.is_some() {
            return invalid("redis.tls", "cert_file and key_file go together");
        }
        if self.classify.default_environment.trim().is_empty() {
            return invalid("classify.default_environment", "must not be empty");
        }
        let whole_seconds = |d: Duration| d >= Duration::from_secs(1) && d.subsec_nanos() == 0;
        let storm = &self.storm;
        for (key, d) in [
            ("storm.rate_window", storm.rate_window),
            ("storm.pattern_window", storm.pattern_window),
            ("storm.inactivity", storm.inactivity),
            ("storm.max_duration", storm.max_duration),
        ] {
            if !whole_seconds(d) {
                return invalid(key, "must be a whole number of seconds, at least 1s");
            }
        }
        if storm.affected_resources_cap == 0 || storm.affected_resources_cap > 1000 {
            return invalid("storm.affected_resources_cap", "must be between 1 and 1000");
        }
        if !(self.rate_limit.rate > 0.0 && self.rate_limit.rate <= 1_000_000.0) {
            return invalid("rate_limit.rate", "must be more than 0 and at most 1000000 requests per second");
        }
        if !matches!(self.rate_limit.refusal_status, 429 | 503) {
            return invalid("rate_limit.refusal_status", "must be 503 (retried by Alertmanager) or 429");
        }
        if self.rate_limit.burst == 0 {
            return invalid("rate_limit.burst", "must be at least 1");
        }
        if self.ingest.max_labels == 0 {
            return invalid("ingest.max_labels", "must be at least 1");
        }
        if self.placement.control_namespace.as_deref().is_some_and(|ns| !crate::ingest::is_dns1123_label(ns)) {
            return invalid("placement.control_namespace", "must be a Kubernetes namespace name");
        }
        if self.placement.all_in_control_namespace && self.placement.control_namespace.is_none() {
            return invalid("placement.all_in_control_namespace", "needs placement.control_namespace");
        }
        if self.kube.call_timeout < Duration::from_millis(10) || self.kube.deadline < self.kube.call_timeout {
            return invalid("kube.deadline", "must be at least kube.call_timeout (itself at least 10ms)");
        }
        if self.kube.breaker_failures == 0 {
            return invalid("kube.breaker_failures", "must be at least 1");
        }
        self.validate_priorities()?;
        if let Err(reason) = self.cloudevents.validate() {
            return Err(ConfigError::Invalid { key: "cloudevents.types", reason });
        }
        if let SinkTarget::Dir(path) = &self.sink {
            if path.as_os_str().is_empty() {
                return invalid("sink", "dir: needs a path, as in dir:./remediations");
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_priorities(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| Err(ConfigError::Invalid { key: "classify.priorities", reason });
        let rules = &self.classify.priorities;
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

/// Where decision state lives.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum StateBackend {
    /// In process; lost on restart, private to one replica.
    Memory,
    /// A Redis deployment shared by replicas: standalone, Sentinel or Cluster.
    Redis(Topology),
}

impl FromStr for StateBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "memory" => Ok(StateBackend::Memory),
            url if url.starts_with("redis") => Ok(StateBackend::Redis(url.parse()?)),
            other => Err(format!(
                "expected \"memory\" or a redis://, redis+sentinel:// or redis+cluster:// URL (rediss… over TLS), got {other:?}"
            )),
        }
    }
}

impl TryFrom<String> for StateBackend {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for StateBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateBackend::Memory => f.write_str("memory"),
            StateBackend::Redis(topology) => topology.fmt(f),
        }
    }
}

/// Where RemediationRequests go.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SinkTarget {
    /// Manifests in a local directory.
    Dir(PathBuf),
    /// RemediationRequest custom resources through the Kubernetes API.
    Kube,
}

impl FromStr for SinkTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kube" => Ok(SinkTarget::Kube),
            _ => match s.strip_prefix("dir:") {
                Some(path) => Ok(SinkTarget::Dir(PathBuf::from(path))),
                None => Err(format!("expected \"dir:<path>\" or \"kube\", got {s:?}")),
            },
        }
    }
}

impl TryFrom<String> for SinkTarget {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// Parses durations written as `5m`, `1s`, `250ms`, `1h 30m` or ISO 8601 `PT5M`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s.parse().map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("invalid duration {s:?}: must not be negative"))
}

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(de)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
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
        assert_eq!(c.dedup.status_interval, Duration::from_secs(1));
        assert_eq!(c.sink, SinkTarget::Dir("/tmp/x".into()));

        std::fs::write(&path, "dedup:\n  windw: 2m\n").unwrap();
        let err = Config::from_file(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("unknown field `windw`"), "{err}");
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

    #[test]
    fn state_and_sink_parse_and_hide_credentials() {
        assert_eq!("memory".parse::<StateBackend>(), Ok(StateBackend::Memory));
        let r: StateBackend = "redis://:secret@host:6379/0".parse().unwrap();
        assert_eq!(r.to_string(), "redis://***@host:6379/0");
        let r: StateBackend = "redis+sentinel://:secret@s1:26379,s2:26379/mymaster".parse().unwrap();
        assert_eq!(r.to_string(), "redis+sentinel://***@s1:26379,s2:26379/mymaster");
        let r: StateBackend = "rediss+sentinel://:secret@s1:26379/mymaster/2".parse().unwrap();
        assert_eq!(r.to_string(), "rediss+sentinel://***@s1:26379/mymaster/2");
        assert!("postgres://x".parse::<StateBackend>().is_err());
        assert_eq!("kube".parse::<SinkTarget>(), Ok(SinkTarget::Kube));
        assert!("file:/x".parse::<SinkTarget>().is_err());
    }
}
