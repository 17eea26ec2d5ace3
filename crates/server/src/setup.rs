//! From `--model` and `--backend` to a ready [`Generator`].

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use turbine_batcher::Generator;
use turbine_kernels_ref::Cpu;
use turbine_models::catalog::{self, Resolved};
use turbine_models::tokenizer::TextTokenizer;
use turbine_models::{CacheConfig, ModelRunner, Runner};

/// Tokens per KV cache block.
pub const BLOCK_SIZE: usize = 16;

/// A loaded model, ready to run.
pub struct Session {
    /// The engine.
    pub gen: Generator,
    /// The tokenizer.
    pub tok: TextTokenizer,
    /// Ids that end generation.
    pub eos: Vec<u32>,
    /// Where the model came from.
    pub path: PathBuf,
    /// Load time in milliseconds.
    pub load_ms: f64,
}

/// Resolves `--model` to a file or folder, pulling a known model on first use (and saying so).
pub fn model_path(model: Option<&str>) -> Result<PathBuf> {
    Ok(match catalog::resolve(model)? {
        Resolved::Path(p) => p,
        Resolved::Known(k) if k.is_cached() => k.path(),
        Resolved::Known(k) => {
            eprintln!("turbine: {} is not in the cache yet; pulling it first", k.name);
            catalog::pull(k.name, &mut |line| eprintln!("turbine: {line}"))?
        }
    })
}

/// A model on a backend, before choosing how to drive it.
pub struct Loaded {
    /// The runner (model + KV cache).
    pub runner: Box<dyn ModelRunner>,
    /// The tokenizer.
    pub tok: TextTokenizer,
    /// Ids that end generation.
    pub eos: Vec<u32>,
    /// Where the model came from.
    pub path: PathBuf,
    /// Load time in milliseconds.
    pub load_ms: f64,
}

/// Loads a model on a backend with a KV cache of `kv_tokens` tokens.
pub fn load_runner(model: Option<&str>, backend: &str, kv_tokens: usize) -> Result<Loaded> {
    let path = model_path(model)?;
    let t0 = Instant::now();
    let (runner, tok, eos): (Box<dyn ModelRunner>, _, _) = match backend {
        "cpu" => {
            let cpu = Cpu::new();
            let m = turbine_models::load(&cpu, &path)?;
            let cache = CacheConfig { block_size: BLOCK_SIZE, num_blocks: kv_tokens.max(1).div_ceil(BLOCK_SIZE) };
            (Box::new(Runner::new(cpu, m.model, cache)?), m.tokenizer, m.eos)
        }
        "cuda" => bail!("{}", cuda_unavailable()),
        other => bail!("unknown backend {other:?}; available: cpu"),
    };
    Ok(Loaded { runner, tok, eos, path, load_ms: t0.elapsed().as_secs_f64() * 1e3 })
}

/// Loads a model for one request at a time, with a KV cache of `ctx_size` tokens (the usable
/// context is the smaller of that and the model's own; cache pages are only touched when used).
pub fn load(model: Option<&str>, backend: &str, ctx_size: usize) -> Result<Session> {
    let l = load_runner(model, backend, ctx_size)?;
    Ok(Session { gen: Generator::new(l.runner), tok: l.tok, eos: l.eos, path: l.path, load_ms: l.load_ms })
}

#[cfg(feature = "cuda")]
fn cuda_unavailable() -> String {
    match turbine_kernels_cuda::probe(0) {
        Ok(d) => format!(
            "found {} (sm_{}), but the CUDA kernels are not in this release yet; use --backend cpu",
            d.name, d.sm
        ),
        Err(e) => format!("CUDA backend unavailable: {e}"),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_unavailable() -> String {
    "this turbine was built without the `cuda` feature and the CUDA kernels are not in this release yet; \
     use --backend cpu"
        .into()
}
