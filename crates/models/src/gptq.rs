//! GPTQ (Frantar et al., 2022): round a weight matrix onto a quantisation grid one input column
//! at a time, pushing each column's rounding error onto the columns not yet rounded, weighted by
//! the inverse Hessian `H = XᵀX` of the layer's inputs, so that the layer's *output* error over
//! the calibration inputs is small rather than each weight's own error.
//!
//! For a row `w` of `W` (`[n, k]`, rows independent) and `U`, the upper Cholesky factor of
//! `H⁻¹` (`H⁻¹ = UᵀU`): for `i = 0..k`, `q_i = Q(w_i)`, `e = (w_i - q_i) / U_ii`, and
//! `w_j -= e · U_ij` for every `j > i`. Columns go in decreasing order of their input energy
//! (`H_ii`, "act order").

use rayon::prelude::*;

use crate::{ModelError, Result};

/// Rounds a value of a given row onto the grid: the stored code and the value it stands for.
pub trait Grid: Sync {
    /// `(code, value)` nearest to `v` in row `row`.
    fn round(&self, row: usize, v: f32) -> (u8, f32);
}

/// Relative damping added to the Hessian's diagonal (GPTQ's `percdamp`; 0.1 measured better
/// than the usual 0.01 on SmolLM2, whose inputs have massive outlier channels).
pub const DAMP: f64 = 0.1;

/// Quantises `w` (`[n, k]` row-major; overwritten with the values of the codes) with the Gram
/// matrix `gram` (`[k, k]`) of the calibration inputs; returns the codes.
///
/// Columns in `exact` are not rounded (their code is 0): they go last and take the error
/// feedback of all the others, so that they leave with the values an exact product should use.
pub fn quantize(w: &mut [f32], n: usize, k: usize, gram: &[f32], grid: &dyn Grid, exact: &[u32]) -> Result<Vec<u8>> {
    if w.len() != n * k || gram.len() != k * k {
        return Err(ModelError::Config(format!("GPTQ: {n}x{k} weight with a {}-value Gram matrix", gram.len())));
    }
    let mut h: Vec<f64> = gram.iter().map(|&g| f64::from(g)).collect();
    let mean_diag = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k.max(1) as f64;
    let damp = DAMP * if mean_diag > 0.0 { mean_diag } else { 1.0 };
    for i in 0..k {
        if h[i * k + i] <= 0.0 {
            // An input that was always zero: its weights do not matter; let them round plainly.
            h[i * k + i] = 1.0;
        }
        h[i * k + i] += damp;
    }
    // Columns with the largest inputs first ("act order"): their errors can still be
    // compensated by the many columns after them.
    let mut is_exact = vec![false; k];
    for &c in exact {
        *is_exact.get_mut(c as usize).ok_or_else(|| ModelError::Config(format!("GPTQ: exact column {c} of {k}")))? =
            true;
    }
    let mut perm: Vec<usize> = (0..k).collect();
    perm.sort_by(|&a, &b| is_exact[a].cmp(&is_exact[b]).then(h[b * k + b].total_cmp(&h[a * k + a])));
    let rounded = is_exact.iter().filter(|&&e| !e).count();
    let hp: Vec<f64> = (0..k * k).map(|ij| h[perm[ij / k] * k + perm[ij % k]]).collect();
    let u = inverse_upper_cholesky(&hp, k)?;
    let mut codes = vec![0u8; n * k];
    w.par_chunks_mut(k.max(1)).zip(codes.par_chunks_mut(k.max(1))).enumerate().for_each(|(r, (orig, code))| {
        let mut row: Vec<f32> = perm.iter().map(|&p| orig[p]).collect();
        for i in 0..rounded {
            let (c, q) = grid.round(r, row[i]);
            code[perm[i]] = c;
            let e = (row[i] - q) / u[i * k + i];
            row[i] = q;
            let ui = &u[i * k + i + 1..(i + 1) * k];
            for (wj, &uij) in row[i + 1..].iter_mut().zip(ui) {
                *wj -= e * uij;
            }
        }
        for (i, &p) in perm.iter().enumerate() {
            orig[p] = row[i];
        }
    });
    Ok(codes)
}

/// `U` (upper triangular, `[k, k]` row-major, f32) with `H⁻¹ = UᵀU`, for a symmetric positive
/// definite `H`. With `J` the exchange matrix and `JHJ = CCᵀ` (lower Cholesky), `U = J C⁻¹ J`.
fn inverse_upper_cholesky(h: &[f64], k: usize) -> Result<Vec<f32>> {
    // M = JHJ.
    let mut m = vec![0f64; k * k];
    for i in 0..k {
        for j in 0..k {
            m[i * k + j] = h[(k - 1 - i) * k + (k - 1 - j)];
        }
    }
    // Lower Cholesky in place (row-oriented: row i's prefix dots with row j's prefix).
    for i in 0..k {
        for j in 0..=i {
            let (ri, rj) = (&m[i * k..i * k + j], &m[j * k..j * k + j]);
            let dot: f64 = ri.iter().zip(rj).map(|(a, b)| a * b).sum();
            let v = m[i * k + j] - dot;
            if i == j {
                if v <= 0.0 || !v.is_finite() {
                    return Err(ModelError::Config(format!(
                        "GPTQ: the calibration Hessian is not positive definite (pivot {i} of {k}); use more calibration text"
                    )));
                }
                m[i * k + i] = v.sqrt();
            } else {
                m[i * k + j] = v / m[j * k + j];
            }
        }
        for j in i + 1..k {
            m[i * k + j] = 0.0;
        }
    }
    // C⁻¹ (lower), column by column by forward substitution; rows in parallel is awkward, so
    // solve for each column of the inverse independently.
    let cols: Vec<Vec<f64>> = (0..k)
        .into_par_iter()
        .map(|c| {
            let mut x = vec![0f64; k];
            x[c] = 1.0 / m[c * k + c];
            for i in c + 1..k {
                let row = &m[i * k + c..i * k + i];
                let s: f64 = row.iter().zip(&x[c..i]).map(|(a, b)| a * b).sum();
                x[i] = -s / m[i * k + i];
            }
            x
        })
        .collect();
    // U = J C⁻¹ J: U[i][j] = C⁻¹[k-1-i][k-1-j] = cols[k-1-j][k-1-i].
    let mut u = vec![0f32; k * k];
    for i in 0..k {
        for j in i..k {
            u[i * k + j] = cols[k - 1 - j][k - 1 - i] as f32;
        }
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Int(f32);
    impl Grid for Int {
        fn round(&self, _row: usize, v: f32) -> (u8, f32) {
            let q = (v / self.0).round().clamp(-127.0, 127.0);
            (q as i8 as u8, q * self.0)
        }
    }

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = turbine_core::sampling::Rng::new(seed);
        (0..n).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect()
    }

    #[test]
    fn the_inverse_cholesky_factor_is_right() {
        let k = 7;
        let a = rand(k * k, 1);
        // H = AᵀA + I.
        let mut h = vec![0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                h[i * k + j] = (0..k).map(|t| f64::from(a[t * k + i]) * f64::from(a[t * k + j])).sum::<f64>()
                    + if i == j { 1.0 } else { 0.0 };
            }
        }
        let u = inverse_upper_cholesky(&h, k).unwrap();
        // UᵀU H = I.
        let inv = |i: usize, j: usize| (0..k).map(|t| f64::from(u[t * k + i]) * f64::from(u[t * k + j])).sum::<f64>();
        for i in 0..k {
            for j in 0..k {
                let p: f64 = (0..k).map(|t| inv(i, t) * h[t * k + j]).sum();
                assert!((p - if i == j { 1.0 } else { 0.0 }).abs() < 1e-4, "({i},{j}) = {p}");
            }
            for j in 0..i {
                assert_eq!(u[i * k + j], 0.0);
            }
        }
    }

    #[test]
    fn gptq_lowers_the_output_error_of_plain_rounding() {
        let (n, k, t) = (16, 32, 256);
        let w = rand(n * k, 2);
        // Correlated inputs: x = z·M with a random mixing M.
        let z = rand(t * k, 3);
        let mix = rand(k * k, 4);
        let mut x = vec![0f32; t * k];
        for r in 0..t {
            for c in 0..k {
                x[r * k + c] = (0..k).map(|j| z[r * k + j] * mix[j * k + c]).sum();
            }
        }
        let mut gram = vec![0f32; k * k];
        for i in 0..k {
            for j in 0..k {
                gram[i * k + j] = (0..t).map(|r| x[r * k + i] * x[r * k + j]).sum();
            }
        }
        let grid = Int(0.05);
        let err = |q: &[f32]| -> f64 {
            let mut e = 0.0;
            for r in 0..t {
                for o in 0..n {
                    let d: f32 = (0..k).map(|c| x[r * k + c] * (w[o * k + c] - q[o * k + c])).sum();
                    e += f64::from(d * d);
                }
            }
            e
        };
        let plain: Vec<f32> = w.iter().map(|&v| grid.round(0, v).1).collect();
        let mut g = w.clone();
        let codes = quantize(&mut g, n, k, &gram, &grid, &[]).unwrap();
        assert!(codes.iter().zip(&g).all(|(&c, &v)| (f32::from(c as i8) * 0.05 - v).abs() < 1e-6));
        let (e_plain, e_gptq) = (err(&plain), err(&g));
        assert!(e_gptq < 0.7 * e_plain, "GPTQ {e_gptq} vs plain {e_plain}");
        // Two columns kept exact take the others' error feedback: off the grid, code 0, and a
        // smaller output error still.
        let mut g2 = w.clone();
        let codes = quantize(&mut g2, n, k, &gram, &grid, &[5, 1]).unwrap();
        for (i, (&c, &v)) in codes.iter().zip(&g2).enumerate() {
            if i % k == 1 || i % k == 5 {
                assert_eq!(c, 0);
            } else {
                assert!((f32::from(c as i8) * 0.05 - v).abs() < 1e-6);
            }
        }
        let e_exact = err(&g2);
        assert!(e_exact < e_gptq, "GPTQ with exact columns {e_exact} vs {e_gptq}");
        assert!(quantize(&mut w.clone(), n, k, &gram, &grid, &[k as u32]).is_err());
    }
}
