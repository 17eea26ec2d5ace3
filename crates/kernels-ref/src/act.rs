//! Gated activations, row gathers and softmax.

use rayon::prelude::*;
use turbine_core::{Act, DType, Error, Result, Tensor};

use crate::buffer::{f32s, f32s_mut, u32s, CpuBuf};
use crate::Cpu;

fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
}

/// Applies an activation to one value.
#[inline]
pub(crate) fn apply(act: Act, x: f32) -> f32 {
    match act {
        Act::Silu => x * (1.0 / (1.0 + (-x).exp())),
        Act::GeluTanh => gelu_tanh(x),
        Act::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
        Act::Relu => x.max(0.0),
    }
}

pub(crate) fn gated_act(gate_up: &Tensor<Cpu>, act: Act, out: &mut Tensor<Cpu>) -> Result<()> {
    const OP: &str = "gated_act";
    let (t, f2) = (gate_up.rows(), gate_up.cols());
    if f2 % 2 != 0 {
        return Err(Error::invalid(OP, format!("gate_up width {f2} is odd")));
    }
    let f = f2 / 2;
    out.expect_shape(OP, &[t, f])?;
    gate_rows(f32s(gate_up, OP)?, f, act, f32s_mut(out, OP)?);
    Ok(())
}

/// `out[t, j] = act(gate_up[t, j]) * gate_up[t, f + j]` over rows of `2f` values in, `f` out.
pub(crate) fn gate_rows(gate_up: &[f32], f: usize, act: Act, out: &mut [f32]) {
    out.par_chunks_mut(f.max(1)).zip(gate_up.par_chunks(2 * f.max(1))).for_each(|(o, row)| {
        let (g, u) = row.split_at(f);
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = apply(act, g) * u;
        }
    });
}

pub(crate) fn gather_rows(
    src: &Tensor<Cpu>,
    ids: &Tensor<Cpu>,
    scale: f32,
    accumulate: bool,
    out: &mut Tensor<Cpu>,
) -> Result<()> {
    const OP: &str = "gather_rows";
    let (rows, cols) = (src.rows(), src.cols());
    let ids = u32s(ids, OP)?;
    out.expect_shape(OP, &[ids.len(), cols])?;
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
        return Err(Error::invalid(OP, format!("row {bad} out of range for {rows} rows")));
    }
    let dtype = src.dtype();
    // 8-bit values mean nothing without their scales, which a table does not carry.
    if matches!(dtype, DType::F8E4M3 | DType::I8) {
        return Err(Error::Unsupported { op: OP, dtype, backend: "cpu" });
    }
    let os = f32s_mut(out, OP)?;
    // Tables kept as stored (f16/bf16, GGUF blocks) are decoded a row at a time.
    let mut row = vec![0.0f32; if matches!(src.buf(), CpuBuf::Blocks(_)) { cols } else { 0 }];
    for (o, &i) in os.chunks_exact_mut(cols.max(1)).zip(ids) {
        let r: &[f32] = match src.buf() {
            CpuBuf::F32(v) => &v[i as usize * cols..][..cols],
            CpuBuf::Blocks(b) => {
                let rb = dtype.bytes_for(cols).ok_or(Error::Unsupported { op: OP, dtype, backend: "cpu" })?;
                crate::dequant::dequant_into(dtype, &b[i as usize * rb..][..rb], &mut row);
                &row
            }
            CpuBuf::U32(_) => return Err(Error::Unsupported { op: OP, dtype: DType::U32, backend: "cpu" }),
        };
        for (ov, &rv) in o.iter_mut().zip(r) {
            let v = if scale == 1.0 { rv } else { rv * scale };
            *ov = if accumulate { *ov + v } else { v };
        }
    }
    Ok(())
}

pub(crate) fn softmax(x: &mut Tensor<Cpu>) -> Result<()> {
    let cols = x.cols().max(1);
    f32s_mut(x, "softmax")?.par_chunks_mut(cols).for_each(|row| {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|v| *v *= inv);
    });
    Ok(())
}
