//! Files that are read again when they change: bearer tokens, HMAC secrets, the
//! listener's certificate and key.
//!
//! A [`Watched`] value is loaded from its files once, then, at most once per
//! [`CHECK_EVERY`], the files are `stat`ed and the value is reloaded if any of them
//! changed (modification time, size or inode: Kubernetes replaces a mounted Secret by
//! swapping a symlink, which changes the inode). The check happens on use, so an
//! idle gateway does no work and a busy one pays one `stat` per file per second,
//! not per request. A reload that fails keeps the last good value and is logged
//! (the path only, never the content): a half-written file must not lock senders out.
//!
//! It never logs or formats what the files hold.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// How often, at most, the files are checked for changes.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Why a file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl LoadError {
    pub fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        LoadError::Invalid { path: path.to_path_buf(), reason: reason.into() }
    }
}

/// Reads a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })
}

type Loader<T> = Box<dyn Fn() -> Result<T, LoadError> + Send + Sync>;

/// A value loaded from files, reloaded when they change.
pub struct Watched<T> {
    paths: Vec<PathBuf>,
    load: Loader<T>,
    current: RwLock<Arc<T>>,
    check: Mutex<Check>,
}

struct Check {
    at: Instant,
    stamps: Vec<Option<Stamp>>,
}

/// What tells one version of a file from the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // `metadata` follows symlinks: a swapped `..data` link shows as a new inode.
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: meta.modified().ok(), len: meta.len(), inode: meta.ino() })
}

impl<T: Send + Sync + 'static> Watched<T> {
    /// Loads the value from `paths` with `load`; fails if the first load does.
    pub fn new(
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, LoadError> + Send + Sync + 'static,
    ) -> Result<Self, LoadError> {
        let stamps = paths.iter().map(|p| stamp(p)).collect();
        let value = load()?;
        Ok(Watched {
            paths,
            load: Box::new(load),
            current: RwLock::new(Arc::new(value)),
            check: Mutex::new(Check { at: Instant::now(), stamps }),
        })
    }

    /// The current value, reloaded first if the files changed since the last check
    /// (checked at most once per [`CHECK_EVERY`]).
    pub fn get(&self) -> Arc<T> {
        self.refresh();
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn refresh(&self) {
        // One caller checks; the others use the current value rather than wait.
        let Ok(mut check) = self.check.try_lock() else { return };
        if check.at.elapsed() < CHECK_EVERY {
            return;
        }
        check.at = Instant::now();
        let stamps: Vec<_> = self.paths.iter().map(|p| stamp(p)).collect();
        if stamps == check.stamps {
            return;
        }
        match (self.load)() {
            Ok(value) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
                check.stamps = stamps;
                tracing::info!(files = ?self.paths, "reloaded changed files");
            }
            // Retried at the next check: the stamps are left as they were.
            Err(e) => tracing::warn!(error = %e, "a changed file could not be loaded; keeping the previous one"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(path: &Path) -> Result<String, LoadError> {
        let bytes = read(path)?;
        String::from_utf8(bytes).map_err(|_| LoadError::invalid(path, "not UTF-8"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_file_is_read_again_after_the_check_interval_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        std::fs::write(&path, "one").unwrap();
        let p = path.clone();
        let watched = Watched::new(vec![path.clone()], move || text(&p)).unwrap();
        assert_eq!(*watched.get(), "one");

        std::fs::write(&path, "two!").unwrap();
        assert_eq!(*watched.get(), "one", "not checked again within the interval");
        tokio::time::advance(CHECK_EVERY).await;
        assert_eq!(*watched.get(), "two!");

        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        tokio::time::advance(CHECK_EVERY).await;
        assert_eq!(*watched.get(), "two!", "a file that does not load keeps the last good value");
    }

    #[test]
    fn a_file_that_cannot_be_read_at_start_is_an_error_naming_it() {
        let missing = PathBuf::from("/nonexistent/tidegate/token");
        let p = missing.clone();
        let err = Watched::new(vec![missing], move || text(&p)).err().unwrap();
        assert!(err.to_string().starts_with("cannot read /nonexistent/tidegate/token"), "{err}");
    }
}
