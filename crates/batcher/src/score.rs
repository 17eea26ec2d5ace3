//! Log-likelihood of a token sequence and its perplexity, scored in windows.

use turbine_core::runner::{Logits, SeqStep};
use turbine_core::sampling::log_sum_exp;

use crate::generate::Generator;
use crate::{EngineError, Result};

/// Scoring result.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// Tokens scored (every token but the first of each window).
    pub tokens: usize,
    /// Negative log-likelihood of each scored token, in order.
    pub token_nll: Vec<f64>,
    /// Mean NLL.
    pub mean_nll: f64,
    /// `exp(mean_nll)`.
    pub ppl: f64,
}

/// Scores `ids` in consecutive windows of `ctx` tokens (the last may be shorter); within a window
/// each token is predicted from the ones before it in that window.
pub fn score(g: &mut Generator, ids: &[u32], ctx: usize) -> Result<Score> {
    if ids.len() < 2 {
        return Err(EngineError::Invalid(format!("need at least 2 tokens to score, got {}", ids.len())));
    }
    let max = g.context_len();
    if ctx < 2 || ctx > max {
        return Err(EngineError::Invalid(format!("--ctx must be between 2 and the context length {max}, got {ctx}")));
    }
    let vocab = g.runner().spec().vocab;
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(EngineError::Invalid(format!("token id {bad} is outside the vocabulary (0..{vocab})")));
    }
    // All-row logits are [chunk, vocab]: keep a chunk's logits under ~64 M values.
    let chunk = g.prefill_chunk.min((1 << 26) / vocab.max(1)).max(1);
    let mut nll = Vec::with_capacity(ids.len());
    for window in ids.chunks(ctx) {
        if window.len() < 2 {
            continue;
        }
        let mut blocks = g.pool().sequence();
        blocks.reserve(window.len())?;
        let mut start = 0;
        while start < window.len() {
            let end = (start + chunk).min(window.len());
            let step = SeqStep { tokens: &window[start..end], start, blocks: blocks.ids(), logits: Logits::All };
            g.runner().step(&[step])?;
            let logits = g.runner().logits()?;
            for (j, row) in logits.chunks_exact(vocab).enumerate() {
                if let Some(&next) = window.get(start + j + 1) {
                    nll.push(log_sum_exp(row) - row[next as usize] as f64);
                }
            }
            start = end;
        }
    }
    let mean = nll.iter().sum::<f64>() / nll.len() as f64;
    Ok(Score { tokens: nll.len(), token_nll: nll, mean_nll: mean, ppl: mean.exp() })
}
