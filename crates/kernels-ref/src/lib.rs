//! The CPU backend: pure Rust, f32 activations and accumulation, weights in f32 or GGUF blocks
//! (dequantised exactly inside the matrix product).
//!
//! It is the correctness oracle for every other backend, so every kernel reduces in an order fixed
//! by the model's shapes alone: results are bitwise identical whatever the batch, the prompt
//! chunking or the thread count (see `ARCHITECTURE.md`, batch invariance).
#![warn(missing_docs)]

mod act;
mod attention;
mod buffer;
mod dequant;
mod dot;
mod exp;
mod matmul;
mod norm;
mod rope;

pub use buffer::CpuBuf;

use turbine_core::sampling::{Sampled, SeqSampler};
use turbine_core::{
    Act, AttnMeta, AttnParams, Backend, Caps, DType, Epilogue, HostTensor, KvPages, NormKind, Ops, QkvLayout, Resid,
    Result, RopeTable, Shape, Tensor,
};

/// The CPU backend. Cheap to create; work is spread over rayon's global pool
/// (`RAYON_NUM_THREADS` sets its size).
#[derive(Debug, Clone)]
pub struct Cpu {
    caps: Caps,
}

impl Default for Cpu {
    fn default() -> Self {
        Self::new()
    }
}

impl Cpu {
    /// A CPU backend.
    pub fn new() -> Self {
        Cpu { caps: Caps { weight_dtypes: DType::WEIGHT_TYPES.to_vec(), act_dtype: DType::F32, sm: None, fp8: false } }
    }

    /// Which SIMD path the kernels take on this machine (`"avx2+fma"` or `"scalar"`).
    pub fn simd(&self) -> &'static str {
        dot::simd_name()
    }
}

type T = Tensor<Cpu>;

impl Backend for Cpu {
    type Buffer = CpuBuf;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn caps(&self) -> &Caps {
        &self.caps
    }

    fn alloc(&self, shape: &Shape, dtype: DType) -> Result<T> {
        buffer::alloc(shape, dtype)
    }

    fn upload(&self, host: &HostTensor<'_>) -> Result<T> {
        buffer::upload(host)
    }

    fn upload_weight(&self, host: &HostTensor<'_>) -> Result<T> {
        buffer::upload_weight(host)
    }

    fn write(&self, dst: &mut T, host: &HostTensor<'_>) -> Result<()> {
        buffer::write(dst, host)
    }

    fn download(&self, t: &T) -> Result<HostTensor<'static>> {
        buffer::download(t)
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

impl Ops for Cpu {
    fn matmul(&self, x: &T, w: &T, epi: Epilogue<'_, Self>, out: &mut T) -> Result<()> {
        matmul::matmul(x, w, epi, out)
    }

    fn norm(&self, x: &T, w: &T, b: Option<&T>, kind: NormKind, resid: Resid<'_, Self>, out: &mut T) -> Result<()> {
        norm::norm(x, w, b, kind, resid, out)
    }

    fn head_norm(&self, qkv: &mut T, l: QkvLayout, wq: &T, wk: &T, kind: NormKind) -> Result<()> {
        norm::head_norm(qkv, l, wq, wk, kind)
    }

    fn rope(&self, qkv: &mut T, pos: &T, table: &RopeTable<Self>, l: QkvLayout) -> Result<()> {
        rope::rope(qkv, pos, table, l)
    }

    fn kv_store(&self, qkv: &T, l: QkvLayout, meta: &AttnMeta<Self>, kv: &mut KvPages<Self>) -> Result<()> {
        attention::kv_store(qkv, l, meta, kv)
    }

    fn paged_attention(
        &self,
        qkv: &T,
        l: QkvLayout,
        kv: &KvPages<Self>,
        meta: &AttnMeta<Self>,
        p: &AttnParams,
        out: &mut T,
    ) -> Result<()> {
        attention::paged_attention(qkv, l, kv, meta, p, out)
    }

    fn gated_act(&self, gate_up: &T, act: Act, out: &mut T) -> Result<()> {
        act::gated_act(gate_up, act, out)
    }

    fn gather_rows(&self, src: &T, ids: &T, scale: f32, accumulate: bool, out: &mut T) -> Result<()> {
        act::gather_rows(src, ids, scale, accumulate, out)
    }

    fn softmax(&self, x: &mut T) -> Result<()> {
        act::softmax(x)
    }

    fn sample(&self, logits: &T, seqs: &mut [&mut SeqSampler]) -> Result<Vec<Sampled>> {
        // Host memory already: sample in place, no copy.
        turbine_core::sampling::sample_rows(buffer::f32s(logits, "sample")?, logits.cols(), seqs)
    }
}
