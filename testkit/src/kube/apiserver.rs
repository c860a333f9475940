//! A real kube-apiserver and etcd on loopback, started once per test binary.
//!
//! The binaries come from `scripts/kube-testenv`, which builds them from
//! Kubernetes' and etcd's own Go modules once per machine and prints where they
//! are (`TIDEGATE_KUBE_TESTENV` names that directory instead, if set). There is no
//! controller manager, scheduler or kubelet: objects are stored, validated,
//! authorised and watched exactly as in a cluster, and nothing acts on them.
//!
//! What the server is given, and why:
//! - a static token file with one `system:masters` user: the tests' admin identity,
//!   which sets up the CRD and the `deploy/` manifests; the gateway itself uses a
//!   TokenRequest token of the service account `deploy/` defines;
//! - a generated service-account signing key (so TokenRequest works);
//! - its own CA and serving certificate (rcgen), so clients verify TLS for real;
//! - the `ServiceAccount` admission plugin off: it would refuse every pod in a
//!   namespace whose `default` account no controller manager ever created.
//!
//! Both processes are children of the test binary, killed at exit (see
//! [`super::super::process`]).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::super::process::{register_dir, spawn};

/// How long etcd plus the API server get to report ready (measured: 3.5–5 s idle;
/// far longer on a machine busy compiling).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running API server: where it is, how to trust it, and the admin token.
pub struct ApiServer {
    pub url: String,
    /// The CA that signed the serving certificate, DER.
    pub ca_der: Vec<u8>,
    pub admin_token: String,
    /// The etcd client URL behind it.
    pub etcd_url: String,
    /// When it answered `/readyz`, after its start.
    pub started_in: Duration,
    pub dir: PathBuf,
    /// etcd and the API server: never waited for here; the exit hook kills and
    /// reaps them.
    _children: Vec<Child>,
}

/// Where `scripts/kube-testenv` put the binaries (building them on first use).
fn binaries() -> PathBuf {
    if let Some(dir) = std::env::var_os("TIDEGATE_KUBE_TESTENV") {
        return PathBuf::from(dir);
    }
    let script = crate::repository().join("scripts/kube-testenv");
    let output = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(output.status.success(), "{} failed ({})", script.display(), output.status);
    PathBuf::from(String::from_utf8(output.stdout).expect("a UTF-8 path").trim())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr").port()
}

/// Starts etcd and the API server and waits until `/readyz` answers 200.
pub async fn start() -> ApiServer {
    let bin = binaries();
    let dir = tempfile::Builder::new()
        .prefix(&format!("tidegate-kube-{}-", std::process::id()))
        .tempdir()
        .expect("temp dir")
        .keep();
    register_dir(&dir);
    let started = Instant::now();

    let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut etcd = Command::new(bin.join("etcd"));
    etcd.args(["--name", "tidegate-test", "--data-dir"])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("tidegate-test={peer_url}")])
        // A throwaway store: durability costs fsyncs the tests do not need.
        .args(["--unsafe-no-fsync", "--log-level", "warn"]);
    let etcd = launch(etcd, &dir.join("etcd.log"));

    let pki = Pki::generate(&dir);
    let admin_token = format!("admin-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(dir.join("tokens.csv"), format!("{admin_token},tidegate-test-admin,1,\"system:masters\"\n"))
        .expect("write token file");
    let mut api = Command::new(bin.join("kube-apiserver"));
    api.arg(format!("--etcd-servers={etcd_url}"))
        .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
        .arg(format!("--secure-port={api_port}"))
        .arg(format!("--tls-cert-file={}", pki.cert.display()))
        .arg(format!("--tls-private-key-file={}", pki.key.display()))
        .arg(format!("--token-auth-file={}", dir.join("tokens.csv").display()))
        .arg(format!("--service-account-key-file={}", pki.service_accounts_public.display()))
        .arg(format!("--service-account-signing-key-file={}", pki.service_accounts.display()))
        .args(["--service-account-issuer=https://kubernetes.default.svc", "--service-cluster-ip-range=10.96.0.0/16"])
        .args(["--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount"])
        .args(["--profiling=false", "--v=1"])
        .arg(format!("--cert-dir={}", dir.join("certs").display()));
    let api = launch(api, &dir.join("apiserver.log"));

    let url = format!("https://127.0.0.1:{api_port}");
    let server = ApiServer {
        url,
        ca_der: pki.ca_der,
        admin_token,
        etcd_url,
        started_in: Duration::ZERO,
        dir,
        _children: vec![etcd, api],
    };
    let started_in = wait_ready(&server, started).await;
    eprintln!("kube test environment: API server ready in {:.1} s at {}", started_in.as_secs_f64(), server.url);
    ApiServer { started_in, ..server }
}

fn launch(mut cmd: Command, log: &Path) -> Child {
    let file = std::fs::File::create(log).expect("create log file");
    cmd.stdin(Stdio::null()).stdout(file.try_clone().expect("dup log")).stderr(file);
    spawn(cmd).unwrap_or_else(|e| panic!("start {log:?}'s process: {e}"))
}

/// Polls `/readyz` until it answers `ok`.
async fn wait_ready(server: &ApiServer, started: Instant) -> Duration {
    let client = kube::Client::try_from(super::admin_config(server)).expect("admin client");
    loop {
        let request = axum::http::Request::get("/readyz").body(Vec::new()).expect("request");
        let answer = client.request_text(request).await;
        if answer.as_ref().is_ok_and(|text| text.trim() == "ok") {
            return started.elapsed();
        }
        if started.elapsed() > READY_TIMEOUT {
            let log = std::fs::read_to_string(server.dir.join("apiserver.log")).unwrap_or_default();
            let tail = &log[log.len().saturating_sub(4000)..];
            panic!("the API server was not ready within {READY_TIMEOUT:?} ({answer:?}); its log ends:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Certificates and keys for one API server, written into its directory.
struct Pki {
    ca_der: Vec<u8>,
    cert: PathBuf,
    key: PathBuf,
    /// An ECDSA key signing service-account tokens, and its public half, which
    /// verifies them.
    service_accounts: PathBuf,
    service_accounts_public: PathBuf,
}

impl Pki {
    fn generate(dir: &Path) -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "tidegate test cluster CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("self-signed CA");
        let issuer = Issuer::new(ca, ca_key);
        let names = vec!["127.0.0.1".into(), "localhost".into(), "kubernetes.default.svc".into()];
        let mut leaf = CertificateParams::new(names).expect("serving cert params");
        leaf.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        let leaf_key = KeyPair::generate().expect("serving key");
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("signed by the CA");
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        let service_accounts = KeyPair::generate().expect("SA key");
        Pki {
            ca_der: ca_cert.der().to_vec(),
            cert: write("apiserver.crt", leaf_cert.pem()),
            key: write("apiserver.key", leaf_key.serialize_pem()),
            service_accounts: write("sa.key", service_accounts.serialize_pem()),
            service_accounts_public: write("sa.pub", service_accounts.public_key_pem()),
        }
    }
}
