//! Liveness, readiness and metrics endpoints.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::problem::Problem;
use super::AppState;

/// 200 while the process runs.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when state and sink are reachable and the process is not shutting down.
pub async fn readyz(State(app): State<AppState>) -> Response {
    match readiness(&app).await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(problem) => problem.into_response(),
    }
}

async fn readiness(app: &AppState) -> Result<(), Problem> {
    let retry = app.config.http.retry_after_secs;
    if app.readiness.shutting_down() {
        return Err(Problem::shutting_down(retry));
    }
    app.pipeline.ready().await.map_err(|e| Problem::from_pipeline(&e, retry))
}

/// Prometheus text exposition.
pub async fn metrics(State(app): State<AppState>) -> Response {
    if let Ok(n) = app.pipeline.entries().await {
        app.metrics.state_entries.set(n as i64);
    }
    app.metrics.storm_windows_open.set(app.pipeline.open_windows() as i64);
    app.metrics.ready.set(readiness(&app).await.is_ok() as i64);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], app.metrics.encode())
        .into_response()
}
