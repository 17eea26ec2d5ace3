//! The memory side of a backend: allocation, transfers, capabilities.

use crate::{DType, HostTensor, Result, Shape, Tensor};

/// What a backend can do; ops consult it where they choose a kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    /// Storage types that matrix products accept for weights.
    pub weight_dtypes: Vec<DType>,
    /// The compute type of activations.
    pub act_dtype: DType,
    /// CUDA compute capability as `major * 10 + minor`, `None` off-GPU.
    pub sm: Option<u32>,
    /// Whether FP8 matrix products run natively.
    pub fp8: bool,
}

/// What [`Backend::graph_begin`] decided for a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphStep {
    /// Run the step's ops as usual.
    Eager,
    /// The ops are being recorded, not run: run them, then call [`Backend::graph_end`].
    Capturing,
    /// A recording of this step was replayed: its ops must not run again.
    Replayed,
}

/// A device: owns buffers and moves data to and from the host.
///
/// Buffers are opaque outside the backend; everything else sees [`Tensor`] handles.
pub trait Backend: Sized + Send + Sync + 'static {
    /// Device memory, opaque outside the backend.
    type Buffer: Send + Sync;

    /// Short name used in messages (`"cpu"`, `"cuda"`).
    fn name(&self) -> &'static str;

    /// Capabilities.
    fn caps(&self) -> &Caps;

    /// A zero-filled tensor.
    fn alloc(&self, shape: &Shape, dtype: DType) -> Result<Tensor<Self>>;

    /// Copies a host tensor to the device. The backend may widen the storage type (e.g. the CPU
    /// backend stores f16/bf16 weights as f32); the returned tensor says what it holds.
    fn upload(&self, host: &HostTensor<'_>) -> Result<Tensor<Self>>;

    /// Copies a matrix-product weight to the device in the storage type it has on the host
    /// (f16, bf16, FP8 E4M3, INT8 or GGUF blocks stay as they are; the product dequantises on
    /// the fly). Fails with [`crate::Error::Unsupported`] for a type the backend's products cannot
    /// read. The default widens like [`Backend::upload`].
    fn upload_weight(&self, host: &HostTensor<'_>) -> Result<Tensor<Self>> {
        self.upload(host)
    }

    /// Overwrites `dst` with `host`, reshaping it; fails if `host` exceeds `dst`'s capacity or the
    /// dtypes differ. This is how per-step inputs reach the device without allocating.
    fn write(&self, dst: &mut Tensor<Self>, host: &HostTensor<'_>) -> Result<()>;

    /// [`Backend::write`] for several tensors at once (a step's inputs), with the same checks.
    /// A backend may pack them into one host-to-device transfer; the default writes them one by
    /// one.
    fn write_many(&self, writes: &mut [(&mut Tensor<Self>, HostTensor<'_>)]) -> Result<()> {
        for (dst, host) in writes.iter_mut() {
            self.write(dst, host)?;
        }
        Ok(())
    }

    /// Copies a tensor back to the host.
    fn download(&self, t: &Tensor<Self>) -> Result<HostTensor<'static>>;

    /// Waits for queued work.
    fn sync(&self) -> Result<()>;

    /// Before a step whose ops, shapes and buffers are the same every time it has `key` (a decode
    /// step of a given batch size): replays a recording of it, starts one, or says to run it as
    /// usual. The step's inputs must already be written. Backends without recordings run
    /// everything as usual (the default).
    fn graph_begin(&self, _key: u64) -> Result<GraphStep> {
        Ok(GraphStep::Eager)
    }

    /// Ends the recording [`Backend::graph_begin`] started and, when `ok` (the step's ops were
    /// all queued), keeps and runs it; `false` if nothing ran, in which case the step must be
    /// run as usual.
    fn graph_end(&self, _key: u64, _ok: bool) -> Result<bool> {
        Ok(false)
    }
}
