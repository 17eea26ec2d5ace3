//! Generates a typed Rust binding for every kernel in `cu/*.cu` (`$OUT_DIR/kernels.rs`, included
//! by `src/kernels.rs`): one struct per `extern "C" __global__` declaration, its fields the
//! kernel's parameters in order (device addresses as `u64`, `u32`, `int` as `i32`, `float` as
//! `f32`, `size_t` as `u64`). A kernel instantiated per element type (`NAME##N`) gets a `ty`
//! field, one instantiated per page kind as well (`NAME##N##_##PN`) a `page` field. A call site
//! that names a kernel or an argument the source does not have, or gives a value of the wrong
//! type, does not compile.

use std::fmt::Write as _;
use std::path::Path;

/// One parameter: its name and Rust type.
struct Param {
    name: String,
    ty: &'static str,
}

/// One declaration: the name (with `##N` / `##PN` placeholders), the file, the C signature.
struct Kernel {
    stem: String,
    per_type: bool,
    per_page: bool,
    file: String,
    signature: String,
    params: Vec<Param>,
}

const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for", "if", "impl", "in",
    "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "self", "static", "struct", "super", "trait",
    "true", "type", "unsafe", "use", "where", "while", "async", "await", "dyn", "box", "try", "yield",
];

fn rust_type(c_type: &str, file: &str, kernel: &str) -> &'static str {
    if c_type.contains('*') {
        return "u64";
    }
    match c_type.trim_start_matches("const ").trim() {
        "u32" | "unsigned" | "unsigned int" => "u32",
        "int" => "i32",
        "float" => "f32",
        "size_t" | "u64" => "u64",
        other => panic!("{file}: kernel {kernel}: no Rust type for the C parameter type {other:?}"),
    }
}

/// Splits a parameter list at the commas outside `<...>` and `(...)`.
fn split_params(list: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0i32);
    for c in list.chars() {
        match c {
            '<' | '(' => depth += 1,
            '>' | ')' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out.into_iter().map(|p| p.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
}

fn parse(file: &str, src: &str) -> Vec<Kernel> {
    let src = src.replace("\\\n", "\n");
    let key = "extern \"C\" __global__ void ";
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = src[at..].find(key) {
        let start = at + i + key.len();
        let open = start + src[start..].find('(').expect("a parameter list");
        let name = src[start..open].trim().to_string();
        let mut depth = 1;
        let mut end = open + 1;
        for (j, c) in src[open + 1..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = open + 1 + j;
                break;
            }
        }
        let list = &src[open + 1..end];
        let params = split_params(list)
            .into_iter()
            .map(|p| {
                let split = p.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).expect("a type and a name");
                let (c_type, pname) = (p[..=split].trim(), p[split + 1..].trim());
                let pname = if KEYWORDS.contains(&pname) { format!("r#{pname}") } else { pname.to_string() };
                Param { name: pname, ty: rust_type(c_type, file, &name) }
            })
            .collect();
        let per_page = name.contains("##PN");
        let per_type = name.contains("##N");
        let stem = name.split("##").next().expect("a name").trim_end_matches('_').to_string();
        let signature = format!("{name}({})", split_params(list).join(", "));
        out.push(Kernel { stem, per_type, per_page, file: file.to_string(), signature, params });
        at = end;
    }
    out
}

fn camel(stem: &str) -> String {
    stem.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map_or(String::new(), |f| f.to_ascii_uppercase().to_string() + c.as_str())
        })
        .collect()
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cu");
    println!("cargo::rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("cu/")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    let mut kernels = Vec::new();
    for f in &files {
        println!("cargo::rerun-if-changed={}", f.display());
        let name = f.file_name().expect("a file name").to_string_lossy().into_owned();
        kernels.extend(parse(&name, &std::fs::read_to_string(f).expect("a kernel source")));
    }
    let mut code = String::from("// Generated by build.rs from cu/*.cu: do not edit.\n\n");
    let mut names = Vec::new();
    for k in &kernels {
        let ty = camel(&k.stem);
        let _ = writeln!(code, "/// `cu/{}`: `{}`.", k.file, k.signature);
        let _ = writeln!(code, "#[derive(Debug, Clone, Copy)]\n#[allow(dead_code)] // bound and compiled before an op launches it\npub(crate) struct {ty} {{");
        if k.per_type {
            let _ = writeln!(code, "    /// The element type of this instantiation.\n    pub ty: Ty,");
        }
        if k.per_page {
            let _ = writeln!(code, "    /// The KV page storage of this instantiation.\n    pub page: PageKind,");
        }
        for p in &k.params {
            let _ = writeln!(code, "    /// `{}`.\n    pub {}: {},", p.name.trim_start_matches("r#"), p.name, p.ty);
        }
        let _ =
            writeln!(code, "}}\n\nimpl Kernel for {ty} {{\n    fn name(&self) -> std::borrow::Cow<'static, str> {{");
        match (k.per_type, k.per_page) {
            (false, _) => {
                let _ = writeln!(code, "        std::borrow::Cow::Borrowed({:?})", k.stem);
            }
            (true, false) => {
                let _ =
                    writeln!(code, "        std::borrow::Cow::Owned(format!(\"{}_{{}}\", self.ty.suffix()))", k.stem);
            }
            (true, true) => {
                let _ = writeln!(
                    code,
                    "        std::borrow::Cow::Owned(format!(\"{}_{{}}_{{}}\", self.ty.suffix(), self.page.suffix()))",
                    k.stem
                );
            }
        }
        let _ = writeln!(code, "    }}\n\n    fn args(&self) -> Vec<Arg> {{\n        vec![");
        for p in &k.params {
            let variant = match p.ty {
                "u32" => "U32",
                "i32" => "I32",
                "f32" => "F32",
                _ => "U64",
            };
            let _ = writeln!(code, "            Arg::{variant}(self.{}),", p.name);
        }
        let _ = writeln!(code, "        ]\n    }}\n}}\n");
        names.push((k.stem.clone(), k.per_type, k.per_page, k.params.len()));
    }
    let _ = writeln!(code, "/// Every declaration: (name stem, per type, per page kind, parameters).");
    let _ = writeln!(code, "#[cfg(test)]\npub(crate) const DECLARED: &[(&str, bool, bool, usize)] = &[");
    for (stem, t, p, n) in names {
        let _ = writeln!(code, "    ({stem:?}, {t}, {p}, {n}),");
    }
    let _ = writeln!(code, "];");
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("kernels.rs");
    std::fs::write(out, code).expect("write the kernel bindings");
}
