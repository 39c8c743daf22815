//! The dependency rule of `src/` (docs/architecture.md): every top-level module has a layer,
//! and imports only modules of lower layers, so no import circle can form; sibling files in a
//! folder import each other without a circle too. Read from the `use crate::…` and `super::…`
//! paths of the sources (inline test modules excluded).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, top first. A module may import only modules of later entries.
const LAYERS: &[&[&str]] = &[
    &["server"],
    &["proxy", "jobs", "reload", "backup", "bootstrap"],
    &["api"],
    &["error", "state"],
    &["accounts", "routes"],
    &["email"],
    &["auth", "store"],
    &["logging", "admin_client"],
    &["config", "clock", "metrics", "pool"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments and its inline test module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => &text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b…` path mentioned, as its segments (grouped `use crate::{a, b}` included).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while let Some(at) = code[i..].find("crate::") {
        let start = i + at;
        i = start + "crate::".len();
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let rest = &code[i..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                out.push(segments(part.trim()));
            }
        } else {
            out.push(segments(rest));
        }
    }
    out
}

/// The identifiers of a path written at the start of `text` (`a::b::c` of `a::b::c(x)`).
fn segments(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            break;
        }
        rest = &rest[ident.len()..];
        out.push(ident);
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    out
}

/// Top-level module of a file under src/ (`None` for lib.rs and main.rs).
fn top_module(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .to_string();
    match first.as_str() {
        "lib.rs" | "main.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

#[test]
fn modules_import_only_lower_layers() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let declared: Vec<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    for m in &declared {
        assert!(
            layer_of(m).is_some(),
            "module {m} has no layer: place it in LAYERS and docs/architecture.md"
        );
    }
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut violations = BTreeSet::new();
    let mut edges = 0;
    for file in &files {
        let Some(from) = top_module(file) else {
            continue;
        };
        let from_layer = layer_of(&from).unwrap();
        for path in crate_paths(&code(file)) {
            let Some(to) = path.first() else { continue };
            if *to == from || !declared.contains(to) {
                continue;
            }
            edges += 1;
            let to_layer = layer_of(to).unwrap();
            if to_layer <= from_layer {
                violations.insert(format!(
                    "{} imports crate::{} ({from} is not above {to})",
                    file.strip_prefix(src()).unwrap().display(),
                    path.join("::")
                ));
            }
        }
    }
    assert!(edges > 50, "the scan found only {edges} imports");
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn sibling_files_import_each_other_without_a_circle() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    // folder -> file stem -> sibling stems it imports
    let mut graph: BTreeMap<PathBuf, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let dir = file.parent().unwrap().to_path_buf();
        let stem = file.file_stem().unwrap().to_string_lossy().to_string();
        if dir == src() || stem == "mod" {
            continue;
        }
        let siblings: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let p = e.ok()?.path();
                let s = p.file_stem()?.to_string_lossy().to_string();
                (s != "mod" && s != stem).then_some(s)
            })
            .collect();
        let module_path: Vec<String> = dir
            .strip_prefix(src())
            .unwrap()
            .components()
            .map(|c| c.as_os_str().to_string_lossy().to_string())
            .collect();
        let text = code(file);
        let mut uses = BTreeSet::new();
        for path in crate_paths(&text) {
            if path.len() > module_path.len() && path[..module_path.len()] == module_path[..] {
                uses.insert(path[module_path.len()].clone());
            }
        }
        for part in text.split("super::").skip(1) {
            let group = part
                .strip_prefix('{')
                .map(|g| &g[..g.find('}').unwrap_or(g.len())]);
            for name in group.map_or(vec![part], |g| g.split(',').collect()) {
                if let Some(first) = segments(name.trim()).first() {
                    uses.insert(first.clone());
                }
            }
        }
        uses.retain(|u| siblings.contains(u));
        graph.entry(dir).or_default().insert(stem, uses);
    }
    for (dir, edges) in &graph {
        // Kahn: repeatedly remove files that import no remaining sibling.
        let mut left: BTreeMap<&String, BTreeSet<&String>> = edges
            .iter()
            .map(|(f, u)| (f, u.iter().filter(|s| edges.contains_key(*s)).collect()))
            .collect();
        loop {
            let done: Vec<&String> = left
                .iter()
                .filter(|(_, u)| u.is_empty())
                .map(|(f, _)| *f)
                .collect();
            if done.is_empty() {
                break;
            }
            for f in &done {
                left.remove(f);
            }
            for u in left.values_mut() {
                u.retain(|s| !done.contains(s));
            }
        }
        assert!(
            left.is_empty(),
            "import circle among the files of {}: {left:?}",
            dir.display()
        );
    }
}
