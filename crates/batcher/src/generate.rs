//! One request from prompt to finish: validation, chunked prefill, decode steps, stop handling.

use std::time::Instant;

use turbine_core::runner::{Logits, ModelRunner, SeqStep};
use turbine_core::sampling::{Sampled, SeqSampler};

use crate::blocks::BlockPool;
use crate::request::Request;
use crate::{EngineError, Result};

/// A generated token (id, log-probability, top alternatives).
pub type Generated = Sampled;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` or the context length was reached.
    Length,
    /// A stop id was generated.
    Stop,
    /// The request was cancelled.
    Cancelled,
    /// The model failed for this request (its logits were not finite); the event says why.
    Error,
}

impl FinishReason {
    /// `"length"`, `"stop"`, `"cancelled"` or `"error"`, as the OpenAI API spells reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
        }
    }
}

/// Where the time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Prompt processing, up to and including the first sampled token.
    pub prefill_ms: f64,
    /// Every later step.
    pub decode_ms: f64,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens produced by decode steps (all generated tokens but the first).
    pub decode_tokens: usize,
}

impl Timings {
    /// Prompt tokens per second.
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_ms)
    }

    /// Decode tokens per second.
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.decode_tokens, self.decode_ms)
    }
}

fn rate(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// The result of a request.
#[derive(Debug, Clone)]
pub struct GenOutput {
    /// Generated tokens, a stop token included.
    pub tokens: Vec<Generated>,
    /// Why it ended.
    pub finish: FinishReason,
    /// Timings.
    pub timings: Timings,
}

/// Runs requests one at a time on a model runner.
pub struct Generator {
    runner: Box<dyn ModelRunner>,
    pool: BlockPool,
    /// Prompt tokens per prefill step.
    pub prefill_chunk: usize,
}

impl Generator {
    /// Wraps a runner; the block pool mirrors its KV cache.
    pub fn new(runner: Box<dyn ModelRunner>) -> Self {
        let c = runner.cache();
        Generator { runner, pool: BlockPool::new(c.num_blocks, c.block_size), prefill_chunk: 512 }
    }

    /// The runner.
    pub fn runner(&mut self) -> &mut dyn ModelRunner {
        self.runner.as_mut()
    }

    /// The block pool.
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Longest sequence (prompt + generated) this generator can hold.
    pub fn context_len(&self) -> usize {
        self.runner.spec().max_positions.min(self.pool.capacity_tokens())
    }

    /// Checks a request; the error names the offending field.
    pub fn validate(&self, req: &Request) -> Result<()> {
        let ctx = self.context_len();
        let vocab = self.runner.spec().vocab;
        if req.prompt.is_empty() {
            return Err(EngineError::Invalid("the prompt is empty".into()));
        }
        if req.prompt.len() >= ctx {
            return Err(EngineError::Invalid(format!(
                "the prompt has {} tokens but the context holds {ctx} (prompt and at least one new token)",
                req.prompt.len()
            )));
        }
        if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::Invalid(format!("prompt token id {bad} is outside the vocabulary (0..{vocab})")));
        }
        if req.max_tokens == 0 {
            return Err(EngineError::Invalid("max-tokens must be at least 1".into()));
        }
        if !req.stop.is_empty() {
            return Err(EngineError::Invalid("stop strings need the engine (EngineCore with a detokenizer)".into()));
        }
        req.params.validate().map_err(|e| EngineError::Invalid(e.to_string()))
    }

    /// Generates until a stop id, `max_tokens` or the end of the context; `on_token` sees each
    /// token as soon as it is sampled.
    pub fn generate(&mut self, req: &Request, on_token: &mut dyn FnMut(&Generated)) -> Result<GenOutput> {
        self.validate(req)?;
        let ctx = self.context_len();
        let mut sampler = SeqSampler::new(req.params.clone());
        sampler.observe_prompt(&req.prompt);
        let mut blocks = self.pool.sequence();
        let mut timings = Timings { prompt_tokens: req.prompt.len(), ..Timings::default() };
        let t0 = Instant::now();
        let n = req.prompt.len();
        let mut start = 0;
        while start < n {
            let end = (start + self.prefill_chunk.max(1)).min(n);
            blocks.reserve(end)?;
            let logits = if end == n { Logits::Last } else { Logits::None };
            self.runner.step(&[SeqStep { tokens: &req.prompt[start..end], start, blocks: blocks.ids(), logits }])?;
            start = end;
        }
        let mut tok = finite(self.runner.sample(&mut [&mut sampler])?.remove(0), 0)?;
        timings.prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let mut out = Vec::with_capacity(req.max_tokens.min(ctx - n));
        let finish = loop {
            on_token(&tok);
            let id = tok.id;
            out.push(tok);
            if !req.ignore_eos && req.stop_ids.contains(&id) {
                break FinishReason::Stop;
            }
            let pos = n + out.len() - 1;
            if out.len() >= req.max_tokens || pos + 1 >= ctx {
                break FinishReason::Length;
            }
            blocks.reserve(pos + 1)?;
            self.runner.step(&[SeqStep { tokens: &[id], start: pos, blocks: blocks.ids(), logits: Logits::Last }])?;
            tok = finite(self.runner.sample(&mut [&mut sampler])?.remove(0), out.len())?;
        };
        timings.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
        timings.decode_tokens = out.len() - 1;
        Ok(GenOutput { tokens: out, finish, timings })
    }
}

/// The token, or the error of a step whose logits were not finite (a NaN or an infinity makes
/// the log-probability of every token NaN; see [`non_finite`]).
fn finite(tok: Generated, index: usize) -> Result<Generated> {
    if tok.logprob.is_finite() {
        Ok(tok)
    } else {
        Err(EngineError::NonFinite(non_finite(index)))
    }
}

/// The message of a request stopped at output token `index` by non-finite logits.
pub fn non_finite(index: usize) -> String {
    format!(
        "the model produced non-finite logits (NaN or infinity) for output token {index}; the request was stopped \
         (the weights or the numerics of this model and precision overflow on this input)"
    )
}
