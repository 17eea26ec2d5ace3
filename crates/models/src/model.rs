//! The model-facing traits, the normalised spec, and per-step buffers.

use std::collections::HashMap;

use turbine_core::{AttnMeta, DType, KvPages, Ops, Shape, Tensor};

use crate::config::HfConfig;
use crate::weights::Weights;
use crate::Result;

pub use turbine_core::runner::ModelSpec;

/// One step of a packed batch, on the device.
///
/// `ids` is `[t]` u32; `logit_rows` `[r]` u32 selects the rows whose logits are computed into the
/// workspace's `"logits"` tensor (`[r, vocab]`).
pub struct Step<B: Ops> {
    /// Token ids of every row.
    pub ids: Tensor<B>,
    /// Attention metadata.
    pub meta: AttnMeta<B>,
    /// Rows to project to logits.
    pub logit_rows: Tensor<B>,
}

/// Named scratch tensors reused from step to step; they grow when a step needs more rows and
/// are never freed, so a steady stream of decode steps allocates nothing.
pub struct Workspace<B: Ops> {
    slots: HashMap<&'static str, Tensor<B>>,
}

impl<B: Ops> Default for Workspace<B> {
    fn default() -> Self {
        Workspace { slots: HashMap::new() }
    }
}

impl<B: Ops> Workspace<B> {
    /// Takes the f32 tensor `name`, shaped `[rows, cols]`; put it back with [`Workspace::put`].
    pub fn take(&mut self, b: &B, name: &'static str, rows: usize, cols: usize) -> Result<Tensor<B>> {
        let want = rows * cols;
        let mut t = match self.slots.remove(name) {
            Some(t) if t.capacity() >= want => t,
            _ => b.alloc(&Shape::from([rows.max(1), cols]), DType::F32)?,
        };
        t.reshape([rows, cols])?;
        Ok(t)
    }

    /// Returns a tensor taken with [`Workspace::take`].
    pub fn put(&mut self, name: &'static str, t: Tensor<B>) {
        self.slots.insert(name, t);
    }

    /// A tensor left in the workspace (e.g. `"logits"` after a forward pass).
    pub fn get(&self, name: &str) -> Option<&Tensor<B>> {
        self.slots.get(name)
    }
}

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
