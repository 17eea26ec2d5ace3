//! Gemma 3 (text): local sliding-window and global layers (`layer_types`, or every
//! `sliding_window_pattern`-th layer global), a separate rotary base for local layers, q/k norms,
//! four norms per block, `(1 + w)` RMS norm, embeddings scaled by sqrt(hidden),
//! `gelu_pytorch_tanh`, score scale `query_pre_attn_scalar^-1/2`.

use serde_json::Value as Json;
use turbine_core::{Act, Ops};

use crate::config::{layer_types, HfConfig, GGUF_NORM_SHIFTED};
use crate::layers::{activation, CommonConfig, Decoder};
use super::llama::{build, decoder_model, Style};
use crate::model::Architecture;
use crate::rope::RopeSpec;
use crate::weights::Weights;
use crate::{ModelError, Result};

/// `config.json` architecture names served by this file.
pub const HF_NAMES: &[&str] = &["Gemma3ForCausalLM"];

/// A Gemma 3 text model.
pub struct Gemma3<B: Ops>(Decoder<B>);

/// Whether each layer is global (full attention).
fn global_layers(cfg: &HfConfig, layers: usize) -> Result<Vec<bool>> {
    if let Some(types) = layer_types(cfg, layers)? {
        return Ok(types.iter().map(|t| t == "full_attention").collect());
    }
    let pattern = match cfg.opt_usize("sliding_window_pattern")? {
        Some(p) => p,
        None => cfg.opt_usize("_sliding_window_pattern")?.unwrap_or(6),
    };
    if pattern == 0 {
        return Err(ModelError::Config("sliding_window_pattern must be positive".into()));
    }
    Ok((0..layers).map(|i| (i + 1) % pattern == 0).collect())
}

/// Rotary settings of global and local layers: transformers 5 nests them per layer type in
/// `rope_parameters`; transformers 4 has `rope_theta` (+ `rope_scaling`) for global layers and
/// `rope_local_base_freq` for local ones.
fn ropes(cfg: &HfConfig, rot: usize) -> Result<(RopeSpec, RopeSpec)> {
    let nested = cfg.get("rope_parameters").and_then(Json::as_object).filter(|o| o.contains_key("full_attention"));
    if let Some(p) = nested {
        let get = |k: &str| {
            p.get(k).and_then(Json::as_object).ok_or_else(|| ModelError::Config(format!("rope_parameters.{k} missing")))
        };
        let max_pos = cfg.opt_f64("max_position_embeddings")?;
        return Ok((
            RopeSpec::from_params(get("full_attention")?, rot, 1e6, max_pos)?,
            RopeSpec::from_params(get("sliding_attention")?, rot, 1e4, max_pos)?,
        ));
    }
    let global = RopeSpec::from_hf(cfg, rot)?;
    let local = RopeSpec {
        theta: cfg.opt_f64("rope_local_base_freq")?.unwrap_or(10000.0),
        rot_dim: rot,
        scaling: crate::rope::RopeScaling::None,
    };
    Ok((global, local))
}

impl<B: Ops> Architecture<B> for Gemma3<B> {
    fn load(cfg: &HfConfig, w: &Weights<'_, B>) -> Result<Self> {
        for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
            if let Some(v) = cfg.opt_f64(key)? {
                return Err(ModelError::Config(format!("{key} = {v} is not supported yet")));
            }
        }
        let c = CommonConfig::from_hf(cfg, true)?;
        let n = c.spec.layers;
        let global = global_layers(cfg, n)?;
        let window = cfg.opt_usize("sliding_window")?;
        let (g, l) = ropes(cfg, c.rope.rot_dim)?;
        let scalar = cfg.opt_f64("query_pre_attn_scalar")?.unwrap_or(c.spec.head_dim as f64);
        let act = match cfg.opt_str("hidden_activation") {
            Some(_) => activation(cfg, "hidden_activation", Act::GeluTanh)?,
            None => activation(cfg, "hidden_act", Act::GeluTanh)?,
        };
        let style = Style {
            act,
            // GGUF files store 1 + w already.
            norm_offset: if cfg.opt_bool(GGUF_NORM_SHIFTED)?.unwrap_or(false) { 0.0 } else { 1.0 },
            qk_norm: true,
            sandwich_norms: true,
            fused: false,
            windows: global.iter().map(|&gl| if gl { None } else { window }).collect(),
            ropes: vec![g, l],
            layer_rope: global.iter().map(|&gl| if gl { 0 } else { 1 }).collect(),
            embed_scale: (c.spec.hidden as f64).sqrt() as f32,
            attn_scale: scalar.powf(-0.5) as f32,
        };
        Ok(Gemma3(build(&c, w, &style)?))
    }
}

decoder_model!(Gemma3);
