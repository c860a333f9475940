//! The embedded state store: a bounded in-process map.
//!
//! Entries are 16-byte fingerprint prefixes mapped to three `u32`s. Expiry is driven
//! by a min-heap of deadlines that a purge task sleeps on, never by scanning the map,
//! in the manner of mini-redis's `db.rs`. The heap holds exactly one item per entry:
//! a duplicate that slides an entry's window does not touch the heap; when the stale
//! item surfaces, the purge task re-files it at the entry's real deadline. So memory
//! is proportional to open incidents, not to traffic.
//!
//! A std `Mutex` is used rather than a tokio one because the critical sections are
//! short and never await.
//!
//! When full, the store refuses new incidents instead of evicting open ones: an
//! evicted entry would turn the next duplicate into a second RemediationRequest.

use std::cmp::Reverse;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::{BoxFuture, Entry, Observation, StateError, StateStore, Verdict};
use crate::clock::Clock;
use crate::signal::SignalStatus;

/// 128 bits of the SHA-256 fingerprint: collision-free in practice, and half the
/// memory of the whole digest.
type Key = [u8; 16];

/// How many expired items one purge pass removes before releasing the lock.
const PURGE_CHUNK: usize = 4096;

/// The embedded store. Dropping it stops its purge task.
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Mutex<Inner>,
    purge_wakeup: Notify,
    max_entries: usize,
    window_s: u32,
    clock: Clock,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    deadlines: BinaryHeap<Reverse<(u32, Key)>>,
    shutdown: bool,
}

impl MemoryStore {
    /// A store holding at most `max_entries` open incidents, each open for `window`
    /// after it was last seen. Must be called within a tokio runtime.
    pub fn new(max_entries: usize, window: Duration, clock: Clock) -> Self {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            purge_wakeup: Notify::new(),
            max_entries,
            window_s: window.as_secs().max(1) as u32,
            clock,
        });
        tokio::spawn(purge_task(shared.clone()));
        MemoryStore { shared }
    }

    /// Number of open incidents held (including expired ones not yet purged).
    pub fn len(&self) -> usize {
        self.shared.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn observe_now(&self, batch: &[Observation], now_s: u32) -> Result<Vec<Verdict>, StateError> {
        let shared = &self.shared;
        let mut inner = shared.lock();
        let needed = batch
            .iter()
            .filter(|o| o.status == SignalStatus::Firing && !inner.entries.contains_key(&key(o)))
            .count();
        // Checked up front, so a refused batch leaves the store untouched.
        if inner.entries.len() + needed > shared.max_entries {
            return Err(StateError::Full {
                max_entries: shared.max_entries,
            });
        }
        let mut notify = false;
        let verdicts = batch
            .iter()
            .map(|o| {
                let Inner { entries, deadlines, .. } = &mut *inner;
                let live = |e: &Entry| now_s.saturating_sub(e.last_seen_s) < shared.window_s;
                match (o.status, entries.entry(key(o))) {
                    (SignalStatus::Resolved, MapEntry::Occupied(e)) if live(e.get()) => Verdict::ResolvedOpen(*e.get()),
                    (SignalStatus::Resolved, _) => Verdict::ResolvedUnknown,
                    (SignalStatus::Firing, MapEntry::Occupied(mut e)) => {
                        let entry = e.get_mut();
                        if live(entry) {
                            entry.last_seen_s = entry.last_seen_s.max(now_s);
                            entry.count = entry.count.saturating_add(1);
                            Verdict::Duplicate(*entry)
                        } else {
                            // Its stale heap item is still filed and will re-file itself.
                            *entry = Entry {
                                first_seen_s: now_s,
                                last_seen_s: now_s,
                                count: 1,
                            };
                            Verdict::New(*entry)
                        }
                    }
                    (SignalStatus::Firing, MapEntry::Vacant(v)) => {
                        let entry = *v.insert(Entry {
                            first_seen_s: now_s,
                            last_seen_s: now_s,
                            count: 1,
                        });
                        notify |= deadlines.is_empty();
                        deadlines.push(Reverse((now_s.saturating_add(shared.window_s), key(o))));
                        Verdict::New(entry)
                    }
                }
            })
            .collect();
        drop(inner);
        if notify {
            shared.purge_wakeup.notify_one();
        }
        Ok(verdicts)
    }
}

fn key(o: &Observation) -> Key {
    o.fingerprint.as_bytes()[..16].try_into().expect("16 of 32 bytes")
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave an entry half-written (every
        // mutation is a single assignment), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes expired entries; returns the next deadline, if any.
    fn purge(&self) -> Option<u32> {
        let now_s = self.clock.now_s();
        let mut inner = self.lock();
        let Inner { entries, deadlines, .. } = &mut *inner;
        for _ in 0..PURGE_CHUNK {
            match deadlines.peek() {
                Some(Reverse((deadline, _))) if *deadline <= now_s => {}
                _ => break,
            }
            let Reverse((_, key)) = deadlines.pop().expect("peeked");
            if let Some(entry) = entries.get(&key) {
                let real_deadline = entry.last_seen_s.saturating_add(self.window_s);
                if real_deadline <= now_s {
                    entries.remove(&key);
                } else {
                    deadlines.push(Reverse((real_deadline, key)));
                }
            }
        }
        if entries.capacity() > 4 * entries.len().max(1024) {
            entries.shrink_to(2 * entries.len());
            deadlines.shrink_to(2 * deadlines.len());
        }
        deadlines.peek().map(|Reverse((d, _))| *d)
    }
}

async fn purge_task(shared: Arc<Shared>) {
    loop {
        if shared.lock().shutdown {
            return;
        }
        match shared.purge() {
            Some(deadline) => {
                let wait_ms = (deadline as u64 * 1000).saturating_sub(shared.clock.now_ms());
                if wait_ms == 0 {
                    tokio::task::yield_now().await;
                    continue;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
                    _ = shared.purge_wakeup.notified() => {}
                }
            }
            None => shared.purge_wakeup.notified().await,
        }
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.purge_wakeup.notify_one();
    }
}

impl StateStore for MemoryStore {
    fn observe<'a>(&'a self, batch: &'a [Observation], now_s: u32) -> BoxFuture<'a, Result<Vec<Verdict>, StateError>> {
        Box::pin(async move { self.observe_now(batch, now_s) })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async { Ok(()) })
    }

    fn entries(&self) -> BoxFuture<'_, Result<u64, StateError>> {
        Box::pin(async move { Ok(self.len() as u64) })
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::{Fingerprint, TargetResource};
    use std::time::{SystemTime, UNIX_EPOCH};

    fn fire(name: &str) -> Observation {
        Observation {
            fingerprint: Fingerprint::new(name, "ns", &TargetResource::default()),
            status: SignalStatus::Firing,
        }
    }

    fn clock() -> Clock {
        Clock::manual(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    }

    #[tokio::test]
    async fn full_store_refuses_new_incidents_and_keeps_open_ones() {
        let clock = clock();
        let store = MemoryStore::new(2, Duration::from_secs(300), clock.clone());
        let now = clock.now_s();
        store.observe(&[fire("a"), fire("b")], now).await.unwrap();
        let err = store.observe(&[fire("a"), fire("c")], now).await.unwrap_err();
        assert!(matches!(err, StateError::Full { max_entries: 2 }));
        // Nothing of the refused batch was applied, and open incidents still dedup.
        let v = store.observe(&[fire("a")], now).await.unwrap();
        assert!(matches!(v[0], Verdict::Duplicate(Entry { count: 2, .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn purge_task_removes_entries_at_their_deadline_not_before() {
        let clock = Clock::manual(SystemTime::now());
        let store = MemoryStore::new(10, Duration::from_secs(60), clock.clone());
        store.observe(&[fire("a")], clock.now_s()).await.unwrap();
        let step = |secs| {
            clock.advance(Duration::from_secs(secs));
            tokio::time::advance(Duration::from_secs(secs))
        };
        step(30).await;
        store.observe(&[fire("a")], clock.now_s()).await.unwrap(); // slides the window
        step(45).await;
        tokio::task::yield_now().await;
        assert_eq!(store.len(), 1, "the duplicate at +30s keeps it open until +90s");
        step(20).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(store.len(), 0);
    }
}
