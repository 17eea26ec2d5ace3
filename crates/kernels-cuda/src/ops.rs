//! [`Ops`] on the GPU: each op checks its shapes like kernels-ref, then queues the kernels of
//! `cu/` (and cuBLASLt for the products) on the backend's stream.
//!
//! Activations are f32 in this first version, as on the CPU, so that models run unchanged and
//! the numbers can be compared with the oracle op by op; the products read their weights as
//! stored. By default (`TURBINE_CUDA_PRODUCTS=invariant`) every product runs on this crate's
//! own kernels, whose per-row sums are the same operations whatever the number of rows, so a
//! sequence's logits do not depend on its batch (as on the CPU): f16/bf16 weights on the
//! tensor-core kernel of `cu/mma.cu` (`mma.sync`, the input rounded to the weights' type, f32
//! accumulation, K split by (n, k) alone; weight-only E4M3/INT8 codes widened to bf16 there,
//! exactly, `mma_w8_*`; W8A8 on FP8 E4M3 tensor cores, `mma_e4m3`, on sm_89+;
//! `TURBINE_CUDA_MMA=off` puts them all back on the gemv tiles), f32 and GGUF weights on the
//! `gemv_*` kernels: one warp per output column, weights
//! decoded in registers (f32, E4M3, INT8, GGUF blocks; for W8A8 the input's E4M3 codes too).
//! With `TURBINE_CUDA_PRODUCTS=fast`, products of more than 8 rows go to
//! cuBLASLt instead (tensor cores; cuBLASLt's kernel choice depends on the row count, so a row's
//! bits then depend on its batch):
//!
//! | weights | product of more than 8 rows with `fast` |
//! |---|---|
//! | f32 | f32 cuBLASLt |
//! | f16, bf16 | input converted to the weights' type, 16-bit tensor cores, f32 accumulation |
//! | FP8 E4M3 with `quant_x` (W8A8) | input quantised per token (or static scale, with smoothing), FP8 tensor cores on sm_89+; elsewhere both sides widened to bf16 (exact: E4M3 fits bf16) |
//! | FP8 E4M3, INT8, GGUF blocks, f32 input | weights widened to f32 on the fly, f32 product |
//!
//! then one epilogue kernel applies the input and weight scales, bias, activation and
//! accumulation. Not yet run on a GPU (run under the CPU emulator, `cargo xtask emu`).

use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use turbine_core::sampling::{DevicePlan, RowSummary, Sampled, SeqSampler};
use turbine_core::{
    Act, AttnMeta, AttnParams, Backend, DType, Epilogue, Error, KvPages, NormKind, Ops, QkvLayout, Resid, Result,
    RopeTable, Tensor,
};

use crate::device::{Cuda, Slot};
use crate::kernels::*;

pub(crate) fn u32_of(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(op, format!("{v} does not fit a 32-bit kernel argument")))
}

/// Threads per block: `want` rounded up to a warp, within 32..=1024.
fn threads(want: usize) -> u32 {
    (want.div_ceil(32) * 32).clamp(32, 1024) as u32
}

pub(crate) fn act_code(a: Act) -> i32 {
    match a {
        Act::Silu => 0,
        Act::GeluTanh => 1,
        Act::Gelu => 2,
        Act::Relu => 3,
    }
}

impl Cuda {
    pub(crate) fn addr(&self, s: &CudaSlice<u8>) -> u64 {
        let (p, _sync) = s.device_ptr(self.stream());
        p
    }

    pub(crate) fn ptr(&self, t: &Tensor<Cuda>) -> u64 {
        self.addr(t.buf().bytes())
    }

    pub(crate) fn opt(&self, t: Option<&Tensor<Cuda>>) -> u64 {
        t.map_or(0, |t| self.ptr(t))
    }

    /// Launches a kernel on the stream: `grid` blocks of `block` threads.
    pub(crate) fn run(&self, k: &impl Kernel, grid: (u32, u32, u32), block: u32) -> Result<()> {
        let name = k.name();
        let f = self.function(&name)?;
        let stream = self.stream();
        let mut b = stream.launch_builder(f);
        let args = k.args();
        for a in &args {
            match a {
                Arg::U64(v) => b.arg(v),
                Arg::U32(v) => b.arg(v),
                Arg::I32(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the argument list is the kernel's signature in cu/ (the binding is generated
        // from it, see `crate::kernels`); the op wrappers check every buffer's size against the
        // shapes.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| Error::Backend { backend: "cuda", msg: format!("launching {name}: {e}") })
    }

    /// Blocks for a grid-stride loop over `n` elements with 256 threads.
    pub(crate) fn stride_blocks(n: usize) -> u32 {
        n.div_ceil(256).clamp(1, 65_535) as u32
    }

    fn f32_only(&self, op: &'static str, t: &Tensor<Cuda>) -> Result<()> {
        t.expect_dtype(op, DType::F32, "cuda")
    }

    /// Checks a KV store and launches it: `kv_store_f32_{kind}` (grid: rows × kv heads), or with
    /// `rope` `rope_kv_store_f32_{kind}`, which rotates every query and key head first by
    /// `meta.positions` (grid: rows × all heads).
    fn store_kv(
        &self,
        op: &'static str,
        qkv: &Tensor<Cuda>,
        l: QkvLayout,
        meta: &AttnMeta<Cuda>,
        kv: &mut KvPages<Cuda>,
        rope: Option<&RopeTable<Cuda>>,
    ) -> Result<()> {
        let t = qkv.rows();
        match rope {
            Some(r) => rope_check(op, qkv, &meta.positions, r, l).map(drop)?,
            None => qkv.expect_shape(op, &[t, l.width()])?,
        }
        meta.slots.expect_shape(op, &[t])?;
        let kind = page_kind(op, kv, l)?;
        if l.head_dim > 512 {
            return Err(Error::invalid(op, format!("head_dim {} > 512", l.head_dim)));
        }
        meta.positions.expect_shape(op, &[t])?;
        if t == 0 {
            return Ok(());
        }
        let k = KvStore {
            ty: Ty::F32,
            page: kind,
            qkv: self.ptr(qkv),
            slots: self.ptr(&meta.slots),
            positions: self.ptr(&meta.positions),
            k_pages: self.ptr(&kv.k),
            v_pages: self.ptr(&kv.v),
            k_scales: self.opt(kv.k_scales.as_ref()),
            v_scales: self.opt(kv.v_scales.as_ref()),
            k_shift: self.opt(kv.k_shift.as_ref()),
            k_sink: sink_ptr(self, kind, kv)?,
            q_heads: u32_of(op, l.q_heads)?,
            kv_heads: u32_of(op, l.kv_heads)?,
            d: u32_of(op, l.head_dim)?,
            bs: u32_of(op, kv.block_size)?,
        };
        let rows = u32_of(op, t)?;
        match rope {
            Some(r) => {
                let k = RopeKvStore {
                    ty: k.ty,
                    page: k.page,
                    qkv: k.qkv,
                    slots: k.slots,
                    positions: k.positions,
                    cos_t: self.ptr(&r.cos),
                    sin_t: self.ptr(&r.sin),
                    half_rot: u32_of(op, r.rot_dim / 2)?,
                    k_pages: k.k_pages,
                    v_pages: k.v_pages,
                    k_scales: k.k_scales,
                    v_scales: k.v_scales,
                    k_shift: k.k_shift,
                    k_sink: k.k_sink,
                    q_heads: k.q_heads,
                    kv_heads: k.kv_heads,
                    d: k.d,
                    bs: k.bs,
                };
                self.run(&k, (rows, u32_of(op, l.q_heads + l.kv_heads)?, 1), threads(l.head_dim))
            }
            None => self.run(&k, (rows, k.kv_heads, 1), threads(l.head_dim)),
        }
    }

    /// `out[t, j] = act(gate_up[t, j]) * gate_up[t, f + j]` for `t < rows`, `j < f` (f32).
    pub(crate) fn gate_halves(&self, gate_up: u64, out: u64, rows: usize, f: usize, act: i32) -> Result<()> {
        const OP: &str = "gated_act";
        if rows * f == 0 {
            return Ok(());
        }
        let k = GatedAct { ty: Ty::F32, gate_up, out, rows: u32_of(OP, rows)?, f: u32_of(OP, f)?, act };
        self.run(&k, (Self::stride_blocks(rows * f), 1, 1), 256)
    }
}

impl Ops for Cuda {
    fn matmul(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        epi: Epilogue<'_, Self>,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        const OP: &str = "matmul";
        let exact_cols = epi.check(OP, x, w, out)?;
        let (m, n) = (x.rows(), w.rows());
        for t in [Some(x), Some(&*out), epi.bias, epi.scale, epi.smooth, epi.shift].into_iter().flatten() {
            self.f32_only(OP, t)?;
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        self.product(x, w, &epi, out, exact_cols)
    }

    fn norm(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
        kind: NormKind,
        resid: Resid<'_, Self>,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        const OP: &str = "norm";
        let (t, h) = (x.rows(), x.cols());
        for v in [x, w, &*out] {
            self.f32_only(OP, v)?;
        }
        w.expect_shape(OP, &[h])?;
        if let Some(b) = b {
            b.expect_shape(OP, &[h])?;
        }
        out.expect_shape(OP, &[t, h])?;
        let (mode, r) = match resid {
            Resid::None => (0, 0),
            Resid::Before(r) => {
                r.expect_shape(OP, &[t, h])?;
                (1, self.ptr(r))
            }
            Resid::After(r) => {
                r.expect_shape(OP, &[t, h])?;
                (2, self.ptr(r))
            }
        };
        let (eps, offset, layer) = match kind {
            NormKind::Rms { eps, offset } => (eps, offset, 0),
            NormKind::Layer { eps } => (eps, 0.0, 1),
        };
        if t == 0 {
            return Ok(());
        }
        let k = Norm {
            ty: Ty::F32,
            x: self.ptr(x),
            w: self.ptr(w),
            b: self.opt(b),
            resid: r,
            resid_mode: mode,
            out: self.ptr(out),
            cols: u32_of(OP, h)?,
            eps,
            offset,
            layer,
        };
        self.run(&k, (u32_of(OP, t)?, 1, 1), 256)
    }

    fn head_norm(
        &self,
        qkv: &mut Tensor<Self>,
        l: QkvLayout,
        wq: &Tensor<Self>,
        wk: &Tensor<Self>,
        kind: NormKind,
    ) -> Result<()> {
        const OP: &str = "head_norm";
        let NormKind::Rms { eps, offset } = kind else {
            return Err(Error::invalid(OP, "per-head norms are RMS norms"));
        };
        let t = qkv.rows();
        qkv.expect_shape(OP, &[t, l.width()])?;
        wq.expect_shape(OP, &[l.head_dim])?;
        wk.expect_shape(OP, &[l.head_dim])?;
        if t == 0 {
            return Ok(());
        }
        let k = HeadNorm {
            ty: Ty::F32,
            qkv: self.ptr(qkv),
            wq: self.ptr(wq),
            wk: self.ptr(wk),
            q_heads: u32_of(OP, l.q_heads)?,
            kv_heads: u32_of(OP, l.kv_heads)?,
            d: u32_of(OP, l.head_dim)?,
            eps,
            offset,
        };
        self.run(&k, (u32_of(OP, t * (l.q_heads + l.kv_heads))?, 1, 1), threads(l.head_dim))
    }

    fn rope(&self, qkv: &mut Tensor<Self>, pos: &Tensor<Self>, table: &RopeTable<Self>, l: QkvLayout) -> Result<()> {
        const OP: &str = "rope";
        let half = rope_check(OP, qkv, pos, table, l)?;
        let t = qkv.rows();
        if t == 0 || half == 0 {
            return Ok(());
        }
        let k = Rope {
            ty: Ty::F32,
            qkv: self.ptr(qkv),
            pos: self.ptr(pos),
            cos_t: self.ptr(&table.cos),
            sin_t: self.ptr(&table.sin),
            q_heads: u32_of(OP, l.q_heads)?,
            kv_heads: u32_of(OP, l.kv_heads)?,
            d: u32_of(OP, l.head_dim)?,
            rot: u32_of(OP, table.rot_dim)?,
        };
        self.run(&k, (u32_of(OP, t)?, u32_of(OP, l.q_heads + l.kv_heads)?, 1), threads(half))
    }

    fn kv_store(&self, qkv: &Tensor<Self>, l: QkvLayout, meta: &AttnMeta<Self>, kv: &mut KvPages<Self>) -> Result<()> {
        self.store_kv("kv_store", qkv, l, meta, kv, None)
    }

    /// One launch (`rope_kv_store_*`): each block rotates one head of a row and, for a key head,
    /// stores it and its value head, with the two ops' device code.
    fn rope_store(
        &self,
        qkv: &mut Tensor<Self>,
        table: &RopeTable<Self>,
        l: QkvLayout,
        meta: &AttnMeta<Self>,
        kv: &mut KvPages<Self>,
    ) -> Result<()> {
        self.store_kv("rope_store", qkv, l, meta, kv, Some(table))
    }

    fn paged_attention(
        &self,
        qkv: &Tensor<Self>,
        l: QkvLayout,
        kv: &KvPages<Self>,
        meta: &AttnMeta<Self>,
        p: &AttnParams,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        const OP: &str = "paged_attention";
        let t = qkv.rows();
        qkv.expect_shape(OP, &[t, l.width()])?;
        out.expect_shape(OP, &[t, l.q_heads * l.head_dim])?;
        let kind = page_kind(OP, kv, l)?;
        if l.kv_heads == 0
            || l.q_heads % l.kv_heads != 0
            || l.head_dim > 512
            || kv.block_size > 256
            || kv.block_size == 0
        {
            return Err(Error::invalid(OP, format!("unsupported layout {l:?} with blocks of {}", kv.block_size)));
        }
        if t == 0 {
            return Ok(());
        }
        let slopes = match p.alibi {
            Some(_) => self.alibi_slopes(l.q_heads)?,
            None => 0,
        };
        if self.tensor_core_attention(l.head_dim) {
            let k_sink = sink_ptr(self, kind, kv)?;
            return self.flash_mma(qkv, l, kv, meta, p, out, (kind, slopes, k_sink));
        }
        let n_seqs = meta.seqs.rows();
        // Multi-token sequences (prefill) go to the tiled kernel where its shared tiles fit.
        let flash = t > n_seqs && l.head_dim <= FLASH_MAX_D && kv.block_size <= FLASH_MAX_BS;
        let k = PagedAttention {
            ty: Ty::F32,
            page: kind,
            qkv: self.ptr(qkv),
            k_pages: self.ptr(&kv.k),
            v_pages: self.ptr(&kv.v),
            k_scales: self.opt(kv.k_scales.as_ref()),
            v_scales: self.opt(kv.v_scales.as_ref()),
            k_sink: sink_ptr(self, kind, kv)?,
            seqs: self.ptr(&meta.seqs),
            n_seqs: u32_of(OP, n_seqs)?,
            tables: self.ptr(&meta.block_tables),
            max_blocks: u32_of(OP, meta.block_tables.cols())?,
            q_heads: u32_of(OP, l.q_heads)?,
            kv_heads: u32_of(OP, l.kv_heads)?,
            d: u32_of(OP, l.head_dim)?,
            bs: u32_of(OP, kv.block_size)?,
            scale: p.scale,
            window: u32_of(OP, p.window.unwrap_or(0))?,
            alibi: p.alibi.unwrap_or(0.0),
            slopes,
            out: self.ptr(out),
            flash: u32::from(flash),
        };
        if flash {
            let tiles = u32_of(OP, t.div_ceil(FLASH_TQ) + n_seqs)?;
            let f = FlashPrefill {
                ty: k.ty,
                page: k.page,
                qkv: k.qkv,
                k_pages: k.k_pages,
                v_pages: k.v_pages,
                k_scales: k.k_scales,
                v_scales: k.v_scales,
                k_sink: k.k_sink,
                seqs: k.seqs,
                n_seqs: k.n_seqs,
                tables: k.tables,
                max_blocks: k.max_blocks,
                q_heads: k.q_heads,
                kv_heads: k.kv_heads,
                d: k.d,
                bs: k.bs,
                scale: k.scale,
                window: k.window,
                alibi: k.alibi,
                slopes: k.slopes,
                out: k.out,
            };
            self.run(&f, (tiles, k.q_heads, 1), 128)?;
        }
        self.run(&k, (u32_of(OP, t)?, k.q_heads, 1), 128)
    }

    fn gated_act(&self, gate_up: &Tensor<Self>, act: Act, out: &mut Tensor<Self>) -> Result<()> {
        let (t, f) = (out.rows(), out.cols());
        gate_up.expect_shape("gated_act", &[t, 2 * f])?;
        self.gate_halves(self.ptr(gate_up), self.ptr(out), t, f, act_code(act))
    }

    fn gather_rows(
        &self,
        src: &Tensor<Self>,
        ids: &Tensor<Self>,
        scale: f32,
        accumulate: bool,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        const OP: &str = "gather_rows";
        self.f32_only(OP, out)?;
        let (n, cols) = (ids.shape().numel(), src.cols());
        out.expect_shape(OP, &[n, cols])?;
        // Ids are checked where they are made, on the host (the runner refuses token ids outside
        // the vocabulary); copying them back here would stall every step. The kernel never reads
        // outside the table: a row it cannot find is left as it is.
        if n == 0 {
            return Ok(());
        }
        let k = GatherRows {
            ty: Ty::F32,
            src: self.ptr(src),
            ids: self.ptr(ids),
            scale,
            accumulate: i32::from(accumulate),
            out: self.ptr(out),
            src_rows: u32_of(OP, src.rows())?,
            cols: u32_of(OP, cols)?,
        };
        let grid = (u32_of(OP, n)?, 1, 1);
        // The table as stored: f32, f16/bf16 (embeddings kept as the checkpoint has them) or
        // GGUF blocks.
        match src.dtype() {
            DType::F32 => self.run(&k, grid, 256),
            DType::F16 => self.run(&GatherRows { ty: Ty::F16, ..k }, grid, 256),
            DType::BF16 => self.run(&GatherRows { ty: Ty::Bf16, ..k }, grid, 256),
            d => {
                let g = GatherGgufF32 {
                    src: k.src,
                    ids: k.ids,
                    scale: k.scale,
                    accumulate: k.accumulate,
                    out: k.out,
                    src_rows: k.src_rows,
                    cols: k.cols,
                    fmt: gguf_code(OP, d)?,
                };
                self.run(&g, grid, 256)
            }
        }
    }

    /// Sampled on the device wherever the host sampler's result can be reproduced from what the
    /// device sends back (see [`DevicePlan`]): greedy rows that want no alternatives come back
    /// as 12 bytes (argmax, max and the sum of exponentials); other rows as their largest logits
    /// and sums (top-k, top-p, top log-probabilities), or as the token a temperature walk over
    /// the whole row chose with the sequence's own uniform number. Rows with penalties, or whose
    /// nucleus is larger than what came back, are sampled from their whole row on the host.
    ///
    /// Which way a row goes depends on its own parameters only, and both device ways compute a
    /// row's sums with the same code, so a sequence's tokens and log-probabilities do not depend
    /// on what it is batched with.
    fn sample(&self, logits: &Tensor<Self>, seqs: &mut [&mut SeqSampler]) -> Result<Vec<Sampled>> {
        const OP: &str = "sample";
        let (n, vocab) = (logits.rows(), logits.cols());
        let limit = TOPK_MAX.min(vocab);
        let plans: Vec<DevicePlan> = seqs.iter().map(|s| s.device_plan(vocab, limit)).collect();
        if n != seqs.len() || n == 0 || plans.iter().all(|p| *p == DevicePlan::Host) {
            let host = self.download(logits)?.to_f32()?;
            return turbine_core::sampling::sample_rows(&host, vocab, seqs);
        }
        self.f32_only(OP, logits)?;
        let mut got: Vec<Option<Sampled>> =
            if seqs.iter().zip(&plans).all(|(s, p)| *p == DevicePlan::Host || s.plain_greedy()) {
                self.sample_greedy(logits, seqs, &plans)?
            } else {
                self.sample_summaries(logits, seqs, &plans)?
            };
        // What the device could not do, from the rows themselves.
        let mut host_rows: Option<Vec<f32>> = None;
        for (i, s) in seqs.iter_mut().enumerate() {
            if got[i].is_some() {
                continue;
            }
            let all = match &host_rows {
                Some(h) => h,
                None => host_rows.insert(self.download(logits)?.to_f32()?),
            };
            let row = &all[i * vocab..(i + 1) * vocab];
            got[i] = Some(turbine_core::sampling::sample_rows(row, vocab, &mut [&mut **s])?.remove(0));
        }
        Ok(got.into_iter().map(|g| g.expect("every row sampled")).collect())
    }

    fn softmax(&self, x: &mut Tensor<Self>) -> Result<()> {
        const OP: &str = "softmax";
        self.f32_only(OP, x)?;
        if x.rows() == 0 {
            return Ok(());
        }
        self.run(&SoftmaxF32 { x: self.ptr(x), cols: u32_of(OP, x.cols())? }, (u32_of(OP, x.rows())?, 1, 1), 256)
    }
}

/// Checks a rotation of `qkv` by `pos` with `table`; returns the rotated pairs per head.
fn rope_check(
    op: &'static str,
    qkv: &Tensor<Cuda>,
    pos: &Tensor<Cuda>,
    table: &RopeTable<Cuda>,
    l: QkvLayout,
) -> Result<usize> {
    let t = qkv.rows();
    qkv.expect_shape(op, &[t, l.width()])?;
    pos.expect_shape(op, &[t])?;
    let half = table.rot_dim / 2;
    if table.rot_dim % 2 != 0 || table.rot_dim > l.head_dim || table.cos.cols() != half {
        return Err(Error::invalid(
            op,
            format!("rotary tables of {} columns for rot_dim {}", table.cos.cols(), table.rot_dim),
        ));
    }
    Ok(half)
}

/// The format code of a GGUF block type in `cu/gguf.cu`.
pub(crate) fn gguf_code(op: &'static str, dtype: DType) -> Result<i32> {
    Ok(match dtype {
        DType::Q8_0 => 0,
        DType::Q4_0 => 1,
        DType::Q4_1 => 2,
        DType::Q5_0 => 3,
        DType::Q5_1 => 4,
        DType::Q4_K => 5,
        DType::Q5_K => 6,
        DType::Q6_K => 7,
        other => return Err(Error::Unsupported { op, dtype: other, backend: "cuda" }),
    })
}

/// Rows per tile of the `gemv_*` kernels; with `TURBINE_CUDA_PRODUCTS=fast`, the most rows they
/// multiply (more go to cuBLASLt).
pub const GEMV_ROWS: usize = 8;

/// The tiled prefill kernel's rows per tile and largest head dimension and block size
/// (`cu/attention.cu`).
const FLASH_TQ: usize = 8;
const FLASH_MAX_D: usize = 256;
const FLASH_MAX_BS: usize = 16;

/// The most candidates a device sampling step returns per row (`topk_f32`'s limit).
const TOPK_MAX: usize = 1024;

impl Cuda {
    /// Greedy rows that want no alternatives (rows planned for the host are left `None`): an
    /// argmax and the row's sums per row on the device; 12 bytes per row come back instead of
    /// the logits.
    fn sample_greedy(
        &self,
        logits: &Tensor<Self>,
        seqs: &mut [&mut SeqSampler],
        plans: &[DevicePlan],
    ) -> Result<Vec<Option<Sampled>>> {
        const OP: &str = "sample";
        let (n, vocab) = (logits.rows(), logits.cols());
        // One buffer: the ids, then (max, sum, unused) per row; one copy back.
        let buf = self.slot(Slot::Samples, n * 16)?;
        let k = ArgmaxLogprobF32 {
            logits: self.ptr(logits),
            vocab: u32_of(OP, vocab)?,
            ids: buf,
            stats: buf + (n * 4) as u64,
        };
        self.run(&k, (u32_of(OP, n)?, 1, 1), 1024)?;
        let bytes = self.read_slot(Slot::Samples, n * 16)?;
        let mut out = Vec::with_capacity(n);
        for (i, (s, plan)) in seqs.iter_mut().zip(plans).enumerate() {
            if *plan == DevicePlan::Host {
                out.push(None);
                continue;
            }
            let id = u32_at(&bytes, i * 4);
            let (max, sum) = (f32_at(&bytes, n * 4 + i * 12), f32_at(&bytes, n * 4 + i * 12 + 4));
            let top = [(id, max)];
            let summary = RowSummary { top: &top, lse: row_lse(max, sum), mass: f64::from(sum) };
            out.push(Some(s.finish(id, max, &summary)));
        }
        Ok(out)
    }

    /// Every other row the device can sample: each row's largest logits and sums (`topk_f32`),
    /// and for temperature walks over the whole row the chosen token (`sample_cdf_f32`). `None`
    /// for rows planned for the host, or whose nucleus is larger than what came back.
    fn sample_summaries(
        &self,
        logits: &Tensor<Self>,
        seqs: &mut [&mut SeqSampler],
        plans: &[DevicePlan],
    ) -> Result<Vec<Option<Sampled>>> {
        const OP: &str = "sample";
        let (n, vocab) = (logits.rows(), logits.cols());
        let limit = TOPK_MAX.min(vocab);
        let k = seqs
            .iter()
            .zip(plans)
            .map(|(s, p)| match p {
                DevicePlan::Summary(k) | DevicePlan::Cdf(k) => *k,
                // Greedy rows still list their top log-probabilities.
                DevicePlan::Greedy => s.params.logprobs.max(1),
                DevicePlan::Host => 1,
            })
            .max()
            .unwrap_or(1)
            .clamp(1, limit);
        // Parameters in: 1/T, min-p, the uniform number of each temperature walk.
        let mut params = Vec::with_capacity(n * 12);
        let mut uniform = vec![0f32; n];
        for (i, (s, plan)) in seqs.iter_mut().zip(plans).enumerate() {
            let t = s.params.temperature;
            params.extend_from_slice(&(if t > 0.0 { 1.0 / t } else { 1.0 }).to_le_bytes());
            if matches!(plan, DevicePlan::Cdf(_)) {
                uniform[i] = s.uniform() as f32;
            }
        }
        params.extend(seqs.iter().flat_map(|s| s.params.min_p.to_le_bytes()));
        params.extend(uniform.iter().flat_map(|u| u.to_le_bytes()));
        let pp = self.write_slot(Slot::SampleParams, &params)?;
        // Results out: candidate ids, their logits, row sums (3 per row), walked ids.
        let (ids_b, vals_b, stats_b) = (n * k * 4, n * k * 4, n * 12);
        let base = self.slot(Slot::Samples, ids_b + vals_b + stats_b + n * 4)?;
        let (ids_p, vals_p, stats_p, walk_p) =
            (base, base + ids_b as u64, base + (ids_b + vals_b) as u64, base + (ids_b + vals_b + stats_b) as u64);
        let rows = u32_of(OP, n)?;
        let top = TopkF32 {
            logits: self.ptr(logits),
            vocab: u32_of(OP, vocab)?,
            k: u32_of(OP, k)?,
            inv_t: pp,
            ids: ids_p,
            vals: vals_p,
            stats: stats_p,
        };
        self.run(&top, (rows, 1, 1), 1024)?;
        if plans.iter().any(|p| matches!(p, DevicePlan::Cdf(_))) {
            let cdf = SampleCdfF32 {
                logits: self.ptr(logits),
                vocab: u32_of(OP, vocab)?,
                inv_t: pp,
                min_p: pp + (n * 4) as u64,
                uniform: pp + (n * 8) as u64,
                stats: stats_p,
                ids: walk_p,
            };
            self.run(&cdf, (rows, 1, 1), 1024)?;
        }
        let bytes = self.read_slot(Slot::Samples, ids_b + vals_b + stats_b + n * 4)?;
        let mut out = Vec::with_capacity(n);
        for (i, (s, plan)) in seqs.iter_mut().zip(plans).enumerate() {
            if *plan == DevicePlan::Host {
                out.push(None);
                continue;
            }
            let top: Vec<(u32, f32)> = (0..k)
                .map(|j| {
                    let at = (i * k + j) * 4;
                    (u32_at(&bytes, at), f32_at(&bytes, ids_b + at))
                })
                .collect();
            let stat = |j: usize| f32_at(&bytes, ids_b + vals_b + (i * 3 + j) * 4);
            let summary = RowSummary { top: &top, lse: row_lse(stat(0), stat(1)), mass: f64::from(stat(2)) };
            out.push(match plan {
                DevicePlan::Cdf(_) => {
                    let id = u32_at(&bytes, ids_b + vals_b + stats_b + i * 4);
                    let logit = match top.iter().find(|t| t.0 == id) {
                        Some(t) => t.1,
                        None => self.logit_at(logits, i, id)?,
                    };
                    Some(s.finish(id, logit, &summary))
                }
                _ => s.sample_summary(&summary),
            });
        }
        Ok(out)
    }

    /// One logit, `logits[row, col]`, copied back.
    fn logit_at(&self, logits: &Tensor<Self>, row: usize, col: u32) -> Result<f32> {
        let at = (row * logits.cols() + col as usize) * 4;
        let view = logits.buf().bytes().slice(at..at + 4);
        let b = self
            .stream()
            .clone_dtoh(&view)
            .map_err(|e| Error::Backend { backend: "cuda", msg: format!("copying a logit back: {e}") })?;
        Ok(f32::from_le_bytes(b[..4].try_into().expect("4 bytes")))
    }
}

/// The little-endian u32 at byte `at` of what a sampling kernel sent back.
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The little-endian f32 at byte `at` of what a sampling kernel sent back.
fn f32_at(bytes: &[u8], at: usize) -> f32 {
    f32::from_bits(u32_at(bytes, at))
}

/// `log Σ exp(logit)` of a row from its largest logit and `Σ exp(logit − max)` (`row_sums` in
/// `cu/sample.cu`): one formula for every device sampling path, so a row's log-probabilities
/// are the same bits whichever path sampled it.
fn row_lse(max: f32, sum: f32) -> f64 {
    f64::from(max) + f64::from(sum).ln()
}

/// Says once per process that FP8 products run as bf16 products here, and why.
pub(crate) fn fp8_fallback_notice(why: &Error) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        eprintln!("turbine: FP8 products run as exact bf16 products on this GPU ({why})");
    }
}

/// The device address of 8-bit pages' sink keys (0 when there are none or the pages are not
/// 8-bit), checked to hold one key per block and kv head.
fn sink_ptr(c: &Cuda, kind: PageKind, kv: &KvPages<Cuda>) -> Result<u64> {
    match &kv.k_sink {
        Some(s) if kind != PageKind::Same => {
            match *kv.k.shape().dims() {
                [blocks, heads, _, d] => s.expect_shape("paged_attention", &[blocks, heads, d])?,
                _ => return Err(Error::invalid("paged_attention", "pages must be [blocks, kv_heads, block_size, d]")),
            }
            Ok(c.ptr(s))
        }
        _ => Ok(0),
    }
}

/// The kernel suffix of a layer's pages: f32 (`same`), `e4m3` or `i8` (which need row scales).
fn page_kind(op: &'static str, kv: &KvPages<Cuda>, l: QkvLayout) -> Result<PageKind> {
    if let Some(t) = &kv.k_shift {
        t.expect_shape(op, &[l.kv_heads * l.head_dim])?;
    }
    if kv.k.dtype() != kv.v.dtype() {
        return Err(Error::invalid(op, format!("keys are {} but values are {}", kv.k.dtype(), kv.v.dtype())));
    }
    let kind = match kv.k.dtype() {
        DType::F32 => return Ok(PageKind::Same),
        DType::F8E4M3 => PageKind::E4m3,
        DType::I8 => PageKind::I8,
        other => return Err(Error::Unsupported { op, dtype: other, backend: "cuda" }),
    };
    if kv.k_scales.is_none() || kv.v_scales.is_none() {
        return Err(Error::invalid(op, format!("{} pages without row scales", kv.k.dtype())));
    }
    Ok(kind)
}
