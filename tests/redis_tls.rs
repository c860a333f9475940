//! Redis over TLS (`rediss://`): tidegate checks the server's certificate against
//! `redis.tls.ca_file` and presents `redis.tls.cert_file` when Redis asks for a
//! client certificate. The servers are real redis-servers with a TLS port of their
//! own; the harness inspects them over their plain port.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Commands;
use serde_json::Value;
use support::redis::cluster::ClusterSetup;
use support::redis::sentinel::SentinelSetup;
use support::redis::{RedisServer, ServerOptions, MASTER_NAME};
use support::tls::Pki;
use support::{alert, start_with, unique_prefix, webhook, Gateway};
use tidegate::config::StateBackend;
use tidegate::signal::{Fingerprint, SignalStatus, TargetResource};
use tidegate::state::redis::connection::TlsFiles;
use tidegate::state::redis::{RedisConfig, RedisStore};
use tidegate::state::{Observation, StateError, StateStore, Verdict};
use tidegate::telemetry::Metrics;

fn tls_server(pki: &Pki, require_client_cert: bool) -> RedisServer {
    RedisServer::start(ServerOptions { tls: Some(pki.server(require_client_cert)), ..Default::default() })
}

async fn connect(url: &str, tls: TlsFiles) -> Result<RedisStore, StateError> {
    let config = RedisConfig {
        prefix: unique_prefix(),
        timeout: Duration::from_secs(2),
        monitor_interval: Duration::from_secs(3600),
        tls,
    };
    let (window, storms) = (Duration::from_secs(300), tidegate::state::StormConfig::default());
    RedisStore::connect(&url.parse().unwrap(), &config, window, &storms, Arc::new(Metrics::new())).await
}

/// A gateway whose state is the TLS Redis at `url`, trusting `pki`'s CA, under a
/// prefix of its own (returned with it).
async fn gateway(url: String, pki: &Pki) -> (Gateway, String) {
    let prefix = unique_prefix();
    let ca = pki.ca.clone();
    let gw = start_with({
        let prefix = prefix.clone();
        move |c| {
            c.state = StateBackend::Redis(url.parse().unwrap());
            c.redis.prefix = prefix;
            c.redis.tls.ca_file = Some(ca);
            c.redis.monitor_interval = Duration::from_secs(1);
        }
    })
    .await;
    (gw, prefix)
}

/// Two alerts, twice: created, then duplicates; and their state is in `redis`
/// (inspected over its plain port) under `prefix`.
async fn dedups_into(gw: &Gateway, redis: &RedisServer, prefix: &str) {
    let body = webhook(vec![alert("TlsAlert", "prod", "p0"), alert("TlsAlert", "prod", "p1")]);
    let first: Value = gw.alerts(&body).await.json().await.unwrap();
    assert_eq!(first["summary"]["created"], 2, "{first}");
    let second: Value = gw.alerts(&body).await.json().await.unwrap();
    assert_eq!(second["summary"]["duplicate"], 2, "{second}");
    let keys: Vec<String> = redis.connection().keys(format!("{prefix}*")).unwrap();
    assert!(keys.iter().any(|k| k.starts_with(&format!("{prefix}d:"))), "{keys:?}");
}

fn ca_only(pki: &Pki) -> TlsFiles {
    TlsFiles { ca_file: Some(pki.ca.clone()), ..Default::default() }
}

fn observation() -> Observation {
    let target =
        TargetResource { kind: "Pod".into(), name: "p0".into(), namespace: "ns".into(), cluster: String::new() };
    Observation { fingerprint: Fingerprint::new("TlsCase", "ns", &target), status: SignalStatus::Firing, storm: None }
}

fn now_s() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as u32
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_are_deduplicated_through_a_tls_redis() {
    let pki = Pki::generate();
    let server = tls_server(&pki, false);
    let (mut gw, prefix) = gateway(server.tls_url(), &pki).await;
    // Reached only through the server's TLS port.
    dedups_into(&gw, &server, &prefix).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_from_an_untrusted_ca_is_refused() {
    let pki = Pki::generate();
    let server = tls_server(&pki, false);
    let stranger = TlsFiles { ca_file: Some(pki.stranger_ca.clone()), ..Default::default() };
    let err = connect(&server.tls_url(), stranger).await.err().expect("a server signed by another CA");
    assert!(matches!(err, StateError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    // The system's trust store does not know the test CA either.
    assert!(connect(&server.tls_url(), TlsFiles::default()).await.is_err());
    // And the right CA works, so the refusals above were about trust.
    assert!(connect(&server.tls_url(), ca_only(&pki)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_demands_client_certificates_gets_ours() {
    let pki = Pki::generate();
    let server = tls_server(&pki, true);
    assert!(connect(&server.tls_url(), ca_only(&pki)).await.is_err(), "no client certificate, no connection");
    let mutual = TlsFiles {
        ca_file: Some(pki.ca.clone()),
        cert_file: Some(pki.client_cert.clone()),
        key_file: Some(pki.client_key.clone()),
    };
    let store = connect(&server.tls_url(), mutual).await.expect("mutual TLS");
    let verdicts = store.observe(&[observation()], now_s()).await.unwrap();
    assert!(matches!(verdicts[..], [Verdict::New(_)]), "{verdicts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_tls_files_are_named_at_start() {
    let missing = TlsFiles { ca_file: Some("/nonexistent/ca.pem".into()), ..Default::default() };
    let err = connect("rediss://127.0.0.1:1", missing).await.err().expect("a missing CA file");
    assert!(err.to_string().contains("redis.tls.ca_file /nonexistent/ca.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_cluster_is_used_through_its_tls_ports() {
    let pki = Pki::generate();
    let tls = pki.server(false);
    let cluster = tokio::task::spawn_blocking(move || ClusterSetup::start_with(Some(tls))).await.unwrap();
    let hosts: Vec<String> = cluster.tls_urls().iter().map(|u| u.trim_start_matches("rediss://").to_string()).collect();
    let (mut gw, _) = gateway(format!("rediss+cluster://{}", hosts.join(",")), &pki).await;
    // Ten namespaces: ten storm scopes, spread over the three primaries' slots.
    let alerts: Vec<Value> = (0..10).map(|n| alert("TlsClusterWide", &format!("ns{n}"), "p0")).collect();
    let first: Value = gw.alerts(&webhook(alerts.clone())).await.json().await.unwrap();
    assert_eq!(first["summary"]["created"], 10, "{first}");
    let second: Value = gw.alerts(&webhook(alerts)).await.json().await.unwrap();
    assert_eq!(second["summary"]["duplicate"], 10, "{second}");
    // The monitor reaches every primary directly, over TLS as well.
    support::eventually("the monitor to count fingerprints on every node", || async {
        gw.metric("tidegate_state_entries").await == 10.0
    })
    .await;
    gw.stop().await;
    tokio::task::spawn_blocking(move || drop(cluster)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_sentinel_setup_names_a_primary_reached_over_tls() {
    let pki = Pki::generate();
    let tls = pki.server(false);
    let setup = tokio::task::spawn_blocking(move || SentinelSetup::start_with(Some(tls))).await.unwrap();
    let hosts: Vec<String> =
        setup.sentinel_tls_urls().iter().map(|u| u.trim_start_matches("rediss://").to_string()).collect();
    let (mut gw, prefix) = gateway(format!("rediss+sentinel://{}/{MASTER_NAME}", hosts.join(",")), &pki).await;
    // Written to the primary, whose address the sentinels gave as its TLS port.
    dedups_into(&gw, setup.primary(), &prefix).await;
    gw.stop().await;
    tokio::task::spawn_blocking(move || drop(setup)).await.unwrap();
}
