//! The embedded sink: one YAML manifest per RemediationRequest, at
//! `<root>/<namespace>/<name>.yaml`.
//!
//! Manifests carry the CRD's apiVersion, kind, spec and status, so
//! `kubectl apply -f` accepts them. Every write goes to a temporary file that is
//! moved into place, so a reader never sees half a manifest (creations are synced
//! first; status rewrites are not, see [`Durability`]). Temporary files are written
//! in a hidden directory of the root ([`Staging`]), which the watch does not follow:
//! in the namespace directory each would cost the watch four events for nothing. And
//! status rewrites hold a per-namespace lock so concurrent writers cannot regress a
//! count ([`status`]: batched, and started from what this gateway wrote while the
//! file still holds it). Creation
//! uses `link(2)`, which fails if the name exists: two writers racing on one incident
//! cannot both create it, and neither clobbers the other.
//!
//! The manifests are the record of open incidents, as the cluster is for the kube
//! sink: [`index`] reads them at start and follows every change, so a restart (or
//! a state store that lost its entries) never opens a second request for an open
//! incident, and a request finished or removed by hand ends its incident at once.

pub mod doctor;
pub mod index;
pub mod render;
pub mod status;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{Created, LastRequest, Lookup, OpenRequest, RequestRef, Sink, SinkError};
use crate::remediation::{RemediationRequest, StatusUpdate};
use crate::signal::Fingerprint;
use crate::state::BoxFuture;
use index::{FileId, Index, Record, Written};
pub use status::Reads;
use status::StatusWrites;

/// The per-namespace lock file serialising status rewrites.
const LOCK_FILE: &str = ".tidegate.lock";
/// The directory of the root where writes are staged before they are moved into
/// place. Hidden: neither a namespace to the index nor followed by the watch.
const STAGING_DIR: &str = ".tidegate-staging";
/// A staged file this old is what a process that died mid-write left behind: a
/// write moves its file into place within moments, even on a loaded machine.
const STAGED_LEFTOVER: Duration = Duration::from_secs(600);

pub struct DirSink {
    root: PathBuf,
    index: Arc<Index>,
    staging: Arc<Staging>,
    status: Arc<StatusWrites>,
    /// Keeps the index in line with changes made by others; stops when dropped.
    _watcher: Option<crate::tree_watch::TreeWatch>,
}

impl DirSink {
    /// A sink writing under `root`, which is created if missing, with every
    /// manifest written within `horizon` indexed: the longest an incident or a
    /// storm window can stay open without a write to its request.
    pub fn new(root: impl Into<PathBuf>, horizon: Duration) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        let staging = Arc::new(Staging::new(&root)?);
        let index = Arc::new(Index::new(horizon));
        // Watch first, then read: a change made while reading is not missed.
        let watcher = index::watch(root.clone(), index.clone(), horizon)
            .inspect_err(|e| {
                tracing::warn!(error = %e, "cannot watch the sink directory: manifests removed or finished by hand are noticed only after a restart");
            })
            .ok();
        let started = Instant::now();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let loaded = index.load(&root, horizon, threads)?;
        tracing::info!(
            indexed = loaded.indexed,
            stale = loaded.stale,
            unreadable = loaded.unreadable,
            took = ?started.elapsed(),
            "indexed the sink directory's open incidents"
        );
        let status = Arc::new(StatusWrites::new(root.clone(), index.clone(), staging.clone()));
        Ok(DirSink { root, index, staging, status, _watcher: watcher })
    }

    /// Manifests indexed as the record of open incidents.
    pub fn indexed(&self) -> usize {
        self.index.len()
    }

    /// How this sink's status writes started: from the parsed manifest, or from
    /// what it had written.
    pub fn status_reads(&self) -> Reads {
        self.status.reads()
    }

    /// Manifests the watch parsed: changes that were not this sink's own writes.
    pub fn watch_parsed(&self) -> u64 {
        self.index.parsed()
    }

    /// Requests whose last write this sink keeps, to start their next status write
    /// from. Never more than the requests indexed.
    pub fn written(&self) -> usize {
        self.index.written()
    }

    /// The measured CPU time of a status write.
    pub fn status_write_cost(&self) -> Duration {
        self.status.cost()
    }

    /// Where the manifest of `at` lives.
    pub fn path_of(&self, at: &RequestRef) -> PathBuf {
        self.root.join(&at.namespace).join(format!("{}.yaml", at.name))
    }

    /// The manifests of the requests indexed as open whose record `wanted` keeps,
    /// read whole.
    fn read_open(&self, wanted: impl Fn(&Record) -> bool) -> BoxFuture<'_, Result<Vec<RemediationRequest>, SinkError>> {
        let paths: Vec<PathBuf> = self.index.open_refs(wanted).iter().map(|at| self.path_of(at)).collect();
        Box::pin(blocking(move || {
            // A manifest removed or being rewritten meanwhile is simply not open any more.
            let read =
                |path: &PathBuf| serde_norway::from_str::<RemediationRequest>(&fs::read_to_string(path).ok()?).ok();
            Ok(paths.iter().filter_map(read).collect())
        }))
    }
}

fn create_blocking(staging: &Staging, path: &Path, yaml: &[u8]) -> Result<Created, SinkError> {
    let dir = path.parent().expect("has a namespace dir");
    fs::create_dir_all(dir)?;
    let linked = staging.place(path, yaml, Durability::Synced, Move::Link, &|_| {});
    match linked {
        // The file's data is synced; its name is only durable once the directory is.
        Ok(_) => {
            fs::File::open(dir)?.sync_all()?;
            Ok(Created::Created)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Created::AlreadyExists),
        Err(e) => Err(e.into()),
    }
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("sink worker failed: {e}")).into()))
}

fn reference(request: &RemediationRequest) -> RequestRef {
    RequestRef {
        namespace: request.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: request.metadata.name.clone().unwrap_or_default(),
    }
}

fn to_yaml(request: &RemediationRequest) -> String {
    serde_norway::to_string(request).expect("a RemediationRequest always serialises")
}

/// How hard a write tries to survive a crash.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Synced to disk before it is linked into place: a created request is never
    /// acknowledged and then lost.
    Synced,
    /// Atomic for readers, not synced: a status rewrite lost in a crash costs the
    /// last interval's counts, which the next write restores, and not syncing
    /// keeps a storm of status writes off the disk's critical path.
    Rename,
}

/// Where writes are staged: `<root>/.tidegate-staging`, on the root's filesystem
/// so that a staged file moves into place by `rename(2)` or `link(2)`.
struct Staging {
    dir: PathBuf,
    /// Names this process's staged files apart from another's sharing the root.
    process: String,
    next: AtomicU64,
}

impl Staging {
    /// Creates the staging directory if missing, and removes what a process that
    /// died mid-write left in it.
    fn new(root: &Path) -> io::Result<Staging> {
        let dir = root.join(STAGING_DIR);
        fs::create_dir_all(&dir)?;
        let leftover = SystemTime::now().checked_sub(STAGED_LEFTOVER).unwrap_or(SystemTime::UNIX_EPOCH);
        for entry in fs::read_dir(&dir)?.flatten() {
            // Another replica's file being written is younger: left alone.
            if entry.metadata().and_then(|m| m.modified()).is_ok_and(|at| at < leftover) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Staging { dir, process: uuid::Uuid::new_v4().simple().to_string(), next: AtomicU64::new(0) })
    }

    /// Writes `contents` to a new staged file and moves it to `path` as `how` says.
    /// A namespace directory on another filesystem than the root (a mount) gets its
    /// file staged beside it instead.
    /// `landing` is told the staged file before it moves.
    fn place(
        &self,
        path: &Path,
        contents: &[u8],
        durability: Durability,
        how: Move,
        landing: &dyn Fn(FileId),
    ) -> io::Result<FileId> {
        let name = format!("{}-{}.tmp", self.process, self.next.fetch_add(1, Ordering::Relaxed));
        match how.moved(&self.dir.join(&name), path, contents, durability, landing) {
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let beside = path.parent().expect("has a parent").join(format!(".{name}"));
                how.moved(&beside, path, contents, durability, landing)
            }
            result => result,
        }
    }
}

/// How a staged file is moved into place.
#[derive(Clone, Copy)]
enum Move {
    /// `rename(2)`: replaces the file there.
    Rename,
    /// `link(2)`: fails if a file is there.
    Link,
}

impl Move {
    /// Writes `contents` to the new file `staged` and moves it to `path`; `staged`
    /// is gone afterwards either way.
    fn moved(
        self,
        staged: &Path,
        path: &Path,
        contents: &[u8],
        durability: Durability,
        landing: &dyn Fn(FileId),
    ) -> io::Result<FileId> {
        let file = write_new(staged, contents, durability)?;
        landing(file);
        let moved = match self {
            Move::Rename => fs::rename(staged, path),
            Move::Link => fs::hard_link(staged, path),
        };
        // A rename that succeeded took the name with it.
        if moved.is_err() || matches!(self, Move::Link) {
            let _ = fs::remove_file(staged);
        }
        moved.map(|()| file)
    }
}

/// Writes `contents` to the new file `path`, and says which file it is.
fn write_new(path: &Path, contents: &[u8], durability: Durability) -> io::Result<FileId> {
    let mut file = fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    let written = file
        .write_all(contents)
        .and_then(|()| match durability {
            Durability::Synced => file.sync_data(),
            Durability::Rename => Ok(()),
        })
        .and_then(|()| file.metadata());
    match written {
        Ok(meta) => Ok(FileId::of(&meta)),
        Err(e) => {
            let _ = fs::remove_file(path);
            Err(e)
        }
    }
}

impl Sink for DirSink {
    fn create<'a>(&'a self, request: &'a RemediationRequest) -> BoxFuture<'a, Result<Created, SinkError>> {
        let at = reference(request);
        let path = self.path_of(&at);
        let mut kept = request.clone();
        let head = render::Head::of(&mut kept);
        let mut yaml = Vec::new();
        render::manifest(&head, &kept, &mut yaml);
        // Indexed before it is written: if the write fails, the status writer retries
        // it until it lands, so the incident is open from now on either way.
        if let Some(record) = Record::of(request) {
            let written = Written { request: kept, head, digest: index::digest(&yaml), file: None };
            self.index.insert_written(&at, record, written);
        }
        let staging = self.staging.clone();
        Box::pin(async move {
            let created = blocking(move || create_blocking(&staging, &path, &yaml)).await?;
            if created == Created::AlreadyExists {
                // Someone else's manifest: the index takes what the file says.
                self.index.refresh(&self.root, &self.path_of(&at), crate::tree_watch::Change::Other);
            }
            Ok(created)
        })
    }

    fn open_requests(&self) -> BoxFuture<'_, Result<Vec<RemediationRequest>, SinkError>> {
        self.read_open(|_| true)
    }

    /// Reads only the manifests the index knows flap: parsing a manifest is most of
    /// what reading one costs, and few of the open requests flap.
    fn flapping_requests(&self) -> BoxFuture<'_, Result<Vec<RemediationRequest>, SinkError>> {
        self.read_open(|record| record.flapping)
    }

    fn update_status<'a>(
        &'a self,
        at: &'a RequestRef,
        update: &'a StatusUpdate,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.status.write(at, update))
    }

    fn affordable_status_writes(&self) -> Option<f64> {
        Some(self.status.affordable_per_s())
    }

    fn lookup(&self, at: &RequestRef) -> Lookup {
        self.index.lookup(at)
    }

    fn open_request(&self, fingerprint: &Fingerprint) -> Option<OpenRequest> {
        self.index.open_request(fingerprint)
    }

    fn last_request(&self, fingerprint: &Fingerprint) -> Option<LastRequest> {
        self.index.last_request(fingerprint)
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let meta = fs::metadata(&self.root)?;
            if meta.permissions().readonly() {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, "sink directory is read-only").into());
            }
            Ok(())
        })
    }
}
