//! Element and block storage types.

use std::fmt;

/// A storage type. Plain element types hold one value per element; block types (the GGUF
/// quantisations) hold [`DType::block_len`] values in [`DType::block_bytes`] bytes.
/// Block type names follow GGUF (`Q4_K`), hence the underscores.
#[allow(non_camel_case_types)]
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// FP8 E4M3 (finite, no infinities), as on Hopper.
    F8E4M3,
    /// FP8 E5M2.
    F8E5M2,
    /// Signed 8-bit integer (quantised weights, with scales kept beside them).
    I8,
    /// Unsigned 32-bit integer: token ids, positions, block tables.
    U32,
    /// GGUF Q8_0: blocks of 32 values, an f16 scale `d` and 32 `i8`; value = d * q.
    Q8_0,
    /// GGUF Q4_0: blocks of 32, an f16 scale `d` and 16 bytes of nibbles; value = d * (q - 8).
    Q4_0,
    /// GGUF Q4_1: blocks of 32, f16 `d` and `m` and 16 bytes of nibbles; value = d * q + m.
    Q4_1,
    /// GGUF Q5_0: blocks of 32, f16 `d`, 32 high bits, 16 bytes of nibbles; value = d * (q - 16).
    Q5_0,
    /// GGUF Q5_1: blocks of 32, f16 `d` and `m`, 32 high bits, 16 bytes of nibbles; value = d * q + m.
    Q5_1,
    /// GGUF Q4_K: super-blocks of 256 in 8 sub-blocks with 6-bit scales and mins.
    Q4_K,
    /// GGUF Q5_K: like Q4_K with a fifth bit per value.
    Q5_K,
    /// GGUF Q6_K: super-blocks of 256 in 16 sub-blocks with 8-bit scales, 6-bit values.
    Q6_K,
}

impl DType {
    /// Every storage type a matrix product can read its weights in: f32, f16, bf16, FP8 E4M3 and
    /// INT8 (with per-row scales) and the GGUF block types.
    pub const WEIGHT_TYPES: [DType; 13] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F8E4M3,
        DType::I8,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ];

    /// Values per storage block (1 for element types).
    pub const fn block_len(self) -> usize {
        match self {
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => 32,
            DType::Q4_K | DType::Q5_K | DType::Q6_K => 256,
            _ => 1,
        }
    }

    /// Bytes per storage block.
    pub const fn block_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F8E4M3 | DType::F8E5M2 | DType::I8 => 1,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q4_K => 144,
            DType::Q5_K => 176,
            DType::Q6_K => 210,
        }
    }

    /// Whether this is a block-quantised type.
    pub const fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Whether this type holds floating-point values (directly or through blocks).
    pub const fn is_float(self) -> bool {
        !matches!(self, DType::U32)
    }

    /// Bytes needed for `n` values, or `None` when `n` is not a whole number of blocks or the
    /// size does not fit a `usize`.
    pub const fn bytes_for(self, n: usize) -> Option<usize> {
        if n % self.block_len() != 0 {
            None
        } else {
            (n / self.block_len()).checked_mul(self.block_bytes())
        }
    }

    /// Short lower-case name (`"f32"`, `"q4_1"`, …).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F8E4M3 => "f8e4m3",
            DType::F8E5M2 => "f8e5m2",
            DType::I8 => "i8",
            DType::U32 => "u32",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q5_0 => "q5_0",
            DType::Q5_1 => "q5_1",
            DType::Q4_K => "q4_k",
            DType::Q5_K => "q5_k",
            DType::Q6_K => "q6_k",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes() {
        assert_eq!(DType::Q4_1.bytes_for(64), Some(40));
        assert_eq!(DType::Q8_0.bytes_for(33), None);
        assert_eq!(DType::F16.bytes_for(3), Some(6));
        assert!(DType::Q4_0.is_quantized() && !DType::BF16.is_quantized());
    }
}
