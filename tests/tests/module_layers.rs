//! Inside every crate the modules form layers: no module reaches itself through `crate::` paths
//! in code (a cycle would tie, say, the decoder to the precision tooling built on it, or the
//! scheduler to the driver over it). Doc comments may point anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `module -> modules it names as crate::module` outside comments, for the top-level modules of
/// a crate's `src/`.
fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut g = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = match (path.is_dir(), path.file_stem()) {
            (_, Some(n)) if n != "lib" => n.to_string_lossy().into_owned(),
            _ => continue,
        };
        let files: Vec<_> = if path.is_dir() {
            std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()).collect()
        } else {
            vec![path.clone()]
        };
        let mut deps = BTreeSet::new();
        for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "rs")) {
            let text = std::fs::read_to_string(f).unwrap();
            let text: String =
                text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + 7..];
                let end = rest.find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()));
                let m = &rest[..end.unwrap_or(rest.len())];
                if !m.is_empty() && m != name {
                    deps.insert(m.to_string());
                }
            }
        }
        g.insert(name, deps);
    }
    g
}

fn check(krate: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("crates").join(krate).join("src");
    let g = edges(&src);
    for start in g.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((m, path)) = stack.pop() {
            for d in g.get(&m).into_iter().flatten() {
                assert!(d != start, "{krate}: module cycle {} -> {d}", path.join(" -> "));
                if seen.insert(d.clone()) {
                    let mut p = path.clone();
                    p.push(d.clone());
                    stack.push((d.clone(), p));
                }
            }
        }
    }
    g
}

#[test]
fn modules_have_no_cycles() {
    let models = check("models");
    assert!(models["precision"].contains("layers"), "the scan sees the modules: {models:?}");
    let batcher = check("batcher");
    assert!(batcher["generate"].contains("scheduler"), "the scan sees the modules: {batcher:?}");
    for krate in ["core", "kernels-ref", "kernels-cuda", "server"] {
        check(krate);
    }
}
