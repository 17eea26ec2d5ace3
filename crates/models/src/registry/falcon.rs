//! Falcon, both generations: 7B style (`multi_query`, `parallel_attn`, one LayerNorm) and the
//! 40B/180B style (`new_decoder_architecture`, `num_kv_heads`, `ln_attn` and `ln_mlp`); rotary
//! or ALiBi as the config says.

use turbine_core::{Act, NormKind, Ops};

use crate::config::HfConfig;
use crate::layers::{activation, check_heads, Decoder, DecoderOpts, Layer, Linear, Norm};
use crate::model::{Architecture, ModelSpec};
use crate::rope::RopeSpec;
use crate::weights::{grouped_qkv_order, per_head_qkv_order, Weights};
use super::llama::decoder_model;
use crate::{ModelError, Result};

/// `config.json` architecture names served by this file.
pub const HF_NAMES: &[&str] = &["FalconForCausalLM", "RWForCausalLM"];

/// A Falcon model.
pub struct Falcon<B: Ops>(Decoder<B>);

fn first(cfg: &HfConfig, keys: &[&str]) -> Result<usize> {
    for k in keys {
        if let Some(v) = cfg.opt_usize(k)? {
            return Ok(v);
        }
    }
    Err(ModelError::Config(format!("missing {}", keys.join(" / "))))
}

impl<B: Ops> Architecture<B> for Falcon<B> {
    fn load(cfg: &HfConfig, w: &Weights<'_, B>) -> Result<Self> {
        let h = first(cfg, &["hidden_size", "n_embed"])?;
        let heads = first(cfg, &["num_attention_heads", "n_head"])?;
        let new_arch = cfg.opt_bool("new_decoder_architecture")?.unwrap_or(false);
        let kv_heads = if new_arch {
            first(cfg, &["num_kv_heads", "n_head_kv"])?
        } else if cfg.opt_bool("multi_query")?.unwrap_or(true) {
            1
        } else {
            heads
        };
        check_heads(heads, kv_heads)?;
        if h % heads != 0 {
            return Err(ModelError::Config(format!("hidden_size {h} is not divisible by {heads} heads")));
        }
        let (d, vocab) = (h / heads, cfg.usize("vocab_size")?);
        let f = cfg.opt_usize("ffn_hidden_size")?.unwrap_or(4 * h);
        let n_layers = first(cfg, &["num_hidden_layers", "n_layer"])?;
        let alibi = cfg.opt_bool("alibi")?.unwrap_or(false);
        let parallel = new_arch || cfg.opt_bool("parallel_attn")?.unwrap_or(true);
        let two_norms = new_arch && cfg.opt_usize("num_ln_in_parallel_attn")?.unwrap_or(2) == 2;
        let spec = ModelSpec {
            arch: cfg.arch()?.to_string(),
            hidden: h,
            layers: n_layers,
            q_heads: heads,
            kv_heads,
            head_dim: d,
            vocab,
            max_positions: cfg.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            bos: cfg.bos(),
            eos: cfg.eos(),
        };
        let qkv_rows = (heads + 2 * kv_heads) * d;
        let order = if new_arch {
            Some(grouped_qkv_order(kv_heads, heads / kv_heads, d))
        } else if kv_heads == heads {
            Some(per_head_qkv_order(heads, d))
        } else {
            None // multi-query: already [q heads | k | v]
        };
        let layers = (0..n_layers)
            .map(|i| {
                let p = |n: &str| format!("transformer.h.{i}.{n}");
                let qkv_key = p("self_attention.query_key_value");
                let qkv = match &order {
                    Some(perm) => Linear::from_host(
                        w,
                        w.host_permuted(&format!("{qkv_key}.weight"), &[qkv_rows, h], perm)?
                            .ok_or_else(|| ModelError::MissingWeight { key: format!("{qkv_key}.weight") })?,
                        w.get_permuted(&format!("{qkv_key}.bias"), &[qkv_rows], perm)?,
                    )?,
                    None => Linear::load(w, &qkv_key, qkv_rows, h)?,
                };
                let (attn_norm, mlp_norm) = if two_norms {
                    (Norm::load(w, &p("ln_attn"), h)?, Some(Norm::load(w, &p("ln_mlp"), h)?))
                } else if parallel {
                    (Norm::load(w, &p("input_layernorm"), h)?, None)
                } else {
                    (Norm::load(w, &p("input_layernorm"), h)?, Some(Norm::load(w, &p("post_attention_layernorm"), h)?))
                };
                Ok(Layer {
                    attn_norm,
                    mlp_norm,
                    qkv,
                    qk_norm: None,
                    o: Linear::load(w, &p("self_attention.dense"), h, h)?,
                    post_attn_norm: None,
                    up: Linear::load(w, &p("mlp.dense_h_to_4h"), f, h)?,
                    down: Linear::load(w, &p("mlp.dense_4h_to_h"), h, f)?,
                    post_mlp_norm: None,
                    window: None,
                    rope: (!alibi).then_some(0),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tied = cfg.opt_bool("tie_word_embeddings")?.unwrap_or(true);
        let scale = 1.0 / (d as f32).sqrt();
        let ropes =
            if alibi { Vec::new() } else { vec![RopeSpec::from_hf(cfg, d)?.table_for(w, spec.max_positions)?] };
        Ok(Falcon(Decoder {
            opts: DecoderOpts {
                norm: NormKind::Layer { eps: cfg.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5) as f32 },
                act: activation(cfg, "activation", Act::Gelu)?,
                gated: false,
                parallel,
                attn_scale: scale,
                // Falcon adds the ALiBi biases before scaling the scores.
                alibi: alibi.then_some(scale),
                embed_scale: 1.0,
            },
            embed: w.table("transformer.word_embeddings.weight", &[vocab, h])?,
            pos_embed: None,
            embed_norm: None,
            layers,
            final_norm: Norm::load(w, "transformer.ln_f", h)?,
            lm_head: if tied { None } else { Some(Linear::load(w, "lm_head", vocab, h)?) },
            ropes,
            observer: None,
            spec,
        }))
    }
}

decoder_model!(Falcon);
