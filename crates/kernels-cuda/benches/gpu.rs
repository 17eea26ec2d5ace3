//! GPU rooflines and products: device-to-device copy bandwidth, and cuBLASLt TFLOP/s for bf16,
//! f16 and FP8 E4M3 (f32 accumulation, as the backend runs it, and fast accumulation) at
//! M = 16, 256, 4096 (N = K = 4096, an 8B model's square projection), on random operands.
//! `cargo bench -p turbine-kernels-cuda --bench gpu [-- --json] [--quick]` (`--quick`: N = K = 256
//! and a 16 MiB copy, to check the bench itself); without a GPU it says why.

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

/// `count` values of `dtype` drawn uniformly from [-1, 1), as the bytes of that type.
fn random_bytes(dtype: DType, count: usize, seed: u64) -> Vec<u8> {
    let mut rng = turbine_core::sampling::Rng::new(seed);
    let mut out = Vec::with_capacity(count * 2);
    for _ in 0..count {
        let v = (rng.next_f64() * 2.0 - 1.0) as f32;
        match dtype {
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            // E4M3 codes of magnitude below 1 (exponent field < 7), either sign: never NaN.
            _ => out.push(((rng.next_f64() * 56.0) as u8) | if v < 0.0 { 0x80 } else { 0 }),
        }
    }
    out
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
    let bytes = if std::env::args().any(|a| a == "--quick") { 1usize << 24 } else { 1 << 30 };
    let src = stream.alloc_zeros::<u8>(bytes).expect("alloc");
    let mut dst = stream.alloc_zeros::<u8>(bytes).expect("alloc");
    let s = time(&cuda, || stream.memcpy_dtod(&src, &mut dst).expect("copy"));
    let copy_gbs = 2.0 * bytes as f64 / s / 1e9;
    drop((src, dst));

    let blas = cuda.blas();
    // `--quick`: small products, to check the bench itself (e.g. on the emulator).
    let quick = std::env::args().any(|a| a == "--quick");
    let (n, k, ms) = if quick { (256usize, 256usize, vec![16usize, 64]) } else { (4096, 4096, vec![16, 256, 4096]) };
    let mut rows = Vec::new();
    // (label, type, FP8 fast accumulation): the backend's FP8 products accumulate in f32; the
    // fast-accumulation row is what that mode would give.
    let cases = [
        ("bf16", DType::BF16, false),
        ("f16", DType::F16, false),
        ("f8e4m3", DType::F8E4M3, false),
        ("f8e4m3-fast-accum", DType::F8E4M3, true),
    ];
    for (label, dtype, fast_accum) in cases {
        if dtype == DType::F8E4M3 && !turbine_core::Backend::caps(&cuda).fp8 {
            continue;
        }
        // Random operands: the tensor cores draw less power, and run faster, on zeros.
        let w = stream.clone_htod(&random_bytes(dtype, n * k, 1)).expect("upload");
        for &m in &ms {
            let x = stream.clone_htod(&random_bytes(dtype, m * k, 2)).expect("upload");
            let d = stream.alloc_zeros::<u8>(m * n * 4).expect("alloc");
            let (xp, wp, dp) = (addr(&cuda, &x), addr(&cuda, &w), addr(&cuda, &d));
            let raw = cuda.stream().cu_stream() as _;
            let product = || blas.matmul_with(raw, xp, dtype, wp, dtype, dp, (m, n, k), fast_accum);
            // A configuration cuBLASLt refuses is reported and left out; the others still run.
            if let Err(e) = product() {
                eprintln!("gpu bench: {label} at M = {m} left out: {e}");
                continue;
            }
            let s = time(&cuda, || product().expect("matmul"));
            let tflops = 2.0 * (m * n * k) as f64 / s / 1e12;
            rows.push((label, m, tflops, s * 1e6));
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
