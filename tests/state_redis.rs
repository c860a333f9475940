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

/// Redis forgets the decide function when it restarts without persistence or an
/// operator flushes its functions; the store loads it again on the next call,
/// which is then decided as if nothing had happened.
#[tokio::test]
async fn a_flushed_decide_function_is_loaded_again_by_the_next_call() {
    use support::redis::{RedisServer, ServerOptions};
    use tidegate::signal::{Fingerprint, SignalStatus};
    use tidegate::state::{Observation, Verdict};

    // A server of its own: `FUNCTION FLUSH` must not reach the shared one.
    let server = RedisServer::start(ServerOptions::default());
    let store = server.bench_store().await;
    let o = Observation { fingerprint: Fingerprint::from_bytes([7; 32]), status: SignalStatus::Firing, storm: None };
    let now = 1_800_000_000;

    assert!(matches!(store.observe(std::slice::from_ref(&o), now).await.unwrap()[..], [Verdict::New(_)]));
    let _: () = redis::cmd("FUNCTION").arg("FLUSH").query(&mut server.connection()).unwrap();
    let libraries: Vec<redis::Value> = redis::cmd("FUNCTION").arg("LIST").query(&mut server.connection()).unwrap();
    assert!(libraries.is_empty(), "flushed");

    let verdicts = store.observe(std::slice::from_ref(&o), now + 1).await.unwrap();
    assert!(matches!(verdicts[..], [Verdict::Duplicate(e)] if e.count == 2), "{verdicts:?}");
}
