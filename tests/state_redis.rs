//! The Redis store against the shared conformance suite, on a real `redis-server`
//! (16 MB maxmemory, noeviction) that this test binary starts. Every store gets a
//! key prefix of its own, so the cases run in parallel on one server.

#[macro_use]
#[path = "support/conformance.rs"]
mod conformance;
mod support;

use std::sync::Arc;
use std::time::Duration;

use tidegate::state::redis::{RedisConfig, RedisStore};
use tidegate::state::StateStore;
use tidegate::telemetry::Metrics;

async fn redis_store(window: Duration) -> Arc<dyn StateStore> {
    let server = support::redis::shared();
    let config = RedisConfig {
        prefix: support::unique_prefix(),
        timeout: Duration::from_secs(2),
        monitor_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let (topology, storms) = (server.url().parse().unwrap(), tidegate::state::StormConfig::default());
    Arc::new(RedisStore::connect(&topology, &config, window, &storms, Arc::new(Metrics::new())).await.unwrap())
}

conformance_suite!(redis_store);
