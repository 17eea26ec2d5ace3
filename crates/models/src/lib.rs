//! Turbine's model architectures and loaders.
//!
//! - [`loader::load`]: a Hugging Face folder (`config.json`, safetensors, `tokenizer.json`) or a
//!   GGUF file to a [`model::Model`] plus its [`tokenizer::TextTokenizer`].
//! - [`registry`]: the supported architectures; each lives in one file (`llama.rs`, …).
//! - [`runner`]: a model with its paged KV cache behind the object-safe [`runner::ModelRunner`].
//! - Module layers, lowest first (no cycles; `tests/module_layers.rs` checks): `rows`, `source`,
//!   `config`, `weights`, `rope`, `step` →
//!   `layers` (the generic decoder, `Linear` and its `Role`) → `model` → `registry`, `runner` →
//!   `calibrate` → `measured` (per-model precision exceptions) → `precision` → `policy_file`,
//!   `loader`.
//! - [`catalog`]: models known by name and `pull` (feature `catalog`).
//!
//! Features (both default): `tokenizer` (tokenizers, chat templates, calibration by text,
//! synthetic checkpoints) and `catalog`. With neither, the crate is the architectures and the
//! safetensors and GGUF loaders.
//!
//! Everything is generic over `B: turbine_core::Ops` and never names a backend.
#![warn(missing_docs)]

pub mod calibrate;
#[cfg(feature = "catalog")]
pub mod catalog;
#[cfg(feature = "tokenizer")]
pub mod chat;
pub mod config;
mod error;
pub mod export;
pub mod gptq;
pub mod layers;
pub mod loader;
pub mod measured;
pub mod model;
pub mod policy_file;
pub mod precision;
pub mod registry;
pub mod rope;
mod rows;
pub mod runner;
pub mod source;
#[cfg(feature = "tokenizer")]
mod spm;
pub mod step;
#[cfg(feature = "tokenizer")]
pub mod synth;
#[cfg(feature = "tokenizer")]
pub mod tokenizer;
pub mod weights;

pub use error::{ModelError, Result};
#[cfg(feature = "tokenizer")]
pub use loader::load_tokenizer;
pub use loader::{load, load_for_context, load_with, LoadedModel};
pub use model::{Model, ModelSpec};
pub use runner::{CacheConfig, Logits, ModelRunner, Runner, SeqStep};
