//! What the fuzz targets share: loading a model from fuzzed bytes, serving fuzzed requests, and
//! the panic policy (a panic anywhere aborts, so libFuzzer reports it, except the ones Turbine
//! catches and turns into errors on purpose: the tokenizers library's, see
//! `turbine_models::tokenizer`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use turbine_batcher::{Generator, Request};
use turbine_core::sampling::SamplingParams;
use turbine_kernels_ref::Cpu;
use turbine_models::precision::Policy;
use turbine_models::{CacheConfig, Runner};

/// Installs the panic policy once: abort on any panic but the tokenizers library's.
pub fn init() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        std::panic::set_hook(Box::new(|info| {
            let caught = info.location().is_some_and(|l| l.file().contains("/tokenizers-"));
            if !caught {
                eprintln!("{info}");
                std::process::abort();
            }
        }));
    });
}

/// A scratch folder of this process.
pub fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("turbine-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch folder");
    d
}

/// Loads a model (folder or `.gguf`) with a 64-token context and, if it loads, generates two
/// tokens. Errors are fine; panics abort (see [`init`]).
pub fn load_and_run(path: &Path) {
    let cpu = Cpu::new();
    let Ok(m) = turbine_models::load_for_context(&cpu, path, &Policy::default(), Some(64)) else { return };
    let Ok(runner) = Runner::new(cpu, m.model, CacheConfig::f32(16, 4)) else { return };
    let mut g = Generator::new(Box::new(runner));
    let req = Request {
        prompt: vec![1, 2, 3],
        params: SamplingParams { temperature: 0.0, ..Default::default() },
        max_tokens: 2,
        ignore_eos: true,
        stop_ids: vec![],
        stop: vec![],
    };
    let _ = g.generate(&req, &mut |_| {});
}

/// Splits fuzzed bytes into a model folder: `[u32 le n][config.json: n bytes][u32 le m]
/// [tokenizer.json: m bytes][model.safetensors: the rest]` ([`pack_folder`] makes seeds).
pub fn unpack_folder(data: &[u8], dir: &Path) -> bool {
    let mut rest = data;
    let mut take = || -> Option<Vec<u8>> {
        let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let part = rest.get(4..4 + n)?.to_vec();
        rest = &rest[4 + n..];
        Some(part)
    };
    let (Some(config), Some(tokenizer)) = (take(), take()) else { return false };
    let ok = std::fs::write(dir.join("config.json"), config).is_ok()
        && std::fs::write(dir.join("tokenizer.json"), tokenizer).is_ok()
        && std::fs::write(dir.join("model.safetensors"), rest).is_ok();
    ok
}

/// The inverse of [`unpack_folder`], for seeds.
pub fn pack_folder(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for f in ["config.json", "tokenizer.json"] {
        let b = std::fs::read(dir.join(f))?;
        out.extend((b.len() as u32).to_le_bytes());
        out.extend(b);
    }
    out.extend(std::fs::read(dir.join("model.safetensors"))?);
    Ok(out)
}

/// The running server: its runtime, the sender that keeps it serving, and its address. Held in
/// a static (reachable to the end, so leak checkers do not report it).
struct Running {
    _rt: tokio::runtime::Runtime,
    _keep: tokio::sync::watch::Sender<bool>,
    addr: String,
}

/// A server of the tiny fixture model in this process, started on first use: its address.
pub fn server() -> &'static str {
    static SERVER: OnceLock<Running> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let mut c = turbine_server::config::ServeConfig::default();
            c.model.path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny/llama-gqa").to_string();
            c.engine.kv_tokens = 4096;
            let state = Arc::new(turbine_server::http::AppState::load(&c).expect("load the tiny model"));
            let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
            let addr = listener.local_addr().expect("address").to_string();
            let app = turbine_server::http::service(turbine_server::http::Server::ready(state));
            let (keep, stop) = tokio::sync::watch::channel(false);
            rt.spawn(turbine_server::http::serve_connections(
                listener,
                app,
                turbine_server::http::Slots::new(64),
                Duration::from_secs(30),
                stop,
                Duration::from_secs(1),
            ));
            Running { _rt: rt, _keep: keep, addr }
        })
        .addr
}

/// Sends raw bytes as one connection's request and waits for the answer or the close; a
/// connection still open after 10 s is a hang and aborts.
pub fn send(raw: &[u8]) {
    let Ok(mut s) = std::net::TcpStream::connect(server()) else { return };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(raw);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    if let Err(e) = s.read_to_end(&mut out) {
        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
            eprintln!("the server neither answered nor closed within 10 s");
            std::process::abort();
        }
    }
    if out.starts_with(b"HTTP/1.1 500") {
        eprintln!("500: {}", String::from_utf8_lossy(&out));
        std::process::abort();
    }
}
