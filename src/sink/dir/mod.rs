//! The embedded sink: one YAML manifest per RemediationRequest, at
//! `<root>/<namespace>/<name>.yaml`.
//!
//! Manifests carry the CRD's apiVersion, kind, spec and status, so
//! `kubectl apply -f` accepts them. Every write goes to a temporary file that is
//! moved into place, so a reader never sees half a manifest (creations are synced
//! first; status rewrites are not, see [`Durability`]), and
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
pub mod status;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Created, LastRequest, Lookup, OpenRequest, RequestRef, Sink, SinkError};
use crate::remediation::{RemediationRequest, StatusUpdate};
use crate::signal::Fingerprint;
use crate::state::BoxFuture;
use index::{Index, Record, Written};
pub use status::Reads;
use status::StatusWrites;

/// The per-namespace lock file serialising status rewrites.
const LOCK_FILE: &str = ".tidegate.lock";

pub struct DirSink {
    root: PathBuf,
    index: Arc<Index>,
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
        let status = Arc::new(StatusWrites::new(root.clone(), index.clone()));
        Ok(DirSink { root, index, status, _watcher: watcher })
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
}

fn create_blocking(path: &Path, yaml: &str) -> Result<Created, SinkError> {
    let dir = path.parent().expect("has a namespace dir");
    fs::create_dir_all(dir)?;
    let tmp = write_temp(path, yaml, Durability::Synced)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        // The file's data is synced; its name is only durable once the directory is.
        Ok(()) => {
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

/// Writes `contents` to a uniquely named temporary file beside `path`.
fn write_temp(path: &Path, contents: &str, durability: Durability) -> io::Result<PathBuf> {
    let dir = path.parent().expect("has a parent");
    let name = path.file_name().expect("has a name").to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut file = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let written = file.write_all(contents.as_bytes()).and_then(|()| match durability {
        Durability::Synced => file.sync_data(),
        Durability::Rename => Ok(()),
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

impl Sink for DirSink {
    fn create<'a>(&'a self, request: &'a RemediationRequest) -> BoxFuture<'a, Result<Created, SinkError>> {
        let at = reference(request);
        let path = self.path_of(&at);
        let yaml = to_yaml(request);
        // Indexed before it is written: if the write fails, the status writer retries
        // it until it lands, so the incident is open from now on either way.
        if let Some(record) = Record::of(request) {
            let written = Written { request: request.clone(), digest: index::digest(yaml.as_bytes()) };
            self.index.insert_written(&at, record, written);
        }
        Box::pin(async move {
            let created = blocking(move || create_blocking(&path, &yaml)).await?;
            if created == Created::AlreadyExists {
                // Someone else's manifest: the index takes what the file says.
                self.index.refresh(&self.root, &self.path_of(&at));
            }
            Ok(created)
        })
    }

    fn open_requests(&self) -> BoxFuture<'_, Result<Vec<RemediationRequest>, SinkError>> {
        let paths: Vec<PathBuf> = self.index.open_refs().iter().map(|at| self.path_of(at)).collect();
        Box::pin(blocking(move || {
            // A manifest removed or being rewritten meanwhile is simply not open any more.
            let read =
                |path: &PathBuf| serde_norway::from_str::<RemediationRequest>(&fs::read_to_string(path).ok()?).ok();
            Ok(paths.iter().filter_map(read).collect())
        }))
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
