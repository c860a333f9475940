//! Redis through Sentinel: who is primary, and waiting until the setup is whole

use super::*;

pub(crate) fn redis_con(port: u16) -> Option<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let con = client.get_connection_with_timeout(Duration::from_secs(1)).ok()?;
    con.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    con.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    Some(con)
}

/// The primary every answering sentinel (at least two) names.
pub(crate) fn sentinels_primary(setup: &SentinelSetup) -> Option<u16> {
    let mut views = Vec::new();
    for s in setup.sentinels() {
        let Some(mut con) = redis_con(s.port()) else { continue };
        let addr: Option<Vec<String>> =
            redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(MASTER_NAME).query(&mut con).ok().flatten();
        if let Some(port) = addr.and_then(|a| a.get(1)?.parse::<u16>().ok()) {
            views.push(port);
        }
    }
    let first = *views.first()?;
    (views.len() >= 2 && views.iter().all(|&p| p == first)).then_some(first)
}

/// `INFO replication` of a data server, as a map.
pub(crate) fn replication(port: u16) -> Option<HashMap<String, String>> {
    let mut con = redis_con(port)?;
    let text: String = redis::cmd("INFO").arg("replication").query(&mut con).ok()?;
    Some(text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_owned(), v.trim().to_owned())).collect())
}

/// Waits until the sentinels agree on a primary that says it is one, whose replica
/// is linked to it. A primary the sentinels name that came back as a replica (a
/// server restarted with its original `--replicaof`) is made a primary again, as it
/// was before it died. Returns the primary's port.
pub(crate) fn converge(setup: &SentinelSetup) -> u16 {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        if let Some(primary) = sentinels_primary(setup) {
            let role = replication(primary).and_then(|i| i.get("role").cloned());
            if role.as_deref() == Some("slave") {
                if let Some(mut con) = redis_con(primary) {
                    let _: redis::RedisResult<()> = redis::cmd("REPLICAOF").arg("NO").arg("ONE").query(&mut con);
                }
            }
            let other = setup.servers().iter().map(|s| s.port()).find(|&p| p != primary).expect("two servers");
            let linked = replication(other).is_some_and(|i| {
                i.get("role").map(String::as_str) == Some("slave")
                    && i.get("master_port").map(String::as_str) == Some(&primary.to_string())
                    && i.get("master_link_status").map(String::as_str) == Some("up")
            });
            if role.as_deref() == Some("master") && linked {
                return primary;
            }
        }
        if Instant::now() > deadline {
            let mut diag = String::new();
            for s in setup.servers() {
                let _ =
                    write!(diag, "\n--- {}: {:?}\n{}", s.port(), replication(s.port()), process::tail(&s.log(), 1500));
            }
            for s in setup.sentinels() {
                let _ = write!(diag, "\n--- sentinel {}:\n{}", s.port(), process::tail(&s.log(), 1500));
            }
            panic!("Redis did not settle on one primary with a linked replica within {CONVERGE_TIMEOUT:?}{diag}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the sentinels name a primary other than `old` that says it is one.
pub(crate) fn wait_new_primary(setup: &SentinelSetup, old: u16) -> u16 {
    new_primary_within(setup, old, CONVERGE_TIMEOUT)
        .unwrap_or_else(|| panic!("no failover away from {old} within {CONVERGE_TIMEOUT:?}"))
}

/// The primary other than `old` the sentinels name and that says it is one, once
/// there is one within `timeout`.
pub(crate) fn new_primary_within(setup: &SentinelSetup, old: u16, timeout: Duration) -> Option<u16> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(p) = sentinels_primary(setup).filter(|&p| p != old) {
            if replication(p).and_then(|i| i.get("role").cloned()).as_deref() == Some("master") {
                return Some(p);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
