//! The CUDA device: context, stream, memory and the kernels' modules, behind [`Backend`].
//!
//! Buffers are untyped device bytes ([`CudaBuf`]); a [`Tensor`]'s dtype says how to read them.
//! Tensors keep the storage type they were uploaded in (f32 stays f32, f16/bf16/E4M3/INT8 stay
//! as they are). Activations are f32 in this first version ([`Caps::act_dtype`]), as on the CPU;
//! the products convert their input to the weights' type (see [`crate::ops`]).
//!
//! Kernels are PTX: compiled at start-up by NVRTC when `libnvrtc.so.13` can be loaded (with the
//! CUDA headers from `TURBINE_CUDA_INCLUDE`), or read from `TURBINE_CUDA_PTX`, a folder of the
//! `NAME.ptx` files `cargo xtask kernels` writes for one architecture (`target/kernels/sm_90a`),
//! so that a machine without NVRTC can run binaries built elsewhere.
//!
//! Status: compile-checked, and run under the CPU emulator (`cargo xtask emu`); no GPU has run
//! any of it yet.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream};
use turbine_core::{Backend, Caps, DType, Error, GraphStep, HostTensor, Result, Shape, Tensor};

use crate::graphs::{Epoch, Graphs};

use crate::sources::SOURCES;

/// Device memory of one tensor: bytes, read as the tensor's dtype.
pub struct CudaBuf {
    bytes: CudaSlice<u8>,
    /// Bumped when this buffer is freed (recorded steps hold its address).
    epoch: Epoch,
}

impl Drop for CudaBuf {
    fn drop(&mut self) {
        self.epoch.bump();
    }
}

impl CudaBuf {
    /// The device bytes.
    pub fn bytes(&self) -> &CudaSlice<u8> {
        &self.bytes
    }

    /// The device bytes, mutably.
    pub fn bytes_mut(&mut self) -> &mut CudaSlice<u8> {
        &mut self.bytes
    }
}

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Kernel modules by file stem, kept alive for their functions.
    _modules: Vec<Arc<CudaModule>>,
    functions: HashMap<String, CudaFunction>,
    /// Scratch buffers of the products, by [`Slot`], grown as needed and reused (work on the one
    /// stream is ordered, so a buffer is free again for the next product).
    scratch: std::sync::Mutex<[Option<CudaSlice<u8>>; Slot::COUNT]>,
    /// ALiBi slopes by head count, uploaded once.
    slopes: std::sync::Mutex<HashMap<usize, CudaSlice<u8>>>,
    /// cuBLASLt, with its workspace (declared first: dropped before the workspace).
    blas: crate::gemm::Blas,
    _workspace: CudaSlice<u8>,
    caps: Caps,
    name: String,
    /// Bumped by every allocation and free (see [`crate::graphs`]).
    epoch: Epoch,
    /// Recorded decode steps.
    graphs: Graphs,
    /// Every product through the kernels whose per-row sums do not depend on the row count
    /// (`TURBINE_CUDA_PRODUCTS=invariant`, the default), or products of more than a few rows on
    /// cuBLASLt (`fast`: tensor cores, but a row's bits then depend on its batch).
    invariant: bool,
    /// Invariant products of f16/bf16 and 8-bit weights on this crate's tensor-core kernel
    /// (`cu/mma.cu`) and attention on tensor cores (`cu/flash.cu`): `TURBINE_CUDA_MMA=on`, the
    /// default; `off`: the gemv tiles and the CUDA-core attention kernels.
    mma: bool,
}

/// The CUDA backend on one device (cheap to clone: the clones share the device).
#[derive(Clone)]
pub struct Cuda {
    inner: Arc<Inner>,
}

fn backend_err(msg: impl Into<String>) -> Error {
    Error::Backend { backend: "cuda", msg: msg.into() }
}

fn driver_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| backend_err(format!("{what}: {e}"))
}

impl Cuda {
    /// Opens device `ordinal` and loads the kernels. Fails with a message saying what is
    /// missing (no driver library, no such device, no kernels) instead of panicking.
    pub fn new(ordinal: usize) -> Result<Cuda> {
        if !crate::driver_present() {
            return Err(backend_err("the CUDA driver library (libcuda.so) is not present on this machine"));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err("opening the device"))?;
        let name = ctx.name().map_err(driver_err("reading the device name"))?;
        let (major, minor) = ctx.compute_capability().map_err(driver_err("reading the compute capability"))?;
        let sm = major as u32 * 10 + minor as u32;
        if sm < 80 {
            return Err(backend_err(format!("{name} is sm_{sm}; the CUDA backend needs sm_80 (Ampere) or newer")));
        }
        let invariant = match std::env::var("TURBINE_CUDA_PRODUCTS").as_deref() {
            Err(_) | Ok("invariant") => true,
            Ok("fast") => false,
            Ok(other) => {
                return Err(backend_err(format!("TURBINE_CUDA_PRODUCTS={other:?}: use invariant or fast")));
            }
        };
        let mma = match std::env::var("TURBINE_CUDA_MMA").as_deref() {
            Err(_) | Ok("on") => true,
            Ok("off") => false,
            Ok(other) => return Err(backend_err(format!("TURBINE_CUDA_MMA={other:?}: use on or off"))),
        };
        let stream = ctx.default_stream();
        let mut modules = Vec::new();
        let mut functions = HashMap::new();
        for (stem, ptx) in load_ptx(sm)? {
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                .map_err(driver_err(&format!("loading the {stem} kernels")))?;
            for f in kernel_names(SOURCES.iter().find(|s| s.name == stem).map_or("", |s| s.src)) {
                let func = module.load_function(&f).map_err(driver_err(&format!("finding kernel {f}")))?;
                functions.insert(f, func);
            }
            modules.push(module);
        }
        // cuBLASLt's recommended workspace: 32 MiB on Hopper, 4 MiB before.
        let ws_bytes = if sm >= 90 { 32 << 20 } else { 4 << 20 };
        let workspace = stream.alloc_zeros::<u8>(ws_bytes).map_err(driver_err("allocating the cuBLASLt workspace"))?;
        let ws_addr = {
            use cudarc::driver::DevicePtr;
            let (p, _sync) = workspace.device_ptr(&stream);
            p
        };
        let blas = crate::gemm::Blas::new(ws_addr, ws_bytes)?;
        let caps =
            Caps { weight_dtypes: DType::WEIGHT_TYPES.to_vec(), act_dtype: DType::F32, sm: Some(sm), fp8: sm >= 89 };
        let scratch = std::sync::Mutex::new(Default::default());
        let slopes = std::sync::Mutex::new(HashMap::new());
        let inner = Inner {
            ctx,
            stream,
            _modules: modules,
            functions,
            scratch,
            slopes,
            blas,
            _workspace: workspace,
            caps,
            name,
            epoch: Epoch::default(),
            graphs: Graphs::new(),
            invariant,
            mma,
        };
        Ok(Cuda { inner: Arc::new(inner) })
    }

    /// Whether every product is batch invariant (see `TURBINE_CUDA_PRODUCTS` in the README).
    pub fn invariant_products(&self) -> bool {
        self.inner.invariant
    }

    /// Whether products of f16/bf16 weights run on tensor cores, batch invariant (`cu/mma.cu`:
    /// the input rounded to the weights' type, f32 accumulation): invariant products with
    /// `TURBINE_CUDA_MMA` on (the default).
    pub fn tensor_core_products(&self) -> bool {
        self.inner.invariant && self.inner.mma
    }

    /// Whether this crate's tensor-core kernels are on (`TURBINE_CUDA_MMA`, on by default): the
    /// invariant products of 16-bit and 8-bit weights, and attention.
    pub(crate) fn mma_enabled(&self) -> bool {
        self.inner.mma
    }

    /// Whether W8A8 products run on FP8 tensor cores, batch invariant (`mma_e4m3`): tensor-core
    /// products on a GPU with FP8 tensor cores (sm_89+).
    pub fn fp8_tensor_core_products(&self) -> bool {
        self.tensor_core_products() && self.inner.caps.fp8
    }

    /// The device's name.
    pub fn device_name(&self) -> &str {
        &self.inner.name
    }

    /// The stream every operation is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    /// The first `bytes` of scratch buffer `slot`, copied to the host (waits for the stream).
    pub(crate) fn read_slot(&self, slot: Slot, bytes: usize) -> Result<Vec<u8>> {
        let s = self.inner.scratch.lock().map_err(|_| backend_err("scratch buffers poisoned"))?;
        let buf = s[slot as usize].as_ref().ok_or_else(|| backend_err("reading an unused scratch buffer"))?;
        if buf.len() < bytes {
            return Err(backend_err(format!("reading {bytes} bytes of a {}-byte scratch buffer", buf.len())));
        }
        self.inner.stream.clone_dtoh(&buf.slice(..bytes)).map_err(driver_err("copying from the device"))
    }

    /// Copies `data` into scratch buffer `slot` (grown if needed) and returns its address.
    pub(crate) fn write_slot(&self, slot: Slot, data: &[u8]) -> Result<u64> {
        let p = self.slot(slot, data.len())?;
        let mut s = self.inner.scratch.lock().map_err(|_| backend_err("scratch buffers poisoned"))?;
        let buf = s[slot as usize].as_mut().ok_or_else(|| backend_err("scratch buffer missing"))?;
        let mut view = buf.slice_mut(..data.len());
        self.inner.stream.memcpy_htod(data, &mut view).map_err(driver_err("copying to the device"))?;
        Ok(p)
    }

    /// The device address of the ALiBi slopes of `heads` heads (f32), uploaded on first use.
    pub(crate) fn alibi_slopes(&self, heads: usize) -> Result<u64> {
        use cudarc::driver::DevicePtr;
        let mut map = self.inner.slopes.lock().map_err(|_| backend_err("ALiBi slopes poisoned"))?;
        let buf = match map.entry(heads) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let bytes: Vec<u8> = turbine_core::alibi_slopes(heads).iter().flat_map(|v| v.to_le_bytes()).collect();
                self.inner.epoch.bump();
                e.insert(self.inner.stream.clone_htod(&bytes).map_err(driver_err("copying ALiBi slopes"))?)
            }
        };
        let (p, _sync) = buf.device_ptr(&self.inner.stream);
        Ok(p)
    }

    /// The cuBLASLt handle (also for benchmarks of the bare products).
    pub fn blas(&self) -> &crate::gemm::Blas {
        &self.inner.blas
    }

    /// The device address of scratch buffer `slot`, at least `bytes` long (contents undefined).
    pub(crate) fn slot(&self, slot: Slot, bytes: usize) -> Result<u64> {
        use cudarc::driver::DevicePtr;
        let mut s = self.inner.scratch.lock().map_err(|_| backend_err("scratch buffers poisoned"))?;
        let cell = &mut s[slot as usize];
        if cell.as_ref().is_none_or(|b| b.len() < bytes) {
            // Grow by powers of two so that slowly growing batches do not reallocate every step.
            let size = bytes.max(1).next_power_of_two();
            *cell = Some(self.inner.stream.alloc_zeros::<u8>(size).map_err(driver_err("allocating scratch"))?);
            self.inner.epoch.bump();
        }
        let buf = cell.as_ref().ok_or_else(|| backend_err("scratch buffer missing"))?;
        let (p, _sync) = buf.device_ptr(&self.inner.stream);
        Ok(p)
    }

    /// A loaded kernel by its exported name (`norm_bf16`).
    pub fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.inner.functions.get(name).ok_or_else(|| backend_err(format!("no kernel named {name}")))
    }
}

/// The exported kernel names of a source: the `extern "C" __global__` functions its
/// instantiation macros produce, expanded for f32/f16/bf16 (and for the page kinds of attention).
pub fn kernel_names(src: &str) -> Vec<String> {
    let types = ["f32", "f16", "bf16"];
    let pages = ["same", "e4m3", "i8"];
    let mut names = Vec::new();
    for line in src.lines() {
        let Some(rest) = line.split("extern \"C\" __global__ void ").nth(1) else { continue };
        if !rest.contains("##N") {
            // A plain kernel: its name is what precedes the parameter list.
            names.extend(rest.split('(').next().map(str::to_string));
            continue;
        }
        let Some(stem) = rest.split("##N").next() else { continue };
        if rest.contains("##PN") {
            for t in types {
                for p in pages {
                    names.push(format!("{stem}{t}_{p}"));
                }
            }
        } else {
            names.extend(types.iter().map(|t| format!("{stem}{t}")));
        }
    }
    names
}

/// PTX of every kernel file for compute capability `sm`: from `TURBINE_CUDA_PTX` if set, else
/// compiled by NVRTC.
fn load_ptx(sm: u32) -> Result<Vec<(&'static str, String)>> {
    if let Some(dir) = std::env::var_os("TURBINE_CUDA_PTX") {
        let dir = PathBuf::from(dir);
        return SOURCES
            .iter()
            .map(|s| {
                let p = dir.join(format!("{}.ptx", s.name));
                std::fs::read_to_string(&p)
                    .map(|ptx| (s.name, ptx))
                    .map_err(|e| backend_err(format!("{}: {e} (TURBINE_CUDA_PTX)", p.display())))
            })
            .collect();
    }
    if !crate::nvrtc::nvrtc_present() {
        return Err(backend_err(
            "cannot compile the kernels: NVRTC (libnvrtc.so.13) is not on the library path; \
             set TURBINE_CUDA_PTX to a folder of PTX from `cargo xtask kernels`",
        ));
    }
    let arch: &'static str = match sm {
        90 => "compute_90a",
        89 => "compute_89",
        86 => "compute_86",
        _ => "compute_80",
    };
    let include: Vec<PathBuf> = std::env::var_os("TURBINE_CUDA_INCLUDE").map(PathBuf::from).into_iter().collect();
    SOURCES.iter().map(|s| Ok((s.name, crate::nvrtc::compile_ptx(s, arch, &include)?))).collect()
}

/// The products' scratch buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Slot {
    /// The f32 product before the epilogue.
    Acc,
    /// The input converted to 16 bits.
    Input16,
    /// The input's FP8 codes.
    Codes,
    /// The input's per-row FP8 scales.
    RowScales,
    /// Widened 8-bit weights.
    Widened,
    /// Samples: greedy ids and log-probabilities, or candidates and row sums.
    Samples,
    /// Per-row sampling parameters sent to the device.
    SampleParams,
    /// A gated product's whole `[m, 2f]` output before `act(gate) * up`, where no kernel fuses it.
    Gated,
    /// A step's inputs, packed for one host-to-device copy (`Backend::write_many`).
    Inputs,
    /// The K splits of a tensor-core product before `sum_splits` adds them.
    Splits,
    /// Decode attention's per-split partial outputs before `flash_mma_merge` folds them.
    AttnSplits,
}

impl Slot {
    const COUNT: usize = 11;
}

/// Checks that `host` fits `dst` (same dtype, within its capacity); returns its byte length.
fn check_write(dst: &Tensor<Cuda>, host: &HostTensor<'_>) -> Result<usize> {
    if dst.dtype() != host.dtype() {
        return Err(Error::invalid("write", format!("{} data into a {} tensor", host.dtype(), dst.dtype())));
    }
    let n = host.shape().numel();
    if n > dst.capacity() {
        return Err(Error::invalid("write", format!("{n} values into a tensor of capacity {}", dst.capacity())));
    }
    Ok(host.bytes().len())
}

/// `host` as f32 values.
fn widen(host: &HostTensor<'_>) -> Result<HostTensor<'static>> {
    let mut v = vec![0f32; host.shape().numel()];
    turbine_core::host::decode_f32(host.dtype(), host.bytes(), &mut v)?;
    HostTensor::from_f32(host.shape().clone(), &v)
}

impl Cuda {
    fn upload_raw(&self, host: &HostTensor<'_>) -> Result<Tensor<Cuda>> {
        let bytes = if host.bytes().is_empty() {
            self.inner.stream.alloc_zeros::<u8>(1).map_err(driver_err("allocating"))?
        } else {
            self.inner.stream.clone_htod(host.bytes()).map_err(driver_err("copying to the device"))?
        };
        let n = host.shape().numel();
        self.inner.epoch.bump();
        Ok(Tensor::from_parts(
            CudaBuf { bytes, epoch: self.inner.epoch.clone() },
            host.shape().clone(),
            host.dtype(),
            n,
        ))
    }
}

/// Bytes of `numel` values of `dtype`.
fn byte_len(dtype: DType, numel: usize) -> Result<usize> {
    dtype.bytes_for(numel).ok_or_else(|| backend_err(format!("{numel} values of {dtype} do not fill whole blocks")))
}

impl Backend for Cuda {
    type Buffer = CudaBuf;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn caps(&self) -> &Caps {
        &self.inner.caps
    }

    fn alloc(&self, shape: &Shape, dtype: DType) -> Result<Tensor<Self>> {
        let n = shape.numel();
        let bytes =
            self.inner.stream.alloc_zeros::<u8>(byte_len(dtype, n)?.max(1)).map_err(driver_err("allocating"))?;
        self.inner.epoch.bump();
        Ok(Tensor::from_parts(CudaBuf { bytes, epoch: self.inner.epoch.clone() }, shape.clone(), dtype, n))
    }

    /// f32, u32 and 8-bit tensors go up as they are; f16, bf16 and GGUF blocks are widened to
    /// f32 on the host first (as kernels-ref does), since the element-wise kernels read f32.
    fn upload(&self, host: &HostTensor<'_>) -> Result<Tensor<Self>> {
        match host.dtype() {
            DType::F32 | DType::U32 | DType::I8 | DType::F8E4M3 => self.upload_raw(host),
            _ => self.upload_raw(&widen(host)?),
        }
    }

    /// f32, f16, bf16, FP8 E4M3 and INT8 weights stay as stored (the products read them);
    /// GGUF blocks are widened to f32 exactly (no block kernels on the GPU yet).
    fn upload_weight(&self, host: &HostTensor<'_>) -> Result<Tensor<Self>> {
        if self.inner.caps.weight_dtypes.contains(&host.dtype()) {
            self.upload_raw(host)
        } else {
            self.upload_raw(&widen(host)?)
        }
    }

    fn write(&self, dst: &mut Tensor<Self>, host: &HostTensor<'_>) -> Result<()> {
        let len = check_write(dst, host)?;
        let stream = self.inner.stream.clone();
        let mut view = dst.buf_mut().bytes.slice_mut(..len);
        stream.memcpy_htod(host.bytes(), &mut view).map_err(driver_err("copying to the device"))?;
        dst.reshape(host.shape().clone())
    }

    /// One host-to-device copy of every input (each at a 256-byte aligned offset of a staging
    /// buffer), then device-to-device copies into the tensors, queued on the stream: a step's
    /// inputs cost one transfer instead of six.
    fn write_many(&self, writes: &mut [(&mut Tensor<Self>, HostTensor<'_>)]) -> Result<()> {
        use cudarc::driver::DevicePtr;
        let mut packed = Vec::new();
        let mut offsets = Vec::with_capacity(writes.len());
        for (dst, host) in writes.iter() {
            check_write(dst, host)?;
            packed.resize(packed.len().next_multiple_of(256), 0u8);
            offsets.push(packed.len() as u64);
            packed.extend_from_slice(host.bytes());
        }
        let base = if packed.is_empty() { 0 } else { self.write_slot(Slot::Inputs, &packed)? };
        let stream = &self.inner.stream;
        for ((dst, host), off) in writes.iter_mut().zip(offsets) {
            let len = host.bytes().len();
            if len > 0 {
                let (to, _sync) = dst.buf().bytes.device_ptr(stream);
                // SAFETY: `to` holds at least `len` bytes (checked above) and the staging slot
                // `off + len`; both stay allocated while the stream runs the copy (the slot is
                // only regrown by a later host call, and freeing waits for the stream).
                unsafe { cudarc::driver::result::memcpy_dtod_async(to, base + off, len, stream.cu_stream()) }
                    .map_err(driver_err("copying on the device"))?;
            }
            dst.reshape(host.shape().clone())?;
        }
        Ok(())
    }

    fn download(&self, t: &Tensor<Self>) -> Result<HostTensor<'static>> {
        let len = byte_len(t.dtype(), t.shape().numel())?;
        let view = t.buf().bytes.slice(..len);
        let bytes = self.inner.stream.clone_dtoh(&view).map_err(driver_err("copying from the device"))?;
        HostTensor::new(t.shape().clone(), t.dtype(), bytes)
    }

    fn sync(&self) -> Result<()> {
        self.inner.stream.synchronize().map_err(driver_err("waiting for the device"))
    }

    fn graph_begin(&self, key: u64) -> Result<GraphStep> {
        self.inner.graphs.begin(&self.inner.stream, &self.inner.epoch, key)
    }

    fn graph_end(&self, key: u64, ok: bool) -> Result<bool> {
        self.inner.graphs.end(&self.inner.stream, &self.inner.epoch, key, ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_follow_the_instantiation_macros() {
        let norm = SOURCES.iter().find(|s| s.name == "norm").unwrap();
        let names = kernel_names(norm.src);
        assert!(names.contains(&"norm_bf16".to_string()) && names.contains(&"head_norm_f32".to_string()), "{names:?}");
        let attn = SOURCES.iter().find(|s| s.name == "attention").unwrap();
        let names = kernel_names(attn.src);
        // kv_store, rope_kv_store, paged_attention and flash_prefill × three types × three page
        // kinds.
        assert_eq!(names.len(), 36, "{names:?}");
        assert!(names.contains(&"rope_kv_store_f16_same".to_string()));
        assert!(names.contains(&"paged_attention_bf16_e4m3".to_string()));
        assert!(names.contains(&"flash_prefill_f32_i8".to_string()));
        // Every source exports something.
        assert!(SOURCES.iter().all(|s| !kernel_names(s.src).is_empty()));
    }

    /// Runs where there is a GPU; elsewhere it checks that opening the backend fails with a
    /// message instead of panicking.
    #[test]
    fn round_trip_or_a_clear_error() {
        match Cuda::new(0) {
            Ok(cuda) => {
                let host = HostTensor::from_f32([2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
                let t = cuda.upload(&host).unwrap();
                assert_eq!(cuda.download(&t).unwrap().to_f32().unwrap(), host.to_f32().unwrap());
                let mut z = cuda.alloc(&[4, 3].into(), DType::F32).unwrap();
                cuda.write(&mut z, &host).unwrap();
                assert_eq!(z.shape().dims(), &[2, 3]);
                assert_eq!(cuda.download(&z).unwrap().to_f32().unwrap(), host.to_f32().unwrap());
            }
            Err(e) => {
                println!("skipped: no usable CUDA device here ({e})");
                assert!(e.to_string().contains("cuda"), "{e}");
            }
        }
    }
}
