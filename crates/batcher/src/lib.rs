//! Turbine's engine layer. It holds a `Box<dyn ModelRunner>` and never sees a backend type.
//!
//! - [`engine`]: the asynchronous engine API (`submit` → a stream of events, `cancel`, `stats`);
//!   one thread owns the [`scheduler::EngineCore`]: in-flight batching over the paged KV cache
//!   ([`kv`]) with prefix caching and preemption.
//! - [`detok`]: incremental detokenization ([`TextStream`]): text deltas whose cost does not grow
//!   with the output.
//! - [`blocks`]: the KV block pool of the single-request [`generate::Generator`].
//! - [`generate`]: one request from prompt to finish (chunked prefill, then decode steps).
//! - [`score`]: log-likelihood and perplexity of a token sequence, in windows.
//!
#![warn(missing_docs)]

pub mod bench;
pub mod blocks;
pub mod detok;
pub mod engine;
pub mod eval;
pub mod generate;
pub mod kv;
pub mod request;
pub mod scheduler;
pub mod score;

pub use blocks::{BlockPool, SeqBlocks};
pub use detok::{Detokenizer, TextStream};
pub use engine::{Engine, RequestStream};
pub use generate::{FinishReason, GenOutput, Generated, Generator, Timings};
pub use request::{EngineConfig, Event, Request, RequestId, Stats, SubmitError, Usage};
pub use scheduler::EngineCore;
pub use score::{score, Score};

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

/// Result alias for this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
