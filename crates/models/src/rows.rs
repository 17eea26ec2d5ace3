//! Row orders of fused QKV projections as checkpoints store them, and a row view of a host
//! tensor: the pieces both the weight loaders (`weights`) and the GGUF name mapping
//! (`source::gguf_names`) use, so neither depends on the other.

use turbine_core::HostTensor;

use crate::Result;

/// Inverts a row order: `invert(p)[p[i]] = i`.
pub fn invert(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

/// Row order turning a fused QKV stored per head (`[heads, 3, d]`: q, k, v of head 0, then of
/// head 1, …) into Turbine's `[q heads | k heads | v heads]`.
pub fn per_head_qkv_order(heads: usize, d: usize) -> Vec<usize> {
    (0..3).flat_map(|part| (0..heads).flat_map(move |h| (0..d).map(move |i| (h * 3 + part) * d + i))).collect()
}

/// Row order of the new architecture's fused QKV, grouped per kv head (`[kv, group + 2, d]`:
/// the group's query heads, then its key, then its value), into `[q heads | k heads | v heads]`.
pub fn grouped_qkv_order(kv: usize, group: usize, d: usize) -> Vec<usize> {
    let row = |g: usize, slot: usize, i: usize| (g * (group + 2) + slot) * d + i;
    let q = (0..kv * group).flat_map(|j| (0..d).map(move |i| row(j / group, j % group, i)));
    let k = (0..kv).flat_map(|g| (0..d).map(move |i| row(g, group, i)));
    let v = (0..kv).flat_map(|g| (0..d).map(move |i| row(g, group + 1, i)));
    q.chain(k).chain(v).collect()
}

pub(crate) fn as_rows(h: HostTensor<'_>) -> Result<HostTensor<'_>> {
    if h.shape().rank() == 1 {
        let n = h.shape().numel();
        Ok(h.reshape([n, 1])?)
    } else {
        Ok(h)
    }
}
