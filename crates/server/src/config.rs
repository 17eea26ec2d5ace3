//! `turbine serve`'s configuration: a TOML file (`--config turbine.toml`) whose every value a
//! command-line flag can override. `turbine.example.toml` at the repository root documents each
//! key; unknown keys are refused by name, so a typo never goes unnoticed.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The whole configuration. Every section and key is optional; missing ones take the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// What to serve.
    pub model: ModelSection,
    /// The scheduler and the KV cache.
    pub engine: EngineSection,
    /// Where to listen, who may call.
    pub server: ServerSection,
    /// What a request may ask for.
    pub limits: Limits,
    /// Speculative decoding.
    pub speculative: SpeculativeSection,
}

/// `[speculative]`: a proposer drafts tokens that the model checks several per step; outputs are
/// unchanged (greedy and seeded requests to the bit, sampled ones in distribution).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpeculativeSection {
    /// `off`, `ngram` (prompt lookup: drafts copied from the request's own prompt and output) or
    /// `draft` (a draft model, `draft_model`).
    pub method: String,
    /// The draft model for `draft`: a folder, a `.gguf` file or a known name, with the served
    /// model's tokenizer. It runs on the same backend, in the precision its checkpoint stores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft_model: Option<String>,
    /// Most tokens drafted per request and step (the length then adapts to each request's
    /// acceptance).
    pub draft_tokens: usize,
    /// Speculation pauses while this many requests or more are running.
    pub max_running: usize,
    /// `ngram`: the shortest suffix of the sequence that is looked up.
    pub ngram_min: usize,
    /// `ngram`: the longest suffix, tried first.
    pub ngram_max: usize,
}

impl Default for SpeculativeSection {
    fn default() -> Self {
        SpeculativeSection {
            method: "off".into(),
            draft_model: None,
            draft_tokens: 8,
            max_running: 32,
            ngram_min: 2,
            ngram_max: 4,
        }
    }
}

impl SpeculativeSection {
    /// Checks the values together; the message names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        match self.method.as_str() {
            "off" | "ngram" => {}
            "draft" if self.draft_model.is_none() => {
                anyhow::bail!("speculative.method = \"draft\" needs speculative.draft_model (--draft-model)")
            }
            "draft" => {}
            other => anyhow::bail!("speculative.method: unknown method {other:?}; use off, ngram or draft"),
        }
        if self.draft_tokens < 1 {
            anyhow::bail!("speculative.draft_tokens must be at least 1");
        }
        if self.max_running < 1 {
            anyhow::bail!("speculative.max_running must be at least 1");
        }
        if self.ngram_min < 1 || self.ngram_min > self.ngram_max {
            anyhow::bail!(
                "speculative.ngram_min must be at least 1 and at most ngram_max ({} and {} given)",
                self.ngram_min,
                self.ngram_max
            );
        }
        Ok(())
    }

    /// The engine's settings, or `None` when off.
    pub fn config(&self) -> Option<turbine_batcher::SpecConfig> {
        (self.method != "off")
            .then_some(turbine_batcher::SpecConfig { draft_tokens: self.draft_tokens, max_running: self.max_running })
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// A model folder, a `.gguf` file, or a known name.
    pub path: String,
    /// The name clients use in `"model"` (default: the known name or the file's stem).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_name: Option<String>,
    /// Kernel backend: `cpu` (or `cuda` in a build with that feature).
    pub backend: String,
    /// How the block projections are stored and multiplied: `auto` keeps what the checkpoint
    /// stores (GGUF blocks stay quantised); `f32`, `f16`, `bf16`, `fp8` (FP8 weights and inputs),
    /// `fp8-weight`, `int8-weight`.
    pub dtype: String,
    /// Projections that keep the checkpoint's precision (`qkv`, `o`, `up`, `down`, `layer:N`,
    /// `ROLE@N`); empty: the format's default (`fp8` and `fp8-weight` keep the model's measured
    /// most sensitive blocks, else its last block); `["none"]`: no exceptions.
    pub keep: Vec<String>,
    /// 8-bit formats: input channels of each projection multiplied exactly in f32 (the
    /// calibrated outliers); unset: the format's default (16 for the 8-bit formats, else 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outliers: Option<usize>,
    /// Load a checkpoint that holds tensors the architecture does not use (they are ignored);
    /// by default such a checkpoint is refused, naming them.
    pub allow_unused_weights: bool,
    /// A precision policy file (TOML, the CLI's `--precision`: format, keep, kv, outliers,
    /// rounding, calibration…). It is the base: `dtype`, `keep`, `outliers` and `[engine]
    /// kv_dtype` override its keys when set to other than their defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
}

impl ModelSection {
    /// The precision policy's written form: `dtype`, `keep`, `outliers`, `allow_unused_weights`
    /// and the KV cache's storage `kv` (`[engine] kv_dtype`), the same spec the CLI's flags make.
    /// With `precision`, the file's spec is the base and these keys override it where they
    /// differ from their defaults (`auto`, none, `f32`).
    pub fn spec(&self, kv: &str) -> anyhow::Result<turbine_models::policy_file::PolicySpec> {
        use turbine_models::policy_file::PolicySpec;
        let Some(path) = &self.precision else {
            return Ok(PolicySpec {
                format: self.dtype.clone(),
                keep: self.keep.clone(),
                kv: kv.to_string(),
                outliers: self.outliers,
                allow_unused_weights: self.allow_unused_weights,
                ..Default::default()
            });
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("model.precision: cannot read the policy file {path}: {e}"))?;
        let mut spec: PolicySpec =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("model.precision: {path}: {}", e.message()))?;
        let defaults = ModelSection::default();
        if self.dtype != defaults.dtype {
            spec.format = self.dtype.clone();
        }
        if !self.keep.is_empty() {
            spec.keep = self.keep.clone();
        }
        if self.outliers.is_some() {
            spec.outliers = self.outliers;
        }
        if kv != EngineSection::default().kv_dtype {
            spec.kv = kv.to_string();
        }
        spec.allow_unused_weights |= self.allow_unused_weights;
        Ok(spec)
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            path: turbine_models::catalog::DEFAULT_MODEL.into(),
            served_name: None,
            backend: "cpu".into(),
            dtype: "auto".into(),
            keep: Vec::new(),
            outliers: None,
            allow_unused_weights: false,
            precision: None,
        }
    }
}

/// `[engine]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// Most sequences per step.
    pub max_batch: usize,
    /// Most tokens per step (decode tokens plus prefill chunks).
    pub max_num_tokens: usize,
    /// Most requests waiting to start; beyond it requests get 429 with `Retry-After`.
    pub max_waiting: usize,
    /// KV cache size in tokens.
    pub kv_tokens: usize,
    /// KV cache budget in bytes (overrides `kv_tokens`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_bytes: Option<usize>,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Storage of keys and values: `f32`, `fp8` (FP8 E4M3) or `int8` (one byte a value and one
    /// scale per token and kv head: about 3.8 times the tokens in the same bytes).
    pub kv_dtype: String,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            max_batch: 16,
            max_num_tokens: 512,
            max_waiting: 256,
            kv_tokens: 16384,
            kv_bytes: None,
            block_size: crate::setup::BLOCK_SIZE,
            kv_dtype: "f32".into(),
        }
    }
}

impl EngineSection {
    /// The KV cache size (its storage is the precision policy's, [`ServeConfig::policy`]).
    pub fn kv(&self) -> crate::setup::KvSize {
        crate::setup::KvSize { block_size: self.block_size, tokens: self.kv_tokens, bytes: self.kv_bytes }
    }

    /// The scheduler limits.
    pub fn config(&self) -> turbine_batcher::EngineConfig {
        turbine_batcher::EngineConfig {
            max_num_tokens: self.max_num_tokens,
            max_batch_size: self.max_batch,
            max_waiting: self.max_waiting,
            // Set with the proposer (`speculation::speculation`).
            speculative: None,
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Address to bind: loopback unless told otherwise.
    pub host: String,
    /// Port (0 picks a free one).
    pub port: u16,
    /// Accepted API keys (`Authorization: Bearer KEY`); empty means no authentication.
    /// `TURBINE_API_KEY` adds one.
    pub api_keys: Vec<String>,
    /// Seconds that running requests get to finish after SIGINT/SIGTERM; then they are cancelled.
    pub drain_timeout_s: f64,
    /// Seconds a client has to send a whole request header, counted from the moment the server
    /// waits for it: from the connection's start, and between keep-alive requests (so it is also
    /// the keep-alive idle timeout). The connection is closed when it runs out.
    pub header_timeout_s: f64,
    /// Seconds a request body may take beyond what `body_min_rate` allows for the bytes received
    /// so far; past that the request gets 408 and the connection is closed.
    pub body_timeout_s: f64,
    /// Slowest body transfer accepted, in bytes per second (after `body_timeout_s` of grace).
    pub body_min_rate: f64,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            host: "127.0.0.1".into(),
            port: 8000,
            api_keys: Vec::new(),
            drain_timeout_s: 30.0,
            header_timeout_s: 30.0,
            body_timeout_s: 30.0,
            body_min_rate: 1024.0,
        }
    }
}

/// `[limits]`: what one client may ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Most choices per prompt (`n`).
    pub max_n: usize,
    /// Largest `max_tokens` a request may ask for (0: up to the context).
    pub max_tokens: usize,
    /// Longest prompt in tokens (0: up to the context).
    pub max_prompt_tokens: usize,
    /// Most open client connections. When all are open, a new client takes the place of the
    /// connection idle the longest (no request in flight); it waits only while every connection
    /// has a request in flight.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_body_bytes: 4 << 20, max_n: 16, max_tokens: 0, max_prompt_tokens: 0, max_connections: 1024 }
    }
}

impl ServeConfig {
    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let cfg: ServeConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        Ok(cfg)
    }

    /// Reads a TOML file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the config file {}: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The precision policy of `[model]` (its `precision` file, then its keys) and `[engine]
    /// kv_dtype`; the error names the keys.
    pub fn policy(&self) -> anyhow::Result<turbine_models::precision::Policy> {
        let spec = self.model.spec(&self.engine.kv_dtype)?;
        let keys = if self.model.precision.is_some() {
            "model.precision / model.dtype / model.keep / engine.kv_dtype"
        } else {
            "model.dtype / model.keep / engine.kv_dtype"
        };
        spec.policy().map_err(|e| anyhow::anyhow!("{keys}: {e}"))
    }

    /// Checks the values together; the message names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let e = &self.engine;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let checks: [(bool, &str); 12] = [
            (e.max_batch >= 1, "engine.max_batch must be at least 1"),
            (e.max_num_tokens >= 1, "engine.max_num_tokens must be at least 1"),
            (e.block_size >= 1, "engine.block_size must be at least 1"),
            (e.max_waiting >= 1, "engine.max_waiting must be at least 1"),
            (e.kv_tokens >= 1 || e.kv_bytes.is_some(), "engine.kv_tokens must be at least 1"),
            (self.limits.max_body_bytes >= 1024, "limits.max_body_bytes must be at least 1024"),
            (self.limits.max_n >= 1, "limits.max_n must be at least 1"),
            (self.limits.max_connections >= 1, "limits.max_connections must be at least 1"),
            (
                self.server.drain_timeout_s.is_finite() && self.server.drain_timeout_s >= 0.0,
                "server.drain_timeout_s must be a number of seconds >= 0",
            ),
            (positive(self.server.header_timeout_s), "server.header_timeout_s must be a number of seconds > 0"),
            (positive(self.server.body_timeout_s), "server.body_timeout_s must be a number of seconds > 0"),
            (positive(self.server.body_min_rate), "server.body_min_rate must be a number of bytes per second > 0"),
        ];
        if let Some((_, msg)) = checks.iter().find(|(ok, _)| !ok) {
            anyhow::bail!("{msg}");
        }
        self.policy()?;
        self.speculative.validate()?;
        if self.server.api_keys.iter().any(|k| k.is_empty()) {
            anyhow::bail!("server.api_keys: an API key must not be empty");
        }
        Ok(())
    }

    /// The configuration as TOML, with API keys replaced by `"<redacted>"`.
    pub fn to_toml_redacted(&self) -> String {
        let mut c = self.clone();
        c.server.api_keys = c.server.api_keys.iter().map(|_| "<redacted>".to_string()).collect();
        toml::to_string(&c).unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_means_the_defaults() {
        assert_eq!(ServeConfig::parse("", "x").unwrap(), ServeConfig::default());
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_named() {
        let e = ServeConfig::parse("[engine]\nmax_bach = 3\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("t.toml") && e.contains("max_bach"), "{e}");
        let e = ServeConfig::parse("[server]\nport = \"eighty\"\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn the_speculative_section_is_checked_by_key() {
        let c = ServeConfig::parse("[speculative]\nmethod = \"ngram\"\ndraft_tokens = 5\n", "t.toml").unwrap();
        assert_eq!(c.speculative.config(), Some(turbine_batcher::SpecConfig { draft_tokens: 5, max_running: 32 }));
        assert_eq!(ServeConfig::default().speculative.config(), None);
        for (text, key) in [
            ("method = \"medusa\"", "medusa"),
            ("method = \"draft\"", "draft_model"),
            ("method = \"ngram\"\ndraft_tokens = 0", "draft_tokens"),
            ("method = \"ngram\"\nngram_min = 5", "ngram_min"),
        ] {
            let c = ServeConfig::parse(&format!("[speculative]\n{text}\n"), "t.toml").unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = ServeConfig::default();
        c.engine.max_batch = 0;
        assert!(c.validate().unwrap_err().to_string().contains("engine.max_batch"));
        let mut c = ServeConfig::default();
        c.model.dtype = "fp7".into();
        assert!(c.validate().unwrap_err().to_string().contains("fp7"));
    }

    #[test]
    fn printed_config_round_trips_and_hides_keys() {
        let mut c = ServeConfig::default();
        c.server.api_keys = vec!["sk-secret".into()];
        c.engine.kv_bytes = Some(1 << 20);
        let text = c.to_toml_redacted();
        assert!(!text.contains("sk-secret") && text.contains("<redacted>"), "{text}");
        let back = ServeConfig::parse(&text, "printed").unwrap();
        assert_eq!(back.engine, c.engine);
        assert_eq!(back.limits, c.limits);
    }

    #[test]
    fn a_policy_file_is_the_base_and_set_keys_override_it() {
        use turbine_models::precision::{Format, KvFormat, Rounding};
        let dir = std::env::temp_dir().join(format!("turbine-config-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.toml");
        std::fs::write(&file, "format = \"int8-weight\"\nkv = \"int8\"\nrounding = \"gptq\"\n").unwrap();
        let text = format!("[model]\nprecision = {:?}\n", file.to_str().unwrap());
        let c = ServeConfig::parse(&text, "t.toml").unwrap();
        c.validate().unwrap();
        let p = c.policy().unwrap();
        assert_eq!((p.format, p.kv, p.rounding), (Format::Int8Weight, KvFormat::Int8, Rounding::Gptq));
        let c =
            ServeConfig::parse(&format!("{text}dtype = \"fp8\"\n[engine]\nkv_dtype = \"fp8\"\n"), "t.toml").unwrap();
        let p = c.policy().unwrap();
        assert_eq!((p.format, p.kv, p.rounding), (Format::Fp8, KvFormat::Fp8, Rounding::Gptq));
        std::fs::write(&file, "format = \"fp4\"\n").unwrap();
        let e = ServeConfig::parse(&text, "t.toml").unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("model.precision") && e.contains("fp4"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = ServeConfig::parse(&text, "t.toml").unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("model.precision") && e.contains("p.toml"), "{e}");
    }

    #[test]
    fn the_example_file_parses_and_validates() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../turbine.example.toml");
        let c = ServeConfig::read(Path::new(path)).unwrap();
        c.validate().unwrap();
    }
}
