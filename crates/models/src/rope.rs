//! Rotary tables: inverse frequencies (with linear or Llama-3 scaling) and cos/sin per position.

use serde_json::{Map, Value as Json};
use turbine_core::{HostTensor, Ops, RopeTable};

use crate::config::HfConfig;
use crate::{ModelError, Result};

/// Per-frequency divisors of the inverse frequencies, `[rot_dim / 2]` f32, under the name a
/// GGUF file's `rope_freqs.weight` is read as (llama.cpp's converter stores Llama 3.x's rope
/// scaling there, not in the metadata).
pub const FREQ_FACTORS: &str = "model.rope_freqs.weight";

/// How positions map to angles.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    /// Base of the geometric frequency ladder.
    pub theta: f64,
    /// Rotating dimensions per head.
    pub rot_dim: usize,
    /// Scaling of the frequencies.
    pub scaling: RopeScaling,
}

/// Frequency scaling schemes.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor`.
    Linear(f64),
    /// Dynamic NTK: identical to plain RoPE while the sequence fits the trained context (as in
    /// transformers); the context is not extended beyond it.
    Dynamic,
    /// YaRN: interpolated low frequencies, extrapolated high ones, a linear ramp between, and
    /// cos/sin scaled by an attention factor.
    Yarn {
        /// Context extension factor.
        factor: f64,
        /// Context length the model was trained with.
        original: f64,
        /// Rotations bounding the ramp (fast, slow).
        beta: (f64, f64),
        /// Multiplier of cos and sin.
        attention_factor: f64,
        /// Round the ramp bounds to whole dimensions.
        truncate: bool,
    },
    /// Llama 3.x: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        /// Division factor for low frequencies.
        factor: f64,
        /// Low-frequency threshold factor.
        low: f64,
        /// High-frequency threshold factor.
        high: f64,
        /// Context length the model was trained with.
        original: f64,
    },
}

/// Parses a scaling object; `default` (or no type) is no scaling. `max_pos` is the config's
/// `max_position_embeddings`, the fallback for `original_max_position_embeddings`.
fn scaling(o: &Map<String, Json>, max_pos: Option<f64>) -> Result<RopeScaling> {
    let f = |k: &str| o.get(k).and_then(Json::as_f64);
    let ty = o.get("rope_type").or_else(|| o.get("type")).and_then(Json::as_str).unwrap_or("default");
    if ty == "default" {
        return Ok(RopeScaling::None);
    }
    let original = f("original_max_position_embeddings").or(max_pos);
    let factor = match (f("factor"), ty, original, max_pos) {
        (Some(factor), ..) => factor,
        // transformers derives YaRN's factor from the two lengths when it is absent.
        (None, "yarn", Some(o), Some(m)) => m / o,
        _ => return Err(ModelError::Config(format!("rope_scaling {ty:?} without factor"))),
    };
    Ok(match ty {
        "linear" => RopeScaling::Linear(factor),
        "dynamic" => RopeScaling::Dynamic,
        "yarn" => {
            let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
            let attention_factor = match (f("attention_factor"), f("mscale"), f("mscale_all_dim")) {
                (Some(a), ..) => a,
                (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(factor, m) / mscale(factor, all),
                _ => mscale(factor, 1.0),
            };
            RopeScaling::Yarn {
                factor,
                original: original.ok_or_else(|| {
                    ModelError::Config("yarn rope scaling needs original_max_position_embeddings".into())
                })?,
                beta: (
                    f("beta_fast").filter(|&b| b != 0.0).unwrap_or(32.0),
                    f("beta_slow").filter(|&b| b != 0.0).unwrap_or(1.0),
                ),
                attention_factor,
                truncate: o.get("truncate").and_then(Json::as_bool).unwrap_or(true),
            }
        }
        "llama3" => RopeScaling::Llama3 {
            factor,
            low: f("low_freq_factor").unwrap_or(1.0),
            high: f("high_freq_factor").unwrap_or(4.0),
            original: f("original_max_position_embeddings").unwrap_or(8192.0),
        },
        other => {
            return Err(ModelError::Config(format!(
                "rope_scaling type {other:?} is not supported (linear, dynamic, yarn and llama3 are)"
            )))
        }
    })
}

/// YaRN's ramp bounds in rotary dimensions: where `beta.0` (fast) and `beta.1` (slow) rotations
/// fit the original context.
fn yarn_range(beta: (f64, f64), dim: usize, base: f64, original: f64, truncate: bool) -> (f64, f64) {
    let corr = |rot: f64| (dim as f64 * (original / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln());
    let (mut low, mut high) = (corr(beta.0), corr(beta.1));
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    (low.max(0.0), high.min(dim as f64 - 1.0))
}

impl RopeSpec {
    /// Reads `rope_theta` and the scaling settings.
    pub fn from_hf(cfg: &HfConfig, rot_dim: usize) -> Result<Self> {
        let theta = cfg.rope_theta(10000.0)?;
        let max_pos = cfg.opt_f64("max_position_embeddings")?;
        let scaling = match cfg.rope_scaling() {
            None => RopeScaling::None,
            Some(o) => scaling(o, max_pos)?,
        };
        Ok(RopeSpec { theta, rot_dim, scaling })
    }

    /// Reads one rotary parameter object (`{"rope_type": …, "rope_theta": …, "factor": …}`), as
    /// transformers 5 nests them per layer type.
    pub fn from_params(
        obj: &Map<String, Json>,
        rot_dim: usize,
        default_theta: f64,
        max_pos: Option<f64>,
    ) -> Result<Self> {
        let theta = obj.get("rope_theta").and_then(Json::as_f64).unwrap_or(default_theta);
        Ok(RopeSpec { theta, rot_dim, scaling: scaling(obj, max_pos)? })
    }

    /// Inverse frequencies, computed in f32 as transformers does.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.rot_dim;
        (0..d / 2)
            .map(|i| {
                let pos_freq = (self.theta as f32).powf((2 * i) as f32 / d as f32);
                let base = 1.0f32 / pos_freq;
                match self.scaling {
                    RopeScaling::None | RopeScaling::Dynamic => base,
                    RopeScaling::Yarn { factor, original, beta, truncate, .. } => {
                        let (low, high) = yarn_range(beta, d, self.theta, original, truncate);
                        let hi = if low == high { high + 0.001 } else { high };
                        let ramp = ((i as f32 - low as f32) / (hi as f32 - low as f32)).clamp(0.0, 1.0);
                        let extra = 1.0 - ramp;
                        let inter = 1.0 / (factor as f32 * pos_freq);
                        inter * (1.0 - extra) + base * extra
                    }
                    RopeScaling::Linear(f) => base / f as f32,
                    RopeScaling::Llama3 { factor, low, high, original } => {
                        let wavelen = 2.0 * std::f64::consts::PI / base as f64;
                        let (low_wl, high_wl) = (original / low, original / high);
                        if wavelen < high_wl {
                            base
                        } else if wavelen > low_wl {
                            base / factor as f32
                        } else {
                            let smooth = ((original / wavelen - low) / (high - low)) as f32;
                            (1.0 - smooth) * base / factor as f32 + smooth * base
                        }
                    }
                }
            })
            .collect()
    }

    /// Multiplier of cos and sin (YaRN's attention factor; 1 otherwise).
    pub fn attention_factor(&self) -> f32 {
        match self.scaling {
            RopeScaling::Yarn { attention_factor, .. } => attention_factor as f32,
            _ => 1.0,
        }
    }

    /// [`RopeSpec::table`] for a model of `max_positions` loaded through `w`: as many positions
    /// as the context used needs ([`Weights::table_positions`]). A checkpoint's per-frequency
    /// divisors ([`FREQ_FACTORS`], llama.cpp's `rope_freqs` tensor, where its converter puts
    /// Llama 3.x's rope scaling) divide the inverse frequencies.
    pub fn table_for<B: Ops>(&self, w: &crate::weights::Weights<'_, B>, max_positions: usize) -> Result<RopeTable<B>> {
        // cos and sin, f32, rot_dim / 2 of each a position.
        let positions = w.table_positions(max_positions, self.rot_dim * 4)?;
        let factors = match w.raw(FREQ_FACTORS)? {
            Some(t) if t.shape().dims() == [self.rot_dim / 2] => Some(t.to_f32()?),
            Some(t) => {
                return Err(ModelError::WeightShape {
                    key: FREQ_FACTORS.into(),
                    expected: format!("[{}]", self.rot_dim / 2),
                    got: t.shape().to_string(),
                })
            }
            None => None,
        };
        if let Some(f) = factors.iter().flatten().find(|f| !(f.is_finite() && **f > 0.0)) {
            return Err(ModelError::Config(format!(
                "{FREQ_FACTORS} holds {f}: rotary divisors must be finite and > 0"
            )));
        }
        self.table_scaled(w.backend(), positions, factors.as_deref())
    }

    /// Uploads `[positions, rot_dim / 2]` cos and sin tables.
    pub fn table<B: Ops>(&self, b: &B, positions: usize) -> Result<RopeTable<B>> {
        self.table_scaled(b, positions, None)
    }

    fn table_scaled<B: Ops>(&self, b: &B, positions: usize, divisors: Option<&[f32]>) -> Result<RopeTable<B>> {
        let mut inv = self.inv_freq();
        if let Some(d) = divisors {
            for (f, d) in inv.iter_mut().zip(d) {
                *f /= d;
            }
        }
        let att = self.attention_factor();
        let half = inv.len();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for &f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos() * att);
                sin.push(a.sin() * att);
            }
        }
        Ok(RopeTable {
            cos: b.upload(&HostTensor::from_f32([positions, half], &cos)?)?,
            sin: b.upload(&HostTensor::from_f32([positions, half], &sin)?)?,
            rot_dim: self.rot_dim,
        })
    }
}
