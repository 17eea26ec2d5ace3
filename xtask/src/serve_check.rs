//! `turbine serve --backend cuda` end to end: started on a free port, it must answer a sampled
//! completion with top log-probabilities. Used by `cargo xtask emu` and, as `xtask serve-check
//! TURBINE MODEL`, by the GPU check's run.sh.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// One HTTP/1.1 request to `127.0.0.1:port`; the status code and body.
fn http(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).context("no HTTP status")?;
    Ok((code, text.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
}

/// Starts `turbine serve -m model --backend cuda` (`setup` adds its environment), waits until it
/// is ready (at most 120 s), asks for a completion and checks the answer; stops the server.
pub fn run(turbine: &Path, model: &Path, setup: &dyn Fn(&mut Command)) -> Result<()> {
    let port = 18_000 + (std::process::id() % 1000) as u16;
    let mut cmd = Command::new(turbine);
    cmd.arg("serve").arg("-m").arg(model).args(["--backend", "cuda", "--port", &port.to_string()]);
    setup(&mut cmd);
    let mut server = cmd.spawn().with_context(|| format!("starting {}", turbine.display()))?;
    let result = (|| -> Result<()> {
        let start = std::time::Instant::now();
        while !matches!(http(port, "GET", "/ready", ""), Ok((200, _))) {
            if let Ok(Some(status)) = server.try_wait() {
                bail!("serve --backend cuda exited ({status}) before it was ready");
            }
            if start.elapsed().as_secs() > 120 {
                bail!("serve --backend cuda was not ready after 120 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        // Ask for the model the server names.
        let (_, models) = http(port, "GET", "/v1/models", "")?;
        let models: serde_json::Value = serde_json::from_str(&models).context("GET /v1/models: not JSON")?;
        let name = models["data"][0]["id"].as_str().context("GET /v1/models names no model")?;
        let body = serde_json::json!({
            "model": name, "prompt": "Hello", "max_tokens": 6, "temperature": 0.7, "top_p": 0.9, "logprobs": 2,
        })
        .to_string();
        let (code, text) = http(port, "POST", "/v1/completions", &body)?;
        if code != 200 || !text.contains("\"choices\"") || !text.contains("\"top_logprobs\"") {
            bail!("serve --backend cuda answered {code}: {text}");
        }
        println!("serve --backend cuda answered: {text}");
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}
