//! Qwen3: the Llama decoder with a per-head RMS norm on queries and keys before rotation.

use turbine_core::Ops;

use crate::config::HfConfig;
use crate::layers::{CommonConfig, Decoder};
use super::llama::{build, decoder_model, Style};
use crate::model::Architecture;
use super::qwen2::qwen_windows;
use crate::weights::Weights;
use crate::Result;

/// `config.json` architecture names served by this file.
pub const HF_NAMES: &[&str] = &["Qwen3ForCausalLM"];

/// A Qwen3 model.
pub struct Qwen3<B: Ops>(Decoder<B>);

impl<B: Ops> Architecture<B> for Qwen3<B> {
    fn load(cfg: &HfConfig, w: &Weights<'_, B>) -> Result<Self> {
        let c = CommonConfig::from_hf(cfg, false)?;
        let style = Style { qk_norm: true, windows: qwen_windows(cfg)?, ..Style::llama(&c, cfg, None)? };
        Ok(Qwen3(build(&c, w, &style)?))
    }
}

decoder_model!(Qwen3);
