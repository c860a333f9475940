//! What one Redis primary can decide: the Redis backend driven directly, with no
//! HTTP in front, to find the ceiling Redis puts on tidegate's throughput.
//!
//! Run with `cargo bench --bench redis_throughput`. Starts its own `redis-server`
//! (256 MB, noeviction, no persistence) with the test suite's launcher, connects a
//! `RedisStore` as `tidegate serve --state redis://…` does, and calls
//! `admit_and_observe` exactly as the gateway does for a webhook: one call per 10
//! alerts, charged to one of 32 sources. The alerts are those of
//! `cargo bench --bench ingest` (20 alert names × 100 namespaces × 5 pods, 10,000
//! fingerprints, each call one alert name over two namespaces). After one warm-up
//! pass it measures `BENCH_SECONDS` (default 10) with `BENCH_CONCURRENCY` calls in
//! flight (default 32), and prints alerts/s and the CPU per alert of redis-server
//! and of this process (the gateway's Redis client side), and Redis's own time per
//! call of the decide function from `INFO commandstats` (`usec_per_call` of
//! `cmdstat_fcall`, reset after the warm-up) divided by the alerts per call.
//!
//! `BENCH_FINGERPRINTS=new` makes every alert of the measured phase a new incident:
//! each call's two namespaces are ones no call used before (so its storm scopes are
//! new too, and no storm forms), which is what a burst of new incidents costs Redis.
//!
//! Redis is single-threaded, so its CPU per alert bounds what one primary decides:
//! at most one core's worth. Without `--bench` (under `cargo test --all-targets`)
//! it runs for a moment as a smoke test and fails on any error or limited call.

use tidegate_testkit::bench::cpu;
use tidegate_testkit::bench::knobs;
use tidegate_testkit::redis as redis_support;

use knobs::knob;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpu::cpu_seconds;
use redis_support::{RedisServer, ServerOptions};
use tidegate::clock::Clock;
use tidegate::signal::{Fingerprint, SignalStatus, TargetResource};
use tidegate::state::redis::RedisStore;
use tidegate::state::{Charge, Decision, Observation, RateLimit, StateStore, StormKey};

const ALERT_NAMES: usize = 20;
const NAMESPACES: usize = 100;
const PODS: usize = 5;
/// Alerts per call: the pods of two namespaces, as in the ingest bench.
const BATCH: usize = 2 * PODS;
const SOURCES: usize = 32;
/// The `INFO commandstats` line of the decide function's calls.
const DECIDE_STAT: &str = "cmdstat_fcall";
/// The gateway's default rate limit, which this load stays well inside.
const LIMIT: RateLimit = RateLimit { rate_per_s: 1000.0, burst: 5000 };

#[tokio::main]
async fn main() -> ExitCode {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let var = |name: &str, default: u64| -> u64 { knob(name).unwrap_or(default) };
    let seconds = if smoke { 1 } else { var("BENCH_SECONDS", 10) };
    let concurrency = if smoke { 4 } else { var("BENCH_CONCURRENCY", 32) } as usize;
    let fresh = match std::env::var("BENCH_FINGERPRINTS").as_deref() {
        Ok("new") => true,
        Ok("repeat") | Err(_) => false,
        Ok(other) => {
            println!("!!! BENCH_FINGERPRINTS={other}: use repeat (the default) or new");
            return ExitCode::FAILURE;
        }
    };

    let server = RedisServer::start(ServerOptions { maxmemory: "256mb".into(), ..ServerOptions::default() });
    let store = Arc::new(server.bench_store().await);
    let batches = Arc::new(batches());
    let sources: Arc<Vec<String>> = Arc::new((0..SOURCES).map(|s| format!("127.0.0.{}", s + 2)).collect());

    // Warm-up: every fingerprint once, so the measured phase is repeats, as in the
    // steady state of a real deployment.
    let next = Arc::new(AtomicU64::new(0));
    let warm = drive(&store, &batches, &sources, &next, concurrency, Until::Calls(batches.len() as u64), false).await;
    if let Err(e) = warm {
        println!("!!! warm-up failed: {e}");
        return ExitCode::FAILURE;
    }

    // Redis's own account of the script, for the measured phase only.
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut server.connection()).expect("CONFIG RESETSTAT");
    let redis_pid = server.pid().expect("redis-server runs");
    let (redis0, self0) = (cpu_seconds(&redis_pid.to_string()), cpu_seconds("self"));
    let started = Instant::now();
    let until = Until::Time(Duration::from_secs(seconds));
    let calls = drive(&store, &batches, &sources, &next, concurrency, until, fresh).await;
    let elapsed = started.elapsed().as_secs_f64();
    let (redis_cpu, self_cpu) = (cpu_seconds(&redis_pid.to_string()) - redis0, cpu_seconds("self") - self0);
    let calls = match calls {
        Ok(calls) => calls,
        Err(e) => {
            println!("!!! measured phase failed: {e}");
            return ExitCode::FAILURE;
        }
    };

    let alerts = (calls * BATCH as u64) as f64;
    let us = |cpu: f64| cpu * 1e6 / alerts.max(1.0);
    let fingerprints = if fresh { "every one new".to_string() } else { format!("{}", batches.len() * BATCH) };
    println!(
        "redis_throughput bench: {BATCH} alerts per call, fingerprints {fingerprints}, {concurrency} calls in flight, \
         {seconds} s"
    );
    if smoke {
        println!("SMOKE MODE (not run by `cargo bench`): figures are not benchmarks");
    }
    println!("  redis-server          {}", server.info("server").get("redis_version").cloned().unwrap_or_default());
    println!("  alerts/s              {:.0} ({:.0} calls/s)", alerts / elapsed, calls as f64 / elapsed);
    println!("  redis-server CPU      {:.2} cores, {:.2} µs per alert", redis_cpu / elapsed, us(redis_cpu));
    println!("  this process CPU      {:.2} cores, {:.2} µs per alert", self_cpu / elapsed, us(self_cpu));
    // `usec_per_call` of the decide function (FCALL; the rate-limit charge runs in
    // the same call): Redis's CPU inside it, without its network and parsing.
    let stats = server.info("commandstats");
    if let Some((calls, usec_per_call)) = stats.get(DECIDE_STAT).and_then(|s| command_stat(s)) {
        println!(
            "  INFO commandstats     fcall: {calls} calls, {usec_per_call:.2} µs per call, {:.2} µs per alert",
            usec_per_call / BATCH as f64
        );
        // The commands the script ran, per alert: where its time goes (their time is
        // part of the script's).
        let mut inner: Vec<(&String, u64, f64)> = stats
            .iter()
            .filter(|(name, _)| name.as_str() != DECIDE_STAT)
            .filter_map(|(name, line)| command_stat(line).map(|(c, u)| (name, c, u)))
            .collect();
        inner.sort_by(|a, b| (b.1 as f64 * b.2).total_cmp(&(a.1 as f64 * a.2)));
        for (name, c, u) in inner {
            let per_alert = c as f64 / (calls * BATCH as u64).max(1) as f64;
            println!(
                "    {:<18} {per_alert:.2} per alert, {u:.2} µs each, {:.2} µs per alert",
                name.trim_start_matches("cmdstat_"),
                per_alert * u
            );
        }
    }
    println!(
        "  one primary's ceiling {:.0} alerts/s (one core at this CPU per alert)",
        1e6 / us(redis_cpu).max(f64::EPSILON)
    );
    ExitCode::SUCCESS
}

/// `calls` and `usec_per_call` of one `INFO commandstats` line
/// (`calls=…,usec=…,usec_per_call=…,…`).
fn command_stat(line: &str) -> Option<(u64, f64)> {
    let field = |name: &str| line.split(',').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
    Some((field("calls")?.parse().ok()?, field("usec_per_call")?.parse().ok()?))
}

/// The ingest bench's alerts, grouped into calls.
fn batches() -> Vec<Vec<Observation>> {
    let mut out = Vec::new();
    for name in 0..ALERT_NAMES {
        for pair in (0..NAMESPACES).step_by(2) {
            out.push(batch(name, pair));
        }
    }
    out
}

/// One call: alert `name` on the pods of namespaces `pair` and `pair + 1`.
fn batch(name: usize, pair: usize) -> Vec<Observation> {
    let alertname = format!("Alert{name}");
    let mut batch = Vec::with_capacity(BATCH);
    for ns in [pair, pair + 1] {
        let namespace = format!("ns-{ns}");
        for pod in 0..PODS {
            let target = TargetResource {
                kind: "Pod".into(),
                name: format!("pod-{pod}"),
                namespace: namespace.clone(),
                cluster: String::new(),
            };
            batch.push(Observation {
                fingerprint: Fingerprint::new(&alertname, &namespace, &target),
                status: SignalStatus::Firing,
                storm: Some(StormKey::new(&namespace, &alertname, &target)),
            });
        }
    }
    batch
}

enum Until {
    Calls(u64),
    Time(Duration),
}

/// Runs `concurrency` callers over the batches in turn until `until` (or, `fresh`,
/// over calls whose namespaces no call used before); returns the calls made, or the
/// first failure.
async fn drive(
    store: &Arc<RedisStore>,
    batches: &Arc<Vec<Vec<Observation>>>,
    sources: &Arc<Vec<String>>,
    next: &Arc<AtomicU64>,
    concurrency: usize,
    until: Until,
    fresh: bool,
) -> Result<u64, String> {
    let (deadline, limit) = match until {
        Until::Time(d) => (Some(Instant::now() + d), u64::MAX),
        Until::Calls(n) => (None, next.load(Ordering::Relaxed) + n),
    };
    let callers = (0..concurrency).map(|_| {
        let clock = Clock::System;
        let (store, batches, sources, next) = (store.clone(), batches.clone(), sources.clone(), next.clone());
        tokio::spawn(async move {
            let mut calls = 0u64;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(calls);
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit {
                    return Ok(calls);
                }
                let new;
                let batch = if fresh {
                    // Past the namespaces of the warm-up's batches.
                    new = batch(i as usize % ALERT_NAMES, NAMESPACES + 2 * i as usize);
                    &new
                } else {
                    &batches[i as usize % batches.len()]
                };
                let charge =
                    Charge { source: &sources[i as usize % sources.len()], limit: LIMIT, now_ms: clock.now_ms() };
                match store.admit_and_observe(charge, batch, clock.now_s()).await {
                    Ok(Decision::Decided(verdicts)) if verdicts.len() == batch.len() => calls += 1,
                    Ok(other) => return Err(format!("unexpected decision {other:?}")),
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
    });
    let mut total = 0;
    for caller in futures::future::join_all(callers).await {
        total += caller.map_err(|e| e.to_string())??;
    }
    Ok(total)
}
