//! Phi-3: the Llama decoder with fused `qkv_proj` and `gate_up_proj` tensors and a sliding window
//! when the config sets one.

use turbine_core::Ops;

use crate::config::HfConfig;
use crate::layers::{CommonConfig, Decoder};
use super::llama::{build, decoder_model, Style};
use crate::model::Architecture;
use crate::weights::Weights;
use crate::Result;

/// `config.json` architecture names served by this file.
pub const HF_NAMES: &[&str] = &["Phi3ForCausalLM"];

/// A Phi-3 model.
pub struct Phi3<B: Ops>(Decoder<B>);

impl<B: Ops> Architecture<B> for Phi3<B> {
    fn load(cfg: &HfConfig, w: &Weights<'_, B>) -> Result<Self> {
        let c = CommonConfig::from_hf(cfg, false)?;
        let style = Style { fused: true, ..Style::llama(&c, cfg, cfg.opt_usize("sliding_window")?)? };
        Ok(Phi3(build(&c, w, &style)?))
    }
}

decoder_model!(Phi3);
