//! What goes into the engine and what comes out.

use turbine_core::sampling::{InvalidParam, SamplingParams};

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

/// A generation request whose parameters have been checked: [`Request::new`] and
/// [`Request::with_stop`] are the only ways to make one, so a `Request` is valid by construction and
/// the engine checks only what depends on the model (ids inside its vocabulary, the context and
/// the cache), once, in [`crate::EngineCore::add`].
///
/// ```
/// use turbine_batcher::Request;
/// use turbine_core::sampling::{InvalidParam, SamplingParams};
///
/// let params = SamplingParams { temperature: 0.7, top_p: 0.9, ..Default::default() };
/// let req = Request::new(vec![1, 15043, 29892], params, 64)?.with_stop_ids(vec![2]).with_stop(vec!["\n\n".into()])?;
/// assert_eq!(req.max_tokens(), 64);
/// assert_eq!(Request::new(vec![], SamplingParams::default(), 8).unwrap_err().param, "prompt");
/// # Ok::<(), turbine_core::sampling::InvalidParam>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub(crate) prompt: Vec<u32>,
    pub(crate) params: SamplingParams,
    pub(crate) max_tokens: usize,
    pub(crate) ignore_eos: bool,
    pub(crate) stop_ids: Vec<u32>,
    pub(crate) stop: Vec<String>,
    pub(crate) min_tokens: usize,
    pub(crate) constraint: Option<crate::constraint::ConstraintSpec>,
}

impl Request {
    /// A request for at most `max_tokens` new tokens after `prompt`, sampled as `params` says;
    /// it stops at no id and no string until told ([`Request::with_stop_ids`], [`Request::with_stop`]).
    /// Fails, naming the parameter, when the prompt is empty, `max_tokens` is 0 or a sampling
    /// parameter is out of range.
    pub fn new(prompt: Vec<u32>, params: SamplingParams, max_tokens: usize) -> Result<Request, InvalidParam> {
        if prompt.is_empty() {
            return Err(InvalidParam { param: "prompt", message: "the prompt is empty".into() });
        }
        if max_tokens == 0 {
            return Err(InvalidParam { param: "max_tokens", message: "max_tokens must be at least 1".into() });
        }
        params.check()?;
        Ok(Request {
            prompt,
            params,
            max_tokens,
            ignore_eos: false,
            stop_ids: Vec::new(),
            stop: Vec::new(),
            min_tokens: 0,
            constraint: None,
        })
    }

    /// [`Request::new`] with greedy sampling.
    pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Result<Request, InvalidParam> {
        Request::new(prompt, SamplingParams { temperature: 0.0, ..SamplingParams::default() }, max_tokens)
    }

    /// Ids that end generation (the model's EOS ids, plus any the caller adds).
    pub fn with_stop_ids(mut self, ids: Vec<u32>) -> Request {
        self.stop_ids = ids;
        self
    }

    /// Keep going through stop ids (`true`), or stop at them (the default).
    pub fn with_ignore_eos(mut self, ignore: bool) -> Request {
        self.ignore_eos = ignore;
        self
    }

    /// Strings that end generation, matched on the decoded output (across token boundaries);
    /// the stop string itself is not returned. Needs an engine with a detokenizer. Fails on an
    /// empty string.
    pub fn with_stop(mut self, stop: Vec<String>) -> Result<Request, InvalidParam> {
        if stop.iter().any(String::is_empty) {
            return Err(InvalidParam { param: "stop", message: "stop strings must not be empty".into() });
        }
        self.stop = stop;
        Ok(self)
    }

    /// Generate at least `min` tokens: until then the stop ids cannot be chosen and stop strings
    /// do not end the request (vLLM's `min_tokens`); a constrained output still ends where its
    /// constraint is complete. Fails when `min` exceeds `max_tokens`.
    pub fn with_min_tokens(mut self, min: usize) -> Result<Request, InvalidParam> {
        if min > self.max_tokens {
            return Err(InvalidParam {
                param: "min_tokens",
                message: format!("min_tokens ({min}) must not exceed max_tokens ({})", self.max_tokens),
            });
        }
        self.min_tokens = min;
        Ok(self)
    }

    /// The output must match `spec` (structured outputs); the engine needs a
    /// [`crate::ConstraintCompiler`] ([`crate::EngineCore::with_constraints`]).
    pub fn with_constraint(mut self, spec: crate::constraint::ConstraintSpec) -> Request {
        self.constraint = Some(spec);
        self
    }

    /// What the output must match, if anything.
    pub fn constraint(&self) -> Option<&crate::constraint::ConstraintSpec> {
        self.constraint.as_ref()
    }

    /// Tokens generated before stop ids and stop strings may end the request.
    pub fn min_tokens(&self) -> usize {
        self.min_tokens
    }

    /// The same request with another sampling seed (the `n` choices of one API request).
    pub fn with_seed(mut self, seed: Option<u64>) -> Request {
        self.params.seed = seed;
        self
    }

    /// Prompt token ids.
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// Sampling settings (the seed and how many top log-probabilities to report included).
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Most tokens to generate (at least 1).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Whether generation goes on through stop ids.
    pub fn ignore_eos(&self) -> bool {
        self.ignore_eos
    }

    /// Ids that end generation.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The stop strings.
    pub fn stop(&self) -> &[String] {
        &self.stop
    }
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
    /// Speculative decoding ([`crate::spec`]); off when `None`.
    pub speculative: Option<SpecConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { max_num_tokens: 512, max_batch_size: 64, max_waiting: 4096, speculative: None }
    }
}

/// Speculative decoding settings of the engine (the proposer is given to the engine apart:
/// prompt lookup unless [`crate::EngineCore::with_proposer`] says otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecConfig {
    /// Most drafted tokens per request and step. Each request starts there; its length then
    /// follows its acceptance ([`crate::spec::next_draft_len`]).
    pub draft_tokens: usize,
    /// Speculation pauses while this many requests or more are running: a large batch already
    /// reads each weight once for many rows, and drafts would only add rows.
    pub max_running: usize,
}

impl SpecConfig {
    /// Up to `draft_tokens` drafts per step, paused from 32 running requests.
    pub fn new(draft_tokens: usize) -> Self {
        SpecConfig { draft_tokens, max_running: 32 }
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
    /// Tokens drafted by the speculative proposer and checked by the model.
    pub drafted_tokens: u64,
    /// Drafted tokens the model accepted.
    pub accepted_tokens: u64,
    /// Requests queued with a constraint (structured outputs).
    pub constrained_requests: u64,
    /// Time spent compiling constraints and computing their token masks, in seconds.
    pub constraint_seconds: f64,
    /// Verifications (a request's drafts checked in a step) by the fraction of drafts accepted:
    /// none, up to 1/4, 1/2, 3/4, fewer than all, all.
    pub acceptance: [u64; 6],
    /// The sum of the acceptance fractions of those verifications (their mean is this over their
    /// count).
    pub acceptance_sum: f64,
    /// KV blocks the proposer holds now (a draft model's own cache).
    pub draft_blocks_in_use: usize,
}

impl From<InvalidParam> for SubmitError {
    fn from(e: InvalidParam) -> Self {
        SubmitError::Invalid(e.message)
    }
}
