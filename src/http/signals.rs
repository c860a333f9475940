//! `POST` on every source's route: read, validate, decide, answer.
//!
//! Order of checks: credentials (401, 403; before the body is read, except an HMAC
//! signature, which covers the body, and a token a sender puts in the body, both
//! checked once it is read), media type (415), size (413), shape (400), then the
//! pipeline, which charges the sender's rate limit (503 with `Retry-After` by
//! default, 429 only where configured) and decides in one step (503 if state or
//! sink cannot record). A request refused before the pipeline is charged too: to
//! its sender once authenticated, else to its address.
//!
//! How a payload is answered once recorded, or when nothing in it can ever be, is
//! its source's ([`crate::ingest::Answer`]); every other refusal is the gateway's
//! RFC 7807 problem.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use jiff::Timestamp;
use tracing::Instrument;

use super::problem::Problem;
use super::AppState;
use crate::audit;
use crate::auth::{AuthError, Chain, Checked, Identity, Pending, Presented, Verified};
use crate::http::tls::PeerCertificate;
use crate::ingest::{Adapter, Answered, Failure, IngestError, Invalid, Payload, ReadToken, Recorded, Reply, Source};
use crate::pipeline::Processed;
use crate::state::Admission;
use crate::telemetry::{trace, SenderLabels, SourceClassLabels};

/// `POST` on a source's route: the one handler of every source in the table.
pub async fn ingest(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    certificate: Option<Extension<PeerCertificate>>,
    headers: HeaderMap,
    body: Body,
    adapter: Arc<Adapter>,
) -> Response {
    let certificate = certificate.map(|Extension(c)| c);
    let route = adapter.source.route;
    let span = tracing::info_span!(target: trace::TARGET, "receive", otel.kind = "server", http.route = route,
        http.response.status_code = tracing::field::Empty);
    trace::follow(&span, &headers);
    let response = handle(app, peer, certificate.as_ref(), headers, body, &adapter).instrument(span.clone()).await;
    span.record("http.response.status_code", i64::from(response.status().as_u16()));
    response
}

/// Who sent a request: the source it is charged to, and how that was decided (a
/// metric label).
struct Sender {
    source: String,
    class: &'static str,
    /// An authenticated sender's configured name: bounded, for metric labels.
    label: Option<std::sync::Arc<str>>,
}

impl Sender {
    fn of(app: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Self {
        let (source, class) = super::source_of(peer.ip(), headers, &app.config.http.trusted_proxies);
        Sender { source, class, label: None }
    }

    /// An authenticated sender: charged, annotated and audited by its name.
    fn identified(app: &AppState, identity: &Identity) -> Self {
        let labels = SenderLabels { sender: identity.label.to_string(), method: identity.method };
        app.metrics.authenticated.get_or_create(&labels).inc();
        Sender { source: identity.name.to_string(), class: "authenticated", label: Some(identity.label.clone()) }
    }

    fn limited(&self, app: &AppState, retry_after_ms: u64) -> Response {
        app.metrics.rate_limited.get_or_create(&SourceClassLabels { source_class: self.class }).inc();
        let secs = retry_after_ms.div_ceil(1000).max(1) as u32;
        let status = StatusCode::from_u16(app.config.refusal_status).expect("validated: 429 or 503");
        audit::rate_limited(&self.source, self.class, status, secs);
        app.reject(Problem::rate_limited(&self.source, secs, status))
    }
}

/// Charges a request that will not reach the pipeline to its sender, and returns
/// the answer it gets instead if the sender is over its limit (or the charge could
/// not be recorded): a bad request never gets round the limit.
async fn charge_or_refuse(app: &AppState, sender: &Sender) -> Option<Response> {
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
        if let Some(limited) = charge_or_refuse(app, peer).await {
            return limited;
        }
    }
    audit::auth_refused(&peer.source, route, e.label(), e.cause(), problem.status);
    app.reject(problem)
}

/// Refuses a request with `problem`, unless its sender is over the limit.
async fn refuse(app: &AppState, sender: &Sender, problem: Problem) -> Response {
    match charge_or_refuse(app, sender).await {
        Some(response) => response,
        None => app.reject(problem),
    }
}

/// Credentials that can only be checked once the body is read.
enum Awaiting {
    Nothing,
    /// An HMAC signature over the body.
    Signature(Pending),
    /// A token the source reads from the body: the head presented nothing.
    TokenInBody(ReadToken),
}

async fn handle(
    app: AppState,
    peer: SocketAddr,
    certificate: Option<&PeerCertificate>,
    headers: HeaderMap,
    body: Body,
    adapter: &Adapter,
) -> Response {
    let source = adapter.source;
    // The charge to the sender's rate limit goes with the decision, in one round trip
    // to the state store; a request refused before that is charged on its own.
    let chain = app.auth.chain(source.route);
    let (sender, awaiting) = match &chain {
        None => (Sender::of(&app, peer, &headers), Awaiting::Nothing),
        Some(chain) => match chain.check(&Presented { headers: &headers, peer: certificate }).await {
            Ok(Checked::Identified(identity)) => (Sender::identified(&app, &identity), Awaiting::Nothing),
            Ok(Checked::Pending(pending)) => (Sender::of(&app, peer, &headers), Awaiting::Signature(pending)),
            Err(AuthError::Missing) if source.token_in_body().is_some() => {
                let read = source.token_in_body().expect("just checked");
                (Sender::of(&app, peer, &headers), Awaiting::TokenInBody(read))
            }
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
    // A signature covers the body: it is checked now, and its message id claimed.
    // A token in the body is checked as the same token in the head would be.
    let (sender, claim) = match (awaiting, &chain) {
        (Awaiting::Signature(pending), Some(chain)) => {
            match pending.verify(&headers, &bytes, app.clock.now_s() as u64, &app.replays).await {
                Ok(Verified::New(identity, claim)) => (Sender::identified(&app, &identity), claim),
                Ok(Verified::Delivered(identity)) => {
                    return already_delivered(&app, &Sender::identified(&app, &identity)).await
                }
                Err(e) => return refuse_credentials(&app, &sender, source.route, chain, &e).await,
            }
        }
        (Awaiting::TokenInBody(read), Some(chain)) => match check_token_in_body(chain, &bytes, read).await {
            Ok(identity) => (Sender::identified(&app, &identity), None),
            Err(e) => return refuse_credentials(&app, &sender, source.route, chain, &e).await,
        },
        _ => (sender, None),
    };
    let response = process(&app, &sender, &headers, &bytes, adapter).await;
    if let Some(claim) = claim {
        claim.settle(response.status()).await;
    }
    response
}

/// A sender's retry of a signed message already answered 2xx: 2xx again, nothing
/// recorded (charged to the sender all the same).
async fn already_delivered(app: &AppState, sender: &Sender) -> Response {
    if let Some(limited) = charge_or_refuse(app, sender).await {
        return limited;
    }
    crate::ingest::answer::json(StatusCode::ACCEPTED, &serde_json::json!({"status": "already_delivered"}), 32)
}

/// Checks the token a sender put in the body as a bearer token in its head: the
/// chain's token authenticators decide, and nothing else of the head counts.
async fn check_token_in_body(chain: &Chain, body: &[u8], read: ReadToken) -> Result<Identity, AuthError> {
    let token = read(body).ok_or(AuthError::Missing)?;
    let value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| AuthError::Rejected(crate::auth::Rejection::Malformed("the token is not header text")))?;
    let headers = HeaderMap::from_iter([(header::AUTHORIZATION, value)]);
    match chain.check(&Presented { headers: &headers, peer: None }).await? {
        Checked::Identified(identity) => Ok(identity),
        // Only a signature waits for the body, and a token is none.
        Checked::Pending(_) => Err(AuthError::Rejected(crate::auth::Rejection::Unknown)),
    }
}

/// Parses, decides and answers a request whose sender is known.
async fn process(app: &AppState, sender: &Sender, headers: &HeaderMap, bytes: &[u8], adapter: &Adapter) -> Response {
    let source = adapter.source;
    let received = Timestamp::from_millisecond(app.clock.now_ms() as i64).unwrap_or(Timestamp::UNIX_EPOCH);
    let payload = Payload { body: bytes, headers, received };
    let parsed = match tracing::info_span!(target: trace::TARGET, "parse").in_scope(|| adapter.parse(&payload)) {
        Ok(parsed) => parsed,
        Err(e) => {
            return match charge_or_refuse(app, sender).await {
                Some(refused) => refused,
                None => refuse_payload(app, source, &e),
            }
        }
    };
    let total = parsed.len();
    let (mut signals, mut failures) = (Vec::with_capacity(total), Vec::new());
    for (index, result) in parsed.into_iter().enumerate() {
        match result {
            Ok(signal) => signals.push((index, signal)),
            Err(error) => failures.push(Failure { index, error }),
        }
    }
    // Unusable alerts are counted once the request is past its source's limit.
    let count_failures = |failures: &[Failure]| {
        for failure in failures {
            app.metrics.signal(source.signal_type.as_str(), "failed");
            let labels = crate::telemetry::ReasonLabels { reason: failure.error.label() };
            app.metrics.rejections.get_or_create(&labels).inc();
        }
    };
    if signals.is_empty() {
        if let Some(refused) = charge_or_refuse(app, sender).await {
            return refused;
        }
        count_failures(&failures);
        if failures.is_empty() {
            // Nothing to record, and nothing wrong (PagerDuty's `acknowledge`).
            let answered = Answered { total, recorded: &[], failures: &[], body: bytes };
            return answer(source.answer.recorded(&answered), &failures, total);
        }
        return answer(source.answer.invalid(&Invalid::Signals { failures: &failures, total }), &failures, total);
    }
    let (indices, batch): (Vec<usize>, Vec<_>) = signals.into_iter().unzip();
    let submitter = crate::pipeline::Sender { name: &sender.source, label: sender.label.as_deref() };
    let processed =
        tokio::time::timeout(app.config.http.request_timeout, app.pipeline.process(&batch, &submitter)).await;
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
    let recorded: Vec<Recorded> = indices
        .iter()
        .zip(&batch)
        .zip(&outcomes)
        .map(|((&index, signal), outcome)| Recorded {
            index,
            signal,
            fingerprint: &outcome.fingerprint,
            status: outcome.status.as_str(),
            created: outcome.status.created(),
            request: outcome.request.as_ref().map(|r| (r.namespace.as_str(), r.name.as_str())),
            count: outcome.count,
            hint: outcome.hint.as_deref(),
            until: match outcome.status {
                crate::pipeline::OutcomeStatus::BackingOff { until_s } => {
                    Some(crate::remediation::time_s(until_s).0.to_string())
                }
                _ => None,
            },
            silence: outcome.silence.as_ref().map(|s| (s.namespace.as_str(), s.name.as_str())),
        })
        .collect();
    let answered = Answered { total, recorded: &recorded, failures: &failures, body: bytes };
    answer(source.answer.recorded(&answered), &failures, total)
}

/// The answer to a payload that is not what its source takes, counted by reason.
fn refuse_payload(app: &AppState, source: &Source, e: &IngestError) -> Response {
    app.metrics.rejections.get_or_create(&crate::telemetry::ReasonLabels { reason: e.label() }).inc();
    match source.answer.invalid(&Invalid::Payload(e)) {
        Reply::Own(response) => response,
        Reply::Problem => Problem::bad_request(e).into_response(),
    }
}

/// A source's reply as a response: its own, or the problem naming the unusable signals.
fn answer(reply: Reply, failures: &[Failure], total: usize) -> Response {
    match reply {
        Reply::Own(response) => response,
        Reply::Problem => Problem::unusable(failures.to_vec(), total).into_response(),
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
