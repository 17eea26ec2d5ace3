//! Rotary position embedding on the query and key heads of a fused QKV projection.

use rayon::prelude::*;
use turbine_core::{Error, QkvLayout, Result, RopeTable, Tensor};

use crate::buffer::{f32s, f32s_mut, u32s};
use crate::Cpu;

pub(crate) fn rope(qkv: &mut Tensor<Cpu>, pos: &Tensor<Cpu>, table: &RopeTable<Cpu>, l: QkvLayout) -> Result<()> {
    const OP: &str = "rope";
    let t = qkv.rows();
    qkv.expect_shape(OP, &[t, l.width()])?;
    pos.expect_shape(OP, &[t])?;
    let (rot, d) = (table.rot_dim, l.head_dim);
    if rot % 2 != 0 || rot > d {
        return Err(Error::invalid(OP, format!("rotary dim {rot} must be even and <= head_dim {d}")));
    }
    let half = rot / 2;
    let (cos, sin) = (f32s(&table.cos, OP)?, f32s(&table.sin, OP)?);
    let max_pos = table.cos.rows();
    let ps = u32s(pos, OP)?;
    if let Some(&p) = ps.iter().find(|&&p| p as usize >= max_pos) {
        return Err(Error::invalid(OP, format!("position {p} is past the rotary table ({max_pos})")));
    }
    let width = l.width();
    let heads = l.q_heads + l.kv_heads;
    f32s_mut(qkv, OP)?.par_chunks_mut(width).zip(ps.par_iter()).for_each(|(row, &p)| {
        let (c, s) = (&cos[p as usize * half..][..half], &sin[p as usize * half..][..half]);
        for hd in row[..heads * d].chunks_exact_mut(d) {
            let (x1, x2) = hd[..rot].split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * c[i] - b * s[i];
                x2[i] = b * c[i] + a * s[i];
            }
        }
    });
    Ok(())
}
