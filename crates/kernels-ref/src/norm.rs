//! RMS and layer normalisation, optionally fused with the residual add.

use rayon::prelude::*;
use turbine_core::{Error, NormKind, QkvLayout, Resid, Result, Tensor};

use crate::buffer::{f32s, f32s_mut};
use crate::Cpu;

pub(crate) fn norm(
    x: &Tensor<Cpu>,
    w: &Tensor<Cpu>,
    b: Option<&Tensor<Cpu>>,
    kind: NormKind,
    resid: Resid<'_, Cpu>,
    out: &mut Tensor<Cpu>,
) -> Result<()> {
    const OP: &str = "norm";
    let h = x.cols();
    w.expect_shape(OP, &[h])?;
    out.expect_shape(OP, x.shape().dims())?;
    let ws = f32s(w, OP)?;
    let bs = match b {
        Some(b) => {
            b.expect_shape(OP, &[h])?;
            Some(f32s(b, OP)?)
        }
        None => None,
    };
    if h == 0 {
        return Err(Error::invalid(OP, "zero-width rows"));
    }
    let os = f32s_mut(out, OP)?;
    let (src, after): (&[f32], Option<&mut [f32]>) = match resid {
        Resid::Before(r) => {
            r.expect_shape(OP, x.shape().dims())?;
            let rs = f32s_mut(r, OP)?;
            for (r, &v) in rs.iter_mut().zip(f32s(x, OP)?) {
                *r += v;
            }
            (&*rs, None)
        }
        Resid::After(r) => {
            r.expect_shape(OP, x.shape().dims())?;
            (f32s(x, OP)?, Some(f32s_mut(r, OP)?))
        }
        Resid::None => (f32s(x, OP)?, None),
    };
    os.par_chunks_mut(h).zip(src.par_chunks(h)).for_each(|(o, x)| normalize(x, ws, bs, kind, o));
    if let Some(r) = after {
        for (r, &v) in r.iter_mut().zip(os.iter()) {
            *r += v;
        }
    }
    Ok(())
}

/// Normalises each query and key head of a fused QKV row in place.
pub(crate) fn head_norm(
    qkv: &mut Tensor<Cpu>,
    l: QkvLayout,
    wq: &Tensor<Cpu>,
    wk: &Tensor<Cpu>,
    kind: NormKind,
) -> Result<()> {
    const OP: &str = "head_norm";
    let (t, d) = (qkv.rows(), l.head_dim);
    qkv.expect_shape(OP, &[t, l.width()])?;
    wq.expect_shape(OP, &[d])?;
    wk.expect_shape(OP, &[d])?;
    let (wq, wk) = (f32s(wq, OP)?, f32s(wk, OP)?);
    const MAX_HEAD_DIM: usize = 512;
    if d > MAX_HEAD_DIM {
        return Err(Error::invalid(OP, format!("head_dim {d} > {MAX_HEAD_DIM}")));
    }
    f32s_mut(qkv, OP)?.par_chunks_mut(l.width()).for_each(|row| {
        let mut tmp = [0.0f32; MAX_HEAD_DIM];
        for (h, head) in row[..(l.q_heads + l.kv_heads) * d].chunks_exact_mut(d).enumerate() {
            let w = if h < l.q_heads { wq } else { wk };
            normalize(head, w, None, kind, &mut tmp[..d]);
            head.copy_from_slice(&tmp[..d]);
        }
    });
    Ok(())
}

/// One row: `o = norm(x) * (w + offset) (+ b)`.
fn normalize(x: &[f32], ws: &[f32], bs: Option<&[f32]>, kind: NormKind, o: &mut [f32]) {
    let h = x.len();
    match kind {
        NormKind::Rms { eps, offset } => {
            let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / h as f64;
            let inv = 1.0 / ((ms as f32) + eps).sqrt();
            for ((o, &v), &g) in o.iter_mut().zip(x).zip(ws) {
                *o = (v * inv) * (g + offset);
            }
        }
        NormKind::Layer { eps } => {
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
            let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h as f64;
            let inv = 1.0 / ((var as f32) + eps).sqrt();
            let mean = mean as f32;
            for (i, (o, &v)) in o.iter_mut().zip(x).enumerate() {
                *o = (v - mean) * inv * ws[i] + bs.map_or(0.0, |b| b[i]);
            }
        }
    }
}
