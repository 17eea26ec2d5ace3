//! CPU buffers and host transfers.

use turbine_core::{host::decode_f32, DType, Error, HostTensor, Result, Shape, Tensor};

use crate::Cpu;

/// CPU memory: f32 activations and weights, u32 indices, or raw bytes (GGUF blocks, and f16,
/// bf16, FP8 E4M3 or INT8 matrix-product weights).
#[derive(Debug, Clone)]
pub enum CpuBuf {
    /// f32 values.
    F32(Vec<f32>),
    /// u32 values.
    U32(Vec<u32>),
    /// Raw rows of a byte-stored type (GGUF blocks, f16, bf16, E4M3, INT8), little-endian.
    Blocks(Vec<u8>),
}

const BACKEND: &str = "cpu";

/// f32 storage of a tensor, limited to its shape.
pub(crate) fn f32s<'a>(t: &'a Tensor<Cpu>, op: &'static str) -> Result<&'a [f32]> {
    match t.buf() {
        CpuBuf::F32(v) => Ok(&v[..t.shape().numel()]),
        _ => Err(Error::Unsupported { op, dtype: t.dtype(), backend: BACKEND }),
    }
}

/// Mutable f32 storage of a tensor, limited to its shape.
pub(crate) fn f32s_mut<'a>(t: &'a mut Tensor<Cpu>, op: &'static str) -> Result<&'a mut [f32]> {
    let (n, dtype) = (t.shape().numel(), t.dtype());
    match t.buf_mut() {
        CpuBuf::F32(v) => Ok(&mut v[..n]),
        _ => Err(Error::Unsupported { op, dtype, backend: BACKEND }),
    }
}

/// u32 storage of a tensor, limited to its shape.
pub(crate) fn u32s<'a>(t: &'a Tensor<Cpu>, op: &'static str) -> Result<&'a [u32]> {
    match t.buf() {
        CpuBuf::U32(v) => Ok(&v[..t.shape().numel()]),
        _ => Err(Error::Unsupported { op, dtype: t.dtype(), backend: BACKEND }),
    }
}

pub(crate) fn alloc(shape: &Shape, dtype: DType) -> Result<Tensor<Cpu>> {
    let n = shape.numel();
    let buf = match dtype {
        DType::F32 => CpuBuf::F32(vec![0.0; n]),
        DType::U32 => CpuBuf::U32(vec![0; n]),
        d if d.is_quantized() || matches!(d, DType::F16 | DType::BF16 | DType::F8E4M3 | DType::I8) => {
            let bytes = d
                .bytes_for(shape.cols())
                .ok_or_else(|| Error::invalid("alloc", format!("{} columns is not whole {d} blocks", shape.cols())))?
                * shape.rows();
            CpuBuf::Blocks(vec![0; bytes])
        }
        other => return Err(Error::Unsupported { op: "alloc", dtype: other, backend: BACKEND }),
    };
    Ok(Tensor::from_parts(buf, shape.clone(), dtype, n))
}

fn host_to_buf(host: &HostTensor<'_>) -> Result<(CpuBuf, DType)> {
    Ok(match host.dtype() {
        DType::U32 => (CpuBuf::U32(host.to_u32()?), DType::U32),
        DType::F32 | DType::F16 | DType::BF16 => (CpuBuf::F32(host.to_f32()?), DType::F32),
        d if d.is_quantized() || matches!(d, DType::F8E4M3 | DType::I8) => (CpuBuf::Blocks(host.bytes().to_vec()), d),
        other => return Err(Error::Unsupported { op: "upload", dtype: other, backend: BACKEND }),
    })
}

/// Stores a matrix-product weight as it is on the host (f16 and bf16 stay 2 bytes a value).
pub(crate) fn upload_weight(host: &HostTensor<'_>) -> Result<Tensor<Cpu>> {
    match host.dtype() {
        d @ (DType::F16 | DType::BF16) => {
            let n = host.shape().numel();
            Ok(Tensor::from_parts(CpuBuf::Blocks(host.bytes().to_vec()), host.shape().clone(), d, n))
        }
        _ => upload(host),
    }
}

pub(crate) fn upload(host: &HostTensor<'_>) -> Result<Tensor<Cpu>> {
    let (buf, dtype) = host_to_buf(host)?;
    let n = host.shape().numel();
    Ok(Tensor::from_parts(buf, host.shape().clone(), dtype, n))
}

pub(crate) fn write(dst: &mut Tensor<Cpu>, host: &HostTensor<'_>) -> Result<()> {
    let n = host.shape().numel();
    if n > dst.capacity() {
        return Err(Error::invalid(
            "write",
            format!("{} elements exceed the destination's capacity of {}", n, dst.capacity()),
        ));
    }
    match (dst.buf_mut(), host.dtype()) {
        (CpuBuf::U32(v), DType::U32) => {
            for (o, c) in v.iter_mut().zip(host.bytes().chunks_exact(4)) {
                *o = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        (CpuBuf::F32(v), DType::F32 | DType::F16 | DType::BF16) => decode_f32(host.dtype(), host.bytes(), &mut v[..n])?,
        _ => return Err(Error::Unsupported { op: "write", dtype: host.dtype(), backend: BACKEND }),
    }
    dst.reshape(host.shape().clone())
}

pub(crate) fn download(t: &Tensor<Cpu>) -> Result<HostTensor<'static>> {
    let shape = t.shape().clone();
    match t.buf() {
        CpuBuf::F32(v) => HostTensor::from_f32(shape.clone(), &v[..shape.numel()]),
        CpuBuf::U32(v) => HostTensor::from_u32(shape.clone(), &v[..shape.numel()]),
        CpuBuf::Blocks(b) => HostTensor::new(shape, t.dtype(), b.clone()),
    }
}
