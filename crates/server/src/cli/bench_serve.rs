//! `turbine bench-serve`: load an OpenAI-compatible server with the `mixed` workload (or a
//! .jsonl file) at a Poisson rate and report latency percentiles and throughput.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;
use turbine_batcher::bench;
use turbine_server::loadgen::{self, Dist, LoadOptions, LoadReport, LoadRequest};

/// English text the mixed workload cuts its prompts from (the same as `turbine bench`).
const TEXT: &str = include_str!("../../data/bench-text.txt");

#[derive(Debug, Args)]
pub struct BenchServeArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The `model` to ask for (default: the first one the server lists).
    #[arg(long)]
    served_model: Option<String>,
    /// The tokenizer that cuts the mixed workload's prompts: a model folder, .gguf file or known
    /// name (default: smollm2-135m-instruct).
    #[arg(long)]
    tokenizer: Option<String>,
    /// `mixed` or a .jsonl file of `{"prompt": …, "max_tokens": …}` lines.
    #[arg(long, default_value = "mixed")]
    workload: String,
    /// Requests to send.
    #[arg(long, default_value_t = 64)]
    requests: usize,
    /// Requests per second (Poisson arrivals), or `inf` to send all at once.
    #[arg(long, default_value = "inf")]
    rate: String,
    /// Seed of the workload and of the arrival times.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Longest prompt + output of the mixed workload (default: the server's max_model_len, or
    /// 2048 if it does not say).
    #[arg(long)]
    max_len: Option<usize>,
    /// Let generation stop at EOS (by default EOS is ignored so outputs have the workload's
    /// lengths).
    #[arg(long)]
    stop_at_eos: bool,
    /// API key (also read from `TURBINE_API_KEY`).
    #[arg(long)]
    api_key: Option<String>,
    /// Seconds to wait for one request.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn workload(a: &BenchServeArgs, max_len: usize) -> Result<Vec<LoadRequest>> {
    if a.workload != "mixed" {
        let reqs = super::bench::read_jsonl(&a.workload)?;
        return Ok(reqs.into_iter().map(|(prompt, max_tokens)| LoadRequest { prompt, max_tokens }).collect());
    }
    let path = turbine_server::setup::model_path(a.tokenizer.as_deref())?;
    let tok = turbine_models::load_tokenizer(&path)?;
    let ids = tok.encode(TEXT, false)?;
    bench::mixed_workload(&ids, a.requests, a.seed, max_len)
        .into_iter()
        .map(|r| Ok(LoadRequest { prompt: tok.decode(&r.prompt, true)?, max_tokens: r.max_tokens }))
        .collect()
}

pub fn run(a: BenchServeArgs) -> Result<()> {
    if a.requests == 0 {
        bail!("--requests must be at least 1");
    }
    let rate = match a.rate.as_str() {
        "inf" => None,
        r => match r.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 => Some(x),
            _ => bail!("--rate {r:?} is not a positive number of requests per second (or inf)"),
        },
    };
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let url = loadgen::base_url(&a.url)?;
    let key = a.api_key.clone().or_else(|| std::env::var("TURBINE_API_KEY").ok().filter(|k| !k.is_empty()));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let report = rt.block_on(async {
        let (model, server_len) = match &a.served_model {
            Some(m) => (m.clone(), None),
            None => loadgen::first_model(&url, key.as_deref()).await?,
        };
        let mut reqs = workload(&a, a.max_len.or(server_len).unwrap_or(2048))?;
        reqs.truncate(a.requests);
        if reqs.is_empty() {
            bail!("the workload has no requests");
        }
        let opts = LoadOptions {
            url: url.clone(),
            model,
            rate,
            seed: a.seed,
            api_key: key,
            ignore_eos: !a.stop_at_eos,
            timeout: Duration::from_secs_f64(a.timeout),
        };
        let t0 = Instant::now();
        let mut progress = |done: usize, total: usize, errors: usize| {
            let width = 30;
            let filled = done * width / total.max(1);
            eprint!(
                "\rbench-serve [{}{}] {done}/{total} requests, {errors} errors, {:.0} s",
                "#".repeat(filled),
                " ".repeat(width - filled),
                t0.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        };
        let r = loadgen::run(&opts, &reqs, &mut progress).await;
        eprintln!();
        r
    })?;
    if a.json {
        let mut v = report.json();
        v["url"] = url.into();
        v["rate"] = rate.map_or(Value::from("inf"), Value::from);
        println!("{v}");
    } else {
        print_table(&url, &a.rate, &report);
    }
    Ok(())
}

fn print_table(url: &str, rate: &str, r: &LoadReport) {
    println!("{url}: {} requests at rate {rate}/s, {:.1} s", r.requests, r.wall_s);
    println!(
        "completed {}  errors {}  output {:.1} tok/s  requests {:.2}/s  prompt tokens {}  output tokens {}",
        r.completed, r.errors, r.output_tok_s, r.request_rate, r.prompt_tokens, r.output_tokens
    );
    println!("| ms | mean | p50 | p90 | p99 |");
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, d: &Dist| {
        println!("| {name} | {:.1} | {:.1} | {:.1} | {:.1} |", d.mean, d.p.p50, d.p.p90, d.p.p99);
    };
    row("TTFT", &r.ttft_ms);
    row("TPOT", &r.tpot_ms);
    row("ITL", &r.itl_ms);
    row("E2E", &r.e2e_ms);
    for e in &r.error_samples {
        println!("error: {e}");
    }
}
