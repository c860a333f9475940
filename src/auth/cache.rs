//! A bounded cache of credential checks, keyed by a SHA-256 of the credential
//! (never the credential itself), each answer kept for its own time to live.
//!
//! When full, the entry inserted first goes: the cache only saves work, so losing
//! an answer costs one more check, never a wrong one.
//!
//! [`TtlCache::get_or_load`] checks each credential once however many requests
//! present it at the same moment: the first caller checks it, the others wait for
//! that check's outcome (its failure included) instead of starting their own. It
//! must never hand one credential's answer to another.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

/// The key of a credential: its SHA-256.
pub type Key = [u8; 32];

pub fn key(credential: &[u8]) -> Key {
    Sha256::digest(credential).into()
}

/// A bounded cache of answers `V`; `E` is what a failed check of
/// [`TtlCache::get_or_load`] tells every caller that waited for it.
pub struct TtlCache<V, E = Infallible> {
    inner: Mutex<Inner<V, E>>,
    capacity: usize,
}

/// What the callers waiting for a check see: `None` until it ends.
type Outcome<V, E> = Option<Result<V, E>>;

struct Inner<V, E> {
    entries: HashMap<Key, (Instant, V)>,
    /// Keys in insertion order, one per entry.
    order: VecDeque<Key>,
    /// Checks under way, by key: where their outcome will be published.
    loading: HashMap<Key, watch::Receiver<Outcome<V, E>>>,
}

impl<V, E> Inner<V, E> {
    fn fresh(&self, key: &Key) -> Option<&V> {
        let (expires, value) = self.entries.get(key)?;
        (Instant::now() < *expires).then_some(value)
    }
}

impl<V, E> TtlCache<V, E> {
    fn lock(&self) -> MutexGuard<'_, Inner<V, E>> {
        // Every mutation completes before anything in it can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<V: Clone, E: Clone> TtlCache<V, E> {
    pub fn new(capacity: usize) -> Self {
        TtlCache {
            inner: Mutex::new(Inner { entries: HashMap::new(), order: VecDeque::new(), loading: HashMap::new() }),
            capacity: capacity.max(1),
        }
    }

    /// The answer for `key`, if one is cached and still fresh.
    pub fn get(&self, key: &Key) -> Option<V> {
        self.lock().fresh(key).cloned()
    }

    /// The answer for `key`: the cached one while fresh, else the outcome of one
    /// `load` (an answer and how long to keep it) shared by every caller that asks
    /// while it runs. If the caller running it goes away before it ends, a waiting
    /// caller runs it again.
    pub async fn get_or_load<F, Fut>(&self, key: Key, load: F) -> Result<V, E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(V, Duration), E>>,
    {
        loop {
            let publish = {
                let mut inner = self.lock();
                if let Some(value) = inner.fresh(&key) {
                    return Ok(value.clone());
                }
                match inner.loading.get(&key) {
                    Some(waiting) => Err(waiting.clone()),
                    None => {
                        let (publish, waiting) = watch::channel(None);
                        inner.loading.insert(key, waiting);
                        Ok(publish)
                    }
                }
            };
            let mut waiting = match publish {
                Ok(publish) => return self.lead(key, publish, &load).await,
                Err(waiting) => waiting,
            };
            let outcome = match waiting.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone(),
                Err(_) => None,
            };
            if let Some(outcome) = outcome {
                return outcome;
            }
            // The caller running the check went away without an outcome: ask again.
        }
    }

    /// Runs the check of `key` for everyone waiting on `publish`.
    async fn lead<F, Fut>(&self, key: Key, publish: watch::Sender<Outcome<V, E>>, load: &F) -> Result<V, E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(V, Duration), E>>,
    {
        // Dropped with this future, also when it is cancelled: the next caller leads.
        let _turn = Leading { cache: self, key };
        let outcome = load().await;
        if let Ok((value, ttl)) = &outcome {
            self.insert(key, value.clone(), *ttl);
        }
        let outcome = outcome.map(|(value, _)| value);
        publish.send_replace(Some(outcome.clone()));
        outcome
    }

    pub fn insert(&self, key: Key, value: V, ttl: Duration) {
        let mut inner = self.lock();
        let expires = Instant::now() + ttl;
        if let Some(entry) = inner.entries.get_mut(&key) {
            *entry = (expires, value);
            return;
        }
        while inner.entries.len() >= self.capacity {
            let Some(oldest) = inner.order.pop_front() else { break };
            inner.entries.remove(&oldest);
        }
        inner.entries.insert(key, (expires, value));
        inner.order.push_back(key);
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The check of `key` under way: ends it in the cache's book when dropped.
struct Leading<'a, V, E> {
    cache: &'a TtlCache<V, E>,
    key: Key,
}

impl<V, E> Drop for Leading<'_, V, E> {
    fn drop(&mut self) {
        self.cache.lock().loading.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn answers_expire_at_their_own_ttl_and_the_cache_never_outgrows_its_capacity() {
        let cache: TtlCache<&str> = TtlCache::new(2);
        cache.insert(key(b"a"), "allowed", Duration::from_secs(60));
        cache.insert(key(b"b"), "denied", Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!((cache.get(&key(b"a")), cache.get(&key(b"b"))), (Some("allowed"), None));

        cache.insert(key(b"c"), "allowed", Duration::from_secs(60));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&key(b"a")), None, "the oldest entry made room");
        assert_eq!(cache.get(&key(b"c")), Some("allowed"));
    }

    /// A check that allows after a second, counting its runs in `checks`.
    async fn allow_after_a_second(checks: &AtomicUsize) -> Result<(&'static str, Duration), String> {
        checks.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(("allowed", Duration::from_secs(60)))
    }

    /// Sixteen first requests with one credential at once, and a check that stays
    /// under way until all of them have asked: one check.
    #[tokio::test(start_paused = true)]
    async fn concurrent_first_lookups_of_one_credential_share_one_check() {
        let cache: TtlCache<&str, String> = TtlCache::new(16);
        let checks = AtomicUsize::new(0);
        let check = || allow_after_a_second(&checks);
        let lookups = (0..16).map(|_| cache.get_or_load(key(b"token"), check));
        let answers = futures::future::join_all(lookups).await;
        assert_eq!(answers, vec![Ok("allowed"); 16]);
        assert_eq!(checks.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get_or_load(key(b"other"), check).await, Ok("allowed"));
        assert_eq!(checks.load(Ordering::SeqCst), 2, "another credential is checked on its own");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_check_fails_everyone_who_waited_for_it_and_is_not_kept() {
        let cache: TtlCache<&str, String> = TtlCache::new(16);
        let checks = AtomicUsize::new(0);
        let check = || async {
            let n = checks.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            match n {
                0 => Err("the API server timed out".to_string()),
                _ => Ok(("allowed", Duration::from_secs(60))),
            }
        };
        let answers = futures::future::join_all((0..4).map(|_| cache.get_or_load(key(b"token"), check))).await;
        assert_eq!(answers, vec![Err("the API server timed out".to_string()); 4]);
        assert_eq!(cache.get_or_load(key(b"token"), check).await, Ok("allowed"), "the next request checks again");
        assert_eq!(checks.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn when_the_caller_running_a_check_goes_away_a_waiting_caller_runs_it() {
        let cache: TtlCache<&str, String> = TtlCache::new(16);
        let checks = AtomicUsize::new(0);
        let check = || allow_after_a_second(&checks);
        let first = cache.get_or_load(key(b"token"), check);
        let waiter = cache.get_or_load(key(b"token"), check);
        // The first caller gives up half-way through its check (its sender hung up).
        let first = tokio::time::timeout(Duration::from_millis(500), first);
        let (first, waiter) = tokio::join!(first, waiter);
        assert!(first.is_err(), "the first caller went away before its check ended");
        assert_eq!(waiter, Ok("allowed"));
        assert_eq!(checks.load(Ordering::SeqCst), 2);
    }
}
