//! Calibration: the model runs over some text while an [`Observer`] gathers, for the input of
//! every projection, what careful quantisation needs: the Gram matrix `XᵀX` (GPTQ's Hessian)
//! and the largest magnitude (static activation scales).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use turbine_core::{DType, Epilogue, HostTensor, Ops, Tensor};

use crate::layers::Observer;
use crate::model::Model;
use crate::precision::Role;
use crate::runner::{CacheConfig, Logits, ModelRunner, Runner, SeqStep};
use crate::{ModelError, Result};

/// English text used when no calibration text is given (BSD fortunes, "work" collection).
pub const DEFAULT_TEXT: &str = include_str!("../data/calib-fortunes-work.txt");

/// What one projection's inputs looked like.
#[derive(Debug, Clone)]
pub struct InputStats {
    /// Input width.
    pub k: usize,
    /// Tokens seen.
    pub tokens: usize,
    /// `Σ xᵀx`, `[k, k]` row-major.
    pub gram: Vec<f32>,
    /// Largest magnitude.
    pub amax: f32,
}

/// Statistics of every projection input, by (layer, role).
#[derive(Debug, Clone, Default)]
pub struct Calibration {
    /// The statistics.
    pub inputs: HashMap<(usize, Role), InputStats>,
    /// Tokens the model ran over.
    pub tokens: usize,
}

struct Collector {
    inputs: Mutex<HashMap<(usize, Role), InputStats>>,
}

impl<B: Ops> Observer<B> for Collector {
    fn input(&self, b: &B, layer: usize, role: Role, x: &Tensor<B>) -> Result<()> {
        let (t, k) = (x.rows(), x.cols());
        let v = b.download(x)?.to_f32()?;
        // XᵀX = (Xᵀ)(Xᵀ)ᵀ through the backend's product: Xᵀ is [k, t].
        let mut xt = vec![0f32; k * t];
        for (r, row) in v.chunks_exact(k).enumerate() {
            for (c, &val) in row.iter().enumerate() {
                xt[c * t + r] = val;
            }
        }
        let xt = b.upload(&HostTensor::from_f32([k, t], &xt)?)?;
        let mut g = b.alloc(&[k, k].into(), DType::F32)?;
        b.matmul(&xt, &xt, Epilogue::none(), &mut g)?;
        let g = b.download(&g)?.to_f32()?;
        let amax = v.iter().fold(0f32, |a, x| a.max(x.abs()));
        let mut map = self.inputs.lock().map_err(|_| ModelError::Config("calibration state poisoned".into()))?;
        let e =
            map.entry((layer, role)).or_insert_with(|| InputStats { k, tokens: 0, gram: vec![0.0; k * k], amax: 0.0 });
        for (a, c) in e.gram.iter_mut().zip(&g) {
            *a += c;
        }
        e.tokens += t;
        e.amax = e.amax.max(amax);
        Ok(())
    }
}

/// Runs `model` over `ids` in windows of `window` tokens and returns it with the statistics of
/// every projection input.
pub fn calibrate<B: Ops + Clone>(
    b: &B,
    model: Box<dyn Model<B>>,
    ids: &[u32],
    window: usize,
) -> Result<(Box<dyn Model<B>>, Calibration)> {
    let window = window.min(model.spec().max_positions).max(2);
    let block = 16;
    let blocks = window.div_ceil(block);
    let mut runner = Runner::new(b.clone(), model, CacheConfig::f32(block, blocks))?;
    let collector = Arc::new(Collector { inputs: Mutex::new(HashMap::new()) });
    let dec = runner
        .model_mut()
        .decoder_mut()
        .ok_or_else(|| ModelError::Config("this architecture cannot be calibrated".into()))?;
    dec.observer = Some(collector.clone());
    let table: Vec<u32> = (0..blocks as u32).collect();
    let mut tokens = 0;
    for w in ids.chunks(window) {
        runner.step(&[SeqStep { tokens: w, start: 0, blocks: &table, logits: Logits::Last }])?;
        tokens += w.len();
    }
    if let Some(dec) = runner.model_mut().decoder_mut() {
        dec.observer = None;
    }
    let model = runner.into_model();
    let inputs = std::mem::take(
        &mut *collector.inputs.lock().map_err(|_| ModelError::Config("calibration state poisoned".into()))?,
    );
    Ok((model, Calibration { inputs, tokens }))
}
