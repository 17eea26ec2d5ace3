//! The interface between the engine and a model: what a step asks for, the KV cache geometry,
//! the model's spec, and the object-safe [`ModelRunner`]. It lives here, below both, so that the
//! engine (`turbine-batcher`) depends on this crate only, and any model implementation (the
//! `turbine-models` architectures, or your own) can be driven by it.

use crate::sampling::{Sampled, SeqSampler};
use crate::{DType, Result};

/// What the engine needs to know about any model, whatever its architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The architecture name (as in `config.json`).
    pub arch: String,
    /// Residual stream width.
    pub hidden: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub q_heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Vocabulary size (rows of the LM head).
    pub vocab: usize,
    /// Longest context the model supports.
    pub max_positions: usize,
    /// Beginning-of-sequence id.
    pub bos: Option<u32>,
    /// End-of-sequence ids.
    pub eos: Vec<u32>,
}

/// Which logits a sequence wants from a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None (a prompt chunk that is not the last).
    None,
    /// The last token's.
    Last,
    /// Every token's (scoring, perplexity).
    All,
}

/// One sequence's part of a step.
#[derive(Debug, Clone, Copy)]
pub struct SeqStep<'a> {
    /// New tokens, in order.
    pub tokens: &'a [u32],
    /// Tokens of this sequence already in the cache (the position of `tokens[0]`).
    pub start: usize,
    /// The sequence's block table; must cover `start + tokens.len()` tokens.
    pub blocks: &'a [u32],
    /// Which logits to compute.
    pub logits: Logits,
}

/// Geometry of the paged KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Tokens per block.
    pub block_size: usize,
    /// Blocks in the pool.
    pub num_blocks: usize,
    /// Storage of keys and values: `F32`, or `I8` / `F8E4M3` (one byte a value plus one f32
    /// scale per token and kv head, see [`crate::KvPages::k_scales`]).
    pub kv_dtype: DType,
}

impl CacheConfig {
    /// `num_blocks` f32 blocks of `block_size` tokens.
    pub fn f32(block_size: usize, num_blocks: usize) -> Self {
        CacheConfig { block_size, num_blocks, kv_dtype: DType::F32 }
    }

    /// Bytes one block of `block_size` tokens takes across the layers of `spec`: keys, values
    /// and, for 8-bit storage, their per-row scales and the block's place for an unrounded
    /// first key ([`crate::KvPages::k_sink`]).
    pub fn bytes_per_block(spec: &ModelSpec, kv_dtype: DType, block_size: usize) -> usize {
        let row = kv_dtype.bytes_for(spec.head_dim).unwrap_or(spec.head_dim * 4);
        let (scale, sink) = if kv_dtype == DType::F32 { (0, 0) } else { (4, 4 * spec.head_dim) };
        spec.layers * spec.kv_heads * (2 * (row + scale) * block_size + sink)
    }
}

/// A model on a device with its KV cache, behind an object-safe interface: what the engine
/// drives. Errors are [`crate::Error`]s (a model crate converts its own).
pub trait ModelRunner: Send {
    /// The model's spec.
    fn spec(&self) -> &ModelSpec;
    /// The backend's name.
    fn backend(&self) -> &'static str;
    /// The KV cache geometry.
    fn cache(&self) -> CacheConfig;
    /// Runs one packed step. Logits of the requested rows, in sequence order, stay on the device
    /// for [`ModelRunner::logits`] or [`ModelRunner::sample`].
    fn step(&mut self, seqs: &[SeqStep<'_>]) -> Result<()>;
    /// The last step's logits, `[rows, vocab]` row-major.
    fn logits(&mut self) -> Result<Vec<f32>>;
    /// Samples one token per logit row of the last step, row `i` with `samplers[i]`.
    fn sample(&mut self, samplers: &mut [&mut SeqSampler]) -> Result<Vec<Sampled>>;

    /// The longest sequence (prompt and output) this runner can hold: the model's context, or
    /// the KV cache's tokens if fewer.
    fn context_len(&self) -> usize {
        let c = self.cache();
        self.spec().max_positions.min(c.num_blocks * c.block_size)
    }
}
