//! Attention on tensor cores (`cu/flash.cu`): one arithmetic for prefill and decode rows, so a
//! token's output has the same bits whichever kernel computed it and whatever the batch.
//!
//! Prefill rows (sequences with several tokens in the step) go to `flash_mma_prefill`, which
//! walks each split of [`FA_SPLIT`] positions in turn; decode rows (one token) to
//! `flash_mma_decode`, one block per split, and `flash_mma_merge` folds their splits with the
//! same formula. Splits and key tiles start at fixed positions, never chosen by the batch.

use turbine_core::{AttnMeta, AttnParams, KvPages, QkvLayout, Result, Tensor};

use crate::device::{Cuda, Slot};
use crate::kernels::{FlashMmaDecode, FlashMmaMerge, FlashMmaPrefill, PageKind, Ty};
use crate::ops::u32_of;

/// The largest head dimension the tensor-core kernels take (`FA_MAX_D`); larger heads use the
/// CUDA-core kernels (`cu/attention.cu`).
pub(crate) const FA_MAX_D: usize = 128;
/// (token, head) rows per block (`FA_ROWS`).
const FA_ROWS: usize = 64;
/// Positions per split (`FA_SPLIT`): fixed, so a row's sums never depend on the batch.
const FA_SPLIT: usize = 1024;

/// The launch's device addresses, shared by the three kernels.
struct FlashArgs {
    page: PageKind,
    qkv: u64,
    k_pages: u64,
    v_pages: u64,
    k_scales: u64,
    v_scales: u64,
    k_sink: u64,
    slopes: u64,
    out: u64,
}

impl Cuda {
    /// Whether attention runs on tensor cores (`cu/flash.cu`) for heads of `head_dim`:
    /// `TURBINE_CUDA_MMA=on` (the default) and heads of at most [`FA_MAX_D`].
    pub fn tensor_core_attention(&self, head_dim: usize) -> bool {
        self.mma_enabled() && head_dim <= FA_MAX_D
    }

    /// Causal attention of every row of the step on tensor cores; `out` [t, q_heads · d] f32.
    #[allow(clippy::too_many_arguments)] // the op's arguments, plus what ops.rs already resolved
    pub(crate) fn flash_mma(
        &self,
        qkv: &Tensor<Cuda>,
        l: QkvLayout,
        kv: &KvPages<Cuda>,
        meta: &AttnMeta<Cuda>,
        p: &AttnParams,
        out: &mut Tensor<Cuda>,
        (page, slopes, k_sink): (PageKind, u64, u64),
    ) -> Result<()> {
        const OP: &str = "paged_attention";
        let a = FlashArgs {
            page,
            qkv: self.ptr(qkv),
            k_pages: self.ptr(&kv.k),
            v_pages: self.ptr(&kv.v),
            k_scales: self.opt(kv.k_scales.as_ref()),
            v_scales: self.opt(kv.v_scales.as_ref()),
            k_sink,
            slopes,
            out: self.ptr(out),
        };
        let t = qkv.rows();
        let n_seqs = meta.seqs.rows();
        let max_blocks = meta.block_tables.cols();
        let group = l.q_heads / l.kv_heads;
        // Every position a table can hold, in splits: fixed by the table's width, which the
        // runner pads to a power of two.
        let splits = (max_blocks * kv.block_size).div_ceil(FA_SPLIT).max(1);
        let (seqs, tables) = (self.ptr(&meta.seqs), self.ptr(&meta.block_tables));
        let (n_seqs_u, max_blocks_u) = (u32_of(OP, n_seqs)?, u32_of(OP, max_blocks)?);
        let (q_heads, kv_heads) = (u32_of(OP, l.q_heads)?, u32_of(OP, l.kv_heads)?);
        let (d, bs) = (u32_of(OP, l.head_dim)?, u32_of(OP, kv.block_size)?);
        let window = u32_of(OP, p.window.unwrap_or(0))?;
        let alibi = p.alibi.unwrap_or(0.0);
        if t > n_seqs {
            // Some sequence has several rows: tiles of FA_ROWS pairs over each, plus one per
            // sequence for the rounding up.
            let tiles = u32_of(OP, (t * group).div_ceil(FA_ROWS) + n_seqs)?;
            let k = FlashMmaPrefill {
                ty: Ty::F32,
                page: a.page,
                qkv: a.qkv,
                k_pages: a.k_pages,
                v_pages: a.v_pages,
                k_scales: a.k_scales,
                v_scales: a.v_scales,
                k_sink: a.k_sink,
                seqs,
                n_seqs: n_seqs_u,
                tables,
                max_blocks: max_blocks_u,
                q_heads,
                kv_heads,
                d,
                bs,
                scale: p.scale,
                window,
                alibi,
                slopes: a.slopes,
                // Activations are f32: the running output of a row's splits lives in `out`.
                merged: a.out,
                out: a.out,
            };
            self.run(&k, (tiles, kv_heads, 1), 128)?;
        }
        // One-token sequences (the host does not know which: blocks of others return at once).
        let ptiles = group.div_ceil(FA_ROWS);
        let (part_o, part_ml) = if splits > 1 {
            let rows = n_seqs * l.q_heads * splits;
            let base = self.slot(Slot::AttnSplits, rows * (l.head_dim + 2) * 4)?;
            (base, base + (rows * l.head_dim * 4) as u64)
        } else {
            (0, 0)
        };
        let splits_u = u32_of(OP, splits)?;
        let k = FlashMmaDecode {
            ty: Ty::F32,
            page: a.page,
            qkv: a.qkv,
            k_pages: a.k_pages,
            v_pages: a.v_pages,
            k_scales: a.k_scales,
            v_scales: a.v_scales,
            k_sink: a.k_sink,
            seqs,
            n_seqs: n_seqs_u,
            tables,
            max_blocks: max_blocks_u,
            q_heads,
            kv_heads,
            d,
            bs,
            scale: p.scale,
            window,
            alibi,
            slopes: a.slopes,
            part_o,
            part_ml,
            splits: splits_u,
            out: a.out,
        };
        self.run(&k, (u32_of(OP, n_seqs * ptiles)?, splits_u, kv_heads), 128)?;
        if splits > 1 {
            let m = FlashMmaMerge {
                ty: Ty::F32,
                seqs,
                n_seqs: n_seqs_u,
                q_heads,
                d,
                window,
                part_o,
                part_ml,
                splits: splits_u,
                out: a.out,
            };
            self.run(&m, (n_seqs_u, q_heads, 1), 128)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_constants_match_the_kernel_file() {
        let src = include_str!("../cu/flash.cu");
        for (name, v) in [("FA_MAX_D", super::FA_MAX_D), ("FA_ROWS", super::FA_ROWS), ("FA_SPLIT", super::FA_SPLIT)] {
            assert!(src.contains(&format!("#define {name} {v}\n")), "{name} {v}");
        }
        // Splits are whole key tiles.
        assert_eq!(super::FA_SPLIT % 32, 0);
    }
}
