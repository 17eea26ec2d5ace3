//! Qwen2 / Qwen2.5: the Llama decoder with biases on the Q, K and V projections, and a sliding
//! window only when `use_sliding_window` is set.

use turbine_core::Ops;

use crate::config::HfConfig;
use crate::layers::{CommonConfig, Decoder};
use crate::llama::{build, decoder_model, Style};
use crate::model::Architecture;
use crate::weights::Weights;
use crate::{ModelError, Result};

/// `config.json` architecture names served by this file.
pub const HF_NAMES: &[&str] = &["Qwen2ForCausalLM"];

/// A Qwen2 model.
pub struct Qwen2<B: Ops>(Decoder<B>);

impl<B: Ops> Architecture<B> for Qwen2<B> {
    fn load(cfg: &HfConfig, w: &Weights<'_, B>) -> Result<Self> {
        let layers = cfg.usize("num_hidden_layers")?;
        let window = match cfg.opt_bool("use_sliding_window")? {
            Some(true) => match cfg.opt_usize("max_window_layers")?.unwrap_or(0) {
                // transformers windows the layers at or past max_window_layers.
                0 => cfg.opt_usize("sliding_window")?,
                m if m >= layers => None,
                m => {
                    return Err(ModelError::Config(format!(
                        "Qwen2 with sliding windows on layers {m}..{layers} only is not supported yet"
                    )))
                }
            },
            _ => None,
        };
        let c = CommonConfig::from_hf(cfg, false)?;
        Ok(Qwen2(build(&c, w, &Style::llama(&c, cfg, window)?)?))
    }
}

decoder_model!(Qwen2);
