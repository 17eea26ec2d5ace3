//! GGUF block formats: exact dequantisation of one 32-value block.
//!
//! Every value is produced with one f32 rounding at most, so a kernel that dequantises on the fly
//! gets bit-identical weights to a loader that dequantises once.

use half::f16;

use crate::DType;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantises one block of `dtype` into `out` (`dtype.block_len()` values), exactly as the
/// GGUF reference does it in f32: one rounding per value for the 32-value types (their products
/// are exact), and for the K types the scale products rounded first, then `scale * q` and
/// `- min` each rounded (no fused multiply-add).
///
/// Layouts (little-endian): Q8_0 = `d: f16, q: [i8; 32]`; Q4_0 = `d: f16, qs: [u8; 16]`;
/// Q4_1 = `d: f16, m: f16, qs: [u8; 16]`; Q5_0 = `d: f16, qh: u32, qs: [u8; 16]`;
/// Q5_1 = `d, m: f16, qh: u32, qs: [u8; 16]` (value `j < 16` is the low nibble of `qs[j]`, value
/// `j + 16` the high one, the fifth bit of value `j` bit `j` of `qh`); Q4_K = `d, dmin: f16,
/// scales: [u8; 12], qs: [u8; 128]`; Q5_K = Q4_K's header, `qh: [u8; 32]`, `qs: [u8; 128]`;
/// Q6_K = `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`.
///
/// # Panics
/// If `dtype` is not a block type, `blk` is shorter than a block or `out` than `block_len`.
#[inline]
pub fn dequant_block(dtype: DType, blk: &[u8], out: &mut [f32]) {
    match dtype {
        DType::Q8_0 => {
            let d = f16_at(blk, 0);
            for (o, &q) in out[..32].iter_mut().zip(&blk[2..34]) {
                *o = d * f32::from(q as i8);
            }
        }
        DType::Q4_0 => {
            let d = f16_at(blk, 0);
            for (j, &q) in blk[2..18].iter().enumerate() {
                out[j] = d * f32::from((q & 0x0f) as i8 - 8);
                out[j + 16] = d * f32::from((q >> 4) as i8 - 8);
            }
        }
        DType::Q4_1 => {
            let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
            for (j, &q) in blk[4..20].iter().enumerate() {
                out[j] = d * f32::from(q & 0x0f) + m;
                out[j + 16] = d * f32::from(q >> 4) + m;
            }
        }
        DType::Q5_0 | DType::Q5_1 => {
            let one = dtype == DType::Q5_1;
            let (d, m) = (f16_at(blk, 0), if one { f16_at(blk, 2) } else { 0.0 });
            let at = if one { 4 } else { 2 };
            let qh = u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]]);
            let qs = &blk[at + 4..at + 20];
            let (lo, hi) = out[..32].split_at_mut(16);
            for j in 0..16 {
                let l = (qs[j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
                let h = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                if one {
                    lo[j] = d * f32::from(l) + m;
                    hi[j] = d * f32::from(h) + m;
                } else {
                    lo[j] = d * f32::from(l as i8 - 16);
                    hi[j] = d * f32::from(h as i8 - 16);
                }
            }
        }
        DType::Q4_K | DType::Q5_K => {
            let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
            let s = &blk[4..16];
            let five = dtype == DType::Q5_K;
            let (qh, qs) = if five { (&blk[16..48], &blk[48..176]) } else { (&blk[16..48], &blk[16..144]) };
            for pair in 0..4 {
                let bytes = &qs[pair * 32..pair * 32 + 32];
                for half in 0..2 {
                    let sub = 2 * pair + half;
                    let (sc, m) = k_scale_min(s, sub);
                    let (d1, m1) = (d * f32::from(sc), dmin * f32::from(m));
                    let o = &mut out[sub * 32..sub * 32 + 32];
                    let shift = 4 * half as u32;
                    for l in 0..32 {
                        let mut q = (bytes[l] >> shift) & 0x0f;
                        if five {
                            q |= ((qh[l] >> sub) & 1) << 4;
                        }
                        o[l] = d1 * f32::from(q) - m1;
                    }
                }
            }
        }
        DType::Q6_K => {
            let d = f16_at(blk, 208);
            for half in 0..2 {
                let ql = &blk[half * 64..half * 64 + 64];
                let qh = &blk[128 + half * 32..128 + half * 32 + 32];
                let sc = &blk[192 + half * 8..192 + half * 8 + 8];
                let o = &mut out[half * 128..half * 128 + 128];
                // Four runs of 32: low nibbles of ql[0..32], of ql[32..64], then high nibbles;
                // the top two bits come from qh, two bits per run.
                for run in 0..4 {
                    let (src, shift) = (&ql[(run % 2) * 32..(run % 2) * 32 + 32], 4 * (run / 2) as u32);
                    for l in 0..32 {
                        let low = (src[l] >> shift) & 0x0f;
                        let high = (qh[l] >> (2 * run)) & 3;
                        let q = ((low | (high << 4)) as i8 - 32) as f32;
                        let scale = d * f32::from(sc[(run * 32 + l) / 16] as i8);
                        o[run * 32 + l] = scale * q;
                    }
                }
            }
        }
        other => panic!("dequant_block: {other} is not a block type"),
    }
}

/// Scale and min of sub-block `j` from the 12 packed bytes of Q4_K/Q5_K (6 bits each).
#[inline]
fn k_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block() {
        let mut blk = vec![0u8; 20];
        blk[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        blk[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        blk[4] = 0x3a; // low nibble 10, high nibble 3
        let mut out = [0.0; 32];
        dequant_block(DType::Q4_1, &blk, &mut out);
        assert_eq!(out[0], 4.0);
        assert_eq!(out[16], 0.5);
        assert_eq!(out[1], -1.0);
    }

    #[test]
    fn q5_0_high_bits_and_k_scales() {
        let mut blk = vec![0u8; 22];
        blk[0..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        blk[2..6].copy_from_slice(&(1u32 | (1 << 17)).to_le_bytes()); // values 0 and 17
        blk[6] = 0x21;
        blk[7] = 0x30;
        let mut out = [0.0; 32];
        dequant_block(DType::Q5_0, &blk, &mut out);
        assert_eq!((out[0], out[16], out[1], out[17]), (1.0, -14.0, -16.0, 3.0));
        // Sub-block 5: scale = low nibble of byte 9 | top bits of byte 1; min from bytes 9 and 5.
        let s = [0, 0xc0, 0, 0, 0, 0x40, 0, 0, 0, 0x27, 0, 0];
        assert_eq!(k_scale_min(&s, 5), (0x37, 0x12));
        assert_eq!(k_scale_min(&s, 1), (0, 0));
    }

    #[test]
    fn q8_0_and_q4_0_blocks() {
        let mut blk = vec![0u8; 34];
        blk[0..2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        blk[2] = (-4i8) as u8;
        let mut out = [0.0; 32];
        dequant_block(DType::Q8_0, &blk, &mut out);
        assert_eq!(out[0], -1.0);
        let mut blk = vec![0u8; 18];
        blk[0..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        blk[2] = 0xf0;
        dequant_block(DType::Q4_0, &blk, &mut out);
        assert_eq!((out[0], out[16]), (-16.0, 14.0));
    }
}
