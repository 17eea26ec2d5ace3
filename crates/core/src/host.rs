//! Tensors in host memory: the interchange format between loaders, tests and backends.

use std::borrow::Cow;

use half::{bf16, f16};

use crate::{DType, Error, Result, Shape};

/// Row-major little-endian bytes on the host, borrowed (e.g. from a memory-mapped file) or owned.
///
/// For block types, each row (`shape.cols()` values) is a whole number of blocks.
#[derive(Debug, Clone)]
pub struct HostTensor<'a> {
    shape: Shape,
    dtype: DType,
    bytes: Cow<'a, [u8]>,
}

impl<'a> HostTensor<'a> {
    /// Wraps bytes; checks that their length matches the shape and dtype.
    pub fn new(shape: impl Into<Shape>, dtype: DType, bytes: impl Into<Cow<'a, [u8]>>) -> Result<Self> {
        let shape = shape.into();
        let bytes = bytes.into();
        let per_row = dtype.bytes_for(shape.cols()).ok_or_else(|| {
            Error::invalid(
                "HostTensor::new",
                format!("{} columns is not a whole number of {dtype} blocks", shape.cols()),
            )
        })?;
        let want = per_row * shape.rows();
        if bytes.len() != want {
            return Err(Error::invalid(
                "HostTensor::new",
                format!("{dtype} tensor of shape {shape} needs {want} bytes, got {}", bytes.len()),
            ));
        }
        Ok(HostTensor { shape, dtype, bytes })
    }

    /// An owned f32 tensor.
    pub fn from_f32(shape: impl Into<Shape>, data: &[f32]) -> Result<HostTensor<'static>> {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        HostTensor::new(shape, DType::F32, bytes)
    }

    /// An owned u32 tensor.
    pub fn from_u32(shape: impl Into<Shape>, data: &[u32]) -> Result<HostTensor<'static>> {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        HostTensor::new(shape, DType::U32, bytes)
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The storage type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Makes the tensor own its bytes.
    pub fn into_owned(self) -> HostTensor<'static> {
        HostTensor { shape: self.shape, dtype: self.dtype, bytes: Cow::Owned(self.bytes.into_owned()) }
    }

    /// Same bytes, another shape with the same number of elements.
    pub fn reshape(self, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if shape.numel() != self.shape.numel() {
            return Err(Error::Shape { op: "reshape", expected: self.shape, got: shape });
        }
        HostTensor::new(shape, self.dtype, self.bytes)
    }

    /// All values as f32 (block types are dequantised exactly).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.shape.numel()];
        decode_f32(self.dtype, &self.bytes, &mut out)?;
        Ok(out)
    }

    /// All values as u32 (only for [`DType::U32`]).
    pub fn to_u32(&self) -> Result<Vec<u32>> {
        if self.dtype != DType::U32 {
            return Err(Error::Unsupported { op: "to_u32", dtype: self.dtype, backend: "host" });
        }
        Ok(self.bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// Reorders the rows: row `i` of the result is row `perm[i]` of `self`. Works for every dtype
    /// because rows are whole blocks.
    pub fn permute_rows(&self, perm: &[usize]) -> Result<HostTensor<'static>> {
        let rows = self.shape.rows();
        if perm.len() != rows || perm.iter().any(|&p| p >= rows) {
            return Err(Error::invalid("permute_rows", format!("bad permutation for {rows} rows")));
        }
        let rb = self.bytes.len() / rows.max(1);
        let mut out = Vec::with_capacity(self.bytes.len());
        for &p in perm {
            out.extend_from_slice(&self.bytes[p * rb..(p + 1) * rb]);
        }
        HostTensor::new(self.shape.clone(), self.dtype, out)
    }

    /// The transpose of a 2-D tensor of an element type (`[r, c]` → `[c, r]`), e.g. GPT-2's
    /// Conv1D weights stored `[in, out]`.
    pub fn transpose(&self) -> Result<HostTensor<'static>> {
        let es = self.dtype.block_bytes();
        if self.dtype.is_quantized() || self.shape.rank() != 2 {
            return Err(Error::invalid("transpose", format!("cannot transpose {} {}", self.dtype, self.shape)));
        }
        let (r, c) = (self.shape.dims()[0], self.shape.dims()[1]);
        let mut out = vec![0u8; self.bytes.len()];
        for i in 0..r {
            for j in 0..c {
                let (src, dst) = ((i * c + j) * es, (j * r + i) * es);
                out[dst..dst + es].copy_from_slice(&self.bytes[src..src + es]);
            }
        }
        HostTensor::new([c, r], self.dtype, out)
    }

    /// Stacks tensors with equal column counts and dtypes along rows (`[a; b; …]`).
    pub fn concat_rows(parts: &[HostTensor<'_>]) -> Result<HostTensor<'static>> {
        let first = parts.first().ok_or_else(|| Error::invalid("concat_rows", "no tensors"))?;
        let (cols, dtype) = (first.shape.cols(), first.dtype);
        let mut rows = 0;
        let mut bytes = Vec::new();
        for p in parts {
            if p.shape.cols() != cols || p.dtype != dtype {
                return Err(Error::invalid(
                    "concat_rows",
                    format!("cannot stack {} {} under {} columns of {}", p.dtype, p.shape, cols, dtype),
                ));
            }
            rows += p.shape.rows();
            bytes.extend_from_slice(&p.bytes);
        }
        HostTensor::new([rows, cols], dtype, bytes)
    }
}

/// Decodes `out.len()` values of `dtype` from `bytes` into f32. Block types are dequantised
/// exactly as GGUF defines them (f16 scales widened to f32, one rounding per value); FP8 E4M3
/// and INT8 give their raw values (their scales live beside them).
pub fn decode_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let need = dtype
        .bytes_for(out.len())
        .ok_or_else(|| Error::invalid("decode_f32", format!("{} values is not whole {dtype} blocks", out.len())))?;
    if bytes.len() < need {
        return Err(Error::invalid("decode_f32", format!("need {need} bytes, got {}", bytes.len())));
    }
    let b = &bytes[..need];
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::F8E4M3 => {
            let t = crate::fp8::e4m3_table();
            for (o, &c) in out.iter_mut().zip(b) {
                *o = t[usize::from(c)];
            }
        }
        DType::I8 => {
            for (o, &c) in out.iter_mut().zip(b) {
                *o = f32::from(c as i8);
            }
        }
        d if d.is_quantized() => {
            for (o, blk) in out.chunks_exact_mut(d.block_len()).zip(b.chunks_exact(d.block_bytes())) {
                crate::quant::dequant_block(d, blk, o);
            }
        }
        other => return Err(Error::Unsupported { op: "decode_f32", dtype: other, backend: "host" }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_checked() {
        assert!(HostTensor::new([2, 3], DType::F32, vec![0u8; 24]).is_ok());
        assert!(HostTensor::new([2, 3], DType::F32, vec![0u8; 20]).is_err());
        assert!(HostTensor::new([2, 33], DType::Q8_0, vec![0u8; 68]).is_err());
    }

    #[test]
    fn permute_and_concat() {
        let a = HostTensor::from_f32([2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        let p = a.permute_rows(&[1, 0]).unwrap();
        assert_eq!(p.to_f32().unwrap(), vec![3.0, 4.0, 1.0, 2.0]);
        let c = HostTensor::concat_rows(&[a, p]).unwrap();
        assert_eq!(c.shape().dims(), &[4, 2]);
        let t = HostTensor::from_f32([2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap().transpose().unwrap();
        assert_eq!(t.to_f32().unwrap(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
