//! The synchronous driver: one request from prompt to finish on an idle [`EngineCore`], the same
//! scheduler, block manager and checks the server uses (for `turbine generate`, benchmarks and
//! tests), with the time of prefill and decode measured apart.

use std::time::Instant;

use turbine_core::sampling::Sampled;

use crate::request::{Event, FinishReason, Request};
use crate::scheduler::EngineCore;
use crate::{EngineError, Result};

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
    pub tokens: Vec<Sampled>,
    /// The output text (empty when the engine has no detokenizer); a matched stop string and
    /// what follows it are not included.
    pub text: String,
    /// Why it ended.
    pub finish: FinishReason,
    /// Timings.
    pub timings: Timings,
}

/// Runs `req` on an idle engine until it finishes; `on_token` sees each token as soon as it is
/// sampled, with the output text it releases. Non-finite logits end the request with
/// [`EngineError::NonFinite`]; a refused request is [`EngineError::Invalid`].
pub fn generate(core: &mut EngineCore, req: Request, on_token: &mut dyn FnMut(&Sampled, &str)) -> Result<GenOutput> {
    if core.has_work() {
        return Err(EngineError::Invalid("the engine is busy: run requests one at a time here".into()));
    }
    let prompt_tokens = req.prompt.len();
    let t0 = Instant::now();
    let id = core.add(req).map_err(|e| EngineError::Invalid(e.to_string()))?;
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut first: Option<Instant> = None;
    loop {
        let events = match core.step() {
            Ok(ev) => ev,
            Err(e) => {
                core.cancel(id);
                return Err(e);
            }
        };
        for (rid, ev) in events {
            debug_assert_eq!(rid, id, "only this request is in the engine");
            match ev {
                Event::Token { token, text: delta } => {
                    first.get_or_insert_with(Instant::now);
                    on_token(&token, &delta);
                    text.push_str(&delta);
                    tokens.push(token);
                }
                Event::Finished { text: rest, reason, error, .. } => {
                    if reason == FinishReason::Error {
                        return Err(EngineError::NonFinite(error.unwrap_or_default()));
                    }
                    text.push_str(&rest);
                    let end = Instant::now();
                    let first = first.unwrap_or(end);
                    let timings = Timings {
                        prefill_ms: (first - t0).as_secs_f64() * 1e3,
                        decode_ms: (end - first).as_secs_f64() * 1e3,
                        prompt_tokens,
                        decode_tokens: tokens.len().saturating_sub(1),
                    };
                    return Ok(GenOutput { tokens, text, finish: reason, timings });
                }
                Event::Error(m) => return Err(EngineError::Invalid(m)),
            }
        }
        if !core.has_work() {
            return Err(EngineError::Invalid("the request left the engine without finishing".into()));
        }
    }
}
