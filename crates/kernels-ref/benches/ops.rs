//! `cargo bench -p turbine-kernels-ref`: timings of the CPU kernels at SmolLM2-135M shapes
//! (hidden 576, 9 query / 3 kv heads of 64, MLP 1536, vocabulary 49152). Prints a table; no
//! assertions (speed targets live in benchmarks, not tests).

use std::time::Instant;

use turbine_core::{
    AttnMeta, AttnParams, Backend, DType, Epilogue, HostTensor, KvPages, Ops, QkvLayout, Shape, Tensor,
};
use turbine_kernels_ref::Cpu;

fn f32t(b: &Cpu, shape: &[usize], seed: u64) -> Tensor<Cpu> {
    let mut rng = turbine_core::sampling::Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.next_f64() - 0.5) as f32).collect();
    b.upload(&HostTensor::from_f32(shape, &v).unwrap()).unwrap()
}

fn u32t(b: &Cpu, shape: &[usize], v: &[u32]) -> Tensor<Cpu> {
    b.upload(&HostTensor::from_u32(shape, v).unwrap()).unwrap()
}

/// Best time of `reps` runs of `f`, in microseconds.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .fold(f64::INFINITY, f64::min)
}

fn q4_1(b: &Cpu, n: usize, k: usize) -> Tensor<Cpu> {
    let mut rng = turbine_core::sampling::Rng::new(7);
    let bytes: Vec<u8> = (0..DType::Q4_1.bytes_for(n * k).unwrap())
        .map(|i| if i % 20 == 1 || i % 20 == 3 { 0x2c } else { rng.next_u64() as u8 })
        .collect();
    b.upload(&HostTensor::new([n, k], DType::Q4_1, bytes).unwrap()).unwrap()
}

fn main() {
    let b = Cpu::new();
    println!("CPU kernels ({}), best of 20, microseconds", b.simd());
    println!("| op | shape | us |");
    println!("|---|---|---:|");
    for (m, k, n) in [(1, 576, 1536), (1, 576, 3072), (1, 1536, 576), (64, 576, 3072)] {
        let x = f32t(&b, &[m, k], 1);
        let w = q4_1(&b, n, k);
        let mut out = b.alloc(&Shape::from([m, n]), DType::F32).unwrap();
        let us = time(20, || b.matmul(&x, &w, Epilogue::none(), &mut out).unwrap());
        println!("| matmul q4_1 | m={m} k={k} n={n} | {us:.1} |");
    }
    let l = QkvLayout { q_heads: 9, kv_heads: 3, head_dim: 64 };
    let bs = 16;
    for ctx in [16usize, 256, 1000] {
        let nb = ctx.div_ceil(bs);
        let shape = [nb, l.kv_heads, bs, l.head_dim];
        let kv = KvPages {
            k: f32t(&b, &shape, 2),
            v: f32t(&b, &shape, 3),
            block_size: bs,
            k_shift: None,
            k_sink: None,
            k_scales: None,
            v_scales: None,
        };
        let blocks: Vec<u32> = (0..nb as u32).collect();
        let meta = AttnMeta {
            seqs: u32t(&b, &[1, 3], &[0, 1, ctx as u32]),
            block_tables: u32t(&b, &[1, nb], &blocks),
            positions: u32t(&b, &[1], &[ctx as u32 - 1]),
            slots: u32t(&b, &[1], &[ctx as u32 - 1]),
        };
        let qkv = f32t(&b, &[1, l.width()], 4);
        let mut out = b.alloc(&Shape::from([1, 9 * 64]), DType::F32).unwrap();
        let p = AttnParams { scale: 0.125, window: None, alibi: None };
        let us = time(20, || b.paged_attention(&qkv, l, &kv, &meta, &p, &mut out).unwrap());
        println!("| paged_attention decode | ctx={ctx} heads 9/3x64 | {us:.1} |");
    }
}
