//! Command-line parsing and dispatch.

mod bench;
mod generate;
mod models;
mod perplexity;
mod pull;
mod serve;
mod speed;

use clap::{Args, Parser, Subcommand};

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
    /// Fetch a known model into the cache.
    Pull(pull::PullArgs),
    /// Measure throughput on a workload (in-flight vs static batching), or one request's speed.
    Bench(bench::BenchArgs),
    /// List the supported architectures and the known model names.
    Models(models::ModelsArgs),
    /// Serve the OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
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
}

/// Engine settings shared by the commands that run many requests (`bench`, `serve`).
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Most sequences per step (also the batch size of the static bench modes).
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Most tokens per step.
    #[arg(long, default_value_t = 512)]
    pub max_num_tokens: usize,
    /// KV cache size in tokens.
    #[arg(long, default_value_t = 16384)]
    pub kv_tokens: usize,
    /// KV cache budget in bytes (overrides --kv-tokens).
    #[arg(long)]
    pub kv_bytes: Option<usize>,
    /// Tokens per KV block.
    #[arg(long, default_value_t = turbine_server::setup::BLOCK_SIZE)]
    pub block_size: usize,
}

impl EngineArgs {
    /// The KV cache size.
    pub fn kv(&self) -> turbine_server::setup::KvSize {
        turbine_server::setup::KvSize { block_size: self.block_size, tokens: self.kv_tokens, bytes: self.kv_bytes }
    }

    /// The scheduler limits.
    pub fn config(&self) -> turbine_batcher::EngineConfig {
        turbine_batcher::EngineConfig { max_num_tokens: self.max_num_tokens, max_batch_size: self.max_batch }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Generate(a) => generate::run(a),
        Cmd::Perplexity(a) => perplexity::run(a),
        Cmd::Pull(a) => pull::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Models(a) => models::run(a),
        Cmd::Serve(a) => serve::run(a),
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
