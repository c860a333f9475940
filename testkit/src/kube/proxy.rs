//! A fault-injecting HTTP proxy in front of the real API server.
//!
//! The gateway's `kube::Client` talks plain HTTP to the proxy, which forwards each
//! request as it came (the gateway's own bearer token included, so the API server
//! authorises the gateway's service account, not the proxy) over TLS to the API
//! server, streaming the answer back. Tests steer it:
//! - answer the next matching requests with 500 or 429 (`Retry-After: 1`), the
//!   `Status` bodies an API server sends, without forwarding them;
//! - hold matching responses back for a while (the request is forwarded first, so
//!   a write lands while its caller times out);
//! - serve matching requests one at a time, each taking a while, as an API server
//!   with no capacity to spare does: the more are sent at once, the longer each waits;
//! - cut every open watch mid-stream, or answer the next watch with `410 Gone` (an
//!   ERROR event, as a server whose history was compacted does) so the watcher
//!   must re-list;
//! - hold back the events of matching watches until released (a watch that lags);
//! - be down: 503 to everything, watches cut.
//!
//! It also keeps a log of every request and its status, for counting API calls.
//! It never changes a request or a forwarded answer.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: Method,
    /// Path and query, as sent.
    pub uri: String,
    /// The status answered (200 for a watch, whose errors arrive as events).
    pub status: u16,
}

impl Call {
    pub fn is_watch(&self) -> bool {
        is_watch(&self.uri)
    }
}

fn is_watch(uri: &str) -> bool {
    uri.contains("watch=true") || uri.contains("watch=1")
}

/// What to do to a matching request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 500 `InternalError`, not forwarded.
    InternalError,
    /// 429 `TooManyRequests` with `Retry-After: 1`, not forwarded.
    TooManyRequests,
    /// Forwarded, then the answer is held back this long.
    Delay(Duration),
    /// Forwarded one at a time among the requests with this fault, each answer held
    /// back this long before the next request is forwarded.
    Queue(Duration),
    /// For a watch: a 200 whose only event is an ERROR with a `410 Expired` status.
    Gone,
}

/// Which requests a fault applies to: a method (any if `None`) and a substring of
/// the path and query (any if empty).
#[derive(Clone, Debug, Default)]
pub struct Matching {
    pub method: Option<Method>,
    pub uri_contains: String,
    /// Only watches (`Some(true)`), or only other requests (`Some(false)`).
    pub watch: Option<bool>,
}

impl Matching {
    pub fn any() -> Self {
        Matching::default()
    }

    pub fn new(method: Method, uri_contains: &str) -> Self {
        Matching { method: Some(method), uri_contains: uri_contains.into(), watch: None }
    }

    /// Watches whose path contains `path`.
    pub fn watches(path: &str) -> Self {
        Matching::new(Method::GET, &format!("{path}?")).watching()
    }

    /// Only watches.
    pub fn watching(self) -> Self {
        Matching { watch: Some(true), ..self }
    }

    /// Whether `call` is one of these.
    pub fn covers(&self, call: &Call) -> bool {
        self.matches(&call.method, &call.uri)
    }

    fn matches(&self, method: &Method, uri: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && uri.contains(&self.uri_contains)
            && self.watch.is_none_or(|w| w == is_watch(uri))
    }
}

struct Rule {
    fault: Fault,
    remaining: usize,
    matching: Matching,
}

#[derive(Default)]
struct Faults {
    rules: Vec<Rule>,
    down: bool,
    /// Paths whose watch events are held back.
    held: Vec<String>,
}

struct Shared {
    upstream: kube::Client,
    faults: Mutex<Faults>,
    calls: Mutex<Vec<Call>>,
    /// Bumped to cut every open watch.
    cuts: watch::Sender<u64>,
    /// Bumped when held watches may go on.
    releases: watch::Sender<u64>,
    /// The turn of requests with [`Fault::Queue`].
    queue: tokio::sync::Mutex<()>,
}

/// A running proxy. Dropping it stops it and cuts its streams.
pub struct Proxy {
    pub url: String,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port forwarding through `upstream` (a
    /// client of the API server that adds no credentials of its own).
    pub async fn start(upstream: kube::Client) -> Proxy {
        let shared = Arc::new(Shared {
            upstream,
            faults: Mutex::default(),
            calls: Mutex::default(),
            cuts: watch::channel(0).0,
            releases: watch::channel(0).0,
            queue: tokio::sync::Mutex::new(()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let app = Router::new().fallback(forward).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("proxy server");
        });
        Proxy { url, shared, server }
    }

    /// Makes the next `n` requests that match fail (or wait) with `fault`. Rules are
    /// consulted in the order added; a request consumes at most one.
    pub fn fail_next(&self, n: usize, fault: Fault, matching: Matching) {
        lock(&self.shared.faults).rules.push(Rule { fault, remaining: n, matching });
    }

    /// Forgets the faults not yet consumed.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).rules.clear();
    }

    /// Down: every request is answered 503 and open watches are cut. Up again:
    /// requests are forwarded.
    pub fn set_down(&self, down: bool) {
        lock(&self.shared.faults).down = down;
        if down {
            self.cut_watches();
        }
    }

    /// Cuts every open watch mid-stream, as a restarting API server or a load
    /// balancer would.
    pub fn cut_watches(&self) {
        self.shared.cuts.send_modify(|n| *n += 1);
    }

    /// Holds back the events of watches whose path contains `path` (those open and
    /// those to come) until [`Proxy::release`].
    pub fn hold_watches(&self, path: &str) {
        lock(&self.shared.faults).held.push(path.to_string());
    }

    /// Lets held watches go on, delivering what they held.
    pub fn release(&self) {
        lock(&self.shared.faults).held.clear();
        self.shared.releases.send_modify(|n| *n += 1);
    }

    /// Every request seen so far.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.shared.calls).clone()
    }

    /// Requests seen so far that `matching` matches.
    pub fn count(&self, matching: &Matching) -> usize {
        lock(&self.shared.calls).iter().filter(|c| matching.matches(&c.method, &c.uri)).count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut_watches();
        self.server.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A `Status` answer, as the API server words it.
fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    });
    let mut response = (StatusCode::from_u16(code).expect("a status code"), axum::Json(body)).into_response();
    if code == 429 {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let method = request.method().clone();
    let uri = request.uri().path_and_query().map(|pq| pq.to_string()).unwrap_or_default();
    let watching = is_watch(&uri);
    let (fault, down) = {
        let mut faults = lock(&shared.faults);
        let fault = faults.rules.iter_mut().find(|r| r.remaining > 0 && r.matching.matches(&method, &uri)).map(|r| {
            r.remaining -= 1;
            r.fault
        });
        faults.rules.retain(|r| r.remaining > 0);
        (fault, faults.down)
    };
    let response = match (down, fault) {
        (true, _) => status(503, "ServiceUnavailable", "the API server is down (test proxy)"),
        (false, Some(Fault::InternalError)) => status(500, "InternalError", "injected by the test proxy"),
        (false, Some(Fault::TooManyRequests)) => status(429, "TooManyRequests", "injected by the test proxy"),
        (false, Some(Fault::Gone)) if watching => {
            let event = json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version (test proxy)", "reason": "Expired", "code": 410
            }});
            let mut line = serde_json::to_vec(&event).expect("JSON");
            line.push(b'\n');
            ([(header::CONTENT_TYPE, "application/json")], line).into_response()
        }
        (false, fault) => {
            let (delay, queued) = match fault {
                Some(Fault::Delay(d)) => (Some(d), false),
                Some(Fault::Queue(d)) => (Some(d), true),
                _ => (None, false),
            };
            // On a task of its own: a caller that gives up does not take back a
            // request the API server may already be applying, as with a real server.
            let forwarded = tokio::spawn(async move {
                let turn = match queued {
                    true => Some(shared.queue.lock().await),
                    false => None,
                };
                let response = upstream(&shared, request, watching, &uri).await;
                lock(&shared.calls).push(Call { method, uri, status: response.status().as_u16() });
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                drop(turn);
                response
            });
            return forwarded
                .await
                .unwrap_or_else(|e| status(502, "BadGateway", &format!("the test proxy failed: {e}")));
        }
    };
    lock(&shared.calls).push(Call { method, uri, status: response.status().as_u16() });
    response
}

/// Forwards `request` and streams the answer back, cutting it when told to, and
/// holding a watch's events while its path is held.
async fn upstream(shared: &Arc<Shared>, request: Request, watching: bool, uri: &str) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return status(400, "BadRequest", &format!("unreadable request body: {e}")),
    };
    let request = axum::http::Request::from_parts(parts, kube::client::Body::from(bytes.to_vec()));
    let response = match shared.upstream.send(request).await {
        Ok(response) => response,
        Err(e) => return status(502, "BadGateway", &format!("the test proxy could not reach the API server: {e}")),
    };
    let (parts, body) = response.into_parts();
    let mut cuts = shared.cuts.subscribe();
    cuts.mark_unchanged();
    let held_path = watching.then(|| uri.split('?').next().unwrap_or_default().to_string());
    let state = (body.into_data_stream().boxed(), cuts, shared.clone(), held_path);
    let stream = futures::stream::unfold(Some(state), |state| async move {
        let (mut body, mut cuts, shared, held_path) = state?;
        let cut =
            || Some((Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "cut by the test proxy")), None));
        let chunk: Result<Bytes, std::io::Error> = tokio::select! {
            _ = cuts.changed() => return cut(),
            chunk = body.next() => chunk?.map_err(std::io::Error::other),
        };
        if let Some(path) = &held_path {
            tokio::select! {
                _ = cuts.changed() => return cut(),
                _ = wait_while_held(&shared, path) => {}
            }
        }
        Some((chunk, Some((body, cuts, shared, held_path))))
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

async fn wait_while_held(shared: &Shared, path: &str) {
    let mut releases = shared.releases.subscribe();
    while lock(&shared.faults).held.iter().any(|held| path.contains(held.as_str())) {
        if releases.changed().await.is_err() {
            return;
        }
    }
}
