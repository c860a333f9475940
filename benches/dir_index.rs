//! Start-up of the directory sink over many manifests: how long indexing takes and
//! what the index costs in memory.
//!
//! Run with `cargo bench --bench dir_index`. Writes 100,000 RemediationRequest
//! manifests (built by the gateway's own code, one per incident, spread over 20
//! namespaces) into a temporary directory under `$TMPDIR`, then opens a `DirSink`
//! on it as `tidegate serve` does at start, and reports the wall time and the growth
//! of the process's resident set (`/proc/self/statm`) per manifest indexed.
//! The page cache is warm (the files were just written): a cold start adds the
//! disk's read time. `cargo test --benches` runs it on 2,000 manifests as a check.
//!
//! Then the flap sweep's read (every tenth of `flap.window`, 3 minutes by
//! default): one manifest in 1,000 is written flapping, and the bench times
//! reading every open request (`Sink::open_requests`, which the sweep read before)
//! against reading the flapping ones the index knows (`Sink::flapping_requests`,
//! which it reads now), and the CPU each took.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tidegate::remediation::{self, Classification, FlapUpdate, StatusUpdate};
use tidegate::signal::{Fingerprint, Labels, Signal, SignalStatus, SignalType, TargetResource};
use tidegate::sink::dir::DirSink;
use tidegate::sink::Sink;
use tidegate_testkit::bench::cpu::process_cpu;
use tidegate_testkit::bench::rss::rss_bytes;

/// One manifest in this many is written flapping.
const FLAPPING_ONE_IN: usize = 1_000;

#[global_allocator]
static ALLOCATOR: tidegate::allocator::Allocator = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tidegate::allocator::tune();
    let bench = std::env::args().any(|a| a == "--bench");
    let manifests = if bench { 100_000 } else { 2_000 };
    let dir = tempfile::tempdir().expect("temp dir");
    let now = Timestamp::now().as_second() as u32;
    let class = Classification { environment: "production".into(), priority: "P1".into(), rule: "critical".into() };
    let written = Instant::now();
    for i in 0..manifests {
        let namespace = format!("team-{:02}", i % 20);
        let pod = format!("api-7c9d8f6b5-{i:06}");
        let target = TargetResource {
            kind: "Pod".into(),
            name: pod.clone(),
            namespace: namespace.clone(),
            cluster: String::new(),
        };
        let labels: Labels<'static> = [
            ("alertname", "KubePodCrashLooping".to_string()),
            ("namespace", namespace.clone()),
            ("pod", pod.clone()),
            ("container", "api".into()),
            ("severity", "warning".into()),
            ("job", "kube-state-metrics".into()),
        ]
        .into_iter()
        .collect();
        let annotations: Labels<'static> = [
            ("summary", "Pod is crash looping.".to_string()),
            ("description", format!("Pod {namespace}/{pod} is crash looping.")),
        ]
        .into_iter()
        .collect();
        let signal = Signal {
            name: "KubePodCrashLooping".into(),
            severity: "warning".into(),
            namespace: namespace.clone().into(),
            fingerprint: Fingerprint::new("KubePodCrashLooping", &namespace, &target),
            target,
            labels,
            annotations,
            firing_time: Some(Timestamp::now()),
            received_time: Timestamp::now(),
            signal_type: SignalType::PROMETHEUS_ALERT,
            source: "http://alertmanager:9093".into(),
            status: SignalStatus::Firing,
        };
        let update = StatusUpdate { writer: 1, count: 2, ..StatusUpdate::seen(now - 60, now) };
        let mut request = remediation::build(&signal, &namespace, now - 60, &class, &update);
        if i % FLAPPING_ONE_IN == 0 {
            let flap = FlapUpdate::Flapping { transitions: 4, at_s: now - 30, window_s: 1800 };
            request.status.as_mut().expect("built with a status").apply(&StatusUpdate { flap: Some(flap), ..update });
            remediation::label_flapping(&mut request);
        }
        let path = dir.path().join(&namespace).join(format!("{}.yaml", request.metadata.name.as_deref().unwrap()));
        std::fs::create_dir_all(path.parent().unwrap()).expect("namespace dir");
        std::fs::write(&path, serde_norway::to_string(&request).expect("yaml")).expect("write manifest");
    }
    println!("dir_index bench: {manifests} manifests written in {:.1?}", written.elapsed());

    let before = rss_bytes();
    let started = Instant::now();
    let sink = DirSink::new(dir.path(), Duration::from_secs(3600)).expect("open the sink");
    let took = started.elapsed();
    let grown = rss_bytes().saturating_sub(before);
    let indexed = sink.indexed();
    println!(
        "indexed {indexed} manifests in {took:.2?} ({:.0} manifests/s); resident memory grew {:.1} MiB, {:.0} B per manifest",
        indexed as f64 / took.as_secs_f64(),
        grown as f64 / (1 << 20) as f64,
        grown as f64 / indexed.max(1) as f64
    );
    if indexed != manifests {
        eprintln!("FAILED: indexed {indexed} of {manifests} manifests");
        return ExitCode::FAILURE;
    }

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let flapping = manifests.div_ceil(FLAPPING_ONE_IN);
    for (what, read) in [("every open request", false), ("the flapping ones", true)] {
        let (started, cpu) = (Instant::now(), process_cpu());
        let requests = runtime
            .block_on(if read { sink.flapping_requests() } else { sink.open_requests() })
            .expect("the manifests read");
        let (took, cpu) = (started.elapsed(), process_cpu() - cpu);
        println!("flap sweep, reading {what}: {} manifests in {took:.2?}, {cpu:.2?} of CPU", requests.len());
        let expected = if read { flapping } else { manifests };
        if requests.len() != expected {
            eprintln!("FAILED: read {} manifests, expected {expected}", requests.len());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
