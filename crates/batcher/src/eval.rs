//! Quality of a model against a reference on the same tokens: perplexity, the mean KL divergence
//! of the next-token distributions and how often the most likely token agrees (as llama.cpp's
//! perplexity tool reports for its quantisations).
//!
//! Every model scores the same windows in lockstep, chunk by chunk, so the reference's
//! distributions are never all held at once.

use turbine_core::runner::Logits;
use turbine_core::sampling::log_sum_exp;

use crate::scheduler::{EngineCore, ScoreSeq};
use crate::score::check;
use crate::{EngineError, Result};

/// One model's figures against the reference (the reference's own row has KL 0 and agreement 1).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalRow {
    /// Tokens scored.
    pub tokens: usize,
    /// Mean negative log-likelihood.
    pub mean_nll: f64,
    /// Perplexity.
    pub ppl: f64,
    /// Mean KL(reference ‖ model) over the scored positions, in nats.
    pub mean_kl: f64,
    /// Largest KL at one position.
    pub max_kl: f64,
    /// Standard error of the mean per-token difference of negative log-likelihood from the
    /// reference's (0 for the reference): `ln(ppl / ppl_ref)` is known to about this much.
    pub dnll_se: f64,
    /// Fraction of positions whose most likely token is the reference's.
    pub top1_agreement: f64,
}

#[derive(Default)]
struct Acc {
    nll: f64,
    kl: f64,
    max_kl: f64,
    /// Σ² of the per-token NLL difference from the reference (its Σ is `nll − nll_ref`).
    dnll2: f64,
    agree: usize,
    n: usize,
}

/// Log-softmax of a row, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let lse = log_sum_exp(row);
    row.iter().map(|&v| f64::from(v) - lse).collect()
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

/// Scores `ids` with every engine in consecutive windows of `ctx` tokens; `cores[0]` is the
/// reference. `progress` sees (tokens done, tokens in all).
pub fn compare(
    cores: &mut [EngineCore],
    ids: &[u32],
    ctx: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<EvalRow>> {
    let Some(first) = cores.first() else {
        return Err(EngineError::Invalid("no model to evaluate".into()));
    };
    let vocab = first.runner().spec().vocab;
    if let Some(c) = cores.iter().find(|c| c.runner().spec().vocab != vocab) {
        return Err(EngineError::Invalid(format!(
            "the models' vocabularies differ ({} and {vocab} tokens): they cannot be compared",
            c.runner().spec().vocab
        )));
    }
    let max = cores.iter().map(EngineCore::max_len).min().unwrap_or(0);
    check(ids, ctx, max, vocab)?;
    let chunk = cores.iter().map(EngineCore::step_tokens).min().unwrap_or(1).min((1 << 24) / vocab.max(1)).max(1);
    let mut acc: Vec<Acc> = cores.iter().map(|_| Acc::default()).collect();
    let mut done = 0;
    for window in ids.chunks(ctx) {
        if window.len() < 2 {
            continue;
        }
        let mut seqs = Vec::with_capacity(cores.len());
        for c in cores.iter_mut() {
            match c.begin_score(window.len()) {
                Ok(s) => seqs.push(s),
                Err(e) => {
                    for (c, s) in cores.iter_mut().zip(seqs) {
                        c.end_score(s);
                    }
                    return Err(e);
                }
            }
        }
        let res = compare_window(cores, &mut seqs, window, chunk, &mut acc, &mut |rows| {
            done += rows;
            progress(done, ids.len());
        });
        for (c, s) in cores.iter_mut().zip(seqs) {
            c.end_score(s);
        }
        res?;
    }
    Ok(acc
        .iter()
        .map(|a| {
            let n = a.n.max(1) as f64;
            let mean_diff = (a.nll - acc[0].nll) / n;
            let var = (a.dnll2 / n - mean_diff.powi(2)).max(0.0);
            EvalRow {
                dnll_se: (var / (n - 1.0).max(1.0)).sqrt(),
                tokens: a.n,
                mean_nll: a.nll / n,
                ppl: (a.nll / n).exp(),
                mean_kl: a.kl / n,
                max_kl: a.max_kl,
                top1_agreement: a.agree as f64 / n,
            }
        })
        .collect())
}

/// Scores one window, chunk by chunk, every model in lockstep: the reference first, its
/// distributions kept for the chunk only.
fn compare_window(
    cores: &mut [EngineCore],
    seqs: &mut [ScoreSeq],
    window: &[u32],
    chunk: usize,
    acc: &mut [Acc],
    progress: &mut dyn FnMut(usize),
) -> Result<()> {
    let vocab = cores[0].runner().spec().vocab;
    for (c, part) in window.chunks(chunk).enumerate() {
        let start = c * chunk;
        let mut reference: Vec<(Vec<f64>, usize, f64)> = Vec::with_capacity(part.len());
        for (gi, (core, seq)) in cores.iter_mut().zip(seqs.iter_mut()).enumerate() {
            let logits = core.score_step(seq, part, Logits::All)?;
            for (j, row) in logits.chunks_exact(vocab).enumerate() {
                let Some(&next) = window.get(start + j + 1) else { continue };
                let lp = log_softmax(row);
                let a = &mut acc[gi];
                let nll = -lp[next as usize];
                a.nll += nll;
                a.n += 1;
                let top = argmax(row);
                if gi == 0 {
                    a.agree += 1;
                    reference.push((lp, top, nll));
                } else {
                    let (p, ref_top, ref_nll) = &reference[j];
                    a.dnll2 += (nll - ref_nll).powi(2);
                    let kl: f64 = p.iter().zip(&lp).map(|(&lp_ref, &lq)| lp_ref.exp() * (lp_ref - lq)).sum();
                    a.kl += kl;
                    a.max_kl = a.max_kl.max(kl);
                    a.agree += usize::from(top == *ref_top);
                }
            }
        }
        progress(part.len());
    }
    Ok(())
}

impl EvalRow {
    /// The figures of several disjoint texts scored separately, pooled as one (every token weighs
    /// the same; the texts are independent samples, so the standard error of the pooled mean
    /// difference is `√(Σ nᵢ² seᵢ²) / N`).
    pub fn pool(rows: &[EvalRow]) -> EvalRow {
        let n: usize = rows.iter().map(|r| r.tokens).sum();
        if n == 0 {
            return EvalRow::default();
        }
        let w = |f: fn(&EvalRow) -> f64| rows.iter().map(|r| r.tokens as f64 * f(r)).sum::<f64>() / n as f64;
        let mean_nll = w(|r| r.mean_nll);
        let var: f64 = rows.iter().map(|r| (r.tokens as f64 * r.dnll_se).powi(2)).sum();
        EvalRow {
            tokens: n,
            mean_nll,
            ppl: mean_nll.exp(),
            mean_kl: w(|r| r.mean_kl),
            max_kl: rows.iter().map(|r| r.max_kl).fold(0.0, f64::max),
            dnll_se: var.sqrt() / n as f64,
            top1_agreement: w(|r| r.top1_agreement),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EvalRow;

    #[test]
    fn pooling_weighs_every_token_the_same() {
        let a = EvalRow {
            tokens: 100,
            mean_nll: 2.0,
            mean_kl: 0.01,
            max_kl: 0.5,
            dnll_se: 0.02,
            top1_agreement: 0.9,
            ..EvalRow::default()
        };
        let b = EvalRow {
            tokens: 300,
            mean_nll: 4.0,
            mean_kl: 0.03,
            max_kl: 0.2,
            dnll_se: 0.01,
            top1_agreement: 0.7,
            ..EvalRow::default()
        };
        let p = EvalRow::pool(&[a, b]);
        assert_eq!(p.tokens, 400);
        assert!((p.mean_nll - 3.5).abs() < 1e-12);
        assert!((p.ppl - 3.5f64.exp()).abs() < 1e-9);
        assert!((p.mean_kl - 0.025).abs() < 1e-12);
        assert_eq!(p.max_kl, 0.5);
        assert!((p.top1_agreement - 0.75).abs() < 1e-12);
        // √(100² · 0.02² + 300² · 0.01²) / 400 = √(4 + 9) / 400.
        assert!((p.dnll_se - 13f64.sqrt() / 400.0).abs() < 1e-12);
        assert_eq!(EvalRow::pool(&[]), EvalRow::default());
    }
}
