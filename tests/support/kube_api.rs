//! An in-process fake of the Kubernetes REST API, spoken to by the real `kube::Client`
//! over HTTP/1.1 on `127.0.0.1:0`.
//!
//! It serves two resources: core `namespaces` and the gateway's `remediationrequests`
//! (`remediation.tidegate.dev/v1alpha1`, namespaced, status subresource). Semantics
//! follow the API conventions closely enough that client code which passes here
//! should behave the same against a real API server:
//!
//! - one global, monotonically increasing `resourceVersion`; optimistic concurrency
//!   (409 `Conflict`), `AlreadyExists`, `NotFound` and `Invalid` as real `Status`
//!   objects, with the same reasons, codes and details a real server sends;
//! - status-subresource rules: status is dropped on create and ignored on writes to
//!   the main resource, and `/status` writes change nothing but status;
//! - RemediationRequest specs are immutable (the CRD's `self == oldSelf` rule);
//! - list with label/field selectors; watch with history, `410 Gone` for compacted
//!   resource versions, bookmarks and streaming lists (`sendInitialEvents`), so that
//!   kube-runtime's `watcher`/`reflector` work unchanged;
//! - a namespace must exist before objects are created in it (as admission enforces).
//!   `start()` creates `default`, as every cluster has one.
//!
//! Tests steer it through [`FakeApi`]: fault injection (500, 429, delays, dropped
//! watches, the whole server down), a per-verb request log, and helpers that act as
//! a controller would (`set_phase`).
//!
//! Not modelled (see the caveats on each item): finalizers and graceful deletion,
//! namespace termination (deleting a namespace deletes its objects at once), pruning
//! of unknown fields below the top level, server-side apply, snapshot-consistent
//! paging, managedFields.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Map, Value};
use tidegate::remediation::RemediationRequest;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

pub const GROUP: &str = "remediation.tidegate.dev";
pub const VERSION: &str = "v1alpha1";
pub const PLURAL: &str = "remediationrequests";

/// Watch events kept for resuming watches; older resource versions get `410 Gone`.
const HISTORY: usize = 1000;
/// Requests above this size are refused, like the API server's 3 MiB limit.
const MAX_BODY: usize = 3 * 1024 * 1024;
/// Server-side watch timeout when the client asks for none (the real server uses
/// `--min-request-timeout`, 1800 s, randomised).
const DEFAULT_WATCH_SECS: u64 = 1800;

// ---------------------------------------------------------------------------------
// The handle tests hold
// ---------------------------------------------------------------------------------

/// The API verbs, as audit logs name them: a GET is `Get` for one object, `List` or
/// `Watch` for a collection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Call {
    pub verb: Verb,
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    /// The response code (200 for watches, whose errors arrive as events).
    pub status: u16,
}

/// What an injected fault does to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 500 `InternalError`; the request is not applied.
    InternalError,
    /// 429 `TooManyRequests` with `Retry-After: 1`, as API priority and fairness
    /// sends; the request is not applied.
    TooManyRequests,
    /// The request is applied, then the response is held back this long: the case of
    /// a write that landed while the client gave up waiting for the answer.
    Delay(Duration),
}

struct FaultRule {
    fault: Fault,
    remaining: usize,
    verb: Option<Verb>,
    uri_contains: Option<String>,
}

/// A running fake API server. Dropping it stops the server and closes its watches.
pub struct FakeApi {
    url: String,
    inner: Arc<Inner>,
    server: JoinHandle<()>,
}

struct Inner {
    store: Mutex<Store>,
    faults: Mutex<Vec<FaultRule>>,
    calls: Mutex<Vec<Call>>,
    down: AtomicBool,
    open_watches: AtomicUsize,
}

impl FakeApi {
    /// Starts a server on a free loopback port, with namespace `default` created.
    pub async fn start() -> FakeApi {
        let (feed, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            store: Mutex::new(Store {
                rv: 0,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                compacted_rv: 0,
                feed,
            }),
            faults: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            open_watches: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake API server");
        });
        let api = FakeApi { url, inner, server };
        api.insert_namespace("default", &[]);
        api
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A client config for this server: short connect and write timeouts, no read
    /// timeout (kube's default, which keeps quiet watches open), and kube's built-in
    /// retry of 429/503/504 turned off, so that every injected fault reaches the
    /// caller exactly once and call counts are exact. Set `default_retry = true` for
    /// a production-like client.
    pub fn config(&self) -> kube::Config {
        let mut config = kube::Config::new(self.url.parse().expect("fake API url"));
        config.connect_timeout = Some(Duration::from_secs(2));
        config.write_timeout = Some(Duration::from_secs(5));
        config.read_timeout = None;
        config.default_retry = false;
        config
    }

    /// A real `kube::Client` for [`FakeApi::config`].
    pub fn client(&self) -> kube::Client {
        self.client_with(|_| {})
    }

    /// A client for [`FakeApi::config`] after `tweak`, e.g. a short `read_timeout`.
    pub fn client_with(&self, tweak: impl FnOnce(&mut kube::Config)) -> kube::Client {
        let mut config = self.config();
        tweak(&mut config);
        kube::Client::try_from(config).expect("kube client for the fake API")
    }

    // --- fault injection -----------------------------------------------------------

    /// Makes the next `n` requests fail (or be delayed) with `fault`.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        self.fail_next_matching(n, fault, None, "");
    }

    /// Makes the next `n` requests of `verb` (any if `None`) whose path-and-query
    /// contains `uri_contains` (any if empty) fail with `fault`. Rules are consulted
    /// in the order added; a request consumes at most one.
    pub fn fail_next_matching(&self, n: usize, fault: Fault, verb: Option<Verb>, uri_contains: &str) {
        lock(&self.inner.faults).push(FaultRule {
            fault,
            remaining: n,
            verb,
            uri_contains: (!uri_contains.is_empty()).then(|| uri_contains.to_string()),
        });
    }

    /// Forgets all injected faults not yet consumed.
    pub fn clear_faults(&self) {
        lock(&self.inner.faults).clear();
    }

    /// Takes the server down (every request gets 503 `ServiceUnavailable`, open
    /// watches are cut) or brings it back up. Stored objects survive.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
        if down {
            self.drop_watches();
        }
    }

    /// Cuts every open watch connection mid-stream, as a restarting API server or a
    /// load balancer would. Watchers are expected to re-watch from their last
    /// resource version.
    pub fn drop_watches(&self) {
        let _ = lock(&self.inner.store).feed.send(Feed::Disconnect);
    }

    /// Forgets the watch history, as etcd compaction does: a watch resuming from any
    /// older resource version gets `410 Gone` and must relist.
    pub fn compact(&self) {
        let mut store = lock(&self.inner.store);
        store.history.clear();
        store.compacted_rv = store.rv;
    }

    /// Sends a BOOKMARK at the current resource version to every watch that allowed
    /// bookmarks (real servers do this about once a minute).
    pub fn bookmark(&self) {
        let store = lock(&self.inner.store);
        let _ = store.feed.send(Feed::Bookmark(store.rv));
    }

    /// How many watch streams are open right now.
    pub fn open_watches(&self) -> usize {
        self.inner.open_watches.load(Ordering::SeqCst)
    }

    // --- request log ---------------------------------------------------------------

    /// Requests of `verb` received since start or the last [`FakeApi::reset_calls`],
    /// counting those answered with an injected fault or while down.
    pub fn calls(&self, verb: Verb) -> usize {
        lock(&self.inner.calls).iter().filter(|c| c.verb == verb).count()
    }

    /// Every request received since start or the last reset, in arrival order.
    pub fn requests(&self) -> Vec<Call> {
        lock(&self.inner.calls).clone()
    }

    pub fn reset_calls(&self) {
        lock(&self.inner.calls).clear();
    }

    // --- acting on the store directly ----------------------------------------------

    /// The current (latest) resource version.
    pub fn resource_version(&self) -> u64 {
        lock(&self.inner.store).rv
    }

    /// Creates namespace `name` with `labels`, or sets those labels on it if it exists.
    pub fn insert_namespace(&self, name: &str, labels: &[(&str, &str)]) -> Value {
        let mut store = lock(&self.inner.store);
        let labels: Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        if let Some(old) = store.objects.get(&key(Res::Namespace, "", name)).cloned() {
            let mut new = old.clone();
            merge_patch(&mut new, &json!({"metadata": {"labels": labels}}));
            return store.commit(Res::Namespace, ChangeKind::Modified, new, Some(old));
        }
        let body = json!({"metadata": {"name": name, "labels": labels}});
        store.create(Res::Namespace, None, body, false).expect("valid namespace")
    }

    /// Creates a RemediationRequest from JSON (apiVersion/kind may be omitted); a
    /// status in it is then written through the status subresource, as a client
    /// would have to. Panics if the API server would refuse it.
    pub fn insert(&self, namespace: &str, object: Value) -> Value {
        let mut store = lock(&self.inner.store);
        let status = object.get("status").cloned();
        let created = store
            .create(Res::Remediation, Some(namespace), object, false)
            .unwrap_or_else(|e| panic!("insert refused: {}", e.message));
        let Some(status) = status else { return created };
        let name = created["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let mut body = created;
        body["status"] = status;
        store
            .update(Res::Remediation, namespace, &name, body, Write::Status, false)
            .unwrap_or_else(|e| panic!("insert status refused: {}", e.message))
    }

    /// Does what a downstream controller does: sets `status.phase`, bumping the
    /// resource version and notifying watches. Panics if the object does not exist.
    pub fn set_phase(&self, namespace: &str, name: &str, phase: &str) -> Value {
        let mut store = lock(&self.inner.store);
        let old = store
            .get(Res::Remediation, namespace, name)
            .unwrap_or_else(|_| panic!("set_phase: no RemediationRequest {namespace}/{name}"));
        let mut new = old.clone();
        merge_patch(&mut new, &json!({"status": {"phase": phase}}));
        store.commit(Res::Remediation, ChangeKind::Modified, new, Some(old))
    }

    /// The RemediationRequests in `namespace`, ordered by name.
    pub fn objects(&self, namespace: &str) -> Vec<Value> {
        let store = lock(&self.inner.store);
        store.select(Res::Remediation, Some(namespace), &Selectors::default()).cloned().collect()
    }

    /// One RemediationRequest, if it exists.
    pub fn object(&self, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.inner.store).get(Res::Remediation, namespace, name).ok()
    }

    /// Deletes a RemediationRequest (notifying watches); returns it if it existed.
    pub fn delete(&self, namespace: &str, name: &str) -> Option<Value> {
        let mut store = lock(&self.inner.store);
        store.delete(Res::Remediation, namespace, name, None, false).ok()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.drop_watches();
        self.server.abort();
    }
}

/// A poisoned lock only means another test thread panicked; the data is still fine.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------
// Resources and routing
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Res {
    Namespace,
    Remediation,
}

impl Res {
    fn api_version(self) -> &'static str {
        match self {
            Res::Namespace => "v1",
            Res::Remediation => "remediation.tidegate.dev/v1alpha1",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Res::Namespace => "Namespace",
            Res::Remediation => "RemediationRequest",
        }
    }
    fn group(self) -> &'static str {
        match self {
            Res::Namespace => "",
            Res::Remediation => GROUP,
        }
    }
    fn plural(self) -> &'static str {
        match self {
            Res::Namespace => "namespaces",
            Res::Remediation => PLURAL,
        }
    }
    fn namespaced(self) -> bool {
        self == Res::Remediation
    }
    /// `resource.group`, as error messages name it.
    fn qualified(self) -> String {
        match self {
            Res::Namespace => "namespaces".into(),
            Res::Remediation => format!("{PLURAL}.{GROUP}"),
        }
    }
}

type Key = (Res, String, String);

fn key(res: Res, ns: &str, name: &str) -> Key {
    (res, ns.to_string(), name.to_string())
}

/// A parsed request path: a collection (`name` is `None`), an object, or its status.
struct Route {
    res: Res,
    /// `None` for cluster-scoped resources and for the all-namespaces collection.
    ns: Option<String>,
    name: Option<String>,
    status: bool,
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let at = |res, ns: Option<&str>, rest: &[&str]| {
        let (name, status) = match rest {
            [] => (None, false),
            [name] => (Some(*name), false),
            [name, "status"] => (Some(*name), true),
            _ => return None,
        };
        Some(Route { res, ns: ns.map(String::from), name: name.map(String::from), status })
    };
    match segs.as_slice() {
        ["api", "v1", "namespaces", rest @ ..] => at(Res::Namespace, None, rest),
        ["apis", GROUP, VERSION, PLURAL] => at(Res::Remediation, None, &[]),
        ["apis", GROUP, VERSION, "namespaces", ns, PLURAL, rest @ ..] => at(Res::Remediation, Some(ns), rest),
        _ => None,
    }
}

fn verb_of(method: &Method, route: Option<&Route>, query: &Query) -> Verb {
    let collection = route.is_some_and(|r| r.name.is_none());
    match *method {
        Method::POST => Verb::Create,
        Method::PUT => Verb::Update,
        Method::PATCH => Verb::Patch,
        Method::DELETE => Verb::Delete,
        _ if collection && query.flag("watch") => Verb::Watch,
        _ if collection => Verb::List,
        _ => Verb::Get,
    }
}

struct Query(HashMap<String, String>);

impl Query {
    fn parse(raw: &str) -> Query {
        let pairs = raw.split('&').filter(|s| !s.is_empty()).map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        });
        Query(pairs.collect())
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    /// Go's `strconv.ParseBool` truths, which the API server accepts.
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "t" | "T" | "true" | "TRUE" | "True"))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |i: usize| bytes.get(i).and_then(|b| (*b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------
// Errors: the `Status` objects a real server sends
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

/// One entry of `details.causes`.
struct Cause {
    reason: &'static str,
    field: String,
    message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None }
    }
    fn details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }
    /// `details` for errors about one object: `kind` is the resource (plural) name.
    fn about(self, res: Res, name: &str) -> ApiError {
        let mut details = json!({"name": name, "kind": res.plural()});
        if !res.group().is_empty() {
            details["group"] = json!(res.group());
        }
        self.details(details)
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }
    fn not_found(res: Res, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{} \"{name}\" not found", res.qualified())).about(res, name)
    }
    fn already_exists(res: Res, name: &str) -> ApiError {
        let message = format!("{} \"{name}\" already exists", res.qualified());
        ApiError::new(409, "AlreadyExists", message).about(res, name)
    }
    fn conflict(res: Res, name: &str, why: &str) -> ApiError {
        let message = format!("Operation cannot be fulfilled on {} \"{name}\": {why}", res.qualified());
        ApiError::new(409, "Conflict", message).about(res, name)
    }
    fn stale(res: Res, name: &str) -> ApiError {
        let why = "the object has been modified; please apply your changes to the latest version and try again";
        ApiError::conflict(res, name, why)
    }
    /// 422, as validation (OpenAPI schema, CEL rules, metadata checks) reports it:
    /// here `details.kind` is the Kind, not the resource.
    fn invalid(res: Res, name: &str, causes: Vec<Cause>) -> ApiError {
        let texts: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let what = if texts.len() == 1 { texts[0].clone() } else { format!("[{}]", texts.join(", ")) };
        let gk =
            if res.group().is_empty() { res.kind().to_string() } else { format!("{}.{}", res.kind(), res.group()) };
        let causes: Vec<Value> =
            causes.iter().map(|c| json!({"reason": c.reason, "field": c.field, "message": c.message})).collect();
        let mut details = json!({"name": name, "kind": res.kind(), "causes": causes});
        if !res.group().is_empty() {
            details["group"] = json!(res.group());
        }
        ApiError::new(422, "Invalid", format!("{gk} \"{name}\" is invalid: {what}")).details(details)
    }
    fn invalid_field(res: Res, name: &str, field: &str, message: String) -> ApiError {
        ApiError::invalid(res, name, vec![Cause { reason: "FieldValueInvalid", field: field.into(), message }])
    }
    /// 410: the requested resource version is no longer in the history.
    fn expired(requested: u64, oldest: u64) -> ApiError {
        ApiError::new(410, "Expired", format!("too old resource version: {requested} ({oldest})"))
    }

    fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = json_response(code, &self.to_json());
        if self.code == 429 {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    let body = serde_json::to_vec(body).expect("JSON serialises");
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

// ---------------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------------

async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let uri = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_string(), |pq| pq.to_string());
    let query = Query::parse(parts.uri.query().unwrap_or(""));
    let route = route(parts.uri.path());
    let verb = verb_of(&parts.method, route.as_ref(), &query);

    let mut delay = None;
    let response = if inner.down.load(Ordering::SeqCst) {
        ApiError::new(503, "ServiceUnavailable", "the server is currently unable to handle the request").into_response()
    } else {
        match inner.take_fault(verb, &uri) {
            Some(Fault::InternalError) => {
                ApiError::new(500, "InternalError", "Internal error occurred: injected fault")
                    .details(json!({"causes": [{"message": "injected fault"}]}))
                    .into_response()
            }
            Some(Fault::TooManyRequests) => {
                ApiError::new(429, "TooManyRequests", "Too many requests, please try again later.")
                    .details(json!({"retryAfterSeconds": 1}))
                    .into_response()
            }
            fault => {
                if let Some(Fault::Delay(d)) = fault {
                    delay = Some(d);
                }
                let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
                let content_type = content_type.split(';').next().unwrap_or("").trim().to_string();
                serve(&inner, &parts.method, route, &query, &content_type, body)
                    .await
                    .unwrap_or_else(IntoResponse::into_response)
            }
        }
    };
    lock(&inner.calls).push(Call { verb, method: parts.method.to_string(), uri, status: response.status().as_u16() });
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    response
}

impl Inner {
    fn take_fault(&self, verb: Verb, uri: &str) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        let rule = faults.iter_mut().find(|r| {
            r.remaining > 0
                && r.verb.is_none_or(|v| v == verb)
                && r.uri_contains.as_deref().is_none_or(|s| uri.contains(s))
        })?;
        rule.remaining -= 1;
        let fault = rule.fault;
        faults.retain(|r| r.remaining > 0);
        Some(fault)
    }
}

async fn serve(
    inner: &Arc<Inner>,
    method: &Method,
    route: Option<Route>,
    query: &Query,
    content_type: &str,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(route) = route else {
        return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
    };
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::new(413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728"))?;
    let dry_run = query.get("dryRun").is_some();
    let res = route.res;
    let ns = route.ns.as_deref().unwrap_or("");
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));

    match (method, route.name.as_deref()) {
        (&Method::GET, None) => {
            let selectors = Selectors::parse(res, query)?;
            if query.flag("watch") {
                return watch(inner, &route, query, selectors);
            }
            ok(lock(&inner.store).list(res, route.ns.as_deref(), &selectors, query)?)
        }
        (&Method::GET, Some(name)) => ok(lock(&inner.store).get(res, ns, name)?),
        // Creating through the all-namespaces path is not a thing; nor is POST on an object.
        (&Method::POST, None) if !res.namespaced() || route.ns.is_some() => {
            let created = lock(&inner.store).create(res, route.ns.as_deref(), parse_object(&body)?, dry_run)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (&Method::PUT, Some(name)) => {
            let write = if route.status { Write::Status } else { Write::Main };
            ok(lock(&inner.store).update(res, ns, name, parse_object(&body)?, write, dry_run)?)
        }
        (&Method::PATCH, Some(name)) => {
            let mut store = lock(&inner.store);
            let mut doc = store.get(res, ns, name)?;
            match content_type {
                "application/merge-patch+json" => merge_patch(&mut doc, &parse_json(&body)?),
                // Core types accept strategic merge patches; for the fields tests touch
                // it behaves as a merge patch. Custom resources refuse it (415).
                "application/strategic-merge-patch+json" if res == Res::Namespace => {
                    merge_patch(&mut doc, &parse_json(&body)?)
                }
                "application/json-patch+json" => json_patch(&mut doc, &parse_json(&body)?).map_err(|e| match e {
                    PatchError::Malformed(m) => ApiError::bad_request(m),
                    PatchError::Failed(m) => ApiError::new(422, "Invalid", m),
                })?,
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json (got {other:?})"),
                    ));
                }
            }
            // A patch is an update of the patched object: a resourceVersion left in it
            // by the patch is a precondition, checked like a PUT's (409 if stale).
            let write = if route.status { Write::StatusPatch } else { Write::MainPatch };
            ok(store.update(res, ns, name, doc, write, dry_run)?)
        }
        (&Method::DELETE, Some(name)) if !route.status => {
            let options = if body.is_empty() { None } else { Some(parse_json(&body)?) };
            // DeleteOptions carry dryRun in the body rather than the query.
            let dry_run =
                dry_run || options.as_ref().is_some_and(|o| o["dryRun"].as_array().is_some_and(|a| !a.is_empty()));
            ok(lock(&inner.store).delete(res, ns, name, options.as_ref(), dry_run)?)
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))
}

fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    let value = parse_json(body)?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    Ok(value)
}

// ---------------------------------------------------------------------------------
// The store: objects, resource versions, change history
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One committed change, as watches replay it.
struct Change {
    rv: u64,
    res: Res,
    ns: String,
    kind: ChangeKind,
    object: Value,
    /// The object before a modification, to tell whether it entered or left a
    /// watch's label selector.
    previous: Option<Value>,
}

#[derive(Clone)]
enum Feed {
    Change(Arc<Change>),
    Bookmark(u64),
    Disconnect,
}

struct Store {
    /// The resource version of the last change: etcd's global revision.
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    /// Changes at or below this resource version are no longer in `history`.
    compacted_rv: u64,
    /// Live changes for open watches. Sent while holding the store lock, so a watch
    /// that subscribes under the lock sees every later change exactly once.
    feed: broadcast::Sender<Feed>,
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    /// PUT of the object: everything but status; needs a resourceVersion.
    Main,
    MainPatch,
    /// PUT of `/status`: status only; needs a resourceVersion.
    Status,
    StatusPatch,
}

impl Store {
    fn get(&self, res: Res, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects.get(&key(res, ns, name)).cloned().ok_or_else(|| ApiError::not_found(res, name))
    }

    /// Objects of `res`, in `ns` (all if `None`), matching `selectors`, in key order.
    fn select<'a>(
        &'a self,
        res: Res,
        ns: Option<&'a str>,
        selectors: &'a Selectors,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |((r, n, _), obj)| *r == res && ns.is_none_or(|ns| ns == n) && selectors.matches(obj))
            .map(|(_, obj)| obj)
    }

    /// Lists always serve the latest state: `resourceVersion` unset, `0` or
    /// `NotOlderThan` are all satisfied by it; `Exact` for any other version is
    /// `410 Gone`, as for a compacted one. `limit`/`continue` page through the
    /// latest state (not a snapshot, unlike a real server).
    fn list(&self, res: Res, ns: Option<&str>, selectors: &Selectors, query: &Query) -> Result<Value, ApiError> {
        if let Some(rv) = query.get("resourceVersion").filter(|rv| !rv.is_empty()) {
            let rv = parse_rv(rv)?;
            if query.get("resourceVersionMatch") == Some("Exact") && rv != self.rv {
                return Err(ApiError::expired(rv, self.rv));
            }
        }
        let after = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => Some(decode_continue(token)?),
            None => None,
        };
        let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|&l| l > 0);
        let mut matching: Vec<&Value> = self
            .select(res, ns, selectors)
            .filter(|obj| {
                let (_, ns, name) = object_key(res, obj);
                after.as_ref().is_none_or(|a| (ns, name) > *a)
            })
            .collect();
        let mut metadata = json!({"resourceVersion": self.rv.to_string()});
        if let Some(limit) = limit.filter(|&l| l < matching.len()) {
            let rest = matching.split_off(limit);
            let last = object_key(res, matching[limit - 1]);
            metadata["continue"] = json!(hex::encode(format!("{}/{}", last.1, last.2)));
            metadata["remainingItemCount"] = json!(rest.len());
        }
        Ok(json!({
            "apiVersion": res.api_version(),
            "kind": format!("{}List", res.kind()),
            "metadata": metadata,
            "items": matching,
        }))
    }

    fn create(&mut self, res: Res, url_ns: Option<&str>, mut obj: Value, dry_run: bool) -> Result<Value, ApiError> {
        check_type_and_prune(res, &mut obj)?;
        let meta = obj["metadata"].as_object_mut().expect("metadata is an object");
        let ns = settle_namespace(res, meta, url_ns)?;
        // Not a validation error: storage refuses it and the server answers 500.
        if meta.get("resourceVersion").and_then(Value::as_str).is_some_and(|rv| !rv.is_empty()) {
            return Err(ApiError::new(
                500,
                "InternalError",
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match meta.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            Some(name) => name.to_string(),
            None => match meta.get("generateName").and_then(Value::as_str).filter(|g| !g.is_empty()) {
                Some(prefix) => format!("{prefix}{}", random_suffix()),
                None => {
                    let message = "name or generateName is required".to_string();
                    let cause = Cause { reason: "FieldValueRequired", field: "metadata.name".into(), message };
                    return Err(ApiError::invalid(res, "", vec![cause]));
                }
            },
        };
        meta.insert("name".into(), json!(name));
        if res.namespaced() && !self.objects.contains_key(&key(Res::Namespace, "", &ns)) {
            return Err(ApiError::not_found(Res::Namespace, &ns));
        }
        if self.objects.contains_key(&key(res, &ns, &name)) {
            return Err(ApiError::already_exists(res, &name));
        }
        // System-owned fields: whatever the client sent is replaced.
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.remove("deletionTimestamp");
        meta.remove("generation");
        match res {
            Res::Remediation => {
                meta.insert("generation".into(), json!(1));
                // Status subresource: a create cannot set status.
                obj.as_object_mut().expect("object").remove("status");
            }
            Res::Namespace => {
                // What the namespace strategy and admission add to every namespace.
                let labels = meta.entry("labels").or_insert_with(|| json!({}));
                if !labels.is_object() {
                    *labels = json!({});
                }
                labels["kubernetes.io/metadata.name"] = json!(name);
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
            }
        }
        validate(res, &name, &obj)?;
        if dry_run {
            return Ok(obj);
        }
        Ok(self.commit(res, ChangeKind::Added, obj, None))
    }

    /// PUT and PATCH: `new` is the whole object as the client wants it (for a patch,
    /// the stored object with the patch applied).
    fn update(
        &mut self,
        res: Res,
        ns: &str,
        name: &str,
        mut new: Value,
        write: Write,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        // No create-on-update for either resource: PUT of a missing object is a 404.
        let old = self.get(res, ns, name)?;
        check_type_and_prune(res, &mut new)?;
        let meta = new["metadata"].as_object_mut().expect("metadata is an object");
        let url_ns = res.namespaced().then_some(ns);
        settle_namespace(res, meta, url_ns)?;
        let body_name = meta.get("name").and_then(Value::as_str).unwrap_or("");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let old_rv = old["metadata"]["resourceVersion"].as_str().unwrap_or("");
        match meta.get("resourceVersion").and_then(Value::as_str).filter(|rv| !rv.is_empty()) {
            Some(rv) if rv != old_rv => return Err(ApiError::stale(res, name)),
            Some(_) => {}
            // Custom resources forbid unconditional PUTs; namespaces allow them.
            // (A patch carries the stored resourceVersion unless it removed it.)
            None if res == Res::Remediation && matches!(write, Write::Main | Write::Status) => {
                let message = "Invalid value: 0: must be specified for an update".to_string();
                return Err(ApiError::invalid_field(res, name, "metadata.resourceVersion", message));
            }
            None => {}
        }

        let result = match write {
            // Status writes take nothing but status from the request.
            Write::Status | Write::StatusPatch => {
                let mut result = old.clone();
                match new.get("status") {
                    Some(status) => result["status"] = status.clone(),
                    None => {
                        result.as_object_mut().expect("object").remove("status");
                    }
                }
                result
            }
            // Main-resource writes take everything but status and system metadata.
            Write::Main | Write::MainPatch => {
                let mut result = new;
                for field in ["uid", "creationTimestamp", "generation", "resourceVersion", "deletionTimestamp"] {
                    match old["metadata"].get(field) {
                        Some(v) => result["metadata"][field] = v.clone(),
                        None => {
                            result["metadata"].as_object_mut().expect("metadata").remove(field);
                        }
                    }
                }
                match old.get("status") {
                    Some(status) => result["status"] = status.clone(),
                    None => {
                        result.as_object_mut().expect("object").remove("status");
                    }
                }
                result
            }
        };
        // The CRD's `self == oldSelf` rule on spec. Because spec is the only field
        // besides metadata and status, `metadata.generation` (bumped only when those
        // other fields change) stays 1 for the object's whole life.
        if res == Res::Remediation && result.get("spec") != old.get("spec") {
            let message = "Invalid value: \"object\": spec is immutable".to_string();
            return Err(ApiError::invalid_field(res, name, "spec", message));
        }
        validate(res, name, &result)?;
        // A no-op write is not a change: same resourceVersion, no watch event.
        if result == old || dry_run {
            return Ok(result);
        }
        Ok(self.commit(res, ChangeKind::Modified, result, Some(old)))
    }

    fn delete(
        &mut self,
        res: Res,
        ns: &str,
        name: &str,
        options: Option<&Value>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self.get(res, ns, name)?;
        let preconditions = options.and_then(|o| o.get("preconditions"));
        for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            let want = preconditions.and_then(|p| p.get(field)).and_then(Value::as_str);
            let have = old["metadata"][field].as_str().unwrap_or("");
            if let Some(want) = want.filter(|w| *w != have) {
                let why =
                    format!("Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}");
                return Err(ApiError::conflict(res, name, &why));
            }
        }
        if dry_run {
            return Ok(old);
        }
        if res == Res::Namespace {
            // A real namespace goes Terminating until its contents are gone; here
            // they go at once.
            let inside: Vec<Value> =
                self.select(Res::Remediation, Some(name), &Selectors::default()).cloned().collect();
            for obj in inside {
                self.commit(Res::Remediation, ChangeKind::Deleted, obj, None);
            }
        }
        Ok(self.commit(res, ChangeKind::Deleted, old, None))
    }

    /// Records a change at the next resource version and tells open watches.
    fn commit(&mut self, res: Res, kind: ChangeKind, mut obj: Value, previous: Option<Value>) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let key = object_key(res, &obj);
        match kind {
            ChangeKind::Deleted => self.objects.remove(&key),
            _ => self.objects.insert(key.clone(), obj.clone()),
        };
        let change = Arc::new(Change { rv: self.rv, res, ns: key.1, kind, object: obj.clone(), previous });
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY {
            let dropped = self.history.pop_front().expect("non-empty history");
            self.compacted_rv = dropped.rv;
        }
        let _ = self.feed.send(Feed::Change(change));
        obj
    }
}

fn object_key(res: Res, obj: &Value) -> Key {
    let meta = &obj["metadata"];
    key(res, meta["namespace"].as_str().unwrap_or(""), meta["name"].as_str().unwrap_or(""))
}

/// The continue token: the (namespace, name) of the last object returned.
fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let raw = String::from_utf8(hex::decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    let (ns, name) = raw.split_once('/').ok_or_else(bad)?;
    Ok((ns.to_string(), name.to_string()))
}

fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

/// RFC 3339 at whole seconds, as `metav1.Time` serialises.
fn now() -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).expect("now is a valid time").to_string()
}

/// Five characters from the alphabet `generateName` suffixes use (no vowels, no
/// look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5].iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

// ---------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------

/// Checks `apiVersion`/`kind` (400 if they name another type, filled in if absent),
/// ensures `metadata` is an object, and drops unknown top-level fields as the
/// structural-schema pruning of custom resources does.
fn check_type_and_prune(res: Res, obj: &mut Value) -> Result<(), ApiError> {
    let map = obj.as_object_mut().ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    for (field, want) in [("apiVersion", res.api_version()), ("kind", res.kind())] {
        match map.get(field).and_then(Value::as_str) {
            Some(got) if !got.is_empty() && got != want => {
                return Err(ApiError::bad_request(format!(
                    "the {field} in the data ({got}) does not match the expected {field} ({want})"
                )));
            }
            _ => {
                map.insert(field.into(), json!(want));
            }
        }
    }
    if !map.get("metadata").is_some_and(Value::is_object) {
        map.insert("metadata".into(), json!({}));
    }
    map.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "spec" | "status"));
    Ok(())
}

/// Fills an empty namespace from the URL; a different one is a 400, as the real
/// server's "the namespace of the provided object does not match the namespace sent
/// on the request". Cluster-scoped objects lose any namespace. Returns the namespace.
fn settle_namespace(res: Res, meta: &mut Map<String, Value>, url_ns: Option<&str>) -> Result<String, ApiError> {
    if !res.namespaced() {
        meta.remove("namespace");
        return Ok(String::new());
    }
    let url_ns = url_ns.unwrap_or("");
    match meta.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        Some(ns) if ns != url_ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            meta.insert("namespace".into(), json!(url_ns));
            Ok(url_ns.to_string())
        }
    }
}

/// What validation checks before a write is stored: the name, labels and annotation
/// keys, and (for RemediationRequests) the OpenAPI schema, approximated by
/// deserialising into the Rust type the CRD is generated from.
fn validate(res: Res, name: &str, obj: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    let mut bad = |field: String, message: String| causes.push(Cause { reason: "FieldValueInvalid", field, message });
    let name_ok = match res {
        Res::Namespace => is_dns_label(name),
        Res::Remediation => is_dns_subdomain(name),
    };
    if !name_ok {
        let rule = match res {
            Res::Namespace => "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            Res::Remediation => "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        };
        bad("metadata.name".into(), format!("Invalid value: {name:?}: {rule}"));
    }
    let meta = &obj["metadata"];
    for (k, v) in meta["labels"].as_object().into_iter().flatten() {
        if !is_qualified_name(k) {
            bad(
                "metadata.labels".into(),
                format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"),
            );
        }
        let v = v.as_str().unwrap_or("\u{0}");
        if !(v.is_empty() || is_label_word(v)) {
            bad("metadata.labels".into(), format!("Invalid value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
    }
    let annotations = meta["annotations"].as_object();
    for k in annotations.into_iter().flatten().map(|(k, _)| k) {
        if !is_qualified_name(k) {
            bad(
                "metadata.annotations".into(),
                format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"),
            );
        }
    }
    let annotation_bytes: usize =
        annotations.into_iter().flatten().map(|(k, v)| k.len() + v.as_str().map_or(0, str::len)).sum();
    if annotation_bytes > 256 * 1024 {
        bad("metadata.annotations".into(), "Too long: must have at most 262144 bytes".into());
    }
    if res == Res::Remediation {
        if let Err(e) = serde_path_to_error::deserialize::<_, RemediationRequest>(obj.clone()) {
            bad(e.path().to_string(), format!("Invalid value: {}", e.inner()));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(res, name, causes))
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && word(s, |c| c.is_ascii_lowercase() || c.is_ascii_digit(), |c| c == '-')
}

/// Dot-separated DNS labels, at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| word(part, |c| c.is_ascii_lowercase() || c.is_ascii_digit(), |c| c == '-'))
}

/// A label value or key name: `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63.
fn is_label_word(s: &str) -> bool {
    s.len() <= 63 && word(s, |c| c.is_ascii_alphanumeric(), |c| matches!(c, '-' | '_' | '.'))
}

/// A label or annotation key: an optional DNS-subdomain prefix and `/`, then a name.
fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_word(name),
        None => is_label_word(s),
    }
}

/// Non-empty, starts and ends with an `end` character, `end` or `mid` in between.
fn word(s: &str, end: fn(char) -> bool, mid: fn(char) -> bool) -> bool {
    !s.is_empty() && s.starts_with(end) && s.ends_with(end) && s.chars().all(|c| end(c) || mid(c))
}

// ---------------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------------

#[derive(Default)]
struct Selectors {
    labels: Vec<Requirement>,
    /// `(field, equal, value)`: `field=value` or `field!=value`.
    fields: Vec<(String, bool, String)>,
}

struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    NotEq,
    In,
    NotIn,
    Exists,
    NotExists,
}

impl Selectors {
    fn parse(res: Res, query: &Query) -> Result<Selectors, ApiError> {
        let labels = match query.get("labelSelector") {
            Some(s) => parse_label_selector(s)
                .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?,
            None => Vec::new(),
        };
        let mut fields = Vec::new();
        for term in query.get("fieldSelector").unwrap_or("").split(',').filter(|t| !t.trim().is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!("invalid selector: '{term}'; can't understand '{term}'")));
            };
            // The fields every resource supports; namespaces add status.phase.
            let supported = ["metadata.name", "metadata.namespace"].contains(&field)
                || (res == Res::Namespace && field == "status.phase");
            if !supported {
                return Err(ApiError::bad_request(format!("field label not supported: {field}")));
            }
            fields.push((field.to_string(), equal, value.to_string()));
        }
        Ok(Selectors { labels, fields })
    }

    fn matches(&self, obj: &Value) -> bool {
        let empty = Map::new();
        let labels = obj["metadata"]["labels"].as_object().unwrap_or(&empty);
        let labels_match = self.labels.iter().all(|r| {
            let value = labels.get(&r.key).and_then(Value::as_str);
            let listed = value.is_some_and(|v| r.values.iter().any(|w| w == v));
            match r.op {
                Op::Eq | Op::In => listed,
                // As in Kubernetes: objects without the label match `!=` and `notin`.
                Op::NotEq | Op::NotIn => !listed,
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
            }
        });
        let fields_match = self.fields.iter().all(|(field, equal, want)| {
            let have = match field.as_str() {
                "metadata.name" => obj["metadata"]["name"].as_str(),
                "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
                _ => obj["status"]["phase"].as_str(),
            };
            (have.unwrap_or("") == want) == *equal
        });
        labels_match && fields_match
    }
}

/// `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated.
fn parse_label_selector(selector: &str) -> Result<Vec<Requirement>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    if selector.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for term in terms.into_iter().map(str::trim) {
        let requirement = if let Some(key) = term.strip_prefix('!') {
            Requirement { key: key.trim().into(), op: Op::NotExists, values: vec![] }
        } else if let Some((head, tail)) = term.split_once('(') {
            let words: Vec<&str> = head.split_whitespace().collect();
            let (key, op) = match words.as_slice() {
                [key, "in"] => (*key, Op::In),
                [key, "notin"] => (*key, Op::NotIn),
                _ => return Err(format!("{term:?}: expected `key in (...)` or `key notin (...)`")),
            };
            let list = tail.trim_end().strip_suffix(')').ok_or_else(|| format!("{term:?}: missing ')'"))?;
            let values: Vec<String> = list.split(',').map(|v| v.trim().to_string()).collect();
            Requirement { key: key.into(), op, values }
        } else if let Some((key, value)) = term.split_once("!=") {
            Requirement { key: key.trim().into(), op: Op::NotEq, values: vec![value.trim().into()] }
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Requirement { key: key.trim().into(), op: Op::Eq, values: vec![value.trim().into()] }
        } else {
            Requirement { key: term.into(), op: Op::Exists, values: vec![] }
        };
        if !is_qualified_name(&requirement.key) {
            return Err(format!("invalid label key {:?}", requirement.key));
        }
        if let Some(v) = requirement.values.iter().find(|v| !(v.is_empty() || is_label_word(v))) {
            return Err(format!("invalid label value: {v:?}"));
        }
        out.push(requirement);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------------

/// Which changes a watch sees.
struct WatchScope {
    res: Res,
    ns: Option<String>,
    selectors: Selectors,
}

impl WatchScope {
    /// The event a change becomes for this watch, if any. Like the real watch cache,
    /// an object modified into the selector arrives as ADDED, and one modified out of
    /// it as DELETED.
    fn event(&self, change: &Change) -> Option<Value> {
        if change.res != self.res || self.ns.as_ref().is_some_and(|ns| *ns != change.ns) {
            return None;
        }
        let now = self.selectors.matches(&change.object);
        let before = change.previous.as_ref().is_some_and(|p| self.selectors.matches(p));
        let kind = match (change.kind, before, now) {
            (ChangeKind::Added, _, true) | (ChangeKind::Modified, false, true) => "ADDED",
            (ChangeKind::Modified, true, true) => "MODIFIED",
            (ChangeKind::Modified, true, false) | (ChangeKind::Deleted, _, true) => "DELETED",
            _ => return None,
        };
        Some(json!({"type": kind, "object": change.object}))
    }
}

fn bookmark(res: Res, rv: u64, initial_events_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {"kind": res.kind(), "apiVersion": res.api_version(), "metadata": metadata}})
}

fn line(event: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(event).expect("JSON serialises");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Starts a watch: a 200 whose chunked body is one JSON event per line.
///
/// Where it starts, by `resourceVersion` (as the API server does it):
/// - unset or `0`: synthetic ADDED events for every current object, then changes;
/// - `sendInitialEvents=true` (streaming list; needs `allowWatchBookmarks=true` and
///   `resourceVersionMatch=NotOlderThan`): the same, then a BOOKMARK annotated
///   `k8s.io/initial-events-end: "true"` at the current resource version;
/// - any other: every change after it, from the history, or an ERROR event with a
///   `410 Expired` Status (HTTP status still 200) if that history was compacted.
///
/// The stream ends cleanly after `timeoutSeconds`, and abruptly (connection cut,
/// no final chunk) on `drop_watches`/`set_down`.
fn watch(inner: &Arc<Inner>, route: &Route, query: &Query, selectors: Selectors) -> Result<Response, ApiError> {
    let send_initial = query.flag("sendInitialEvents");
    let bookmarks = query.flag("allowWatchBookmarks");
    let rv_match = query.get("resourceVersionMatch").filter(|m| !m.is_empty());
    let invalid =
        |message: &str| ApiError::new(422, "Invalid", format!("ListOptions.meta.k8s.io \"\" is invalid: {message}"));
    if send_initial && (rv_match != Some("NotOlderThan") || !bookmarks) {
        return Err(invalid("sendInitialEvents: Forbidden: sendInitialEvents requires resourceVersionMatch=NotOlderThan and allowWatchBookmarks=true"));
    }
    if !send_initial && rv_match.is_some() {
        return Err(invalid("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"));
    }
    let timeout = query.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(DEFAULT_WATCH_SECS);
    let rv_param = query.get("resourceVersion").unwrap_or("");
    let scope = WatchScope { res: route.res, ns: route.ns.clone(), selectors };

    let mut backlog = Vec::new();
    let mut expired = false;
    let store = lock(&inner.store);
    if send_initial || rv_param.is_empty() || rv_param == "0" {
        backlog.extend(
            store
                .select(scope.res, scope.ns.as_deref(), &scope.selectors)
                .map(|obj| json!({"type": "ADDED", "object": obj})),
        );
        if send_initial {
            backlog.push(bookmark(scope.res, store.rv, true));
        }
    } else {
        let rv = parse_rv(rv_param)?;
        if rv < store.compacted_rv {
            backlog.push(json!({"type": "ERROR", "object": ApiError::expired(rv, store.compacted_rv + 1).to_json()}));
            expired = true;
        } else {
            backlog.extend(store.history.iter().filter(|c| c.rv > rv).filter_map(|c| scope.event(c)));
        }
    }
    // Subscribed under the store lock: no change is missed or seen twice.
    let mut feed = store.feed.subscribe();
    drop(store);

    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    inner.open_watches.fetch_add(1, Ordering::SeqCst);
    let inner = inner.clone();
    let res = scope.res;
    tokio::spawn(async move {
        let _open = OpenWatch(inner);
        for event in &backlog {
            if tx.send(Ok(line(event))).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            let event = tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                msg = feed.recv() => match msg {
                    Ok(Feed::Change(change)) => match scope.event(&change) {
                        Some(event) => event,
                        None => continue,
                    },
                    Ok(Feed::Bookmark(rv)) if bookmarks => bookmark(res, rv, false),
                    Ok(Feed::Bookmark(_)) => continue,
                    // An error in the body makes the server abort the connection
                    // without the final chunk: what a client sees when a real
                    // API server or load balancer goes away mid-watch.
                    Ok(Feed::Disconnect) | Err(broadcast::error::RecvError::Closed) => {
                        let _ = tx.send(Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "watch dropped"))).await;
                        return;
                    }
                    // Too slow a reader: the real server also gives up on it.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let status = ApiError::new(410, "Expired", "watch reader fell behind; relist").to_json();
                        json!({"type": "ERROR", "object": status})
                    }
                },
            };
            // An ERROR event ends a watch.
            let last = event["type"] == "ERROR";
            if tx.send(Ok(line(&event))).await.is_err() || last {
                return;
            }
        }
    });

    let body =
        Body::from_stream(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Counts an open watch for as long as its task runs.
struct OpenWatch(Arc<Inner>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------
// Patches
// ---------------------------------------------------------------------------------

/// RFC 7386 JSON merge patch: objects merge recursively, `null` deletes, anything
/// else (arrays included) replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().expect("made an object above");
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

enum PatchError {
    /// Not a valid patch document: 400.
    Malformed(String),
    /// A valid patch that does not apply (missing path, failed `test`): 422.
    Failed(String),
}

/// RFC 6902 JSON patch: add, remove, replace, move, copy, test. All or nothing:
/// operations apply to a copy that replaces `doc` only if every one succeeds.
fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = patch.as_array().ok_or_else(|| PatchError::Malformed("a JSON patch must be an array".into()))?;
    let mut work = doc.clone();
    for op in ops {
        let text = |field: &str| {
            op.get(field)
                .and_then(Value::as_str)
                .ok_or_else(|| PatchError::Malformed(format!("operation {op} has no string {field:?}")))
        };
        let value = || {
            op.get("value").cloned().ok_or_else(|| PatchError::Malformed(format!("operation {op} has no \"value\"")))
        };
        let path = pointer(text("path")?)?;
        match text("op")? {
            "add" => add(&mut work, &path, value()?)?,
            "remove" => {
                remove(&mut work, &path)?;
            }
            "replace" => {
                let target = resolve(&mut work, &path)?;
                *target = value()?;
            }
            "move" => {
                let from = pointer(text("from")?)?;
                if path.starts_with(&from) && path.len() > from.len() {
                    return Err(PatchError::Failed("cannot move a value into one of its children".into()));
                }
                let moved = remove(&mut work, &from)?;
                add(&mut work, &path, moved)?;
            }
            "copy" => {
                let copied = resolve(&mut work, &pointer(text("from")?)?)?.clone();
                add(&mut work, &path, copied)?;
            }
            "test" => {
                if *resolve(&mut work, &path)? != value()? {
                    return Err(PatchError::Failed(format!("testing value {} failed", text("path")?)));
                }
            }
            other => return Err(PatchError::Malformed(format!("unknown patch operation {other:?}"))),
        }
    }
    *doc = work;
    Ok(())
}

/// Splits an RFC 6901 pointer into unescaped tokens.
fn pointer(p: &str) -> Result<Vec<String>, PatchError> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let rest =
        p.strip_prefix('/').ok_or_else(|| PatchError::Malformed(format!("path {p:?} does not start with '/'")))?;
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

fn missing(path: &[String]) -> PatchError {
    PatchError::Failed(format!("path /{} does not exist", path.join("/")))
}

/// The value at `path`, which must exist.
fn resolve<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, PatchError> {
    let mut at = doc;
    for token in path {
        at = match at {
            Value::Object(map) => map.get_mut(token),
            Value::Array(items) => index(token).and_then(|i| items.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| missing(path))?;
    }
    Ok(at)
}

/// An array index token: digits without leading zeros.
fn index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    (digits && (token == "0" || !token.starts_with('0'))).then(|| token.parse().ok()).flatten()
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), PatchError> {
    let Some((last, parent)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    match resolve(doc, parent)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
        }
        Value::Array(items) if last == "-" => items.push(value),
        Value::Array(items) => match index(last).filter(|&i| i <= items.len()) {
            Some(i) => items.insert(i, value),
            None => return Err(missing(path)),
        },
        _ => return Err(missing(path)),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, PatchError> {
    let (last, parent) =
        path.split_last().ok_or_else(|| PatchError::Failed("cannot remove the whole document".into()))?;
    match resolve(doc, parent)? {
        Value::Object(map) => map.remove(last),
        Value::Array(items) => index(last).filter(|&i| i < items.len()).map(|i| items.remove(i)),
        _ => None,
    }
    .ok_or_else(|| missing(path))
}
