//! `out[m, n] = x[m, k] · w[n, k]ᵀ` through cuBLASLt, with the input and weight types free
//! (f32, f16, bf16 or FP8 E4M3) and an f32 result.
//!
//! cuBLASLt is column-major: a row-major `[r, c]` buffer is a column-major `c × r` matrix. So the
//! product is computed as `outᵀ (n × m) = W (n × k, from the row-major weight read transposed) ·
//! xᵀ (k × m)`: A is the weight (`k × n`, ld `k`, transposed), B the input (`k × m`, ld `k`), D
//! the output (`n × m`, ld `n`). This "TN" form is also the one Hopper's FP8 products require.

use std::ffi::c_void;
use std::mem::size_of;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use turbine_core::{DType, Error, Result};

/// A cuBLASLt handle and its workspace.
pub struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: u64,
    workspace_bytes: usize,
}

// SAFETY: the handle is only used with the backend's one stream, from one thread at a time
// (the backend's operations take `&self` but are queued in order on that stream).
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

fn err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Backend { backend: "cuda", msg: format!("cuBLASLt {what}: {e:?}") }
}

fn data_type(d: DType) -> Result<sys::cudaDataType> {
    Ok(match d {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F8E4M3 => sys::cudaDataType::CUDA_R_8F_E4M3,
        other => return Err(Error::Unsupported { op: "matmul", dtype: other, backend: "cuda" }),
    })
}

/// Sets attribute `attr` of matmul descriptor `desc` to `value` (`what` names it in an error).
///
/// # Safety
/// `desc` must be live, and `T` the type cuBLASLt documents for `attr`.
unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
    what: &str,
) -> Result<()> {
    // SAFETY: the caller's promise; `value` is readable for size_of::<T>() bytes.
    unsafe { lt::set_matmul_desc_attribute(desc, attr, (value as *const T).cast::<c_void>(), size_of::<T>()) }
        .map_err(|e| err(what, e))
}

/// Destroys what it holds when dropped.
struct Layouts(Vec<sys::cublasLtMatrixLayout_t>);

impl Drop for Layouts {
    fn drop(&mut self) {
        for &l in &self.0 {
            // SAFETY: each layout was created once and is destroyed once.
            let _ = unsafe { lt::destroy_matrix_layout(l) };
        }
    }
}

impl Blas {
    /// A handle with a workspace of `workspace_bytes` at device address `workspace` (owned by
    /// the caller, alive as long as this).
    pub fn new(workspace: u64, workspace_bytes: usize) -> Result<Blas> {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Backend {
                backend: "cuda",
                msg: "cuBLASLt (libcublasLt.so.13) cannot be loaded".into(),
            });
        }
        let handle = lt::create_handle().map_err(|e| err("create", e))?;
        Ok(Blas { handle, workspace, workspace_bytes })
    }

    /// `d[m, n] (f32) = a · bᵀ` for row-major `x` `[m, k]` of type `xt` at `x` and `w` `[n, k]` of
    /// type `wt` at `w`, queued on `stream`, accumulated in f32 (FP8 products too: cuBLASLt
    /// promotes the tensor cores' partial sums to f32 regularly).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        stream: sys::cudaStream_t,
        x: u64,
        xt: DType,
        w: u64,
        wt: DType,
        d: u64,
        dims: (usize, usize, usize),
    ) -> Result<()> {
        self.matmul_with(stream, x, xt, w, wt, d, dims, false)
    }

    /// [`Blas::matmul`], with cuBLASLt's FP8 fast accumulation when `fp8_fast_accum` (FP8 inputs
    /// only: the tensor cores' partial sums are never promoted to f32, faster on Ada and Hopper
    /// and less accurate; the backend does not use it, `gpu_bench` measures it).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_with(
        &self,
        stream: sys::cudaStream_t,
        x: u64,
        xt: DType,
        w: u64,
        wt: DType,
        d: u64,
        (m, n, k): (usize, usize, usize),
        fp8_fast_accum: bool,
    ) -> Result<()> {
        let (m, n, k) = (m as u64, n as u64, k as u64);
        let fp8 = wt == DType::F8E4M3;
        if fp8 != (xt == DType::F8E4M3) || (!fp8 && xt != wt) {
            return Err(Error::invalid("matmul", format!("cuBLASLt product of {xt} inputs with {wt} weights")));
        }
        let a = lt::create_matrix_layout(data_type(wt)?, k, n, k as i64).map_err(|e| err("layout", e))?;
        let mut layouts = Layouts(vec![a]);
        let b = lt::create_matrix_layout(data_type(xt)?, k, m, k as i64).map_err(|e| err("layout", e))?;
        layouts.0.push(b);
        let c =
            lt::create_matrix_layout(sys::cudaDataType::CUDA_R_32F, n, m, n as i64).map_err(|e| err("layout", e))?;
        layouts.0.push(c);
        // f32 accumulation for every type (f32 inputs: full f32, no TF32).
        let compute = sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let desc = lt::create_matmul_desc(compute, sys::cudaDataType::CUDA_R_32F).map_err(|e| err("descriptor", e))?;
        let result = (|| {
            use sys::cublasLtMatmulDescAttributes_t as Attr;
            // SAFETY (both): `desc` is live; each value has the type cuBLASLt documents for its
            // attribute (TRANSA: i32; FAST_ACCUM: int8_t).
            unsafe { set_desc(desc, Attr::CUBLASLT_MATMUL_DESC_TRANSA, &1i32, "transpose")? };
            if fp8 && fp8_fast_accum {
                unsafe { set_desc(desc, Attr::CUBLASLT_MATMUL_DESC_FAST_ACCUM, &1i8, "fast accumulation")? };
            }
            let pref = lt::create_matmul_pref().map_err(|e| err("preference", e))?;
            let bytes = self.workspace_bytes as u64;
            // SAFETY: `pref` is live; the attribute is a u64.
            let algo = unsafe {
                let set = lt::set_matmul_pref_attribute(
                    pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    (&bytes) as *const u64 as *const c_void,
                    size_of::<u64>(),
                );
                let algo = set.and_then(|_| lt::get_matmul_algo_heuristic(self.handle, desc, a, b, c, c, pref));
                let _ = lt::destroy_matmul_pref(pref);
                algo.map_err(|e| err(&format!("no algorithm for {m}x{n}x{k} {xt}·{wt}"), e))?
            };
            let (alpha, beta) = (1f32, 0f32);
            // SAFETY: the pointers are live device buffers of the sizes the layouts describe
            // (checked by the caller); the workspace outlives the call.
            unsafe {
                lt::matmul(
                    self.handle,
                    desc,
                    (&alpha) as *const f32 as *const c_void,
                    (&beta) as *const f32 as *const c_void,
                    w as *const c_void,
                    a,
                    x as *const c_void,
                    b,
                    d as *const c_void,
                    c,
                    d as *mut c_void,
                    c,
                    &algo.algo,
                    self.workspace as *mut c_void,
                    self.workspace_bytes,
                    stream as _,
                )
                .map_err(|e| err("matmul", e))
            }
        })();
        // SAFETY: created above, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(desc) };
        result
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: the handle was created in `new` and is destroyed once.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}
