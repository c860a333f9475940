//! Ingest throughput, end to end over HTTP: tidegate against Prometheus Alertmanager
//! and against a ceiling.
//!
//! Run with `cargo bench --bench ingest`. All servers run as separate processes on
//! 127.0.0.1 and receive the same alerts from the same load generator, so the only
//! thing that differs between the rows of the table is the server:
//!
//! * tidegate: `tidegate serve --state memory --sink dir:<tmp>` (the embedded
//!   default), Alertmanager webhook v4 bodies on `POST /api/v1/signals/prometheus`;
//! * Alertmanager 0.25 (`/usr/bin/prometheus-alertmanager`, Debian package
//!   `prometheus-alertmanager`): the same alerts as postable alerts on
//!   `POST /api/v2/alerts`. If the binary is missing that half is skipped with a
//!   message; `BENCH_ALERTMANAGER_BIN` points it elsewhere;
//! * the ceiling (benches/ingest/ceiling.rs): a bare hyper server that parses the
//!   same webhook bodies with tidegate's parser into the same alert type, computes
//!   the same SHA-256 fingerprints and answers 200, and nothing else. tidegate's
//!   alerts/s as a fraction of it is the figure docs/performance.md steers by
//!   (`BENCH_CEILING=off` skips it).
//!
//! Workload: 10,000 distinct (alertname, namespace, pod) identities, 10 alerts per
//! request, cycled through repeatedly. The warm-up covers at least one full pass, so
//! the measured phase is the steady state of a real deployment: almost every alert is
//! a repeat of an open incident. (Each alert name fires on 50 pods of a namespace, so
//! with storm detection at its defaults tidegate folds most of them into one storm
//! request per (alertname, namespace) instead; the bench checks tidegate's accounting
//! either way, not a fixed number of requests.)
//!
//! Knobs (environment): `BENCH_CONCURRENCY` (workers, default 32), `BENCH_SECONDS`
//! (measured phase, default 10), `BENCH_WARMUP_SECONDS` (default 2), and
//! `BENCH_TIDEGATE_ARGS` (extra `tidegate serve` flags, split on whitespace, e.g.
//! `--status-interval 5m` to see what the status writer costs), and `BENCH_AUTH=bearer`
//! (tidegate checks a static bearer token on every request: each worker is a sender
//! with a token file of its own, so the rate limit still sees many senders).
//!
//! `BENCH_SILENCES=1000` writes that many active silences into tidegate's silence
//! directory before it starts, spread over the workload's namespaces, each on an
//! alert name the workload never sends (plus a regex matcher), so every alert is
//! looked up among them and none is held: the row measures what the lookup costs.
//!
//! `BENCH_INHIBIT_RULES=50` loads 50 inhibit rules whose target side every alert
//! matches and none triggers (their cost alone: matching, and one read of the
//! rules' markers per batch, as no source holds any).
//!
//! `BENCH_TRACE_RATIO=0.01` (or `1.0`, …) turns tracing on, sampled at that ratio:
//! tidegate exports its spans over OTLP/HTTP to a receiver in this process that
//! counts and discards them, so the row measures what making and sending spans
//! costs. Unset, tracing is off, as by default.
//!
//! `BENCH_STATE=redis` keeps tidegate's state in a redis-server of the bench's own,
//! `BENCH_STATE=redis-cluster` in a three-primary Redis Cluster; either way the
//! bench prints Redis's own time in the decide script (`INFO commandstats`) per
//! alert. `BENCH_GATEWAYS=N` (default 1) runs N tidegate processes sharing that
//! state and the sink directory, as replicas behind a Service: worker `w` sends to
//! gateway `w % N`, and the row adds up their CPU (docs/performance.md, scale-out).
//!
//! `BENCH_TIDEGATE_BIN=<path>` runs another build of the gateway (another release
//! profile, another commit) against the same load generator and ceiling: how
//! docs/performance.md compares builds, interleaved.
//!
//! `BENCH_PERF_DATA=<file>` records tidegate's measured phase with `perf record`
//! (DWARF call stacks, `BENCH_PERF_FREQ` samples per second, default 499) into that
//! file: scripts/flamegraph turns it into docs/ingest-flamegraph.svg.
//!
//! `cargo test --all-targets` also runs this file (without the `--bench` flag that
//! `cargo bench` passes). It then runs as a short smoke test: 8 workers, one full pass
//! of warm-up, a 1 s measured phase, and a non-zero exit on any failed request or
//! miscount, so the suite checks the whole path without paying for a benchmark.
//!
//! The load generator shares the machine's cores with the server under test, so the
//! absolute numbers are lower bounds; the ratio between the two servers is the figure
//! of merit, since both pay the same client cost per request. To show where the cores
//! went, the table also gives the CPU time each side used in the measured phase (from
//! `/proc/<pid>/stat`) and alerts per server CPU-second; with `BENCH_STATE=redis`
//! the server's CPU includes its redis-server's, and a line splits each alert's CPU
//! between tidegate, Redis and the load generator.
//!
//! Each worker is a separate sender with its own loopback source address
//! (127.0.0.2, 127.0.0.3, …) and its own kept-alive connection. tidegate limits
//! requests per source address; one address sending this whole load would measure
//! its 429 path, while a capacity figure is about many senders at once.
//!
//! tidegate's manifests go to a temporary directory under `$TMPDIR` (default `/tmp`),
//! written with fsync as in production; `TMPDIR=/dev/shm` takes the disk out of it.

#[path = "ingest/ceiling.rs"]
mod ceiling;

use knobs::{gateway_flags_only, knob};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use alerts::{splitmix64, ALERT_NAMES};
use cpu::{cpu_seconds, machine_busy_seconds};
use serde_json::{json, Value};
use tidegate_testkit::bench::alerts;
use tidegate_testkit::bench::cpu;
use tidegate_testkit::bench::knobs;
use tidegate_testkit::redis as redis_support;

/// Requests in one pass over every identity.
fn bodies() -> usize {
    FINGERPRINTS / batch()
}

/// Identities per alert name: `BENCH_WORKLOAD=spread` (the default) puts 5 pods in
/// each of 100 namespaces, at the pattern-storm threshold, so no storm forms;
/// `BENCH_WORKLOAD=storm` puts 50 pods in each of 10 namespaces, so every
/// (alert name, namespace) storms and folds into one aggregated request.
const PER_NAME: usize = 500;
const FINGERPRINTS: usize = ALERT_NAMES.len() * PER_NAME;
const _: () = assert!(FINGERPRINTS == 10_000);

/// Pods per namespace of the chosen workload.
fn pods_per_namespace() -> usize {
    match std::env::var("BENCH_WORKLOAD").as_deref() {
        Ok("storm") => 50,
        Ok("large") => PER_NAME,
        _ => 5,
    }
}

/// Alerts per request: `BENCH_WORKLOAD=large` sends storm-sized notifications of
/// 2,000 alerts (four alert names, each firing on 500 pods of one namespace: the
/// groups Alertmanager sends when a node or a rollout takes a namespace down);
/// the other workloads send 10.
fn batch() -> usize {
    match std::env::var("BENCH_WORKLOAD").as_deref() {
        Ok("large") => 2_000,
        _ => 10,
    }
}

const DEFAULT_ALERTMANAGER_BIN: &str = "/usr/bin/prometheus-alertmanager";
/// The warm-up ends after this long even if a full pass has not been made.
const WARMUP_LIMIT: Duration = Duration::from_secs(120);
/// Hard cap on requests in one phase, so the loop is bounded by count as well as time.
const MAX_REQUESTS_PER_PHASE: u64 = 20_000_000;
/// Per-request timeout: a wedged server costs one timeout per worker, not a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to become ready, and to stop after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

struct Settings {
    /// Run by `cargo test` rather than `cargo bench`: short, and strict.
    smoke: bool,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
}

impl Settings {
    fn from_env(smoke: bool) -> Self {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
            knob(name).unwrap_or(default)
        }
        let (concurrency, warmup, measure) = if smoke { (8, 0.0, 1.0) } else { (32, 2.0, 10.0) };
        let settings = Settings {
            smoke,
            concurrency: var("BENCH_CONCURRENCY", concurrency),
            warmup: Duration::from_secs_f64(var("BENCH_WARMUP_SECONDS", warmup)),
            measure: Duration::from_secs_f64(var("BENCH_SECONDS", measure)),
        };
        assert!((1..=4096).contains(&settings.concurrency), "BENCH_CONCURRENCY must be in 1..=4096");
        assert!(
            settings.measure > Duration::ZERO && settings.measure <= Duration::from_secs(600),
            "BENCH_SECONDS must be in (0, 600]"
        );
        settings
    }
}

// The ceiling server runs in a process of this binary: the same allocator as the
// gateway's, so the two are compared on their work alone.
#[global_allocator]
static ALLOCATOR: tidegate::allocator::Allocator = mimalloc::MiMalloc;

fn main() -> ExitCode {
    if let Ok(listen) = std::env::var(ceiling::LISTEN) {
        ceiling::serve(&listen);
    }
    let smoke = !std::env::args().any(|a| a == "--bench");
    let settings = Settings::from_env(smoke);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("ingest bench: {FINGERPRINTS} distinct fingerprints, {} alerts per request", batch());
    if smoke {
        println!("SMOKE MODE (not run by `cargo bench`): short run, figures are not benchmarks");
    }
    println!(
        "machine: {cores} cores ({}); load generator and server share them",
        cpu_model().unwrap_or_else(|| "unknown CPU".into())
    );
    println!(
        "senders: {} workers, one connection each, from {} to {}",
        settings.concurrency,
        source_address(0),
        source_address(settings.concurrency - 1)
    );
    println!(
        "concurrency {} workers, warm-up ≥ {:?} and ≥ one full pass, measured {:?}",
        settings.concurrency, settings.warmup, settings.measure
    );

    // Other jobs on the machine take cores from both servers (maybe unequally, as the
    // two run one after the other): say so up front.
    let busy0 = machine_busy_seconds();
    std::thread::sleep(Duration::from_millis(500));
    let background = (machine_busy_seconds() - busy0) / 0.5;
    println!("background load before starting: {background:.2} of {cores} cores busy");
    if background > 0.2 {
        println!("!!! WARNING: the machine is not idle; throughput figures will be depressed and noisy.");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the load generator's runtime");
    runtime.block_on(run(settings))
}

async fn run(settings: Settings) -> ExitCode {
    let workload = Workload::render();
    println!(
        "bodies: {} per target, pre-rendered; webhook {} B and postable {} B on average",
        bodies(),
        workload.webhook.iter().map(Bytes::len).sum::<usize>() / bodies(),
        workload.postable.iter().map(Bytes::len).sum::<usize>() / bodies(),
    );

    let mut rows = Vec::new();
    match bench_tidegate(&settings, &workload).await {
        Ok(row) => rows.push(row),
        Err(e) => {
            eprintln!("tidegate run failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    if std::env::var("BENCH_CEILING").as_deref() != Ok("off") {
        match bench_ceiling(&settings, &workload).await {
            Ok(row) => rows.push(row),
            Err(e) => {
                eprintln!("ceiling run failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let am_bin = std::env::var("BENCH_ALERTMANAGER_BIN").unwrap_or_else(|_| DEFAULT_ALERTMANAGER_BIN.into());
    if Path::new(&am_bin).is_file() {
        match bench_alertmanager(&settings, &workload, &am_bin).await {
            Ok(row) => rows.push(row),
            Err(e) => {
                eprintln!("Alertmanager run failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!();
        println!("SKIPPING Alertmanager: {am_bin} not found.");
        println!("  Install it with: apt-get update && apt-get install -y prometheus-alertmanager");
    }

    print_table(&rows);
    let failed = rows.iter().any(|r| r.tally.errors() > 0 || !r.problems.is_empty());
    if settings.smoke && failed {
        eprintln!("smoke test failed: see the warnings above");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------
// Workload

/// Every request body, rendered once before any timing.
struct Workload {
    /// Alertmanager webhook v4 payloads, for tidegate.
    webhook: Vec<Bytes>,
    /// The same alerts as `/api/v2/alerts` postable alerts, for Alertmanager.
    postable: Vec<Bytes>,
}

/// One alert identity, numbered 0..FINGERPRINTS.
struct Identity {
    alertname: &'static str,
    namespace: String,
    pod: String,
}

impl Identity {
    /// Consecutive numbers share an alert name, then a namespace, so a batch of
    /// `batch()` consecutive identities (up to 500) have one alert name.
    fn nth(i: usize) -> Self {
        let pods = pods_per_namespace();
        let (name, rest) = (i / PER_NAME, i % PER_NAME);
        let (ns, pod) = (rest / pods, rest % pods);
        Identity {
            alertname: ALERT_NAMES[name],
            namespace: format!("team-{ns:02}"),
            pod: format!("api-7c9d8f6b5-{pod:02}x"),
        }
    }

    fn labels(&self) -> Value {
        json!({
            "alertname": self.alertname,
            "severity": if self.alertname.starts_with("Kube") { "warning" } else { "critical" },
            "namespace": self.namespace,
            "pod": self.pod,
            "container": "api",
            "job": "kube-state-metrics",
            "prometheus": "monitoring/k8s",
        })
    }

    fn annotations(&self) -> Value {
        json!({
            "summary": format!("{} on {}/{}", self.alertname, self.namespace, self.pod),
            "description": format!(
                "Pod {}/{} has been in a bad state for more than 5 minutes.",
                self.namespace, self.pod
            ),
            "runbook_url": format!("https://runbooks.example.com/{}", self.alertname),
        })
    }
}

impl Workload {
    fn render() -> Self {
        // Both servers see the same fixed start time; Prometheus would send
        // endsAt = now + a few evaluation intervals to Alertmanager, while
        // Alertmanager's webhook writes the zero time for a firing alert.
        let starts = jiff::Timestamp::now();
        let starts_at = starts.to_string();
        let ends_at = (starts + jiff::SignedDuration::from_hours(1)).to_string();
        let generator_url = "http://prometheus-k8s-0:9090/graph?g0.expr=up%3D%3D0&g0.tab=1";
        let mut webhook = Vec::with_capacity(bodies());
        let mut postable = Vec::with_capacity(bodies());
        let batch = batch();
        for b in 0..bodies() {
            let ids: Vec<Identity> = (b * batch..(b + 1) * batch).map(Identity::nth).collect();
            let group = json!({"alertname": ids[0].alertname, "namespace": ids[0].namespace});
            let am_alerts: Vec<Value> = ids
                .iter()
                .map(|id| {
                    json!({
                        "labels": id.labels(),
                        "annotations": id.annotations(),
                        "startsAt": starts_at,
                        "endsAt": ends_at,
                        "generatorURL": generator_url,
                    })
                })
                .collect();
            let webhook_alerts: Vec<Value> = ids
                .iter()
                .enumerate()
                .map(|(k, id)| {
                    json!({
                        "status": "firing",
                        "labels": id.labels(),
                        "annotations": id.annotations(),
                        "startsAt": starts_at,
                        "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": generator_url,
                        // Alertmanager's own 64-bit label hash; any stable value will do.
                        "fingerprint": format!("{:016x}", splitmix64((b * batch + k) as u64)),
                    })
                })
                .collect();
            let body = json!({
                "version": "4",
                "groupKey": format!("{{}}:{{alertname=\"{}\", namespace=\"{}\"}}", ids[0].alertname, ids[0].namespace),
                "truncatedAlerts": 0,
                "status": "firing",
                "receiver": "bench",
                "groupLabels": group,
                "commonLabels": group,
                "commonAnnotations": {},
                "externalURL": "http://am",
                "alerts": webhook_alerts,
            });
            webhook.push(Bytes::from(serde_json::to_vec(&body).expect("JSON")));
            postable.push(Bytes::from(serde_json::to_vec(&am_alerts).expect("JSON")));
        }
        Workload { webhook, postable }
    }
}

// ---------------------------------------------------------------------------------
// The two targets

async fn bench_tidegate(settings: &Settings, workload: &Workload) -> Result<Row, String> {
    println!();
    // `BENCH_STATE=redis`: a redis-server of our own (256 MB, noeviction), started
    // by the test suite's launcher; `BENCH_STATE=redis-cluster`: three Cluster
    // primaries of 256 MB each.
    let store = match std::env::var("BENCH_STATE").as_deref() {
        Ok("redis") => Store::Redis(Box::new(redis_support::RedisServer::start(redis_support::ServerOptions {
            maxmemory: "256mb".into(),
            ..Default::default()
        }))),
        Ok("redis-cluster") => {
            let cluster = redis_support::cluster::ClusterSetup::start();
            for node in cluster.nodes() {
                node.config_set("maxmemory", "256mb");
            }
            Store::Cluster(cluster)
        }
        Ok("memory") | Err(_) => Store::Memory,
        Ok(other) => return Err(format!("BENCH_STATE={other}: use memory, redis or redis-cluster")),
    };
    let state = store.url();
    // `BENCH_GATEWAYS=N`: N tidegate processes sharing the state store and the sink
    // directory, as replicas behind a Service; worker `w` sends to gateway `w % N`.
    let gateways: usize = knob("BENCH_GATEWAYS").unwrap_or(1);
    if !(1..=16).contains(&gateways) {
        return Err("BENCH_GATEWAYS must be in 1..=16".into());
    }
    println!("== tidegate (--state {state}, --sink dir:<tmp>, {gateways} process(es))");
    let tmp = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let sink = tmp.path().join("sink");
    write_silences(&sink)?;
    let addr = free_port()?;
    // `BENCH_TIDEGATE_BIN`: another build of the gateway (another profile, another
    // commit) under the same load generator and ceiling.
    let bin = std::env::var("BENCH_TIDEGATE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tidegate").into());
    if bin != env!("CARGO_BIN_EXE_tidegate") {
        println!("  binary: {bin}");
    }
    let mut command = Command::new(bin);
    command
        .arg("serve")
        .args(["--listen", &addr.to_string()])
        .args(["--state", &state])
        .arg("--sink")
        .arg(format!("dir:{}", sink.display()))
        .args(["--shutdown-delay", "0s"]);
    // Only the flags above and the log level may configure it.
    gateway_flags_only(&mut command);
    command.env("TIDEGATE_LOG_FILTER", "warn");
    let tokens = match std::env::var("BENCH_AUTH").as_deref() {
        Err(_) => Vec::new(),
        Ok("bearer") => {
            // A token file per worker, each its own source.
            let mut files = Vec::new();
            let tokens: Vec<String> = (0..settings.concurrency).map(|w| format!("bench-token-{w:04}")).collect();
            for (w, token) in tokens.iter().enumerate() {
                let path = tmp.path().join(format!("token-{w}"));
                std::fs::write(&path, token).map_err(|e| format!("{}: {e}", path.display()))?;
                files.push(format!("sender-{w}: {}", path.display()));
            }
            let auth = format!("{{authenticators: {{bench: {{bearer: {{tokens: {{{}}}}}}}}}}}", files.join(", "));
            command.env("TIDEGATE_AUTH", auth);
            println!("  authentication: a bearer token per worker");
            tokens
        }
        Ok(other) => return Err(format!("BENCH_AUTH={other}: only `bearer` is known")),
    };
    // `BENCH_INHIBIT_RULES=N`: N inhibit rules whose target side matches every bench
    // alert and whose source side none does, so every alert is matched against the
    // rules and its batch reads their markers, and none is held back: inhibition's
    // cost while no source is open, measured alone.
    if let Ok(n) = std::env::var("BENCH_INHIBIT_RULES") {
        let n: usize = n.parse().map_err(|e| format!("BENCH_INHIBIT_RULES={n}: {e}"))?;
        let rules: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "{{source_matchers: ['alertname=\"BenchNodeDown{i}\"'], \
                     target_matchers: ['alertname=~\".+\"'], equal: [namespace]}}"
                )
            })
            .collect();
        command.env("TIDEGATE_INHIBIT_RULES", format!("[{}]", rules.join(", ")));
        println!("  inhibit rules: {n}, each looked up by every alert, none holding");
    }
    let otlp = match std::env::var("BENCH_TRACE_RATIO") {
        Ok(ratio) => {
            let otlp = OtlpSink::start().await?;
            println!("  traces: sampled at {ratio}, sent to an OTLP receiver in the bench that discards them");
            command.env("TIDEGATE_TRACE_OTLP_ENDPOINT", otlp.url()).env("TIDEGATE_TRACE_SAMPLE_RATIO", ratio);
            Some(otlp)
        }
        Err(_) => None,
    };
    let mut addrs = vec![addr];
    let mut replicas = Vec::new();
    for _ in 1..gateways {
        let addr = free_port()?;
        replicas.push(replica(&command, addr));
        addrs.push(addr);
    }
    let mut servers = vec![Server::spawn("tidegate", command, tmp.path())?];
    for (i, replica) in replicas.into_iter().enumerate() {
        let name: &'static str = Box::leak(format!("tidegate-{}", i + 2).into_boxed_str());
        servers.push(Server::spawn(name, replica, tmp.path())?);
    }
    // For readiness and metrics only; the load goes through the workers' own clients.
    let client = http_client()?;
    for (server, addr) in servers.iter_mut().zip(&addrs) {
        server.wait_ready(&client, &format!("http://{addr}/readyz")).await?;
    }

    let target = Target {
        name: "tidegate",
        urls: addrs.iter().map(|addr| format!("http://{addr}/api/v1/signals/prometheus")).collect(),
        bodies: workload.webhook.clone(),
        tokens,
    };
    let pids: Vec<u32> = servers.iter().map(Server::pid).collect();
    let mut row = drive(settings, &target, &pids, &store.pids()).await?;
    if let Some((calls, usec)) = store.commandstats() {
        // Redis's own time in the decide script, per alert (issue 24's figure).
        println!(
            "  redis INFO commandstats: decide {calls} calls, {:.2} µs per call, {:.2} µs per alert \
             (warm-up and measured phase)",
            usec as f64 / calls.max(1) as f64,
            usec as f64 / row.acked_alerts.max(1) as f64
        );
    }

    // Not timed: what the servers made of it.
    let mut metrics = String::new();
    for addr in &addrs {
        metrics += &get_text(&client, &format!("http://{addr}/metrics")).await?;
    }
    for line in metrics.lines().filter(|l| {
        !l.starts_with('#')
            && [
                "tidegate_signals_received_total",
                "tidegate_remediation_requests_created_total",
                "tidegate_state_entries",
                "tidegate_sink_writes_total",
                "tidegate_status_updates_coalesced_total",
                "tidegate_status_updates_pending",
                "tidegate_status_write_lag_seconds",
                "tidegate_state_errors_total",
                "tidegate_http_rejections_total",
            ]
            .iter()
            .any(|m| l.starts_with(m))
    }) {
        println!("  metric  {line}");
    }
    // Accounting that holds whatever tidegate decided for each alert (a new
    // incident, a duplicate, or a fold into a storm): every acknowledged alert was
    // counted once, and every request it says it created is on disk.
    let counted = metric_sum(&metrics, "tidegate_signals_received_total", |labels| !labels.contains("\"failed\""));
    println!("  alerts acknowledged {}, counted by tidegate {counted}", row.acked_alerts);
    if counted != row.acked_alerts {
        row.problem(format!("tidegate counted {counted} alerts, but acknowledged {}", row.acked_alerts));
    }
    let created = metric_sum(&metrics, "tidegate_remediation_requests_created_total", |_| true);
    let manifests = count_manifests(&sink) as u64;
    println!(
        "  sink holds {manifests} manifests, tidegate created {created} ({FINGERPRINTS} if no alert is folded into a storm)"
    );
    if manifests != created || created == 0 {
        row.problem(format!("sink holds {manifests} manifests, but tidegate reports {created} created"));
    }
    for server in &mut servers {
        server.stop();
    }
    if let Some(otlp) = otlp {
        let (exports, bytes) = (otlp.exports.load(Ordering::Relaxed), otlp.bytes.load(Ordering::Relaxed));
        println!("  OTLP receiver got {exports} exports, {bytes} bytes of spans");
        if exports == 0 {
            row.problem("tracing was on, but no spans reached the OTLP receiver".into());
        }
    }
    // Removing thousands of manifests takes seconds on a slow disk: do it now, and flush
    // the file system, so none of it lands in the next target's measurement.
    let started = Instant::now();
    tmp.close().map_err(|e| format!("removing the sink directory: {e}"))?;
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    println!("  removed the sink directory and synced in {:.2} s", started.elapsed().as_secs_f64());
    Ok(row)
}

/// The ceiling (benches/ingest/ceiling.rs): this binary again, as a bare hyper
/// server that parses the webhook bodies and fingerprints their alerts.
async fn bench_ceiling(settings: &Settings, workload: &Workload) -> Result<Row, String> {
    println!();
    println!("== ceiling (hyper + tidegate's webhook parser and fingerprints, nothing else)");
    let tmp = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let addr = free_port()?;
    let exe = std::env::current_exe().map_err(|e| format!("the bench's own path: {e}"))?;
    let mut command = Command::new(exe);
    command.env(ceiling::LISTEN, addr.to_string());
    let mut server = Server::spawn("ceiling", command, tmp.path())?;
    let client = http_client()?;
    let count_url = format!("http://{addr}/alerts");
    server.wait_ready(&client, &count_url).await?;
    let target = Target {
        name: "ceiling",
        urls: vec![format!("http://{addr}/api/v1/signals/prometheus")],
        bodies: workload.webhook.clone(),
        tokens: Vec::new(),
    };
    let mut row = drive(settings, &target, &[server.pid()], &[]).await?;
    let parsed: u64 =
        get_text(&client, &count_url).await?.trim().parse().map_err(|e| format!("GET {count_url}: {e}"))?;
    println!("  alerts acknowledged {}, parsed and fingerprinted by the ceiling {parsed}", row.acked_alerts);
    if parsed != row.acked_alerts {
        row.problem(format!("the ceiling parsed {parsed} alerts, but acknowledged {}", row.acked_alerts));
    }
    server.stop();
    Ok(row)
}

/// Where the gateways under test keep their state.
enum Store {
    Memory,
    Redis(Box<redis_support::RedisServer>),
    Cluster(redis_support::cluster::ClusterSetup),
}

impl Store {
    fn url(&self) -> String {
        match self {
            Store::Memory => "memory".into(),
            Store::Redis(server) => server.url(),
            Store::Cluster(cluster) => {
                let nodes: Vec<String> = cluster.nodes().iter().map(|n| n.addr()).collect();
                format!("redis+cluster://{}", nodes.join(","))
            }
        }
    }

    fn servers(&self) -> &[redis_support::RedisServer] {
        match self {
            Store::Memory => &[],
            Store::Redis(server) => std::slice::from_ref(&**server),
            Store::Cluster(cluster) => cluster.nodes(),
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.servers().iter().filter_map(|s| s.pid()).collect()
    }

    /// The decide function's calls and Redis's time in it (`INFO commandstats`,
    /// `cmdstat_fcall`, or `cmdstat_evalsha` for a gateway from before it was a
    /// function; summed over the servers) since they started.
    fn commandstats(&self) -> Option<(u64, u64)> {
        if self.servers().is_empty() {
            return None;
        }
        let stats: Vec<_> = self.servers().iter().map(|server| server.info("commandstats")).collect();
        // Not both: with the function, `EVALSHA` is the rate limit's script alone. Chosen
        // once for all servers: a Cluster primary that has run no `FCALL` yet may have
        // run the rate limit's.
        let decide = match stats.iter().any(|s| s.contains_key("cmdstat_fcall")) {
            true => "cmdstat_fcall",
            false => "cmdstat_evalsha",
        };
        let (mut calls, mut usec) = (0u64, 0u64);
        for stats in &stats {
            if let Some(line) = stats.get(decide) {
                let field = |name: &str| -> Option<u64> {
                    line.split(',').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?.parse().ok()
                };
                calls += field("calls")?;
                usec += field("usec")?;
            }
        }
        (calls > 0).then_some((calls, usec))
    }
}

/// Another gateway like `template`, listening on `addr` instead.
fn replica(template: &Command, addr: SocketAddr) -> Command {
    let mut command = Command::new(template.get_program());
    let mut listen = false;
    for arg in template.get_args() {
        command.arg(if listen { std::ffi::OsStr::new(&addr.to_string()).to_owned() } else { arg.to_owned() });
        listen = arg == "--listen";
    }
    for (key, value) in template.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    command
}

async fn bench_alertmanager(settings: &Settings, workload: &Workload, bin: &str) -> Result<Row, String> {
    println!();
    let version = Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(if o.stdout.is_empty() { &o.stderr } else { &o.stdout }).into_owned();
            text.lines().next().unwrap_or("").to_string()
        })
        .unwrap_or_default();
    println!("== Alertmanager ({version})");
    let tmp = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    // One receiver with no integrations: alerts are stored, grouped and routed, and
    // notifications go nowhere, so only ingestion is measured.
    let config = tmp.path().join("alertmanager.yml");
    std::fs::write(&config, "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n")
        .map_err(|e| format!("writing {}: {e}", config.display()))?;
    let storage = tmp.path().join("data");
    std::fs::create_dir_all(&storage).map_err(|e| format!("creating {}: {e}", storage.display()))?;
    let addr = free_port()?;
    let mut command = Command::new(bin);
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", storage.display()))
        .arg(format!("--web.listen-address={addr}"))
        // Empty disables clustering (no gossip port, no peers).
        .arg("--cluster.listen-address=")
        .arg("--log.level=warn");
    let mut server = Server::spawn("alertmanager", command, tmp.path())?;
    let client = http_client()?;
    server.wait_ready(&client, &format!("http://{addr}/-/ready")).await?;

    let target = Target {
        name: "alertmanager",
        urls: vec![format!("http://{addr}/api/v2/alerts")],
        bodies: workload.postable.clone(),
        tokens: Vec::new(),
    };
    let mut row = drive(settings, &target, &[server.pid()], &[]).await?;

    let metrics = get_text(&client, &format!("http://{addr}/metrics")).await?;
    for line in metrics.lines().filter(|l| {
        !l.starts_with('#')
            && ["alertmanager_alerts_received_total", "alertmanager_alerts_invalid_total", "alertmanager_alerts{"]
                .iter()
                .any(|m| l.starts_with(m))
    }) {
        println!("  metric  {line}");
    }
    let alerts = get_text(&client, &format!("http://{addr}/api/v2/alerts")).await?;
    let held = serde_json::from_str::<Vec<Value>>(&alerts).map_or(0, |a| a.len());
    println!("  Alertmanager holds {held} alerts (expected {FINGERPRINTS})");
    if held != FINGERPRINTS {
        row.problem(format!("Alertmanager holds {held} alerts, expected {FINGERPRINTS}"));
    }
    server.stop();
    Ok(row)
}

// ---------------------------------------------------------------------------------
// Load generator: identical for both targets

struct Target {
    name: &'static str,
    /// Worker `w` sends to `urls[w % urls.len()]`: one per server process.
    urls: Vec<String>,
    bodies: Vec<Bytes>,
    /// Worker `w` presents `Authorization: Bearer <tokens[w]>`; none if empty.
    tokens: Vec<String>,
}

/// When a phase ends.
#[derive(Clone, Copy)]
struct Until {
    /// Keep going at least this long...
    soft: Instant,
    /// ...and until this many requests were started...
    min_requests: u64,
    /// ...but never past this.
    hard: Instant,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    /// Latency of each 2xx request, in microseconds.
    latencies_us: Vec<u32>,
    non_2xx: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_failure: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.latencies_us.extend(other.latencies_us);
        for (status, n) in other.non_2xx {
            *self.non_2xx.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.first_failure = self.first_failure.take().or(other.first_failure);
    }

    fn errors(&self) -> u64 {
        self.non_2xx.values().sum::<u64>() + self.transport_errors
    }
}

struct Row {
    name: &'static str,
    elapsed: Duration,
    tally: Tally,
    /// CPU seconds used in the measured phase by the server, by this process, and by
    /// everything else on the machine (kernel threads flushing the server's writes,
    /// but also any other job that happens to run: a sign the figures are disturbed).
    server_cpu: f64,
    client_cpu: f64,
    other_cpu: f64,
    /// CPU seconds of the server's redis-server, if it has one (not in `other_cpu`).
    redis_cpu: Option<f64>,
    /// Alerts answered 2xx over warm-up and measured phase together.
    acked_alerts: u64,
    /// Failed warm-up requests and miscounts, already printed.
    problems: Vec<String>,
}

impl Row {
    fn problem(&mut self, text: String) {
        println!("  !!! WARNING: {text}");
        self.problems.push(text);
    }
}

/// Warm-up, then the measured phase, against one target (the server is the
/// processes `pids`, and `redis` the redis-servers it keeps its state in, if any).
async fn drive(settings: &Settings, target: &Target, pids: &[u32], redis: &[u32]) -> Result<Row, String> {
    // One connection per worker, kept open across both phases.
    let mut senders = Vec::with_capacity(settings.concurrency);
    for w in 0..settings.concurrency {
        let token = target.tokens.get(w).map(|t| format!("Bearer {t}").parse().expect("a header value"));
        senders.push(Sender::connect(source_address(w), &target.urls[w % target.urls.len()], token).await?);
    }
    // One counter across both phases, so the measured phase continues the cycle.
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = Until { soft: started + settings.warmup, min_requests: bodies() as u64, hard: started + WARMUP_LIMIT };
    let (warm, senders) = phase(senders, target, &next, until).await;
    let warm_elapsed = started.elapsed();
    println!(
        "  warm-up: {} requests in {:.2} s ({} errors){}",
        warm.ok + warm.errors(),
        warm_elapsed.as_secs_f64(),
        warm.errors(),
        if warm.ok < bodies() as u64 { "  <-- did not complete one full pass" } else { "" }
    );
    report_failures("warm-up", target.name, &warm);
    let mut problems = Vec::new();
    if warm.errors() > 0 {
        problems.push(format!("{} failed requests in the warm-up", warm.errors()));
    }

    // `BENCH_PERF_DATA=<file>`: tidegate's measured phase, sampled by perf (scripts/flamegraph).
    let profiler = match std::env::var_os("BENCH_PERF_DATA") {
        Some(out) if target.name == "tidegate" => Some(Profiler::start(pids[0], Path::new(&out))?),
        _ => None,
    };
    let cpu_of = |pids: &[u32]| pids.iter().map(|pid| cpu_seconds(&pid.to_string())).sum::<f64>();
    let redis_cpu_now = || (!redis.is_empty()).then(|| cpu_of(redis));
    let (server_cpu0, client_cpu0, machine_cpu0, redis_cpu0) =
        (cpu_of(pids), cpu_seconds("self"), machine_busy_seconds(), redis_cpu_now());
    let started = Instant::now();
    let end = started + settings.measure;
    let (tally, _) = phase(senders, target, &next, Until { soft: end, min_requests: 0, hard: end }).await;
    // Requests in flight at the deadline are waited for and counted, so the rate is
    // over the time until the last one finished.
    let elapsed = started.elapsed();
    let (server_cpu, client_cpu) = (cpu_of(pids) - server_cpu0, cpu_seconds("self") - client_cpu0);
    let redis_cpu = redis_cpu_now().zip(redis_cpu0).map(|(end, start)| end - start);
    if let Some(profiler) = profiler {
        profiler.stop()?;
    }
    let other_cpu =
        (machine_busy_seconds() - machine_cpu0 - server_cpu - client_cpu - redis_cpu.unwrap_or(0.0)).max(0.0);
    report_failures("measured phase", target.name, &tally);
    let acked_alerts = (warm.ok + tally.ok) * batch() as u64;
    Ok(Row { name: target.name, elapsed, tally, server_cpu, client_cpu, other_cpu, redis_cpu, acked_alerts, problems })
}

/// `perf record` attached to the server for the measured phase: CPU-clock samples
/// with DWARF call stacks (the release profile keeps line tables, and the
/// dependencies have no frame pointers to walk).
struct Profiler {
    child: Child,
    out: PathBuf,
}

impl Profiler {
    fn start(pid: u32, out: &Path) -> Result<Self, String> {
        let freq = std::env::var("BENCH_PERF_FREQ").unwrap_or_else(|_| "499".into());
        let child = Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", &freq, "--call-graph", "dwarf,16384", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting perf record: {e}"))?;
        println!("  perf record (pid {}) samples tidegate (pid {pid}) into {}", child.id(), out.display());
        Ok(Profiler { child, out: out.to_path_buf() })
    }

    /// SIGINT, as Ctrl-C: perf writes its file out and exits.
    fn stop(mut self) -> Result<(), String> {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let status = self.child.wait().map_err(|e| format!("waiting for perf: {e}"))?;
        println!("  perf record stopped ({status}); data in {}", self.out.display());
        Ok(())
    }
}

/// Runs every sender until the phase ends, and hands the senders back (a sender
/// whose connection broke is reconnected on its next request).
async fn phase(senders: Vec<Sender>, target: &Target, next: &Arc<AtomicU64>, until: Until) -> (Tally, Vec<Sender>) {
    let first = next.load(Ordering::Relaxed);
    let workers: Vec<_> = senders
        .into_iter()
        .map(|sender| {
            let (bodies, next) = (target.bodies.clone(), next.clone());
            tokio::spawn(async move { worker(sender, bodies, next, first, until).await })
        })
        .collect();
    let mut tally = Tally::default();
    let mut senders = Vec::with_capacity(workers.len());
    for w in workers {
        let (t, sender) = w.await.expect("worker panicked");
        tally.merge(t);
        senders.push(sender);
    }
    (tally, senders)
}

/// One sender: a kept-alive HTTP/1.1 connection from its own source address.
///
/// A bare hyper connection rather than a pooled client: the load generator shares
/// the machine with the server under test, so every microsecond it spends per
/// request (URL parsing, pool checkout, timers) is taken from the server.
struct Sender {
    source: IpAddr,
    server: SocketAddr,
    uri: hyper::Uri,
    host: hyper::header::HeaderValue,
    authorization: Option<hyper::header::HeaderValue>,
    conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Sender {
    async fn connect(
        source: IpAddr,
        url: &str,
        authorization: Option<hyper::header::HeaderValue>,
    ) -> Result<Self, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let authority = uri.authority().ok_or_else(|| format!("{url}: no authority"))?;
        let server: SocketAddr = authority.as_str().parse().map_err(|e| format!("{authority}: {e}"))?;
        let host = authority.as_str().parse().map_err(|e| format!("{authority}: {e}"))?;
        let mut sender = Sender { source, server, uri, host, authorization, conn: None };
        sender.ensure_connected().await?;
        Ok(sender)
    }

    async fn ensure_connected(&mut self) -> Result<(), String> {
        if self.conn.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        socket.bind(SocketAddr::new(self.source, 0)).map_err(|e| format!("bind {}: {e}", self.source))?;
        let stream = socket.connect(self.server).await.map_err(|e| format!("connect {}: {e}", self.server))?;
        stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let (conn, driver) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(driver);
        self.conn = Some(conn);
        Ok(())
    }

    /// POSTs `body` and reads the whole answer, as a real sender does.
    async fn post(&mut self, body: Bytes) -> Result<(u16, Bytes), String> {
        self.ensure_connected().await?;
        let conn = self.conn.as_mut().expect("connected");
        let mut request = hyper::Request::post(self.uri.clone())
            .header(hyper::header::HOST, self.host.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(authorization) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization.clone());
        }
        let request = request.body(Full::new(body)).map_err(|e| format!("request: {e}"))?;
        let exchange = async {
            let response = conn.send_request(request).await.map_err(|e| format!("send: {e}"))?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map_err(|e| format!("read: {e}"))?.to_bytes();
            Ok((status, body))
        };
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
        };
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

/// Sends one request at a time on its connection until the phase ends.
async fn worker(
    mut sender: Sender,
    bodies: Vec<Bytes>,
    next: Arc<AtomicU64>,
    first: u64,
    until: Until,
) -> (Tally, Sender) {
    let mut tally = Tally::default();
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let sent = n - first;
        let now = Instant::now();
        if sent >= MAX_REQUESTS_PER_PHASE || now >= until.hard || (now >= until.soft && sent >= until.min_requests) {
            return (tally, sender);
        }
        let body = bodies[(n % bodies.len() as u64) as usize].clone();
        match sender.post(body).await {
            Ok((status, _)) if (200..300).contains(&status) => {
                tally.ok += 1;
                tally.latencies_us.push(now.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            Ok((status, body)) => {
                *tally.non_2xx.entry(status).or_default() += 1;
                tally.first_failure.get_or_insert_with(|| {
                    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                    format!("HTTP {status}: {text}")
                });
            }
            Err(e) => {
                tally.transport_errors += 1;
                tally.first_failure.get_or_insert_with(|| format!("transport error: {e}"));
            }
        }
    }
}

fn report_failures(phase: &str, name: &str, tally: &Tally) {
    if tally.errors() == 0 {
        return;
    }
    println!("  !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    println!("  !!! WARNING: {name} {phase}: {} failed requests (not counted as ingested)", tally.errors());
    for (status, n) in &tally.non_2xx {
        println!("  !!!   HTTP {status}: {n}");
    }
    if tally.transport_errors > 0 {
        println!("  !!!   transport errors: {}", tally.transport_errors);
    }
    if let Some(first) = &tally.first_failure {
        println!("  !!!   first: {first}");
    }
    println!("  !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
}

/// A client for readiness checks and metrics, never proxied (traffic stays on loopback).
fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))
}

/// Worker `w`'s source address: 127.0.0.2 + w, inside the loopback 127.0.0.0/8 that
/// Linux routes to `lo` without any set-up.
fn source_address(w: usize) -> IpAddr {
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 2));
    IpAddr::V4(Ipv4Addr::from(base + u32::try_from(w).expect("few workers")))
}

/// The sum of a metric's samples whose label set passes `keep`, from Prometheus or
/// OpenMetrics text.
fn metric_sum(text: &str, name: &str, keep: impl Fn(&str) -> bool) -> u64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            keep(labels).then(|| value.split_whitespace().next()?.parse::<f64>().ok()).flatten()
        })
        .map(|v| v as u64)
        .sum()
}

async fn get_text(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let response = client.get(url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
    response.text().await.map_err(|e| format!("GET {url}: {e}"))
}

// ---------------------------------------------------------------------------------
// Results

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<14} {:>12} {:>14} {:>10} {:>10} {:>8} {:>12} {:>12} {:>12} {:>16}",
        "target",
        "requests/s",
        "alerts/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "server cores",
        "client cores",
        "other cores",
        "alerts/server-s"
    );
    let mut rates = BTreeMap::new();
    for row in rows {
        let secs = row.elapsed.as_secs_f64();
        let requests = row.tally.ok as f64 / secs;
        let alerts = (row.tally.ok * batch() as u64) as f64 / secs;
        // The server's side of the work includes its redis-server's.
        let server_side = row.server_cpu + row.redis_cpu.unwrap_or(0.0);
        let mut lat = row.tally.latencies_us.clone();
        lat.sort_unstable();
        println!(
            "{:<14} {:>12.0} {:>14.0} {:>10.3} {:>10.3} {:>8} {:>12.2} {:>12.2} {:>12.2} {:>16.0}{}",
            row.name,
            requests,
            alerts,
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            row.tally.errors(),
            row.server_cpu / secs,
            row.client_cpu / secs,
            row.other_cpu / secs,
            (row.tally.ok * batch() as u64) as f64 / server_side.max(f64::EPSILON),
            if row.tally.errors() > 0 { "  <-- FAILURES" } else { "" }
        );
        rates.insert(row.name, (alerts, (row.tally.ok * batch() as u64) as f64 / server_side));
    }
    // Where each alert's CPU went, when Redis is one of the parts.
    for row in rows {
        if let Some(redis_cpu) = row.redis_cpu {
            let alerts = (row.tally.ok * batch() as u64).max(1) as f64;
            let us = |cpu: f64| cpu * 1e6 / alerts;
            println!(
                "{}: CPU per alert: server {:.2} µs, redis-server {:.2} µs ({:.2} cores), load generator {:.2} µs, \
                 other {:.2} µs",
                row.name,
                us(row.server_cpu),
                us(redis_cpu),
                redis_cpu / row.elapsed.as_secs_f64(),
                us(row.client_cpu),
                us(row.other_cpu),
            );
        }
    }
    println!(
        "(over {} s each; {} 2xx requests = {} alerts for tidegate)",
        rows.first().map_or(0.0, |r| (r.elapsed.as_secs_f64() * 100.0).round() / 100.0),
        rows.first().map_or(0, |r| r.tally.ok),
        rows.first().map_or(0, |r| r.tally.ok * batch() as u64),
    );
    match (rates.get("tidegate"), rates.get("ceiling")) {
        (Some((t, t_cpu)), Some((c, c_cpu))) if *c > 0.0 => {
            // Issue 24's target: 70 % of the ceiling, on the embedded store.
            let fraction = t / c;
            println!(
                "fraction tidegate/ceiling (alerts/s): {:.1} %  (target ≥ 70 %: {})",
                fraction * 100.0,
                if fraction >= 0.7 { "met" } else { "NOT MET" }
            );
            println!(
                "fraction tidegate/ceiling (alerts per server CPU-second, diagnostic): {:.1} %",
                t_cpu / c_cpu * 100.0
            );
        }
        _ => println!("fraction tidegate/ceiling: n/a (ceiling not measured)"),
    }
    match (rates.get("tidegate"), rates.get("alertmanager")) {
        (Some((t, t_cpu)), Some((a, a_cpu))) if *a > 0.0 => {
            let ratio = t / a;
            // Issue targets: 8× on the embedded store (issue 24), 3× with Redis.
            let target = if std::env::var("BENCH_STATE").as_deref() == Ok("redis") { 3.0 } else { 8.0 };
            println!(
                "ratio tidegate/alertmanager (alerts/s): {ratio:.2}×  (target ≥ {target}×: {})",
                if ratio >= target { "met" } else { "NOT MET" }
            );
            println!("ratio tidegate/alertmanager (alerts per server CPU-second, diagnostic): {:.2}×", t_cpu / a_cpu);
        }
        _ => println!("ratio tidegate/alertmanager: n/a (Alertmanager not measured)"),
    }
    let failed: u64 = rows.iter().map(|r| r.tally.errors()).sum();
    if failed > 0 {
        println!("!!! WARNING: {failed} requests failed in the measured phases; see above.");
    }
    for (name, problem) in rows.iter().flat_map(|r| r.problems.iter().map(|p| (r.name, p))) {
        println!("!!! WARNING: {name}: {problem}");
    }
}

/// The `p` quantile of sorted microsecond samples, in milliseconds (nearest rank).
fn percentile(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

// ---------------------------------------------------------------------------------
// Child processes

/// A server process; killed when dropped, so a failing bench leaves nothing behind.
struct Server {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    /// Starts `command` with its stdout and stderr in `<dir>/<name>.log`.
    fn spawn(name: &'static str, mut command: Command, dir: &Path) -> Result<Self, String> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {name} ({:?}): {e}", command.get_program()))?;
        Ok(Server { name, child: Some(child), log })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Polls `url` until it answers 2xx; fails at once if the process exits.
    async fn wait_ready(&mut self, client: &reqwest::Client, url: &str) -> Result<(), String> {
        let started = Instant::now();
        let mut poll = Duration::from_millis(5);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("{} exited before it was ready ({status}):\n{}", self.name, self.log_text()));
            }
            if let Ok(r) = client.get(url).timeout(Duration::from_secs(1)).send().await {
                if r.status().is_success() {
                    println!("  ready after {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);
                    return Ok(());
                }
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!("{} was not ready within {START_TIMEOUT:?}:\n{}", self.name, self.log_text()));
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `STOP_TIMEOUT`; prints how
    /// long it took and anything it logged.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let started = Instant::now();
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if started.elapsed() < STOP_TIMEOUT => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        match status {
            Some(s) => println!("  stopped after SIGTERM in {:.2} s ({s})", started.elapsed().as_secs_f64()),
            None => println!("  did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed"),
        }
        let log = self.log_text();
        let lines: Vec<&str> = log.lines().collect();
        if !lines.is_empty() {
            println!("  {} logged {} lines (at warn level); first ones:", self.name, lines.len());
            for line in lines.iter().take(5) {
                println!("    {line}");
            }
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A currently free loopback port. Another process could take it before the server
/// binds it; on this single-user bench machine that race is not worth more code.
/// An OTLP/HTTP receiver that counts what it is sent and discards it.
struct OtlpSink {
    addr: SocketAddr,
    exports: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl OtlpSink {
    async fn start() -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("OTLP receiver: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("OTLP receiver: {e}"))?;
        let (exports, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let counts = (exports.clone(), bytes.clone());
        let receive = move |body: Bytes| async move {
            counts.0.fetch_add(1, Ordering::Relaxed);
            counts.1.fetch_add(body.len() as u64, Ordering::Relaxed);
            // An empty ExportTraceServiceResponse: no field set encodes as no bytes.
            ([("content-type", "application/x-protobuf")], Bytes::new())
        };
        let app = axum::Router::new().route("/v1/traces", axum::routing::post(receive));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(OtlpSink { addr, exports, bytes })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn free_port() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener.local_addr().map_err(|e| format!("finding a free port: {e}"))
}

/// Number of `*.yaml` manifests under the sink directory (one level of namespaces).
fn count_manifests(root: &Path) -> usize {
    let Ok(namespaces) = std::fs::read_dir(root) else {
        return 0;
    };
    namespaces
        .flatten()
        .filter_map(|ns| std::fs::read_dir(ns.path()).ok())
        .flat_map(|files| files.flatten())
        .filter(|f| {
            let name = f.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".yaml") && !name.starts_with('.')
        })
        .count()
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
}

/// `BENCH_SILENCES=N`: N active silences in the sink's silence directory, none of
/// which matches the workload.
fn write_silences(sink: &std::path::Path) -> Result<(), String> {
    let Ok(n) = std::env::var("BENCH_SILENCES") else { return Ok(()) };
    let n: usize = n.parse().map_err(|e| format!("BENCH_SILENCES={n}: {e}"))?;
    let now = jiff::Timestamp::now();
    let ends = now + jiff::SignedDuration::from_hours(24);
    for i in 0..n {
        let ns = format!("team-{:02}", i % 100);
        let dir = sink.join("_silences").join(&ns);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let yaml = format!(
            "apiVersion: remediation.tidegate.dev/v1alpha1\nkind: RemediationSilence\nmetadata: {{name: s{i}, namespace: {ns}}}\n\
             spec:\n  matchers: ['alertname=\"BenchSilenced{i}\"', 'pod=~\"api-.*\"']\n  startsAt: {now}\n  endsAt: {ends}\n  comment: bench\n"
        );
        let path = dir.join(format!("s{i}.yaml"));
        std::fs::write(&path, yaml).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("  {n} silences in {}", sink.join("_silences").display());
    Ok(())
}
