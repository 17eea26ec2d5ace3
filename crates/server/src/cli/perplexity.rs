//! `turbine perplexity`.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use turbine_server::setup;

use super::{parse_ids, ModelArgs};

#[derive(Debug, Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A UTF-8 text file to score.
    #[arg(long, group = "input")]
    file: Option<std::path::PathBuf>,
    /// Token ids to score, comma-separated.
    #[arg(long, group = "input")]
    ids: Option<String>,
    /// A file holding a JSON array of token ids.
    #[arg(long, group = "input")]
    ids_file: Option<std::path::PathBuf>,
    /// Window length in tokens (default: everything, when it fits the context).
    #[arg(long)]
    ctx: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(a: PerplexityArgs) -> Result<()> {
    if a.file.is_none() && a.ids.is_none() && a.ids_file.is_none() {
        bail!("give the input: --file TEXT_FILE, --ids 1,2,3 or --ids-file JSON_ARRAY_FILE");
    }
    if let Some(f) = a.file.as_ref().or(a.ids_file.as_ref()) {
        if !f.is_file() {
            bail!("{}: no such file", f.display());
        }
    }
    let mut s = setup::load(a.model.model.as_deref(), &a.model.backend, a.model.kv(), &a.model.policy()?)?;
    let ids = if let Some(f) = &a.file {
        let text = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
        s.tok.encode(&text, true)?
    } else if let Some(ids) = &a.ids {
        parse_ids(ids).context("--ids")?
    } else {
        let f = a.ids_file.as_ref().expect("one input is given");
        let text = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
        serde_json::from_str::<Vec<u32>>(&text)
            .with_context(|| format!("{}: expected a JSON array of token ids", f.display()))?
    };
    let ctx = a.ctx.unwrap_or_else(|| ids.len().min(s.engine.max_len()));
    let score = turbine_batcher::score(&mut s.engine, &ids, ctx)?;
    if a.json {
        println!("{}", json!({"tokens": score.tokens, "mean_nll": score.mean_nll, "ppl": score.ppl}));
    } else {
        println!(
            "perplexity {:.4} (mean NLL {:.5}) over {} tokens, windows of {ctx}",
            score.ppl, score.mean_nll, score.tokens
        );
    }
    Ok(())
}
