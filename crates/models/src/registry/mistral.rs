//! Mistral: the Llama decoder with sliding-window attention (`sliding_window`).

use turbine_core::Ops;

use crate::config::HfConfig;
use crate::layers::{CommonConfig, Decoder};
use super::llama::{build, decoder_model, Style};
use crate::model::Architecture;
use crate::weights::Weights;
use crate::Result;

/// `config.json` architecture names served by this file.
pub const HF_NAMES: &[&str] = &["MistralForCausalLM"];

/// A Mistral model.
pub struct Mistral<B: Ops>(Decoder<B>);

impl<B: Ops> Architecture<B> for Mistral<B> {
    fn load(cfg: &HfConfig, w: &Weights<'_, B>) -> Result<Self> {
        let c = CommonConfig::from_hf(cfg, false)?;
        let style = Style::llama(&c, cfg, cfg.opt_usize("sliding_window")?)?;
        Ok(Mistral(build(&c, w, &style)?))
    }
}

decoder_model!(Mistral);
