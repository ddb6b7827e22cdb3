//! The layering of `proxy/src` (see ARCHITECTURE.md), read from the code's own paths: a
//! layer never imports one above it, and no two files import each other, directly or in a
//! longer circle.
//!
//! Every `crate::…` and `super::…` path outside comments and `#[cfg(test)]` modules is an
//! import of the file that defines its longest existing module prefix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `from` must never import `to` (folders or files under `proxy/src`, prefixes).
const FORBIDDEN: &[(&str, &str, &str)] = &[
    // The floor is its own crate (courier-runtime), which the compiler already guards.
    (
        "upstream/",
        "http/",
        "the upstream layer serves every protocol",
    ),
    (
        "upstream/",
        "xds/",
        "clusters are built by the main thread's managers",
    ),
    ("upstream/", "server/", "no service locator"),
    ("upstream/", "listener/", "clusters know no listener"),
    ("upstream/", "filters/", "clusters know no filter"),
    (
        "http/codec/",
        "http/conn_manager/",
        "a codec is given a service",
    ),
    ("http/codec/", "http/router/", "a codec is given a service"),
    ("http/codec/", "http/route/", "a codec knows no route"),
    ("http/codec/", "filters/", "a codec knows no filter"),
    (
        "http/route/",
        "filters/",
        "per-filter route config is opaque",
    ),
    (
        "http/route/",
        "http/router/",
        "routes are data the router reads",
    ),
    (
        "http/route/",
        "http/conn_manager/",
        "routes are data the manager reads",
    ),
    (
        "filters/http/",
        "http/router/",
        "filters act through the connection manager",
    ),
    ("stats/", "http/", "stats are a leaf"),
    (
        "protocol/",
        "http/",
        "protocol options are config, below the codecs",
    ),
    (
        "protocol/",
        "upstream/",
        "protocol options are config, below the clusters",
    ),
    (
        "extensions.rs",
        "filters/",
        "the registry knows no extension; each point keeps its table",
    ),
    (
        "extensions.rs",
        "http/",
        "the registry knows no extension; each point keeps its table",
    ),
    ("config.rs", "http/", "config helpers are a leaf"),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's module path (`http/codec/body.rs` → `["http", "codec", "body"]`).
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The file defining the longest prefix of `path` that is a module with a file.
fn file_of(path: &[String], files: &BTreeSet<String>) -> Option<String> {
    (1..=path.len()).rev().find_map(|n| {
        let base = path[..n].join("/");
        [format!("{base}.rs"), format!("{base}/mod.rs")]
            .into_iter()
            .find(|f| files.contains(f))
    })
}

/// The code of a file without comments and its `#[cfg(test)]` modules.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<i32> = None;
    let mut depth = 0i32;
    let mut pending_cfg_test = false;
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let trimmed = code.trim();
        if trimmed.starts_with("#[cfg(test)]") {
            pending_cfg_test = true;
            continue;
        }
        let opens = code.matches('{').count() as i32;
        let closes = code.matches('}').count() as i32;
        if pending_cfg_test && skip_depth.is_none() {
            pending_cfg_test = false;
            if trimmed.starts_with("mod ") {
                skip_depth = Some(depth);
            }
        }
        depth += opens - closes;
        match skip_depth {
            Some(d) if depth <= d => skip_depth = None,
            Some(_) => {}
            None => {
                out.push_str(code);
                out.push('\n');
            }
        }
    }
    out
}

/// Every file's imports of other files.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = src();
    let mut paths = Vec::new();
    rust_files(&root, &mut paths);
    let files: BTreeSet<String> = paths
        .iter()
        .map(|p| {
            p.strip_prefix(&root)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    let path_re = regex::Regex::new(
        r"\b(crate|(?:super::)+)((?:::)?[a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)",
    )
    .expect("regex");
    let mut graph = BTreeMap::new();
    for rel in &files {
        let text = std::fs::read_to_string(root.join(rel)).expect("read file");
        let module = module_of(rel);
        let mut deps = BTreeSet::new();
        for cap in path_re.captures_iter(&code_of(&text)) {
            let head = &cap[1];
            let tail: Vec<String> = cap[2]
                .trim_start_matches("::")
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            let mut target: Vec<String> = if head == "crate" {
                Vec::new()
            } else {
                let ups = head.matches("super").count();
                // A `mod.rs` is its folder's module: `super` is the folder's parent.
                module[..module.len().saturating_sub(ups)].to_vec()
            };
            target.extend(tail);
            if let Some(file) = file_of(&target, &files) {
                if &file != rel && !["lib.rs", "main.rs"].contains(&file.as_str()) {
                    deps.insert(file);
                }
            }
        }
        graph.insert(rel.clone(), deps);
    }
    graph
}

#[test]
fn no_layer_imports_upward() {
    let mut wrong = Vec::new();
    for (from, deps) in graph() {
        for to in deps {
            for (a, b, why) in FORBIDDEN {
                if from.starts_with(a) && to.starts_with(b) {
                    wrong.push(format!("{from} -> {to} ({why})"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "upward imports:\n{}", wrong.join("\n"));
}

/// Tarjan's strongly connected components of more than one file.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_import_circles() {
    let graph = graph();
    let found = circles(&graph);
    let report: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    graph[a]
                        .iter()
                        .filter(|b| c.contains(b))
                        .map(move |b| format!("  {a} -> {b}"))
                })
                .collect();
            format!("{} files:\n{}", c.len(), edges.join("\n"))
        })
        .collect();
    assert!(found.is_empty(), "import circles:\n{}", report.join("\n"));
}

#[test]
fn the_checker_sees_a_planted_circle_and_an_upward_import() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("a.rs".into(), ["b.rs".to_string()].into());
    g.insert("b.rs".into(), ["c.rs".to_string()].into());
    g.insert("c.rs".into(), ["a.rs".to_string()].into());
    g.insert("d.rs".into(), ["a.rs".to_string()].into());
    assert_eq!(circles(&g), vec![vec!["a.rs", "b.rs", "c.rs"]]);
    // The real graph: codec's body is read, and reads no router.
    let real = graph();
    assert!(real["http/router/mod.rs"].contains("http/codec/body.rs"));
    assert!(!real["http/codec/body.rs"]
        .iter()
        .any(|d| d.starts_with("http/router/")));
    // Comments and test modules are not imports.
    let code = code_of("use crate::a; // crate::b\n#[cfg(test)]\nmod tests {\n use crate::c;\n}\n");
    assert!(code.contains("crate::a") && !code.contains("crate::b") && !code.contains("crate::c"));
}
