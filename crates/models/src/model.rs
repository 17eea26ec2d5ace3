//! The model-facing traits ([`Model`], [`Architecture`]) and the normalised spec; the per-step
//! buffers live in [`crate::step`].

use turbine_core::{KvPages, Ops};

use crate::config::HfConfig;
use crate::weights::Weights;
use crate::Result;

pub use crate::step::{Step, Workspace};
pub use turbine_core::runner::ModelSpec;

/// A loaded model: runs forward passes over packed batches.
pub trait Model<B: Ops>: Send + Sync {
    /// The normalised spec.
    fn spec(&self) -> &ModelSpec;

    /// Runs the step: writes this step's keys and values into `kv` (one [`KvPages`] per layer)
    /// and leaves the logits of `step.logit_rows` in `ws` under `"logits"`.
    fn forward(&self, b: &B, step: &Step<B>, kv: &mut [KvPages<B>], ws: &mut Workspace<B>) -> Result<()>;

    /// The generic decoder inside, for passes over the weights (precision, memory accounting).
    fn decoder(&self) -> Option<&crate::layers::Decoder<B>> {
        None
    }

    /// [`Model::decoder`], mutably.
    fn decoder_mut(&mut self) -> Option<&mut crate::layers::Decoder<B>> {
        None
    }
}

/// An architecture: how to build a [`Model`] from a config and weights. Each lives in one file
/// and is listed once in `registry/mod.rs`.
pub trait Architecture<B: Ops>: Model<B> + Sized + 'static {
    /// Builds the model, checking every weight's shape against the config.
    fn load(cfg: &HfConfig, w: &Weights<'_, B>) -> Result<Self>;
}
