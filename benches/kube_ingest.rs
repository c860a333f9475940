//! Ingest throughput in Kubernetes mode, end to end: the gateway binary with
//! `--sink kube` against a real kube-apiserver and etcd (`scripts/kube-testenv`),
//! authenticated as the service account `deploy/` defines (a TokenRequest token in
//! a kubeconfig, so the shipped RBAC is all it has).
//!
//! Run with `cargo bench --bench kube_ingest`. For each number of existing requests
//! (`BENCH_KUBE_EXISTING`, default `0,10000,100000`), the bench
//!
//! 1. seeds the API server with that many RemediationRequests (as the gateway would
//!    have made them, status included), concurrently, through the admin client, and
//!    says how long that took;
//! 2. starts a fresh gateway (`--state memory --sink kube`), which lists them all
//!    into its watch cache, and takes its resident memory once it is ready: the
//!    growth over the run with the fewest requests, divided by the difference in
//!    cached requests, is the memory per cached request;
//! 3. sends `BENCH_KUBE_NEW` (default 2,000) new incidents in notifications of
//!    `BENCH_BATCH` (default 10) alerts, from `BENCH_CONCURRENCY` (default 32)
//!    senders, each alert once: alerts/s, p50/p99 per notification, where the
//!    machine's cores went (gateway, API server with etcd, idle), and the API calls
//!    per new incident;
//! 4. repeats the same notifications (one unmeasured pass first, so the watch has
//!    delivered every new request) for `BENCH_SECONDS` (default 10): alerts/s,
//!    p50/p99 and API calls per duplicate.
//!
//! API calls are the API server's own count: `apiserver_request_total` from its
//! `/metrics`, before and after each phase, by verb, resource and subresource
//! (watches, which it counts when they end, aside). Only the gateway talks to the
//! API server during a phase, apart from the server's own housekeeping (leases,
//! its `kubernetes` service), which is on other resources and listed apart.
//!
//! Targets (issue 24): a duplicate costs no API call beyond its share of the
//! coalesced status write; a new incident costs exactly one create and its status
//! write. Both are printed as met or not.
//!
//! Then the status write rate the API server sustains for the service account:
//! `BENCH_KUBE_WRITERS` (default `1,8,32,64`) concurrent writers each replacing
//! the status of requests of their own (a PUT of the status subresource with the
//! object's resourceVersion, as the sink writes it) for `BENCH_KUBE_STATUS_SECONDS`
//! (default 10): writes/s and p50/p99. The status writer's default cap
//! (`status_writer.max_writes_per_s`) for `--sink kube` is set from this figure
//! (docs/performance-kube.md).
//!
//! The gateway, the API server, etcd and this load generator share the machine's
//! cores: the table says how many each used. Every phase says the machine's load
//! average before and after it.
//!
//! Without `--bench` (as `cargo test --all-targets` and `scripts/test` run it) it
//! is a smoke test: 0 and 100 existing requests, 100 new incidents from 2 senders,
//! 1 s of duplicates, 1 s of status writes at 8 writers; it fails on any failed
//! notification but a 503 (a slow API server's, which senders retry), or on a create
//! while only duplicates were sent.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};
use tidegate::remediation::{self, Classification, RemediationRequest, StatusUpdate};
use tidegate::signal::{Fingerprint, Labels, Signal, SignalStatus, SignalType, TargetResource};
use tidegate_testkit::bench::cpu::{cpu_seconds, machine_busy_seconds};
use tidegate_testkit::bench::knobs::{gateway_flags_only, knob};
use tidegate_testkit::bench::proc::vm_rss;
use tidegate_testkit::kube::Kube;

/// Namespaces the seeded requests and the new incidents are spread over.
const NAMESPACES: usize = 10;
/// Resources per alert name: at the pattern-storm threshold, so no storm forms and
/// every alert is an incident of its own.
const PER_NAME: usize = 5;
/// Seeding's creates in flight.
const SEED_CONCURRENCY: usize = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const START_TIMEOUT: Duration = Duration::from_secs(300);

struct Settings {
    smoke: bool,
    existing: Vec<usize>,
    new: usize,
    batch: usize,
    concurrency: usize,
    duplicates: Duration,
    writers: Vec<usize>,
    status_seconds: Duration,
}

impl Settings {
    fn from_env(smoke: bool) -> Self {
        let list = |name: &str, default: &str| -> Vec<usize> {
            let text = std::env::var(name).unwrap_or_else(|_| default.into());
            let parse =
                |v: &str| v.trim().parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a list of numbers"));
            text.split(',').map(parse).collect()
        };
        let (existing, new, concurrency, seconds, writers, status) = if smoke {
            ("0,100", 100, 2, 1.0, "8", 1.0)
        } else {
            ("0,10000,100000", 2000, 32, 10.0, "1,8,32,64", 10.0)
        };
        let mut existing = list("BENCH_KUBE_EXISTING", existing);
        existing.sort_unstable();
        Settings {
            smoke,
            existing,
            new: knob("BENCH_KUBE_NEW").unwrap_or(new),
            batch: knob("BENCH_BATCH").unwrap_or(10),
            concurrency: knob("BENCH_CONCURRENCY").unwrap_or(concurrency),
            duplicates: Duration::from_secs_f64(knob("BENCH_SECONDS").unwrap_or(seconds)),
            writers: list("BENCH_KUBE_WRITERS", writers),
            status_seconds: Duration::from_secs_f64(knob("BENCH_KUBE_STATUS_SECONDS").unwrap_or(status)),
        }
    }
}

fn main() -> ExitCode {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let settings = Settings::from_env(smoke);
    println!(
        "kube_ingest bench: existing requests {:?}, {} new incidents in notifications of {}, {} senders",
        settings.existing, settings.new, settings.batch, settings.concurrency
    );
    if smoke {
        println!("SMOKE MODE (not run by `cargo bench`): a small load, figures are not benchmarks");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run(settings))
}

/// One row of the results: one number of existing requests.
struct Row {
    existing: usize,
    seed_s: f64,
    ready_s: f64,
    rss: u64,
    new: Phase,
    dup: Phase,
}

async fn run(settings: Settings) -> ExitCode {
    let kube = Kube::new().await;
    let server = tidegate_testkit::kube::cluster().server.as_ref();
    let Some(server) = server else {
        eprintln!("the kube_ingest bench needs the API server it starts (TIDEGATE_TEST_KUBECONFIG is set)");
        return ExitCode::FAILURE;
    };
    let api_pids = api_server_pids(&server.dir);
    println!("API server {} (pids {api_pids:?}), machine: {} cores", server.url, cores());
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(&kubeconfig, service_account_kubeconfig(&server.url, &server.ca_der, kube.gateway_token()))
        .expect("write kubeconfig");
    let mut seed_ns = Vec::new();
    let mut alert_ns = Vec::new();
    for _ in 0..NAMESPACES {
        seed_ns.push(kube.namespace("seed", &[("environment", "prod")]).await);
        alert_ns.push(kube.namespace("alerts", &[("environment", "prod")]).await);
    }

    let mut rows = Vec::new();
    let mut seeded = 0;
    // Requests the API server holds: seeded, and created by earlier rows' gateways.
    let mut held = 0;
    let mut next_alert = 0;
    let mut failed = false;
    for &existing in &settings.existing {
        println!();
        println!("== {existing} existing requests (+ {} from earlier rows)", held - seeded);
        let seed_s = if existing > seeded {
            uptime("before seeding");
            let s = seed(&kube.admin, &seed_ns, seeded, existing).await;
            println!(
                "  seeded {} requests in {s:.1} s ({:.0}/s, create + status each)",
                existing - seeded,
                (existing - seeded) as f64 / s
            );
            uptime("after seeding");
            held += existing - seeded;
            seeded = existing;
            s
        } else {
            0.0
        };
        let gateway = match Gateway::start(&kubeconfig, tmp.path()).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let rss = vm_rss(gateway.pid()).unwrap_or(0);
        println!(
            "  gateway ready in {:.2} s with {held} requests cached; RSS {:.1} MiB",
            gateway.ready_in.as_secs_f64(),
            rss as f64 / 1048576.0
        );
        let bodies = notifications(next_alert, settings.new, settings.batch, &alert_ns);
        next_alert += settings.new;

        uptime("before new incidents");
        let calls0 = api_calls(&kube.admin).await;
        let new = drive(&settings, &gateway, &bodies, None, &api_pids).await;
        let calls = api_calls(&kube.admin).await;
        uptime("after new incidents");
        let new = new.with_calls(&calls0, &calls, settings.new);
        new.print("new incidents", settings.batch);
        held += settings.new;

        // One pass unmeasured: the watch delivers the new requests to the cache.
        let warm = drive(&settings, &gateway, &bodies, None, &api_pids).await;
        let after_warm = api_calls(&kube.admin).await;
        let warm_calls = CallDelta::between(&calls, &after_warm);
        println!("  first repeat pass (unmeasured): {} notifications, API calls {}", warm.ok, warm_calls.describe());
        uptime("before duplicates");
        let dup = drive(&settings, &gateway, &bodies, Some(settings.duplicates), &api_pids).await;
        let dup_calls = api_calls(&kube.admin).await;
        uptime("after duplicates");
        let dup_alerts = dup.ok as usize * settings.batch;
        let dup = dup.with_calls(&after_warm, &dup_calls, dup_alerts);
        dup.print("duplicates", settings.batch);
        gateway.metrics_summary().await;
        let ready_s = gateway.ready_in.as_secs_f64();
        gateway.stop();

        let errors = new.errors + warm.errors + dup.errors;
        let unavailable = new.unavailable + warm.unavailable + dup.unavailable;
        if errors > 0 {
            println!(
                "  !!! {errors} notifications were refused or failed, {unavailable} of them 503 (retried by a sender)"
            );
        }
        // A 503 is what a slow API server should cause (a loaded machine's is slow);
        // any other failure is a fault.
        if errors > unavailable {
            failed = true;
        }
        let dup_creates = dup.calls.as_ref().map_or(0.0, |c| c.get("POST", ""));
        if dup_creates > 0.0 {
            println!("  !!! {dup_creates} creates while only duplicates were sent");
            failed = true;
        }
        rows.push(Row { existing: held - settings.new, seed_s, ready_s, rss, new, dup });
    }

    let writes = status_write_rate(&settings, &kube, &seed_ns, &alert_ns).await;
    print_table(&rows, &settings, &writes);
    if settings.smoke && failed {
        eprintln!("smoke test failed: see the warnings above");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------
// Seeding

/// Creates requests `from..to` in `namespaces` (and writes their status), as the
/// gateway would have made them for alerts the bench never sends; the seconds it took.
async fn seed(admin: &Client, namespaces: &[String], from: usize, to: usize) -> f64 {
    let started = Instant::now();
    let now = jiff::Timestamp::now();
    let epoch = now.as_second() as u32;
    let class = Classification { environment: "production".into(), priority: "P1".into(), rule: "bench".into() };
    let done = AtomicUsize::new(0);
    let creates = futures::stream::iter(from..to).map(|i| {
        let (class, done) = (&class, &done);
        async move {
            let namespace = &namespaces[i % namespaces.len()];
            let name = format!("BenchSeeded{:06}", i / PER_NAME);
            let target = TargetResource::new("Deployment", &format!("seed-{i}"), namespace);
            let signal = signal(&name, namespace, target, now);
            let update = StatusUpdate::seen(epoch, epoch);
            let request = remediation::build(&signal, namespace, epoch, class, &update);
            let api: Api<RemediationRequest> = Api::namespaced(admin.clone(), namespace);
            let pp = PostParams::default();
            let mut created = retry(|| api.create(&pp, &request)).await;
            created.status = request.status.clone();
            let name = created.name_any();
            retry(|| api.replace_status(&name, &pp, &created)).await;
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n % 10_000 == 0 {
                println!("    {n} seeded, {:.0} s", started.elapsed().as_secs_f64());
            }
        }
    });
    creates.buffer_unordered(SEED_CONCURRENCY).collect::<Vec<_>>().await;
    started.elapsed().as_secs_f64()
}

/// `call` until it succeeds, at most 10 times (the API server may throttle a burst).
async fn retry<T, F, Fut>(call: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(v) => return v,
            Err(e) if attempt < 10 => {
                attempt += 1;
                eprintln!("    seeding: {e}; again");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => panic!("seeding: {e}"),
        }
    }
}

fn signal(name: &str, namespace: &str, target: TargetResource, now: jiff::Timestamp) -> Signal<'static> {
    let mut labels = Labels::default();
    for (k, v) in alert_labels(name, namespace, &target.name) {
        labels.push(k, v);
    }
    let mut annotations = Labels::default();
    for (k, v) in alert_annotations(name, namespace, &target.name) {
        annotations.push(k, v);
    }
    Signal {
        name: name.to_string().into(),
        severity: "critical".into(),
        namespace: namespace.to_string().into(),
        fingerprint: Fingerprint::new(name, namespace, &target),
        target,
        labels,
        annotations,
        firing_time: Some(now),
        received_time: now,
        signal_type: SignalType::PROMETHEUS_ALERT,
        source: "bench".into(),
        status: SignalStatus::Firing,
    }
}

fn alert_labels(name: &str, namespace: &str, deployment: &str) -> Vec<(String, String)> {
    [
        ("alertname", name),
        ("severity", "critical"),
        ("namespace", namespace),
        ("deployment", deployment),
        ("job", "kube-state-metrics"),
        ("prometheus", "monitoring/k8s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn alert_annotations(name: &str, namespace: &str, deployment: &str) -> Vec<(String, String)> {
    vec![
        ("summary".into(), format!("{name} on {namespace}/{deployment}")),
        (
            "description".into(),
            format!("Deployment {namespace}/{deployment} has not matched its replicas for 15 minutes."),
        ),
        ("runbook_url".into(), format!("https://runbooks.example.com/{name}")),
    ]
}

/// Alertmanager webhook v4 notifications of alerts `from..from + count`, `batch`
/// alerts each, every alert an incident of its own: about a Deployment, so that no
/// owner lookup is involved, or with `BENCH_KUBE_TARGET=pod` about a pod of it that
/// the API server does not have (a pod the owner caches have not seen: each new
/// one costs one GET of its metadata, as a pod of a new rollout does).
fn notifications(from: usize, count: usize, batch: usize, namespaces: &[String]) -> Vec<Vec<u8>> {
    let pods = std::env::var("BENCH_KUBE_TARGET").as_deref() == Ok("pod");
    let starts_at = jiff::Timestamp::now().to_string();
    let ids: Vec<usize> = (from..from + count).collect();
    ids.chunks(batch)
        .map(|chunk| {
            let alerts: Vec<Value> = chunk
                .iter()
                .map(|&i| {
                    let name = format!("BenchNew{:06}", i / PER_NAME);
                    let namespace = &namespaces[(i / PER_NAME) % namespaces.len()];
                    let deployment = format!("api-{}", i % PER_NAME);
                    let mut labels: BTreeMap<String, String> =
                        alert_labels(&name, namespace, &deployment).into_iter().collect();
                    if pods {
                        // About a pod the owner caches do not hold: its lookup is a GET.
                        labels.insert("pod".into(), format!("{deployment}-7c9d8f6b5-{i:06}"));
                    }
                    let annotations: BTreeMap<String, String> =
                        alert_annotations(&name, namespace, &deployment).into_iter().collect();
                    json!({
                        "status": "firing", "labels": labels, "annotations": annotations,
                        "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "http://prometheus-k8s-0:9090/graph", "fingerprint": format!("{i:016x}"),
                    })
                })
                .collect();
            serde_json::to_vec(&json!({
                "version": "4", "groupKey": format!("{{}}:{{batch=\"{}\"}}", chunk[0]), "truncatedAlerts": 0,
                "status": "firing", "receiver": "bench", "groupLabels": {}, "commonLabels": {},
                "commonAnnotations": {}, "externalURL": "http://am", "alerts": alerts,
            }))
            .expect("JSON")
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The gateway

struct Gateway {
    child: Option<Child>,
    addr: SocketAddr,
    ready_in: Duration,
    log: std::path::PathBuf,
    client: reqwest::Client,
}

impl Gateway {
    async fn start(kubeconfig: &Path, dir: &Path) -> Result<Gateway, String> {
        let addr = free_port();
        let log = dir.join(format!("tidegate-{}.log", addr.port()));
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidegate"));
        command.arg("serve").args(["--listen", &addr.to_string()]).args([
            "--state",
            "memory",
            "--sink",
            "kube",
            "--shutdown-delay",
            "0s",
        ]);
        gateway_flags_only(&mut command);
        // `BENCH_TIDEGATE_ENV="TIDEGATE_KUBE_CREATES_IN_FLIGHT=64 ..."`: settings
        // without a flag.
        for pair in std::env::var("BENCH_TIDEGATE_ENV").unwrap_or_default().split_whitespace() {
            let (key, value) = pair.split_once('=').expect("BENCH_TIDEGATE_ENV holds KEY=VALUE pairs");
            println!("  environment: {key}={value}");
            command.env(key, value);
        }
        // The start-up list of 100,000 requests takes longer than the default 30 s
        // on a loaded machine.
        command.env("TIDEGATE_KUBE_SYNC_TIMEOUT", "300s");
        command.env("TIDEGATE_LOG_FILTER", "warn").env("KUBECONFIG", kubeconfig);
        command.stdin(Stdio::null()).stdout(out.try_clone().map_err(|e| e.to_string())?).stderr(out);
        let child = command.spawn().map_err(|e| format!("starting tidegate: {e}"))?;
        let client = reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT).build().expect("client");
        let mut gateway = Gateway { child: Some(child), addr, ready_in: Duration::ZERO, log, client };
        let started = Instant::now();
        loop {
            if let Some(status) = gateway.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("tidegate exited ({status}):\n{}", gateway.log_text()));
            }
            let ready = gateway.client.get(format!("http://{addr}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                gateway.ready_in = started.elapsed();
                return Ok(gateway);
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!("tidegate not ready in {START_TIMEOUT:?}:\n{}", gateway.log_text()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn metrics_summary(&self) {
        let Ok(r) = self.client.get(format!("http://{}/metrics", self.addr)).send().await else { return };
        let text = r.text().await.unwrap_or_default();
        for line in text.lines().filter(|l| {
            !l.starts_with('#')
                && [
                    "tidegate_kube_api_calls_total",
                    "tidegate_status_updates_pending",
                    "tidegate_remediation_requests_created",
                ]
                .iter()
                .any(|m| l.starts_with(m))
                && !l.ends_with(" 0")
        }) {
            println!("  gateway metric  {line}");
        }
    }

    /// SIGTERM (which writes the pending statuses), then SIGKILL after 60 s.
    fn stop(mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let started = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = self.log_text();
        let lines: Vec<&str> = log.lines().collect();
        if !lines.is_empty() {
            println!("  gateway logged {} lines at warn level; first ones:", lines.len());
            for line in lines.iter().take(5) {
                println!("    {line}");
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn service_account_kubeconfig(url: &str, ca_der: &[u8], token: &str) -> String {
    let b64 = data_encoding::BASE64;
    let body = b64.encode(ca_der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64")).collect();
    let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"));
    serde_json::to_string(&json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "bench", "cluster": {"server": url, "certificate-authority-data": b64.encode(pem.as_bytes())}}],
        "users": [{"name": "tidegate", "user": {"token": token}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "tidegate"}}],
        "current-context": "bench",
    }))
    .expect("kubeconfig JSON")
}

// ---------------------------------------------------------------------------------
// Load generator

/// What one phase measured.
struct Phase {
    ok: u64,
    errors: u64,
    /// Of the errors, 503s: the gateway's answer when the API server is too slow to
    /// decide within its deadline, which the sender retries.
    unavailable: u64,
    first_error: Option<String>,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    /// CPU seconds in the phase: gateway, API server and etcd, the whole machine.
    gateway_cpu: f64,
    api_cpu: f64,
    busy: f64,
    /// API calls per alert, by (verb, subresource) of remediationrequests.
    calls: Option<CallDelta>,
    alerts: usize,
}

impl Phase {
    fn with_calls(mut self, before: &Calls, after: &Calls, alerts: usize) -> Phase {
        self.calls = Some(CallDelta::between(before, after));
        self.alerts = alerts;
        self
    }

    fn alerts_per_s(&self, batch: usize) -> f64 {
        (self.ok as usize * batch) as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        f64::from(sorted[rank - 1]) / 1000.0
    }

    fn idle(&self) -> f64 {
        1.0 - self.busy / (cores() as f64 * self.elapsed.as_secs_f64())
    }

    fn print(&self, what: &str, batch: usize) {
        let secs = self.elapsed.as_secs_f64();
        println!(
            "  {what}: {} notifications ({} alerts) in {secs:.2} s = {:.0} alerts/s, p50 {:.1} ms, p99 {:.1} ms, {} failed{}",
            self.ok,
            self.ok as usize * batch,
            self.alerts_per_s(batch),
            self.percentile(0.5),
            self.percentile(0.99),
            self.errors,
            self.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
        );
        println!(
            "    cores: gateway {:.2}, API server + etcd {:.2}, load generator and rest {:.2}, idle {:.0} %",
            self.gateway_cpu / secs,
            self.api_cpu / secs,
            (self.busy - self.gateway_cpu - self.api_cpu).max(0.0) / secs,
            self.idle() * 100.0
        );
        if let Some(calls) = &self.calls {
            println!("    API calls: {}", calls.describe());
            println!(
                "    the API server's own time: {:.1} ms per create, {:.1} ms per status write, {:.1} ms per GET of a pod; \
                 queued in its flow control {:.1} ms on average",
                calls.server_ms("POST", ""),
                calls.server_ms("PUT", "status"),
                calls.server_ms_of("GET", "pods", ""),
                calls.apf_wait_ms()
            );
            let per = |n: f64| n / self.alerts.max(1) as f64;
            println!(
                "    per alert: {:.3} creates, {:.3} status writes, {:.3} other calls to remediationrequests, {:.3} to pods/replicasets/jobs",
                per(calls.get("POST", "")),
                per(calls.get("PUT", "status") + calls.get("PATCH", "status")),
                per(calls.requests_total() - calls.get("POST", "") - calls.get("PUT", "status") - calls.get("PATCH", "status")),
                per(calls.owners()),
            );
        }
    }
}

/// Sends `bodies` from the senders: each once (`repeat_for` None), or cycling
/// through them until `repeat_for` has passed.
async fn drive(
    settings: &Settings,
    gateway: &Gateway,
    bodies: &[Vec<u8>],
    repeat_for: Option<Duration>,
    api_pids: &[u32],
) -> Phase {
    let url = format!("http://{}/api/v1/signals/prometheus", gateway.addr);
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(bodies.iter().map(|b| bytes::Bytes::from(b.clone())).collect());
    let next = Arc::new(AtomicU64::new(0));
    let api_cpu = || api_pids.iter().map(|p| cpu_seconds(&p.to_string())).sum::<f64>();
    let (gw0, api0, busy0) = (cpu_seconds(&gateway.pid().to_string()), api_cpu(), machine_busy_seconds());
    let started = Instant::now();
    let deadline = repeat_for.map(|d| started + d);
    let workers: Vec<_> = (0..settings.concurrency)
        .map(|w| {
            let (url, bodies, next) = (url.clone(), bodies.clone(), next.clone());
            let client = reqwest::Client::builder()
                .no_proxy()
                .http1_only()
                .local_address(source_address(w))
                .timeout(REQUEST_TIMEOUT)
                .build()
                .expect("client");
            tokio::spawn(async move {
                let (mut ok, mut errors, mut unavailable, mut first_error, mut latencies) =
                    (0u64, 0u64, 0u64, None, Vec::new());
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                    match deadline {
                        None if n >= bodies.len() => break,
                        Some(d) if Instant::now() >= d => break,
                        _ => {}
                    }
                    let body = bodies[n % bodies.len()].clone();
                    let sent = Instant::now();
                    let answer = client.post(&url).header("content-type", "application/json").body(body).send().await;
                    let answer = match answer {
                        Ok(r) => {
                            let status = r.status();
                            let text = r.text().await.unwrap_or_default();
                            if status.is_success() {
                                Ok(())
                            } else {
                                Err(format!("HTTP {status}: {text:.300}"))
                            }
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    match answer {
                        Ok(()) => {
                            ok += 1;
                            latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        }
                        Err(e) => {
                            errors += 1;
                            unavailable += u64::from(e.starts_with("HTTP 503"));
                            first_error.get_or_insert(e);
                        }
                    }
                }
                (ok, errors, unavailable, first_error, latencies)
            })
        })
        .collect();
    let mut phase = Phase {
        ok: 0,
        errors: 0,
        unavailable: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
        gateway_cpu: 0.0,
        api_cpu: 0.0,
        busy: 0.0,
        calls: None,
        alerts: 0,
    };
    for w in workers {
        let (ok, errors, unavailable, first_error, latencies) = w.await.expect("worker");
        phase.unavailable += unavailable;
        phase.ok += ok;
        phase.errors += errors;
        phase.first_error = phase.first_error.or(first_error);
        phase.latencies_us.extend(latencies);
    }
    phase.elapsed = started.elapsed();
    phase.gateway_cpu = cpu_seconds(&gateway.pid().to_string()) - gw0;
    phase.api_cpu = api_cpu() - api0;
    phase.busy = machine_busy_seconds() - busy0;
    phase
}

/// Worker `w`'s source address: tidegate limits requests per source address, and
/// this load is many senders.
fn source_address(w: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + w as u32))
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr")
}

// ---------------------------------------------------------------------------------
// The API server's count of calls

/// `apiserver_request_total` summed by (verb, resource, subresource), watches aside.
type Calls = BTreeMap<(String, String, String), f64>;

async fn api_calls(admin: &Client) -> Calls {
    let request = axum::http::Request::get("/metrics").body(Vec::new()).expect("request");
    let text = admin.request_text(request).await.expect("the API server's /metrics");
    let mut calls = Calls::new();
    // The count of calls; the seconds the API server spent on them (filed under
    // "time:<resource>"); and the seconds requests waited in its priority-and-
    // fairness queues ("apf").
    let metrics = [
        ("apiserver_request_total{", ""),
        ("apiserver_request_duration_seconds_sum{", "time:"),
        ("apiserver_flowcontrol_request_wait_duration_seconds_sum{", "apf"),
        ("apiserver_flowcontrol_request_wait_duration_seconds_count{", "apf-n"),
    ];
    for line in text.lines() {
        let Some((metric, file)) = metrics.iter().find(|(m, _)| line.starts_with(m)) else { continue };
        let Some((labels, value)) = line[metric.len()..].rsplit_once("} ") else { continue };
        let label = |name: &str| {
            let key = format!("{name}=\"");
            labels.split(&key).nth(1).and_then(|rest| rest.split('"').next()).unwrap_or("").to_string()
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        if file.starts_with("apf") {
            *calls.entry((file.to_string(), file.to_string(), String::new())).or_default() += value;
            continue;
        }
        let verb = label("verb");
        if verb == "WATCH" || verb == "WATCHLIST" {
            continue;
        }
        *calls.entry((verb, format!("{file}{}", label("resource")), label("subresource"))).or_default() += value;
    }
    calls
}

struct CallDelta(Calls);

impl CallDelta {
    fn between(before: &Calls, after: &Calls) -> CallDelta {
        let mut delta = Calls::new();
        for (key, v) in after {
            let d = v - before.get(key).copied().unwrap_or(0.0);
            if d > 0.0 {
                delta.insert(key.clone(), d);
            }
        }
        CallDelta(delta)
    }

    /// Calls of `verb` to remediationrequests' `subresource` ("" for the object).
    fn get(&self, verb: &str, subresource: &str) -> f64 {
        self.0.get(&(verb.into(), "remediationrequests".into(), subresource.into())).copied().unwrap_or(0.0)
    }

    fn requests_total(&self) -> f64 {
        self.0.iter().filter(|((_, r, _), _)| r == "remediationrequests").map(|(_, v)| v).sum()
    }

    /// The API server's mean time per call of `verb` to remediationrequests'
    /// `subresource`, in ms.
    fn server_ms(&self, verb: &str, subresource: &str) -> f64 {
        self.server_ms_of(verb, "remediationrequests", subresource)
    }

    fn server_ms_of(&self, verb: &str, resource: &str, subresource: &str) -> f64 {
        let key = |r: String| (verb.to_string(), r, subresource.to_string());
        let calls = self.0.get(&key(resource.to_string())).copied().unwrap_or(0.0);
        self.0.get(&key(format!("time:{resource}"))).copied().unwrap_or(0.0) * 1000.0 / calls.max(1.0)
    }

    /// Mean wait in the API server's priority-and-fairness queues, in ms.
    fn apf_wait_ms(&self) -> f64 {
        let get = |k: &str| self.0.get(&(k.to_string(), k.to_string(), String::new())).copied().unwrap_or(0.0);
        get("apf") * 1000.0 / get("apf-n").max(1.0)
    }

    /// Calls the owner lookups would make.
    fn owners(&self) -> f64 {
        let owned = ["pods", "replicasets", "jobs"];
        self.0.iter().filter(|((_, r, _), _)| owned.contains(&r.as_str())).map(|(_, v)| v).sum()
    }

    fn describe(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        let part = |((verb, resource, sub), v): (&(String, String, String), &f64)| {
            let resource = if resource.is_empty() { "(non-resource)".to_string() } else { resource.clone() };
            let sub = if sub.is_empty() { String::new() } else { format!("/{sub}") };
            format!("{verb} {resource}{sub} {v}")
        };
        let counts = self.0.iter().filter(|((_, r, _), _)| !r.starts_with("time:") && !r.starts_with("apf"));
        let (ours, others): (Vec<_>, Vec<_>) = counts.partition(|((_, r, _), _)| r == "remediationrequests");
        let ours: Vec<String> = ours.into_iter().map(part).collect();
        let others: Vec<String> = others.into_iter().map(part).collect();
        format!(
            "{}; other resources (the API server's own housekeeping, the bench's scrape): {}",
            if ours.is_empty() { "none to remediationrequests".into() } else { ours.join(", ") },
            if others.is_empty() { "none".into() } else { others.join(", ") }
        )
    }
}

/// etcd's and the API server's pids: the processes whose command line names the
/// API server's directory.
fn api_server_pids(dir: &Path) -> Vec<u32> {
    let dir = dir.to_string_lossy().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&dir))
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Status write rate

/// Writes/s, p50 and p99 ms, per number of concurrent writers.
struct Writes(Vec<(usize, u64, f64, f64, f64, u64)>);

/// The status write rate the API server sustains for the service account: each
/// writer replaces the status of requests of its own, from the object the last
/// write returned (so never a conflict), as the sink writes.
async fn status_write_rate(settings: &Settings, kube: &Kube, seed_ns: &[String], alert_ns: &[String]) -> Writes {
    println!();
    println!("== status writes as the service account");
    let client = kube.gateway_client_direct();
    let mut rows = Vec::new();
    for &writers in &settings.writers {
        // Listed afresh for each level: the last level's writes moved their versions on.
        let mut objects = Vec::new();
        for ns in seed_ns.iter().chain(alert_ns) {
            let api: Api<RemediationRequest> = Api::namespaced(kube.admin.clone(), ns);
            objects.extend(api.list(&ListParams::default().limit(500)).await.expect("list").items);
            if objects.len() >= 2000 {
                break;
            }
        }
        if objects.len() < writers {
            println!("  {writers} writers: skipped, only {} requests to write", objects.len());
            continue;
        }
        uptime(&format!("before {writers} writers"));
        let started = Instant::now();
        let deadline = started + settings.status_seconds;
        let share = objects.len() / writers;
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let mut mine: Vec<RemediationRequest> = objects[w * share..(w + 1) * share].to_vec();
                let client = client.clone();
                tokio::spawn(async move {
                    let (mut latencies, mut errors, mut k) = (Vec::new(), 0u64, 0usize);
                    while Instant::now() < deadline {
                        let i = k % mine.len();
                        k += 1;
                        let rr = &mut mine[i];
                        let api: Api<RemediationRequest> =
                            Api::namespaced(client.clone(), &rr.namespace().expect("namespaced"));
                        // Every request here has a count (seeded or created with one).
                        if let Some(dedup) = rr.status.as_mut().and_then(|s| s.deduplication.as_mut()) {
                            dedup.occurrence_count += 1;
                        }
                        let sent = Instant::now();
                        match api.replace_status(&rr.name_any(), &PostParams::default(), rr).await {
                            Ok(written) => {
                                latencies.push(sent.elapsed().as_micros() as u32);
                                *rr = written;
                            }
                            Err(e) => {
                                errors += 1;
                                if errors == 1 {
                                    eprintln!("    status write: {e}");
                                }
                                if let Ok(fresh) = api.get(&rr.name_any()).await {
                                    *rr = fresh;
                                }
                            }
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        let (mut latencies, mut errors) = (Vec::new(), 0);
        for t in tasks {
            let (l, e) = t.await.expect("writer");
            latencies.extend(l);
            errors += e;
        }
        let secs = started.elapsed().as_secs_f64();
        uptime(&format!("after {writers} writers"));
        latencies.sort_unstable();
        let pct = |p: f64| {
            let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len().max(1));
            latencies.get(rank - 1).map_or(f64::NAN, |&us| f64::from(us) / 1000.0)
        };
        let (p50, p99) = (pct(0.5), pct(0.99));
        println!(
            "  {writers} writers: {} writes in {secs:.1} s = {:.0}/s, p50 {p50:.1} ms, p99 {p99:.1} ms, {errors} errors",
            latencies.len(),
            latencies.len() as f64 / secs
        );
        rows.push((writers, latencies.len() as u64, latencies.len() as f64 / secs, p50, p99, errors));
    }
    Writes(rows)
}

// ---------------------------------------------------------------------------------
// Results

fn print_table(rows: &[Row], settings: &Settings, writes: &Writes) {
    println!();
    println!(
        "{:>9} {:>7} {:>7} {:>9} | {:>9} {:>8} {:>8} {:>6} {:>7} {:>7} | {:>9} {:>7} {:>7} {:>8}",
        "existing",
        "seed s",
        "ready s",
        "RSS MiB",
        "new al/s",
        "p50 ms",
        "p99 ms",
        "idle",
        "creat/i",
        "stat/i",
        "dup al/s",
        "p50 ms",
        "p99 ms",
        "calls/d"
    );
    for r in rows {
        let calls =
            |p: &Phase, f: &dyn Fn(&CallDelta) -> f64| p.calls.as_ref().map_or(f64::NAN, f) / p.alerts.max(1) as f64;
        println!(
            "{:>9} {:>7.1} {:>7.2} {:>9.1} | {:>9.0} {:>8.1} {:>8.1} {:>5.0}% {:>7.3} {:>7.3} | {:>9.0} {:>7.2} {:>7.2} {:>8.4}",
            r.existing,
            r.seed_s,
            r.ready_s,
            r.rss as f64 / 1048576.0,
            r.new.alerts_per_s(settings.batch),
            r.new.percentile(0.5),
            r.new.percentile(0.99),
            r.new.idle() * 100.0,
            calls(&r.new, &|c| c.get("POST", "")),
            calls(&r.new, &|c| c.get("PUT", "status") + c.get("PATCH", "status")),
            r.dup.alerts_per_s(settings.batch),
            r.dup.percentile(0.5),
            r.dup.percentile(0.99),
            calls(&r.dup, &|c| c.requests_total() + c.owners()),
        );
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        if last.existing > first.existing {
            let per = (last.rss as f64 - first.rss as f64) / (last.existing - first.existing) as f64;
            println!(
                "gateway memory per cached request: {per:.0} bytes (RSS at ready, {} vs {} requests)",
                last.existing, first.existing
            );
        }
    }
    for r in rows {
        let Some(c) = &r.new.calls else { continue };
        let creates = c.get("POST", "") / r.new.alerts.max(1) as f64;
        let other = (c.requests_total() - c.get("POST", "") - c.get("PUT", "status")) / r.new.alerts.max(1) as f64;
        println!(
            "{} existing: a new incident cost {creates:.3} creates and {other:.3} calls besides its status write (target 1 and 0: {})",
            r.existing,
            if (creates - 1.0).abs() < 1e-9 && other == 0.0 { "met" } else { "NOT MET" }
        );
        let Some(d) = &r.dup.calls else { continue };
        let besides = (d.requests_total() - d.get("PUT", "status") + d.owners()) / r.dup.alerts.max(1) as f64;
        println!(
            "{} existing: a duplicate cost {besides:.4} calls besides coalesced status writes ({:.4} status writes each; target 0: {})",
            r.existing,
            d.get("PUT", "status") / r.dup.alerts.max(1) as f64,
            if besides == 0.0 { "met" } else { "NOT MET" }
        );
    }
    for (writers, n, rate, p50, p99, errors) in &writes.0 {
        println!("status writes, {writers} writers: {rate:.0}/s ({n} writes), p50 {p50:.1} ms, p99 {p99:.1} ms, {errors} errors");
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Prints the machine's load averages: how quiet it was around a measurement.
fn uptime(when: &str) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!("  load average {when}: {}", load.join(" "));
}
