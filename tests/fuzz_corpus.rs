//! The fuzz corpus, replayed: every committed input of every fuzz target
//! (`fuzz/corpus/<target>/`) and every crash fuzzing found and we fixed
//! (`fuzz/artifacts/<target>/`) goes through the check its target runs; so does
//! every source's own corpus (`fuzz/corpus/ingest_<source>/`, which the one
//! `ingest` target is seeded from). CI never fuzzes; this is how it keeps what
//! fuzzing found. `scripts/fuzz` adds inputs.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::Path;

/// Runs `check` over every file under `fuzz/<dir>/<target>/`; how many it ran.
fn replay(dir: &str, target: &str, check: &dyn Fn(&[u8])) -> usize {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir).join(target);
    let Ok(entries) = std::fs::read_dir(&folder) else { return 0 };
    let mut ran = 0;
    for entry in entries {
        let path = entry.expect("a readable corpus folder").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // A check holds nothing a panic could leave half-changed.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
        assert!(outcome.is_ok(), "{target} fails on {}", path.display());
        ran += 1;
    }
    ran
}

#[test]
fn every_target_passes_its_whole_committed_corpus() {
    for &(target, check) in checks::TARGETS {
        replay("corpus", target, &check);
    }
    for source in tidegate::ingest::SOURCES {
        let corpus = checks::corpus_of(source);
        let ran = replay("corpus", &corpus, &|data| checks::source(source, data));
        assert!(ran > 0, "fuzz/corpus/{corpus} is empty: seed it with the source's fixtures");
    }
    for &(parser, check) in checks::RULE_PARSERS {
        let ran = replay("corpus", &format!("ingest_{parser}"), &check);
        assert!(ran > 0, "fuzz/corpus/ingest_{parser} is empty: seed it with the parser's test cases");
    }
}

#[test]
fn every_fixed_crash_stays_fixed() {
    for &(target, check) in checks::TARGETS {
        replay("artifacts", target, &check);
    }
    for source in tidegate::ingest::SOURCES {
        replay("artifacts", &checks::corpus_of(source), &|data| checks::source(source, data));
    }
    for &(parser, check) in checks::RULE_PARSERS {
        replay("artifacts", &format!("ingest_{parser}"), &check);
    }
}

#[test]
fn every_target_has_a_fuzz_target_file_and_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for &(target, _) in checks::TARGETS {
        assert!(root.join("fuzz_targets").join(format!("{target}.rs")).is_file(), "{target}");
    }
    for &(target, _) in checks::TARGETS.iter().filter(|(t, _)| *t != "ingest") {
        assert!(root.join("corpus").join(target).is_dir(), "{target}");
    }
}

#[test]
fn the_one_ingest_target_reaches_every_source_by_name() {
    for source in tidegate::ingest::SOURCES {
        let input = format!("{}\n{{}}", source.name);
        let (named, rest) = checks::named(input.as_bytes()).expect("a source's name");
        assert_eq!((named.route, rest), (source.route, &b"{}"[..]));
    }
    assert!(checks::named(b"no-such-source\n{}").is_none());
    assert!(checks::named(b"alertmanager").is_none(), "no newline, no name");
}

#[test]
fn the_one_ingest_target_reaches_the_silence_and_inhibition_parsers_by_name() {
    for &(parser, _) in checks::RULE_PARSERS {
        let input = format!("{parser}\nalertname=\"X\"");
        let ((named, _), rest) = checks::rule_parser(input.as_bytes()).expect("a rule parser's name");
        assert_eq!((*named, rest), (parser, &b"alertname=\"X\""[..]));
    }
    assert!(checks::rule_parser(b"alertmanager\n{}").is_none(), "a source is not a rule parser");
}
