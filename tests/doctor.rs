//! `tidegate doctor` against the real systems it checks: real `redis-server`s with
//! good and bad memory settings, the real kube-apiserver with the shipped CRD and
//! RBAC and accounts with less, a port really in use and a directory really not
//! writable. Passing and failing cases alike; the binary itself runs for the exit
//! code and the printed lines.

mod support;

use std::fs::Permissions;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSONSchemaProps};
use kube::CustomResourceExt;
use support::kube::Kube;
use support::redis::cluster::ClusterSetup;
use support::redis::sentinel::SentinelSetup;
use support::redis::{RedisServer, ServerOptions};
use support::tls::Pki;
use tidegate::capacity::Load;
use tidegate::config::{Config, SinkTarget};
use tidegate::doctor::{self, Options, Outcome, Report};
use tidegate::remediation::RemediationRequest;
use tidegate::sink::kube::access::{self, Permission};

/// How long one Kubernetes check may take in these tests.
const BUDGET: Duration = Duration::from_secs(10);

/// `incidents`, with `tidegate capacity`'s default storm scopes and sources.
fn load(incidents: u64) -> Load {
    Load { incidents, storm_scopes: 100, sources: 100 }
}

fn redis(policy: &str) -> RedisServer {
    RedisServer::start(ServerOptions {
        maxmemory: "16mb".into(),
        maxmemory_policy: policy.into(),
        ..Default::default()
    })
}

/// A configuration whose listener and sink directory are good.
fn config(state: &str, sink: SinkTarget) -> Config {
    Config { listen: "127.0.0.1:0".parse().unwrap(), state: state.parse().unwrap(), sink, ..Config::default() }
}

fn outcome(report: &Report, name: &str) -> Outcome {
    report.get(name).unwrap_or_else(|| panic!("no {name:?} check in\n{report}")).outcome
}

fn fix<'a>(report: &'a Report, name: &str) -> &'a str {
    report.get(name).and_then(|c| c.fix.as_deref()).unwrap_or_else(|| panic!("no fix for {name:?} in\n{report}"))
}

fn detail<'a>(report: &'a Report, name: &str) -> &'a str {
    &report.get(name).unwrap_or_else(|| panic!("no {name:?} check in\n{report}")).detail
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------
// Redis and the host
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_good_redis_and_dir_config_passes_every_check() {
    let server = redis("noeviction");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&server.url(), SinkTarget::Dir(dir.path().into()));
    // Latency warns from a quarter of the timeout: out of reach of a busy test machine.
    config.redis.timeout = Duration::from_secs(5);
    let report = doctor::run(&config, &Options { load: Some(load(10_000)), kube_client: None }).await;

    assert!(!report.failed(), "{report}");
    for name in ["config", "listener", "sink dir", "redis", "redis policy", "redis latency", "redis headroom"] {
        assert_eq!(outcome(&report, name), Outcome::Ok, "{report}");
    }
    // `--save ""` and no AOF: said, not judged.
    assert_eq!(outcome(&report, "redis persistence"), Outcome::Info);
    assert!(detail(&report, "redis persistence").contains("a restart empties Redis"), "{report}");
    assert_eq!(outcome(&report, "kubernetes"), Outcome::Skip);
}

#[tokio::test]
async fn an_allkeys_policy_fails_with_the_fix() {
    let server = redis("allkeys-lru");
    let dir = tempfile::tempdir().unwrap();
    let report = doctor::run(&config(&server.url(), SinkTarget::Dir(dir.path().into())), &Options::default()).await;

    assert_eq!(outcome(&report, "redis policy"), Outcome::Fail, "{report}");
    assert!(detail(&report, "redis policy").contains("allkeys-lru"), "{report}");
    assert!(fix(&report, "redis policy").contains("maxmemory-policy noeviction"), "{report}");
    assert!(report.failed());
}

#[tokio::test]
async fn unbounded_redis_memory_fails() {
    let server = RedisServer::start(ServerOptions { maxmemory: "0".into(), ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let report = doctor::run(&config(&server.url(), SinkTarget::Dir(dir.path().into())), &Options::default()).await;

    assert_eq!(outcome(&report, "redis policy"), Outcome::Fail, "{report}");
    assert!(detail(&report, "redis policy").contains("unbounded"), "{report}");
}

#[tokio::test]
async fn unreachable_redis_fails_and_skips_what_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis://127.0.0.1:{}", closed_port());
    let report = doctor::run(&config(&url, SinkTarget::Dir(dir.path().into())), &Options::default()).await;

    assert_eq!(outcome(&report, "redis"), Outcome::Fail, "{report}");
    assert!(detail(&report, "redis").contains(&url), "{report}");
    assert!(fix(&report, "redis").contains("TIDEGATE_STATE"), "{report}");
    for name in ["redis policy", "redis persistence", "redis latency", "redis headroom"] {
        assert_eq!(outcome(&report, name), Outcome::Skip, "{report}");
    }
}

#[tokio::test]
async fn maxmemory_short_of_the_expected_incidents_fails() {
    let server = redis("noeviction");
    let dir = tempfile::tempdir().unwrap();
    let config = config(&server.url(), SinkTarget::Dir(dir.path().into()));
    // A million incidents per window need 57 MiB at the worst; the server has 16 MiB.
    let report = doctor::run(&config, &Options { load: Some(load(1_000_000)), kube_client: None }).await;

    assert_eq!(outcome(&report, "redis headroom"), Outcome::Fail, "{report}");
    assert!(fix(&report, "redis headroom").contains("CONFIG SET maxmemory 134217728"), "{report}");
}

#[tokio::test]
async fn a_tls_redis_is_reached_with_the_configured_ca_and_refused_with_another() {
    let pki = Pki::generate();
    let server = RedisServer::start(ServerOptions { tls: Some(pki.server(false)), ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&server.tls_url(), SinkTarget::Dir(dir.path().into()));
    config.redis.tls.ca_file = Some(pki.ca.clone());
    let trusted = doctor::run(&config, &Options::default()).await;
    config.redis.tls.ca_file = Some(pki.stranger_ca.clone());
    let untrusted = doctor::run(&config, &Options::default()).await;

    assert_eq!(outcome(&trusted, "redis"), Outcome::Ok, "{trusted}");
    assert_eq!(outcome(&trusted, "redis policy"), Outcome::Ok, "{trusted}");
    assert_eq!(outcome(&untrusted, "redis"), Outcome::Fail, "{untrusted}");
    assert!(fix(&untrusted, "redis").contains("redis.tls"), "{untrusted}");
}

#[tokio::test]
async fn a_cluster_is_checked_on_every_primary() {
    let cluster = tokio::task::spawn_blocking(ClusterSetup::start).await.unwrap();
    let addrs: Vec<String> = cluster.nodes().iter().map(RedisServer::addr).collect();
    let url = format!("redis+cluster://{}", addrs.join(","));
    let dir = tempfile::tempdir().unwrap();
    let config = config(&url, SinkTarget::Dir(dir.path().into()));
    // Three primaries of 16 MiB hold 48 MiB: more than the 35 MiB that 600,000
    // incidents need at the worst, less than twice that.
    let options = Options { load: Some(load(600_000)), kube_client: None };
    let healthy = doctor::run(&config, &options).await;
    cluster.nodes()[2].config_set("maxmemory-policy", "allkeys-lru");
    let one_bad = doctor::run(&config, &Options::default()).await;

    assert!(detail(&healthy, "redis").contains("3 primaries"), "{healthy}");
    assert_eq!(outcome(&healthy, "redis policy"), Outcome::Ok, "{healthy}");
    assert_eq!(detail(&healthy, "redis policy").matches("(noeviction)").count(), 3, "{healthy}");
    assert_eq!(outcome(&healthy, "redis latency"), Outcome::Ok, "{healthy}");
    assert_eq!(outcome(&healthy, "redis headroom"), Outcome::Warn, "{healthy}");
    assert!(detail(&healthy, "redis headroom").contains("maxmemory 48.0 MiB"), "{healthy}");
    assert_eq!(outcome(&one_bad, "redis policy"), Outcome::Fail, "{one_bad}");
    assert!(detail(&one_bad, "redis policy").contains("(allkeys-lru)"), "{one_bad}");
}

#[tokio::test]
async fn a_sentinel_setup_is_checked_on_the_primary_it_names() {
    let setup = tokio::task::spawn_blocking(SentinelSetup::start).await.unwrap();
    let sentinels: Vec<String> = setup.sentinels().iter().map(RedisServer::addr).collect();
    let url = format!("redis+sentinel://{}/{}", sentinels.join(","), setup.master_name());
    let dir = tempfile::tempdir().unwrap();
    setup.primary().config_set("maxmemory-policy", "allkeys-lfu");
    let report = doctor::run(&config(&url, SinkTarget::Dir(dir.path().into())), &Options::default()).await;

    assert_eq!(outcome(&report, "redis"), Outcome::Ok, "{report}");
    assert!(detail(&report, "redis").contains("1 primary"), "{report}");
    assert_eq!(outcome(&report, "redis policy"), Outcome::Fail, "{report}");
    assert!(detail(&report, "redis policy").contains("(allkeys-lfu)"), "{report}");
}

#[tokio::test]
async fn a_port_in_use_fails() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config("memory", SinkTarget::Dir(dir.path().into()));
    config.listen = taken.local_addr().unwrap();
    let report = doctor::run(&config, &Options::default()).await;

    assert_eq!(outcome(&report, "listener"), Outcome::Fail, "{report}");
    assert!(fix(&report, "listener").contains("TIDEGATE_LISTEN"), "{report}");
    assert_eq!(outcome(&report, "redis"), Outcome::Skip, "{report}");
}

// ---------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------

/// `kube`, as the gateway's service account or another, through the test's proxy,
/// with every grant needed: the owner chain on (the default) and a scope that reads
/// workloads' labels.
async fn kube_report(kube: &Kube, token: &str) -> Report {
    let mut config = config("memory", SinkTarget::Kube);
    config.scope.mode = tidegate::pipeline::scope::ScopeMode::OptOut;
    doctor::run(&config, &Options { load: None, kube_client: Some(kube.client_as(token)) }).await
}

fn check_names(permissions: &[Permission]) -> Vec<&'static str> {
    permissions
        .iter()
        .map(|p| match p.resource.as_str() {
            "namespaces" => "namespace watch",
            "remediationrequests" => "rbac remediationrequests",
            "remediationrequests/status" => "rbac remediationrequests/status",
            "pods" => "rbac pods",
            "replicasets" => "rbac replicasets",
            "jobs" => "rbac jobs",
            "deployments" => "rbac deployments",
            "statefulsets" => "rbac statefulsets",
            "daemonsets" => "rbac daemonsets",
            "cronjobs" => "rbac cronjobs",
            other => panic!("a permission this test does not know: {other}"),
        })
        .collect()
}

#[tokio::test]
async fn the_shipped_service_account_holds_every_needed_verb() {
    let kube = Kube::new().await;
    let token = support::kube::token(&kube.admin, support::kube::SYSTEM_NAMESPACE, support::kube::ACCOUNT).await;
    let report = kube_report(&kube, &token).await;

    assert!(!report.failed(), "{report}");
    assert_eq!(outcome(&report, "kubernetes"), Outcome::Ok, "{report}");
    assert!(detail(&report, "kubernetes").contains("system:serviceaccount:tidegate-system:tidegate"), "{report}");
    for name in check_names(&access::permissions()) {
        assert_eq!(outcome(&report, name), Outcome::Ok, "{report}");
    }
    // deploy/rbac.yaml grants no read of CRDs: the version is checked through
    // discovery, and the schema comparison is left to an identity that may.
    assert_eq!(outcome(&report, "crd"), Outcome::Warn, "{report}");
    assert!(detail(&report, "crd").contains("is served"), "{report}");
}

#[tokio::test]
async fn an_account_missing_a_verb_fails_naming_it() {
    let kube = Kube::new().await;
    // The shipped grants without `watch namespaces` and `update remediationrequests/status`.
    let missing = [("namespaces", "watch"), ("remediationrequests/status", "update")];
    let mut rules = Vec::new();
    for p in access::permissions() {
        let verbs: Vec<String> =
            p.verbs.iter().filter(|v| !missing.contains(&(p.resource.as_str(), **v))).map(|v| v.to_string()).collect();
        if !verbs.is_empty() {
            rules.push(PolicyRule {
                api_groups: Some(vec![p.group.clone()]),
                resources: Some(vec![p.resource.clone()]),
                verbs,
                ..PolicyRule::default()
            });
        }
    }
    let token = kube.account_with_rules("doctor-short", rules).await;
    // A binding takes effect a moment after it is written: wait until a granted
    // verb is seen as granted.
    let client = kube.client_as(&token);
    let granted = &access::permissions()[0];
    support::eventually_within("the new account's binding to take effect", Duration::from_secs(30), || {
        let client = client.clone();
        async move { doctor::grant(&client, granted, BUDGET).await.outcome == Outcome::Ok }
    })
    .await;
    let report = kube_report(&kube, &token).await;

    assert!(report.failed(), "{report}");
    assert_eq!(outcome(&report, "namespace watch"), Outcome::Fail, "{report}");
    assert!(detail(&report, "namespace watch").contains("watch denied"), "{report}");
    assert!(!detail(&report, "namespace watch").contains("list"), "list is granted: {report}");
    assert_eq!(outcome(&report, "rbac remediationrequests/status"), Outcome::Fail, "{report}");
    assert!(detail(&report, "rbac remediationrequests/status").contains("update denied"), "{report}");
    assert!(fix(&report, "namespace watch").contains("deploy/rbac.yaml"), "{report}");
    for name in ["rbac remediationrequests", "rbac pods", "rbac replicasets", "rbac jobs"] {
        assert_eq!(outcome(&report, name), Outcome::Ok, "{report}");
    }
}

/// This build's CRD, renamed to a group the cluster has never seen.
fn unknown_crd() -> CustomResourceDefinition {
    let mut crd = RemediationRequest::crd();
    crd.spec.group = "missing.tidegate.dev".into();
    crd.metadata.name = Some(format!("{}.{}", crd.spec.names.plural, crd.spec.group));
    crd
}

#[tokio::test]
async fn a_crd_the_cluster_lacks_fails() {
    let kube = Kube::new().await;
    let check = doctor::crd(&kube.admin, &unknown_crd(), BUDGET).await;
    assert_eq!(check.outcome, Outcome::Fail, "{check:?}");
    assert_eq!(check.detail, "remediationrequests.missing.tidegate.dev is not installed");
    assert!(check.fix.unwrap().contains("tidegate crd | kubectl apply -f -"));
}

#[tokio::test]
async fn a_crd_that_is_not_served_fails_for_an_identity_that_cannot_read_crds() {
    let kube = Kube::new().await;
    let token = support::kube::token(&kube.admin, support::kube::SYSTEM_NAMESPACE, support::kube::ACCOUNT).await;
    let check = doctor::crd(&kube.client_as(&token), &unknown_crd(), BUDGET).await;
    assert_eq!(check.outcome, Outcome::Fail, "{check:?}");
    assert!(check.detail.contains("remediationrequests.missing.tidegate.dev/v1alpha1 is not served"), "{check:?}");
}

#[tokio::test]
async fn a_crd_schema_unlike_this_builds_fails_naming_the_field() {
    let kube = Kube::new().await;
    let installed = doctor::crd(&kube.admin, &RemediationRequest::crd(), BUDGET).await;
    assert_eq!(installed.outcome, Outcome::Ok, "{installed:?}");

    // A build whose spec gained a field the installed CRD does not have.
    let mut newer = RemediationRequest::crd();
    let schema = newer.spec.versions[0].schema.as_mut().unwrap().open_api_v3_schema.as_mut().unwrap();
    let spec = schema.properties.as_mut().unwrap().get_mut("spec").unwrap();
    let field = JSONSchemaProps { type_: Some("string".into()), ..JSONSchemaProps::default() };
    spec.properties.as_mut().unwrap().insert("runbook".into(), field);
    let check = doctor::crd(&kube.admin, &newer, BUDGET).await;

    assert_eq!(check.outcome, Outcome::Fail, "{check:?}");
    assert!(check.detail.contains(".properties.spec.properties.runbook"), "{check:?}");
    assert!(check.fix.unwrap().contains("tidegate crd"));
}

#[tokio::test]
async fn an_unreachable_api_server_fails_and_skips_what_needs_it() {
    let mut config = kube::Config::new(format!("https://127.0.0.1:{}", closed_port()).parse().unwrap());
    config.connect_timeout = Some(Duration::from_secs(2));
    let client = kube::Client::try_from(config).unwrap();
    let report =
        doctor::run(&self::config("memory", SinkTarget::Kube), &Options { load: None, kube_client: Some(client) })
            .await;

    assert_eq!(outcome(&report, "kubernetes"), Outcome::Fail, "{report}");
    assert!(fix(&report, "kubernetes").contains("KUBECONFIG"), "{report}");
    assert_eq!(outcome(&report, "crd"), Outcome::Skip, "{report}");
    assert_eq!(outcome(&report, "namespace watch"), Outcome::Skip, "{report}");
}

// ---------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------

/// The admin kubeconfig of the tests' cluster, as a file: `TIDEGATE_TEST_KUBECONFIG`
/// when it names one, else written for the API server this binary started.
fn admin_kubeconfig(dir: &Path) -> PathBuf {
    if let Some(path) = std::env::var_os("TIDEGATE_TEST_KUBECONFIG") {
        return path.into();
    }
    let server = support::kube::cluster().server.as_ref().expect("the API server this binary started");
    support::kubeconfig(dir, "admin", &server.admin_token)
}

/// Runs `tidegate doctor` with `args` and only `env` of tidegate's variables.
fn doctor_binary(args: &[&str], env: &[(&str, &str)], as_nobody: bool) -> (Option<i32>, String) {
    let binary = env!("CARGO_BIN_EXE_tidegate");
    let mut command = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", binary]);
        c
    } else {
        Command::new(binary)
    };
    command.arg("doctor").args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TIDEGATE_") || name == "KUBECONFIG" {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let output = command.output().expect("run tidegate doctor");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.is_empty(), "doctor wrote to stderr: {stderr}");
    (output.status.code(), String::from_utf8(output.stdout).unwrap())
}

#[tokio::test]
async fn the_binary_passes_a_healthy_setup_and_exits_zero() {
    let server = redis("noeviction");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = admin_kubeconfig(dir.path());
    let file = dir.path().join("tidegate.yaml");
    std::fs::write(
        &file,
        format!("listen: 127.0.0.1:{}\nstate: {}\nsink: kube\nredis:\n  timeout: 5s\n", closed_port(), server.url()),
    )
    .unwrap();
    let (code, out) = tokio::task::spawn_blocking(move || {
        doctor_binary(
            &["--config", file.to_str().unwrap(), "--incidents", "10000"],
            &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
            false,
        )
    })
    .await
    .unwrap();
    println!("{out}");

    assert_eq!(code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let summary = lines.last().unwrap();
    assert!(summary.ends_with("0 failed, 0 warned, 1 skipped"), "{out}");
    for line in &lines[..lines.len() - 1] {
        let ok = line.starts_with("ok  ") || line.starts_with("info") || line.starts_with("skip  sink dir");
        assert!(ok, "not ok: {line}\n{out}");
    }
    for name in ["listener", "redis headroom", "kubernetes", "crd", "namespace watch", "rbac remediationrequests"] {
        assert!(lines.iter().any(|l| l.starts_with(&format!("ok    {name} "))), "no ok {name}:\n{out}");
    }
}

#[tokio::test]
async fn the_binary_fails_a_broken_setup_with_a_fix_per_failure_and_exits_one() {
    let server = redis("allkeys-lru");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", dir.path().display());
    let url = server.url();
    let (code, out) = tokio::task::spawn_blocking(move || {
        doctor_binary(&["--listen", &listen, "--state", &url, "--sink", &sink], &[], false)
    })
    .await
    .unwrap();
    println!("{out}");

    assert_eq!(code, Some(1), "{out}");
    let failed: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(failed.len(), 2, "{out}");
    assert!(failed[0].starts_with("FAIL  listener "), "{out}");
    assert!(failed[1].starts_with("FAIL  redis policy ") && failed[1].contains("allkeys-lru"), "{out}");
    assert!(failed.iter().all(|l| l.contains(" | fix: ")), "{out}");
    drop(taken);
}

#[tokio::test]
async fn the_binary_fails_a_sink_dir_it_cannot_write() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("sealed");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, Permissions::from_mode(0o555)).unwrap();
    // Root writes through any mode: doctor runs as nobody then, which may look
    // into the parent but not write in `sealed`.
    let as_nobody = unsafe { libc::geteuid() } == 0;
    std::fs::set_permissions(parent.path(), Permissions::from_mode(0o755)).unwrap();
    let sink = format!("dir:{}", dir.display());
    let (code, out) = tokio::task::spawn_blocking(move || {
        doctor_binary(&["--sink", &sink, "--listen", "127.0.0.1:0"], &[], as_nobody)
    })
    .await
    .unwrap();
    println!("{out}");

    assert_eq!(code, Some(1), "{out}");
    let line = out.lines().find(|l| l.starts_with("FAIL  sink dir ")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("Permission denied") && line.contains("chmod u+w"), "{line}");
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none(), "no probe file left behind");
}

#[tokio::test]
async fn the_binary_fails_an_invalid_config_naming_the_variable() {
    let (code, out) =
        tokio::task::spawn_blocking(|| doctor_binary(&[], &[("TIDEGATE_REDIS_TIMEOUT", "soon")], false)).await.unwrap();

    assert_eq!(code, Some(1), "{out}");
    let first = out.lines().next().unwrap();
    assert!(first.starts_with("FAIL  config      TIDEGATE_REDIS_TIMEOUT (redis.timeout): invalid duration"), "{out}");
    assert!(first.contains(" | fix: "), "{out}");
}
