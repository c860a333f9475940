//! Audit events: who made tidegate act, and whom it refused.
//!
//! One structured event per RemediationRequest created, per storm opened and per
//! signal held back, every one of them. Refusals (for credentials, for rate, of a
//! client certificate in the TLS handshake) are summed: at most one event per
//! actor, event and reason in each interval, carrying the `count` of refusals it stands for, so that a flood of
//! refused requests (an attacker, or one misconfigured sender) costs the log a line
//! per interval, not a line per request. Every event is written under the log target
//! [`TARGET`] with a fixed `event` name and fixed field names (the README's "Audit
//! events" is the schema), so a log pipeline selects them by target and event; with
//! `log.format: json` each is one JSON line. They are kept whatever `log.filter`
//! says, unless the filter names `tidegate::audit` itself.
//!
//! This module is the one place an audit event is written: a field renamed here is
//! renamed everywhere, and the README's schema test reads the names from here. It
//! must never drop a refusal from the counts, nor hold more than
//! [`MAX_FOLLOWED`] actors' windows however many addresses refusals come from.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

/// The log target of every audit event.
pub const TARGET: &str = "tidegate::audit";

/// The `event` of each kind, and the fields each carries besides `event`.
pub const SCHEMA: &[(&str, &[&str])] = &[
    (REQUEST_CREATED, &["actor", "namespace", "name", "signal", "fingerprint"]),
    (STORM_OPENED, &["actor", "namespace", "name", "storm_type", "signal", "scope"]),
    (AUTH_REFUSED, &["actor", "route", "reason", "cause", "status", "count"]),
    (RATE_LIMITED, &["actor", "source_class", "status", "retry_after_s", "count"]),
    (TLS_REFUSED, &["actor", "reason", "count"]),
    (HEARTBEAT_HEARD, &["actor", "sender"]),
    (HELD_BACK, &["actor", "namespace", "name", "reason", "signal", "fingerprint"]),
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
pub const TLS_REFUSED: &str = "tls_refused";
pub const HEARTBEAT_HEARD: &str = "heartbeat_heard";
pub const HELD_BACK: &str = "incident_held_back";
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
/// trusted proxy) was refused for its credentials with `status` for `reason` (a
/// `tidegate_http_rejections_total` reason such as `auth_rejected`); `cause` says
/// exactly why (`wrong_password`, `unknown_user`, ...), which the sender is not told.
/// Summed per actor, reason and cause (see the module's doc).
pub fn auth_refused(actor: &str, route: &str, reason: &'static str, cause: &'static str, status: StatusCode) {
    let status = status.as_u16();
    REFUSALS.refused(actor, Refusal::Credentials { route: route.into(), reason, cause, status });
}

/// A request from `actor` (a sender's name or address; `source_class` says which)
/// was refused with `status` for going over its rate limit; it may send again in
/// `retry_after_s`. Summed per actor and source class.
pub fn rate_limited(actor: &str, source_class: &'static str, status: StatusCode, retry_after_s: u32) {
    let status = status.as_u16();
    REFUSALS.refused(actor, Refusal::Rate { source_class, status, retry_after_s });
}

/// A TLS handshake from `actor` (its address) failed on its client certificate for
/// `reason` (a `tidegate_tls_handshake_failures_total` reason). Summed per actor and
/// reason.
pub fn tls_refused(actor: &str, reason: &'static str) {
    REFUSALS.refused(actor, Refusal::Tls { reason });
}

/// At most one event per actor, event and reason in this interval.
pub const REFUSALS_EVERY: Duration = Duration::from_secs(10);

/// How many actors' windows are followed at once: refusals from further actors are
/// summed under the actor [`OTHERS`] until windows close. With [`REFUSALS_EVERY`],
/// this bounds the audit log under any flood of refusals: at most this many lines
/// (and one per event and reason for the others) every 10 s.
pub const MAX_FOLLOWED: usize = 256;

/// The actor of refusals summed once [`MAX_FOLLOWED`] actors are followed.
pub const OTHERS: &str = "*";

/// One refusal, as its event reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Refusal {
    Credentials { route: Box<str>, reason: &'static str, cause: &'static str, status: u16 },
    Rate { source_class: &'static str, status: u16, retry_after_s: u32 },
    Tls { reason: &'static str },
}

impl Refusal {
    /// What refusals are summed by, besides the actor.
    fn kind(&self) -> Kind {
        match self {
            Refusal::Credentials { reason, cause, .. } => (AUTH_REFUSED, reason, cause),
            Refusal::Rate { source_class, .. } => (RATE_LIMITED, source_class, ""),
            Refusal::Tls { reason } => (TLS_REFUSED, reason, ""),
        }
    }

    /// Writes the event: `count` refusals, this one the last.
    fn write(&self, actor: &str, count: u64) {
        match self {
            Refusal::Credentials { route, reason, cause, status } => {
                let route = &**route;
                tracing::info!(target: TARGET, event = AUTH_REFUSED, actor, route, reason, cause, status, count,
                    "refused credentials");
            }
            Refusal::Rate { source_class, status, retry_after_s } => {
                tracing::info!(target: TARGET, event = RATE_LIMITED, actor, source_class, status, retry_after_s, count,
                    "refused a sender over its rate limit");
            }
            Refusal::Tls { reason } => {
                tracing::info!(target: TARGET, event = TLS_REFUSED, actor, reason, count,
                    "refused a client certificate in the TLS handshake");
            }
        }
    }
}

/// The event, reason and cause of a refusal.
type Kind = (&'static str, &'static str, &'static str);

/// The refusals of one actor and kind since its last event.
struct Window {
    opened: Instant,
    /// Refusals not yet written.
    pending: u64,
    last: Refusal,
}

/// Refusals being summed, by actor and kind.
struct Refusals {
    every: Duration,
    max_followed: usize,
    windows: Mutex<HashMap<(Box<str>, Kind), Window>>,
}

/// The process's refusals. A process writes one log, so one sum; the thread that
/// writes what a closed window still holds starts with the first refusal.
static REFUSALS: LazyLock<Refusals> = LazyLock::new(|| {
    let spawned = std::thread::Builder::new().name("audit-refusals".into()).spawn(|| loop {
        std::thread::sleep(REFUSALS_EVERY / 2);
        for (actor, refusal, count) in REFUSALS.close(Instant::now()) {
            refusal.write(&actor, count);
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the audit thread; summed refusals are written with the next one");
    }
    Refusals::new(REFUSALS_EVERY, MAX_FOLLOWED)
});

impl Refusals {
    fn new(every: Duration, max_followed: usize) -> Self {
        Refusals { every, max_followed, windows: Mutex::new(HashMap::new()) }
    }

    fn refused(&self, actor: &str, refusal: Refusal) {
        let now = Instant::now();
        let mut due = self.close(now);
        if let Some(count) = self.count(actor, &refusal, now) {
            due.push((actor.into(), refusal, count));
        }
        for (actor, refusal, count) in due {
            refusal.write(&actor, count);
        }
    }

    /// Counts one refusal at `now`: `Some(count)` when it is to be written now,
    /// standing for `count` refusals (itself and those summed before it).
    fn count(&self, actor: &str, refusal: &Refusal, now: Instant) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let followed = windows.len() < self.max_followed;
        let key = (Box::<str>::from(actor), refusal.kind());
        let key = match windows.contains_key(&key) || followed {
            true => key,
            false => (Box::<str>::from(OTHERS), refusal.kind()),
        };
        match windows.get_mut(&key) {
            Some(window) if now < window.opened + self.every => {
                window.pending += 1;
                window.last = refusal.clone();
                None
            }
            Some(window) => {
                let count = window.pending + 1;
                (window.opened, window.pending, window.last) = (now, 0, refusal.clone());
                Some(count)
            }
            None => {
                windows.insert(key, Window { opened: now, pending: 0, last: refusal.clone() });
                Some(1)
            }
        }
    }

    /// Closes the windows older than the interval at `now`: each that summed
    /// refusals since its last event is written (and opens a new window, so that
    /// its actor still gets at most one event per interval); the rest are dropped.
    fn close(&self, now: Instant) -> Vec<(Box<str>, Refusal, u64)> {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let mut due = Vec::new();
        windows.retain(|(actor, _), window| {
            if now < window.opened + self.every {
                return true;
            }
            if window.pending == 0 {
                return false;
            }
            due.push((actor.clone(), window.last.clone(), window.pending));
            (window.opened, window.pending) = (now, 0);
            true
        });
        due
    }
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

/// This process took its first heartbeat alert from `actor`, whose metric label is
/// `sender`: heartbeats make no request, and this says once that they arrive.
pub fn heartbeat_heard(actor: &str, sender: &str) {
    tracing::info!(target: TARGET, event = HEARTBEAT_HEARD, actor, sender, "took a first heartbeat");
}

/// `actor`'s signal `signal` (fingerprint `fingerprint`, hex) opened no request,
/// because its incident's last request `namespace/name` holds it back for `reason`
/// (`failure_backoff`, `manual_review`); it is counted on that request. Once per
/// held request and process.
pub fn held_back(actor: &str, namespace: &str, name: &str, reason: &str, signal: &str, fingerprint: &str) {
    tracing::info!(
        target: TARGET,
        event = HELD_BACK,
        actor,
        namespace,
        name,
        reason,
        signal,
        fingerprint,
        "held an incident back"
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rate() -> Refusal {
        Refusal::Rate { source_class: "peer", status: 503, retry_after_s: 1 }
    }

    fn tls(reason: &'static str) -> Refusal {
        Refusal::Tls { reason }
    }

    #[test]
    fn a_flood_from_one_actor_is_one_event_per_interval_and_the_counts_add_up_to_every_refusal() {
        let refusals = Refusals::new(Duration::from_secs(10), 8);
        let start = Instant::now();
        let mut written = Vec::new();
        // 1,000 refusals a second for 25 s.
        for i in 0..25_000u64 {
            let now = start + Duration::from_millis(i);
            written.extend(refusals.count("10.0.0.1", &rate(), now));
            written.extend(refusals.close(now).into_iter().map(|(_, _, count)| count));
        }
        let later = start + Duration::from_secs(60);
        written.extend(refusals.close(later).into_iter().map(|(_, _, count)| count));
        assert_eq!(written.len(), 4, "{written:?}"); // at 0 s, 10 s, 20 s, and the rest once closed
        assert_eq!(written.iter().sum::<u64>(), 25_000);
        assert!(refusals.close(later + Duration::from_secs(10)).is_empty());
        assert!(refusals.windows.lock().unwrap().is_empty(), "an idle actor is forgotten");
    }

    #[test]
    fn actors_and_reasons_are_summed_apart() {
        let refusals = Refusals::new(Duration::from_secs(10), 8);
        let now = Instant::now();
        assert_eq!(refusals.count("a", &tls("unknown_ca"), now), Some(1));
        assert_eq!(refusals.count("a", &tls("san_not_allowed"), now), Some(1));
        assert_eq!(refusals.count("b", &tls("unknown_ca"), now), Some(1));
        assert_eq!(refusals.count("a", &tls("unknown_ca"), now), None);
        let closed = refusals.close(now + Duration::from_secs(10));
        assert_eq!(closed, vec![("a".into(), tls("unknown_ca"), 1)]);
    }

    #[test]
    fn beyond_the_followed_actors_refusals_are_summed_as_others() {
        let refusals = Refusals::new(Duration::from_secs(10), 2);
        let now = Instant::now();
        let written: Vec<Option<u64>> =
            (0..100).map(|i| refusals.count(&format!("10.0.0.{i}"), &tls("unknown_ca"), now)).collect();
        assert_eq!(written.iter().flatten().count(), 3, "two actors and the others");
        let closed = refusals.close(now + Duration::from_secs(10));
        assert_eq!(closed, vec![(OTHERS.into(), tls("unknown_ca"), 97)]);
    }
}
