//! GPT-NeoX / Pythia: LayerNorm, partial rotary (`rotary_pct` / `partial_rotary_factor`),
//! parallel (default) or sequential residual, fused QKV interleaved per head.

use turbine_core::{Act, NormKind, Ops};

use crate::config::HfConfig;
use crate::layers::{activation, CommonConfig, Decoder, DecoderOpts, Layer, Linear, Norm};
use crate::model::Architecture;
use crate::weights::{per_head_qkv_order, Weights};
use super::llama::decoder_model;
use crate::{ModelError, Result};

/// `config.json` architecture names served by this file.
pub const HF_NAMES: &[&str] = &["GPTNeoXForCausalLM"];

/// A GPT-NeoX model.
pub struct GptNeoX<B: Ops>(Decoder<B>);

/// Loads a fused QKV linear stored per head and reorders it.
pub(crate) fn per_head_qkv<B: Ops>(
    w: &Weights<'_, B>,
    prefix: &str,
    heads: usize,
    d: usize,
    h: usize,
) -> Result<Linear<B>> {
    let perm = per_head_qkv_order(heads, d);
    let key = format!("{prefix}.weight");
    let bias = w.get_permuted(&format!("{prefix}.bias"), &[3 * heads * d], &perm)?;
    Linear::from_host(w, w.host_permuted(&key, &[3 * heads * d, h], &perm)?.ok_or(ModelError::MissingWeight { key })?, bias)
}

impl<B: Ops> Architecture<B> for GptNeoX<B> {
    fn load(cfg: &HfConfig, w: &Weights<'_, B>) -> Result<Self> {
        let c = CommonConfig::from_hf(cfg, false)?;
        let s = &c.spec;
        let (h, f, d, heads) = (s.hidden, c.intermediate, s.head_dim, s.q_heads);
        let parallel = cfg.opt_bool("use_parallel_residual")?.unwrap_or(true);
        let layers = (0..s.layers)
            .map(|i| {
                let p = |n: &str| format!("gpt_neox.layers.{i}.{n}");
                Ok(Layer {
                    attn_norm: Norm::load(w, &p("input_layernorm"), h)?,
                    mlp_norm: Some(Norm::load(w, &p("post_attention_layernorm"), h)?),
                    qkv: per_head_qkv(w, &p("attention.query_key_value"), heads, d, h)?,
                    qk_norm: None,
                    o: Linear::load(w, &p("attention.dense"), h, h)?,
                    post_attn_norm: None,
                    up: Linear::load(w, &p("mlp.dense_h_to_4h"), f, h)?,
                    down: Linear::load(w, &p("mlp.dense_4h_to_h"), h, f)?,
                    post_mlp_norm: None,
                    window: None,
                    rope: Some(0),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if c.tied { None } else { Some(Linear::load(w, "embed_out", s.vocab, h)?) };
        Ok(GptNeoX(Decoder {
            opts: DecoderOpts {
                norm: NormKind::Layer { eps: c.eps },
                act: activation(cfg, "hidden_act", Act::Gelu)?,
                gated: false,
                parallel,
                attn_scale: 1.0 / (d as f32).sqrt(),
                alibi: None,
                embed_scale: 1.0,
            },
            embed: w.table("gpt_neox.embed_in.weight", &[s.vocab, h])?,
            pos_embed: None,
            embed_norm: None,
            layers,
            final_norm: Norm::load(w, "gpt_neox.final_layer_norm", h)?,
            lm_head,
            ropes: vec![c.rope.table_for(w, s.max_positions)?],
            observer: None,
            spec: c.spec,
        }))
    }
}

decoder_model!(GptNeoX);
