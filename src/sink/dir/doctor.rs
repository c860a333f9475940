//! `tidegate doctor`'s check of the directory sink: the directory exists and this
//! user may write in it.
//!
//! The one check that writes: a probe file, removed at once, the only way to know
//! the directory is writable. It never creates a missing directory: it reports it.

use std::io;
use std::path::Path;

use crate::check::Check;

/// Writes a probe file into the sink directory and removes it.
pub fn writable(path: &Path) -> Check {
    const NAME: &str = "sink dir";
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Check::warn(
                NAME,
                format!("{shown} does not exist; `serve` creates it, if its parent is writable"),
                format!("create it as the user tidegate runs as: mkdir -p {shown}"),
            )
        }
        Err(e) => return Check::fail(NAME, format!("cannot read {shown}: {e}"), "check the path and its parents"),
        Ok(meta) if !meta.is_dir() => {
            return Check::fail(NAME, format!("{shown} is not a directory"), "point `sink` at a directory: dir:<path>")
        }
        Ok(_) => {}
    }
    let probe = path.join(format!(".tidegate-doctor-{}", std::process::id()));
    let written = std::fs::write(&probe, b"tidegate doctor\n");
    let _ = std::fs::remove_file(&probe);
    match written {
        Ok(()) => Check::ok(NAME, format!("{shown} is writable")),
        Err(e) => Check::fail(
            NAME,
            format!("cannot write in {shown}: {e}"),
            format!("let the user tidegate runs as write there: chown it, or chmod u+w {shown}; on Kubernetes mount a writable volume"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::writable;
    use crate::check::Outcome;

    #[test]
    fn a_writable_sink_dir_passes_and_keeps_no_probe() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(writable(dir.path()).outcome, Outcome::Ok);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the probe file is removed");
    }

    #[test]
    fn a_missing_sink_dir_is_reported_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("remediations");
        let check = writable(&missing);
        assert_eq!(check.outcome, Outcome::Warn, "{check:?}");
        assert!(check.fix.as_deref().unwrap().contains("mkdir -p"), "{check:?}");
        assert!(!missing.exists());
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert_eq!(writable(&file).outcome, Outcome::Fail);
    }
}
