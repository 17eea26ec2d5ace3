//! Reading `config.json` (as transformers 4.x and 5.x write it), and building the same shape of
//! config from GGUF metadata so that every architecture parses one format.

use serde_json::{json, Map, Value as Json};

use crate::source::gguf::{GgufFile, Value};
use crate::{ModelError, Result};

/// A parsed `config.json` with typed accessors whose errors name the key.
#[derive(Debug, Clone)]
pub struct HfConfig(pub Json);

impl HfConfig {
    /// Parses JSON text.
    pub fn parse(text: &str) -> Result<Self> {
        let v: Json = serde_json::from_str(text).map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        if !v.is_object() {
            return Err(ModelError::Config("config.json is not a JSON object".into()));
        }
        Ok(HfConfig(v))
    }

    /// The value at `key`, treating `null` as absent. Looks inside `text_config` too, where
    /// multimodal checkpoints keep the language model's settings.
    pub fn get(&self, key: &str) -> Option<&Json> {
        self.0
            .get(key)
            .filter(|v| !v.is_null())
            .or_else(|| self.0.get("text_config").and_then(|t| t.get(key)).filter(|v| !v.is_null()))
    }

    /// An optional non-negative integer.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| ModelError::Config(format!("{key} must be a non-negative integer, got {v}"))),
        }
    }

    /// A required non-negative integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| ModelError::Config(format!("missing {key}")))
    }

    /// An optional number.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().map(Some).ok_or_else(|| ModelError::Config(format!("{key} must be a number, got {v}")))
            }
        }
    }

    /// An optional boolean.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_bool().map(Some).ok_or_else(|| ModelError::Config(format!("{key} must be a boolean, got {v}")))
            }
        }
    }

    /// An optional string.
    pub fn opt_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Json::as_str)
    }

    /// The first entry of `architectures`.
    pub fn arch(&self) -> Result<&str> {
        self.get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .ok_or_else(|| ModelError::Config("missing \"architectures\" list".into()))
    }

    /// Token ids at `key`, which may be one integer or a list.
    pub fn ids(&self, key: &str) -> Vec<u32> {
        match self.get(key) {
            Some(Json::Array(a)) => a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect(),
            Some(v) => v.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// `bos_token_id` (the first, if a list).
    pub fn bos(&self) -> Option<u32> {
        self.ids("bos_token_id").first().copied()
    }

    /// `eos_token_id` as a list without repeats.
    pub fn eos(&self) -> Vec<u32> {
        let mut eos = self.ids("eos_token_id");
        eos.sort_unstable();
        eos.dedup();
        eos
    }

    /// `rope_theta`, at top level (transformers 4) or in `rope_parameters` (transformers 5).
    pub fn rope_theta(&self, default: f64) -> Result<f64> {
        // `rotary_emb_base` is GPT-NeoX's older name for it.
        for key in ["rope_theta", "rotary_emb_base"] {
            if let Some(t) = self.opt_f64(key)? {
                return Ok(t);
            }
        }
        match self.get("rope_parameters").and_then(|p| p.get("rope_theta")) {
            Some(v) => v.as_f64().ok_or_else(|| ModelError::Config(format!("rope_parameters.rope_theta: {v}"))),
            None => Ok(default),
        }
    }

    /// Checks every value that feeds the model's arithmetic, where present: sizes and counts at
    /// least 1, epsilons, rotary bases, scaling factors, score scales and soft caps finite and
    /// greater than 0. A config that breaks one loads into a meaningless model (NaN, or every
    /// logit equal), so it is refused with the key and the value named.
    pub fn validate_values(&self) -> Result<()> {
        const COUNTS: [&str; 9] = [
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "vocab_size",
            "max_position_embeddings",
            "sliding_window",
            "head_dim",
        ];
        for key in COUNTS {
            if let Some(v) = self.get(key) {
                if v.as_u64().is_none_or(|n| n == 0) {
                    return Err(ModelError::Config(format!("{key} is {v}; it must be an integer of at least 1")));
                }
                // Per-layer settings are allocated from the count before any weight is read;
                // sizes far beyond any model's would only fail later, at a weight's shape.
                let max = match key {
                    "num_hidden_layers" => Some(1u64 << 16),
                    "max_position_embeddings" | "sliding_window" => None,
                    _ => Some(1 << 24),
                };
                if let (Some(max), Some(n)) = (max, v.as_u64()) {
                    if n > max {
                        return Err(ModelError::Config(format!("{key} is {n}; it must be at most {max}")));
                    }
                }
            }
        }
        const POSITIVE: [&str; 9] = [
            "rms_norm_eps",
            "layer_norm_eps",
            "layer_norm_epsilon",
            "rope_theta",
            "rotary_emb_base",
            "query_pre_attn_scalar",
            "attn_logit_softcapping",
            "final_logit_softcapping",
            "partial_rotary_factor",
        ];
        let positive = |name: &str, v: &Json| -> Result<()> {
            match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(()),
                _ => Err(ModelError::Config(format!("{name} is {v}; it must be a finite number greater than 0"))),
            }
        };
        for key in POSITIVE {
            if let Some(v) = self.get(key) {
                positive(key, v)?;
            }
        }
        // Rotary parameters: transformers 4's rope_scaling, 5's rope_parameters (one object, or
        // one per layer type, as Gemma 3 writes them).
        for outer in ["rope_scaling", "rope_parameters"] {
            let Some(obj) = self.get(outer).and_then(Json::as_object) else { continue };
            let mut objs: Vec<(String, &Map<String, Json>)> = vec![(outer.to_string(), obj)];
            for (k, v) in obj {
                if let Some(inner) = v.as_object() {
                    objs.push((format!("{outer}.{k}"), inner));
                }
            }
            for (name, o) in objs {
                for key in ["rope_theta", "factor", "partial_rotary_factor", "attention_factor"] {
                    if let Some(v) = o.get(key).filter(|v| !v.is_null()) {
                        positive(&format!("{name}.{key}"), v)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The rope scaling object (`rope_scaling` in transformers 4, `rope_parameters` in 5), if it
    /// asks for anything but the default rotary embedding.
    pub fn rope_scaling(&self) -> Option<&Map<String, Json>> {
        let obj = self.get("rope_scaling").or_else(|| self.get("rope_parameters"))?.as_object()?;
        let ty = obj.get("rope_type").or_else(|| obj.get("type")).and_then(Json::as_str).unwrap_or("default");
        (ty != "default").then_some(obj)
    }
}

/// `layer_types` (one of `full_attention` / `sliding_attention` per layer), if the config has it;
/// an error when its length is not the layer count.
pub fn layer_types(cfg: &HfConfig, layers: usize) -> Result<Option<Vec<String>>> {
    let Some(v) = cfg.get("layer_types") else { return Ok(None) };
    let types: Vec<String> = v
        .as_array()
        .ok_or_else(|| ModelError::Config(format!("layer_types must be a list, got {v}")))?
        .iter()
        .map(|t| t.as_str().map(str::to_string).ok_or_else(|| ModelError::Config(format!("layer_types entry {t}"))))
        .collect::<Result<_>>()?;
    if types.len() != layers {
        return Err(ModelError::Config(format!("layer_types has {} entries for {layers} layers", types.len())));
    }
    if let Some(bad) = types.iter().find(|t| *t != "full_attention" && *t != "sliding_attention") {
        return Err(ModelError::Config(format!("layer_types entry {bad:?} is not supported")));
    }
    Ok(Some(types))
}

/// Config key set on configs built from GGUF files whose norm weights already include the `+1`
/// of `(1 + w)` RMS norms (llama.cpp adds it when converting Gemma).
pub const GGUF_NORM_SHIFTED: &str = "_turbine_gguf_norm_shifted";

/// The config keys GPT-2, GPT-NeoX, Bloom and Falcon name their own way, as llama.cpp's
/// converter implies them.
fn classic_keys(f: &GgufFile, arch: &str, c: &mut Map<String, Json>) -> Result<()> {
    let u = |k: &str| f.get(&format!("{arch}.{k}")).and_then(Value::as_u64);
    let get = |c: &Map<String, Json>, k: &str| c.get(k).cloned().unwrap_or(Json::Null);
    match arch {
        "gpt2" => {
            for (alias, from) in [
                ("n_embd", "hidden_size"),
                ("n_head", "num_attention_heads"),
                ("n_layer", "num_hidden_layers"),
                ("n_positions", "max_position_embeddings"),
                ("n_inner", "intermediate_size"),
            ] {
                let v = get(c, from);
                c.insert(alias.into(), v);
            }
            c.insert("activation_function".into(), json!("gelu_new"));
        }
        "gptneox" => {
            let parallel = !matches!(f.get("gptneox.use_parallel_residual"), Some(Value::Bool(false)));
            c.insert("use_parallel_residual".into(), json!(parallel));
            c.insert("hidden_act".into(), json!("gelu"));
        }
        // ALiBi has no trained length; llama.cpp's converter writes a nominal one.
        "bloom" => {
            c.insert("seq_length".into(), json!(u("context_length").unwrap_or(2048).max(2048)));
        }
        "falcon" => {
            let kv = u("attention.head_count_kv").unwrap_or(1);
            c.insert("num_kv_heads".into(), json!(kv));
            c.insert("new_decoder_architecture".into(), json!(f.has_tensor("blk.0.attn_norm_2.weight") || kv > 1));
            c.insert("multi_query".into(), json!(kv == 1));
            let norms = if f.has_tensor("blk.0.attn_norm_2.weight") { 2 } else { 1 };
            c.insert("num_ln_in_parallel_attn".into(), json!(norms));
            c.insert("parallel_attn".into(), json!(true));
            c.insert("alibi".into(), json!(false));
            c.insert("ffn_hidden_size".into(), get(c, "intermediate_size"));
            c.insert("activation".into(), json!("gelu"));
        }
        _ => {}
    }
    Ok(())
}

/// Builds an HF-style config from the metadata of a GGUF file. Architectures are named as
/// transformers names them; unknown ones become `gguf:<name>` so the registry can report them.
pub fn from_gguf(f: &GgufFile) -> Result<HfConfig> {
    let arch = f.arch()?.to_string();
    let key = |k: &str| format!("{arch}.{k}");
    let u = |k: &str| f.get(&key(k)).and_then(Value::as_u64);
    let fl = |k: &str| f.get(&key(k)).and_then(Value::as_f64);
    let need = |k: &str| u(k).ok_or_else(|| ModelError::corrupt(f.path(), format!("missing metadata {}", key(k))));
    let hf_arch = match arch.as_str() {
        "llama" => "LlamaForCausalLM".to_string(),
        "mistral" => "MistralForCausalLM".to_string(),
        "qwen2" => "Qwen2ForCausalLM".to_string(),
        "qwen3" => "Qwen3ForCausalLM".to_string(),
        "phi3" => "Phi3ForCausalLM".to_string(),
        "gemma3" => "Gemma3ForCausalLM".to_string(),
        "gpt2" => "GPT2LMHeadModel".to_string(),
        "gptneox" => "GPTNeoXForCausalLM".to_string(),
        "bloom" => "BloomForCausalLM".to_string(),
        "falcon" => "FalconForCausalLM".to_string(),
        other => format!("gguf:{other}"),
    };
    let mut c = Map::new();
    c.insert("architectures".into(), json!([hf_arch]));
    if hf_arch.starts_with("gguf:") {
        return Ok(HfConfig(Json::Object(c)));
    }
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let vocab = u("vocab_size").or_else(|| match f.get("tokenizer.ggml.tokens") {
        Some(Value::Arr(a)) => Some(a.len() as u64),
        _ => None,
    });
    c.insert("hidden_size".into(), json!(hidden));
    c.insert("intermediate_size".into(), json!(need("feed_forward_length")?));
    c.insert("num_hidden_layers".into(), json!(need("block_count")?));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(u("attention.head_count_kv").unwrap_or(heads)));
    if let Some(d) = u("attention.key_length") {
        c.insert("head_dim".into(), json!(d));
    }
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("max_position_embeddings".into(), json!(u("context_length").unwrap_or(2048)));
    if let Some(eps) = fl("attention.layer_norm_rms_epsilon") {
        c.insert("rms_norm_eps".into(), json!(eps));
    }
    if let Some(eps) = fl("attention.layer_norm_epsilon") {
        c.insert("layer_norm_eps".into(), json!(eps));
        c.insert("layer_norm_epsilon".into(), json!(eps));
    }
    c.insert("rope_theta".into(), json!(fl("rope.freq_base").unwrap_or(10000.0)));
    if let (Some(rot), Some(d)) = (u("rope.dimension_count"), u("attention.key_length").or(Some(hidden / heads.max(1))))
    {
        if rot > 0 && rot < d {
            c.insert("partial_rotary_factor".into(), json!(rot as f64 / d as f64));
        }
    }
    if let Some(w) = u("attention.sliding_window") {
        c.insert("sliding_window".into(), json!(w));
    }
    if f.get(&key("rope.scaling.type")).and_then(Value::as_str) == Some("linear") {
        c.insert("rope_scaling".into(), json!({"rope_type": "linear", "factor": fl("rope.scaling.factor")}));
    }
    c.insert("tie_word_embeddings".into(), json!(!f.has_tensor("output.weight")));
    if arch == "gemma3" {
        // llama.cpp's Gemma 3: every 6th layer global, local layers at base 10000, scores scaled
        // by 1/sqrt(head_dim), and norm weights stored with the +1 already added.
        c.insert("sliding_window_pattern".into(), json!(6));
        c.insert("rope_local_base_freq".into(), json!(10000.0));
        c.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
        c.insert(GGUF_NORM_SHIFTED.into(), json!(true));
        if let Some(d) = u("attention.key_length") {
            c.insert("query_pre_attn_scalar".into(), json!(d));
        }
    }
    classic_keys(f, &arch, &mut c)?;
    for (k, hk) in [("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")] {
        if let Some(v) = f.get(k).and_then(Value::as_u64) {
            c.insert(hk.into(), json!(v));
        }
    }
    Ok(HfConfig(Json::Object(c)))
}

#[cfg(test)]
mod tests {

    #[test]
    fn values_that_feed_the_arithmetic_are_checked() {
        let base = json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "vocab_size": 100, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "sliding_window": null, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}
        });
        assert!(HfConfig(base.clone()).validate_values().is_ok());
        let cases = [
            ("rope_theta", json!(0.0)),
            ("rope_theta", json!(-1.0)),
            ("rms_norm_eps", json!(0.0)),
            ("layer_norm_eps", json!(-1e-5)),
            ("sliding_window", json!(0)),
            ("query_pre_attn_scalar", json!(0)),
            ("num_hidden_layers", json!(0)),
            ("vocab_size", json!(-3)),
            ("final_logit_softcapping", json!(0.0)),
            // Found by the mutation tests: a per-layer table of 2^32 entries aborted the load.
            ("num_hidden_layers", json!(4_294_967_296u64)),
            ("hidden_size", json!(1u64 << 40)),
        ];
        for (key, bad) in cases {
            let mut v = base.clone();
            v[key] = bad.clone();
            let e = HfConfig(v).validate_values().expect_err(key).to_string();
            assert!(e.contains(key) && e.contains(&bad.to_string()), "{key}: {e}");
        }
        let mut v = base.clone();
        v["rope_scaling"]["factor"] = json!(-2.0);
        let e = HfConfig(v).validate_values().unwrap_err().to_string();
        assert!(e.contains("rope_scaling.factor") && e.contains("-2"), "{e}");
        // transformers 5: per layer type (Gemma 3).
        let mut v = base;
        v["rope_parameters"] = json!({"full_attention": {"rope_type": "default", "rope_theta": 0.0}});
        let e = HfConfig(v).validate_values().unwrap_err().to_string();
        assert!(e.contains("rope_parameters.full_attention.rope_theta"), "{e}");
    }

    use super::*;

    #[test]
    fn rope_theta_both_layouts() {
        let v4 = HfConfig::parse(r#"{"rope_theta": 5e5}"#).unwrap();
        let v5 = HfConfig::parse(r#"{"rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}}"#).unwrap();
        assert_eq!(v4.rope_theta(1e4).unwrap(), 5e5);
        assert_eq!(v5.rope_theta(1e4).unwrap(), 1e6);
        assert!(v5.rope_scaling().is_none());
        let bad = HfConfig::parse(r#"{"hidden_size": "big"}"#).unwrap();
        assert!(bad.usize("hidden_size").unwrap_err().to_string().contains("hidden_size"));
    }
}
