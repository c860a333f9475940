//! The Helm chart in `deploy/helm/tidegate`, checked with a real `helm` built from
//! Helm's own Go module (`scripts/helm-testenv`) and a real kube-apiserver
//! (tests/support/kube): it lints, it renders for every value set in its `ci/`
//! directory, every object of every render, and of `kubectl kustomize deploy/`, is
//! accepted by the API server (server-side dry run, with the Prometheus Operator's
//! and cert-manager's CRDs installed, and the pods of every Deployment admitted in a
//! namespace that enforces the "restricted" Pod Security Standard), `helm install`
//! of the defaults creates the objects with the RBAC the sink needs, and the default
//! render does not drift from `kubectl apply -k deploy/`. What the chart takes from
//! elsewhere (the CRDs, the alert rules, the dashboard) has one source, and a test
//! here proves it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::{json, Value};
use tidegate::cli::Cli;
use tidegate::config::Config;

use support::kube::apiserver::{self, ApiServer};

const RELEASE: &str = "tidegate";
const NAMESPACE: &str = "tidegate-system";
/// Field manager of the dry-run applies.
const MANAGER: &str = "tidegate-helm-tests";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    repo().join("deploy/helm/tidegate")
}

/// The directory `scripts/helm-testenv` prints (building helm on first use), or
/// `TIDEGATE_HELM_TESTENV`.
fn testenv() -> PathBuf {
    if let Some(dir) = std::env::var_os("TIDEGATE_HELM_TESTENV") {
        return PathBuf::from(dir);
    }
    let script = repo().join("scripts/helm-testenv");
    let output = Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(output.status.success(), "{} failed ({})", script.display(), output.status);
    PathBuf::from(String::from_utf8(output.stdout).expect("a UTF-8 path").trim())
}

/// A `helm` with its own empty configuration, cache and data directories, so that
/// nothing of the machine's (repositories, plugins, a kubeconfig) takes part.
struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: Option<PathBuf>,
}

impl Helm {
    fn new() -> Helm {
        Helm { bin: testenv().join("helm"), home: tempfile::tempdir().expect("temp dir"), kubeconfig: None }
    }

    /// One talking to `server` as its admin.
    fn for_server(server: &ApiServer) -> Helm {
        let mut helm = Helm::new();
        let path = helm.home.path().join("kubeconfig");
        std::fs::write(&path, kubeconfig(server)).expect("write kubeconfig");
        helm.kubeconfig = Some(path);
        helm
    }

    fn command(&self, args: &[&str]) -> Command {
        let home = self.home.path();
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env_clear()
            .env("HOME", home)
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env("KUBECONFIG", self.kubeconfig.clone().unwrap_or_else(|| home.join("no-kubeconfig")));
        cmd
    }

    /// Runs helm and returns its stdout; fails the test with its stderr otherwise.
    fn ok(&self, args: &[&str]) -> String {
        support::stdout_of(&mut self.command(args))
    }

    /// `helm template` of the chart with `values` (a file of `ci/`, or none).
    fn template(&self, values: Option<&Path>) -> Vec<Value> {
        let chart = chart();
        let mut args = vec!["template", RELEASE, chart.to_str().unwrap(), "--namespace", NAMESPACE];
        if let Some(values) = values {
            args.extend(["--values", values.to_str().unwrap()]);
        }
        documents(&self.ok(&args))
    }
}

/// A kubeconfig for `server`'s admin: its CA, its URL, the admin token.
fn kubeconfig(server: &ApiServer) -> String {
    let b64 = data_encoding::BASE64;
    let body = b64.encode(&server.ca_der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"));
    serde_json::to_string(&json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server.url, "certificate-authority-data": b64.encode(pem.as_bytes())}}],
        "users": [{"name": "admin", "user": {"token": server.admin_token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
        "current-context": "test",
    }))
    .expect("kubeconfig JSON")
}

/// The non-empty YAML documents of `text`.
fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("a YAML document: {e}\n{text}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn the<'a>(docs: &'a [Value], kind_: &str) -> &'a Value {
    let mut matching = docs.iter().filter(|d| kind(d) == kind_);
    let doc = matching.next().unwrap_or_else(|| panic!("no {kind_} rendered"));
    assert!(matching.next().is_none(), "more than one {kind_} rendered");
    doc
}

fn typed<K: serde::de::DeserializeOwned>(doc: &Value) -> K {
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{} {}: {e}", kind(doc), name(doc)))
}

/// The value sets the tests render: the defaults and every file in the chart's `ci/`.
fn value_sets() -> Vec<(String, Option<PathBuf>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .expect("deploy/helm/tidegate/ci")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    let mut sets = vec![("defaults".to_string(), None)];
    sets.extend(files.into_iter().map(|f| (f.file_name().unwrap().to_string_lossy().into_owned(), Some(f))));
    sets
}

#[test]
fn at_least_the_four_value_sets_of_the_issue_exist() {
    let names: BTreeSet<String> = value_sets().into_iter().map(|(name, _)| name).collect();
    for needed in ["defaults", "redis-tls-values.yaml", "monitoring-values.yaml", "high-availability-values.yaml"] {
        assert!(names.contains(needed), "value set {needed} is missing: {names:?}");
    }
}

#[test]
fn lint_passes_for_every_value_set() {
    let helm = Helm::new();
    let chart = chart();
    for (set, values) in value_sets() {
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        if let Some(values) = &values {
            args.extend(["--values", values.to_str().unwrap()]);
        }
        let out = helm.ok(&args);
        assert!(out.contains("1 chart(s) linted, 0 chart(s) failed"), "{set}: {out}");
    }
}

#[test]
fn chart_version_and_app_version_are_the_crate_version() {
    let text = std::fs::read_to_string(chart().join("Chart.yaml")).unwrap();
    let meta: Value = serde_norway::from_str(&text).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(meta["version"], version);
    assert_eq!(meta["appVersion"], version);
    let deployment = the(&Helm::new().template(None), "Deployment").clone();
    let container = &typed::<Deployment>(&deployment).spec.template.spec.unwrap().containers[0];
    assert_eq!(container.image.as_deref(), Some(format!("tidegate:{version}").as_str()));
}

/// Every CRD `tidegate crd` prints (one document each), by name.
fn generated_crds() -> BTreeMap<String, CustomResourceDefinition> {
    let output = Command::new(env!("CARGO_BIN_EXE_tidegate")).arg("crd").output().expect("run tidegate crd");
    assert!(output.status.success(), "tidegate crd failed");
    let crds: Vec<CustomResourceDefinition> =
        documents(&String::from_utf8(output.stdout).unwrap()).iter().map(typed).collect();
    assert!(!crds.is_empty(), "tidegate crd printed nothing");
    crds.into_iter().map(|crd| (crd.metadata.name.clone().expect("a CRD name"), crd)).collect()
}

#[test]
fn chart_crds_are_exactly_what_tidegate_crd_prints() {
    let mut in_chart = BTreeMap::new();
    for entry in std::fs::read_dir(chart().join("crds")).expect("the chart's crds/") {
        let path = entry.unwrap().path();
        // Read through the link, as helm does.
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        for doc in documents(&text) {
            let crd: CustomResourceDefinition = typed(&doc);
            let name = crd.metadata.name.clone().expect("a CRD name");
            assert!(in_chart.insert(name.clone(), crd).is_none(), "{name} is in crds/ twice");
        }
    }
    let generated = generated_crds();
    assert_eq!(
        in_chart.keys().collect::<Vec<_>>(),
        generated.keys().collect::<Vec<_>>(),
        "the chart's crds/ must hold every CRD `tidegate crd` prints, and no other"
    );
    for (name, crd) in &generated {
        assert!(
            in_chart[name] == *crd,
            "crds/ holds an outdated {name}: regenerate with `cargo run -q -- crd > deploy/crd.yaml`"
        );
    }
}

/// `path` inside the chart is a symbolic link to `target` (relative to the
/// repository): the chart carries no copy that could drift.
fn assert_links_to(path: &str, target: &str) {
    let link = chart().join(path);
    let meta = std::fs::symlink_metadata(&link).unwrap_or_else(|e| panic!("{link:?}: {e}"));
    assert!(meta.file_type().is_symlink(), "{path} must be a link to {target}, not a copy");
    let resolved = std::fs::canonicalize(&link).unwrap();
    assert_eq!(resolved, std::fs::canonicalize(repo().join(target)).unwrap(), "{path} links elsewhere");
}

#[test]
fn crds_rules_and_dashboard_have_one_source() {
    for entry in std::fs::read_dir(chart().join("crds")).unwrap() {
        let file = format!("crds/{}", entry.unwrap().file_name().to_string_lossy());
        assert_links_to(&file, "deploy/crd.yaml");
    }
    assert_links_to("files/tidegate.rules.yaml", "deploy/monitoring/tidegate.rules.yaml");
    assert_links_to("files/dashboard.json", "deploy/monitoring/dashboard.json");
}

#[test]
fn monitoring_renders_the_rules_and_the_dashboard_of_deploy_monitoring() {
    let docs = Helm::new().template(Some(&chart().join("ci/monitoring-values.yaml")));
    let rules_text = std::fs::read_to_string(repo().join("deploy/monitoring/tidegate.rules.yaml")).unwrap();
    let rules: Value = serde_norway::from_str(&rules_text).unwrap();
    let rule = the(&docs, "PrometheusRule");
    assert_eq!(rule["spec"]["groups"], rules["groups"], "the PrometheusRule's groups are tidegate.rules.yaml's");
    assert!(rules["groups"].as_array().is_some_and(|g| !g.is_empty()));

    let dashboard = docs
        .iter()
        .find(|d| kind(d) == "ConfigMap" && name(d).ends_with("-dashboard"))
        .expect("the dashboard ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1", "the sidecar's label");
    let json_text = std::fs::read_to_string(repo().join("deploy/monitoring/dashboard.json")).unwrap();
    let rendered: Value = serde_json::from_str(dashboard["data"]["tidegate.json"].as_str().expect("tidegate.json"))
        .expect("the rendered dashboard is JSON");
    assert_eq!(rendered, serde_json::from_str::<Value>(&json_text).unwrap());

    let monitor = the(&docs, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    // The alerts select `job="tidegate"`: the job comes from the Service's name label.
    assert_eq!(monitor["spec"]["jobLabel"], "app.kubernetes.io/name");
    let service = the(&docs, "Service");
    assert_eq!(service["metadata"]["labels"]["app.kubernetes.io/name"], "tidegate");
    assert!(rules_text.contains("up{job=\"tidegate\"}"));
}

/// The container's environment as `tidegate serve` sees it: `$(VAR)` references
/// resolved as the kubelet does, with `secrets` standing in for Secret values.
fn environment(container: &Container, secrets: &BTreeMap<&str, String>) -> Vec<(String, String)> {
    let mut resolved: Vec<(String, String)> = Vec::new();
    for var in container.env.clone().unwrap_or_default() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => {
                let mut value = value.clone();
                for (name, earlier) in &resolved {
                    value = value.replace(&format!("$({name})"), earlier);
                }
                assert!(!value.contains("$("), "{}: an unresolved reference in {value:?}", var.name);
                value
            }
            (None, Some(from)) => {
                let key = from.secret_key_ref.as_ref().expect("from a Secret").key.as_str();
                secrets.get(key).cloned().unwrap_or_else(|| format!("secret-{key}"))
            }
            (None, None) => String::new(),
        };
        resolved.push((var.name, value));
    }
    resolved
}

#[test]
fn every_value_set_configures_a_gateway_that_starts() {
    let helm = Helm::new();
    // What the Secrets named in ci/ would hold.
    let hash = bcrypt::hash("correct horse", 4).unwrap();
    let secrets = BTreeMap::from([("oncall", hash)]);
    for (set, values) in value_sets() {
        let docs = helm.template(values.as_deref());
        let deployment: Deployment = typed(the(&docs, "Deployment"));
        let container = deployment.spec.template.spec.unwrap().containers[0].clone();
        let args = container.args.clone().unwrap_or_default();
        let argv = std::iter::once("tidegate".to_string()).chain(args.iter().cloned());
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{set}: {args:?}: {e}"));
        assert!(matches!(cli.command, tidegate::cli::Command::Serve(_)), "{set}: not `serve`");
        // `config` is mounted as a file and read with --config.
        let dir = tempfile::tempdir().unwrap();
        let mut file = None;
        if let Some(i) = args.iter().position(|a| a == "--config") {
            let map = docs.iter().find(|d| kind(d) == "ConfigMap" && !name(d).ends_with("-dashboard"));
            let text = map.expect("the config ConfigMap")["data"]["tidegate.yaml"].as_str().unwrap().to_string();
            assert_eq!(args[i + 1], "/etc/tidegate/config/tidegate.yaml");
            let path = dir.path().join("tidegate.yaml");
            std::fs::write(&path, text).unwrap();
            file = Some(path);
        }
        let vars = environment(&container, &secrets);
        let mut config = Config::load(file.as_deref(), vars.clone()).unwrap_or_else(|e| panic!("{set}: {e}\n{vars:?}"));
        config.listen = "0.0.0.0:8080".parse().unwrap();
        config.validate().unwrap_or_else(|e| panic!("{set}: {e}"));
    }
}

/// The `deploy/` objects `kubectl kustomize deploy/` renders. The kustomization only
/// lists files (checked here), so its render is exactly those files' objects.
fn kustomize_render() -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join("deploy/kustomization.yaml")).unwrap();
    let kustomization: Value = serde_norway::from_str(&text).unwrap();
    let fields: BTreeSet<&str> = kustomization.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        BTreeSet::from(["apiVersion", "kind", "resources"]),
        "deploy/kustomization.yaml transforms its resources now: render it with kustomize in this test"
    );
    let mut docs = Vec::new();
    for file in kustomization["resources"].as_array().unwrap() {
        let path = repo().join("deploy").join(file.as_str().unwrap());
        docs.extend(documents(&std::fs::read_to_string(&path).unwrap()));
    }
    docs
}

/// The pod template with what legitimately differs taken out: labels (helm adds its
/// own), the image, and the state setting (kustomize reads an optional Secret, the
/// chart its values).
fn comparable_pod(deployment: &Value) -> Value {
    let mut spec = deployment["spec"].clone();
    spec["template"]["metadata"] = Value::Null;
    spec["selector"] = Value::Null;
    let pod = &mut spec["template"]["spec"];
    pod["topologySpreadConstraints"][0]["labelSelector"] = Value::Null;
    let container = &mut pod["containers"][0];
    container["image"] = Value::Null;
    let env = container["env"].as_array_mut().unwrap();
    env.retain(|var| var["name"] != "TIDEGATE_STATE");
    // Compared as the parsed setting: one is YAML flow, the other JSON.
    for var in env.iter_mut() {
        if let Some(text) = var["value"].as_str() {
            var["value"] = serde_norway::from_str::<Value>(text).unwrap_or(Value::String(text.to_string()));
        }
    }
    spec
}

#[test]
fn default_render_does_not_drift_from_kustomize() {
    let chart_docs = Helm::new().template(None);
    let kustomize = kustomize_render();

    // The same kinds and names; the chart leaves the namespace to `helm install
    // --create-namespace` and keeps CRDs in crds/ (tested above).
    let objects = |docs: &[Value]| -> BTreeSet<(String, String)> {
        docs.iter()
            .filter(|d| !matches!(kind(d), "Namespace" | "CustomResourceDefinition"))
            .map(|d| (kind(d).to_string(), name(d).to_string()))
            .collect()
    };
    assert_eq!(objects(&chart_docs), objects(&kustomize), "chart vs deploy/: kinds and names");

    for chart_doc in &chart_docs {
        let kustomize_doc =
            kustomize.iter().find(|d| kind(d) == kind(chart_doc) && name(d) == name(chart_doc)).unwrap();
        let what = format!("{} {}", kind(chart_doc), name(chart_doc));
        assert_eq!(chart_doc["metadata"]["namespace"], kustomize_doc["metadata"]["namespace"], "{what}: namespace");
        match kind(chart_doc) {
            "ClusterRole" => assert_eq!(chart_doc["rules"], kustomize_doc["rules"], "{what}: rules"),
            "ClusterRoleBinding" => {
                assert_eq!(chart_doc["roleRef"], kustomize_doc["roleRef"], "{what}: roleRef");
                assert_eq!(chart_doc["subjects"], kustomize_doc["subjects"], "{what}: subjects");
            }
            "Deployment" => {
                assert_eq!(comparable_pod(chart_doc), comparable_pod(kustomize_doc), "{what}: spec");
            }
            "Service" => {
                assert_eq!(chart_doc["spec"]["ports"], kustomize_doc["spec"]["ports"], "{what}: ports");
                assert_eq!(chart_doc["spec"]["type"], kustomize_doc["spec"]["type"], "{what}: type");
            }
            "PodDisruptionBudget" => {
                assert_eq!(chart_doc["spec"]["minAvailable"], kustomize_doc["spec"]["minAvailable"], "{what}");
            }
            "ServiceAccount" => {}
            other => panic!("{other}: teach this test how to compare it"),
        }
    }
}

/// Starts an API server, installs the other operators' CRDs the renders need (the
/// Prometheus Operator's and cert-manager's, from their Go modules, by
/// scripts/helm-testenv) and waits until they are served.
async fn server_with_operator_crds() -> (ApiServer, Client) {
    let server = apiserver::start().await;
    let client = Client::try_from(support::kube::admin_config(&server)).expect("admin client");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = testenv().join("crds");
    let mut names = Vec::new();
    for file in [
        "monitoring.coreos.com_servicemonitors.yaml",
        "monitoring.coreos.com_prometheusrules.yaml",
        "cert-manager.io_certificates.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        for doc in documents(&text) {
            let crd: CustomResourceDefinition = typed(&doc);
            crds.create(&PostParams::default(), &crd).await.unwrap_or_else(|e| panic!("create {file}: {e}"));
            names.push(name(&doc).to_string());
        }
    }
    for name in names {
        support::kube::established(&crds, &name).await;
    }
    (server, client)
}

/// Applies `doc` with server-side dry run: the API server validates it (schema,
/// admission) and stores nothing.
async fn dry_run_apply(client: &Client, discovery: &Discovery, doc: &Value) -> Result<(), String> {
    let (group, version) = match doc["apiVersion"].as_str().unwrap().split_once('/') {
        Some((group, version)) => (group.to_string(), version.to_string()),
        None => (String::new(), doc["apiVersion"].as_str().unwrap().to_string()),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, kind(doc));
    let Some((resource, capabilities)) = discovery.resolve_gvk(&gvk) else {
        return Err(format!("the API server serves no {gvk:?}"));
    };
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Namespaced => Api::namespaced_with(client.clone(), NAMESPACE, &resource),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let object: DynamicObject = typed(doc);
    let params = PatchParams::apply(MANAGER).dry_run();
    api.patch(name(doc), &params, &Patch::Apply(&object)).await.map(drop).map_err(|e| e.to_string())
}

/// Creates, with server-side dry run, a Pod of `deployment`'s pod template in the
/// namespace, where the PodSecurity admission enforces the "restricted" standard
/// (deploy/namespace.yaml): a Deployment's own apply only warns, its pods are refused.
async fn dry_run_pod_of(pods: &Api<Pod>, deployment: &Value) -> Result<(), String> {
    let template = &deployment["spec"]["template"];
    let pod: Pod = typed(&json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("{}-pod", name(deployment)), "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }));
    let params = PostParams { dry_run: true, ..PostParams::default() };
    pods.create(&params, &pod).await.map(drop).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_set_and_deploy_are_accepted_by_the_api_server_with_restricted_pods() {
    let (server, client) = server_with_operator_crds().await;
    // deploy/'s namespace, for real: it enforces the "restricted" Pod Security Standard.
    let namespace = kustomize_render().into_iter().find(|d| kind(d) == "Namespace").expect("deploy/namespace.yaml");
    assert_eq!(name(&namespace), NAMESPACE);
    assert_eq!(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.create(&PostParams::default(), &typed(&namespace)).await.expect("create the namespace");
    // The chart's CRDs, as `helm install` puts them first.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in generated_crds().values() {
        crds.create(&PostParams::default(), crd).await.expect("create the chart's CRD");
        support::kube::established(&crds, crd.metadata.name.as_deref().unwrap()).await;
    }
    let discovery = Discovery::new(client.clone()).run().await.expect("discovery");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);

    // The enforcement is on: a pod that may run as root is refused.
    let kustomize = kustomize_render();
    let mut rootful = the(&kustomize, "Deployment").clone();
    rootful["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = Value::Null;
    rootful["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = Value::Null;
    let refused = dry_run_pod_of(&pods, &rootful).await.expect_err("a pod that may run as root is refused");
    assert!(refused.contains("violates PodSecurity"), "{refused}");

    let helm = Helm::for_server(&server);
    let mut renders = vec![("kubectl kustomize deploy/".to_string(), kustomize)];
    for (set, values) in value_sets() {
        renders.push((set, helm.template(values.as_deref())));
    }
    let (mut applied, mut kinds) = (0, BTreeSet::new());
    for (set, docs) in &renders {
        for doc in docs.iter().filter(|d| !matches!(kind(d), "Namespace" | "CustomResourceDefinition")) {
            dry_run_apply(&client, &discovery, doc)
                .await
                .unwrap_or_else(|e| panic!("{set}: the API server refuses {} {}: {e}", kind(doc), name(doc)));
            if kind(doc) == "Deployment" {
                dry_run_pod_of(&pods, doc).await.unwrap_or_else(|e| {
                    panic!("{set}: the restricted namespace refuses the pods of {}: {e}", name(doc))
                });
            }
            applied += 1;
            kinds.insert(kind(doc).to_string());
        }
    }
    // What the value sets turn on reached the API server, not just the basics.
    for needed in ["Deployment", "ServiceMonitor", "PrometheusRule", "Certificate", "PodDisruptionBudget", "ConfigMap"]
    {
        assert!(kinds.contains(needed), "no {needed} was applied: {kinds:?}");
    }
    eprintln!("helm: {applied} objects of {} renders accepted by the API server (server-side dry run)", renders.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_of_the_defaults_creates_the_objects_with_the_sink_rbac() {
    let server = apiserver::start().await;
    let client = Client::try_from(support::kube::admin_config(&server)).expect("admin client");
    let helm = Helm::for_server(&server);
    let chart = chart();
    let out = helm.ok(&["install", RELEASE, chart.to_str().unwrap(), "--namespace", NAMESPACE, "--create-namespace"]);
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(out.contains("credentials_file: /var/run/secrets/tidegate/token"), "NOTES.txt shows the receiver: {out}");

    // The CRDs came from the chart's crds/.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in generated_crds().keys() {
        crds.get(name).await.unwrap_or_else(|e| panic!("CRD {name} after helm install: {e}"));
    }
    let deployment: Deployment = Api::namespaced(client.clone(), NAMESPACE).get(RELEASE).await.expect("Deployment");
    let pod = deployment.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(RELEASE));
    Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE).get(RELEASE).await.expect("ServiceAccount");
    Api::<ClusterRole>::all(client.clone()).get(RELEASE).await.expect("ClusterRole");
    Api::<ClusterRoleBinding>::all(client.clone()).get(RELEASE).await.expect("ClusterRoleBinding");

    // What the sink needs, asked of the API server's own authoriser for the
    // installed service account: every permission of src/sink/kube/access.rs.
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let user = format!("system:serviceaccount:{NAMESPACE}:{RELEASE}");
    let mut checked = 0;
    for permission in tidegate::sink::kube::access::permissions() {
        for verb in permission.verbs {
            let (resource, subresource) = match permission.resource.split_once('/') {
                Some((r, s)) => (r.to_string(), Some(s.to_string())),
                None => (permission.resource.clone(), None),
            };
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.clone()),
                    groups: Some(vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{NAMESPACE}")]),
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(permission.group.clone()),
                        resource: Some(resource),
                        subresource,
                        verb: Some(verb.to_string()),
                        namespace: Some("payments".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let what = format!("{verb} {}/{}", permission.group, permission.resource);
            let allowed = support::poll_within(Duration::from_secs(30), Duration::from_millis(200), || {
                let (reviews, review) = (reviews.clone(), review.clone());
                async move {
                    let answer = reviews.create(&PostParams::default(), &review).await.expect("a review");
                    answer.status.is_some_and(|s| s.allowed)
                }
            })
            .await;
            assert!(allowed, "the installed account may not {what}");
            checked += 1;
        }
    }
    assert!(checked > 0);
    // And not more: deleting requests belongs to downstream controllers.
    let mut review = SubjectAccessReview::default();
    review.spec.user = Some(user);
    review.spec.resource_attributes = Some(ResourceAttributes {
        group: Some("remediation.tidegate.dev".into()),
        resource: Some("remediationrequests".into()),
        verb: Some("delete".into()),
        namespace: Some("payments".into()),
        ..Default::default()
    });
    let answer = reviews.create(&PostParams::default(), &review).await.expect("a review");
    assert!(!answer.status.unwrap().allowed, "the account may delete requests");

    let status = helm.ok(&["status", RELEASE, "--namespace", NAMESPACE]);
    assert!(status.contains("STATUS: deployed"), "{status}");
}

/// The receiver NOTES.txt prints: from `receivers:` to the first blank line.
fn receiver_in_notes(notes: &str) -> String {
    let start = notes.find("\nreceivers:\n").expect("NOTES.txt prints a receiver") + 1;
    let block = &notes[start..];
    block[..block.find("\n\n").unwrap_or(block.len())].to_string()
}

#[test]
fn notes_print_a_receiver_alertmanager_accepts_with_its_credential() {
    let helm = Helm::new();
    let chart = chart();
    for (set, values) in value_sets() {
        let mut args = vec!["install", RELEASE, chart.to_str().unwrap(), "--namespace", NAMESPACE, "--dry-run=client"];
        if let Some(values) = &values {
            args.extend(["--values", values.to_str().unwrap()]);
        }
        let out = helm.ok(&args);
        let receiver = receiver_in_notes(&out);
        assert!(
            receiver.contains("credentials_file:") || receiver.contains("password_file:"),
            "{set}: the receiver carries no credential:\n{receiver}"
        );
        // Debian's Alertmanager checks it as it would load it.
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, format!("route:\n  receiver: tidegate\n{receiver}\n")).unwrap();
        let check = Command::new("amtool").arg("check-config").arg(&config).output().expect("run amtool");
        assert!(
            check.status.success(),
            "{set}: amtool refuses the receiver:\n{receiver}\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
}
