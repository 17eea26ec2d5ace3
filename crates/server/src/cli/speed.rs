//! `turbine bench --workload speed`: one request's prefill and decode speed, and decode speed as
//! the context grows.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use turbine_batcher::Request;
use turbine_server::setup;

use super::{parse_ids, ModelArgs};

/// Deterministic synthetic text for the prompts: ordinary English, repeated to length.
const PROMPT_TEXT: &str =
    "The engine reads the weights once per step, so a batch of requests costs little more than one. ";

/// Settings of the single-request speed measurement.
#[derive(Debug, Args)]
pub struct SpeedArgs {
    /// Prompt length for the prefill measurement (speed workload).
    #[arg(long, default_value_t = 256)]
    pub prompt_tokens: usize,
    /// Tokens decoded per measurement (speed workload).
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Context depths at which decode speed is measured, comma-separated (speed workload).
    #[arg(long, default_value = "16,256,512,1000")]
    pub depths: String,
    /// Repetitions of each measurement; the best is reported (speed workload).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Batch sizes at which decode throughput is measured, comma-separated (batch workload: that
    /// many requests of --prompt-tokens decode --gen-tokens together).
    #[arg(long, default_value = "1,16,64")]
    pub batch_sizes: String,
    /// Batch workload: also decode every request under this JSON Schema (a file) and report the
    /// constrained decode speed beside the plain one.
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<std::path::PathBuf>,
}

pub fn run(model: &ModelArgs, a: &SpeedArgs, json: bool) -> Result<()> {
    let depths: Vec<usize> = parse_ids(&a.depths)?.into_iter().map(|d| d as usize).collect();
    if a.gen_tokens < 2 || a.prompt_tokens == 0 || a.reps == 0 {
        bail!("--gen-tokens must be at least 2, --prompt-tokens and --reps at least 1");
    }
    let mut s = setup::load(model.model.as_deref(), &model.backend, model.kv(), &model.policy()?)?;
    let base = s.tok.encode(PROMPT_TEXT, false)?;
    let tokens = |n: usize| -> Vec<u32> { base.iter().copied().cycle().take(n).collect() };
    let mut measure = |prompt: Vec<u32>, gen: usize| -> Result<(f64, f64)> {
        let req = greedy_request(prompt, gen)?;
        let (mut pf, mut dc) = (0.0f64, 0.0f64);
        for _ in 0..a.reps {
            // Every repetition from a cold prefix cache: the prompt is computed, not reused.
            s.engine.reset();
            let out = turbine_batcher::generate(&mut s.engine, req.clone(), &mut |_, _| {})?;
            pf = pf.max(out.timings.prefill_tok_s());
            dc = dc.max(out.timings.decode_tok_s());
        }
        Ok((pf, dc))
    };
    let t0 = Instant::now();
    eprintln!("turbine bench: prefill {} tokens, {} reps", a.prompt_tokens, a.reps);
    let (prefill, _) = measure(tokens(a.prompt_tokens), 2)?;
    let mut rows = Vec::new();
    for &d in &depths {
        eprintln!("turbine bench: decode {} tokens after {d} tokens of context", a.gen_tokens);
        let (_, decode) = measure(tokens(d.max(1)), a.gen_tokens)?;
        rows.push((d, decode));
    }
    // The rate at which decode reads the weights (KV reads not counted): at batch 1 it is
    // bounded by the memory bandwidth.
    let bytes = s.decode_read_bytes;
    let gb_s = |tok_s: f64| bytes as f64 * tok_s / 1e9;
    if json {
        let r: Vec<_> =
            rows.iter().map(|&(d, t)| json!({"context": d, "decode_tok_s": t, "weight_gb_s": gb_s(t)})).collect();
        println!(
            "{}",
            json!({"model": s.path, "backend": model.backend, "prefill_tokens": a.prompt_tokens,
                   "prefill_tok_s": prefill, "decode_read_bytes": bytes, "decode": r})
        );
    } else {
        println!("model    {}", s.path.display());
        println!("backend  {}", model.backend);
        println!("prefill  {prefill:>8.1} tok/s  ({} prompt tokens)", a.prompt_tokens);
        println!("weights  {:.1} MB read per decode step", bytes as f64 / 1e6);
        println!("| context | decode tok/s | weights GB/s |");
        println!("|--------:|-------------:|-------------:|");
        for (d, t) in rows {
            println!("| {d:>7} | {t:>12.1} | {:>12.2} |", gb_s(t));
        }
        eprintln!("turbine bench: done in {:.1} s", t0.elapsed().as_secs_f64());
    }
    Ok(())
}

/// `turbine bench --workload batch`: for each batch size N, N requests of `--prompt-tokens` are
/// prefilled, then decode `--gen-tokens` together; reports the aggregate decode tokens/s (from
/// the step where every request has its first token to the last) and the prefill tokens/s.
pub fn run_batches(model: &ModelArgs, a: &SpeedArgs, json: bool) -> Result<()> {
    use turbine_batcher::{EngineConfig, EngineCore, Event};
    let sizes: Vec<usize> = parse_ids(&a.batch_sizes)?.into_iter().map(|d| d as usize).collect();
    if sizes.is_empty() || sizes.contains(&0) || a.gen_tokens < 2 || a.prompt_tokens == 0 {
        bail!("--batch-sizes must list sizes of at least 1; --gen-tokens at least 2, --prompt-tokens at least 1");
    }
    let largest = sizes.iter().copied().max().unwrap_or(1);
    let kv = setup::KvSize { tokens: largest * (a.prompt_tokens + a.gen_tokens) + 16 * largest, ..model.kv() };
    let loaded = setup::load_runner_with(model.model.as_deref(), &model.backend, kv, &model.policy()?)?;
    let base = loaded.tok.encode(PROMPT_TEXT, false)?;
    let prompt: Vec<u32> = base.iter().copied().cycle().take(a.prompt_tokens).collect();
    let path = loaded.path.clone();
    let cfg = EngineConfig {
        max_num_tokens: (a.prompt_tokens * largest).max(largest),
        max_batch_size: largest,
        max_waiting: usize::MAX,
        speculative: None,
    };
    let schema = match &a.json_schema {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let mut core = EngineCore::new(loaded.runner, cfg);
    if schema.is_some() {
        core.set_constraints(Box::new(turbine_server::constraint::LlgCompiler::new(&loaded.tok, &loaded.eos)?));
    }
    // Each size plain, then (with --json-schema) constrained.
    let runs: Vec<(usize, Option<&String>)> =
        sizes.iter().flat_map(|&n| std::iter::once((n, None)).chain(schema.as_ref().map(|s| (n, Some(s))))).collect();
    let mut rows = Vec::new();
    // Warm-up (thread pool, first touches of the cache and workspaces), not measured.
    let warm = greedy_request(prompt.clone(), 4)?;
    for _ in 0..largest.min(4) {
        core.add(warm.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    while core.has_work() {
        core.step()?;
    }
    for (n, constraint) in runs {
        eprintln!(
            "turbine bench: batch {n}: {} prompt tokens each, then {} tokens decoded together{}",
            a.prompt_tokens,
            a.gen_tokens,
            if constraint.is_some() { " under the JSON Schema" } else { "" }
        );
        let mut req = greedy_request(prompt.clone(), a.gen_tokens)?;
        if let Some(text) = constraint {
            req = req.with_constraint(turbine_batcher::ConstraintSpec::JsonSchema(text.clone()));
        }
        let t0 = Instant::now();
        for _ in 0..n {
            core.add(req.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let (mut first, mut tokens_after, mut started) = (std::collections::HashSet::new(), 0usize, None);
        while core.has_work() {
            for (id, ev) in core.step()? {
                match ev {
                    Event::Token { .. } if started.is_some() => tokens_after += 1,
                    Event::Token { .. } => {
                        first.insert(id);
                        if first.len() == n {
                            started = Some(Instant::now());
                        }
                    }
                    Event::Error(m) => bail!("engine error: {m}"),
                    _ => {}
                }
            }
        }
        let prefill_s = started.map_or(0.0, |s| (s - t0).as_secs_f64());
        let decode_s = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let decode = if decode_s > 0.0 { tokens_after as f64 / decode_s } else { 0.0 };
        let prefill = if prefill_s > 0.0 { (n * a.prompt_tokens) as f64 / prefill_s } else { 0.0 };
        rows.push((n, constraint.is_some(), prefill, decode));
    }
    // A constrained row's decode speed over the plain row of its size.
    let ratio = |n: usize, d: f64| {
        rows.iter().find(|r| r.0 == n && !r.1).map(|r| if r.3 > 0.0 { d / r.3 } else { 0.0 }).unwrap_or(0.0)
    };
    if json {
        let r: Vec<_> = rows
            .iter()
            .map(|&(n, c, p, d)| {
                let mut row = json!({"batch": n, "prefill_tok_s": p, "decode_tok_s": d});
                if c {
                    row["json_schema"] = json!(true);
                    row["over_plain"] = json!(ratio(n, d));
                }
                row
            })
            .collect();
        println!(
            "{}",
            json!({"model": path, "backend": model.backend, "prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens, "batches": r})
        );
    } else {
        println!("model    {}", path.display());
        println!("backend  {}", model.backend);
        println!("| batch | prefill tok/s | decode tok/s (all sequences) |");
        println!("|------:|--------------:|-----------------------------:|");
        for &(n, c, p, d) in &rows {
            let label = if c { format!("{n} (JSON Schema)") } else { n.to_string() };
            let over = if c { format!(" ({:.2}x plain)", ratio(n, d)) } else { String::new() };
            println!("| {label:>5} | {p:>13.1} | {:>28} |", format!("{d:.1}{over}"));
        }
    }
    Ok(())
}

/// A greedy request that decodes exactly `max_tokens` tokens.
fn greedy_request(prompt: Vec<u32>, max_tokens: usize) -> Result<Request> {
    Ok(Request::greedy(prompt, max_tokens)?.with_ignore_eos(true))
}
