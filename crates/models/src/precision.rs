//! The precision policy, in one place: which projections are stored and multiplied in which
//! format.
//!
//! A [`Policy`] names a [`Format`] for the large projections of every block (the fused QKV, the
//! attention output, the MLP up (gate and up) and down projections) and a list of exceptions that
//! keep the checkpoint's own precision (by role, by layer, or both). Everything else stays as
//! loaded: the token embeddings and the LM head (f16/bf16 or GGUF blocks as stored, else f32), norms,
//! biases, and the attention arithmetic (f32 scores and softmax).
//!
//! | format | weights | input of the product |
//! |---|---|---|
//! | `auto` | as the checkpoint stores them (GGUF blocks stay quantised) | f32 |
//! | `f32`, `f16`, `bf16` | that type | f32 |
//! | `fp8` | FP8 E4M3, one scale per tensor (per fused part) | FP8 E4M3, one scale per token |
//! | `fp8-weight` | FP8 E4M3, one scale per tensor (per fused part) | f32 |
//! | `int8-weight` | INT8, one scale per output channel | f32 |
//!
//! Scales map the largest magnitude to the format's largest value (448 for E4M3, 127 for INT8);
//! see [`turbine_core::fp8`] for the rounding. By default the 8-bit formats also keep
//! [`FP8_OUTLIERS`] (`fp8`, `fp8-weight`) or [`INT8_OUTLIERS`] (`int8-weight`) input channels of
//! every projection exact in f32 ([`Policy::outliers`]), chosen by a calibration run at load, and
//! `fp8` and `fp8-weight` keep the blocks measured as the model's most sensitive at the
//! checkpoint's precision ([`Policy::default_keep`], [`crate::measured`]).
//!
//! The policy also names how the KV cache stores keys and values ([`KvFormat`]), and it is
//! serializable (`crate::policy_file`): one value, written once, that every command and the
//! server's config read the same way.

use half::{bf16, f16};
use turbine_core::fp8::{e4m3_table, f32_to_e4m3, f32_to_i8, scale_for, E4M3_MAX, I8_MAX};
use turbine_core::host::decode_f32;
use turbine_core::{DType, HostTensor, Ops};

use crate::calibrate::Calibration;
use crate::gptq::{self, Grid};
pub use crate::layers::{tensor_bytes, Role};
use crate::layers::{ActQuant, Decoder, ExactWeights, Linear};
use crate::{ModelError, Result};

/// How the large projections are stored and multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// As the checkpoint stores them.
    Auto,
    /// f32.
    F32,
    /// f16 (converted to f32 inside the product).
    F16,
    /// bf16 (converted to f32 inside the product).
    BF16,
    /// FP8 E4M3 weights and FP8 E4M3 inputs (W8A8).
    Fp8,
    /// FP8 E4M3 weights, f32 inputs.
    Fp8Weight,
    /// INT8 weights (per channel), f32 inputs.
    Int8Weight,
}

impl Format {
    /// Every format, by name.
    pub const ALL: [(&'static str, Format); 7] = [
        ("auto", Format::Auto),
        ("f32", Format::F32),
        ("f16", Format::F16),
        ("bf16", Format::BF16),
        ("fp8", Format::Fp8),
        ("fp8-weight", Format::Fp8Weight),
        ("int8-weight", Format::Int8Weight),
    ];

    /// Parses a name (`auto`, `f32`, `f16`, `bf16`, `fp8`, `fp8-weight`, `int8-weight`).
    pub fn parse(name: &str) -> Result<Format> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
            ModelError::Config(format!("unknown weight format {name:?}; use one of {}", names.join(", ")))
        })
    }

    /// Whether the weights are stored in 8 bits (`fp8`, `fp8-weight`, `int8-weight`).
    pub fn is_eight_bit(self) -> bool {
        matches!(self, Format::Fp8 | Format::Fp8Weight | Format::Int8Weight)
    }

    /// Whether the weights are stored in FP8 (`fp8`, `fp8-weight`).
    pub fn is_fp8(self) -> bool {
        matches!(self, Format::Fp8 | Format::Fp8Weight)
    }

    /// The name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, f)| *f == self).map_or("auto", |(n, _)| n)
    }
}

/// How the paged KV cache stores keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvFormat {
    /// f32, as computed.
    #[default]
    F32,
    /// FP8 E4M3 codes with one scale per row (token and kv head), keys shifted by their
    /// calibrated mean.
    Fp8,
    /// INT8 codes, scaled and shifted the same way.
    Int8,
}

impl KvFormat {
    /// Every KV format by name (`auto` is f32, `fp8-e4m3` fp8).
    pub const ALL: [(&'static str, KvFormat); 5] = [
        ("f32", KvFormat::F32),
        ("auto", KvFormat::F32),
        ("fp8", KvFormat::Fp8),
        ("fp8-e4m3", KvFormat::Fp8),
        ("int8", KvFormat::Int8),
    ];

    /// Parses `f32`, `fp8` or `int8` (or `auto`, `fp8-e4m3`).
    pub fn parse(name: &str) -> Result<KvFormat> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
            .ok_or_else(|| ModelError::Config(format!("unknown KV cache dtype {name:?}; use f32, fp8 or int8")))
    }

    /// `f32`, `fp8` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            KvFormat::F32 => "f32",
            KvFormat::Fp8 => "fp8",
            KvFormat::Int8 => "int8",
        }
    }

    /// The storage type of the cache pages.
    pub fn dtype(self) -> DType {
        match self {
            KvFormat::F32 => DType::F32,
            KvFormat::Fp8 => DType::F8E4M3,
            KvFormat::Int8 => DType::I8,
        }
    }
}

/// Which projections an exception covers: a role, a layer (negative counts from the end), or a
/// role in one layer. Written `down`, `layer:0`, `layer:-1`, `down@3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selector {
    /// The role, or every role.
    pub role: Option<Role>,
    /// The layer, or every layer.
    pub layer: Option<i64>,
}

impl Selector {
    /// Parses `ROLE`, `layer:N` or `ROLE@N`.
    pub fn parse(s: &str) -> Result<Selector> {
        let bad = || {
            ModelError::Config(format!(
                "cannot read the precision exception {s:?}: use a role (qkv, o, up, down), layer:N (N < 0 counts from the end) or ROLE@N"
            ))
        };
        let role = |r: &str| Role::NAMES.iter().find(|(n, _)| *n == r).map(|(_, x)| *x).ok_or_else(bad);
        let layer = |n: &str| n.parse::<i64>().map_err(|_| bad());
        Ok(if let Some(n) = s.strip_prefix("layer:") {
            Selector { role: None, layer: Some(layer(n)?) }
        } else if let Some((r, n)) = s.split_once('@') {
            Selector { role: Some(role(r)?), layer: Some(layer(n)?) }
        } else {
            Selector { role: Some(role(s)?), layer: None }
        })
    }

    /// The written form [`Selector::parse`] reads (`down`, `layer:-1`, `qkv@0`).
    pub fn name(&self) -> String {
        let role = self.role.and_then(|r| Role::NAMES.iter().find(|(_, x)| *x == r)).map(|(n, _)| *n);
        match (role, self.layer) {
            (Some(r), Some(l)) => format!("{r}@{l}"),
            (Some(r), None) => r.to_string(),
            (None, Some(l)) => format!("layer:{l}"),
            (None, None) => "layer:all".to_string(),
        }
    }

    fn covers(&self, layer: usize, layers: usize, role: Role) -> bool {
        let l = match self.layer {
            None => true,
            Some(n) if n < 0 => layers as i64 + n == layer as i64,
            Some(n) => n == layer as i64,
        };
        l && self.role.is_none_or(|r| r == role)
    }
}

/// How weights are rounded onto an 8-bit grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// Each weight to its nearest grid value.
    Nearest,
    /// GPTQ: error feedback weighted by the calibration inputs ([`crate::gptq`]).
    Gptq,
}

impl Rounding {
    /// `nearest` or `gptq`.
    pub fn name(self) -> &'static str {
        match self {
            Rounding::Nearest => "nearest",
            Rounding::Gptq => "gptq",
        }
    }

    /// Parses `nearest` or `gptq`.
    pub fn parse(name: &str) -> Result<Rounding> {
        match name {
            "nearest" => Ok(Rounding::Nearest),
            "gptq" => Ok(Rounding::Gptq),
            other => Err(ModelError::Config(format!("unknown rounding {other:?}; use nearest or gptq"))),
        }
    }
}

/// Exact outlier input channels per projection in the default `fp8` and `fp8-weight` policies:
/// on SmolLM2 they lower the mean KL divergence from the f32 model by 40% (README, "Precision").
pub const FP8_OUTLIERS: usize = 16;

/// Exact outlier input channels per projection in the default `int8-weight` policy: on the
/// development split they lower SmolLM2's mean KL divergence from the f32 model by 67%.
pub const INT8_OUTLIERS: usize = 16;

/// The precision policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The format of the large projections.
    pub format: Format,
    /// Projections that keep the checkpoint's precision.
    pub keep: Vec<Selector>,
    /// With no `keep` given, keep the model's measured exceptions ([`crate::measured`]: its
    /// most sensitive blocks, else its last block). On by default for `fp8` and `fp8-weight`;
    /// an explicit `keep` list, or `keep = ["none"]`, turns it off. [`Policy::for_model`]
    /// resolves it.
    pub default_keep: bool,
    /// How 8-bit weights are rounded.
    pub rounding: Rounding,
    /// Calibration text (default: [`crate::calibrate::DEFAULT_TEXT`]).
    pub calib_text: Option<String>,
    /// Calibration tokens to run.
    pub calib_tokens: usize,
    /// `fp8`: one calibrated input scale per projection (`amax / 448` over the calibration
    /// text) instead of one per token computed on the fly.
    pub static_inputs: bool,
    /// `fp8`: SmoothQuant migration strength `α` (0 to 1), if any. Input channel `j` is divided by
    /// `s[j] = amax(x[:, j])^α / amax(w[:, j])^(1 − α)` (calibrated) before it is quantised and the
    /// weight's column `j` multiplied by it, which moves activation outliers into the weights.
    pub smooth: Option<f32>,
    /// `fp8` and `fp8-weight`: one weight scale per output channel instead of one per tensor
    /// (per fused part). Opt-in: measured no better (README, "Precision"); FP8's grid is
    /// relative, so a scale only moves where the rounding steps fall.
    pub channel_scales: bool,
    /// `fp8`: subtract each input channel's calibrated mean before the input is quantised (the
    /// weight times the means joins the bias, exactly), so that FP8's relative rounding error
    /// applies to the deviations only.
    pub center: bool,
    /// 8-bit formats: input channels of each projection multiplied exactly in f32 beside the
    /// 8-bit product (LLM.int8()-style outlier decomposition). The channels are the ones with
    /// the largest calibrated `Σ (x_j − shift_j)² · ‖w_{:,j}‖²`, the error they would add; at
    /// most a quarter of a projection's inputs.
    pub outliers: usize,
    /// Load a checkpoint even if it holds tensors the architecture does not read (they are
    /// ignored, with a note); by default such a checkpoint is refused, naming them.
    pub allow_unused_weights: bool,
    /// How the KV cache stores keys and values (8-bit pages take their key shifts from the
    /// calibration run, which they then need: [`Policy::needs_calibration`]).
    pub kv: KvFormat,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            format: Format::Auto,
            keep: Vec::new(),
            default_keep: false,
            rounding: Rounding::Nearest,
            calib_text: None,
            calib_tokens: 2048,
            static_inputs: false,
            smooth: None,
            channel_scales: false,
            center: false,
            outliers: 0,
            allow_unused_weights: false,
            kv: KvFormat::F32,
        }
    }
}

impl Policy {
    /// The default policy of a format, with exception strings (`["none"]`: no exceptions at
    /// all): nearest rounding, the format's exact outlier channels ([`FP8_OUTLIERS`],
    /// [`INT8_OUTLIERS`]), and for `fp8` and `fp8-weight` without exceptions given, the model's
    /// measured ones ([`Policy::default_keep`]).
    pub fn parse(format: &str, keep: &[String]) -> Result<Policy> {
        let format = Format::parse(format)?;
        let none = keep.iter().any(|k| k == "none");
        if none && keep.len() > 1 {
            return Err(ModelError::Config(format!(
                "precision exceptions {keep:?}: \"none\" means no exceptions and stands alone"
            )));
        }
        Ok(Policy {
            format,
            keep: if none { Vec::new() } else { keep.iter().map(|k| Selector::parse(k)).collect::<Result<_>>()? },
            default_keep: format.is_fp8() && keep.is_empty(),
            outliers: match format {
                Format::Fp8 | Format::Fp8Weight => FP8_OUTLIERS,
                Format::Int8Weight => INT8_OUTLIERS,
                _ => 0,
            },
            ..Policy::default()
        })
    }

    /// The policy as it applies to a model of shape `spec`: [`Policy::default_keep`] resolved
    /// into the model's measured exceptions ([`crate::measured::default_keep`]).
    pub fn for_model(&self, spec: &turbine_core::ModelSpec) -> Policy {
        let mut p = self.clone();
        if p.default_keep && p.keep.is_empty() && p.format != Format::Auto {
            p.keep = crate::measured::default_keep(spec)
                .iter()
                .map(|k| Selector::parse(k).expect("measured exceptions are valid selectors"))
                .collect();
        }
        p.default_keep = false;
        p
    }

    /// The policy with `outliers` exact channels per projection if given (else as it is).
    pub fn with_outliers(self, outliers: Option<usize>) -> Policy {
        Policy { outliers: outliers.unwrap_or(self.outliers), ..self }
    }

    /// What the policy adds to its format, in words (`""` when nothing): e.g. `"16 exact
    /// channels, gptq"`.
    pub fn summary(&self) -> String {
        let (eight, fp8) = (self.format.is_eight_bit(), self.format == Format::Fp8);
        let mut parts = Vec::new();
        if eight && self.outliers > 0 {
            parts.push(format!("{} exact channels", self.outliers));
        }
        if eight && self.rounding == Rounding::Gptq {
            parts.push("gptq".into());
        }
        if self.channel_scales && self.format.is_fp8() {
            parts.push("channel scales".into());
        }
        if fp8 && self.center {
            parts.push("centred".into());
        }
        if let (true, Some(a)) = (fp8, self.smooth) {
            parts.push(format!("smooth {a}"));
        }
        if fp8 && self.static_inputs {
            parts.push("static inputs".into());
        }
        if !self.keep.is_empty() && self.format != Format::Auto {
            parts.push(format!("{} exceptions", self.keep.len()));
        } else if self.default_keep && self.format != Format::Auto {
            parts.push("measured exceptions".into());
        }
        parts.join(", ")
    }

    /// Whether applying the policy needs the model to run over calibration text first.
    pub fn needs_calibration(&self) -> bool {
        self.format == Format::Fp8 && (self.static_inputs || self.smooth.is_some() || self.center)
            || self.format.is_eight_bit() && (self.rounding == Rounding::Gptq || self.outliers > 0)
    }

    /// The format of `role` in `layer` (of `layers`).
    pub fn format_for(&self, layer: usize, layers: usize, role: Role) -> Format {
        if self.keep.iter().any(|k| k.covers(layer, layers, role)) {
            Format::Auto
        } else {
            self.format
        }
    }

    /// Converts the decoder's projections as the policy says (`calib` is required when
    /// [`Policy::needs_calibration`]).
    ///
    /// Each projection is converted from its host copy when loading kept one
    /// ([`crate::weights::Staging`]), else from a download of its weight; every host copy is
    /// settled (uploaded if still deferred, then dropped) on the way out.
    pub fn apply<B: Ops>(&self, b: &B, dec: &mut Decoder<B>, calib: Option<&Calibration>) -> Result<()> {
        // The model's measured exceptions join here, where its shape is known.
        let converted = self.for_model(&dec.spec).convert_all(b, dec, calib);
        for layer in &mut dec.layers {
            for lin in [&mut layer.qkv, &mut layer.o, &mut layer.up, &mut layer.down] {
                lin.settle(b)?;
            }
        }
        if let Some(head) = &mut dec.lm_head {
            head.settle(b)?;
        }
        converted
    }

    fn convert_all<B: Ops>(&self, b: &B, dec: &mut Decoder<B>, calib: Option<&Calibration>) -> Result<()> {
        if self.format == Format::Auto {
            return Ok(());
        }
        let s = &dec.spec;
        let (qd, kd) = (s.q_heads * s.head_dim, s.kv_heads * s.head_dim);
        let (layers, gated) = (dec.layers.len(), dec.opts.gated);
        for (i, layer) in dec.layers.iter_mut().enumerate() {
            let f = layer.down.out_in().1;
            let up_parts = if gated { vec![f, f] } else { vec![f] };
            let (o_rows, down_rows) = (layer.o.out_in().0, layer.down.out_in().0);
            for (role, lin, parts) in [
                (Role::Qkv, &mut layer.qkv, vec![qd, kd, kd]),
                (Role::AttnOut, &mut layer.o, vec![o_rows]),
                (Role::Up, &mut layer.up, up_parts),
                (Role::Down, &mut layer.down, vec![down_rows]),
            ] {
                let stats = match (self.needs_calibration(), calib) {
                    (false, _) => None,
                    (true, Some(c)) => Some(c.inputs.get(&(i, role)).ok_or_else(|| {
                        ModelError::Config(format!("calibration saw no input of layer {i}'s {role:?} projection"))
                    })?),
                    (true, None) => return Err(ModelError::Config("this policy needs a calibration run".into())),
                };
                let fmt = self.format_for(i, layers, role);
                let fp8_stats = stats.filter(|_| fmt == Format::Fp8);
                let mean = fp8_stats.filter(|_| self.center).map(|s| s.chan_mean());
                let gptq = stats.filter(|_| self.rounding == Rounding::Gptq);
                // A centred product's weight multiplies x − mean: GPTQ weighs its errors by the
                // covariance, Σ(x − μ)(x − μ)ᵀ = XᵀX − n·μμᵀ.
                let centred_gram = gptq.zip(mean.as_deref()).map(|(s, mu)| {
                    let n = s.tokens as f32;
                    s.gram.iter().enumerate().map(|(i, &g)| g - n * mu[i / s.k] * mu[i % s.k]).collect::<Vec<_>>()
                });
                let energy = stats.filter(|_| self.outliers > 0).map(|s| s.chan_energy(mean.as_deref()));
                let prep = Prep {
                    gram: centred_gram.as_deref().or(gptq.map(|s| &s.gram[..])),
                    smooth: self.smooth.zip(fp8_stats).map(|(alpha, s)| (alpha, &s.chan_amax[..])),
                    center: mean.as_deref(),
                    outliers: energy.as_deref().map(|e| (self.outliers, e)),
                };
                // Per-channel scales: every row its own part.
                let parts = if self.channel_scales && fmt.is_fp8() { vec![1; parts.iter().sum()] } else { parts };
                let exact = convert(b, lin, fmt, &parts, prep)?;
                if let (Format::Fp8, true, Some(s)) = (fmt, self.static_inputs, stats) {
                    // The exact channels are left out of the quantised input.
                    let amax = s
                        .chan_amax
                        .iter()
                        .enumerate()
                        .filter(|(c, _)| !exact.contains(&(*c as u32)))
                        .fold(0f32, |a, (_, &v)| a.max(v));
                    let scale = scale_for(amax, E4M3_MAX);
                    lin.quant_x = Some(ActQuant::Static(b.upload(&HostTensor::from_f32([1], &[scale])?)?));
                }
            }
        }
        Ok(())
    }
}

/// A per-row 8-bit grid: E4M3 or INT8 values times the row's scale.
struct RowGrid {
    scales: Vec<f32>,
    inv: Vec<f32>,
    fp8: bool,
}

impl Grid for RowGrid {
    fn round(&self, row: usize, v: f32) -> (u8, f32) {
        if self.fp8 {
            let c = f32_to_e4m3(v * self.inv[row]);
            (c, e4m3_table()[usize::from(c)] * self.scales[row])
        } else {
            let c = f32_to_i8(v, self.scales[row]);
            (c as u8, f32::from(c) * self.scales[row])
        }
    }
}

/// What [`convert`] may use from a calibration run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prep<'a> {
    /// The calibration inputs' `XᵀX` `[k, k]`: 8-bit weights are rounded with GPTQ (otherwise to
    /// nearest).
    pub gram: Option<&'a [f32]>,
    /// `fp8` only: `α` and the calibration inputs' per-channel amax: the input channels are
    /// smoothed ([`Policy::smooth`]).
    pub smooth: Option<(f32, &'a [f32])>,
    /// `fp8` only: the calibration inputs' per-channel mean: the input is centred before it is
    /// quantised ([`Policy::center`]).
    pub center: Option<&'a [f32]>,
    /// 8-bit formats: how many input channels to multiply exactly, and each channel's calibrated
    /// energy `Σ (x − shift)²` ([`Policy::outliers`]).
    pub outliers: Option<(usize, &'a [f64])>,
}

/// Stores `lin`'s weight in `fmt`; `parts` are the row counts of the tensors fused into it (each
/// gets its own per-tensor FP8 scale); `prep` says what calibration adds. Returns the input
/// channels multiplied exactly (ascending; empty without [`Prep::outliers`]).
pub fn convert<B: Ops>(b: &B, lin: &mut Linear<B>, fmt: Format, parts: &[usize], prep: Prep<'_>) -> Result<Vec<u32>> {
    let Prep { gram, smooth, center, outliers } = prep;
    if fmt == Format::Auto {
        lin.settle(b)?;
        return Ok(Vec::new());
    }
    let host = match lin.host.take() {
        Some(h) => h,
        None => b.download(&lin.w)?,
    };
    let (n, k) = match host.shape().dims() {
        &[n, k] => (n, k),
        d => return Err(ModelError::Config(format!("a projection weight is {d:?}, not [out, in]"))),
    };
    if parts.iter().sum::<usize>() != n {
        return Err(ModelError::Config(format!("projection parts {parts:?} do not add up to its {n} rows")));
    }
    if lin.scale.is_some() {
        return Err(ModelError::Config(format!(
            "this checkpoint's {} weights are already quantised with scales; load it with the format auto",
            host.dtype()
        )));
    }
    let mut w = vec![0f32; n * k];
    decode_f32(host.dtype(), host.bytes(), &mut w)?;
    let amax = |rows: &[f32]| rows.iter().fold(0f32, |a, v| a.max(v.abs()));
    let center = center.filter(|_| fmt == Format::Fp8);
    let exact = match outliers {
        Some((count, energy)) if fmt.is_eight_bit() && count > 0 => outlier_channels(&w, n, k, count, energy)?,
        _ => Vec::new(),
    };
    let mut bias = match center {
        Some(mu) => Some(centred_bias(b, lin, &w, n, k, mu)?),
        None => None,
    };
    let mut factors = match smooth {
        Some((alpha, x_amax)) if fmt == Format::Fp8 => Some(smooth_factors(&w, n, k, alpha, x_amax)?),
        _ => None,
    };
    // Exact channels multiply the unsmoothed input with unsmoothed weights.
    if let Some(f) = &mut factors {
        exact.iter().for_each(|&c| f[c as usize] = 1.0);
    }
    let scaled_gram;
    let gram = match (&factors, gram) {
        (Some(s), Some(g)) => {
            // The quantised product sees x / s: its Gram matrix is D⁻¹ G D⁻¹.
            scaled_gram = g.iter().enumerate().map(|(i, &v)| v / (s[i / k] * s[i % k])).collect::<Vec<_>>();
            Some(&scaled_gram[..])
        }
        (_, g) => g,
    };
    if let Some(s) = &factors {
        for row in w.chunks_exact_mut(k.max(1)) {
            row.iter_mut().zip(s).for_each(|(v, s)| *v *= s);
        }
    }
    let (dtype, bytes, scales): (DType, Vec<u8>, Option<Vec<f32>>) = match fmt {
        Format::Auto => unreachable!("returned above"),
        Format::F32 => (DType::F32, w.iter().flat_map(|v| v.to_le_bytes()).collect(), None),
        Format::F16 => (DType::F16, w.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(), None),
        Format::BF16 => (DType::BF16, w.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(), None),
        Format::Fp8 | Format::Fp8Weight | Format::Int8Weight => {
            let fp8 = fmt != Format::Int8Weight;
            // The 8-bit grid (its scales, plain rounding) leaves the exact columns out.
            let rest = if exact.is_empty() {
                std::borrow::Cow::Borrowed(&w[..])
            } else {
                let mut r = w.clone();
                for row in r.chunks_exact_mut(k.max(1)) {
                    exact.iter().for_each(|&c| row[c as usize] = 0.0);
                }
                std::borrow::Cow::Owned(r)
            };
            let mut scales = Vec::with_capacity(n);
            if fp8 {
                let mut r0 = 0;
                for &p in parts {
                    let part = &rest[r0 * k..(r0 + p) * k];
                    let s = scale_for(amax(part), E4M3_MAX);
                    scales.extend(std::iter::repeat_n(s, p));
                    r0 += p;
                }
            } else {
                scales.extend(rest.chunks_exact(k.max(1)).map(|row| scale_for(amax(row), I8_MAX)));
            }
            let grid = RowGrid { inv: scales.iter().map(|s| 1.0 / s).collect(), scales, fp8 };
            let codes = match gram {
                Some(g) => gptq::quantize(&mut w, n, k, g, &grid, &exact)?,
                None => rest.iter().enumerate().map(|(i, &v)| grid.round(i / k.max(1), v).0).collect(),
            };
            (if fp8 { DType::F8E4M3 } else { DType::I8 }, codes, Some(grid.scales))
        }
    };
    lin.w = b.upload_weight(&HostTensor::new([n, k], dtype, bytes)?)?;
    lin.scale = match scales {
        Some(s) => Some(b.upload(&HostTensor::from_f32([n], &s)?)?),
        None => None,
    };
    lin.quant_x = (fmt == Format::Fp8).then_some(ActQuant::Dynamic);
    lin.exact = None;
    if !exact.is_empty() {
        // The exact weights are what GPTQ left in those columns (it pushed the others' rounding
        // errors there); a centred product's bias then adds back `w_exact · mu` less of it.
        let s = exact.len();
        let wx: Vec<f32> = w.chunks_exact(k).flat_map(|row| exact.iter().map(|&c| row[c as usize])).collect();
        if let (Some(bias), Some(mu)) = (&mut bias, center) {
            for (o, row) in bias.iter_mut().zip(wx.chunks_exact(s)) {
                *o -=
                    row.iter().zip(&exact).map(|(&w, &c)| f64::from(w) * f64::from(mu[c as usize])).sum::<f64>() as f32;
            }
        }
        lin.exact = Some(ExactWeights {
            idx: b.upload(&HostTensor::from_u32([s], &exact)?)?,
            w: b.upload(&HostTensor::from_f32([n, s], &wx)?)?,
        });
    }
    if let Some((bias, mu)) = bias.zip(center) {
        lin.b = Some(b.upload(&HostTensor::from_f32([n], &bias)?)?);
        lin.shift = Some(b.upload(&HostTensor::from_f32([k], mu)?)?);
    }
    // The quantised input leaves the exact channels out (a zero factor), so they do not set its
    // scale either.
    let mut inv: Option<Vec<f32>> = factors.map(|s| s.iter().map(|s| 1.0 / s).collect());
    if fmt == Format::Fp8 && !exact.is_empty() {
        let f = inv.get_or_insert_with(|| vec![1.0; k]);
        exact.iter().for_each(|&c| f[c as usize] = 0.0);
    }
    lin.smooth = match inv {
        Some(f) => Some(b.upload(&HostTensor::from_f32([k], &f)?)?),
        None => None,
    };
    Ok(exact)
}

/// The `count` (at most `k / 4`) input channels (ascending) of a weight `w` `[n, k]` whose rounding would cost
/// most: the largest `energy[j] · ‖w_{:,j}‖²`, `energy` being the calibrated `Σ (x_j − shift_j)²`.
fn outlier_channels(w: &[f32], n: usize, k: usize, count: usize, energy: &[f64]) -> Result<Vec<u32>> {
    if energy.len() != k {
        return Err(ModelError::Config(format!("{} calibrated input channels for a {k}-column weight", energy.len())));
    }
    // At most a quarter of the inputs: the product stays an 8-bit one on narrow layers.
    let count = count.min(k / 4);
    let mut col = vec![0f64; k];
    for row in w.chunks_exact(k.max(1)).take(n) {
        col.iter_mut().zip(row).for_each(|(a, &v)| *a += f64::from(v) * f64::from(v));
    }
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| (energy[b] * col[b]).total_cmp(&(energy[a] * col[a])).then(a.cmp(&b)));
    let mut picked: Vec<u32> = order[..count].iter().map(|&c| c as u32).collect();
    picked.sort_unstable();
    Ok(picked)
}

/// `lin`'s bias plus `w · mu` (`w` `[n, k]` unquantised): what a product whose input is centred
/// by `mu` adds back.
fn centred_bias<B: Ops>(b: &B, lin: &Linear<B>, w: &[f32], n: usize, k: usize, mu: &[f32]) -> Result<Vec<f32>> {
    if mu.len() != k {
        return Err(ModelError::Config(format!("{} calibrated input means for a {k}-column weight", mu.len())));
    }
    let mut bias = match &lin.b {
        Some(t) => b.download(t)?.to_f32()?,
        None => vec![0.0; n],
    };
    for (o, row) in bias.iter_mut().zip(w.chunks_exact(k.max(1))) {
        *o += row.iter().zip(mu).map(|(&w, &m)| f64::from(w) * f64::from(m)).sum::<f64>() as f32;
    }
    Ok(bias)
}

/// SmoothQuant's per-input-channel factors `s[j] = x_amax[j]^α / w_amax[j]^(1 − α)` for a weight
/// `w` `[n, k]`; channels that never moved (or a zero column) keep 1.
fn smooth_factors(w: &[f32], n: usize, k: usize, alpha: f32, x_amax: &[f32]) -> Result<Vec<f32>> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(ModelError::Config(format!("the smoothing strength must be in 0..=1, got {alpha}")));
    }
    if x_amax.len() != k {
        return Err(ModelError::Config(format!("{} calibrated input channels for a {k}-column weight", x_amax.len())));
    }
    let mut w_amax = vec![0f32; k];
    for row in w.chunks_exact(k.max(1)).take(n) {
        w_amax.iter_mut().zip(row).for_each(|(a, v)| *a = a.max(v.abs()));
    }
    Ok(x_amax
        .iter()
        .zip(&w_amax)
        .map(|(&xa, &wa)| {
            let s = xa.powf(alpha) / wa.powf(1.0 - alpha);
            if xa > 0.0 && wa > 0.0 && s.is_finite() {
                s.clamp(1e-4, 1e4)
            } else {
                1.0
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_exceptions_resolve_per_model() {
        for m in crate::measured::MEASURED {
            for k in m.keep.iter().chain(crate::measured::FALLBACK) {
                let s = Selector::parse(k).unwrap();
                assert!(s.layer.is_some_and(|l| l < m.layers as i64 && l >= -(m.layers as i64)), "{}: {k}", m.model);
            }
        }
        let spec = |layers| turbine_core::ModelSpec {
            arch: "llama".into(),
            hidden: 64,
            layers,
            q_heads: 4,
            kv_heads: 2,
            head_dim: 16,
            vocab: 100,
            max_positions: 128,
            bos: None,
            eos: vec![],
        };
        let fp8 = Policy::parse("fp8", &[]).unwrap();
        let last = fp8.for_model(&spec(4));
        assert!(!last.default_keep);
        assert_eq!(last.format_for(3, 4, Role::Down), Format::Auto);
        assert_eq!(last.format_for(2, 4, Role::Down), Format::Fp8);
        let none = Policy::parse("fp8", &["none".into()]).unwrap().for_model(&spec(4));
        assert_eq!(none.format_for(3, 4, Role::Down), Format::Fp8);
        let given = Policy::parse("fp8-weight", &["down@0".into()]).unwrap().for_model(&spec(4));
        assert_eq!(
            (given.format_for(3, 4, Role::Down), given.format_for(0, 4, Role::Down)),
            (Format::Fp8Weight, Format::Auto)
        );
        assert!(!Policy::parse("int8-weight", &[]).unwrap().default_keep);
        assert_eq!(Policy::parse("int8-weight", &[]).unwrap().outliers, INT8_OUTLIERS);
    }

    #[test]
    fn names_and_selectors() {
        assert_eq!(Format::parse("fp8").unwrap(), Format::Fp8);
        assert!(Format::parse("fp7").unwrap_err().to_string().contains("int8-weight"));
        let p = Policy::parse("fp8", &["down".into(), "layer:-1".into(), "qkv@0".into()]).unwrap();
        assert_eq!(p.format_for(3, 10, Role::Down), Format::Auto);
        assert_eq!(p.format_for(9, 10, Role::Up), Format::Auto);
        assert_eq!(p.format_for(0, 10, Role::Qkv), Format::Auto);
        assert_eq!(p.format_for(1, 10, Role::Qkv), Format::Fp8);
        assert!(Selector::parse("mlp").unwrap_err().to_string().contains("mlp"));
        assert!(Selector::parse("layer:x").is_err());
    }

    #[test]
    fn outliers_are_the_channels_of_largest_error() {
        // Channel 1 has the largest input energy but a zero weight column: it costs nothing.
        // Channel 3's small energy meets a large column; channel 0 is plain.
        let (n, k) = (2, 4);
        let w = [1.0, 0.0, 1.0, 10.0, 1.0, 0.0, 1.0, 10.0];
        let energy = [1.0, 1e6, 2.0, 0.5];
        assert_eq!(outlier_channels(&w, n, k, 1, &energy).unwrap(), vec![3]);
        assert_eq!(outlier_channels(&w, n, k, 4, &energy).unwrap(), vec![3], "a quarter of the inputs at most");
        let (w8, e8) = ([w, w].concat(), [energy, energy].concat());
        assert_eq!(outlier_channels(&w8, n, 2 * k, 2, &e8).unwrap(), vec![3, 7]);
        assert!(outlier_channels(&w, n, k, 1, &energy[..3]).is_err());
    }
}
