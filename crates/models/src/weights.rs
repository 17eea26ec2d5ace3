//! Shape-checked access to a checkpoint's tensors, and upload to a backend.

use turbine_core::{DType, HostTensor, Ops, Tensor};

use crate::rows::as_rows;
pub use crate::rows::{grouped_qkv_order, invert, per_head_qkv_order};
use crate::source::WeightSource;
use crate::{ModelError, Result};

/// A view of a [`WeightSource`] that checks shapes against the config and uploads to `B`.
pub struct Weights<'a, B: Ops> {
    src: &'a dyn WeightSource,
    backend: &'a B,
    /// How a checkpoint's FP8 projections quantise their inputs.
    pub fp8_inputs: Fp8Inputs,
    /// The longest context the model will be run at, if the caller knows it (its KV cache):
    /// position tables are built for that many positions, not the config's.
    pub max_context: Option<usize>,
    /// What happens to projection weights ([`Weights::projection`]) while loading.
    pub staging: Staging,
}

/// What loading does with projection weights when a precision policy will convert them.
///
/// A policy converts on the host from the checkpoint's bytes, so no weight comes back from the
/// device: with [`Staging::Defer`] each projection crosses to the device once, already in its
/// final format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Staging {
    /// Uploaded as stored (no policy, or the checkpoint's own format).
    #[default]
    Upload,
    /// Uploaded as stored and kept on the host too ([`crate::layers::Linear::host`]): the model
    /// runs over calibration text first, then the policy converts from the host copy.
    Keep,
    /// Kept on the host only, `w` an empty placeholder `[0, in]` until the policy converts it
    /// and uploads the result ([`crate::layers::Linear::settle`]): the model cannot run before.
    Defer,
}

/// Largest position table (rotary cos and sin) built from a config's context length.
pub const MAX_TABLE_BYTES: usize = 4 << 30;

/// What an FP8 checkpoint says about the inputs of its projections (`quantization_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fp8Inputs {
    /// FP8 with one scale per token (`"activation_scheme": "dynamic"`, the default).
    #[default]
    Dynamic,
    /// FP8 with the checkpoint's `input_scale` (`"activation_scheme": "static"`).
    Static,
    /// Not quantised (weight-only; Turbine's `"turbine_weight_only": true`).
    None,
}

impl Fp8Inputs {
    /// From a `config.json`'s `quantization_config`, if any; unknown methods are refused.
    pub fn from_config(cfg: &serde_json::Value) -> Result<Fp8Inputs> {
        let Some(q) = cfg.get("quantization_config").filter(|q| !q.is_null()) else { return Ok(Fp8Inputs::Dynamic) };
        let method = q.get("quant_method").and_then(|m| m.as_str()).unwrap_or("");
        if !matches!(method, "fp8" | "turbine-int8") {
            return Err(ModelError::Config(format!(
                "quantization_config.quant_method {method:?} is not supported (fp8 and turbine-int8 are)"
            )));
        }
        if q.get("turbine_weight_only").and_then(|v| v.as_bool()).unwrap_or(false) {
            return Ok(Fp8Inputs::None);
        }
        match q.get("activation_scheme").and_then(|v| v.as_str()).unwrap_or("dynamic") {
            "dynamic" => Ok(Fp8Inputs::Dynamic),
            "static" => Ok(Fp8Inputs::Static),
            other => Err(ModelError::Config(format!(
                "quantization_config.activation_scheme {other:?} is not supported (dynamic or static)"
            ))),
        }
    }
}

impl<'a, B: Ops> Weights<'a, B> {
    /// Wraps a source and a backend.
    pub fn new(src: &'a dyn WeightSource, backend: &'a B) -> Self {
        Weights { src, backend, fp8_inputs: Fp8Inputs::default(), max_context: None, staging: Staging::Upload }
    }

    /// Positions a table of the model's positions needs: the config's `model_max`, or fewer when
    /// the context is bounded. Refuses a table over [`MAX_TABLE_BYTES`] (a config value such as
    /// `max_position_embeddings: 1e9` with no bound given) instead of allocating it.
    pub fn table_positions(&self, model_max: usize, bytes_per_position: usize) -> Result<usize> {
        let n = self.max_context.map_or(model_max, |c| c.min(model_max));
        let bytes = n.saturating_mul(bytes_per_position);
        if bytes > MAX_TABLE_BYTES {
            return Err(ModelError::Config(format!(
                "max_position_embeddings (or the GGUF context_length) is {model_max}: a position table of \
                 {:.1} GB; give the context to use (generate --ctx-size, serve engine.kv_tokens)",
                bytes as f64 / 1e9
            )));
        }
        Ok(n)
    }

    /// The host tensor `key` whatever its shape, if present.
    pub fn raw(&self, key: &str) -> Result<Option<HostTensor<'a>>> {
        self.src.get(key)
    }

    /// The backend.
    pub fn backend(&self) -> &'a B {
        self.backend
    }

    /// The host tensor `key`, if present, after checking its shape.
    pub fn opt_host(&self, key: &str, shape: &[usize]) -> Result<Option<HostTensor<'a>>> {
        let Some(t) = self.src.get(key)? else { return Ok(None) };
        if t.shape().dims() != shape {
            return Err(ModelError::WeightShape {
                key: key.into(),
                expected: turbine_core::Shape::from(shape).to_string(),
                got: t.shape().to_string(),
            });
        }
        Ok(Some(t))
    }

    /// The host tensor `key`, which must exist with this shape.
    pub fn host(&self, key: &str, shape: &[usize]) -> Result<HostTensor<'a>> {
        self.opt_host(key, shape)?.ok_or_else(|| ModelError::MissingWeight { key: key.into() })
    }

    /// Uploads a host tensor.
    pub fn upload(&self, t: &HostTensor<'_>) -> Result<Tensor<B>> {
        Ok(self.backend.upload(t)?)
    }

    /// The tensor `key`, uploaded.
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<Tensor<B>> {
        self.upload(&self.host(key, shape)?)
    }

    /// The embedding table `key` (token or position embeddings, `[rows, hidden]`): f16, bf16
    /// and GGUF blocks stay as stored (`upload_weight`), so the table takes the checkpoint's bytes
    /// and a tied LM head's product reads them, not a widened f32 copy (twice the bytes of a
    /// 16-bit table, each decode step); a lookup decodes the rows it gathers. Other types as
    /// [`Weights::get`].
    pub fn table(&self, key: &str, shape: &[usize]) -> Result<Tensor<B>> {
        let t = self.host(key, shape)?;
        let d = t.dtype();
        if matches!(d, DType::F16 | DType::BF16) || d.is_quantized() {
            Ok(self.backend.upload_weight(&t)?)
        } else {
            self.upload(&t)
        }
    }

    /// The tensor `key`, uploaded, if present.
    pub fn get_opt(&self, key: &str, shape: &[usize]) -> Result<Option<Tensor<B>>> {
        self.opt_host(key, shape)?.map(|t| self.upload(&t)).transpose()
    }

    /// The host tensor `key`, stored `[in, out]` (as GPT-2's Conv1D), as `[out, in]`.
    pub fn host_transposed(&self, key: &str, out_in: [usize; 2]) -> Result<HostTensor<'static>> {
        Ok(self.host(key, &[out_in[1], out_in[0]])?.transpose()?)
    }

    /// The tensor `key` (`[rows, …]` or `[rows]`) with its rows reordered: row `i` of the result
    /// is row `perm[i]` of the file's. `None` if absent.
    pub fn get_permuted(&self, key: &str, shape: &[usize], perm: &[usize]) -> Result<Option<Tensor<B>>> {
        self.host_permuted(key, shape, perm)?.map(|t| self.upload(&t)).transpose()
    }

    /// [`Weights::get_permuted`] on the host.
    pub fn host_permuted(&self, key: &str, shape: &[usize], perm: &[usize]) -> Result<Option<HostTensor<'static>>> {
        let Some(t) = self.opt_host(key, shape)? else { return Ok(None) };
        let rows = as_rows(t)?.permute_rows(perm)?;
        Ok(Some(rows.reshape(shape.to_vec())?))
    }

    /// A projection weight `[out, in]` as [`Weights::staging`] says: the device tensor (kept in
    /// its stored type where the products read it, as `Backend::upload_weight` keeps it; an empty
    /// `[0, in]` placeholder when deferred) and the host copy, if kept.
    pub fn projection(&self, host: HostTensor<'static>) -> Result<(Tensor<B>, Option<HostTensor<'static>>)> {
        match self.staging {
            Staging::Upload => Ok((self.backend.upload_weight(&host)?, None)),
            Staging::Keep => Ok((self.backend.upload_weight(&host)?, Some(host))),
            Staging::Defer => {
                let k = host.shape().dims().get(1).copied().unwrap_or(0);
                Ok((self.backend.upload(&HostTensor::from_f32([0, k], &[])?)?, Some(host)))
            }
        }
    }

    /// Several matrices stacked along rows into one, on the host (fused QKV or gate/up
    /// projections). Parts of different storage types are widened to f32 first. 1-D parts
    /// (biases) are stacked too.
    pub fn stacked(&self, parts: &[(&str, &[usize])]) -> Result<HostTensor<'static>> {
        stack(parts.iter().map(|(k, s)| self.host(k, s)).collect::<Result<Vec<_>>>()?)
    }

    /// [`Weights::stacked`], uploaded, or `None` when none of the parts exist (optional biases);
    /// an error when only some do.
    pub fn fused_opt(&self, parts: &[(&str, &[usize])]) -> Result<Option<Tensor<B>>> {
        let hosts = parts.iter().map(|(k, s)| self.opt_host(k, s)).collect::<Result<Vec<_>>>()?;
        if hosts.iter().all(Option::is_none) {
            return Ok(None);
        }
        let hosts = hosts
            .into_iter()
            .zip(parts)
            .map(|(h, (k, _))| h.ok_or_else(|| ModelError::MissingWeight { key: (*k).into() }))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(self.upload(&stack(hosts)?)?))
    }
}

fn stack(hosts: Vec<HostTensor<'_>>) -> Result<HostTensor<'static>> {
    let one_d = hosts.first().is_some_and(|h| h.shape().rank() == 1);
    let same = hosts.windows(2).all(|w| w[0].dtype() == w[1].dtype());
    let hosts: Vec<HostTensor<'_>> = if same {
        hosts.into_iter().map(as_rows).collect::<Result<_>>()?
    } else {
        hosts
            .into_iter()
            .map(|h| as_rows(HostTensor::from_f32(h.shape().clone(), &h.to_f32()?)?))
            .collect::<Result<_>>()?
    };
    let out = HostTensor::concat_rows(&hosts)?;
    if one_d {
        let n = out.shape().numel();
        return Ok(out.reshape([n])?);
    }
    Ok(out)
}
