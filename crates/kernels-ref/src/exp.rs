//! The exponential of attention's online softmax, eight values at a time.
//!
//! `exp(x)` as `2^n · p(r)`: `n = round(x · log2 e)`, `r = x − n · ln 2` (ln 2 split in two
//! parts so that `r` is exact enough), and `p` a degree-7 polynomial (Cephes' `expf`
//! coefficients) evaluated by fused multiply-adds in a fixed order. The AVX2 path and the scalar
//! path run the same operations, so they give identical bits, and a value's exponential does
//! not depend on its neighbours: attention stays independent of batch and chunking. Accurate to
//! about 2 ulp (tested against f64); results below `f32`'s smallest normal number flush to 0.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
/// Below this, the result is 0 (`exp(-87)` ≈ 1.6e-38 is near the smallest normal `f32`).
const X_LO: f32 = -87.0;
/// Above this, the result is infinity (`2^n` would overflow the exponent field).
const X_HI: f32 = 88.0;

/// `exp(x)`, by the operations of the AVX2 path.
#[inline]
pub(crate) fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < X_LO {
        return 0.0;
    }
    if x > X_HI {
        return f32::INFINITY;
    }
    let n = (x * LOG2E).round_ties_even();
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let mut p = P[0];
    for &c in &P[1..] {
        p = p.mul_add(r, c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// [`exp`] by the AVX2 path where there is one (without FMA in the build's target features the
/// scalar `mul_add` is a library call).
#[inline]
pub(crate) fn exp1(x: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::dot::has_avx2() {
        // SAFETY: AVX2 and FMA are present (checked above).
        return unsafe { avx2::exp_one(x) };
    }
    exp(x)
}

/// The largest value (NaN ignored, as `f32::max` does; −∞ for none), eight lanes at a time.
/// The maximum is exact, so only the sign of a zero result can differ from a sequential fold,
/// which no later step of the softmax can see.
pub(crate) fn max(v: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::dot::has_avx2() {
        // SAFETY: AVX2 and FMA are present (checked above).
        return unsafe { avx2::max(v) };
    }
    v.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `v = exp(v − m)` for every value, and `sum` plus them, added one at a time in order (the
/// online softmax's block step: `m` is the running maximum, `sum` the normaliser so far).
pub(crate) fn exp_shifted_sum(v: &mut [f32], m: f32, sum: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::dot::has_avx2() {
        // SAFETY: AVX2 and FMA are present (checked above).
        unsafe { avx2::exp_shifted(v, m) };
        return v.iter().fold(sum, |s, &x| s + x);
    }
    let mut sum = sum;
    for x in v.iter_mut() {
        *x = exp(*x - m);
        sum += *x;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{exp, LN2_HI, LN2_LO, LOG2E, P, X_HI, X_LO};

    /// `v = exp(v − m)`, eight values at a time, the rest by the scalar twin.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shifted(v: &mut [f32], m: f32) {
        let mv = _mm256_set1_ps(m);
        let mut chunks = v.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 values.
            unsafe {
                let x = _mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), mv);
                _mm256_storeu_ps(c.as_mut_ptr(), exp8(x));
            }
        }
        for x in chunks.into_remainder() {
            *x = exp(*x - m);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_one(x: f32) -> f32 {
        _mm256_cvtss_f32(exp8(_mm256_set1_ps(x)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn max(v: &[f32]) -> f32 {
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut chunks = v.chunks_exact(8);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 values. A NaN lane of the first operand yields the second.
            m = _mm256_max_ps(unsafe { _mm256_loadu_ps(c.as_ptr()) }, m);
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 values.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        lanes.iter().chain(chunks.remainder()).copied().fold(f32::NEG_INFINITY, f32::max)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let (lo, hi) = (_mm256_set1_ps(X_LO), _mm256_set1_ps(X_HI));
        // Clamped so that 2^n stays a normal number; the lanes outside are replaced below.
        let xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            xc,
            _mm256_set1_ps(LOG2E),
        ));
        let neg = _mm256_sub_ps(_mm256_setzero_ps(), n);
        let r = _mm256_fmadd_ps(neg, _mm256_set1_ps(LN2_HI), xc);
        let r = _mm256_fmadd_ps(neg, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        let y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
        let y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo));
        let y = _mm256_blendv_ps(y, _mm256_set1_ps(f32::INFINITY), _mm256_cmp_ps::<_CMP_GT_OQ>(x, hi));
        _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<f32> {
        let mut v: Vec<f32> = (0..20_000).map(|i| -100.0 + i as f32 * 0.0097).collect();
        v.extend([0.0, -0.0, 1e-8, -1e-8, -87.0, -86.99, 88.0, 88.01, f32::NEG_INFINITY, f32::INFINITY, f32::NAN]);
        v.extend((0..1000).map(|i| -(i as f32) * 0.0013));
        v
    }

    #[test]
    fn the_maximum_ignores_nan_like_a_fold() {
        let mut v: Vec<f32> = (0..37).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
        let fold = |v: &[f32]| v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for n in [0, 1, 7, 8, 9, 16, 37] {
            assert_eq!(max(&v[..n]), fold(&v[..n]), "{n} values");
        }
        v[3] = f32::NAN;
        v[20] = f32::NAN;
        assert_eq!(max(&v), fold(&v));
        assert_eq!(max(&[f32::NAN; 9]), f32::NEG_INFINITY);
    }

    #[test]
    fn simd_and_scalar_agree_bitwise_and_are_accurate() {
        let xs = samples();
        for m in [0.0f32, 3.5, -2.25] {
            let mut v: Vec<f32> = xs.iter().map(|&x| x + m).collect();
            let sum = exp_shifted_sum(&mut v, m, 0.5);
            let mut want_sum = 0.5;
            for (&got, &x) in v.iter().zip(&xs) {
                let s = exp((x + m) - m);
                assert!(exp1((x + m) - m).to_bits() == s.to_bits() || s.is_nan());
                want_sum += s;
                assert!(got.to_bits() == s.to_bits() || (got.is_nan() && s.is_nan()), "exp({x}): {got} vs {s}");
            }
            assert!(sum.to_bits() == want_sum.to_bits() || sum.is_nan());
        }
        for &x in &xs {
            let (got, want) = (exp(x), f64::from(x).exp());
            if x.is_nan() {
                assert!(got.is_nan());
            } else if x < X_LO {
                assert_eq!(got, 0.0);
            } else if x > X_HI {
                assert_eq!(got, f32::INFINITY);
            } else {
                let rel = ((f64::from(got) - want) / want).abs();
                assert!(rel < 2.5e-7, "exp({x}) = {got}, want {want} (relative error {rel:e})");
            }
        }
    }
}
