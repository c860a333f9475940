//! Memory of the owner caches per pod, and API calls per owner lookup in steady
//! state, against a real API server (the test environment of `scripts/kube-testenv`).
//!
//! Run with `cargo bench --bench kube_owners`. Creates 10,000 pods, each controlled
//! by one of 100 ReplicaSets of one Deployment, then starts the gateway's
//! [`OwnerCache`] (metadata watches of Pods, ReplicaSets and Jobs) as tidegate's
//! service account, directly against the API server, and divides the growth of the
//! process's resident set from just before the caches start to when they have
//! listed by the number of pods. Then resolves every pod's workload and counts the
//! API calls that cost (`tidegate_kube_api_calls_total`): the target is 0.
//!
//! Resident memory rather than a sum of allocation sizes, because that is what an
//! operator pays. It includes what the watch machinery keeps besides the maps (the
//! client, its connections, the list pages' buffers the allocator has not returned),
//! so it overstates the maps themselves; the diagnostic after `mi_collect` shows how
//! much of it was transient.
//!
//! Without `--bench` (as `scripts/test` runs it) it uses 200 pods and checks the
//! same things on a small load.

use tidegate_testkit::bench::rss;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use rss::rss_bytes;
use tidegate::config::KubeConfig;
use tidegate::signal::TargetResource;
use tidegate::telemetry::Metrics;
use tidegate::workload::owners::OwnerCache;
use tidegate::workload::Owners;

#[global_allocator]
static ALLOCATOR: tidegate::allocator::Allocator = mimalloc::MiMalloc;

const REPLICA_SETS: usize = 100;

fn main() -> ExitCode {
    tidegate::allocator::tune();
    let measuring = std::env::args().any(|a| a == "--bench");
    let pods = if measuring { 10_000 } else { 200 };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(run(pods, measuring))
}

async fn run(pods: usize, measuring: bool) -> ExitCode {
    println!("kube_owners bench: {pods} pods of {REPLICA_SETS} ReplicaSets of one Deployment, real API server");
    if !measuring {
        println!("(run by `cargo test`: a small load, not a measurement)");
    }
    let kube = tidegate_testkit::kube::Kube::new().await;
    let ns = kube.namespace("bench", &[]).await;
    let started = Instant::now();
    let web = kube.create_object(&ns, "Deployment", "web", None).await;
    let mut sets = Vec::new();
    for r in 0..REPLICA_SETS {
        sets.push(kube.create_object(&ns, "ReplicaSet", &format!("web-{r:03}"), Some(&web)).await);
    }
    let creates = futures::stream::iter(0..pods).map(|p| {
        let r = p % REPLICA_SETS;
        let (kube, ns, owner) = (&kube, &ns, &sets[r]);
        async move { kube.create_object(ns, "Pod", &format!("web-{r:03}-{p:05}"), Some(owner)).await }
    });
    creates.buffer_unordered(16).collect::<Vec<_>>().await;
    println!("created {pods} pods in {:.1} s", started.elapsed().as_secs_f64());

    let metrics = Arc::new(Metrics::new());
    let client = kube.gateway_client_direct();
    // One call first, so the client's connection and TLS state are in the baseline.
    let _ = Api::<Pod>::namespaced(client.clone(), &ns).get_metadata_opt("none").await;
    unsafe { libmimalloc_sys::mi_collect(true) };
    let before = rss_bytes();
    let started = Instant::now();
    let owners = OwnerCache::start(client, KubeConfig::default().owner_lookup_timeout, metrics.clone());
    tidegate_testkit::eventually_within("the owner caches to list", std::time::Duration::from_secs(120), || {
        let owners = owners.clone();
        async move { owners.synced() }
    })
    .await;
    let listed_in = started.elapsed();
    let after = rss_bytes();
    let growth = after.saturating_sub(before) as f64;
    println!("caches listed in {:.2} s", listed_in.as_secs_f64());
    println!("RSS growth: {:.2} MiB = {:.0} bytes per pod", growth / 1048576.0, growth / pods as f64);
    unsafe { libmimalloc_sys::mi_collect(true) };
    let trimmed = rss_bytes().saturating_sub(before) as f64;
    println!(
        "  (diagnostic) after mi_collect: {:.2} MiB = {:.0} bytes per pod",
        trimmed / 1048576.0,
        trimmed / pods as f64
    );

    let calls = |metrics: &Metrics| {
        metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("tidegate_kube_api_calls_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before_calls = calls(&metrics);
    let mut wrong = 0;
    for p in 0..pods {
        let target = TargetResource {
            kind: "Pod".into(),
            name: format!("web-{:03}-{p:05}", p % REPLICA_SETS),
            namespace: ns.clone(),
        };
        let top = owners.top(&target).await;
        if top.as_ref().map(|t| (t.kind.as_str(), t.name.as_str())) != Some(("Deployment", "web")) {
            wrong += 1;
        }
    }
    let per_lookup = (calls(&metrics) - before_calls) / pods as f64;
    println!("API calls per owner lookup in steady state: {per_lookup} (target 0)");
    if wrong > 0 || per_lookup > 0.0 {
        eprintln!("{wrong} pods not attributed to Deployment/web, {per_lookup} calls per lookup");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
