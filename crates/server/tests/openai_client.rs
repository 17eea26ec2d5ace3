//! The official `openai` Python client (pinned, installed into a virtual environment under the
//! target folder on first use) against `turbine serve` with a tiny model: completions, chat,
//! streaming, n > 1, stop strings, logprobs, tool calls and error classes
//! (tests/clients/openai_client.py).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `openai` release the check is pinned to, and the JSON Schema validator it checks tool
/// arguments with.
const OPENAI: &str = "openai==3.57.0";
const JSONSCHEMA: &str = "jsonschema==4.26.0";

fn python() -> String {
    std::env::var("TURBINE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A virtual environment with the `openai` package; created once.
fn venv() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let py = dir.join("bin").join("python");
    let ready =
        |py: &Path| Command::new(py).args(["-c", "import openai, jsonschema"]).status().is_ok_and(|s| s.success());
    if !ready(&py) {
        let st = Command::new(python()).args(["-m", "venv"]).arg(&dir).status().expect("run python3 -m venv");
        assert!(st.success(), "cannot create a virtual environment at {}", dir.display());
        let st = Command::new(&py)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", OPENAI, JSONSCHEMA])
            .status()
            .expect("run pip");
        assert!(st.success(), "pip could not install {OPENAI} and {JSONSCHEMA}");
    }
    py
}

/// llama-gqa with a ChatML template beside it (the tiny fixtures carry none).
fn chat_model() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/llama-gqa");
    let dir = std::env::temp_dir().join(format!("turbine-openai-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    // It renders tools (their names: the tiny model's context is short).
    let tmpl = "{% if tools %}<|im_start|>tools\n{% for t in tools %}{{ t.function.name }}\n{% endfor %}<|im_end|>\n{% endif %}\
                {% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}\
                {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    std::fs::write(dir.join("chat_template.jinja"), tmpl).unwrap();
    dir
}

fn ready(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    let mut out = String::new();
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").is_ok()
        && s.read_to_string(&mut out).is_ok()
        && out.starts_with("HTTP/1.1 200")
}

#[test]
fn the_official_openai_client_works() {
    let py = venv();
    let model = chat_model();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_turbine"))
        .args(["serve", "--model", model.to_str().unwrap(), "--port", &port.to_string(), "--api-key", "sk-test"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let up = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        ready(&addr)
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/openai_client.py");
    let out = up.then(|| Command::new(&py).arg(&script).arg(format!("http://{addr}/v1")).arg("sk-test").output());
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let exit = server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&model);
    assert!(up, "the server did not become ready");
    let out = out.unwrap().expect("run the client script");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the openai client check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(exit.success(), "the server exited with {exit}");
}
