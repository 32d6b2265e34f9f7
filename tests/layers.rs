//! The layer list of ARCHITECTURE.md holds for every `crate::` path in `src/`: a module imports only
//! from the layers below its own, and only the leaves (the last layer) import each other.

use std::collections::HashMap;
use std::path::Path;

/// Module name → layer number, read from the numbered list under `## Layers`.
fn layers() -> HashMap<String, usize> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
        .expect("reading ARCHITECTURE.md");
    let section =
        text.split("## Layers").nth(1).expect("a Layers section").split("\n## ").next().unwrap_or("");
    let mut out = HashMap::new();
    for line in section.lines() {
        let Some((number, rest)) = line.split_once(". ") else { continue };
        let Ok(layer) = number.trim().parse::<usize>() else { continue };
        let names = rest.split(':').next().unwrap_or("");
        for name in names.split('`').skip(1).step_by(2) {
            out.insert(name.to_string(), layer);
        }
    }
    assert!(out.len() > 20, "the Layers section lists the modules: {out:?}");
    out
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_crate_path_points_down_the_layers() {
    let layers = layers();
    let leaves = layers.values().copied().max().unwrap_or(0);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src").to_string_lossy().into_owned();
        let module = rel.split('/').next().unwrap_or("").trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let own = *layers.get(&module).unwrap_or_else(|| panic!("{rel}: module {module} is in no layer"));
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for part in line.split("crate::").skip(1) {
                let used: String =
                    part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if used == module || used.is_empty() {
                    continue;
                }
                let theirs =
                    *layers.get(&used).unwrap_or_else(|| panic!("{rel}:{}: {used} is in no layer", n + 1));
                if theirs < own || (theirs == own && own != leaves) {
                    violations.push(format!(
                        "{rel}:{}: {module} (layer {own}) uses {used} (layer {theirs})",
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(violations.is_empty(), "imports that do not point down the layers:\n{}", violations.join("\n"));
}
