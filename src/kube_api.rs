//! What a failed Kubernetes API call means: its HTTP status and the metric outcome
//! it is counted under. Shared by the sink and the owner lookups; a leaf, importing
//! nothing from the crate, so both can use it without importing each other.

/// The HTTP status the API server answered, if it answered.
pub fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Every outcome a call is counted under: success, the breaker refusing it, a
/// timeout, a create whose late answer the watch made unnecessary (`landed`), and
/// each of [`outcome`]'s answers; for metrics made at 0.
pub const OUTCOMES: &[&str] = &[
    "ok",
    "circuit_open",
    "timeout",
    "landed",
    "conflict",
    "not_found",
    "invalid",
    "throttled",
    "server_error",
    "client_error",
    "unreachable",
];

/// The metric outcome of a failed call.
pub fn outcome(e: &kube::Error) -> &'static str {
    match code(e) {
        Some(409) => "conflict",
        Some(404) => "not_found",
        Some(422) => "invalid",
        Some(429) => "throttled",
        Some(c) if c >= 500 => "server_error",
        Some(_) => "client_error",
        None => "unreachable",
    }
}
