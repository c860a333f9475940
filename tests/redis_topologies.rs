//! Sentinel and Cluster deployments, started for real by this test binary.

#[macro_use]
#[path = "support/conformance.rs"]
mod conformance;
mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::redis::cluster::ClusterSetup;
use support::redis::sentinel::SentinelSetup;
use support::redis::MASTER_NAME;
use support::{alert, eventually, start_with, unique_prefix, webhook};
use tidegate::config::StateBackend;
use tidegate::state::redis::{RedisConfig, RedisStore};
use tidegate::state::StateStore;
use tidegate::telemetry::Metrics;

fn hosts(urls: &[String]) -> String {
    urls.iter().map(|u| u.trim_start_matches("redis://")).collect::<Vec<_>>().join(",")
}

/// One cluster for every cluster test of this binary.
fn cluster() -> &'static ClusterSetup {
    static CLUSTER: std::sync::OnceLock<ClusterSetup> = std::sync::OnceLock::new();
    CLUSTER.get_or_init(ClusterSetup::start)
}

fn cluster_url() -> String {
    format!("redis+cluster://{}", hosts(&cluster().urls()))
}

/// The conformance suite, against a three-primary cluster.
mod cluster_conformance {
    use super::*;

    async fn cluster_store(window: Duration) -> Arc<dyn StateStore> {
        let url = tokio::task::spawn_blocking(cluster_url).await.unwrap();
        let config = RedisConfig {
            prefix: unique_prefix(),
            timeout: Duration::from_secs(2),
            monitor_interval: Duration::from_secs(3600),
            ..Default::default()
        };
        let storms = tidegate::state::StormConfig::default();
        Arc::new(
            RedisStore::connect(&url.parse().unwrap(), &config, window, &storms, Arc::new(Metrics::new()))
                .await
                .unwrap(),
        )
    }

    conformance_suite!(cluster_store);
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_batch_spanning_slots_is_decided_in_one_request() {
    let url = tokio::task::spawn_blocking(cluster_url).await.unwrap();
    let mut gw = start_with(|c| {
        c.state = StateBackend::Redis(url.parse().unwrap());
        c.redis.prefix = unique_prefix();
        c.redis.monitor_interval = Duration::from_secs(1);
    })
    .await;
    // Ten namespaces: ten storm scopes, so ten slots and no storm.
    let alerts: Vec<Value> = (0..10).map(|n| alert("ClusterWide", &format!("ns{n}"), "p0")).collect();
    let first: Value = gw.alerts(&webhook(alerts.clone())).await.json().await.unwrap();
    assert_eq!(first["summary"]["created"], 10);
    let second: Value = gw.alerts(&webhook(alerts)).await.json().await.unwrap();
    assert_eq!(second["summary"]["duplicate"], 10);
    // Gauges add up every primary: each node's keys, and the three nodes' memory.
    eventually("the monitor to count fingerprints on every node", || async {
        gw.metric("tidegate_state_entries").await == 10.0
    })
    .await;
    assert_eq!(gw.metric("tidegate_redis_maxmemory_bytes").await, 3.0 * 16.0 * 1024.0 * 1024.0);
    gw.stop().await;
    assert_eq!(gw.manifests().len(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn sentinel_failover_is_followed_without_a_restart() {
    let setup = tokio::task::spawn_blocking(SentinelSetup::start).await.unwrap();
    let setup = Arc::new(setup);
    let url = format!("redis+sentinel://{}/{MASTER_NAME}", hosts(&setup.sentinel_urls()));
    let gw = start_with(|c| {
        c.state = StateBackend::Redis(url.parse().unwrap());
        c.redis.prefix = unique_prefix();
        c.redis.timeout = Duration::from_millis(300);
    })
    .await;
    assert_eq!(gw.alerts(&webhook(vec![alert("BeforeFailover", "shop", "p0")])).await.status(), 201);

    let killed = {
        let setup = setup.clone();
        tokio::task::spawn_blocking(move || setup.kill_primary()).await.unwrap()
    };
    // While no primary can write, alerts are refused, never acknowledged.
    let resp = gw.alerts(&webhook(vec![alert("DuringFailover", "shop", "p1")])).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));

    let promoted = {
        let setup = setup.clone();
        tokio::task::spawn_blocking(move || setup.wait_for_failover(Duration::from_secs(30))).await.unwrap()
    };
    assert_ne!(promoted, killed);
    // Keep sending, as Alertmanager would, until the gateway follows the failover.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = gw.alerts(&webhook(vec![alert("DuringFailover", "shop", "p1")])).await.status();
        if status.is_success() {
            break;
        }
        assert_eq!(status, 503, "only 503 while failing over");
        assert!(tokio::time::Instant::now() < deadline, "gateway never followed the failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.get("/readyz").await.status(), 200);
}
