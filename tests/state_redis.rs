//! The Redis store against the shared conformance suite, on a real `redis-server`
//! (16 MB maxmemory, noeviction) that this test binary starts. Every store gets a
//! key prefix of its own, so the cases run in parallel on one server.

#[path = "support/conformance.rs"]
mod conformance;
mod support;

use std::sync::Arc;
use std::time::Duration;

use tidegate::state::redis::{RedisOptions, RedisStore};
use tidegate::state::StateStore;
use tidegate::telemetry::Metrics;

async fn redis_store(window: Duration) -> Arc<dyn StateStore> {
    let server = support::redis::shared();
    let options = RedisOptions {
        topology: server.url().parse().unwrap(),
        tls: Default::default(),
        prefix: support::unique_prefix(),
        window,
        storms: tidegate::state::StormRules::default(),
        timeout: Duration::from_secs(2),
        monitor_interval: Duration::from_secs(3600),
    };
    Arc::new(RedisStore::connect(options, Arc::new(Metrics::new())).await.unwrap())
}

conformance_suite!(redis_store);
