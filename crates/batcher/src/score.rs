//! Log-likelihood of a token sequence and its perplexity, scored in windows.

use turbine_core::runner::Logits;
use turbine_core::sampling::log_sum_exp;

use crate::scheduler::{EngineCore, ScoreSeq};
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

/// The checks every scoring run makes: enough tokens, a window between 2 and `max` tokens, ids
/// inside the vocabulary.
pub(crate) fn check(ids: &[u32], ctx: usize, max: usize, vocab: usize) -> Result<()> {
    if ids.len() < 2 {
        return Err(EngineError::Invalid(format!("need at least 2 tokens to score, got {}", ids.len())));
    }
    if ctx < 2 || ctx > max {
        return Err(EngineError::Invalid(format!("--ctx must be between 2 and the context length {max}, got {ctx}")));
    }
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(EngineError::Invalid(format!("token id {bad} is outside the vocabulary (0..{vocab})")));
    }
    Ok(())
}

/// Runs `f` on a scored sequence of `len` tokens, giving its blocks back whatever happens.
pub(crate) fn with_seq<T>(
    core: &mut EngineCore,
    len: usize,
    f: impl FnOnce(&mut EngineCore, &mut ScoreSeq) -> Result<T>,
) -> Result<T> {
    let mut seq = core.begin_score(len)?;
    let out = f(core, &mut seq);
    core.end_score(seq);
    out
}

/// Scores `ids` in consecutive windows of `ctx` tokens (the last may be shorter) on an idle
/// engine; within a window each token is predicted from the ones before it in that window.
pub fn score(core: &mut EngineCore, ids: &[u32], ctx: usize) -> Result<Score> {
    let vocab = core.runner().spec().vocab;
    check(ids, ctx, core.max_len(), vocab)?;
    // All-row logits are [chunk, vocab]: keep a chunk's logits under ~64 M values.
    let chunk = core.step_tokens().min((1 << 26) / vocab.max(1)).max(1);
    let mut nll = Vec::with_capacity(ids.len());
    for window in ids.chunks(ctx) {
        if window.len() < 2 {
            continue;
        }
        with_seq(core, window.len(), |core, seq| {
            for (c, part) in window.chunks(chunk).enumerate() {
                let start = c * chunk;
                let logits = core.score_step(seq, part, Logits::All)?;
                for (j, row) in logits.chunks_exact(vocab).enumerate() {
                    if let Some(&next) = window.get(start + j + 1) {
                        nll.push(log_sum_exp(row) - row[next as usize] as f64);
                    }
                }
            }
            Ok(())
        })?;
    }
    let mean = nll.iter().sum::<f64>() / nll.len() as f64;
    Ok(Score { tokens: nll.len(), token_nll: nll, mean_nll: mean, ppl: mean.exp() })
}
