//! Qwen2 / Qwen2.5: the Llama decoder with biases on the Q, K and V projections, and sliding
//! windows only when `use_sliding_window` (or `layer_types`) asks for them.

use turbine_core::Ops;

use crate::config::HfConfig;
use crate::layers::{CommonConfig, Decoder};
use super::llama::{build, decoder_model, Style};
use crate::model::Architecture;
use crate::weights::Weights;
use crate::Result;

/// `config.json` architecture names served by this file.
pub const HF_NAMES: &[&str] = &["Qwen2ForCausalLM"];

/// A Qwen2 model.
pub struct Qwen2<B: Ops>(Decoder<B>);

impl<B: Ops> Architecture<B> for Qwen2<B> {
    fn load(cfg: &HfConfig, w: &Weights<'_, B>) -> Result<Self> {
        let c = CommonConfig::from_hf(cfg, false)?;
        let style = Style { windows: qwen_windows(cfg)?, ..Style::llama(&c, cfg, None)? };
        Ok(Qwen2(build(&c, w, &style)?))
    }
}

decoder_model!(Qwen2);

/// Per-layer sliding windows of a Qwen2/Qwen3 config: `layer_types` when present, else
/// `use_sliding_window` with the window on layers from `max_window_layers` on (as transformers).
pub(crate) fn qwen_windows(cfg: &HfConfig) -> Result<Vec<Option<usize>>> {
    let layers = cfg.usize("num_hidden_layers")?;
    let window = cfg.opt_usize("sliding_window")?;
    if let Some(types) = crate::config::layer_types(cfg, layers)? {
        return Ok(types.iter().map(|t| if t == "sliding_attention" { window } else { None }).collect());
    }
    if !cfg.opt_bool("use_sliding_window")?.unwrap_or(false) {
        return Ok(vec![None; layers]);
    }
    let from = cfg.opt_usize("max_window_layers")?.unwrap_or(layers);
    Ok((0..layers).map(|i| if i >= from { window } else { None }).collect())
}
