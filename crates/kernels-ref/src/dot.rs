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
pub(crate) fn hsum(l: &[f32; 8]) -> f32 {
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
#[cfg(test)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let k = a.len().min(b.len());
    tile::<1, 1>(a, 0, b, 0, k)[0][0]
}

/// `out[i] = dot(q, k[i * stride..][..q.len()]) * scale` for `i < out.len()`, each dot reduced in
/// the canonical order.
pub(crate) fn scores(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    let d = q.len();
    assert!(out.is_empty() || k.len() >= (out.len() - 1) * stride + d);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are present and the bounds were asserted.
        unsafe { avx2::scores(q, k, stride, scale, out) };
        return;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = tile_scalar::<1, 1>(q, 0, &k[i * stride..], 0, d)[0][0] * scale;
    }
}

/// `acc = fma(w[i], v[i * stride..][..acc.len()], acc)` for each `i < w.len()` in order.
pub(crate) fn accumulate(w: &[f32], v: &[f32], stride: usize, acc: &mut [f32]) {
    let d = acc.len();
    assert!(w.is_empty() || v.len() >= (w.len() - 1) * stride + d);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are present and the bounds were asserted.
        unsafe { avx2::accumulate(w, v, stride, acc) };
        return;
    }
    for (i, &wi) in w.iter().enumerate() {
        for (a, &x) in acc.iter_mut().zip(&v[i * stride..i * stride + d]) {
            *a = wi.mul_add(x, *a);
        }
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

    #[inline]
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
    pub(super) unsafe fn scores(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
        let d = q.len();
        // Four keys at a time: independent accumulator chains, same per-dot order.
        let mut chunks = out.chunks_exact_mut(4);
        let mut i = 0;
        for o in &mut chunks {
            // SAFETY: the caller checked that rows i..i + 4 of k hold d values.
            let t = unsafe { tile::<1, 4>(q, 0, &k[i * stride..], stride, d) };
            for (oj, &v) in o.iter_mut().zip(&t[0]) {
                *oj = v * scale;
            }
            i += 4;
        }
        for o in chunks.into_remainder() {
            // SAFETY: as above, for row i.
            *o = unsafe { tile::<1, 1>(q, 0, &k[i * stride..], 0, d)[0][0] } * scale;
            i += 1;
        }
    }

    /// [`accumulate`] for `acc.len() == 8 * N`, with the accumulator held in registers.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn accumulate_fixed<const N: usize>(w: &[f32], v: &[f32], stride: usize, acc: &mut [f32]) {
        let mut a = [_mm256_setzero_ps(); N];
        for (j, r) in a.iter_mut().enumerate() {
            // SAFETY: acc holds 8 * N values.
            *r = unsafe { _mm256_loadu_ps(acc.as_ptr().add(8 * j)) };
        }
        for (i, &wi) in w.iter().enumerate() {
            let wv = _mm256_set1_ps(wi);
            let row = &v[i * stride..i * stride + 8 * N];
            for (j, r) in a.iter_mut().enumerate() {
                // SAFETY: `row` holds 8 * N values.
                *r = _mm256_fmadd_ps(wv, unsafe { _mm256_loadu_ps(row.as_ptr().add(8 * j)) }, *r);
            }
        }
        for (j, r) in a.iter().enumerate() {
            // SAFETY: acc holds 8 * N values.
            unsafe { _mm256_storeu_ps(acc.as_mut_ptr().add(8 * j), *r) };
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn accumulate(w: &[f32], v: &[f32], stride: usize, acc: &mut [f32]) {
        match acc.len() {
            // SAFETY (all arms): the caller checked that every row of v holds acc.len() values.
            64 => return unsafe { accumulate_fixed::<8>(w, v, stride, acc) },
            128 => return unsafe { accumulate_fixed::<16>(w, v, stride, acc) },
            _ => {}
        }
        for (i, &wi) in w.iter().enumerate() {
            // SAFETY: the caller checked that row i of v holds acc.len() values.
            unsafe { axpy(wi, &v[i * stride..i * stride + acc.len()], acc) };
        }
    }

    #[inline]
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
    fn block_helpers_match_scalar_definitions() {
        for (d, stride, n) in [(37, 45, 7), (64, 192, 9), (128, 128, 3)] {
            let q = data(d, 3);
            let kv = data(n * stride, 4);
            let mut sc = vec![0.0; n];
            scores(&q, &kv, stride, 0.5, &mut sc);
            for (i, s) in sc.iter().enumerate() {
                assert_eq!(s.to_bits(), (dot(&q, &kv[i * stride..i * stride + d]) * 0.5).to_bits());
            }
            let mut acc = data(d, 5);
            let mut want = acc.clone();
            accumulate(&sc, &kv, stride, &mut acc);
            for (i, &w) in sc.iter().enumerate() {
                for (a, &x) in want.iter_mut().zip(&kv[i * stride..]) {
                    *a = w.mul_add(x, *a);
                }
            }
            assert_eq!(acc, want);
        }
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
