//! What one forward pass runs on: the step's ids, attention metadata and logit rows on the
//! device, and the named scratch tensors reused from step to step.

use std::collections::HashMap;

use turbine_core::{AttnMeta, DType, Ops, Shape, Tensor};

use crate::Result;

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
