//! The HTTP front door: routes, request limits, request IDs, metrics.
//!
//! Handlers here translate between HTTP and the pipeline and nothing more: they
//! never decide dedup or touch state directly.

mod probes;
pub mod problem;
mod signals;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::clock::Clock;
use crate::pipeline::Pipeline;
use crate::telemetry::{HttpLabels, Metrics, ReasonLabels};
use problem::Problem;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Everything a handler may use.
#[derive(Clone)]
pub struct AppState {
    pub pipeline: Arc<Pipeline>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub limits: Limits,
    pub readiness: Readiness,
}

/// Request limits and retry advice, from `http.*` config.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub body_limit: usize,
    pub request_timeout: Duration,
    pub retry_after_secs: u32,
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
        if problem.status.is_client_error() {
            self.metrics
                .rejections
                .get_or_create(&ReasonLabels { reason: problem.reason })
                .inc();
        }
        problem.into_response()
    }
}

/// The gateway's router.
pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/api/v1/signals/prometheus", post(signals::prometheus))
        .route("/api/v1/signals/kubernetes-event", post(signals::kubernetes_event))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics))
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
    app.reject(Problem::method_not_allowed(
        request.method().as_str(),
        request.uri().path(),
    ))
}

/// Records the latency of every request by route and status.
async fn observe(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    app.metrics.http_in_flight.inc();
    let response = next.run(request).await;
    app.metrics.http_in_flight.dec();
    let labels = HttpLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    app.metrics
        .http_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}
