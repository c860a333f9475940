//! What tidegate's integration tests (`tests/`) and benches (`benches/`) share: real
//! Redis servers ([`redis`]) and a real Kubernetes API server with its fault proxy
//! ([`kube`]), the process plumbing that starts them and makes sure they stop
//! ([`process`]), polling with a deadline instead of sleeping, and the benches'
//! measuring helpers ([`bench`]).
//!
//! Test code only: it panics on failure, with the server's log where it has one. It
//! never mocks what it stands up: a test against this crate's servers tests the
//! real thing.

pub mod bench;
pub mod kube;
pub mod process;
pub mod redis;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The tidegate repository: where `deploy/` and `scripts/` are.
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit/ is in the repository").to_path_buf()
}

/// Polls `check` until it returns true, failing after five seconds.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, Duration::from_secs(5), check).await
}

/// Polls `check` until it returns true, failing after `limit`.
pub async fn eventually_within<F, Fut>(what: &str, limit: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_every(what, limit, Duration::from_millis(10), check).await
}

/// Polls `check` every `interval` until it returns true, failing after `limit`; for
/// checks too costly to run every 10 ms.
pub async fn eventually_every<F, Fut>(what: &str, limit: Duration, interval: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(poll_within(limit, interval, check).await, "timed out waiting for {what}");
}

/// Polls `check` every `interval` until it returns true (then true), or `limit` has
/// passed (then false).
pub async fn poll_within<F, Fut>(limit: Duration, interval: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(interval).await;
    }
    true
}
