//! Whole models on the CUDA backend against the CPU backend, under every precision policy and KV
//! cache format: the logits of every prompt position after one prefill step, then greedy decode
//! steps. Each backend calibrates for itself where the policy calibrates (exact channels, static
//! scales), as a deployment would.
//!
//! Runs where a CUDA device can be opened — a GPU, or the CPU emulator (`cargo xtask emu`); where
//! none can, it prints why and passes, unless `TURBINE_REQUIRE_GPU` is set.

use turbine_core::{DType, Ops};
use turbine_kernels_cuda::Cuda;
use turbine_kernels_ref::Cpu;
use turbine_models::precision::Policy;
use turbine_models::{CacheConfig, Logits, ModelRunner, Runner, SeqStep};
use turbine_tests::fixtures;

/// The logits of every position of a fixed prompt, then `DECODE` greedy steps: (logits, ids,
/// top-1/top-2 margin of each decode step).
type Outcome = (Vec<f32>, Vec<u32>, Vec<f32>);

const PROMPT: usize = 24;
const DECODE: usize = 8;

fn argmax_margin(row: &[f32]) -> (u32, f32) {
    let mut best = (0usize, f32::NEG_INFINITY, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > best.1 {
            best = (i, v, best.1);
        } else if v > best.2 {
            best.2 = v;
        }
    }
    (best.0 as u32, best.1 - best.2)
}

fn run<B: Ops + Clone>(b: B, case: &str, policy: &Policy, kv: DType) -> Outcome {
    let path = fixtures().join("tiny").join(case);
    let m = turbine_models::load_with(&b, &path, policy).unwrap_or_else(|e| panic!("{case} {policy:?}: {e}"));
    let cache = CacheConfig { block_size: 16, num_blocks: 4, kv_dtype: kv };
    let mut r = Runner::new(b, m.model, cache).unwrap();
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| (i * 37 + 5) % 500).collect();
    let blocks = [0u32, 1, 2, 3];
    r.step(&[SeqStep { tokens: &prompt, start: 0, blocks: &blocks, logits: Logits::All }]).unwrap();
    let logits = r.logits().unwrap();
    let vocab = logits.len() / PROMPT;
    let (mut next, _) = argmax_margin(&logits[(PROMPT - 1) * vocab..]);
    let (mut ids, mut margins) = (Vec::new(), Vec::new());
    for pos in PROMPT..PROMPT + DECODE {
        let tok = [next];
        r.step(&[SeqStep { tokens: &tok, start: pos, blocks: &blocks, logits: Logits::Last }]).unwrap();
        let (id, margin) = argmax_margin(&r.logits().unwrap());
        ids.push(id);
        margins.push(margin);
        next = id;
    }
    (logits, ids, margins)
}

/// Tolerance of a W8A8 model's logits when its products run on FP8 tensor cores
/// (`TURBINE_CUDA_PRODUCTS=fast`).
const FP8_MMA_TOL: f32 = 1e-1;

/// The bf16 policy's tolerance below, also that of weight-only 8-bit products on tensor cores.
const BF16_TOL: f32 = 4e-2;

#[test]
fn every_policy_and_cache_format_matches_the_cpu() {
    let cuda = match Cuda::new(0) {
        Ok(c) => c,
        Err(e) => {
            assert!(std::env::var_os("TURBINE_REQUIRE_GPU").is_none(), "TURBINE_REQUIRE_GPU is set but: {e}");
            println!("skipped: no CUDA device ({e})");
            return;
        }
    };
    let policy = |name: &str| Policy { calib_tokens: 256, ..Policy::parse(name, &[]).unwrap() };
    let fp8 = policy("fp8");
    // (case, format name, policy, KV cache, tolerance on the largest logit difference relative to
    // the largest CPU logit): the CUDA products round their inputs to the weights' 16-bit type
    // where the CPU widens the weights, and both round activations to E4M3 for fp8, where one
    // value landing on the other side of a rounding boundary moves a logit by a few hundredths.
    let cases: Vec<(&str, &str, Policy, DType, f32)> = vec![
        ("llama-gqa", "f32", policy("f32"), DType::F32, 1e-4),
        ("llama-gqa", "f16", policy("f16"), DType::F32, 1e-2),
        ("llama-gqa", "bf16", policy("bf16"), DType::F32, BF16_TOL),
        ("llama-gqa", "fp8", fp8.clone(), DType::F32, 5e-2),
        ("llama-gqa", "fp8", fp8.clone().with_outliers(Some(0)), DType::F32, 5e-2),
        ("llama-gqa", "fp8", Policy { static_inputs: true, ..fp8.clone() }, DType::F32, 5e-2),
        ("llama-gqa", "fp8", Policy { smooth: Some(0.5), center: true, ..fp8.clone() }, DType::F32, 5e-2),
        ("llama-gqa", "fp8-weight", policy("fp8-weight"), DType::F32, 1e-4),
        ("llama-gqa", "int8-weight", policy("int8-weight"), DType::F32, 1e-4),
        ("llama-gqa", "f32", policy("f32"), DType::F8E4M3, 5e-2),
        ("llama-gqa", "f32", policy("f32"), DType::I8, 2e-2),
        ("qwen3-qknorm", "fp8", fp8.clone(), DType::F8E4M3, 5e-2),
        ("gemma3-local-global", "int8-weight", policy("int8-weight"), DType::I8, 2e-2),
        ("bloom-alibi", "fp8-weight", policy("fp8-weight"), DType::F8E4M3, 5e-2),
    ];
    let mut failures = Vec::new();
    for (case, name, p, kv, tol) in cases {
        // W8A8 under fast products runs on FP8 tensor cores, whose sums differ from the CPU's f32
        // sums by about 1e-4 (the op suite's FP8_MMA_TOL): each layer then rounds a few more
        // activations to the other E4M3 neighbour (6% apart). Seen on an H200 (2026-12-04):
        // relative logit errors of 3e-2 to 5.6e-2 over the four fp8 policies here.
        // So do W8A8 products on Turbine's own FP8 tensor-core kernel (the invariant mode's, on
        // sm_89+): same products, another order of addition.
        let fp8_cores = !cuda.invariant_products() || cuda.fp8_tensor_core_products();
        let tol = if name == "fp8" && fp8_cores { tol.max(FP8_MMA_TOL) } else { tol };
        // Weight-only 8-bit products on tensor cores round their input to bf16, as bf16 weights'
        // products do: judged as those are.
        let widened = matches!(name, "fp8-weight" | "int8-weight") && cuda.tensor_core_products();
        let tol = if widened { tol.max(BF16_TOL) } else { tol };
        let label = format!("{case} {name} ({}) KV {kv}", p.summary());
        let (want, want_ids, margins) = run(Cpu::new(), case, &p, kv);
        let (got, got_ids, _) = run(cuda.clone(), case, &p, kv);
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
        println!("{label:<60} relative logit error {err:.2e} (tolerance {tol:.0e}); ids {got_ids:?}");
        if err > tol || err.is_nan() {
            failures.push(format!("{label}: relative logit error {err:.2e} > {tol:.0e}"));
        }
        // Greedy ids agree until a step where the CPU's top two are within the error seen.
        if let Some(i) = want_ids.iter().zip(&got_ids).position(|(a, b)| a != b) {
            if margins[i] > 2.0 * tol * scale {
                failures.push(format!("{label}: greedy ids {got_ids:?}, CPU {want_ids:?} (step {i})"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
