//! The HTTP front door: routes, request limits, request IDs, metrics.
//!
//! Handlers here translate between HTTP and the pipeline and nothing more: they
//! never decide dedup or touch state directly.

mod budget;
mod probes;
pub mod problem;
mod serve;
mod signals;
pub mod tls;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::clock::Clock;
use crate::ingest;
use crate::pipeline::Pipeline;
use crate::section::ConfigError;
use crate::telemetry::{HttpLabels, Metrics, ReasonLabels};
pub use budget::BodyBudget;
use problem::Problem;
pub use serve::serve;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Everything a handler may use, behind one `Arc`: axum clones the state for each
/// extractor and layer of every request, and one reference count bumped per clone
/// costs less than one per field, each a cache line both cores write.
#[derive(Clone)]
pub struct AppState(Arc<App>);

impl AppState {
    pub fn new(app: App) -> Self {
        AppState(Arc::new(app))
    }
}

impl std::ops::Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct App {
    pub pipeline: Arc<Pipeline>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub config: Arc<Settings>,
    pub readiness: Readiness,
    pub budget: BodyBudget,
    /// Each route's authenticators.
    pub auth: Arc<crate::auth::Auth>,
    /// Where signed webhooks' message ids are remembered: the state store.
    pub replays: Arc<dyn crate::state::StateStore>,
}

/// What the HTTP front door reads: its own section, how a refusal of the rate
/// limit is answered, and the sources' sections.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub http: HttpConfig,
    /// `rate_limit.refusal_status`: how a request over its sender's limit is answered.
    pub refusal_status: u16,
    pub sources: ingest::Settings,
}

/// `http`: the listener's limits, timeouts and shutdown.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest accepted request body, in bytes. Twice a 10,000-alert Alertmanager
    /// notification of kube-prometheus-stack's `KubePodCrashLooping` (11.1 MB,
    /// measured; see docs/delivery.md): only a body no legitimate sender produces is
    /// answered 413, which a sender never retries.
    pub body_limit: usize,
    /// Body bytes that all requests together may hold while they are read and
    /// decided; a request that would go over waits up to `body_budget_wait`, then is
    /// answered 503 with `Retry-After`. Unset: an eighth of the memory the process
    /// may use (its cgroup's limit, else the machine's), at least twice
    /// `body_limit`, at most 1 GiB.
    ///
    /// Memory stays bounded and nothing is refused for good.
    pub body_budget: Option<u64>,
    /// How long a request may wait for room in `body_budget`.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub body_budget_wait: Duration,
    /// How long one request may take before it is answered 503.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// After SIGTERM, how long to keep serving with readiness at 503, so that load
    /// balancers stop sending before the listener closes.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub shutdown_delay: Duration,
    /// Then, how long in-flight requests and pending status writes may take; delay
    /// plus grace stays inside Kubernetes' default 30 s.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub shutdown_grace: Duration,
    /// `Retry-After` sent with 503 answers, in seconds.
    pub retry_after_secs: u32,
    /// How long a client may take to send a request's head (and, on a kept-alive
    /// connection, to start the next one) before its connection is closed: a slow
    /// or silent client cannot hold a connection (docs/abuse.md).
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body, from the end of its
    /// head; a slower one is answered 503 with `Retry-After` and its budget freed.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub body_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; a larger one is
    /// answered 431.
    pub max_header_bytes: usize,
    /// Connections open at once, at most; further clients wait to be accepted.
    pub max_connections: usize,
    /// TLS on the listener: on when `cert_file` and `key_file` are set.
    pub tls: tls::TlsConfig,
    /// Proxies whose `X-Forwarded-For` / `X-Real-IP` are believed, as CIDRs, to
    /// find who a request is from (and charged to). Empty: the source is the peer
    /// address. Was `rate_limit.trusted_proxies`, which is still read.
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_limit: 24 * 1024 * 1024,
            body_budget: None,
            body_budget_wait: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(20),
            retry_after_secs: 5,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_connections: 4096,
            tls: Default::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason| Err(ConfigError::invalid(key, reason));
        if !(1024..=64 * 1024 * 1024).contains(&self.body_limit) {
            return invalid("http.body_limit", "must be between 1024 and 67108864 bytes");
        }
        if self.body_budget.is_some_and(|budget| budget < self.body_limit as u64) {
            return invalid(
                "http.body_budget",
                "must be at least http.body_limit, or the largest body could never be read",
            );
        }
        if self.body_budget.is_some_and(|budget| budget > u32::MAX as u64 * 16) {
            return invalid("http.body_budget", "must be at most 64 GiB");
        }
        if self.request_timeout < Duration::from_millis(100) {
            return invalid("http.request_timeout", "must be at least 100ms");
        }
        if self.header_read_timeout < Duration::from_millis(100) {
            return invalid("http.header_read_timeout", "must be at least 100ms");
        }
        if self.body_read_timeout < Duration::from_millis(100) {
            return invalid("http.body_read_timeout", "must be at least 100ms");
        }
        if !(1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return invalid("http.max_header_bytes", "must be between 1024 and 1048576 bytes");
        }
        if self.max_connections == 0 {
            return invalid("http.max_connections", "must be at least 1");
        }
        if self.retry_after_secs == 0 {
            return invalid("http.retry_after_secs", "must be at least 1");
        }
        if let Err(reason) = self.tls.validate() {
            return Err(ConfigError::invalid("http.tls", reason));
        }
        Ok(())
    }

    /// Body bytes in flight, at most: `body_budget`, or by default an eighth of the
    /// memory this process may use, at least twice `body_limit` and at most 1 GiB.
    /// Parsing roughly doubles a body's footprint while it is decided, so an eighth
    /// keeps bodies well inside a quarter of memory.
    pub fn body_budget(&self) -> u64 {
        self.body_budget.unwrap_or_else(|| {
            let floor = 2 * self.body_limit as u64;
            (memory_limit() / 8).clamp(floor, floor.max(1 << 30))
        })
    }
}

/// The memory this process may use: its cgroup's limit (v2, then v1), else the
/// machine's total, else 4 GiB when neither can be read.
fn memory_limit() -> u64 {
    let read = |path: &str| std::fs::read_to_string(path).ok()?.trim().parse::<u64>().ok();
    let machine = || {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().strip_suffix("kB")?;
        kib.trim().parse::<u64>().ok().map(|kib| kib * 1024)
    };
    let total = machine().unwrap_or(4 << 30);
    // An unlimited cgroup reads "max" (v2) or a huge number (v1).
    let cgroup = read("/sys/fs/cgroup/memory.max").or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"));
    cgroup.map_or(total, |limit| limit.min(total))
}

/// How a request's sender was decided (`rate_limited_total{source_class}`): its
/// authenticated name, its peer address, or the address a trusted proxy forwarded.
pub const SOURCE_CLASSES: &[&str] = &["authenticated", "peer", "forwarded"];

/// Who a request is charged to, and how that was decided (a metric label).
pub fn source_of(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> (String, &'static str) {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if is_trusted(&peer) {
        // The rightmost address a trusted proxy did not add is the client's: entries
        // further left were written by the client itself and prove nothing.
        let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).and_then(|list| {
            list.rsplit(',').filter_map(|hop| hop.trim().parse::<IpAddr>().ok()).find(|ip| !is_trusted(ip))
        });
        let real = || headers.get("x-real-ip").and_then(|v| v.to_str().ok()?.trim().parse::<IpAddr>().ok());
        if let Some(ip) = forwarded.or_else(real) {
            return (ip.to_string(), "forwarded");
        }
    }
    (peer.to_string(), "peer")
}

/// Whether the process is shutting down; `/readyz` answers 503 from the moment
/// shutdown begins, while in-flight requests finish.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn begin_shutdown(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn shutting_down(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl AppState {
    /// Counts a refused request by reason and turns it into a response.
    fn reject(&self, problem: Problem) -> Response {
        self.metrics.rejections.get_or_create(&ReasonLabels { reason: problem.reason }).inc();
        problem.into_response()
    }
}

const HEALTHZ: &str = "/healthz";
const READYZ: &str = "/readyz";
const METRICS: &str = "/metrics";
/// Routes that are not a source's, for metric labels.
const PROBES: [&str; 3] = [HEALTHZ, READYZ, METRICS];

/// The route label of a matched path: a source's route or a probe's, so that the
/// label set stays bounded whatever paths clients send.
fn route_label(path: &str) -> Option<&'static str> {
    let sources = ingest::SOURCES.iter().map(|s| s.route);
    sources.chain(PROBES).find(|route| *route == path)
}

/// The gateway's router: a route per source in the table, and the probes.
pub fn router(app: AppState) -> Router {
    let mut router = Router::new();
    for adapter in ingest::Adapter::all(&app.config.sources) {
        let (route, adapter) = (adapter.source.route, Arc::new(adapter));
        let handler = move |state, peer, certificate, headers, body| {
            signals::ingest(state, peer, certificate, headers, body, adapter.clone())
        };
        router = router.route(route, post(handler));
    }
    router
        .route(HEALTHZ, get(probes::healthz))
        .route(READYZ, get(probes::readyz))
        .route(METRICS, get(probes::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(app)
}

async fn not_found(State(app): State<AppState>, request: Request) -> Response {
    app.reject(Problem::not_found(request.uri().path()))
}

async fn method_not_allowed(State(app): State<AppState>, request: Request) -> Response {
    app.reject(Problem::method_not_allowed(request.method().as_str(), request.uri().path()))
}

/// Records the latency of every request by route and status.
async fn observe(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Static labels: nothing allocated per request, and a bounded label set
    // whatever paths and methods clients send.
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        _ => "other",
    };
    let route = request.extensions().get::<MatchedPath>().and_then(|p| route_label(p.as_str())).unwrap_or("unmatched");
    app.metrics.http_in_flight.inc();
    let response = next.run(request).await;
    app.metrics.http_in_flight.dec();
    let labels = HttpLabels { method, route, status: response.status().as_u16() };
    app.metrics.http_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.1.1")]);
        assert_eq!(source_of("10.0.0.2".parse().unwrap(), &h, &trusted), ("203.0.113.7".into(), "forwarded"));
        assert_eq!(source_of("198.51.100.1".parse().unwrap(), &h, &trusted), ("198.51.100.1".into(), "peer"));
        let h = headers(&[("x-real-ip", "203.0.113.9")]);
        assert_eq!(source_of("10.0.0.2".parse().unwrap(), &h, &trusted), ("203.0.113.9".into(), "forwarded"));
        assert_eq!(source_of("10.0.0.2".parse().unwrap(), &HeaderMap::new(), &trusted), ("10.0.0.2".into(), "peer"));
    }
}
