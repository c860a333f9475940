//! Gateways: `tidegate serve` processes

use super::*;

pub(crate) struct Replica {
    pub(crate) port: u16,
    pub(crate) child: Mutex<Option<Child>>,
    pub(crate) log: PathBuf,
}

/// A replica's process, from when it was ready.
pub(crate) struct Incarnation {
    pub(crate) replica: usize,
    pub(crate) ready: Instant,
    /// Its half of the writer ids of its tallies (`tidegate_status_writer`).
    pub(crate) writer: Option<String>,
}

pub(crate) struct Gateways {
    pub(crate) replicas: Vec<Replica>,
    pub(crate) incarnations: Mutex<Vec<Incarnation>>,
    pub(crate) state_url: String,
    pub(crate) kubeconfig: PathBuf,
    pub(crate) prefix: String,
}

impl Gateways {
    pub(crate) fn url(&self, r: usize) -> String {
        format!("http://127.0.0.1:{}", self.replicas[r].port)
    }

    pub(crate) fn spawn(&self, r: usize) {
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
    pub(crate) fn start(&self, r: usize) -> Instant {
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

    pub(crate) fn sigkill(&self, r: usize) {
        if let Some(child) = lock(&self.replicas[r].child).take() {
            process::kill(child);
        }
    }

    /// SIGTERM and wait: a graceful stop writes every pending status.
    pub(crate) fn stop(&self, r: usize) -> Option<std::process::ExitStatus> {
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

    pub(crate) fn log(&self, r: usize) -> String {
        let text = std::fs::read_to_string(&self.replicas[r].log).unwrap_or_default();
        process::tail(&text, 4000).to_string()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A bare HTTP/1.1 GET on 127.0.0.1: the status and body, or `None` if it failed.
pub(crate) fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
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
pub(crate) fn pending_writes(port: u16) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics")?;
    body.lines().find_map(|l| l.strip_prefix("tidegate_status_updates_pending ")).and_then(|v| v.trim().parse().ok())
}

/// A kubeconfig naming the proxy, with the gateway's service-account token.
pub(crate) fn write_kubeconfig(dir: &Path, server: &str, token: &str) -> PathBuf {
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
