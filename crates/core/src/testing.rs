//! Tolerances and comparisons for kernel and golden tests.

/// `|got - want| <= abs + rel * |want|`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tol {
    /// Relative part.
    pub rel: f32,
    /// Absolute part.
    pub abs: f32,
}

impl Tol {
    /// Default tolerance for results computed in `dtype`.
    pub fn for_dtype(dtype: crate::DType) -> Tol {
        use crate::DType::*;
        match dtype {
            F16 => Tol { rel: 2e-3, abs: 1e-3 },
            BF16 => Tol { rel: 1.6e-2, abs: 1e-2 },
            F8E4M3 | F8E5M2 | I8 => Tol { rel: 1.25e-1, abs: 1e-1 },
            _ => Tol { rel: 1e-5, abs: 1e-5 },
        }
    }
}

/// Compares element-wise; the error names the worst index, both values and the tolerance.
pub fn check_close(got: &[f32], want: &[f32], tol: Tol) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("length {} != expected {}", got.len(), want.len()));
    }
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (tol.abs + tol.rel * w.abs());
        let bad = excess > 0.0 || excess.is_nan();
        if bad && worst.is_none_or(|(_, e)| excess > e || excess.is_nan()) {
            worst = Some((i, excess));
        }
    }
    match worst {
        None => Ok(()),
        Some((i, _)) => Err(format!(
            "mismatch at {i}: got {} want {} (|d| = {:e}, tol abs {:e} rel {:e})",
            got[i],
            want[i],
            (got[i] - want[i]).abs(),
            tol.abs,
            tol.rel
        )),
    }
}

/// Panics with [`check_close`]'s message when the slices differ beyond `tol`.
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], tol: Tol) {
    if let Err(e) = check_close(got, want, tol) {
        panic!("{e}");
    }
}
