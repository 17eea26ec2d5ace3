//! Fast exact dequantisation of GGUF blocks: the same values as
//! [`turbine_core::quant::dequant_block`], bit for bit, with AVX2 where available.

use turbine_core::quant::dequant_block;
use turbine_core::DType;

/// Dequantises consecutive blocks of `dtype` from `src` into `out` (`out.len()` a multiple of 32),
/// or decodes consecutive f16, bf16, E4M3 or INT8 values.
pub(crate) fn dequant_into(dtype: DType, src: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if !dtype.is_quantized() && fast_type(dtype) && has_qtile() && out.len() % 32 == 0 {
        // SAFETY: AVX2, FMA and F16C are present; `src` holds `out.len()` values.
        unsafe { avx2::blocks(dtype, src, out) };
        return;
    }
    if !dtype.is_quantized() {
        // f16, bf16, E4M3, INT8: one value per element (8-bit values raw, scales applied later).
        turbine_core::host::decode_f32(dtype, src, out).expect("whole rows of a byte-stored weight type");
        return;
    }
    let bb = dtype.block_bytes();
    debug_assert!(src.len() >= out.len() / dtype.block_len() * bb);
    #[cfg(target_arch = "x86_64")]
    if has_qtile() {
        // SAFETY: AVX2, FMA and F16C are present; `src` holds a block per `block_len` outputs.
        unsafe {
            if fast_type(dtype) {
                avx2::blocks(dtype, src, out)
            } else {
                avx2::reference_blocks(dtype, src, out)
            }
        };
        return;
    }
    for (dst, blk) in out.chunks_exact_mut(dtype.block_len()).zip(src.chunks_exact(bb)) {
        dequant_block(dtype, blk, dst);
    }
}

/// Whether `dtype` has the AVX2 dequantisation and the fused kernel ([`qtile`]); the other block
/// types go through the scalar reference.
pub(crate) fn fast_type(dtype: DType) -> bool {
    matches!(dtype, DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::I8)
}

/// Bytes of 32 consecutive values of a fast type (one GGUF block, or 32 elements).
fn bytes_per_32(dtype: DType) -> usize {
    dtype.bytes_for(32).unwrap_or(dtype.block_bytes())
}

/// Whether the fused dequantise-and-multiply kernel ([`qtile`]) is available.
pub(crate) fn has_qtile() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::dot::has_avx2() && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Dot products of `MR` f32 rows of `x` (stride `ldx`) with `NR` rows of block-quantised `w`
/// (stride `row_bytes`), dequantising on the fly; bitwise equal to dequantising then
/// [`crate::dot::tile`].
///
/// # Panics
/// If [`has_qtile`] is false, `k` is not whole blocks, or a row runs past its slice.
pub(crate) fn qtile<const MR: usize, const NR: usize>(
    dtype: DType,
    x: &[f32],
    ldx: usize,
    w: &[u8],
    row_bytes: usize,
    k: usize,
) -> [[f32; NR]; MR] {
    assert!(has_qtile() && fast_type(dtype) && k % 32 == 0 && dtype.bytes_for(k) == Some(row_bytes));
    debug_assert_eq!(bytes_per_32(dtype) * (k / 32), row_bytes);
    assert!(x.len() >= (MR - 1) * ldx + k && w.len() >= NR * row_bytes);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: features and bounds were asserted above.
    return unsafe { avx2::qtile::<MR, NR>(dtype, x, ldx, w, row_bytes, k) };
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("has_qtile() is false off x86_64")
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use turbine_core::DType;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16(blk: &[u8], at: usize) -> __m256 {
        let bits = u16::from_le_bytes([blk[at], blk[at + 1]]);
        let v = _mm_cvtph_ps(_mm_set1_epi16(bits as i16));
        _mm256_broadcastss_ps(v)
    }

    /// Four vectors of eight bytes each (`bytes[0..8]`, `[8..16]` of `lo`, then of `hi`) as i32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn widen_u8(lo: __m128i, hi: __m128i) -> [__m256; 4] {
        [
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
        ]
    }

    /// The scalar reference, compiled for AVX2 so that its loops vectorise (no fused multiply-add:
    /// Rust never contracts, so the values are the reference's bit for bit).
    ///
    /// # Safety
    /// AVX2 and F16C must be present.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn reference_blocks(dtype: DType, src: &[u8], out: &mut [f32]) {
        let (n, bb) = (dtype.block_len(), dtype.block_bytes());
        for (dst, blk) in out.chunks_exact_mut(n).zip(src.chunks_exact(bb)) {
            turbine_core::quant::dequant_block(dtype, blk, dst);
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C must be present.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn blocks(dtype: DType, src: &[u8], out: &mut [f32]) {
        let bb = super::bytes_per_32(dtype);
        for (dst, blk) in out.chunks_exact_mut(32).zip(src.chunks_exact(bb)) {
            let dst: &mut [f32; 32] = dst.try_into().expect("chunk of 32");
            // SAFETY: features as above; `blk` holds one whole block.
            let vals = unsafe { block(dtype, blk) };
            for (i, v) in vals.into_iter().enumerate() {
                // SAFETY: `dst` holds 32 f32.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(8 * i), v) };
            }
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C must be present and `blk` must hold one whole block of `dtype`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block(dtype: DType, blk: &[u8]) -> [__m256; 4] {
        let p = blk.as_ptr();
        match dtype {
            DType::F16 => {
                // SAFETY: 32 f16 values are 64 bytes.
                return [0, 16, 32, 48]
                    .map(|o| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.add(o) as *const __m128i)) });
            }
            DType::BF16 => {
                return [0, 16, 32, 48].map(|o| {
                    // SAFETY: 32 bf16 values are 64 bytes; a bf16 is the top half of an f32.
                    let h = unsafe { _mm_loadu_si128(p.add(o) as *const __m128i) };
                    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                });
            }
            DType::I8 => {
                // SAFETY: 32 bytes.
                let (a, b) =
                    unsafe { (_mm_loadu_si128(p as *const __m128i), _mm_loadu_si128(p.add(16) as *const __m128i)) };
                let w = |x: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(x));
                return [w(a), w(_mm_srli_si128(a, 8)), w(b), w(_mm_srli_si128(b, 8))];
            }
            DType::F8E4M3 => {
                // E4M3 bits moved into an f16 (sign to bit 15, exponent and mantissa shifted up by
                // 7) give the value times 2^-8 exactly, subnormals included; 256 undoes it.
                // (The NaN codes 0x7f/0xff decode as ±480; quantisation never writes them.)
                let (a, b) =
                    unsafe { (_mm_loadu_si128(p as *const __m128i), _mm_loadu_si128(p.add(16) as *const __m128i)) };
                let conv = |x: __m128i| {
                    let w = _mm_cvtepu8_epi16(x);
                    let sign = _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x80)), 8);
                    let rest = _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x7f)), 7);
                    _mm256_mul_ps(_mm256_cvtph_ps(_mm_or_si128(sign, rest)), _mm256_set1_ps(256.0))
                };
                return [conv(a), conv(_mm_srli_si128(a, 8)), conv(b), conv(_mm_srli_si128(b, 8))];
            }
            _ => {}
        }
        let d = unsafe { f16(blk, 0) };
        match dtype {
            DType::Q4_0 | DType::Q4_1 => {
                let off = if dtype == DType::Q4_1 { 4 } else { 2 };
                // SAFETY: a 4-bit block holds 16 payload bytes after its header.
                let qs = unsafe { _mm_loadu_si128(blk.as_ptr().add(off) as *const __m128i) };
                let mask = _mm_set1_epi8(0x0f);
                let lo = _mm_and_si128(qs, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
                let q = unsafe { widen_u8(lo, hi) };
                if dtype == DType::Q4_1 {
                    // d * q is exact (11-bit scale times 4-bit integer), so one FMA rounds like
                    // the scalar multiply-then-add.
                    let m = unsafe { f16(blk, 2) };
                    q.map(|v| _mm256_fmadd_ps(d, v, m))
                } else {
                    let eight = _mm256_set1_ps(8.0);
                    q.map(|v| _mm256_mul_ps(d, _mm256_sub_ps(v, eight)))
                }
            }
            DType::Q8_0 => {
                let p = blk.as_ptr();
                // SAFETY: a Q8_0 block holds 32 payload bytes after its 2-byte scale.
                let a = unsafe { _mm_loadu_si128(p.add(2) as *const __m128i) };
                let b = unsafe { _mm_loadu_si128(p.add(18) as *const __m128i) };
                let w = |x: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(x));
                [w(a), w(_mm_srli_si128(a, 8)), w(b), w(_mm_srli_si128(b, 8))].map(|v| _mm256_mul_ps(d, v))
            }
            other => unreachable!("{other} is not a block type"),
        }
    }

    /// Dot products of `MR` f32 rows of `x` with `NR` block-quantised rows of `w`, dequantising
    /// on the fly. Same values and reduction order as dequantising first and calling
    /// [`crate::dot::tile`].
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be present; `x` rows hold `k` values, `w` rows `row_bytes` bytes,
    /// `k` is a multiple of 32.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn qtile<const MR: usize, const NR: usize>(
        dtype: DType,
        x: &[f32],
        ldx: usize,
        w: &[u8],
        row_bytes: usize,
        k: usize,
    ) -> [[f32; NR]; MR] {
        let bb = super::bytes_per_32(dtype);
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        for b in 0..k / 32 {
            for r in 0..NR {
                // SAFETY: block b of row r lies inside `w` (caller's contract).
                let vals = unsafe { block(dtype, &w[r * row_bytes + b * bb..]) };
                for (c, a) in acc.iter_mut().enumerate() {
                    for (j, v) in vals.iter().enumerate() {
                        // SAFETY: x row c holds k values and 32 * b + 8 * j + 8 <= k.
                        let xv = unsafe { _mm256_loadu_ps(x.as_ptr().add(c * ldx + 32 * b + 8 * j)) };
                        a[r] = _mm256_fmadd_ps(*v, xv, a[r]);
                    }
                }
            }
        }
        let mut out = [[0.0; NR]; MR];
        for c in 0..MR {
            for r in 0..NR {
                let mut lanes = [0.0f32; 8];
                // SAFETY: `lanes` holds 8 f32.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[c][r]) };
                out[c][r] = crate::dot::hsum(&lanes);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_bitwise() {
        let mut rng = turbine_core::sampling::Rng::new(3);
        for dtype in
            [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q5_K, DType::Q6_K]
        {
            let n = 8 * 256;
            let mut bytes: Vec<u8> = (0..dtype.bytes_for(n).unwrap()).map(|_| rng.next_u64() as u8).collect();
            // Keep scales finite: clear the exponent's top bit of every f16 header field.
            for blk in bytes.chunks_exact_mut(dtype.block_bytes()) {
                if dtype == DType::Q6_K {
                    blk[209] &= 0x3f;
                } else {
                    blk[1] &= 0x3f;
                    blk[3] &= 0x3f;
                }
            }
            let mut fast = vec![0.0; n];
            dequant_into(dtype, &bytes, &mut fast);
            let mut slow = vec![0.0f32; n];
            for (o, b) in slow.chunks_exact_mut(dtype.block_len()).zip(bytes.chunks_exact(dtype.block_bytes())) {
                dequant_block(dtype, b, o);
            }
            assert!(fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()), "{dtype}");
        }
    }

    #[test]
    fn element_types_decode_like_the_reference() {
        let mut rng = turbine_core::sampling::Rng::new(5);
        for dtype in [DType::F16, DType::BF16, DType::F8E4M3, DType::I8] {
            let n = 4096;
            let mut bytes: Vec<u8> = (0..dtype.bytes_for(n).unwrap()).map(|_| rng.next_u64() as u8).collect();
            match dtype {
                // No NaN codes (quantisation never writes them).
                DType::F8E4M3 => bytes.iter_mut().filter(|b| **b & 0x7f == 0x7f).for_each(|b| *b &= 0xfe),
                // Finite halves only.
                DType::F16 | DType::BF16 => bytes.chunks_exact_mut(2).for_each(|c| c[1] &= 0x3f),
                _ => {}
            }
            let mut fast = vec![0.0; n];
            dequant_into(dtype, &bytes, &mut fast);
            let mut slow = vec![0.0f32; n];
            turbine_core::host::decode_f32(dtype, &bytes, &mut slow).unwrap();
            assert!(fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()), "{dtype}");
        }
    }
}
