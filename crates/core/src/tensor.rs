//! A tensor handle over a backend-owned buffer.

use crate::{Backend, DType, Error, Result, Shape};

/// A row-major tensor living on backend `B`.
///
/// The buffer may hold more elements than the shape uses (its capacity), so that per-step
/// activations can be resized without reallocating: see [`Tensor::set_rows`].
pub struct Tensor<B: Backend> {
    buf: B::Buffer,
    shape: Shape,
    dtype: DType,
    capacity: usize,
}

impl<B: Backend> Tensor<B> {
    /// Assembles a handle; for backends. `capacity` is in elements and must be at least
    /// `shape.numel()`.
    pub fn from_parts(buf: B::Buffer, shape: Shape, dtype: DType, capacity: usize) -> Self {
        debug_assert!(capacity >= shape.numel());
        Tensor { buf, shape, dtype, capacity }
    }

    /// The buffer; for backends.
    pub fn buf(&self) -> &B::Buffer {
        &self.buf
    }

    /// The buffer, mutably; for backends.
    pub fn buf_mut(&mut self) -> &mut B::Buffer {
        &mut self.buf
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The storage type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Capacity in elements.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of rows (all dimensions but the last).
    pub fn rows(&self) -> usize {
        self.shape.rows()
    }

    /// Size of the last dimension.
    pub fn cols(&self) -> usize {
        self.shape.cols()
    }

    /// Changes the shape within the capacity (contents are unspecified afterwards).
    pub fn reshape(&mut self, shape: impl Into<Shape>) -> Result<()> {
        let shape = shape.into();
        if shape.numel() > self.capacity {
            return Err(Error::invalid(
                "Tensor::reshape",
                format!("shape {shape} exceeds capacity of {} elements", self.capacity),
            ));
        }
        self.shape = shape;
        Ok(())
    }

    /// Sets the number of rows of a 2-D tensor, keeping its columns.
    pub fn set_rows(&mut self, rows: usize) -> Result<()> {
        let cols = self.cols();
        self.reshape([rows, cols])
    }

    /// Fails with [`Error::Shape`] unless the shape equals `want`.
    pub fn expect_shape(&self, op: &'static str, want: &[usize]) -> Result<()> {
        if self.shape.dims() != want {
            return Err(Error::Shape { op, expected: Shape::from(want), got: self.shape.clone() });
        }
        Ok(())
    }

    /// Fails with [`Error::Unsupported`] unless the dtype is `want`.
    pub fn expect_dtype(&self, op: &'static str, want: DType, backend: &'static str) -> Result<()> {
        if self.dtype != want {
            return Err(Error::Unsupported { op, dtype: self.dtype, backend });
        }
        Ok(())
    }
}

impl<B: Backend> std::fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({} {})", self.dtype, self.shape)
    }
}
