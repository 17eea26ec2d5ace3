//! Paged KV cache writes and causal attention over it.
//!
//! For every query, keys are visited block by block in position order, and each block updates
//! the running maximum, normaliser and output with the same online-softmax step. The set and order
//! of keys a query sees depend only on its position (and the sliding window), so a token scores
//! identically whether its keys came from one prefill, a chunked prefill or decode steps.

use rayon::prelude::*;
use turbine_core::fp8::{e4m3_table, f32_to_e4m3, f32_to_i8, i8_table, scale_for, E4M3_MAX, I8_MAX};
use turbine_core::{alibi_slopes, AttnMeta, AttnParams, DType, Error, KvPages, QkvLayout, Result, Tensor};

use crate::buffer::{f32s, f32s_mut, u32s};
use crate::dot::{accumulate, scores as dot_scores};
use crate::exp::{exp1, exp_shifted_sum, max};
use crate::Cpu;

/// Largest supported block size and head dimension (stack scratch).
pub(crate) const MAX_BLOCK: usize = 256;
const MAX_HEAD_DIM: usize = 512;
/// Query heads of one kv group handled by one task.
const SUB: usize = 4;

fn check_layout(op: &'static str, l: QkvLayout) -> Result<()> {
    if l.kv_heads == 0 || l.q_heads % l.kv_heads != 0 {
        return Err(Error::invalid(op, format!("{} query heads do not share {} kv heads", l.q_heads, l.kv_heads)));
    }
    if l.head_dim > MAX_HEAD_DIM {
        return Err(Error::invalid(op, format!("head_dim {} > {MAX_HEAD_DIM}", l.head_dim)));
    }
    Ok(())
}

pub(crate) fn kv_store(qkv: &Tensor<Cpu>, l: QkvLayout, meta: &AttnMeta<Cpu>, kv: &mut KvPages<Cpu>) -> Result<()> {
    const OP: &str = "kv_store";
    check_layout(OP, l)?;
    let t = qkv.rows();
    qkv.expect_shape(OP, &[t, l.width()])?;
    let slots = u32s(&meta.slots, OP)?;
    if slots.len() != t {
        return Err(Error::invalid(OP, format!("{} slots for {t} tokens", slots.len())));
    }
    let kvw = l.kv_heads * l.head_dim;
    let n_slots = kv.k.capacity() / kvw.max(1);
    if let Some(&s) = slots.iter().find(|&&s| s as usize >= n_slots) {
        return Err(Error::invalid(OP, format!("slot {s} outside a cache of {n_slots} slots")));
    }
    let q = f32s(qkv, OP)?;
    let qw = l.q_heads * l.head_dim;
    let (d, bs) = (l.head_dim, kv.block_size);
    let shift = match &kv.k_shift {
        Some(t) => {
            t.expect_shape(OP, &[kvw])?;
            Some(f32s(t, OP)?.to_vec())
        }
        None => None,
    };
    let rows = kv.k.capacity() / d.max(1);
    // 8-bit pages: position 0's keys are also kept unrounded (after the shift).
    let first_keys = match kv.k_sink.as_mut().filter(|_| kv.k.dtype() != DType::F32) {
        Some(sink) => {
            let positions = u32s(&meta.positions, OP)?;
            if positions.len() != t {
                return Err(Error::invalid(OP, format!("{} positions for {t} tokens", positions.len())));
            }
            let sink = f32s_mut(sink, OP)?;
            check_sink(OP, sink.len(), rows / bs.max(1) * d)?;
            Some((sink, positions))
        }
        None => None,
    };
    let (ks, vs) = (row_scales(&mut kv.k_scales, rows)?, row_scales(&mut kv.v_scales, rows)?);
    let sides = [(&mut kv.k, qw, shift.as_deref(), ks, first_keys), (&mut kv.v, qw + kvw, None, vs, None)];
    for (pages, off, sh, rs, mut first) in sides {
        let dtype = pages.dtype();
        match pages.buf_mut() {
            crate::CpuBuf::F32(dst) => {
                for (row, &s) in q.chunks_exact(l.width()).zip(slots) {
                    let (blk, at) = (s as usize / bs, s as usize % bs);
                    for h in 0..l.kv_heads {
                        let o = ((blk * l.kv_heads + h) * bs + at) * d;
                        dst[o..o + d].copy_from_slice(&row[off + h * d..off + (h + 1) * d]);
                    }
                }
            }
            crate::CpuBuf::Blocks(dst) if matches!(dtype, DType::F8E4M3 | DType::I8) => {
                let rs = rs.ok_or_else(|| no_row_scales(OP, dtype))?;
                let max = if dtype == DType::I8 { I8_MAX } else { E4M3_MAX };
                let mut x = [0f32; MAX_HEAD_DIM];
                for (ti, (row, &s)) in q.chunks_exact(l.width()).zip(slots).enumerate() {
                    let (blk, at) = (s as usize / bs, s as usize % bs);
                    for h in 0..l.kv_heads {
                        let r = (blk * l.kv_heads + h) * bs + at;
                        let x = &mut x[..d];
                        x.copy_from_slice(&row[off + h * d..off + (h + 1) * d]);
                        if let Some(sh) = sh {
                            x.iter_mut().zip(&sh[h * d..(h + 1) * d]).for_each(|(v, m)| *v -= m);
                        }
                        if let Some((sink, _)) = first.as_mut().filter(|(_, p)| p[ti] == 0) {
                            sink[(blk * l.kv_heads + h) * d..][..d].copy_from_slice(x);
                        }
                        let scale = scale_for(x.iter().fold(0f32, |a, v| a.max(v.abs())), max);
                        rs[r] = scale;
                        let codes = &mut dst[r * d..(r + 1) * d];
                        if dtype == DType::I8 {
                            codes.iter_mut().zip(&*x).for_each(|(c, &v)| *c = f32_to_i8(v, scale) as u8);
                        } else {
                            let inv = 1.0 / scale;
                            codes.iter_mut().zip(&*x).for_each(|(c, &v)| *c = f32_to_e4m3(v * inv));
                        }
                    }
                }
            }
            _ => return Err(Error::Unsupported { op: OP, dtype, backend: "cpu" }),
        }
    }
    Ok(())
}

/// The first `rows` per-row scales of 8-bit pages, if any.
fn row_scales(t: &mut Option<Tensor<Cpu>>, rows: usize) -> Result<Option<&mut [f32]>> {
    match t {
        Some(t) => {
            check_scale_rows("kv_store", t.capacity(), rows)?;
            Ok(Some(&mut f32s_mut(t, "kv_store")?[..rows]))
        }
        None => Ok(None),
    }
}

/// A sink buffer of `have` values must cover `need` (one key per block and kv head).
fn check_sink(op: &'static str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::invalid(op, format!("a sink buffer of {have} values for {need} key values")));
    }
    Ok(())
}

/// 8-bit pages of `rows` rows need as many row scales.
fn check_scale_rows(op: &'static str, have: usize, rows: usize) -> Result<()> {
    if have < rows {
        return Err(Error::invalid(op, format!("{have} row scales for {rows} cache rows")));
    }
    Ok(())
}

fn no_row_scales(op: &'static str, dtype: DType) -> Error {
    Error::invalid(op, format!("{dtype} pages without row scales"))
}

/// Validated view of one step's sequences.
struct Seqs<'a> {
    info: &'a [u32],
    tables: &'a [u32],
    max_blocks: usize,
}

impl Seqs<'_> {
    /// The sequence owning step row `t` (rows of a sequence are contiguous, sequences ordered).
    fn of_token(&self, t: usize) -> usize {
        let n = self.info.len() / 3;
        let (mut lo, mut hi) = (0, n);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if self.info[mid * 3] as usize <= t {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

fn seqs<'a>(meta: &'a AttnMeta<Cpu>, kv: &KvPages<Cpu>, n_tokens: usize, num_blocks: usize) -> Result<Seqs<'a>> {
    const OP: &str = "paged_attention";
    let info = u32s(&meta.seqs, OP)?;
    let tables = u32s(&meta.block_tables, OP)?;
    let n = meta.seqs.rows();
    meta.seqs.expect_shape(OP, &[n, 3])?;
    let max_blocks = meta.block_tables.cols();
    if meta.block_tables.rows() != n {
        return Err(Error::invalid(OP, format!("{} block tables for {n} sequences", meta.block_tables.rows())));
    }
    let mut next = 0;
    for s in 0..n {
        let (start, len, ctx) = (info[s * 3] as usize, info[s * 3 + 1] as usize, info[s * 3 + 2] as usize);
        if start != next || len > ctx || ctx > max_blocks * kv.block_size {
            return Err(Error::invalid(
                OP,
                format!("sequence {s}: rows {start}+{len}, context {ctx} do not fit the step or its block table"),
            ));
        }
        let used = ctx.div_ceil(kv.block_size);
        if let Some(&b) = tables[s * max_blocks..][..used].iter().find(|&&b| b as usize >= num_blocks) {
            return Err(Error::invalid(OP, format!("sequence {s}: block {b} outside a cache of {num_blocks} blocks")));
        }
        next = start + len;
    }
    if next != n_tokens {
        return Err(Error::invalid(OP, format!("sequences cover {next} rows of a {n_tokens}-row step")));
    }
    Ok(Seqs { info, tables, max_blocks })
}

pub(crate) fn paged_attention(
    qkv: &Tensor<Cpu>,
    l: QkvLayout,
    kv: &KvPages<Cpu>,
    meta: &AttnMeta<Cpu>,
    p: &AttnParams,
    out: &mut Tensor<Cpu>,
) -> Result<()> {
    const OP: &str = "paged_attention";
    check_layout(OP, l)?;
    let (t, d, bs) = (qkv.rows(), l.head_dim, kv.block_size);
    if bs == 0 || bs > MAX_BLOCK {
        return Err(Error::invalid(OP, format!("block size {bs} not in 1..={MAX_BLOCK}")));
    }
    qkv.expect_shape(OP, &[t, l.width()])?;
    out.expect_shape(OP, &[t, l.q_heads * d])?;
    let kvw = l.kv_heads * d;
    let num_blocks = kv.k.capacity() / (bs * kvw).max(1);
    let sq = seqs(meta, kv, t, num_blocks)?;
    if kv.k.dtype() != kv.v.dtype() {
        return Err(Error::invalid(OP, format!("keys are {} but values are {}", kv.k.dtype(), kv.v.dtype())));
    }
    let (q, kc, vc) = (f32s(qkv, OP)?, kv_all(&kv.k, kv.k_scales.as_ref())?, kv_all(&kv.v, kv.v_scales.as_ref())?);
    let group = l.q_heads / l.kv_heads;
    let sink = match (&kv.k_sink, kc) {
        (Some(s), Pages::Bytes(..)) => {
            let s = f32s(s, OP)?;
            check_sink(OP, s.len(), num_blocks * kvw)?;
            Some(s)
        }
        _ => None,
    };
    if t == 0 {
        return Ok(());
    }
    // One task per (token, kv head, group of up to SUB query heads sharing that kv head): the
    // keys and values are read once for the group. Each query's reduction is unchanged.
    let slopes = if p.alibi.is_some() { alibi_slopes(l.q_heads) } else { Vec::new() };
    let sub = (1..=SUB.min(group)).rev().find(|s| group % s == 0).unwrap_or(1);
    f32s_mut(out, OP)?.par_chunks_mut(sub * d).enumerate().for_each(|(idx, o)| {
        let heads_per_row = l.q_heads / sub;
        let (tok, h0) = (idx / heads_per_row, (idx % heads_per_row) * sub);
        let kh = h0 / group;
        let s = sq.of_token(tok);
        let (start, len, ctx) = (sq.info[s * 3] as usize, sq.info[s * 3 + 1] as usize, sq.info[s * 3 + 2] as usize);
        let pos = ctx - len + (tok - start);
        let lo = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let qrow = &q[tok * l.width()..];
        let table = &sq.tables[s * sq.max_blocks..];
        let mut scores = [[0.0f32; MAX_BLOCK]; SUB];
        // FP8 pages: this block's keys and values are decoded into this thread's scratch.
        let mut kv8 = if matches!(kc, Pages::Bytes(..)) { DECODED.take() } else { Vec::new() };
        if matches!(kc, Pages::Bytes(..)) {
            kv8.resize(2 * MAX_BLOCK * MAX_HEAD_DIM, 0.0);
        }
        let mut acc = [[0.0f32; MAX_HEAD_DIM]; SUB];
        let mut m = [f32::NEG_INFINITY; SUB];
        let mut denom = [0.0f32; SUB];
        for (blk, &phys) in table.iter().enumerate().take(pos / bs + 1).skip(lo / bs) {
            let phys = phys as usize;
            let (a, b) = ((blk * bs).max(lo), ((blk + 1) * bs).min(pos + 1));
            // Keys and values of this block for kv head `kh`: contiguous rows `a..b`.
            let base = ((phys * l.kv_heads + kh) * bs + (a - blk * bs)) * d;
            let n = b - a;
            let (kb, vb): (&[f32], &[f32]) = match (kc, vc) {
                (Pages::F32(k), Pages::F32(v)) => (&k[base..], &v[base..]),
                (Pages::Bytes(k, ks, t), Pages::Bytes(v, vs, _)) => {
                    let (kbuf, vbuf) = kv8.split_at_mut(MAX_BLOCK * MAX_HEAD_DIM);
                    let r0 = base / d;
                    decode_rows(&k[base..base + n * d], d, t, &ks[r0..r0 + n], &mut kbuf[..n * d]);
                    decode_rows(&v[base..base + n * d], d, t, &vs[r0..r0 + n], &mut vbuf[..n * d]);
                    if let Some(sink) = sink.filter(|_| a == 0) {
                        kbuf[..d].copy_from_slice(&sink[(phys * l.kv_heads + kh) * d..][..d]);
                    }
                    (&*kbuf, &*vbuf)
                }
                _ => unreachable!("keys and values share a storage type (checked above)"),
            };
            for g in 0..sub {
                let sc = &mut scores[g][..n];
                dot_scores(&qrow[(h0 + g) * d..][..d], kb, d, p.scale, sc);
                if let Some(mult) = p.alibi {
                    let slope = mult * slopes[h0 + g];
                    for (i, sv) in sc.iter_mut().enumerate() {
                        *sv += slope * ((a + i) as f32 - pos as f32);
                    }
                }
                let bmax = max(sc);
                let m_new = m[g].max(bmax);
                let corr = exp1(m[g] - m_new);
                denom[g] *= corr;
                acc[g][..d].iter_mut().for_each(|v| *v *= corr);
                denom[g] = exp_shifted_sum(sc, m_new, denom[g]);
                m[g] = m_new;
                accumulate(sc, vb, d, &mut acc[g][..d]);
            }
        }
        if !kv8.is_empty() {
            DECODED.set(kv8);
        }
        for (g, og) in o.chunks_exact_mut(d).enumerate() {
            let inv = 1.0 / denom[g];
            for (ov, &av) in og.iter_mut().zip(&acc[g][..d]) {
                *ov = av * inv;
            }
        }
    });
    Ok(())
}

thread_local! {
    /// Decoded FP8 keys and values of one block (`2 · MAX_BLOCK · MAX_HEAD_DIM`).
    static DECODED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A whole page buffer (its shape may have been narrowed): f32, or 8-bit codes (E4M3 or INT8)
/// with their per-row scales and the table of their values.
#[derive(Clone, Copy)]
enum Pages<'a> {
    F32(&'a [f32]),
    Bytes(&'a [u8], &'a [f32], &'static [f32; 256]),
}

/// Decodes rows of `d` 8-bit codes into f32, row `r` times `scales[r]`.
fn decode_rows(codes: &[u8], d: usize, table: &[f32; 256], scales: &[f32], out: &mut [f32]) {
    for ((o, c), &s) in out.chunks_exact_mut(d).zip(codes.chunks_exact(d)).zip(scales) {
        o.iter_mut().zip(c).for_each(|(o, &c)| *o = table[usize::from(c)] * s);
    }
}

fn kv_all<'a>(t: &'a Tensor<Cpu>, rows: Option<&'a Tensor<Cpu>>) -> Result<Pages<'a>> {
    const OP: &str = "paged_attention";
    let scales = || -> Result<&'a [f32]> {
        let r = rows.ok_or_else(|| no_row_scales(OP, t.dtype()))?;
        let n = t.capacity() / t.cols().max(1);
        let v = f32s(r, OP)?;
        check_scale_rows(OP, v.len(), n)?;
        Ok(&v[..n])
    };
    match t.buf() {
        crate::CpuBuf::F32(v) => Ok(Pages::F32(&v[..t.capacity()])),
        crate::CpuBuf::Blocks(b) if t.dtype() == DType::F8E4M3 => {
            Ok(Pages::Bytes(&b[..t.capacity()], scales()?, e4m3_table()))
        }
        crate::CpuBuf::Blocks(b) if t.dtype() == DType::I8 => {
            Ok(Pages::Bytes(&b[..t.capacity()], scales()?, i8_table()))
        }
        _ => Err(Error::Unsupported { op: OP, dtype: t.dtype(), backend: "cpu" }),
    }
}
