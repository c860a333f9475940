//! Following a two-level directory tree, `<root>/<namespace>/<file>`, as the
//! directory sink keeps its manifests and silences, without missing a file.
//!
//! A recursive `notify` watch is not enough: it adds the watch of a new namespace
//! directory only after it has handed the directory's creation to us, so a file
//! written into the directory between our reading it and the watch arriving sends
//! no event and is never seen (the last CI run lost a silence that way). Here one
//! thread owns the watcher: on a new directory it first watches it, then reads it,
//! so every file is either read or announced, usually both. When the kernel's
//! queue overflowed, `rescan` is called to read everything again.
//!
//! Hidden directories (a name starting with `.`) are not followed: the directory
//! sink stages its writes in one, and their events would only cost the watch.
//!
//! It only reports paths; what a path means is the caller's business.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// What an event says happened at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A whole file was put there: created, linked or renamed into place. Whatever
    /// is done to that file afterwards in place (a write, a truncation, a change of
    /// attributes) is reported again, as [`Change::Other`].
    Placed,
    /// Anything else: written in place, truncated, attributes changed, removed,
    /// moved away, or found in a directory that just appeared.
    Other,
}

impl Change {
    fn of(kind: &EventKind) -> Change {
        match kind {
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => {
                Change::Placed
            }
            _ => Change::Other,
        }
    }
}

/// A running watch; it stops when dropped.
pub struct TreeWatch {
    _watcher: Arc<Mutex<RecommendedWatcher>>,
}

/// Watches `root` and each directory in it. `changed` is called with every path
/// that may have been created, changed or removed (files of new directories
/// included), and what the event says of it; `rescan` when events were lost. The
/// watch is in place when this returns, so a caller that reads the tree afterwards
/// misses nothing.
pub fn follow(
    root: &Path,
    changed: impl Fn(&Path, Change) + Send + 'static,
    rescan: impl Fn() + Send + 'static,
) -> notify::Result<TreeWatch> {
    let (tx, rx) = std::sync::mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(tx)?;
    watcher.watch(root, RecursiveMode::NonRecursive)?;
    for dir in directories(root) {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    }
    let watcher = Arc::new(Mutex::new(watcher));
    let weak = Arc::downgrade(&watcher);
    let root = root.to_path_buf();
    std::thread::Builder::new()
        .name("tree-watch".into())
        // The channel closes when the watcher is dropped, and the loop ends with it.
        .spawn(move || {
            for event in rx {
                match event {
                    Ok(event) if event.need_rescan() => {
                        for dir in directories(&root) {
                            watch(&weak, &dir);
                        }
                        rescan();
                    }
                    Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
                    Ok(event) => {
                        for path in &event.paths {
                            let top = path.parent() == Some(root.as_path());
                            if top && is_hidden(path) {
                                // Not followed (see the module's doc).
                                continue;
                            }
                            if top && path.is_dir() {
                                watch(&weak, path);
                                for file in std::fs::read_dir(path).into_iter().flatten().flatten() {
                                    changed(&file.path(), Change::Other);
                                }
                            } else {
                                changed(path, Change::of(&event.kind));
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, root = %root.display(), "watching a directory failed for some events"),
                }
            }
        })
        .map_err(notify::Error::io)?;
    Ok(TreeWatch { _watcher: watcher })
}

fn watch(watcher: &Weak<Mutex<RecommendedWatcher>>, dir: &Path) {
    let Some(watcher) = watcher.upgrade() else { return };
    let watched = watcher.lock().expect("the watcher lock is never poisoned").watch(dir, RecursiveMode::NonRecursive);
    if let Err(e) = watched {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch a new directory");
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|name| name.as_encoded_bytes().starts_with(b"."))
}

/// The directories directly under `root`, hidden ones excepted.
fn directories(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()) && !is_hidden(&entry.path()))
        .map(|entry| entry.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Waits for `wanted` among the paths reported, failing after ten seconds.
    fn saw(rx: &mpsc::Receiver<PathBuf>, seen: &mut HashSet<PathBuf>, wanted: &Path) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !seen.contains(wanted) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(path) => {
                    seen.insert(path);
                }
                Err(_) => return false,
            }
        }
        true
    }

    #[test]
    fn a_file_written_at_once_into_a_new_directory_is_always_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let _watch = follow(tmp.path(), move |p, _| tx.send(p.to_path_buf()).unwrap(), || {}).unwrap();
        let mut seen = HashSet::new();
        // Many rounds: the race this module exists for is a window of microseconds.
        for i in 0..200 {
            let dir = tmp.path().join(format!("ns-{i}"));
            std::fs::create_dir(&dir).unwrap();
            let file = dir.join("silence.yaml");
            std::fs::write(&file, "x").unwrap();
            assert!(saw(&rx, &mut seen, &file), "round {i}: {} was never reported", file.display());
        }
    }

    #[test]
    fn files_in_directories_that_existed_before_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("shop")).unwrap();
        let (tx, rx) = mpsc::channel();
        let _watch = follow(tmp.path(), move |p, _| tx.send(p.to_path_buf()).unwrap(), || {}).unwrap();
        let file = tmp.path().join("shop").join("a.yaml");
        std::fs::write(&file, "x").unwrap();
        assert!(saw(&rx, &mut HashSet::new(), &file));
    }
}
