//! `POST /api/v1/signals/*`: read, validate, decide, answer.
//!
//! Order of checks: credentials (401, 403; before the body is read, except an HMAC
//! signature, which covers the body and is checked once it is read), media type
//! (415), size (413), shape (400), then the pipeline, which charges the sender's rate
//! limit (429) and decides in one step (503 if state or sink cannot record). A
//! request refused before the pipeline is charged too: to its sender once
//! authenticated, else to its address.
//!
//! How success is answered is the source's ([`Answer`]). For tidegate's own routes one
//! alert is answered 201 or 202, and a batch of several 207 with a result per alert,
//! so a sender learns about every alert and a bad alert never costs it the good ones.
//! `/api/v2/alerts` is answered as Alertmanager answers it: 200 with an empty body,
//! or 400 naming the unusable alerts once the others are recorded.

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use jiff::Timestamp;
use serde::Serialize;
use tracing::Instrument;

use super::problem::{AlertError, Problem};
use super::AppState;
use crate::audit;
use crate::auth::{AuthError, Chain, Checked, Identity, Presented};
use crate::http::tls::PeerCertificate;
use crate::ingest::{Answer, Payload, Source};
use crate::pipeline::{Outcome, OutcomeStatus, Processed};
use crate::signal::Fingerprint;
use crate::state::Admission;
use crate::telemetry::{trace, SenderLabels, SourceClassLabels};

/// `POST` on a source's route: the one handler of every source in the table.
pub async fn ingest(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    certificate: Option<Extension<PeerCertificate>>,
    headers: HeaderMap,
    body: Body,
    source: &'static Source,
) -> Response {
    let certificate = certificate.map(|Extension(c)| c);
    let span = tracing::info_span!(target: trace::TARGET, "receive", otel.kind = "server", http.route = source.route,
        http.response.status_code = tracing::field::Empty);
    trace::follow(&span, &headers);
    let response = decide(app, peer, certificate.as_ref(), headers, body, source).instrument(span.clone()).await;
    span.record("http.response.status_code", i64::from(response.status().as_u16()));
    response
}

/// Who sent a request: the source it is charged to, and how that was decided (a
/// metric label).
struct Sender {
    source: String,
    class: &'static str,
}

impl Sender {
    fn of(app: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Self {
        let (source, class) = super::source_of(peer.ip(), headers, &app.config.rate_limit.trusted_proxies);
        Sender { source, class }
    }

    /// An authenticated sender: charged, annotated and audited by its name.
    fn identified(app: &AppState, identity: &Identity) -> Self {
        let labels = SenderLabels { sender: identity.label.to_string(), method: identity.method };
        app.metrics.authenticated.get_or_create(&labels).inc();
        Sender { source: identity.name.to_string(), class: "authenticated" }
    }

    fn limited(&self, app: &AppState, retry_after_ms: u64) -> Response {
        app.metrics.rate_limited.get_or_create(&SourceClassLabels { source_class: self.class }).inc();
        let secs = retry_after_ms.div_ceil(1000).max(1) as u32;
        let status = StatusCode::from_u16(app.config.rate_limit.refusal_status).expect("validated: 429 or 503");
        audit::rate_limited(&self.source, self.class, status, secs);
        app.reject(Problem::rate_limited(&self.source, secs, status))
    }
}

/// Charges a request that will not reach the pipeline to its sender, and returns
/// the answer it gets instead if the sender is over its limit (or the charge could
/// not be recorded): a bad request never gets round the limit.
async fn over_limit(app: &AppState, sender: &Sender) -> Option<Response> {
    match app.pipeline.admit(&sender.source).await {
        Ok(Admission::Allowed) => None,
        Ok(Admission::Limited { retry_after_ms }) => Some(sender.limited(app, retry_after_ms)),
        Err(e) => Some(Problem::from_pipeline(&e, app.config.http.retry_after_secs).into_response()),
    }
}

/// Refuses credentials. A 401 or 403 is charged to the address that sent it, so
/// that guessing is rate-limited; a 503 (the authority is down) is not the
/// sender's doing and is not charged.
async fn refuse_credentials(app: &AppState, peer: &Sender, route: &str, chain: &Chain, e: &AuthError) -> Response {
    let problem = Problem::auth(e, chain.challenge(), app.config.http.retry_after_secs);
    if !problem.status.is_server_error() {
        if let Some(limited) = over_limit(app, peer).await {
            return limited;
        }
    }
    audit::auth_refused(&peer.source, route, e.reason(), problem.status);
    app.reject(problem)
}

/// Refuses a request with `problem`, unless its sender is over the limit.
async fn refuse(app: &AppState, sender: &Sender, problem: Problem) -> Response {
    match over_limit(app, sender).await {
        Some(response) => response,
        None => app.reject(problem),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AlertResult<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<Hex<'a>>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    occurrence_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<AlertError>,
}

#[derive(Serialize, Default)]
struct Summary {
    created: usize,
    duplicate: usize,
    aggregated: usize,
    resolved: usize,
    failed: usize,
}

#[derive(Serialize)]
struct BatchResponse<'a> {
    results: Vec<AlertResult<'a>>,
    summary: Summary,
}

/// A fingerprint's hex form, written straight into the response.
struct Hex<'a>(&'a Fingerprint);

impl Serialize for Hex<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0.as_bytes(), &mut buf).expect("64 hex digits for 32 bytes");
        serializer.serialize_str(std::str::from_utf8(&buf).expect("hex is ASCII"))
    }
}

async fn decide(
    app: AppState,
    peer: SocketAddr,
    certificate: Option<&PeerCertificate>,
    headers: HeaderMap,
    body: Body,
    source: &'static Source,
) -> Response {
    // The charge to the sender's rate limit goes with the decision, in one round trip
    // to the state store; a request refused before that is charged on its own.
    let chain = app.auth.chain(source.route);
    let (sender, pending) = match &chain {
        None => (Sender::of(&app, peer, &headers), None),
        Some(chain) => match chain.check(&Presented { headers: &headers, peer: certificate }).await {
            Ok(Checked::Identified(identity)) => (Sender::identified(&app, &identity), None),
            Ok(Checked::Pending(pending)) => (Sender::of(&app, peer, &headers), Some(pending)),
            Err(e) => {
                return refuse_credentials(&app, &Sender::of(&app, peer, &headers), source.route, chain, &e).await
            }
        },
    };
    if let Err(p) = check_content_type(&headers, source) {
        return refuse(&app, &sender, p).await;
    }
    // Held until the answer: the signals borrow from the body.
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let (bytes, _held) =
        match app.budget.read(declared, body, app.config.http.body_limit, app.config.http.body_read_timeout).await {
            Ok(read) => read,
            Err(refused) => {
                let http = &app.config.http;
                let problem = refused.problem(http.body_limit, http.body_budget_wait, http.retry_after_secs);
                if problem.status.is_server_error() {
                    // No room yet is not the sender's doing: its retry is not charged twice.
                    return app.reject(problem);
                }
                return refuse(&app, &sender, problem).await;
            }
        };
    // A signature covers the body: it is checked now, and its message id recorded.
    let (sender, replay) = match (pending, &chain) {
        (Some(pending), Some(chain)) => {
            match pending.verify(&headers, &bytes, app.clock.now_s() as u64, &*app.replays).await {
                Ok(identity) => (Sender::identified(&app, &identity), pending.replay_key(&headers)),
                Err(e) => return refuse_credentials(&app, &sender, source.route, chain, &e).await,
            }
        }
        _ => (sender, None),
    };
    let response = decide_signals(&app, &sender, &headers, &bytes, source).await;
    if let Some(id) = replay.filter(|_| response.status().is_server_error()) {
        // Nothing was acknowledged: the sender's retry of this message is no replay.
        if let Err(e) = app.replays.forget_sighting(id).await {
            tracing::warn!(error = %e, "could not forget a refused message's id; its retry will be refused");
        }
    }
    response
}

/// Parses, decides and answers a request whose sender is known.
async fn decide_signals(
    app: &AppState,
    sender: &Sender,
    headers: &HeaderMap,
    bytes: &[u8],
    source: &'static Source,
) -> Response {
    let received = Timestamp::from_millisecond(app.clock.now_ms() as i64).unwrap_or(Timestamp::UNIX_EPOCH);
    let payload = Payload { body: bytes, headers, received, config: &app.config.sources };
    let parsed =
        match tracing::info_span!(target: trace::TARGET, "parse").in_scope(|| crate::ingest::parse(source, &payload)) {
            Ok(parsed) => parsed,
            Err(e) => return refuse(app, sender, Problem::bad_request(&e)).await,
        };
    let total = parsed.len();
    let (mut signals, mut failures) = (Vec::with_capacity(total), Vec::new());
    for (index, result) in parsed.into_iter().enumerate() {
        match result {
            Ok(signal) => signals.push((index, signal)),
            Err(e) => failures.push(AlertError { index, reason: e.kind(), detail: e.to_string() }),
        }
    }
    // Unusable alerts are counted once the request is past its source's limit.
    let count_failures = |failures: &[AlertError]| {
        for failure in failures {
            app.metrics.signal(source.signal_type.as_str(), "failed");
            app.metrics.rejections.get_or_create(&crate::telemetry::ReasonLabels { reason: failure.reason }).inc();
        }
    };
    if signals.is_empty() {
        if let Some(refused) = over_limit(app, sender).await {
            return refused;
        }
        count_failures(&failures);
        return Problem::unusable(failures, total).into_response();
    }
    let (indices, batch): (Vec<usize>, Vec<_>) = signals.into_iter().unzip();
    let processed =
        tokio::time::timeout(app.config.http.request_timeout, app.pipeline.process(&batch, &sender.source)).await;
    let decided = match processed {
        Ok(Ok(Processed::Limited { retry_after_ms })) => return sender.limited(app, retry_after_ms),
        Ok(Ok(Processed::Decided(outcomes))) => Ok(outcomes),
        Ok(Err(e)) => Err(Problem::from_pipeline(&e, app.config.http.retry_after_secs)),
        Err(_) => Err(Problem::timeout(app.config.http.request_timeout, app.config.http.retry_after_secs)),
    };
    count_failures(&failures);
    let outcomes = match decided {
        Ok(outcomes) => outcomes,
        Err(problem) => return problem.into_response(),
    };
    match source.answer {
        Answer::Results => results_answer(total, &indices, &outcomes, failures),
        Answer::Alertmanager if failures.is_empty() => StatusCode::OK.into_response(),
        // The valid alerts are recorded; the sender only learns that the batch failed.
        Answer::Alertmanager => Problem::unusable(failures, total).into_response(),
    }
}

/// 201 or 202 for one signal, 207 with a result per alert for a batch.
fn results_answer(total: usize, indices: &[usize], outcomes: &[Outcome], failures: Vec<AlertError>) -> Response {
    if total == 1 {
        let outcome = &outcomes[0];
        let status = if outcome.status.created() { StatusCode::CREATED } else { StatusCode::ACCEPTED };
        return json(status, &result(None, outcome), 320);
    }
    let mut summary = Summary { failed: failures.len(), ..Summary::default() };
    let mut results: Vec<AlertResult> = indices
        .iter()
        .zip(outcomes)
        .map(|(index, outcome)| {
            match outcome.status {
                OutcomeStatus::Created => summary.created += 1,
                OutcomeStatus::Duplicate => summary.duplicate += 1,
                OutcomeStatus::Resolved => summary.resolved += 1,
                OutcomeStatus::Aggregated { .. } => summary.aggregated += 1,
            }
            result(Some(*index), outcome)
        })
        .collect();
    results.extend(failures.into_iter().map(|e| AlertResult {
        index: Some(e.index),
        fingerprint: None,
        status: "failed",
        name: None,
        namespace: None,
        occurrence_count: None,
        error: Some(e),
    }));
    results.sort_by_key(|r| r.index);
    let capacity = 128 + 192 * results.len();
    json(StatusCode::MULTI_STATUS, &BatchResponse { results, summary }, capacity)
}

/// A JSON response, written into a buffer sized for it up front.
fn json(status: StatusCode, body: &impl Serialize, capacity: usize) -> Response {
    let mut buf = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut buf, body) {
        Ok(()) => (status, [(header::CONTENT_TYPE, "application/json")], buf).into_response(),
        // Our own types always serialise; this is not the sender's fault either way.
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn result(index: Option<usize>, outcome: &Outcome) -> AlertResult<'_> {
    AlertResult {
        index,
        fingerprint: Some(Hex(&outcome.fingerprint)),
        status: outcome.status.as_str(),
        name: outcome.request.as_ref().map(|r| r.name.as_str()),
        namespace: outcome.request.as_ref().map(|r| r.namespace.as_str()),
        occurrence_count: outcome.request.as_ref().map(|_| outcome.count),
        error: None,
    }
}

/// Accepts the media types `source` takes, with any parameters.
fn check_content_type(headers: &HeaderMap, source: &Source) -> Result<(), Problem> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(Problem::unsupported_media_type(None));
    };
    let text = value.to_str().unwrap_or("");
    if source.accepts(&crate::ingest::essence(text)) {
        Ok(())
    } else {
        Err(Problem::unsupported_media_type(Some(text)))
    }
}
