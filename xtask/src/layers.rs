//! `cargo xtask test` checks portwatch's layering: the imports of `portwatch/src` point
//! down the data flow (kernel records → decode → socket table → model and detectors →
//! outputs → commands), file by file with no cycle. A knot tied today is cheap to undo
//! today; this check says so on the day it is tied.
//!
//! It reads the sources as text: `use` trees (braces expanded) and `crate::`/`super::`
//! paths outside them, up to the file's `#[cfg(test)]` (tests may reach anywhere).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use anyhow::{Context as _, Result, bail};

/// Top-level modules of `portwatch/src`, lowest first. A module may import from its own
/// layer's other files and from layers below it, never from above.
const LAYERS: &[&[&str]] = &[
    &["process", "clock", "tcp_state", "bpf"],
    &["event", "privileges"],
    &["sockets", "filter"],
    &["detect"],
    &["live"],
    // `top`: the view of `portwatch top` (rows, order, drawing), words like `output`'s.
    &["output", "record", "top"],
    &["cli"],
    &["commands"],
    // Feeds untrusted bytes through whole commands' parsing, as the fuzz targets do.
    &["fuzz"],
];

/// Module path (`sockets::table`) → the modules it imports.
type Graph = BTreeMap<String, BTreeSet<String>>;

pub fn check(workspace: &Path) -> Result<()> {
    let graph = graph(&workspace.join("portwatch/src"))?;
    let mut problems = Vec::new();
    for cycle in cycles(&graph) {
        problems.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    for (from, targets) in &graph {
        for to in targets {
            let (Some(from_layer), Some(to_layer)) = (layer(from), layer(to)) else {
                let unknown = if layer(from).is_none() { from } else { to };
                problems.push(format!(
                    "module `{unknown}` has no layer: add it to LAYERS in xtask/src/layers.rs"
                ));
                continue;
            };
            if to_layer > from_layer {
                problems.push(format!("`{from}` imports `{to}`, a layer above it"));
            }
        }
    }
    problems.sort();
    problems.dedup();
    if !problems.is_empty() {
        bail!(
            "portwatch's layers are knotted (see docs/architecture.md):\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

fn layer(module: &str) -> Option<usize> {
    let top = module.split("::").next()?;
    if top == "crate" {
        return Some(LAYERS.len());
    }
    LAYERS.iter().position(|layer| layer.contains(&top))
}

fn graph(src: &Path) -> Result<Graph> {
    let mut sources = BTreeMap::new();
    collect(src, src, &mut sources)?;
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    Ok(sources
        .iter()
        .map(|(module, text)| (module.clone(), imports(module, text, &modules)))
        .collect())
}

/// Reads every non-test `.rs` file under `dir` as (module path, text before its tests).
fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // A `tests.rs` is declared under its parent's #[cfg(test)].
        if !name.ends_with(".rs") || name == "tests.rs" {
            continue;
        }
        let relative = path.strip_prefix(root)?.with_extension("");
        let mut module = relative.to_string_lossy().replace('/', "::");
        if let Some(parent) = module.strip_suffix("::mod") {
            module = parent.to_owned();
        }
        if module == "lib" || module == "main" {
            module = "crate".to_owned();
        }
        let text = fs::read_to_string(&path)?;
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let code: String = code
            .lines()
            .map(|line| line.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        out.insert(module, code);
    }
    Ok(())
}

/// The modules `module`'s code refers to.
fn imports(module: &str, code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let parent = match module.rsplit_once("::") {
        Some((parent, _)) => parent.to_owned(),
        None => "crate".to_owned(),
    };
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(start) = rest.find("use ") {
        let after = &rest[start + 4..];
        let Some(end) = after.find(';') else { break };
        let preceded_by_ident = rest[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if !preceded_by_ident {
            paths.extend(expand(&after[..end]));
        }
        rest = &after[end..];
    }
    // Paths written inline, e.g. `crate::commands::startup::workload(pid)`.
    for anchor in ["crate::", "super::"] {
        let mut text = code;
        while let Some(at) = text.find(anchor) {
            let path: String = text[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            // `super::{a, b}` is a use tree, read above.
            if path.len() > anchor.len() {
                paths.push(path.trim_end_matches(':').to_owned());
            }
            text = &text[at + anchor.len()..];
        }
    }
    let mut found = BTreeSet::new();
    for path in paths {
        let mut segments: Vec<&str> = path.split("::").map(str::trim).collect();
        let base = match segments.first() {
            Some(&"crate") => String::new(),
            Some(&"super") => {
                if parent == "crate" {
                    String::new()
                } else {
                    parent.clone()
                }
            }
            Some(&"self") => module.to_owned(),
            _ => continue,
        };
        segments.remove(0);
        let mut full: Vec<String> = base
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        full.extend(
            segments
                .iter()
                .map(|s| s.split(" as ").next().unwrap_or("").to_owned()),
        );
        // The longest prefix that names a module of ours.
        for len in (1..=full.len()).rev() {
            let candidate = full[..len].join("::");
            if modules.contains(&candidate) {
                if candidate != module {
                    found.insert(candidate);
                }
                break;
            }
        }
    }
    found
}

/// `a::{b::{C, D}, e}` → `a::b::C`, `a::b::D`, `a::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.to_owned()];
    };
    let prefix = tree[..open].trim().trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|part| !part.trim().is_empty())
        .flat_map(expand)
        .map(|sub| {
            if prefix.is_empty() {
                sub
            } else {
                format!("{prefix}::{sub}")
            }
        })
        .collect()
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a str) {
        let n = state.index.len();
        state.index.insert(node, n);
        state.low.insert(node, n);
        state.stack.push(node);
        for next in state.graph.get(node).into_iter().flatten() {
            let next = next.as_str();
            if !state.index.contains_key(next) {
                visit(state, next);
                let low = state.low[node].min(state.low[next]);
                state.low.insert(node, low);
            } else if state.stack.contains(&next) {
                let low = state.low[node].min(state.index[next]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(top) = state.stack.pop() {
                component.push(top.to_owned());
                if top == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                state.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn use_trees_and_inline_paths_are_read() {
        let all = modules(&[
            "sockets",
            "sockets::table",
            "sockets::owners",
            "sockets::tuple",
            "event",
            "detect",
        ]);
        let code = "use super::{owners::{OwnerId, Owners}, tuple::Tuple};\n\
                    use crate::{event::{Event, Comm}, process::Process};\n\
                    fn f() { crate::detect::x(); }";
        assert_eq!(
            imports("sockets::table", code, &all),
            modules(&["sockets::owners", "sockets::tuple", "event", "detect"])
        );
    }

    #[test]
    fn a_cycle_and_an_upward_import_are_found() {
        let mut graph = Graph::new();
        graph.insert("sockets::a".into(), modules(&["sockets::b"]));
        graph.insert("sockets::b".into(), modules(&["sockets::a", "output"]));
        graph.insert("output".into(), BTreeSet::new());
        assert_eq!(cycles(&graph), [["sockets::a", "sockets::b"]]);
        assert!(layer("output") > layer("sockets::b"));
    }

    #[test]
    fn portwatch_is_layered() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        check(workspace).unwrap();
    }
}
