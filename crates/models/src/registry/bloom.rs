//! Bloom: ALiBi (any head count), LayerNorm after the embedding, fused QKV interleaved per head,
//! tanh-approximated GELU, head tied to the embeddings.

use turbine_core::{Act, NormKind, Ops};

use crate::config::HfConfig;
use super::gptneox::per_head_qkv;
use crate::layers::{Decoder, DecoderOpts, Layer, Linear, Norm};
use crate::model::{Architecture, ModelSpec};
use crate::weights::Weights;
use super::llama::decoder_model;
use crate::{ModelError, Result};

/// `config.json` architecture names served by this file.
pub const HF_NAMES: &[&str] = &["BloomForCausalLM"];

/// A Bloom model.
pub struct Bloom<B: Ops>(Decoder<B>);

impl<B: Ops> Architecture<B> for Bloom<B> {
    fn load(cfg: &HfConfig, w: &Weights<'_, B>) -> Result<Self> {
        let h = match cfg.opt_usize("hidden_size")? {
            Some(h) => h,
            None => cfg.usize("n_embed")?,
        };
        let heads = match cfg.opt_usize("n_head")? {
            Some(n) => n,
            None => cfg.usize("num_attention_heads")?,
        };
        if heads == 0 || h % heads != 0 {
            return Err(ModelError::Config(format!("hidden_size {h} is not divisible by n_head {heads}")));
        }
        if cfg.opt_bool("apply_residual_connection_post_layernorm")?.unwrap_or(false) {
            return Err(ModelError::Config(
                "apply_residual_connection_post_layernorm = true is not supported yet".into(),
            ));
        }
        let layers = match cfg.opt_usize("n_layer")? {
            Some(n) => n,
            None => cfg.usize("num_hidden_layers")?,
        };
        let (d, vocab) = (h / heads, cfg.usize("vocab_size")?);
        let spec = ModelSpec {
            arch: cfg.arch()?.to_string(),
            hidden: h,
            layers,
            q_heads: heads,
            kv_heads: heads,
            head_dim: d,
            vocab,
            // ALiBi has no trained length; this bounds the KV cache only.
            max_positions: cfg.opt_usize("seq_length")?.unwrap_or(4096),
            bos: cfg.bos(),
            eos: cfg.eos(),
        };
        let blocks = (0..layers)
            .map(|i| {
                let p = |n: &str| format!("transformer.h.{i}.{n}");
                Ok(Layer {
                    attn_norm: Norm::load(w, &p("input_layernorm"), h)?,
                    mlp_norm: Some(Norm::load(w, &p("post_attention_layernorm"), h)?),
                    qkv: per_head_qkv(w, &p("self_attention.query_key_value"), heads, d, h)?,
                    qk_norm: None,
                    o: Linear::load(w, &p("self_attention.dense"), h, h)?,
                    post_attn_norm: None,
                    up: Linear::load(w, &p("mlp.dense_h_to_4h"), 4 * h, h)?,
                    down: Linear::load(w, &p("mlp.dense_4h_to_h"), h, 4 * h)?,
                    post_mlp_norm: None,
                    window: None,
                    rope: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Bloom(Decoder {
            opts: DecoderOpts {
                norm: NormKind::Layer { eps: cfg.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5) as f32 },
                act: Act::GeluTanh,
                gated: false,
                parallel: false,
                attn_scale: 1.0 / (d as f32).sqrt(),
                alibi: Some(1.0),
                embed_scale: 1.0,
            },
            embed: w.table("transformer.word_embeddings.weight", &[vocab, h])?,
            pos_embed: None,
            embed_norm: Some(Norm::load(w, "transformer.word_embeddings_layernorm", h)?),
            layers: blocks,
            final_norm: Norm::load(w, "transformer.ln_f", h)?,
            lm_head: None,
            ropes: Vec::new(),
            observer: None,
            spec,
        }))
    }
}

decoder_model!(Bloom);
