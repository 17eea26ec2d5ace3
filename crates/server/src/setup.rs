//! From `--model` and `--backend` to a ready [`Generator`].

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use turbine_batcher::Generator;
use turbine_kernels_ref::Cpu;
use turbine_models::catalog::{self, Resolved};
use turbine_models::tokenizer::TextTokenizer;
use turbine_models::{CacheConfig, Runner};

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

/// Loads a model on a backend with a KV cache of `ctx_size` tokens (capped by the model's own
/// context length).
pub fn load(model: Option<&str>, backend: &str, ctx_size: usize) -> Result<Session> {
    let path = model_path(model)?;
    let t0 = Instant::now();
    let (gen, tok, eos) = match backend {
        "cpu" => {
            let cpu = Cpu::new();
            let m = turbine_models::load(&cpu, &path)?;
            let tokens = m.model.spec().max_positions.min(ctx_size).max(1);
            let cache = CacheConfig { block_size: BLOCK_SIZE, num_blocks: tokens.div_ceil(BLOCK_SIZE) };
            let runner = Runner::new(cpu, m.model, cache)?;
            (Generator::new(Box::new(runner)), m.tokenizer, m.eos)
        }
        "cuda" => bail!("{}", cuda_unavailable()),
        other => bail!("unknown backend {other:?}; available: cpu"),
    };
    Ok(Session { gen, tok, eos, path, load_ms: t0.elapsed().as_secs_f64() * 1e3 })
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
