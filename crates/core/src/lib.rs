//! Turbine core: the device-agnostic vocabulary every other crate speaks.
//!
//! - [`DType`]: element and block storage types (f32, f16, bf16, fp8, GGUF blocks, u32 ids).
//! - [`Shape`], [`HostTensor`] (bytes on the host) and [`Tensor`] (a handle over a buffer owned by a
//!   backend, opaque outside it).
//! - [`Backend`] (memory) and [`Ops`] (the small, fusion-friendly op set a model is written in).
//! - [`sampling`]: the host sampler (greedy, temperature, top-k, top-p, seeded streams, logprobs).
//! - [`Error`]: the one error type of the kernel layer.
#![warn(missing_docs)]

pub mod backend;
pub mod dtype;
pub mod error;
pub mod fp8;
pub mod host;
pub mod ops;
pub mod quant;
pub mod runner;
pub mod sampling;
pub mod shape;
pub mod tensor;
pub mod testing;

pub use backend::{Backend, Caps, GraphStep};
pub use dtype::DType;
pub use error::{Error, Result};
pub use host::HostTensor;
pub use ops::{
    alibi_slopes, Act, AttnMeta, AttnParams, Epilogue, ExactCols, KvPages, NormKind, Ops, QkvLayout, Resid, RopeTable,
    XQuant,
};
pub use runner::{CacheConfig, Logits, ModelRunner, ModelSpec, SeqStep};
pub use shape::Shape;
pub use tensor::Tensor;
