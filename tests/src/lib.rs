//! Helpers shared by Turbine's integration tests: fixture paths, loading a model (on the CPU
//! backend, or the one `TURBINE_TEST_BACKEND` names: `cpu` or `cuda`), and the golden comparison
//! rules.

pub mod gguf;
pub mod mutate;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;
use turbine_batcher::{EngineConfig, EngineCore, Request};
use turbine_core::Ops;
use turbine_kernels_ref::Cpu;
use turbine_models::precision::Policy;
use turbine_models::tokenizer::TextTokenizer;
use turbine_models::{CacheConfig, Logits, ModelRunner, Runner};

/// The folder of test fixtures (`TURBINE_FIXTURES` overrides it, for test executables carried
/// to another machine).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("TURBINE_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
    }
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

/// A model on a backend, ready to generate: the engine core the server uses, driven one
/// request at a time.
pub struct TestModel {
    /// The engine core.
    pub engine: EngineCore,
    /// The tokenizer.
    pub tok: TextTokenizer,
    /// End-of-sequence ids.
    pub eos: Vec<u32>,
}

/// Loads a model folder or GGUF file with a cache of `ctx` tokens, on the CPU backend or the one
/// `TURBINE_TEST_BACKEND` names (`cuda`: device 0; it is an error if there is none).
pub fn load(path: &Path, ctx: usize) -> Result<TestModel> {
    let (runner, tok, eos) = load_runner(path, ctx.div_ceil(16))?;
    Ok(TestModel { engine: EngineCore::new(runner, EngineConfig::default()), tok, eos })
}

/// A model with a cache of `blocks` blocks of 16 tokens, on the backend [`load`] uses, with its
/// tokenizer and EOS ids.
pub fn load_runner(path: &Path, blocks: usize) -> Result<(Box<dyn ModelRunner>, TextTokenizer, Vec<u32>)> {
    load_runner_on(path, blocks, &Policy::parse("auto", &[])?, false)
}

/// [`load_runner`] with the projections stored as `policy` says.
pub fn load_runner_with(
    path: &Path,
    blocks: usize,
    policy: &Policy,
) -> Result<(Box<dyn ModelRunner>, TextTokenizer, Vec<u32>)> {
    load_runner_on(path, blocks, policy, false)
}

/// [`load`] with the projections stored as `policy` says (calibrating first where it needs to).
pub fn load_with(path: &Path, ctx: usize, policy: &Policy) -> Result<TestModel> {
    let (runner, tok, eos) = load_runner_on(path, ctx.div_ceil(16), policy, false)?;
    Ok(TestModel { engine: EngineCore::new(runner, EngineConfig::default()), tok, eos })
}

/// Whether the backend [`load`] uses multiplies 16-bit weights on tensor cores, rounding the
/// input to 16 bits (CUDA's default): there 16-bit storage no longer gives exactly the products
/// of its f32 widening, only products within 16-bit rounding of them.
pub fn backend_rounds_16bit_inputs() -> bool {
    #[cfg(feature = "cuda")]
    if std::env::var("TURBINE_TEST_BACKEND").as_deref() == Ok("cuda") {
        return turbine_kernels_cuda::Cuda::new(0).is_ok_and(|c| c.tensor_core_products());
    }
    false
}

/// [`load`], with the embedding tables widened to f32 after loading (as they were stored before
/// 16-bit and GGUF tables were kept as the checkpoint has them): the reference for those tables.
pub fn load_widened_tables(path: &Path, ctx: usize) -> Result<TestModel> {
    let (runner, tok, eos) = load_runner_on(path, ctx.div_ceil(16), &Policy::parse("auto", &[])?, true)?;
    Ok(TestModel { engine: EngineCore::new(runner, EngineConfig::default()), tok, eos })
}

fn load_runner_on(
    path: &Path,
    blocks: usize,
    policy: &Policy,
    widen: bool,
) -> Result<(Box<dyn ModelRunner>, TextTokenizer, Vec<u32>)> {
    match std::env::var("TURBINE_TEST_BACKEND").as_deref() {
        Err(_) | Ok("cpu") => load_on(Cpu::new(), path, blocks, policy, widen),
        #[cfg(feature = "cuda")]
        Ok("cuda") => load_on(turbine_kernels_cuda::Cuda::new(0)?, path, blocks, policy, widen),
        #[cfg(not(feature = "cuda"))]
        Ok("cuda") => anyhow::bail!("TURBINE_TEST_BACKEND=cuda: these tests were built without the `cuda` feature"),
        Ok(other) => anyhow::bail!("TURBINE_TEST_BACKEND={other:?}: use cpu or cuda"),
    }
}

fn load_on<B: Ops + Clone>(
    b: B,
    path: &Path,
    blocks: usize,
    policy: &Policy,
    widen: bool,
) -> Result<(Box<dyn ModelRunner>, TextTokenizer, Vec<u32>)> {
    let mut m = turbine_models::load_with(&b, path, policy)?;
    if widen {
        let d = m.model.decoder_mut().context("no generic decoder to edit")?;
        // `upload` widens f16/bf16 (and, on CUDA, GGUF blocks) to f32.
        d.embed = b.upload(&b.download(&d.embed)?)?;
        if let Some(pe) = &d.pos_embed {
            d.pos_embed = Some(b.upload(&b.download(pe)?)?);
        }
    }
    let runner = Runner::new(b, m.model, CacheConfig::f32(16, blocks))?;
    Ok((Box::new(runner), m.tokenizer, m.eos))
}

/// Greedy ids for `n` tokens, EOS ignored, plus the first step's full logits.
pub fn greedy(l: &mut TestModel, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
    let req = Request::greedy(prompt.to_vec(), n)?.with_ignore_eos(true).with_stop_ids(l.eos.clone());
    Ok(turbine_batcher::generate(&mut l.engine, req, &mut |_, _| {})?.tokens.iter().map(|t| t.id).collect())
}

/// The logits after running `prompt` through a fresh sequence in one step, as f64.
pub fn first_step_logits(l: &mut TestModel, prompt: &[u32]) -> Result<Vec<f64>> {
    let mut seq = l.engine.begin_score(prompt.len())?;
    let logits = l.engine.score_step(&mut seq, prompt, Logits::Last);
    l.engine.end_score(seq);
    Ok(logits?.iter().map(|&v| v as f64).collect())
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

/// Copies a tiny HF folder, re-saving its f32 weights as `dtype` (f32, f16 or bf16) in `shards`
/// safetensors files with a `model.safetensors.index.json`, the way large checkpoints ship.
pub fn reshard(src: &Path, dst: &Path, dtype: safetensors::Dtype, shards: usize) -> Result<()> {
    use safetensors::tensor::TensorView;
    std::fs::create_dir_all(dst)?;
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dst.join(f))?;
    }
    let bytes = std::fs::read(src.join("model.safetensors"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(names.len().div_ceil(shards)).enumerate() {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", i + 1);
        let mut data = Vec::new();
        for n in chunk {
            let t = st.tensor(n)?;
            let vals = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            let raw: Vec<u8> = match dtype {
                safetensors::Dtype::F16 => vals.flat_map(|v| half::f16::from_f32(v).to_le_bytes()).collect(),
                safetensors::Dtype::BF16 => vals.flat_map(|v| half::bf16::from_f32(v).to_le_bytes()).collect(),
                _ => t.data().to_vec(),
            };
            data.push((n.clone(), t.shape().to_vec(), raw));
            weight_map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
        let views: Vec<(String, TensorView<'_>)> = data
            .iter()
            .map(|(n, s, r)| Ok((n.clone(), TensorView::new(dtype, s.clone(), r)?)))
            .collect::<Result<_>>()?;
        safetensors::serialize_to_file(views, None, &dst.join(file))?;
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dst.join("model.safetensors.index.json"), index.to_string())?;
    Ok(())
}

/// One tensor of a checkpoint being rewritten: its name, shape and little-endian bytes.
pub struct Rewritten<'a> {
    /// The tensor's name.
    pub name: &'a str,
    /// Its shape (editable).
    pub shape: &'a mut Vec<usize>,
    /// Its bytes (editable; f32 fixtures: 4 a value).
    pub data: &'a mut Vec<u8>,
}

/// Copies a tiny HF folder (single `model.safetensors`), letting `edit` change each tensor and
/// `config` / `tokenizer` the JSON files on the way.
pub fn rewrite(
    src: &Path,
    dst: &Path,
    mut edit: impl FnMut(Rewritten<'_>),
    config: impl FnOnce(&mut Value),
    tokenizer: impl FnOnce(&mut Value),
) -> Result<()> {
    use safetensors::tensor::TensorView;
    std::fs::create_dir_all(dst)?;
    for (f, change) in
        [("config.json", Box::new(config) as Box<dyn FnOnce(&mut Value)>), ("tokenizer.json", Box::new(tokenizer))]
    {
        let mut v = read_json(&src.join(f))?;
        change(&mut v);
        std::fs::write(dst.join(f), v.to_string())?;
    }
    let bytes = std::fs::read(src.join("model.safetensors"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut data: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in st.tensors() {
        let (mut shape, mut raw) = (t.shape().to_vec(), t.data().to_vec());
        edit(Rewritten { name: &name, shape: &mut shape, data: &mut raw });
        data.push((name, t.dtype(), shape, raw));
    }
    let views: Vec<(String, TensorView<'_>)> =
        data.iter().map(|(n, d, s, r)| Ok((n.clone(), TensorView::new(*d, s.clone(), r)?))).collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, None, &dst.join("model.safetensors"))?;
    Ok(())
}

/// Copies a tiny HF folder (f32 weights) with row `token` of `embed` (the token embedding
/// table, `[vocab, hidden]`) set to `value`: a prompt holding that token drives the model to
/// NaN or infinity while other prompts are unaffected (for the numerics guard's tests).
pub fn poison_token(src: &Path, dst: &Path, embed: &str, token: usize, value: f32) -> Result<()> {
    let mut found = false;
    rewrite(
        src,
        dst,
        |t| {
            if t.name == embed {
                found = true;
                let hidden = t.shape[1];
                for v in t.data[token * hidden * 4..(token + 1) * hidden * 4].chunks_exact_mut(4) {
                    v.copy_from_slice(&value.to_le_bytes());
                }
            }
        },
        |_| {},
        |_| {},
    )?;
    anyhow::ensure!(found, "no tensor {embed}");
    Ok(())
}

/// Copies a tiny HF folder (f32 weights, untied `lm_head`) with `tokens` added as control
/// tokens: new ids after the vocabulary, in the tokenizer (special) and in the model (zero rows
/// of the embeddings and the LM head, `vocab_size` grown), so that prompts holding them run.
pub fn with_control_tokens(src: &Path, dst: &Path, tokens: &[&str]) -> Result<()> {
    let n = tokens.len();
    let mut vocab = 0;
    rewrite(
        src,
        dst,
        |t| {
            if t.name == "model.embed_tokens.weight" || t.name == "lm_head.weight" {
                vocab = t.shape[0];
                t.data.resize(t.data.len() + n * t.shape[1] * 4, 0);
                t.shape[0] += n;
            }
        },
        |c| c["vocab_size"] = Value::from(c["vocab_size"].as_u64().unwrap_or(0) + n as u64),
        |tok| {
            let base = tok["model"]["vocab"].as_object().map_or(0, |v| v.len());
            if let Some(added) = tok["added_tokens"].as_array_mut() {
                for (i, text) in tokens.iter().enumerate() {
                    added.push(serde_json::json!({"id": base + i, "content": text, "single_word": false,
                        "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
                }
            }
        },
    )?;
    anyhow::ensure!(vocab > 0, "no embedding table");
    Ok(())
}
