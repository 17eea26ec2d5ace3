//! `turbine synth-model`: a random-weight model folder in Hugging Face layout, for benchmarks at
//! sizes no real model here has.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use turbine_core::DType as Dtype;
use turbine_models::synth::{self, SynthSpec};

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Architecture (llama: RMSNorm, rotary, GQA, SwiGLU; the layout Llama, Mistral and Qwen share).
    #[arg(long, default_value = "llama")]
    arch: String,
    /// Starting shape: tiny, 1b (Llama 3.2 1B's) or 8b (Llama 3.1 8B's); the flags below override it.
    #[arg(long, default_value = "1b")]
    preset: String,
    /// Hidden size.
    #[arg(long)]
    hidden: Option<usize>,
    /// Decoder blocks.
    #[arg(long)]
    layers: Option<usize>,
    /// Query heads.
    #[arg(long)]
    heads: Option<usize>,
    /// Key/value heads.
    #[arg(long)]
    kv_heads: Option<usize>,
    /// MLP width.
    #[arg(long)]
    intermediate: Option<usize>,
    /// Vocabulary size.
    #[arg(long)]
    vocab: Option<usize>,
    /// Context length.
    #[arg(long)]
    max_positions: Option<usize>,
    /// Weight storage: f32, f16 or bf16.
    #[arg(long)]
    dtype: Option<String>,
    /// Give the LM head its own matrix instead of sharing the embeddings.
    #[arg(long)]
    untied: bool,
    /// Seed of the weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: SynthArgs) -> anyhow::Result<()> {
    if a.arch != "llama" {
        bail!(
            "synth-model writes the llama architecture only (it covers Llama, Mistral and Qwen shapes), not {:?}",
            a.arch
        );
    }
    let p = SynthSpec::preset(&a.preset)?;
    let dtype = match a.dtype.as_deref() {
        None => p.dtype,
        Some("f32") => Dtype::F32,
        Some("f16") => Dtype::F16,
        Some("bf16") => Dtype::BF16,
        Some(other) => bail!("unknown weight dtype {other:?}; use f32, f16 or bf16"),
    };
    let spec = SynthSpec {
        hidden: a.hidden.unwrap_or(p.hidden),
        layers: a.layers.unwrap_or(p.layers),
        heads: a.heads.unwrap_or(p.heads),
        kv_heads: a.kv_heads.unwrap_or(p.kv_heads),
        intermediate: a.intermediate.unwrap_or(p.intermediate),
        vocab: a.vocab.unwrap_or(p.vocab),
        max_positions: a.max_positions.unwrap_or(p.max_positions),
        dtype,
        tie_embeddings: p.tie_embeddings && !a.untied,
        seed: a.seed,
    };
    spec.validate()?;
    eprintln!(
        "turbine synth-model: {} parameters (hidden {}, {} layers, {}/{} heads, MLP {}, vocabulary {}) into {}",
        count(spec.params()),
        spec.hidden,
        spec.layers,
        spec.heads,
        spec.kv_heads,
        spec.intermediate,
        spec.vocab,
        a.out.display()
    );
    let t0 = Instant::now();
    let last = std::sync::Mutex::new(0u64);
    let progress = |done: u64, total: u64| {
        let pct = done * 100 / total.max(1);
        if let Ok(mut l) = last.lock() {
            if pct >= *l + 5 || done == total {
                *l = pct;
                eprint!("\rturbine synth-model: {pct:>3}% of {}B", count(total));
            }
        }
    };
    let w = synth::write(&spec, &a.out, &progress).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!();
    println!(
        "{}: {} parameters, {}B of weights, written in {:.1} s",
        a.out.display(),
        count(w.params),
        count(w.bytes),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `1.24 G`, `94.5 M`, `37.1 k`.
fn count(n: u64) -> String {
    let n = n as f64;
    match n {
        n if n >= 1e9 => format!("{:.2} G", n / 1e9),
        n if n >= 1e6 => format!("{:.1} M", n / 1e6),
        n => format!("{:.1} k", n / 1e3),
    }
}
