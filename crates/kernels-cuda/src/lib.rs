//! The CUDA backend. So far it probes the machine (the driver library is loaded dynamically, so
//! the crate builds and runs where no CUDA is installed) and holds the kernels' CUDA C sources
//! (`cu/`) with their NVRTC compilation (`cargo xtask kernels` compile-checks them for sm_80,
//! sm_89 and sm_90a), the device layer ([`Cuda`]: memory and kernel modules behind `Backend`) and
//! `Ops` over the kernels and cuBLASLt; `--backend cuda` uses it. Nothing here has run on a GPU
//! yet: it is compile-checked, and runs on the CPU under the emulator in `emu/` (`cargo xtask
//! emu`: the kernels as C++ on fibers, stand-ins for the driver and cuBLASLt), where the op,
//! golden, engine and batch-invariance suites pass.
#![warn(missing_docs)]

pub mod device;
mod flash;
pub mod gemm;
mod graphs;
mod kernels;
pub mod nvrtc;
pub mod ops;
mod product;
pub mod sources;

pub use device::{Cuda, CudaBuf};

use turbine_core::{Error, Result};

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device name as the driver reports it.
    pub name: String,
    /// Compute capability as `major * 10 + minor`.
    pub sm: u32,
}

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library; no CUDA call is made.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Opens device `ordinal` and reads its name and compute capability, or explains why not.
pub fn probe(ordinal: usize) -> Result<DeviceInfo> {
    if !driver_present() {
        return Err(Error::Backend { backend: "cuda", msg: "the CUDA driver library (libcuda) is not present".into() });
    }
    let err = |e: cudarc::driver::DriverError| Error::Backend { backend: "cuda", msg: e.to_string() };
    let ctx = cudarc::driver::CudaContext::new(ordinal).map_err(err)?;
    let name = ctx.name().map_err(err)?;
    let (major, minor) = ctx.compute_capability().map_err(err)?;
    Ok(DeviceInfo { name, sm: major as u32 * 10 + minor as u32 })
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_never_panics() {
        match super::probe(0) {
            Ok(info) => assert!(info.sm >= 50, "implausible compute capability {}", info.sm),
            Err(e) => {
                println!("no CUDA device here: {e}");
                assert!(!e.to_string().is_empty());
            }
        }
    }
}
