//! Audit events: who made tidegate act, and whom it refused.
//!
//! One structured event per RemediationRequest created, per storm opened, and per
//! request refused for its credentials or its rate. Every event is written under
//! the log target [`TARGET`] with a fixed `event` name and fixed field names (the
//! README's "Audit events" is the schema), so a log pipeline selects them by
//! target and event; with `log.format: json` each is one JSON line. They are kept
//! whatever `log.filter` says, unless the filter names `tidegate::audit` itself.
//!
//! This module is the one place an audit event is written: a field renamed here is
//! renamed everywhere, and the README's schema test reads the names from here.

use axum::http::StatusCode;

/// The log target of every audit event.
pub const TARGET: &str = "tidegate::audit";

/// The `event` of each kind, and the fields each carries besides `event`.
pub const SCHEMA: &[(&str, &[&str])] = &[
    (REQUEST_CREATED, &["actor", "namespace", "name", "signal", "fingerprint"]),
    (STORM_OPENED, &["actor", "namespace", "name", "storm_type", "signal", "scope"]),
    (AUTH_REFUSED, &["actor", "route", "reason", "status"]),
    (RATE_LIMITED, &["actor", "source_class", "status", "retry_after_s"]),
    (SILENCE_CREATED, &["namespace", "name", "ends_at"]),
    (SILENCE_EXPIRED, &["namespace", "name"]),
    (SILENCE_MATCHED, &["namespace", "name", "fingerprint"]),
    (SIGNAL_HELD_BACK, &["actor", "namespace", "signal", "fingerprint", "reason", "by"]),
];

pub const REQUEST_CREATED: &str = "remediation_request_created";
pub const STORM_OPENED: &str = "storm_opened";
pub const AUTH_REFUSED: &str = "auth_refused";
pub const RATE_LIMITED: &str = "rate_limited";
pub const SILENCE_CREATED: &str = "silence_created";
pub const SILENCE_EXPIRED: &str = "silence_expired";
pub const SILENCE_MATCHED: &str = "silence_matched";
pub const SIGNAL_HELD_BACK: &str = "signal_held_back";

/// `actor` created the request `namespace/name` for the signal `signal` with
/// fingerprint `fingerprint` (hex).
pub fn request_created(actor: &str, namespace: &str, name: &str, signal: &str, fingerprint: &str) {
    tracing::info!(
        target: TARGET,
        event = REQUEST_CREATED,
        actor,
        namespace,
        name,
        signal,
        fingerprint,
        "created a RemediationRequest"
    );
}

/// `actor`'s alert opened a storm of `storm_type` (`rate` or `pattern`) for the
/// alert `signal`, whose scope (hex) names the aggregated request
/// `namespace/name`. Written once per storm, by the replica whose alert opened it.
pub fn storm_opened(actor: &str, namespace: &str, name: &str, storm_type: &str, signal: &str, scope: &str) {
    tracing::info!(
        target: TARGET,
        event = STORM_OPENED,
        actor,
        namespace,
        name,
        storm_type,
        signal,
        scope,
        "opened a storm"
    );
}

/// A request to `route` from `actor` (its address, or the forwarded one from a
/// trusted proxy) was refused for its credentials with `status` for `reason`
/// (a `tidegate_http_rejections_total` reason such as `auth_rejected`).
pub fn auth_refused(actor: &str, route: &str, reason: &str, status: StatusCode) {
    let status = status.as_u16();
    tracing::info!(target: TARGET, event = AUTH_REFUSED, actor, route, reason, status, "refused credentials");
}

/// A request from `actor` (a sender's name or address; `source_class` says which)
/// was refused with `status` for going over its rate limit; it may send again in
/// `retry_after_s`.
pub fn rate_limited(actor: &str, source_class: &str, status: StatusCode, retry_after_s: u32) {
    let status = status.as_u16();
    tracing::info!(
        target: TARGET,
        event = RATE_LIMITED,
        actor,
        source_class,
        status,
        retry_after_s,
        "refused a sender over its rate limit"
    );
}

/// `actor`'s signal `signal` (fingerprint hex) of `namespace` was answered but
/// opened no request, for `reason` (`out_of_scope`, `inhibited`); `by` says what
/// held it back (the change that would bring it in scope, or the source's request
/// as `namespace/name`). Written once per incident and replica, not per alert.
pub fn signal_held_back(actor: &str, namespace: &str, signal: &str, fingerprint: &str, reason: &str, by: &str) {
    tracing::info!(
        target: TARGET,
        event = SIGNAL_HELD_BACK,
        actor,
        namespace,
        signal,
        fingerprint,
        reason,
        by,
        "held a signal back"
    );
}

/// The log filter's directive that keeps audit events, unless `filter` already
/// says what to do with them.
pub fn keep(filter: &str) -> Option<tracing_subscriber::filter::Directive> {
    (!filter.contains(TARGET)).then(|| format!("{TARGET}=info").parse().expect("a valid directive"))
}

/// The gateway saw the silence `namespace/name`, ending at `ends_at`, for the first
/// time (no state recorded in its status yet).
pub fn silence_created(namespace: &str, name: &str, ends_at: &str) {
    tracing::info!(target: TARGET, event = SILENCE_CREATED, namespace, name, ends_at, "a silence was created");
}

/// The silence `namespace/name` ended (its endsAt passed, or it was expired).
pub fn silence_expired(namespace: &str, name: &str) {
    tracing::info!(target: TARGET, event = SILENCE_EXPIRED, namespace, name, "a silence expired");
}

/// The silence `namespace/name` matched a signal of the incident `fingerprint`
/// (hex) for the first time: once per incident, never per alert.
pub fn silence_matched(namespace: &str, name: &str, fingerprint: &str) {
    tracing::info!(target: TARGET, event = SILENCE_MATCHED, namespace, name, fingerprint, "a silence matched an incident");
}
