//! The manifests in `deploy/`: every file parses, every object is a well-formed
//! Kubernetes object with no misspelt fields, and the parts that matter for security
//! and availability (RBAC, probes, security context, shutdown timing) are pinned, so
//! the manifests cannot silently drift from the code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{CommandFactory, Parser};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use tidegate::cli::{Cli, Command};
use tidegate::config::{Config, SinkTarget};

const NAMESPACE: &str = "tidegate-system";
const NAME: &str = "tidegate";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// One YAML document of a file in `deploy/`.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
}

/// Every document of every file in `deploy/`, in file-name order. Folders hold
/// optional add-ons with tests of their own (`monitoring/`: tests/monitoring.rs).
fn load() -> Vec<Doc> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/")
        .map(|e| e.expect("a directory entry").path())
        .filter(|path| !path.is_dir())
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(file.ends_with(".yaml"), "deploy/{file}: only .yaml files belong in deploy/");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("deploy/{file}: {e}"));
        let mut found = 0;
        for document in serde_norway::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).unwrap_or_else(|e| panic!("deploy/{file}: {e}"));
            if value.is_null() {
                continue; // an empty document, e.g. after a trailing `---`
            }
            found += 1;
            docs.push(Doc { file: file.clone(), value });
        }
        assert!(found > 0, "deploy/{file} holds no object");
    }
    docs
}

/// The one object of kind `K`; fails if there are none or several.
fn one<K: Resource<DynamicType = ()> + DeserializeOwned>(docs: &[Doc]) -> K {
    let kind = K::kind(&());
    let mut matching = docs.iter().filter(|d| d.kind() == kind);
    let doc = matching.next().unwrap_or_else(|| panic!("no {kind} in deploy/"));
    assert!(matching.next().is_none(), "more than one {kind} in deploy/");
    typed(doc)
}

/// The object of kind `K` named `name`.
fn named<K: Resource<DynamicType = ()> + DeserializeOwned>(docs: &[Doc], name: &str) -> K {
    let kind = K::kind(&());
    let doc = docs.iter().find(|d| d.kind() == kind && d.name() == name);
    typed(doc.unwrap_or_else(|| panic!("no {kind} {name} in deploy/")))
}

fn typed<K: DeserializeOwned>(doc: &Doc) -> K {
    serde_json::from_value(doc.value.clone()).unwrap_or_else(|e| panic!("deploy/{} ({}): {e}", doc.file, doc.kind()))
}

/// Deserializes as `K` and serializes back; anything the type does not know (a
/// misspelt field, a field at the wrong level) is lost on the way and shows up here,
/// where the API server would drop it without a word.
fn assert_round_trips<K: DeserializeOwned + serde::Serialize>(doc: &Doc) {
    let back = serde_json::to_value(typed::<K>(doc)).unwrap();
    let mut differences = Vec::new();
    differ(&doc.value, &back, String::new(), &mut differences);
    assert!(
        differences.is_empty(),
        "deploy/{} ({} {}): fields Kubernetes does not know, or of the wrong type: {differences:?}",
        doc.file,
        doc.kind(),
        doc.name()
    );
}

/// The paths at which `written` and `understood` differ.
fn differ(written: &Value, understood: &Value, path: String, out: &mut Vec<String>) {
    match (written, understood) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let (x, y) = (a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null));
                differ(x, y, format!("{path}.{key}"), out);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differ(x, y, format!("{path}[{i}]"), out);
            }
        }
        // `cpu: 1` for `cpu: "1"`: the API server accepts a number for a quantity.
        (Value::Number(n), Value::String(s)) if n.to_string() == *s => {}
        (a, b) if a != b => out.push(format!("{path}: {a} read as {b}")),
        _ => {}
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn every_object_is_a_known_kind_with_no_unknown_fields() {
    let docs = load();
    for doc in &docs {
        match doc.kind() {
            "Namespace" => assert_round_trips::<Namespace>(doc),
            "CustomResourceDefinition" => assert_round_trips::<CustomResourceDefinition>(doc),
            "ServiceAccount" => assert_round_trips::<ServiceAccount>(doc),
            "ClusterRole" => assert_round_trips::<ClusterRole>(doc),
            "ClusterRoleBinding" => assert_round_trips::<ClusterRoleBinding>(doc),
            "Deployment" => assert_round_trips::<Deployment>(doc),
            "Service" => assert_round_trips::<Service>(doc),
            "PodDisruptionBudget" => assert_round_trips::<PodDisruptionBudget>(doc),
            "Kustomization" => assert_eq!(doc.file, "kustomization.yaml"),
            other => panic!("deploy/{}: unexpected kind {other:?}; teach tests/deploy.rs about it", doc.file),
        }
    }
    let mut seen = BTreeSet::new();
    for doc in &docs {
        assert!(seen.insert((doc.kind(), doc.name())), "{} {} is defined twice", doc.kind(), doc.name());
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let docs = load();
    let kustomization = docs.iter().find(|d| d.kind() == "Kustomization").expect("deploy/kustomization.yaml");
    assert_eq!(kustomization.value["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    let listed: Vec<&str> = kustomization.value["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file name"))
        .collect();
    let listed_set: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(listed.len(), listed_set.len(), "a file is listed twice");
    let files: BTreeSet<&str> = docs.iter().filter(|d| d.kind() != "Kustomization").map(|d| d.file.as_str()).collect();
    assert_eq!(listed_set, files, "kustomization.yaml must list exactly the other files in deploy/");
    assert_eq!(listed.first(), Some(&"namespace.yaml"), "the namespace comes first");
}

#[test]
fn namespaced_objects_live_in_tidegate_system() {
    let docs = load();
    let namespace: Namespace = one(&docs);
    assert_eq!(namespace.metadata.name.as_deref(), Some(NAMESPACE));
    let enforce = namespace.metadata.labels.unwrap_or_default().remove("pod-security.kubernetes.io/enforce");
    assert_eq!(enforce.as_deref(), Some("restricted"));
    for doc in &docs {
        let namespaced = matches!(doc.kind(), "ServiceAccount" | "Deployment" | "Service" | "PodDisruptionBudget");
        let ns = doc.value["metadata"]["namespace"].as_str();
        if namespaced {
            assert_eq!(ns, Some(NAMESPACE), "deploy/{}: {} {}", doc.file, doc.kind(), doc.name());
        } else {
            assert_eq!(ns, None, "deploy/{}: {} is cluster-scoped", doc.file, doc.kind());
        }
    }
}

#[test]
fn cluster_role_is_exactly_the_minimal_set() {
    let docs = load();
    let role: ClusterRole = named(&docs, NAME);
    assert!(role.aggregation_rule.is_none(), "no aggregation");
    assert!(docs.iter().all(|d| d.kind() != "Role" && d.kind() != "RoleBinding"), "no namespaced roles");

    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        assert!(rule.resource_names.is_none(), "no resourceNames: {rule:?}");
        assert!(rule.non_resource_urls.is_none(), "no nonResourceURLs: {rule:?}");
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    assert!(granted.insert((group.clone(), resource.clone(), verb.clone())), "granted twice");
                }
            }
        }
    }
    // (api group, resource, verb), from the one list the gateway and `tidegate doctor`
    // use: its groups and plurals come from the types, so a rename of either cannot
    // leave the role granting the old names.
    let mut expected = BTreeSet::new();
    for permission in tidegate::sink::kube::access::permissions() {
        for verb in permission.verbs {
            expected.insert((permission.group.clone(), permission.resource.clone(), verb.to_string()));
        }
    }
    assert_eq!(granted, expected);
}

#[test]
fn tidegate_may_review_tokens_and_senders_get_a_role_that_grants_nothing_else() {
    let docs = load();
    let delegation: ClusterRoleBinding = named(&docs, "tidegate-auth-delegator");
    assert_eq!(delegation.role_ref.name, "system:auth-delegator");
    let subjects = delegation.subjects.unwrap_or_default();
    assert_eq!(
        subjects.iter().map(|s| (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref())).collect::<Vec<_>>(),
        [("ServiceAccount", NAME, Some(NAMESPACE))]
    );
    let sender: ClusterRole = named(&docs, "tidegate-sender");
    let rules = sender.rules.unwrap_or_default();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].api_groups.as_deref(), Some(&["remediation.tidegate.dev".to_string()][..]));
    assert_eq!(rules[0].resources.as_deref(), Some(&["signals".to_string()][..]));
    assert_eq!(rules[0].verbs, ["create"]);
    // The gateway's own configuration (off loopback) authenticates by those tokens.
    let deployment: Deployment = one(&docs);
    let env = the_container(&deployment).env.clone().unwrap_or_default();
    let auth = env.iter().find(|v| v.name == "TIDEGATE_AUTH").and_then(|v| v.value.clone()).expect("TIDEGATE_AUTH");
    let config =
        Config::load(None, [("TIDEGATE_AUTH".to_string(), auth), ("TIDEGATE_LISTEN".into(), "0.0.0.0:8080".into())])
            .expect("the deployment's auth parses");
    assert_eq!(config.auth.kinds(), ["kubernetes"]);
    config.validate().expect("a valid configuration off loopback");
}

#[test]
fn cluster_role_binding_binds_the_service_account() {
    let docs = load();
    let account: ServiceAccount = one(&docs);
    assert_eq!(account.metadata.name.as_deref(), Some(NAME));
    let binding: ClusterRoleBinding = named(&docs, NAME);
    assert_eq!(binding.role_ref.api_group.as_deref(), Some("rbac.authorization.k8s.io"));
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, NAME);
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, NAME);
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
    let deployment: Deployment = one(&docs);
    let pod = deployment.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(NAME));
}

fn the_container(deployment: &Deployment) -> &Container {
    let containers = &deployment.spec.template.spec.as_ref().unwrap().containers;
    assert_eq!(containers.len(), 1);
    &containers[0]
}

#[test]
fn deployment_runs_the_gateway_with_the_kube_sink() {
    let docs = load();
    let deployment: Deployment = one(&docs);
    let spec = &deployment.spec;
    assert_eq!(spec.replicas, Some(2));
    let pod_labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    assert_eq!(spec.selector.match_labels.as_ref(), Some(&labels(&[("app.kubernetes.io/name", NAME)])));
    assert!(spec.selector.match_labels.as_ref().unwrap().iter().all(|(k, v)| pod_labels.get(k) == Some(v)));

    let container = the_container(&deployment);
    assert_eq!(container.image.as_deref(), Some("tidegate:0.1.0"));
    let args = container.args.clone().unwrap_or_default();
    assert_eq!(args, ["serve", "--listen", "0.0.0.0:8080", "--sink", "kube"]);
    assert!(container.command.is_none(), "the image's entrypoint is tidegate");

    // The arguments are ones the binary accepts, meaning what they say.
    let cli =
        Cli::try_parse_from(std::iter::once("tidegate".to_string()).chain(args)).expect("tidegate accepts the args");
    let Command::Serve(serve) = cli.command else { panic!("not `serve`") };
    let config = tidegate::config::Config::load_with(None, std::iter::empty(), &serve.flags).expect("valid flags");
    assert_eq!(config.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(config.sink, SinkTarget::Kube);

    let ports = container.ports.clone().unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!((ports[0].name.as_deref(), ports[0].container_port), (Some("http"), 8080));
}

#[test]
fn deployment_env_names_real_settings() {
    let docs = load();
    let deployment: Deployment = one(&docs);
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").expect("the serve subcommand");
    let flags = serve.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned());
    let known: BTreeSet<String> = flags.chain(tidegate::config::keys().into_iter().map(|k| k.env)).collect();
    let env = the_container(&deployment).env.clone().unwrap_or_default();
    for var in &env {
        assert!(known.contains(&var.name), "{} is not read by `tidegate serve` (known: {known:?})", var.name);
    }
    let state = env.iter().find(|v| v.name == "TIDEGATE_STATE").expect("TIDEGATE_STATE is set");
    // From a Secret: a Redis URL may carry a password.
    let secret =
        state.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref()).expect("TIDEGATE_STATE from a Secret");
    assert_eq!((secret.name.as_str(), secret.key.as_str()), ("tidegate-state", "url"));
    assert!(state.value.is_none());
}

#[test]
fn deployment_probes() {
    let docs = load();
    let deployment: Deployment = one(&docs);
    let container = the_container(&deployment);
    let http = IntOrString::String("http".into());
    for (what, probe, path) in [
        ("startup", &container.startup_probe, "/healthz"),
        ("readiness", &container.readiness_probe, "/readyz"),
        ("liveness", &container.liveness_probe, "/healthz"),
    ] {
        let probe = probe.as_ref().unwrap_or_else(|| panic!("no {what} probe"));
        let get = probe.http_get.as_ref().unwrap_or_else(|| panic!("{what} probe is not an HTTP GET"));
        assert_eq!(get.path.as_deref(), Some(path), "{what} probe path");
        assert_eq!(get.port, http, "{what} probe port");
        assert!(get.scheme.as_deref().is_none_or(|s| s == "HTTP"), "{what} probe scheme");
        assert!(probe.exec.is_none() && probe.tcp_socket.is_none() && probe.grpc.is_none());
    }
    // The listener opens only after start-up has synced the kube sink's caches; the
    // startup probe must wait at least that long before liveness takes over.
    let startup = container.startup_probe.as_ref().unwrap();
    let startup_s = startup.period_seconds.unwrap_or(10) * startup.failure_threshold.unwrap_or(3);
    let sync = Config::default().kube.sync_timeout;
    assert!(Duration::from_secs(startup_s as u64) > sync, "startup probe gives up after {startup_s}s < {sync:?}");
}

#[test]
fn deployment_resources() {
    let docs = load();
    let deployment: Deployment = one(&docs);
    let resources = the_container(&deployment).resources.clone().expect("resources");
    let quantities = |m: Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
        m.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect::<BTreeMap<_, _>>()
    };
    assert_eq!(quantities(resources.requests), labels(&[("cpu", "100m"), ("memory", "128Mi")]));
    assert_eq!(quantities(resources.limits), labels(&[("cpu", "1"), ("memory", "256Mi")]));
}

#[test]
fn deployment_security_context() {
    let docs = load();
    let deployment: Deployment = one(&docs);
    let pod = deployment.spec.template.spec.as_ref().unwrap();
    assert_ne!(pod.host_network, Some(true));
    assert_ne!(pod.host_pid, Some(true));
    assert_ne!(pod.host_ipc, Some(true));
    let pod_sc = pod.security_context.clone().unwrap_or_default();
    let container = the_container(&deployment);
    let sc = container.security_context.clone().expect("a container securityContext");

    // The container's setting wins over the pod's, as in Kubernetes.
    let effective_non_root = sc.run_as_non_root.or(pod_sc.run_as_non_root);
    let effective_user = sc.run_as_user.or(pod_sc.run_as_user);
    let effective_seccomp = sc.seccomp_profile.clone().or(pod_sc.seccomp_profile.clone());
    assert_eq!(effective_non_root, Some(true), "runAsNonRoot");
    assert_eq!(effective_user, Some(65532), "runAsUser");
    assert_eq!(effective_seccomp.map(|p| p.type_), Some("RuntimeDefault".to_string()), "seccompProfile");
    assert_eq!(sc.read_only_root_filesystem, Some(true), "readOnlyRootFilesystem");
    assert_eq!(sc.allow_privilege_escalation, Some(false), "allowPrivilegeEscalation");
    assert_ne!(sc.privileged, Some(true), "privileged");
    let caps = sc.capabilities.clone().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]), "capabilities.drop");
    assert!(caps.add.unwrap_or_default().is_empty(), "no added capabilities");
}

#[test]
fn termination_grace_covers_the_shutdown_sequence() {
    let docs = load();
    let deployment: Deployment = one(&docs);
    let pod = deployment.spec.template.spec.unwrap();
    let period = Duration::from_secs(pod.termination_grace_period_seconds.expect("set explicitly") as u64);
    assert_eq!(period, Duration::from_secs(30));
    let http = Config::default().http;
    assert!(
        http.shutdown_delay + http.shutdown_grace < period,
        "shutdown takes up to {:?} + {:?}, more than terminationGracePeriodSeconds ({period:?})",
        http.shutdown_delay,
        http.shutdown_grace
    );
}

#[test]
fn service_and_pdb_select_the_pods() {
    let docs = load();
    let deployment: Deployment = one(&docs);
    let spec = deployment.spec;
    let pod_labels = spec.template.metadata.and_then(|m| m.labels).unwrap_or_default();
    let selects = |selector: &BTreeMap<String, String>| {
        !selector.is_empty() && selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
    };

    let service: Service = one(&docs);
    let svc = service.spec.unwrap();
    assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
    assert!(selects(&svc.selector.unwrap_or_default()), "the Service selects the pods");
    let ports = svc.ports.unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, 8080);
    assert_eq!(ports[0].target_port, Some(IntOrString::String("http".into())));

    let pdb: PodDisruptionBudget = one(&docs);
    let pdb = pdb.spec.unwrap();
    assert_eq!(pdb.min_available, Some(IntOrString::Int(1)));
    assert!(pdb.max_unavailable.is_none());
    assert!(selects(&pdb.selector.and_then(|s| s.match_labels).unwrap_or_default()), "the PDB selects the pods");
    assert!(spec.replicas.unwrap_or(1) > 1, "minAvailable 1 with one replica would block every drain");
}

#[test]
fn writable_paths_are_empty_dirs_beside_a_read_only_root() {
    let docs = load();
    let deployment: Deployment = one(&docs);
    let pod = deployment.spec.template.spec.as_ref().unwrap();
    let container = the_container(&deployment);
    assert_eq!(container.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
    let volumes = pod.volumes.clone().unwrap_or_default();
    let mounts = container.volume_mounts.clone().unwrap_or_default();
    assert!(!mounts.is_empty(), "the directory sink needs somewhere to write");
    for mount in &mounts {
        let volume = volumes.iter().find(|v| v.name == mount.name).expect("a mounted volume");
        let empty_dir = volume.empty_dir.as_ref().unwrap_or_else(|| panic!("{} is not an emptyDir", mount.name));
        assert!(empty_dir.size_limit.is_some(), "{}: an emptyDir without a size limit can fill the node", mount.name);
        assert_ne!(mount.read_only, Some(true));
    }
    // The image's working directory, where `dir:` sinks write (Containerfile).
    assert!(mounts.iter().any(|m| m.mount_path == "/var/lib/tidegate"));
    // tidegate's own Service would add TIDEGATE_PORT... in its configuration's prefix.
    assert_eq!(pod.enable_service_links, Some(false));
}
