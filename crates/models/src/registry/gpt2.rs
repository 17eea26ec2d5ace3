//! GPT-2: learned positions, LayerNorm, `gelu_new`, Conv1D weights stored `[in, out]`
//! (transposed at load), fused `c_attn`, head tied to the token embeddings.

use turbine_core::{NormKind, Ops};

use crate::config::HfConfig;
use crate::layers::{activation, Decoder, DecoderOpts, Layer, Linear, Norm};
use crate::model::{Architecture, ModelSpec};
use crate::weights::Weights;
use super::llama::decoder_model;
use crate::{ModelError, Result};

/// `config.json` architecture names served by this file.
pub const HF_NAMES: &[&str] = &["GPT2LMHeadModel"];

/// A GPT-2 model.
pub struct Gpt2<B: Ops>(Decoder<B>);

/// A Conv1D layer: weight `[in, out]` in the file, bias `[out]`.
fn conv1d<B: Ops>(w: &Weights<'_, B>, prefix: &str, out: usize, inp: usize) -> Result<Linear<B>> {
    Linear::from_host(w, w.host_transposed(&format!("{prefix}.weight"), [out, inp])?, w.get_opt(&format!("{prefix}.bias"), &[out])?)
}

impl<B: Ops> Architecture<B> for Gpt2<B> {
    fn load(cfg: &HfConfig, w: &Weights<'_, B>) -> Result<Self> {
        let h = cfg.usize("n_embd")?;
        let heads = cfg.usize("n_head")?;
        if heads == 0 || h % heads != 0 {
            return Err(ModelError::Config(format!("n_embd {h} is not divisible by n_head {heads}")));
        }
        if cfg.opt_bool("scale_attn_by_inverse_layer_idx")?.unwrap_or(false) {
            return Err(ModelError::Config("scale_attn_by_inverse_layer_idx is not supported yet".into()));
        }
        let d = h / heads;
        let f = cfg.opt_usize("n_inner")?.unwrap_or(4 * h);
        let vocab = cfg.usize("vocab_size")?;
        let positions = cfg.opt_usize("n_positions")?.unwrap_or(1024);
        let spec = ModelSpec {
            arch: cfg.arch()?.to_string(),
            hidden: h,
            layers: cfg.usize("n_layer")?,
            q_heads: heads,
            kv_heads: heads,
            head_dim: d,
            vocab,
            max_positions: positions,
            bos: cfg.bos(),
            eos: cfg.eos(),
        };
        // Checkpoints are saved with or without the `transformer.` prefix.
        let pre = if w.opt_host("transformer.wte.weight", &[vocab, h])?.is_some() { "transformer." } else { "" };
        let layers = (0..spec.layers)
            .map(|i| {
                let p = |n: &str| format!("{pre}h.{i}.{n}");
                Ok(Layer {
                    attn_norm: Norm::load(w, &p("ln_1"), h)?,
                    mlp_norm: Some(Norm::load(w, &p("ln_2"), h)?),
                    qkv: conv1d(w, &p("attn.c_attn"), 3 * h, h)?,
                    qk_norm: None,
                    o: conv1d(w, &p("attn.c_proj"), h, h)?,
                    post_attn_norm: None,
                    up: conv1d(w, &p("mlp.c_fc"), f, h)?,
                    down: conv1d(w, &p("mlp.c_proj"), h, f)?,
                    post_mlp_norm: None,
                    window: None,
                    rope: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let scale = if cfg.opt_bool("scale_attn_weights")?.unwrap_or(true) { 1.0 / (d as f32).sqrt() } else { 1.0 };
        Ok(Gpt2(Decoder {
            opts: DecoderOpts {
                norm: NormKind::Layer { eps: cfg.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5) as f32 },
                act: activation(cfg, "activation_function", turbine_core::Act::GeluTanh)?,
                gated: false,
                parallel: false,
                attn_scale: scale,
                alibi: None,
                embed_scale: 1.0,
            },
            embed: w.table(&format!("{pre}wte.weight"), &[vocab, h])?,
            pos_embed: Some(w.table(&format!("{pre}wpe.weight"), &[positions, h])?),
            embed_norm: None,
            layers,
            final_norm: Norm::load(w, &format!("{pre}ln_f"), h)?,
            lm_head: None,
            ropes: Vec::new(),
            observer: None,
            spec,
        }))
    }
}

decoder_model!(Gpt2);
