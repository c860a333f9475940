//! RFC 7807 problem details: the one shape of every error answer.
//!
//! Each error the gateway can answer with maps to a status and a problem type here,
//! and nowhere else. The problem type is the error's metric label, from its type's
//! `label()` method, so what a metric counts and what an answer names are one word.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::AuthError;
use crate::ingest::{Failure, IngestError};
use crate::pipeline::PipelineError;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// A problem answer.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The metric label of this problem; answered as the `type` URI it names.
    #[serde(rename = "type", serialize_with = "type_uri")]
    pub reason: &'static str,
    pub title: &'static str,
    #[serde(serialize_with = "status_code")]
    pub status: StatusCode,
    pub detail: String,
    /// Per-alert errors, when a whole batch was refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Failure>,
    #[serde(skip)]
    pub retry_after_secs: Option<u32>,
    /// The challenges of a 401 (`WWW-Authenticate`); boxed, as few answers have one.
    #[serde(skip)]
    pub challenge: Option<Box<HeaderValue>>,
}

fn status_code<S: serde::Serializer>(s: &StatusCode, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_u16(s.as_u16())
}

fn type_uri<S: serde::Serializer>(reason: &&'static str, ser: S) -> Result<S::Ok, S::Error> {
    ser.collect_str(&format_args!("https://tidegate.dev/problems/{}", reason.replace('_', "-")))
}

impl Problem {
    /// Every reason a problem of this module is answered with (the auth ones are
    /// [`AuthError::REASONS`], the payload ones `IngestError::KINDS`), and those of
    /// the connections `super::serve` closes early: the fixed set of
    /// `tidegate_http_rejections_total` reasons.
    pub const REASONS: &'static [&'static str] = &[
        "unsupported_media_type",
        "payload_too_large",
        "not_found",
        "method_not_allowed",
        "rate_limited",
        "body_budget",
        "body_timeout",
        "body_unreadable",
        "timeout",
        "shutting_down",
        "state_unavailable",
        "sink_unavailable",
        "header_timeout",
        "header_too_large",
    ];

    pub fn new(status: StatusCode, reason: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            reason,
            title,
            status,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after_secs: None,
            challenge: None,
        }
    }

    pub fn unsupported_media_type(got: Option<&str>) -> Self {
        let detail = match got {
            Some(ct) => format!("Content-Type must be application/json, got {ct:?}"),
            None => "Content-Type must be application/json; the request had none".to_string(),
        };
        Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "Unsupported media type", detail)
    }

    pub fn too_large(limit: usize) -> Self {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "Payload too large",
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    pub fn not_found(path: &str) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not_found", "Not found", format!("no endpoint at {path}"))
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            format!("{method} is not allowed on {path}"),
        )
    }

    /// A source over its rate limit: `status` is 503 by default, which every sender
    /// retries, or 429 where configured for senders that honour it.
    pub fn rate_limited(source: &str, retry_after_secs: u32, status: StatusCode) -> Self {
        let title = if status == StatusCode::TOO_MANY_REQUESTS { "Too many requests" } else { "Service unavailable" };
        let mut p = Problem::new(
            status,
            "rate_limited",
            title,
            format!("source {source} is over its rate limit; retry in {retry_after_secs}s"),
        );
        p.retry_after_secs = Some(retry_after_secs);
        p
    }

    /// Bodies in flight already fill the budget: this one may be read later.
    pub fn body_budget(bytes: u64, waited: std::time::Duration, retry_after_secs: u32) -> Self {
        Problem::unavailable(
            "body_budget",
            format!(
                "no room for a {bytes}-byte body within {waited:?}: other large requests are being read; retry later"
            ),
            retry_after_secs,
        )
    }

    /// The body was still arriving when `http.body_read_timeout` ran out.
    pub fn body_timeout(bytes: u64, timeout: std::time::Duration, retry_after_secs: u32) -> Self {
        Problem::unavailable(
            "body_timeout",
            format!("the body did not arrive within {timeout:?} ({bytes} bytes had); retry later"),
            retry_after_secs,
        )
    }

    pub fn unavailable(reason: &'static str, detail: impl Into<String>, retry_after_secs: u32) -> Self {
        let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, reason, "Service unavailable", detail);
        p.retry_after_secs = Some(retry_after_secs);
        p
    }

    pub fn unreadable_body(e: &dyn std::error::Error) -> Self {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "body_unreadable",
            "Unreadable body",
            format!("could not read the request body: {e}"),
        )
    }

    /// Some (or all) of a payload's `total` signals could not be used: the first
    /// failure's reason, and each failure when there were several. Where a sender
    /// is answered for the whole batch only (Alertmanager's API), the others were
    /// recorded, and the detail says so.
    pub fn unusable(failures: Vec<Failure>, total: usize) -> Self {
        let first = &failures[0];
        let (reason, first_detail) = (first.error.label(), first.error.to_string());
        let recorded = total - failures.len();
        let detail = match (total, recorded) {
            (1, _) => first_detail,
            (_, 0) => format!("none of the {total} alerts is usable"),
            (_, _) => format!(
                "{} of the {total} alerts are not usable and were not recorded; the other {recorded} were",
                failures.len()
            ),
        };
        let mut problem = Problem::new(StatusCode::BAD_REQUEST, reason, "Invalid payload", detail);
        if total > 1 {
            problem.errors = failures;
        }
        problem
    }

    /// The decision took longer than `http.request_timeout`.
    pub fn timeout(limit: std::time::Duration, retry_after_secs: u32) -> Self {
        Problem::unavailable("timeout", format!("could not decide within {limit:?}; retry later"), retry_after_secs)
    }

    pub fn shutting_down(retry_after_secs: u32) -> Self {
        Problem::unavailable("shutting_down", "tidegate is shutting down", retry_after_secs)
    }

    /// Refused credentials: 401 with the route's `challenge` when missing or not
    /// accepted, 403 when the sender may not submit, 503 (retried) when the
    /// authority that checks them cannot answer or a signed message's earlier
    /// delivery is still being decided. The detail never holds a
    /// credential: the errors carry none.
    pub fn auth(e: &AuthError, challenge: &HeaderValue, retry_after_secs: u32) -> Self {
        match e {
            AuthError::Missing | AuthError::Rejected(_) => {
                let mut p = Problem::new(StatusCode::UNAUTHORIZED, e.label(), "Unauthorized", e.to_string());
                p.challenge = Some(Box::new(challenge.clone()));
                p
            }
            AuthError::Forbidden { .. } => Problem::new(StatusCode::FORBIDDEN, e.label(), "Forbidden", e.to_string()),
            AuthError::Unavailable(_) | AuthError::ReplayStore(_) | AuthError::InFlight => {
                Problem::unavailable(e.label(), format!("{e}; retry later"), retry_after_secs)
            }
        }
    }

    pub fn from_pipeline(e: &PipelineError, retry_after_secs: u32) -> Self {
        let reason = match e {
            PipelineError::State(_) => "state_unavailable",
            PipelineError::Sink(_) => "sink_unavailable",
        };
        Problem::unavailable(reason, format!("{e}; nothing was acknowledged, retry later"), retry_after_secs)
    }

    pub fn bad_request(e: &IngestError) -> Self {
        let title = match e {
            IngestError::Malformed { .. } => "Malformed payload",
            IngestError::Invalid { .. } => "Invalid payload",
            IngestError::NoAlerts => "No alerts",
            IngestError::NotWarning(_) => "Not a Warning event",
            IngestError::OverLimit { .. } => "Over a limit",
            IngestError::Identity { .. } => "Invalid identity",
        };
        Problem::new(StatusCode::BAD_REQUEST, e.label(), title, e.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).expect("a problem always serialises");
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(challenge) = self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, *challenge);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_made_here_has_a_reason_of_the_fixed_set() {
        let io = std::io::Error::other("x");
        let second = std::time::Duration::from_secs(1);
        let problems = [
            Problem::unsupported_media_type(None),
            Problem::too_large(1),
            Problem::not_found("/"),
            Problem::method_not_allowed("GET", "/"),
            Problem::rate_limited("a", 1, StatusCode::SERVICE_UNAVAILABLE),
            Problem::body_budget(1, second, 1),
            Problem::body_timeout(1, second, 1),
            Problem::unreadable_body(&io),
            Problem::timeout(second, 1),
            Problem::shutting_down(1),
        ];
        for problem in problems {
            assert!(Problem::REASONS.contains(&problem.reason), "{}", problem.reason);
        }
        let challenge = HeaderValue::from_static("Bearer");
        assert!(Problem::auth(&AuthError::InFlight, &challenge, 1).retry_after_secs.is_some(), "retried, not 4xx");
    }
}
