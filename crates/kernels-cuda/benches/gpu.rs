//! GPU rooflines and products: device-to-device copy bandwidth, and cuBLASLt TFLOP/s for bf16,
//! f16 and FP8 E4M3 at M = 16, 256, 4096 (N = K = 4096, an 8B model's square projection).
//! `cargo bench -p turbine-kernels-cuda --bench gpu [-- --json]`; without a GPU it says why.

use std::time::Instant;

use cudarc::driver::{CudaSlice, DevicePtr};
use turbine_core::DType;
use turbine_kernels_cuda::Cuda;

fn addr(cuda: &Cuda, s: &CudaSlice<u8>) -> u64 {
    let (p, _sync) = s.device_ptr(cuda.stream());
    p
}

/// Seconds per call of `f`, after a warm-up, averaged over enough calls to take ~0.5 s.
fn time(cuda: &Cuda, mut f: impl FnMut()) -> f64 {
    use turbine_core::Backend;
    f();
    cuda.sync().expect("sync");
    let t0 = Instant::now();
    let mut n = 0u32;
    while t0.elapsed().as_secs_f64() < 0.5 || n < 3 {
        f();
        n += 1;
        if n % 8 == 0 {
            cuda.sync().expect("sync");
        }
    }
    cuda.sync().expect("sync");
    t0.elapsed().as_secs_f64() / f64::from(n)
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let cuda = match Cuda::new(0) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gpu bench: no usable GPU here ({e})");
            // gpu-check sets this: there, no GPU is a failure.
            if std::env::var_os("TURBINE_REQUIRE_GPU").is_some() {
                std::process::exit(1);
            }
            return;
        }
    };
    let stream = cuda.stream().clone();
    // Copy bandwidth: 1 GiB, read and written (2 GiB moved per copy).
    let bytes = 1usize << 30;
    let src = stream.alloc_zeros::<u8>(bytes).expect("alloc");
    let mut dst = stream.alloc_zeros::<u8>(bytes).expect("alloc");
    let s = time(&cuda, || stream.memcpy_dtod(&src, &mut dst).expect("copy"));
    let copy_gbs = 2.0 * bytes as f64 / s / 1e9;
    drop((src, dst));

    let blas = cuda.blas();
    let (n, k) = (4096usize, 4096usize);
    let mut rows = Vec::new();
    for dtype in [DType::BF16, DType::F16, DType::F8E4M3] {
        if dtype == DType::F8E4M3 && !turbine_core::Backend::caps(&cuda).fp8 {
            continue;
        }
        let el = if dtype == DType::F8E4M3 { 1 } else { 2 };
        for m in [16usize, 256, 4096] {
            let x = stream.alloc_zeros::<u8>(m * k * el).expect("alloc");
            let w = stream.alloc_zeros::<u8>(n * k * el).expect("alloc");
            let d = stream.alloc_zeros::<u8>(m * n * 4).expect("alloc");
            let (xp, wp, dp) = (addr(&cuda, &x), addr(&cuda, &w), addr(&cuda, &d));
            let raw = cuda.stream().cu_stream() as _;
            let s = time(&cuda, || blas.matmul(raw, xp, dtype, wp, dtype, dp, (m, n, k)).expect("matmul"));
            let tflops = 2.0 * (m * n * k) as f64 / s / 1e12;
            rows.push((dtype, m, tflops, s * 1e6));
        }
    }
    if json {
        let gemm: Vec<String> = rows
            .iter()
            .map(|(d, m, t, us)| {
                format!("{{\"dtype\":\"{d}\",\"m\":{m},\"n\":{n},\"k\":{k},\"tflops\":{t:.1},\"us\":{us:.1}}}")
            })
            .collect();
        println!("{{\"device\":\"{}\",\"copy_gb_s\":{copy_gbs:.0},\"gemm\":[{}]}}", cuda.device_name(), gemm.join(","));
    } else {
        println!("{}: device-to-device copy {copy_gbs:.0} GB/s", cuda.device_name());
        println!("| dtype | M | N = K | TFLOP/s | µs |");
        println!("|---|---:|---:|---:|---:|");
        for (d, m, t, us) in &rows {
            println!("| {d} | {m} | {n} | {t:.1} | {us:.1} |");
        }
    }
}
