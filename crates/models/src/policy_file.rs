//! The precision policy as data: [`PolicySpec`], the written form of a [`Policy`] (names and
//! numbers, as a TOML or JSON file holds them), and serde for `Policy` through it. Every command
//! builds its policy the same way — flags over a spec, then [`PolicySpec::policy`] — and the
//! spec a run used can be written out and read back unchanged.
//!
//! ```toml
//! format = "fp8"          # auto, f32, f16, bf16, fp8, fp8-weight, int8-weight
//! keep = ["down@0"]       # exceptions that keep the checkpoint's precision (default for fp8
//!                         # and fp8-weight: the model's measured ones; ["none"]: none at all)
//! kv = "fp8"              # KV cache: f32, fp8 or int8
//! outliers = 16           # exact input channels per projection (default: the format's)
//! rounding = "nearest"    # or gptq
//! calib_tokens = 2048
//! ```

use serde::{Deserialize, Serialize};

use crate::precision::{Format, KvFormat, Policy, Rounding, Selector};
use crate::Result;

/// A precision policy as names and numbers. Missing keys take the defaults; unknown keys are
/// refused by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySpec {
    /// The block projections' format (`auto`, `f32`, `f16`, `bf16`, `fp8`, `fp8-weight`,
    /// `int8-weight`).
    pub format: String,
    /// Projections that keep the checkpoint's precision (`qkv`, `o`, `up`, `down`, `layer:N`,
    /// `ROLE@N`); empty: the format's default (for `fp8` and `fp8-weight`, the model's measured
    /// exceptions); `["none"]`: none at all.
    pub keep: Vec<String>,
    /// The KV cache's storage: `f32`, `fp8` or `int8`.
    pub kv: String,
    /// Exact input channels per projection of an 8-bit format (unset: the format's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outliers: Option<usize>,
    /// `nearest` or `gptq`.
    pub rounding: String,
    /// Calibration text (unset: the bundled English text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calib_text: Option<String>,
    /// Calibration tokens to run.
    pub calib_tokens: usize,
    /// `fp8`: one calibrated input scale per projection.
    pub static_inputs: bool,
    /// `fp8`: SmoothQuant migration strength, 0 to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smooth: Option<f32>,
    /// `fp8`, `fp8-weight`: one weight scale per output channel instead of per tensor.
    pub channel_scales: bool,
    /// `fp8`: subtract each input channel's calibrated mean before quantising.
    pub center: bool,
    /// Load a checkpoint holding tensors the architecture does not read.
    pub allow_unused_weights: bool,
}

impl Default for PolicySpec {
    fn default() -> Self {
        PolicySpec::from(&Policy::default())
    }
}

impl PolicySpec {
    /// The policy, every name and range checked (the error names the key).
    pub fn policy(&self) -> Result<Policy> {
        let base = Policy::parse(&self.format, &self.keep)?;
        if let Some(a) = self.smooth {
            if !(0.0..=1.0).contains(&a) {
                return Err(crate::ModelError::Config(format!("smooth must be in 0..=1, got {a}")));
            }
        }
        Ok(Policy {
            kv: KvFormat::parse(&self.kv)?,
            rounding: Rounding::parse(&self.rounding)?,
            calib_text: self.calib_text.clone(),
            calib_tokens: self.calib_tokens,
            static_inputs: self.static_inputs,
            smooth: self.smooth,
            channel_scales: self.channel_scales,
            center: self.center,
            allow_unused_weights: self.allow_unused_weights,
            ..base.with_outliers(self.outliers)
        })
    }
}

impl From<&Policy> for PolicySpec {
    fn from(p: &Policy) -> Self {
        PolicySpec {
            format: p.format.name().to_string(),
            // An fp8 policy without its measured exceptions writes `none`, so it reads back so.
            keep: match (p.keep.is_empty(), p.default_keep, p.format.is_fp8()) {
                (true, false, true) => vec!["none".to_string()],
                _ => p.keep.iter().map(Selector::name).collect(),
            },
            kv: p.kv.name().to_string(),
            outliers: (p.format != Format::Auto).then_some(p.outliers),
            rounding: p.rounding.name().to_string(),
            calib_text: p.calib_text.clone(),
            calib_tokens: p.calib_tokens,
            static_inputs: p.static_inputs,
            smooth: p.smooth,
            channel_scales: p.channel_scales,
            center: p.center,
            allow_unused_weights: p.allow_unused_weights,
        }
    }
}

impl Serialize for Policy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        PolicySpec::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        PolicySpec::deserialize(d)?.policy().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_round_trips_through_its_written_form() {
        let spec = PolicySpec {
            format: "fp8".into(),
            keep: vec!["down@0".into(), "layer:-1".into(), "qkv".into()],
            kv: "int8".into(),
            outliers: Some(4),
            rounding: "gptq".into(),
            smooth: Some(0.5),
            channel_scales: true,
            center: true,
            ..PolicySpec::default()
        };
        let p = spec.policy().unwrap();
        assert_eq!((p.format, p.kv, p.outliers, p.rounding), (Format::Fp8, KvFormat::Int8, 4, Rounding::Gptq));
        let json = serde_json::to_string(&p).unwrap();
        let back: Policy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert_eq!(PolicySpec::from(&p), spec);
        // Defaults: a format's own outliers, an f32 KV cache.
        let fp8: Policy = serde_json::from_str(r#"{"format": "fp8"}"#).unwrap();
        assert_eq!((fp8.outliers, fp8.kv), (crate::precision::FP8_OUTLIERS, KvFormat::F32));
        assert_eq!(serde_json::from_str::<Policy>("{}").unwrap(), Policy::default());
        // fp8 keeps the model's measured exceptions unless told `none`; both forms round-trip.
        assert!(fp8.default_keep && fp8.keep.is_empty());
        let none: Policy = serde_json::from_str(r#"{"format": "fp8", "keep": ["none"]}"#).unwrap();
        assert!(!none.default_keep && none.keep.is_empty());
        for p in [fp8, none] {
            assert_eq!(serde_json::from_str::<Policy>(&serde_json::to_string(&p).unwrap()).unwrap(), p);
        }
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused_by_name() {
        for (json, needle) in [
            (r#"{"format": "fp7"}"#, "fp7"),
            (r#"{"kv": "fp4"}"#, "KV cache dtype"),
            (r#"{"keep": ["mlp"]}"#, "precision exception"),
            (r#"{"keep": ["none", "down"]}"#, "stands alone"),
            (r#"{"rounding": "up"}"#, "rounding"),
            (r#"{"smooth": 2.0}"#, "smooth"),
            (r#"{"formats": "fp8"}"#, "formats"),
        ] {
            let e = serde_json::from_str::<Policy>(json).unwrap_err().to_string();
            assert!(e.contains(needle), "{json}: {e}");
        }
    }
}
