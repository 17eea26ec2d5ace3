//! From a path to a runnable model: a Hugging Face folder or a GGUF file.

use std::path::{Path, PathBuf};

use turbine_core::Ops;

use crate::config::{self, HfConfig};
use crate::model::Model;
use crate::precision::Policy;
use crate::source::gguf::{GgufFile, GgufSource};
use crate::source::safetensors::SafetensorsSource;
use crate::source::Tracked;
#[cfg(feature = "tokenizer")]
use crate::tokenizer::TextTokenizer;
use crate::weights::{Staging, Weights};
use crate::{registry, ModelError, Result};

/// A model with its tokenizer.
pub struct LoadedModel<B: Ops> {
    /// The model.
    pub model: Box<dyn Model<B>>,
    /// The tokenizer (feature `tokenizer`).
    #[cfg(feature = "tokenizer")]
    pub tokenizer: TextTokenizer,
    /// Every id that ends generation (config, generation config and tokenizer together).
    pub eos: Vec<u32>,
    /// Where it came from.
    pub path: PathBuf,
    /// The keys each layer stored during the calibration run, when the policy's KV cache is
    /// 8-bit: its key shifts (`Runner::set_key_shifts`). The run is the projections' own when
    /// they calibrate too, so loading never runs the model over calibration text twice.
    pub kv_stats: Option<Vec<crate::runner::KvStats>>,
}

/// Loads a model folder (`config.json`, safetensors, `tokenizer.json`) or a `.gguf` file.
/// A checkpoint holding tensors its architecture does not read is refused
/// ([`ModelError::UnusedWeights`]); [`load_with`] with `Policy::allow_unused_weights` loads it.
pub fn load<B: Ops>(backend: &B, path: &Path) -> Result<LoadedModel<B>> {
    load_raw(backend, path, None, false, Staging::Upload)
}

/// [`load`], then stores the projections as `policy` says (running the model over the
/// calibration text first when the policy needs it).
pub fn load_with<B: Ops + Clone>(backend: &B, path: &Path, policy: &Policy) -> Result<LoadedModel<B>> {
    load_for_context(backend, path, policy, None)
}

/// [`load_with`] for a model that will run at most `max_context` positions (its KV cache's
/// size, when known): its usable context is the smaller of that and its config's, and its
/// position tables are built for that, not for whatever the config says.
pub fn load_for_context<B: Ops + Clone>(
    backend: &B,
    path: &Path,
    policy: &Policy,
    max_context: Option<usize>,
) -> Result<LoadedModel<B>> {
    // One calibration run serves both the projections (when the policy needs one) and 8-bit KV
    // pages (their key shifts); a KV cache alone needs a short run.
    let weights = policy.needs_calibration();
    let kv = policy.kv != crate::precision::KvFormat::F32;
    // Projections a policy converts go to the device once, converted on the host, unless the
    // model must run first (then they go up as stored, and are converted from a host copy).
    let staging = match (policy.format, weights || kv) {
        (crate::precision::Format::Auto, _) => Staging::Upload,
        (_, true) => Staging::Keep,
        (_, false) => Staging::Defer,
    };
    let mut l = load_raw(backend, path, max_context, policy.allow_unused_weights, staging)?;
    let calib = if weights || kv {
        let tokens = if weights { policy.calib_tokens } else { policy.calib_tokens.min(KV_CALIB_TOKENS) };
        let mut ids = calibration_ids(&l, policy)?;
        ids.truncate(tokens);
        if ids.len() < MIN_CALIB_TOKENS {
            return Err(ModelError::Config(format!(
                "the calibration text is {} tokens long; calibrating needs at least {MIN_CALIB_TOKENS}",
                ids.len()
            )));
        }
        let gptq = weights && policy.rounding == crate::precision::Rounding::Gptq;
        let (model, c) = crate::calibrate::calibrate(backend, l.model, &ids, tokens, gptq)?;
        l.model = model;
        Some(c)
    } else {
        None
    };
    if kv {
        l.kv_stats = calib.as_ref().map(|c| c.kv.clone());
    }
    if policy.format == crate::precision::Format::Auto {
        return Ok(l);
    }
    let arch = l.model.spec().arch.clone();
    let dec = l
        .model
        .decoder_mut()
        .ok_or_else(|| ModelError::Config(format!("{arch} does not support a precision policy")))?;
    policy.apply(backend, dec, calib.as_ref().filter(|_| weights))?;
    Ok(l)
}

/// The calibration text's ids (the policy's text, else the bundled one).
#[cfg(feature = "tokenizer")]
fn calibration_ids<B: Ops>(l: &LoadedModel<B>, policy: &Policy) -> Result<Vec<u32>> {
    let text = policy.calib_text.as_deref().unwrap_or(crate::calibrate::DEFAULT_TEXT);
    l.tokenizer.encode(text, true)
}

#[cfg(not(feature = "tokenizer"))]
fn calibration_ids<B: Ops>(_: &LoadedModel<B>, _: &Policy) -> Result<Vec<u32>> {
    Err(ModelError::Config("calibrating by text needs turbine-models' \"tokenizer\" feature".into()))
}

/// Calibration tokens behind 8-bit KV pages' key shifts when the projections need no
/// calibration of their own.
pub const KV_CALIB_TOKENS: usize = 512;

/// Fewest calibration tokens accepted.
pub const MIN_CALIB_TOKENS: usize = 64;

fn load_raw<B: Ops>(
    backend: &B,
    path: &Path,
    max_context: Option<usize>,
    allow_unused: bool,
    staging: Staging,
) -> Result<LoadedModel<B>> {
    if !path.exists() {
        return Err(ModelError::NotFound(path.to_path_buf()));
    }
    let mut l = if path.is_dir() {
        load_dir(backend, path, max_context, allow_unused, staging)?
    } else {
        load_gguf(backend, path, max_context, allow_unused, staging)?
    };
    if let (Some(c), Some(d)) = (max_context, l.model.decoder_mut()) {
        d.spec.max_positions = d.spec.max_positions.min(c);
    }
    Ok(l)
}

/// Loads only the tokenizer of a model folder or `.gguf` file.
#[cfg(feature = "tokenizer")]
pub fn load_tokenizer(path: &Path) -> Result<TextTokenizer> {
    if !path.exists() {
        return Err(ModelError::NotFound(path.to_path_buf()));
    }
    if path.is_dir() {
        TextTokenizer::from_hf_dir(path)
    } else {
        TextTokenizer::from_gguf(&GgufFile::open(path)?)
    }
}

fn load_dir<B: Ops>(
    backend: &B,
    dir: &Path,
    max_context: Option<usize>,
    allow_unused: bool,
    staging: Staging,
) -> Result<LoadedModel<B>> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(ModelError::NoConfig(dir.to_path_buf()));
    }
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
    let cfg = HfConfig::parse(&text)?;
    registry::check(&cfg)?;
    #[cfg(feature = "tokenizer")]
    let tokenizer = TextTokenizer::from_hf_dir(dir)?;
    let src = Tracked::new(SafetensorsSource::open_dir(dir)?);
    let mut w = Weights::new(&src, backend);
    w.fp8_inputs = crate::weights::Fp8Inputs::from_config(&cfg.0)?;
    w.max_context = max_context;
    w.staging = staging;
    let model = registry::build(&cfg, &w)?;
    src.check_unused(&model.spec().arch, allow_unused)?;
    let mut eos = model.spec().eos.clone();
    let gen = dir.join("generation_config.json");
    if let Ok(t) = std::fs::read_to_string(&gen) {
        let g = HfConfig::parse(&t).map_err(|e| ModelError::Config(format!("{}: {e}", gen.display())))?;
        eos.extend(g.ids("eos_token_id"));
    }
    finish(
        model,
        #[cfg(feature = "tokenizer")]
        tokenizer,
        eos,
        dir,
    )
}

fn load_gguf<B: Ops>(
    backend: &B,
    path: &Path,
    max_context: Option<usize>,
    allow_unused: bool,
    staging: Staging,
) -> Result<LoadedModel<B>> {
    let file = GgufFile::open(path)?;
    let cfg = config::from_gguf(&file)?;
    registry::check(&cfg).map_err(|e| match e {
        ModelError::UnknownArch { name, supported } => {
            ModelError::UnknownArch { name: name.trim_start_matches("gguf:").to_string(), supported }
        }
        other => other,
    })?;
    #[cfg(feature = "tokenizer")]
    let tokenizer = TextTokenizer::from_gguf(&file)?;
    let src = Tracked::new(GgufSource::new(file)?);
    let mut w = Weights::new(&src, backend);
    w.max_context = max_context;
    w.staging = staging;
    let model = registry::build(&cfg, &w)?;
    src.check_unused(&model.spec().arch, allow_unused)?;
    let eos = model.spec().eos.clone();
    finish(
        model,
        #[cfg(feature = "tokenizer")]
        tokenizer,
        eos,
        path,
    )
}

fn finish<B: Ops>(
    model: Box<dyn Model<B>>,
    #[cfg(feature = "tokenizer")] tokenizer: TextTokenizer,
    mut eos: Vec<u32>,
    path: &Path,
) -> Result<LoadedModel<B>> {
    #[cfg(feature = "tokenizer")]
    eos.extend(tokenizer.eos_ids.iter().copied());
    eos.sort_unstable();
    eos.dedup();
    Ok(LoadedModel {
        model,
        #[cfg(feature = "tokenizer")]
        tokenizer,
        eos,
        path: path.to_path_buf(),
        kv_stats: None,
    })
}
