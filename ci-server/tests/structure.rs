//! The shape of the crate: its top-level modules import each other without
//! cycles (`docs/architecture.md`), so each can be read, and taken behind its
//! cargo feature, on its own.
//!
//! Reads the sources: every `crate::MODULE` outside a comment is an import
//! of `MODULE` by the module whose file (or folder) it is in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read the source folder") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The top-level modules of `src` and the other top-level modules each uses.
fn module_imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("read src") {
        let path = entry.expect("an entry").path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if stem == "lib" || stem == "main" {
            continue;
        }
        let files = if path.is_dir() {
            rust_files(&path)
        } else {
            vec![path.clone()]
        };
        let uses = imports.entry(stem.to_owned()).or_default();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read a source file");
            for line in text.lines() {
                let code = line.split("//").next().unwrap_or_default();
                for (at, _) in code.match_indices("crate::") {
                    let name: String = code[at + "crate::".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != stem {
                        uses.insert(name);
                    }
                }
            }
        }
    }
    // Only modules count (not items of the crate root such as constants).
    let modules: BTreeSet<String> = imports.keys().cloned().collect();
    for uses in imports.values_mut() {
        uses.retain(|m| modules.contains(m));
    }
    imports
}

/// A cycle through `start`, if there is one: the path back to it.
fn cycle_from(start: &str, imports: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let mut stack = vec![vec![start.to_owned()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().expect("a path is never empty");
        for next in imports.get(last).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(next.clone());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn the_top_level_modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let imports = module_imports(&src);
    assert!(
        imports.contains_key("server") && imports["server"].contains("api"),
        "the reading of the sources found nothing: {imports:?}"
    );
    for module in imports.keys() {
        if let Some(cycle) = cycle_from(module, &imports) {
            panic!("an import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    imports.insert("cli".into(), BTreeSet::from(["server".into()]));
    imports.insert("server".into(), BTreeSet::from(["api".into()]));
    imports.insert("api".into(), BTreeSet::new());
    assert_eq!(cycle_from("cli", &imports), None);
    imports.insert("api".into(), BTreeSet::from(["cli".into()]));
    assert_eq!(
        cycle_from("cli", &imports),
        Some(vec![
            "cli".into(),
            "server".into(),
            "api".into(),
            "cli".into()
        ])
    );
}
