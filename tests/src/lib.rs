//! Helpers shared by Turbine's integration tests: fixture paths, loading on the CPU backend, and
//! the golden comparison rules.

pub mod gguf;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;
use turbine_batcher::{GenRequest, Generator};
use turbine_core::sampling::SamplingParams;
use turbine_kernels_ref::Cpu;
use turbine_models::tokenizer::TextTokenizer;
use turbine_models::{CacheConfig, Runner};

/// The folder of test fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

/// A JSON array of integers as ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("array of ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// A JSON array of numbers.
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("array of numbers").iter().map(|x| x.as_f64().expect("number")).collect()
}

/// A model on the CPU backend, ready to generate.
pub struct Loaded {
    /// The engine.
    pub gen: Generator,
    /// The tokenizer.
    pub tok: TextTokenizer,
    /// End-of-sequence ids.
    pub eos: Vec<u32>,
}

/// Loads a model folder or GGUF file on the CPU backend with a cache of `ctx` tokens.
pub fn load(path: &Path, ctx: usize) -> Result<Loaded> {
    let cpu = Cpu::new();
    let m = turbine_models::load(&cpu, path)?;
    let cache = CacheConfig { block_size: 16, num_blocks: ctx.div_ceil(16) };
    let runner = Runner::new(cpu, m.model, cache)?;
    Ok(Loaded { gen: Generator::new(Box::new(runner)), tok: m.tokenizer, eos: m.eos })
}

/// Greedy ids for `n` tokens, EOS ignored, plus the first step's full logits.
pub fn greedy(l: &mut Loaded, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
    let req = GenRequest {
        prompt: prompt.to_vec(),
        params: SamplingParams { temperature: 0.0, ..Default::default() },
        max_tokens: n,
        ignore_eos: true,
        stop_ids: l.eos.clone(),
    };
    Ok(l.gen.generate(&req, &mut |_| {})?.tokens.iter().map(|t| t.id).collect())
}

/// Compares greedy ids with the reference. A divergence is accepted only at a near-tie step
/// (reference top-1/top-2 margin below `tie`), after which the continuations are unrelated.
pub fn check_greedy(got: &[u32], want: &[u32], margins: &[f64], tie: f64) -> Result<(), String> {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            return if margins.get(i).is_some_and(|&m| m < tie) {
                Ok(())
            } else {
                Err(format!("greedy ids diverge at step {i}: got {got:?}, want {want:?} (margin {:?})", margins.get(i)))
            };
        }
    }
    if got.len() != want.len() {
        return Err(format!("got {} ids, want {}", got.len(), want.len()));
    }
    Ok(())
}

/// Log-softmax in f64.
pub fn log_softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + x.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    x.iter().map(|v| v - lse).collect()
}
