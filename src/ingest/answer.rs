//! How a source's sender is answered: what a source says once its payload is
//! recorded, or when nothing in it ever can be.
//!
//! Each source in the table carries its [`Answer`], so a sender that expects its own
//! shape of answer (Alertmanager's API, PagerDuty's Events API) is one file, and the
//! HTTP handler matches on no list of senders. What an answer never decides is the
//! answer to a refusal that may succeed later (rate limit, state or sink down, body
//! budget): that is the gateway's 503 with `Retry-After`, whatever the sender, and
//! how errors map to statuses, problem types and metric labels stays in
//! `src/http/problem.rs`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::IngestError;
use crate::signal::{Fingerprint, Signal};

/// How one kind of sender expects to be answered.
pub trait Answer: Sync + std::fmt::Debug {
    /// The answer once every usable signal of the payload is recorded (some may
    /// have been unusable: `answered.failures`).
    fn recorded(&self, answered: &Answered<'_>) -> Reply;
    /// The answer to a payload of which nothing can ever be recorded (400).
    fn invalid(&self, invalid: &Invalid<'_>) -> Reply;
}

/// What an answer turns into.
pub enum Reply {
    /// This response, in the sender's own words.
    Own(Response),
    /// The gateway's RFC 7807 problem for what could not be used: 400, naming
    /// every unusable signal of a batch.
    Problem,
}

/// A payload whose usable signals are recorded.
pub struct Answered<'r> {
    /// Signals in the payload, usable or not.
    pub total: usize,
    /// What became of each usable one, in payload order.
    pub recorded: &'r [Recorded<'r>],
    /// The unusable ones, in payload order.
    pub failures: &'r [Failure],
    /// The body as received, for a sender whose answer echoes part of it.
    pub body: &'r [u8],
}

/// One usable signal and what became of it.
pub struct Recorded<'r> {
    /// Its place in the payload.
    pub index: usize,
    pub signal: &'r Signal<'r>,
    /// The fingerprint it was decided under (in Kubernetes mode, its workload's).
    pub fingerprint: &'r Fingerprint,
    /// `created`, `duplicate`, `resolved`, `aggregated`, `heartbeat`,
    /// `backing_off`, `held`, `out_of_scope`, `silenced` or `inhibited`.
    pub status: &'static str,
    /// Whether a request was created for it.
    pub created: bool,
    /// The request it was counted in, as (namespace, name); none for the
    /// resolution of an incident tidegate does not know and for a signal out of
    /// scope; for an inhibited one, its source's request.
    pub request: Option<(&'r str, &'r str)>,
    /// The request's occurrence count.
    pub count: u32,
    /// For a signal out of scope, what would bring it in scope.
    pub hint: Option<&'r str>,
    /// For a signal held back by a failed request's back-off: when it ends
    /// (RFC 3339).
    pub until: Option<String>,
    /// The silence, as (namespace, name), that kept it from opening a request.
    pub silence: Option<(&'r str, &'r str)>,
}

/// One signal of a payload that could not be used. Written, in a batch's results
/// and in the problem answer alike, as `{index, reason, detail}`: its place, the
/// metric label of its error and the error.
#[derive(Clone, Debug)]
pub struct Failure {
    pub index: usize,
    pub error: IngestError,
}

impl Serialize for Failure {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Failure", 3)?;
        s.serialize_field("index", &self.index)?;
        s.serialize_field("reason", self.error.label())?;
        s.serialize_field("detail", &self.error.to_string())?;
        s.end()
    }
}

/// A payload of which nothing can be recorded.
pub enum Invalid<'r> {
    /// The payload itself: not the shape its source takes.
    Payload(&'r IngestError),
    /// Every one of its `total` signals is unusable.
    Signals { failures: &'r [Failure], total: usize },
}

impl Invalid<'_> {
    /// Each reason, as text a sender can act on.
    pub fn reasons(&self) -> Vec<String> {
        match self {
            Invalid::Payload(e) => vec![e.to_string()],
            Invalid::Signals { failures, .. } => failures.iter().map(|f| f.error.to_string()).collect(),
        }
    }
}

/// tidegate's own answer: 201 when one signal created a request, 202 when it was
/// counted otherwise (duplicate, aggregated, resolved); a payload of several
/// signals 207 with a result per signal, so a sender learns about every one and a
/// bad one never costs it the good ones.
#[derive(Debug)]
pub struct Results;

impl Answer for Results {
    fn recorded(&self, answered: &Answered<'_>) -> Reply {
        if answered.total == 1 {
            let recorded = &answered.recorded[0];
            let status = if recorded.created { StatusCode::CREATED } else { StatusCode::ACCEPTED };
            return Reply::Own(json(status, &result(None, recorded), 320));
        }
        let mut summary = Summary { failed: answered.failures.len(), ..Summary::default() };
        let mut results: Vec<SignalResult> = answered
            .recorded
            .iter()
            .map(|recorded| {
                match recorded.status {
                    "created" => summary.created += 1,
                    "duplicate" => summary.duplicate += 1,
                    "resolved" => summary.resolved += 1,
                    "heartbeat" => summary.heartbeat += 1,
                    "backing_off" | "held" => summary.held += 1,
                    "out_of_scope" => summary.out_of_scope += 1,
                    "inhibited" => summary.inhibited += 1,
                    "silenced" => summary.silenced += 1,
                    _ => summary.aggregated += 1,
                }
                result(Some(recorded.index), recorded)
            })
            .collect();
        results.extend(answered.failures.iter().map(|f| SignalResult {
            index: Some(f.index),
            fingerprint: None,
            status: "failed",
            name: None,
            namespace: None,
            occurrence_count: None,
            until: None,
            hint: None,
            silence: None,
            error: Some(f),
        }));
        results.sort_by_key(|r| r.index);
        let capacity = 128 + 192 * results.len();
        Reply::Own(json(StatusCode::MULTI_STATUS, &BatchBody { results, summary }, capacity))
    }

    fn invalid(&self, _: &Invalid<'_>) -> Reply {
        Reply::Problem
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SignalResult<'a> {
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
    /// For a signal held back by a failed request's back-off: when it ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<&'a str>,
    /// For a signal out of scope, what would bring it in scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'a str>,
    /// The silence that kept the signal from opening a request.
    #[serde(skip_serializing_if = "Option::is_none")]
    silence: Option<SilenceName<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a Failure>,
}

#[derive(Serialize)]
struct SilenceName<'a> {
    namespace: &'a str,
    name: &'a str,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct Summary {
    created: usize,
    duplicate: usize,
    aggregated: usize,
    resolved: usize,
    heartbeat: usize,
    held: usize,
    out_of_scope: usize,
    inhibited: usize,
    silenced: usize,
    failed: usize,
}

#[derive(Serialize)]
struct BatchBody<'a> {
    results: Vec<SignalResult<'a>>,
    summary: Summary,
}

fn result<'a>(index: Option<usize>, recorded: &'a Recorded<'a>) -> SignalResult<'a> {
    SignalResult {
        index,
        fingerprint: Some(Hex(recorded.fingerprint)),
        status: recorded.status,
        name: recorded.request.map(|(_, name)| name),
        namespace: recorded.request.map(|(namespace, _)| namespace),
        // An inhibited signal names its source's request, whose count is not its own.
        occurrence_count: recorded.request.filter(|_| recorded.status != "inhibited").map(|_| recorded.count),
        until: recorded.until.as_deref(),
        hint: recorded.hint,
        silence: recorded.silence.map(|(namespace, name)| SilenceName { namespace, name }),
        error: None,
    }
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

/// A JSON response, written into a buffer sized for it up front.
pub fn json(status: StatusCode, body: &impl Serialize, capacity: usize) -> Response {
    let mut buf = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut buf, body) {
        Ok(()) => (status, [(header::CONTENT_TYPE, "application/json")], buf).into_response(),
        // Our own types always serialise; this is not the sender's fault either way.
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
