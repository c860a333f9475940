//! Real Redis servers for the integration tests: standalone servers (plus one shared
//! per test binary), a Sentinel setup (primary, replica, three sentinels) and a
//! three-primary Cluster. Never a mock: the point is to test against the real thing.
//!
//! Needs `redis-server`, `redis-sentinel` and `redis-cli` on `PATH` (Debian:
//! `apt-get install redis-server redis-sentinel redis-tools`).
//!
//! Ground rules for tests:
//! * nothing here ever runs FLUSHALL/FLUSHDB: tests sharing [`shared()`] run in
//!   parallel and must keep to key prefixes of their own;
//! * every server runs with `--save "" --appendonly no`, a 16 MB `maxmemory` and
//!   `noeviction` unless told otherwise, so a leak shows up as OOM errors rather than
//!   silently evicted state;
//! * helpers panic with the server's log on failure, since they only run in tests.
//!
//! Lifecycle: `Drop` kills a server and removes its temp dir; the shared server (a
//! static, never dropped) and anything leaked are stopped by the atexit hook and
//! PDEATHSIG of `process.rs`, which spawns every server and tool.
#![allow(dead_code)]

pub mod cluster;
pub mod report;
pub mod sentinel;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use ::redis::{Client, Connection, RedisResult, Value};
use tempfile::TempDir;

use super::process::{
    self, poll_until, read_from, register_dir, scratch_dir, spawn, tail, unregister_dir, unregister_pid,
};

/// How long a freshly spawned server gets to answer PING before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a Sentinel or Cluster setup gets to converge after its servers are up.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between readiness probes: a fresh connection each time, so keep it cheap.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// Pause between polls of Sentinel/Cluster state (several commands per poll).
const STATE_INTERVAL: Duration = Duration::from_millis(50);
/// Read/write timeout of the helpers' own connections: a wedged server fails the
/// test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster bus listens at port + 10000, which must be free too.
const CLUSTER_BUS_OFFSET: u16 = 10000;
/// Attempts at starting on a fresh port when another process wins the race for one.
const PORT_ATTEMPTS: usize = 20;

/// The Sentinel master name used by [`SentinelSetup`].
pub const MASTER_NAME: &str = "mymaster";

/// Fingerprints recorded by tests against the [`shared()`] server; the exit-time memory
/// report divides the memory growth by this. Tests add to it themselves.
pub static FINGERPRINTS: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------------------
// Standalone servers
// ---------------------------------------------------------------------------------

/// Options of one `redis-server`. `Default` is what every test server uses unless it
/// says otherwise: 16 MB, `noeviction`.
///
/// (Not called `RedisOptions`, to stay out of the way of `tidegate::state::redis::RedisOptions`.)
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// `--maxmemory`, e.g. `"16mb"`.
    pub maxmemory: String,
    /// `--maxmemory-policy`, e.g. `"noeviction"`.
    pub maxmemory_policy: String,
    /// `--replicaof 127.0.0.1 <port>`.
    pub replica_of: Option<u16>,
    /// Cluster mode: `--cluster-enabled yes`, a `nodes-PORT.conf` in the server's own
    /// dir, a 2 s node timeout. The port is chosen so that port + 10000 (the cluster
    /// bus) is free too.
    pub cluster: bool,
    /// Also listen for TLS on a port of its own (see [`RedisServer::tls_url`]); the
    /// plain port stays open for the harness' own probes.
    pub tls: Option<ServerTls>,
    /// Anything else, appended last, e.g. `["--hz", "100"]`.
    pub extra_args: Vec<String>,
}

/// A server's TLS files (PEM), and whether it demands a client certificate.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that client certificates must chain to.
    pub ca: PathBuf,
    pub require_client_cert: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            maxmemory: "16mb".into(),
            maxmemory_policy: "noeviction".into(),
            replica_of: None,
            cluster: false,
            tls: None,
            extra_args: Vec::new(),
        }
    }
}

/// What a [`RedisServer`] runs.
enum Kind {
    Server(ServerOptions),
    /// `redis-sentinel <dir>/sentinel.conf`; `body` is the config minus `port`/`dir`,
    /// which are only known once a port is picked.
    Sentinel {
        body: String,
        /// Also serve TLS on a port of its own, and talk TLS to the data servers.
        tls: Option<ServerTls>,
    },
}

/// One `redis-server` (or `redis-sentinel`) child process on 127.0.0.1, with a temp
/// dir of its own for its log, replication temp files, cluster/sentinel config.
///
/// Methods take `&self` (the child sits behind a mutex) so that a `&'static` shared
/// server and the servers inside a [`SentinelSetup`] can be killed and restarted too.
pub struct RedisServer {
    port: u16,
    /// The TLS port, for a server started with [`ServerOptions::tls`].
    tls_port: Option<u16>,
    kind: Kind,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    // Last, so the dir goes only after `Drop::drop` has killed the process.
    dir: TempDir,
}

/// Why a spawn attempt failed.
enum StartError {
    /// Someone else got the port first: worth another port (or, on restart, another try).
    AddrInUse,
    Failed(String),
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING. Panics with the
    /// server's log if it exits or does not answer within 10 s.
    pub fn start(opts: ServerOptions) -> RedisServer {
        Self::launch(Kind::Server(opts))
    }

    fn launch(kind: Kind) -> RedisServer {
        let dir = scratch_dir();
        register_dir(dir.path());
        let log = dir.path().join("redis.log");
        let bus = matches!(&kind, Kind::Server(o) if o.cluster);
        let tls = match &kind {
            Kind::Server(o) => o.tls.is_some(),
            Kind::Sentinel { tls, .. } => tls.is_some(),
        };
        let mut server = RedisServer { port: 0, tls_port: None, kind, log, child: Mutex::new(None), dir };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = process::pick_port(bus.then_some(CLUSTER_BUS_OFFSET));
            server.tls_port = tls.then(|| process::pick_port(None));
            if let Kind::Sentinel { body, tls } = &server.kind {
                // Written once per port; on restart the sentinel keeps the config it
                // rewrote itself (known replicas, sentinels, epochs), as in production.
                let mut conf = format!("port {}\ndir {}\n{body}", server.port, server.dir.path().display());
                if let (Some(tls), Some(tls_port)) = (tls, server.tls_port) {
                    // `tls-replication`: the sentinel talks TLS to the data servers too.
                    conf.push_str(&format!(
                        "tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                         tls-auth-clients no\ntls-replication yes\n",
                        tls.cert.display(),
                        tls.key.display(),
                        tls.ca.display()
                    ));
                }
                fs::write(server.sentinel_conf(), conf).expect("write sentinel.conf");
            }
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(StartError::AddrInUse) => last = format!("port {} was taken", server.port),
                Err(StartError::Failed(why)) => panic!("{} failed to start: {why}", server.describe()),
            }
        }
        panic!("{} could not get a free port after {PORT_ATTEMPTS} attempts ({last})", server.describe());
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rediss://127.0.0.1:TLS_PORT`, for a server started with TLS.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port.expect("a server started with ServerOptions::tls"))
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(Child::id)
    }

    /// A `RedisStore` on this server as a bench drives it: the gateway's prefix,
    /// window and storm rules, a timeout no hiccup of a loaded machine reaches, and
    /// no memory monitor running alongside.
    pub async fn bench_store(&self) -> tidegate::state::redis::RedisStore {
        let config = tidegate::state::redis::RedisConfig {
            timeout: Duration::from_secs(5),
            monitor_interval: Duration::from_secs(3600),
            ..Default::default()
        };
        let topology = self.url().parse().expect("a redis:// URL");
        let (window, storms) = (Duration::from_secs(300), tidegate::state::StormConfig::default());
        let metrics = std::sync::Arc::new(tidegate::telemetry::Metrics::new());
        tidegate::state::redis::RedisStore::connect(&topology, &config, window, &storms, metrics)
            .await
            .expect("connecting")
    }

    /// `127.0.0.1:PORT`, as `redis-cli --cluster` and Sentinel spell addresses.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's own temp dir (log, cluster or sentinel config).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn client(&self) -> Client {
        Client::open(self.url()).expect("redis client")
    }

    /// A fresh sync connection with 5 s timeouts.
    pub fn connection(&self) -> Connection {
        connect(self.port).unwrap_or_else(|e| panic!("connect to {}: {e}", self.describe()))
    }

    /// Is the process still alive? (Reaps it if it has exited.)
    pub fn is_running(&self) -> bool {
        let mut child = self.lock_child();
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                if let Some(c) = child.take() {
                    unregister_pid(c.id());
                }
                false
            }
            None => false,
        }
    }

    /// SIGKILL, then wait for the process to be gone. A no-op if it is not running.
    /// The port is closed once this returns, so clients see connection refused.
    pub fn kill(&self) {
        if let Some(child) = self.lock_child().take() {
            process::kill(child);
        }
    }

    /// Starts the server again on the same port with the same options (killing it first
    /// if it is still running) and waits until it answers PING. No persistence, so it
    /// comes back empty — except a cluster node, which keeps its `nodes-PORT.conf` and
    /// rejoins, and a sentinel, which keeps its rewritten config.
    pub fn restart(&self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                // The port cannot change, so all we can do is wait for whoever took it.
                Err(StartError::AddrInUse) if Instant::now() < deadline => thread::sleep(STATE_INTERVAL),
                Err(StartError::AddrInUse) => panic!("{}: port still taken after 10 s", self.describe()),
                Err(StartError::Failed(why)) => panic!("{} failed to restart: {why}", self.describe()),
            }
        }
    }

    /// `INFO <section>` as a map (`# Section` headers dropped).
    pub fn info(&self, section: &str) -> HashMap<String, String> {
        try_info(self.port, section).unwrap_or_else(|e| panic!("INFO {section} on {}: {e}", self.describe()))
    }

    /// `CONFIG SET key value`.
    pub fn config_set(&self, key: &str, value: &str) {
        let mut con = self.connection();
        let () = ::redis::cmd("CONFIG")
            .arg("SET")
            .arg(key)
            .arg(value)
            .query(&mut con)
            .unwrap_or_else(|e| panic!("CONFIG SET {key} {value} on {}: {e}", self.describe()));
    }

    /// `DBSIZE`.
    pub fn dbsize(&self) -> u64 {
        try_dbsize(self.port).unwrap_or_else(|e| panic!("DBSIZE on {}: {e}", self.describe()))
    }

    /// Everything the process(es) wrote to stdout/stderr/log, across restarts.
    pub fn log(&self) -> String {
        read_from(&self.log, 0)
    }

    fn describe(&self) -> String {
        match &self.kind {
            Kind::Server(_) => format!("redis-server on port {}", self.port),
            Kind::Sentinel { .. } => format!("redis-sentinel on port {}", self.port),
        }
    }

    fn sentinel_conf(&self) -> PathBuf {
        self.dir.path().join("sentinel.conf")
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn command(&self) -> Command {
        let port = self.port.to_string();
        let mut cmd = match &self.kind {
            Kind::Server(o) => {
                let mut cmd = Command::new("redis-server");
                cmd.args(["--port", &port, "--bind", "127.0.0.1", "--daemonize", "no"])
                    .args(["--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(self.dir.path())
                    .args(["--maxmemory", &o.maxmemory, "--maxmemory-policy", &o.maxmemory_policy])
                    // Diskless full syncs otherwise wait 5 s for more replicas to show
                    // up, which would stall every replica start (and failback) by 5 s.
                    .args(["--repl-diskless-sync-delay", "0"]);
                if let Some(primary) = o.replica_of {
                    cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
                }
                if o.cluster {
                    cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                        .arg("--cluster-config-file")
                        .arg(self.dir.path().join(format!("nodes-{port}.conf")));
                }
                if let (Some(tls), Some(tls_port)) = (&o.tls, self.tls_port) {
                    cmd.args(["--tls-port", &tls_port.to_string()])
                        .arg("--tls-cert-file")
                        .arg(&tls.cert)
                        .arg("--tls-key-file")
                        .arg(&tls.key)
                        .arg("--tls-ca-cert-file")
                        .arg(&tls.ca)
                        .args(["--tls-auth-clients", if tls.require_client_cert { "yes" } else { "no" }]);
                }
                cmd.args(&o.extra_args);
                cmd
            }
            Kind::Sentinel { .. } => {
                let mut cmd = Command::new("redis-sentinel");
                cmd.arg(self.sentinel_conf());
                cmd
            }
        };
        // Append, so a restart keeps the earlier runs' log for post-mortems.
        let log = OpenOptions::new().create(true).append(true).open(&self.log).expect("open redis log");
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("clone log fd")).stderr(log);
        cmd
    }

    /// Spawns the process and polls until it answers PING. The probe also checks that
    /// the PID behind the port is ours, so a server that lost the port race is never
    /// mistaken for ready because someone else's server answered.
    fn spawn_and_wait(&self) -> Result<(), StartError> {
        let log_offset = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let child = spawn(self.command()).map_err(|e| {
            StartError::Failed(format!(
                "spawn failed: {e} (is it installed? apt-get install redis-server redis-sentinel redis-tools)"
            ))
        })?;
        let pid = child.id();
        *self.lock_child() = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if probe_pid(self.port) == Some(pid) {
                return Ok(());
            }
            if let Some(status) = self.try_reap() {
                let log = read_from(&self.log, log_offset);
                if log.contains("Address already in use") {
                    return Err(StartError::AddrInUse);
                }
                return Err(StartError::Failed(format!("exited with {status}; log:\n{log}")));
            }
            if Instant::now() >= deadline {
                self.kill();
                let log = read_from(&self.log, log_offset);
                return Err(StartError::Failed(format!("no answer to PING within 10 s; log:\n{log}")));
            }
            thread::sleep(PROBE_INTERVAL);
        }
    }

    /// Reaps the child if it has exited, returning its status.
    fn try_reap(&self) -> Option<ExitStatus> {
        let mut guard = self.lock_child();
        let status = guard.as_mut()?.try_wait().ok()??;
        if let Some(c) = guard.take() {
            unregister_pid(c.id());
        }
        Some(status)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        unregister_dir(self.dir.path());
        // `dir` (a TempDir) is dropped right after this and removes the directory.
    }
}

// ---------------------------------------------------------------------------------
// The shared server and its exit-time memory report
// ---------------------------------------------------------------------------------

static SHARED: OnceLock<RedisServer> = OnceLock::new();
/// `used_memory` of the shared server right after it started.
static BASELINE_USED_MEMORY: AtomicU64 = AtomicU64::new(0);

/// The test binary's shared server (16 MB, `noeviction`), started on first use. Tests
/// share it concurrently, so they must use key prefixes of their own and must not kill,
/// restart or reconfigure it. It is stopped by the atexit hook.
pub fn shared() -> &'static RedisServer {
    SHARED.get_or_init(|| {
        let server = RedisServer::start(ServerOptions::default());
        let baseline = server.info("memory").get("used_memory").and_then(|v| v.parse().ok()).unwrap_or(0);
        BASELINE_USED_MEMORY.store(baseline, Ordering::Relaxed);
        server
    })
}

/// Runs a short-lived tool to completion, failing the test with its output if it fails
/// or takes longer than `timeout`. It goes through [`spawn`] like the servers: if the
/// test binary dies meanwhile, `redis-cli --cluster create` would otherwise wait
/// forever for dead nodes to join.
fn run_to_completion(mut cmd: Command, timeout: Duration) {
    let dir = scratch_dir();
    let out_path = dir.path().join("out");
    let out = fs::File::create(&out_path).expect("create output file");
    cmd.stdin(Stdio::null()).stdout(out.try_clone().expect("clone fd")).stderr(out);
    let what = format!("{cmd:?}");
    let mut child = spawn(cmd).unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let status = poll_until(timeout, STATE_INTERVAL, || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    unregister_pid(child.id());
    let output = read_from(&out_path, 0);
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("{what} failed with {s}:\n{output}"),
        None => panic!("{what} did not finish within {timeout:?}:\n{output}"),
    }
}

// ---------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------

fn connect(port: u16) -> RedisResult<Connection> {
    let client = Client::open(format!("redis://127.0.0.1:{port}"))?;
    let con = client.get_connection_with_timeout(IO_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

/// PING, then the `process_id` behind the port (sentinels answer INFO too).
fn probe_pid(port: u16) -> Option<u32> {
    let mut con = connect(port).ok()?;
    let pong: String = ::redis::cmd("PING").query(&mut con).ok()?;
    if pong != "PONG" {
        return None;
    }
    let text: String = ::redis::cmd("INFO").arg("server").query(&mut con).ok()?;
    parse_info(&text).get("process_id")?.parse().ok()
}

fn try_info(port: u16, section: &str) -> RedisResult<HashMap<String, String>> {
    let mut con = connect(port)?;
    let text: String = ::redis::cmd("INFO").arg(section).query(&mut con)?;
    Ok(parse_info(&text))
}

fn try_dbsize(port: u16) -> RedisResult<u64> {
    let mut con = connect(port)?;
    ::redis::cmd("DBSIZE").query(&mut con)
}

/// `key:value` lines of INFO / CLUSTER INFO, read by the gateway's own parser.
fn parse_info(text: &str) -> HashMap<String, String> {
    tidegate::state::redis::info::Info::parse(text).into_fields()
}
