//! The matrix products, in two halves: [`plan`] chooses the path from the weights' type, the
//! input quantisation, the row count and the products mode (a pure function, tested without a
//! GPU), and [`Cuda::product`] launches the path it chose.
//!
//! Paths (see the table in [`crate::ops`]): the `gemv_*` kernels (one warp per output column,
//! weights decoded in registers; a row's sums do not depend on the number of rows), which also
//! finish a plain or gated epilogue themselves when they can ("fused"); or cuBLASLt on the input
//! and weights converted as its types need, then the epilogue kernel.

use turbine_core::{Act, Backend, DType, Epilogue, Error, Result, Tensor, XQuant};

use crate::device::{Cuda, Slot};
use crate::kernels::*;
use crate::ops::{act_code, fp8_fallback_notice, gguf_code, u32_of, GEMV_ROWS};

/// Which product runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// `gemv_float_*` on f32, f16 or bf16 weights (`wtype` 0, 1, 2).
    GemvFloat { wtype: i32 },
    /// `gemv_8bit_*` on E4M3 or INT8 weights with per-row scales.
    Gemv8bit { int8: bool },
    /// `gemv_gguf_*` on GGUF blocks read in place.
    GemvGguf { fmt: i32 },
    /// W8A8: the input quantised to E4M3 per row, then `gemv_w8a8_f32`.
    W8a8Gemv,
    /// W8A8 on this crate's FP8 tensor-core kernel (`mma_e4m3`, sm_89+), K split by
    /// [`mma_splits`].
    W8a8Mma,
    /// W8A8 on cuBLASLt's FP8 tensor cores (both sides widened to bf16 where the GPU has none).
    W8a8Blas,
    /// f16 or bf16 weights on this crate's tensor-core kernel (`mma16_*`), K split by
    /// [`mma_splits`], the splits added by `sum_splits`.
    Mma16 { ty: Ty },
    /// Weight-only E4M3 or INT8 codes on the tensor-core kernel (`mma_w8_*`), widened to bf16
    /// as they are staged (exact), the input rounded to bf16.
    Mma8 { int8: bool },
    /// f32 weights on f32 cuBLASLt.
    BlasF32,
    /// f16 or bf16 weights on cuBLASLt, the input converted to their type.
    Blas16 { ty: Ty },
    /// 8-bit weights widened to f32, then f32 cuBLASLt.
    BlasWidened8 { int8: bool },
    /// GGUF blocks widened to f32, then f32 cuBLASLt.
    BlasWidenedGguf { fmt: i32 },
}

/// The tensor-core products the invariant mode may use on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cores {
    /// None (`TURBINE_CUDA_MMA=off`, or the fast mode).
    Off,
    /// f16/bf16 (`mma16_*`, sm_80+).
    Sixteen,
    /// f16/bf16 and FP8 E4M3 (`mma_e4m3`, sm_89+).
    SixteenAndFp8,
}

/// The operands of a tensor-core product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MmaKind {
    /// f32 input, bf16 weights.
    Bf16,
    /// f32 input, f16 weights.
    F16,
    /// E4M3 input codes, E4M3 weight codes.
    E4m3,
    /// f32 input, weight-only 8-bit codes (INT8 when true, else E4M3) widened to bf16.
    Widened8 { int8: bool },
}

/// A product's path and how its epilogue is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The product.
    pub path: Path,
    /// The `gemv` kernel finishes the epilogue (column scales, bias, accumulation, a gate)
    /// itself: one launch instead of two or three.
    pub fused: bool,
    /// A gated product's activation code (`act(gate) * up` of the two halves of the output).
    pub gate: Option<i32>,
}

impl Plan {
    /// The gate the product kernel applies itself.
    pub fn kernel_gate(&self) -> Option<i32> {
        self.gate.filter(|_| self.fused)
    }
}

/// Chooses the product for `m` rows of `k` values against weights of type `wt`. `invariant`:
/// every product on the kernels whose row sums do not depend on `m` (the default products
/// mode); otherwise only products of at most [`GEMV_ROWS`] rows. `cores`: the invariant
/// products that run on the tensor-core kernels (f16/bf16 weights; W8A8 where the GPU has FP8
/// tensor cores), for every `m` (a row's bits must not depend on which kernel its batch size
/// picks). `exact_cols`: columns of the epilogue's exact correction (the epilogue kernel applies
/// them).
#[allow(clippy::too_many_arguments)] // plain values, so that tests state every input
pub(crate) fn plan(
    wt: DType,
    w8a8: bool,
    m: usize,
    k: usize,
    invariant: bool,
    cores: Cores,
    act: Option<Act>,
    gated: bool,
    exact_cols: usize,
) -> Result<Plan> {
    const OP: &str = "matmul";
    let kernel = (invariant || m <= GEMV_ROWS) && k % 4 == 0;
    let gate = act.filter(|_| gated).map(act_code);
    let path = match (wt, w8a8) {
        (DType::F16, false) if invariant && cores != Cores::Off => Path::Mma16 { ty: Ty::F16 },
        (DType::BF16, false) if invariant && cores != Cores::Off => Path::Mma16 { ty: Ty::Bf16 },
        (DType::F8E4M3, true) if invariant && cores == Cores::SixteenAndFp8 => Path::W8a8Mma,
        (DType::F8E4M3 | DType::I8, false) if invariant && cores != Cores::Off => Path::Mma8 { int8: wt == DType::I8 },
        (DType::F32 | DType::F16 | DType::BF16, false) if kernel => Path::GemvFloat {
            wtype: match wt {
                DType::F16 => 1,
                DType::BF16 => 2,
                _ => 0,
            },
        },
        (DType::F32, false) => Path::BlasF32,
        (DType::F16, false) => Path::Blas16 { ty: Ty::F16 },
        (DType::BF16, false) => Path::Blas16 { ty: Ty::Bf16 },
        (DType::F8E4M3 | DType::I8, false) if kernel => Path::Gemv8bit { int8: wt == DType::I8 },
        (DType::F8E4M3 | DType::I8, false) => Path::BlasWidened8 { int8: wt == DType::I8 },
        // (GGUF rows are whole blocks of 32 or 256 values, so k % 4 == 0.)
        (wt, false) if wt.is_quantized() && kernel => Path::GemvGguf { fmt: gguf_code(OP, wt)? },
        (wt, false) if wt.is_quantized() => Path::BlasWidenedGguf { fmt: gguf_code(OP, wt)? },
        (DType::F8E4M3, true) if kernel => Path::W8a8Gemv,
        (DType::F8E4M3, true) => Path::W8a8Blas,
        (dtype, true) => {
            return Err(Error::invalid(OP, format!("FP8 input quantisation needs FP8 weights, not {dtype}")))
        }
        (dtype, false) => return Err(Error::Unsupported { op: OP, dtype, backend: "cuda" }),
    };
    let gemv = matches!(path, Path::GemvFloat { .. } | Path::Gemv8bit { .. } | Path::GemvGguf { .. });
    // The tensor-core products finish plain epilogues (no activation, no gate: a gate's two
    // halves lie in different tiles) in their store or in `sum_splits`.
    let mma = matches!(path, Path::Mma16 { .. } | Path::Mma8 { .. });
    let fused = exact_cols == 0 && ((gemv && (act.is_none() || gate.is_some())) || (mma && act.is_none()));
    Ok(Plan { path, fused, gate })
}

/// The plain epilogue a tensor-core product finishes itself (`gemv_finish` in `common.cuh`):
/// `out = [out +] v · col_scale[c] + bias[c]`, addresses 0 where absent.
#[derive(Debug, Clone, Copy, Default)]
struct Finish {
    col_scale: u64,
    bias: u64,
    accumulate: i32,
}

/// How a tensor-core product of `n` output columns splits its `k` values: `(splits, kchunk)`,
/// chosen from (n, k) alone so that a row's bits never depend on the batch. Enough splits that
/// the 64-column tiles times the splits make at least 256 blocks (a small product must still
/// fill a large GPU at batch 1), each split at least 512 values; `kchunk` is a multiple of 64
/// (the kernels' step: 32 16-bit values or 64 E4M3 codes) and `splits × kchunk` covers k.
pub(crate) fn mma_splits(n: usize, k: usize) -> (usize, usize) {
    let want = 256usize.div_ceil(n.div_ceil(64).max(1));
    let splits = want.clamp(1, (k / 512).max(1));
    let kchunk = k.div_ceil(splits).next_multiple_of(64).max(64);
    (k.div_ceil(kchunk).max(1), kchunk)
}

impl Cuda {
    /// `out = epilogue(x · wᵀ)` on the path [`plan`] chooses (shapes and types checked by the
    /// caller; `exact_cols` from [`Epilogue::check`]).
    pub(crate) fn product(
        &self,
        x: &Tensor<Cuda>,
        w: &Tensor<Cuda>,
        epi: &Epilogue<'_, Cuda>,
        out: &mut Tensor<Cuda>,
        exact_cols: usize,
    ) -> Result<()> {
        const OP: &str = "matmul";
        let (m, k, n) = (x.rows(), x.cols(), w.rows());
        let plan = plan(
            w.dtype(),
            epi.quant_x.is_some(),
            m,
            k,
            self.invariant_products(),
            self.cores(),
            epi.act,
            epi.gated,
            exact_cols,
        )?;
        let (mu, nu, ku) = (u32_of(OP, m)?, u32_of(OP, n)?, u32_of(OP, k)?);
        let out_p = self.ptr(out);
        let acc_p = if plan.fused { 0 } else { self.slot(Slot::Acc, m * n * 4)? };
        // A gated product that is not fused is finished in a scratch [m, n], then gated.
        let gated_p = match plan.gate {
            Some(_) if !plan.fused => Some(self.slot(Slot::Gated, m * n * 4)?),
            _ => None,
        };
        let row_scale = self.launch_path(plan, x, w, epi, out_p, acc_p, (mu, nu, ku))?;
        if plan.fused {
            return Ok(());
        }
        let e = EpilogueF32 {
            acc: acc_p,
            row_scale: row_scale.unwrap_or(0),
            col_scale: self.opt(epi.scale),
            bias: self.opt(epi.bias),
            x: self.ptr(x),
            idx: epi.exact.map_or(0, |e| self.ptr(e.idx)),
            wx: epi.exact.map_or(0, |e| self.ptr(e.w)),
            s: u32_of(OP, exact_cols)?,
            k: ku,
            act: if plan.gate.is_some() { -1 } else { epi.act.map_or(-1, act_code) },
            accumulate: i32::from(epi.accumulate),
            out: gated_p.unwrap_or(out_p),
            m: mu,
            n: nu,
        };
        // One thread per column, EPILOGUE_ROWS (16) rows per block (`cu/gemm.cu`).
        let grid = (u32_of(OP, n.div_ceil(256))?, m.div_ceil(16).clamp(1, 65_535) as u32, 1);
        self.run(&e, grid, 256)?;
        match (gated_p, plan.gate) {
            (Some(p), Some(code)) => self.gate_halves(p, out_p, m, n / 2, code),
            _ => Ok(()),
        }
    }

    /// The tensor-core products this device runs in the invariant mode.
    fn cores(&self) -> Cores {
        match (self.tensor_core_products(), self.caps().fp8) {
            (false, _) => Cores::Off,
            (true, false) => Cores::Sixteen,
            (true, true) => Cores::SixteenAndFp8,
        }
    }

    /// A tensor-core product's sums into `acc_p`: K split by [`mma_splits`] into a scratch, the
    /// splits then added in order (or, unsplit, straight into `acc_p`); raw, or with `finish`
    /// the plain epilogue applied by whichever kernel has the whole sum.
    fn tensor_cores(
        &self,
        kind: MmaKind,
        x: u64,
        w: u64,
        acc_p: u64,
        (m, n, k): (u32, u32, u32),
        finish: Option<Finish>,
    ) -> Result<()> {
        const OP: &str = "matmul";
        let (mu, nu) = (m as usize, n as usize);
        let (splits, kchunk) = mma_splits(nu, k as usize);
        let part = if splits == 1 { acc_p } else { self.slot(Slot::Splits, splits * mu * nu * 4)? };
        let grid = (u32_of(OP, nu.div_ceil(64))?, u32_of(OP, mu.div_ceil(64))?, u32_of(OP, splits)?);
        let kchunk = u32_of(OP, kchunk)?;
        let f = finish.unwrap_or_default();
        let (col_scale, bias, accumulate, fin) = (f.col_scale, f.bias, f.accumulate, i32::from(finish.is_some()));
        // The product finishes only when it has the whole sum.
        let finish = if splits == 1 { fin } else { 0 };
        macro_rules! mma {
            ($kernel:ident) => {
                self.run(&$kernel { x, w, part, m, n, k, kchunk, col_scale, bias, accumulate, finish }, grid, 128)?
            };
        }
        match kind {
            MmaKind::Bf16 => mma!(Mma16Bf16),
            MmaKind::F16 => mma!(Mma16F16),
            MmaKind::E4m3 => mma!(MmaE4m3),
            MmaKind::Widened8 { int8: false } => mma!(MmaW8E4m3),
            MmaKind::Widened8 { int8: true } => mma!(MmaW8I8),
        }
        if splits > 1 {
            let s = SumSplits {
                part,
                acc: acc_p,
                count: (mu * nu) as u64,
                splits: u32_of(OP, splits)?,
                n,
                col_scale,
                bias,
                accumulate,
                finish: fin,
            };
            self.run(&s, (Self::stride_blocks(mu * nu), 1, 1), 256)?;
        }
        Ok(())
    }

    /// Launches the product of `plan` into `acc_p` (or, fused, finished into `out_p`); returns
    /// the input's per-row scales when the product leaves them to the epilogue (W8A8).
    #[allow(clippy::too_many_arguments)]
    fn launch_path(
        &self,
        plan: Plan,
        x: &Tensor<Cuda>,
        w: &Tensor<Cuda>,
        epi: &Epilogue<'_, Cuda>,
        out_p: u64,
        acc_p: u64,
        (mu, nu, ku): (u32, u32, u32),
    ) -> Result<Option<u64>> {
        const OP: &str = "matmul";
        let (m, n, k) = (mu as usize, nu as usize, ku as usize);
        let blas = self.blas();
        let stream = self.stream().cu_stream() as _;
        // The kernels' grid: warps over the output columns, tiles of GEMV_ROWS rows.
        let gemv_grid = |cols: usize| -> Result<(u32, u32, u32)> {
            Ok((u32_of(OP, (cols * 32).div_ceil(256))?, m.div_ceil(GEMV_ROWS).clamp(1, 65_535) as u32, 1))
        };
        // The arguments every gemv kernel shares; a fused gated product writes half the rows.
        let cols = if plan.kernel_gate().is_some() { n / 2 } else { n };
        let (dst, col_scale, bias, accumulate) = if plan.fused {
            (out_p, self.opt(epi.scale), self.opt(epi.bias), i32::from(epi.accumulate))
        } else {
            (acc_p, 0, 0, 0)
        };
        let (x_p, w_p, gate) = (self.ptr(x), self.ptr(w), plan.kernel_gate().unwrap_or(-1));
        let finish = plan.fused.then_some(Finish { col_scale, bias, accumulate });
        let cols_u = u32_of(OP, cols)?;
        let gated = plan.kernel_gate().is_some();
        // Widens 8-bit weights (codes only; their scales go to the epilogue) to `ty`.
        let widen = |ty: Ty, int8: bool| -> Result<u64> {
            let buf = self.slot(Slot::Widened, n * k * if ty == Ty::Bf16 { 2 } else { 4 })?;
            let d = DequantRows { ty, codes: w_p, scales: 0, out: buf, n: nu, k: ku, int8: i32::from(int8) };
            self.run(&d, (Self::stride_blocks(n * k), 1, 1), 256)?;
            Ok(buf)
        };
        // The plain kernel, or its gated twin (same parameters) when the kernel applies the gate.
        macro_rules! gemv {
            ($plain:ident, $gated:ident, $($field:ident: $value:expr),* $(,)?) => {{
                let grid = gemv_grid(cols)?;
                if gated {
                    self.run(&$gated { $($field: $value),* }, grid, 256)?
                } else {
                    self.run(&$plain { $($field: $value),* }, grid, 256)?
                }
            }};
        }
        match plan.path {
            Path::GemvFloat { wtype } => gemv!(GemvFloatF32, GemvFloatGatedF32,
                x: x_p, w: w_p, acc: dst, m: mu, n: cols_u, k: ku, wtype: wtype,
                col_scale: col_scale, bias: bias, accumulate: accumulate, gate: gate),
            Path::Gemv8bit { int8 } => gemv!(Gemv8bitF32, Gemv8bitGatedF32,
                x: x_p, codes: w_p, acc: dst, m: mu, n: cols_u, k: ku, int8: i32::from(int8),
                col_scale: col_scale, bias: bias, accumulate: accumulate, gate: gate),
            Path::GemvGguf { fmt } => gemv!(GemvGgufF32, GemvGgufGatedF32,
                x: x_p, w: w_p, acc: dst, m: mu, n: cols_u, k: ku, fmt: fmt,
                col_scale: col_scale, bias: bias, accumulate: accumulate, gate: gate),
            Path::Mma8 { int8 } => {
                self.tensor_cores(MmaKind::Widened8 { int8 }, x_p, w_p, dst, (mu, nu, ku), finish)?
            }
            Path::Mma16 { ty } => {
                let kind = if ty == Ty::Bf16 { MmaKind::Bf16 } else { MmaKind::F16 };
                self.tensor_cores(kind, x_p, w_p, dst, (mu, nu, ku), finish)?
            }
            Path::BlasF32 => blas.matmul(stream, x_p, DType::F32, w_p, DType::F32, acc_p, (m, n, k))?,
            Path::Blas16 { ty } => {
                let xs = self.slot(Slot::Input16, m * k * 2)?;
                let c = ConvertFromF32 { ty, x: x_p, y: xs, n: (m * k) as u64 };
                self.run(&c, (Self::stride_blocks(m * k), 1, 1), 256)?;
                let wt = if ty == Ty::Bf16 { DType::BF16 } else { DType::F16 };
                blas.matmul(stream, xs, wt, w_p, wt, acc_p, (m, n, k))?;
            }
            Path::BlasWidenedGguf { fmt } => {
                let wf = self.slot(Slot::Widened, n * k * 4)?;
                let d = DequantGgufF32 { w: w_p, out: wf, n: nu, k: ku, fmt };
                self.run(&d, (Self::stride_blocks(n * k), 1, 1), 256)?;
                blas.matmul(stream, x_p, DType::F32, wf, DType::F32, acc_p, (m, n, k))?;
            }
            Path::BlasWidened8 { int8 } => {
                let wf = widen(Ty::F32, int8)?;
                blas.matmul(stream, x_p, DType::F32, wf, DType::F32, acc_p, (m, n, k))?;
            }
            Path::W8a8Gemv | Path::W8a8Mma | Path::W8a8Blas => {
                let codes = self.slot(Slot::Codes, m * k)?;
                let rs = self.slot(Slot::RowScales, m * 4)?;
                let static_scale = match epi.quant_x {
                    Some(XQuant::Fp8Static(s)) => {
                        s.expect_shape(OP, &[1])?;
                        self.ptr(s)
                    }
                    _ => 0,
                };
                let q = Fp8QuantizeRows {
                    ty: Ty::F32,
                    x: x_p,
                    shift: self.opt(epi.shift),
                    smooth: self.opt(epi.smooth),
                    static_scale,
                    out: codes,
                    scales: rs,
                    cols: ku,
                };
                self.run(&q, (mu, 1, 1), 256)?;
                if plan.path == Path::W8a8Gemv {
                    let g = GemvW8a8F32 { x: codes, codes: w_p, acc: acc_p, m: mu, n: nu, k: ku };
                    self.run(&g, gemv_grid(n)?, 256)?;
                } else if plan.path == Path::W8a8Mma {
                    self.tensor_cores(MmaKind::E4m3, codes, w_p, acc_p, (mu, nu, ku), None)?;
                } else {
                    let native = if self.caps().fp8 {
                        blas.matmul(stream, codes, DType::F8E4M3, w_p, DType::F8E4M3, acc_p, (m, n, k))
                    } else {
                        Err(Error::Backend { backend: "cuda", msg: "this GPU has no FP8 tensor cores".into() })
                    };
                    if let Err(e) = native {
                        // Both sides as bf16 (exact: E4M3 values fit bf16), same products.
                        fp8_fallback_notice(&e);
                        let xs = self.slot(Slot::Input16, m * k * 2)?;
                        let d = DequantRows { ty: Ty::Bf16, codes, scales: 0, out: xs, n: mu, k: ku, int8: 0 };
                        self.run(&d, (Self::stride_blocks(m * k), 1, 1), 256)?;
                        let wb = widen(Ty::Bf16, false)?;
                        blas.matmul(stream, xs, DType::BF16, wb, DType::BF16, acc_p, (m, n, k))?;
                    }
                }
                return Ok(Some(rs));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(wt: DType, w8a8: bool, m: usize, invariant: bool) -> Plan {
        plan(wt, w8a8, m, 64, invariant, Cores::Off, None, false, 0).unwrap()
    }

    #[test]
    fn the_path_follows_weights_rows_and_mode() {
        // Invariant products: every row count on the kernels, fused.
        for m in [1, 8, 9, 4096] {
            assert_eq!(
                p(DType::BF16, false, m, true),
                Plan { path: Path::GemvFloat { wtype: 2 }, fused: true, gate: None }
            );
            assert_eq!(p(DType::I8, false, m, true).path, Path::Gemv8bit { int8: true });
            assert_eq!(p(DType::Q4_K, false, m, true).path, Path::GemvGguf { fmt: 5 });
            assert_eq!(p(DType::F8E4M3, true, m, true), Plan { path: Path::W8a8Gemv, fused: false, gate: None });
        }
        // Fast products: a few rows on the kernels, more on cuBLASLt.
        assert_eq!(p(DType::F16, false, 8, false).path, Path::GemvFloat { wtype: 1 });
        assert_eq!(
            p(DType::F16, false, 9, false),
            Plan { path: Path::Blas16 { ty: Ty::F16 }, fused: false, gate: None }
        );
        assert_eq!(p(DType::F32, false, 9, false).path, Path::BlasF32);
        assert_eq!(p(DType::F8E4M3, false, 9, false).path, Path::BlasWidened8 { int8: false });
        assert_eq!(p(DType::Q8_0, false, 9, false).path, Path::BlasWidenedGguf { fmt: 0 });
        assert_eq!(p(DType::F8E4M3, true, 9, false).path, Path::W8a8Blas);
        // Rows whose length is not a multiple of 4 never go to the kernels.
        assert_eq!(plan(DType::F32, false, 1, 63, true, Cores::Off, None, false, 0).unwrap().path, Path::BlasF32);
    }

    #[test]
    fn sixteen_bit_weights_take_the_tensor_cores_for_every_row_count() {
        let mma = |wt: DType, m: usize, invariant: bool| {
            plan(wt, false, m, 4096, invariant, Cores::Sixteen, Some(Act::Silu), true, 0).unwrap()
        };
        for m in [1, 8, 9, 64, 4096] {
            let p = mma(DType::BF16, m, true);
            // A gated product is not fused: the epilogue kernel applies scales, bias, the gate
            // and accumulation. A plain one is: the product (or sum_splits) finishes it.
            assert_eq!(p, Plan { path: Path::Mma16 { ty: Ty::Bf16 }, fused: false, gate: Some(0) });
            let plain = |wt: DType, act: Option<Act>, exact: usize| {
                plan(wt, false, m, 4096, true, Cores::Sixteen, act, false, exact).unwrap().fused
            };
            assert!(plain(DType::BF16, None, 0) && plain(DType::I8, None, 0));
            assert!(!plain(DType::BF16, Some(Act::Gelu), 0) && !plain(DType::F16, None, 3));
            assert_eq!(mma(DType::F16, m, true).path, Path::Mma16 { ty: Ty::F16 });
            // Weight-only 8-bit codes widen to bf16 on the same tensor cores; f32 and GGUF
            // weights keep their kernels.
            assert_eq!(mma(DType::I8, m, true).path, Path::Mma8 { int8: true });
            assert_eq!(mma(DType::F8E4M3, m, true).path, Path::Mma8 { int8: false });
            assert_eq!(mma(DType::F32, m, true).path, Path::GemvFloat { wtype: 0 });
            assert_eq!(mma(DType::Q4_K, m, true).path, Path::GemvGguf { fmt: 5 });
        }
        // W8A8 on FP8 tensor cores where the GPU has them (sm_89+), else the gemv tiles.
        let w8a8 = |m: usize, cores: Cores| plan(DType::F8E4M3, true, m, 4096, true, cores, None, false, 0).unwrap();
        for m in [1, 9, 4096] {
            assert_eq!(w8a8(m, Cores::SixteenAndFp8), Plan { path: Path::W8a8Mma, fused: false, gate: None });
            assert_eq!(w8a8(m, Cores::Sixteen).path, Path::W8a8Gemv);
        }
        // Fast products keep cuBLASLt above a few rows, the gemv tiles below.
        assert_eq!(mma(DType::BF16, 9, false).path, Path::Blas16 { ty: Ty::Bf16 });
        assert_eq!(mma(DType::BF16, 8, false).path, Path::GemvFloat { wtype: 2 });
    }

    #[test]
    fn tensor_core_splits_depend_on_n_and_k_only_and_cover_k() {
        for (n, k) in [(2048, 2048), (2048, 8192), (3072, 2048), (16384, 2048), (128256, 2048), (24, 512), (64, 17)] {
            let (splits, kchunk) = mma_splits(n, k);
            assert!(splits >= 1 && kchunk % 64 == 0, "{n} {k}: {splits} x {kchunk}");
            assert!(splits * kchunk >= k && (splits - 1) * kchunk < k.max(1), "{n} {k}: {splits} x {kchunk}");
            assert!(splits == 1 || kchunk >= 512, "{n} {k}: splits of at least 512");
        }
        // A narrow product at batch 1 still makes many blocks; a wide one needs no split.
        assert_eq!(mma_splits(2048, 2048), (4, 512));
        assert_eq!(mma_splits(2048, 8192).0, 8);
        assert_eq!(mma_splits(16384, 2048).0, 1);
        assert_eq!(mma_splits(64, 0), (1, 64));
    }

    #[test]
    fn epilogues_fuse_when_the_kernel_can_finish_them() {
        let gated = plan(DType::BF16, false, 4, 64, true, Cores::Off, Some(Act::Silu), true, 0).unwrap();
        assert_eq!((gated.fused, gated.gate, gated.kernel_gate()), (true, Some(0), Some(0)));
        // A plain activation, exact columns or cuBLASLt leave the epilogue to its kernel.
        let act = plan(DType::BF16, false, 4, 64, true, Cores::Off, Some(Act::GeluTanh), false, 0).unwrap();
        assert!(!act.fused && act.gate.is_none());
        let exact = plan(DType::BF16, false, 4, 64, true, Cores::Off, None, false, 3).unwrap();
        assert!(!exact.fused);
        let blas = plan(DType::BF16, false, 64, 64, false, Cores::Off, Some(Act::Silu), true, 0).unwrap();
        assert_eq!((blas.fused, blas.gate, blas.kernel_gate()), (false, Some(0), None));
    }

    #[test]
    fn unsupported_combinations_are_errors() {
        let e = plan(DType::BF16, true, 4, 64, true, Cores::Off, None, false, 0).unwrap_err();
        assert!(e.to_string().contains("FP8 input quantisation needs FP8 weights"), "{e}");
        assert!(plan(DType::U32, false, 4, 64, true, Cores::Off, None, false, 0).is_err());
    }
}
