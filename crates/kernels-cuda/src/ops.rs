//! [`Ops`] on the GPU: each op checks its shapes like kernels-ref, then queues the kernels of
//! `cu/` (and cuBLASLt for the products) on the backend's stream.
//!
//! Activations are f32 in this first version, as on the CPU, so that models run unchanged and
//! the numbers can be compared with the oracle op by op; the products read their weights as
//! stored. By default (`TURBINE_CUDA_PRODUCTS=invariant`) every product runs on this crate's
//! `gemv_*` kernels, whose per-row sums are the same operations whatever the number of rows, so
//! a sequence's logits do not depend on its batch (as on the CPU); one warp per output column,
//! weights decoded in registers (f32, f16, bf16, E4M3, INT8, GGUF blocks; for W8A8 the input's
//! E4M3 codes too). With `TURBINE_CUDA_PRODUCTS=fast`, products of more than 8 rows go to
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
    RopeTable, Tensor, XQuant,
};

use crate::device::{Cuda, Slot};

/// One kernel argument.
#[derive(Clone, Copy)]
enum Arg {
    /// A device address (0 for a null pointer).
    Ptr(u64),
    U32(u32),
    I32(i32),
    F32(f32),
    U64(u64),
}

fn u32_of(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(op, format!("{v} does not fit a 32-bit kernel argument")))
}

/// Threads per block: `want` rounded up to a warp, within 32..=1024.
fn threads(want: usize) -> u32 {
    (want.div_ceil(32) * 32).clamp(32, 1024) as u32
}

fn act_code(a: Act) -> i32 {
    match a {
        Act::Silu => 0,
        Act::GeluTanh => 1,
        Act::Gelu => 2,
        Act::Relu => 3,
    }
}

impl Cuda {
    fn addr(&self, s: &CudaSlice<u8>) -> u64 {
        let (p, _sync) = s.device_ptr(self.stream());
        p
    }

    fn ptr(&self, t: &Tensor<Cuda>) -> u64 {
        self.addr(t.buf().bytes())
    }

    fn opt(&self, t: Option<&Tensor<Cuda>>) -> u64 {
        t.map_or(0, |t| self.ptr(t))
    }

    fn launch(&self, name: &str, grid: (u32, u32, u32), block: u32, args: &[Arg]) -> Result<()> {
        let f = self.function(name)?;
        let stream = self.stream();
        let mut b = stream.launch_builder(f);
        for a in args {
            match a {
                Arg::Ptr(v) | Arg::U64(v) => b.arg(v),
                Arg::U32(v) => b.arg(v),
                Arg::I32(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the argument list matches the kernel's signature in cu/ (checked by the op
        // wrappers below, which also check every buffer's size against the shapes).
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| Error::Backend { backend: "cuda", msg: format!("launching {name}: {e}") })
    }

    /// Blocks for a grid-stride loop over `n` elements with 256 threads.
    fn stride_blocks(n: usize) -> u32 {
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
        let sink = sink_ptr(self, kind, kv)?;
        let mut args =
            vec![Arg::Ptr(self.ptr(qkv)), Arg::Ptr(self.ptr(&meta.slots)), Arg::Ptr(self.ptr(&meta.positions))];
        if let Some(r) = rope {
            args.extend([Arg::Ptr(self.ptr(&r.cos)), Arg::Ptr(self.ptr(&r.sin)), Arg::U32(u32_of(op, r.rot_dim / 2)?)]);
        }
        args.extend([
            Arg::Ptr(self.ptr(&kv.k)),
            Arg::Ptr(self.ptr(&kv.v)),
            Arg::Ptr(self.opt(kv.k_scales.as_ref())),
            Arg::Ptr(self.opt(kv.v_scales.as_ref())),
            Arg::Ptr(self.opt(kv.k_shift.as_ref())),
            Arg::Ptr(sink),
            Arg::U32(u32_of(op, l.q_heads)?),
            Arg::U32(u32_of(op, l.kv_heads)?),
            Arg::U32(u32_of(op, l.head_dim)?),
            Arg::U32(u32_of(op, kv.block_size)?),
        ]);
        let (name, heads) = match rope {
            Some(_) => (format!("rope_kv_store_f32_{kind}"), l.q_heads + l.kv_heads),
            None => (format!("kv_store_f32_{kind}"), l.kv_heads),
        };
        self.launch(&name, (u32_of(op, t)?, u32_of(op, heads)?, 1), threads(l.head_dim), &args)
    }

    /// `out[t, j] = act(gate_up[t, j]) * gate_up[t, f + j]` for `t < rows`, `j < f` (f32).
    fn gate_halves(&self, gate_up: u64, out: u64, rows: usize, f: usize, act: i32) -> Result<()> {
        const OP: &str = "gated_act";
        if rows * f == 0 {
            return Ok(());
        }
        let args =
            [Arg::Ptr(gate_up), Arg::Ptr(out), Arg::U32(u32_of(OP, rows)?), Arg::U32(u32_of(OP, f)?), Arg::I32(act)];
        self.launch("gated_act_f32", (Self::stride_blocks(rows * f), 1, 1), 256, &args)
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
        let (m, k, n) = (x.rows(), x.cols(), w.rows());
        for t in [Some(x), Some(&*out), epi.bias, epi.scale, epi.smooth, epi.shift].into_iter().flatten() {
            self.f32_only(OP, t)?;
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let blas = self.blas();
        let stream = self.stream().cu_stream() as _;
        let acc_p = self.slot(Slot::Acc, m * n * 4)?;
        let (mu, nu, ku) = (u32_of(OP, m)?, u32_of(OP, n)?, u32_of(OP, k)?);
        let mut row_scale = None;
        // Widens 8-bit weights (codes only; the scales go to the epilogue) to `to`.
        let widen = |to: DType| -> Result<u64> {
            let buf = self.slot(Slot::Widened, n * k * to.bytes_for(1).unwrap_or(4))?;
            let name = if to == DType::BF16 { "dequant_rows_bf16" } else { "dequant_rows_f32" };
            let int8 = i32::from(w.dtype() == DType::I8);
            let args = [Arg::Ptr(self.ptr(w)), Arg::Ptr(0), Arg::Ptr(buf), Arg::U32(nu), Arg::U32(ku), Arg::I32(int8)];
            self.launch(name, (Self::stride_blocks(n * k), 1, 1), 256, &args)?;
            Ok(buf)
        };
        // The kernels' products: one warp per output column, each weight read once per tile of 8
        // rows and decoded in registers (`code`: the kernel's format flag); a row's sum does not
        // depend on m. Every product when batch invariance is asked for (the default); else
        // those of a few rows (decode), where they beat cuBLASLt.
        let gemv_grid = |cols: usize| -> Result<(u32, u32, u32)> {
            Ok((u32_of(OP, (cols * 32).div_ceil(256))?, m.div_ceil(GEMV_ROWS).clamp(1, 65_535) as u32, 1))
        };
        let kernel_product = (self.invariant_products() || m <= GEMV_ROWS) && k % 4 == 0;
        // A gated product's activation code: its output is act(gate) * up of the two halves.
        let gate = epi.act.filter(|_| epi.gated).map(act_code);
        // The product kernels (every product below that is not W8A8 when `kernel_product`)
        // finish a plain or gated epilogue (column scales, bias, accumulation, act(gate) * up)
        // themselves, with the operations of the epilogue and gated_act kernels: one launch a
        // product instead of two or three.
        let fused = kernel_product && epi.quant_x.is_none() && (epi.act.is_none() || gate.is_some()) && exact_cols == 0;
        // The gate a product kernel applies itself; otherwise a gated product is finished in a
        // scratch [m, n], then gated.
        let kernel_gate = gate.filter(|_| fused);
        let gated_p = match gate {
            Some(_) if !fused => Some(self.slot(Slot::Gated, m * n * 4)?),
            _ => None,
        };
        let out_p = self.ptr(out);
        // `names`: the plain kernel and its gated twin.
        let gemv = |names: [&str; 2], code: i32| -> Result<()> {
            let (dst, scale, bias, accumulate) = if fused {
                (out_p, self.opt(epi.scale), self.opt(epi.bias), i32::from(epi.accumulate))
            } else {
                (acc_p, 0, 0, 0)
            };
            // The kernel's output columns: a fused gated product writes half the weight rows.
            let cols = if kernel_gate.is_some() { n / 2 } else { n };
            let args = [
                Arg::Ptr(self.ptr(x)),
                Arg::Ptr(self.ptr(w)),
                Arg::Ptr(dst),
                Arg::U32(mu),
                Arg::U32(u32_of(OP, cols)?),
                Arg::U32(ku),
                Arg::I32(code),
                Arg::Ptr(scale),
                Arg::Ptr(bias),
                Arg::I32(accumulate),
                Arg::I32(kernel_gate.unwrap_or(-1)),
            ];
            self.launch(names[usize::from(kernel_gate.is_some())], gemv_grid(cols)?, 256, &args)
        };
        match (w.dtype(), epi.quant_x) {
            (wt @ (DType::F32 | DType::F16 | DType::BF16), None) if kernel_product => {
                let code = match wt {
                    DType::F16 => 1,
                    DType::BF16 => 2,
                    _ => 0,
                };
                gemv(["gemv_float_f32", "gemv_float_gated_f32"], code)?;
            }
            (DType::F32, None) => {
                blas.matmul(stream, self.ptr(x), DType::F32, self.ptr(w), DType::F32, acc_p, (m, n, k))?
            }
            (wt @ (DType::F16 | DType::BF16), None) => {
                let xs = self.slot(Slot::Input16, m * k * 2)?;
                let name = if wt == DType::BF16 { "convert_from_f32_bf16" } else { "convert_from_f32_f16" };
                let args = [Arg::Ptr(self.ptr(x)), Arg::Ptr(xs), Arg::U64((m * k) as u64)];
                self.launch(name, (Self::stride_blocks(m * k), 1, 1), 256, &args)?;
                blas.matmul(stream, xs, wt, self.ptr(w), wt, acc_p, (m, n, k))?;
            }
            (DType::F8E4M3 | DType::I8, None) if kernel_product => {
                gemv(["gemv_8bit_f32", "gemv_8bit_gated_f32"], i32::from(w.dtype() == DType::I8))?;
            }
            (wt, None) if wt.is_quantized() => {
                // GGUF blocks read in place: decoded in registers, or widened for cuBLASLt.
                let fmt = gguf_code(OP, wt)?;
                // (GGUF rows are whole blocks of 32 or 256 values, so k % 4 == 0.)
                if kernel_product {
                    gemv(["gemv_gguf_f32", "gemv_gguf_gated_f32"], fmt)?;
                } else {
                    let wf = self.slot(Slot::Widened, n * k * 4)?;
                    let args = [Arg::Ptr(self.ptr(w)), Arg::Ptr(wf), Arg::U32(nu), Arg::U32(ku), Arg::I32(fmt)];
                    self.launch("dequant_gguf_f32", (Self::stride_blocks(n * k), 1, 1), 256, &args)?;
                    blas.matmul(stream, self.ptr(x), DType::F32, wf, DType::F32, acc_p, (m, n, k))?;
                }
            }
            (DType::F8E4M3 | DType::I8, None) => {
                let wf = widen(DType::F32)?;
                blas.matmul(stream, self.ptr(x), DType::F32, wf, DType::F32, acc_p, (m, n, k))?;
            }
            (DType::F8E4M3, Some(q)) => {
                let codes = self.slot(Slot::Codes, m * k)?;
                let rs = self.slot(Slot::RowScales, m * 4)?;
                let fixed = match q {
                    XQuant::Fp8PerToken => 0,
                    XQuant::Fp8Static(s) => {
                        s.expect_shape(OP, &[1])?;
                        self.ptr(s)
                    }
                };
                let args = [
                    Arg::Ptr(self.ptr(x)),
                    Arg::Ptr(self.opt(epi.shift)),
                    Arg::Ptr(self.opt(epi.smooth)),
                    Arg::Ptr(fixed),
                    Arg::Ptr(codes),
                    Arg::Ptr(rs),
                    Arg::U32(ku),
                ];
                self.launch("fp8_quantize_rows_f32", (mu, 1, 1), 256, &args)?;
                if kernel_product {
                    let args = [
                        Arg::Ptr(codes),
                        Arg::Ptr(self.ptr(w)),
                        Arg::Ptr(acc_p),
                        Arg::U32(mu),
                        Arg::U32(nu),
                        Arg::U32(ku),
                    ];
                    self.launch("gemv_w8a8_f32", gemv_grid(n)?, 256, &args)?;
                    row_scale = Some(rs);
                } else {
                    let native = if self.caps().fp8 {
                        blas.matmul(stream, codes, DType::F8E4M3, self.ptr(w), DType::F8E4M3, acc_p, (m, n, k))
                    } else {
                        Err(Error::Backend { backend: "cuda", msg: "this GPU has no FP8 tensor cores".into() })
                    };
                    if let Err(e) = native {
                        // Both sides as bf16 (exact: E4M3 values fit bf16), same products.
                        fp8_fallback_notice(&e);
                        let xs = self.slot(Slot::Input16, m * k * 2)?;
                        let args =
                            [Arg::Ptr(codes), Arg::Ptr(0), Arg::Ptr(xs), Arg::U32(mu), Arg::U32(ku), Arg::I32(0)];
                        self.launch("dequant_rows_bf16", (Self::stride_blocks(m * k), 1, 1), 256, &args)?;
                        let wb = widen(DType::BF16)?;
                        blas.matmul(stream, xs, DType::BF16, wb, DType::BF16, acc_p, (m, n, k))?;
                    }
                    row_scale = Some(rs);
                }
            }
            (dtype, Some(_)) => {
                return Err(Error::invalid(OP, format!("FP8 input quantisation needs FP8 weights, not {dtype}")))
            }
            (dtype, None) => return Err(Error::Unsupported { op: OP, dtype, backend: "cuda" }),
        }
        if fused {
            return Ok(());
        }
        let args = [
            Arg::Ptr(acc_p),
            Arg::Ptr(row_scale.unwrap_or(0)),
            Arg::Ptr(self.opt(epi.scale)),
            Arg::Ptr(self.opt(epi.bias)),
            Arg::Ptr(self.ptr(x)),
            Arg::Ptr(epi.exact.map_or(0, |e| self.ptr(e.idx))),
            Arg::Ptr(epi.exact.map_or(0, |e| self.ptr(e.w))),
            Arg::U32(u32_of(OP, exact_cols)?),
            Arg::U32(ku),
            Arg::I32(if gate.is_some() { -1 } else { epi.act.map_or(-1, act_code) }),
            Arg::I32(i32::from(epi.accumulate)),
            Arg::Ptr(gated_p.unwrap_or(out_p)),
            Arg::U32(mu),
            Arg::U32(nu),
        ];
        // One thread per column, EPILOGUE_ROWS (16) rows per block (`cu/gemm.cu`).
        let grid = (u32_of(OP, n.div_ceil(256))?, m.div_ceil(16).clamp(1, 65_535) as u32, 1);
        self.launch("epilogue_f32", grid, 256, &args)?;
        match (gated_p, gate) {
            (Some(p), Some(code)) => self.gate_halves(p, out_p, m, n / 2, code),
            _ => Ok(()),
        }
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
        let args = [
            Arg::Ptr(self.ptr(x)),
            Arg::Ptr(self.ptr(w)),
            Arg::Ptr(self.opt(b)),
            Arg::Ptr(r),
            Arg::I32(mode),
            Arg::Ptr(self.ptr(out)),
            Arg::U32(u32_of(OP, h)?),
            Arg::F32(eps),
            Arg::F32(offset),
            Arg::I32(layer),
        ];
        self.launch("norm_f32", (u32_of(OP, t)?, 1, 1), 256, &args)
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
        let args = [
            Arg::Ptr(self.ptr(qkv)),
            Arg::Ptr(self.ptr(wq)),
            Arg::Ptr(self.ptr(wk)),
            Arg::U32(u32_of(OP, l.q_heads)?),
            Arg::U32(u32_of(OP, l.kv_heads)?),
            Arg::U32(u32_of(OP, l.head_dim)?),
            Arg::F32(eps),
            Arg::F32(offset),
        ];
        self.launch("head_norm_f32", (u32_of(OP, t * (l.q_heads + l.kv_heads))?, 1, 1), threads(l.head_dim), &args)
    }

    fn rope(&self, qkv: &mut Tensor<Self>, pos: &Tensor<Self>, table: &RopeTable<Self>, l: QkvLayout) -> Result<()> {
        const OP: &str = "rope";
        let half = rope_check(OP, qkv, pos, table, l)?;
        let t = qkv.rows();
        if t == 0 || half == 0 {
            return Ok(());
        }
        let args = [
            Arg::Ptr(self.ptr(qkv)),
            Arg::Ptr(self.ptr(pos)),
            Arg::Ptr(self.ptr(&table.cos)),
            Arg::Ptr(self.ptr(&table.sin)),
            Arg::U32(u32_of(OP, l.q_heads)?),
            Arg::U32(u32_of(OP, l.kv_heads)?),
            Arg::U32(u32_of(OP, l.head_dim)?),
            Arg::U32(u32_of(OP, table.rot_dim)?),
        ];
        self.launch("rope_f32", (u32_of(OP, t)?, u32_of(OP, l.q_heads + l.kv_heads)?, 1), threads(half), &args)
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
        let n_seqs = meta.seqs.rows();
        // Multi-token sequences (prefill) go to the tiled kernel where its shared tiles fit.
        let flash = t > n_seqs && l.head_dim <= FLASH_MAX_D && kv.block_size <= FLASH_MAX_BS;
        // The row kernel's arguments; the tiled kernel takes all but the last (`flash`).
        let args = [
            Arg::Ptr(self.ptr(qkv)),
            Arg::Ptr(self.ptr(&kv.k)),
            Arg::Ptr(self.ptr(&kv.v)),
            Arg::Ptr(self.opt(kv.k_scales.as_ref())),
            Arg::Ptr(self.opt(kv.v_scales.as_ref())),
            Arg::Ptr(sink_ptr(self, kind, kv)?),
            Arg::Ptr(self.ptr(&meta.seqs)),
            Arg::U32(u32_of(OP, n_seqs)?),
            Arg::Ptr(self.ptr(&meta.block_tables)),
            Arg::U32(u32_of(OP, meta.block_tables.cols())?),
            Arg::U32(u32_of(OP, l.q_heads)?),
            Arg::U32(u32_of(OP, l.kv_heads)?),
            Arg::U32(u32_of(OP, l.head_dim)?),
            Arg::U32(u32_of(OP, kv.block_size)?),
            Arg::F32(p.scale),
            Arg::U32(u32_of(OP, p.window.unwrap_or(0))?),
            Arg::F32(p.alibi.unwrap_or(0.0)),
            Arg::Ptr(slopes),
            Arg::Ptr(self.ptr(out)),
            Arg::U32(u32::from(flash)),
        ];
        let heads = u32_of(OP, l.q_heads)?;
        if flash {
            let tiles = u32_of(OP, t.div_ceil(FLASH_TQ) + n_seqs)?;
            self.launch(&format!("flash_prefill_f32_{kind}"), (tiles, heads, 1), 128, &args[..args.len() - 1])?;
        }
        self.launch(&format!("paged_attention_f32_{kind}"), (u32_of(OP, t)?, heads, 1), 128, &args)
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
        let mut args = vec![
            Arg::Ptr(self.ptr(src)),
            Arg::Ptr(self.ptr(ids)),
            Arg::F32(scale),
            Arg::I32(i32::from(accumulate)),
            Arg::Ptr(self.ptr(out)),
            Arg::U32(u32_of(OP, src.rows())?),
            Arg::U32(u32_of(OP, cols)?),
        ];
        // The table as stored: f32, f16/bf16 (embeddings kept as the checkpoint has them) or
        // GGUF blocks.
        let kernel = match src.dtype() {
            DType::F32 => "gather_rows_f32",
            DType::F16 => "gather_rows_f16",
            DType::BF16 => "gather_rows_bf16",
            d => {
                args.push(Arg::I32(gguf_code(OP, d)?));
                "gather_gguf_f32"
            }
        };
        self.launch(kernel, (u32_of(OP, n)?, 1, 1), 256, &args)
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
        let args = [Arg::Ptr(self.ptr(x)), Arg::U32(u32_of(OP, x.cols())?)];
        self.launch("softmax_f32", (u32_of(OP, x.rows())?, 1, 1), 256, &args)
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
fn gguf_code(op: &'static str, dtype: DType) -> Result<i32> {
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
        let args =
            [Arg::Ptr(self.ptr(logits)), Arg::U32(u32_of(OP, vocab)?), Arg::Ptr(buf), Arg::Ptr(buf + (n * 4) as u64)];
        self.launch("argmax_logprob_f32", (u32_of(OP, n)?, 1, 1), 1024, &args)?;
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
        let args = [
            Arg::Ptr(self.ptr(logits)),
            Arg::U32(u32_of(OP, vocab)?),
            Arg::U32(u32_of(OP, k)?),
            Arg::Ptr(pp),
            Arg::Ptr(ids_p),
            Arg::Ptr(vals_p),
            Arg::Ptr(stats_p),
        ];
        self.launch("topk_f32", (rows, 1, 1), 1024, &args)?;
        if plans.iter().any(|p| matches!(p, DevicePlan::Cdf(_))) {
            let args = [
                Arg::Ptr(self.ptr(logits)),
                Arg::U32(u32_of(OP, vocab)?),
                Arg::Ptr(pp),
                Arg::Ptr(pp + (n * 4) as u64),
                Arg::Ptr(pp + (n * 8) as u64),
                Arg::Ptr(stats_p),
                Arg::Ptr(walk_p),
            ];
            self.launch("sample_cdf_f32", (rows, 1, 1), 1024, &args)?;
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
fn fp8_fallback_notice(why: &Error) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        eprintln!("turbine: FP8 products run as exact bf16 products on this GPU ({why})");
    }
}

/// The device address of 8-bit pages' sink keys (0 when there are none or the pages are not
/// 8-bit), checked to hold one key per block and kv head.
fn sink_ptr(c: &Cuda, kind: &str, kv: &KvPages<Cuda>) -> Result<u64> {
    match &kv.k_sink {
        Some(s) if kind != "same" => {
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
fn page_kind(op: &'static str, kv: &KvPages<Cuda>, l: QkvLayout) -> Result<&'static str> {
    if let Some(t) = &kv.k_shift {
        t.expect_shape(op, &[l.kv_heads * l.head_dim])?;
    }
    if kv.k.dtype() != kv.v.dtype() {
        return Err(Error::invalid(op, format!("keys are {} but values are {}", kv.k.dtype(), kv.v.dtype())));
    }
    let kind = match kv.k.dtype() {
        DType::F32 => return Ok("same"),
        DType::F8E4M3 => "e4m3",
        DType::I8 => "i8",
        other => return Err(Error::Unsupported { op, dtype: other, backend: "cuda" }),
    };
    if kv.k_scales.is_none() || kv.v_scales.is_none() {
        return Err(Error::invalid(op, format!("{} pages without row scales", kv.k.dtype())));
    }
    Ok(kind)
}
