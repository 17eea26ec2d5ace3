//! A minimal GGUF v3 writer, used to turn the tiny Hugging Face fixtures into GGUF files the way
//! llama.cpp's converter does (tensor names, Q/K rotary permutation for `llama`, tokenizer
//! metadata), so the GGUF path is checked against the same transformers references.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value as Json;
use turbine_core::{DType, HostTensor};
use turbine_models::source::gguf_names::gguf_name;
use turbine_models::source::safetensors::SafetensorsSource;
use turbine_models::source::WeightSource;

/// A metadata value to write.
pub enum Meta {
    /// u32.
    U32(u32),
    /// f32.
    F32(f32),
    /// bool.
    Bool(bool),
    /// string.
    Str(String),
    /// array of strings.
    Strs(Vec<String>),
    /// array of i32.
    I32s(Vec<i32>),
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

fn put_meta(b: &mut Vec<u8>, key: &str, v: &Meta) {
    put_str(b, key);
    match v {
        Meta::U32(x) => {
            b.extend(4u32.to_le_bytes());
            b.extend(x.to_le_bytes());
        }
        Meta::F32(x) => {
            b.extend(6u32.to_le_bytes());
            b.extend(x.to_le_bytes());
        }
        Meta::Bool(x) => {
            b.extend(7u32.to_le_bytes());
            b.push(*x as u8);
        }
        Meta::Str(s) => {
            b.extend(8u32.to_le_bytes());
            put_str(b, s);
        }
        Meta::Strs(v) => {
            b.extend(9u32.to_le_bytes());
            b.extend(8u32.to_le_bytes());
            b.extend((v.len() as u64).to_le_bytes());
            for s in v {
                put_str(b, s);
            }
        }
        Meta::I32s(v) => {
            b.extend(9u32.to_le_bytes());
            b.extend(5u32.to_le_bytes());
            b.extend((v.len() as u64).to_le_bytes());
            for x in v {
                b.extend(x.to_le_bytes());
            }
        }
    }
}

/// Serialises a GGUF v3 file: metadata, then f32 or f16 tensors (`[rows, cols]` host layout).
pub fn write(path: &Path, meta: &[(String, Meta)], tensors: &[(String, HostTensor<'_>)]) -> Result<()> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_meta(&mut b, k, v);
    }
    let mut offset = 0u64;
    let mut data = Vec::new();
    for (name, t) in tensors {
        put_str(&mut b, name);
        let dims: Vec<u64> = t.shape().dims().iter().rev().map(|&d| d as u64).collect();
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        let ty: u32 = match t.dtype() {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q8_0 => 8,
            other => anyhow::bail!("cannot write {other}"),
        };
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        data.extend_from_slice(t.bytes());
        while !data.len().is_multiple_of(32) {
            data.push(0);
        }
        offset = data.len() as u64;
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend(data);
    std::fs::write(path, b).with_context(|| path.display().to_string())
}

/// llama.cpp's permutation of a Q or K projection (`heads` heads): within each head, the two
/// rotary halves are interleaved.
fn permute(t: &HostTensor<'_>, heads: usize) -> Result<HostTensor<'static>> {
    let rows = t.shape().dims()[0];
    let d = rows / heads;
    let mut perm = Vec::with_capacity(rows);
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                perm.push(h * d + j * d / 2 + i);
            }
        }
    }
    Ok(t.permute_rows(&perm)?)
}

/// Converts a tiny HF Llama-family folder into a GGUF file (`arch` = `llama` or `qwen2`).
pub fn convert(dir: &Path, arch: &str, out: &Path) -> Result<()> {
    let cfg_text = std::fs::read_to_string(dir.join("config.json"))?;
    let cfg: Json = serde_json::from_str(&cfg_text)?;
    let hf = turbine_models::config::HfConfig::parse(&cfg_text)?;
    let tok: Json = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json"))?)?;
    let u = |k: &str| cfg[k].as_u64().with_context(|| format!("config {k}")).map(|v| v as u32);
    let (heads, kv_heads, layers) = (u("num_attention_heads")?, u("num_key_value_heads")?, u("num_hidden_layers")?);
    let k = |s: &str| format!("{arch}.{s}");
    let mut vocab: Vec<(String, u32)> = tok["model"]["vocab"]
        .as_object()
        .context("vocab")?
        .iter()
        .map(|(t, i)| (t.clone(), i.as_u64().unwrap_or(0) as u32))
        .collect();
    vocab.sort_by_key(|v| v.1);
    let special: Vec<u32> = tok["added_tokens"]
        .as_array()
        .map(|a| a.iter().filter(|t| t["special"] == true).filter_map(|t| t["id"].as_u64()).map(|i| i as u32).collect())
        .unwrap_or_default();
    let merges: Vec<String> = tok["model"]["merges"]
        .as_array()
        .context("merges")?
        .iter()
        .map(|m| match m {
            Json::Array(p) => format!("{} {}", p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or("")),
            other => other.as_str().unwrap_or("").to_string(),
        })
        .collect();
    let meta = vec![
        ("general.architecture".to_string(), Meta::Str(arch.into())),
        (k("block_count"), Meta::U32(layers)),
        (k("context_length"), Meta::U32(u("max_position_embeddings")?)),
        (k("embedding_length"), Meta::U32(u("hidden_size")?)),
        (k("feed_forward_length"), Meta::U32(u("intermediate_size")?)),
        (k("attention.head_count"), Meta::U32(heads)),
        (k("attention.head_count_kv"), Meta::U32(kv_heads)),
        (k("rope.freq_base"), Meta::F32(hf.rope_theta(10000.0)? as f32)),
        (k("attention.layer_norm_rms_epsilon"), Meta::F32(cfg["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32)),
        ("tokenizer.ggml.model".into(), Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Meta::Str("gpt-2".into())),
        ("tokenizer.ggml.tokens".into(), Meta::Strs(vocab.iter().map(|v| v.0.clone()).collect())),
        (
            "tokenizer.ggml.token_type".into(),
            Meta::I32s(vocab.iter().map(|v| if special.contains(&v.1) { 3 } else { 1 }).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Meta::Strs(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Meta::U32(u("bos_token_id")?)),
        ("tokenizer.ggml.eos_token_id".into(), Meta::U32(u("eos_token_id")?)),
        ("tokenizer.ggml.add_bos_token".into(), Meta::Bool(false)),
    ];
    let mut meta = meta;
    let head_dim = match cfg["head_dim"].as_u64() {
        Some(d) => {
            meta.push((k("attention.key_length"), Meta::U32(d as u32)));
            meta.push((k("attention.value_length"), Meta::U32(d as u32)));
            d as usize
        }
        None => u("hidden_size")? as usize / heads as usize,
    };
    let mut tensors = Vec::new();
    // Llama 3.x rope scaling: llama.cpp's converter stores each frequency's divisor as the
    // `rope_freqs` tensor (the plain inverse frequency over the scaled one), not as metadata.
    let rope = turbine_models::rope::RopeSpec::from_hf(&hf, head_dim)?;
    if matches!(rope.scaling, turbine_models::rope::RopeScaling::Llama3 { .. }) {
        let plain = turbine_models::rope::RopeSpec { scaling: turbine_models::rope::RopeScaling::None, ..rope.clone() };
        let factors: Vec<f32> = plain.inv_freq().iter().zip(rope.inv_freq()).map(|(p, s)| p / s).collect();
        tensors.push(("rope_freqs.weight".to_string(), HostTensor::from_f32([factors.len()], &factors)?));
    }
    let src = SafetensorsSource::open_dir(dir)?;
    let mut names = vec!["model.embed_tokens.weight".to_string(), "model.norm.weight".into(), "lm_head.weight".into()];
    // Every layer the checkpoint holds, as llama.cpp's converter writes every tensor (the
    // metadata's block_count comes from the config).
    let stored =
        (0..).take_while(|i| src.get(&format!("model.layers.{i}.input_layernorm.weight")).is_ok_and(|t| t.is_some()));
    for i in stored.collect::<Vec<u32>>() {
        for m in ["input_layernorm", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"] {
            names.push(format!("model.layers.{i}.{m}.weight"));
        }
        for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            for kind in ["weight", "bias"] {
                names.push(format!("model.layers.{i}.self_attn.{p}.{kind}"));
            }
        }
    }
    for n in names {
        let Some(t) = src.get(&n)? else { continue };
        let g = gguf_name(arch, &n).with_context(|| format!("no GGUF name for {n}"))?;
        let t = match (arch, g.split('.').nth(2)) {
            ("llama", Some("attn_q")) => permute(&t, heads as usize)?,
            ("llama", Some("attn_k")) => permute(&t, kv_heads as usize)?,
            _ => t.into_owned(),
        };
        tensors.push((g, t));
    }
    write(out, &meta, &tensors)
}
