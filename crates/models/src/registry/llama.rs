//! Llama (1, 2, 3.x) and the many checkpoints built like it (SmolLM, TinyLlama, …): MHA, GQA or
//! MQA, any head dimension, tied or separate embeddings. Also the builder the other Llama-style
//! families (Mistral, Qwen2, Qwen3, Phi-3, Gemma 3) share: same tensor names, their own options.

use turbine_core::{Act, NormKind, Ops};

use crate::config::HfConfig;
use crate::layers::{activation, CommonConfig, Decoder, DecoderOpts, Layer, Linear, Norm};
use crate::model::Architecture;
use crate::rope::RopeSpec;
use crate::weights::Weights;
use crate::Result;

/// `config.json` architecture names served by this file.
pub const HF_NAMES: &[&str] = &["LlamaForCausalLM"];

/// What a Llama-style family changes.
pub(crate) struct Style {
    /// MLP activation (gated).
    pub act: Act,
    /// Added to RMSNorm weights (1 for Gemma).
    pub norm_offset: f32,
    /// Per-head q/k norms (`self_attn.{q,k}_norm`).
    pub qk_norm: bool,
    /// Gemma's four norms per block.
    pub sandwich_norms: bool,
    /// Fused `qkv_proj` and `gate_up_proj` tensors (Phi-3).
    pub fused: bool,
    /// Sliding window of each layer.
    pub windows: Vec<Option<usize>>,
    /// Rotary settings, and which one each layer uses.
    pub ropes: Vec<RopeSpec>,
    /// Index into `ropes` per layer.
    pub layer_rope: Vec<usize>,
    /// Embedding multiplier.
    pub embed_scale: f32,
    /// Attention score scale.
    pub attn_scale: f32,
}

impl Style {
    /// Plain Llama settings: SiLU, one rotary table, the same window (if any) on every layer.
    pub fn llama(c: &CommonConfig, cfg: &HfConfig, window: Option<usize>) -> Result<Self> {
        let n = c.spec.layers;
        Ok(Style {
            act: activation(cfg, "hidden_act", Act::Silu)?,
            norm_offset: 0.0,
            qk_norm: false,
            sandwich_norms: false,
            fused: false,
            windows: vec![window.filter(|&w| w > 0); n],
            ropes: vec![c.rope.clone()],
            layer_rope: vec![0; n],
            embed_scale: 1.0,
            attn_scale: 1.0 / (c.spec.head_dim as f32).sqrt(),
        })
    }
}

/// Builds a Llama-style decoder from Hugging Face tensor names.
pub(crate) fn build<B: Ops>(c: &CommonConfig, w: &Weights<'_, B>, st: &Style) -> Result<Decoder<B>> {
    let s = &c.spec;
    let (h, f, d) = (s.hidden, c.intermediate, s.head_dim);
    let (qd, kd) = (s.q_heads * d, s.kv_heads * d);
    let layers = (0..s.layers)
        .map(|i| {
            let p = |n: &str| format!("model.layers.{i}.{n}");
            let (qkv, up) = if st.fused {
                (
                    Linear::load(w, &p("self_attn.qkv_proj"), qd + 2 * kd, h)?,
                    Linear::load(w, &p("mlp.gate_up_proj"), 2 * f, h)?,
                )
            } else {
                let attn = ["q_proj", "k_proj", "v_proj"].map(|n| p(&format!("self_attn.{n}")));
                let mlp = ["gate_proj", "up_proj"].map(|n| p(&format!("mlp.{n}")));
                (
                    Linear::fused(w, &attn.each_ref().map(String::as_str), &[qd, kd, kd], h)?,
                    Linear::fused(w, &mlp.each_ref().map(String::as_str), &[f, f], h)?,
                )
            };
            let qk_norm = if st.qk_norm {
                Some((w.get(&p("self_attn.q_norm.weight"), &[d])?, w.get(&p("self_attn.k_norm.weight"), &[d])?))
            } else {
                None
            };
            let (mlp_norm, post_attn, post_mlp) = if st.sandwich_norms {
                (
                    Norm::load(w, &p("pre_feedforward_layernorm"), h)?,
                    Some(Norm::load(w, &p("post_attention_layernorm"), h)?),
                    Some(Norm::load(w, &p("post_feedforward_layernorm"), h)?),
                )
            } else {
                (Norm::load(w, &p("post_attention_layernorm"), h)?, None, None)
            };
            Ok(Layer {
                attn_norm: Norm::load(w, &p("input_layernorm"), h)?,
                mlp_norm: Some(mlp_norm),
                qkv,
                qk_norm,
                o: Linear::load(w, &p("self_attn.o_proj"), h, qd)?,
                post_attn_norm: post_attn,
                up,
                down: Linear::load(w, &p("mlp.down_proj"), h, f)?,
                post_mlp_norm: post_mlp,
                window: st.windows[i],
                rope: Some(st.layer_rope[i]),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let lm_head = if c.tied { None } else { Some(Linear::load(w, "lm_head", s.vocab, h)?) };
    let ropes = st.ropes.iter().map(|r| r.table_for(w, s.max_positions)).collect::<Result<Vec<_>>>()?;
    Ok(Decoder {
        spec: s.clone(),
        opts: DecoderOpts {
            norm: NormKind::Rms { eps: c.eps, offset: st.norm_offset },
            act: st.act,
            gated: true,
            parallel: false,
            attn_scale: st.attn_scale,
            alibi: None,
            embed_scale: st.embed_scale,
        },
        embed: w.table("model.embed_tokens.weight", &[s.vocab, h])?,
        pos_embed: None,
        embed_norm: None,
        layers,
        final_norm: Norm::load(w, "model.norm", h)?,
        lm_head,
        ropes,
        observer: None,
    })
}

/// Implements [`Model`] for a newtype over [`Decoder`].
macro_rules! decoder_model {
    ($ty:ident) => {
        impl<B: Ops> $crate::model::Model<B> for $ty<B> {
            fn spec(&self) -> &$crate::model::ModelSpec {
                &self.0.spec
            }

            fn forward(
                &self,
                b: &B,
                step: &$crate::model::Step<B>,
                kv: &mut [turbine_core::KvPages<B>],
                ws: &mut $crate::model::Workspace<B>,
            ) -> $crate::Result<()> {
                self.0.forward(b, step, kv, ws)
            }

            fn decoder(&self) -> Option<&$crate::layers::Decoder<B>> {
                Some(&self.0)
            }

            fn decoder_mut(&mut self) -> Option<&mut $crate::layers::Decoder<B>> {
                Some(&mut self.0)
            }
        }
    };
}
pub(crate) use decoder_model;

/// A Llama model.
pub struct Llama<B: Ops>(Decoder<B>);

impl<B: Ops> Architecture<B> for Llama<B> {
    fn load(cfg: &HfConfig, w: &Weights<'_, B>) -> Result<Self> {
        let c = CommonConfig::from_hf(cfg, false)?;
        Ok(Llama(build(&c, w, &Style::llama(&c, cfg, None)?)?))
    }
}

decoder_model!(Llama);
