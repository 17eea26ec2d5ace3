//! Writes seed inputs for the fuzz targets into `fuzz/seeds/<target>/` from the test fixtures:
//! `cargo +nightly run --manifest-path fuzz/Cargo.toml --bin seeds`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("../tests/fixtures");
    let seeds = root.join("seeds");
    for t in ["gguf", "hf_folder", "http"] {
        std::fs::create_dir_all(seeds.join(t))?;
    }
    for e in std::fs::read_dir(fixtures.join("gguf"))? {
        let p = e?.path();
        std::fs::copy(&p, seeds.join("gguf").join(p.file_name().unwrap_or_default()))?;
    }
    for e in std::fs::read_dir(fixtures.join("tiny"))? {
        let p = e?.path();
        if p.join("model.safetensors").exists() {
            let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            std::fs::write(seeds.join("hf_folder").join(name), turbine_fuzz::pack_folder(&p)?)?;
        }
    }
    let bodies = [
        (
            "POST /v1/completions",
            r#"{"prompt": "Hello", "max_tokens": 4, "logprobs": 2, "stop": ["x"], "n": 2, "stream": true}"#,
        ),
        ("POST /v1/completions", r#"{"prompt": [[1, 2, 3], [4]], "max_tokens": 3, "temperature": 0.7, "seed": 1}"#),
        (
            "POST /v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "logprobs": true, "top_logprobs": 2}"#,
        ),
        ("POST /tokenize", r#"{"prompt": "abc"}"#),
        ("POST /detokenize", r#"{"tokens": [1, 2, 3]}"#),
        ("GET /metrics", ""),
    ];
    for (i, (line, body)) in bodies.iter().enumerate() {
        let raw = format!(
            "{line} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        std::fs::write(seeds.join("http").join(format!("{i}")), raw)?;
    }
    println!("seeds written under {}", seeds.display());
    Ok(())
}
