//! Shared test harness: an in-process gateway on `127.0.0.1:0` with a manual clock,
//! and builders for real payloads.
#![allow(dead_code)]

pub mod notification;
pub mod senders;
pub mod tls;

// The servers, the process plumbing and polling are shared with the benches. Each
// test binary uses some of them.
#[allow(unused_imports)]
pub use tidegate_testkit::{eventually, eventually_every, eventually_within, kube, poll_within, process, redis};

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tidegate::clock::Clock;
use tidegate::config::{Config, SinkTarget};
use tidegate::gateway::{self, Running};
use tidegate::remediation::RemediationRequest;

/// A gateway listening on a free port, writing manifests into its own directory.
pub struct Gateway {
    pub url: String,
    pub clock: Clock,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    config: Config,
    running: Option<Running>,
}

/// Starts a gateway with test-friendly defaults, adjusted by `tweak`.
pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Gateway {
    start_full(tweak, gateway::Overrides::default(), Clock::manual(SystemTime::now())).await
}

/// A gateway with `overrides` and `clock`, adjusted by `tweak`.
pub async fn start_full(tweak: impl FnOnce(&mut Config), overrides: gateway::Overrides, clock: Clock) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        sink: SinkTarget::Dir(dir.path().to_path_buf()),
        ..Config::default()
    };
    config.http.shutdown_delay = Duration::ZERO;
    config.status_writer.interval = Duration::from_millis(20);
    tweak(&mut config);
    let running = gateway::start_with(config.clone(), clock.clone(), overrides).await.unwrap();
    Gateway::new(running, clock, dir, config)
}

/// A gateway writing RemediationRequests through `kube`'s proxy as tidegate's
/// service account, adjusted by `tweak`.
pub async fn start_kube(kube: &kube::Kube, tweak: impl FnOnce(&mut Config)) -> Gateway {
    start_kube_as(kube.gateway_client(), Clock::manual(SystemTime::now()), tweak).await
}

/// [`start_kube`] with a given client and clock (replicas share one clock).
pub async fn start_kube_as(client: ::kube::Client, clock: Clock, tweak: impl FnOnce(&mut Config)) -> Gateway {
    let tweak = |c: &mut Config| {
        c.sink = SinkTarget::Kube;
        tweak(c);
    };
    start_full(tweak, gateway::Overrides { kube_client: Some(client) }, clock).await
}

pub async fn start() -> Gateway {
    start_with(|_| {}).await
}

impl Gateway {
    /// A handle on a gateway started elsewhere with `config`, whose manifests (if
    /// any) go to `dir`.
    pub fn new(running: Running, clock: Clock, dir: tempfile::TempDir, config: Config) -> Gateway {
        Gateway {
            url: format!("http://{}", running.addr),
            clock,
            client: reqwest::Client::new(),
            dir,
            config,
            running: Some(running),
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.post_raw(path, Some("application/json"), serde_json::to_vec(body).unwrap()).await
    }

    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> reqwest::Response {
        let mut req = self.client.post(format!("{}{path}", self.url)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send().await.unwrap()
    }

    pub async fn alerts(&self, body: &Value) -> reqwest::Response {
        self.post_json("/api/v1/signals/prometheus", body).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.url)).send().await.unwrap()
    }

    /// Every manifest written, sorted.
    pub fn manifests(&self) -> Vec<PathBuf> {
        manifests_in(self.dir.path())
    }

    /// The only request written; fails unless there is exactly one.
    pub fn only_request(&self) -> RemediationRequest {
        let manifests = self.manifests();
        assert_eq!(manifests.len(), 1, "{manifests:?}");
        serde_norway::from_str(&std::fs::read_to_string(&manifests[0]).unwrap()).unwrap()
    }

    /// Every request written, in manifest order.
    pub fn requests(&self) -> Vec<RemediationRequest> {
        let read = |p: &PathBuf| serde_norway::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        self.manifests().iter().map(read).collect()
    }

    pub fn read(&self, namespace: &str, name: &str) -> RemediationRequest {
        let path = self.dir.path().join(namespace).join(format!("{name}.yaml"));
        serde_norway::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))).unwrap()
    }

    /// Waits until the gateway's sink sees the request at `at` as `expected`: its
    /// watch (of the cluster, or of the manifest directory) has caught up.
    pub async fn sink_sees(&self, at: &tidegate::sink::RequestRef, expected: tidegate::sink::Lookup) {
        let sink = self.running().sink.clone();
        eventually("the sink's view to catch up", || {
            let seen = sink.lookup(at);
            async move { seen == expected }
        })
        .await;
    }

    /// Shuts down gracefully and starts again with the same configuration, clock and
    /// sink directory, as a deploy does (on a new port).
    pub async fn restart(&mut self) {
        self.stop().await;
        let running = gateway::start(self.config.clone(), self.clock.clone()).await.unwrap();
        self.url = format!("http://{}", running.addr);
        self.running = Some(running);
    }

    /// Shuts down (flushing pending status writes) and keeps the manifests readable.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown();
            running.join().await.unwrap();
        }
    }

    /// Whether `/metrics` has a line for `series` at all.
    pub async fn has_metric(&self, series: &str) -> bool {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines().any(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
    }

    /// Waits until the owner caches of `--sink kube` have listed: their object
    /// gauges appear then.
    pub async fn owner_caches_listed(&self) {
        eventually("the owner caches to list", || async {
            let mut listed = true;
            for kind in ["Pod", "ReplicaSet", "Job"] {
                listed &= self.has_metric(&format!(r#"tidegate_kube_owner_cache_objects{{kind="{kind}"}}"#)).await;
            }
            listed
        })
        .await;
    }

    /// The value of one metric line, e.g. `tidegate_remediation_requests_created_total`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }
}

/// Every manifest under a directory sink's `dir` (`<namespace>/<name>.yaml`), sorted.
pub fn manifests_in(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for ns in std::fs::read_dir(dir).unwrap() {
        let ns = ns.unwrap().path();
        if ns.is_dir() {
            for f in std::fs::read_dir(&ns).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|e| e == "yaml") {
                    out.push(f);
                }
            }
        }
    }
    out.sort();
    out
}

/// Runs `cmd` to its end and returns its stdout; fails the test, with everything
/// the command printed, if it fails.
pub fn stdout_of(cmd: &mut std::process::Command) -> String {
    let output = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// The occurrence count recorded on a request.
pub fn occurrences(request: &RemediationRequest) -> u64 {
    let dedup = request.status.as_ref().and_then(|s| s.deduplication.as_ref());
    dedup.expect("status.deduplication is set").occurrence_count
}

/// The body of an RFC 7807 problem answer of `status`, checked for its shape.
pub async fn problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["type"].as_str().unwrap().starts_with("https://tidegate.dev/problems/"));
    body
}

/// How many responses had each status code.
pub fn tally(responses: &[reqwest::Response]) -> std::collections::BTreeMap<u16, usize> {
    let mut out = std::collections::BTreeMap::new();
    for r in responses {
        *out.entry(r.status().as_u16()).or_default() += 1;
    }
    out
}

/// A Redis key prefix no other test uses, so tests can share one server.
pub fn unique_prefix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("t{}-{n}:", std::process::id())
}

/// A kubeconfig file in `dir` for the API server this binary started, as `user`
/// with bearer `token`.
pub fn kubeconfig(dir: &std::path::Path, user: &str, token: &str) -> PathBuf {
    let server = kube::cluster().server.as_ref().expect("the API server this binary started");
    let base64 = data_encoding::BASE64.encode(&server.ca_der);
    let lines: Vec<&str> = base64.as_bytes().chunks(64).map(|l| std::str::from_utf8(l).expect("base64")).collect();
    let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"));
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": server.url, "certificate-authority-data": data_encoding::BASE64.encode(pem.as_bytes())}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
        "current-context": "test",
    });
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_norway::to_string(&config).expect("YAML")).expect("a kubeconfig file");
    path
}

/// Points `config` at the Redis at `url`, under a key prefix of its own, giving up
/// on a call after 500 ms, so that a test which stops Redis is answered 503 quickly.
pub fn on_redis(config: &mut Config, url: &str) {
    config.state = tidegate::config::StateBackend::Redis(url.parse().expect("a Redis URL"));
    config.redis.prefix = unique_prefix();
    config.redis.timeout = Duration::from_millis(500);
}

/// One Alertmanager alert.
pub fn alert(name: &str, namespace: &str, pod: &str) -> Value {
    json!({
        "status": "firing",
        "labels": {"alertname": name, "namespace": namespace, "pod": pod, "severity": "critical"},
        "annotations": {"summary": format!("{pod} is unwell")},
        "startsAt": "2026-11-25T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": "0123456789abcdef"
    })
}

pub fn resolved(mut alert: Value) -> Value {
    alert["status"] = json!("resolved");
    alert["endsAt"] = json!("2026-11-25T10:30:00Z");
    alert
}

/// An Alertmanager webhook (payload version 4) carrying `alerts`.
pub fn webhook(alerts: Vec<Value>) -> Value {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"x\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "tidegate",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts
    })
}

/// A core/v1 Event about a pod.
pub fn event(kind: &str, reason: &str, pod: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{pod}.1"), "namespace": "shop"},
        "type": kind,
        "reason": reason,
        "message": "Back-off restarting failed container",
        "involvedObject": {"kind": "Pod", "name": pod, "namespace": "shop", "uid": "u-1", "apiVersion": "v1"},
        "firstTimestamp": "2026-11-25T10:00:00Z",
        "lastTimestamp": "2026-11-25T10:05:00Z",
        "count": 3,
        "source": {"component": "kubelet", "host": "node-1"}
    })
}
