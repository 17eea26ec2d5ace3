//! Random-weight models in Hugging Face layout, so that realistic sizes (1B, 8B parameters) can be
//! loaded, served and benchmarked where no large real model can be downloaded.
//!
//! [`write`] produces a folder with `config.json`, `model.safetensors` and `tokenizer.json` (a
//! byte-level BPE without merges: one token per byte, plus begin/end-of-text tokens and reserved
//! tokens up to the vocabulary size). Weights are uniform with the standard deviation of the usual
//! initialisation (0.02), norms are 1; each tensor is generated while it is written, so memory
//! holds one tensor at a time. The text such a model writes is noise; its speed is the real one.

use std::borrow::Cow;
use std::path::Path;

use safetensors::tensor::{Dtype, View};
use turbine_core::sampling::Rng;
use turbine_core::DType;

use crate::{ModelError, Result};

/// The shape of a synthetic Llama-architecture model.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    /// Hidden size.
    pub hidden: usize,
    /// Decoder blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Vocabulary size (at least 258: 256 bytes and two special tokens).
    pub vocab: usize,
    /// Context length.
    pub max_positions: usize,
    /// Storage type of the weights: `f32`, `f16` or `bf16`.
    pub dtype: DType,
    /// The LM head shares the embedding matrix.
    pub tie_embeddings: bool,
    /// Seed of the weights.
    pub seed: u64,
}

impl SynthSpec {
    /// Named shapes: `tiny` (for tests), `1b` (Llama 3.2 1B's shape), `8b` (Llama 3.1 8B's).
    pub fn preset(name: &str) -> Result<SynthSpec> {
        let base = SynthSpec {
            hidden: 2048,
            layers: 16,
            heads: 32,
            kv_heads: 8,
            intermediate: 8192,
            vocab: 128_256,
            max_positions: 8192,
            dtype: DType::BF16,
            tie_embeddings: true,
            seed: 0,
        };
        Ok(match name {
            "tiny" => SynthSpec {
                hidden: 64,
                layers: 2,
                heads: 4,
                kv_heads: 2,
                intermediate: 128,
                vocab: 300,
                max_positions: 512,
                dtype: DType::F32,
                ..base
            },
            "1b" => base,
            "8b" => SynthSpec { hidden: 4096, layers: 32, intermediate: 14_336, tie_embeddings: false, ..base },
            other => {
                return Err(ModelError::Config(format!("unknown synthetic model preset {other:?}; use tiny, 1b or 8b")))
            }
        })
    }

    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads.max(1)
    }

    /// Checks the shape is one the Llama architecture can have.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.hidden == 0 || self.layers == 0 || self.heads == 0 || self.kv_heads == 0 || self.intermediate == 0 {
            return bad("hidden size, layers, heads, kv heads and intermediate size must all be at least 1".into());
        }
        if self.hidden % self.heads != 0 {
            return bad(format!("{} heads do not divide the hidden size {}", self.heads, self.hidden));
        }
        if self.heads % self.kv_heads != 0 {
            return bad(format!("{} kv heads do not divide {} query heads", self.kv_heads, self.heads));
        }
        if self.head_dim() % 2 != 0 {
            return bad(format!("head dimension {} must be even for rotary embeddings", self.head_dim()));
        }
        if self.vocab < 258 {
            return bad(format!("vocabulary of {} tokens: at least 258 (256 bytes and 2 special tokens)", self.vocab));
        }
        if !matches!(self.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return bad(format!("weights can be f32, f16 or bf16, not {}", self.dtype));
        }
        Ok(())
    }

    /// Every tensor: name and shape, in file order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, d, f) = (self.hidden, self.head_dim(), self.intermediate);
        let kv = self.kv_heads * d;
        let mut t = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, h])];
        for i in 0..self.layers {
            let p = format!("model.layers.{i}");
            t.extend([
                (format!("{p}.input_layernorm.weight"), vec![h]),
                (format!("{p}.self_attn.q_proj.weight"), vec![h, h]),
                (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.o_proj.weight"), vec![h, h]),
                (format!("{p}.post_attention_layernorm.weight"), vec![h]),
                (format!("{p}.mlp.gate_proj.weight"), vec![f, h]),
                (format!("{p}.mlp.up_proj.weight"), vec![f, h]),
                (format!("{p}.mlp.down_proj.weight"), vec![h, f]),
            ]);
        }
        t.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_embeddings {
            t.push(("lm_head.weight".to_string(), vec![self.vocab, h]));
        }
        t
    }

    /// Parameters in total.
    pub fn params(&self) -> u64 {
        self.tensors().iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum()
    }
}

/// A tensor whose values are generated when it is written.
struct Lazy<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    /// `Some(v)`: every value is `v` (norm weights); else uniform with standard deviation 0.02.
    fill: Option<f32>,
    seed: u64,
    /// Called with this tensor's bytes once they are generated.
    done: &'a dyn Fn(u64),
}

impl Lazy<'_> {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl View for &Lazy<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let n = self.numel();
        let mut rng = Rng::new(self.seed);
        // Uniform on [-a, a] has standard deviation a / sqrt(3).
        let a = 0.02 * 3f32.sqrt();
        let mut next = || match self.fill {
            Some(v) => v,
            None => ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a,
        };
        let mut out = Vec::with_capacity(self.data_len());
        match self.dtype {
            Dtype::F16 => (0..n).for_each(|_| out.extend(half::f16::from_f32(next()).to_le_bytes())),
            Dtype::BF16 => (0..n).for_each(|_| out.extend(half::bf16::from_f32(next()).to_le_bytes())),
            _ => (0..n).for_each(|_| out.extend(next().to_le_bytes())),
        }
        (self.done)(out.len() as u64);
        Cow::Owned(out)
    }
    fn data_len(&self) -> usize {
        self.numel() * value_bytes(self.dtype)
    }
}

/// Bytes of one value of the weights' storage type (f32, or a 16-bit type).
fn value_bytes(d: Dtype) -> usize {
    if d == Dtype::F32 {
        4
    } else {
        2
    }
}

/// What [`write`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Parameters.
    pub params: u64,
    /// Bytes of `model.safetensors`.
    pub bytes: u64,
}

/// Writes the model folder `out` (created if needed), calling `progress(bytes written, total)` as
/// tensors are generated.
pub fn write(spec: &SynthSpec, out: &Path, progress: &dyn Fn(u64, u64)) -> Result<Written> {
    spec.validate()?;
    let dtype = match spec.dtype {
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        _ => Dtype::F32,
    };
    let total = spec.params() * value_bytes(dtype) as u64;
    let written = std::sync::atomic::AtomicU64::new(0);
    let done = |n: u64| {
        let now = written.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        progress(now, total);
    };
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let tensors: Vec<(String, Lazy)> = spec
        .tensors()
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let fill = name.ends_with("norm.weight").then_some(1.0);
            let seed = spec.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64 + 1);
            (name, Lazy { dtype, shape, fill, seed, done: &done })
        })
        .collect();
    let file = out.join("model.safetensors");
    safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), None, &file)
        .map_err(|e| ModelError::corrupt(&file, e.to_string()))?;
    let bytes = std::fs::metadata(&file).map_err(|e| ModelError::io(&file, e))?.len();
    let put = |name: &str, v: &serde_json::Value| -> Result<()> {
        let path = out.join(name);
        let text = serde_json::to_string_pretty(v).map_err(|e| ModelError::Config(e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| ModelError::io(&path, e))
    };
    put("config.json", &config(spec))?;
    put("tokenizer.json", &tokenizer(spec.vocab))?;
    Ok(Written { params: spec.params(), bytes })
}

/// Ids of the special tokens: the last two of the vocabulary.
fn specials(vocab: usize) -> (usize, usize) {
    (vocab - 2, vocab - 1)
}

fn config(s: &SynthSpec) -> serde_json::Value {
    let (bos, eos) = specials(s.vocab);
    let dtype = match s.dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    };
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "head_dim": s.head_dim(),
        "vocab_size": s.vocab,
        "max_position_embeddings": s.max_positions,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": s.tie_embeddings,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": dtype,
        "turbine_synthetic": {"seed": s.seed, "note": "random weights for benchmarks; the text it writes is noise"}
    })
}

/// A byte-level BPE with no merges: ids 0..256 are the bytes (in the byte-level alphabet's
/// order), then reserved tokens, then `<|begin_of_text|>` and `<|end_of_text|>`.
fn tokenizer(vocab: usize) -> serde_json::Value {
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let (bos, eos) = specials(vocab);
    let mut map = serde_json::Map::new();
    for (i, c) in alphabet.iter().enumerate() {
        map.insert(c.to_string(), i.into());
    }
    for i in alphabet.len()..bos {
        map.insert(format!("<|reserved_{}|>", i - alphabet.len()), i.into());
    }
    map.insert("<|begin_of_text|>".into(), bos.into());
    map.insert("<|end_of_text|>".into(), eos.into());
    let added = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let byte_level =
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(bos, "<|begin_of_text|>"), added(eos, "<|end_of_text|>")],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": map, "merges": []}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_published_sizes() {
        let b1 = SynthSpec::preset("1b").unwrap().params() as f64 / 1e9;
        let b8 = SynthSpec::preset("8b").unwrap().params() as f64 / 1e9;
        assert!((1.2..1.3).contains(&b1), "{b1}");
        assert!((7.9..8.1).contains(&b8), "{b8}");
        assert!(SynthSpec::preset("70b").unwrap_err().to_string().contains("70b"));
    }

    #[test]
    fn shapes_are_checked() {
        let t = SynthSpec::preset("tiny").unwrap();
        assert!(SynthSpec { heads: 3, ..t.clone() }.validate().unwrap_err().to_string().contains("3 heads"));
        assert!(SynthSpec { kv_heads: 3, ..t.clone() }.validate().unwrap_err().to_string().contains("kv heads"));
        assert!(SynthSpec { vocab: 100, ..t.clone() }.validate().unwrap_err().to_string().contains("258"));
        assert!(SynthSpec { dtype: DType::I8, ..t }.validate().is_err());
    }
}
