//! Compiling the kernels to PTX with NVRTC, loaded dynamically (`libnvrtc.so.13`): no CUDA
//! toolkit is needed to build the crate, only where kernels are compiled.

use std::path::PathBuf;

use turbine_core::{Error, Result};

use crate::sources::KernelSource;

/// Virtual architectures the kernels are compiled for, with the real one ptxas assembles each for.
pub const ARCHS: &[(&str, &str)] = &[("compute_80", "sm_80"), ("compute_89", "sm_89"), ("compute_90a", "sm_90a")];

/// Whether NVRTC can be loaded in this process.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library; no NVRTC call is made.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles `src` to PTX for `arch` (e.g. `compute_90a`), with the CUDA headers
/// (`cuda_fp16.h`, `cuda_bf16.h`, `cuda_fp8.h`) found under `include`.
pub fn compile_ptx(src: &KernelSource, arch: &'static str, include: &[PathBuf]) -> Result<String> {
    compile_ptx_with(src, arch, include, &[])
}

/// [`compile_ptx`] with preprocessor definitions (`NAME=VALUE`): the tuning knobs the kernel
/// files leave open with `#ifndef` (`GEMV_UNROLL`, `ATTN_KEYS`), for variants timed side by side.
pub fn compile_ptx_with(
    src: &KernelSource,
    arch: &'static str,
    include: &[PathBuf],
    defines: &[&str],
) -> Result<String> {
    let err = |msg: String| Error::Backend { backend: "cuda", msg };
    if !nvrtc_present() {
        return Err(err("NVRTC (libnvrtc.so.13) cannot be loaded; put it on LD_LIBRARY_PATH".into()));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        include_paths: include.iter().map(|p| p.display().to_string()).collect(),
        // No contraction of `a * b + c` into a fused multiply-add: the kernels say where they
        // fuse (`__fmaf_rn`), so their arithmetic is the same in every kernel that shares a
        // formula (the decode and prefill attention kernels, for batch invariance), the same as
        // the CPU backend's where they follow it, and the same as the emulator's (which compiles
        // them with -ffp-contract=off). NVRTC contracts by default.
        fmad: Some(false),
        options: ["--std=c++17".to_string(), "-default-device".to_string()]
            .into_iter()
            .chain(defines.iter().map(|d| format!("-D{d}")))
            .collect(),
        name: Some(format!("{}.cu", src.name)),
        ..Default::default()
    };
    match cudarc::nvrtc::compile_ptx_with_opts(src.expanded(), opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => {
            Err(err(format!("{}.cu for {arch}:\n{}", src.name, log.to_string_lossy())))
        }
        Err(e) => Err(err(format!("{}.cu for {arch}: {e:?}", src.name))),
    }
}
