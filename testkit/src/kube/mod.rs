//! Kubernetes for the kube tests: a real API server, the gateway's real identity,
//! and a fault proxy in between.
//!
//! - One API server per test binary, started on first use ([`apiserver`]); or,
//!   with `TIDEGATE_TEST_KUBECONFIG` set, the cluster that kubeconfig names (kind,
//!   k3d, a real one), on which the tests need cluster-admin.
//! - Set up once: the CRD and the `deploy/` namespace, service account and RBAC,
//!   exactly as shipped. The gateway authenticates with a TokenRequest token of
//!   that service account, never as admin, so the shipped RBAC is what it has.
//! - Each test gets its own namespaces ([`Kube::namespace`]) and its own
//!   [`proxy::Proxy`]: tests run in parallel on one server and never see each
//!   other's objects or faults. On an existing cluster the namespaces are deleted
//!   when the test binary exits.
//!
//! What is shared holds no client: each test runs its own tokio runtime, and a
//! client's pooled connections die with the runtime that opened them.

pub mod apiserver;
pub mod objects;
pub mod proxy;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use tidegate::remediation::RemediationRequest;

use proxy::Proxy;

/// The namespace and name `deploy/` gives tidegate's service account.
pub const SYSTEM_NAMESPACE: &str = "tidegate-system";
pub const ACCOUNT: &str = "tidegate";
/// Labels every namespace the tests make, so a shared cluster can be cleaned.
const RUN_LABEL: &str = "tidegate.dev/test-run";
/// Field manager of the tests' server-side applies.
const MANAGER: &str = "tidegate-tests";

/// What the tests of one binary share: configurations and tokens, no clients.
pub struct Cluster {
    admin: kube::Config,
    /// The API server, with no credentials: the proxy's side of it.
    upstream: kube::Config,
    /// A token of tidegate's service account.
    gateway_token: String,
    /// Unique to this test binary's run.
    run: String,
    /// The API server this binary started; `None` on an existing cluster.
    pub server: Option<apiserver::ApiServer>,
}

/// The binary's cluster, set up on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        // A runtime of its own, on a thread of its own: the caller may be inside a
        // test's runtime, which must not be blocked on from within.
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(Cluster::set_up())
        })
        .join()
        .unwrap_or_else(|_| panic!("setting up the kube test environment failed (see above)"))
    })
}

impl Cluster {
    async fn set_up() -> Cluster {
        let (admin, server) = match std::env::var_os("TIDEGATE_TEST_KUBECONFIG") {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("TIDEGATE_TEST_KUBECONFIG");
                let options = kube::config::KubeConfigOptions::default();
                let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.expect("kubeconfig");
                (config, None)
            }
            None => {
                let server = apiserver::start().await;
                (admin_config(&server), Some(server))
            }
        };
        let mut upstream = admin.clone();
        upstream.auth_info = Default::default();
        upstream.headers.clear();
        upstream.read_timeout = None;
        upstream.default_retry = false;
        let run = format!("{:08x}", uuid::Uuid::new_v4().as_u128() as u32);
        let client = Client::try_from(admin.clone()).expect("admin client");
        apply_deploy(&client).await;
        let gateway_token = token(&client, SYSTEM_NAMESPACE, ACCOUNT).await;
        let cluster = Cluster { admin, upstream, gateway_token, run, server };
        wait_authorised(&cluster.client_with_token(&cluster.gateway_token, &cluster.admin.cluster_url.to_string()))
            .await;
        if cluster.server.is_none() {
            let _ = CLUSTER_FOR_EXIT.set((cluster.admin.clone(), cluster.run.clone()));
            super::process::before_exit(delete_test_namespaces);
        }
        cluster
    }

    /// A client with this bearer token, to `url` (the API server or a proxy).
    fn client_with_token(&self, token: &str, url: &str) -> Client {
        let mut config = self.upstream.clone();
        config.cluster_url = url.parse().expect("a URL");
        config.connect_timeout = Some(Duration::from_secs(2));
        config.write_timeout = Some(Duration::from_secs(5));
        let bearer = HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value");
        config.headers.push((header::AUTHORIZATION, bearer));
        Client::try_from(config).expect("client")
    }
}

/// The admin configuration of an API server this binary started.
pub fn admin_config(server: &apiserver::ApiServer) -> kube::Config {
    let mut config = kube::Config::new(server.url.parse().expect("API server URL"));
    config.root_cert = Some(vec![server.ca_der.clone()]);
    let bearer = HeaderValue::from_str(&format!("Bearer {}", server.admin_token)).expect("a header value");
    config.headers.push((header::AUTHORIZATION, bearer));
    config
}

/// Every object of every YAML document in `deploy/<file>` of kind `K`.
pub fn manifests<K: DeserializeOwned>(file: &str, kind: &str) -> Vec<K> {
    let path = crate::repository().join("deploy").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde_json::Value::deserialize(doc).unwrap_or_else(|e| panic!("{path:?}: {e}")))
        .filter(|doc| doc["kind"] == kind)
        .map(|doc| serde_json::from_value(doc).unwrap_or_else(|e| panic!("{path:?} ({kind}): {e}")))
        .collect()
}

async fn apply<K>(api: &Api<K>, object: &K)
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let params = PatchParams::apply(MANAGER).force();
    api.patch(&object.name_any(), &params, &Patch::Apply(object))
        .await
        .unwrap_or_else(|e| panic!("apply {}: {e}", object.name_any()));
}

/// Applies the CRD and the `deploy/` identity (namespace, service account, RBAC),
/// and waits until the CRD is served.
async fn apply_deploy(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in manifests::<CustomResourceDefinition>("crd.yaml", "CustomResourceDefinition") {
        apply(&crds, &crd).await;
    }
    for ns in manifests::<Namespace>("namespace.yaml", "Namespace") {
        apply(&Api::all(client.clone()), &ns).await;
    }
    for sa in manifests::<ServiceAccount>("serviceaccount.yaml", "ServiceAccount") {
        apply(&Api::namespaced(client.clone(), SYSTEM_NAMESPACE), &sa).await;
    }
    for file in ["rbac.yaml", "silences.yaml"] {
        for role in manifests::<ClusterRole>(file, "ClusterRole") {
            apply(&Api::all(client.clone()), &role).await;
        }
        for binding in manifests::<ClusterRoleBinding>(file, "ClusterRoleBinding") {
            apply(&Api::all(client.clone()), &binding).await;
        }
    }
    established(&crds, "remediationrequests.remediation.tidegate.dev").await;
    let requests: Api<RemediationRequest> = Api::all(client.clone());
    super::eventually_within("RemediationRequests to be served", Duration::from_secs(30), || {
        let requests = requests.clone();
        async move { requests.list(&ListParams::default().limit(1)).await.is_ok() }
    })
    .await;
}

/// Waits until the CRD `name` is established: its resources are served.
pub async fn established(crds: &Api<CustomResourceDefinition>, name: &str) {
    super::eventually_within(&format!("{name} to be established"), Duration::from_secs(30), || {
        let crds = crds.clone();
        async move {
            let Ok(crd) = crds.get(name).await else { return false };
            let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            conditions.iter().any(|c| c.type_ == "Established" && c.status == "True")
        }
    })
    .await;
}

/// A TokenRequest token of `namespace/account`, valid for an hour.
pub async fn token(client: &Client, namespace: &str, account: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..TokenRequestSpec::default() }),
        ..TokenRequest::default()
    };
    let issued = accounts.create_token_request(account, &PostParams::default(), &request).await;
    issued
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{account}: {e}"))
        .status
        .and_then(|s| s.token)
        .expect("a token")
}

/// Waits until RBAC lets `client` list RemediationRequests (bindings take effect
/// through the API server's informers, a moment after they are written).
async fn wait_authorised(client: &Client) {
    let requests: Api<RemediationRequest> = Api::all(client.clone());
    super::eventually_within("the service account to be authorised", Duration::from_secs(30), || {
        let requests = requests.clone();
        async move { requests.list(&ListParams::default().limit(1)).await.is_ok() }
    })
    .await;
}

/// One test's view of the cluster: an admin client, a proxy, and namespaces of
/// its own.
pub struct Kube {
    pub admin: Client,
    pub proxy: Proxy,
    cluster: &'static Cluster,
}

impl Kube {
    /// Sets the cluster up if this binary has not yet, and starts this test's proxy.
    pub async fn new() -> Kube {
        let cluster = cluster();
        let admin = Client::try_from(cluster.admin.clone()).expect("admin client");
        let proxy = Proxy::start(Client::try_from(cluster.upstream.clone()).expect("upstream client")).await;
        Kube { admin, proxy, cluster }
    }

    /// A client for the gateway: tidegate's service account, through the proxy,
    /// with kube's own retries off so that each injected fault reaches the gateway
    /// exactly once.
    pub fn gateway_client(&self) -> Client {
        self.client_as(&self.cluster.gateway_token)
    }

    /// Tidegate's service account straight to the API server, with no proxy in
    /// the way (or in the process's memory).
    pub fn gateway_client_direct(&self) -> Client {
        self.cluster.client_with_token(&self.cluster.gateway_token, &self.cluster.admin.cluster_url.to_string())
    }

    /// The TokenRequest token of tidegate's service account, for a gateway run as
    /// a process of its own (its kubeconfig names the proxy and this token).
    pub fn gateway_token(&self) -> &str {
        &self.cluster.gateway_token
    }

    /// A client with `token`, through the proxy.
    pub fn client_as(&self, token: &str) -> Client {
        self.cluster.client_with_token(token, &self.proxy.url)
    }

    /// A new namespace whose name starts with `tag`, with `labels`.
    pub async fn namespace(&self, tag: &str, labels: &[(&str, &str)]) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{tag}-{}-{n}", self.cluster.run);
        let mut all: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        all.insert(RUN_LABEL.into(), self.cluster.run.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": all}})).unwrap();
        Api::<Namespace>::all(self.admin.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
        name
    }

    /// The RemediationRequests in `namespace`, by name.
    pub async fn requests(&self, namespace: &str) -> Vec<RemediationRequest> {
        let api: Api<RemediationRequest> = Api::namespaced(self.admin.clone(), namespace);
        let mut items = api.list(&ListParams::default()).await.expect("list requests").items;
        items.sort_by_key(|rr| rr.name_any());
        items
    }

    /// Does what a downstream controller does when it finishes a request.
    pub async fn set_phase(&self, namespace: &str, name: &str, phase: &str) {
        let api: Api<RemediationRequest> = Api::namespaced(self.admin.clone(), namespace);
        let patch = json!({"status": {"phase": phase}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("set phase");
    }

    /// Deletes a request by hand, as an operator would.
    pub async fn delete(&self, namespace: &str, name: &str) {
        let api: Api<RemediationRequest> = Api::namespaced(self.admin.clone(), namespace);
        api.delete(name, &Default::default()).await.expect("delete request");
    }

    /// The full name [`Kube::account_with_rules`] gives an account named `name`.
    pub fn account(&self, name: &str) -> String {
        format!("{name}-{}", self.cluster.run)
    }

    /// A token of the account [`Kube::account_with_rules`] made as `name`, issued
    /// for `audiences`.
    pub async fn token_for(&self, name: &str, audiences: &[&str]) -> String {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), SYSTEM_NAMESPACE);
        let spec = TokenRequestSpec {
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        };
        let request = TokenRequest { spec: Some(spec), ..TokenRequest::default() };
        let issued = accounts.create_token_request(&self.account(name), &PostParams::default(), &request).await;
        issued.expect("a TokenRequest").status.and_then(|s| s.token).expect("a token")
    }

    /// A service account in the tidegate namespace bound to a cluster role of
    /// exactly `rules`, and a token of it.
    pub async fn account_with_rules(&self, name: &str, rules: Vec<PolicyRule>) -> String {
        let name = self.account(name);
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), SYSTEM_NAMESPACE);
        accounts.create(&PostParams::default(), &sa).await.expect("create service account");
        let mut role: ClusterRole = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        role.rules = Some(rules);
        Api::<ClusterRole>::all(self.admin.clone()).create(&PostParams::default(), &role).await.expect("role");
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": SYSTEM_NAMESPACE}]
        }))
        .unwrap();
        Api::<ClusterRoleBinding>::all(self.admin.clone())
            .create(&PostParams::default(), &binding)
            .await
            .expect("binding");
        token(&self.admin, SYSTEM_NAMESPACE, &name).await
    }
}

/// On an existing cluster, deletes the namespaces this run made.
fn delete_test_namespaces() {
    let Some(cluster) = CLUSTER_FOR_EXIT.get() else { return };
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        runtime.block_on(async {
            let client = Client::try_from(cluster.0.clone()).ok()?;
            let namespaces: Api<Namespace> = Api::all(client);
            let selector = format!("{RUN_LABEL}={}", cluster.1);
            for ns in namespaces.list(&ListParams::default().labels(&selector)).await.ok()?.items {
                let _ = namespaces.delete(&ns.name_any(), &Default::default()).await;
            }
            Some(())
        })
    })
    .join();
}

/// What the exit hook needs, kept apart from [`cluster()`]'s lock.
static CLUSTER_FOR_EXIT: OnceLock<(kube::Config, String)> = OnceLock::new();
