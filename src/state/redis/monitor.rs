//! Watching Redis from the side: eviction policy at start-up, and memory and key
//! gauges on an interval (never per request).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::RedisResult;

use super::connection::{Connection, Handle};
use super::info::{self, Info};
use super::Shared;
use crate::telemetry::Metrics;

/// Reads `maxmemory` and `maxmemory-policy` and says what is risky about them:
/// a policy that can silently evict dedup state, or no memory bound at all.
pub async fn eviction_warnings(conn: &Connection) -> Vec<String> {
    // Redis 7 takes several parameters in one CONFIG GET.
    let get = redis::cmd("CONFIG").arg("GET").arg("maxmemory").arg("maxmemory-policy").clone();
    let settings: RedisResult<HashMap<String, String>> = conn.query(&get).await;
    match settings {
        Ok(settings) => {
            let policy = settings.get("maxmemory-policy").map(String::as_str).unwrap_or("");
            let maxmemory = settings.get("maxmemory").and_then(|m| m.parse::<u64>().ok()).unwrap_or(0);
            tracing::info!(policy, maxmemory, "Redis memory settings");
            risks(policy, maxmemory)
        }
        Err(e) => vec![format!(
            "cannot read Redis maxmemory settings ({e}); check by hand that maxmemory is set and \
             maxmemory-policy is noeviction or volatile-*"
        )],
    }
}

/// What is wrong with a memory configuration, if anything.
pub fn risks(policy: &str, maxmemory: u64) -> Vec<String> {
    let mut out = Vec::new();
    if policy.starts_with("allkeys-") {
        out.push(format!(
            "Redis maxmemory-policy is {policy}: Redis may evict dedup state silently, and an evicted \
             fingerprint becomes a second RemediationRequest. Use noeviction (tidegate then answers 503 and \
             the sender retries) or a volatile-* policy (every tidegate key has a TTL)."
        ));
    }
    if maxmemory == 0 {
        out.push(
            "Redis maxmemory is 0 (unbounded): Redis can grow until the machine runs out of memory. Set \
             maxmemory; docs/redis.md says how much a given load needs."
                .to_string(),
        );
    }
    out
}

/// Whether Redis (any primary, on Cluster) is at its memory limit.
pub async fn is_full(conn: &Connection) -> RedisResult<bool> {
    Ok(info::each_primary(conn, "memory").await?.iter().any(|info| {
        let max = info.count("maxmemory");
        max > 0 && info.count("used_memory") >= max
    }))
}

/// Whether a memory policy may evict any key, open incidents' included.
fn evicts_any_key(info: &Info) -> bool {
    info.get("maxmemory_policy").is_some_and(|policy| policy.starts_with("allkeys-"))
}

/// Refreshes the gauges every `interval` until the store is dropped.
pub async fn run(shared: Weak<Shared>, metrics: Arc<Metrics>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        if let Err(e) = refresh(&shared, &metrics).await {
            tracing::debug!(error = %e, "could not refresh Redis gauges");
        }
    }
}

/// Memory summed over primaries (fragmentation: the worst), keys and fingerprints
/// counted on each.
async fn refresh(shared: &Shared, metrics: &Metrics) -> RedisResult<()> {
    let infos = info::each_primary(&shared.conn, "memory").await?;
    let sum = |k: &str| infos.iter().map(|i| i.number(k)).sum::<f64>();
    metrics.redis_used_memory.set(sum("used_memory") as i64);
    metrics.redis_maxmemory.set(sum("maxmemory") as i64);
    let worst = infos.iter().map(|i| i.number("mem_fragmentation_ratio")).fold(0.0, f64::max);
    metrics.redis_fragmentation.set(worst);
    let risky = infos.iter().any(|i| evicts_any_key(i) || i.count("maxmemory") == 0);
    metrics.redis_memory_config_risky.set(risky as i64);
    let prefix = shared.schema.prefix();
    let (mut keys, mut fields) = (0, 0);
    match shared.conn.handle() {
        Handle::Single(mut c) => (keys, fields) = count(&mut c, prefix).await?,
        Handle::Cluster(_) => {
            for mut node in shared.conn.cluster_primaries().await? {
                let (k, f) = count(&mut node, prefix).await?;
                keys += k;
                fields += f;
            }
        }
    }
    metrics.redis_keys.set(keys as i64);
    shared.entries.store(fields, Ordering::Relaxed);
    Ok(())
}

/// Counts tidegate's keys (SCAN) and the fingerprints in its dedup hashes (HLEN).
pub async fn count(conn: &mut (impl ConnectionLike + Send), prefix: &str) -> RedisResult<(u64, u64)> {
    let pattern = format!("{prefix}*");
    let dedup = format!("{prefix}d:");
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query_async(conn).await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let total = keys.len() as u64;
    keys.retain(|k| k.starts_with(&dedup));
    let mut fields = 0;
    for chunk in keys.chunks(1000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("HLEN").arg(key);
        }
        let lens: Vec<u64> = pipe.query_async(conn).await?;
        fields += lens.iter().sum::<u64>();
    }
    Ok((total, fields))
}

#[cfg(test)]
mod tests {
    use super::risks;

    #[test]
    fn allkeys_policies_and_unbounded_memory_are_risks() {
        assert!(risks("noeviction", 16 << 20).is_empty());
        assert!(risks("volatile-lru", 16 << 20).is_empty());
        assert!(risks("allkeys-lru", 16 << 20)[0].contains("evict dedup state silently"));
        assert!(risks("noeviction", 0)[0].contains("unbounded"));
        assert_eq!(risks("allkeys-random", 0).len(), 2);
    }
}
