//! The canonical dot product and its register-tiled form.
//!
//! Every dot product in this backend reduces the same way: eight lane accumulators, lane
//! `i % 8` takes `a[i] * b[i]` by fused multiply-add in increasing `i`, and the lanes are summed
//! as `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`. The AVX2 path and the scalar path
//! produce identical bits, and a tile computes each of its dot products exactly as a lone call
//! would: this is what makes results independent of batch size.

/// Whether the AVX2+FMA path is used.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn has_avx2() -> bool {
    false
}

pub(crate) fn simd_name() -> &'static str {
    if has_avx2() {
        "avx2+fma"
    } else {
        "scalar"
    }
}

#[inline(always)]
fn hsum(l: &[f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// Dot products of `MR` rows of `x` with `NR` rows of `w` (row strides `ldx`, `ldw`), each over
/// `k` values: `out[c][r] = x_c · w_r`.
///
/// # Panics
/// If a row would run past the end of its slice.
pub(crate) fn tile<const MR: usize, const NR: usize>(
    x: &[f32],
    ldx: usize,
    w: &[f32],
    ldw: usize,
    k: usize,
) -> [[f32; NR]; MR] {
    assert!(x.len() >= (MR - 1) * ldx + k && w.len() >= (NR - 1) * ldw + k);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are present (checked above) and the bounds were asserted.
        return unsafe { avx2::tile::<MR, NR>(x, ldx, w, ldw, k) };
    }
    tile_scalar::<MR, NR>(x, ldx, w, ldw, k)
}

/// A single dot product, reduced in the canonical order.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let k = a.len().min(b.len());
    tile::<1, 1>(a, 0, b, 0, k)[0][0]
}

/// `y[i] = fma(a, x[i], y[i])`.
pub(crate) fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are present; both slices hold n values.
        unsafe { avx2::axpy(a, &x[..n], &mut y[..n]) };
        return;
    }
    for (yv, &xv) in y[..n].iter_mut().zip(&x[..n]) {
        *yv = a.mul_add(xv, *yv);
    }
}

fn tile_scalar<const MR: usize, const NR: usize>(
    x: &[f32],
    ldx: usize,
    w: &[f32],
    ldw: usize,
    k: usize,
) -> [[f32; NR]; MR] {
    let mut out = [[0.0; NR]; MR];
    for (c, row) in out.iter_mut().enumerate() {
        let xr = &x[c * ldx..c * ldx + k];
        for (r, o) in row.iter_mut().enumerate() {
            let wr = &w[r * ldw..r * ldw + k];
            let mut lanes = [0.0f32; 8];
            for (i, (&a, &b)) in wr.iter().zip(xr).enumerate() {
                lanes[i % 8] = a.mul_add(b, lanes[i % 8]);
            }
            *o = hsum(&lanes);
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::hsum;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const MR: usize, const NR: usize>(
        x: &[f32],
        ldx: usize,
        w: &[f32],
        ldw: usize,
        k: usize,
    ) -> [[f32; NR]; MR] {
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        let k8 = k & !7;
        let mut i = 0;
        while i < k8 {
            let mut wv = [_mm256_setzero_ps(); NR];
            for (r, v) in wv.iter_mut().enumerate() {
                // SAFETY: i + 8 <= k and the caller asserted every row holds k values.
                *v = unsafe { _mm256_loadu_ps(wp.add(r * ldw + i)) };
            }
            for (c, a) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let xv = unsafe { _mm256_loadu_ps(xp.add(c * ldx + i)) };
                for (r, ar) in a.iter_mut().enumerate() {
                    *ar = _mm256_fmadd_ps(wv[r], xv, *ar);
                }
            }
            i += 8;
        }
        let mut out = [[0.0; NR]; MR];
        for c in 0..MR {
            for r in 0..NR {
                let mut lanes = [0.0f32; 8];
                // SAFETY: `lanes` holds 8 f32.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[c][r]) };
                for t in k8..k {
                    lanes[t - k8] = w[r * ldw + t].mul_add(x[c * ldx + t], lanes[t - k8]);
                }
                out[c][r] = hsum(&lanes);
            }
        }
        out
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len();
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n and both slices hold n values.
            unsafe {
                let yp = y.as_mut_ptr().add(i);
                _mm256_storeu_ps(yp, _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(yp)));
            }
            i += 8;
        }
        for j in i..n {
            y[j] = a.mul_add(x[j], y[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axpy_matches_scalar_fma() {
        let x: Vec<f32> = (0..37).map(|i| i as f32 * 0.3 - 2.0).collect();
        let mut y: Vec<f32> = (0..37).map(|i| 1.0 / (i as f32 + 1.0)).collect();
        let want: Vec<f32> = y.iter().zip(&x).map(|(&yv, &xv)| 0.7f32.mul_add(xv, yv)).collect();
        axpy(0.7, &x, &mut y);
        assert_eq!(y, want);
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 8388608.0 - 1.0).collect()
    }

    #[test]
    fn simd_scalar_and_tiles_agree_bitwise() {
        for k in [1, 7, 8, 13, 64, 576, 1003] {
            let x = data(4 * k, 1);
            let w = data(3 * k, 2);
            let t = tile::<4, 3>(&x, k, &w, k, k);
            let s = tile_scalar::<4, 3>(&x, k, &w, k, k);
            for c in 0..4 {
                for r in 0..3 {
                    let single = dot(&x[c * k..(c + 1) * k], &w[r * k..(r + 1) * k]);
                    assert_eq!(t[c][r].to_bits(), single.to_bits(), "k={k}");
                    assert_eq!(s[c][r].to_bits(), single.to_bits(), "k={k}");
                    let naive: f64 = (0..k).map(|i| x[c * k + i] as f64 * w[r * k + i] as f64).sum();
                    assert!((single as f64 - naive).abs() <= 1e-4 * (1.0 + naive.abs()));
                }
            }
        }
    }
}
