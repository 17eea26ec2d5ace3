//! Llama (1, 2, 3.x) and the many checkpoints built like it (SmolLM, TinyLlama, …): MHA, GQA or
//! MQA, any head dimension, tied or separate embeddings.

use turbine_core::{KvPages, Ops};

use crate::config::HfConfig;
use crate::layers::{Decoder, DecoderSpec};
use crate::model::{Architecture, Model, ModelSpec, Step, Workspace};
use crate::weights::Weights;
use crate::Result;

/// `config.json` architecture names served by this file.
pub const HF_NAMES: &[&str] = &["LlamaForCausalLM"];

/// A Llama model.
pub struct Llama<B: Ops>(Decoder<B>);

impl<B: Ops> Architecture<B> for Llama<B> {
    fn load(cfg: &HfConfig, w: &Weights<'_, B>) -> Result<Self> {
        Ok(Llama(Decoder::load(DecoderSpec::from_hf(cfg, false, None)?, w)?))
    }
}

impl<B: Ops> Model<B> for Llama<B> {
    fn spec(&self) -> &ModelSpec {
        self.0.spec()
    }

    fn forward(&self, b: &B, step: &Step<B>, kv: &mut [KvPages<B>], ws: &mut Workspace<B>) -> Result<()> {
        self.0.forward(b, step, kv, ws)
    }
}
