//! The module graph follows the pipeline: every `crate::` path in `src/` points to a module of
//! the same layer or below, and no set of modules imports itself in a loop. A new top-level
//! module must be given its layer here, which is the point: where it sits is a decision.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules by layer, in pipeline order. A module may use its own layer and those below
/// (within a layer, only without a cycle).
const LAYERS: &[&[&str]] = &[
    // Leaves: import nothing of the project.
    &["config", "event", "retry", "telemetry"],
    &["decode", "enrich"],
    &["query", "rules"],
    &["sinks", "source", "archive"],
    &["reload"],
    &["pipeline"],
    &["demo"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Top-level module -> the modules its files name through `crate::`.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_str().unwrap();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let entry = edges.entry(module.clone()).or_default();
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            for target in crate_paths(code) {
                if target != module {
                    entry.insert(target);
                }
            }
        }
    }
    edges
}

/// The first segment of each `crate::` path on a line, groups (`crate::{a, b::c}`) included.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `mycrate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

#[test]
fn crate_paths_are_read_from_uses_groups_and_inline_paths() {
    assert_eq!(crate_paths("use crate::config::Secret;"), ["config"]);
    assert_eq!(crate_paths("use crate::{event::Batch, retry};"), ["event", "retry"]);
    assert_eq!(crate_paths("let x = crate::query::run(mycrate::x);"), ["query"]);
}

#[test]
fn imports_run_one_way_in_pipeline_order() {
    let edges = edges();
    let mut wrong = Vec::new();
    for (from, targets) in &edges {
        let Some(from_layer) = layer_of(from) else {
            wrong.push(format!("`{from}` has no layer in tests/it/architecture.rs"));
            continue;
        };
        for to in targets {
            match layer_of(to) {
                Some(to_layer) if to_layer <= from_layer => {}
                Some(_) => wrong.push(format!("`{from}` imports `{to}`, a later stage")),
                None => {} // not a module (`crate::SomeReExport`) or one reported above
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    for leaf in LAYERS[0] {
        assert!(
            edges.get(*leaf).is_none_or(|t| t.iter().all(|m| layer_of(m).is_none())),
            "`{leaf}` must import nothing of the project: {:?}",
            edges[*leaf]
        );
    }
}

#[test]
fn no_modules_import_each_other_in_a_loop() {
    let edges = edges();
    // Depth-first search; a node met again while on the stack closes a cycle.
    fn visit<'a>(
        node: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = stack[i..].iter().map(|s| s.to_string()).collect();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        stack.push(node);
        for next in edges.get(node).into_iter().flatten() {
            if edges.contains_key(next)
                && let Some(cycle) = visit(next, edges, stack, done)
            {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            panic!("modules import each other in a loop: {}", cycle.join(" -> "));
        }
    }
}
