//! Hugging Face ↔ GGUF: tensor names per architecture, and undoing the re-layouts llama.cpp's
//! converter applies, so architectures only ever see the Hugging Face form.

use turbine_core::HostTensor;

use crate::rows::{as_rows, grouped_qkv_order, invert, per_head_qkv_order};
use crate::{ModelError, Result};

/// Head geometry of a GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub q: usize,
    /// Key/value heads.
    pub kv: usize,
    /// Head dimension.
    pub d: usize,
}

type Pairs = &'static [(&'static str, &'static str)];

/// How one architecture names its tensors: whole-model tensors, the per-layer prefix, and the
/// per-layer modules (`overrides` win over `modules`).
struct Scheme {
    fixed: Pairs,
    layers: &'static str,
    overrides: Pairs,
    modules: Pairs,
}

const LLAMA_FIXED: Pairs = &[
    ("model.embed_tokens", "token_embd"),
    ("model.norm", "output_norm"),
    ("lm_head", "output"),
    // Not a transformers tensor: llama.cpp's per-frequency rotary divisors (`rope::FREQ_FACTORS`).
    ("model.rope_freqs", "rope_freqs"),
];
const LLAMA_MODULES: Pairs = &[
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];
const GEMMA3: Pairs = &[
    ("post_attention_layernorm", "post_attention_norm"),
    ("pre_feedforward_layernorm", "ffn_norm"),
    ("post_feedforward_layernorm", "post_ffw_norm"),
];
const PHI3: Pairs = &[("self_attn.qkv_proj", "attn_qkv"), ("mlp.gate_up_proj", "ffn_up")];
const NEOX_STYLE: Pairs = &[
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    // llama.cpp's Falcon-40B mapping: ln_mlp is attn_norm, ln_attn is attn_norm_2.
    ("ln_mlp", "attn_norm"),
    ("ln_attn", "attn_norm_2"),
    ("self_attention.query_key_value", "attn_qkv"),
    ("self_attention.dense", "attn_output"),
    ("attention.query_key_value", "attn_qkv"),
    ("attention.dense", "attn_output"),
    ("mlp.dense_h_to_4h", "ffn_up"),
    ("mlp.dense_4h_to_h", "ffn_down"),
];

fn scheme(arch: &str) -> Scheme {
    let llama = |overrides| Scheme { fixed: LLAMA_FIXED, layers: "model.layers.", overrides, modules: LLAMA_MODULES };
    match arch {
        "gemma3" => llama(GEMMA3),
        "phi3" => llama(PHI3),
        "gpt2" => Scheme {
            fixed: &[
                ("transformer.wte", "token_embd"),
                ("transformer.wpe", "position_embd"),
                ("transformer.ln_f", "output_norm"),
            ],
            layers: "transformer.h.",
            overrides: &[],
            modules: &[
                ("ln_1", "attn_norm"),
                ("attn.c_attn", "attn_qkv"),
                ("attn.c_proj", "attn_output"),
                ("ln_2", "ffn_norm"),
                ("mlp.c_fc", "ffn_up"),
                ("mlp.c_proj", "ffn_down"),
            ],
        },
        "bloom" | "falcon" => Scheme {
            fixed: &[
                ("transformer.word_embeddings", "token_embd"),
                ("transformer.word_embeddings_layernorm", "token_embd_norm"),
                ("transformer.ln_f", "output_norm"),
                ("lm_head", "output"),
            ],
            layers: "transformer.h.",
            overrides: &[],
            modules: NEOX_STYLE,
        },
        "gptneox" => Scheme {
            fixed: &[
                ("gpt_neox.embed_in", "token_embd"),
                ("gpt_neox.final_layer_norm", "output_norm"),
                ("embed_out", "output"),
            ],
            layers: "gpt_neox.layers.",
            overrides: &[],
            modules: NEOX_STYLE,
        },
        _ => llama(&[]),
    }
}

/// Translates a Hugging Face tensor name to its GGUF name in a file of architecture `arch`.
pub fn gguf_name(arch: &str, hf: &str) -> Option<String> {
    let (path, kind) = hf.rsplit_once('.')?;
    let s = scheme(arch);
    if let Some((_, g)) = s.fixed.iter().find(|(h, _)| *h == path) {
        return Some(format!("{g}.{kind}"));
    }
    let (layer, module) = path.strip_prefix(s.layers)?.split_once('.')?;
    let (_, g) = s.overrides.iter().chain(s.modules).find(|(h, _)| *h == module)?;
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// Row order that undoes llama.cpp's rotary permutation of a Q or K projection with `heads` heads:
/// within each head, GGUF interleaves the two rotary halves.
fn unpermute_rows(rows: usize, heads: usize) -> Vec<usize> {
    let d = rows / heads;
    let half = d / 2;
    let mut perm = Vec::with_capacity(rows);
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                perm.push(h * d + 2 * i + j);
            }
        }
    }
    perm
}

/// Reorders the rows (first dimension) of a weight or bias.
fn reorder(t: HostTensor<'_>, perm: &[usize], key: &str) -> Result<HostTensor<'static>> {
    let shape = t.shape().clone();
    let rows = as_rows(t)?;
    if rows.shape().rows() != perm.len() {
        return Err(ModelError::WeightShape {
            key: key.into(),
            expected: format!("{} rows", perm.len()),
            got: shape.to_string(),
        });
    }
    Ok(rows.permute_rows(perm)?.reshape(shape)?)
}

/// Puts a GGUF tensor (`gguf` is its GGUF name) back in the Hugging Face layout.
pub(crate) fn restore<'a>(arch: &str, gguf: &str, h: Heads, t: HostTensor<'a>) -> Result<Option<HostTensor<'a>>> {
    let module = gguf.rsplit('.').nth(1).unwrap_or("");
    let weight2d = gguf.ends_with(".weight") && t.shape().rank() == 2;
    let out = match (arch, module) {
        ("llama", "attn_q" | "attn_k") => {
            let heads = if module == "attn_q" { h.q } else { h.kv };
            let rows = t.shape().dims()[0];
            if rows % heads != 0 || (rows / heads) % 2 != 0 {
                return Err(ModelError::WeightShape {
                    key: gguf.into(),
                    expected: format!("rows divisible into {heads} heads of even size"),
                    got: t.shape().to_string(),
                });
            }
            reorder(t, &unpermute_rows(rows, heads), gguf)?
        }
        // GPT-2's Conv1D weights are [in, out] in Hugging Face checkpoints.
        ("gpt2", "attn_qkv" | "attn_output" | "ffn_up" | "ffn_down") if weight2d => t.transpose()?,
        // The converters turn the per-head interleaved QKV into [q | k | v].
        ("bloom" | "gptneox", "attn_qkv") => reorder(t, &invert(&per_head_qkv_order(h.q, h.d)), gguf)?,
        ("falcon", "attn_qkv") if h.kv > 1 => reorder(t, &invert(&grouped_qkv_order(h.kv, h.q / h.kv, h.d)), gguf)?,
        _ => return Ok(Some(t)),
    };
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_translate() {
        let n = |a, h| gguf_name(a, h);
        assert_eq!(n("llama", "model.layers.3.self_attn.k_proj.bias").as_deref(), Some("blk.3.attn_k.bias"));
        assert_eq!(n("llama", "model.layers.0.mlp.down_proj.weight").as_deref(), Some("blk.0.ffn_down.weight"));
        assert_eq!(
            n("llama", "model.layers.1.post_attention_layernorm.weight").as_deref(),
            Some("blk.1.ffn_norm.weight")
        );
        assert_eq!(
            n("gemma3", "model.layers.1.post_attention_layernorm.weight").as_deref(),
            Some("blk.1.post_attention_norm.weight")
        );
        assert_eq!(
            n("gemma3", "model.layers.1.pre_feedforward_layernorm.weight").as_deref(),
            Some("blk.1.ffn_norm.weight")
        );
        assert_eq!(n("qwen3", "model.layers.0.self_attn.q_norm.weight").as_deref(), Some("blk.0.attn_q_norm.weight"));
        assert_eq!(n("llama", "lm_head.weight").as_deref(), Some("output.weight"));
        assert_eq!(n("llama", "model.layers.0.unknown.weight"), None);
        assert_eq!(n("gpt2", "transformer.h.1.mlp.c_fc.bias").as_deref(), Some("blk.1.ffn_up.bias"));
        assert_eq!(
            n("bloom", "transformer.word_embeddings_layernorm.weight").as_deref(),
            Some("token_embd_norm.weight")
        );
        assert_eq!(n("falcon", "transformer.h.0.ln_attn.weight").as_deref(), Some("blk.0.attn_norm_2.weight"));
        assert_eq!(n("gptneox", "embed_out.weight").as_deref(), Some("output.weight"));
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, d/2, ...).swapaxes(1, 2): GGUF row h*d + 2i + j holds
        // HF row h*d + j*d/2 + i.
        let (heads, d) = (2, 6);
        let hf: Vec<usize> = (0..heads * d).collect();
        let mut gguf = vec![0; heads * d];
        for h in 0..heads {
            for i in 0..d / 2 {
                for j in 0..2 {
                    gguf[h * d + 2 * i + j] = hf[h * d + j * d / 2 + i];
                }
            }
        }
        let back: Vec<usize> = unpermute_rows(heads * d, heads).iter().map(|&r| gguf[r]).collect();
        assert_eq!(back, hf);
    }
}
