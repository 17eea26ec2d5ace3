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

    /// The canonical lane sums of eight keys' accumulators at once, in key order: per key
    /// `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`, the additions [`hsum`] makes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum8(v: &[__m256; 8]) -> __m256 {
        // Two keys a, b → [a: l0+l4, l2+l6, l1+l5, l3+l7 | b: the same].
        let pair = |a: __m256, b: __m256| {
            let x = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b));
            _mm256_permute_ps::<0b11_01_10_00>(x)
        };
        let (p01, p23, p45, p67) = (pair(v[0], v[1]), pair(v[2], v[3]), pair(v[4], v[5]), pair(v[6], v[7]));
        // hadd adds adjacent pairs: first (x0 + x2) and (x1 + x3), then their sum, per key;
        // the lanes end as keys [0, 2, 4, 6 | 1, 3, 5, 7].
        let f = _mm256_hadd_ps(_mm256_hadd_ps(p01, p23), _mm256_hadd_ps(p45, p67));
        _mm256_permutevar8x32_ps(f, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    /// Eight keys' scores for a head dimension that is a multiple of 8.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores8(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
        let d = q.len();
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i < d {
            // SAFETY: i + 8 <= d, q holds d values and the caller checked rows 0..8 of k.
            let qv = unsafe { _mm256_loadu_ps(q.as_ptr().add(i)) };
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                *a = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(k.as_ptr().add(r * stride + i)) }, qv, *a);
            }
            i += 8;
        }
        let s = _mm256_mul_ps(hsum8(&acc), _mm256_set1_ps(scale));
        // SAFETY: out holds 8 values.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
        let d = q.len();
        let mut i = 0;
        if d % 8 == 0 && d > 0 {
            let mut eights = out.chunks_exact_mut(8);
            for o in &mut eights {
                // SAFETY: the caller checked that rows i..i + 8 of k hold d values.
                unsafe { scores8(q, &k[i * stride..], stride, scale, o) };
                i += 8;
            }
        }
        let out = &mut out[i..];
        // Four keys at a time: independent accumulator chains, same per-dot order.
        let mut chunks = out.chunks_exact_mut(4);
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
            16 => return unsafe { accumulate_fixed::<2>(w, v, stride, acc) },
            32 => return unsafe { accumulate_fixed::<4>(w, v, stride, acc) },
            64 => return unsafe { accumulate_fixed::<8>(w, v, stride, acc) },
            80 => return unsafe { accumulate_fixed::<10>(w, v, stride, acc) },
            96 => return unsafe { accumulate_fixed::<12>(w, v, stride, acc) },
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
        for (d, stride, n) in
            [(37, 45, 7), (16, 32, 21), (32, 32, 6), (64, 192, 9), (80, 96, 12), (96, 96, 3), (128, 128, 17)]
        {
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
