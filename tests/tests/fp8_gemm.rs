//! The 8-bit and 16-bit matrix products of the CPU backend against an independent slow
//! emulation: E4M3 rounding by searching every representable value (ties to the even code,
//! saturation), products summed in f64, then the scales, bias and activation.

use turbine_core::testing::{assert_close, Tol};
use turbine_core::{Backend, DType, Epilogue, ExactCols, HostTensor, Ops, Tensor, XQuant};
use turbine_kernels_ref::Cpu;

fn rand(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut rng = turbine_core::sampling::Rng::new(seed);
    (0..n).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32 * amp).collect()
}

/// Every finite E4M3 value, by code (computed from the definition, not from the crate).
fn e4m3_values() -> Vec<(u8, f64)> {
    (0u8..=255)
        .filter(|b| b & 0x7f != 0x7f)
        .map(|b| {
            let s = if b & 0x80 != 0 { -1.0 } else { 1.0 };
            let (e, m) = (((b >> 3) & 15) as i32, (b & 7) as f64);
            let v = if e == 0 { m * 2f64.powi(-9) } else { (1.0 + m / 8.0) * 2f64.powi(e - 7) };
            (b, s * v)
        })
        .collect()
}

/// Nearest E4M3 value, ties to the even code, saturating at ±448.
fn slow_e4m3(x: f32, table: &[(u8, f64)]) -> f64 {
    let x = f64::from(x).clamp(-448.0, 448.0);
    let mut best = (0u8, f64::INFINITY, 0.0);
    for &(b, v) in table {
        let d = (v - x).abs();
        if d < best.1 || (d == best.1 && b & 1 == 0) {
            best = (b, d, v);
        }
    }
    best.2
}

fn up(b: &Cpu, shape: &[usize], v: &[f32]) -> Tensor<Cpu> {
    b.upload(&HostTensor::from_f32(shape, v).unwrap()).unwrap()
}

/// Per-channel E4M3 weights: (codes, scales, values as the slow emulation sees them).
fn fp8_weights(w: &[f32], n: usize, k: usize, table: &[(u8, f64)]) -> (Vec<u8>, Vec<f32>, Vec<f64>) {
    let (mut codes, mut scales, mut vals) = (Vec::new(), Vec::new(), Vec::new());
    for row in w.chunks(k).take(n) {
        let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
        let s = amax / 448.0;
        scales.push(s);
        for &v in row {
            let q = slow_e4m3(v * (1.0 / s), table);
            vals.push(q);
            codes.push(table.iter().find(|(_, tv)| *tv == q).unwrap().0);
        }
    }
    (codes, scales, vals)
}

#[test]
fn fp8_w8a8_matches_the_slow_emulation() {
    let b = Cpu::new();
    let table = e4m3_values();
    let cases = [
        (1, 64, 7, None, false, false),
        (3, 96, 50, None, false, false),
        (9, 160, 20, None, false, false),
        (4, 64, 9, Some(0.004f32), false, false),
        (3, 96, 11, None, true, false),
        (5, 64, 8, Some(0.002f32), true, false),
        (4, 64, 13, None, false, true),
        (6, 96, 10, None, true, true),
    ];
    for (m, k, n, static_scale, smoothed, shifted) in cases {
        let mut x = rand(m * k, 1, 1.5);
        x[3] = 40.0; // an outlier: its row's scale grows, and with a static scale it saturates
        let w = rand(n * k, 2, 0.2);
        let bias = rand(n, 3, 0.5);
        let (codes, scales, wv) = fp8_weights(&w, n, k, &table);
        let wt = b.upload_weight(&HostTensor::new([n, k], DType::F8E4M3, codes).unwrap()).unwrap();
        let (xt, st, bt) = (up(&b, &[m, k], &x), up(&b, &[n], &scales), up(&b, &[n], &bias));
        let sx_t = static_scale.map(|s| up(&b, &[1], &[s]));
        let quant = match &sx_t {
            Some(t) => XQuant::Fp8Static(t),
            None => XQuant::Fp8PerToken,
        };
        // Smoothing: input channel c is multiplied by smooth[c] before it is quantised.
        let smooth: Vec<f32> =
            if smoothed { rand(k, 4, 1.0).iter().map(|v| 0.1 + v.abs() * 3.0).collect() } else { vec![1.0; k] };
        let smooth_t = up(&b, &[k], &smooth);
        // Centring: input channel c has shift[c] subtracted first.
        let shift: Vec<f32> = if shifted { rand(k, 7, 2.0) } else { vec![0.0; k] };
        let shift_t = up(&b, &[k], &shift);
        let mut out = b.alloc(&[m, n].into(), DType::F32).unwrap();
        let epi = Epilogue {
            bias: Some(&bt),
            scale: Some(&st),
            quant_x: Some(quant),
            smooth: smoothed.then_some(&smooth_t),
            shift: shifted.then_some(&shift_t),
            ..Epilogue::none()
        };
        b.matmul(&xt, &wt, epi, &mut out).unwrap();
        let got = b.download(&out).unwrap().to_f32().unwrap();
        let mut want = vec![0.0; m * n];
        for i in 0..m {
            let row: Vec<f32> =
                x[i * k..(i + 1) * k].iter().zip(&shift).zip(&smooth).map(|((v, mu), s)| (v - mu) * s).collect();
            let sx = static_scale.unwrap_or_else(|| row.iter().fold(0f32, |a, v| a.max(v.abs())) / 448.0);
            let qx: Vec<f64> = row.iter().map(|&v| slow_e4m3(v * (1.0 / sx), &table)).collect();
            for j in 0..n {
                let acc: f64 = (0..k).map(|t| qx[t] * wv[j * k + t]).sum();
                want[i * n + j] = (acc * f64::from(sx * scales[j]) + f64::from(bias[j])) as f32;
            }
        }
        assert_close(&got, &want, Tol { rel: 1e-5, abs: 1e-5 });
    }
    // Smoothing only makes sense on a quantised input.
    let (x, w) = (up(&b, &[1, 64], &rand(64, 5, 1.0)), up(&b, &[3, 64], &rand(192, 6, 1.0)));
    let s = up(&b, &[64], &[1.0; 64]);
    let mut out = b.alloc(&[1, 3].into(), DType::F32).unwrap();
    let err = b.matmul(&x, &w, Epilogue { smooth: Some(&s), ..Epilogue::none() }, &mut out).unwrap_err().to_string();
    assert!(err.contains("smoothing"), "{err}");
    let err = b.matmul(&x, &w, Epilogue { shift: Some(&s), ..Epilogue::none() }, &mut out).unwrap_err().to_string();
    assert!(err.contains("shift"), "{err}");
}

/// Outlier channels taken exactly beside a W8A8 product: the quantised row (and its scale)
/// leaves them out through a zero smoothing factor, their f32 weights add `x[c] · wx[j, t]`.
#[test]
fn exact_channels_join_the_fp8_product() {
    let b = Cpu::new();
    let table = e4m3_values();
    let (m, k, n) = (5, 96, 12);
    let mut x = rand(m * k, 11, 1.0);
    for i in 0..m {
        x[i * k + 3] = 60.0 + i as f32; // a massive channel, as in real models
    }
    let idx = [3u32, 40, 77];
    let mut w = rand(n * k, 12, 0.2);
    for j in 0..n {
        for &c in &idx {
            w[j * k + c as usize] = 0.0; // the quantised weight leaves the exact columns out
        }
    }
    let wx = rand(n * idx.len(), 13, 0.2);
    let bias = rand(n, 14, 0.5);
    let (codes, scales, wv) = fp8_weights(&w, n, k, &table);
    let wt = b.upload_weight(&HostTensor::new([n, k], DType::F8E4M3, codes).unwrap()).unwrap();
    let mask: Vec<f32> = (0..k as u32).map(|c| if idx.contains(&c) { 0.0 } else { 1.0 }).collect();
    let (xt, st, bt, mt) = (up(&b, &[m, k], &x), up(&b, &[n], &scales), up(&b, &[n], &bias), up(&b, &[k], &mask));
    let it = b.upload(&HostTensor::from_u32([idx.len()], &idx).unwrap()).unwrap();
    let wxt = up(&b, &[n, idx.len()], &wx);
    let mut out = b.alloc(&[m, n].into(), DType::F32).unwrap();
    let epi = Epilogue {
        bias: Some(&bt),
        scale: Some(&st),
        quant_x: Some(XQuant::Fp8PerToken),
        smooth: Some(&mt),
        exact: Some(ExactCols { idx: &it, w: &wxt }),
        ..Epilogue::none()
    };
    b.matmul(&xt, &wt, epi, &mut out).unwrap();
    let got = b.download(&out).unwrap().to_f32().unwrap();
    let mut want = vec![0.0; m * n];
    for i in 0..m {
        let row: Vec<f32> = x[i * k..(i + 1) * k].iter().zip(&mask).map(|(v, s)| v * s).collect();
        let sx = row.iter().fold(0f32, |a, v| a.max(v.abs())) / 448.0;
        assert!(sx < 4.0 / 448.0, "the outlier must not set the row's scale");
        let qx: Vec<f64> = row.iter().map(|&v| slow_e4m3(v * (1.0 / sx), &table)).collect();
        for j in 0..n {
            let acc: f64 = (0..k).map(|t| qx[t] * wv[j * k + t]).sum();
            let exact: f64 = idx
                .iter()
                .enumerate()
                .map(|(t, &c)| f64::from(x[i * k + c as usize]) * f64::from(wx[j * idx.len() + t]))
                .sum();
            want[i * n + j] = (acc * f64::from(sx * scales[j]) + exact + f64::from(bias[j])) as f32;
        }
    }
    assert_close(&got, &want, Tol { rel: 1e-5, abs: 1e-5 });
    // A channel past the input, or weights of the wrong shape: errors that say so.
    let bad = b.upload(&HostTensor::from_u32([1], &[k as u32]).unwrap()).unwrap();
    let wx1 = up(&b, &[n, 1], &vec![0.0; n]);
    let epi = Epilogue { exact: Some(ExactCols { idx: &bad, w: &wx1 }), ..Epilogue::none() };
    let err = b.matmul(&xt, &wt, Epilogue { scale: Some(&st), ..epi }, &mut out).unwrap_err().to_string();
    assert!(err.contains("exact channel 96"), "{err}");
    let epi = Epilogue { scale: Some(&st), exact: Some(ExactCols { idx: &it, w: &wx1 }), ..Epilogue::none() };
    assert!(b.matmul(&xt, &wt, epi, &mut out).is_err());
}

#[test]
fn int8_and_half_weights_dequantise_on_the_fly() {
    let b = Cpu::new();
    let (m, k, n) = (5, 128, 33);
    let x = rand(m * k, 4, 1.0);
    let w = rand(n * k, 5, 0.3);
    // INT8, per channel.
    let mut codes = Vec::new();
    let mut scales = Vec::new();
    let mut wv = Vec::new();
    for row in w.chunks(k) {
        let s = row.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
        scales.push(s);
        for &v in row {
            let q = (f64::from(v) / f64::from(s)).round_ties_even().clamp(-127.0, 127.0);
            codes.push(q as i8 as u8);
            wv.push(q);
        }
    }
    let wt = b.upload_weight(&HostTensor::new([n, k], DType::I8, codes).unwrap()).unwrap();
    assert_eq!(wt.dtype(), DType::I8);
    let (xt, st) = (up(&b, &[m, k], &x), up(&b, &[n], &scales));
    let mut out = b.alloc(&[m, n].into(), DType::F32).unwrap();
    b.matmul(&xt, &wt, Epilogue { scale: Some(&st), ..Epilogue::none() }, &mut out).unwrap();
    let want: Vec<f32> = (0..m * n)
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            let acc: f64 = (0..k).map(|t| f64::from(x[i * k + t]) * wv[j * k + t]).sum();
            (acc * f64::from(scales[j])) as f32
        })
        .collect();
    assert_close(&b.download(&out).unwrap().to_f32().unwrap(), &want, Tol { rel: 1e-5, abs: 1e-5 });

    // f16 and bf16 stay two bytes a value and give the f32 product of their values.
    for dtype in [DType::F16, DType::BF16] {
        let bytes: Vec<u8> = w
            .iter()
            .flat_map(|&v| match dtype {
                DType::F16 => half::f16::from_f32(v).to_le_bytes(),
                _ => half::bf16::from_f32(v).to_le_bytes(),
            })
            .collect();
        let host = HostTensor::new([n, k], dtype, bytes).unwrap();
        let wt = b.upload_weight(&host).unwrap();
        assert_eq!(wt.dtype(), dtype);
        let wide = b.upload(&host).unwrap();
        assert_eq!(wide.dtype(), DType::F32);
        let mut a = b.alloc(&[m, n].into(), DType::F32).unwrap();
        let mut c = b.alloc(&[m, n].into(), DType::F32).unwrap();
        b.matmul(&xt, &wt, Epilogue::none(), &mut a).unwrap();
        b.matmul(&xt, &wide, Epilogue::none(), &mut c).unwrap();
        // Same values, same reduction order: bit for bit.
        assert_eq!(b.download(&a).unwrap().to_f32().unwrap(), b.download(&c).unwrap().to_f32().unwrap());
    }
}

/// Paged attention over FP8 E4M3 (or INT8) keys and values equals f64 attention over the keys
/// and values rounded the slow way (`e4m3(x / s) · s` with `s` the row's largest magnitude over
/// 448), keys centred by their shift first (which moves every score of a query by the same
/// amount, so the reference can leave it out), position 0's key unrounded where the pages keep
/// it aside.
#[test]
fn fp8_kv_cache_attention_matches_rounded_reference() {
    fp8_kv_case(true, true, DType::F8E4M3);
    fp8_kv_case(false, false, DType::F8E4M3);
    fp8_kv_case(true, false, DType::I8);
    fp8_kv_case(false, true, DType::I8);
}

/// `shifted`: keys minus a per-channel shift; `sink`: position 0's key kept unrounded.
fn fp8_kv_case(shifted: bool, sink: bool, dtype: DType) {
    use turbine_core::{AttnMeta, AttnParams, KvPages, QkvLayout};
    let b = Cpu::new();
    let table = e4m3_values();
    let l = QkvLayout { q_heads: 4, kv_heads: 2, head_dim: 16 };
    let (n, bs, w, d) = (23, 8, l.width(), 16);
    let qkv = rand(n * w, 9, 2.0);
    let max = if dtype == DType::I8 { 127.0f32 } else { 448.0 };
    // One row (a token's keys or values for one kv head), rounded with its own scale.
    let round_row = |x: &[f32]| -> Vec<f32> {
        let s = x.iter().fold(0f32, |a, v| a.max(v.abs())) / max;
        x.iter()
            .map(|&x| match dtype {
                DType::I8 => {
                    ((f64::from(x) / f64::from(s)).round_ties_even().clamp(-127.0, 127.0) * f64::from(s)) as f32
                }
                _ => (slow_e4m3(x * (1.0 / s), &table) * f64::from(s)) as f32,
            })
            .collect()
    };
    let shape: turbine_core::Shape = [4, l.kv_heads, bs, d].into();
    let shift: Vec<f32> = if shifted { rand(l.kv_heads * d, 10, 1.5) } else { vec![0.0; l.kv_heads * d] };
    let mut kv = KvPages {
        k: b.alloc(&shape, dtype).unwrap(),
        v: b.alloc(&shape, dtype).unwrap(),
        block_size: bs,
        k_shift: shifted.then(|| up(&b, &[l.kv_heads * d], &shift)),
        k_sink: sink.then(|| b.alloc(&[4, l.kv_heads, d].into(), DType::F32).unwrap()),
        k_scales: Some(b.alloc(&[4 * l.kv_heads * bs].into(), DType::F32).unwrap()),
        v_scales: Some(b.alloc(&[4 * l.kv_heads * bs].into(), DType::F32).unwrap()),
    };
    let up_u32 = |shape: &[usize], v: &[u32]| b.upload(&HostTensor::from_u32(shape, v).unwrap()).unwrap();
    let blocks = [3u32, 1, 0];
    let meta = AttnMeta {
        seqs: up_u32(&[1, 3], &[0, n as u32, n as u32]),
        block_tables: up_u32(&[1, 3], &blocks),
        positions: up_u32(&[n], &(0..n as u32).collect::<Vec<_>>()),
        slots: up_u32(&[n], &(0..n).map(|p| blocks[p / bs] * bs as u32 + (p % bs) as u32).collect::<Vec<_>>()),
    };
    let q = up(&b, &[n, w], &qkv);
    b.kv_store(&q, l, &meta, &mut kv).unwrap();
    let mut out = b.alloc(&[n, l.q_heads * d].into(), DType::F32).unwrap();
    let scale = 1.0 / (d as f32).sqrt();
    b.paged_attention(&q, l, &kv, &meta, &AttnParams { scale, window: None, alibi: None }, &mut out).unwrap();
    // The stored rows, rounded: keys[j][kh] and values[j][kh].
    let zeros = vec![0.0; d];
    let rounded = |j: usize, kh: usize, key: bool| -> Vec<f32> {
        let at = if key { l.q_heads + kh } else { l.q_heads + l.kv_heads + kh };
        let x = &qkv[j * w + at * d..][..d];
        let m = if key { &shift[kh * d..][..d] } else { &zeros[..] };
        let x: Vec<f32> = x.iter().zip(m).map(|(a, b)| a - b).collect();
        if key && sink && j == 0 {
            x
        } else {
            round_row(&x)
        }
    };
    let keys: Vec<Vec<Vec<f32>>> = (0..n).map(|j| (0..l.kv_heads).map(|kh| rounded(j, kh, true)).collect()).collect();
    let vals: Vec<Vec<Vec<f32>>> = (0..n).map(|j| (0..l.kv_heads).map(|kh| rounded(j, kh, false)).collect()).collect();
    let mut want = vec![0.0; n * l.q_heads * d];
    for i in 0..n {
        for h in 0..l.q_heads {
            let kh = h / 2;
            let qv = &qkv[i * w + h * d..][..d];
            let sc: Vec<f64> = (0..=i)
                .map(|j| {
                    let dot: f64 = qv.iter().zip(&keys[j][kh]).map(|(&a, &c)| f64::from(a) * f64::from(c)).sum();
                    dot * f64::from(scale)
                })
                .collect();
            let mx = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            for c in 0..d {
                let v: f64 = (0..=i).map(|j| e[j] * f64::from(vals[j][kh][c])).sum();
                want[(i * l.q_heads + h) * d + c] = (v / z) as f32;
            }
        }
    }
    assert_close(&b.download(&out).unwrap().to_f32().unwrap(), &want, Tol { rel: 1e-5, abs: 1e-5 });
    // 8-bit pages cannot be read or written without their row scales.
    kv.v_scales = None;
    let err = b.kv_store(&q, l, &meta, &mut kv).unwrap_err().to_string();
    assert!(err.contains("row scales"), "{err}");
    let p = AttnParams { scale, window: None, alibi: None };
    let err = b.paged_attention(&q, l, &kv, &meta, &p, &mut out).unwrap_err().to_string();
    assert!(err.contains("row scales"), "{err}");
}

/// A row's product does not depend on how many rows are multiplied with it (the fused
/// dequantise-and-dot path for a few rows and the scratch path for many give the same bits).
#[test]
fn eight_and_sixteen_bit_products_are_batch_invariant() {
    let b = Cpu::new();
    let (k, n) = (96, 37);
    let x = rand(9 * k, 11, 1.0);
    let mut rng = turbine_core::sampling::Rng::new(12);
    for dtype in [DType::F8E4M3, DType::I8, DType::F16, DType::BF16] {
        let mut bytes: Vec<u8> = (0..dtype.bytes_for(n * k).unwrap()).map(|_| rng.next_u64() as u8).collect();
        match dtype {
            DType::F8E4M3 => bytes.iter_mut().filter(|v| **v & 0x7f == 0x7f).for_each(|v| *v &= 0xfe),
            DType::F16 | DType::BF16 => bytes.chunks_exact_mut(2).for_each(|c| c[1] &= 0x3f),
            _ => {}
        }
        let w = b.upload_weight(&HostTensor::new([n, k], dtype, bytes).unwrap()).unwrap();
        // W8A8 with per-token scales and exact outlier channels, too: still row by row.
        let (idx, mask) = (
            b.upload(&HostTensor::from_u32([2], &[5, 70]).unwrap()).unwrap(),
            up(&b, &[k], &(0..k).map(|c| if c == 5 || c == 70 { 0.0 } else { 1.0 }).collect::<Vec<_>>()),
        );
        let (wx, scale) = (up(&b, &[n, 2], &rand(2 * n, 13, 0.3)), up(&b, &[n], &rand(n, 14, 0.01)));
        let epi = |w8a8: bool| {
            if w8a8 {
                Epilogue {
                    scale: Some(&scale),
                    quant_x: Some(XQuant::Fp8PerToken),
                    smooth: Some(&mask),
                    exact: Some(ExactCols { idx: &idx, w: &wx }),
                    ..Epilogue::none()
                }
            } else {
                Epilogue::none()
            }
        };
        let cases: &[bool] = if dtype == DType::F8E4M3 { &[false, true] } else { &[false] };
        for &w8a8 in cases {
            let what = if w8a8 { "w8a8 + exact channels" } else { "plain" };
            let many = {
                let mut out = b.alloc(&[9, n].into(), DType::F32).unwrap();
                b.matmul(&up(&b, &[9, k], &x), &w, epi(w8a8), &mut out).unwrap();
                b.download(&out).unwrap().to_f32().unwrap()
            };
            for i in 0..9 {
                let mut out = b.alloc(&[1, n].into(), DType::F32).unwrap();
                b.matmul(&up(&b, &[1, k], &x[i * k..(i + 1) * k]), &w, epi(w8a8), &mut out).unwrap();
                let one = b.download(&out).unwrap().to_f32().unwrap();
                assert!(
                    one.iter().zip(&many[i * n..(i + 1) * n]).all(|(a, c)| a.to_bits() == c.to_bits()),
                    "{dtype} {what} row {i}"
                );
            }
        }
    }
}
