//! Turbine's engine layer. It holds a `Box<dyn ModelRunner>` and never sees a backend type.
//!
//! - [`engine`]: the asynchronous engine API (`submit` → a stream of events, `cancel`, `stats`);
//!   one thread owns the [`scheduler::EngineCore`]: in-flight batching over the paged KV cache
//!   ([`kv`]) with prefix caching and preemption.
//! - [`detok`]: incremental detokenization ([`TextStream`]): text deltas whose cost does not grow
//!   with the output.
//! - [`generate`]: the synchronous driver: one request from prompt to finish on an idle
//!   [`EngineCore`] (the CLI, benchmarks and tests use the engine the server uses).
//! - [`score`] and [`eval`]: log-likelihood and perplexity of a token sequence, in windows, and
//!   the comparison of several models on the same tokens; their sequences take blocks from the
//!   engine's block manager ([`EngineCore::begin_score`]).
//! - [`bench`]: offline throughput of a workload, in-flight or statically batched.
//! - [`spec`]: speculative decoding (proposers, acceptance), which the scheduler runs for greedy
//!   requests when [`EngineConfig::speculative`] is set.
//!
#![warn(missing_docs)]

pub mod bench;
pub mod constraint;
pub mod detok;
pub mod draft;
pub mod engine;
pub mod eval;
pub mod generate;
pub mod kv;
pub mod request;
pub mod scheduler;
pub mod score;
pub mod spec;

pub use constraint::{Constraint, ConstraintCompiler, ConstraintSpec, TokenMask};
pub use detok::{Detokenizer, TextStream};
pub use draft::DraftModel;
pub use engine::{Engine, RequestStream};
pub use generate::{generate, GenOutput, Timings};
pub use request::{EngineConfig, Event, FinishReason, Request, RequestId, SpecConfig, Stats, SubmitError, Usage};
pub use scheduler::{EngineCore, ScoreSeq};
pub use score::{score, Score};
pub use spec::{DraftRequest, NgramProposer, Proposer};

/// Errors of the engine layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The request is invalid; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The KV cache has no room for the request.
    #[error("the KV cache is full: {needed} blocks needed, {free} free")]
    CacheFull {
        /// Blocks requested.
        needed: usize,
        /// Blocks available.
        free: usize,
    },
    /// A step's logits were not finite (NaN or infinity).
    #[error("{0}")]
    NonFinite(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] turbine_core::Error),
}

impl From<turbine_core::sampling::InvalidParam> for EngineError {
    fn from(e: turbine_core::sampling::InvalidParam) -> Self {
        EngineError::Invalid(e.message)
    }
}

/// Result alias for this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
