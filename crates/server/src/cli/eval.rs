//! `turbine eval`: what a weight format costs and buys. Against a reference model (by default the
//! same model as the checkpoint stores it, computed in f32) on the same texts: perplexity, mean KL
//! divergence of the next-token distributions, top-1 agreement, bytes of weights in memory and
//! decode speed, per text domain and window length, with the worst domain for each format.
//!
//! `--suite DIR` scores every `*.txt` of a folder as its own domain (bench/eval holds one:
//! prose of three kinds, dialogue, code, numbers); `--file` is one domain per file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use turbine_batcher::eval::{self, EvalRow};
use turbine_batcher::{EngineConfig, EngineCore, Request};
use turbine_models::policy_file::PolicySpec;
use turbine_models::precision::{Format, KvFormat, Policy, Role};
use turbine_server::setup::{self, KvSize};

use super::PrecisionArgs;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A model folder, a .gguf file, or a known name (default: smollm2-135m-instruct).
    #[arg(long, short = 'm')]
    model: Option<String>,
    /// What to evaluate, comma-separated: weight formats (auto, f32, f16, bf16, fp8, fp8-weight,
    /// int8-weight), each optionally followed by policy keys that differ from the flags, as
    /// `FORMAT+KEY=VALUE+…` (`fp8+kv=fp8`, `fp8+outliers=32+rounding=gptq`,
    /// `fp8+keep=down@0;down@-1`, `fp8+calib=FILE`).
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
    /// A folder whose `*.txt` files are the domains of the evaluation, each scored and reported
    /// on its own (bench/eval in this repository).
    #[arg(long, group = "input")]
    suite: Option<PathBuf>,
    /// A UTF-8 text file to score, one domain named after the file; repeatable.
    #[arg(long, group = "input")]
    file: Vec<PathBuf>,
    /// A file holding a JSON array of token ids.
    #[arg(long, group = "input")]
    ids_file: Option<PathBuf>,
    /// Score at most this many tokens of each domain (default: all).
    #[arg(long)]
    limit: Option<usize>,
    /// Window lengths in tokens, comma-separated: every domain is scored in windows of each
    /// (default: the smaller of 2048 and the context).
    #[arg(long, value_delimiter = ',')]
    ctx: Vec<usize>,
    /// Tokens decoded to measure decode speed (0 skips it).
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Kernel backend.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Which projections matter most: for the one format of --dtype, the model with each role
    /// (qkv, o, up, down) and then each layer kept at the checkpoint's precision, the rest in
    /// the format, ranked by how much of the format's KL divergence (with no exceptions at all)
    /// keeping it removes. Loads 5 + layers models at once.
    #[arg(long)]
    sensitivity: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

struct Entry {
    label: String,
    engine: EngineCore,
    weight_bytes: usize,
}

/// One text domain: a name and its tokens.
struct Domain {
    name: String,
    ids: Vec<u32>,
}

/// Every evaluated model's figures on one domain in windows of one length.
struct Cell {
    window: usize,
    domain: String,
    /// One row per model, the reference first.
    rows: Vec<EvalRow>,
}

fn load(model: Option<&str>, backend: &str, policy: &Policy, label: Option<&str>, ctx: usize) -> Result<Entry> {
    let label = label.map_or_else(
        || {
            let mut label = policy.format.name().to_string();
            let summary = policy.summary();
            if !summary.is_empty() {
                label.push_str(&format!(" ({summary})"));
            }
            if policy.kv != KvFormat::F32 {
                label.push_str(&format!(" + {} KV", policy.kv.name()));
            }
            label
        },
        str::to_string,
    );
    eprintln!("turbine eval: loading {} as {label}", model.unwrap_or(turbine_models::catalog::DEFAULT_MODEL));
    let l = setup::load_runner_with(model, backend, KvSize::tokens(ctx), policy)?;
    Ok(Entry { label, engine: EngineCore::new(l.runner, EngineConfig::default()), weight_bytes: l.weight_bytes })
}

/// Greedy decode speed after a short prompt, in tokens/s.
fn decode_speed(core: &mut EngineCore, prompt: &[u32], n: usize) -> Result<f64> {
    let req = Request::greedy(prompt.to_vec(), n)?.with_ignore_eos(true);
    Ok(turbine_batcher::generate(core, req, &mut |_, _| {})?.timings.decode_tok_s())
}

/// One `--dtype` item: `FORMAT` or `FORMAT+KEY=VALUE+…` over the flags' policy. Returns the
/// policy and, for an item with settings, the item as its label.
fn variant(item: &str, flags: &PrecisionArgs) -> Result<(Policy, Option<String>)> {
    let mut parts = item.split('+').map(str::trim);
    let format = parts.next().unwrap_or_default();
    Format::parse(format)?;
    let spec = flags.spec(Some(format))?;
    let settings: Vec<&str> = parts.collect();
    if settings.is_empty() {
        return Ok((spec.policy()?, None));
    }
    let mut table = match toml::Value::try_from(&spec).context("the policy as TOML")? {
        toml::Value::Table(t) => t,
        _ => bail!("the policy is not a table"),
    };
    for s in &settings {
        let Some((key, value)) = s.split_once('=') else {
            bail!("{item:?}: {s:?} is not KEY=VALUE (say fp8+kv=fp8)");
        };
        let (key, v) = if key == "calib" {
            let text =
                std::fs::read_to_string(value).with_context(|| format!("{value}: cannot read the calibration text"))?;
            ("calib_text", toml::Value::String(text))
        } else if key == "keep" {
            let list = value.split(';').filter(|x| !x.is_empty()).map(|x| toml::Value::String(x.into()));
            (key, toml::Value::Array(list.collect()))
        } else if let Ok(i) = value.parse::<i64>() {
            (key, toml::Value::Integer(i))
        } else if let Ok(f) = value.parse::<f64>() {
            (key, toml::Value::Float(f))
        } else if let Ok(b) = value.parse::<bool>() {
            (key, toml::Value::Boolean(b))
        } else {
            (key, toml::Value::String(value.into()))
        };
        table.insert(key.to_string(), v);
    }
    let spec: PolicySpec = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{item:?}: {}", e.message()))?;
    Ok((spec.policy()?, Some(item.to_string())))
}

/// The texts to score, as named domains.
fn domains(a: &EvalArgs, tok: &turbine_models::tokenizer::TextTokenizer) -> Result<Vec<Domain>> {
    let text = |p: &Path| -> Result<Vec<u32>> {
        let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
        Ok(tok.encode(&text, true)?)
    };
    let stem = |p: &Path| p.file_stem().map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into_owned());
    let mut out = Vec::new();
    if let Some(dir) = &a.suite {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot read the suite folder", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("{}: the suite folder holds no .txt file", dir.display());
        }
        for f in files {
            out.push(Domain { name: stem(&f), ids: text(&f)? });
        }
    }
    for f in &a.file {
        out.push(Domain { name: stem(f), ids: text(f)? });
    }
    if let Some(path) = &a.ids_file {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let ids = serde_json::from_str::<Vec<u32>>(&text)
            .with_context(|| format!("{}: expected a JSON array of token ids", path.display()))?;
        out.push(Domain { name: stem(path), ids });
    }
    for d in &mut out {
        if let Some(n) = a.limit {
            d.ids.truncate(n);
        }
    }
    Ok(out)
}

pub fn run(a: EvalArgs) -> Result<()> {
    let items: Vec<&str> = a.dtype.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if items.is_empty() {
        bail!("--dtype names no format");
    }
    if a.suite.is_none() && a.file.is_empty() && a.ids_file.is_none() {
        bail!("give the text: --suite FOLDER, --file TEXT_FILE or --ids-file JSON_ARRAY_FILE");
    }
    if let Some(p) = a.file.iter().chain(a.ids_file.as_ref()).find(|p| !p.is_file()) {
        bail!("{}: no such file", p.display());
    }
    if let Some(&c) = a.ctx.iter().find(|&&c| c < 2) {
        bail!("--ctx: a window needs at least 2 tokens, got {c}");
    }
    let reference_format = Format::parse(&a.reference_dtype)?;
    let ctx_cap = a.ctx.iter().copied().max().unwrap_or(2048).max(2);
    let ref_model = a.reference.as_deref().or(a.model.as_deref());
    // The evaluated policies are checked before the reference loads, so a bad flag fails at once.
    if a.sensitivity && (items.len() != 1 || items[0].contains("keep=")) {
        bail!("--sensitivity studies one format: give one --dtype item, without keep=");
    }
    // Sensitivity ranks every block against the format with no exceptions at all.
    let studied = items.first().copied().unwrap_or_default();
    let base = format!("{studied}+keep=none");
    let items = if a.sensitivity { vec![base.as_str()] } else { items };
    let mut variants: Vec<(Policy, Option<String>)> =
        items.iter().map(|i| variant(i, &a.precision)).collect::<Result<_>>()?;
    let tok = {
        let p = setup::model_path(a.model.as_deref())?;
        turbine_models::load_tokenizer(&p)?
    };
    let domains = domains(&a, &tok)?;
    let reference =
        load(ref_model, &a.backend, &Policy { format: reference_format, ..Policy::default() }, None, ctx_cap)?;
    if a.sensitivity {
        let layers = reference.engine.runner().spec().layers;
        let groups = Role::NAMES.iter().map(|(n, _)| n.to_string()).chain((0..layers).map(|l| format!("layer:{l}")));
        for g in groups {
            let (policy, _) = variant(&format!("{studied}+keep={g}"), &a.precision)?;
            variants.push((policy, Some(format!("keep {g}"))));
        }
    }
    let mut entries = vec![reference];
    for (policy, label) in &variants {
        entries.push(load(a.model.as_deref(), &a.backend, policy, label.as_deref(), ctx_cap)?);
    }
    let context = entries.iter().map(|e| e.engine.max_len()).min().unwrap_or(2);
    let longest = domains.iter().map(|d| d.ids.len()).max().unwrap_or(0);
    let windows = if a.ctx.is_empty() { vec![longest.min(context).min(2048)] } else { a.ctx.clone() };
    let mut cores: Vec<EngineCore> = Vec::new();
    let mut meta = Vec::new();
    for e in entries {
        meta.push((e.label, e.weight_bytes));
        cores.push(e.engine);
    }
    let total: usize = domains.iter().map(|d| d.ids.len()).sum::<usize>() * windows.len();
    let t0 = Instant::now();
    let mut before = 0;
    let mut cells = Vec::new();
    for &window in &windows {
        for d in &domains {
            let rows = eval::compare(&mut cores, &d.ids, window, &mut |done, _| {
                eprint!(
                    "\rturbine eval: {}/{total} tokens ({} in windows of {window}), {} models, {:.0} s   ",
                    before + done,
                    d.name,
                    meta.len(),
                    t0.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
            })
            .with_context(|| format!("domain {}, windows of {window}", d.name))?;
            before += d.ids.len();
            cells.push(Cell { window, domain: d.name.clone(), rows });
        }
    }
    eprintln!();
    let mut speeds = Vec::new();
    for core in cores.iter_mut() {
        let ids = &domains[0].ids;
        let prompt = &ids[..ids.len().min(16)];
        speeds.push(if a.decode_tokens > 0 && !a.sensitivity {
            Some(decode_speed(core, prompt, a.decode_tokens)?)
        } else {
            None
        });
    }
    let report = Report { meta: &meta, cells: &cells, windows: &windows, domains: &domains };
    if a.json {
        println!("{}", report.json(&a, &speeds));
    } else {
        report.print(&a, &speeds);
    }
    Ok(())
}

/// Δppl in percent and its 95% confidence interval in points.
fn change(r: &EvalRow, base: &EvalRow) -> (f64, f64) {
    (100.0 * (r.ppl / base.ppl - 1.0), 100.0 * 1.96 * r.dnll_se * r.ppl / base.ppl)
}

struct Report<'a> {
    meta: &'a [(String, usize)],
    cells: &'a [Cell],
    windows: &'a [usize],
    domains: &'a [Domain],
}

impl Report<'_> {
    /// Model `m`'s rows of every domain in windows of `w` (every window: `None`), pooled.
    fn pooled(&self, w: Option<usize>, m: usize) -> EvalRow {
        let rows: Vec<EvalRow> =
            self.cells.iter().filter(|c| w.is_none_or(|w| c.window == w)).map(|c| c.rows[m].clone()).collect();
        EvalRow::pool(&rows)
    }

    /// Model `m`'s largest Δppl over every domain and window: (Δ, CI, cell).
    fn worst(&self, m: usize) -> (f64, f64, &Cell) {
        self.cells
            .iter()
            .map(|c| {
                let (d, ci) = change(&c.rows[m], &c.rows[0]);
                (d, ci, c)
            })
            .fold(None, |best: Option<(f64, f64, &Cell)>, x| match best {
                Some(b) if b.0 >= x.0 => Some(b),
                _ => Some(x),
            })
            .expect("at least one domain and window")
    }

    /// Model `m`'s mean KL over every domain and window.
    fn kl(&self, m: usize) -> f64 {
        self.pooled(None, m).mean_kl
    }

    /// `--sensitivity`: the kept groups (models 2…) by mean KL, lowest first, with the share of
    /// the format's KL (model 1) that keeping each removes.
    fn ranking(&self) -> Vec<(usize, f64, f64)> {
        let base = self.kl(1);
        let mut r: Vec<(usize, f64, f64)> = (2..self.meta.len())
            .map(|m| {
                let kl = self.kl(m);
                (m, kl, if base > 0.0 { 1.0 - kl / base } else { 0.0 })
            })
            .collect();
        r.sort_by(|x, y| x.1.total_cmp(&y.1));
        r
    }

    fn json(&self, a: &EvalArgs, speeds: &[Option<f64>]) -> Value {
        let row = |r: &EvalRow, base: &EvalRow| {
            let (d, ci) = change(r, base);
            json!({"tokens": r.tokens, "ppl": r.ppl, "ppl_change_pct": d, "ci95_pct": ci,
                   "ppl_change_se_pct": 100.0 * r.dnll_se, "mean_nll": r.mean_nll, "mean_kl": r.mean_kl,
                   "max_kl": r.max_kl, "top1_agreement": r.top1_agreement})
        };
        let formats: Vec<Value> = self
            .meta
            .iter()
            .enumerate()
            .map(|(m, (label, bytes))| {
                let cells: Vec<Value> = self
                    .cells
                    .iter()
                    .map(|c| json!({"window": c.window, "domain": c.domain, "result": row(&c.rows[m], &c.rows[0])}))
                    .collect();
                let pooled: Vec<Value> = self
                    .windows
                    .iter()
                    .map(|&w| json!({"window": w, "result": row(&self.pooled(Some(w), m), &self.pooled(Some(w), 0))}))
                    .collect();
                let (d, ci, c) = self.worst(m);
                json!({"format": label, "reference": m == 0, "weight_bytes": bytes, "decode_tok_s": speeds[m],
                       "cells": cells, "pooled": pooled,
                       "worst": {"ppl_change_pct": d, "ci95_pct": ci, "domain": c.domain, "window": c.window}})
            })
            .collect();
        let domains: Vec<Value> = self.domains.iter().map(|d| json!({"name": d.name, "tokens": d.ids.len()})).collect();
        let mut out = json!({"model": a.model.clone().unwrap_or_else(|| turbine_models::catalog::DEFAULT_MODEL.into()),
               "windows": self.windows, "domains": domains, "formats": formats});
        if a.sensitivity {
            let rank: Vec<Value> = self
                .ranking()
                .into_iter()
                .map(|(m, kl, removed)| json!({"kept": self.meta[m].0.trim_start_matches("keep "), "mean_kl": kl, "kl_removed": removed}))
                .collect();
            out["sensitivity"] = json!({"format": self.meta[1].0, "mean_kl": self.kl(1), "groups": rank});
        }
        out
    }

    fn print(&self, a: &EvalArgs, speeds: &[Option<f64>]) {
        let tokens: usize = self.domains.iter().map(|d| d.ids.len()).sum();
        println!(
            "{} domains, {tokens} tokens, windows of {}; reference: {} ({}). Δppl against the reference ± its 95% confidence interval.",
            self.domains.len(),
            self.windows.iter().map(usize::to_string).collect::<Vec<_>>().join(" and "),
            a.reference.as_deref().or(a.model.as_deref()).unwrap_or(turbine_models::catalog::DEFAULT_MODEL),
            self.meta[0].0
        );
        let models = 1..self.meta.len();
        // Sensitivity runs hold dozens of models: their ranking replaces the domain tables.
        for &w in self.windows.iter().filter(|_| !a.sensitivity) {
            println!("\nWindows of {w} tokens:\n");
            let head: Vec<String> = models.clone().map(|m| self.meta[m].0.clone()).collect();
            println!("| domain | tokens | ppl | {} |", head.join(" | "));
            println!("|---|---:|---:|{}", "---:|".repeat(head.len()));
            let line = |name: &str, rows: Vec<EvalRow>| {
                let cols: Vec<String> = models
                    .clone()
                    .map(|m| {
                        let (d, ci) = change(&rows[m], &rows[0]);
                        format!("{d:+.2}% ± {ci:.2}")
                    })
                    .collect();
                println!("| {name} | {} | {:.3} | {} |", rows[0].tokens, rows[0].ppl, cols.join(" | "));
            };
            for c in self.cells.iter().filter(|c| c.window == w) {
                line(&c.domain, c.rows.clone());
            }
            if self.domains.len() > 1 {
                line("all (pooled)", (0..self.meta.len()).map(|m| self.pooled(Some(w), m)).collect());
            }
        }
        println!("\nEach format over every domain and window:\n");
        println!(
            "| format | weights MB | worst Δppl ± 95% CI (domain, window) | mean KL | top-1 agree | decode tok/s |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for (m, (label, bytes)) in self.meta.iter().enumerate() {
            let p = self.pooled(None, m);
            let speed = speeds[m].map_or("-".to_string(), |s| format!("{s:.1}"));
            let worst = if m == 0 {
                "(reference)".to_string()
            } else {
                let (d, ci, c) = self.worst(m);
                format!("{d:+.2}% ± {ci:.2} ({}, {})", c.domain, c.window)
            };
            println!(
                "| {label} | {:.1} | {worst} | {:.5} | {:.2}% | {speed} |",
                *bytes as f64 / 1e6,
                p.mean_kl,
                100.0 * p.top1_agreement
            );
        }
        if a.sensitivity {
            println!(
                "\nSensitivity of {} (mean KL {:.5}): each group kept at the checkpoint's precision, the rest in the format:\n",
                self.meta[1].0,
                self.kl(1)
            );
            println!("| kept | mean KL | share of the KL removed | worst Δppl |");
            println!("|---|---:|---:|---:|");
            for (m, kl, removed) in self.ranking() {
                let (d, ci, c) = self.worst(m);
                println!(
                    "| {} | {kl:.5} | {:.1}% | {d:+.2}% ± {ci:.2} ({}) |",
                    self.meta[m].0.trim_start_matches("keep "),
                    100.0 * removed,
                    c.domain
                );
            }
        }
    }
}
