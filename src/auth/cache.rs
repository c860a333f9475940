//! A bounded cache of credential checks, keyed by a SHA-256 of the credential
//! (never the credential itself), each answer kept for its own time to live.
//!
//! When full, the entry inserted first goes: the cache only saves work, so losing
//! an answer costs one more check, never a wrong one.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// The key of a credential: its SHA-256.
pub type Key = [u8; 32];

pub fn key(credential: &[u8]) -> Key {
    Sha256::digest(credential).into()
}

pub struct TtlCache<V> {
    inner: Mutex<Inner<V>>,
    capacity: usize,
}

struct Inner<V> {
    entries: HashMap<Key, (Instant, V)>,
    /// Keys in insertion order, one per entry.
    order: VecDeque<Key>,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(capacity: usize) -> Self {
        TtlCache {
            inner: Mutex::new(Inner { entries: HashMap::new(), order: VecDeque::new() }),
            capacity: capacity.max(1),
        }
    }

    /// The answer for `key`, if one is cached and still fresh.
    pub fn get(&self, key: &Key) -> Option<V> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (expires, value) = inner.entries.get(key)?;
        (Instant::now() < *expires).then(|| value.clone())
    }

    pub fn insert(&self, key: Key, value: V, ttl: Duration) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
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
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn answers_expire_at_their_own_ttl_and_the_cache_never_outgrows_its_capacity() {
        let cache = TtlCache::new(2);
        cache.insert(key(b"a"), "allowed", Duration::from_secs(60));
        cache.insert(key(b"b"), "denied", Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!((cache.get(&key(b"a")), cache.get(&key(b"b"))), (Some("allowed"), None));

        cache.insert(key(b"c"), "allowed", Duration::from_secs(60));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&key(b"a")), None, "the oldest entry made room");
        assert_eq!(cache.get(&key(b"c")), Some("allowed"));
    }
}
