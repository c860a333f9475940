//! Chaos with an independent ledger: tidegate's delivery promise checked while the
//! parts around it fail at random.
//!
//! Run with `cargo bench --bench chaos`. Topology, all real processes on loopback:
//!
//! * Redis through Sentinel: a primary, a replica and three sentinels
//!   (`tests/support/redis/sentinel.rs`, no persistence, as the tests run it);
//! * two gateway replicas, each a `tidegate serve` process (the binary cargo built)
//!   with `--state redis+sentinel://…` and `--sink kube`, sharing that Redis;
//! * the real kube-apiserver and etcd of the kube tests (`scripts/kube-testenv`),
//!   reached by the gateways only through the fault proxy
//!   (`tests/support/kube/proxy.rs`), as the service account `deploy/` defines.
//!
//! Senders: `CHAOS_SENDERS` tasks post Alertmanager webhook bodies of 1–4 alerts
//! each, spread over both replicas. They retry as Alertmanager's notifier does
//! (`notify/notify.go`, `RetryStage`): a 5xx or a connection error is retried with
//! exponential backoff (0.5 s, ×1.5, ±50 %, capped; Alertmanager caps at 60 s, the
//! smoke run at 2 s), a 4xx is final. Alertmanager gives up at the flush deadline
//! and sends the group again at the next flush; here the retry simply goes on until
//! the body is answered 2xx, which is the same for the ledger. A connection error
//! sends the retry to the other replica, as a load balancer would.
//!
//! Faults, at random times from a seeded schedule (`CHAOS_SEED`, printed), on two
//! tracks that overlap:
//!
//! * state and processes, one at a time: `kill -9` of the Redis primary restarted at
//!   once (it comes back empty, and its replica resyncs from it: Redis loses
//!   everything), `kill -9` of the primary restarted after Sentinel has failed over,
//!   `SENTINEL FAILOVER`, `CLIENT PAUSE` (`ALL` or `WRITE`) of the primary, and SIGKILL
//!   of a gateway replica, restarted once it is gone;
//! * the Kubernetes API, through the proxy: bursts of 500s, bursts of 429s, the API
//!   down (503 to everything, watches cut) for a few seconds, and cut watches.
//!
//! The ledger is the senders': per incident, the alerts of every body answered 2xx
//! (acknowledged), with the time of each answer, and the alerts of every attempt not
//! answered 2xx (unacknowledged: any of them may have been recorded before a timeout
//! or a dropped connection). A poller lists the RemediationRequests straight from the
//! API server (as admin, not through the proxy) every 200 ms, so the count each
//! request had in the cluster is known at any moment.
//!
//! At the end the faults stop, every body still being retried is answered, the
//! gateways' status writers drain (`tidegate_status_updates_pending` at 0, then
//! SIGTERM, which writes anything left), and the requests are checked against the
//! ledger. What "exactly once" can mean under at-least-once retries, precisely, for
//! incident `i` whose request counts `C`:
//!
//! * **counted in exactly one request**: `i` has exactly one RemediationRequest, and
//!   no request exists that is not some incident's (storm folding is set out of
//!   reach, see below), so every acknowledged alert of `i` can only be counted there;
//! * **never counted more than sent**: `C ≤ A + U`, with `A` the acknowledged alerts
//!   and `U` the unacknowledged attempts: an attempt answered 5xx or cut may have been
//!   recorded, and its retry is counted again (at-least-once), but nothing else can
//!   add to a count;
//! * **counts lost within the documented bound** (docs/delivery.md, "What a crash
//!   loses"): the one thing that loses counts is a gateway process dying before its
//!   status writer wrote what it counted. Each process counts an incident under a
//!   writer id of its own, and a request's status keeps every writer's tally, so a
//!   Redis that loses state, fails over or pauses costs no count (it decides which
//!   request an alert belongs to, never how many occurrences it has). For each
//!   gateway SIGKILL `k` of replica `r` at time `t`, let `L_k` be the alerts of `i`
//!   that `r` acknowledged since its previous kill, minus the tally the killed
//!   process had in the cluster at `t` (as the poller last saw it before `t`, which
//!   only widens `L_k`; each process's half of its writer ids is read from its
//!   `tidegate_status_writer` metric when it is ready). Then `C ≥ A − Σ_k L_k` must
//!   hold: any count lost to Redis, to the API faults or to a bug, and not to a
//!   kill, fails the run.
//!
//! The population: `CHAOS_INCIDENTS` incidents (distinct alert name and Deployment,
//! one namespace), every one repeating all run long. Storm thresholds are set out of
//! reach (`storm.rate_threshold`, `storm.pattern_threshold`) so that every alert has
//! exactly one request that must count it: its incident's. Storm accounting under
//! faults is not covered by this run.
//!
//! Knobs (environment): `CHAOS_SECONDS` (chaos phase, default 300; 45 in smoke),
//! `CHAOS_SEED` (default: from the clock), `CHAOS_SENDERS` (default 32; 12 in smoke),
//! `CHAOS_INCIDENTS` (default 40; 16 in smoke); `CHAOS_TRACE=1` prints, for the
//! incident that lost the most, every change of its count in the cluster against its
//! acknowledged alerts, between the faults. docs/chaos.md has the findings and figures.
//!
//! Without `--bench` (as `cargo test --benches`, and so `scripts/test`, runs it) it is
//! a smoke run: 45 s of chaos in which every fault kind happens at least once, and
//! a non-zero exit on any violation. The full run exits non-zero on a violation too.
//! Needs `redis-server`, `redis-sentinel` and the kube test environment
//! (`export TIDEGATE_KUBE_TESTENV=$(scripts/kube-testenv)`, or it is built on first use).

#[path = "common/knobs.rs"]
mod knobs;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use knobs::knob;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::{json, Value};
use support::kube::proxy::{Fault, Matching};
use support::kube::Kube;
use support::process;
use support::redis::sentinel::SentinelSetup;
use support::redis::MASTER_NAME;
use tidegate::remediation::RemediationRequest;

/// How often the poller lists the requests.
const POLL: Duration = Duration::from_millis(200);
/// One attempt's timeout, as a sender's HTTP client would have.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a gateway may take to become ready after a (re)start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long Redis may take to settle on one primary with a linked replica.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the senders get, after the chaos, to have every body answered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the status writers get to drain.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

struct Settings {
    smoke: bool,
    seconds: u64,
    seed: u64,
    senders: usize,
    incidents: usize,
    /// The longest backoff between retries.
    backoff_cap: Duration,
    /// Pause between faults of a track, in seconds.
    gap: (f64, f64),
}

impl Settings {
    fn from_env(smoke: bool) -> Settings {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
            knob(name).unwrap_or(default)
        }
        let clock_seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        let settings = Settings {
            smoke,
            seconds: var("CHAOS_SECONDS", if smoke { 45 } else { 300 }),
            seed: var("CHAOS_SEED", clock_seed),
            senders: var("CHAOS_SENDERS", if smoke { 12 } else { 32 }),
            incidents: var("CHAOS_INCIDENTS", if smoke { 16 } else { 40 }),
            backoff_cap: if smoke { Duration::from_secs(2) } else { Duration::from_secs(60) },
            gap: if smoke { (0.5, 2.5) } else { (2.0, 10.0) },
        };
        assert!(settings.seconds >= 10, "CHAOS_SECONDS must be at least 10");
        assert!((1..=1024).contains(&settings.senders), "CHAOS_SENDERS must be in 1..=1024");
        assert!((1..=10_000).contains(&settings.incidents), "CHAOS_INCIDENTS must be in 1..=10000");
        settings
    }
}

fn main() -> ExitCode {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let settings = Settings::from_env(smoke);
    println!(
        "chaos: {} s of faults, {} senders, {} incidents, seed {} (CHAOS_SEED={} reproduces the schedule)",
        settings.seconds, settings.senders, settings.incidents, settings.seed, settings.seed
    );
    if smoke {
        println!("SMOKE MODE (not run by `cargo bench`): a short run in which every fault happens at least once");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run(settings))
}

// ---------------------------------------------------------------------------------
// A seeded random source (SplitMix64): the schedule must be reproducible from the seed.

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [lo, hi).
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.next() >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
    }

    /// A second stream, for a task of its own.
    fn fork(&mut self) -> Rng {
        Rng(self.next())
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

// ---------------------------------------------------------------------------------
// The ledger: what the senders know, and nothing tidegate says about itself.

/// One incident: an alert name on a Deployment of the run's namespace.
struct Incident {
    alertname: String,
    deployment: String,
}

impl Incident {
    fn nth(n: usize) -> Incident {
        Incident { alertname: format!("ChaosAlert{:02}", n % 8), deployment: format!("svc-{:03}", n / 8) }
    }
}

#[derive(Default)]
struct Book {
    /// When each acknowledged alert was answered, and by which replica, in order.
    acked: Vec<(Instant, usize)>,
    /// Alerts in attempts not answered 2xx.
    unacked: u64,
    /// Request names the gateways answered for this incident.
    names: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Tally {
    notifications: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    answered_5xx: AtomicU64,
    transport_errors: AtomicU64,
    answered_4xx: AtomicU64,
    /// 2xx answers whose result for an alert was neither `created` nor `duplicate`.
    odd_results: AtomicU64,
    alerts_acked: AtomicU64,
    alerts_rejected: AtomicU64,
}

struct Ledger {
    books: Vec<Mutex<Book>>,
    tally: Tally,
    /// A few examples of what went wrong, for the report.
    notes: Mutex<Vec<String>>,
}

impl Ledger {
    fn book(&self, i: usize) -> MutexGuard<'_, Book> {
        self.books[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note(&self, what: String) {
        let mut notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        if notes.len() < 20 {
            notes.push(what);
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------
// The faults

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    RedisKillRestart,
    RedisKillFailover,
    SentinelFailover,
    ClientPause,
    GatewayKill,
    Kube500,
    Kube429,
    KubeDown,
    KubeCutWatches,
}

const STATE_FAULTS: [Kind; 5] =
    [Kind::RedisKillRestart, Kind::RedisKillFailover, Kind::SentinelFailover, Kind::ClientPause, Kind::GatewayKill];
const KUBE_FAULTS: [Kind; 4] = [Kind::Kube500, Kind::Kube429, Kind::KubeDown, Kind::KubeCutWatches];

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::RedisKillRestart => "redis primary kill -9, restarted at once (comes back empty)",
            Kind::RedisKillFailover => "redis primary kill -9, restarted after Sentinel failed over",
            Kind::SentinelFailover => "SENTINEL FAILOVER",
            Kind::ClientPause => "CLIENT PAUSE of the primary",
            Kind::GatewayKill => "gateway replica SIGKILL and restart",
            Kind::Kube500 => "Kubernetes API: burst of 500s",
            Kind::Kube429 => "Kubernetes API: burst of 429s",
            Kind::KubeDown => "Kubernetes API down (503, watches cut)",
            Kind::KubeCutWatches => "Kubernetes API: watches cut",
        }
    }
}

/// A fault that happened, from its start to when the system was whole again.
#[derive(Clone, Debug)]
struct Event {
    kind: Kind,
    start: Instant,
    end: Instant,
    /// The replica a gateway SIGKILL killed (at `start`): the one fault that can lose
    /// counts, those its status writer held.
    killed: Option<usize>,
    detail: String,
}

/// Which faults come next: first every kind once in a shuffled order (so a short run
/// sees each), then kinds at random.
struct Schedule {
    rng: Rng,
    kinds: &'static [Kind],
    first: Vec<Kind>,
}

impl Schedule {
    fn new(mut rng: Rng, kinds: &'static [Kind]) -> Schedule {
        let mut first = kinds.to_vec();
        rng.shuffle(&mut first);
        first.reverse();
        Schedule { rng, kinds, first }
    }

    fn next(&mut self) -> Kind {
        self.first.pop().unwrap_or_else(|| self.kinds[self.rng.below(self.kinds.len() as u64) as usize])
    }

    fn all_seen(&self) -> bool {
        self.first.is_empty()
    }
}

// ---------------------------------------------------------------------------------
// Gateways: `tidegate serve` processes

struct Replica {
    port: u16,
    child: Mutex<Option<Child>>,
    log: PathBuf,
}

/// A replica's process, from when it was ready.
struct Incarnation {
    replica: usize,
    ready: Instant,
    /// Its half of the writer ids of its tallies (`tidegate_status_writer`).
    writer: Option<String>,
}

struct Gateways {
    replicas: Vec<Replica>,
    incarnations: Mutex<Vec<Incarnation>>,
    state_url: String,
    kubeconfig: PathBuf,
    prefix: String,
}

impl Gateways {
    fn url(&self, r: usize) -> String {
        format!("http://127.0.0.1:{}", self.replicas[r].port)
    }

    fn spawn(&self, r: usize) {
        let replica = &self.replicas[r];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&replica.log).expect("gateway log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidegate"));
        cmd.arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", replica.port)])
            .args(["--state", &self.state_url, "--sink", "kube"])
            .args(["--status-interval", "1s", "--shutdown-delay", "0s", "--log", "warn"]);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TIDEGATE_") || key == "KUBECONFIG" {
                cmd.env_remove(key);
            }
        }
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("TIDEGATE_REDIS_PREFIX", &self.prefix)
            // Every alert must have one request that counts it: its incident's.
            .env("TIDEGATE_STORM_RATE_THRESHOLD", "1000000000")
            .env("TIDEGATE_STORM_PATTERN_THRESHOLD", "1000000000")
            // All senders share 127.0.0.1: one source, which is not what is tested.
            .env("TIDEGATE_RATE_LIMIT_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        let child = process::spawn(cmd).expect("spawn tidegate");
        *lock(&replica.child) = Some(child);
    }

    /// Starts replica `r` and waits until `/readyz` answers 200; starts it again if it
    /// exits meanwhile (it cannot start while the API server is down).
    fn start(&self, r: usize) -> Instant {
        let deadline = Instant::now() + READY_TIMEOUT;
        self.spawn(r);
        loop {
            if http_get(self.replicas[r].port, "/readyz").is_some_and(|(status, _)| status == 200) {
                let ready = Instant::now();
                let writer = http_get(self.replicas[r].port, "/metrics").and_then(|(_, body)| {
                    let line = body.lines().find_map(|l| l.strip_prefix("tidegate_status_writer{writer=\""))?;
                    Some(line.split('"').next()?.to_string())
                });
                lock(&self.incarnations).push(Incarnation { replica: r, ready, writer });
                return ready;
            }
            let exited = lock(&self.replicas[r].child).as_mut().map(|c| c.try_wait().ok().flatten());
            if let Some(Some(status)) = exited {
                if let Some(child) = lock(&self.replicas[r].child).take() {
                    process::kill(child);
                }
                println!("  (replica {r} exited with {status} while starting; starting it again)");
                self.spawn(r);
            }
            assert!(Instant::now() < deadline, "replica {r} not ready within {READY_TIMEOUT:?}; log:\n{}", self.log(r));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn sigkill(&self, r: usize) {
        if let Some(child) = lock(&self.replicas[r].child).take() {
            process::kill(child);
        }
    }

    /// SIGTERM and wait: a graceful stop writes every pending status.
    fn stop(&self, r: usize) -> Option<std::process::ExitStatus> {
        let mut child = lock(&self.replicas[r].child).take()?;
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        process::kill(child);
        status
    }

    fn log(&self, r: usize) -> String {
        let text = std::fs::read_to_string(&self.replicas[r].log).unwrap_or_default();
        process::tail(&text, 4000).to_string()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A bare HTTP/1.1 GET on 127.0.0.1: the status and body, or `None` if it failed.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Some((status, body))
}

/// `tidegate_status_updates_pending` of a replica, if it answers.
fn pending_writes(port: u16) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics")?;
    body.lines().find_map(|l| l.strip_prefix("tidegate_status_updates_pending ")).and_then(|v| v.trim().parse().ok())
}

/// A kubeconfig naming the proxy, with the gateway's service-account token.
fn write_kubeconfig(dir: &Path, server: &str, token: &str) -> PathBuf {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "chaos", "cluster": {"server": server}}],
        "users": [{"name": "tidegate", "user": {"token": token}}],
        "contexts": [{"name": "chaos", "context": {"cluster": "chaos", "user": "tidegate"}}],
        "current-context": "chaos",
    });
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).expect("write kubeconfig");
    path
}

// ---------------------------------------------------------------------------------
// Redis through Sentinel: who is primary, and waiting until the setup is whole

fn redis_con(port: u16) -> Option<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let con = client.get_connection_with_timeout(Duration::from_secs(1)).ok()?;
    con.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    con.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    Some(con)
}

/// The primary every answering sentinel (at least two) names.
fn sentinels_primary(setup: &SentinelSetup) -> Option<u16> {
    let mut views = Vec::new();
    for s in setup.sentinels() {
        let Some(mut con) = redis_con(s.port()) else { continue };
        let addr: Option<Vec<String>> =
            redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(MASTER_NAME).query(&mut con).ok().flatten();
        if let Some(port) = addr.and_then(|a| a.get(1)?.parse::<u16>().ok()) {
            views.push(port);
        }
    }
    let first = *views.first()?;
    (views.len() >= 2 && views.iter().all(|&p| p == first)).then_some(first)
}

/// `INFO replication` of a data server, as a map.
fn replication(port: u16) -> Option<HashMap<String, String>> {
    let mut con = redis_con(port)?;
    let text: String = redis::cmd("INFO").arg("replication").query(&mut con).ok()?;
    Some(text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_owned(), v.trim().to_owned())).collect())
}

/// Waits until the sentinels agree on a primary that says it is one, whose replica
/// is linked to it. A primary the sentinels name that came back as a replica (a
/// server restarted with its original `--replicaof`) is made a primary again, as it
/// was before it died. Returns the primary's port.
fn converge(setup: &SentinelSetup) -> u16 {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        if let Some(primary) = sentinels_primary(setup) {
            let role = replication(primary).and_then(|i| i.get("role").cloned());
            if role.as_deref() == Some("slave") {
                if let Some(mut con) = redis_con(primary) {
                    let _: redis::RedisResult<()> = redis::cmd("REPLICAOF").arg("NO").arg("ONE").query(&mut con);
                }
            }
            let other = setup.servers().iter().map(|s| s.port()).find(|&p| p != primary).expect("two servers");
            let linked = replication(other).is_some_and(|i| {
                i.get("role").map(String::as_str) == Some("slave")
                    && i.get("master_port").map(String::as_str) == Some(&primary.to_string())
                    && i.get("master_link_status").map(String::as_str) == Some("up")
            });
            if role.as_deref() == Some("master") && linked {
                return primary;
            }
        }
        if Instant::now() > deadline {
            let mut diag = String::new();
            for s in setup.servers() {
                let _ =
                    write!(diag, "\n--- {}: {:?}\n{}", s.port(), replication(s.port()), process::tail(&s.log(), 1500));
            }
            for s in setup.sentinels() {
                let _ = write!(diag, "\n--- sentinel {}:\n{}", s.port(), process::tail(&s.log(), 1500));
            }
            panic!("Redis did not settle on one primary with a linked replica within {CONVERGE_TIMEOUT:?}{diag}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the sentinels name a primary other than `old` that says it is one.
fn wait_new_primary(setup: &SentinelSetup, old: u16) -> u16 {
    new_primary_within(setup, old, CONVERGE_TIMEOUT)
        .unwrap_or_else(|| panic!("no failover away from {old} within {CONVERGE_TIMEOUT:?}"))
}

/// The primary other than `old` the sentinels name and that says it is one, once
/// there is one within `timeout`.
fn new_primary_within(setup: &SentinelSetup, old: u16, timeout: Duration) -> Option<u16> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(p) = sentinels_primary(setup).filter(|&p| p != old) {
            if replication(p).and_then(|i| i.get("role").cloned()).as_deref() == Some("master") {
                return Some(p);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------
// The fault tracks

/// The state and process track: one fault at a time, on a thread of its own (the
/// Redis helpers block).
fn state_track(
    setup: Arc<SentinelSetup>,
    gateways: Arc<Gateways>,
    mut rng: Rng,
    settings: (Duration, (f64, f64), bool),
    events: Arc<Mutex<Vec<Event>>>,
) {
    let (length, gap, smoke) = settings;
    let began = Instant::now();
    let mut schedule = Schedule::new(rng.fork(), &STATE_FAULTS);
    while began.elapsed() < length || (smoke && !schedule.all_seen()) {
        std::thread::sleep(Duration::from_secs_f64(rng.between(gap.0, gap.1)));
        let kind = schedule.next();
        let before = converge(&setup);
        let start = Instant::now();
        let mut killed = None;
        let mut detail = match kind {
            Kind::RedisKillRestart => {
                let server = setup.server(before);
                server.kill();
                server.restart();
                format!("primary {before}")
            }
            Kind::RedisKillFailover => {
                setup.server(before).kill();
                let promoted = wait_new_primary(&setup, before);
                setup.server(before).restart();
                format!("primary {before} killed, {promoted} promoted")
            }
            Kind::SentinelFailover => {
                // A sentinel refuses while it has not yet seen the replica healthy
                // (NOGOODSLAVE) or is still in its last failover (INPROG), and a
                // failover it accepted can still be aborted (the replica not
                // promoted within failover-timeout): ask again, as an operator would.
                let deadline = Instant::now() + CONVERGE_TIMEOUT;
                let mut refusals = Vec::new();
                let promoted = loop {
                    let accepted = setup.sentinels().iter().any(|s| {
                        redis_con(s.port()).is_some_and(|mut con| {
                            let asked = redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER_NAME).query::<()>(&mut con);
                            asked.map_err(|e| refusals.push(e.to_string())).is_ok()
                        })
                    });
                    let wait = if accepted { Duration::from_secs(15) } else { Duration::from_millis(200) };
                    if let Some(promoted) = new_primary_within(&setup, before, wait) {
                        break promoted;
                    }
                    assert!(Instant::now() < deadline, "no failover away from {before}: {refusals:?}");
                };
                format!("{before} → {promoted}")
            }
            Kind::ClientPause => {
                let ms = rng.between(200.0, 2000.0) as u64;
                let mode = if rng.below(2) == 0 { "ALL" } else { "WRITE" };
                let mut con = redis_con(before).expect("the primary answers");
                let () = redis::cmd("CLIENT").arg("PAUSE").arg(ms).arg(mode).query(&mut con).expect("CLIENT PAUSE");
                std::thread::sleep(Duration::from_millis(ms));
                format!("{ms} ms {mode}")
            }
            Kind::GatewayKill => {
                let r = rng.below(gateways.replicas.len() as u64) as usize;
                killed = Some(r);
                gateways.sigkill(r);
                let ready = gateways.start(r);
                format!("replica {r}, ready again after {:.1} s", (ready - start).as_secs_f64())
            }
            _ => unreachable!("not a state fault"),
        };
        let after = converge(&setup);
        if after != before && kind == Kind::ClientPause {
            // A pause long enough for the sentinels to take the primary for failed.
            let _ = write!(detail, "; the sentinels failed over to {after}");
        }
        let event = Event { kind, start, end: Instant::now(), killed, detail };
        println!("  fault {:>6.1} s: {} ({})", (start - began).as_secs_f64(), kind.describe(), event.detail);
        lock(&events).push(event);
    }
}

/// The Kubernetes track: faults through the proxy.
async fn kube_track(
    kube: Arc<Kube>,
    mut rng: Rng,
    settings: (Duration, (f64, f64), bool),
    events: Arc<Mutex<Vec<Event>>>,
) {
    let (length, gap, smoke) = settings;
    let began = Instant::now();
    let mut schedule = Schedule::new(rng.fork(), &KUBE_FAULTS);
    let requests = Matching { watch: Some(false), ..Matching::any() };
    while began.elapsed() < length || (smoke && !schedule.all_seen()) {
        tokio::time::sleep(Duration::from_secs_f64(rng.between(gap.0, gap.1))).await;
        let kind = schedule.next();
        let start = Instant::now();
        let detail = match kind {
            Kind::Kube500 | Kind::Kube429 => {
                let n = 3 + rng.below(15) as usize;
                let fault = if kind == Kind::Kube500 { Fault::InternalError } else { Fault::TooManyRequests };
                kube.proxy.fail_next(n, fault, requests.clone());
                format!("the next {n} requests")
            }
            Kind::KubeDown => {
                let secs = rng.between(1.0, 5.0);
                kube.proxy.set_down(true);
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                kube.proxy.set_down(false);
                format!("{secs:.1} s")
            }
            Kind::KubeCutWatches => {
                kube.proxy.cut_watches();
                String::new()
            }
            _ => unreachable!("not a Kubernetes fault"),
        };
        println!("  fault {:>6.1} s: {} {detail}", (start - began).as_secs_f64(), kind.describe());
        lock(&events).push(Event { kind, start, end: Instant::now(), killed: None, detail });
    }
}

// ---------------------------------------------------------------------------------
// Senders

struct Senders {
    client: reqwest::Client,
    urls: Vec<String>,
    namespace: String,
    incidents: Vec<Incident>,
    ledger: Ledger,
    /// Set when no new notification is to be started.
    stopping: AtomicBool,
    backoff_cap: Duration,
}

impl Senders {
    fn body(&self, picks: &[usize], serial: u64) -> Vec<u8> {
        let alerts: Vec<Value> = picks
            .iter()
            .map(|&i| {
                let incident = &self.incidents[i];
                json!({
                    "status": "firing",
                    "labels": {
                        "alertname": incident.alertname,
                        "namespace": self.namespace,
                        "deployment": incident.deployment,
                        "severity": "warning",
                    },
                    "annotations": {"summary": format!("{} on {}", incident.alertname, incident.deployment)},
                    "startsAt": "2026-11-27T10:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus:9090/graph",
                    "fingerprint": format!("{i:016x}"),
                })
            })
            .collect();
        serde_json::to_vec(&json!({
            "version": "4",
            "groupKey": format!("{{}}:{{chaos=\"{serial}\"}}"),
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "tidegate",
            "groupLabels": {},
            "commonLabels": {"namespace": self.namespace},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": alerts,
        }))
        .expect("JSON")
    }
}

/// Alertmanager's backoff (`cenkalti/backoff` defaults): 0.5 s, ×1.5, ±50 %, capped.
struct Backoff {
    next: f64,
    cap: f64,
}

impl Backoff {
    fn delay(&mut self, rng: &mut Rng) -> Duration {
        let current = self.next;
        self.next = (self.next * 1.5).min(self.cap);
        Duration::from_secs_f64(rng.between(current * 0.5, current * 1.5))
    }
}

async fn sender(senders: Arc<Senders>, id: usize, mut rng: Rng) {
    let tally = &senders.ledger.tally;
    let mut replica = id % senders.urls.len();
    let mut serial = 0;
    while !senders.stopping.load(Ordering::Relaxed) {
        let n = 1 + rng.below(4) as usize;
        let mut picks: Vec<usize> = Vec::with_capacity(n);
        while picks.len() < n.min(senders.incidents.len()) {
            let i = rng.below(senders.incidents.len() as u64) as usize;
            if !picks.contains(&i) {
                picks.push(i);
            }
        }
        serial += 1;
        let body = senders.body(&picks, ((id as u64) << 32) | serial);
        add(&tally.notifications, 1);
        let mut backoff = Backoff { next: 0.5, cap: senders.backoff_cap.as_secs_f64() };
        let mut first = true;
        loop {
            add(&tally.attempts, 1);
            if !first {
                add(&tally.retries, 1);
            }
            first = false;
            let sent = senders
                .client
                .post(format!("{}/api/v1/signals/prometheus", senders.urls[replica]))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let answer = match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await;
                    text.map(|t| (status, t))
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok((status, text)) if (200..300).contains(&status) => {
                    acknowledge(&senders, &picks, replica, status, &text);
                    break;
                }
                Ok((status, text)) if (400..500).contains(&status) => {
                    // Final, as for Alertmanager: these alerts are dropped for good.
                    add(&tally.answered_4xx, 1);
                    add(&tally.alerts_rejected, picks.len() as u64);
                    senders.ledger.note(format!("{status} for a valid body: {}", process::tail(&text, 300)));
                    break;
                }
                Ok(_) => {
                    add(&tally.answered_5xx, 1);
                }
                Err(_) => {
                    add(&tally.transport_errors, 1);
                    replica = (replica + 1) % senders.urls.len();
                }
            }
            for &i in &picks {
                senders.ledger.book(i).unacked += 1;
            }
            tokio::time::sleep(backoff.delay(&mut rng)).await;
        }
        // Alertmanager sends a group at most once per group_interval; many groups
        // make the load. A short pause keeps two cores for the servers.
        tokio::time::sleep(Duration::from_millis(20 + rng.below(60))).await;
    }
}

/// Records a 2xx answer in the ledger: every alert of the body is acknowledged.
fn acknowledge(senders: &Senders, picks: &[usize], replica: usize, status: u16, text: &str) {
    let now = Instant::now();
    let tally = &senders.ledger.tally;
    let parsed: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let results: Vec<Value> = match parsed.get("results") {
        Some(Value::Array(results)) => results.clone(),
        _ => vec![parsed.clone()],
    };
    if results.len() != picks.len() {
        add(&tally.odd_results, 1);
        senders.ledger.note(format!("{status} with {} results for {} alerts: {text}", results.len(), picks.len()));
    }
    for (k, &i) in picks.iter().enumerate() {
        let result = results.get(k).cloned().unwrap_or(Value::Null);
        let outcome = result["status"].as_str().unwrap_or("");
        if !matches!(outcome, "created" | "duplicate") {
            add(&tally.odd_results, 1);
            senders.ledger.note(format!("{status}, alert {k} answered {result}"));
        }
        let mut book = senders.ledger.book(i);
        book.acked.push((now, replica));
        if let Some(name) = result["name"].as_str() {
            *book.names.entry(name.to_string()).or_default() += 1;
        }
    }
    add(&tally.alerts_acked, picks.len() as u64);
}

// ---------------------------------------------------------------------------------
// The poller: what the cluster held, and when

/// Each request's count as listed over time: name → (when, count) at each change;
/// and its tallies, by the process that wrote them (the first 8 hex digits of the
/// writer id), at each change.
#[derive(Default)]
struct Seen {
    series: HashMap<String, Vec<(Instant, u64)>>,
    tallies: HashMap<String, Vec<(Instant, ByProcess)>>,
}

/// Counts by the writing process's half of the writer id.
type ByProcess = BTreeMap<String, u64>;

/// A request's tallies summed by writing process.
fn tallies_of(rr: &RemediationRequest) -> ByProcess {
    let mut by_process = BTreeMap::new();
    let tallies = rr.status.as_ref().and_then(|s| s.deduplication.as_ref()).map(|d| d.tallies.as_slice());
    for t in tallies.unwrap_or_default() {
        *by_process.entry(t.writer.chars().take(8).collect()).or_default() += t.count;
    }
    by_process
}

fn count_of(rr: &RemediationRequest) -> u64 {
    rr.status.as_ref().and_then(|s| s.deduplication.as_ref()).map_or(0, |d| d.occurrence_count)
}

async fn poller(api: Api<RemediationRequest>, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(list) = api.list(&ListParams::default()).await {
            let now = Instant::now();
            let mut seen = lock(&seen);
            for rr in &list.items {
                let series = seen.series.entry(rr.name_any()).or_default();
                let count = count_of(rr);
                if series.last().is_none_or(|&(_, last)| last != count) {
                    series.push((now, count));
                }
                let tallies = tallies_of(rr);
                let series = seen.tallies.entry(rr.name_any()).or_default();
                if series.last().is_none_or(|(_, last)| *last != tallies) {
                    series.push((now, tallies));
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

impl Seen {
    /// What `process` had counted on `name` when last listed at or before `at`.
    fn landed(&self, name: &str, process: &str, at: Instant) -> u64 {
        let listed = self.tallies.get(name).and_then(|s| s.iter().rev().find(|(t, _)| *t <= at));
        listed.and_then(|(_, tallies)| tallies.get(process)).copied().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------
// The run

async fn run(settings: Settings) -> ExitCode {
    let mut rng = Rng(settings.seed);
    let started = Instant::now();

    let kube = Arc::new(Kube::new().await);
    let namespace = kube.namespace("chaos", &[]).await;
    let setup = Arc::new(tokio::task::spawn_blocking(SentinelSetup::start).await.expect("Sentinel setup"));
    let sentinels: Vec<String> =
        setup.sentinel_urls().iter().map(|u| u.trim_start_matches("redis://").to_string()).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let gateways = Arc::new(Gateways {
        replicas: (0..2)
            .map(|r| Replica {
                port: process::pick_port(None),
                child: Mutex::new(None),
                log: dir.path().join(format!("tidegate-{r}.log")),
            })
            .collect(),
        incarnations: Mutex::default(),
        state_url: format!("redis+sentinel://{}/{MASTER_NAME}", sentinels.join(",")),
        kubeconfig: write_kubeconfig(dir.path(), &kube.proxy.url, kube.gateway_token()),
        prefix: format!("chaos{}:", std::process::id()),
    });
    {
        let gateways = gateways.clone();
        tokio::task::spawn_blocking(move || {
            for r in 0..gateways.replicas.len() {
                gateways.start(r);
            }
        })
        .await
        .expect("starting the gateways");
    }
    println!(
        "set up in {:.1} s: API server through the fault proxy, Redis primary + replica + 3 sentinels, 2 gateways; namespace {namespace}",
        started.elapsed().as_secs_f64()
    );

    let senders = Arc::new(Senders {
        client: reqwest::Client::builder().timeout(ATTEMPT_TIMEOUT).build().expect("HTTP client"),
        urls: (0..gateways.replicas.len()).map(|r| gateways.url(r)).collect(),
        namespace: namespace.clone(),
        incidents: (0..settings.incidents).map(Incident::nth).collect(),
        ledger: Ledger {
            books: (0..settings.incidents).map(|_| Mutex::default()).collect(),
            tally: Tally::default(),
            notes: Mutex::default(),
        },
        stopping: AtomicBool::new(false),
        backoff_cap: settings.backoff_cap,
    });
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop_polling = Arc::new(AtomicBool::new(false));
    let poll_task =
        tokio::spawn(poller(Api::namespaced(kube.admin.clone(), &namespace), seen.clone(), stop_polling.clone()));
    let sender_tasks: Vec<_> =
        (0..settings.senders).map(|id| tokio::spawn(sender(senders.clone(), id, rng.fork()))).collect();

    // The chaos.
    let events = Arc::new(Mutex::new(Vec::new()));
    let length = Duration::from_secs(settings.seconds);
    let track = (length, settings.gap, settings.smoke);
    let chaos_started = Instant::now();
    let state = {
        let (setup, gateways, rng, events) = (setup.clone(), gateways.clone(), rng.fork(), events.clone());
        tokio::task::spawn_blocking(move || state_track(setup, gateways, rng, track, events))
    };
    let kube_faults = tokio::spawn(kube_track(kube.clone(), rng.fork(), track, events.clone()));
    let (state, kube_faults) = tokio::join!(state, kube_faults);
    if let Err(e) = state.and(kube_faults) {
        eprintln!("a fault track failed: {e}");
        return ExitCode::FAILURE;
    }
    let chaos = chaos_started.elapsed();
    println!("chaos over after {:.1} s; the system is whole again, draining the senders", chaos.as_secs_f64());

    // Whole again: faults cleared, one primary with its replica, both gateways up.
    kube.proxy.clear_faults();
    kube.proxy.set_down(false);
    {
        let (setup, gateways) = (setup.clone(), gateways.clone());
        tokio::task::spawn_blocking(move || {
            converge(&setup);
            for r in 0..gateways.replicas.len() {
                let running =
                    lock(&gateways.replicas[r].child).as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none());
                if !running {
                    gateways.start(r);
                }
            }
        })
        .await
        .expect("restoring the system");
    }

    // Every notification in flight is retried until answered.
    senders.stopping.store(true, Ordering::Relaxed);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, futures::future::join_all(sender_tasks)).await;
    let undelivered = drained.is_err();

    // The status writers drain, then a graceful stop writes whatever is left.
    let settle_started = Instant::now();
    let settled = {
        let gateways = gateways.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            let mut quiet = 0;
            while quiet < 3 && Instant::now() < deadline {
                let all_zero = gateways.replicas.iter().all(|r| pending_writes(r.port) == Some(0.0));
                quiet = if all_zero { quiet + 1 } else { 0 };
                std::thread::sleep(Duration::from_millis(500));
            }
            let stops: Vec<_> = (0..gateways.replicas.len()).map(|r| gateways.stop(r)).collect();
            (quiet >= 3, stops)
        })
        .await
        .expect("settling")
    };
    println!(
        "settled in {:.1} s (status writers drained: {}; graceful stops: {:?})",
        settle_started.elapsed().as_secs_f64(),
        settled.0,
        settled.1
    );
    // One last look at the requests, after every write.
    tokio::time::sleep(POLL * 2).await;
    stop_polling.store(true, Ordering::Relaxed);
    let _ = poll_task.await;
    let api: Api<RemediationRequest> = Api::namespaced(kube.admin.clone(), &namespace);
    let requests = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            eprintln!("listing the requests failed: {e}");
            return ExitCode::FAILURE;
        }
    };

    let events = lock(&events).clone();
    if std::env::var_os("CHAOS_TRACE").is_some() {
        trace(&senders, &requests, &lock(&seen), &events, chaos_started);
    }
    let report = check(&senders, &gateways, &requests, &lock(&seen), &events);
    print_report(&settings, chaos, &senders, &events, &report, undelivered, settled.0);
    let tally = &senders.ledger.tally;
    let failed =
        !report.violations.is_empty() || undelivered || get(&tally.answered_4xx) > 0 || get(&tally.odd_results) > 0;
    if failed {
        for r in 0..gateways.replicas.len() {
            eprintln!("--- gateway {r} log (tail):\n{}", gateways.log(r));
        }
        eprintln!("chaos run FAILED (seed {}): see the violations above", settings.seed);
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------
// The check

#[derive(Default)]
struct Report {
    incidents: usize,
    requests: usize,
    acked: u64,
    unacked: u64,
    counted: u64,
    /// Σ max(0, A − C): acknowledged alerts the requests do not count.
    lost: u64,
    /// Σ max(0, C − A): counts from attempts that were never acknowledged.
    extra: u64,
    /// Σ of each incident's loss bound.
    bound: u64,
    /// The incident that came closest to its bound: (lost, bound).
    worst: (u64, u64),
    violations: Vec<String>,
}

fn check(
    senders: &Senders,
    gateways: &Gateways,
    requests: &[RemediationRequest],
    seen: &Seen,
    events: &[Event],
) -> Report {
    let mut report = Report { incidents: senders.incidents.len(), requests: requests.len(), ..Report::default() };
    let index: HashMap<(&str, &str), usize> = senders
        .incidents
        .iter()
        .enumerate()
        .map(|(i, inc)| ((inc.alertname.as_str(), inc.deployment.as_str()), i))
        .collect();
    let mut per_incident: Vec<Vec<&RemediationRequest>> = vec![Vec::new(); senders.incidents.len()];
    for rr in requests {
        let key = (rr.spec.signal_name.as_str(), rr.spec.target_resource.name.as_str());
        match index.get(&key) {
            Some(&i) if rr.spec.storm.is_none() => per_incident[i].push(rr),
            _ => report.violations.push(format!(
                "request {} ({} on {}/{}) is no incident's own request",
                rr.name_any(),
                rr.spec.signal_name,
                rr.spec.target_resource.kind,
                rr.spec.target_resource.name
            )),
        }
    }
    let kills: Vec<(usize, Instant)> = events.iter().filter_map(|e| Some((e.killed?, e.start))).collect();
    let incarnations = lock(&gateways.incarnations);
    for (i, rrs) in per_incident.iter().enumerate() {
        let incident = &senders.incidents[i];
        let book = senders.ledger.book(i);
        let acked = book.acked.len() as u64;
        let counted: u64 = rrs.iter().map(|rr| count_of(rr)).sum();
        let names: Vec<String> = rrs.iter().map(|rr| rr.name_any()).collect();
        report.acked += acked;
        report.unacked += book.unacked;
        report.counted += counted;
        if acked > 0 && rrs.len() != 1 {
            report.violations.push(format!(
                "{} on {}: {} requests {names:?} for one incident (answered names {:?})",
                incident.alertname,
                incident.deployment,
                rrs.len(),
                book.names
            ));
        }
        // The documented loss: at each SIGKILL, what the killed process acknowledged
        // and its tallies in the cluster did not hold yet (see the module doc).
        let mut bound = 0;
        for (k, &(r, at)) in kills.iter().enumerate() {
            let since = kills[..k].iter().rev().find(|(killed, _)| *killed == r).map(|&(_, t)| t);
            let acked_by = book.acked.iter().filter(|&&(t, by)| by == r && t <= at && since.is_none_or(|s| t > s));
            let killed = incarnations.iter().rev().find(|inc| inc.replica == r && inc.ready <= at);
            let process = killed.and_then(|inc| inc.writer.as_deref());
            let landed: u64 = process.map_or(0, |p| names.iter().map(|n| seen.landed(n, p, at)).sum());
            bound += (acked_by.count() as u64).saturating_sub(landed);
        }
        let lost = acked.saturating_sub(counted);
        let extra = counted.saturating_sub(acked);
        report.lost += lost;
        report.extra += extra;
        report.bound += bound;
        if lost > 0 && (report.worst.1 == 0 || lost * report.worst.1 > report.worst.0 * bound) {
            report.worst = (lost, bound);
        }
        if lost > bound {
            report.violations.push(format!(
                "{} on {}: {acked} acknowledged, {counted} counted: {lost} lost, more than the documented bound of {bound}",
                incident.alertname, incident.deployment
            ));
        }
        if counted > acked + book.unacked {
            report.violations.push(format!(
                "{} on {}: {counted} counted, more than the {acked} acknowledged plus {} unacknowledged attempts",
                incident.alertname, incident.deployment, book.unacked
            ));
        }
    }
    report
}

/// `CHAOS_TRACE=1`: for the incident that lost the most, every change of its count
/// in the cluster against its acknowledged alerts, and the faults, in time order.
fn trace(senders: &Senders, requests: &[RemediationRequest], seen: &Seen, events: &[Event], began: Instant) {
    let names_of = |i: usize| -> Vec<String> {
        let incident = &senders.incidents[i];
        requests
            .iter()
            .filter(|rr| {
                rr.spec.signal_name == incident.alertname && rr.spec.target_resource.name == incident.deployment
            })
            .map(|rr| rr.name_any())
            .collect()
    };
    let lost = |i: usize| {
        let counted: u64 = requests.iter().filter(|rr| names_of(i).contains(&rr.name_any())).map(count_of).sum();
        (senders.ledger.book(i).acked.len() as u64).saturating_sub(counted)
    };
    let worst = (0..senders.incidents.len()).max_by_key(|&i| lost(i)).unwrap_or(0);
    let (names, lost) = (names_of(worst), lost(worst));
    let book = senders.ledger.book(worst);
    let mut lines: Vec<(Instant, String)> = Vec::new();
    for name in &names {
        for &(t, count) in seen.series.get(name).map(Vec::as_slice).unwrap_or_default() {
            let acked = book.acked.partition_point(|a| a.0 <= t);
            lines.push((t, format!("count {count:>6}  acked {acked:>6}  gap {:>6}", acked as i64 - count as i64)));
        }
    }
    for e in events {
        lines.push((e.start, format!("  >> {:?} begins ({})", e.kind, e.detail)));
        lines.push((e.end, format!("  << {:?} over", e.kind)));
    }
    lines.sort_by_key(|(t, _)| *t);
    println!("trace of incident {worst} ({names:?}), lost {lost}:");
    for (t, line) in lines {
        println!("  {:>6.1} s  {line}", t.saturating_duration_since(began).as_secs_f64());
    }
}

fn print_report(
    settings: &Settings,
    chaos: Duration,
    senders: &Senders,
    events: &[Event],
    report: &Report,
    undelivered: bool,
    settled: bool,
) {
    let tally = &senders.ledger.tally;
    println!();
    println!("== chaos report (seed {}, {:.0} s of faults)", settings.seed, chaos.as_secs_f64());
    println!("faults injected:");
    let mut counts: BTreeMap<Kind, usize> = BTreeMap::new();
    for e in events {
        *counts.entry(e.kind).or_default() += 1;
    }
    for kind in STATE_FAULTS.iter().chain(&KUBE_FAULTS) {
        println!("  {:>4}  {}", counts.get(kind).copied().unwrap_or(0), kind.describe());
    }
    println!("  ({} of them can lose counts: gateway SIGKILLs)", events.iter().filter(|e| e.killed.is_some()).count());
    println!("senders ({} of them):", settings.senders);
    println!(
        "  notifications {}, attempts {}, retries {}",
        get(&tally.notifications),
        get(&tally.attempts),
        get(&tally.retries)
    );
    println!(
        "  answered 5xx {}, connection errors or timeouts {}, 4xx {} ({} alerts dropped)",
        get(&tally.answered_5xx),
        get(&tally.transport_errors),
        get(&tally.answered_4xx),
        get(&tally.alerts_rejected)
    );
    println!(
        "  alerts acknowledged {}, alert-attempts unacknowledged {}, odd results {}",
        get(&tally.alerts_acked),
        report.unacked,
        get(&tally.odd_results)
    );
    println!("ledger against the cluster:");
    println!("  incidents {}, requests {}", report.incidents, report.requests);
    println!(
        "  acknowledged {}, counted {} ({:+}): lost {}, counted beyond acknowledged {} (of {} unacknowledged attempts)",
        report.acked,
        report.counted,
        report.counted as i64 - report.acked as i64,
        report.lost,
        report.extra,
        report.unacked
    );
    println!(
        "  documented loss bound, summed over incidents: {} (worst incident: lost {} of a bound of {})",
        report.bound, report.worst.0, report.worst.1
    );
    let check = |ok: bool| if ok { "ok" } else { "VIOLATED" };
    let one_request = !report.violations.iter().any(|v| v.contains("requests") || v.contains("no incident"));
    let within = !report.violations.iter().any(|v| v.contains("bound") || v.contains("more than the"));
    println!("checks:");
    println!("  every acknowledged alert counted in exactly one request: {}", check(one_request && within));
    println!("  no incident has two open requests: {}", check(one_request));
    println!("  counts lost within the documented bound: {}", check(within));
    println!("  no valid alert answered 4xx: {}", check(get(&tally.answered_4xx) == 0));
    println!("  every alert of a 2xx answered created or duplicate: {}", check(get(&tally.odd_results) == 0));
    println!("  every notification answered 2xx in the end: {}", check(!undelivered));
    println!(
        "  status writers drained before the stop: {}",
        if settled { "yes" } else { "no (the graceful stop wrote the rest)" }
    );
    for v in &report.violations {
        println!("  VIOLATION: {v}");
    }
    for n in lock(&senders.ledger.notes).iter() {
        println!("  note: {n}");
    }
}
