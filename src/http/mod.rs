//! The HTTP front door: routes, request limits, request IDs, metrics.
//!
//! Handlers here translate between HTTP and the pipeline and nothing more: they
//! never decide dedup or touch state directly.

mod budget;
mod probes;
pub mod problem;
mod serve;
mod signals;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ipnet::IpNet;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::clock::Clock;
use crate::ingest;
use crate::pipeline::Pipeline;
use crate::state::RateLimit;
use crate::telemetry::{HttpLabels, Metrics, ReasonLabels};
pub use budget::BodyBudget;
use problem::Problem;
pub use serve::{serve, ConnectionLimits};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Everything a handler may use.
#[derive(Clone)]
pub struct AppState {
    pub pipeline: Arc<Pipeline>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub limits: Limits,
    pub readiness: Readiness,
    pub budget: BodyBudget,
    /// `cloudevents`: the CloudEvents source's mapping per event type.
    pub cloudevents: Arc<ingest::cloudevents::CloudEventsConfig>,
    /// `ingest`: what every signal is held to.
    pub ingest: Arc<ingest::IngestConfig>,
}

/// Request limits and retry advice, from `http.*` and `rate_limit.*` config.
#[derive(Clone, Debug)]
pub struct Limits {
    pub body_limit: usize,
    /// How long a body may wait for room in the budget before a 503.
    pub body_budget_wait: Duration,
    /// How long a body may take to arrive before a 503.
    pub body_read_timeout: Duration,
    pub request_timeout: Duration,
    pub retry_after_secs: u32,
    /// Per-source rate limit; `None` when disabled.
    pub rate_limit: Option<RateLimit>,
    /// The status of a rate-limit refusal: 503, or 429 where configured.
    pub refusal_status: StatusCode,
    /// Peers whose forwarding headers name the real source.
    pub trusted_proxies: Vec<IpNet>,
}

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
    for source in ingest::SOURCES {
        let handler = move |state, peer, headers, body| signals::ingest(state, peer, headers, body, source);
        router = router.route(source.route, post(handler));
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
