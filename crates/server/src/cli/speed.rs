//! `turbine bench --workload speed`: one request's prefill and decode speed, and decode speed as
//! the context grows.

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use turbine_batcher::Request;
use turbine_core::sampling::SamplingParams;
use turbine_server::setup;

use super::{parse_ids, ModelArgs};

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
}

pub fn run(model: &ModelArgs, a: &SpeedArgs, json: bool) -> Result<()> {
    let depths: Vec<usize> = parse_ids(&a.depths)?.into_iter().map(|d| d as usize).collect();
    if a.gen_tokens < 2 || a.prompt_tokens == 0 || a.reps == 0 {
        bail!("--gen-tokens must be at least 2, --prompt-tokens and --reps at least 1");
    }
    let mut s = setup::load(model.model.as_deref(), &model.backend, model.kv()?, &model.policy()?)?;
    // Deterministic synthetic text: ordinary English, repeated to length.
    let base = s.tok.encode(
        "The engine reads the weights once per step, so a batch of requests costs little more than one. ",
        false,
    )?;
    let tokens = |n: usize| -> Vec<u32> { base.iter().copied().cycle().take(n).collect() };
    let greedy = SamplingParams { temperature: 0.0, ..Default::default() };
    let mut measure = |prompt: Vec<u32>, gen: usize| -> Result<(f64, f64)> {
        let req = Request {
            prompt,
            params: greedy.clone(),
            max_tokens: gen,
            ignore_eos: true,
            stop_ids: vec![],
            stop: vec![],
        };
        let (mut pf, mut dc) = (0.0f64, 0.0f64);
        for _ in 0..a.reps {
            let out = s.gen.generate(&req, &mut |_| {})?;
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
    if json {
        let r: Vec<_> = rows.iter().map(|(d, t)| json!({"context": d, "decode_tok_s": t})).collect();
        println!(
            "{}",
            json!({"model": s.path, "backend": model.backend, "prefill_tokens": a.prompt_tokens, "prefill_tok_s": prefill, "decode": r})
        );
    } else {
        println!("model    {}", s.path.display());
        println!("backend  {}", model.backend);
        println!("prefill  {prefill:>8.1} tok/s  ({} prompt tokens)", a.prompt_tokens);
        println!("| context | decode tok/s |");
        println!("|--------:|-------------:|");
        for (d, t) in rows {
            println!("| {d:>7} | {t:>12.1} |");
        }
        eprintln!("turbine bench: done in {:.1} s", t0.elapsed().as_secs_f64());
    }
    Ok(())
}
