//! RMS and layer normalisation, optionally fused with the residual add.

use rayon::prelude::*;
use turbine_core::{Error, NormKind, Result, Tensor};

use crate::buffer::{f32s, f32s_mut};
use crate::Cpu;

pub(crate) fn norm(
    x: &Tensor<Cpu>,
    w: &Tensor<Cpu>,
    b: Option<&Tensor<Cpu>>,
    kind: NormKind,
    resid: Option<&mut Tensor<Cpu>>,
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
    let os = f32s_mut(out, OP)?;
    let src: &[f32] = match resid {
        Some(r) => {
            r.expect_shape(OP, x.shape().dims())?;
            let rs = f32s_mut(r, OP)?;
            for (r, &v) in rs.iter_mut().zip(f32s(x, OP)?) {
                *r += v;
            }
            &*rs
        }
        None => f32s(x, OP)?,
    };
    if h == 0 {
        return Err(Error::invalid(OP, "zero-width rows"));
    }
    os.par_chunks_mut(h).zip(src.par_chunks(h)).for_each(|(o, x)| match kind {
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
    });
    Ok(())
}
