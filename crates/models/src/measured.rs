//! Precision exceptions measured per model: the blocks whose FP8 error costs a model the most,
//! kept at the checkpoint's precision by default under `fp8` and `fp8-weight`
//! ([`crate::precision::Policy::default_keep`]).
//!
//! A model is recognised by its shape (layers, widths, heads, vocabulary), so the same weights
//! match as a GGUF file or a Hugging Face folder. The lists come from
//! `turbine eval --suite bench/eval/dev --sensitivity --dtype fp8` on the development split
//! (never the held-out texts the README's figures are measured on). A model with no measured
//! list keeps its last block, the largest single contributor on every model measured so far.

use turbine_core::ModelSpec;

/// The exceptions measured for one model shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// The model, in words.
    pub model: &'static str,
    /// Decoder layers.
    pub layers: usize,
    /// Residual stream width.
    pub hidden: usize,
    /// Query heads.
    pub q_heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Exceptions in [`crate::precision::Selector`]'s written form, most sensitive first.
    pub keep: &'static [&'static str],
}

/// Every measured model.
pub const MEASURED: &[Measured] = &[Measured {
    // Per-layer sensitivity of W8A8 on 1,800 dev tokens: the last block removes 18% of the KL,
    // layers 19, 24, 7, 27, 26, 25, 23 4-6% each, every other layer under 4%. Keeping these 8
    // (of 30) lowered the mean KL by 39% on 2,400 dev tokens.
    model: "SmolLM2-135M",
    layers: 30,
    hidden: 576,
    q_heads: 9,
    kv_heads: 3,
    vocab: 49152,
    keep: &["layer:-1", "layer:19", "layer:24", "layer:7", "layer:27", "layer:26", "layer:25", "layer:23"],
}];

/// Exceptions of a model without a measured list: its last block.
pub const FALLBACK: &[&str] = &["layer:-1"];

/// The measured entry for a model of this shape, if any.
pub fn lookup(spec: &ModelSpec) -> Option<&'static Measured> {
    MEASURED.iter().find(|m| {
        (m.layers, m.hidden, m.q_heads, m.kv_heads, m.vocab)
            == (spec.layers, spec.hidden, spec.q_heads, spec.kv_heads, spec.vocab)
    })
}

/// The default exceptions for a model of this shape: its measured list, else [`FALLBACK`].
pub fn default_keep(spec: &ModelSpec) -> &'static [&'static str] {
    lookup(spec).map_or(FALLBACK, |m| m.keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(layers: usize, hidden: usize) -> ModelSpec {
        ModelSpec {
            arch: "llama".into(),
            hidden,
            layers,
            q_heads: 9,
            kv_heads: 3,
            head_dim: 64,
            vocab: 49152,
            max_positions: 8192,
            bos: None,
            eos: vec![],
        }
    }

    #[test]
    fn a_measured_shape_gets_its_list_and_others_the_last_block() {
        assert_eq!(default_keep(&spec(30, 576)).len(), 8);
        assert_eq!(default_keep(&spec(30, 576))[0], "layer:-1");
        assert_eq!(default_keep(&spec(2, 64)), FALLBACK);
    }
}
