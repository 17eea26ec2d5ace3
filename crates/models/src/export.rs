//! Writing a quantised model as a Hugging Face folder in the layout FP8 checkpoints for vLLM and
//! TensorRT-LLM use: `float8_e4m3fn` projection weights, each with a `weight_scale` (one f32 per
//! tensor) and, with calibrated input scales, an `input_scale`, and a `quantization_config`
//! (`"quant_method": "fp8"`, `"activation_scheme": "dynamic"` or `"static"`, projections left
//! in high precision listed in `"ignored_layers"`) in
//! `config.json`. INT8 weights get one scale per output row (`[rows, 1]`) and
//! `"quant_method": "turbine-int8"`. Every other tensor and file is copied as it is.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, View};
use turbine_core::{DType, Ops};

use crate::layers::{ActQuant, Decoder, Linear};
use crate::precision::Format;
use crate::source::safetensors::SafetensorsSource;
use crate::source::WeightSource;
use crate::{ModelError, Result};

struct Owned {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Owned {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn st_dtype(d: DType) -> Result<Dtype> {
    Ok(match d {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F8E4M3 => Dtype::F8_E4M3,
        DType::F8E5M2 => Dtype::F8_E5M2,
        DType::I8 => Dtype::I8,
        other => return Err(ModelError::Config(format!("cannot write a {other} tensor to safetensors"))),
    })
}

/// The Hugging Face names of a block's projections, as parts of Turbine's fused ones.
fn names(src: &SafetensorsSource, i: usize) -> Option<[Vec<String>; 4]> {
    let p = format!("model.layers.{i}");
    let has = |n: &str| src.names().contains(&format!("{p}.{n}.weight").as_str());
    let n = |v: &[&str]| v.iter().map(|s| format!("{p}.{s}")).collect::<Vec<_>>();
    let qkv = if has("self_attn.q_proj") {
        n(&["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"])
    } else if has("self_attn.qkv_proj") {
        n(&["self_attn.qkv_proj"])
    } else {
        return None;
    };
    let up = if has("mlp.gate_proj") {
        n(&["mlp.gate_proj", "mlp.up_proj"])
    } else if has("mlp.gate_up_proj") {
        n(&["mlp.gate_up_proj"])
    } else {
        return None;
    };
    (has("self_attn.o_proj") && has("mlp.down_proj"))
        .then(|| [qkv, n(&["self_attn.o_proj"]), up, n(&["mlp.down_proj"])])
}

/// What [`export`] wrote.
#[derive(Debug, Clone, Default)]
pub struct Exported {
    /// Projection tensors stored in 8 bits.
    pub quantized: usize,
    /// Projection tensors left as they were.
    pub kept: usize,
    /// Bytes of `model.safetensors`.
    pub bytes: u64,
}

/// Writes `dec` (loaded from the Hugging Face folder `src_dir` and quantised as `format` says)
/// to `out`.
pub fn export<B: Ops>(b: &B, dec: &Decoder<B>, src_dir: &Path, out: &Path, format: Format) -> Result<Exported> {
    if !format.is_eight_bit() {
        return Err(ModelError::Config(format!(
            "turbine quantize writes fp8, fp8-weight or int8-weight checkpoints, not {}",
            format.name()
        )));
    }
    let src = SafetensorsSource::open_dir(src_dir)?;
    let mut tensors: BTreeMap<String, Owned> = BTreeMap::new();
    let mut ignored = Vec::new();
    let mut done = Exported::default();
    let mut static_inputs = false;
    for (i, layer) in dec.layers.iter().enumerate() {
        let Some(hf) = names(&src, i) else {
            return Err(ModelError::Config(format!(
                "turbine quantize writes checkpoints with Llama-style projection names (model.layers.N.self_attn.q_proj, …); {} has others",
                dec.spec.arch
            )));
        };
        for (lin, parts) in [&layer.qkv, &layer.o, &layer.up, &layer.down].into_iter().zip(hf) {
            let rows: Vec<usize> = parts
                .iter()
                .map(|p| {
                    src.get(&format!("{p}.weight"))?
                        .map(|t| t.shape().rows())
                        .ok_or_else(|| ModelError::MissingWeight { key: format!("{p}.weight") })
                })
                .collect::<Result<_>>()?;
            if !matches!(lin.w.dtype(), DType::F8E4M3 | DType::I8) {
                done.kept += parts.len();
                ignored.extend(parts.iter().cloned());
                continue;
            }
            if lin.exact.is_some() {
                return Err(ModelError::Config(
                    "projections with exact outlier channels cannot be written in the FP8 checkpoint layout; quantize with --outliers 0".into(),
                ));
            }
            if lin.smooth.is_some() {
                return Err(ModelError::Config(
                    "smoothed projections cannot be written in the FP8 checkpoint layout (it has no input smoothing factors); quantize without --smooth".into(),
                ));
            }
            if lin.shift.is_some() {
                return Err(ModelError::Config(
                    "centred projections cannot be written in the FP8 checkpoint layout (it has no input shifts); quantize without --center".into(),
                ));
            }
            static_inputs |= matches!(lin.quant_x, Some(ActQuant::Static(_)));
            write_parts(b, lin, &parts, &rows, &mut tensors)?;
            done.quantized += parts.len();
        }
    }
    // Everything else as it is (norms, embeddings, biases, the head, kept projections).
    for name in src.names() {
        if tensors.contains_key(name) {
            continue;
        }
        let t = src.get(name)?.ok_or_else(|| ModelError::MissingWeight { key: name.into() })?;
        tensors.insert(
            name.to_string(),
            Owned { dtype: st_dtype(t.dtype())?, shape: t.shape().dims().to_vec(), data: t.bytes().to_vec() },
        );
    }
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let file = out.join("model.safetensors");
    safetensors::serialize_to_file(tensors.iter().map(|(k, v)| (k.as_str(), v)), None, &file)
        .map_err(|e| ModelError::corrupt(&file, e.to_string()))?;
    done.bytes = std::fs::metadata(&file).map_err(|e| ModelError::io(&file, e))?.len();
    write_config(src_dir, out, format, &ignored, static_inputs)?;
    copy_other_files(src_dir, out)?;
    Ok(done)
}

fn write_parts<B: Ops>(
    b: &B,
    lin: &Linear<B>,
    parts: &[String],
    rows: &[usize],
    tensors: &mut BTreeMap<String, Owned>,
) -> Result<()> {
    let (n, k) = (lin.w.rows(), lin.w.cols());
    if rows.iter().sum::<usize>() != n {
        return Err(ModelError::Config(format!("{}: parts of {rows:?} rows for a {n}-row projection", parts[0])));
    }
    let input_scale = match &lin.quant_x {
        Some(ActQuant::Static(s)) => Some(b.download(s)?.to_f32()?[0]),
        _ => None,
    };
    let codes = b.download(&lin.w)?;
    let scale =
        lin.scale.as_ref().ok_or_else(|| ModelError::Config(format!("{}: 8-bit weight without scales", parts[0])))?;
    let scales = b.download(scale)?.to_f32()?;
    let fp8 = lin.w.dtype() == DType::F8E4M3;
    let mut r0 = 0;
    for (p, &r) in parts.iter().zip(rows) {
        let data = codes.bytes()[r0 * k..(r0 + r) * k].to_vec();
        let dtype = if fp8 { Dtype::F8_E4M3 } else { Dtype::I8 };
        tensors.insert(format!("{p}.weight"), Owned { dtype, shape: vec![r, k], data });
        let part = &scales[r0..r0 + r];
        let (shape, values) = if fp8 {
            if part.iter().any(|&s| s != part[0]) {
                return Err(ModelError::Config(format!(
                    "{p}: FP8 scales differ between rows; the layout wants one per tensor"
                )));
            }
            (vec![], vec![part[0]])
        } else {
            (vec![r, 1], part.to_vec())
        };
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.insert(format!("{p}.weight_scale"), Owned { dtype: Dtype::F32, shape, data });
        if let Some(s) = input_scale {
            let data = s.to_le_bytes().to_vec();
            tensors.insert(format!("{p}.input_scale"), Owned { dtype: Dtype::F32, shape: vec![], data });
        }
        r0 += r;
    }
    Ok(())
}

fn write_config(src_dir: &Path, out: &Path, format: Format, ignored: &[String], static_inputs: bool) -> Result<()> {
    let path = src_dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let mut cfg: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::corrupt(&path, e.to_string()))?;
    let q = match format {
        Format::Int8Weight => serde_json::json!({"quant_method": "turbine-int8", "ignored_layers": ignored}),
        _ => {
            let scheme = if static_inputs { "static" } else { "dynamic" };
            let mut q =
                serde_json::json!({"quant_method": "fp8", "activation_scheme": scheme, "ignored_layers": ignored});
            if format == Format::Fp8Weight {
                q["turbine_weight_only"] = true.into();
            }
            q
        }
    };
    cfg["quantization_config"] = q;
    let dst = out.join("config.json");
    let body = serde_json::to_string_pretty(&cfg).map_err(|e| ModelError::Config(e.to_string()))?;
    std::fs::write(&dst, body).map_err(|e| ModelError::io(&dst, e))
}

fn copy_other_files(src_dir: &Path, out: &Path) -> Result<()> {
    let rd = std::fs::read_dir(src_dir).map_err(|e| ModelError::io(src_dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| ModelError::io(src_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let skip = name == "config.json" || name.ends_with(".safetensors") || name == "model.safetensors.index.json";
        if skip || !entry.path().is_file() {
            continue;
        }
        let dst = out.join(&name);
        std::fs::copy(entry.path(), &dst).map_err(|e| ModelError::io(&dst, e))?;
    }
    Ok(())
}
