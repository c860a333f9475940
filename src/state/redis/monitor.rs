//! Watching Redis from the side: eviction policy at start-up, and memory and key
//! gauges on an interval (never per request).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::{AsyncCommands, RedisResult};

use super::connection::{Connection, Handle};
use super::Shared;
use crate::telemetry::Metrics;

/// Reads `maxmemory` and `maxmemory-policy` and says what is risky about them:
/// a policy that can silently evict dedup state, or no memory bound at all.
pub async fn eviction_warnings(conn: &Connection) -> Vec<String> {
    let settings: RedisResult<HashMap<String, String>> = async {
        let mut out = HashMap::new();
        for key in ["maxmemory", "maxmemory-policy"] {
            let pair: HashMap<String, String> = match conn.handle() {
                Handle::Single(mut c) => redis::cmd("CONFIG").arg("GET").arg(key).query_async(&mut c).await?,
                Handle::Cluster(mut c) => redis::cmd("CONFIG").arg("GET").arg(key).query_async(&mut c).await?,
            };
            out.extend(pair);
        }
        Ok(out)
    }
    .await;
    match settings {
        Ok(settings) => {
            let policy = settings.get("maxmemory-policy").map(String::as_str).unwrap_or("");
            let maxmemory = settings
                .get("maxmemory")
                .and_then(|m| m.parse::<u64>().ok())
                .unwrap_or(0);
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

/// Whether Redis is at its memory limit.
pub async fn is_full(conn: &Connection) -> RedisResult<bool> {
    let info = memory_info(conn).await?;
    let used = info.get("used_memory").copied().unwrap_or(0.0);
    let max = info.get("maxmemory").copied().unwrap_or(0.0);
    Ok(max > 0.0 && used >= max)
}

async fn memory_info(conn: &Connection) -> RedisResult<HashMap<String, f64>> {
    let text: String = match conn.handle() {
        Handle::Single(mut c) => redis::cmd("INFO").arg("memory").query_async(&mut c).await?,
        Handle::Cluster(mut c) => redis::cmd("INFO").arg("memory").query_async(&mut c).await?,
    };
    Ok(parse_info(&text))
}

/// Parses the numeric `key:value` lines of `INFO`.
pub fn parse_info(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter_map(|line| {
            let (k, v) = line.trim().split_once(':')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
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

async fn refresh(shared: &Shared, metrics: &Metrics) -> RedisResult<()> {
    let info = memory_info(&shared.conn).await?;
    let get = |k: &str| info.get(k).copied().unwrap_or(0.0);
    metrics.redis_used_memory.set(get("used_memory") as i64);
    metrics.redis_maxmemory.set(get("maxmemory") as i64);
    metrics.redis_fragmentation.set(get("mem_fragmentation_ratio"));
    if let Handle::Single(mut conn) = shared.conn.handle() {
        let (keys, fields) = count(&mut conn, &shared.schema.pattern()).await?;
        metrics.redis_keys.set(keys as i64);
        shared.entries.store(fields, Ordering::Relaxed);
    }
    Ok(())
}

/// Counts tidegate's keys and the fingerprints in them with SCAN and HLEN.
pub async fn count(conn: &mut redis::aio::ConnectionManager, pattern: &str) -> RedisResult<(u64, u64)> {
    let keys: Vec<String> = {
        let mut iter = conn.scan_match::<_, String>(pattern).await?;
        let mut keys = Vec::new();
        while let Some(key) = futures::StreamExt::next(&mut iter).await {
            keys.push(key?);
        }
        keys
    };
    let mut fields = 0;
    for chunk in keys.chunks(1000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("HLEN").arg(key);
        }
        let lens: Vec<u64> = pipe.query_async(conn).await?;
        fields += lens.iter().sum::<u64>();
    }
    Ok((keys.len() as u64, fields))
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
