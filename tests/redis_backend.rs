//! The Redis backend through real `redis-server`s started by this test binary:
//! the key schema on the wire, webhooks over HTTP, and what happens when Redis is
//! down, full or slow. Tests share one 16 MB `noeviction` server under prefixes of
//! their own; tests that break a server start a dedicated one.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Commands;
use serde_json::Value;
use support::redis::{shared, RedisServer, ServerOptions, FINGERPRINTS};
use support::{alert, eventually, occurrences, start_with, tally, unique_prefix, webhook, Gateway};
use tidegate::signal::{Fingerprint, SignalStatus, TargetResource};
use tidegate::state::redis::{RedisConfig, RedisStore};
use tidegate::state::{Observation, StateError, StateStore, Verdict};
use tidegate::telemetry::Metrics;

async fn store(url: &str, prefix: &str, window: Duration) -> RedisStore {
    let config = RedisConfig {
        prefix: prefix.to_string(),
        timeout: Duration::from_millis(500),
        monitor_interval: Duration::from_secs(1),
        ..Default::default()
    };
    let storms = tidegate::state::StormConfig::default();
    RedisStore::connect(&url.parse().unwrap(), &config, window, &storms, Arc::new(Metrics::new())).await.unwrap()
}

fn fire(case: &str, n: u32) -> Observation {
    let target =
        TargetResource { kind: "Pod".into(), name: format!("p{n}"), namespace: "ns".into(), cluster: String::new() };
    Observation { fingerprint: Fingerprint::new(case, "ns", &target), status: SignalStatus::Firing, storm: None }
}

fn now_s() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as u32
}

/// A gateway using `url` as its state, under a prefix of its own (or `prefix`).
async fn gateway(url: &str, prefix: Option<String>, tweak: impl FnOnce(&mut tidegate::config::Config)) -> Gateway {
    support::redis::report::register_memory_report(&FINGERPRINTS);
    let url = url.to_string();
    start_with(move |c| {
        support::on_redis(c, &url);
        if let Some(prefix) = prefix {
            c.redis.prefix = prefix;
        }
        tweak(c);
    })
    .await
}

/// Records `n` distinct firing fingerprints on the shared server, under a prefix of
/// their own, which it returns.
async fn record_fingerprints(case: &str, n: u32) -> String {
    let prefix = unique_prefix();
    let store = store(&shared().url(), &prefix, Duration::from_secs(300)).await;
    let batch: Vec<_> = (0..n).map(|i| fire(case, i)).collect();
    store.observe(&batch, now_s()).await.unwrap();
    FINGERPRINTS.fetch_add(n as u64, Ordering::Relaxed);
    prefix
}

fn keys(server: &RedisServer, prefix: &str) -> Vec<String> {
    let mut conn = server.connection();
    let keys: Vec<String> = conn.scan_match(format!("{prefix}*")).unwrap().map(|k| k.unwrap()).collect();
    keys
}

#[tokio::test]
async fn every_key_lives_under_the_prefix_and_has_a_ttl() {
    let server = shared();
    let prefix = record_fingerprints("ttl", 2000).await;

    let keys = keys(server, &prefix);
    assert!(!keys.is_empty());
    let mut conn = server.connection();
    for key in &keys {
        let ttl: i64 = conn.ttl(key).unwrap();
        assert!((1..=601).contains(&ttl), "{key} has TTL {ttl}");
        assert!(key.starts_with(&format!("{prefix}d:{{")), "{key}");
    }
}

#[tokio::test]
async fn entries_are_twelve_byte_values_in_listpack_hashes() {
    let server = shared();
    let prefix = record_fingerprints("listpack", 500).await;

    let mut conn = server.connection();
    let mut fields = 0;
    for key in keys(server, &prefix) {
        let encoding: String = redis::cmd("OBJECT").arg("ENCODING").arg(&key).query(&mut conn).unwrap();
        assert_eq!(encoding, "listpack", "{key}");
        let entries: HashMap<Vec<u8>, Vec<u8>> = conn.hgetall(&key).unwrap();
        for (field, value) in &entries {
            assert_eq!((field.len(), value.len()), (8, 12), "{key}: a fingerprint is 8 + 12 bytes, never a document");
        }
        fields += entries.len();
    }
    assert_eq!(fields, 500);
}

#[tokio::test]
async fn keys_expire_by_themselves_once_nothing_in_them_can_be_live() {
    let server = shared();
    let prefix = unique_prefix();
    let store = store(&server.url(), &prefix, Duration::from_secs(1)).await;
    store.observe(&[fire("expire", 0), fire("expire", 1)], now_s()).await.unwrap();
    assert!(!keys(server, &prefix).is_empty());
    // A 1 s window: every key is gone within three seconds, with no cleanup by us.
    support::eventually_within("keys to expire by their TTL", Duration::from_secs(6), || async {
        keys(server, &prefix).is_empty()
    })
    .await;
}

#[tokio::test]
async fn gauges_report_redis_memory_and_fingerprints() {
    let server = shared();
    let gw = gateway(&server.url(), None, |c| c.redis.monitor_interval = Duration::from_secs(1)).await;
    // Ten namespaces, so that no storm folds any of them.
    let alerts: Vec<Value> = (0..10).map(|n| alert("Gauges", &format!("ns{n}"), "p0")).collect();
    assert_eq!(gw.alerts(&webhook(alerts)).await.status(), 207);
    FINGERPRINTS.fetch_add(10, Ordering::Relaxed);
    eventually("the monitor to count the fingerprints", || async { gw.metric("tidegate_state_entries").await == 10.0 })
        .await;
    assert!(gw.metric("tidegate_redis_used_memory_bytes").await > 0.0);
    assert_eq!(gw.metric("tidegate_redis_maxmemory_bytes").await, 16.0 * 1024.0 * 1024.0);
    assert!(gw.metric("tidegate_redis_keys").await >= 1.0);
}

#[tokio::test]
async fn fifty_concurrent_alerts_over_redis_make_one_request_counting_fifty() {
    let mut gw = gateway(&shared().url(), None, |_| {}).await;
    let hook = webhook(vec![alert("HighMemory", "shop", "web-0")]);
    let responses = futures::future::join_all((0..50).map(|_| gw.alerts(&hook))).await;
    FINGERPRINTS.fetch_add(1, Ordering::Relaxed);
    assert_eq!(tally(&responses), [(201, 1), (202, 49)].into());
    gw.stop().await;
    assert_eq!(occurrences(&gw.only_request()), 50);
}

#[tokio::test]
async fn replicas_sharing_redis_create_one_request() {
    let prefix = unique_prefix();
    let mut a = gateway(&shared().url(), Some(prefix.clone()), |_| {}).await;
    let dir = a.dir.path().to_path_buf();
    let mut b = gateway(&shared().url(), Some(prefix), |c| c.sink = tidegate::config::SinkTarget::Dir(dir)).await;
    let hook = webhook(vec![alert("HighMemory", "shop", "web-0")]);
    let sends = (0..20).map(|i| if i % 2 == 0 { a.alerts(&hook) } else { b.alerts(&hook) });
    let responses = futures::future::join_all(sends).await;
    FINGERPRINTS.fetch_add(1, Ordering::Relaxed);
    assert_eq!(responses.iter().filter(|r| r.status() == 201).count(), 1);
    a.stop().await;
    b.stop().await;
    assert_eq!(occurrences(&a.only_request()), 20);
}

#[tokio::test]
async fn redis_outage_is_503_with_retry_after_then_recovers_without_restart() {
    let server = RedisServer::start(ServerOptions::default());
    let gw = gateway(&server.url(), None, |_| {}).await;
    let hook = webhook(vec![alert("HighMemory", "shop", "web-0")]);
    assert_eq!(gw.alerts(&hook).await.status(), 201);

    server.kill();
    let resp = gw.alerts(&hook).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_eq!(gw.get("/readyz").await.status(), 503);
    assert!(gw.metric(r#"tidegate_state_errors_total{reason="unavailable"}"#).await >= 1.0);

    server.restart(); // empty: --save "" keeps nothing
    eventually("readiness to return", || async { gw.get("/readyz").await.status() == 200 }).await;
    let resp = gw.alerts(&hook).await;
    assert!(resp.status().is_success(), "{}", resp.status());
}

#[tokio::test]
async fn redis_out_of_memory_is_503_and_not_ready_until_there_is_room() {
    let server = RedisServer::start(ServerOptions { maxmemory: "2mb".into(), ..ServerOptions::default() });
    let gw = gateway(&server.url(), None, |_| {}).await;
    assert_eq!(gw.get("/readyz").await.status(), 200);
    // Fill the server to its limit with someone else's data.
    let mut conn = server.connection();
    let blob = vec![b'x'; 16 * 1024];
    for i in 0.. {
        let set: redis::RedisResult<()> = conn.set(format!("ballast:{i}"), &blob);
        if set.is_err() {
            break;
        }
    }
    let resp = gw.alerts(&webhook(vec![alert("HighMemory", "shop", "web-0")])).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let text = gw.get("/metrics").await.text().await.unwrap();
    assert!(text.contains(r#"tidegate_state_errors_total{reason="oom"} 1"#), "{text}");
    assert_eq!(gw.get("/readyz").await.status(), 503);

    let _: () = redis::cmd("FLUSHDB").query(&mut conn).unwrap(); // our own dedicated server
    eventually("readiness to return", || async { gw.get("/readyz").await.status() == 200 }).await;
    assert_eq!(gw.alerts(&webhook(vec![alert("HighMemory", "shop", "web-0")])).await.status(), 201);
}

#[tokio::test]
async fn slow_redis_is_503_after_the_timeout() {
    let server = RedisServer::start(ServerOptions::default());
    let prefix = unique_prefix();
    let store = store(&server.url(), &prefix, Duration::from_secs(300)).await;
    let mut conn = server.connection();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(3000).arg("WRITE").query(&mut conn).unwrap();
    let started = tokio::time::Instant::now();
    let err = store.observe(&[fire("slow", 0)], now_s()).await.unwrap_err();
    assert!(matches!(err, StateError::Timeout(d) if d == Duration::from_millis(500)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let _: () = redis::cmd("CLIENT").arg("UNPAUSE").query(&mut conn).unwrap();
    let v = store.observe(&[fire("slow", 0)], now_s()).await.unwrap();
    assert!(matches!(v[0], Verdict::New(_) | Verdict::Duplicate(_)));
}

#[tokio::test]
async fn allkeys_eviction_and_unbounded_memory_are_reported_at_start() {
    let lru = RedisServer::start(ServerOptions { maxmemory_policy: "allkeys-lru".into(), ..ServerOptions::default() });
    let store = store(&lru.url(), &unique_prefix(), Duration::from_secs(300)).await;
    assert_eq!(store.warnings().len(), 1);
    assert!(store.warnings()[0].contains("allkeys-lru"), "{:?}", store.warnings());
    lru.config_set("maxmemory", "0");
    let store = self::store(&lru.url(), &unique_prefix(), Duration::from_secs(300)).await;
    assert_eq!(store.warnings().len(), 2, "{:?}", store.warnings());
    let safe = self::store(&shared().url(), &unique_prefix(), Duration::from_secs(300)).await;
    assert!(safe.warnings().is_empty(), "{:?}", safe.warnings());
}

#[tokio::test]
async fn window_expiry_over_redis_follows_the_gateway_clock() {
    let mut gw = gateway(&shared().url(), None, |c| c.dedup.window = Duration::from_secs(60)).await;
    let hook = webhook(vec![alert("HighMemory", "shop", "web-0")]);
    FINGERPRINTS.fetch_add(1, Ordering::Relaxed);
    assert_eq!(gw.alerts(&hook).await.status(), 201);
    gw.clock.advance(Duration::from_secs(59));
    assert_eq!(gw.alerts(&hook).await.status(), 202);
    gw.clock.advance(Duration::from_secs(60));
    assert_eq!(gw.alerts(&hook).await.status(), 201);
    gw.stop().await;
    assert_eq!(gw.manifests().len(), 2);
}
