//! What goes into the engine and what comes out.

use turbine_core::sampling::SamplingParams;

use turbine_core::sampling::Sampled;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` or the context length was reached.
    Length,
    /// A stop id or stop string was generated.
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

/// Identifies a request for its whole life.
pub type RequestId = u64;

/// A generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Sampling settings (including the seed and how many top log-probabilities to report).
    pub params: SamplingParams,
    /// Most tokens to generate (at least 1).
    pub max_tokens: usize,
    /// Keep going through stop ids.
    pub ignore_eos: bool,
    /// Ids that end generation (the model's EOS ids, plus any the caller adds).
    pub stop_ids: Vec<u32>,
    /// Strings that end generation, matched on the decoded output (across token boundaries); the
    /// stop string itself is not returned. Needs an engine with a detokenizer.
    pub stop: Vec<String>,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache instead of being computed.
    pub cached_tokens: usize,
}

/// What a request produces, in order: tokens, then exactly one `Finished`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token with its log-probability (and the top alternatives if asked), and the
    /// output text it completes (empty without a detokenizer, or while the text could still be the
    /// start of a stop string).
    Token {
        /// The token.
        token: Sampled,
        /// New output text.
        text: String,
    },
    /// The end, with the reason, the token counts and any output text held back until now.
    Finished {
        /// Output text not sent with a token yet (stop strings excluded).
        text: String,
        /// Why it ended.
        reason: FinishReason,
        /// Token counts.
        usage: Usage,
        /// What went wrong, when `reason` is [`FinishReason::Error`].
        error: Option<String>,
    },
    /// The model failed; the request is over.
    Error(String),
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// A parameter is out of range; the message names it.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The prompt and the tokens to generate cannot fit the model context or the KV cache.
    #[error(
        "the prompt ({prompt} tokens) plus max_tokens ({max_tokens}) exceeds the limit of {limit} tokens ({what})"
    )]
    TooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Requested new tokens.
        max_tokens: usize,
        /// The limit.
        limit: usize,
        /// Which limit: the model context or the KV cache.
        what: &'static str,
    },
    /// The waiting queue is full; try again later.
    #[error("the server is busy: {waiting} requests are already waiting (limit {limit}); retry later")]
    QueueFull {
        /// Requests waiting now.
        waiting: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The engine has stopped.
    #[error("the engine has shut down")]
    ShutDown,
}

/// Engine limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Most tokens computed in one step (decode tokens plus prefill chunks).
    pub max_num_tokens: usize,
    /// Most sequences in one step.
    pub max_batch_size: usize,
    /// Most requests waiting to start; a request beyond it is refused with
    /// [`SubmitError::QueueFull`] (a preempted request always goes back to the queue).
    pub max_waiting: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { max_num_tokens: 512, max_batch_size: 64, max_waiting: 4096 }
    }
}

/// Counters since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// Model steps run.
    pub steps: u64,
    /// Requests waiting to start (or to resume after preemption).
    pub waiting: usize,
    /// Requests in the running set.
    pub running: usize,
    /// Times a running request was preempted (its KV freed, to be recomputed).
    pub preemptions: u64,
    /// Prompt tokens served from the prefix cache.
    pub prefix_cache_hit_tokens: u64,
    /// Tokens generated and handed out, those of requests cancelled later included.
    pub generated_tokens: u64,
    /// KV blocks referenced now.
    pub blocks_in_use: usize,
    /// Tokens whose keys and values the running requests hold now.
    pub kv_tokens: usize,
    /// KV blocks in the cache.
    pub blocks_total: usize,
}
