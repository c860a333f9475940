//! The `tidegate` binary killed with SIGKILL: every `201` has its manifest on disk
//! before the answer, and a restart on the same directory counts repeats on the
//! open requests. What a crash may lose is only the counts not yet written: at most
//! those of one `status_writer.interval` (more while the status-write cap holds a
//! backlog), which this test measures and prints.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::process::{kill, pick_port, spawn};
use support::{alert, eventually_within, occurrences, webhook};
use tidegate::remediation::RemediationRequest;

/// A `tidegate serve` process on the embedded default, writing into `dir`.
struct Binary {
    child: Option<Child>,
    url: String,
    client: reqwest::Client,
}

impl Binary {
    async fn start(dir: &Path) -> Binary {
        let port = pick_port(None);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidegate"));
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--status-interval", "1s", "--log", "warn"])
            .arg("--sink")
            .arg(format!("dir:{}", dir.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn(cmd).expect("spawn tidegate");
        let binary =
            Binary { child: Some(child), url: format!("http://127.0.0.1:{port}"), client: reqwest::Client::new() };
        let client = binary.client.clone();
        let ready = format!("{}/readyz", binary.url);
        eventually_within("tidegate to be ready", Duration::from_secs(20), || {
            let (client, ready) = (client.clone(), ready.clone());
            async move { client.get(&ready).send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        binary
    }

    /// Posts one alert named `name` about pod `web-0` (distinct names are distinct
    /// incidents that never make a storm together).
    async fn post(&self, name: &str) -> (u16, Value) {
        let body = serde_json::to_vec(&webhook(vec![alert(name, "shop", "web-0")])).unwrap();
        let resp = self
            .client
            .post(format!("{}/api/v1/signals/prometheus", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    fn sigkill(&mut self) {
        kill(self.child.take().expect("running"));
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            kill(child);
        }
    }
}

fn read(dir: &Path, body: &Value) -> RemediationRequest {
    let path = dir.join("shop").join(format!("{}.yaml", body["name"].as_str().unwrap()));
    serde_norway::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_201_is_on_disk_when_the_process_is_killed_right_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Binary::start(dir.path()).await;
    let mut created = Vec::new();
    for n in 0..50 {
        let (status, body) = gw.post(&format!("Alert{n}")).await;
        assert_eq!(status, 201);
        created.push(body);
    }
    gw.sigkill();
    for body in &created {
        assert_eq!(occurrences(&read(dir.path(), body)), 1, "a complete manifest for {}", body["name"]);
    }

    // After the crash, the repeats land on the same requests.
    let gw = Binary::start(dir.path()).await;
    for (n, body) in created.iter().enumerate() {
        let (status, again) = gw.post(&format!("Alert{n}")).await;
        assert_eq!((status, &again["name"], again["occurrenceCount"].as_u64()), (202, &body["name"], Some(2)));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_loses_only_counts_not_yet_written_and_the_next_repeat_counts_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Binary::start(dir.path()).await;
    let (status, first) = gw.post("HighMemory").await;
    assert_eq!(status, 201);
    // A flood of repeats for four status intervals, then SIGKILL.
    let mut acks = vec![tokio::time::Instant::now()];
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        assert_eq!(gw.post("HighMemory").await.0, 202);
        acks.push(tokio::time::Instant::now());
    }
    gw.sigkill();
    let killed = tokio::time::Instant::now();
    let acknowledged = acks.len() as u64;
    let recorded = occurrences(&read(dir.path(), &first));
    let lost = acknowledged - recorded;
    // The bound: one status interval (1 s) of counts, with a second of slack for a
    // loaded machine's writer.
    let recent = acks.iter().filter(|at| killed.duration_since(**at) < Duration::from_secs(2)).count() as u64;
    println!(
        "SIGKILL after {acknowledged} acknowledged occurrences: {recorded} on disk, {lost} not yet written \
         ({recent} acknowledged in the last 2 s)"
    );
    assert!(lost <= recent, "lost {lost} counts, more than the last 2 s held ({recent})");

    let gw = Binary::start(dir.path()).await;
    let (status, again) = gw.post("HighMemory").await;
    assert_eq!(status, 202, "still the same incident after the crash");
    assert_eq!((&again["name"], again["occurrenceCount"].as_u64()), (&first["name"], Some(recorded + 1)));
}
