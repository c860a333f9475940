//! Redis `used_memory` per active fingerprint, through the real Redis backend.
//!
//! Run with `cargo bench --bench redis_memory`. Starts its own `redis-server`
//! (512 MB, noeviction, no persistence) with the test suite's launcher, connects a
//! `RedisStore` exactly as `tidegate serve --state redis://…` does, and records
//! 1,000,000 distinct fingerprints through `StateStore::observe` in batches of 1,000
//! (one pipelined round trip each). Bytes per fingerprint is the growth of
//! `INFO memory` `used_memory` divided by the fingerprints held, which is what
//! `maxmemory` is compared against. RSS and the fragmentation ratio are printed too,
//! because that is what the host pays. Target: at most 48 B per fingerprint.
//!
//! Then, each on a fresh server, what a storm scope and a rate-limited source cost:
//! 10,000 scopes each sent one alert past the rate threshold (so each opens an
//! aggregation window), and 100,000 sources each charged once. A scope's figure
//! leaves out its alerts' own incidents (the fingerprint figure times the alerts
//! that were not folded). `tidegate capacity` reads these figures
//! (`src/capacity.rs`, checked against docs/benches/redis_memory.txt). Last, on a
//! fresh server too, 100,000 Standard Webhooks message ids recorded in the replay
//! store (`StateStore::first_sighting`, one `SET NX EX` each).

use tidegate_testkit::bench::scopes;
use tidegate_testkit::redis as redis_support;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Instant;

use redis_support::{RedisServer, ServerOptions};
use tidegate::clock::Clock;
use tidegate::signal::{Fingerprint, SignalStatus};
use tidegate::state::{Observation, RateLimit, StateStore, Verdict};

const FINGERPRINTS: u64 = 1_000_000;
/// Without `--bench` (that is, under `cargo test --all-targets`), a quick run that
/// only proves the bench works; per-key overhead dominates at this size.
const SMOKE_FINGERPRINTS: u64 = 20_000;
const BATCH: u64 = 1_000;
const TARGET: f64 = 48.0;

#[tokio::main]
async fn main() -> ExitCode {
    let server = RedisServer::start(ServerOptions { maxmemory: "512mb".into(), ..ServerOptions::default() });
    let store = server.bench_store().await;
    let clock = Clock::System;
    let smoke = !std::env::args().any(|a| a == "--bench");
    let total = if smoke { SMOKE_FINGERPRINTS } else { FINGERPRINTS };
    let before = memory(&server);
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH as usize);
    for first in (0..total).step_by(BATCH as usize) {
        batch.clear();
        batch.extend((first..first + BATCH).map(|i| Observation {
            fingerprint: fingerprint(i),
            status: SignalStatus::Firing,
            storm: None,
        }));
        let verdicts = store.observe(&batch, clock.now_s()).await.expect("Redis accepts the batch");
        assert!(verdicts.iter().all(|v| matches!(v, Verdict::New(_))), "fingerprints are distinct");
    }
    let elapsed = started.elapsed();
    let after = memory(&server);
    let keys = server.dbsize();
    let per_fp = (after["used_memory"] - before["used_memory"]) / total as f64;
    let rss_per_fp = (after["used_memory_rss"] - before["used_memory_rss"]) / total as f64;
    println!("redis_memory bench: {total} fingerprints through RedisStore::observe, batches of {BATCH}");
    if smoke {
        println!("SMOKE MODE (not run by `cargo bench`): figures are not benchmarks");
    }
    println!("  redis-server          {}", server.info("server").get("redis_version").cloned().unwrap_or_default());
    println!("  keys                  {keys} ({:.1} fingerprints per hash)", total as f64 / keys as f64);
    println!("  used_memory           {:.1} MiB -> {:.1} MiB", mib(before["used_memory"]), mib(after["used_memory"]));
    println!("  bytes per fingerprint {per_fp:.1} B of used_memory (target <= {TARGET} B)");
    println!(
        "  RSS per fingerprint   {rss_per_fp:.1} B (mem_fragmentation_ratio {:.2})",
        after["mem_fragmentation_ratio"]
    );
    println!(
        "  write rate            {:.0} fingerprints/s ({:.1} s)",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    storm_scopes(if smoke { 200 } else { 10_000 }, per_fp).await;
    sources(if smoke { 2_000 } else { 100_000 }).await;
    sightings(if smoke { 2_000 } else { 100_000 }).await;
    compare(if smoke { 2_000 } else { 200_000 });
    if smoke || per_fp <= TARGET {
        ExitCode::SUCCESS
    } else {
        println!("  OVER TARGET");
        ExitCode::FAILURE
    }
}

/// `used_memory` per storm scope with an open window, less its alerts' incidents.
async fn storm_scopes(n: u64, per_fingerprint: f64) {
    let server = RedisServer::start(ServerOptions { maxmemory: "512mb".into(), ..ServerOptions::default() });
    let store = server.bench_store().await;
    let now = Clock::System.now_s();
    let before = memory(&server)["used_memory"];
    let mut incidents = 0;
    for scope in 0..n {
        let verdicts = store.observe(&scopes::storm(scope), now).await.expect("Redis accepts the storm");
        incidents += verdicts.iter().filter(|v| matches!(v, Verdict::New(_))).count();
        assert!(matches!(verdicts.last(), Some(Verdict::Folded(_))), "the last alert opens a window");
    }
    let growth = memory(&server)["used_memory"] - before;
    let per_scope = (growth - incidents as f64 * per_fingerprint) / n as f64;
    println!(
        "  bytes per storm scope {per_scope:.1} B of used_memory ({n} scopes, {} alerts each)",
        scopes::alerts_per_scope()
    );
}

/// `used_memory` per source charged against the rate limit.
async fn sources(n: u64) {
    let server = RedisServer::start(ServerOptions { maxmemory: "512mb".into(), ..ServerOptions::default() });
    let store = server.bench_store().await;
    // A budget that refills slowly keeps each source's key until it is measured: a
    // source's key lives until its burst is back, which is what a source sending
    // steadily holds.
    let limit = RateLimit { rate_per_s: 1.0, burst: 5000 };
    let now_ms = Clock::System.now_ms();
    let before = memory(&server)["used_memory"];
    let charges: Vec<_> = (0..n).map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)).collect();
    for chunk in charges.chunks(1000) {
        let admitted = chunk.iter().map(|source| store.admit(source, limit, now_ms));
        futures::future::try_join_all(admitted).await.expect("Redis accepts the charges");
    }
    let per_source = (memory(&server)["used_memory"] - before) / n as f64;
    println!("  bytes per source      {per_source:.1} B of used_memory ({n} sources charged once)");
}

/// `used_memory` per replay id of the Standard Webhooks authenticator.
async fn sightings(n: u64) {
    let server = RedisServer::start(ServerOptions { maxmemory: "512mb".into(), ..ServerOptions::default() });
    let store = server.bench_store().await;
    let before = memory(&server)["used_memory"];
    for first in (0..n).step_by(BATCH as usize) {
        let calls = (first..(first + BATCH).min(n)).map(|i| {
            let id: [u8; 16] = fingerprint(i).as_bytes()[..16].try_into().expect("16 of 32 bytes");
            store.first_sighting(id, std::time::Duration::from_secs(600))
        });
        let firsts = futures::future::try_join_all(calls).await.expect("Redis accepts the ids");
        assert!(firsts.into_iter().all(|first| first), "ids are distinct");
    }
    let per_id = (memory(&server)["used_memory"] - before) / n as f64;
    println!("  bytes per replay id   {per_id:.1} B of used_memory ({n} webhook ids, SET NX EX)");
}

/// The layouts tidegate does not use, on a fresh server each, for comparison: a key
/// per fingerprint with `SET … EX`, and a hash per fingerprint with named fields (our
/// predecessor's shape, minus the documents).
fn compare(n: u64) {
    type Write = fn(&mut redis::Pipeline, u64);
    let layouts: [(&str, Write); 2] = [
        ("SET <64-hex key> <12 bytes> EX 300", |p, i| {
            p.cmd("SET").arg(hex_key(i)).arg(&[0u8; 12][..]).arg("EX").arg(300).ignore();
        }),
        ("hash per fingerprint, named fields", |p, i| {
            let key = format!("tidegate:dedup:{}", hex_key(i));
            p.cmd("HSET").arg(&key).arg("first_seen").arg(1_800_000_000).arg("last_seen").arg(1_800_000_000);
            p.arg("count").arg(1).ignore();
            p.cmd("EXPIRE").arg(&key).arg(300).ignore();
        }),
    ];
    for (name, write) in layouts {
        let server = RedisServer::start(ServerOptions { maxmemory: "512mb".into(), ..ServerOptions::default() });
        let mut conn = server.connection();
        let before = memory(&server)["used_memory"];
        for first in (0..n).step_by(1000) {
            let mut pipe = redis::pipe();
            (first..first + 1000).for_each(|i| write(&mut pipe, i));
            let _: () = pipe.query(&mut conn).expect("Redis accepts the batch");
        }
        let per = (memory(&server)["used_memory"] - before) / n as f64;
        println!("  compare: {name:<40} {per:.1} B per fingerprint ({n} keys)");
    }
}

fn hex_key(i: u64) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(i.to_le_bytes()))
}

fn memory(server: &RedisServer) -> HashMap<String, f64> {
    server.info("memory").into_iter().filter_map(|(k, v)| Some((k, v.parse().ok()?))).collect()
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// Distinct, uniformly spread fingerprints, like SHA-256 output.
fn fingerprint(i: u64) -> Fingerprint {
    use sha2::{Digest, Sha256};
    Fingerprint::from_bytes(Sha256::digest(i.to_le_bytes()).into())
}
