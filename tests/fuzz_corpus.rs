//! The fuzz corpus, replayed: every committed input of every fuzz target
//! (`fuzz/corpus/<target>/`) and every crash fuzzing found and we fixed
//! (`fuzz/artifacts/<target>/`) goes through the check its target runs. CI never
//! fuzzes; this is how it keeps what fuzzing found. `scripts/fuzz` adds inputs.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::Path;

/// Runs `check` over every file under `fuzz/<dir>/<target>/`; how many it ran.
fn replay(dir: &str, target: &str, check: checks::Check) -> usize {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir).join(target);
    let Ok(entries) = std::fs::read_dir(&folder) else { return 0 };
    let mut ran = 0;
    for entry in entries {
        let path = entry.expect("a readable corpus folder").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target} fails on {}", path.display());
        ran += 1;
    }
    ran
}

#[test]
fn every_target_passes_its_whole_committed_corpus() {
    for &(target, check) in checks::TARGETS {
        let ran = replay("corpus", target, check);
        assert!(ran > 0, "fuzz/corpus/{target} is empty: seed it, or run scripts/fuzz {target} 60");
    }
}

#[test]
fn every_fixed_crash_stays_fixed() {
    for &(target, check) in checks::TARGETS {
        replay("artifacts", target, check);
    }
}

#[test]
fn every_target_has_a_fuzz_target_file_and_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for &(target, _) in checks::TARGETS {
        assert!(root.join("fuzz_targets").join(format!("{target}.rs")).is_file(), "{target}");
        assert!(root.join("corpus").join(target).is_dir(), "{target}");
    }
}
