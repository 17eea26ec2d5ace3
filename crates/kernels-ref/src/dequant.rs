//! Fast exact dequantisation of GGUF blocks: the same values as
//! [`turbine_core::quant::dequant_block`], bit for bit, with AVX2 where available.

use turbine_core::quant::dequant_block;
use turbine_core::DType;

/// Dequantises consecutive blocks of `dtype` from `src` into `out` (`out.len()` a multiple of 32).
pub(crate) fn dequant_into(dtype: DType, src: &[u8], out: &mut [f32]) {
    let bb = dtype.block_bytes();
    debug_assert!(src.len() >= out.len() / 32 * bb);
    #[cfg(target_arch = "x86_64")]
    if crate::dot::has_avx2() && std::arch::is_x86_feature_detected!("f16c") {
        for (dst, blk) in out.chunks_exact_mut(32).zip(src.chunks_exact(bb)) {
            let dst: &mut [f32; 32] = dst.try_into().expect("chunk of 32");
            // SAFETY: AVX2, FMA and F16C are present; `blk` holds one whole block.
            unsafe { avx2::block(dtype, blk, dst) };
        }
        return;
    }
    for (dst, blk) in out.chunks_exact_mut(32).zip(src.chunks_exact(bb)) {
        dequant_block(dtype, blk, dst.try_into().expect("chunk of 32"));
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use turbine_core::DType;

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16(blk: &[u8], at: usize) -> __m256 {
        let bits = u16::from_le_bytes([blk[at], blk[at + 1]]);
        let v = _mm_cvtph_ps(_mm_set1_epi16(bits as i16));
        _mm256_broadcastss_ps(v)
    }

    /// Four vectors of eight bytes each (`bytes[0..8]`, `[8..16]` of `lo`, then of `hi`) as i32.
    #[target_feature(enable = "avx2")]
    unsafe fn widen_u8(lo: __m128i, hi: __m128i) -> [__m256; 4] {
        [
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
        ]
    }

    /// # Safety
    /// AVX2, FMA and F16C must be present and `blk` must hold one whole block of `dtype`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn block(dtype: DType, blk: &[u8], out: &mut [f32; 32]) {
        let o = out.as_mut_ptr();
        let d = unsafe { f16(blk, 0) };
        let vals: [__m256; 4] = match dtype {
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
        };
        for (i, v) in vals.into_iter().enumerate() {
            // SAFETY: `out` holds 32 f32.
            unsafe { _mm256_storeu_ps(o.add(8 * i), v) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_bitwise() {
        let mut rng = turbine_core::sampling::Rng::new(3);
        for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1] {
            let n = 64;
            let mut bytes: Vec<u8> = (0..dtype.bytes_for(n * 32).unwrap()).map(|_| rng.next_u64() as u8).collect();
            // Keep scales finite: clear the exponent's top bit of every f16 header field.
            for blk in bytes.chunks_exact_mut(dtype.block_bytes()) {
                blk[1] &= 0x3f;
                blk[3] &= 0x3f;
            }
            let mut fast = vec![0.0; n * 32];
            dequant_into(dtype, &bytes, &mut fast);
            let mut slow = vec![0.0f32; n * 32];
            for (o, b) in slow.chunks_exact_mut(32).zip(bytes.chunks_exact(dtype.block_bytes())) {
                dequant_block(dtype, b, o.try_into().unwrap());
            }
            assert!(fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()), "{dtype}");
        }
    }
}
