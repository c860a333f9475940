//! The directory sink's authority on open incidents: what the manifests under the
//! sink directory say, in memory.
//!
//! At start the gateway reads every manifest that could still belong to an open
//! incident (modified within the horizon, the longest a dedup or storm window can
//! stay open), so that after a restart a repeat of an open incident is counted on
//! its request instead of opening a second one. From then on it keeps the index
//! current from two sides: the sink's own writes, and a watch on the directory
//! (inotify), which sees a manifest removed by hand, or a phase a controller wrote,
//! as soon as it happens.
//!
//! The index never decides anything: the pipeline asks it, through the [`Sink`]
//! trait, and it answers from memory without I/O.
//!
//! [`Sink`]: crate::sink::Sink

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

// foldhash is seeded per process; `lookup` is hit once per duplicate alert.
use foldhash::HashMap;
use jiff::Timestamp;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::render::Head;
use crate::remediation::{is_flapping_condition, RemediationRequest};
use crate::signal::Fingerprint;
use crate::sink::{LastRequest, Lookup, OpenRequest, Phase, RequestRef};
use crate::state::StormKind;
use crate::tree_watch::Change;

/// What the index keeps of one manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub fingerprint: Fingerprint,
    pub first_seen_s: u32,
    pub last_seen_s: u32,
    pub count: u64,
    pub phase: Phase,
    pub prior_failures: u32,
    pub storm: Option<StormKind>,
    /// Its status says it flaps (the `Flapping` condition is true): the flap sweep
    /// reads only these manifests.
    pub flapping: bool,
}

impl Record {
    /// The record of a request as this gateway wrote it.
    pub fn of(request: &RemediationRequest) -> Option<Record> {
        let status = request.status.as_ref();
        let dedup = status.and_then(|s| s.deduplication.as_ref())?;
        Some(Record {
            fingerprint: parse_fingerprint(&request.spec.signal_fingerprint)?,
            first_seen_s: dedup.first_seen_at.0.as_second() as u32,
            last_seen_s: dedup.last_seen_at.0.as_second() as u32,
            count: dedup.occurrence_count,
            phase: Phase::of(status.and_then(|s| s.phase.as_deref())),
            prior_failures: status.and_then(|s| s.backoff.as_ref()).map_or(0, |b| b.prior_failures),
            storm: request.spec.storm.as_ref().map(|s| StormKind::parse(&s.kind)),
            flapping: crate::remediation::marked_flapping(request),
        })
    }
}

fn parse_fingerprint(hex: &str) -> Option<Fingerprint> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex, &mut bytes).ok()?;
    Some(Fingerprint::from_bytes(bytes))
}

/// The fields of a manifest the index needs, read without the rest of the schema.
#[derive(Deserialize)]
struct Manifest {
    spec: ManifestSpec,
    #[serde(default)]
    status: Option<ManifestStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestSpec {
    signal_fingerprint: String,
    #[serde(default)]
    storm: Option<ManifestStorm>,
}

#[derive(Deserialize)]
struct ManifestStorm {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct ManifestStatus {
    #[serde(default)]
    deduplication: Option<ManifestDedup>,
    #[serde(default)]
    phase: Option<String>,
    #[serde(default)]
    backoff: Option<ManifestBackoff>,
    #[serde(default)]
    conditions: Vec<ManifestCondition>,
}

#[derive(Deserialize)]
struct ManifestCondition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestBackoff {
    #[serde(default)]
    prior_failures: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDedup {
    first_seen_at: Timestamp,
    last_seen_at: Timestamp,
    occurrence_count: u64,
}

/// Parses a manifest's text into its record; `None` for anything that is not a
/// complete manifest of ours (a file being edited, a stranger's YAML).
pub fn parse(text: &str) -> Option<Record> {
    let manifest: Manifest = serde_norway::from_str(text).ok()?;
    let status = manifest.status?;
    let dedup = status.deduplication?;
    Some(Record {
        fingerprint: parse_fingerprint(&manifest.spec.signal_fingerprint)?,
        first_seen_s: dedup.first_seen_at.as_second() as u32,
        last_seen_s: dedup.last_seen_at.as_second() as u32,
        count: dedup.occurrence_count,
        phase: Phase::of(status.phase.as_deref()),
        prior_failures: status.backoff.map_or(0, |b| b.prior_failures),
        storm: manifest.spec.storm.map(|s| StormKind::parse(&s.kind)),
        flapping: status.conditions.iter().any(|c| is_flapping_condition(&c.kind, &c.status)),
    })
}

/// The SHA-256 of a manifest's bytes.
pub type Digest = [u8; 32];

/// The SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// A manifest as this gateway last wrote it: the request, its head as rendered
/// (what the next status write puts before the status it renders), and the digest
/// of the bytes written. While the file's bytes have that digest, the file says
/// exactly this request (bytes parse one way), so a status write starts from it
/// instead of parsing the file, and the watch has nothing to learn from the file.
/// Any other bytes (a controller's phase, a person's edit, another replica's write)
/// have another digest, and are read.
pub struct Written {
    pub request: RemediationRequest,
    pub head: Head,
    pub digest: Digest,
    /// The file the bytes were moved into place in, if known.
    pub file: Option<FileId>,
}

/// Which file a path holds: its device and inode, and the size and modification
/// time a write in place changes. The watch compares it only on events that say a
/// whole file was put at the path ([`Change::Placed`]): a write in place after
/// that sends an event of its own ([`Change::Other`]), which is always read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_s: i64,
    mtime_ns: i64,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_s: meta.mtime(),
            mtime_ns: meta.mtime_nsec(),
        }
    }
}

/// What a status write borrows of a [`Written`]: the request and its rendered head.
pub struct Kept {
    pub request: RemediationRequest,
    pub head: Head,
}

/// Every indexed manifest, by request and by fingerprint.
pub struct Index {
    inner: Mutex<Inner>,
    /// How long a removal is remembered: as long as an incident can stay open.
    horizon: Duration,
    /// Manifests the watch parsed: changes that were not this gateway's own writes.
    parsed: AtomicU64,
}

/// One indexed manifest.
struct Entry {
    record: Record,
    /// What this gateway last wrote to it, and the request written, while nobody
    /// else is known to have written it since (and either is used only once it
    /// matched the file's bytes). The request is lent to the status write under way,
    /// and the mark stays meanwhile: the file still holds those bytes, and the watch
    /// still knows them. At most one per indexed request, so they are forgotten with
    /// the request.
    last: Option<Mark>,
    request: Option<Box<Kept>>,
    /// A status write being moved into place: the watch, woken by the move, may
    /// read the file before the write is recorded here.
    landing: Option<Mark>,
    /// The write before the last: a watch that read the file just before the last
    /// write landed, and checks it just after, read this gateway's bytes too, and
    /// has nothing to learn from them.
    previous: Option<Mark>,
}

/// One write of this gateway's to a manifest: the digest of its bytes, and the
/// file they were moved into place in, if known. The watch knows a file of this
/// gateway's by it without reading it (see [`FileId`]).
#[derive(Clone, Copy)]
struct Mark {
    digest: Digest,
    file: Option<FileId>,
}

impl Entry {
    fn read(record: Record) -> Entry {
        Entry { record, last: None, request: None, landing: None, previous: None }
    }

    /// The entry after `written`, where `known` was the entry before it.
    fn written(record: Record, written: Written, known: Option<&Entry>) -> Entry {
        let request = Some(Box::new(Kept { request: written.request, head: written.head }));
        let last = Some(Mark { digest: written.digest, file: written.file });
        Entry { record, last, request, landing: None, previous: known.and_then(|k| k.last) }
    }

    /// The writes of this gateway's the file may hold: the last, the one landing,
    /// the one before.
    fn marks(&self) -> impl Iterator<Item = &Mark> {
        [&self.last, &self.landing, &self.previous].into_iter().flatten()
    }

    /// Whether `on_disk` are bytes this gateway wrote, or is moving into place.
    fn holds(&self, on_disk: &Digest) -> bool {
        self.marks().any(|m| m.digest == *on_disk)
    }

    /// Whether `file` is one this gateway moved into place, or is moving.
    fn placed(&self, file: &FileId) -> bool {
        self.marks().any(|m| m.file == Some(*file))
    }
}

#[derive(Default)]
struct Inner {
    requests: HashMap<Key, Entry>,
    /// The newest request of each fingerprint: the one a repeat may belong to.
    newest: HashMap<Fingerprint, Key>,
    /// Requests seen removed, and when: known gone, unlike a request another writer
    /// of the directory made that the watch has not reported yet.
    removed: HashMap<Key, Instant>,
    /// The latest `last_seen_s` of any record: the clock the records were written by.
    latest_s: u32,
    /// `requests` is swept of incidents past the horizon when it grows to this size.
    sweep_at: usize,
}

/// A request's namespace and name as one map key, kept in the table's slot when
/// short (as the gateway's own names are): a lookup then compares bytes it has
/// already loaded instead of following two pointers. `lookup` runs once per
/// duplicate alert, and those two cache misses were a tenth of the gateway's CPU
/// under the ingest bench (docs/performance.md).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Spilled(Box<[u8]>),
}

/// The longest key kept inline: the slot's key is one cache line.
const INLINE_KEY: usize = 62;

impl Key {
    /// The namespace, a NUL (which neither a namespace nor a file name holds), and
    /// the name. A given reference always takes the same form, so derived equality
    /// is byte equality.
    fn of(at: &RequestRef) -> Key {
        let (namespace, name) = (at.namespace.as_bytes(), at.name.as_bytes());
        let len = namespace.len() + 1 + name.len();
        let mut bytes = [0; INLINE_KEY];
        match bytes.get_mut(..len) {
            Some(key) => {
                key[..namespace.len()].copy_from_slice(namespace);
                key[namespace.len() + 1..].copy_from_slice(name);
                Key::Inline { len: len as u8, bytes }
            }
            None => Key::Spilled([namespace, &[0], name].concat().into()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Spilled(bytes) => bytes,
        }
    }

    fn to_ref(&self) -> RequestRef {
        let bytes = self.bytes();
        let nul = bytes.iter().position(|&b| b == 0).expect("a key holds its separator");
        let text = |b| String::from_utf8_lossy(b).into_owned();
        RequestRef { namespace: text(&bytes[..nul]), name: text(&bytes[nul + 1..]) }
    }
}

/// Removals remembered before old ones are swept.
const REMOVED_SWEEP: usize = 4096;
/// Requests indexed before the first sweep of those past the horizon.
const REQUESTS_SWEEP: usize = 4096;

/// What loading the directory found, for the start-up log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Manifests read and indexed.
    pub indexed: usize,
    /// Manifests left unread: last written before the horizon.
    pub stale: usize,
    /// Files that are not a manifest of ours.
    pub unreadable: usize,
}

impl Index {
    /// An empty index that remembers removals for `horizon`.
    pub fn new(horizon: Duration) -> Self {
        Index { inner: Mutex::default(), horizon, parsed: AtomicU64::new(0) }
    }

    /// Manifests the watch has parsed since start: every change it saw that was
    /// not this gateway's own write.
    pub fn parsed(&self) -> u64 {
        self.parsed.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation is a pair of map writes that cannot fail halfway.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records (or updates) the manifest at `at`, as read from the file.
    pub fn insert(&self, at: &RequestRef, record: Record) {
        self.insert_entry(at, Entry::read(record));
    }

    /// Records the manifest at `at`, as this gateway writes it.
    pub fn insert_written(&self, at: &RequestRef, record: Record, written: Written) {
        self.insert_entry(at, Entry::written(record, written, None));
    }

    fn insert_entry(&self, at: &RequestRef, entry: Entry) {
        let record = entry.record;
        let at = Key::of(at);
        let mut inner = self.lock();
        let Inner { requests, newest, removed, latest_s, sweep_at } = &mut *inner;
        removed.remove(&at);
        requests.insert(at.clone(), entry);
        *latest_s = (*latest_s).max(record.last_seen_s);
        let newer = match newest.get(&record.fingerprint).and_then(|n| requests.get(n).map(|e| (n, &e.record))) {
            Some((known, current)) => *known == at || current.first_seen_s <= record.first_seen_s,
            None => true,
        };
        if newer {
            newest.insert(record.fingerprint, at);
        }
        if requests.len() >= (*sweep_at).max(REQUESTS_SWEEP) {
            // Amortised: the next sweep waits until the map has doubled again.
            self.sweep(requests, newest, *latest_s);
            *sweep_at = 2 * requests.len();
        }
    }

    /// Forgets the requests whose incident was last seen before the horizon: none
    /// can be open any more (the same rule as [`Index::load`]'s, which skips files
    /// last written before it). Without this the index would hold every request the
    /// process ever wrote.
    ///
    /// "Now" is the earlier of the wall clock and the latest sighting recorded, so a
    /// gateway running on another clock (a test's) never sweeps what is still open.
    fn sweep(&self, requests: &mut HashMap<Key, Entry>, newest: &mut HashMap<Fingerprint, Key>, latest_s: u32) {
        let wall_s = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let now_s = u64::from(latest_s).min(wall_s);
        let horizon_s = self.horizon.as_secs();
        // A latched request holds its incident until a person acts, however old.
        requests.retain(|_, e| {
            u64::from(e.record.last_seen_s) + horizon_s >= now_s || e.record.phase == Phase::ManualReview
        });
        newest.retain(|_, at| requests.contains_key(at));
    }

    /// Forgets the manifest at `at`: it was removed.
    pub fn remove(&self, at: &RequestRef) {
        let at = Key::of(at);
        let mut inner = self.lock();
        let Inner { requests, newest, removed, .. } = &mut *inner;
        if let Some(entry) = requests.remove(&at) {
            if newest.get(&entry.record.fingerprint) == Some(&at) {
                newest.remove(&entry.record.fingerprint);
            }
        }
        if removed.len() >= REMOVED_SWEEP {
            removed.retain(|_, at| at.elapsed() < self.horizon);
        }
        removed.insert(at, Instant::now());
    }

    /// Updates the record at `at` after a status write, if it is known.
    pub fn update(&self, at: &RequestRef, record: Record) {
        self.update_entry(at, |_| Entry::read(record));
    }

    /// Updates the record at `at` after a status write, and keeps what it wrote, if
    /// the request is known.
    pub fn wrote(&self, at: &RequestRef, record: Record, written: Written) {
        // The write started from the file's bytes only if they were this gateway's.
        self.update_entry(at, |known| Entry::written(record, written, Some(known)));
    }

    fn update_entry(&self, at: &RequestRef, entry: impl FnOnce(&Entry) -> Entry) {
        let mut inner = self.lock();
        // The record comes from the file as just rewritten, phase included; one
        // removed meanwhile stays removed.
        let Inner { requests, latest_s, .. } = &mut *inner;
        if let Some(known) = requests.get_mut(&Key::of(at)) {
            *known = entry(known);
            *latest_s = (*latest_s).max(known.record.last_seen_s);
        }
    }

    /// The request this gateway last wrote to `at`, lent to a status write, if the
    /// file's bytes (`on_disk`, read under the namespace lock) are still the bytes
    /// written. Bytes that differ forget what was written: someone else wrote since.
    pub fn take_written(&self, at: &RequestRef, on_disk: &Digest) -> Option<Box<Kept>> {
        let mut inner = self.lock();
        let entry = inner.requests.get_mut(&Key::of(at))?;
        // A write that never landed left its mark here.
        entry.landing = None;
        if entry.last.map(|m| m.digest) != Some(*on_disk) {
            (entry.last, entry.request, entry.previous) = (None, None, None);
            return None;
        }
        entry.request.take()
    }

    /// Says that a status write with `digest`, staged in `file`, is being moved into
    /// place at `at`: until it is recorded ([`Index::wrote`]), both its bytes and
    /// the file's previous ones are this gateway's.
    pub fn landing(&self, at: &RequestRef, digest: Digest, file: FileId) {
        if let Some(entry) = self.lock().requests.get_mut(&Key::of(at)) {
            entry.landing = Some(Mark { digest, file: Some(file) });
        }
    }

    /// Whether the file at `at` holds exactly what this gateway wrote to it.
    fn is_written(&self, at: &RequestRef, on_disk: &Digest) -> bool {
        self.entry_is(at, |e| e.holds(on_disk))
    }

    /// Whether the file at `at` is one this gateway moved there, or is moving.
    fn is_placed(&self, at: &RequestRef, file: &FileId) -> bool {
        self.entry_is(at, |e| e.placed(file))
    }

    fn entry_is(&self, at: &RequestRef, is: impl FnOnce(&Entry) -> bool) -> bool {
        self.lock().requests.get(&Key::of(at)).is_some_and(is)
    }

    /// Requests whose last write by this gateway is kept, for tests of the bound.
    pub fn written(&self) -> usize {
        self.lock().requests.values().filter(|e| e.request.is_some()).count()
    }

    pub fn lookup(&self, at: &RequestRef) -> Lookup {
        let at = Key::of(at);
        let inner = self.lock();
        match inner.requests.get(&at).map(|e| &e.record) {
            Some(record) => record.phase.lookup(record.prior_failures),
            // Seen removed, by the watch or by a write that found it missing.
            None if inner.removed.contains_key(&at) => Lookup::Deleted,
            // Another writer of the directory (a second gateway) made it, and the
            // watch has not reported it yet.
            None => Lookup::Missing,
        }
    }

    pub fn open_request(&self, fingerprint: &Fingerprint) -> Option<OpenRequest> {
        let inner = self.lock();
        let at = inner.newest.get(fingerprint)?;
        let record = inner.requests.get(at).map(|e| &e.record).filter(|r| !r.phase.is_terminal())?;
        Some(OpenRequest {
            at: at.to_ref(),
            first_seen_s: record.first_seen_s,
            last_seen_s: record.last_seen_s,
            count: record.count,
            storm: record.storm,
        })
    }

    pub fn last_request(&self, fingerprint: &Fingerprint) -> Option<LastRequest> {
        let inner = self.lock();
        let at = inner.newest.get(fingerprint)?;
        let record = &inner.requests.get(at)?.record;
        Some(LastRequest {
            at: at.to_ref(),
            first_seen_s: record.first_seen_s,
            last_seen_s: record.last_seen_s,
            count: record.count,
            phase: record.phase,
            prior_failures: record.prior_failures,
        })
    }

    pub fn len(&self) -> usize {
        self.lock().requests.len()
    }

    /// The requests of single incidents indexed as open whose record `wanted` keeps.
    pub fn open_refs(&self, wanted: impl Fn(&Record) -> bool) -> Vec<RequestRef> {
        let inner = self.lock();
        inner
            .requests
            .iter()
            .filter(|(_, e)| !e.record.phase.is_terminal() && e.record.storm.is_none() && wanted(&e.record))
            .map(|(at, _)| at.to_ref())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads every manifest under `root` written within `horizon` of now, on
    /// `threads` threads. Older manifests cannot hold an open incident: a request is
    /// rewritten whenever its incident is seen, so its file is at least as new as
    /// its last sighting.
    pub fn load(&self, root: &Path, horizon: Duration, threads: usize) -> io::Result<Loaded> {
        let cutoff = SystemTime::now().checked_sub(horizon).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut files = Vec::new();
        let mut loaded = Loaded::default();
        for namespace in std::fs::read_dir(root)? {
            let namespace = namespace?;
            if !namespace.file_type()?.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(namespace.path())? {
                let file = file?;
                let path = file.path();
                if manifest_ref(root, &path).is_none() {
                    continue;
                }
                match file.metadata().and_then(|m| m.modified()) {
                    Ok(modified) if modified >= cutoff => files.push(path),
                    Ok(_) => loaded.stale += 1,
                    Err(_) => loaded.unreadable += 1,
                }
            }
        }
        let chunk = files.len().div_ceil(threads.max(1)).max(1);
        let counts = std::thread::scope(|scope| {
            let workers: Vec<_> = files
                .chunks(chunk)
                .map(|paths| {
                    scope.spawn(move || {
                        let (mut indexed, mut unreadable) = (0, 0);
                        for path in paths {
                            match read_record(path) {
                                Some(record) => {
                                    let at = manifest_ref(root, path).expect("filtered above");
                                    self.insert(&at, record);
                                    indexed += 1;
                                }
                                None => unreadable += 1,
                            }
                        }
                        (indexed, unreadable)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or((0, 0))).collect::<Vec<_>>()
        });
        for (indexed, unreadable) in counts {
            loaded.indexed += indexed;
            loaded.unreadable += unreadable;
        }
        Ok(loaded)
    }

    /// Brings the entry of the file at `path` in line with the disk after `change`:
    /// read again if it is there, forgotten if not. A file that holds exactly what
    /// this gateway last wrote to it is known already, and not parsed; one that this
    /// gateway has just moved into place is not even read.
    pub fn refresh(&self, root: &Path, path: &Path, change: Change) {
        let Some(at) = manifest_ref(root, path) else { return };
        // One open: the file's identity and its bytes are the same file's.
        let read = std::fs::File::open(path).and_then(|mut file| {
            // A file put there whole: if it is the one this gateway put there, it
            // says what the entry says, and any write to it in place since then
            // has an event of its own, read when it comes.
            if change == Change::Placed && self.is_placed(&at, &FileId::of(&file.metadata()?)) {
                return Ok(None);
            }
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok(Some(bytes))
        });
        match read {
            Ok(None) => {}
            Ok(Some(bytes)) if self.is_written(&at, &digest(&bytes)) => {}
            Ok(Some(bytes)) => {
                self.parsed.fetch_add(1, Ordering::Relaxed);
                // A half-edited file is skipped; the write that completes it comes next.
                if let Some(record) = std::str::from_utf8(&bytes).ok().and_then(parse) {
                    self.insert(&at, record);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.remove(&at),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot read a manifest"),
        }
    }
}

fn read_record(path: &Path) -> Option<Record> {
    parse(&std::fs::read_to_string(path).ok()?)
}

/// The request a path under `root` holds: `<root>/<namespace>/<name>.yaml`, not a
/// hidden file (temporary files and the lock file are hidden).
pub fn manifest_ref(root: &Path, path: &Path) -> Option<RequestRef> {
    let relative = path.strip_prefix(root).ok()?;
    let mut parts = relative.components();
    let (namespace, file) = (parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let name = file.as_os_str().to_str()?.strip_suffix(".yaml")?;
    let namespace = namespace.as_os_str().to_str()?;
    if name.is_empty() || name.starts_with('.') || namespace.starts_with('.') {
        return None;
    }
    Some(RequestRef { namespace: namespace.to_string(), name: name.to_string() })
}

/// Watches `root` and keeps `index` in line with every change to its manifests.
/// The returned watch stops when dropped.
pub fn watch(root: PathBuf, index: Arc<Index>, horizon: Duration) -> notify::Result<crate::tree_watch::TreeWatch> {
    let (watched, changed, reread) = (root.clone(), index.clone(), root.clone());
    crate::tree_watch::follow(
        &root,
        move |path, change| changed.refresh(&watched, path, change),
        // The kernel's queue overflowed: events were lost, so read everything again.
        // A manifest removed meanwhile stays indexed until its horizon passes.
        move || {
            if let Err(e) = index.load(&reread, horizon, 1) {
                tracing::warn!(error = %e, "reading the sink directory again failed");
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(name: &str) -> RequestRef {
        RequestRef { namespace: "ns".into(), name: name.into() }
    }

    fn record(fp: u8, first_seen_s: u32) -> Record {
        Record {
            fingerprint: Fingerprint::from_bytes([fp; 32]),
            first_seen_s,
            last_seen_s: first_seen_s,
            count: 1,
            phase: Phase::Active,
            prior_failures: 0,
            storm: None,
            flapping: false,
        }
    }

    #[test]
    fn the_newest_request_of_a_fingerprint_is_the_open_one() {
        let index = Index::new(Duration::from_secs(600));
        index.insert(&at("b"), record(1, 200));
        index.insert(&at("a"), record(1, 100));
        let open = index.open_request(&Fingerprint::from_bytes([1; 32])).unwrap();
        assert_eq!((open.at, open.first_seen_s), (at("b"), 200));
        index.update(&at("b"), Record { phase: Phase::Ended, ..record(1, 200) });
        assert_eq!(index.lookup(&at("b")), Lookup::Terminal);
        assert_eq!(index.open_request(&Fingerprint::from_bytes([1; 32])), None, "a finished request is not open");
        index.remove(&at("b"));
        assert_eq!(index.lookup(&at("b")), Lookup::Deleted);
        assert_eq!(index.lookup(&at("c")), Lookup::Missing, "never seen: maybe not yet seen");
    }

    #[test]
    fn requests_past_the_horizon_are_forgotten_as_the_index_grows() {
        let index = Index::new(Duration::from_secs(600));
        let n = REQUESTS_SWEEP as u32;
        // An old incident, then a churning population long after it.
        index.insert(&at("old"), record(0, 1_000));
        for i in 1..(4 * n) {
            let mut bytes = [0; 32];
            bytes[..4].copy_from_slice(&i.to_le_bytes());
            let fp = Fingerprint::from_bytes(bytes);
            index.insert(&at(&format!("r{i}")), Record { fingerprint: fp, ..record(0, 100_000 + i) });
        }
        assert_eq!(index.lookup(&at("old")), Lookup::Missing, "last seen long before the horizon");
        assert_eq!(index.open_request(&Fingerprint::from_bytes([0; 32])), None);
        assert!(index.len() < 4 * REQUESTS_SWEEP, "{} requests indexed", index.len());
        let recent = 4 * n - 1;
        assert_eq!(index.lookup(&at(&format!("r{recent}"))), Lookup::Open, "within the horizon");
    }

    #[test]
    fn long_and_short_names_are_told_apart_and_given_back_whole() {
        let index = Index::new(Duration::from_secs(600));
        let long = RequestRef { namespace: "team-a".into(), name: "n".repeat(253) };
        let split = |namespace: &str, name: &str| RequestRef { namespace: namespace.into(), name: name.into() };
        // The same bytes split differently are different requests.
        index.insert(&split("ab", "c"), record(1, 100));
        index.insert(&long, record(2, 100));
        assert_eq!(index.lookup(&split("a", "bc")), Lookup::Missing);
        assert_eq!(index.lookup(&split("ab", "c")), Lookup::Open);
        assert_eq!(index.lookup(&long), Lookup::Open, "a name too long to keep inline");
        let open = |fp| index.open_request(&Fingerprint::from_bytes([fp; 32])).map(|o| o.at);
        assert_eq!(open(1), Some(split("ab", "c")));
        assert_eq!(open(2), Some(long.clone()));
        index.remove(&long);
        assert_eq!(index.lookup(&long), Lookup::Deleted);
    }

    #[test]
    fn only_manifests_two_levels_down_are_requests() {
        let root = Path::new("/r");
        assert_eq!(manifest_ref(root, Path::new("/r/ns/a.yaml")), Some(at("a")));
        for other in ["/r/ns/.a.yaml.1.tmp", "/r/ns/.tidegate.lock", "/r/a.yaml", "/r/ns/x/a.yaml", "/r/ns/a.yml"] {
            assert_eq!(manifest_ref(root, Path::new(other)), None, "{other}");
        }
    }
}
