//! Turbine's engine layer. It holds a `Box<dyn ModelRunner>` and never sees a backend type.
//!
//! - [`blocks`]: the KV block pool; a sequence's blocks return to the pool when dropped.
//! - [`generate`]: one request from prompt to finish (chunked prefill, then decode steps).
//! - [`score`]: log-likelihood and perplexity of a token sequence, in windows.
//!
//! In-flight batching of many requests builds on the same pieces.
#![warn(missing_docs)]

pub mod blocks;
pub mod core;
pub mod generate;
pub mod kv;
pub mod request;
pub mod score;

pub use blocks::{BlockPool, SeqBlocks};
pub use core::EngineCore;
pub use generate::{FinishReason, GenOutput, GenRequest, Generated, Generator, Timings};
pub use request::{EngineConfig, Event, Request, RequestId, Stats, SubmitError, Usage};
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
    /// The model failed.
    #[error(transparent)]
    Model(#[from] turbine_models::ModelError),
}

/// Result alias for this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
