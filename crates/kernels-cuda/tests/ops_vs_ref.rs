//! The op suite on CUDA against kernels-ref: every op of the `Ops` trait runs the same inputs on
//! both backends and the results are compared with a tolerance per case (f32 kernels tightly;
//! products with 16-bit inputs to bf16 precision). Where no GPU is usable the test says why and
//! checks only that the backend refused cleanly.

use turbine_core::fp8::{f32_to_e4m3, f32_to_i8, scale_for, E4M3_MAX, I8_MAX};
use turbine_core::sampling::{Rng, SamplingParams, SeqSampler};
use turbine_core::{
    Act, AttnMeta, AttnParams, DType, Epilogue, ExactCols, HostTensor, KvPages, NormKind, Ops, QkvLayout, Resid,
    RopeTable, Tensor, XQuant,
};
use turbine_kernels_cuda::ops::GEMV_ROWS;
use turbine_kernels_cuda::Cuda;
use turbine_kernels_ref::Cpu;

fn rand(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| ((r.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp).collect()
}

fn up<B: Ops>(b: &B, shape: &[usize], v: &[f32]) -> Tensor<B> {
    b.upload(&HostTensor::from_f32(shape, v).unwrap()).unwrap()
}

fn up_u32<B: Ops>(b: &B, shape: &[usize], v: &[u32]) -> Tensor<B> {
    b.upload(&HostTensor::from_u32(shape, v).unwrap()).unwrap()
}

fn zeros<B: Ops>(b: &B, shape: &[usize]) -> Tensor<B> {
    b.alloc(&shape.into(), DType::F32).unwrap()
}

fn get<B: Ops>(b: &B, t: &Tensor<B>) -> Vec<f32> {
    b.download(t).unwrap().to_f32().unwrap()
}

/// `values` values of GGUF `dtype` blocks: random bytes with small f16 scales (and mins).
fn gguf_blocks(dtype: DType, values: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let bytes = dtype.bytes_for(values).unwrap();
    let mut out: Vec<u8> = (0..bytes).map(|_| (r.next_u64() >> 56) as u8).collect();
    let halves: &[usize] = match dtype {
        DType::Q8_0 | DType::Q4_0 | DType::Q5_0 => &[0],
        DType::Q6_K => &[208],
        _ => &[0, 2],
    };
    for blk in out.chunks_exact_mut(dtype.block_bytes()) {
        for &at in halves {
            let v = half::f16::from_f32(0.002 + (r.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 0.01);
            blk[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// One result of the suite with its tolerance (relative to the largest magnitude of the case).
struct Out {
    name: String,
    values: Vec<f32>,
    tol: f32,
    /// A W8A8 product of more rows than the decode kernels take: under
    /// `TURBINE_CUDA_PRODUCTS=fast` it runs on FP8 tensor cores (cuBLASLt), judged within
    /// [`FP8_MMA_TOL`].
    fp8_mma: bool,
    /// A W8A8 product: on a GPU with FP8 tensor cores the invariant mode runs it on Turbine's
    /// own (`mma_e4m3`), for every row count, judged within [`FP8_MMA_TOL`] too.
    w8a8: bool,
    /// A weight-only 8-bit product: on tensor cores (the invariant mode's) its input is rounded
    /// to bf16, judged within [`WIDENED_8BIT_TOL`].
    widened8: bool,
}

/// Weight-only E4M3/INT8 products on tensor cores (`mma_w8_*`) against the CPU's: the codes
/// widen to bf16 exactly, but the input is rounded to bf16 (as the 16-bit weights' products).
const WIDENED_8BIT_TOL: f32 = 1e-2;

/// Tolerance of a product on FP8 tensor cores against the CPU's exact f32 sum of the same E4M3
/// products. Hopper's FP8 MMA keeps fewer bits than f32 while it adds a k-block's products
/// (cuBLASLt's f32 accumulation mode promotes between blocks, not inside them): on an H200
/// (2026-12-04) the error was 1.1e-4 (k = 3200, 12 rows) and 1.6e-4 (k = 96, 12 rows, exact
/// channels beside it), where the emulator, which adds in f32, gives 1e-7.
const FP8_MMA_TOL: f32 = 1e-3;

fn weight<B: Ops>(b: &B, dtype: DType, w: &[f32], n: usize, k: usize) -> (Tensor<B>, Option<Tensor<B>>) {
    let (bytes, scales): (Vec<u8>, Option<Vec<f32>>) = match dtype {
        DType::F32 => (w.iter().flat_map(|v| v.to_le_bytes()).collect(), None),
        DType::BF16 => (w.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(), None),
        DType::F16 => (w.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(), None),
        DType::F8E4M3 => {
            let s = scale_for(w.iter().fold(0f32, |a, v| a.max(v.abs())), E4M3_MAX);
            (w.iter().map(|&v| f32_to_e4m3(v * (1.0 / s))).collect(), Some(vec![s; n]))
        }
        _ => {
            let s: Vec<f32> =
                w.chunks(k).map(|r| scale_for(r.iter().fold(0f32, |a, v| a.max(v.abs())), I8_MAX)).collect();
            (w.iter().enumerate().map(|(i, &v)| f32_to_i8(v, s[i / k]) as u8).collect(), Some(s))
        }
    };
    let t = b.upload_weight(&HostTensor::new([n, k], dtype, bytes).unwrap()).unwrap();
    (t, scales.map(|s| up(b, &[n], &s)))
}

/// An empty paged KV cache of `blocks` blocks of `bs` positions in `dtype` (8-bit pages with a
/// random key shift from `seed`, a sink and row scales).
fn pages<B: Ops>(b: &B, dtype: DType, l: QkvLayout, blocks: usize, bs: usize, seed: u64) -> KvPages<B> {
    let shape = [blocks, l.kv_heads, bs, l.head_dim];
    let eight = dtype != DType::F32;
    let rows = blocks * l.kv_heads * bs;
    KvPages {
        k: b.alloc(&shape.into(), dtype).unwrap(),
        v: b.alloc(&shape.into(), dtype).unwrap(),
        block_size: bs,
        k_shift: eight.then(|| up(b, &[l.kv_heads * l.head_dim], &rand(l.kv_heads * l.head_dim, seed, 0.5))),
        k_sink: eight.then(|| zeros(b, &[blocks, l.kv_heads, l.head_dim])),
        k_scales: eight.then(|| zeros(b, &[rows])),
        v_scales: eight.then(|| zeros(b, &[rows])),
    }
}

/// Runs every op on `b` and returns the named results.
fn suite<B: Ops>(b: &B) -> Vec<Out> {
    let outs = std::cell::RefCell::new(Vec::new());
    let push = |name: String, values: Vec<f32>, tol: f32| {
        outs.borrow_mut().push(Out { name, values, tol, fp8_mma: false, w8a8: false, widened8: false })
    };
    // A product of `dtype` weights (weight-only 8-bit ones marked).
    let push_w = |dtype: DType, name: String, values: Vec<f32>, tol: f32| {
        let widened8 = matches!(dtype, DType::F8E4M3 | DType::I8);
        outs.borrow_mut().push(Out { name, values, tol, fp8_mma: false, w8a8: false, widened8 })
    };
    // A W8A8 product of `rows` rows.
    let push_w8a8 = |name: String, values: Vec<f32>, tol: f32, rows: usize| {
        outs.borrow_mut().push(Out { name, values, tol, fp8_mma: rows > GEMV_ROWS, w8a8: true, widened8: false })
    };

    // Products: every weight type, with the epilogue's parts.
    let (m, k, n) = (5, 96, 40);
    let x = rand(m * k, 1, 1.0);
    let w = rand(n * k, 2, 0.3);
    let bias = rand(n, 3, 0.5);
    let xt = up(b, &[m, k], &x);
    let bt = up(b, &[n], &bias);
    let smooth = up(b, &[k], &rand(k, 4, 1.0).iter().map(|v| 0.5 + v.abs()).collect::<Vec<_>>());
    let shift = up(b, &[k], &rand(k, 7, 0.5));
    let static_scale = up(b, &[1], &[0.004]);
    for (dtype, tol) in
        [(DType::F32, 1e-5), (DType::BF16, 1e-2), (DType::F16, 4e-3), (DType::F8E4M3, 1e-5), (DType::I8, 1e-5)]
    {
        let (wt, sc) = weight(b, dtype, &w, n, k);
        let mut out = up(b, &[m, n], &rand(m * n, 5, 1.0));
        let epi = Epilogue {
            bias: Some(&bt),
            act: Some(Act::Silu),
            accumulate: true,
            scale: sc.as_ref(),
            ..Epilogue::none()
        };
        b.matmul(&xt, &wt, epi, &mut out).unwrap();
        push_w(dtype, format!("matmul {dtype} bias silu accumulate"), get(b, &out), tol);
        // A plain epilogue (scales, bias, accumulation; CUDA's product kernels finish it
        // themselves), at decode and prefill row counts.
        for rows in [m, 12] {
            let xr = up(b, &[rows, k], &rand(rows * k, 24, 1.0));
            let mut out = up(b, &[rows, n], &rand(rows * n, 25, 1.0));
            let epi = Epilogue { bias: Some(&bt), accumulate: true, scale: sc.as_ref(), ..Epilogue::none() };
            b.matmul(&xr, &wt, epi, &mut out).unwrap();
            push_w(dtype, format!("matmul {dtype} {rows} rows bias accumulate"), get(b, &out), tol);
        }
        // Gated (act(gate) * up of the two stacked halves, with scales and bias first; CUDA's
        // product kernels fuse it), at decode and prefill row counts.
        for (rows, act) in [(1, Act::Silu), (m, Act::GeluTanh), (12, Act::Gelu)] {
            let xr = up(b, &[rows, k], &rand(rows * k, 28, 1.0));
            let mut out = zeros(b, &[rows, n / 2]);
            let epi = Epilogue { bias: Some(&bt), act: Some(act), gated: true, scale: sc.as_ref(), ..Epilogue::none() };
            b.matmul(&xr, &wt, epi, &mut out).unwrap();
            push_w(dtype, format!("matmul {dtype} {rows} rows gated {act:?}"), get(b, &out), tol);
        }
        if dtype == DType::F8E4M3 {
            for (q, sm, sh) in [
                (XQuant::Fp8PerToken, None, None),
                (XQuant::Fp8Static(&static_scale), None, None),
                (XQuant::Fp8PerToken, Some(&smooth), None),
                (XQuant::Fp8PerToken, Some(&smooth), Some(&shift)),
            ] {
                let mut out = zeros(b, &[m, n]);
                let epi = Epilogue { scale: sc.as_ref(), quant_x: Some(q), smooth: sm, shift: sh, ..Epilogue::none() };
                b.matmul(&xt, &wt, epi, &mut out).unwrap();
                push_w8a8(
                    format!(
                        "matmul W8A8 static={} smooth={} shift={}",
                        matches!(q, XQuant::Fp8Static(_)),
                        sm.is_some(),
                        sh.is_some()
                    ),
                    get(b, &out),
                    1e-4,
                    m,
                );
            }
            // W8A8 and gated: CUDA finishes the whole product, then gates it.
            let mut out = zeros(b, &[m, n / 2]);
            let epi = Epilogue {
                scale: sc.as_ref(),
                quant_x: Some(XQuant::Fp8PerToken),
                act: Some(Act::Silu),
                gated: true,
                ..Epilogue::none()
            };
            b.matmul(&xt, &wt, epi, &mut out).unwrap();
            push_w8a8("matmul W8A8 gated".into(), get(b, &out), 1e-4, m);
        }
    }

    // Long rows (each lane's loads in several batches of GEMV_UNROLL, the last one partial) for
    // every element type, with 3 and 12 rows. The kernels load 16 bytes at a time where a row's
    // bytes are a multiple of 16, else 4 values: k = 3200 takes the wide loads for 8-bit and
    // 16-bit weights, 1000 for 16-bit only, 1004 for neither.
    for kl in [1000, 3200, 1004] {
        let nl = 24;
        let wl = rand(nl * kl, 26, 0.1);
        for (dtype, tol) in
            [(DType::F32, 1e-5), (DType::BF16, 1e-2), (DType::F16, 4e-3), (DType::F8E4M3, 1e-5), (DType::I8, 1e-5)]
        {
            let (wt, sc) = weight(b, dtype, &wl, nl, kl);
            for rows in [3, 12] {
                let xr = up(b, &[rows, kl], &rand(rows * kl, 27, 1.0));
                let mut out = zeros(b, &[rows, nl]);
                b.matmul(&xr, &wt, Epilogue { scale: sc.as_ref(), ..Epilogue::none() }, &mut out).unwrap();
                push_w(dtype, format!("matmul {dtype} {rows} rows k={kl}"), get(b, &out), tol);
                if dtype == DType::F8E4M3 {
                    // W8A8: the input's E4M3 codes are read as the weights are.
                    let mut out = zeros(b, &[rows, nl]);
                    let q = Some(XQuant::Fp8PerToken);
                    b.matmul(&xr, &wt, Epilogue { scale: sc.as_ref(), quant_x: q, ..Epilogue::none() }, &mut out)
                        .unwrap();
                    push_w8a8(format!("matmul W8A8 {rows} rows k={kl}"), get(b, &out), 1e-4, rows);
                }
            }
        }
    }

    // Outlier channels multiplied exactly beside a W8A8 product (zeroed by the smoothing).
    {
        let idx = [3u32, 17, 80];
        let it = up_u32(b, &[idx.len()], &idx);
        let wx = up(b, &[n, idx.len()], &rand(n * idx.len(), 8, 0.3));
        let mask: Vec<f32> = (0..k as u32).map(|c| if idx.contains(&c) { 0.0 } else { 1.0 }).collect();
        let mask = up(b, &[k], &mask);
        let (wt, sc) = weight(b, DType::F8E4M3, &w, n, k);
        for (m, q) in [(m, Some(XQuant::Fp8PerToken)), (12, Some(XQuant::Fp8PerToken)), (3, None)] {
            let x = up(b, &[m, k], &rand(m * k, 9, 1.0));
            let mut out = zeros(b, &[m, n]);
            let epi = Epilogue {
                bias: Some(&bt),
                scale: sc.as_ref(),
                quant_x: q,
                smooth: q.map(|_| &mask),
                exact: Some(ExactCols { idx: &it, w: &wx }),
                ..Epilogue::none()
            };
            b.matmul(&x, &wt, epi, &mut out).unwrap();
            let name = format!("matmul FP8 {m} rows, 3 exact channels, quantised input {}", q.is_some());
            if q.is_some() {
                push_w8a8(name, get(b, &out), 1e-5, m);
            } else {
                push_w(DType::F8E4M3, name, get(b, &out), 1e-5);
            }
        }
    }

    // 8-bit weights with more rows than the decode kernel takes (widened, f32 product).
    let x12 = up(b, &[12, k], &rand(12 * k, 23, 1.0));
    for dtype in [DType::F8E4M3, DType::I8] {
        let (wt, sc) = weight(b, dtype, &w, n, k);
        let mut out = zeros(b, &[12, n]);
        b.matmul(&x12, &wt, Epilogue { scale: sc.as_ref(), ..Epilogue::none() }, &mut out).unwrap();
        push_w(dtype, format!("matmul {dtype} 12 rows"), get(b, &out), 1e-5);
    }

    // GGUF blocks read in place: a few rows (decoded in registers) and many (widened).
    let kq = 256;
    for dtype in
        [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q5_K, DType::Q6_K]
    {
        let wt = b.upload_weight(&HostTensor::new([n, kq], dtype, gguf_blocks(dtype, n * kq, 30)).unwrap()).unwrap();
        for m in [3, 12] {
            let x = up(b, &[m, kq], &rand(m * kq, 31, 1.0));
            let mut out = zeros(b, &[m, n]);
            b.matmul(&x, &wt, Epilogue::bias(Some(&bt)), &mut out).unwrap();
            push(format!("matmul {dtype} {m} rows"), get(b, &out), 1e-5);
            let mut out = zeros(b, &[m, n / 2]);
            let epi = Epilogue { act: Some(Act::Silu), gated: true, ..Epilogue::bias(Some(&bt)) };
            b.matmul(&x, &wt, epi, &mut out).unwrap();
            push(format!("matmul {dtype} {m} rows gated"), get(b, &out), 1e-5);
        }
    }

    // Norms with the residual stream.
    let (t, h) = (6, 80);
    let xv = rand(t * h, 6, 2.0);
    let wv = rand(h, 7, 1.0);
    for (kind, mode) in [
        (NormKind::Rms { eps: 1e-6, offset: 0.0 }, 1),
        (NormKind::Rms { eps: 1e-6, offset: 1.0 }, 2),
        (NormKind::Layer { eps: 1e-5 }, 0),
    ] {
        let mut r = up(b, &[t, h], &rand(t * h, 8, 1.0));
        let mut out = zeros(b, &[t, h]);
        let bias = up(b, &[h], &rand(h, 9, 0.2));
        let resid = match mode {
            1 => Resid::Before(&mut r),
            2 => Resid::After(&mut r),
            _ => Resid::None,
        };
        b.norm(
            &up(b, &[t, h], &xv),
            &up(b, &[h], &wv),
            Some(&bias).filter(|_| matches!(kind, NormKind::Layer { .. })),
            kind,
            resid,
            &mut out,
        )
        .unwrap();
        push(format!("norm {kind:?} mode {mode}"), get(b, &out), 1e-5);
        push(format!("norm {kind:?} mode {mode} residual"), get(b, &r), 1e-5);
    }

    // Per-head norm, rotary, gated activation, gather, softmax.
    let l = QkvLayout { q_heads: 4, kv_heads: 2, head_dim: 32 };
    let mut qkv = up(b, &[t, l.width()], &rand(t * l.width(), 10, 1.5));
    b.head_norm(
        &mut qkv,
        l,
        &up(b, &[32], &rand(32, 11, 1.0)),
        &up(b, &[32], &rand(32, 12, 1.0)),
        NormKind::Rms { eps: 1e-6, offset: 0.0 },
    )
    .unwrap();
    push("head_norm".into(), get(b, &qkv), 1e-5);
    let rot = 24;
    let cos: Vec<f32> = (0..64 * rot / 2).map(|i| ((i as f32) * 0.37).cos()).collect();
    let sin: Vec<f32> = (0..64 * rot / 2).map(|i| ((i as f32) * 0.37).sin()).collect();
    let table = RopeTable { cos: up(b, &[64, rot / 2], &cos), sin: up(b, &[64, rot / 2], &sin), rot_dim: rot };
    b.rope(&mut qkv, &up_u32(b, &[t], &[0, 3, 7, 8, 20, 63]), &table, l).unwrap();
    push("rope partial".into(), get(b, &qkv), 1e-5);
    for act in [Act::Silu, Act::GeluTanh, Act::Gelu, Act::Relu] {
        let mut out = zeros(b, &[t, 50]);
        b.gated_act(&up(b, &[t, 100], &rand(t * 100, 13, 3.0)), act, &mut out).unwrap();
        push(format!("gated {act:?}"), get(b, &out), 1e-5);
    }
    let table_rows = up(b, &[30, h], &rand(30 * h, 14, 1.0));
    let mut out = up(b, &[4, h], &rand(4 * h, 15, 1.0));
    b.gather_rows(&table_rows, &up_u32(b, &[4], &[29, 0, 7, 7]), 1.5, true, &mut out).unwrap();
    push("gather accumulate".into(), get(b, &out), 1e-6);
    // Embedding tables kept as the checkpoint stores them: f16/bf16 and GGUF blocks, decoded
    // exactly (rows of 256 values, a whole number of blocks of every type).
    let ids = up_u32(b, &[4], &[29, 0, 7, 7]);
    for dtype in [DType::F16, DType::BF16] {
        let (t16, _) = weight(b, dtype, &rand(30 * 256, 17, 1.0), 30, 256);
        let mut out = zeros(b, &[4, 256]);
        b.gather_rows(&t16, &ids, 0.5, false, &mut out).unwrap();
        push(format!("gather from {dtype}"), get(b, &out), 0.0);
    }
    for dtype in
        [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q5_K, DType::Q6_K]
    {
        let tq =
            b.upload_weight(&HostTensor::new([30, 256], dtype, gguf_blocks(dtype, 30 * 256, 18)).unwrap()).unwrap();
        let mut out = up(b, &[4, 256], &rand(4 * 256, 19, 0.01));
        b.gather_rows(&tq, &ids, 1.0, true, &mut out).unwrap();
        push(format!("gather from {dtype} accumulate"), get(b, &out), 1e-6);
    }
    // A step's inputs written at once (CUDA: one packed transfer), reshaped, one of them empty;
    // a value too many is refused before anything is written.
    let mut dsts = [zeros(b, &[9]), zeros(b, &[2, 3]), zeros(b, &[4])];
    let vals = [rand(7, 32, 1.0), rand(6, 33, 1.0)];
    {
        let host = |shape: &[usize], v: &[f32]| HostTensor::from_f32(shape, v).unwrap();
        let [d0, d1, d2] = &mut dsts;
        let mut too_many = [(&mut *d2, host(&[5], &vals[0][..5]))];
        let err = b.write_many(&mut too_many).unwrap_err().to_string();
        assert!(err.contains("capacity"), "{err}");
        let mut writes = [(d0, host(&[7], &vals[0])), (d1, host(&[3, 2], &vals[1])), (d2, host(&[0], &[]))];
        b.write_many(&mut writes).unwrap();
    }
    assert_eq!(dsts[2].shape().numel(), 0);
    for (i, d) in dsts[..2].iter().enumerate() {
        push(format!("write_many {i} as {:?}", d.shape()), get(b, d), 0.0);
    }
    let mut sm = up(b, &[3, 500], &rand(1500, 16, 8.0));
    b.softmax(&mut sm).unwrap();
    push("softmax".into(), get(b, &sm), 1e-5);
    // Sampling: greedy rows (sampled on the device by CUDA), then a mixed batch (host sampler).
    let logits = up(b, &[3, 5000], &rand(15_000, 20, 6.0));
    for greedy in [true, false] {
        let p = |t: f32| SamplingParams { temperature: t, seed: Some(3), ..Default::default() };
        let mut s: Vec<SeqSampler> =
            (0..3).map(|i| SeqSampler::new(p(if greedy || i != 1 { 0.0 } else { 0.8 }))).collect();
        let mut refs: Vec<&mut SeqSampler> = s.iter_mut().collect();
        let got = b.sample(&logits, &mut refs).unwrap();
        push(format!("sample greedy={greedy} ids"), got.iter().map(|g| g.id as f32).collect(), 0.0);
        push(format!("sample greedy={greedy} logprobs"), got.iter().map(|g| g.logprob).collect(), 1e-5);
    }
    // Every kind of draw in one batch, step after step with seeded streams: greedy with top
    // log-probabilities, top-k, top-p (with min-p), temperature over the whole row (walked on the
    // device), and a penalised row (the host's).
    let kinds = [
        SamplingParams { logprobs: 3, ..Default::default() },
        SamplingParams { temperature: 0.9, top_k: 40, logprobs: 2, ..Default::default() },
        SamplingParams { temperature: 0.7, top_p: 0.9, ..Default::default() },
        SamplingParams { temperature: 0.5, top_p: 0.8, min_p: 0.05, ..Default::default() },
        SamplingParams { temperature: 1.0, logprobs: 1, ..Default::default() },
        SamplingParams { temperature: 1.2, min_p: 0.2, ..Default::default() },
    ];
    let logits = up(b, &[kinds.len(), 5000], &rand(kinds.len() * 5000, 21, 6.0));
    for penalised in [false, true] {
        let mut s: Vec<SeqSampler> = kinds
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let presence_penalty = if penalised && i == 2 { 0.5 } else { 0.0 };
                SeqSampler::new(SamplingParams { seed: Some(40 + i as u64), presence_penalty, ..p.clone() })
            })
            .collect();
        let (mut ids, mut lps) = (Vec::new(), Vec::new());
        for _ in 0..12 {
            let mut refs: Vec<&mut SeqSampler> = s.iter_mut().collect();
            for g in b.sample(&logits, &mut refs).unwrap() {
                ids.push(g.id as f32);
                ids.extend(g.top.iter().map(|t| t.0 as f32));
                lps.push(g.logprob);
                lps.extend(g.top.iter().map(|t| t.1));
            }
        }
        push(format!("sample every kind penalised={penalised} ids"), ids, 0.0);
        push(format!("sample every kind penalised={penalised} logprobs"), lps, 1e-5);
    }

    // Paged KV cache: prefill of two sequences then a decode step, f32 and 8-bit pages,
    // GQA, a window, ALiBi; keys stored plain or rotated on the way (rope_store: one launch on
    // CUDA, rope then kv_store on the CPU).
    for (dtype, window, alibi, rotary) in [
        (DType::F32, None, None, false),
        (DType::F32, Some(5), None, true),
        (DType::F32, None, Some(1.0), false),
        (DType::F8E4M3, None, None, true),
        (DType::I8, Some(7), None, true),
    ] {
        let bs = 4;
        let mut kv = pages(b, dtype, l, 12, bs, 17);
        let p = AttnParams { scale: 0.2, window, alibi };
        // Sequence A: 9 tokens in blocks 3, 0, 5; B: 6 tokens in blocks 1, 7.
        let (ta, tb) = (vec![3u32, 0, 5], vec![1u32, 7, 0]);
        let slot = |bl: &[u32], pos: usize| bl[pos / bs] * bs as u32 + (pos % bs) as u32;
        let mut step = |rows_a: std::ops::Range<usize>, rows_b: std::ops::Range<usize>, seed: u64| {
            let n = rows_a.len() + rows_b.len();
            let mut q = up(b, &[n, l.width()], &rand(n * l.width(), seed, 1.0));
            let mut slots: Vec<u32> = rows_a.clone().map(|p| slot(&ta, p)).collect();
            slots.extend(rows_b.clone().map(|p| slot(&tb, p)));
            let meta = AttnMeta {
                seqs: up_u32(
                    b,
                    &[2, 3],
                    &[
                        0,
                        rows_a.len() as u32,
                        rows_a.end as u32,
                        rows_a.len() as u32,
                        rows_b.len() as u32,
                        rows_b.end as u32,
                    ],
                ),
                block_tables: up_u32(b, &[2, 3], &[ta.clone(), tb.clone()].concat()),
                positions: up_u32(b, &[n], &rows_a.clone().chain(rows_b.clone()).map(|p| p as u32).collect::<Vec<_>>()),
                slots: up_u32(b, &[n], &slots),
            };
            if rotary {
                b.rope_store(&mut q, &table, l, &meta, &mut kv).unwrap();
            } else {
                b.kv_store(&q, l, &meta, &mut kv).unwrap();
            }
            let mut out = zeros(b, &[n, l.q_heads * l.head_dim]);
            b.paged_attention(&q, l, &kv, &meta, &p, &mut out).unwrap();
            [get(b, &q), get(b, &out)]
        };
        // Prefill (the tiled kernel on CUDA), a step mixing a prefill chunk with a decode row,
        // then decode (the row kernel).
        for (name, rows_a, rows_b, seed) in
            [("prefill", 0..8, 0..5, 18), ("mixed", 8..11, 5..6, 22), ("decode", 11..12, 6..7, 19)]
        {
            let [q, out] = step(rows_a, rows_b, seed);
            let case = format!("{dtype} window {window:?} alibi {alibi:?} rotary {rotary} {name}");
            if rotary {
                push(format!("rope_store {case} qkv"), q, 1e-5);
            }
            push(format!("attention {case}"), out, 1e-4);
        }
    }
    outs.into_inner()
}

/// The CUDA backend, or `None` after saying why there is none (gpu-check sets
/// `TURBINE_REQUIRE_GPU`: there, no GPU is a failure, not a skip).
fn cuda_or_skip(what: &str) -> Option<Cuda> {
    match Cuda::new(0) {
        Ok(c) => Some(c),
        Err(e) => {
            assert!(std::env::var_os("TURBINE_REQUIRE_GPU").is_none(), "TURBINE_REQUIRE_GPU is set but: {e}");
            println!("skipped: {what} needs a GPU ({e})");
            assert!(e.to_string().contains("cuda"), "{e}");
            None
        }
    }
}

/// Products of weights stored as 16-bit floats or GGUF blocks give exactly the bits of the same
/// weights widened to f32 (a checkpoint's storage changes the bytes read, never the arithmetic),
/// with 1 to 12 rows, on the CPU and on CUDA (under `TURBINE_CUDA_PRODUCTS=fast`, only for the
/// rows its own kernels take). On CUDA's tensor cores (the default for f16/bf16 weights) the
/// input is rounded to the weights' type, so there only GGUF blocks are held to this; their
/// own test is below.
#[test]
fn stored_weights_multiply_as_their_f32_widening() {
    fn check<B: Ops>(b: &B, name: &str, max_rows: usize, sixteen_bit: bool) {
        let (n, k) = (24, 512);
        let w = rand(n * k, 40, 0.3);
        let mut stored: Vec<(DType, Vec<u8>)> = Vec::new();
        if sixteen_bit {
            stored.push((DType::F16, w.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect()));
            stored.push((DType::BF16, w.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect()));
        }
        for dtype in
            [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q5_K, DType::Q6_K]
        {
            stored.push((dtype, gguf_blocks(dtype, n * k, 41)));
        }
        for (dtype, bytes) in stored {
            let host = HostTensor::new([n, k], dtype, bytes).unwrap();
            let wide = b.upload_weight(&HostTensor::from_f32([n, k], &host.to_f32().unwrap()).unwrap()).unwrap();
            let narrow = b.upload_weight(&host).unwrap();
            for m in [1, 3, 8, 12].into_iter().filter(|&m| m <= max_rows) {
                let x = up(b, &[m, k], &rand(m * k, 42, 1.0));
                let (mut a, mut c) = (zeros(b, &[m, n]), zeros(b, &[m, n]));
                b.matmul(&x, &narrow, Epilogue::none(), &mut a).unwrap();
                b.matmul(&x, &wide, Epilogue::none(), &mut c).unwrap();
                let bits = |t: &Tensor<B>| get(b, t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&c), "{name}: {dtype} weights, {m} rows");
            }
        }
    }
    check(&Cpu::new(), "cpu", 12, true);
    if let Some(cuda) = cuda_or_skip("the CUDA half of this test") {
        let rows = if cuda.invariant_products() { 12 } else { 8 };
        check(&cuda, "cuda", rows, !cuda.tensor_core_products());
    }
}

/// A product's epilogue with the weights' `scales`, if any, and with `w8a8` a per-token E4M3
/// input.
fn epilogue<B: Ops>(scales: Option<&Tensor<B>>, w8a8: bool) -> Epilogue<'_, B> {
    let quant_x = w8a8.then_some(XQuant::Fp8PerToken);
    Epilogue { scale: scales, quant_x, ..Epilogue::none() }
}

/// Tensor-core products (f16/bf16 weights; W8A8 on sm_89+: the default invariant mode) give each row the same
/// bits whatever the rows around it: a row alone, among 5, 64 (one tile), 65 and 130 (several
/// tiles), at k values that split K (4096) or not, with tails in n and k; and they stay within
/// 16-bit rounding of the CPU's product.
#[test]
fn tensor_core_products_give_each_row_the_same_bits_whatever_the_batch() {
    let Some(cuda) = cuda_or_skip("this test") else { return };
    if !cuda.tensor_core_products() {
        println!("TURBINE_CUDA_PRODUCTS=fast or TURBINE_CUDA_MMA=off: no tensor-core products to check");
        return;
    }
    let cpu = Cpu::new();
    // (weights, W8A8, n, k, tolerance)
    let mut cases = vec![
        (DType::BF16, false, 72, 4096, 1e-2),
        (DType::F16, false, 40, 203, 4e-3),
        (DType::BF16, false, 130, 24, 1e-2),
        // Weight-only 8-bit codes widened to bf16.
        (DType::I8, false, 72, 4096, WIDENED_8BIT_TOL),
        (DType::F8E4M3, false, 40, 203, WIDENED_8BIT_TOL),
    ];
    if cuda.fp8_tensor_core_products() {
        // W8A8 (per-token E4M3 input): FP8 tensor cores, with a K split and with tails.
        cases.extend([(DType::F8E4M3, true, 72, 4096, FP8_MMA_TOL), (DType::F8E4M3, true, 40, 203, FP8_MMA_TOL)]);
    }
    for (dtype, quant, n, k, tol) in cases {
        let w = rand(n * k, 50, 0.3);
        let (wc, sc) = weight(&cuda, dtype, &w, n, k);
        let (wr, sr) = weight(&cpu, dtype, &w, n, k);
        let rows = 130;
        let xs = rand(rows * k, 51, 1.0);
        let run = |first: usize, m: usize| {
            let x = up(&cuda, &[m, k], &xs[first * k..(first + m) * k]);
            let mut out = zeros(&cuda, &[m, n]);
            cuda.matmul(&x, &wc, epilogue(sc.as_ref(), quant), &mut out).unwrap();
            get(&cuda, &out)
        };
        let all = run(0, rows);
        for m in [1, 5, 64, 65] {
            let part = run(0, m);
            let same = part.iter().zip(&all).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{dtype} (W8A8 {quant}) n={n} k={k}: the first {m} rows differ from those among {rows}");
        }
        let alone = run(77, 1);
        assert!(alone.iter().zip(&all[77 * n..78 * n]).all(|(a, b)| a.to_bits() == b.to_bits()), "row 77 alone");
        let x = up(&cpu, &[rows, k], &xs);
        let mut out = zeros(&cpu, &[rows, n]);
        cpu.matmul(&x, &wr, epilogue(sr.as_ref(), quant), &mut out).unwrap();
        let want = get(&cpu, &out);
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = want.iter().zip(&all).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
        println!("{dtype} (W8A8 {quant}) n={n} k={k}: relative error against the CPU {err:.2e} (tolerance {tol:.0e})");
        assert!(err <= tol, "{dtype} (W8A8 {quant}) n={n} k={k}: relative error {err:.2e} > {tol:.0e}");
    }
}

#[test]
fn every_op_matches_kernels_ref() {
    let Some(cuda) = cuda_or_skip("the CUDA op suite") else { return };
    let want = suite(&Cpu::new());
    let got = suite(&cuda);
    let mut failures = Vec::new();
    for (w, g) in want.iter().zip(&got) {
        let scale = w.values.iter().fold(1e-6f32, |a, v| a.max(v.abs()));
        let err = w.values.iter().zip(&g.values).fold(0f32, |a, (x, y)| a.max((x - y).abs())) / scale;
        let tensor_cores = (w.fp8_mma && !cuda.invariant_products()) || (w.w8a8 && cuda.fp8_tensor_core_products());
        let tol = if tensor_cores { w.tol.max(FP8_MMA_TOL) } else { w.tol };
        let tol = if w.widened8 && cuda.tensor_core_products() { tol.max(WIDENED_8BIT_TOL) } else { tol };
        println!("{:<55} max error {err:.2e} (tolerance {tol:.0e})", w.name);
        if err.is_nan() || err > tol || w.values.len() != g.values.len() {
            failures.push(format!("{}: {err:.2e} > {tol:.0e}", w.name));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The suite itself is sound: on the CPU it runs and gives finite numbers everywhere.
#[test]
fn the_suite_runs_on_the_cpu() {
    let outs = suite(&Cpu::new());
    assert!(outs.len() > 20);
    for o in &outs {
        assert!(!o.values.is_empty() && o.values.iter().all(|v| v.is_finite()), "{}", o.name);
    }
}

/// Attention over a long context (more positions than the decode kernel scores at once, with
/// and without a window that starts inside a KV block): the last row of a prefill chunk (the
/// tiled kernel on CUDA) and the same row as a decode step (the row kernel) give the same bits,
/// as a sequence recomputed after preemption needs, and both match kernels-ref.
#[test]
fn long_context_decode_matches_its_prefill_row_bitwise() {
    fn run<B: Ops>(b: &B, dtype: DType, window: Option<usize>) -> (Vec<f32>, Vec<f32>) {
        let l = QkvLayout { q_heads: 4, kv_heads: 2, head_dim: 64 };
        let (n, bs): (usize, usize) = (1100, 16);
        let blocks = n.div_ceil(bs) + 1;
        let mut kv = pages(b, dtype, l, blocks, bs, 51);
        let p = AttnParams { scale: 0.125, window, alibi: None };
        // Blocks in reverse order: the table, not the position, finds a block.
        let table: Vec<u32> = (0..blocks as u32).rev().collect();
        let slot = |pos: usize| table[pos / bs] * bs as u32 + (pos % bs) as u32;
        let all = rand(n * l.width(), 52, 1.0);
        let meta = |first: usize, rows: usize| AttnMeta {
            seqs: up_u32(b, &[1, 3], &[0, rows as u32, (first + rows) as u32]),
            block_tables: up_u32(b, &[1, blocks], &table),
            positions: up_u32(b, &[rows], &(first..first + rows).map(|p| p as u32).collect::<Vec<_>>()),
            slots: up_u32(b, &[rows], &(first..first + rows).map(slot).collect::<Vec<_>>()),
        };
        let hd = l.q_heads * l.head_dim;
        // The cache of the first n - 8 rows, then a prefill chunk of the last 8 rows (the tiled
        // kernel on CUDA); the last row's output.
        let head = n - 8;
        let m = meta(0, head);
        b.kv_store(&up(b, &[head, l.width()], &all[..head * l.width()]), l, &m, &mut kv).unwrap();
        let q = up(b, &[8, l.width()], &all[head * l.width()..]);
        let m = meta(head, 8);
        b.kv_store(&q, l, &m, &mut kv).unwrap();
        let mut out = zeros(b, &[8, hd]);
        b.paged_attention(&q, l, &kv, &m, &p, &mut out).unwrap();
        let prefill_last = get(b, &out)[7 * hd..].to_vec();
        // The same row again as a one-row (decode) step over the cache the prefill wrote.
        let q1 = up(b, &[1, l.width()], &all[(n - 1) * l.width()..]);
        let m1 = meta(n - 1, 1);
        b.kv_store(&q1, l, &m1, &mut kv).unwrap();
        let mut out1 = zeros(b, &[1, hd]);
        b.paged_attention(&q1, l, &kv, &m1, &p, &mut out1).unwrap();
        (prefill_last, get(b, &out1))
    }
    let cuda = cuda_or_skip("the CUDA half of this test");
    for dtype in [DType::F32, DType::F8E4M3] {
        for window in [None, Some(1030)] {
            let case = format!("{dtype} window {window:?}");
            let (cpu_prefill, cpu_decode) = run(&Cpu::new(), dtype, window);
            assert_eq!(cpu_prefill, cpu_decode, "cpu: {case}");
            let Some(cuda) = &cuda else { continue };
            let (prefill, decode) = run(cuda, dtype, window);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&prefill), bits(&decode), "cuda: {case}: the decode row differs from its prefill row");
            let scale = cpu_decode.iter().fold(1e-6f32, |a, v| a.max(v.abs()));
            let err = cpu_decode.iter().zip(&decode).fold(0f32, |a, (x, y)| a.max((x - y).abs())) / scale;
            println!("long-context attention {case}: max error against the CPU {err:.2e}");
            assert!(err < 1e-4, "cuda: {case}: {err:.2e} against the CPU");
        }
    }
}

/// One attention call over sequences already in `kv`: `parts` lists (sequence, first row, rows)
/// of `all[sequence]` (rows of `l.width()` values), packed in that order; returns each part's
/// output rows.
fn attend<B: Ops>(
    b: &B,
    l: QkvLayout,
    kv: &KvPages<B>,
    tables: &[Vec<u32>],
    all: &[Vec<f32>],
    parts: &[(usize, usize, usize)],
    p: &AttnParams,
) -> Vec<Vec<f32>> {
    let width = tables.iter().map(Vec::len).max().unwrap();
    let mut seqs = Vec::new();
    let mut table = Vec::new();
    let mut rows = Vec::new();
    let mut positions = Vec::new();
    for &(s, first, n) in parts {
        seqs.extend([(rows.len() / l.width()) as u32, n as u32, (first + n) as u32]);
        table.extend(tables[s].iter().copied().chain(std::iter::repeat(0)).take(width));
        rows.extend_from_slice(&all[s][first * l.width()..(first + n) * l.width()]);
        positions.extend((first..first + n).map(|p| p as u32));
    }
    let t = positions.len();
    let meta = AttnMeta {
        seqs: up_u32(b, &[parts.len(), 3], &seqs),
        block_tables: up_u32(b, &[parts.len(), width], &table),
        positions: up_u32(b, &[t], &positions),
        slots: up_u32(b, &[t], &vec![0; t]),
    };
    let hd = l.q_heads * l.head_dim;
    let mut out = zeros(b, &[t, hd]);
    b.paged_attention(&up(b, &[t, l.width()], &rows), l, kv, &meta, p, &mut out).unwrap();
    let got = get(b, &out);
    let mut at = 0;
    parts
        .iter()
        .map(|&(_, _, n)| {
            at += n;
            got[(at - n) * hd..at * hd].to_vec()
        })
        .collect()
}

/// Attention gives every row the same bits whatever else is in the call: a whole prompt at once,
/// the same prompt in chunks of 37 rows, each row as a decode step among other sequences' decode
/// rows, and a mixed call (a chunk, a decode row, a whole short prompt) all agree bitwise, for
/// GQA and MQA groups (more heads per kv head than a warp's 16 rows), head dimensions that are
/// not multiples of 16, KV blocks smaller and larger than the kernels' key tiles, contexts over
/// one split (1024 positions), windows, ALiBi and every page kind; and they match kernels-ref.
#[test]
fn attention_rows_have_the_same_bits_whatever_the_call() {
    struct Case {
        l: QkvLayout,
        bs: usize,
        dtype: DType,
        lens: [usize; 3],
        p: AttnParams,
    }
    let cases = [
        Case {
            l: QkvLayout { q_heads: 4, kv_heads: 2, head_dim: 64 },
            bs: 16,
            dtype: DType::F32,
            lens: [1100, 70, 5],
            p: AttnParams { scale: 0.125, window: None, alibi: None },
        },
        Case {
            l: QkvLayout { q_heads: 20, kv_heads: 1, head_dim: 40 },
            bs: 64,
            dtype: DType::F8E4M3,
            lens: [90, 41, 4],
            p: AttnParams { scale: 0.16, window: Some(50), alibi: Some(1.0) },
        },
        Case {
            l: QkvLayout { q_heads: 6, kv_heads: 3, head_dim: 128 },
            bs: 32,
            dtype: DType::I8,
            lens: [80, 33, 2],
            p: AttnParams { scale: 0.09, window: None, alibi: None },
        },
        Case {
            l: QkvLayout { q_heads: 2, kv_heads: 1, head_dim: 24 },
            bs: 256,
            dtype: DType::F32,
            lens: [300, 20, 3],
            p: AttnParams { scale: 0.2, window: Some(260), alibi: None },
        },
    ];
    fn run<B: Ops>(b: &B, c: &Case, seed: u64) -> (Vec<Vec<f32>>, Vec<String>) {
        let l = c.l;
        // Each sequence's blocks, in reverse order, after the previous sequence's.
        let mut tables = Vec::new();
        let mut next = 0u32;
        for &n in &c.lens {
            let nb = n.div_ceil(c.bs) as u32;
            tables.push((next..next + nb).rev().collect::<Vec<u32>>());
            next += nb;
        }
        let mut kv = pages(b, c.dtype, l, next as usize, c.bs, seed);
        let all: Vec<Vec<f32>> =
            c.lens.iter().enumerate().map(|(i, &n)| rand(n * l.width(), seed + 1 + i as u64, 1.0)).collect();
        for (s, &n) in c.lens.iter().enumerate() {
            let slot = |p: usize| tables[s][p / c.bs] * c.bs as u32 + (p % c.bs) as u32;
            let m = AttnMeta {
                seqs: up_u32(b, &[1, 3], &[0, n as u32, n as u32]),
                block_tables: up_u32(b, &[1, tables[s].len()], &tables[s]),
                positions: up_u32(b, &[n], &(0..n as u32).collect::<Vec<_>>()),
                slots: up_u32(b, &[n], &(0..n).map(slot).collect::<Vec<_>>()),
            };
            b.kv_store(&up(b, &[n, l.width()], &all[s]), l, &m, &mut kv).unwrap();
        }
        let hd = l.q_heads * l.head_dim;
        let call = |parts: &[(usize, usize, usize)]| attend(b, l, &kv, &tables, &all, parts, &c.p);
        // Each prompt whole, alone.
        let whole: Vec<Vec<f32>> = (0..3).map(|s| call(&[(s, 0, c.lens[s])]).remove(0)).collect();
        let mut diffs = Vec::new();
        let mut check = |what: String, s: usize, first: usize, got: &[f32]| {
            let want = &whole[s][first * hd..first * hd + got.len()];
            if want.iter().zip(got).any(|(a, b)| a.to_bits() != b.to_bits()) {
                diffs.push(format!("{what}: rows {first}.. of sequence {s} differ from the whole prompt's"));
            }
        };
        // Chunks of 37 rows of the two longer prompts, each chunk in one call with the other's.
        let chunks = |s: usize| (0..c.lens[s]).step_by(37).map(move |f| (s, f, 37.min(c.lens[s] - f)));
        for (a, bb) in chunks(0).zip(chunks(1).chain(std::iter::repeat((2, 0, c.lens[2])))) {
            let got = call(&[a, bb]);
            check("a chunk".into(), a.0, a.1, &got[0]);
            check("a chunk beside another".into(), bb.0, bb.1, &got[1]);
        }
        // Every row of the shortest prompt and the last rows of the others as decode steps, the
        // three sequences' rows together, then sequence 1's alone.
        for r in 0..c.lens[2] {
            let parts: Vec<_> = (0..3).map(|s| (s, c.lens[s] - c.lens[2] + r, 1)).collect();
            for (i, got) in call(&parts).iter().enumerate() {
                check(format!("decode row among 3, step {r}"), i, parts[i].1, got);
            }
            check(format!("decode row alone, step {r}"), 1, parts[1].1, &call(&parts[1..2])[0]);
        }
        // A mixed call: a chunk, a decode row, a whole short prompt.
        let parts = [(0, c.lens[0] - 30, 25), (1, c.lens[1] - 1, 1), (2, 0, c.lens[2])];
        for (i, got) in call(&parts).iter().enumerate() {
            check("a mixed call".into(), parts[i].0, parts[i].1, got);
        }
        (whole, diffs)
    }
    let cuda = cuda_or_skip("the CUDA half of this test");
    for (i, c) in cases.iter().enumerate() {
        let case = format!("{:?} blocks of {} {} {:?}", c.l, c.bs, c.dtype, c.p);
        let (want, diffs) = run(&Cpu::new(), c, 60 + 10 * i as u64);
        assert!(diffs.is_empty(), "cpu: {case}: {diffs:#?}");
        let Some(cuda) = &cuda else { continue };
        let (got, diffs) = run(cuda, c, 60 + 10 * i as u64);
        assert!(diffs.is_empty(), "cuda: {case}: {diffs:#?}");
        for (w, g) in want.iter().zip(&got) {
            let scale = w.iter().fold(1e-6f32, |a, v| a.max(v.abs()));
            let err = w.iter().zip(g).fold(0f32, |a, (x, y)| a.max((x - y).abs())) / scale;
            println!("attention {case}: max error against the CPU {err:.2e}");
            assert!(err < 1e-4, "cuda: {case}: {err:.2e} against the CPU");
        }
    }
}

/// A plain epilogue that a product kernel finishes itself (the gemv tiles; the tensor-core
/// products in their store or in `sum_splits` when K is split) gives exactly the bits of the raw
/// product finished as the epilogue kernel does: `out + (v · scale + bias)`, f32 roundings in
/// that order.
#[test]
fn fused_plain_epilogues_give_the_epilogue_kernels_bits() {
    let Some(cuda) = cuda_or_skip("this test") else { return };
    // (weights, n, k): split K (4096) with 8-bit scales, unsplit with tails, f32 on the gemv tiles.
    for (dtype, n, k) in [(DType::I8, 72, 4096), (DType::BF16, 40, 203), (DType::F32, 24, 64)] {
        let (w, sc) = weight(&cuda, dtype, &rand(n * k, 70, 0.3), n, k);
        let bias = rand(n, 71, 0.5);
        let bt = up(&cuda, &[n], &bias);
        let scales = sc.as_ref().map(|s| get(&cuda, s));
        for m in [1, 12, 70] {
            let x = up(&cuda, &[m, k], &rand(m * k, 72, 1.0));
            let before = rand(m * n, 73, 1.0);
            let mut raw = zeros(&cuda, &[m, n]);
            let none = Epilogue { scale: None, ..Epilogue::none() };
            cuda.matmul(&x, &w, none, &mut raw).unwrap();
            let raw = get(&cuda, &raw);
            let mut out = up(&cuda, &[m, n], &before);
            let epi = Epilogue { bias: Some(&bt), accumulate: true, scale: sc.as_ref(), ..Epilogue::none() };
            cuda.matmul(&x, &w, epi, &mut out).unwrap();
            let got = get(&cuda, &out);
            for (i, (g, r)) in got.iter().zip(&raw).enumerate() {
                let c = i % n;
                let v = scales.as_ref().map_or(*r, |s| r * s[c]) + bias[c];
                let want = before[i] + v;
                assert_eq!(g.to_bits(), want.to_bits(), "{dtype} n={n} k={k} m={m}: value {i}: {g} != {want}");
            }
        }
    }
}
