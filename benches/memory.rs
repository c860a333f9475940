//! Resident memory of the embedded state store per open incident.
//!
//! Run with `cargo bench --bench memory`. Fills a `MemoryStore` with 1,000,000
//! distinct fingerprints through the public `StateStore::observe` API, in batches of
//! 1,000 as the HTTP path would, and divides the growth of the process's resident set
//! (`/proc/self/statm`) by the number of entries. The target is at most 128 bytes per
//! fingerprint.
//!
//! Resident memory rather than a sum of allocation sizes, because that is what an
//! operator pays: it includes the hash table's spare buckets, the expiry heap, and
//! whatever the allocator keeps after the table's resizes. The bench's own input is
//! generated one batch at a time into one reused buffer allocated before the first
//! reading, so it does not inflate the figure.
//!
//! Then, on a second store, what a storm scope with an open aggregation window
//! costs: 10,000 scopes each sent one alert past the rate threshold, less their
//! alerts' own incidents. `tidegate capacity` reads both figures
//! (`src/capacity.rs`, checked against docs/benches/memory.txt).
//!
//! Then what a silence and an inhibit rule cost, each the same way: 1,000, 10,000
//! and 100,000 active silences (spread over 100 namespaces, each on its own alert
//! name plus a regex on `pod`, as `cargo bench --bench ingest` writes them) taught
//! to a [`Silences`] as a watch or the silence directory hands them over (its
//! catalog and its index), read once built and again once every silence has
//! matched a signal (a regex builds its matching cache on first use); and 100,
//! 1,000 and 10,000 inhibit rules (each its own source alert name, one shared
//! regex target side, `equal: [namespace]`, as the ingest bench loads them).
//! `BENCH_MEMORY=rules` measures only these. Under `cargo test` (no `--bench`),
//! only the smallest count of each.

use tidegate_testkit::bench::rss;
use tidegate_testkit::bench::scopes;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rss::rss_bytes;
use tidegate::clock::Clock;
use tidegate::pipeline::inhibit::{InhibitRuleConfig, Inhibition};
use tidegate::signal::{Fingerprint, Labels, Signal, SignalStatus, SignalType, TargetResource};
use tidegate::silence::resource::{RemediationSilence, RemediationSilenceSpec};
use tidegate::silence::{Rules, Silences};
use tidegate::state::memory::{MemoryConfig, MemoryStore};
use tidegate::state::{Observation, StateStore, StormConfig, Verdict};

// The allocator the gateway's binary uses, tuned the same way, so the reading is
// what the gateway would pay.
#[global_allocator]
static ALLOCATOR: tidegate::allocator::Allocator = mimalloc::MiMalloc;

const FINGERPRINTS: usize = 1_000_000;
/// Room to spare, so the store never refuses a batch as full.
const MAX_ENTRIES: usize = 1_100_000;
const BATCH: usize = 1_000;
const TARGET_BYTES_PER_FINGERPRINT: f64 = 128.0;

fn main() -> ExitCode {
    tidegate::allocator::tune();
    // One thread: the store's purge task sleeps (nothing expires within the 300 s
    // window), so there is nothing to run concurrently, and fewer threads means fewer
    // per-thread allocator arenas and stacks in the reading.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("building the runtime");
    runtime.block_on(run())
}

async fn run() -> ExitCode {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("memory bench: embedded state store, {FINGERPRINTS} distinct fingerprints in batches of {BATCH}");
    println!("machine: {cores} cores");
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs this too, as a debug build: the figure is
        // the same (it is data-structure size), only the insert rate is slower.
        println!("(run by `cargo test`: unoptimised build, the insert rate is not a benchmark)");
    }

    if std::env::var("BENCH_MEMORY").as_deref() == Ok("rules") {
        return silences_and_rules();
    }
    let clock = Clock::System;
    let store = store(&clock);
    let mut batch: Vec<Observation> = Vec::with_capacity(BATCH);
    // Let the purge task start and park, so its first poll is not in the reading.
    tokio::task::yield_now().await;

    let before = rss_bytes();
    let started = Instant::now();
    for first in (0..FINGERPRINTS).step_by(BATCH) {
        batch.clear();
        batch.extend((first..first + BATCH).map(|i| Observation {
            fingerprint: fingerprint(i as u64),
            status: SignalStatus::Firing,
            storm: None,
        }));
        let verdicts = store.observe(&batch, clock.now_s()).await.expect("the store has room for every fingerprint");
        // Every fingerprint is distinct, so every verdict must open an incident.
        if let Some(v) = verdicts.iter().find(|v| !matches!(v, Verdict::New(_))) {
            eprintln!("unexpected verdict {v:?} for a fresh fingerprint");
            return ExitCode::FAILURE;
        }
    }
    let took = started.elapsed();
    let after = rss_bytes();

    let len = store.len();
    let growth = after.saturating_sub(before);
    let per_fingerprint = growth as f64 / len as f64;
    println!("store.len(): {len}");
    println!("inserted in {:.2} s ({:.0} fingerprints/s)", took.as_secs_f64(), len as f64 / took.as_secs_f64());
    println!("RSS before: {:.1} MiB", mib(before));
    println!("RSS after:  {:.1} MiB", mib(after));
    println!("RSS growth: {:.1} MiB", mib(growth));
    if let Some(peak) = peak_rss_bytes() {
        println!("peak RSS (VmHWM): {:.1} MiB (includes transient doubling of the table)", mib(peak));
    }
    println!(
        "bytes per fingerprint: {per_fingerprint:.1}  (target ≤ {TARGET_BYTES_PER_FINGERPRINT} B: {})",
        if per_fingerprint <= TARGET_BYTES_PER_FINGERPRINT { "met" } else { "NOT MET" }
    );
    trimmed_reading(before, len);
    // While the first store lives, so that the second cannot reuse its pages.
    storm_scopes(10_000, per_fingerprint).await;
    drop(store);

    if len != FINGERPRINTS {
        eprintln!("store.len() is {len}, expected {FINGERPRINTS}");
        return ExitCode::FAILURE;
    }
    silences_and_rules()
}

/// Resident memory per silence and per inhibit rule (see the module's doc).
fn silences_and_rules() -> ExitCode {
    let measuring = std::env::args().any(|a| a == "--bench");
    let silence_counts: &[usize] = if measuring { &[1_000, 10_000, 100_000] } else { &[1_000] };
    let rule_counts: &[usize] = if measuring { &[100, 1_000, 10_000] } else { &[100] };
    let now = jiff::Timestamp::now();
    for &n in silence_counts {
        // The objects as a source hands them over, made before the first reading.
        let objects: Vec<RemediationSilence> = (0..n).map(|i| silence_object(i, now)).collect();
        let rules =
            Rules { control_namespace: Some("tidegate-system".into()), max_duration: Duration::from_secs(86_400) };
        let before = rss_bytes();
        let silences = Silences::new(rules);
        silences.replace_all(&objects);
        let built = rss_bytes().saturating_sub(before);
        let index = silences.current();
        if index.len() != n {
            eprintln!("{} of {n} silences indexed", index.len());
            return ExitCode::FAILURE;
        }
        let mut matched = 0;
        for i in 0..n {
            matched += usize::from(index.find(&silenced_signal(i), now).is_some());
        }
        if matched != n {
            eprintln!("{matched} of {n} signals silenced");
            return ExitCode::FAILURE;
        }
        let used = rss_bytes().saturating_sub(before);
        println!(
            "bytes per silence: {:.0} built, {:.0} once each has matched  ({n} active silences, catalog and index)",
            built as f64 / n as f64,
            used as f64 / n as f64
        );
        drop(index);
        drop(silences);
    }
    for &n in rule_counts {
        let config: Vec<InhibitRuleConfig> = (0..n)
            .map(|i| InhibitRuleConfig {
                source_matchers: vec![format!("alertname=\"BenchNodeDown{i}\"")],
                target_matchers: vec!["alertname=~\".+\"".into()],
                equal: vec!["namespace".into()],
            })
            .collect();
        let before = rss_bytes();
        let rules = Inhibition::new(&config).expect("the bench's rules are valid");
        let built = rss_bytes().saturating_sub(before);
        println!("bytes per inhibit rule: {:.0}  ({} rules)", built as f64 / n as f64, rules.len());
        drop(rules);
    }
    ExitCode::SUCCESS
}

/// Silence `i`: in one of 100 namespaces, on its own alert name, for a day.
fn silence_object(i: usize, now: jiff::Timestamp) -> RemediationSilence {
    let spec = RemediationSilenceSpec {
        matchers: vec![format!("alertname=\"BenchSilenced{i}\""), "pod=~\"api-.*\"".into()],
        starts_at: Time(now - jiff::SignedDuration::from_secs(60)),
        ends_at: Time(now + jiff::SignedDuration::from_hours(23)),
        comment: "bench".into(),
        created_by: None,
        time_intervals: Vec::new(),
    };
    let mut object = RemediationSilence::new(&format!("s{i}"), spec);
    object.metadata.namespace = Some(format!("ns-{}", i % 100));
    object
}

/// A signal silence `i` matches.
fn silenced_signal(i: usize) -> Signal<'static> {
    let namespace = format!("ns-{}", i % 100);
    let name = format!("BenchSilenced{i}");
    let target = TargetResource::new("Pod", "api-1", &namespace);
    let mut labels = Labels::default();
    labels.push("pod", "api-1");
    Signal {
        fingerprint: Fingerprint::new(&name, &namespace, &target),
        name: name.into(),
        severity: "warning".into(),
        namespace: namespace.into(),
        target,
        labels,
        annotations: Labels::default(),
        firing_time: None,
        received_time: jiff::Timestamp::UNIX_EPOCH,
        signal_type: SignalType::PROMETHEUS_ALERT,
        source: "bench".into(),
        status: SignalStatus::Firing,
    }
}

/// A store as the gateway builds it by default, with room for every fingerprint.
fn store(clock: &Clock) -> MemoryStore {
    let memory = MemoryConfig { max_entries: MAX_ENTRIES };
    MemoryStore::new(&memory, Duration::from_secs(300), &StormConfig::default(), clock.clone())
}

/// Resident memory per storm scope with an open window, less its alerts' incidents.
async fn storm_scopes(n: u64, per_fingerprint: f64) {
    let clock = Clock::System;
    let store = store(&clock);
    tokio::task::yield_now().await;
    let before = rss_bytes();
    let mut incidents = 0;
    for scope in 0..n {
        let verdicts = store.observe(&scopes::storm(scope), clock.now_s()).await.expect("room for the storm");
        incidents += verdicts.iter().filter(|v| matches!(v, Verdict::New(_))).count();
        assert!(matches!(verdicts.last(), Some(Verdict::Folded(_))), "the last alert opens a window");
    }
    let growth = rss_bytes().saturating_sub(before) as f64;
    let per_scope = (growth - incidents as f64 * per_fingerprint) / n as f64;
    println!("bytes per storm scope: {per_scope:.1}  ({n} scopes, {} alerts each)", scopes::alerts_per_scope());
}

/// Diagnostic only: the same reading after the allocator has collected everything
/// it can, which separates memory the store holds from memory the allocator kept.
/// The headline figure above is the uncollected one.
fn trimmed_reading(before: u64, len: usize) {
    // SAFETY: mi_collect only returns free memory to the OS; it has no preconditions.
    unsafe { libmimalloc_sys::mi_collect(true) };
    let trimmed = rss_bytes().saturating_sub(before);
    println!(
        "  (diagnostic) after mi_collect: {:.1} MiB, {:.1} B per fingerprint",
        mib(trimmed),
        trimmed as f64 / len as f64
    );
}

/// Distinct, random-looking fingerprints. The store keys on the first 16 bytes; the
/// first 8 are SplitMix64 of `4i`, a bijection, so no two fingerprints share a key.
fn fingerprint(i: u64) -> Fingerprint {
    let mut bytes = [0u8; 32];
    for (k, chunk) in bytes.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&splitmix64(i.wrapping_mul(4).wrapping_add(k as u64)).to_le_bytes());
    }
    Fingerprint::from_bytes(bytes)
}

/// SplitMix64's finaliser: a bijective 64-bit mixer.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The peak resident set, `VmHWM` in `/proc/self/status`.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
