//! Where weights come from: memory-mapped safetensors files or a GGUF file.

pub mod gguf;
pub mod gguf_names;
pub mod safetensors;

use std::collections::BTreeSet;
use std::sync::Mutex;

use turbine_core::HostTensor;

use crate::{ModelError, Result};

/// A set of named tensors, borrowed from memory-mapped files where possible.
///
/// Names are Hugging Face names (`model.layers.0.self_attn.q_proj.weight`); sources in other
/// conventions translate them.
pub trait WeightSource: Send + Sync {
    /// The tensor called `name`, or `None` if the source has no such tensor.
    fn get(&self, name: &str) -> Result<Option<HostTensor<'_>>>;

    /// Every tensor the source holds, by its stored name (a GGUF file's own names). Sources
    /// that cannot list theirs return an empty list, and nothing is reported unused.
    fn stored_names(&self) -> Vec<String> {
        Vec::new()
    }

    /// The stored name the tensor `name` is read from.
    fn stored_name(&self, name: &str) -> Option<String> {
        Some(name.to_string())
    }
}

/// Stored tensors no architecture reads that are not weights either, whatever the checkpoint:
/// buffers transformers saves beside the weights (rotary inverse frequencies, GPT-2's causal
/// masks), and an LM head that the config ties to the embeddings (transformers ties it too).
const NOT_WEIGHTS: &[&str] = &[".rotary_emb.inv_freq", ".attn.masked_bias", ".attn.bias", "lm_head.weight"];

/// A [`WeightSource`] that remembers which stored tensors were read, so that a loader can refuse
/// a checkpoint holding tensors its architecture does not use (layers past the config's
/// count, another model's modules, a renamed tensor) instead of silently dropping them.
pub struct Tracked<S> {
    inner: S,
    read: Mutex<BTreeSet<String>>,
}

impl<S: WeightSource> Tracked<S> {
    /// Wraps a source.
    pub fn new(inner: S) -> Self {
        Tracked { inner, read: Mutex::new(BTreeSet::new()) }
    }

    /// Stored tensors never read, sorted, known non-weights left out.
    pub fn unused(&self) -> Vec<String> {
        let read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = self
            .inner
            .stored_names()
            .into_iter()
            .filter(|n| !read.contains(n) && !NOT_WEIGHTS.iter().any(|s| n.ends_with(s)))
            .collect();
        v.sort();
        v
    }

    /// Refuses the checkpoint if it holds tensors `arch` did not read, unless `allow` (then
    /// they are ignored, with a note on stderr).
    pub fn check_unused(&self, arch: &str, allow: bool) -> Result<()> {
        let unused = self.unused();
        if unused.is_empty() {
            return Ok(());
        }
        const SHOWN: usize = 6;
        let mut names = unused.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
        if unused.len() > SHOWN {
            names.push_str(&format!(" and {} more", unused.len() - SHOWN));
        }
        if allow {
            eprintln!("turbine: ignoring {} tensors {arch} does not use: {names}", unused.len());
            return Ok(());
        }
        Err(ModelError::UnusedWeights { arch: arch.to_string(), count: unused.len(), names })
    }
}

impl<S: WeightSource> WeightSource for Tracked<S> {
    fn get(&self, name: &str) -> Result<Option<HostTensor<'_>>> {
        let t = self.inner.get(name)?;
        if t.is_some() {
            if let Some(stored) = self.inner.stored_name(name) {
                self.read.lock().unwrap_or_else(|e| e.into_inner()).insert(stored);
            }
        }
        Ok(t)
    }

    fn stored_names(&self) -> Vec<String> {
        self.inner.stored_names()
    }

    fn stored_name(&self, name: &str) -> Option<String> {
        self.inner.stored_name(name)
    }
}
