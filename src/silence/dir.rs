//! Silences as YAML files, for the directory sink: `<root>/<namespace>/<name>.yaml`,
//! each a whole `RemediationSilence` (apiVersion, kind, metadata, spec, status), so
//! `kubectl apply -f` takes the same files.
//!
//! [`watch`] reads them all at start and follows every change with `notify`, as the
//! sink's index follows the manifests, so a silence written, expired or removed by
//! hand or by `tidegate silence` takes effect within moments, without a restart.
//! Every write (the CLI's, the gateway's status) is a read-modify-write under the
//! namespace directory's advisory lock, moved into place by rename: a reader never
//! sees half a file, and the CLI expiring a silence never loses to a status write.
//! A file that cannot be read is skipped with a warning, never half applied.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::resource::RemediationSilence;
use super::store::{expired_end, Ignored, SilenceStore, StatusChange, StoreError};
use super::{SilenceRef, Silences};
use crate::state::BoxFuture;

/// The per-namespace lock file serialising rewrites, as the sink's manifests use.
const LOCK_FILE: &str = ".tidegate.lock";

pub struct DirSilences {
    root: PathBuf,
}

impl DirSilences {
    /// Silences under `root`, which is created if missing.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(DirSilences { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path_of(&self, at: &SilenceRef) -> PathBuf {
        self.root.join(&at.namespace).join(format!("{}.yaml", at.name))
    }

    /// Rewrites the silence at `at` with `change`, under the namespace's lock.
    fn rewrite(&self, at: &SilenceRef, change: impl FnOnce(&mut RemediationSilence)) -> Result<(), StoreError> {
        let path = self.path_of(at);
        let dir = path.parent().expect("has a namespace dir");
        let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK_FILE));
        let lock = match lock {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound(at.clone())),
            other => other?,
        };
        lock.lock()?;
        let mut silence = match read(&path)? {
            Some(silence) => silence,
            None => return Err(StoreError::NotFound(at.clone())),
        };
        change(&mut silence);
        replace(&path, &to_yaml(&silence))?;
        Ok(())
    }
}

/// Reads one silence file; `None` if it is gone.
pub fn read(path: &Path) -> Result<Option<RemediationSilence>, StoreError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut silence: RemediationSilence = serde_norway::from_str(&text)
        .map_err(|source| StoreError::Corrupt { path: path.display().to_string(), source })?;
    // The file's place names it, whatever its metadata says: the directory is the
    // namespace, as RBAC-like tenancy by directory permissions expects.
    let namespace = path.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned());
    let name = path.file_stem().map(|n| n.to_string_lossy().into_owned());
    silence.metadata.namespace = namespace;
    silence.metadata.name = name;
    Ok(Some(silence))
}

fn to_yaml(silence: &RemediationSilence) -> String {
    serde_norway::to_string(silence).expect("a RemediationSilence always serialises")
}

/// Writes `contents` beside `path` and renames it into place.
fn replace(path: &Path, contents: &str) -> io::Result<()> {
    let tmp = temp_beside(path);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().expect("has a name").to_string_lossy();
    path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()))
}

/// Whether `path` is a silence file under `root`: `<root>/<namespace>/<name>.yaml`,
/// not a temporary or lock file.
fn is_silence_file(root: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(root) else { return false };
    let parts: Vec<_> = rel.components().collect();
    parts.len() == 2
        && path.extension().is_some_and(|e| e == "yaml")
        && path.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.'))
}

/// Every silence file under `root`.
fn files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for ns in fs::read_dir(root)? {
        let ns = ns?;
        if !ns.file_type()?.is_dir() {
            continue;
        }
        for file in fs::read_dir(ns.path())? {
            let path = file?.path();
            if is_silence_file(root, &path) {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// Reads every silence under `root` into `silences` and follows every change;
/// the watch stops when the returned value is dropped.
pub fn watch(root: PathBuf, silences: Arc<Silences>) -> notify::Result<crate::tree_watch::TreeWatch> {
    let (watched, target) = (root.clone(), silences.clone());
    let (reread_root, reread) = (root.clone(), silences.clone());
    // Watch first, then read: a change made while reading is not missed.
    let watch = crate::tree_watch::follow(
        &root,
        move |path, _| {
            if is_silence_file(&watched, path) {
                refresh(&target, path);
            }
        },
        move || {
            if let Err(e) = read_all(&reread_root, &reread) {
                tracing::warn!(error = %e, "reading the silence directory again failed");
            }
        },
    )?;
    let loaded = read_all(&root, &silences).map_err(notify::Error::io)?;
    tracing::info!(silences = loaded, dir = %root.display(), "read the silence directory");
    Ok(watch)
}

/// Replaces `silences` with every readable silence under `root`; how many there are.
fn read_all(root: &Path, silences: &Silences) -> io::Result<usize> {
    let mut loaded = Vec::new();
    for path in files(root)? {
        match read(&path) {
            Ok(Some(silence)) => loaded.push(silence),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable silence file"),
        }
    }
    silences.replace_all(&loaded);
    Ok(loaded.len())
}

/// Brings `silences` in line with the file at `path`.
fn refresh(silences: &Silences, path: &Path) {
    match read(path) {
        Ok(Some(silence)) => silences.upsert(&silence),
        Ok(None) => {
            let at = SilenceRef {
                namespace: path
                    .parent()
                    .and_then(Path::file_name)
                    .map_or_else(String::new, |n| n.to_string_lossy().into()),
                name: path.file_stem().map_or_else(String::new, |n| n.to_string_lossy().into()),
            };
            silences.remove(&at);
        }
        // Half-written by an editor, or broken: the last good version stays.
        Err(e) => tracing::warn!(error = %e, "ignoring an unreadable silence file"),
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("silence worker failed: {e}")).into()))
}

impl SilenceStore for Arc<DirSilences> {
    fn list<'a>(&'a self, namespace: Option<&'a str>) -> BoxFuture<'a, Result<Vec<RemediationSilence>, StoreError>> {
        let (root, namespace) = (self.root.clone(), namespace.map(str::to_string));
        Box::pin(blocking(move || {
            let mut out = Vec::new();
            for path in files(&root)? {
                if let Some(silence) = read(&path)? {
                    if namespace.is_none() || silence.metadata.namespace == namespace {
                        out.push(silence);
                    }
                }
            }
            out.sort_by(|a, b| {
                (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
            });
            Ok(out)
        }))
    }

    fn create<'a>(&'a self, silence: &'a RemediationSilence) -> BoxFuture<'a, Result<(), StoreError>> {
        let at = super::reference(silence);
        let this = self.clone();
        let yaml = to_yaml(silence);
        Box::pin(blocking(move || {
            let at = at.ok_or_else(|| io::Error::other("a silence needs a name"))?;
            let path = this.path_of(&at);
            fs::create_dir_all(path.parent().expect("has a namespace dir"))?;
            let tmp = temp_beside(&path);
            fs::write(&tmp, yaml)?;
            // link(2) fails if the name exists: a create never overwrites.
            let linked = fs::hard_link(&tmp, &path);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(StoreError::Exists(at)),
                Err(e) => Err(e.into()),
            }
        }))
    }

    fn expire<'a>(&'a self, at: &'a SilenceRef, now: Timestamp) -> BoxFuture<'a, Result<(), StoreError>> {
        let (this, at) = (self.clone(), at.clone());
        Box::pin(blocking(move || {
            this.rewrite(&at, |s| {
                let end = expired_end(s, now);
                s.spec.ends_at = Time(end);
            })
        }))
    }

    // A file has no events: its status (`state: ignored`, `reason`) and the log say it.
    fn warn_ignored<'a>(&'a self, _: &'a Ignored) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn write_status<'a>(
        &'a self,
        at: &'a SilenceRef,
        change: &'a StatusChange,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (this, at, change) = (self.clone(), at.clone(), change.clone());
        Box::pin(blocking(move || this.rewrite(&at, |s| change.apply(s.status.get_or_insert_with(Default::default)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::silence::resource::RemediationSilenceSpec;
    use crate::silence::tests::{rules, signal, spec};

    fn object(namespace: &str, name: &str, spec: RemediationSilenceSpec) -> RemediationSilence {
        let mut s = RemediationSilence::new(name, spec);
        s.metadata.namespace = Some(namespace.into());
        s
    }

    #[tokio::test]
    async fn created_expired_and_counted_silences_round_trip_through_files() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(DirSilences::new(tmp.path()).unwrap());
        let s = object("shop", "drain", spec(&["alertname=X"], "2026-12-05T00:00:00Z", "2026-12-06T00:00:00Z"));
        store.create(&s).await.unwrap();
        assert!(matches!(store.create(&s).await, Err(StoreError::Exists(_))), "a create never overwrites");
        let at = SilenceRef { namespace: "shop".into(), name: "drain".into() };
        let change = StatusChange {
            writer: 1,
            matched: 3,
            last_matched_at: Some("2026-12-05T10:00:00Z".parse().unwrap()),
            state: None,
        };
        store.write_status(&at, &change).await.unwrap();
        store.write_status(&at, &StatusChange { writer: 2, matched: 2, ..Default::default() }).await.unwrap();
        store.write_status(&at, &change).await.unwrap();
        store.expire(&at, "2026-12-05T12:00:00Z".parse().unwrap()).await.unwrap();
        let listed = store.list(Some("shop")).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].spec.ends_at.0, "2026-12-05T12:00:00Z".parse::<Timestamp>().unwrap());
        let status = listed[0].status.clone().unwrap();
        assert_eq!(status.matched_signals, 5);
        assert!(store.list(Some("bank")).await.unwrap().is_empty());
        let missing = SilenceRef { namespace: "shop".into(), name: "none".into() };
        assert!(matches!(store.expire(&missing, Timestamp::UNIX_EPOCH).await, Err(StoreError::NotFound(_))));
    }

    #[tokio::test]
    async fn the_watch_sees_silences_written_and_removed_after_it_started() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(DirSilences::new(tmp.path()).unwrap());
        let first = object("shop", "first", spec(&["alertname=X"], "2026-12-05T00:00:00Z", "2026-12-06T00:00:00Z"));
        store.create(&first).await.unwrap();
        let silences = Silences::new(rules());
        let _watcher = watch(tmp.path().to_path_buf(), silences.clone()).unwrap();
        let noon: Timestamp = "2026-12-05T12:00:00Z".parse().unwrap();
        assert_eq!(silences.current().len(), 1, "read at start");
        let second = object("shop", "second", spec(&["alertname=Y"], "2026-12-05T00:00:00Z", "2026-12-06T00:00:00Z"));
        store.create(&second).await.unwrap();
        wait_until(|| silences.current().find(&signal("Y", "shop", &[]), noon).is_some()).await;
        fs::remove_file(store.path_of(&SilenceRef { namespace: "shop".into(), name: "first".into() })).unwrap();
        wait_until(|| silences.current().find(&signal("X", "shop", &[]), noon).is_none()).await;
        assert_eq!(silences.current().len(), 1);
    }

    async fn wait_until(mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("not within 5 s");
    }
}
