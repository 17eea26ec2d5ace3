//! Where weights come from: memory-mapped safetensors files or a GGUF file.

pub mod gguf;
pub mod gguf_names;
pub mod safetensors;

use turbine_core::HostTensor;

use crate::Result;

/// A set of named tensors, borrowed from memory-mapped files where possible.
///
/// Names are Hugging Face names (`model.layers.0.self_attn.q_proj.weight`); sources in other
/// conventions translate them.
pub trait WeightSource: Send + Sync {
    /// The tensor called `name`, or `None` if the source has no such tensor.
    fn get(&self, name: &str) -> Result<Option<HostTensor<'_>>>;
}
