//! Chaos with an independent ledger: tidegate's delivery promise checked while the
//! parts around it fail at random.
//!
//! Run with `cargo bench --bench chaos`. Topology, all real processes on loopback:
//!
//! * Redis through Sentinel: a primary, a replica and three sentinels
//!   (`testkit/src/redis/sentinel.rs`, no persistence, as the tests run it);
//! * two gateway replicas, each a `tidegate serve` process (the binary cargo built)
//!   with `--state redis+sentinel://…` and `--sink kube`, sharing that Redis;
//! * the real kube-apiserver and etcd of the kube tests (`scripts/kube-testenv`),
//!   reached by the gateways only through the fault proxy
//!   (`testkit/src/kube/proxy.rs`), as the service account `deploy/` defines.
//!
//! Senders: `CHAOS_SENDERS` tasks post Alertmanager webhook bodies of 1–4 alerts
//! each, spread over both replicas. They retry as Alertmanager's notifier does
//! (`notify/notify.go`, `RetryStage`): a 5xx or a connection error is retried with
//! exponential backoff (0.5 s, ×1.5, ±50 %, capped; Alertmanager caps at 60 s, the
//! smoke run at 2 s), a 4xx is final. Alertmanager gives up at the flush deadline
//! and sends the group again at the next flush; here the retry simply goes on until
//! the body is answered 2xx, which is the same for the ledger. A connection error
//! sends the retry to the other replica, as a load balancer would.
//!
//! Faults, at random times from a seeded schedule (`CHAOS_SEED`, printed), on two
//! tracks that overlap:
//!
//! * state and processes, one at a time: `kill -9` of the Redis primary restarted at
//!   once (it comes back empty, and its replica resyncs from it: Redis loses
//!   everything), `kill -9` of the primary restarted after Sentinel has failed over,
//!   `SENTINEL FAILOVER`, `CLIENT PAUSE` (`ALL` or `WRITE`) of the primary, and SIGKILL
//!   of a gateway replica, restarted once it is gone;
//! * the Kubernetes API, through the proxy: bursts of 500s, bursts of 429s, the API
//!   down (503 to everything, watches cut) for a few seconds, and cut watches.
//!
//! The ledger is the senders': per incident, the alerts of every body answered 2xx
//! (acknowledged), with the time of each answer, and the alerts of every attempt not
//! answered 2xx (unacknowledged: any of them may have been recorded before a timeout
//! or a dropped connection). A poller lists the RemediationRequests straight from the
//! API server (as admin, not through the proxy) every 200 ms, so the count each
//! request had in the cluster is known at any moment.
//!
//! At the end the faults stop, every body still being retried is answered, the
//! gateways' status writers drain (`tidegate_status_updates_pending` at 0, then
//! SIGTERM, which writes anything left), and the requests are checked against the
//! ledger. What "exactly once" can mean under at-least-once retries, precisely, for
//! incident `i` whose request counts `C`:
//!
//! * **counted in exactly one request**: `i` has exactly one RemediationRequest, and
//!   no request exists that is not some incident's (storm folding is set out of
//!   reach, see below), so every acknowledged alert of `i` can only be counted there;
//! * **never counted more than sent**: `C ≤ A + U`, with `A` the acknowledged alerts
//!   and `U` the unacknowledged attempts: an attempt answered 5xx or cut may have been
//!   recorded, and its retry is counted again (at-least-once), but nothing else can
//!   add to a count;
//! * **counts lost within the documented bound** (docs/delivery.md, "What a crash
//!   loses"): the one thing that loses counts is a gateway process dying before its
//!   status writer wrote what it counted. Each process counts an incident under a
//!   writer id of its own, and a request's status keeps every writer's tally, so a
//!   Redis that loses state, fails over or pauses costs no count (it decides which
//!   request an alert belongs to, never how many occurrences it has). For each
//!   gateway SIGKILL `k` of replica `r`, dead at time `t`, let `L_k` be the alerts of
//!   `i` that `r` acknowledged in attempts sent after its previous kill and by `t`
//!   (the attempt's send time tells which process answered it: an answer written
//!   just before the kill may arrive after it), minus the tally the killed
//!   process had in the cluster at `t` (as the poller last saw it before `t`, which
//!   only widens `L_k`; each process's half of its writer ids is read from its
//!   `tidegate_status_writer` metric when it is ready). Then `C ≥ A − Σ_k L_k` must
//!   hold: any count lost to Redis, to the API faults or to a bug, and not to a
//!   kill, fails the run.
//!
//! The population: `CHAOS_INCIDENTS` incidents (distinct alert name and Deployment,
//! one namespace), every one repeating all run long. Storm thresholds are set out of
//! reach (`storm.rate_threshold`, `storm.pattern_threshold`) so that every alert has
//! exactly one request that must count it: its incident's. Storm accounting under
//! faults is not covered by this run.
//!
//! Knobs (environment): `CHAOS_SECONDS` (chaos phase, default 300; 45 in smoke),
//! `CHAOS_SEED` (default: from the clock), `CHAOS_SENDERS` (default 32; 12 in smoke),
//! `CHAOS_INCIDENTS` (default 40; 16 in smoke); `CHAOS_TRACE=1` prints, for the
//! incident that lost the most, every change of its count in the cluster against its
//! acknowledged alerts, between the faults. docs/chaos.md has the findings and figures.
//!
//! Without `--bench` (as `cargo test --benches`, and so `scripts/test`, runs it) it is
//! a smoke run: 45 s of chaos in which every fault kind happens at least once, and
//! a non-zero exit on any violation. The full run exits non-zero on a violation too.
//! Needs `redis-server`, `redis-sentinel` and the kube test environment
//! (`export TIDEGATE_KUBE_TESTENV=$(scripts/kube-testenv)`, or it is built on first use).

mod check;
mod faults;
mod gateways;
use tidegate_testkit::bench::knobs;
mod ledger;
mod poller;
mod rng;
mod run;
mod senders;
mod sentinel;
mod tracks;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use knobs::knob;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::{json, Value};
use tidegate::remediation::RemediationRequest;
use tidegate_testkit::kube::proxy::{Fault, Matching};
use tidegate_testkit::kube::Kube;
use tidegate_testkit::process;
use tidegate_testkit::redis::sentinel::SentinelSetup;
use tidegate_testkit::redis::MASTER_NAME;

use check::*;
use faults::*;
use gateways::*;
use ledger::*;
use poller::*;
use rng::*;
use run::*;
use senders::*;
use sentinel::*;
use tracks::*;

/// How often the poller lists the requests.
const POLL: Duration = Duration::from_millis(200);
/// One attempt's timeout, as a sender's HTTP client would have.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a gateway may take to become ready after a (re)start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long Redis may take to settle on one primary with a linked replica.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the senders get, after the chaos, to have every body answered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the status writers get to drain.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

struct Settings {
    smoke: bool,
    seconds: u64,
    seed: u64,
    senders: usize,
    incidents: usize,
    /// The longest backoff between retries.
    backoff_cap: Duration,
    /// Pause between faults of a track, in seconds.
    gap: (f64, f64),
}

impl Settings {
    fn from_env(smoke: bool) -> Settings {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
            knob(name).unwrap_or(default)
        }
        let clock_seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        let settings = Settings {
            smoke,
            seconds: var("CHAOS_SECONDS", if smoke { 45 } else { 300 }),
            seed: var("CHAOS_SEED", clock_seed),
            senders: var("CHAOS_SENDERS", if smoke { 12 } else { 32 }),
            incidents: var("CHAOS_INCIDENTS", if smoke { 16 } else { 40 }),
            backoff_cap: if smoke { Duration::from_secs(2) } else { Duration::from_secs(60) },
            gap: if smoke { (0.5, 2.5) } else { (2.0, 10.0) },
        };
        assert!(settings.seconds >= 10, "CHAOS_SECONDS must be at least 10");
        assert!((1..=1024).contains(&settings.senders), "CHAOS_SENDERS must be in 1..=1024");
        assert!((1..=10_000).contains(&settings.incidents), "CHAOS_INCIDENTS must be in 1..=10000");
        settings
    }
}

fn main() -> ExitCode {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let settings = Settings::from_env(smoke);
    println!(
        "chaos: {} s of faults, {} senders, {} incidents, seed {} (CHAOS_SEED={} reproduces the schedule)",
        settings.seconds, settings.senders, settings.incidents, settings.seed, settings.seed
    );
    if smoke {
        println!("SMOKE MODE (not run by `cargo bench`): a short run in which every fault happens at least once");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run(settings))
}
