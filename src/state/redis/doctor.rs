//! `tidegate doctor`'s Redis checks: reachability, the memory settings that decide
//! whether an open incident can be evicted, what a restart loses, latency against
//! `redis.timeout`, and headroom for a given load.
//!
//! They read and never write: `INFO`, `CONFIG GET` and `PING` only.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::connection::{Connection, Topology};
use super::info;
use super::{risks, RedisConfig};
use crate::capacity::Load;
use crate::check::Check;

/// PINGs for the latency check.
const PINGS: usize = 20;

/// Connects, then looks at the memory settings, persistence, latency and headroom.
pub async fn checks(topology: &Topology, config: &RedisConfig, load: Option<Load>) -> Vec<Check> {
    const HEADROOM: &str = "redis headroom";
    let (conn, reached) = match redis_connect(topology, config).await {
        Ok(connected) => connected,
        Err(failed) => {
            let later = ["redis policy", "redis persistence", "redis latency", HEADROOM];
            let mut checks = vec![failed];
            checks.extend(later.map(|name| Check::skip(name, "Redis is not reachable")));
            return checks;
        }
    };
    vec![
        reached,
        redis_policy(&conn).await,
        redis_persistence(&conn).await,
        redis_latency(&conn, config.timeout).await,
        match load {
            Some(load) => redis_headroom(&conn, load).await,
            None => Check::skip(HEADROOM, "give --incidents N (distinct incidents per dedup window) to check"),
        },
    ]
}

async fn redis_connect(topology: &Topology, config: &RedisConfig) -> Result<(Connection, Check), Check> {
    const NAME: &str = "redis";
    let certs = config.tls.load().map_err(|e| {
        Check::fail(NAME, e.to_string(), "point redis.tls.* at readable PEM files, or unset them for the system's CAs")
    })?;
    let unreachable = |e: redis::RedisError| {
        Check::fail(
            NAME,
            format!("cannot reach {topology}: {e}"),
            "start Redis, or correct `state` (TIDEGATE_STATE): host, port, password, and rediss:// with redis.tls.* \
             for TLS",
        )
    };
    let conn = Connection::open(topology, config.timeout, certs.as_ref()).await.map_err(unreachable)?;
    let servers = info::each_primary(&conn, "server").await.map_err(unreachable)?;
    let versions: Vec<&str> = servers.iter().filter_map(|s| s.get("redis_version")).collect();
    let primaries = match servers.len() {
        1 => "1 primary".to_string(),
        n => format!("{n} primaries"),
    };
    let detail = format!("{topology}: {primaries}, Redis {}", versions.join(", "));
    Ok((conn, Check::ok(NAME, detail)))
}

/// `maxmemory` set and a policy that never evicts an open incident's key: the
/// gateway's own start-up warning ([`risks`]), as a failure.
async fn redis_policy(conn: &Connection) -> Check {
    const NAME: &str = "redis policy";
    let infos = match info::each_primary(conn, "memory").await {
        Ok(infos) => infos,
        Err(e) => return Check::fail(NAME, format!("cannot read INFO memory: {e}"), "allow INFO to tidegate's user"),
    };
    let mut seen = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for info in &infos {
        let policy = info.get("maxmemory_policy").unwrap_or("");
        let maxmemory = info.count("maxmemory");
        seen.push(format!("maxmemory {} ({policy})", bytes(maxmemory)));
        for risk in risks(policy, maxmemory) {
            if !problems.contains(&risk) {
                problems.push(risk);
            }
        }
    }
    if problems.is_empty() {
        return Check::ok(NAME, seen.join(", "));
    }
    Check::fail(
        NAME,
        format!("{}: {}", seen.join(", "), problems.join(" ")),
        "in redis.conf, and live with CONFIG SET: maxmemory-policy noeviction, and maxmemory as docs/redis.md \
         sizes it (tidegate capacity --incidents N)",
    )
}

/// What a Redis restart loses, from `appendonly` and `save`.
async fn redis_persistence(conn: &Connection) -> Check {
    const NAME: &str = "redis persistence";
    let get = redis::cmd("CONFIG").arg("GET").arg("appendonly").arg("save").clone();
    let settings: Vec<HashMap<String, String>> = match conn.query_each_primary(&get).await {
        Ok(settings) => settings,
        Err(e) => {
            return Check::info(NAME, format!("cannot read CONFIG ({e}): what a restart loses is unknown"));
        }
    };
    let aof = settings.iter().all(|s| s.get("appendonly").is_some_and(|v| v == "yes"));
    let save: Vec<&str> = settings.iter().filter_map(|s| s.get("save").map(String::as_str)).collect();
    let snapshots = save.iter().all(|s| !s.is_empty());
    let loses = match (aof, snapshots) {
        (true, _) => "a restart loses at most the last second of writes",
        (false, true) => "a restart loses the writes since the last snapshot",
        (false, false) => "a restart empties Redis",
    };
    Check::info(
        NAME,
        format!(
            "appendonly {}, save \"{}\": {loses} (dedup counts, storm windows, rate limits); the sink still \
             holds every open incident, so none gets a second request",
            if aof { "yes" } else { "no" },
            save.join("\" / \"")
        ),
    )
}

/// Median and slowest of [`PINGS`] round trips, against `redis.timeout`.
async fn redis_latency(conn: &Connection, timeout: Duration) -> Check {
    const NAME: &str = "redis latency";
    let mut times = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let started = Instant::now();
        let ping = conn.query::<String>(&redis::cmd("PING")).await;
        if let Err(e) = ping {
            return Check::fail(
                NAME,
                format!("PING failed: {e}"),
                format!("Redis must answer within redis.timeout ({timeout:?}): check its load and the network"),
            );
        }
        times.push(started.elapsed());
    }
    times.sort();
    let (median, max) = (times[PINGS / 2], times[PINGS - 1]);
    let detail = format!("{PINGS} PINGs: median {median:.1?}, max {max:.1?}; redis.timeout {timeout:?}");
    if median * 2 >= timeout {
        return Check::fail(
            NAME,
            detail,
            "a webhook costs at least one round trip: bring Redis closer (same zone) or raise redis.timeout",
        );
    }
    if max * 4 >= timeout {
        return Check::warn(
            NAME,
            detail,
            "the slowest round trips come near redis.timeout, past which alerts are answered 503: check Redis' \
             load and the network, or raise redis.timeout",
        );
    }
    Check::ok(NAME, detail)
}

/// `maxmemory` (summed over Cluster primaries) against what `load` needs at the
/// worst, as `tidegate capacity` figures it.
async fn redis_headroom(conn: &Connection, load: Load) -> Check {
    const NAME: &str = "redis headroom";
    let infos = match info::each_primary(conn, "memory").await {
        Ok(infos) => infos,
        Err(e) => return Check::fail(NAME, format!("cannot read INFO memory: {e}"), "allow INFO to tidegate's user"),
    };
    let sum = |key| infos.iter().map(|i| i.count(key)).sum::<u64>();
    let (maxmemory, used) = (sum("maxmemory"), sum("used_memory"));
    let plan = load.plan();
    let worst = plan.redis_used.ceil() as u64;
    let detail = format!(
        "{} incidents, {} storm scopes, {} sources need {} at the worst; maxmemory {}, used {}",
        load.incidents,
        load.storm_scopes,
        load.sources,
        bytes(worst),
        bytes(maxmemory),
        bytes(used)
    );
    let fix = format!(
        "set maxmemory to {} (CONFIG SET maxmemory {}, and in redis.conf), as `tidegate capacity` advises",
        bytes(plan.redis_maxmemory),
        plan.redis_maxmemory
    );
    if maxmemory == 0 {
        return Check::warn(NAME, format!("{detail} (unbounded)"), fix);
    }
    if maxmemory < worst {
        return Check::fail(NAME, detail, fix);
    }
    if maxmemory < 2 * worst {
        return Check::warn(NAME, format!("{detail}: less than twice the worst case"), fix);
    }
    Check::ok(NAME, detail)
}

/// Bytes, in the largest binary unit that keeps one decimal meaningful.
fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / (1u64 << 10) as f64),
        n => format!("{n} B"),
    }
}
