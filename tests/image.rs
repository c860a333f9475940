//! The container image `scripts/image` builds from `Containerfile`, tested as built:
//! its configuration as `skopeo inspect` reads it (entrypoint, user 65532, the OCI
//! labels), its root filesystem as `umoci` unpacks it (the static binary, the CA
//! bundle, the user's names, no shell), and the binary run from that root the way
//! `deploy/deployment.yaml` runs it: the root read-only, only `/var/lib/tidegate`
//! writable (an emptyDir there), as 65532 with no capabilities, and nothing else
//! mounted: no `/dev`, no `/proc` (a runtime provides both; the binary must not
//! need them). It prints its version, and `serve` answers `/readyz` and a webhook.
//!
//! Needs buildah, skopeo and umoci (scripts/test installs them from Debian) and, to
//! mount and change root, root (CI runs as root). Where one is missing each test
//! prints why and passes without checking anything: never silently.
//!
//! The image is built once per test binary by `scripts/image` (which itself rebuilds
//! only what changed), or taken from `TIDEGATE_IMAGE`, the OCI layout `scripts/test`
//! built before the tests.

mod support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use support::process::{kill, pick_port, spawn};
use support::{alert, webhook};
use tidegate::remediation::RemediationRequest;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The user the Containerfile runs as, and deploy/deployment.yaml's `runAsUser`.
const NONROOT: u32 = 65532;
/// The one writable directory, an emptyDir in deploy/deployment.yaml.
const DATA: &str = "/var/lib/tidegate";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The image, unpacked once per test binary.
struct Image {
    /// `oci:<layout>:<version>`, what skopeo and umoci read.
    reference: String,
    /// The unpacked root filesystem, kept until the test binary exits.
    rootfs: PathBuf,
}

/// The image, or why it cannot be built here (printed by the caller).
fn image() -> Result<&'static Image, &'static str> {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    IMAGE.get_or_init(build_and_unpack).as_ref().map_err(String::as_str)
}

fn build_and_unpack() -> Result<Image, String> {
    let missing: Vec<&str> =
        ["buildah", "skopeo", "umoci", "file", "unshare", "setpriv"].into_iter().filter(|t| !have(t)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} not installed (scripts/test installs them from Debian; unshare and setpriv are util-linux)",
            missing.join(", ")
        ));
    }
    if !is_root() {
        return Err("not root: unpacking the image with its owners and running it in a private mount namespace \
                    as 65532 need root (CI runs as root)"
            .into());
    }
    let layout = match std::env::var_os("TIDEGATE_IMAGE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let script = repo().join("scripts/image");
            say(&format!("building with {} (TIDEGATE_IMAGE is not set)", script.display()));
            let mut cmd = Command::new(&script);
            cmd.stderr(Stdio::inherit());
            PathBuf::from(support::stdout_of(&mut cmd).trim())
        }
    };
    let reference = format!("oci:{}:{VERSION}", layout.display());
    let scratch = tempfile::Builder::new().prefix("tidegate-image-").tempdir().expect("temp dir").keep();
    support::process::register_dir(&scratch);
    let rootfs = scratch.join("rootfs");
    let unpacked = format!("{}:{VERSION}", layout.display());
    support::stdout_of(Command::new("umoci").args(["raw", "unpack", "--image", &unpacked]).arg(&rootfs));
    Ok(Image { reference, rootfs })
}

fn is_root() -> bool {
    // SAFETY: a system call without arguments that cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Prints `line` past libtest's capture (which hides what a passing test prints):
/// the skips and the image's size show in every run.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "image: {line}");
}

/// The image, or `None` after printing why its tests check nothing here.
fn image_or_skip(test: &str) -> Option<&'static Image> {
    match image() {
        Ok(image) => Some(image),
        Err(why) => {
            say(&format!("{test} SKIPPED: {why}"));
            None
        }
    }
}

fn skopeo_inspect(image: &Image, extra: &[&str]) -> Value {
    let out = support::stdout_of(Command::new("skopeo").arg("inspect").args(extra).arg(&image.reference));
    serde_json::from_str(&out).expect("skopeo prints JSON")
}

#[test]
fn image_config_has_the_entrypoint_the_nonroot_user_and_the_oci_labels() {
    let Some(image) = image_or_skip("image_config_has_the_entrypoint_the_nonroot_user_and_the_oci_labels") else {
        return;
    };
    let config = skopeo_inspect(image, &["--config"]);
    let run = &config["config"];
    assert_eq!(run["Entrypoint"], serde_json::json!(["/usr/local/bin/tidegate"]), "{config:#}");
    assert_eq!(run["Cmd"], serde_json::json!(["serve", "--listen", "0.0.0.0:8080"]), "{config:#}");
    assert_eq!(run["User"], format!("{NONROOT}:{NONROOT}"), "{config:#}");
    assert_eq!(run["WorkingDir"], DATA, "{config:#}");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    let labels = &run["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], VERSION, "{labels:#}");
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0", "{labels:#}");
    assert_eq!(labels["org.opencontainers.image.licenses"], env!("CARGO_PKG_LICENSE"), "the crate's licence");
    let source = labels["org.opencontainers.image.source"].as_str().unwrap_or_default();
    assert!(source.starts_with("https://"), "source label: {labels:#}");
    let revision = labels["org.opencontainers.image.revision"].as_str().unwrap_or_default();
    assert!(revision.len() == 40 || revision == "unknown", "revision label: {labels:#}");

    // The size, as a registry stores it (compressed layer and config) and unpacked.
    let manifest = skopeo_inspect(image, &["--raw"]);
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "one layer: the root filesystem scripts/image assembles");
    let stored: u64 = layers.iter().chain([&manifest["config"]]).map(|l| l["size"].as_u64().unwrap()).sum();
    let unpacked = support::stdout_of(Command::new("du").args(["-sb"]).arg(&image.rootfs));
    let unpacked: u64 = unpacked.split_whitespace().next().unwrap().parse().unwrap();
    say(&format!(
        "{} stored (compressed layer and config) = {:.1} MiB; root filesystem {:.1} MiB",
        image.reference,
        stored as f64 / 1048576.0,
        unpacked as f64 / 1048576.0
    ));
}

#[test]
fn root_filesystem_is_the_static_binary_ca_certificates_and_the_users_names_and_no_shell() {
    let Some(image) = image_or_skip("root_filesystem_is_the_static_binary_ca_certificates_and_the_users_names") else {
        return;
    };
    let mut files = walk(&image.rootfs, "");
    files.sort();
    assert_eq!(
        files,
        [
            "etc/group",
            "etc/nsswitch.conf",
            "etc/passwd",
            "etc/ssl/certs/ca-certificates.crt",
            "usr/local/bin/tidegate",
            "var/lib/tidegate/",
        ],
        "nothing else: no shell, no package manager, no libraries"
    );
    let binary = image.rootfs.join("usr/local/bin/tidegate");
    let kind = support::stdout_of(Command::new("file").arg("-b").arg(&binary));
    assert!(kind.contains("statically linked") || kind.contains("static-pie linked"), "{kind}");
    let passwd = fs::read_to_string(image.rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.starts_with(&format!("nonroot:x:{NONROOT}:{NONROOT}:")), "{passwd}");
    let bundle = fs::read_to_string(image.rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(bundle.matches("BEGIN CERTIFICATE").count() > 50, "a CA bundle");
}

/// Every file under `dir`, as paths relative to it behind `prefix`; an empty
/// directory is listed with a trailing `/`.
fn walk(dir: &Path, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut entries = fs::read_dir(dir).unwrap().peekable();
    if entries.peek().is_none() {
        out.push(prefix.to_string());
    }
    for entry in entries {
        let entry = entry.unwrap();
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.file_type().unwrap().is_dir() {
            out.extend(walk(&entry.path(), &format!("{name}/")));
        } else {
            out.push(name);
        }
    }
    out
}

/// The image's binary run from its root as deploy/deployment.yaml runs it: in a
/// private mount namespace (and PID namespace, so that nothing it starts outlives
/// it), the root bind-mounted read-only, `data` (a world-writable directory, as an
/// emptyDir is) on `/var/lib/tidegate`, then `unshare --root` into it in the image's
/// working directory, as 65532:65532 with no supplementary groups, no capabilities
/// and no way to gain any (`no_new_privs`, as `allowPrivilegeEscalation: false`),
/// with the image's environment and no other.
fn in_image(image: &Image, data: &Path, config: &Value, args: &[&str]) -> Command {
    const SETUP: &str = r#"set -eu
root=$1 data=$2 workdir=$3 id=$4
shift 4
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount --bind "$data" "$root/var/lib/tidegate"
setpriv --no-new-privs \
    unshare --root="$root" --wd="$workdir" --setgid="$id" --setuid="$id" "$@"
exit $?
"#;
    let run = &config["config"];
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--pid", "--fork", "--kill-child", "sh", "-c", SETUP, "sh"])
        .arg(&image.rootfs)
        .arg(data)
        .arg(run["WorkingDir"].as_str().unwrap())
        .arg(NONROOT.to_string());
    for part in run["Entrypoint"].as_array().unwrap() {
        cmd.arg(part.as_str().unwrap());
    }
    cmd.args(args).env_clear();
    // The image's environment, and a PATH for the tools above (a runtime also adds
    // a PATH when the image sets none).
    let mut path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string();
    for var in run["Env"].as_array().into_iter().flatten() {
        let (name, value) = var.as_str().unwrap().split_once('=').unwrap();
        if name == "PATH" {
            path = format!("{value}:{path}");
        } else {
            cmd.env(name, value);
        }
    }
    cmd.env("PATH", path);
    cmd
}

/// A world-writable scratch directory, as an emptyDir is.
fn empty_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn binary_from_the_image_prints_its_version_on_a_read_only_root_without_dev() {
    let Some(image) = image_or_skip("binary_from_the_image_prints_its_version_on_a_read_only_root_without_dev") else {
        return;
    };
    let config = skopeo_inspect(image, &["--config"]);
    let data = empty_dir();
    let output = in_image(image, data.path(), &config, &["--version"]).output().expect("run unshare");
    assert!(output.status.success(), "{}: {}", output.status, text(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), format!("tidegate {VERSION}"), "{}", text(&output));
}

/// `tidegate serve` running from the image; killed (with its namespaces) on drop.
struct Serving {
    child: Option<Child>,
    log: PathBuf,
}

impl Serving {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `readyz` until it answers 200 within `limit`; fails at once, with the
    /// log, if the process exits first (waiting on a dead process looks like a hang).
    async fn ready(&mut self, client: &reqwest::Client, readyz: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("wait on unshare") {
                panic!("tidegate from the image exited ({status}) before it was ready; its log:\n{}", self.log());
            }
            if client.get(readyz).send().await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tidegate from the image not ready in {limit:?}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The tidegate process itself: the outer unshare's descendant named `tidegate`.
    fn pid(&self) -> u32 {
        let mut pid = self.child.as_ref().unwrap().id();
        for _ in 0..4 {
            if fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim() == "tidegate" {
                return pid;
            }
            let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            pid = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no tidegate process under {pid}; its log:\n{}", self.log()));
        }
        panic!("no tidegate process found; its log:\n{}", self.log())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            kill(child);
        }
    }
}

/// The `key:` line of /proc/<pid>/status.
fn status_line(pid: u32, key: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line =
        status.lines().find(|l| l.starts_with(&format!("{key}:"))).unwrap_or_else(|| panic!("{key} in {status}"));
    line[key.len() + 1..].split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_from_the_image_serves_readyz_and_a_webhook_on_a_read_only_root_as_65532() {
    let Some(image) = image_or_skip("binary_from_the_image_serves_readyz_and_a_webhook_on_a_read_only_root_as_65532")
    else {
        return;
    };
    let config = skopeo_inspect(image, &["--config"]);
    let data = empty_dir();
    let logs = tempfile::tempdir().unwrap();
    let port = pick_port(None);
    let listen = format!("127.0.0.1:{port}");
    // The image's command with a free loopback port; the sink stays the default, a
    // directory relative to the image's working directory.
    let mut cmd = in_image(image, data.path(), &config, &["serve", "--listen", &listen]);
    // Into a file, never a pipe nobody reads: a full pipe would stop the gateway.
    let log = logs.path().join("tidegate.log");
    let file = fs::File::create(&log).unwrap();
    cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
    let mut serving = Serving { child: Some(spawn(cmd).expect("spawn unshare")), log };

    let client = reqwest::Client::new();
    let base = format!("http://{listen}");
    serving.ready(&client, &format!("{base}/readyz"), Duration::from_secs(60)).await;

    // It runs as deploy/deployment.yaml asks: 65532, no groups, no capabilities, on a
    // read-only root.
    let pid = serving.pid();
    assert_eq!(status_line(pid, "Uid"), format!("{NONROOT} {NONROOT} {NONROOT} {NONROOT}"));
    assert_eq!(status_line(pid, "Gid"), format!("{NONROOT} {NONROOT} {NONROOT} {NONROOT}"));
    assert_eq!(status_line(pid, "Groups"), "");
    assert_eq!(status_line(pid, "CapPrm"), "0000000000000000");
    assert_eq!(status_line(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_line(pid, "NoNewPrivs"), "1");
    let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts.lines().find(|l| l.split(' ').nth(4) == Some("/")).expect("its root in its mountinfo");
    assert!(root.split(' ').nth(5).unwrap().split(',').any(|o| o == "ro"), "the root is read-only: {root}");
    assert_eq!(fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), image.rootfs.join("var/lib/tidegate"));

    let body = serde_json::to_vec(&webhook(vec![alert("ImageSmoke", "shop", "web-0")])).unwrap();
    let resp = client
        .post(format!("{base}/api/v1/signals/prometheus"))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("the webhook: {e}; its log:\n{}", serving.log()));
    let status = resp.status().as_u16();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{answer:#}\n{}", serving.log());

    // The request, written by 65532 into the emptyDir, where the default sink is.
    let path = data.path().join("remediations/shop").join(format!("{}.yaml", answer["name"].as_str().unwrap()));
    let request: RemediationRequest =
        serde_norway::from_str(&fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))).unwrap();
    assert_eq!(request.spec.signal_name, "ImageSmoke");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&path).unwrap().uid(), NONROOT, "written by 65532");
    drop(serving);
}
