//! `out = x · wᵀ` with f32 activations and f32 or GGUF-block weights.
//!
//! Work is split over panels of weight rows (output columns), never over `k`. A block-quantised
//! panel is first dequantised exactly into a per-thread f32 scratch, so quantised and f32 weights
//! go through the same tiles and the same reduction order ([`crate::dot`]).

use std::cell::RefCell;

use rayon::prelude::*;
use turbine_core::fp8::{quantize_row_e4m3, scale_for, E4M3_MAX};
use turbine_core::{Act, DType, Epilogue, Error, Result, Tensor, XQuant};

use crate::act::{apply, gate_rows};

use crate::buffer::{f32s, f32s_mut, u32s, CpuBuf};
use crate::dequant::{dequant_into, fast_type, has_qtile, qtile};
use crate::dot::tile;
use crate::Cpu;

/// Weight rows per parallel task.
const PANEL: usize = 48;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of output columns (its own weight panel).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

struct Job<'a> {
    x: &'a [f32],
    m: usize,
    k: usize,
    n: usize,
    /// Per-row scales of a quantised `x`.
    row_scale: Option<&'a [f32]>,
    /// Per-column weight scales.
    col_scale: Option<&'a [f32]>,
    bias: Option<&'a [f32]>,
    /// Input channels multiplied exactly, from the unquantised input.
    exact: Option<Exact<'a>>,
    act: Option<Act>,
    accumulate: bool,
    out: OutPtr,
}

/// The exact channels of a product ([`turbine_core::ExactCols`]) on the host.
#[derive(Clone, Copy)]
struct Exact<'a> {
    /// The unquantised input `[m, k]`.
    x: &'a [f32],
    idx: &'a [u32],
    /// `[n, s]`.
    w: &'a [f32],
}

impl Exact<'_> {
    /// `Σ_t x[i, idx[t]] · w[j, t]`, in channel order (the CUDA epilogue's order).
    fn dot(&self, k: usize, i: usize, j: usize) -> f32 {
        let (s, row) = (self.idx.len(), &self.x[i * k..]);
        self.idx.iter().zip(&self.w[j * s..(j + 1) * s]).fold(0f32, |a, (&c, &w)| a + row[c as usize] * w)
    }
}

impl Job<'_> {
    /// Runs every tile of the panel whose f32 rows are `wp` (starting at output column `j0`).
    fn panel(&self, wp: &[f32], j0: usize) {
        let (m, k) = (self.m, self.k);
        let nr = wp.len() / k;
        let mut i0 = 0;
        while i0 < m {
            let mr = (m - i0).min(4);
            let step = if mr == 4 { 3 } else { 6 };
            let mut r0 = 0;
            while r0 < nr {
                let cnt = (nr - r0).min(step);
                self.tile(mr, cnt, i0, &wp[r0 * k..], j0 + r0);
                r0 += cnt;
            }
            i0 += mr;
        }
    }

    fn tile(&self, mr: usize, nr: usize, i0: usize, w: &[f32], j0: usize) {
        macro_rules! go {
            ($($a:literal, $b:literal);*) => {
                match (mr, nr) {
                    $(($a, $b) => self.store(i0, j0, &tile::<$a, $b>(&self.x[i0 * self.k..], self.k, w, self.k, self.k)),)*
                    _ => unreachable!("tile sizes are 1..=4 by 1..=6"),
                }
            };
        }
        go!(4,1; 4,2; 4,3; 1,1; 1,2; 1,3; 1,4; 1,5; 1,6; 2,1; 2,2; 2,3; 2,4; 2,5; 2,6; 3,1; 3,2; 3,3; 3,4; 3,5; 3,6)
    }

    /// Like [`Job::panel`] for block-quantised rows (at most [`QTILE_ROWS`] rows of `x`): each
    /// weight block is dequantised once inside the dot products of every row of `x` (up to 4
    /// rows, 4 weight rows at a time; 5 to 8 rows, one weight row at a time, so that the
    /// accumulators stay in registers).
    fn qpanel(&self, dtype: DType, qp: &[u8], row_bytes: usize, j0: usize) {
        let (m, k) = (self.m, self.k);
        let nr = qp.len() / row_bytes;
        let mut r0 = 0;
        while r0 < nr {
            let cnt = (nr - r0).min(if m <= 4 { 4 } else { 1 });
            let w = &qp[r0 * row_bytes..];
            macro_rules! go {
                ($($a:literal, $b:literal);*) => {
                    match (m, cnt) {
                        $(($a, $b) => self.store(0, j0 + r0, &qtile::<$a, $b>(dtype, self.x, k, w, row_bytes, k)),)*
                        _ => unreachable!("1..=4 rows by 1..=4 weight rows, or 5..=8 rows by one"),
                    }
                };
            }
            go!(1,1; 1,2; 1,3; 1,4; 2,1; 2,2; 2,3; 2,4; 3,1; 3,2; 3,3; 3,4; 4,1; 4,2; 4,3; 4,4; 5,1; 6,1; 7,1; 8,1);
            r0 += cnt;
        }
    }

    fn store<const MR: usize, const NR: usize>(&self, i0: usize, j0: usize, v: &[[f32; NR]; MR]) {
        for (c, row) in v.iter().enumerate() {
            for (r, &d) in row.iter().enumerate() {
                let j = j0 + r;
                let d = match (self.row_scale, self.col_scale) {
                    (None, None) => d,
                    (Some(rs), None) => d * rs[i0 + c],
                    (None, Some(cs)) => d * cs[j],
                    // cuBLASLt's alpha = scale_a * scale_b, then alpha * sum.
                    (Some(rs), Some(cs)) => d * (rs[i0 + c] * cs[j]),
                };
                let d = match &self.exact {
                    Some(e) => d + e.dot(self.k, i0 + c, j),
                    None => d,
                };
                let val = match self.bias {
                    Some(b) => d + b[j],
                    None => d,
                };
                let val = self.act.map_or(val, |a| apply(a, val));
                // SAFETY: (i0 + c, j) is inside the [m, n] output and column j belongs to this
                // task's panel, so no other task touches it.
                unsafe {
                    let p = self.out.0.add((i0 + c) * self.n + j);
                    *p = if self.accumulate { *p + val } else { val };
                }
            }
        }
    }
}

pub(crate) fn matmul(x: &Tensor<Cpu>, w: &Tensor<Cpu>, epi: Epilogue<'_, Cpu>, out: &mut Tensor<Cpu>) -> Result<()> {
    let exact_cols = epi.check(OP, x, w, out)?;
    match (epi.gated, epi.act) {
        (true, Some(act)) => {
            // The whole [m, 2f] product first, then act(gate) * up: the unfused ops' arithmetic.
            let n = w.rows();
            let mut full = vec![0.0; x.rows() * n];
            product(x, w, &epi, None, exact_cols, &mut full)?;
            gate_rows(&full, n / 2, act, f32s_mut(out, OP)?);
            Ok(())
        }
        _ => product(x, w, &epi, epi.act, exact_cols, f32s_mut(out, OP)?),
    }
}

const OP: &str = "matmul";

/// Up to this many rows, block-quantised products dequantise inside the dot products (each block
/// once); more rows dequantise each panel into scratch once and run f32 tiles.
const QTILE_ROWS: usize = 8;

/// `out [m, n] (+)= act(…)` of a checked product (`epi` but for its activation, which is `act`).
fn product(
    x: &Tensor<Cpu>,
    w: &Tensor<Cpu>,
    epi: &Epilogue<'_, Cpu>,
    act: Option<Act>,
    exact_cols: usize,
    out: &mut [f32],
) -> Result<()> {
    let (m, k, n) = (x.rows(), x.cols(), w.rows());
    let xs = f32s(x, OP)?;
    let (bias, col_scale) = (opt_f32s(epi.bias)?, opt_f32s(epi.scale)?);
    let exact = match epi.exact {
        Some(e) if exact_cols > 0 => {
            let idx = u32s(e.idx, OP)?;
            if let Some(&bad) = idx.iter().find(|&&c| c as usize >= k) {
                return Err(Error::invalid(OP, format!("exact channel {bad} of a {k}-column input")));
            }
            Some(Exact { x: xs, idx, w: f32s(e.w, OP)? })
        }
        _ => None,
    };
    let prep = InputPrep { shift: opt_f32s(epi.shift)?, smooth: opt_f32s(epi.smooth)? };
    let quantised = match epi.quant_x {
        Some(q) => Some(quantise_rows(xs, m, k, q, prep)?),
        None => None,
    };
    let (xs, row_scale) = match &quantised {
        Some((qx, sx)) => (&qx[..], Some(&sx[..])),
        None => (xs, None),
    };
    let dtype = w.dtype();
    let out_ptr = OutPtr(out[..m * n].as_mut_ptr());
    let job = Job { x: xs, m, k, n, row_scale, col_scale, bias, exact, act, accumulate: epi.accumulate, out: out_ptr };
    if m == 0 || n == 0 {
        return Ok(());
    }
    match w.buf() {
        CpuBuf::F32(wv) => {
            let wv = &wv[..n * k];
            wv.par_chunks(PANEL * k.max(1)).enumerate().for_each(|(t, wp)| job.panel(wp, t * PANEL));
        }
        CpuBuf::Blocks(bytes) if m <= QTILE_ROWS && has_qtile() && fast_type(dtype) && k % 32 == 0 => {
            // Few rows (decode, speculative verification): dequantise inside the dot products
            // (once per 4 rows), no scratch round trip.
            let row_bytes = dtype.bytes_for(k).ok_or(Error::Unsupported { op: OP, dtype, backend: "cpu" })?;
            bytes[..n * row_bytes]
                .par_chunks(PANEL * row_bytes)
                .enumerate()
                .for_each(|(t, qp)| job.qpanel(dtype, qp, row_bytes, t * PANEL));
        }
        CpuBuf::Blocks(bytes) => {
            let row_bytes = dtype.bytes_for(k).ok_or(Error::Unsupported { op: OP, dtype, backend: "cpu" })?;
            bytes[..n * row_bytes].par_chunks(PANEL * row_bytes).enumerate().for_each(|(t, qp)| {
                SCRATCH.with_borrow_mut(|s| {
                    let rows = qp.len() / row_bytes;
                    s.resize(rows * k, 0.0);
                    dequant_into(dtype, qp, &mut s[..rows * k]);
                    job.panel(&s[..rows * k], t * PANEL);
                })
            });
        }
        CpuBuf::U32(_) => return Err(Error::Unsupported { op: OP, dtype: DType::U32, backend: "cpu" }),
    }
    Ok(())
}

/// An optional f32 vector of the epilogue.
fn opt_f32s(t: Option<&Tensor<Cpu>>) -> Result<Option<&[f32]>> {
    t.map(|t| f32s(t, "matmul")).transpose()
}

/// What happens to an input row before it is quantised: `(x − shift) · smooth`, channel by channel.
#[derive(Clone, Copy)]
struct InputPrep<'a> {
    shift: Option<&'a [f32]>,
    smooth: Option<&'a [f32]>,
}

/// The rows of `x` (shifted and smoothed channel by channel, as `prep` says) as E4M3 values
/// (unscaled, as f32) and each row's scale.
fn quantise_rows(
    x: &[f32],
    m: usize,
    k: usize,
    q: XQuant<'_, Cpu>,
    prep: InputPrep<'_>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let fixed = match q {
        XQuant::Fp8PerToken => None,
        XQuant::Fp8Static(s) => {
            s.expect_shape("matmul", &[1])?;
            Some(f32s(s, "matmul")?[0])
        }
    };
    let mut qx = vec![0.0; m * k];
    let mut sx = vec![0.0; m];
    let mut prepared = vec![0.0; if prep.shift.is_some() || prep.smooth.is_some() { k } else { 0 }];
    for ((row, out), s) in x.chunks_exact(k.max(1)).zip(qx.chunks_exact_mut(k.max(1))).zip(&mut sx) {
        let row = match prep {
            InputPrep { shift: None, smooth: None } => row,
            InputPrep { shift, smooth } => {
                prepared.copy_from_slice(row);
                if let Some(mu) = shift {
                    prepared.iter_mut().zip(mu).for_each(|(v, &mu)| *v -= mu);
                }
                if let Some(f) = smooth {
                    prepared.iter_mut().zip(f).for_each(|(v, &f)| *v *= f);
                }
                &prepared[..]
            }
        };
        *s = fixed.unwrap_or_else(|| scale_for(row.iter().fold(0f32, |a, v| a.max(v.abs())), E4M3_MAX));
        quantize_row_e4m3(row, *s, out);
    }
    Ok((qx, sx))
}
