//! Soak: tidegate under a steady half load for a long time, watching for anything
//! that grows.
//!
//! Run with `cargo bench --bench soak`. For each store (`SOAK_STATE=memory|redis|both`,
//! default both, one after the other) it:
//!
//! 1. probes the maximum throughput: a fresh `tidegate serve` driven flat out by
//!    `SOAK_WORKERS` senders for `SOAK_PROBE_SECONDS` (after a 3 s warm-up), with the
//!    same workload as the soak;
//! 2. starts a fresh gateway (and, for Redis, a fresh `redis-server` with `maxmemory
//!    64mb`, `noeviction`, as docs/redis.md recommends) and drives it at half that
//!    rate (or `SOAK_RATE` alerts/s) for `SOAK_MINUTES` (default 30);
//! 3. every `SOAK_SAMPLE_SECONDS` (default 10) samples the gateway's RSS (`VmRSS`) and
//!    open file descriptors, Redis `used_memory` and `DBSIZE`, the client-side p50
//!    and p99 latency of the interval's requests, the status-write backlog
//!    (`tidegate_status_updates_pending`), the rate achieved and any failed request;
//! 4. writes the series to `<SOAK_OUT>/soak-<state>.csv` (default `docs/soak/`), fits a
//!    least-squares line over the last 20 minutes (the last two thirds of a shorter
//!    run), prints each metric's growth over that span relative to its mean (the
//!    target: under 1 %, and p99 not rising), and plots the series to
//!    `<SOAK_OUT>/soak-<state>.png` with Debian's `gnuplot` (skipped with a message
//!    if it is missing: `apt-get install -y gnuplot-nox`).
//!
//! The workload churns, so that windows really lapse and nothing is measured at a
//! standing population only:
//!
//! * `SOAK_INCIDENTS` (default 5,000) incident slots, each its own (alert name,
//!   namespace) scope. A slot's incident fires for 60–180 s, repeated in every pass over
//!   the slots; then half of them are resolved (one `status: resolved` alert) and half
//!   simply stop repeating and expire after `dedup.window`. Either way the slot starts
//!   a new incident (a new pod, so a new fingerprint). About 40 incidents open per
//!   second, and as many end.
//! * Storms come and go: every 90 s a burst of one alert on 30 pods of a fresh
//!   namespace, lasting 45 s, which opens a pattern storm that closes after
//!   `storm.inactivity`.
//! * The gateway runs with short windows so that all of this lapses many times in a
//!   run: `dedup.window` 2m, `storm.inactivity` 30s, `storm.max_duration` 2m. Each
//!   slot's incident repeats many times a second, which the default rate-storm rule
//!   (10 alerts a minute per scope) would call a storm, so `storm.rate_threshold` is
//!   set out of reach; storms here are pattern storms.
//!
//! In steady state the number of open incidents, storm scopes and sink index entries
//! is bounded, so flat memory is what a correct gateway shows. Alerts go in batches
//! of 10 per webhook request from `SOAK_WORKERS` (default 32) senders, each from a
//! loopback address of its own (tidegate rate-limits per source); pacing is by one
//! shared schedule, so a slow answer delays that sender and the others catch up.
//!
//! `cargo test --benches` runs this file without `--bench`: a smoke test of a few
//! seconds per store at a fixed 2,000 alerts/s with 1 s samples, seconds-long windows,
//! the CSV in a temporary directory and no plot, failing on any failed request or
//! missing sample.

use knobs::knob;
use proc::vm_rss;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alerts::{splitmix64, ALERT_NAMES};
use bytes::Bytes;

use tidegate_testkit::bench::alerts;
use tidegate_testkit::bench::cpu;
use tidegate_testkit::bench::knobs;
use tidegate_testkit::bench::proc;
use tidegate_testkit::process;
use tidegate_testkit::redis as redis_support;

/// Alerts per webhook request.
const BATCH: usize = 10;
/// Pods in one storm burst: past `storm.pattern_threshold` (5).
const STORM_PODS: u64 = 30;
/// The Redis of a soak run: far above what the bounded population needs (a few MB),
/// so growth shows as a slope long before it shows as OOM refusals.
const REDIS_MAXMEMORY: &str = "64mb";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The span the slope is fitted over, at most.
const SLOPE_SPAN: Duration = Duration::from_secs(20 * 60);
/// A sender further behind the schedule than this gives up the missed requests
/// (counted as `late`) rather than bursting them.
const MAX_LAG: Duration = Duration::from_secs(1);

/// What the run looks like: the bench's defaults or the smoke test's.
struct Settings {
    smoke: bool,
    stores: Vec<&'static str>,
    minutes: f64,
    sample: Duration,
    rate: Option<f64>,
    probe: Duration,
    incidents: usize,
    workers: usize,
    out: PathBuf,
    /// Incident lifetimes (uniform), and the storm bursts' period and length.
    life: (Duration, Duration),
    storm_every: Duration,
    storm_len: Duration,
    /// `TIDEGATE_*` settings of the gateway.
    gateway_env: Vec<(&'static str, String)>,
}

impl Settings {
    fn from_env(smoke: bool) -> Self {
        let stores = match std::env::var("SOAK_STATE").as_deref() {
            Err(_) | Ok("both") => vec!["memory", "redis"],
            Ok("memory") => vec!["memory"],
            Ok("redis") => vec!["redis"],
            Ok(other) => panic!("SOAK_STATE={other:?}: memory, redis or both"),
        };
        let secs = Duration::from_secs_f64;
        let (minutes, sample, life, storm_every, storm_len) = if smoke {
            (0.1, 1.0, (secs(1.0), secs(3.0)), secs(2.0), secs(1.5))
        } else {
            (30.0, 10.0, (secs(60.0), secs(180.0)), secs(90.0), secs(45.0))
        };
        let (window, inactivity, max_duration, pattern_window) =
            if smoke { ("2s", "1s", "3s", "2s") } else { ("2m", "30s", "2m", "2m") };
        let gateway_env = vec![
            ("TIDEGATE_DEDUP_WINDOW", window.to_string()),
            ("TIDEGATE_STORM_INACTIVITY", inactivity.to_string()),
            ("TIDEGATE_STORM_MAX_DURATION", max_duration.to_string()),
            ("TIDEGATE_STORM_PATTERN_WINDOW", pattern_window.to_string()),
            ("TIDEGATE_STORM_RATE_THRESHOLD", u32::MAX.to_string()),
            ("TIDEGATE_LOG_FILTER", "warn".to_string()),
        ];
        let out = match std::env::var_os("SOAK_OUT") {
            Some(dir) => PathBuf::from(dir),
            None if smoke => PathBuf::new(), // a temporary directory, chosen in `main`
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/soak"),
        };
        let settings = Settings {
            smoke,
            stores,
            minutes: knob("SOAK_MINUTES").unwrap_or(minutes),
            sample: secs(knob("SOAK_SAMPLE_SECONDS").unwrap_or(sample)),
            rate: knob("SOAK_RATE").or(smoke.then_some(2000.0)),
            probe: secs(knob("SOAK_PROBE_SECONDS").unwrap_or(12.0)),
            incidents: knob("SOAK_INCIDENTS").unwrap_or(if smoke { 200 } else { 5000 }),
            workers: knob("SOAK_WORKERS").unwrap_or(if smoke { 4 } else { 32 }),
            out,
            life,
            storm_every,
            storm_len,
            gateway_env,
        };
        assert!(settings.minutes > 0.0, "SOAK_MINUTES must be positive");
        assert!(settings.sample >= Duration::from_millis(100), "SOAK_SAMPLE_SECONDS must be at least 0.1");
        assert!((1..=1000).contains(&settings.workers), "SOAK_WORKERS must be in 1..=1000");
        assert!(settings.incidents >= BATCH, "SOAK_INCIDENTS must be at least {BATCH}");
        settings
    }
}

fn main() -> ExitCode {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let mut settings = Settings::from_env(smoke);
    let _smoke_out = if smoke && settings.out.as_os_str().is_empty() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        settings.out = dir.path().to_owned();
        Some(dir)
    } else {
        None
    };
    std::fs::create_dir_all(&settings.out).expect("creating SOAK_OUT");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if smoke {
        println!("SMOKE MODE (not run by `cargo bench`): seconds per store, figures are not a soak");
    }
    let busy0 = cpu::machine_busy_seconds();
    std::thread::sleep(Duration::from_millis(500));
    let background = (cpu::machine_busy_seconds() - busy0) / 0.5;
    println!(
        "soak: stores {:?}, {} min each, samples every {:?}, {} incident slots, {} senders; output {}",
        settings.stores,
        settings.minutes,
        settings.sample,
        settings.incidents,
        settings.workers,
        settings.out.display()
    );
    println!("machine: {cores} cores, {background:.2} busy before starting (load generator and gateway share them)");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let mut failed = false;
    for store in settings.stores.clone() {
        match runtime.block_on(soak_store(&settings, store)) {
            Ok(clean) => failed |= !clean,
            Err(e) => {
                eprintln!("soak on {store} failed: {e}");
                failed = true;
            }
        }
    }
    if failed {
        eprintln!("soak: failures, see above");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------
// One store: probe, then soak

/// Returns whether the run was clean (no failed request, samples taken).
async fn soak_store(settings: &Settings, store: &'static str) -> Result<bool, String> {
    println!();
    println!("==== {store} ====");
    let rate = match settings.rate {
        Some(rate) => {
            println!("rate: {rate:.0} alerts/s (SOAK_RATE or the smoke test's)");
            rate
        }
        None => {
            let max = probe(settings, store).await?;
            println!("maximum measured: {max:.0} alerts/s; soaking at half: {:.0} alerts/s", max / 2.0);
            max / 2.0
        }
    };
    let redis = (store == "redis").then(start_redis);
    let mut gateway = Gateway::start(settings, redis.as_ref()).await?;
    let load = Load::new(settings, rate);
    let senders = load.spawn(settings, gateway.addr)?;
    let csv_path = settings.out.join(format!("soak-{store}.csv"));
    let samples = sample_loop(settings, store, &gateway, redis.as_ref(), &load, &csv_path).await?;
    load.stop.store(1, Ordering::Relaxed);
    for s in senders {
        let _ = s.await;
    }
    let tail = load.stats.lock().expect("stats").take();
    gateway.stop();

    let errors: u64 =
        samples.iter().map(|s| s.non_2xx + s.transport_errors).sum::<u64>() + tail.non_2xx + tail.transport_errors;
    let report = analyse(store, rate, &samples, errors);
    print!("{report}");
    std::fs::write(settings.out.join(format!("soak-{store}.txt")), &report).map_err(|e| format!("summary: {e}"))?;
    if !settings.smoke {
        plot(&csv_path, &settings.out.join(format!("soak-{store}.png")), store);
    }
    let enough = samples.len() >= 3 && samples.iter().any(|s| s.requests > 0);
    if !enough {
        eprintln!(
            "only {} samples taken, {} requests answered 2xx",
            samples.len(),
            samples.iter().map(|s| s.requests).sum::<u64>()
        );
    }
    if let Some(first) = tail.first_failure.or_else(|| samples.iter().find_map(|s| s.first_failure.clone())) {
        eprintln!("first failure: {first}");
    }
    Ok(enough && errors == 0)
}

/// Flat out, with the soak's workload, on a gateway (and Redis) of its own: the
/// 2xx alerts per second after a 3 s warm-up.
async fn probe(settings: &Settings, store: &str) -> Result<f64, String> {
    println!("probing the maximum throughput for {:?} (after 3 s of warm-up)", settings.probe);
    let redis = (store == "redis").then(start_redis);
    let mut gateway = Gateway::start(settings, redis.as_ref()).await?;
    let load = Load::new(settings, f64::INFINITY);
    let senders = load.spawn(settings, gateway.addr)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = load.stats.lock().expect("stats").take();
    let started = Instant::now();
    tokio::time::sleep(settings.probe).await;
    let stats = load.stats.lock().expect("stats").take();
    let elapsed = started.elapsed().as_secs_f64();
    load.stop.store(1, Ordering::Relaxed);
    for s in senders {
        let _ = s.await;
    }
    gateway.stop();
    let mut lat = stats.latencies_us;
    lat.sort_unstable();
    println!(
        "  probe: {:.0} alerts/s, p99 {:.2} ms, {} non-2xx, {} transport errors",
        stats.alerts_ok as f64 / elapsed,
        percentile_ms(&lat, 0.99),
        stats.non_2xx,
        stats.transport_errors
    );
    Ok(stats.alerts_ok as f64 / elapsed)
}

fn start_redis() -> redis_support::RedisServer {
    let server = redis_support::RedisServer::start(redis_support::ServerOptions {
        maxmemory: REDIS_MAXMEMORY.into(),
        maxmemory_policy: "noeviction".into(),
        ..Default::default()
    });
    println!("redis-server at {} (maxmemory {REDIS_MAXMEMORY}, noeviction)", server.url());
    server
}

// ---------------------------------------------------------------------------------
// The gateway process

struct Gateway {
    addr: SocketAddr,
    child: Option<Child>,
    /// Holds the sink directory and the log.
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Gateway {
    async fn start(settings: &Settings, redis: Option<&redis_support::RedisServer>) -> Result<Gateway, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], process::pick_port(None)));
        let log = std::fs::File::create(dir.path().join("tidegate.log")).map_err(|e| format!("log: {e}"))?;
        // `SOAK_TIDEGATE_BIN`: a copy of the binary, for a long run beside builds that
        // may replace the one in the target directory.
        let bin = std::env::var("SOAK_TIDEGATE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tidegate").into());
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .args(["--listen", &addr.to_string()])
            .args(["--state", &redis.map_or_else(|| "memory".into(), |r| r.url())])
            .arg("--sink")
            .arg(format!("dir:{}", dir.path().join("sink").display()))
            .args(["--shutdown-delay", "0s"])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| format!("log: {e}"))?)
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TIDEGATE_") {
                command.env_remove(key);
            }
        }
        command.envs(settings.gateway_env.iter().map(|(k, v)| (k, v)));
        let child = process::spawn(command).map_err(|e| format!("starting tidegate: {e}"))?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("client: {e}"))?;
        let mut gateway = Gateway { addr, child: Some(child), dir, client };
        gateway.wait_ready().await?;
        println!("tidegate (pid {}) ready at {addr}", gateway.pid());
        Ok(gateway)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tidegate.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("http://{}/readyz", self.addr);
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("tidegate exited ({status}):\n{}", self.log()));
            }
            if self.client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("tidegate not ready within {START_TIMEOUT:?}:\n{}", self.log()));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    async fn metrics(&self) -> HashMap<String, f64> {
        let url = format!("http://{}/metrics", self.addr);
        let Ok(response) = self.client.get(url).send().await else { return HashMap::new() };
        let text = response.text().await.unwrap_or_default();
        // Sums over label sets, by metric name.
        let mut sums = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let name = series.split('{').next().unwrap_or(series);
            if let Ok(v) = value.parse::<f64>() {
                *sums.entry(name.to_string()).or_insert(0.0) += v;
            }
        }
        sums
    }

    /// SIGTERM, waiting (polling) for the exit; SIGKILL after 30 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let exited =
            process::poll_until(Duration::from_secs(30), Duration::from_millis(20), || child.try_wait().ok().flatten());
        if exited.is_none() {
            println!("tidegate did not stop within 30 s of SIGTERM; killed");
        }
        let log = self.log();
        if !log.trim().is_empty() {
            println!("tidegate logged (warn and above), first lines:");
            for line in log.lines().take(5) {
                println!("  {line}");
            }
        }
        process::kill(child);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            process::kill(child);
        }
    }
}

// ---------------------------------------------------------------------------------
// The workload: a churning population of incidents, and storms that come and go

struct Slot {
    generation: u64,
    ends: Instant,
    firing: String,
}

struct Population {
    started: Instant,
    slots: Vec<Slot>,
    cursor: usize,
    life: (Duration, Duration),
    storm_every: Duration,
    storm_len: Duration,
    storm_cursor: u64,
    starts_at: String,
}

/// The JSON of one alert.
fn alert(status: &str, alertname: &str, namespace: &str, pod: &str, starts_at: &str, ends_at: &str) -> String {
    let severity = if alertname.starts_with("Kube") { "warning" } else { "critical" };
    // Alertmanager's own label hash; any value stable per identity will do (FNV-1a).
    let fingerprint = [alertname, namespace, pod]
        .iter()
        .flat_map(|s| s.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!(
        r#"{{"status":"{status}","labels":{{"alertname":"{alertname}","severity":"{severity}","namespace":"{namespace}","pod":"{pod}","container":"app","job":"kube-state-metrics"}},"annotations":{{"summary":"{alertname} on {namespace}/{pod}"}},"startsAt":"{starts_at}","endsAt":"{ends_at}","generatorURL":"http://prometheus-0:9090/graph","fingerprint":"{fingerprint:016x}"}}"#
    )
}

impl Population {
    fn new(settings: &Settings) -> Self {
        let started = Instant::now();
        let starts_at = jiff::Timestamp::now().to_string();
        let mut population = Population {
            started,
            slots: Vec::with_capacity(settings.incidents),
            cursor: 0,
            life: settings.life,
            storm_every: settings.storm_every,
            storm_len: settings.storm_len,
            storm_cursor: 0,
            starts_at,
        };
        for i in 0..settings.incidents {
            // Staggered: the first generation ends anywhere within one lifetime.
            let first = population.life.1.mul_f64((splitmix64(i as u64) % 1000) as f64 / 1000.0);
            let firing = population.render(i, 0, "firing");
            population.slots.push(Slot { generation: 0, ends: started + first, firing });
        }
        population
    }

    fn identity(i: usize, generation: u64) -> (&'static str, String, String) {
        (
            ALERT_NAMES[i % ALERT_NAMES.len()],
            format!("soak-{:03}", i / ALERT_NAMES.len()),
            format!("app-{i}-g{generation}"),
        )
    }

    fn render(&self, i: usize, generation: u64, status: &str) -> String {
        let (name, namespace, pod) = Self::identity(i, generation);
        let ends_at =
            if status == "firing" { "0001-01-01T00:00:00Z".to_string() } else { jiff::Timestamp::now().to_string() };
        alert(status, name, &namespace, &pod, &self.starts_at, &ends_at)
    }

    fn lifetime(&self, i: usize, generation: u64) -> Duration {
        let (lo, hi) = self.life;
        lo + (hi - lo).mul_f64((splitmix64((i as u64) << 32 ^ generation) % 1000) as f64 / 1000.0)
    }

    /// The next webhook body: the next `BATCH` slots, each slot's incident firing, or
    /// (once its time is up) resolved or silently replaced; and one storm alert in
    /// place of the last while a burst is on.
    fn next_body(&mut self, now: Instant) -> Bytes {
        let mut alerts = Vec::with_capacity(BATCH);
        let storm = self.storm_alert(now);
        let take = if storm.is_some() { BATCH - 1 } else { BATCH };
        for _ in 0..take {
            let i = self.cursor;
            self.cursor = (self.cursor + 1) % self.slots.len();
            let slot = &self.slots[i];
            if now < slot.ends {
                alerts.push(slot.firing.clone());
                continue;
            }
            let generation = slot.generation;
            if splitmix64(i as u64 ^ (generation << 20)).is_multiple_of(2) {
                alerts.push(self.render(i, generation, "resolved"));
            }
            let firing = self.render(i, generation + 1, "firing");
            let ends = now + self.lifetime(i, generation + 1);
            if alerts.len() < take {
                alerts.push(firing.clone());
            }
            self.slots[i] = Slot { generation: generation + 1, ends, firing };
        }
        alerts.extend(storm);
        let mut body = String::with_capacity(alerts.iter().map(String::len).sum::<usize>() + 300);
        body.push_str(
            r#"{"version":"4","groupKey":"{}:{soak}","truncatedAlerts":0,"status":"firing","receiver":"tidegate","groupLabels":{},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://alertmanager:9093","alerts":["#,
        );
        body.push_str(&alerts.join(","));
        body.push_str("]}");
        Bytes::from(body)
    }

    /// While a burst is on (the first `storm_len` of every `storm_every`), one alert
    /// of it: the burst's alert name on the next of its pods, in a namespace of its own.
    fn storm_alert(&mut self, now: Instant) -> Option<String> {
        let t = now.duration_since(self.started);
        let burst = (t.as_secs_f64() / self.storm_every.as_secs_f64()) as u64;
        let into = t.as_secs_f64() - burst as f64 * self.storm_every.as_secs_f64();
        if into >= self.storm_len.as_secs_f64() {
            return None;
        }
        self.storm_cursor += 1;
        let pod = format!("node-exporter-{}", self.storm_cursor % STORM_PODS);
        Some(alert("firing", "NodeNotReady", &format!("storm-{burst}"), &pod, &self.starts_at, "0001-01-01T00:00:00Z"))
    }
}

// ---------------------------------------------------------------------------------
// The load generator

#[derive(Default)]
struct Stats {
    alerts_ok: u64,
    requests_ok: u64,
    latencies_us: Vec<u32>,
    non_2xx: u64,
    transport_errors: u64,
    late: u64,
    first_failure: Option<String>,
}

impl Stats {
    fn take(&mut self) -> Stats {
        std::mem::take(self)
    }
}

struct Load {
    population: Arc<Mutex<Population>>,
    stats: Arc<Mutex<Stats>>,
    /// Request `n` is due at `start + n × period` (at once when flat out).
    next: Arc<AtomicU64>,
    start: Instant,
    period: Duration,
    stop: Arc<AtomicU64>,
}

impl Load {
    fn new(settings: &Settings, rate: f64) -> Self {
        let period = if rate.is_finite() { Duration::from_secs_f64(BATCH as f64 / rate) } else { Duration::ZERO };
        Load {
            population: Arc::new(Mutex::new(Population::new(settings))),
            stats: Arc::new(Mutex::new(Stats::default())),
            next: Arc::new(AtomicU64::new(0)),
            start: Instant::now(),
            period,
            stop: Arc::new(AtomicU64::new(0)),
        }
    }

    fn spawn(&self, settings: &Settings, server: SocketAddr) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
        let url = format!("http://{server}/api/v1/signals/prometheus");
        (0..settings.workers)
            .map(|w| {
                // Sender w's address: 127.0.0.2 + w.
                let source = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + w as u32));
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .http1_only()
                    .local_address(source)
                    .pool_max_idle_per_host(1)
                    .timeout(REQUEST_TIMEOUT)
                    .build()
                    .map_err(|e| format!("client: {e}"))?;
                let (population, stats, next, stop) =
                    (self.population.clone(), self.stats.clone(), self.next.clone(), self.stop.clone());
                let (start, period, url) = (self.start, self.period, url.clone());
                Ok(tokio::spawn(async move {
                    while stop.load(Ordering::Relaxed) == 0 {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let due = start + period.mul_f64(n as f64);
                        let now = Instant::now();
                        if due > now {
                            tokio::time::sleep_until(due.into()).await;
                        } else if period > Duration::ZERO && now - due > MAX_LAG {
                            // Give up the backlog: jump this ticket to the schedule's present.
                            let behind = ((now - due).as_secs_f64() / period.as_secs_f64()) as u64;
                            let _ = next.fetch_max(n + behind, Ordering::Relaxed);
                            stats.lock().expect("stats").late += 1;
                            continue;
                        }
                        let body = population.lock().expect("population").next_body(Instant::now());
                        let sent = Instant::now();
                        let result =
                            client.post(&url).header("content-type", "application/json").body(body).send().await;
                        let outcome = match result {
                            Ok(response) => {
                                let status = response.status();
                                let text = response.bytes().await;
                                match text {
                                    Ok(_) if status.is_success() => Ok(()),
                                    Ok(text) => {
                                        Err((true, format!("HTTP {status}: {}", String::from_utf8_lossy(&text))))
                                    }
                                    Err(e) => Err((false, format!("reading the answer: {e}"))),
                                }
                            }
                            Err(e) => Err((false, format!("{e}"))),
                        };
                        let latency = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                        let mut s = stats.lock().expect("stats");
                        match outcome {
                            Ok(()) => {
                                s.requests_ok += 1;
                                s.alerts_ok += BATCH as u64;
                                s.latencies_us.push(latency);
                            }
                            Err((http, why)) => {
                                if http {
                                    s.non_2xx += 1;
                                } else {
                                    s.transport_errors += 1;
                                }
                                s.first_failure.get_or_insert(why);
                            }
                        }
                    }
                }))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------
// Sampling

struct Sample {
    t_s: f64,
    alerts_per_s: f64,
    requests: u64,
    non_2xx: u64,
    transport_errors: u64,
    late: u64,
    p50_ms: f64,
    p99_ms: f64,
    rss_bytes: f64,
    fds: f64,
    gateway_cores: f64,
    status_pending: f64,
    state_entries: f64,
    storm_windows_open: f64,
    requests_created: f64,
    redis_used_memory: f64,
    redis_keys: f64,
    redis_rss: f64,
    first_failure: Option<String>,
}

const CSV_HEADER: &str = "t_s,alerts_per_s,requests,non_2xx,transport_errors,late,p50_ms,p99_ms,rss_bytes,fds,\
gateway_cores,status_pending,state_entries,storm_windows_open,requests_created,redis_used_memory,redis_keys,redis_rss";

impl Sample {
    fn csv(&self) -> String {
        format!(
            "{:.1},{:.0},{},{},{},{},{:.3},{:.3},{},{},{:.3},{},{},{},{},{},{},{}",
            self.t_s,
            self.alerts_per_s,
            self.requests,
            self.non_2xx,
            self.transport_errors,
            self.late,
            self.p50_ms,
            self.p99_ms,
            self.rss_bytes,
            self.fds,
            self.gateway_cores,
            self.status_pending,
            self.state_entries,
            self.storm_windows_open,
            self.requests_created,
            self.redis_used_memory,
            self.redis_keys,
            self.redis_rss
        )
    }
}

fn open_fds(pid: u32) -> f64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(f64::NAN, |d| d.count() as f64)
}

async fn sample_loop(
    settings: &Settings,
    store: &str,
    gateway: &Gateway,
    redis: Option<&redis_support::RedisServer>,
    load: &Load,
    csv_path: &Path,
) -> Result<Vec<Sample>, String> {
    let mut csv = std::fs::File::create(csv_path).map_err(|e| format!("{}: {e}", csv_path.display()))?;
    writeln!(csv, "{CSV_HEADER}").map_err(|e| format!("csv: {e}"))?;
    let pid = gateway.pid();
    let run = Duration::from_secs_f64(settings.minutes * 60.0);
    let started = Instant::now();
    let mut ticker = tokio::time::interval_at((started + settings.sample).into(), settings.sample);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples = Vec::new();
    let mut last = Instant::now();
    let mut cpu_last = cpu::cpu_seconds(&pid.to_string());
    println!(
        "{:>7} {:>9} {:>8} {:>8} {:>9} {:>5} {:>8} {:>8} {:>9} {:>8} {:>6}",
        "t s", "alerts/s", "p99 ms", "RSS MiB", "fds", "cores", "pending", "entries", "redis MiB", "keys", "errors"
    );
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let interval = now.duration_since(last).as_secs_f64();
        last = now;
        let mut stats = load.stats.lock().expect("stats").take();
        stats.latencies_us.sort_unstable();
        let cpu_now = cpu::cpu_seconds(&pid.to_string());
        let metrics = gateway.metrics().await;
        let metric = |name: &str| metrics.get(name).copied().unwrap_or(f64::NAN);
        let (redis_used_memory, redis_keys, redis_rss) = match redis {
            Some(r) => {
                let info = r.info("memory");
                let get = |k: &str| info.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
                (get("used_memory"), r.dbsize() as f64, get("used_memory_rss"))
            }
            None => (f64::NAN, f64::NAN, f64::NAN),
        };
        let sample = Sample {
            t_s: now.duration_since(started).as_secs_f64(),
            alerts_per_s: stats.alerts_ok as f64 / interval,
            requests: stats.requests_ok,
            non_2xx: stats.non_2xx,
            transport_errors: stats.transport_errors,
            late: stats.late,
            p50_ms: percentile_ms(&stats.latencies_us, 0.50),
            p99_ms: percentile_ms(&stats.latencies_us, 0.99),
            rss_bytes: vm_rss(pid).map_or(f64::NAN, |b| b as f64),
            fds: open_fds(pid),
            gateway_cores: (cpu_now - cpu_last) / interval,
            status_pending: metric("tidegate_status_updates_pending"),
            state_entries: metric("tidegate_state_entries"),
            storm_windows_open: metric("tidegate_storm_windows_open"),
            requests_created: metric("tidegate_remediation_requests_created_total"),
            redis_used_memory,
            redis_keys,
            redis_rss,
            first_failure: stats.first_failure.take(),
        };
        cpu_last = cpu_now;
        writeln!(csv, "{}", sample.csv()).and_then(|()| csv.flush()).map_err(|e| format!("csv: {e}"))?;
        println!(
            "{:>7.0} {:>9.0} {:>8.2} {:>8.1} {:>9} {:>5.2} {:>8} {:>8} {:>9.2} {:>8} {:>6}{}",
            sample.t_s,
            sample.alerts_per_s,
            sample.p99_ms,
            sample.rss_bytes / 1048576.0,
            sample.fds,
            sample.gateway_cores,
            sample.status_pending,
            sample.state_entries,
            sample.redis_used_memory / 1048576.0,
            sample.redis_keys,
            sample.non_2xx + sample.transport_errors,
            if sample.late > 0 { format!("  ({} late)", sample.late) } else { String::new() }
        );
        if let Some(why) = &sample.first_failure {
            println!("  !!! {store}: failure: {}", process::tail(why, 300));
        }
        samples.push(sample);
        if now.duration_since(started) + Duration::from_millis(50) >= run {
            return Ok(samples);
        }
    }
}

/// The `p` quantile of sorted microseconds, in milliseconds (nearest rank).
fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

// ---------------------------------------------------------------------------------
// Slopes

/// Least squares over (x, y): the slope, the mean of y, and the slope's t statistic.
fn fit(points: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 3 {
        return None;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let residual: f64 = points.iter().map(|p| (p.1 - my - slope * (p.0 - mx)).powi(2)).sum();
    let se = (residual / (n - 2.0) / sxx).sqrt();
    let t = if se > 0.0 {
        slope / se
    } else if slope == 0.0 {
        0.0
    } else {
        f64::INFINITY.copysign(slope)
    };
    Some((slope, my, t))
}

/// The report of one store's run: the slope of each metric over the last 20 minutes
/// (or the last two thirds of a shorter run).
fn analyse(store: &str, rate: f64, samples: &[Sample], errors: u64) -> String {
    let mut out = String::new();
    let Some(end) = samples.last().map(|s| s.t_s) else {
        return "no samples\n".into();
    };
    let span = SLOPE_SPAN.as_secs_f64().min(end * 2.0 / 3.0);
    let from = end - span;
    let window: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= from).collect();
    let achieved = window.iter().map(|s| s.alerts_per_s).sum::<f64>() / window.len().max(1) as f64;
    let mut all: Vec<f64> = window.iter().map(|s| s.p99_ms).filter(|v| v.is_finite()).collect();
    all.sort_by(f64::total_cmp);
    let _ = writeln!(
        out,
        "\nsoak on {store}: {:.1} min, {} samples; slope over the last {:.1} min ({} samples)",
        end / 60.0,
        samples.len(),
        span / 60.0,
        window.len()
    );
    let _ = writeln!(
        out,
        "target rate {rate:.0} alerts/s, achieved {achieved:.0} alerts/s over the span; failed requests over the run: {errors}; \
         late (shed) requests: {}",
        samples.iter().map(|s| s.late).sum::<u64>()
    );
    let _ = writeln!(
        out,
        "{:<22} {:>14} {:>14} {:>14} {:>10} {:>8}  verdict (target: growth < 1 % over the span)",
        "metric", "first", "last", "mean", "growth %", "t"
    );
    type Pick = fn(&Sample) -> f64;
    let metrics: [(&str, Pick, bool); 8] = [
        ("gateway RSS (bytes)", |s| s.rss_bytes, true),
        ("open fds", |s| s.fds, true),
        ("p99 latency (ms)", |s| s.p99_ms, false),
        ("status-write backlog", |s| s.status_pending, true),
        ("state entries", |s| s.state_entries, true),
        ("redis used_memory (B)", |s| s.redis_used_memory, true),
        ("redis keys", |s| s.redis_keys, true),
        ("p50 latency (ms)", |s| s.p50_ms, false),
    ];
    for (name, pick, memory_like) in metrics {
        let points: Vec<(f64, f64)> = window.iter().map(|s| (s.t_s, pick(s))).filter(|p| p.1.is_finite()).collect();
        let Some((slope, mean, t)) = fit(&points) else {
            if !points.is_empty() || store == "redis" || !name.starts_with("redis") {
                let _ = writeln!(out, "{name:<22} (too few samples)");
            }
            continue;
        };
        // A count that stays about 0 (the backlog of an idle writer) has no growth
        // in percent; it passes if it stays within one of 0.
        let near_zero = memory_like && mean.abs() < 1.0;
        // Open fds come and go with connections and temporary files: a change of a
        // descriptor or two is jitter, not growth.
        let jitter = name == "open fds" && (slope * span).abs() < 2.0;
        let growth = if near_zero { f64::NAN } else { slope * span / mean * 100.0 };
        let verdict = if near_zero {
            if (slope * span).abs() < 1.0 {
                "PASS (about 0 throughout)"
            } else {
                "FLAG (grows from about 0)"
            }
        } else if growth < 1.0 {
            "PASS"
        } else if jitter {
            "PASS (less than 2 fds over the span)"
        } else if !memory_like && t < 2.0 {
            // Latency is noisy on a shared machine: rising means a significant slope.
            "PASS (not significant: t < 2)"
        } else {
            "FLAG"
        };
        let _ = writeln!(
            out,
            "{name:<22} {:>14.2} {:>14.2} {:>14.2} {:>10.2} {:>8.2}  {verdict}",
            points.first().map_or(f64::NAN, |p| p.1),
            points.last().map_or(f64::NAN, |p| p.1),
            mean,
            growth,
            t
        );
    }
    let _ = writeln!(
        out,
        "p99 over the span: median of the samples {:.2} ms, worst {:.2} ms",
        all.get(all.len() / 2).copied().unwrap_or(f64::NAN),
        all.last().copied().unwrap_or(f64::NAN)
    );
    out
}

// ---------------------------------------------------------------------------------
// Plot

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// Draws the CSV with Debian's gnuplot, if it is installed.
fn plot(csv: &Path, png: &Path, store: &str) {
    let gnuplot = std::env::var("SOAK_GNUPLOT").unwrap_or_else(|_| "gnuplot".into());
    let script = format!(
        r#"set terminal pngcairo size 1400,1000 font ",10" noenhanced
set output "{png}"
set datafile separator ","
set key autotitle columnhead
set key top left
set grid
set xlabel "minutes"
set multiplot layout 3,2 title "tidegate soak, {store} store"
set title "load (alerts/s, 2xx)"
plot "{csv}" using ($1/60):2 with lines title "alerts/s"
set title "latency per request (ms)"
plot "{csv}" using ($1/60):8 with lines title "p99", "" using ($1/60):7 with lines title "p50"
set title "gateway RSS (MiB)"
plot "{csv}" using ($1/60):($9/1048576) with lines title "VmRSS"
set title "open file descriptors (left); status-write backlog (right)"
set y2tics
plot "{csv}" using ($1/60):10 axes x1y1 with lines title "fds", "" using ($1/60):12 axes x1y2 with lines title "status writes pending"
unset y2tics
set title "state entries; storm windows open"
plot "{csv}" using ($1/60):13 with lines title "state entries", "" using ($1/60):($14*100) with lines title "storm windows open x100"
{last}
unset multiplot
"#,
        png = file_name(png),
        csv = file_name(csv),
        last = if store == "redis" {
            format!(
                "set title \"Redis used_memory (MiB) and keys (thousands)\"\n\
                 plot \"{}\" using ($1/60):($16/1048576) with lines title \"used_memory\", \
                 \"\" using ($1/60):($17/1000) with lines title \"keys / 1000\"",
                file_name(csv)
            )
        } else {
            format!(
                "set title \"RemediationRequests created (thousands, cumulative)\"\n\
                 plot \"{}\" using ($1/60):($15/1000) with lines title \"created / 1000\"",
                file_name(csv)
            )
        },
    );
    let script_path = png.with_extension("gp");
    if let Err(e) = std::fs::write(&script_path, script) {
        println!("not plotting: {e}");
        return;
    }
    // Run in the output directory, so the script names its files relative to it
    // and can be run again there by hand.
    let dir = png.parent().unwrap_or(Path::new("."));
    match Command::new(&gnuplot).arg(file_name(&script_path)).current_dir(dir).output() {
        Ok(o) if o.status.success() => println!("plot: {}", png.display()),
        Ok(o) => println!("gnuplot failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr)),
        Err(e) => println!(
            "not plotting: cannot run {gnuplot} ({e}); install it with `apt-get install -y gnuplot-nox` and run \
             `cd {} && gnuplot {}`",
            dir.display(),
            file_name(&script_path)
        ),
    }
}
