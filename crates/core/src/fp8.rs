//! 8-bit number formats and the arithmetic every backend's 8-bit path reproduces.
//!
//! **FP8 E4M3** is the `float8_e4m3fn` of PyTorch, Hopper and Ada: 1 sign bit, 4 exponent bits
//! (bias 7), 3 mantissa bits, no infinities, one NaN pattern per sign (`0x7f`/`0xff`). Normal
//! values span 2⁻⁶ to 448 (`0x7e`), subnormals `m · 2⁻⁹` for `m` in 1..=7. Conversion from f32
//! rounds to nearest, ties to even, and **saturates**: anything beyond ±448 becomes ±448 (as
//! transformer engines clamp before casting), NaN stays NaN.
//!
//! **INT8** here is symmetric: `q = round_half_even(x / scale)` clamped to `-127..=127`.
//!
//! A quantised matrix product ([`crate::ops::Epilogue::scale`]) multiplies these values as f32,
//! accumulates in f32, and multiplies the sum by the scales.

/// Largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;
/// Largest INT8 magnitude used.
pub const I8_MAX: f32 = 127.0;

/// The value of an E4M3 byte (exact).
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = i32::from((b >> 3) & 0x0f);
    let m = f32::from(b & 0x07);
    if e == 15 && b & 0x07 == 7 {
        return f32::NAN;
    }
    if e == 0 {
        sign * m * (2f32).powi(-9)
    } else {
        sign * (1.0 + m / 8.0) * (2f32).powi(e - 7)
    }
}

/// All 256 E4M3 values, by byte (computed once).
pub fn e4m3_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|b| e4m3_to_f32(b as u8)))
}

/// All 256 byte values read as INT8, by byte (computed once).
pub fn i8_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|b| f32::from(b as u8 as i8)))
}

/// Rounds `x` to E4M3: nearest, ties to even, saturating at ±448; NaN gives `0x7f`.
pub fn f32_to_e4m3(x: f32) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let a = x.abs();
    if a.is_nan() {
        return sign | 0x7f;
    }
    if a >= E4M3_MAX {
        return sign | 0x7e;
    }
    let abits = a.to_bits();
    let exp = ((abits >> 23) & 0xff) as i32 - 127;
    if exp < -6 {
        // Subnormal range: multiples of 2^-9; code = m (8 is the smallest normal, 0x08).
        let q = round_half_even(a * 512.0);
        return sign | q as u8;
    }
    // Normal: keep 3 of the 23 mantissa bits, ties to even.
    let man = abits & 0x7f_ffff;
    let (mut q, rem) = (man >> 20, man & 0xf_ffff);
    let mut e = exp;
    if rem > 0x8_0000 || (rem == 0x8_0000 && q & 1 == 1) {
        q += 1;
        if q == 8 {
            q = 0;
            e += 1;
        }
    }
    let code = (((e + 7) as u32) << 3) | q;
    if code > 0x7e {
        return sign | 0x7e;
    }
    sign | code as u8
}

/// `x` rounded to the nearest E4M3 value (as f32).
pub fn round_e4m3(x: f32) -> f32 {
    e4m3_table()[usize::from(f32_to_e4m3(x))]
}

/// Round half to even for the magnitudes used here (|x| < 2^22).
pub fn round_half_even(x: f32) -> f32 {
    let r = x.round();
    if (r - x).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// `x / scale` as an INT8 value (round half to even, clamped to ±127).
pub fn f32_to_i8(x: f32, scale: f32) -> i8 {
    round_half_even(x / scale).clamp(-I8_MAX, I8_MAX) as i8
}

/// The scale that maps `amax` to the format's largest value (1 when `amax` is 0, so that
/// nothing divides by zero).
pub fn scale_for(amax: f32, max: f32) -> f32 {
    if amax > 0.0 && amax.is_finite() {
        amax / max
    } else {
        1.0
    }
}

/// Quantises one row to E4M3 with `scale` (`q = e4m3(x * (1 / scale))`: the reciprocal first, as
/// GPU quantisation kernels do), writing the E4M3 values
/// (as f32, unscaled) into `out`.
pub fn quantize_row_e4m3(x: &[f32], scale: f32, out: &mut [f32]) {
    let inv = 1.0 / scale;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = round_e4m3(v * inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An independent slow E4M3 rounding: the nearest of all finite values, ties to the even
    /// code, saturating.
    fn slow(x: f32) -> u8 {
        if x.is_nan() {
            return if x.is_sign_negative() { 0xff } else { 0x7f };
        }
        let mut best: Option<(u8, f64)> = None;
        for b in 0u8..=255 {
            let v = e4m3_to_f32(b);
            if v.is_nan() || (v == 0.0 && (b & 0x80 != 0) != x.is_sign_negative()) {
                continue;
            }
            if (v < 0.0) != x.is_sign_negative() && v != 0.0 {
                continue;
            }
            let d = (f64::from(v) - f64::from(x)).abs();
            best = match best {
                None => Some((b, d)),
                Some((bb, bd)) if d < bd || (d == bd && b & 1 == 0 && bb & 1 == 1) => Some((b, d)),
                keep => keep,
            };
        }
        best.unwrap().0
    }

    #[test]
    fn decoding_known_codes() {
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0xfe), -448.0);
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert!(e4m3_to_f32(0x7f).is_nan() && e4m3_to_f32(0xff).is_nan());
    }

    #[test]
    fn every_code_round_trips() {
        for b in 0u8..=255 {
            let v = e4m3_to_f32(b);
            if !v.is_nan() {
                // -0 and +0 both map to their own sign.
                assert_eq!(f32_to_e4m3(v), b, "code {b:#04x} value {v}");
            }
        }
    }

    #[test]
    fn rounding_matches_the_slow_search() {
        // Every midpoint between neighbours and a hair either side, plus a sweep.
        let mut xs = Vec::new();
        let vals: Vec<f32> = (0u8..=0x7e).map(e4m3_to_f32).collect();
        for w in vals.windows(2) {
            let mid = (w[0] + w[1]) / 2.0;
            xs.extend([mid, f32::from_bits(mid.to_bits() + 1), f32::from_bits(mid.to_bits() - 1), w[0], w[1]]);
        }
        xs.extend([449.0, 464.0, 480.0, 1e9, 1e-12, 2f32.powi(-10), 2f32.powi(-10) * 3.0, 0.0]);
        let mut s = 0x1234_5678u32;
        for _ in 0..20000 {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let e = (s >> 24) as i32 % 24 - 12;
            xs.push((s & 0xffff) as f32 / 65536.0 * 2f32.powi(e));
        }
        for &x in &xs {
            for v in [x, -x] {
                assert_eq!(f32_to_e4m3(v), slow(v), "x = {v:e}");
            }
        }
        assert_eq!(f32_to_e4m3(f32::NAN), 0x7f);
        assert_eq!(f32_to_e4m3(f32::INFINITY), 0x7e);
        assert_eq!(f32_to_e4m3(f32::NEG_INFINITY), 0xfe);
    }

    #[test]
    fn int8_rounds_half_to_even_and_clamps() {
        assert_eq!(f32_to_i8(2.5, 1.0), 2);
        assert_eq!(f32_to_i8(3.5, 1.0), 4);
        assert_eq!(f32_to_i8(-2.5, 1.0), -2);
        assert_eq!(f32_to_i8(1000.0, 1.0), 127);
        assert_eq!(f32_to_i8(-1000.0, 1.0), -127);
        assert_eq!(scale_for(0.0, E4M3_MAX), 1.0);
    }
}
