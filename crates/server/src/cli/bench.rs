//! `turbine bench`: offline throughput of the engine on a workload, with in-flight or static
//! batching (`--compare` runs all three modes), one request's speed (`--workload speed`), or
//! decode throughput by batch size (`--workload batch`).

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use turbine_batcher::bench::{self, BenchRequest, Mode, Report};
use turbine_batcher::EngineCore;
use turbine_server::config::EngineSection;
use turbine_server::setup;

use super::speed::{self, SpeedArgs};
use super::{EngineArgs, ModelArgs, SpecArgs};

/// English text the synthetic workload cuts its prompts from.
const TEXT: &str = include_str!("../../data/bench-text.txt");

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// `mixed` (synthetic long-tailed requests), `grounded` (answers that reuse the prompt:
    /// copying, correcting, editing code; they stop at EOS), `speed` (one request's prefill and
    /// decode speed), `batch` (decode throughput of --batch-sizes requests decoding together), or
    /// a .jsonl file of `{"prompt": …, "max_tokens": …}` lines.
    #[arg(long, default_value = "mixed")]
    workload: String,
    /// `inflight`, `static` or `static-compact`.
    #[arg(long, default_value = "inflight")]
    mode: String,
    /// Run all three modes on the same workload and print the ratios.
    #[arg(long)]
    compare: bool,
    /// Requests in the mixed workload.
    #[arg(long, default_value_t = 128)]
    requests: usize,
    #[command(flatten)]
    engine: EngineArgs,
    /// Seed of the mixed workload.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    speed: SpeedArgs,
    /// With --speculative: each mode runs without speculation, then with it, and the speedup
    /// is printed.
    #[command(flatten)]
    spec: SpecArgs,
}

fn mode(name: &str) -> Result<Mode> {
    Ok(match name {
        "inflight" => Mode::Inflight,
        "static" => Mode::Static,
        "static-compact" => Mode::StaticCompact,
        other => bail!("unknown --mode {other:?}; use inflight, static or static-compact"),
    })
}

fn report_json(r: &Report) -> Value {
    let p = |x: &bench::Percentiles| json!({"p50": x.p50, "p90": x.p90, "p99": x.p99});
    json!({
        "mode": r.mode.name(), "requests": r.requests, "prompt_tokens": r.prompt_tokens,
        "output_tokens": r.output_tokens, "wall_s": r.wall_s, "output_tok_s": r.output_tok_s,
        "total_tok_s": r.total_tok_s, "ttft_ms": p(&r.ttft_ms), "tpot_ms": p(&r.tpot_ms),
        "kv_block_utilization": r.kv_block_utilization, "preemptions": r.preemptions,
        "prefix_cache_hit_tokens": r.prefix_cache_hit_tokens, "steps": r.steps,
        "speculative": {"proposed": r.drafted_tokens, "accepted": r.accepted_tokens},
    })
}

/// A workload file: one `{"prompt": "…", "max_tokens": N}` per line → (prompt, max_tokens).
pub fn read_jsonl(path: &str) -> Result<Vec<(String, usize)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{path}: cannot read the workload"))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).with_context(|| format!("{path}:{}: not JSON", i + 1))?;
            let prompt = v["prompt"].as_str().with_context(|| format!("{path}:{}: no \"prompt\" string", i + 1))?;
            let max_tokens =
                v["max_tokens"].as_u64().with_context(|| format!("{path}:{}: no \"max_tokens\" number", i + 1))?
                    as usize;
            Ok((prompt.to_string(), max_tokens))
        })
        .collect()
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.workload == "speed" {
        return speed::run(&a.model, &a.speed, a.json);
    }
    if a.workload == "batch" {
        return speed::run_batches(&a.model, &a.speed, a.json);
    }
    // Every request is queued at the start: no waiting-queue limit here.
    let eng = EngineSection { max_waiting: usize::MAX, ..a.engine.apply(EngineSection::default()) };
    let spec = a.spec.apply(Default::default());
    spec.validate()?;
    if eng.max_batch == 0 || a.requests == 0 {
        bail!("--max-batch and --requests must be at least 1");
    }
    let modes = if a.compare { vec![Mode::Inflight, Mode::Static, Mode::StaticCompact] } else { vec![mode(&a.mode)?] };
    let loaded = setup::load_runner_with(a.model.model.as_deref(), &a.model.backend, eng.kv(), &a.model.policy()?)?;
    let max_len = loaded.runner.context_len();
    let reqs = if a.workload == "mixed" {
        let text = loaded.tok.encode(TEXT, false)?;
        bench::mixed_workload(&text, a.requests, a.seed, max_len)
    } else if a.workload == "grounded" {
        super::grounded::workload(&loaded.tok, TEXT, a.requests, a.seed, max_len, &loaded.eos)?
    } else {
        read_jsonl(&a.workload)?
            .into_iter()
            .map(|(p, max_tokens)| {
                Ok(BenchRequest { prompt: loaded.tok.encode(&p, true)?, max_tokens, stop_ids: Vec::new() })
            })
            .collect::<Result<_>>()?
    };
    let path = loaded.path.clone();
    let speculation = turbine_server::speculation::speculation(&spec, &a.model.backend, eng.kv(), &loaded.tok)?;
    let mut core = EngineCore::new(loaded.runner, eng.config());
    // Each mode runs plain, then (with --speculative) speculating.
    let mut runs = vec![None];
    if let Some((cfg, p)) = speculation {
        core = core.with_speculation(cfg, p);
        runs.push(Some(cfg));
    }
    let method = core.speculation();
    let mut reports = Vec::new();
    let mut spec_reports = Vec::new();
    for (m, run_spec) in modes.iter().flat_map(|&m| runs.iter().map(move |&r| (m, r))) {
        core.set_speculation(run_spec);
        let label = match (run_spec, method) {
            (Some(_), Some(name)) => format!("{} +{name}", m.name()),
            _ => m.name().to_string(),
        };
        let t0 = Instant::now();
        let mut last = 0.0;
        let mut progress = |done: usize, total: usize| {
            let now = t0.elapsed().as_secs_f64();
            if now - last >= 0.5 || done == total {
                last = now;
                let width = 30;
                let filled = done * width / total.max(1);
                eprint!(
                    "\r{:<21} [{}{}] {done}/{total} tokens, {:.0} s",
                    label,
                    "#".repeat(filled),
                    " ".repeat(width - filled),
                    now
                );
                let _ = std::io::stderr().flush();
            }
        };
        let r = bench::run(&mut core, &reqs, m, eng.max_batch, &mut progress)?;
        eprintln!();
        if run_spec.is_some() {
            spec_reports.push((label, r));
        } else {
            reports.push((label, r));
        }
    }
    let ratio = |a: &Report, b: &Report| if b.output_tok_s > 0.0 { a.output_tok_s / b.output_tok_s } else { 0.0 };
    let plain: Vec<&Report> = reports.iter().map(|r| &r.1).collect();
    if a.json {
        let mut out = if a.compare {
            let mut obj = serde_json::Map::new();
            for r in &plain {
                obj.insert(r.mode.name().into(), report_json(r));
            }
            obj.insert("inflight_over_static".into(), json!(ratio(plain[0], plain[1])));
            obj.insert("inflight_over_static_compact".into(), json!(ratio(plain[0], plain[2])));
            obj.insert("model".into(), json!(path));
            Value::Object(obj)
        } else {
            report_json(plain[0])
        };
        if let Some(name) = method {
            let with: Vec<Value> = spec_reports
                .iter()
                .zip(&plain)
                .map(|((_, s), p)| {
                    let mut j = report_json(s);
                    j["speedup"] = json!(ratio(s, p));
                    j
                })
                .collect();
            out["speculative"] = json!({"method": name, "runs": with});
        }
        println!("{out}");
        return Ok(());
    }
    println!("model {}  ({} requests, max batch {})", path.display(), reqs.len(), eng.max_batch);
    println!("| mode | output tok/s | total tok/s | wall s | TTFT p50 ms | TPOT p50 ms | KV util | preemptions | drafts accepted |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (label, r) in reports.iter().chain(&spec_reports) {
        let drafts =
            if r.drafted_tokens > 0 { format!("{} / {}", r.accepted_tokens, r.drafted_tokens) } else { "-".into() };
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.3} | {} | {drafts} |",
            r.output_tok_s,
            r.total_tok_s,
            r.wall_s,
            r.ttft_ms.p50,
            r.tpot_ms.p50,
            r.kv_block_utilization,
            r.preemptions
        );
    }
    if a.compare {
        println!(
            "in-flight / static: {:.2}x   in-flight / static-compact: {:.2}x",
            ratio(plain[0], plain[1]),
            ratio(plain[0], plain[2])
        );
    }
    for ((label, s), p) in spec_reports.iter().zip(&plain) {
        println!("{label} / {}: {:.2}x output tok/s", p.mode.name(), ratio(s, p));
    }
    Ok(())
}
