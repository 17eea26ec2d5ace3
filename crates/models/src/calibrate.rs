//! Calibration: the model runs over some text while an [`Observer`] gathers, for the input of
//! every projection, what careful quantisation needs: the Gram matrix `XᵀX` (GPTQ's Hessian)
//! and the largest magnitude (static activation scales).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use turbine_core::{DType, Epilogue, HostTensor, Ops, Tensor};

use crate::layers::Observer;
use crate::layers::Role;
use crate::model::Model;
pub use crate::runner::KvStats;
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
    /// Largest magnitude of each input channel (`k` values).
    pub chan_amax: Vec<f32>,
    /// Sum of each input channel over the tokens seen (`k` values).
    pub chan_sum: Vec<f64>,
    /// Sum of each input channel's squares over the tokens seen (`k` values).
    pub chan_sq: Vec<f64>,
}

impl InputStats {
    /// Mean of each input channel.
    pub fn chan_mean(&self) -> Vec<f32> {
        self.chan_sum.iter().map(|s| (s / self.tokens.max(1) as f64) as f32).collect()
    }

    /// `Σ (x − mu)²` of each input channel over the tokens seen (`mu`: per channel, or zeros).
    pub fn chan_energy(&self, mu: Option<&[f32]>) -> Vec<f64> {
        let n = self.tokens as f64;
        (0..self.k)
            .map(|c| {
                let m = mu.map_or(0.0, |m| f64::from(m[c]));
                (self.chan_sq[c] - 2.0 * m * self.chan_sum[c] + n * m * m).max(0.0)
            })
            .collect()
    }
}

/// Statistics of every projection input, by (layer, role).
#[derive(Debug, Clone, Default)]
pub struct Calibration {
    /// The statistics.
    pub inputs: HashMap<(usize, Role), InputStats>,
    /// The keys each layer stored in the KV cache.
    pub kv: Vec<KvStats>,
    /// Tokens the model ran over.
    pub tokens: usize,
}

/// The running sum of the keys one layer stored.
#[derive(Default)]
struct Seen {
    k_sum: Vec<f64>,
    rows: usize,
}

struct Collector {
    inputs: Mutex<HashMap<(usize, Role), InputStats>>,
    /// Per layer: the keys seen.
    keys: Mutex<Vec<Seen>>,
    /// Query and key widths of the fused QKV (`q_heads · d`, `kv_heads · d`).
    widths: (usize, usize),
    /// Gram matrices are only needed for GPTQ.
    gram: bool,
}

impl<B: Ops> Observer<B> for Collector {
    fn qkv(&self, b: &B, layer: usize, qkv: &Tensor<B>) -> Result<()> {
        let (qw, kw) = self.widths;
        let v = b.download(qkv)?.to_f32()?;
        let mut keys = self.keys.lock().map_err(|_| ModelError::Config("calibration state poisoned".into()))?;
        if keys.len() <= layer {
            keys.resize_with(layer + 1, Seen::default);
        }
        let e = &mut keys[layer];
        e.k_sum.resize(kw, 0.0);
        for row in v.chunks_exact(qkv.cols().max(1)) {
            e.k_sum.iter_mut().zip(&row[qw..qw + kw]).for_each(|(s, &x)| *s += f64::from(x));
            e.rows += 1;
        }
        Ok(())
    }

    fn input(&self, b: &B, layer: usize, role: Role, x: &Tensor<B>) -> Result<()> {
        let (t, k) = (x.rows(), x.cols());
        let v = b.download(x)?.to_f32()?;
        let amax = v.iter().fold(0f32, |a, x| a.max(x.abs()));
        let mut chan = vec![0f32; k];
        let mut sum = vec![0f64; k];
        let mut sq = vec![0f64; k];
        for row in v.chunks_exact(k.max(1)) {
            chan.iter_mut().zip(row).for_each(|(c, x)| *c = c.max(x.abs()));
            sum.iter_mut().zip(row).for_each(|(s, &x)| *s += f64::from(x));
            sq.iter_mut().zip(row).for_each(|(s, &x)| *s += f64::from(x) * f64::from(x));
        }
        // XᵀX = (Xᵀ)(Xᵀ)ᵀ through the backend's product: Xᵀ is [k, t].
        let gram = if self.gram {
            let mut xt = vec![0f32; k * t];
            for (r, row) in v.chunks_exact(k).enumerate() {
                for (c, &val) in row.iter().enumerate() {
                    xt[c * t + r] = val;
                }
            }
            let xt = b.upload(&HostTensor::from_f32([k, t], &xt)?)?;
            let mut g = b.alloc(&[k, k].into(), DType::F32)?;
            b.matmul(&xt, &xt, Epilogue::none(), &mut g)?;
            Some(b.download(&g)?.to_f32()?)
        } else {
            None
        };
        let mut map = self.inputs.lock().map_err(|_| ModelError::Config("calibration state poisoned".into()))?;
        let e = map.entry((layer, role)).or_insert_with(|| InputStats {
            k,
            tokens: 0,
            gram: if self.gram { vec![0.0; k * k] } else { Vec::new() },
            amax: 0.0,
            chan_amax: vec![0.0; k],
            chan_sum: vec![0.0; k],
            chan_sq: vec![0.0; k],
        });
        if let Some(g) = gram {
            e.gram.iter_mut().zip(&g).for_each(|(a, c)| *a += c);
        }
        e.tokens += t;
        e.amax = e.amax.max(amax);
        e.chan_amax.iter_mut().zip(&chan).for_each(|(a, &c)| *a = a.max(c));
        e.chan_sum.iter_mut().zip(&sum).for_each(|(a, &c)| *a += c);
        e.chan_sq.iter_mut().zip(&sq).for_each(|(a, &c)| *a += c);
        Ok(())
    }
}

/// Runs `model` over `ids` in windows of `window` tokens and returns it with the statistics of
/// every projection input (Gram matrices only when `gram`) and of the keys and values.
pub fn calibrate<B: Ops + Clone>(
    b: &B,
    model: Box<dyn Model<B>>,
    ids: &[u32],
    window: usize,
    gram: bool,
) -> Result<(Box<dyn Model<B>>, Calibration)> {
    let window = window.min(model.spec().max_positions).max(2);
    let block = 16;
    let blocks = window.div_ceil(block);
    let s = model.spec();
    let widths = (s.q_heads * s.head_dim, s.kv_heads * s.head_dim);
    let mut runner = Runner::new(b.clone(), model, CacheConfig::f32(block, blocks))?;
    let collector =
        Arc::new(Collector { inputs: Mutex::new(HashMap::new()), keys: Mutex::new(Vec::new()), widths, gram });
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
    let seen = std::mem::take(
        &mut *collector.keys.lock().map_err(|_| ModelError::Config("calibration state poisoned".into()))?,
    );
    let kv = seen
        .into_iter()
        .map(|s| KvStats { k_mean: s.k_sum.iter().map(|m| (m / s.rows.max(1) as f64) as f32).collect() })
        .collect();
    Ok((model, Calibration { inputs, kv, tokens }))
}
