//! The embedded state store: bounded in-process maps.
//!
//! Dedup entries are 16-byte fingerprint prefixes mapped to three `u32`s. Storm
//! scopes and rate-limit budgets sit beside them. Expiry is driven by min-heaps of
//! deadlines that a purge task sleeps on, never by scanning a map, in the manner
//! of mini-redis's `db.rs`. Each heap holds exactly one item per entry: an update
//! that pushes an entry's deadline back does not touch the heap; when the stale
//! item surfaces, the purge task re-files it at the entry's real deadline. So
//! memory is proportional to what is held, not to traffic.
//!
//! A std `Mutex` is used rather than a tokio one because the critical sections are
//! short and never await.
//!
//! When full, the store refuses new incidents instead of evicting open ones: an
//! evicted entry would turn the next duplicate into a second RemediationRequest.

use std::cmp::Reverse;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::BinaryHeap;

// Keys are SHA-256 prefixes and hashes, which no sender can steer into collisions:
// a fast hasher is safe here, and the table is hit once per alert.
use foldhash::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{
    Admission, BoxFuture, Entry, FlapRule, Folded, InhibitKey, Inhibitor, Observation, OpenWindow, RateLimit,
    StateError, StateStore, StormConfig, StormKey, StormKind, Verdict,
};
use crate::clock::Clock;
use crate::section::ConfigError;
use crate::signal::SignalStatus;

/// 128 bits of the SHA-256 fingerprint: collision-free in practice, and half the
/// memory of the whole digest.
type Key = [u8; 16];

/// How many expired items one purge pass removes before releasing the lock.
const PURGE_CHUNK: usize = 4096;

/// Distinct resources tracked exactly per scope window; beyond this the count
/// saturates (Redis counts with HyperLogLog instead). Bounds a scope to ~200 KB.
pub const DISTINCT_CAP: usize = 16_384;

/// `memory`: the embedded store.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Most open incidents the embedded store holds; beyond it new incidents are
    /// refused with 503 rather than evicting open ones.
    pub max_entries: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { max_entries: 1_000_000 }
    }
}

impl MemoryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_entries == 0 {
            return Err(ConfigError::invalid("memory.max_entries", "must be at least 1"));
        }
        Ok(())
    }
}

/// The embedded store. Dropping it stops its purge task.
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Mutex<Inner>,
    purge_wakeup: Notify,
    max_entries: usize,
    window_s: u32,
    storms: StormConfig,
    clock: Clock,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    entry_deadlines: Deadlines<Key>,
    scopes: HashMap<[u8; 16], Scope>,
    scope_deadlines: Deadlines<[u8; 16]>,
    /// Source → GCRA theoretical arrival time, in ms.
    budgets: HashMap<String, u64>,
    budget_deadlines: Deadlines<String>,
    /// Replay-protection ids → the second their sighting expires.
    sightings: HashMap<Key, u32>,
    sighting_deadlines: Deadlines<Key>,
    /// Inhibit keys → their source and the second the hold ends.
    inhibitors: HashMap<InhibitKey, (Inhibitor, u32)>,
    inhibitor_deadlines: Deadlines<InhibitKey>,
    /// Incidents that resolved or re-fired within the flap window.
    flaps: HashMap<Key, Flap>,
    flap_deadlines: Deadlines<Key>,
    flap_rule: FlapRule,
    shutdown: bool,
}

/// An incident's recent firing → resolved → firing transitions, and whether its
/// last signal was a resolution.
#[derive(Default)]
struct Flap {
    resolved: bool,
    /// When the record was last written: it lives a flap window after that.
    written: u32,
    /// Seconds of the transitions, oldest first, at most [`FlapRule::keep`].
    transitions: Vec<u32>,
}

/// A min-heap of (deadline in seconds, key), at most one item per key.
struct Deadlines<K: Ord>(BinaryHeap<Reverse<(u32, K)>>);

impl<K: Ord> Default for Deadlines<K> {
    fn default() -> Self {
        Deadlines(BinaryHeap::new())
    }
}

impl<K: Ord + Clone + Hash> Deadlines<K> {
    fn file(&mut self, deadline: u32, key: K) {
        self.0.push(Reverse((deadline, key)));
    }

    fn next(&self) -> Option<u32> {
        self.0.peek().map(|Reverse((d, _))| *d)
    }

    /// Pops items due at `now`, asking `real_deadline` for each key's current
    /// deadline: the key is removed (`None`), re-filed (later), or dropped from the
    /// heap if the map no longer has it. Returns how many were popped.
    fn expire<V>(
        &mut self,
        now: u32,
        map: &mut HashMap<K, V>,
        real_deadline: impl Fn(&V) -> u32,
        budget: usize,
    ) -> usize
    where
        K: Eq,
    {
        let mut popped = 0;
        while popped < budget && self.next().is_some_and(|d| d <= now) {
            let Reverse((_, key)) = self.0.pop().expect("peeked");
            popped += 1;
            if let Some(value) = map.get(&key) {
                let deadline = real_deadline(value);
                if deadline <= now {
                    map.remove(&key);
                } else {
                    self.file(deadline, key);
                }
            }
        }
        popped
    }

    fn shrink(&mut self) {
        if self.0.capacity() > 4 * self.0.len().max(1024) {
            self.0.shrink_to(2 * self.0.len());
        }
    }
}

/// Storm detection state of one (namespace, alert name).
struct Scope {
    rate_bucket: u32,
    rate_count: u32,
    pattern_bucket: u32,
    pattern: HashSet<[u8; 8]>,
    window: Option<Window>,
}

struct Window {
    id: u32,
    kind: StormKind,
    last: u32,
    alerts: u32,
    resources: HashSet<[u8; 8]>,
}

impl Window {
    fn open_at(&self, now: u32, rules: &StormConfig) -> bool {
        now.saturating_sub(self.last) < rules.inactivity_s() && now.saturating_sub(self.id) < rules.max_duration_s()
    }

    fn fold(&mut self, resource: [u8; 8]) -> Folded {
        self.alerts = self.alerts.saturating_add(1);
        if self.resources.len() < DISTINCT_CAP {
            self.resources.insert(resource);
        }
        Folded {
            window_id: self.id,
            kind: self.kind,
            alert_count: self.alerts,
            resource_count: self.resources.len() as u32,
            opened: self.alerts == 1,
        }
    }
}

impl Scope {
    /// A scope first seen at `now_s`: nothing counted, no window.
    fn fresh(now_s: u32, rules: &StormConfig) -> Self {
        Scope {
            rate_bucket: now_s / rules.rate_window_s(),
            rate_count: 0,
            pattern_bucket: now_s / rules.pattern_window_s(),
            pattern: HashSet::default(),
            window: None,
        }
    }

    fn deadline(&self, rules: &StormConfig) -> u32 {
        let rate_end = (self.rate_bucket + 1).saturating_mul(rules.rate_window_s());
        let pattern_end = (self.pattern_bucket + 1).saturating_mul(rules.pattern_window_s());
        let window_end = self.window.as_ref().map_or(0, |w| {
            (w.last.saturating_add(rules.inactivity_s())).min(w.id.saturating_add(rules.max_duration_s()))
        });
        rate_end.max(pattern_end).max(window_end)
    }

    /// Counts a firing alert towards detection; folds it if its scope is, or now
    /// becomes, a storm and it is not `tracked` as an open incident of its own.
    fn observe(&mut self, key: &StormKey, tracked: bool, now: u32, rules: &StormConfig) -> Option<Folded> {
        let rate_bucket = now / rules.rate_window_s();
        if rate_bucket != self.rate_bucket {
            (self.rate_bucket, self.rate_count) = (rate_bucket, 0);
        }
        self.rate_count = self.rate_count.saturating_add(1);
        let pattern_bucket = now / rules.pattern_window_s();
        if pattern_bucket != self.pattern_bucket {
            self.pattern_bucket = pattern_bucket;
            self.pattern.clear();
        }
        if self.pattern.len() < DISTINCT_CAP {
            self.pattern.insert(key.resource);
        }
        let window = match self.window.as_mut().filter(|w| w.open_at(now, rules)) {
            Some(window) => {
                window.last = window.last.max(now);
                window
            }
            None => {
                let kind = if self.pattern.len() as u32 > rules.pattern_threshold {
                    StormKind::Pattern
                } else if self.rate_count > rules.rate_threshold {
                    StormKind::Rate
                } else {
                    return None;
                };
                self.window.insert(Window { id: now, kind, last: now, alerts: 0, resources: HashSet::default() })
            }
        };
        (!tracked).then(|| window.fold(key.resource))
    }
}

impl MemoryStore {
    /// A store holding at most `config.max_entries` open incidents, each open for
    /// `window` after it was last seen. Must be called within a tokio runtime.
    pub fn new(config: &MemoryConfig, window: Duration, storms: &StormConfig, clock: Clock) -> Self {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            purge_wakeup: Notify::new(),
            max_entries: config.max_entries,
            window_s: window.as_secs().max(1) as u32,
            storms: *storms,
            clock,
        });
        tokio::spawn(purge_task(shared.clone()));
        MemoryStore { shared }
    }

    /// The store counting flap transitions as `rule` says, rather than by `flap`'s
    /// defaults.
    pub fn with_flap(self, rule: FlapRule) -> Self {
        self.shared.lock().flap_rule = rule;
        self
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
        let rules = &shared.storms;
        let mut inner = shared.lock();
        // Counted generously (a folded alert needs no entry), and before any change,
        // so a refused batch leaves the store untouched.
        let needed =
            batch.iter().filter(|o| o.status == SignalStatus::Firing && !inner.entries.contains_key(&key(o))).count();
        if inner.entries.len() + needed > shared.max_entries {
            return Err(StateError::Full { max_entries: shared.max_entries });
        }
        let mut notify = false;
        let decide = |inner: &mut Inner, o: &Observation, notify: &mut bool| -> Verdict {
            let live = |e: &Entry| now_s.saturating_sub(e.last_seen_s) < shared.window_s;
            if let (SignalStatus::Firing, Some(storm)) = (o.status, &o.storm) {
                // A repeat of an open incident is counted there, and still counts
                // towards detection; anything else may fold into a storm.
                let open = inner.entries.get_mut(&key(o)).filter(|e| live(e));
                let repeat = open.map(|entry| Verdict::Duplicate(seen_again(entry, now_s)));
                let scope = match inner.scopes.entry(storm.scope) {
                    MapEntry::Occupied(e) => e.into_mut(),
                    MapEntry::Vacant(v) => {
                        *notify |= inner.scope_deadlines.next().is_none();
                        inner.scope_deadlines.file(now_s.saturating_add(rules.rate_window_s()), storm.scope);
                        v.insert(Scope::fresh(now_s, rules))
                    }
                };
                let folded = scope.observe(storm, repeat.is_some(), now_s, rules);
                if let Some(verdict) = repeat.or(folded.map(Verdict::Folded)) {
                    return verdict;
                }
            }
            match (o.status, inner.entries.entry(key(o))) {
                (SignalStatus::Resolved, MapEntry::Occupied(e)) if live(e.get()) => Verdict::ResolvedOpen(*e.get()),
                (SignalStatus::Resolved, _) => Verdict::ResolvedUnknown,
                (SignalStatus::Acknowledged, MapEntry::Occupied(e)) if live(e.get()) => {
                    Verdict::AcknowledgedOpen(*e.get())
                }
                (SignalStatus::Acknowledged, _) => Verdict::AcknowledgedUnknown,
                (SignalStatus::Firing, MapEntry::Occupied(mut e)) => {
                    let entry = e.get_mut();
                    if live(entry) {
                        Verdict::Duplicate(seen_again(entry, now_s))
                    } else {
                        // Its stale heap item is still filed and will re-file itself.
                        *entry = Entry { first_seen_s: now_s, last_seen_s: now_s, count: 1 };
                        Verdict::New(*entry)
                    }
                }
                (SignalStatus::Firing, MapEntry::Vacant(v)) => {
                    let entry = *v.insert(Entry { first_seen_s: now_s, last_seen_s: now_s, count: 1 });
                    *notify |= inner.entry_deadlines.next().is_none();
                    inner.entry_deadlines.file(now_s.saturating_add(shared.window_s), key(o));
                    Verdict::New(entry)
                }
            }
        };
        let verdicts = batch
            .iter()
            .map(|o| {
                let mut verdict = decide(&mut inner, o, &mut notify);
                notify |= flap(&mut inner, o, &mut verdict, now_s, shared.max_entries);
                verdict
            })
            .collect();
        drop(inner);
        if notify {
            shared.purge_wakeup.notify_one();
        }
        Ok(verdicts)
    }

    fn adopt_now(&self, o: &Observation, mut entry: Entry, now_s: u32) {
        entry.last_seen_s = now_s;
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        let notify = inner.entry_deadlines.next().is_none();
        if inner.entries.insert(key(o), entry).is_none() {
            inner.entry_deadlines.file(now_s.saturating_add(self.shared.window_s), key(o));
        }
        if notify {
            self.shared.purge_wakeup.notify_one();
        }
    }

    fn adopt_window_now(&self, o: &Observation, window: OpenWindow, now_s: u32) -> Result<Folded, StateError> {
        let storm = o.storm.ok_or_else(|| StateError::Misuse("an adopted window needs a storm scope"))?;
        let rules = &self.shared.storms;
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        // Its stale heap item, if any, finds no entry and is dropped.
        inner.entries.remove(&key(o));
        let notify = inner.scope_deadlines.next().is_none();
        let scope = inner.scopes.entry(storm.scope).or_insert_with(|| {
            inner.scope_deadlines.file(now_s.saturating_add(rules.rate_window_s()), storm.scope);
            Scope::fresh(now_s, rules)
        });
        // Concurrent adoptions of one window (a batch of its alerts after a restart)
        // count on from each other, not each from the authority's count.
        let open = scope.window.as_mut().filter(|w| w.id == window.id && w.open_at(now_s, rules));
        let folded = match open {
            Some(adopted) => {
                adopted.last = adopted.last.max(now_s);
                adopted.fold(storm.resource)
            }
            None => {
                let adopted = Window {
                    id: window.id,
                    kind: window.kind,
                    last: now_s,
                    alerts: window.alerts,
                    resources: HashSet::default(),
                };
                scope.window.insert(adopted).fold(storm.resource)
            }
        };
        if notify {
            self.shared.purge_wakeup.notify_one();
        }
        Ok(folded)
    }

    fn admit_now(&self, source: &str, limit: RateLimit, now_ms: u64) -> Admission {
        let (interval, tolerance) = (limit.emission_interval_ms(), limit.tolerance_ms());
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        let tat = inner.budgets.get(source).copied().unwrap_or(now_ms).max(now_ms);
        if tat - now_ms > tolerance {
            return Admission::Limited { retry_after_ms: tat - now_ms - tolerance };
        }
        let next = tat + interval;
        if let Some(known) = inner.budgets.get_mut(source) {
            *known = next;
            return Admission::Allowed;
        }
        let notify = inner.budget_deadlines.next().is_none();
        inner.budgets.insert(source.to_string(), next);
        inner.budget_deadlines.file(deadline_s(next), source.to_string());
        if notify {
            self.shared.purge_wakeup.notify_one();
        }
        Admission::Allowed
    }
}

impl MemoryStore {
    /// Sightings count against `max_entries` on their own: a flood of signed
    /// messages can fill the replay store (then refused with 503, which the sender
    /// retries) but never crowd out open incidents.
    fn first_sighting_now(&self, id: Key, ttl: Duration) -> Result<bool, StateError> {
        let now_s = self.shared.clock.now_s();
        // Whole seconds: a second more than asked rather than up to one less.
        let deadline = now_s.saturating_add(ttl.as_secs().max(1) as u32 + 1);
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        let full = inner.sightings.len() >= self.shared.max_entries;
        match inner.sightings.entry(id) {
            MapEntry::Occupied(e) if *e.get() > now_s => Ok(false),
            // Expired, not yet purged: its heap item re-files itself at the new deadline.
            MapEntry::Occupied(mut e) => {
                *e.get_mut() = deadline;
                Ok(true)
            }
            MapEntry::Vacant(v) => {
                if full {
                    return Err(StateError::Full { max_entries: self.shared.max_entries });
                }
                v.insert(deadline);
                let notify = inner.sighting_deadlines.next().is_none();
                inner.sighting_deadlines.file(deadline, id);
                if notify {
                    self.shared.purge_wakeup.notify_one();
                }
                Ok(true)
            }
        }
    }
}

impl MemoryStore {
    fn inhibitors_now(&self, keys: &[InhibitKey], now_s: u32) -> Vec<Option<Inhibitor>> {
        let inner = self.shared.lock();
        keys.iter()
            .map(|k| inner.inhibitors.get(k).filter(|(_, until)| *until > now_s).map(|(i, _)| i.clone()))
            .collect()
    }

    fn release_now(&self, releases: &[(InhibitKey, Inhibitor)]) -> usize {
        let mut inner = self.shared.lock();
        let mut released = 0;
        for (key, inhibitor) in releases {
            let same = |(held, _): &(Inhibitor, u32)| {
                (held.source, held.first_seen_s) == (inhibitor.source, inhibitor.first_seen_s)
            };
            // Its heap item finds nothing when it surfaces and is dropped.
            if inner.inhibitors.get(key).is_some_and(same) {
                inner.inhibitors.remove(key);
                released += 1;
            }
        }
        released
    }

    /// Holds count against `max_entries` on their own, like sightings: they can be
    /// refused (503, retried), never crowd out open incidents.
    fn hold_now(&self, holds: &[(InhibitKey, Inhibitor)], now_s: u32, until_s: u32) -> Result<(), StateError> {
        let until_s = until_s.max(now_s.saturating_add(1));
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        let new = holds.iter().filter(|(k, _)| !inner.inhibitors.contains_key(k)).count();
        if inner.inhibitors.len() + new > self.shared.max_entries {
            return Err(StateError::Full { max_entries: self.shared.max_entries });
        }
        let notify = inner.inhibitor_deadlines.next().is_none();
        for (key, inhibitor) in holds {
            // A key already filed re-files itself at its new deadline when its old
            // one surfaces.
            if inner.inhibitors.insert(*key, (inhibitor.clone(), until_s)).is_none() {
                inner.inhibitor_deadlines.file(until_s, *key);
            }
        }
        if notify && !holds.is_empty() {
            self.shared.purge_wakeup.notify_one();
        }
        Ok(())
    }
}

/// Records a resolution in its incident's flap record, or counts a
/// transition for a firing signal that follows one; says whether the purge
/// task must wake for a new deadline.
fn flap(inner: &mut Inner, o: &Observation, verdict: &mut Verdict, now_s: u32, cap: usize) -> bool {
    let rule = inner.flap_rule;
    let live = |f: &Flap| now_s.saturating_sub(f.written) < rule.window_s;
    match (o.status, *verdict) {
        (SignalStatus::Resolved, _) => {
            let full = inner.flaps.len() >= cap;
            let new = match inner.flaps.entry(key(o)) {
                MapEntry::Occupied(mut e) => {
                    if !live(e.get()) {
                        *e.get_mut() = Flap::default();
                    }
                    let f = e.get_mut();
                    (f.resolved, f.written) = (true, f.written.max(now_s));
                    false
                }
                // Advisory: past the store's size, a resolution goes unrecorded
                // (flapping shows later), rather than refusing the signal.
                MapEntry::Vacant(_) if full => false,
                MapEntry::Vacant(v) => {
                    v.insert(Flap { resolved: true, written: now_s, transitions: Vec::new() });
                    true
                }
            };
            if new {
                let notify = inner.flap_deadlines.next().is_none();
                inner.flap_deadlines.file(now_s.saturating_add(rule.window_s), key(o));
                return notify;
            }
            false
        }
        (SignalStatus::Firing, Verdict::New(entry) | Verdict::Duplicate(entry)) => {
            let Some(f) = inner.flaps.get_mut(&key(o)).filter(|f| live(f) && f.resolved) else {
                return false;
            };
            f.resolved = false;
            f.written = f.written.max(now_s);
            f.transitions.retain(|t| now_s.saturating_sub(*t) < rule.window_s);
            f.transitions.push(now_s);
            let excess = f.transitions.len().saturating_sub(rule.keep.max(1) as usize);
            f.transitions.drain(..excess);
            let opened = matches!(verdict, Verdict::New(_));
            *verdict = Verdict::Refired { entry, opened, transitions: f.transitions.len() as u32 };
            false
        }
        _ => false,
    }
}

/// Counts a repeat of an open incident; `last_seen` never moves backwards.
fn seen_again(entry: &mut Entry, now_s: u32) -> Entry {
    entry.last_seen_s = entry.last_seen_s.max(now_s);
    entry.count = entry.count.saturating_add(1);
    *entry
}

/// The second by which a budget with this arrival time is back to full.
fn deadline_s(tat_ms: u64) -> u32 {
    (tat_ms / 1000 + 1) as u32
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
        let Inner {
            entries,
            entry_deadlines,
            scopes,
            scope_deadlines,
            budgets,
            budget_deadlines,
            sightings,
            sighting_deadlines,
            inhibitors,
            inhibitor_deadlines,
            flaps,
            flap_deadlines,
            flap_rule,
            ..
        } = &mut *inner;
        let flap_window_s = flap_rule.window_s;
        let window_s = self.window_s;
        let mut budget = PURGE_CHUNK;
        budget -= entry_deadlines.expire(now_s, entries, |e| e.last_seen_s.saturating_add(window_s), budget);
        budget -= scope_deadlines.expire(now_s, scopes, |s| s.deadline(&self.storms), budget);
        budget -= budget_deadlines.expire(now_s, budgets, |tat| deadline_s(*tat), budget);
        budget -= sighting_deadlines.expire(now_s, sightings, |deadline| *deadline, budget);
        budget -= inhibitor_deadlines.expire(now_s, inhibitors, |(_, until)| *until, budget);
        flap_deadlines.expire(now_s, flaps, |f| f.written.saturating_add(flap_window_s), budget);
        if entries.capacity() > 4 * entries.len().max(1024) {
            entries.shrink_to(2 * entries.len());
        }
        entry_deadlines.shrink();
        [
            entry_deadlines.next(),
            scope_deadlines.next(),
            budget_deadlines.next(),
            sighting_deadlines.next(),
            inhibitor_deadlines.next(),
            flap_deadlines.next(),
        ]
        .into_iter()
        .flatten()
        .min()
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
    fn adopt<'a>(&'a self, o: &'a Observation, entry: Entry, now_s: u32) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            self.adopt_now(o, entry, now_s);
            Ok(())
        })
    }

    fn observe<'a>(&'a self, batch: &'a [Observation], now_s: u32) -> BoxFuture<'a, Result<Vec<Verdict>, StateError>> {
        Box::pin(async move { self.observe_now(batch, now_s) })
    }

    fn adopt_window<'a>(
        &'a self,
        o: &'a Observation,
        window: OpenWindow,
        now_s: u32,
    ) -> BoxFuture<'a, Result<Folded, StateError>> {
        Box::pin(async move { self.adopt_window_now(o, window, now_s) })
    }

    fn admit<'a>(
        &'a self,
        source: &'a str,
        limit: RateLimit,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Admission, StateError>> {
        Box::pin(async move { Ok(self.admit_now(source, limit, now_ms)) })
    }

    fn inhibitors<'a>(
        &'a self,
        keys: &'a [InhibitKey],
        now_s: u32,
    ) -> BoxFuture<'a, Result<Vec<Option<Inhibitor>>, StateError>> {
        Box::pin(async move { Ok(self.inhibitors_now(keys, now_s)) })
    }

    fn hold_inhibitors<'a>(
        &'a self,
        holds: &'a [(InhibitKey, Inhibitor)],
        now_s: u32,
        until_s: u32,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move { self.hold_now(holds, now_s, until_s) })
    }

    fn release_inhibitors<'a>(
        &'a self,
        releases: &'a [(InhibitKey, Inhibitor)],
    ) -> BoxFuture<'a, Result<usize, StateError>> {
        Box::pin(async move { Ok(self.release_now(releases)) })
    }

    fn first_sighting(&self, id: [u8; 16], ttl: Duration) -> BoxFuture<'_, Result<bool, StateError>> {
        Box::pin(async move { self.first_sighting_now(id, ttl) })
    }

    fn forget_sighting(&self, id: [u8; 16]) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            // Its heap item finds nothing and is dropped.
            self.shared.lock().sightings.remove(&id);
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async { Ok(()) })
    }

    fn entries(&self) -> BoxFuture<'_, Result<u64, StateError>> {
        Box::pin(async move { Ok(self.len() as u64) })
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
            storm: None,
        }
    }

    fn clock() -> Clock {
        Clock::manual(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    }

    #[tokio::test]
    async fn full_store_refuses_new_incidents_and_keeps_open_ones() {
        let clock = clock();
        let store = MemoryStore::new(
            &MemoryConfig { max_entries: 2 },
            Duration::from_secs(300),
            &StormConfig::default(),
            clock.clone(),
        );
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
        let store = MemoryStore::new(
            &MemoryConfig { max_entries: 10 },
            Duration::from_secs(60),
            &StormConfig::default(),
            clock.clone(),
        );
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

    #[tokio::test(start_paused = true)]
    async fn sightings_are_bounded_by_max_entries_and_purged_after_their_ttl() {
        let clock = Clock::manual(SystemTime::now());
        let store = MemoryStore::new(
            &MemoryConfig { max_entries: 2 },
            Duration::from_secs(60),
            &StormConfig::default(),
            clock.clone(),
        );
        let ttl = Duration::from_secs(300);
        assert!(store.first_sighting([1; 16], ttl).await.unwrap());
        assert!(store.first_sighting([2; 16], ttl).await.unwrap());
        let full = store.first_sighting([3; 16], ttl).await.unwrap_err();
        assert!(matches!(full, StateError::Full { max_entries: 2 }));
        assert!(!store.first_sighting([1; 16], ttl).await.unwrap(), "a full store still answers for known ids");
        clock.advance(Duration::from_secs(302));
        tokio::time::advance(Duration::from_secs(302)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(store.shared.lock().sightings.len(), 0);
        assert!(store.first_sighting([3; 16], ttl).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_storm_scopes_and_budgets_are_purged() {
        let clock = Clock::manual(SystemTime::now());
        let store = MemoryStore::new(
            &MemoryConfig { max_entries: 10 },
            Duration::from_secs(60),
            &StormConfig::default(),
            clock.clone(),
        );
        let mut o = fire("a");
        o.storm = Some(StormKey::new("ns", "a", &TargetResource::default()));
        store.observe(&[o], clock.now_s()).await.unwrap();
        store.admit("10.0.0.1", RateLimit { rate_per_s: 1.0, burst: 5 }, clock.now_ms()).await.unwrap();
        {
            let inner = store.shared.lock();
            assert_eq!((inner.scopes.len(), inner.budgets.len()), (1, 1));
        }
        clock.advance(Duration::from_secs(600));
        tokio::time::advance(Duration::from_secs(600)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let inner = store.shared.lock();
        assert_eq!((inner.scopes.len(), inner.budgets.len(), inner.entries.len()), (0, 0, 0));
    }
}
