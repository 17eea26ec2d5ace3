//! Running a model on a backend behind an object-safe interface: the engine (in `batcher`) holds
//! a `Box<dyn ModelRunner>` and never sees the backend type.

use turbine_core::sampling::{Sampled, SeqSampler};
use turbine_core::{AttnMeta, DType, GraphStep, HostTensor, KvPages, Ops, Shape, Tensor};

use crate::model::{Model, ModelSpec, Step, Workspace};
use crate::{ModelError, Result};

pub use turbine_core::runner::{CacheConfig, Logits, ModelRunner, SeqStep};

/// The [`ModelRunner`] of a backend `B`.
pub struct Runner<B: Ops> {
    backend: B,
    model: Box<dyn Model<B>>,
    kv: Vec<KvPages<B>>,
    ws: Workspace<B>,
    step: Step<B>,
    cache: CacheConfig,
    host: HostStep,
}

/// Host-side staging of a step's inputs, reused between steps.
#[derive(Default)]
struct HostStep {
    ids: Vec<u32>,
    positions: Vec<u32>,
    slots: Vec<u32>,
    seqs: Vec<u32>,
    tables: Vec<u32>,
    rows: Vec<u32>,
    /// Little-endian bytes of all of the above, one after the other.
    bytes: Vec<u8>,
}

fn u32_tensor<B: Ops>(b: &B, shape: impl Into<Shape>) -> Result<Tensor<B>> {
    Ok(b.alloc(&shape.into(), DType::U32)?)
}

impl<B: Ops> Runner<B> {
    /// Wraps a model, allocating a KV cache of `cache.num_blocks` blocks.
    pub fn new(backend: B, model: Box<dyn Model<B>>, cache: CacheConfig) -> Result<Self> {
        let s = model.spec().clone();
        if !matches!(cache.kv_dtype, DType::F32 | DType::F8E4M3 | DType::I8) {
            return Err(ModelError::Input(format!(
                "a {} KV cache is not supported (f32, fp8 or int8)",
                cache.kv_dtype
            )));
        }
        if cache.block_size == 0 || cache.num_blocks == 0 {
            return Err(ModelError::Input("the KV cache needs at least one block of at least one token".into()));
        }
        let shape = Shape::from([cache.num_blocks, s.kv_heads, cache.block_size, s.head_dim]);
        let rows = Shape::from([cache.num_blocks * s.kv_heads * cache.block_size]);
        let eight_bit = cache.kv_dtype != DType::F32;
        let sinks = Shape::from([cache.num_blocks, s.kv_heads, s.head_dim]);
        let eight_bit_f32 = |shape: &Shape| -> Result<Option<Tensor<B>>> {
            Ok(if eight_bit { Some(backend.alloc(shape, DType::F32)?) } else { None })
        };
        let kv = (0..s.layers)
            .map(|_| {
                Ok(KvPages {
                    k: backend.alloc(&shape, cache.kv_dtype)?,
                    v: backend.alloc(&shape, cache.kv_dtype)?,
                    block_size: cache.block_size,
                    k_shift: None,
                    k_sink: eight_bit_f32(&sinks)?,
                    k_scales: eight_bit_f32(&rows)?,
                    v_scales: eight_bit_f32(&rows)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let step = Step {
            ids: u32_tensor(&backend, [1])?,
            meta: AttnMeta {
                seqs: u32_tensor(&backend, [1, 3])?,
                block_tables: u32_tensor(&backend, [1, 1])?,
                positions: u32_tensor(&backend, [1])?,
                slots: u32_tensor(&backend, [1])?,
            },
            logit_rows: u32_tensor(&backend, [1])?,
        };
        Ok(Runner { backend, model, kv, ws: Workspace::default(), step, cache, host: HostStep::default() })
    }

    /// The backend.
    pub fn backend_ref(&self) -> &B {
        &self.backend
    }

    /// Sets each layer's key shift from a calibration run (the mean key, `kv_heads · head_dim`
    /// values subtracted from every key before it is stored in 8-bit pages; see
    /// [`KvPages::k_shift`]).
    pub fn set_key_shifts(&mut self, stats: &[KvStats]) -> Result<()> {
        let s = self.model.spec();
        let width = s.kv_heads * s.head_dim;
        if stats.len() != self.kv.len() || stats.iter().any(|s| s.k_mean.len() != width) {
            return Err(ModelError::Input(format!("key shifts must be {} layers of {width} values", self.kv.len())));
        }
        if let Some(bad) = stats.iter().flat_map(|s| &s.k_mean).find(|v| !v.is_finite()) {
            return Err(ModelError::Input(format!("key shifts must be finite, got {bad}")));
        }
        for (p, st) in self.kv.iter_mut().zip(stats) {
            p.k_shift = Some(self.backend.upload(&HostTensor::from_f32([width], &st.k_mean)?)?);
        }
        Ok(())
    }

    /// The model.
    pub fn model_mut(&mut self) -> &mut dyn Model<B> {
        self.model.as_mut()
    }

    /// Gives the model back (its KV cache is dropped).
    pub fn into_model(self) -> Box<dyn Model<B>> {
        self.model
    }

    fn stage(&mut self, seqs: &[SeqStep<'_>]) -> Result<()> {
        let s = self.model.spec();
        let bs = self.cache.block_size;
        let h = &mut self.host;
        for v in [&mut h.ids, &mut h.positions, &mut h.slots, &mut h.seqs, &mut h.tables, &mut h.rows] {
            v.clear();
        }
        // Block tables are padded to a power of two so that decode steps keep one shape for a
        // while (recorded steps are keyed by it).
        let max_blocks = seqs.iter().map(|q| q.blocks.len()).max().unwrap_or(0).max(1).next_power_of_two();
        for (i, q) in seqs.iter().enumerate() {
            let end = q.start + q.tokens.len();
            if q.tokens.is_empty() {
                return Err(ModelError::Input(format!("sequence {i} has no tokens in this step")));
            }
            if end > s.max_positions {
                return Err(ModelError::Input(format!(
                    "sequence of {end} tokens exceeds the model's context of {} tokens",
                    s.max_positions
                )));
            }
            if end > q.blocks.len() * bs {
                return Err(ModelError::Input(format!(
                    "sequence {i}: {} blocks cannot hold {end} tokens",
                    q.blocks.len()
                )));
            }
            if let Some(&bad) = q.tokens.iter().find(|&&t| t as usize >= s.vocab) {
                return Err(ModelError::Input(format!("token id {bad} is outside the vocabulary (0..{})", s.vocab)));
            }
            let row0 = h.ids.len();
            h.seqs.extend([row0 as u32, q.tokens.len() as u32, end as u32]);
            h.tables.extend_from_slice(q.blocks);
            h.tables.resize((i + 1) * max_blocks, 0);
            for (j, &tok) in q.tokens.iter().enumerate() {
                let p = q.start + j;
                h.ids.push(tok);
                h.positions.push(p as u32);
                h.slots.push(q.blocks[p / bs] * bs as u32 + (p % bs) as u32);
            }
            match q.logits {
                Logits::None => {}
                Logits::Last => h.rows.push((h.ids.len() - 1) as u32),
                Logits::All => h.rows.extend(row0 as u32..h.ids.len() as u32),
            }
        }
        let (b, n, t) = (&self.backend, seqs.len(), h.ids.len());
        // Every input as little-endian bytes in one buffer, written with one call (one transfer
        // where the backend packs them).
        let data: [&[u32]; 6] = [&h.ids, &h.positions, &h.slots, &h.seqs, &h.tables, &h.rows];
        let shapes: [Shape; 6] =
            [[t].into(), [t].into(), [t].into(), [n, 3].into(), [n, max_blocks].into(), [h.rows.len()].into()];
        h.bytes.clear();
        let mut ends = [0; 6];
        for (end, d) in ends.iter_mut().zip(data) {
            h.bytes.extend(d.iter().flat_map(|v| v.to_le_bytes()));
            *end = h.bytes.len();
        }
        let st = &mut self.step;
        let dsts = [
            &mut st.ids,
            &mut st.meta.positions,
            &mut st.meta.slots,
            &mut st.meta.seqs,
            &mut st.meta.block_tables,
            &mut st.logit_rows,
        ];
        let mut writes = Vec::with_capacity(dsts.len());
        let mut start = 0;
        for ((dst, shape), end) in dsts.into_iter().zip(shapes).zip(ends) {
            if dst.capacity() < shape.numel() {
                *dst = b.alloc(&shape, DType::U32)?;
            }
            writes.push((dst, HostTensor::new(shape, DType::U32, &h.bytes[start..end])?));
            start = end;
        }
        b.write_many(&mut writes)?;
        Ok(())
    }

    /// Queues the model's ops for the staged step.
    fn forward(&mut self) -> Result<()> {
        self.model.forward(&self.backend, &self.step, &mut self.kv, &mut self.ws)
    }

    fn logits_tensor(&self) -> Result<&Tensor<B>> {
        self.ws.get("logits").ok_or_else(|| ModelError::Input("no step has produced logits yet".into()))
    }
}

impl<B: Ops> Runner<B> {
    fn run_step(&mut self, seqs: &[SeqStep<'_>]) -> Result<()> {
        if seqs.is_empty() {
            return Err(ModelError::Input("empty step".into()));
        }
        self.stage(seqs)?;
        // A decode step (one token and its logits per sequence) has the same ops, shapes and
        // buffers every time for a batch size and block-table width: the backend may record it
        // once and replay it.
        let decode = seqs.iter().all(|q| q.tokens.len() == 1 && q.logits == Logits::Last);
        let key = (seqs.len() as u64) << 32 | self.step.meta.block_tables.cols() as u64;
        match if decode { self.backend.graph_begin(key)? } else { GraphStep::Eager } {
            GraphStep::Replayed => Ok(()),
            GraphStep::Capturing => {
                // Recorded, not run; if recording failed, run the step as usual.
                let ran = self.forward();
                if self.backend.graph_end(key, ran.is_ok())? {
                    Ok(())
                } else {
                    self.forward()
                }
            }
            GraphStep::Eager => self.forward(),
        }
    }

    fn read_logits(&mut self) -> Result<Vec<f32>> {
        Ok(self.backend.download(self.logits_tensor()?)?.to_f32()?)
    }

    fn sample_logits(&mut self, samplers: &mut [&mut SeqSampler]) -> Result<Vec<Sampled>> {
        let logits = self.logits_tensor()?;
        if logits.rows() != samplers.len() {
            return Err(ModelError::Input(format!("{} samplers for {} logit rows", samplers.len(), logits.rows())));
        }
        Ok(self.backend.sample(logits, samplers)?)
    }
}

impl<B: Ops> ModelRunner for Runner<B> {
    fn spec(&self) -> &ModelSpec {
        self.model.spec()
    }

    fn backend(&self) -> &'static str {
        self.backend.name()
    }

    fn cache(&self) -> CacheConfig {
        self.cache
    }

    fn step(&mut self, seqs: &[SeqStep<'_>]) -> turbine_core::Result<()> {
        Ok(self.run_step(seqs)?)
    }

    fn logits(&mut self) -> turbine_core::Result<Vec<f32>> {
        Ok(self.read_logits()?)
    }

    fn sample(&mut self, samplers: &mut [&mut SeqSampler]) -> turbine_core::Result<Vec<Sampled>> {
        Ok(self.sample_logits(samplers)?)
    }
}

/// The keys one layer stored.
#[derive(Debug, Clone, Default)]
pub struct KvStats {
    /// Mean key (`kv_heads · head_dim` values).
    pub k_mean: Vec<f32>,
}
