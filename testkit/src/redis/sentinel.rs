//! A Sentinel setup: primary, replica and three sentinels.

use std::collections::HashMap;
use std::time::Duration;

use ::redis::RedisResult;

use super::*;

// ---------------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------------

/// A primary, one replica and three sentinels (quorum 2, down-after 1 s, failover
/// timeout 5 s) monitoring it as [`MASTER_NAME`]. Everything is killed on drop.
pub struct SentinelSetup {
    /// The initial primary, then the initial replica. Roles swap on failover.
    servers: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
    /// The primary as last seen: the initial one, then whatever `wait_for_failover` found.
    primary_port: AtomicU16,
}

impl SentinelSetup {
    /// Starts everything and waits until every sentinel knows the master, the replica
    /// (with a live link) and the two other sentinels, so a failover can start at once.
    pub fn start() -> SentinelSetup {
        Self::start_with(None)
    }

    /// The same, with every server and sentinel also serving `tls` on a TLS port,
    /// and replication, monitoring and the addresses sentinels hand out on TLS ports.
    /// The failover helpers below are for plain setups only.
    pub fn start_with(tls: Option<ServerTls>) -> SentinelSetup {
        let data = ServerOptions {
            tls: tls.clone(),
            extra_args: if tls.is_some() { vec!["--tls-replication".into(), "yes".into()] } else { Vec::new() },
            ..Default::default()
        };
        // The port everyone else is to use for a data server.
        let public = |s: &RedisServer| s.tls_port.unwrap_or(s.port);
        let primary = RedisServer::start(data.clone());
        let replica = RedisServer::start(ServerOptions { replica_of: Some(public(&primary)), ..data });
        // The replica must be attached before the sentinels start: a sentinel learns
        // replicas from the master's INFO, which it asks for on connect and then only
        // every 10 s.
        poll_until(CONVERGE_TIMEOUT, STATE_INTERVAL, || {
            try_info(replica.port, "replication")
                .ok()
                .filter(|i| i.get("master_link_status").map(String::as_str) == Some("up"))
        })
        .unwrap_or_else(|| panic!("replica never linked to the primary; replica log:\n{}", replica.log()));

        let body = format!(
            "bind 127.0.0.1\n\
             daemonize no\n\
             protected-mode no\n\
             logfile \"\"\n\
             sentinel resolve-hostnames no\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
             sentinel failover-timeout {MASTER_NAME} 5000\n",
            public(&primary)
        );
        let sentinels: Vec<RedisServer> =
            (0..3).map(|_| RedisServer::launch(Kind::Sentinel { body: body.clone(), tls: tls.clone() })).collect();
        let (primary_port, replica_port) = (public(&primary), public(&replica));
        let setup =
            SentinelSetup { primary_port: AtomicU16::new(primary.port), servers: vec![primary, replica], sentinels };
        for sentinel in &setup.sentinels {
            let ready = poll_until(CONVERGE_TIMEOUT, STATE_INTERVAL, || {
                sentinel_is_ready(sentinel.port, primary_port, replica_port).then_some(())
            });
            if ready.is_none() {
                panic!("{} never saw the whole setup; log:\n{}", sentinel.describe(), sentinel.log());
            }
        }
        setup
    }

    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// `redis://127.0.0.1:PORT` of each sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// `rediss://127.0.0.1:TLS_PORT` of each sentinel of a TLS setup.
    pub fn sentinel_tls_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::tls_url).collect()
    }

    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// Both data servers (initial primary first), e.g. to restart a killed primary.
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// The current primary's port: the initial one until [`Self::wait_for_failover`]
    /// has seen a new one.
    pub fn primary_port(&self) -> u16 {
        self.primary_port.load(Ordering::SeqCst)
    }

    pub fn primary(&self) -> &RedisServer {
        self.server(self.primary_port())
    }

    /// The data server on `port`.
    pub fn server(&self, port: u16) -> &RedisServer {
        self.servers.iter().find(|s| s.port == port).unwrap_or_else(|| panic!("no server on port {port}"))
    }

    /// SIGKILLs the current primary; returns its port.
    pub fn kill_primary(&self) -> u16 {
        let primary = self.primary();
        primary.kill();
        primary.port
    }

    /// Polls the sentinels until every one that answers (at least two) reports the same
    /// master address, different from the primary before, and that server answers
    /// `ROLE` with `master`. Returns its port and remembers it as the primary.
    /// Waiting for all sentinels (not just the leader) matters because clients ask
    /// whichever sentinel they reach first.
    pub fn wait_for_failover(&self, timeout: Duration) -> u16 {
        let old = self.primary_port();
        let found = poll_until(timeout, STATE_INTERVAL, || {
            let views: Vec<u16> = self.sentinels.iter().filter_map(|s| master_addr(s.port).ok().flatten()).collect();
            let new = *views.first()?;
            let agreed = views.len() >= 2 && views.iter().all(|&p| p == new);
            (agreed && new != old && role(new).as_deref() == Some("master")).then_some(new)
        });
        match found {
            Some(new) => {
                self.primary_port.store(new, Ordering::SeqCst);
                new
            }
            None => {
                let mut diag = String::new();
                for s in &self.sentinels {
                    let view = master_addr(s.port);
                    let log = s.log();
                    let tail = tail(&log, 3000);
                    diag.push_str(&format!("\n--- sentinel {} says {view:?}; log tail:\n{tail}", s.port));
                }
                panic!("no failover away from port {old} within {timeout:?}{diag}");
            }
        }
    }
}

/// Whether the sentinel on `port` reports `primary` as master, knows `replica` with an
/// up link, and knows the two other sentinels.
fn sentinel_is_ready(port: u16, primary: u16, replica: u16) -> bool {
    let Ok(mut con) = connect(port) else { return false };
    let addr: RedisResult<Option<Vec<String>>> =
        ::redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(MASTER_NAME).query(&mut con);
    if addr.ok().flatten().and_then(|a| a.get(1)?.parse::<u16>().ok()) != Some(primary) {
        return false;
    }
    let replicas: RedisResult<Vec<HashMap<String, String>>> =
        ::redis::cmd("SENTINEL").arg("replicas").arg(MASTER_NAME).query(&mut con);
    let replica_ok = replicas.unwrap_or_default().iter().any(|r| {
        let field = |k: &str| r.get(k).map(String::as_str).unwrap_or("");
        field("port") == replica.to_string()
            && field("master-link-status") == "ok"
            && !field("flags").contains("down")
            && !field("flags").contains("disconnected")
    });
    let master: RedisResult<HashMap<String, String>> =
        ::redis::cmd("SENTINEL").arg("master").arg(MASTER_NAME).query(&mut con);
    let others = master.ok().and_then(|m| m.get("num-other-sentinels")?.parse::<u32>().ok());
    replica_ok && others == Some(2)
}

/// The master port a sentinel reports, if it answers.
fn master_addr(sentinel: u16) -> RedisResult<Option<u16>> {
    let mut con = connect(sentinel)?;
    let addr: Option<Vec<String>> =
        ::redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(MASTER_NAME).query(&mut con)?;
    Ok(addr.and_then(|a| a.get(1)?.parse().ok()))
}

/// The first element of `ROLE` (`master`, `slave`, `sentinel`), if the server answers.
fn role(port: u16) -> Option<String> {
    let mut con = connect(port).ok()?;
    let reply: Vec<Value> = ::redis::cmd("ROLE").query(&mut con).ok()?;
    ::redis::from_redis_value_ref(reply.first()?).ok()
}

// ---------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------
