//! GGUF block formats: exact dequantisation of one 32-value block.
//!
//! Every value is produced with one f32 rounding at most, so a kernel that dequantises on the fly
//! gets bit-identical weights to a loader that dequantises once.

use half::f16;

use crate::DType;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantises one block of `dtype` (`Q8_0`, `Q4_0` or `Q4_1`) into 32 f32 values.
///
/// Layouts (little-endian): Q8_0 = `d: f16, q: [i8; 32]`; Q4_0 = `d: f16, qs: [u8; 16]`;
/// Q4_1 = `d: f16, m: f16, qs: [u8; 16]`. For the 4-bit types, value `j < 16` is the low nibble
/// of `qs[j]` and value `j + 16` the high nibble.
///
/// # Panics
/// If `dtype` is not one of the three block types or `blk` is shorter than one block
/// (callers slice blocks with [`DType::block_bytes`]).
pub fn dequant_block(dtype: DType, blk: &[u8], out: &mut [f32; 32]) {
    match dtype {
        DType::Q8_0 => {
            let d = f16_at(blk, 0);
            for (o, &q) in out.iter_mut().zip(&blk[2..34]) {
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
        other => panic!("dequant_block: {other} is not a block type"),
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
