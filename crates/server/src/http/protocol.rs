//! OpenAI request bodies and their translation to engine requests. Unknown fields are ignored.

use serde::Deserialize;
use turbine_batcher::Request;
use turbine_core::sampling::{InvalidParam, SamplingParams};

use super::{ApiError, AppState};

/// A prompt: text, token ids, or a list of either.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// Token ids.
    Ids(Vec<u32>),
    /// Several prompts (strings or token arrays).
    Many(Vec<Prompt>),
    /// Anything else (refused with a message).
    Other(serde::de::IgnoredAny),
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    /// Model name (must be the served one when given).
    pub model: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: Option<i64>,
    /// Chat's newer name for it.
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature (default 1).
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Top-k (an extension).
    pub top_k: Option<i64>,
    /// Min-p (an extension).
    pub min_p: Option<f32>,
    /// Choices per prompt.
    pub n: Option<i64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Seed.
    pub seed: Option<u64>,
    /// Presence penalty.
    pub presence_penalty: Option<f32>,
    /// Frequency penalty.
    pub frequency_penalty: Option<f32>,
    /// Repetition penalty (an extension).
    pub repetition_penalty: Option<f32>,
    /// Keep generating through EOS (an extension).
    pub ignore_eos: Option<bool>,
    /// Generate at least this many tokens before EOS or a stop string may end (vLLM's extension).
    pub min_tokens: Option<i64>,
    /// Stream server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// The end user, for the operator's records: checked to be a string, not used for generation.
    #[allow(dead_code)]
    pub user: Option<String>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The prompt.
    pub prompt: Prompt,
    /// Top log-probabilities per token (0–20).
    pub logprobs: Option<i64>,
    /// Shared fields.
    #[serde(flatten)]
    pub common: Common,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Return log-probabilities.
    pub logprobs: Option<bool>,
    /// How many alternatives with each token (0–20).
    pub top_logprobs: Option<i64>,
    /// Shared fields.
    #[serde(flatten)]
    pub common: Common,
}

impl Common {
    /// One engine request per choice (`n`, default 1); with a seed, choice `i` uses `seed + i`.
    pub fn to_requests(
        &self,
        s: &AppState,
        prompt: Vec<u32>,
        logprobs: usize,
        default_max: usize,
    ) -> Result<Vec<Request>, ApiError> {
        let max_n = s.limits.max_n as i64;
        let n = match self.n.unwrap_or(1) {
            n if (1..=max_n).contains(&n) => n as u64,
            n => return Err(ApiError::invalid("n", format!("n must be 1..={max_n}, got {n}"))),
        };
        let base = self.to_request(s, prompt, logprobs, default_max)?;
        Ok((0..n).map(|i| base.clone().with_seed(base.params().seed.map(|sd| sd.wrapping_add(i)))).collect())
    }

    /// Builds the engine request for `prompt`, checking every field; `default_max` applies when
    /// the client gave no limit.
    pub fn to_request(
        &self,
        s: &AppState,
        prompt: Vec<u32>,
        logprobs: usize,
        default_max: usize,
    ) -> Result<Request, ApiError> {
        if let Some(m) = &self.model {
            if m != &s.model {
                let msg = format!("model {m:?} does not exist; this server serves {:?}", s.model);
                let e = ApiError::new(axum::http::StatusCode::NOT_FOUND, "invalid_request_error", msg);
                return Err(ApiError { param: Some("model".into()), ..e });
            }
        }

        let limit = s.limits.max_prompt_tokens;
        if limit > 0 && prompt.len() > limit {
            return Err(ApiError::invalid(
                "prompt",
                format!("the prompt has {} tokens; this server accepts at most {limit}", prompt.len()),
            ));
        }
        let cap = s.limits.max_tokens;
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(m) if m < 1 => {
                return Err(ApiError::invalid("max_tokens", format!("max_tokens must be at least 1, got {m}")))
            }
            Some(m) if cap > 0 && m as u64 > cap as u64 => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!("max_tokens is {m}; this server allows at most {cap}"),
                ))
            }
            Some(m) => m as usize,
            None if cap > 0 => default_max.clamp(1, cap),
            None => default_max.max(1),
        };
        let top_k = match self.top_k {
            Some(k) if k < -1 => {
                return Err(ApiError::invalid("top_k", format!("top_k must be >= 0 (or -1 for all), got {k}")))
            }
            Some(k) if k > 0 => k as usize,
            _ => 0,
        };
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k,
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed,
            logprobs,
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        // The one check of the request's own values; the engine checks the rest against the
        // model (vocabulary, context) when it queues it.
        let invalid = |e: InvalidParam| ApiError::invalid(e.param, e.message);
        let min_tokens = match self.min_tokens {
            Some(m) if m < 0 => {
                return Err(ApiError::invalid("min_tokens", format!("min_tokens must be >= 0, got {m}")))
            }
            Some(m) => m as usize,
            None => 0,
        };
        Request::new(prompt, params, max_tokens)
            .map_err(invalid)?
            .with_ignore_eos(self.ignore_eos.unwrap_or(false))
            .with_stop_ids(s.eos.clone())
            .with_stop(stop)
            .map_err(invalid)?
            .with_min_tokens(min_tokens)
            .map_err(invalid)
    }
}
