//! What each abuse costs the gateway in resident memory, and that it is bounded.
//!
//! Run with `cargo bench --bench abuse` (docs/abuse.md has the last figures). Starts
//! the real `tidegate serve` binary with the limits in [`CONFIG`], reads its resident
//! set (`/proc/<pid>/status`) before and after each abuse, and checks the refusal
//! each one gets. Without `--bench` (as `cargo test --benches` runs it) every case
//! runs at a small scale, as a correctness check. `refusal_log` (also alone:
//! `cargo bench --bench abuse -- refusal_log`) measures the bytes of log that floods
//! of refused requests cost instead of memory.

use tidegate_testkit::bench::proc;

use std::future::Future;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use proc::vm_rss;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The gateway's limits for the run: the defaults, but for timeouts short enough
/// to wait out, a body budget small enough to fill, and a dedup window longer than
/// the run, so that no incident expires before the store is full.
const CONFIG: &str = "\
http:
  header_read_timeout: 2s
  body_read_timeout: 2s
  body_budget: 67108864
  body_budget_wait: 1s
rate_limit:
  enabled: false
dedup:
  window: 1h
log:
  filter: warn
";

struct Scale {
    slow_clients: usize,
    fingerprints: usize,
    huge_alerts: usize,
}

const FULL: Scale = Scale { slow_clients: 800, fingerprints: 1_000_000, huge_alerts: 100 };
const SMOKE: Scale = Scale { slow_clients: 20, fingerprints: 2_000, huge_alerts: 3 };

struct Gateway {
    child: Child,
    url: String,
    addr: std::net::SocketAddr,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    async fn start(max_entries: usize) -> Gateway {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("tidegate.yaml");
        std::fs::write(&config, format!("{CONFIG}memory:\n  max_entries: {max_entries}\n")).expect("config");
        let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidegate"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--listen", &addr.to_string()])
            .arg("--sink")
            .arg(format!("dir:{}", dir.path().join("sink").display()))
            .stdout(Stdio::null());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TIDEGATE_") {
                command.env_remove(key);
            }
        }
        let child = command.spawn().expect("starting tidegate");
        let gw = Gateway { child, url: format!("http://{addr}"), addr, client: reqwest::Client::new(), _dir: dir };
        let ready = poll(Duration::from_secs(20), || async {
            let resp = gw.client.get(format!("{}/readyz", gw.url)).send().await;
            resp.is_ok_and(|r| r.status() == 200)
        });
        assert!(ready.await, "tidegate did not become ready");
        gw
    }

    /// Resident memory, in bytes.
    fn rss(&self) -> u64 {
        rss_of(self.child.id())
    }

    async fn post(&self, body: &Value) -> reqwest::Response {
        let url = format!("{}/api/v1/signals/prometheus", self.url);
        self.client.post(url).json(body).send().await.expect("a response")
    }

    async fn rejections(&self, reason: &str) -> u64 {
        let text = self.client.get(format!("{}/metrics", self.url)).send().await.unwrap().text().await.unwrap();
        let series = format!("tidegate_http_rejections_total{{reason=\"{reason}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(series.as_str())).map_or(0, |n| n.parse().unwrap())
    }
}

async fn poll<F: Future<Output = bool>>(limit: Duration, mut check: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The resident memory of process `pid`, in bytes.
fn rss_of(pid: u32) -> u64 {
    vm_rss(pid).expect("the gateway is running")
}

fn alert(name: &str, pod: &str) -> Value {
    json!({"status": "firing", "labels": {"alertname": name, "namespace": "shop", "pod": pod}})
}

fn mib(bytes: i64) -> String {
    format!("{:+.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Prints one row: the case, how many units it had, what it added to the
/// resident set at its peak and what stayed after, in all and per unit.
fn row(case: &str, before: u64, peak: u64, after: u64, units: usize, unit: &str) {
    let (peak, after) = (peak as i64 - before as i64, after as i64 - before as i64);
    let per = |d: i64| d / units.max(1) as i64;
    println!(
        "{case:<42} {units:>8} {unit:<12} peak {:>10} ({:>8} B each)  kept {:>10} ({:>6} B each)",
        mib(peak),
        per(peak),
        mib(after),
        per(after)
    );
}

/// Connections that each send a request head just under the limit and never end
/// it: what hyper buffers, until the header-read timeout closes them all.
async fn slow_heads(gw: &Gateway, n: usize) {
    let before = gw.rss();
    let sampler = Peak::sample(gw.child.id());
    let mut conns = Vec::with_capacity(n);
    let head = format!("POST /api/v1/signals/prometheus HTTP/1.1\r\nhost: x\r\nx-pad: {}", "a".repeat(15_000));
    for _ in 0..n {
        let mut conn = TcpStream::connect(gw.addr).await.expect("connect");
        conn.write_all(head.as_bytes()).await.expect("write");
        conns.push(conn);
    }
    let started = Instant::now();
    for conn in &mut conns {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a slow head was never cut off");
    }
    let waited = started.elapsed();
    // An idle kept-alive connection (the readiness poll's) is closed the same way.
    let timeouts = gw.rejections("header_timeout").await;
    assert!(timeouts >= n as u64, "{timeouts} header timeouts for {n} slow heads");
    row("slow heads (15 KB each, never finished)", before, sampler.stop(), gw.rss(), n, "connection");
    println!("  all {n} closed by the header-read timeout within {waited:.1?} of the last write");
}

/// Connections that declare a 1 MiB body and send half of it: each holds its
/// budget reservation until the body-read timeout answers it 503, and those that
/// find no room in the budget are answered 503 at once.
async fn slow_bodies(gw: &Gateway, n: usize) {
    let before = gw.rss();
    let peak = Peak::sample(gw.child.id());
    let declared = 1 << 20;
    let head = format!(
        "POST /api/v1/signals/prometheus HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\n\r\n"
    );
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let (addr, head) = (gw.addr, head.clone());
            tokio::spawn(async move {
                let conn = TcpStream::connect(addr).await.expect("connect");
                let (mut reader, mut writer) = conn.into_split();
                // The server stops reading when it answers: the write may then fail.
                let writing = tokio::spawn(async move {
                    let _ = writer.write_all(head.as_bytes()).await;
                    let _ = writer.write_all(&vec![b' '; declared / 2]).await;
                    writer
                });
                let mut response = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut response)).await;
                drop(writing.await);
                String::from_utf8_lossy(&response).get(9..12).unwrap_or("none").to_string()
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for client in clients {
        *statuses.entry(client.await.expect("a client")).or_default() += 1;
    }
    assert_eq!(statuses.get("503"), Some(&n), "{statuses:?}");
    let (timeouts, no_room) = (gw.rejections("body_timeout").await, gw.rejections("body_budget").await);
    row("slow bodies (1 MiB declared, half sent)", before, peak.stop(), gw.rss(), n, "connection");
    println!("  all {n} answered 503: {timeouts} body_timeout, {no_room} body_budget (no room in 64 MiB)");
}

/// The largest resident set of a process while it runs, sampled every 10 ms.
struct Peak {
    max: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Peak {
    fn sample(pid: u32) -> Peak {
        let max = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn({
            let max = max.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                loop {
                    tick.tick().await;
                    // Gone (the bench failed and killed it): nothing to sample.
                    let Some(rss) = vm_rss(pid) else { return };
                    max.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        Peak { max, task }
    }

    fn stop(self) -> u64 {
        self.task.abort();
        self.max.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// `fingerprints` distinct incidents, each its own alert name (so none is folded
/// into a storm), in batches of 1,000; then one more, which the full store refuses.
async fn distinct_fingerprints(gw: &Gateway, fingerprints: usize) {
    let before = gw.rss();
    let sampler = Peak::sample(gw.child.id());
    let started = Instant::now();
    for start in (0..fingerprints).step_by(1000) {
        let alerts: Vec<Value> =
            (start..(start + 1000).min(fingerprints)).map(|i| alert(&format!("A{i}"), "p")).collect();
        let resp = gw.post(&json!({"status": "firing", "alerts": alerts})).await;
        assert!(resp.status().is_success(), "batch at {start}: {}", resp.status());
    }
    let took = started.elapsed();
    let peak = sampler.stop();
    let text = gw.client.get(format!("{}/metrics", gw.url)).send().await.unwrap().text().await.unwrap();
    let entries = text.lines().find(|l| l.starts_with("tidegate_state_entries ")).unwrap_or("none").to_string();
    let refused = gw.post(&json!({"status": "firing", "alerts": [alert("OneMore", "p")]})).await;
    assert_eq!(refused.status(), 503, "{entries}");
    assert!(refused.headers().contains_key("retry-after"));
    row("distinct fingerprints, store full", before, peak, gw.rss(), fingerprints, "fingerprint");
    println!("  {fingerprints} sent in {took:.1?}; the next new incident: 503 with Retry-After");
}

/// Alerts with a 1 MiB label value, a 1 MiB alert name and a 1 MiB annotation:
/// each request is cut to size, so what stays is the size of an ordinary one.
async fn huge_values(gw: &Gateway, n: usize) {
    let before = gw.rss();
    let sampler = Peak::sample(gw.child.id());
    let huge = "x".repeat(1 << 20);
    for i in 0..n {
        let mut a = alert(&format!("H{i}{huge}"), "p");
        a["labels"]["team"] = json!(huge);
        a["annotations"] = json!({"description": huge});
        assert_eq!(gw.post(&json!({"status": "firing", "alerts": [a]})).await.status(), 201);
    }
    row("1 MiB label, name and annotation values", before, sampler.stop(), gw.rss(), n, "alert");
}

/// Alerts with 10,000 labels each: refused, nothing kept.
async fn many_labels(gw: &Gateway, n: usize) {
    let before = gw.rss();
    let sampler = Peak::sample(gw.child.id());
    let mut a = alert("Crowded", "p");
    for i in 0..10_000 {
        a["labels"][format!("l{i}")] = json!("v");
    }
    for _ in 0..n {
        assert_eq!(gw.post(&json!({"status": "firing", "alerts": [a]})).await.status(), 400);
    }
    row("10,000 labels per alert (refused 400)", before, sampler.stop(), gw.rss(), n, "alert");
}

/// Bodies of 1 MiB of nested arrays, in an ignored field and in a CloudEvent's data.
async fn deep_nesting(gw: &Gateway, n: usize) {
    let before = gw.rss();
    let sampler = Peak::sample(gw.child.id());
    let depth = 1 << 19;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let webhook = format!(
        r#"{{"status":"firing","alerts":[{{"labels":{{"alertname":"Deep","namespace":"shop"}},"x":{nested}}}]}}"#
    );
    let event =
        format!(r#"{{"specversion":"1.0","id":"1","source":"s","type":"falco.rule.output.v1","data":{nested}}}"#);
    let (mut ignored, mut refused) = (0, 0);
    for _ in 0..n {
        let url = format!("{}/api/v1/signals/prometheus", gw.url);
        let r = gw.client.post(url).header("content-type", "application/json").body(webhook.clone()).send().await;
        ignored += usize::from(r.expect("a response").status().is_success());
        let url = format!("{}/api/v1/signals/cloudevents", gw.url);
        let r = gw.client.post(url).header("content-type", "application/cloudevents+json").body(event.clone());
        refused += usize::from(r.send().await.expect("a response").status() == 400);
    }
    assert_eq!((ignored, refused), (n, n), "an ignored field is skipped, a parsed one refused at depth 128");
    row("1 MiB of nested arrays (skipped or 400)", before, sampler.stop(), gw.rss(), 2 * n, "request");
}

/// The log a flood of refused requests costs: `tidegate serve` with its default
/// log (`info`, JSON lines) and a rate limit of 10/s (burst 20), flooded for `secs`
/// by one authenticated sender over its limit, then by requests with a wrong token
/// from a new forwarded address each (the worst case: every refusal from an actor
/// of its own). Counts the bytes written while each flood lasts and until the
/// refusals it summed are written.
async fn refusal_log(secs: u64, full: bool) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("a temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "bench-token").expect("token");
    let config = dir.path().join("tidegate.yaml");
    let yaml = format!(
        "rate_limit: {{rate: 10, burst: 20, trusted_proxies: [127.0.0.1/32]}}\nlog: {{format: json}}\n\
         auth: {{authenticators: {{t: {{bearer: {{tokens: {{alertmanager: {}}}}}}}}}}}\n",
        token.display()
    );
    std::fs::write(&config, yaml).expect("config");
    let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidegate"));
    command.arg("serve").arg("--config").arg(&config).args(["--listen", &addr.to_string()]);
    command.arg("--sink").arg(format!("dir:{}", dir.path().join("sink").display()));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TIDEGATE_") {
            command.env_remove(key);
        }
    }
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("starting tidegate");
    let (bytes, lines, audit) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stdout = child.stdout.take().expect("stdout");
    let (b, l, a) = (bytes.clone(), lines.clone(), audit.clone());
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            b.fetch_add(line.len() as u64 + 1, Relaxed);
            l.fetch_add(1, Relaxed);
            a.fetch_add(u64::from(line.contains("\"target\":\"tidegate::audit\"")), Relaxed);
        }
    });
    let url = format!("http://{addr}/api/v1/signals/prometheus");
    let client = reqwest::Client::new();
    let ready = poll(Duration::from_secs(20), || async {
        client.get(format!("http://{addr}/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    });
    assert!(ready.await, "tidegate did not become ready");
    let body = serde_json::to_vec(&json!({"status": "firing", "alerts": [alert("Flood", "p-0")]})).expect("a body");
    let floods: [(&str, &str, bool); 2] = [
        ("one sender over its rate limit", "bench-token", false),
        ("wrong token, a new address each", "wrong-token", true),
    ];
    println!("refusal floods: bytes of log (JSON lines) while each lasts ({secs}s) and until its sums are written");
    for (case, token, rotate) in floods {
        let (bytes0, lines0, audit0) = (bytes.load(Relaxed), lines.load(Relaxed), audit.load(Relaxed));
        let started = Instant::now();
        let refused = Arc::new(AtomicU64::new(0));
        let senders: Vec<_> = (0..8u64)
            .map(|worker| {
                let (client, url, body, refused) = (client.clone(), url.clone(), body.clone(), refused.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while started.elapsed() < Duration::from_secs(secs) {
                        n += 1;
                        let mut request =
                            client.post(&url).bearer_auth(token).header("content-type", "application/json");
                        if rotate {
                            let k = worker << 24 | n;
                            request = request.header(
                                "x-forwarded-for",
                                format!("10.{}.{}.{}", k >> 16 & 255, k >> 8 & 255, k & 255),
                            );
                        }
                        let status = request.body(body.clone()).send().await.expect("a response").status();
                        refused.fetch_add(u64::from(status == 401 || status == 503), Relaxed);
                    }
                })
            })
            .collect();
        for sender in senders {
            sender.await.expect("a sender");
        }
        let flood = started.elapsed();
        // The refusals summed in the last window are written once it ends.
        let tail = if full { Duration::from_secs(16) } else { Duration::ZERO };
        tokio::time::sleep(tail).await;
        let elapsed = started.elapsed().as_secs_f64();
        let (bytes, lines, audit) =
            (bytes.load(Relaxed) - bytes0, lines.load(Relaxed) - lines0, audit.load(Relaxed) - audit0);
        let refused = refused.load(Relaxed);
        println!(
            "  {case:<34} {refused:>8} refused ({:>6.0}/s)  log {bytes:>9} B in {lines:>5} lines ({audit:>4} audit)  {:>8.0} B/s over {elapsed:.1}s",
            refused as f64 / flood.as_secs_f64(),
            bytes as f64 / elapsed,
        );
        // At most one audit line per actor and reason per 10 s, and 256 actors
        // followed (the rest summed as one): the bound docs/abuse.md gives.
        let windows = 2 + flood.as_secs() / 10;
        assert!(audit <= 257 * 2 * windows, "{audit} audit lines for {refused} refusals");
        assert!(refused > 0, "nothing was refused");
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn main() -> ExitCode {
    let full = std::env::args().any(|a| a == "--bench");
    let scale = if full { FULL } else { SMOKE };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    if std::env::args().any(|a| a == "refusal_log") {
        runtime.block_on(refusal_log(if full { 20 } else { 1 }, full));
        return ExitCode::SUCCESS;
    }
    runtime.block_on(async {
        println!(
            "abuse bench: resident memory of `tidegate serve` per abuse{}",
            if full { "" } else { " (smoke scale)" }
        );
        let gw = Gateway::start(scale.fingerprints).await;
        println!("baseline RSS {}", mib(gw.rss() as i64));
        slow_heads(&gw, scale.slow_clients).await;
        slow_bodies(&gw, scale.slow_clients / 4).await;
        huge_values(&gw, scale.huge_alerts).await;
        many_labels(&gw, scale.huge_alerts * 10).await;
        deep_nesting(&gw, scale.huge_alerts).await;
        distinct_fingerprints(&gw, scale.fingerprints - scale.huge_alerts - 1).await;
        println!("final RSS {}", mib(gw.rss() as i64));
        drop(gw);
        refusal_log(if full { 20 } else { 1 }, full).await;
    });
    ExitCode::SUCCESS
}
