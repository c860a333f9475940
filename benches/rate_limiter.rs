//! The embedded store's hand-written GCRA against the `governor` crate's keyed
//! limiter, per admission: one hot sender, and 10,000 senders in turn.
//!
//! Run with `cargo bench --bench rate_limiter`; the figures and the decision are in
//! docs/architecture.md's list of hand-written protocols. Ours is measured as the
//! request path calls it, through the `StateStore` trait (a boxed future per call,
//! the store's mutex, its deadline heap for a new sender); governor's `check_key`
//! on its default clock, with the same rate and burst. Without `--bench` (as `cargo
//! test --benches` runs it) each case runs a few thousand admissions.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{Quota, RateLimiter};
use tidegate::clock::Clock;
use tidegate::state::memory::{MemoryConfig, MemoryStore};
use tidegate::state::{Admission, RateLimit, StateStore, StormConfig};

/// The default limit: 1,000 a second, a burst of 5,000.
const LIMIT: RateLimit = RateLimit { rate_per_s: 1000.0, burst: 5000 };

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let admissions: u64 = if full { 2_000_000 } else { 5_000 };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    println!("rate limiter: ns per admission, {admissions} admissions a case");
    for senders in [1u64, 10_000] {
        let names: Vec<String> = (0..senders).map(|i| format!("10.0.{}.{}", i / 256, i % 256)).collect();
        let store = runtime.block_on(async {
            MemoryStore::new(&MemoryConfig::default(), Duration::from_secs(300), &StormConfig::default(), Clock::System)
        });
        let clock = Clock::System;
        let ours = runtime.block_on(async {
            let (started, mut allowed) = (Instant::now(), 0u64);
            for i in 0..admissions {
                let name = &names[(i % senders) as usize];
                let admission = store.admit(name, LIMIT, clock.now_ms()).await.expect("the embedded store");
                allowed += u64::from(admission == Admission::Allowed);
            }
            (started.elapsed(), allowed)
        });
        let quota = Quota::per_second(NonZeroU32::new(1000).expect("1000"))
            .allow_burst(NonZeroU32::new(LIMIT.burst).expect("5000"));
        let governor = RateLimiter::keyed(quota);
        let theirs = {
            let (started, mut allowed) = (Instant::now(), 0u64);
            for i in 0..admissions {
                allowed += u64::from(governor.check_key(&names[(i % senders) as usize]).is_ok());
            }
            (started.elapsed(), allowed)
        };
        for (name, (elapsed, allowed)) in [("tidegate MemoryStore::admit", ours), ("governor check_key", theirs)] {
            let ns = elapsed.as_nanos() as f64 / admissions as f64;
            println!("  {senders:>6} sender(s)  {name:<28} {ns:>7.1} ns  ({allowed} allowed)");
        }
    }
}
