//! Command-line parsing and dispatch.

mod bench;
mod bench_serve;
mod eval;
mod generate;
mod models;
mod perplexity;
mod pull;
mod quantize;
mod serve;
mod speed;
mod synth;

use clap::{Args, Parser, Subcommand};
use turbine_server::config::EngineSection;

/// Turbine: an LLM inference engine.
#[derive(Debug, Parser)]
#[command(name = "turbine", version, about)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Generate text from a prompt (streams to the terminal, or one JSON object with --json).
    Generate(generate::GenerateArgs),
    /// Score a text or token ids: mean negative log-likelihood and perplexity.
    Perplexity(perplexity::PerplexityArgs),
    /// Compare weight formats against a reference: perplexity, KL, top-1 agreement, memory, speed.
    Eval(eval::EvalArgs),
    /// Store a model's projections in FP8 or INT8 and write it as a checkpoint.
    Quantize(quantize::QuantizeArgs),
    /// Fetch a known model into the cache.
    Pull(pull::PullArgs),
    /// Measure throughput on a workload (in-flight vs static batching), or one request's speed.
    Bench(bench::BenchArgs),
    /// List the supported architectures and the known model names.
    Models(models::ModelsArgs),
    /// Serve the OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Load an OpenAI-compatible server (ours or another engine's) and report latencies.
    BenchServe(bench_serve::BenchServeArgs),
    /// Write a random-weight model folder (HF layout, with a tokenizer) for benchmarks at real sizes.
    SynthModel(synth::SynthArgs),
}

/// Options shared by every command that runs a model.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A model folder, a .gguf file, or a known name (default: smollm2-135m-instruct).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Kernel backend.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// KV cache size in tokens (capped by the model's context length).
    #[arg(long, default_value_t = 8192)]
    pub ctx_size: usize,
    /// How the block projections are stored and multiplied: auto (as the checkpoint stores
    /// them), f32, f16, bf16, fp8 (FP8 weights and inputs), fp8-weight or int8-weight.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Projections that keep the checkpoint's precision: qkv, o, up, down, layer:N or ROLE@N;
    /// repeatable.
    #[arg(long)]
    pub keep: Vec<String>,
    /// 8-bit formats: input channels of each projection multiplied exactly in f32 (the
    /// calibrated outliers) [default: 16 for fp8 and fp8-weight, else 0].
    #[arg(long)]
    pub outliers: Option<usize>,
    /// KV cache storage: f32, fp8 (FP8 E4M3) or int8.
    #[arg(long, default_value = "f32")]
    pub kv_dtype: String,
    /// Load a checkpoint that holds tensors the architecture does not use (ignoring them);
    /// without it such a checkpoint is refused, naming them.
    #[arg(long)]
    pub allow_unused_weights: bool,
}

impl ModelArgs {
    /// The KV cache of `--ctx-size` tokens stored as `--kv-dtype`.
    pub fn kv(&self) -> anyhow::Result<turbine_server::setup::KvSize> {
        let dtype = turbine_server::setup::kv_dtype(&self.kv_dtype)?;
        Ok(turbine_server::setup::KvSize { dtype, ..turbine_server::setup::KvSize::tokens(self.ctx_size) })
    }

    /// The precision policy of `--dtype` and `--keep`.
    pub fn policy(&self) -> anyhow::Result<turbine_models::precision::Policy> {
        Ok(turbine_models::precision::Policy {
            allow_unused_weights: self.allow_unused_weights,
            ..turbine_models::precision::Policy::parse(&self.dtype, &self.keep)?.with_outliers(self.outliers)
        })
    }
}

/// Engine settings shared by the commands that run many requests (`bench`, `serve`); a flag
/// left out keeps the value below it (the defaults, or `serve`'s config file).
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Most sequences per step (also the batch size of the static bench modes) [default: 16].
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Most tokens per step [default: 512].
    #[arg(long)]
    pub max_num_tokens: Option<usize>,
    /// KV cache size in tokens [default: 16384].
    #[arg(long)]
    pub kv_tokens: Option<usize>,
    /// KV cache budget in bytes (overrides --kv-tokens).
    #[arg(long)]
    pub kv_bytes: Option<usize>,
    /// Tokens per KV block [default: 16].
    #[arg(long)]
    pub block_size: Option<usize>,
}

impl EngineArgs {
    /// `base` with the flags that were given.
    pub fn apply(&self, mut base: EngineSection) -> EngineSection {
        for (dst, v) in [
            (&mut base.max_batch, self.max_batch),
            (&mut base.max_num_tokens, self.max_num_tokens),
            (&mut base.kv_tokens, self.kv_tokens),
            (&mut base.block_size, self.block_size),
        ] {
            if let Some(v) = v {
                *dst = v;
            }
        }
        if self.kv_bytes.is_some() {
            base.kv_bytes = self.kv_bytes;
        }

        base
    }
}

/// How `eval` and `quantize` build their precision policy.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Projections that keep the checkpoint's precision: qkv, o, up, down, layer:N or ROLE@N;
    /// repeatable.
    #[arg(long)]
    pub keep: Vec<String>,
    /// How 8-bit weights are rounded: nearest, or gptq (error feedback over the calibration text)
    /// [default: nearest].
    #[arg(long)]
    pub rounding: Option<String>,
    /// fp8: one calibrated input scale per projection (amax over the calibration text) instead
    /// of one per token.
    #[arg(long)]
    pub static_inputs: bool,
    /// fp8: SmoothQuant with this migration strength α in 0..=1 (input channel j divided by
    /// amax(x_j)^α / amax(w_j)^(1-α) before quantisation, the weight's column multiplied by it).
    #[arg(long, value_name = "ALPHA")]
    pub smooth: Option<f32>,
    /// fp8: subtract each input channel's calibrated mean before quantising (added back exactly
    /// through the bias).
    #[arg(long)]
    pub center: bool,
    /// 8-bit formats: input channels of each projection multiplied exactly in f32 (the
    /// calibrated outliers), the rest in 8 bits [default: 16 for fp8 and fp8-weight (0 for quantize), else 0].
    #[arg(long)]
    pub outliers: Option<usize>,
    /// Calibration text (default: a bundled English text, not the evaluation text).
    #[arg(long)]
    pub calib: Option<std::path::PathBuf>,
    /// Calibration tokens.
    #[arg(long, default_value_t = 2048)]
    pub calib_tokens: usize,
}

impl PolicyArgs {
    /// The policy for `format` (reads the calibration text, if one is given).
    pub fn policy(&self, format: &str) -> anyhow::Result<turbine_models::precision::Policy> {
        use anyhow::Context;
        let calib_text = match &self.calib {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("{}: cannot read the calibration text", p.display()))?,
            ),
            None => None,
        };
        let base = turbine_models::precision::Policy::parse(format, &self.keep)?;
        Ok(turbine_models::precision::Policy {
            rounding: match &self.rounding {
                Some(r) => turbine_models::precision::Rounding::parse(r)?,
                None => base.rounding,
            },
            calib_text,
            calib_tokens: self.calib_tokens,
            static_inputs: self.static_inputs,
            smooth: self.smooth,
            center: self.center,
            ..base.with_outliers(self.outliers)
        })
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Generate(a) => generate::run(a),
        Cmd::Perplexity(a) => perplexity::run(a),
        Cmd::Eval(a) => eval::run(a),
        Cmd::Pull(a) => pull::run(a),
        Cmd::Quantize(a) => quantize::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Models(a) => models::run(a),
        Cmd::Serve(a) => serve::run(a),
        Cmd::BenchServe(a) => bench_serve::run(a),
        Cmd::SynthModel(a) => synth::run(a),
    }
}

/// Parses `1,2,3` into ids.
pub fn parse_ids(s: &str) -> anyhow::Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().map_err(|_| anyhow::anyhow!("{t:?} is not a token id (non-negative integer)")))
        .collect()
}
