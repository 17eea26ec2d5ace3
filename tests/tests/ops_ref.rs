//! Op-level tests of the CPU backend against naive f64 loops, plus the bitwise batch-invariance
//! properties the kernels promise.

use half::f16;
use turbine_core::testing::{assert_close, Tol};
use turbine_core::{
    Act, AttnMeta, AttnParams, Backend, DType, Epilogue, HostTensor, KvPages, NormKind, Ops, QkvLayout, Resid,
    RopeTable, Tensor,
};
use turbine_kernels_ref::Cpu;

/// Deterministic values in [-1, 1).
fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = turbine_core::sampling::Rng::new(seed);
    (0..n).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect()
}

fn up(b: &Cpu, shape: &[usize], v: &[f32]) -> Tensor<Cpu> {
    b.upload(&HostTensor::from_f32(shape, v).unwrap()).unwrap()
}

fn up_u32(b: &Cpu, shape: &[usize], v: &[u32]) -> Tensor<Cpu> {
    b.upload(&HostTensor::from_u32(shape, v).unwrap()).unwrap()
}

fn zeros(b: &Cpu, shape: &[usize]) -> Tensor<Cpu> {
    b.alloc(&shape.into(), DType::F32).unwrap()
}

fn down(b: &Cpu, t: &Tensor<Cpu>) -> Vec<f32> {
    b.download(t).unwrap().to_f32().unwrap()
}

/// Tolerance for f32 kernels compared with f64 loops over up to ~1000 terms.
const TOL: Tol = Tol { rel: 1e-5, abs: 2e-5 };

fn naive_matmul(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum::<f64>() as f32;
        }
    }
    out
}

#[test]
fn matmul_f32_with_epilogues() {
    let b = Cpu::new();
    for (m, k, n) in [(1, 64, 5), (3, 100, 50), (7, 13, 97), (9, 576, 130)] {
        let (x, w, bias, init) = (rand(m * k, 1), rand(n * k, 2), rand(n, 3), rand(m * n, 4));
        let (xt, wt, bt) = (up(&b, &[m, k], &x), up(&b, &[n, k], &w), up(&b, &[n], &bias));
        let want = naive_matmul(&x, &w, m, k, n);
        let mut out = zeros(&b, &[m, n]);
        b.matmul(&xt, &wt, Epilogue::none(), &mut out).unwrap();
        assert_close(&down(&b, &out), &want, TOL);
        b.matmul(&xt, &wt, Epilogue::bias(Some(&bt)), &mut out).unwrap();
        let with_bias: Vec<f32> = want.iter().enumerate().map(|(i, v)| v + bias[i % n]).collect();
        assert_close(&down(&b, &out), &with_bias, TOL);
        let mut acc = up(&b, &[m, n], &init);
        b.matmul(&xt, &wt, Epilogue::accumulate(), &mut acc).unwrap();
        let summed: Vec<f32> = want.iter().zip(&init).map(|(a, c)| a + c).collect();
        assert_close(&down(&b, &acc), &summed, TOL);
    }
}

/// Random GGUF blocks of `dtype` for `rows` rows of `k` values.
fn random_blocks(dtype: DType, rows: usize, k: usize, seed: u64) -> Vec<u8> {
    let mut rng = turbine_core::sampling::Rng::new(seed);
    let nb = rows * k / 32;
    let mut out = Vec::new();
    for _ in 0..nb {
        let d = f16::from_f32((rng.next_f64() * 0.1) as f32 + 0.01).to_le_bytes();
        let m = f16::from_f32((rng.next_f64() * -0.5) as f32).to_le_bytes();
        out.extend(d);
        let payload = match dtype {
            DType::Q4_1 => {
                out.extend(m);
                16
            }
            DType::Q4_0 => 16,
            _ => 32,
        };
        for _ in 0..payload {
            out.push((rng.next_u64() & 0xff) as u8);
        }
    }
    out
}

#[test]
fn quantized_matmul_equals_dequantized_bitwise() {
    let b = Cpu::new();
    let (k, n) = (96, 70);
    for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1] {
        let host = HostTensor::new([n, k], dtype, random_blocks(dtype, n, k, 9)).unwrap();
        let deq = host.to_f32().unwrap();
        let (wq, wf) = (b.upload(&host).unwrap(), up(&b, &[n, k], &deq));
        assert_eq!(wq.dtype(), dtype, "the CPU keeps blocks as blocks");
        // Up to 8 rows dequantise inside the dot products (by groups of 4), 9 through scratch.
        for m in [1, 4, 6, 8, 9] {
            let x = rand(m * k, 5);
            let xt = up(&b, &[m, k], &x);
            let (mut oq, mut of) = (zeros(&b, &[m, n]), zeros(&b, &[m, n]));
            b.matmul(&xt, &wq, Epilogue::none(), &mut oq).unwrap();
            b.matmul(&xt, &wf, Epilogue::none(), &mut of).unwrap();
            let (q, f) = (down(&b, &oq), down(&b, &of));
            assert!(q.iter().zip(&f).all(|(a, c)| a.to_bits() == c.to_bits()), "{dtype} m={m}");
            assert_close(&q, &naive_matmul(&x, &deq, m, k, n), TOL);
        }
    }
}

#[test]
fn matmul_rows_do_not_depend_on_batch_size() {
    let b = Cpu::new();
    let (k, n) = (1536, 64);
    let w = up(&b, &[n, k], &rand(n * k, 11));
    let x = rand(33 * k, 12);
    let mut single = zeros(&b, &[1, n]);
    b.matmul(&up(&b, &[1, k], &x[..k]), &w, Epilogue::none(), &mut single).unwrap();
    let row0 = down(&b, &single);
    for m in [2, 3, 4, 5, 8, 33] {
        let mut out = zeros(&b, &[m, n]);
        b.matmul(&up(&b, &[m, k], &x[..m * k]), &w, Epilogue::none(), &mut out).unwrap();
        let got = down(&b, &out);
        assert!(got[..n].iter().zip(&row0).all(|(a, c)| a.to_bits() == c.to_bits()), "m={m}");
    }
}

#[test]
fn norms() {
    let b = Cpu::new();
    let (t, h) = (5, 48);
    let (x, w, bias, r) = (rand(t * h, 1), rand(h, 2), rand(h, 3), rand(t * h, 4));
    let (xt, wt, bt) = (up(&b, &[t, h], &x), up(&b, &[h], &w), up(&b, &[h], &bias));
    let mut out = zeros(&b, &[t, h]);
    let mut rt = up(&b, &[t, h], &r);
    b.norm(&xt, &wt, None, NormKind::Rms { eps: 1e-6, offset: 1.0 }, Resid::Before(&mut rt), &mut out).unwrap();
    let sum: Vec<f32> = x.iter().zip(&r).map(|(a, c)| a + c).collect();
    assert_eq!(down(&b, &rt), sum);
    let mut want = vec![0.0; t * h];
    for i in 0..t {
        let row = &sum[i * h..(i + 1) * h];
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / h as f64;
        for j in 0..h {
            want[i * h + j] = (row[j] as f64 / (ms + 1e-6).sqrt() * (w[j] as f64 + 1.0)) as f32;
        }
    }
    assert_close(&down(&b, &out), &want, TOL);
    b.norm(&xt, &wt, Some(&bt), NormKind::Layer { eps: 1e-5 }, Resid::None, &mut out).unwrap();
    for i in 0..t {
        let row = &x[i * h..(i + 1) * h];
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h as f64;
        for j in 0..h {
            want[i * h + j] = ((row[j] as f64 - mean) / (var + 1e-5).sqrt() * w[j] as f64 + bias[j] as f64) as f32;
        }
    }
    assert_close(&down(&b, &out), &want, TOL);
}

#[test]
fn rope_rotates_query_and_key_heads_only() {
    let b = Cpu::new();
    let l = QkvLayout { q_heads: 4, kv_heads: 2, head_dim: 8 };
    let (t, rot, max_pos) = (3, 6, 16);
    let qkv = rand(t * l.width(), 1);
    let pos = [0u32, 5, 15];
    let inv: Vec<f64> = (0..rot / 2).map(|i| 1.0 / 10000f64.powf(2.0 * i as f64 / rot as f64)).collect();
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in 0..max_pos {
        for f in &inv {
            cos.push((p as f64 * f).cos() as f32);
            sin.push((p as f64 * f).sin() as f32);
        }
    }
    let table =
        RopeTable { cos: up(&b, &[max_pos, rot / 2], &cos), sin: up(&b, &[max_pos, rot / 2], &sin), rot_dim: rot };
    let mut qt = up(&b, &[t, l.width()], &qkv);
    b.rope(&mut qt, &up_u32(&b, &[t], &pos), &table, l).unwrap();
    let mut want = qkv.clone();
    for (i, &p) in pos.iter().enumerate() {
        for h in 0..l.q_heads + l.kv_heads {
            let base = i * l.width() + h * l.head_dim;
            for j in 0..rot / 2 {
                let a = p as f64 * inv[j];
                let (x1, x2) = (qkv[base + j] as f64, qkv[base + j + rot / 2] as f64);
                want[base + j] = (x1 * a.cos() - x2 * a.sin()) as f32;
                want[base + j + rot / 2] = (x2 * a.cos() + x1 * a.sin()) as f32;
            }
        }
    }
    assert_close(&down(&b, &qt), &want, TOL);
    let bad = up_u32(&b, &[t], &[0, 1, 16]);
    assert!(b.rope(&mut qt, &bad, &table, l).unwrap_err().to_string().contains("past the rotary table"));
}

/// Naive causal attention for one sequence whose keys are all in `qkv` rows `0..n`.
fn naive_attention(qkv: &[f32], l: QkvLayout, n: usize, window: Option<usize>, scale: f32) -> Vec<f32> {
    let (d, w) = (l.head_dim, l.width());
    let mut out = vec![0.0; n * l.q_heads * d];
    for i in 0..n {
        for h in 0..l.q_heads {
            let kh = h / (l.q_heads / l.kv_heads);
            let lo = window.map_or(0, |win| (i + 1).saturating_sub(win));
            let q = &qkv[i * w + h * d..][..d];
            let scores: Vec<f64> = (lo..=i)
                .map(|j| {
                    let k = &qkv[j * w + (l.q_heads + kh) * d..][..d];
                    q.iter().zip(k).map(|(a, c)| *a as f64 * *c as f64).sum::<f64>() * scale as f64
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f64 = e.iter().sum();
            for c in 0..d {
                let v: f64 =
                    (lo..=i).zip(&e).map(|(j, p)| p * qkv[j * w + (l.q_heads + l.kv_heads + kh) * d + c] as f64).sum();
                out[i * l.q_heads * d + h * d + c] = (v / z) as f32;
            }
        }
    }
    out
}

struct Case {
    l: QkvLayout,
    n: usize,
    bs: usize,
    blocks: Vec<u32>,
    window: Option<usize>,
}

fn run_attention(b: &Cpu, c: &Case, qkv: &[f32], chunks: &[usize]) -> Vec<f32> {
    let (l, w, d) = (c.l, c.l.width(), c.l.head_dim);
    let num_blocks = 16;
    let shape = [num_blocks, l.kv_heads, c.bs, d];
    let mut kv = KvPages {
        k: zeros(b, &shape),
        v: zeros(b, &shape),
        block_size: c.bs,
        k_shift: None,
        k_sink: None,
        k_scales: None,
        v_scales: None,
    };
    let p = AttnParams { scale: 1.0 / (d as f32).sqrt(), window: c.window, alibi: None };
    let mut out_all = Vec::new();
    let mut start = 0;
    for &len in chunks {
        let end = start + len;
        let slots: Vec<u32> = (start..end).map(|p| c.blocks[p / c.bs] * c.bs as u32 + (p % c.bs) as u32).collect();
        let meta = AttnMeta {
            seqs: up_u32(b, &[1, 3], &[0, len as u32, end as u32]),
            block_tables: up_u32(b, &[1, c.blocks.len()], &c.blocks),
            positions: up_u32(b, &[len], &(start as u32..end as u32).collect::<Vec<_>>()),
            slots: up_u32(b, &[len], &slots),
        };
        let q = up(b, &[len, w], &qkv[start * w..end * w]);
        b.kv_store(&q, l, &meta, &mut kv).unwrap();
        let mut out = zeros(b, &[len, l.q_heads * d]);
        b.paged_attention(&q, l, &kv, &meta, &p, &mut out).unwrap();
        out_all.extend(down(b, &out));
        start = end;
    }
    out_all
}

#[test]
fn paged_attention_matches_naive_and_is_chunking_invariant() {
    let b = Cpu::new();
    let cases = [
        Case {
            l: QkvLayout { q_heads: 4, kv_heads: 2, head_dim: 16 },
            n: 37,
            bs: 8,
            blocks: vec![5, 2, 9, 0, 7],
            window: None,
        },
        Case {
            l: QkvLayout { q_heads: 3, kv_heads: 1, head_dim: 8 },
            n: 20,
            bs: 4,
            blocks: vec![3, 1, 4, 15, 9],
            window: Some(6),
        },
        Case {
            l: QkvLayout { q_heads: 2, kv_heads: 2, head_dim: 64 },
            n: 17,
            bs: 16,
            blocks: vec![1, 0],
            window: None,
        },
    ];
    for c in &cases {
        let qkv = rand(c.n * c.l.width(), c.n as u64);
        let want = naive_attention(&qkv, c.l, c.n, c.window, 1.0 / (c.l.head_dim as f32).sqrt());
        let whole = run_attention(&b, c, &qkv, &[c.n]);
        assert_close(&whole, &want, Tol { rel: 1e-5, abs: 1e-5 });
        let chunked = run_attention(&b, c, &qkv, &[5, 1, c.n - 9, 3]);
        let one_by_one = run_attention(&b, c, &qkv, &vec![1; c.n]);
        for other in [&chunked, &one_by_one] {
            assert!(whole.iter().zip(other).all(|(a, o)| a.to_bits() == o.to_bits()), "chunking changed bits");
        }
    }
}

#[test]
fn gated_act_gather_softmax() {
    let b = Cpu::new();
    let (t, f) = (3, 10);
    let gu = rand(t * 2 * f, 1);
    let gt = up(&b, &[t, 2 * f], &gu);
    let mut out = zeros(&b, &[t, f]);
    for act in [Act::Silu, Act::GeluTanh, Act::Gelu, Act::Relu] {
        b.gated_act(&gt, act, &mut out).unwrap();
        let mut want = vec![0.0; t * f];
        for i in 0..t {
            for j in 0..f {
                let (g, u) = (gu[i * 2 * f + j] as f64, gu[i * 2 * f + f + j] as f64);
                let a = match act {
                    Act::Silu => g / (1.0 + (-g).exp()),
                    Act::GeluTanh => {
                        0.5 * g * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g.powi(3))).tanh())
                    }
                    Act::Gelu => 0.5 * g * (1.0 + libm::erf(g / std::f64::consts::SQRT_2)),
                    Act::Relu => g.max(0.0),
                };
                want[i * f + j] = (a * u) as f32;
            }
        }
        assert_close(&down(&b, &out), &want, TOL);
    }
    let table = rand(6 * 32, 2);
    let mut rows = zeros(&b, &[3, 32]);
    b.gather_rows(&up(&b, &[6, 32], &table), &up_u32(&b, &[3], &[4, 0, 4]), 1.0, false, &mut rows).unwrap();
    let got = down(&b, &rows);
    assert_eq!(&got[..32], &table[128..160]);
    assert_eq!(&got[32..64], &table[..32]);
    let bad = b.gather_rows(&up(&b, &[6, 32], &table), &up_u32(&b, &[3], &[4, 6, 0]), 1.0, false, &mut rows);
    assert!(bad.unwrap_err().to_string().contains("out of range"));
    let mut sm = up(&b, &[2, 4], &[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]);
    b.softmax(&mut sm).unwrap();
    let z: f64 = (1..=4).map(|v| (v as f64).exp()).sum();
    let want: Vec<f32> = (1..=4).map(|v| ((v as f64).exp() / z) as f32).chain([0.25; 4]).collect();
    assert_close(&down(&b, &sm), &want, TOL);
}

#[test]
fn matmul_activation_epilogue_and_post_norm_residual() {
    let b = Cpu::new();
    let (m, k, n) = (3, 40, 17);
    let (x, w, bias) = (rand(m * k, 1), rand(n * k, 2), rand(n, 3));
    let (xt, wt, bt) = (up(&b, &[m, k], &x), up(&b, &[n, k], &w), up(&b, &[n], &bias));
    let mut out = zeros(&b, &[m, n]);
    b.matmul(&xt, &wt, Epilogue { bias: Some(&bt), act: Some(Act::Gelu), ..Epilogue::none() }, &mut out).unwrap();
    let want: Vec<f32> = naive_matmul(&x, &w, m, k, n)
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let g = (v + bias[i % n]) as f64;
            (0.5 * g * (1.0 + libm::erf(g / std::f64::consts::SQRT_2))) as f32
        })
        .collect();
    assert_close(&down(&b, &out), &want, TOL);

    // Resid::After: out = norm(x), r += out.
    let (h, r0) = (n, rand(m * n, 4));
    let gamma = up(&b, &[h], &rand(h, 5));
    let mut r = up(&b, &[m, h], &r0);
    let mut normed = zeros(&b, &[m, h]);
    b.norm(&out, &gamma, None, NormKind::Rms { eps: 1e-6, offset: 0.0 }, Resid::After(&mut r), &mut normed).unwrap();
    let nv = down(&b, &normed);
    let sum: Vec<f32> = r0.iter().zip(&nv).map(|(a, c)| a + c).collect();
    assert_eq!(down(&b, &r), sum);
}

#[test]
fn gated_matmul_is_the_product_then_gated_act() {
    let b = Cpu::new();
    let (k, f) = (40, 9);
    let (w, bias) = (rand(2 * f * k, 6), rand(2 * f, 7));
    let (wt, bt) = (up(&b, &[2 * f, k], &w), up(&b, &[2 * f], &bias));
    for (m, act) in [(1, Act::Silu), (3, Act::GeluTanh), (7, Act::Gelu), (2, Act::Relu)] {
        let xt = up(&b, &[m, k], &rand(m * k, 8));
        let mut full = zeros(&b, &[m, 2 * f]);
        b.matmul(&xt, &wt, Epilogue::bias(Some(&bt)), &mut full).unwrap();
        let mut want = zeros(&b, &[m, f]);
        b.gated_act(&full, act, &mut want).unwrap();
        let mut got = zeros(&b, &[m, f]);
        b.matmul(&xt, &wt, Epilogue { act: Some(act), gated: true, ..Epilogue::bias(Some(&bt)) }, &mut got).unwrap();
        assert_eq!(down(&b, &got), down(&b, &want), "{m} rows, {act:?}");
    }
    // Misuse is an error naming the problem, not a panic.
    let xt = up(&b, &[2, k], &rand(2 * k, 9));
    let gated = Epilogue { act: Some(Act::Silu), gated: true, ..Epilogue::none() };
    let mut out = zeros(&b, &[2, f]);
    let odd = up(&b, &[2 * f - 1, k], &w[..(2 * f - 1) * k]);
    let err = |r: turbine_core::Result<()>| r.unwrap_err().to_string();
    assert!(err(b.matmul(&xt, &odd, Epilogue { ..gated }, &mut out)).contains("even width"));
    assert!(err(b.matmul(&xt, &wt, Epilogue { act: None, ..gated }, &mut out)).contains("without an activation"));
    assert!(err(b.matmul(&xt, &wt, Epilogue { accumulate: true, ..gated }, &mut out)).contains("accumulate"));
    let mut wide = zeros(&b, &[2, 2 * f]);
    assert!(err(b.matmul(&xt, &wt, gated, &mut wide)).contains("shape"));
}

#[test]
fn head_norm_normalises_each_query_and_key_head() {
    let b = Cpu::new();
    let l = QkvLayout { q_heads: 4, kv_heads: 2, head_dim: 8 };
    let t = 3;
    let v = rand(t * l.width(), 1);
    let (wq, wk) = (rand(8, 2), rand(8, 3));
    let mut qkv = up(&b, &[t, l.width()], &v);
    b.head_norm(&mut qkv, l, &up(&b, &[8], &wq), &up(&b, &[8], &wk), NormKind::Rms { eps: 1e-6, offset: 1.0 }).unwrap();
    let mut want = v.clone();
    for row in want.chunks_exact_mut(l.width()) {
        for (h, head) in row[..6 * 8].chunks_exact_mut(8).enumerate() {
            let w = if h < 4 { &wq } else { &wk };
            let ms = head.iter().map(|&x| x as f64 * x as f64).sum::<f64>() / 8.0;
            for (x, g) in head.iter_mut().zip(w) {
                *x = (*x as f64 / (ms + 1e-6).sqrt() * (*g as f64 + 1.0)) as f32;
            }
        }
    }
    assert_close(&down(&b, &qkv), &want, TOL);
}

#[test]
fn gather_scales_and_accumulates() {
    let b = Cpu::new();
    let table = rand(5 * 8, 1);
    let mut out = up(&b, &[2, 8], &[1.0; 16]);
    b.gather_rows(&up(&b, &[5, 8], &table), &up_u32(&b, &[2], &[3, 1]), 2.0, true, &mut out).unwrap();
    let want: Vec<f32> = table[24..32].iter().chain(&table[8..16]).map(|v| 1.0 + 2.0 * v).collect();
    assert_eq!(down(&b, &out), want);
}

#[test]
fn alibi_attention_matches_naive() {
    let b = Cpu::new();
    let l = QkvLayout { q_heads: 6, kv_heads: 6, head_dim: 8 };
    let n = 11;
    let qkv = rand(n * l.width(), 3);
    let slopes = turbine_core::alibi_slopes(6);
    let (w, d) = (l.width(), 8);
    let mut want = vec![0.0f32; n * 6 * d];
    for i in 0..n {
        for h in 0..6 {
            let q = &qkv[i * w + h * d..][..d];
            let sc: Vec<f64> = (0..=i)
                .map(|j| {
                    let k = &qkv[j * w + (6 + h) * d..][..d];
                    let dot: f64 = q.iter().zip(k).map(|(a, c)| *a as f64 * *c as f64).sum();
                    dot / (d as f64).sqrt() + slopes[h] as f64 * (j as f64 - i as f64)
                })
                .collect();
            let mx = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            for c in 0..d {
                let v: f64 = (0..=i).map(|j| e[j] * qkv[j * w + (12 + h) * d + c] as f64).sum();
                want[(i * 6 + h) * d + c] = (v / z) as f32;
            }
        }
    }
    let shape = [4, 6, 4, d];
    let mut kv = KvPages {
        k: zeros(&b, &shape),
        v: zeros(&b, &shape),
        block_size: 4,
        k_shift: None,
        k_sink: None,
        k_scales: None,
        v_scales: None,
    };
    let meta = AttnMeta {
        seqs: up_u32(&b, &[1, 3], &[0, n as u32, n as u32]),
        block_tables: up_u32(&b, &[1, 3], &[2, 0, 3]),
        positions: up_u32(&b, &[n], &(0..n as u32).collect::<Vec<_>>()),
        slots: up_u32(&b, &[n], &(0..n).map(|p| [2u32, 0, 3][p / 4] * 4 + (p % 4) as u32).collect::<Vec<_>>()),
    };
    let q = up(&b, &[n, w], &qkv);
    b.kv_store(&q, l, &meta, &mut kv).unwrap();
    let mut out = zeros(&b, &[n, 6 * d]);
    let p = AttnParams { scale: 1.0 / (d as f32).sqrt(), window: None, alibi: Some(1.0) };
    b.paged_attention(&q, l, &kv, &meta, &p, &mut out).unwrap();
    assert_close(&down(&b, &out), &want, Tol { rel: 1e-5, abs: 1e-5 });
}
