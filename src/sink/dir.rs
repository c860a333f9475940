//! The embedded sink: one YAML manifest per RemediationRequest, at
//! `<root>/<namespace>/<name>.yaml`.
//!
//! Manifests carry the CRD's apiVersion, kind, spec and status, so
//! `kubectl apply -f` accepts them. Every write goes to a temporary file that is
//! moved into place, so a reader never sees half a manifest (creations are synced
//! first; status rewrites are not, see [`Durability`]), and
//! status rewrites hold a per-namespace lock so concurrent writers cannot regress a
//! count. Creation
//! uses `link(2)`, which fails if the name exists: two writers racing on one incident
//! cannot both create it, and neither clobbers the other.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{Created, RequestRef, Sink, SinkError};
use crate::remediation::{RemediationRequest, StatusUpdate};
use crate::state::BoxFuture;

/// The per-namespace lock file serialising status rewrites.
const LOCK_FILE: &str = ".tidegate.lock";

pub struct DirSink {
    root: PathBuf,
}

impl DirSink {
    /// A sink writing under `root`, which is created if missing.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(DirSink { root })
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

fn update_blocking(path: &Path, at: &RequestRef, update: &StatusUpdate) -> Result<(), SinkError> {
    // Read-modify-write must not interleave with another writer (a second gateway
    // sharing the directory), or an older count could land last. One advisory lock
    // per namespace directory: status writes are coalesced, so contention is low.
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.parent().expect("has a namespace dir").join(LOCK_FILE))?;
    lock.lock()?;
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SinkError::NotFound(at.clone())),
        Err(e) => return Err(e.into()),
    };
    let mut request: RemediationRequest = serde_norway::from_str(&text)
        .map_err(|e| SinkError::Corrupt { path: path.display().to_string(), reason: e.to_string() })?;
    request.status.get_or_insert_with(Default::default).apply(update);
    let tmp = write_temp(path, &to_yaml(&request), Durability::Rename)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    Ok(())
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
        let path = self.path_of(&reference(request));
        let yaml = to_yaml(request);
        Box::pin(blocking(move || create_blocking(&path, &yaml)))
    }

    fn update_status<'a>(
        &'a self,
        at: &'a RequestRef,
        update: &'a StatusUpdate,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        let path = self.path_of(at);
        let (at, update) = (at.clone(), update.clone());
        Box::pin(blocking(move || update_blocking(&path, &at, &update)))
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
