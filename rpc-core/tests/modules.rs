//! The crate's modules depend on each other without cycles, except inside one concern:
//! the engine's core state (`driver`, which holds `Shared`) and the two topics its methods
//! are split into, bulk transfers (`transfer`) and answering requests (`handler`).
//!
//! Read from the source: every `crate::` path outside comments and test modules is an
//! edge from the file's module to the module it names (a name the crate root re-exports
//! counts for the module it comes from).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The one concern allowed to import in a circle.
const CORE: [&str; 3] = ["driver", "handler", "transfer"];

/// Module of each file under `src` (a file in a folder belongs to the folder's module).
fn sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut dirs = vec![(src.clone(), None::<String>)];
    while let Some((dir, parent)) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                dirs.push((p, Some(parent.clone().unwrap_or(stem))));
            } else if p.extension().is_some_and(|x| x == "rs") {
                let module = parent.clone().unwrap_or(stem);
                out.push((module, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out
}

/// The code of a file: no comments, nothing from its first test module on.
fn code(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
        .take_while(|l| !l.trim_start().starts_with("#[cfg(all(test"))
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect()
}

/// What the crate root re-exports from its own modules: name -> module.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for l in code(lib) {
        let Some(rest) = l.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        let names = names
            .trim_end_matches(';')
            .trim_matches(|c| c == '{' || c == '}');
        for n in names.split(',') {
            let n = n.trim().rsplit("::").next().unwrap_or("").to_string();
            map.insert(n, module.to_string());
        }
    }
    map
}

/// The modules a file's code names through `crate::`.
fn edges(
    lines: &[&str],
    root: &BTreeMap<String, String>,
    modules: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut name = |first: &str| {
        let first = first.trim();
        let m = root
            .get(first)
            .cloned()
            .unwrap_or_else(|| first.to_string());
        if modules.contains(&m) {
            out.insert(m);
        }
    };
    // One string, so that a `crate::{…}` group spread over lines is read whole.
    let code = lines.join(" ");
    for part in code.split("crate::").skip(1) {
        if let Some(group) = part.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            group
                .split(',')
                .for_each(|p| name(p.split("::").next().unwrap_or("")));
        } else {
            let end = part.find(|c: char| !(c.is_alphanumeric() || c == '_'));
            name(&part[..end.unwrap_or(part.len())]);
        }
    }
    out
}

#[test]
fn modules_import_in_circles_only_inside_the_engine_core() {
    let files = sources();
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let lib = &files.iter().find(|(m, _)| m == "lib").unwrap().1;
    let root = reexports(lib);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in &files {
        let mut e = edges(&code(text), &root, &modules);
        e.remove(m);
        graph.entry(m.clone()).or_default().extend(e);
    }
    assert!(
        graph["driver"].contains("transfer"),
        "the reader sees the code: {graph:?}"
    );
    // Which modules each one reaches.
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for n in graph.get(&m).into_iter().flatten() {
                if seen.insert(n.clone()) {
                    todo.push(n.clone());
                }
            }
        }
        seen
    };
    let mut circles = Vec::new();
    for a in &modules {
        for b in reach(a) {
            if *a < b
                && reach(&b).contains(a)
                && !(CORE.contains(&a.as_str()) && CORE.contains(&b.as_str()))
            {
                circles.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "modules in a circle outside the engine core: {circles:?}"
    );
}
