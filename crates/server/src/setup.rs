//! From `--model` and `--backend` to a loaded runner, or to a [`Session`]: an engine core for
//! one request at a time (the CLI's `generate`, `perplexity`, `bench --workload speed`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use turbine_batcher::{EngineConfig, EngineCore};
use turbine_core::Ops;
use turbine_kernels_ref::Cpu;
use turbine_models::catalog::{self, Resolved};
use turbine_models::precision::Policy;
use turbine_models::tokenizer::TextTokenizer;
use turbine_models::{CacheConfig, ModelRunner, Runner};

/// Tokens per KV cache block.
pub const BLOCK_SIZE: usize = 16;

/// A loaded model, ready to run.
pub struct Session {
    /// The engine core (with a detokenizer, so events carry text and stop strings work), driven
    /// synchronously by [`turbine_batcher::generate`] and [`turbine_batcher::score`].
    pub engine: EngineCore,
    /// The tokenizer.
    pub tok: std::sync::Arc<TextTokenizer>,
    /// Ids that end generation.
    pub eos: Vec<u32>,
    /// Where the model came from.
    pub path: PathBuf,
    /// Load time in milliseconds.
    pub load_ms: f64,
    /// Bytes of weights one decode step of a single sequence reads.
    pub decode_read_bytes: usize,
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
pub struct LoadedRunner {
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
    /// Bytes of weights in memory.
    pub weight_bytes: usize,
    /// Bytes of weights one decode step of a single sequence reads (see
    /// `Decoder::decode_read_bytes`).
    pub decode_read_bytes: usize,
}

/// How big the paged KV cache is (how it stores keys and values is the precision policy's
/// [`turbine_models::precision::KvFormat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvSize {
    /// Tokens per block.
    pub block_size: usize,
    /// Capacity in tokens, unless `bytes` is given.
    pub tokens: usize,
    /// Memory budget in bytes (keys and values of every layer), overriding `tokens`.
    pub bytes: Option<usize>,
}

impl KvSize {
    /// `tokens` tokens in blocks of [`BLOCK_SIZE`].
    pub fn tokens(tokens: usize) -> Self {
        KvSize { block_size: BLOCK_SIZE, tokens, bytes: None }
    }

    /// The cache geometry for `spec` with pages of `dtype`.
    pub fn config(&self, spec: &turbine_models::ModelSpec, dtype: turbine_core::DType) -> Result<CacheConfig> {
        if self.block_size == 0 {
            bail!("the KV block size must be at least 1 token");
        }
        let num_blocks = match self.bytes {
            Some(b) => {
                let per_block = CacheConfig::bytes_per_block(spec, dtype, self.block_size);
                let n = b / per_block.max(1);
                if n == 0 {
                    bail!(
                        "a KV budget of {b} bytes holds no block of {} tokens ({per_block} bytes each)",
                        self.block_size
                    );
                }
                n
            }
            None => self.tokens.max(1).div_ceil(self.block_size),
        };
        Ok(CacheConfig { block_size: self.block_size, num_blocks, kv_dtype: dtype })
    }
}

/// Loads a model on a backend with a paged KV cache of the given size.
pub fn load_runner(model: Option<&str>, backend: &str, kv: KvSize) -> Result<LoadedRunner> {
    load_runner_with(model, backend, kv, &Policy::default())
}

/// [`load_runner`] with the projections stored as `policy` says.
pub fn load_runner_with(model: Option<&str>, backend: &str, kv: KvSize, policy: &Policy) -> Result<LoadedRunner> {
    let path = model_path(model)?;
    let t0 = Instant::now();
    let (runner, tok, eos, (weight_bytes, decode_read_bytes)) = match backend {
        "cpu" => load_on(Cpu::new(), &path, kv, policy)?,
        "cuda" => load_on(cuda_backend()?, &path, kv, policy)?,
        other => bail!("unknown backend {other:?}; available: cpu, cuda"),
    };
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok(LoadedRunner { runner, tok, eos, path, load_ms, weight_bytes, decode_read_bytes })
}

/// What [`load_on`] gives back: the runner, tokenizer, EOS ids, and bytes of weights (in memory,
/// read by one decode step).
type OnBackend = (Box<dyn ModelRunner>, TextTokenizer, Vec<u32>, (usize, usize));

/// Loads the model at `path` on backend `b` with its KV cache (and, for 8-bit KV pages, the key
/// shifts from a calibration run).
fn load_on<B: Ops + Clone>(b: B, path: &std::path::Path, kv: KvSize, policy: &Policy) -> Result<OnBackend> {
    let calibrating = policy.needs_calibration();
    if calibrating {
        eprintln!(
            "turbine: {} ({}) runs the model over up to {} calibration tokens at load",
            policy.format.name(),
            policy.summary(),
            policy.calib_tokens
        );
    }
    let t0 = std::time::Instant::now();
    // The cache's size in tokens, when given as tokens, bounds the context (and the position
    // tables built for it).
    let context = kv.bytes.is_none().then_some(kv.tokens);
    let m = turbine_models::load_for_context(&b, path, policy, context)?;
    if calibrating {
        eprintln!("turbine: loaded and quantised in {:.1} s", t0.elapsed().as_secs_f64());
    }
    let cache = kv.config(m.model.spec(), policy.kv.dtype())?;
    let bytes = m.model.decoder().map_or((0, 0), |d| (d.weight_bytes(), d.decode_read_bytes()));
    let mut runner = Runner::new(b, m.model, cache)?;
    // 8-bit KV pages take their key shifts from the load's one calibration run.
    if let Some(stats) = &m.kv_stats {
        runner.set_key_shifts(stats)?;
    }
    Ok((Box::new(runner), m.tokenizer, m.eos, bytes))
}

/// Loads a model for one request at a time, with a KV cache of `ctx_size` tokens (the usable
/// context is the smaller of that and the model's own; cache pages are only touched when used).
pub fn load(model: Option<&str>, backend: &str, kv: KvSize, policy: &Policy) -> Result<Session> {
    Ok(session(load_runner_with(model, backend, kv, policy)?, None))
}

/// A [`Session`] over a loaded runner, speculating when `speculation` says how.
pub fn session(
    l: LoadedRunner,
    speculation: Option<(turbine_batcher::SpecConfig, Box<dyn turbine_batcher::Proposer>)>,
) -> Session {
    let tok = std::sync::Arc::new(l.tok);
    let detok = tok.clone();
    let mut engine = EngineCore::new(l.runner, EngineConfig::default())
        .with_detokenizer(Box::new(move |ids| detok.decode(ids, true).unwrap_or_default()));
    if let Some((cfg, p)) = speculation {
        engine = engine.with_speculation(cfg, p);
    }
    Session { engine, tok, eos: l.eos, path: l.path, load_ms: l.load_ms, decode_read_bytes: l.decode_read_bytes }
}

/// The CUDA backend on device 0, or why there is none.
#[cfg(feature = "cuda")]
fn cuda_backend() -> Result<turbine_kernels_cuda::Cuda> {
    turbine_kernels_cuda::Cuda::new(0).map_err(|e| anyhow::anyhow!("--backend cuda: {e}"))
}

/// Without the `cuda` feature there is no CUDA backend.
#[cfg(not(feature = "cuda"))]
fn cuda_backend() -> Result<Cpu> {
    bail!("--backend cuda: this turbine was built without the `cuda` feature; use --backend cpu")
}
