//! Command-line parsing and dispatch.

mod bench;
mod bench_serve;
mod eval;
mod generate;
mod grounded;
mod models;
mod perplexity;
mod pull;
mod quantize;
mod serve;
mod speed;
mod synth;

use clap::{Args, Parser, Subcommand};
use turbine_server::config::{EngineSection, SpeculativeSection};

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
    /// them), f32, f16, bf16, fp8 (FP8 weights and inputs), fp8-weight or int8-weight
    /// [default: auto, or the --precision file's].
    #[arg(long)]
    pub dtype: Option<String>,
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

impl ModelArgs {
    /// The KV cache of `--ctx-size` tokens (its storage is the policy's `kv`).
    pub fn kv(&self) -> turbine_server::setup::KvSize {
        turbine_server::setup::KvSize::tokens(self.ctx_size)
    }

    /// The precision policy: `--precision`, `--dtype` and the other precision flags.
    pub fn policy(&self) -> anyhow::Result<turbine_models::precision::Policy> {
        self.precision.policy(self.dtype.as_deref())
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

/// Speculative decoding flags (`generate`, `bench`, `serve`); a flag left out keeps the value
/// below it (off, or `serve`'s `[speculative]`).
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Speculative decoding: off, ngram (prompt lookup: drafts copied from the prompt and output)
    /// or draft (a draft model, --draft-model). Outputs do not change: greedy and seeded requests
    /// to the bit, sampled ones in distribution [default: off; draft when --draft-model is given].
    #[arg(long, value_name = "METHOD")]
    pub speculative: Option<String>,
    /// The draft model: a folder, a .gguf file or a known name, with the model's tokenizer.
    #[arg(long, value_name = "MODEL")]
    pub draft_model: Option<String>,
    /// Most tokens drafted per request and step; the length adapts to each request's acceptance
    /// [default: 8].
    #[arg(long, value_name = "K")]
    pub draft_tokens: Option<usize>,
    /// ngram: the shortest suffix of the sequence looked up [default: 2].
    #[arg(long, value_name = "N")]
    pub ngram_min: Option<usize>,
    /// ngram: the longest suffix, tried first [default: 4].
    #[arg(long, value_name = "N")]
    pub ngram_max: Option<usize>,
}

impl SpecArgs {
    /// `base` with the flags that were given.
    pub fn apply(&self, mut base: SpeculativeSection) -> SpeculativeSection {
        if let Some(m) = &self.speculative {
            base.method = m.clone();
        } else if self.draft_model.is_some() {
            base.method = "draft".into();
        }
        if self.draft_model.is_some() {
            base.draft_model = self.draft_model.clone();
        }
        for (dst, v) in [
            (&mut base.draft_tokens, self.draft_tokens),
            (&mut base.ngram_min, self.ngram_min),
            (&mut base.ngram_max, self.ngram_max),
        ] {
            if let Some(v) = v {
                *dst = v;
            }
        }
        base
    }
}

/// The precision flags every command that loads a model shares, and the one way a policy is
/// built from them: the `--precision` file's spec (else the defaults), each flag given replacing
/// its key, then `PolicySpec::policy` checks it all. The format comes from the command
/// (`--dtype`, `eval`'s list, `quantize --to`).
#[derive(Debug, Args)]
pub struct PrecisionArgs {
    /// A precision policy file (TOML: format, keep, kv, outliers, rounding, calib_tokens, …; see
    /// README "Precision"); the flags below override its keys.
    #[arg(long, value_name = "FILE")]
    pub precision: Option<std::path::PathBuf>,
    /// Projections that keep the checkpoint's precision: qkv, o, up, down, layer:N or ROLE@N;
    /// repeatable; `none` for no exceptions [default: fp8 and fp8-weight keep the model's
    /// measured most sensitive blocks, else its last block].
    #[arg(long)]
    pub keep: Vec<String>,
    /// KV cache storage: f32, fp8 (FP8 E4M3) or int8 [default: f32].
    #[arg(long)]
    pub kv_dtype: Option<String>,
    /// 8-bit formats: input channels of each projection multiplied exactly in f32 (the
    /// calibrated outliers) [default: 16 for fp8, fp8-weight and int8-weight, else 0].
    #[arg(long)]
    pub outliers: Option<usize>,
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
    /// fp8, fp8-weight: one weight scale per output channel instead of one per tensor (measured
    /// no better; the FP8 checkpoint layout cannot hold it).
    #[arg(long)]
    pub channel_scales: bool,
    /// Calibration text (default: a bundled English text, not the evaluation text).
    #[arg(long)]
    pub calib: Option<std::path::PathBuf>,
    /// Calibration tokens [default: 2048].
    #[arg(long)]
    pub calib_tokens: Option<usize>,
    /// Load a checkpoint that holds tensors the architecture does not use (ignoring them);
    /// without it such a checkpoint is refused, naming them.
    #[arg(long)]
    pub allow_unused_weights: bool,
}

impl PrecisionArgs {
    /// The policy's written form: the file's (or the defaults), the flags given over it, and
    /// `format` over both when given.
    pub fn spec(&self, format: Option<&str>) -> anyhow::Result<turbine_models::policy_file::PolicySpec> {
        use anyhow::Context;
        let mut spec = match &self.precision {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("{}: cannot read the precision policy", p.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e.message()))?
            }
            None => turbine_models::policy_file::PolicySpec::default(),
        };
        if let Some(f) = format {
            spec.format = f.to_string();
        }
        if !self.keep.is_empty() {
            spec.keep = self.keep.clone();
        }
        if let Some(k) = &self.kv_dtype {
            spec.kv = k.clone();
        }
        if self.outliers.is_some() {
            spec.outliers = self.outliers;
        }
        if let Some(r) = &self.rounding {
            spec.rounding = r.clone();
        }
        if let Some(p) = &self.calib {
            spec.calib_text = Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("{}: cannot read the calibration text", p.display()))?,
            );
        }
        if let Some(n) = self.calib_tokens {
            spec.calib_tokens = n;
        }
        if self.smooth.is_some() {
            spec.smooth = self.smooth;
        }
        spec.static_inputs |= self.static_inputs;
        spec.center |= self.center;
        spec.channel_scales |= self.channel_scales;
        spec.allow_unused_weights |= self.allow_unused_weights;
        Ok(spec)
    }

    /// The checked policy of [`PrecisionArgs::spec`].
    pub fn policy(&self, format: Option<&str>) -> anyhow::Result<turbine_models::precision::Policy> {
        Ok(self.spec(format)?.policy()?)
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
