//! `turbine eval`: what a weight format costs and buys. Against a reference model (by default the
//! same model as the checkpoint stores it, computed in f32) on the same text: perplexity, mean KL
//! divergence of the next-token distributions, top-1 agreement, bytes of weights in memory and
//! decode speed, one row per format.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use turbine_batcher::eval::{self, EvalRow};
use turbine_batcher::{EngineConfig, EngineCore, Request};
use turbine_models::precision::{Format, KvFormat, Policy};
use turbine_server::setup::{self, KvSize};

use super::PrecisionArgs;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A model folder, a .gguf file, or a known name (default: smollm2-135m-instruct).
    #[arg(long, short = 'm')]
    model: Option<String>,
    /// Weight formats to evaluate, comma-separated (auto, f32, f16, bf16, fp8, fp8-weight,
    /// int8-weight).
    #[arg(long, default_value = "fp8,fp8-weight,int8-weight")]
    dtype: String,
    /// The evaluated models' precision flags (the reference keeps its format in f32 and an f32
    /// KV cache).
    #[command(flatten)]
    precision: PrecisionArgs,
    /// The reference model (default: --model).
    #[arg(long)]
    reference: Option<String>,
    /// The reference's weight format.
    #[arg(long, default_value = "auto")]
    reference_dtype: String,
    /// A UTF-8 text file to score; repeatable (the files' tokens are scored one after another,
    /// which narrows the uncertainty of Δppl).
    #[arg(long, group = "input")]
    file: Vec<std::path::PathBuf>,
    /// A file holding a JSON array of token ids.
    #[arg(long, group = "input")]
    ids_file: Option<std::path::PathBuf>,
    /// Score at most this many tokens (default: all).
    #[arg(long)]
    limit: Option<usize>,
    /// Window length in tokens (default: the smaller of 2048 and the context).
    #[arg(long)]
    ctx: Option<usize>,
    /// Tokens decoded to measure decode speed (0 skips it).
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Kernel backend.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

struct Entry {
    label: String,
    engine: EngineCore,
    weight_bytes: usize,
}

fn load(model: Option<&str>, backend: &str, policy: &Policy, ctx: usize) -> Result<Entry> {
    let mut label = policy.format.name().to_string();
    let summary = policy.summary();
    if !summary.is_empty() {
        label.push_str(&format!(" ({summary})"));
    }
    if policy.kv != KvFormat::F32 {
        label.push_str(&format!(" + {} KV", policy.kv.name()));
    }
    eprintln!("turbine eval: loading {} as {label}", model.unwrap_or(turbine_models::catalog::DEFAULT_MODEL));
    let l = setup::load_runner_with(model, backend, KvSize::tokens(ctx), policy)?;
    Ok(Entry { label, engine: EngineCore::new(l.runner, EngineConfig::default()), weight_bytes: l.weight_bytes })
}

/// Greedy decode speed after a short prompt, in tokens/s.
fn decode_speed(core: &mut EngineCore, prompt: &[u32], n: usize) -> Result<f64> {
    let req = Request::greedy(prompt.to_vec(), n)?.with_ignore_eos(true);
    Ok(turbine_batcher::generate(core, req, &mut |_, _| {})?.timings.decode_tok_s())
}

pub fn run(a: EvalArgs) -> Result<()> {
    let formats: Vec<Format> = a.dtype.split(',').map(|f| Format::parse(f.trim())).collect::<Result<_, _>>()?;
    if formats.is_empty() {
        bail!("--dtype names no format");
    }
    let reference_format = Format::parse(&a.reference_dtype)?;
    let inputs: Vec<&std::path::PathBuf> = a.file.iter().chain(a.ids_file.as_ref()).collect();
    if inputs.is_empty() {
        bail!("give the text: --file TEXT_FILE or --ids-file JSON_ARRAY_FILE");
    }
    if let Some(p) = inputs.iter().find(|p| !p.is_file()) {
        bail!("{}: no such file", p.display());
    }
    let ctx_cap = a.ctx.unwrap_or(2048).max(2);
    let ref_model = a.reference.as_deref().or(a.model.as_deref());
    // The evaluated policies are checked before the reference loads, so a bad flag fails at once.
    let policies: Vec<Policy> = formats.iter().map(|f| a.precision.policy(Some(f.name()))).collect::<Result<_>>()?;
    let reference = load(ref_model, &a.backend, &Policy { format: reference_format, ..Policy::default() }, ctx_cap)?;
    let mut entries = vec![reference];
    for policy in &policies {
        entries.push(load(a.model.as_deref(), &a.backend, policy, ctx_cap)?);
    }
    let tok = {
        let p = setup::model_path(a.model.as_deref())?;
        turbine_models::load_tokenizer(&p)?
    };
    let mut ids = if !a.file.is_empty() {
        let mut ids = Vec::new();
        for f in &a.file {
            let text = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
            ids.extend(tok.encode(&text, true)?);
        }
        ids
    } else {
        let path = inputs[0];
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        serde_json::from_str::<Vec<u32>>(&text)
            .with_context(|| format!("{}: expected a JSON array of token ids", path.display()))?
    };
    if let Some(n) = a.limit {
        ids.truncate(n);
    }
    let context = entries.iter().map(|e| e.engine.max_len()).min().unwrap_or(2);
    let ctx = a.ctx.unwrap_or_else(|| ids.len().min(context).min(2048));
    let t0 = Instant::now();
    let mut cores: Vec<EngineCore> = Vec::new();
    let mut meta = Vec::new();
    for e in entries {
        meta.push((e.label, e.weight_bytes));
        cores.push(e.engine);
    }
    let rows = eval::compare(&mut cores, &ids, ctx, &mut |done, total| {
        eprint!("\rturbine eval: {done}/{total} tokens, {} models, {:.0} s", meta.len(), t0.elapsed().as_secs_f64());
        let _ = std::io::stderr().flush();
    })?;
    eprintln!();
    let mut speeds = Vec::new();
    for core in cores.iter_mut() {
        let prompt = &ids[..ids.len().min(16)];
        speeds.push(if a.decode_tokens > 0 { Some(decode_speed(core, prompt, a.decode_tokens)?) } else { None });
    }
    report(&a, &meta, &rows, &speeds, ctx);
    Ok(())
}

fn report(a: &EvalArgs, meta: &[(String, usize)], rows: &[EvalRow], speeds: &[Option<f64>], ctx: usize) {
    let base = &rows[0];
    let dppl = |r: &EvalRow| 100.0 * (r.ppl / base.ppl - 1.0);
    if a.json {
        let list: Vec<Value> = meta
            .iter()
            .zip(rows)
            .zip(speeds)
            .enumerate()
            .map(|(i, (((label, bytes), r), sp))| {
                json!({
                    "format": label, "reference": i == 0, "weight_bytes": bytes, "ppl": r.ppl,
                    "ppl_change_pct": dppl(r), "mean_nll": r.mean_nll, "mean_kl": r.mean_kl, "max_kl": r.max_kl,
                    "ppl_change_se_pct": 100.0 * r.dnll_se,
                    "top1_agreement": r.top1_agreement, "decode_tok_s": sp, "tokens": r.tokens,
                })
            })
            .collect();
        println!(
            "{}",
            json!({"model": a.model.clone().unwrap_or_else(|| turbine_models::catalog::DEFAULT_MODEL.into()), "ctx": ctx, "rows": list})
        );
        return;
    }
    println!(
        "{} tokens in windows of {ctx}; reference: {} ({})",
        base.tokens,
        a.reference.as_deref().or(a.model.as_deref()).unwrap_or(turbine_models::catalog::DEFAULT_MODEL),
        meta[0].0
    );
    println!("| format | weights MB | ppl | Δppl ± s.e. | mean KL | top-1 agree | decode tok/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, (((label, bytes), r), sp)) in meta.iter().zip(rows).zip(speeds).enumerate() {
        let name = if i == 0 { format!("{label} (reference)") } else { label.clone() };
        let speed = sp.map_or("-".to_string(), |s| format!("{s:.1}"));
        println!(
            "| {name} | {:.1} | {:.4} | {:+.2}% ± {:.2} | {:.5} | {:.2}% | {speed} |",
            *bytes as f64 / 1e6,
            r.ppl,
            dppl(r),
            100.0 * r.dnll_se,
            r.mean_kl,
            100.0 * r.top1_agreement
        );
    }
}
