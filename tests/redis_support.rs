//! Smoke tests of the real-Redis test support (`testkit/src/redis/`): standalone
//! kill/restart, Sentinel failover, Cluster routing, and the shared server.
//!
//! The support lives in the testkit crate (`testkit/src/redis/`), so this binary
//! does not depend on `support/mod.rs`.

use tidegate_testkit::redis as redis_support;

use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis_support::cluster::ClusterSetup;
use redis_support::report::register_memory_report;
use redis_support::sentinel::SentinelSetup;
use redis_support::{shared, RedisServer, ServerOptions};

fn ping(server: &RedisServer) -> redis::RedisResult<String> {
    let mut con = server.client().get_connection_with_timeout(Duration::from_secs(1))?;
    redis::cmd("PING").query(&mut con)
}

#[test]
fn standalone_set_get_kill_restart() {
    let started = Instant::now();
    // Started on a thread that exits right away: the server must survive it (children
    // are forked by the long-lived spawner thread, so PDEATHSIG does not fire).
    let server = thread::spawn(|| RedisServer::start(ServerOptions::default())).join().unwrap();
    assert!(server.is_running(), "server died with the thread that asked for it");

    let mut con = server.connection();
    let () = redis::cmd("SET").arg("smoke:k").arg("v").query(&mut con).unwrap();
    let got: String = redis::cmd("GET").arg("smoke:k").query(&mut con).unwrap();
    assert_eq!(got, "v");
    let info = server.info("memory");
    assert_eq!(info["maxmemory"], (16 * 1024 * 1024).to_string());
    assert_eq!(info["maxmemory_policy"], "noeviction");
    server.config_set("maxmemory", "32mb");
    assert_eq!(server.info("memory")["maxmemory"], (32 * 1024 * 1024).to_string());

    let port = server.port();
    server.kill();
    assert!(!server.is_running());
    assert!(ping(&server).is_err(), "PING answered after kill");

    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(ping(&server).unwrap(), "PONG");
    // No persistence: it comes back empty, with the original options (not CONFIG SET's).
    assert_eq!(server.dbsize(), 0);
    assert_eq!(server.info("memory")["maxmemory"], (16 * 1024 * 1024).to_string());

    let dir = server.dir().to_owned();
    drop(server);
    assert!(!dir.exists(), "temp dir left behind");
    eprintln!("standalone: {:?}", started.elapsed());
}

#[test]
fn sentinel_failover() {
    let started = Instant::now();
    let setup = SentinelSetup::start();
    let ready = started.elapsed();
    assert_eq!(setup.master_name(), "mymaster");
    assert_eq!(setup.sentinel_urls().len(), 3);
    let old = setup.primary_port();
    assert_eq!(setup.servers()[0].info("replication")["role"], "master");

    let killed_at = Instant::now();
    assert_eq!(setup.kill_primary(), old);
    let new = setup.wait_for_failover(Duration::from_secs(20));
    let failover = killed_at.elapsed();
    assert_ne!(new, old);
    assert_eq!(setup.primary_port(), new);
    let mut con = setup.primary().connection();
    let () = redis::cmd("SET").arg("smoke:after-failover").arg("1").query(&mut con).unwrap();
    eprintln!("sentinel: ready in {ready:?}, failover in {failover:?}, total {:?}", started.elapsed());
}

#[tokio::test]
async fn cluster_routes_hash_tags_to_all_nodes() {
    let started = Instant::now();
    let setup = ClusterSetup::start();
    let ready = started.elapsed();
    assert_eq!(setup.urls().len(), 3);

    let mut con = setup.client().get_async_connection().await.unwrap();
    let tags: Vec<String> = (0..20).map(|i| format!("{{tag{i}}}:key")).collect();
    for tag in &tags {
        let () = con.set(tag, tag.as_str()).await.unwrap();
    }
    for tag in &tags {
        let got: String = con.get(tag).await.unwrap();
        assert_eq!(&got, tag);
    }
    // The keys really were spread over the nodes, i.e. the client followed the slots.
    let sizes: Vec<u64> = setup.nodes().iter().map(RedisServer::dbsize).collect();
    assert_eq!(sizes.iter().sum::<u64>(), tags.len() as u64);
    assert!(sizes.iter().all(|&n| n > 0), "keys per node: {sizes:?}");
    eprintln!("cluster: ready in {ready:?}, total {:?}", started.elapsed());
}

#[test]
fn shared_server_is_reused() {
    let started = Instant::now();
    register_memory_report(&redis_support::FINGERPRINTS);
    let first = thread::spawn(|| shared().port()).join().unwrap();
    let a = shared();
    let b = shared();
    assert!(std::ptr::eq(a, b));
    assert_eq!(a.port(), first);
    // Still alive although the thread that started it has exited.
    assert_eq!(ping(a).unwrap(), "PONG");

    let mut con = a.connection();
    for i in 0..100 {
        let () = redis::cmd("SET").arg(format!("smoke:shared:{i}")).arg(i).query(&mut con).unwrap();
    }
    redis_support::FINGERPRINTS.fetch_add(100, Ordering::Relaxed);
    eprintln!("shared: {:?}", started.elapsed());
}
