//! `tidegate doctor`: checks a configuration against the real systems it names,
//! before a gateway goes live.
//!
//! Each check is a small function that looks at one thing (the listener, the sink
//! directory, Redis' memory settings, one RBAC grant…) and returns a [`Check`]: an
//! outcome, what it saw, and for every warning or failure how to fix it. A check
//! that does not apply to the configuration (Redis with `state: memory`, Kubernetes
//! with a `dir:` sink) is reported as skipped, never left out, so the output always
//! says what was and was not looked at.
//!
//! Doctor reads; it never changes what it checks. The one exception is a probe file
//! it writes into the sink directory and removes at once, the only way to know the
//! directory is writable. It does not create a missing directory: it reports it.
//! Printing belongs to the caller (`main`), through [`Report`]'s `Display`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion,
};
use kube::api::{Api, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use redis::FromRedisValue;
use serde_json::Value;

use crate::capacity::Load;
use crate::cli::ServeArgs;
use crate::config::{Config, ConfigError, SinkTarget, StateBackend};
use crate::remediation::RemediationRequest;
use crate::sink::kube::access::{self, Permission};
use crate::state::redis::connection::{Connection, Handle, Topology};
use crate::state::redis::{risks, RedisConfig};

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
}

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
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { name: name.into(), outcome: Outcome::Ok, detail: detail.into(), fix: None }
    }

    fn info(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { name: name.into(), outcome: Outcome::Info, detail: detail.into(), fix: None }
    }

    fn skip(name: impl Into<String>, why: impl Into<String>) -> Check {
        Check { name: name.into(), outcome: Outcome::Skip, detail: why.into(), fix: None }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name: name.into(), outcome: Outcome::Warn, detail: detail.into(), fix: Some(fix.into()) }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
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

/// What the checks take besides the configuration.
#[derive(Clone, Default)]
pub struct Options {
    /// The load Redis must hold ([`DoctorArgs::load`]); unset, headroom is skipped.
    pub load: Option<Load>,
    /// The client to check Kubernetes with, instead of the in-cluster or kubeconfig
    /// one (`kube::Client::try_default`, as `serve` uses).
    pub kube_client: Option<Client>,
}

/// Loads the configuration as `serve` would and runs every check.
pub async fn examine(args: &DoctorArgs) -> Report {
    let options = Options { load: args.load(), kube_client: None };
    match args.serve.load() {
        Ok(config) => run(&config, &options).await,
        Err(e) => invalid(&e),
    }
}

/// Names of the checks after `config`, in order, for a configuration that did not
/// load: each is then skipped.
const AFTER_CONFIG: &[&str] = &["listener", "sink dir", "redis", "kubernetes"];

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

/// Runs every check that `config` calls for.
pub async fn run(config: &Config, options: &Options) -> Report {
    if let Err(e) = config.validate() {
        return invalid(&e);
    }
    let mut checks = vec![Check::ok("config", format!("valid; state {}, sink {}", config.state, config.sink))];
    checks.push(listener(config.listen));
    checks.push(match &config.sink {
        SinkTarget::Dir(path) => sink_dir(path),
        SinkTarget::Kube => Check::skip("sink dir", "the sink is kube"),
    });
    match &config.state {
        StateBackend::Redis(topology) => checks.extend(redis_checks(topology, &config.redis, options.load).await),
        StateBackend::Memory => checks.push(Check::skip("redis", "state is memory")),
    }
    match &config.sink {
        SinkTarget::Kube => checks.extend(kube_checks(config, options.kube_client.clone()).await),
        SinkTarget::Dir(_) => checks.push(Check::skip("kubernetes", "the sink is a directory")),
    }
    Report { checks }
}

// ---------------------------------------------------------------------------------
// The host
// ---------------------------------------------------------------------------------

/// Binds `listen` and lets it go at once.
pub fn listener(listen: SocketAddr) -> Check {
    const NAME: &str = "listener";
    let error = match TcpListener::bind(listen) {
        Ok(socket) => {
            drop(socket);
            return Check::ok(NAME, format!("{listen} is free"));
        }
        Err(e) => e,
    };
    let fix = match error.kind() {
        io::ErrorKind::AddrInUse => {
            "stop what listens there, or set another `listen` (--listen, TIDEGATE_LISTEN); if it is this gateway \
             already running, doctor is expected to fail here"
        }
        io::ErrorKind::PermissionDenied => "use a port above 1023, or give the process CAP_NET_BIND_SERVICE",
        io::ErrorKind::AddrNotAvailable => "no interface of this host has that address: use one it has, or 0.0.0.0",
        _ => "set a `listen` address this host can bind (--listen, TIDEGATE_LISTEN)",
    };
    Check::fail(NAME, format!("cannot bind {listen}: {error}"), fix)
}

/// Writes a probe file into the sink directory and removes it.
pub fn sink_dir(path: &Path) -> Check {
    const NAME: &str = "sink dir";
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Check::warn(
                NAME,
                format!("{shown} does not exist; `serve` creates it, if its parent is writable"),
                format!("create it as the user tidegate runs as: mkdir -p {shown}"),
            )
        }
        Err(e) => return Check::fail(NAME, format!("cannot read {shown}: {e}"), "check the path and its parents"),
        Ok(meta) if !meta.is_dir() => {
            return Check::fail(NAME, format!("{shown} is not a directory"), "point `sink` at a directory: dir:<path>")
        }
        Ok(_) => {}
    }
    let probe = path.join(format!(".tidegate-doctor-{}", std::process::id()));
    let written = std::fs::write(&probe, b"tidegate doctor\n");
    let _ = std::fs::remove_file(&probe);
    match written {
        Ok(()) => Check::ok(NAME, format!("{shown} is writable")),
        Err(e) => Check::fail(
            NAME,
            format!("cannot write in {shown}: {e}"),
            format!("let the user tidegate runs as write there: chown it, or chmod u+w {shown}; on Kubernetes mount a writable volume"),
        ),
    }
}

// ---------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------

/// PINGs for the latency check.
const PINGS: usize = 20;

/// Connects, then looks at the memory settings, persistence, latency and headroom.
pub async fn redis_checks(topology: &Topology, config: &RedisConfig, load: Option<Load>) -> Vec<Check> {
    const HEADROOM: &str = "redis headroom";
    let (conn, reached) = match redis_connect(topology, config).await {
        Ok(connected) => connected,
        Err(failed) => {
            let later = ["redis policy", "redis persistence", "redis latency", HEADROOM];
            let mut checks = vec![failed];
            checks.extend(later.map(|name| Check::skip(name, "Redis is not reachable")));
            return checks;
        }
    };
    vec![
        reached,
        redis_policy(&conn).await,
        redis_persistence(&conn).await,
        redis_latency(&conn, config.timeout).await,
        match load {
            Some(load) => redis_headroom(&conn, load).await,
            None => Check::skip(HEADROOM, "give --incidents N (distinct incidents per dedup window) to check"),
        },
    ]
}

async fn redis_connect(topology: &Topology, config: &RedisConfig) -> Result<(Connection, Check), Check> {
    const NAME: &str = "redis";
    let certs = config.tls.load().map_err(|e| {
        Check::fail(NAME, e.to_string(), "point redis.tls.* at readable PEM files, or unset them for the system's CAs")
    })?;
    let unreachable = |e: redis::RedisError| {
        Check::fail(
            NAME,
            format!("cannot reach {topology}: {e}"),
            "start Redis, or correct `state` (TIDEGATE_STATE): host, port, password, and rediss:// with redis.tls.* \
             for TLS",
        )
    };
    let conn = Connection::open(topology, config.timeout, certs.as_ref()).await.map_err(unreachable)?;
    let servers: Vec<String> = per_primary(&conn, redis::cmd("INFO").arg("server")).await.map_err(unreachable)?;
    let versions: Vec<String> = servers.iter().filter_map(|s| info_fields(s).remove("redis_version")).collect();
    let primaries = match servers.len() {
        1 => "1 primary".to_string(),
        n => format!("{n} primaries"),
    };
    let detail = format!("{topology}: {primaries}, Redis {}", versions.join(", "));
    Ok((conn, Check::ok(NAME, detail)))
}

/// `cmd`'s answer from every primary: the one server, or each Cluster primary.
async fn per_primary<T: FromRedisValue>(conn: &Connection, cmd: &redis::Cmd) -> redis::RedisResult<Vec<T>> {
    match conn.handle() {
        Handle::Single(mut c) => Ok(vec![cmd.query_async(&mut c).await?]),
        Handle::Cluster(_) => {
            let mut out = Vec::new();
            for mut node in conn.cluster_primaries().await? {
                out.push(cmd.query_async(&mut node).await?);
            }
            Ok(out)
        }
    }
}

/// The `key:value` lines of an `INFO` answer.
fn info_fields(text: &str) -> HashMap<String, String> {
    text.lines().filter_map(|l| l.trim().split_once(':')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// `INFO memory` of every primary, as text fields.
async fn memory(conn: &Connection) -> redis::RedisResult<Vec<HashMap<String, String>>> {
    let infos: Vec<String> = per_primary(conn, redis::cmd("INFO").arg("memory")).await?;
    Ok(infos.iter().map(|i| info_fields(i)).collect())
}

fn number(fields: &HashMap<String, String>, key: &str) -> u64 {
    fields.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// `maxmemory` set and a policy that never evicts an open incident's key: the
/// gateway's own start-up warning ([`risks`]), as a failure.
async fn redis_policy(conn: &Connection) -> Check {
    const NAME: &str = "redis policy";
    let infos = match memory(conn).await {
        Ok(infos) => infos,
        Err(e) => return Check::fail(NAME, format!("cannot read INFO memory: {e}"), "allow INFO to tidegate's user"),
    };
    let mut seen = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for info in &infos {
        let policy = info.get("maxmemory_policy").map(String::as_str).unwrap_or("");
        let maxmemory = number(info, "maxmemory");
        seen.push(format!("maxmemory {} ({policy})", bytes(maxmemory)));
        for risk in risks(policy, maxmemory) {
            if !problems.contains(&risk) {
                problems.push(risk);
            }
        }
    }
    if problems.is_empty() {
        return Check::ok(NAME, seen.join(", "));
    }
    Check::fail(
        NAME,
        format!("{}: {}", seen.join(", "), problems.join(" ")),
        "in redis.conf, and live with CONFIG SET: maxmemory-policy noeviction, and maxmemory as docs/redis.md \
         sizes it (tidegate capacity --incidents N)",
    )
}

/// What a Redis restart loses, from `appendonly` and `save`.
async fn redis_persistence(conn: &Connection) -> Check {
    const NAME: &str = "redis persistence";
    let get = redis::cmd("CONFIG").arg("GET").arg("appendonly").arg("save").clone();
    let settings: Vec<HashMap<String, String>> = match per_primary(conn, &get).await {
        Ok(settings) => settings,
        Err(e) => {
            return Check::info(NAME, format!("cannot read CONFIG ({e}): what a restart loses is unknown"));
        }
    };
    let aof = settings.iter().all(|s| s.get("appendonly").is_some_and(|v| v == "yes"));
    let save: Vec<&str> = settings.iter().filter_map(|s| s.get("save").map(String::as_str)).collect();
    let snapshots = save.iter().all(|s| !s.is_empty());
    let loses = match (aof, snapshots) {
        (true, _) => "a restart loses at most the last second of writes",
        (false, true) => "a restart loses the writes since the last snapshot",
        (false, false) => "a restart empties Redis",
    };
    Check::info(
        NAME,
        format!(
            "appendonly {}, save \"{}\": {loses} (dedup counts, storm windows, rate limits); the sink still \
             holds every open incident, so none gets a second request",
            if aof { "yes" } else { "no" },
            save.join("\" / \"")
        ),
    )
}

/// Median and slowest of [`PINGS`] round trips, against `redis.timeout`.
async fn redis_latency(conn: &Connection, timeout: Duration) -> Check {
    const NAME: &str = "redis latency";
    let mut times = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let started = Instant::now();
        let ping = match conn.handle() {
            Handle::Single(mut c) => redis::cmd("PING").query_async::<String>(&mut c).await,
            Handle::Cluster(mut c) => redis::cmd("PING").query_async::<String>(&mut c).await,
        };
        if let Err(e) = ping {
            return Check::fail(
                NAME,
                format!("PING failed: {e}"),
                format!("Redis must answer within redis.timeout ({timeout:?}): check its load and the network"),
            );
        }
        times.push(started.elapsed());
    }
    times.sort();
    let (median, max) = (times[PINGS / 2], times[PINGS - 1]);
    let detail = format!("{PINGS} PINGs: median {median:.1?}, max {max:.1?}; redis.timeout {timeout:?}");
    if median * 2 >= timeout {
        return Check::fail(
            NAME,
            detail,
            "a webhook costs at least one round trip: bring Redis closer (same zone) or raise redis.timeout",
        );
    }
    if max * 4 >= timeout {
        return Check::warn(
            NAME,
            detail,
            "the slowest round trips come near redis.timeout, past which alerts are answered 503: check Redis' \
             load and the network, or raise redis.timeout",
        );
    }
    Check::ok(NAME, detail)
}

/// `maxmemory` (summed over Cluster primaries) against what `load` needs at the
/// worst, as `tidegate capacity` figures it.
async fn redis_headroom(conn: &Connection, load: Load) -> Check {
    const NAME: &str = "redis headroom";
    let infos = match memory(conn).await {
        Ok(infos) => infos,
        Err(e) => return Check::fail(NAME, format!("cannot read INFO memory: {e}"), "allow INFO to tidegate's user"),
    };
    let sum = |key| infos.iter().map(|i| number(i, key)).sum::<u64>();
    let (maxmemory, used) = (sum("maxmemory"), sum("used_memory"));
    let plan = load.plan();
    let worst = plan.redis_used.ceil() as u64;
    let detail = format!(
        "{} incidents, {} storm scopes, {} sources need {} at the worst; maxmemory {}, used {}",
        load.incidents,
        load.storm_scopes,
        load.sources,
        bytes(worst),
        bytes(maxmemory),
        bytes(used)
    );
    let fix = format!(
        "set maxmemory to {} (CONFIG SET maxmemory {}, and in redis.conf), as `tidegate capacity` advises",
        bytes(plan.redis_maxmemory),
        plan.redis_maxmemory
    );
    if maxmemory == 0 {
        return Check::warn(NAME, format!("{detail} (unbounded)"), fix);
    }
    if maxmemory < worst {
        return Check::fail(NAME, detail, fix);
    }
    if maxmemory < 2 * worst {
        return Check::warn(NAME, format!("{detail}: less than twice the worst case"), fix);
    }
    Check::ok(NAME, detail)
}

/// Bytes, in the largest binary unit that keeps one decimal meaningful.
fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / (1u64 << 10) as f64),
        n => format!("{n} B"),
    }
}

// ---------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------

/// How long one Kubernetes check may take.
fn kube_budget(config: &Config) -> Duration {
    config.kube.deadline.max(Duration::from_secs(5))
}

/// `fut`, or a timeout error after `budget`.
async fn within<T>(budget: Duration, fut: impl Future<Output = kube::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(budget, fut).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {budget:?}")),
    }
}

/// Reachability, the CRD, and every grant the sink needs.
pub async fn kube_checks(config: &Config, client: Option<Client>) -> Vec<Check> {
    let budget = kube_budget(config);
    let needed = access::needed(config.kube.owner_chain);
    let (client, reached) = match kube_reach(client, budget).await {
        Ok(reached) => reached,
        Err(check) => {
            let mut checks = vec![check, Check::skip("crd", "Kubernetes is not reachable")];
            checks.extend(needed.iter().map(|p| Check::skip(grant_name(p), "Kubernetes is not reachable")));
            return checks;
        }
    };
    let mut checks = vec![reached, crd(&client, &RemediationRequest::crd(), budget).await];
    let grants = needed.iter().map(|p| grant(&client, p, budget));
    checks.extend(futures::future::join_all(grants).await);
    checks
}

async fn kube_reach(client: Option<Client>, budget: Duration) -> Result<(Client, Check), Check> {
    const NAME: &str = "kubernetes";
    let fix = "run doctor where the gateway runs, with its service account, or set KUBECONFIG to a kubeconfig \
               that reaches the API server";
    let (client, at) = match client {
        Some(client) => (client, String::new()),
        None => {
            let config = kube::Config::infer().await.map_err(|e| Check::fail(NAME, format!("no client: {e}"), fix))?;
            let at = format!(" at {}", config.cluster_url);
            (Client::try_from(config).map_err(|e| Check::fail(NAME, format!("no client: {e}"), fix))?, at)
        }
    };
    let version = within(budget, client.apiserver_version())
        .await
        .map_err(|e| Check::fail(NAME, format!("API server{at} unreachable: {e}"), fix))?;
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let who = within(budget, reviews.create(&PostParams::default(), &SelfSubjectReview::default()))
        .await
        .ok()
        .and_then(|r| r.status?.user_info?.username)
        .map_or(String::new(), |user| format!(", as {user}"));
    Ok((client, Check::ok(NAME, format!("Kubernetes {}{at}{who}", version.git_version))))
}

/// How to install the CRD this build writes.
const CRD_FIX: &str = "install this build's CRD: tidegate crd | kubectl apply -f - (or kubectl apply -k deploy/)";

/// The CRD `expected` is installed, serves its version, and has its schema.
pub async fn crd(client: &Client, expected: &CustomResourceDefinition, budget: Duration) -> Check {
    const NAME: &str = "crd";
    let name = expected.name_any();
    let version = &expected.spec.versions[0];
    let fix = CRD_FIX;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let installed = match tokio::time::timeout(budget, crds.get_opt(&name)).await {
        Ok(Ok(Some(installed))) => installed,
        Ok(Ok(None)) => return Check::fail(NAME, format!("{name} is not installed"), fix),
        Ok(Err(kube::Error::Api(status))) if status.code == 403 => {
            return crd_served(client, expected, budget).await;
        }
        Ok(Err(e)) => return Check::fail(NAME, format!("cannot read {name}: {e}"), fix),
        Err(_) => return Check::fail(NAME, format!("cannot read {name}: no answer within {budget:?}"), fix),
    };
    let Some(served) = installed.spec.versions.iter().find(|v| v.name == version.name && v.served) else {
        let versions: Vec<&str> =
            installed.spec.versions.iter().filter(|v| v.served).map(|v| v.name.as_str()).collect();
        return Check::fail(NAME, format!("{name} serves {versions:?}; this build writes {}", version.name), fix);
    };
    let schema = |v: &CustomResourceDefinitionVersion| {
        serde_json::to_value(v.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref())).unwrap_or(Value::Null)
    };
    let mut differences = Vec::new();
    differ(&schema(version), &schema(served), String::new(), &mut differences);
    if !differences.is_empty() {
        let shown: Vec<&str> = differences.iter().take(3).map(String::as_str).collect();
        let more = differences.len().saturating_sub(shown.len());
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        return Check::fail(
            NAME,
            format!("{name} {}: the schema differs from this build's at {}{more}", version.name, shown.join(", ")),
            fix,
        );
    }
    Check::ok(NAME, format!("{name} serves {} with this build's schema", version.name))
}

/// With no right to read CRDs, the version through discovery (which everyone may
/// read); the schema cannot be compared.
async fn crd_served(client: &Client, expected: &CustomResourceDefinition, budget: Duration) -> Check {
    const NAME: &str = "crd";
    let version = &expected.spec.versions[0].name;
    let group_version = format!("{}/{version}", expected.spec.group);
    let plural = &expected.spec.names.plural;
    let served = within(budget, client.list_api_group_resources(&group_version)).await;
    match served {
        Ok(list) if list.resources.iter().any(|r| &r.name == plural) => Check::warn(
            NAME,
            format!("{plural}.{group_version} is served; this identity may not read CRDs, so the schema was not compared"),
            format!(
                "compare as an admin: doctor with an admin kubeconfig, or diff <(tidegate crd) <(kubectl get crd {} -o yaml)",
                expected.name_any()
            ),
        ),
        _ => Check::fail(
            NAME,
            format!("{plural}.{group_version} is not served"),
            CRD_FIX,
        ),
    }
}

/// The paths at which two JSON values differ.
fn differ(expected: &Value, found: &Value, path: String, out: &mut Vec<String>) {
    match (expected, found) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let (x, y) = (a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null));
                differ(x, y, format!("{path}.{key}"), out);
            }
        }
        (a, b) if a != b => out.push(if path.is_empty() { ".".into() } else { path }),
        _ => {}
    }
}

/// The check's name for a permission: the namespace watch has its own.
fn grant_name(p: &Permission) -> String {
    match p.resource.as_str() {
        "namespaces" => "namespace watch".into(),
        resource => format!("rbac {resource}"),
    }
}

/// Asks the API server, one SelfSubjectAccessReview per verb, whether this identity
/// holds `permission` cluster-wide.
pub async fn grant(client: &Client, permission: &Permission, budget: Duration) -> Check {
    let name = grant_name(permission);
    let (resource, subresource) = match permission.resource.split_once('/') {
        Some((resource, sub)) => (resource.to_string(), Some(sub.to_string())),
        None => (permission.resource.clone(), None),
    };
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let asks = permission.verbs.iter().map(|verb| {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(permission.group.clone()),
                    resource: Some(resource.clone()),
                    subresource: subresource.clone(),
                    verb: Some(verb.to_string()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let reviews = reviews.clone();
        async move {
            let answer = within(budget, reviews.create(&PostParams::default(), &review)).await;
            (*verb, answer.map(|r| r.status.is_some_and(|s| s.allowed)))
        }
    });
    let answers = futures::future::join_all(asks).await;
    let group = if permission.group.is_empty() { "core".to_string() } else { permission.group.clone() };
    let what = format!("{} ({group})", permission.resource);
    if let Some((verb, Err(e))) = answers.iter().find(|(_, a)| a.is_err()) {
        return Check::fail(
            name,
            format!("cannot ask whether {verb} {what} is allowed: {e}"),
            "check that the API server answers SelfSubjectAccessReviews",
        );
    }
    let denied: Vec<&str> = answers.iter().filter(|(_, a)| matches!(a, Ok(false))).map(|(v, _)| *v).collect();
    if denied.is_empty() {
        return Check::ok(name, format!("{what}: {} allowed", permission.verbs.join(", ")));
    }
    Check::fail(
        name,
        format!("{what}: {} denied, needed to {}", denied.join(", "), permission.purpose),
        "grant tidegate's ClusterRole to the identity the gateway runs as: kubectl apply -f deploy/rbac.yaml \
         (it binds the service account tidegate-system/tidegate)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<'a>(report: &'a Report, name: &str) -> &'a Check {
        report.get(name).unwrap_or_else(|| panic!("no {name} check in\n{report}"))
    }

    #[test]
    fn storm_scopes_and_sources_go_with_incidents() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            let cli = crate::cli::Cli::try_parse_from(["tidegate", "doctor"].iter().chain(args))?;
            let crate::cli::Command::Doctor(args) = cli.command else { panic!("doctor") };
            Ok::<_, clap::Error>(args.load())
        };
        assert_eq!(parse(&[]).unwrap(), None);
        let load = parse(&["--incidents", "5000", "--sources", "7"]).unwrap().unwrap();
        assert_eq!(load, Load { incidents: 5000, storm_scopes: 100, sources: 7 });
        assert!(parse(&["--sources", "7"]).is_err(), "--sources alone would check nothing");
    }

    #[test]
    fn an_invalid_config_fails_naming_the_key_and_skips_the_rest() {
        let mut config = Config::default();
        config.dedup.window = Duration::from_millis(1500);
        let report = invalid(&config.validate().unwrap_err());
        let failed = check(&report, "config");
        assert_eq!(failed.outcome, Outcome::Fail);
        assert!(failed.detail.starts_with("dedup.window:"), "{}", failed.detail);
        assert!(failed.fix.is_some());
        assert!(report.checks[1..].iter().all(|c| c.outcome == Outcome::Skip), "{report}");
        assert!(report.failed());
    }

    #[test]
    fn a_port_in_use_fails_with_a_fix() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let check = listener(taken.local_addr().unwrap());
        assert_eq!(check.outcome, Outcome::Fail, "{check:?}");
        assert!(check.fix.as_deref().unwrap().contains("another `listen`"), "{check:?}");
        drop(taken);
        assert_eq!(listener("127.0.0.1:0".parse().unwrap()).outcome, Outcome::Ok);
    }

    #[test]
    fn a_writable_sink_dir_passes_and_keeps_no_probe() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(sink_dir(dir.path()).outcome, Outcome::Ok);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the probe file is removed");
    }

    #[test]
    fn a_missing_sink_dir_is_reported_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("remediations");
        let check = sink_dir(&missing);
        assert_eq!(check.outcome, Outcome::Warn, "{check:?}");
        assert!(check.fix.as_deref().unwrap().contains("mkdir -p"), "{check:?}");
        assert!(!missing.exists());
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert_eq!(sink_dir(&file).outcome, Outcome::Fail);
    }

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

    #[test]
    fn schemas_differ_at_the_paths_that_differ() {
        let a = serde_json::json!({"properties": {"spec": {"type": "object"}, "status": {"type": "object"}}});
        let b = serde_json::json!({"properties": {"spec": {"type": "string"}}});
        let mut out = Vec::new();
        differ(&a, &b, String::new(), &mut out);
        assert_eq!(out, [".properties.spec.type", ".properties.status"]);
    }
}
