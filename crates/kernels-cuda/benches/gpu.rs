//! GPU rooflines and products: device-to-device copy bandwidth, and cuBLASLt TFLOP/s for bf16,
//! f16 and FP8 E4M3 (f32 accumulation, as the backend runs it, and fast accumulation) at
//! M = 16, 256, 4096 (N = K = 4096, an 8B model's square projection), on random operands; and
//! the backend's paged attention at a Llama 3.2 1B layer's shape (32 query heads, 8 KV heads of
//! 64, f32 cache in blocks of 16): a 2,048-token prefill, and a decode step of 64 sequences at
//! context 1,024 (`bench/gpu/anchors.py` times PyTorch's `scaled_dot_product_attention` on the
//! same shapes).
//! `cargo bench -p turbine-kernels-cuda --bench gpu [-- --json] [--quick]` (`--quick`: N = K = 256
//! and a 16 MiB copy, to check the bench itself); without a GPU it says why.

use std::time::Instant;

use cudarc::driver::{CudaSlice, DevicePtr};
use turbine_core::{AttnMeta, AttnParams, Backend, DType, HostTensor, KvPages, Ops, QkvLayout, Tensor};
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

/// Seconds of one paged attention call: one `prefill`-token sequence, or `batch` one-token
/// decode rows at context `ctx` each, over an f32 cache of 1B-layer shape already filled.
fn attention_seconds(cuda: &Cuda, prefill: Option<usize>, batch: usize, ctx: usize) -> f64 {
    let l = QkvLayout { q_heads: 32, kv_heads: 8, head_dim: 64 };
    let bs = 16;
    let (seqs, len) = match prefill {
        Some(t) => (1, t),
        None => (batch, ctx),
    };
    let per_seq = len.div_ceil(bs);
    let blocks = seqs * per_seq;
    let up_u32 = |shape: &[usize], v: &[u32]| cuda.upload(&HostTensor::from_u32(shape.to_vec(), v).unwrap()).unwrap();
    let random = |rows: usize, seed: u64| {
        let mut rng = turbine_core::sampling::Rng::new(seed);
        let v: Vec<f32> = (0..rows * l.width()).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
        cuda.upload(&HostTensor::from_f32([rows, l.width()], &v).unwrap()).unwrap()
    };
    let shape = [blocks, l.kv_heads, bs, l.head_dim];
    let mut kv = KvPages {
        k: cuda.alloc(&shape.into(), DType::F32).unwrap(),
        v: cuda.alloc(&shape.into(), DType::F32).unwrap(),
        block_size: bs,
        k_shift: None,
        k_sink: None,
        k_scales: None,
        v_scales: None,
    };
    let tables: Vec<u32> = (0..blocks as u32).collect();
    let slot = |s: usize, pos: usize| (s * per_seq * bs + pos) as u32;
    // Fill every sequence's cache: all its positions in one store.
    let fill = AttnMeta {
        seqs: up_u32(
            &[seqs, 3],
            &(0..seqs).flat_map(|s| [(s * len) as u32, len as u32, len as u32]).collect::<Vec<_>>(),
        ),
        block_tables: up_u32(&[seqs, per_seq], &tables),
        positions: up_u32(&[seqs * len], &(0..seqs * len).map(|i| (i % len) as u32).collect::<Vec<_>>()),
        slots: up_u32(&[seqs * len], &(0..seqs * len).map(|i| slot(i / len, i % len)).collect::<Vec<_>>()),
    };
    let all = random(seqs * len, 7);
    cuda.kv_store(&all, l, &fill, &mut kv).unwrap();
    let p = AttnParams { scale: 0.125, window: None, alibi: None };
    let (q, meta): (Tensor<Cuda>, AttnMeta<Cuda>) = if prefill.is_some() {
        (all, fill)
    } else {
        // Each sequence's last position again, as the step that stored it would attend.
        let m = AttnMeta {
            seqs: up_u32(&[seqs, 3], &(0..seqs).flat_map(|s| [s as u32, 1, len as u32]).collect::<Vec<_>>()),
            block_tables: up_u32(&[seqs, per_seq], &tables),
            positions: up_u32(&[seqs], &vec![(len - 1) as u32; seqs]),
            slots: up_u32(&[seqs], &(0..seqs).map(|s| slot(s, len - 1)).collect::<Vec<_>>()),
        };
        (random(seqs, 8), m)
    };
    let mut out = cuda.alloc(&[q.rows(), l.q_heads * l.head_dim].into(), DType::F32).unwrap();
    time(cuda, || cuda.paged_attention(&q, l, &kv, &meta, &p, &mut out).expect("attention"))
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
    let (prefill, batch, ctx) = if quick { (64, 4, 64) } else { (2048, 64, 1024) };
    let prefill_ms = attention_seconds(&cuda, Some(prefill), 0, 0) * 1e3;
    let decode_us = attention_seconds(&cuda, None, batch, ctx) * 1e6;
    let attention = format!(
        "{{\"q_heads\":32,\"kv_heads\":8,\"head_dim\":64,\"prefill_tokens\":{prefill},\"prefill_ms\":{prefill_ms:.3},\
         \"decode_batch\":{batch},\"decode_context\":{ctx},\"decode_us\":{decode_us:.1}}}"
    );
    if json {
        let gemm: Vec<String> = rows
            .iter()
            .map(|(d, m, t, us)| {
                format!("{{\"dtype\":\"{d}\",\"m\":{m},\"n\":{n},\"k\":{k},\"tflops\":{t:.1},\"us\":{us:.1}}}")
            })
            .collect();
        println!(
            "{{\"device\":\"{}\",\"copy_gb_s\":{copy_gbs:.0},\"gemm\":[{}],\"attention\":{attention}}}",
            cuda.device_name(),
            gemm.join(",")
        );
    } else {
        println!("{}: device-to-device copy {copy_gbs:.0} GB/s", cuda.device_name());
        println!("| dtype | M | N = K | TFLOP/s | µs |");
        println!("|---|---:|---:|---:|---:|");
        for (d, m, t, us) in &rows {
            println!("| {d} | {m} | {n} | {t:.1} | {us:.1} |");
        }
        println!(
            "paged attention (32/8 heads of 64, f32 cache): prefill of {prefill} tokens {prefill_ms:.3} ms; \
             decode of {batch} rows at context {ctx} {decode_us:.1} µs"
        );
    }
}
