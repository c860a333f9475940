//! The crate's top-level modules (each file or folder directly under `src/`) import
//! each other without a circle, and only the leaf module `section` (the error that
//! names a key, and durations) may be imported from below.
//!
//! Read from the source text: an edge from `a` to `b` wherever a file of `a` names
//! `crate::b`, in a `use` line, a `use crate::{b, c}` group or a fully qualified
//! path in code. Comments are left out (a doc link is not an import); string
//! literals are too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The one module every layer may import: it must import nothing from the crate.
const LEAF: &str = "section";

type Graph = BTreeMap<String, BTreeSet<String>>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every top-level module and the `.rs` files that make it up.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        if path.is_dir() {
            out.entry(name).or_default().extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            out.entry(name).or_default().push(path);
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// `text` without comments and without the contents of string and char literals,
/// so that only code is left.
fn code(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        match (chars[i], chars.get(i + 1).copied()) {
            ('/', Some('/')) => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ('/', Some('*')) => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            ('r', Some('#' | '"')) if i == 0 || !is_ident(chars[i - 1]) => {
                // A raw string: r"…" or r#"…"#, with as many #s to close as opened.
                let mut j = i + 1;
                let mut hashes = 0;
                while chars.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if chars.get(j) != Some(&'"') {
                    out.push(chars[i]);
                    i += 1;
                    continue;
                }
                j += 1;
                while j < chars.len() {
                    if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            }
            ('"', _) => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // A char literal ('x', '\n', '\''), not a lifetime ('a).
            ('\'', Some(c)) if chars.get(i + 2) == Some(&'\'') && c != '\\' => i += 3,
            ('\'', Some('\\')) => {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The first path segment of every `crate::` path in `code`: `crate::a::b` names
/// `a`, `crate::{a::x, b}` names `a` and `b`.
fn named(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate".len()..];
        if before.is_some_and(is_ident) {
            continue;
        }
        let Some(path) = rest.trim_start().strip_prefix("::") else { continue };
        let path = path.trim_start();
        if let Some(group) = path.strip_prefix('{') {
            // Top-level items of the group: split at commas outside nested braces.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.extend(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.extend(first_segment(&item));
        } else {
            out.extend(first_segment(path));
        }
    }
    out
}

fn first_segment(path: &str) -> Option<String> {
    let name: String = path.trim_start().chars().take_while(|c| is_ident(*c)).collect();
    (!name.is_empty() && name != "self").then_some(name)
}

fn graph() -> Graph {
    let modules = modules(&src());
    let mut graph = Graph::new();
    for (module, files) in &modules {
        let edges = graph.entry(module.clone()).or_default();
        for file in files {
            let text = std::fs::read_to_string(file).unwrap();
            for other in named(&code(&text)) {
                if other != *module && modules.contains_key(&other) {
                    edges.insert(other);
                }
            }
        }
    }
    graph
}

/// A circle through `graph`, if there is one.
fn circle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(graph: &Graph, node: &str, marks: &mut BTreeMap<String, Mark>, path: &mut Vec<String>) -> bool {
        match marks.get(node) {
            Some(Mark::Done) => return false,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| n == node).expect("open nodes are on the path");
                path.drain(..start);
                path.push(node.to_string());
                return true;
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if visit(graph, next, marks, path) {
                return true;
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        false
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        let mut path = Vec::new();
        if visit(graph, node, &mut marks, &mut path) {
            return Some(path);
        }
    }
    None
}

#[test]
fn the_top_level_modules_import_each_other_without_a_circle() {
    let graph = graph();
    assert!(graph.len() > 10, "found only {:?} under src/", graph.keys());
    if let Some(circle) = circle(&graph) {
        panic!("modules import each other in a circle: {}", circle.join(" -> "));
    }
}

#[test]
fn the_leaf_module_imports_nothing_from_the_crate() {
    let graph = graph();
    let imports = graph.get(LEAF).unwrap_or_else(|| panic!("no src/{LEAF}.rs"));
    assert!(imports.is_empty(), "{LEAF} must import nothing from the crate, but names {imports:?}");
}

#[test]
fn paths_are_found_in_groups_and_in_code_but_not_in_comments_or_strings() {
    let text = r#"
        use crate::a::X;
        use crate::{b, c::{D, E}, self};
        use crate :: { f::G };
        fn x() { crate::h::go(); let _ = "crate::i"; } // crate::j
        /* crate::k */ /// [`crate::l`]
        let c = 'c'; let s = r"crate::m"; struct NotCrate; notcrate::n();
    "#;
    let found: Vec<String> = named(&code(text)).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "f", "h"]);
}

#[test]
fn a_circle_is_found_and_named() {
    let edge = |a: &str, b: &[&str]| (a.to_string(), b.iter().map(|s| s.to_string()).collect());
    let graph: Graph = [edge("a", &["b"]), edge("b", &["c"]), edge("c", &["a"]), edge("d", &["a"])].into();
    let found = circle(&graph).expect("a -> b -> c -> a");
    assert_eq!(found, ["a", "b", "c", "a"]);
    let graph: Graph = [edge("a", &["b"]), edge("b", &["c"]), edge("c", &[])].into();
    assert_eq!(circle(&graph), None);
}
