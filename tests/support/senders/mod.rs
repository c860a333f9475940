//! Real senders for the end-to-end tests: Debian's `prometheus` (2.42) scrapes a gauge
//! endpoint the test controls ([`target`]), fires real alerting rules on it and sends
//! them to Debian's `prometheus-alertmanager` (0.25), whose webhook receiver posts to
//! an in-process gateway ([`Gateway`]) on a port the test chose, so that the gateway
//! can be restarted under the same URL.
//!
//! Each process runs on a free loopback port, in a temp dir of its own, spawned
//! through `process.rs` (killed at exit, PDEATHSIG), and is ready once `/-/ready`
//! answers 200. On failure the helpers panic with the process's log.
//!
//! Needs `/usr/bin/prometheus` and `/usr/bin/prometheus-alertmanager` (Debian:
//! `apt-get install prometheus prometheus-alertmanager`; `scripts/test` does it).

pub mod alertmanager;
pub mod prometheus;
pub mod target;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tidegate::clock::Clock;
use tidegate::config::{Config, SinkTarget};
use tidegate::gateway::{self, Running};
use tidegate::remediation::RemediationRequest;

use super::process;

pub use alertmanager::Alertmanager;
pub use prometheus::Prometheus;
pub use target::GaugeTarget;

/// How long a sender gets to answer `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at starting on a fresh port when another process wins the race for one.
const PORT_ATTEMPTS: usize = 10;

/// One sender process (Prometheus or Alertmanager) on `127.0.0.1:port`, with its
/// config, data and log in a temp dir of its own. Killed on drop.
pub struct HttpProcess {
    name: &'static str,
    port: u16,
    dir: TempDir,
    log: PathBuf,
    child: Option<Child>,
}

impl HttpProcess {
    /// Writes `files` into a fresh temp dir, runs `program` with `args(port, dir)` on a
    /// free port and waits until `GET /-/ready` answers 200. Tries another port if
    /// this one was taken meanwhile; panics with the log otherwise.
    pub async fn start(
        name: &'static str,
        program: &str,
        files: &[(&str, String)],
        args: impl Fn(u16, &Path) -> Vec<OsString>,
    ) -> HttpProcess {
        let dir = process::scratch_dir();
        process::register_dir(dir.path());
        for (file, text) in files {
            fs::write(dir.path().join(file), text).unwrap_or_else(|e| panic!("write {file}: {e}"));
        }
        let log = dir.path().join(format!("{name}.log"));
        let mut me = HttpProcess { name, port: 0, dir, log, child: None };
        for _ in 0..PORT_ATTEMPTS {
            me.port = process::pick_port(None);
            let out = OpenOptions::new().create(true).append(true).open(&me.log).expect("open log");
            let mut cmd = Command::new(program);
            cmd.args(args(me.port, me.dir.path()))
                .current_dir(me.dir.path())
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("clone log fd"))
                .stderr(out);
            let child = process::spawn(cmd).unwrap_or_else(|e| {
                panic!("spawn {program}: {e} (apt-get install prometheus prometheus-alertmanager)")
            });
            me.child = Some(child);
            match me.wait_ready().await {
                Ok(()) => return me,
                Err(log) if log.to_lowercase().contains("address already in use") => me.stop(),
                Err(log) => panic!("{name} did not become ready on port {}; log:\n{log}", me.port),
            }
        }
        panic!("{name} found no free port in {PORT_ATTEMPTS} attempts; log:\n{}", me.log());
    }

    /// Polls `/-/ready`; on exit or timeout, returns the log.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = reqwest::Client::new();
        let url = format!("{}/-/ready", self.url());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = client.get(&url).timeout(Duration::from_secs(1)).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return Ok(());
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                self.stop();
                return Err(self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Everything the process wrote to stdout and stderr.
    pub fn log(&self) -> String {
        process::read_from(&self.log, 0)
    }

    /// The last 20 kB of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        format!("--- {} log (tail) ---\n{}", self.name, process::tail(&self.log(), 20_000))
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.url());
        let response = reqwest::get(&url).await.unwrap_or_else(|e| panic!("GET {url}: {e}\n{}", self.log_tail()));
        response.text().await.unwrap()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            process::kill(child);
        }
    }
}

impl Drop for HttpProcess {
    fn drop(&mut self) {
        self.stop();
        process::unregister_dir(self.dir.path());
    }
}

/// The value of the series spelled exactly `series` (name and labels as exposed), or
/// 0 if it is absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The sum of every series of the family `name`, whatever their labels.
pub fn family_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with('{') || rest.starts_with(' '))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An in-process gateway on a port of the test's choosing, writing manifests into a
/// directory that outlives restarts, on the system clock (the senders keep real time).
pub struct Gateway {
    pub port: u16,
    /// The sink directory, kept across restarts.
    pub dir: TempDir,
    pub config: Config,
    running: Option<Running>,
    client: reqwest::Client,
}

impl Gateway {
    /// Starts a gateway on a free port with a 50 ms status interval and no shutdown
    /// delay, adjusted by `tweak`.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config { sink: SinkTarget::Dir(dir.path().to_path_buf()), ..Config::default() };
        config.http.shutdown_delay = Duration::ZERO;
        config.status_writer.interval = Duration::from_millis(50);
        tweak(&mut config);
        let mut gw = Gateway { port: 0, dir, config, running: None, client: reqwest::Client::new() };
        for _ in 0..PORT_ATTEMPTS {
            gw.port = process::pick_port(None);
            gw.config.listen = ([127, 0, 0, 1], gw.port).into();
            match gateway::start_with(gw.config.clone(), Clock::System, Default::default()).await {
                Ok(running) => {
                    gw.running = Some(running);
                    return gw;
                }
                // Someone else took the port between the check and the bind.
                Err(e @ gateway::StartError::Bind { .. }) => eprintln!("{e}; trying another port"),
                Err(e) => panic!("the gateway failed to start: {e}"),
            }
        }
        panic!("no port for the gateway in {PORT_ATTEMPTS} attempts");
    }

    /// `127.0.0.1:PORT`: an Alertmanager address for Prometheus, which posts to
    /// `/api/v2/alerts` there.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where Alertmanager's webhook receiver posts.
    pub fn webhook_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/signals/prometheus", self.port)
    }

    /// Where Alertmanager's PagerDuty receiver posts (its `url:`).
    pub fn pagerduty_url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, tidegate::ingest::pagerduty::SOURCE.route)
    }

    /// Shuts down (flushing pending status writes) and waits until it has stopped.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown();
            running.join().await.unwrap();
        }
    }

    /// [`Self::stop`], then a new gateway with the same configuration on the same port
    /// and the same sink directory, and nothing else carried over.
    pub async fn restart(&mut self) {
        self.stop().await;
        let running = gateway::start_with(self.config.clone(), Clock::System, Default::default())
            .await
            .unwrap_or_else(|e| panic!("restart the gateway on port {}: {e}", self.port));
        self.running = Some(running);
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("http://127.0.0.1:{}{path}", self.port)).send().await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// Every RemediationRequest written so far.
    pub fn requests(&self) -> Vec<RemediationRequest> {
        super::manifests_in(self.dir.path())
            .iter()
            .map(|p| {
                let text = fs::read_to_string(p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
                serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{p:?}: {e}"))
            })
            .collect()
    }
}

/// What the requests of a test account for: the pods with requests of their own and
/// the pods listed on aggregated (storm) requests.
#[derive(Debug, Default)]
pub struct Accounting {
    /// Requests about one resource each.
    pub individual: Vec<RemediationRequest>,
    /// Storm requests (`storm-…`), each about many resources.
    pub aggregated: Vec<RemediationRequest>,
}

impl Accounting {
    pub fn of(requests: Vec<RemediationRequest>) -> Accounting {
        let (aggregated, individual) = requests.into_iter().partition(|rr| rr.spec.storm.is_some());
        Accounting { individual, aggregated }
    }

    /// Pod names covered: targets of individual requests, and the resources listed on
    /// aggregated requests (spec and status). The lists stop at
    /// `storm.affected_resources_cap` (at most 1,000), the counts do not: this names
    /// every pod only of a storm smaller than the cap.
    pub fn pods(&self) -> BTreeSet<String> {
        let individual = self.individual.iter().map(|rr| rr.spec.target_resource.name.clone());
        let listed = self.aggregated.iter().flat_map(|rr| {
            let spec = rr.spec.storm.iter().flat_map(|s| s.affected_resources.iter());
            let status = rr.status.iter().flat_map(|s| s.storm.iter()).flat_map(|s| s.affected_resources.iter());
            spec.chain(status).map(|r| r.name.clone())
        });
        individual.chain(listed).collect()
    }

    /// `status.storm.resourceCount` summed over the aggregated requests.
    pub fn aggregated_resource_count(&self) -> u64 {
        self.aggregated.iter().filter_map(|rr| rr.status.as_ref()?.storm.as_ref()).map(|s| s.resource_count).sum()
    }
}

/// The three senders and the gateway they send to, wired together.
pub struct Rig {
    pub target: GaugeTarget,
    pub gateway: Gateway,
    pub alertmanager: Alertmanager,
    pub prometheus: Prometheus,
}

impl Rig {
    /// A gateway adjusted by `tweak`; Alertmanager re-sending an unchanged group every
    /// `repeat_interval` (an Alertmanager duration such as `2s` or `1h`); Prometheus
    /// scraping a fresh gauge target with nothing firing yet.
    pub async fn start(repeat_interval: &str, tweak: impl FnOnce(&mut Config)) -> Rig {
        Rig::start_with(repeat_interval, tweak, "").await
    }

    /// [`Rig::start`], with Alertmanager's receiver configured by `http_config` (see
    /// [`Alertmanager::start_with`]), over TLS when the gateway serves it.
    pub async fn start_with(repeat_interval: &str, tweak: impl FnOnce(&mut Config), http_config: &str) -> Rig {
        let target = GaugeTarget::start().await;
        let gateway = Gateway::start(tweak).await;
        let mut url = gateway.webhook_url();
        if gateway.config.http.tls.cert_file.is_some() {
            url = url.replace("http://", "https://");
        }
        let alertmanager = Alertmanager::start_with(&url, repeat_interval, http_config).await;
        let prometheus = Prometheus::start(&target.addr(), &alertmanager.process.addr()).await;
        Rig { target, gateway, alertmanager, prometheus }
    }

    /// [`Rig::start`], Alertmanager notifying the gateway through its PagerDuty
    /// integration with `routing_key`.
    pub async fn start_pagerduty(repeat_interval: &str, tweak: impl FnOnce(&mut Config), routing_key: &str) -> Rig {
        let target = GaugeTarget::start().await;
        let gateway = Gateway::start(tweak).await;
        let alertmanager = Alertmanager::start_pagerduty(&gateway.pagerduty_url(), routing_key, repeat_interval).await;
        let prometheus = Prometheus::start(&target.addr(), &alertmanager.process.addr()).await;
        Rig { target, gateway, alertmanager, prometheus }
    }

    /// Polls `check` every 200 ms until it returns true; after `limit`, fails with
    /// both senders' logs.
    pub async fn wait_for<F, Fut>(&self, what: &str, limit: Duration, check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        if !super::poll_within(limit, Duration::from_millis(200), check).await {
            panic!("timed out after {limit:?} waiting for {what}\n{}", self.logs());
        }
    }

    /// Both senders' log tails, for a failure message.
    pub fn logs(&self) -> String {
        format!("{}\n{}", self.alertmanager.process.log_tail(), self.prometheus.process.log_tail())
    }
}
