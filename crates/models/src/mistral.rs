//! Mistral: the Llama decoder with sliding-window attention (`sliding_window`).

use turbine_core::{KvPages, Ops};

use crate::config::HfConfig;
use crate::layers::{Decoder, DecoderSpec};
use crate::model::{Architecture, Model, ModelSpec, Step, Workspace};
use crate::weights::Weights;
use crate::Result;

/// `config.json` architecture names served by this file.
pub const HF_NAMES: &[&str] = &["MistralForCausalLM"];

/// A Mistral model.
pub struct Mistral<B: Ops>(Decoder<B>);

impl<B: Ops> Architecture<B> for Mistral<B> {
    fn load(cfg: &HfConfig, w: &Weights<'_, B>) -> Result<Self> {
        let window = cfg.opt_usize("sliding_window")?;
        Ok(Mistral(Decoder::load(DecoderSpec::from_hf(cfg, false, window)?, w)?))
    }
}

impl<B: Ops> Model<B> for Mistral<B> {
    fn spec(&self) -> &ModelSpec {
        self.0.spec()
    }

    fn forward(&self, b: &B, step: &Step<B>, kv: &mut [KvPages<B>], ws: &mut Workspace<B>) -> Result<()> {
        self.0.forward(b, step, kv, ws)
    }
}
