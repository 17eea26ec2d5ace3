//! Qwen2 / Qwen2.5: the Llama decoder with biases on the Q, K and V projections, and a sliding
//! window only when `use_sliding_window` is set.

use turbine_core::{KvPages, Ops};

use crate::config::HfConfig;
use crate::layers::{Decoder, DecoderSpec};
use crate::model::{Architecture, Model, ModelSpec, Step, Workspace};
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
        let spec = DecoderSpec::from_hf(cfg, false, window)?;
        Ok(Qwen2(Decoder::load(spec, w)?))
    }
}

impl<B: Ops> Model<B> for Qwen2<B> {
    fn spec(&self) -> &ModelSpec {
        self.0.spec()
    }

    fn forward(&self, b: &B, step: &Step<B>, kv: &mut [KvPages<B>], ws: &mut Workspace<B>) -> Result<()> {
        self.0.forward(b, step, kv, ws)
    }
}
