//! Rotary tables: inverse frequencies (with linear or Llama-3 scaling) and cos/sin per position.

use serde_json::{Map, Value as Json};
use turbine_core::{HostTensor, Ops, RopeTable};

use crate::config::HfConfig;
use crate::{ModelError, Result};

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

/// Parses a scaling object; `default` (or no type) is no scaling.
fn scaling(o: &Map<String, Json>) -> Result<RopeScaling> {
    let f = |k: &str| o.get(k).and_then(Json::as_f64);
    let ty = o.get("rope_type").or_else(|| o.get("type")).and_then(Json::as_str).unwrap_or("default");
    if ty == "default" {
        return Ok(RopeScaling::None);
    }
    let factor = f("factor").ok_or_else(|| ModelError::Config(format!("rope scaling {ty:?} without factor")))?;
    Ok(match ty {
        "linear" => RopeScaling::Linear(factor),
        "llama3" => RopeScaling::Llama3 {
            factor,
            low: f("low_freq_factor").unwrap_or(1.0),
            high: f("high_freq_factor").unwrap_or(4.0),
            original: f("original_max_position_embeddings").unwrap_or(8192.0),
        },
        other => {
            return Err(ModelError::Config(format!(
                "rope_scaling type {other:?} is not supported (linear and llama3 are)"
            )))
        }
    })
}

impl RopeSpec {
    /// Reads `rope_theta` and the scaling settings.
    pub fn from_hf(cfg: &HfConfig, rot_dim: usize) -> Result<Self> {
        let theta = cfg.rope_theta(10000.0)?;
        let scaling = match cfg.rope_scaling() {
            None => RopeScaling::None,
            Some(o) => scaling(o)?,
        };
        Ok(RopeSpec { theta, rot_dim, scaling })
    }

    /// Reads one rotary parameter object (`{"rope_type": …, "rope_theta": …, "factor": …}`), as
    /// transformers 5 nests them per layer type.
    pub fn from_params(obj: &Map<String, Json>, rot_dim: usize, default_theta: f64) -> Result<Self> {
        let theta = obj.get("rope_theta").and_then(Json::as_f64).unwrap_or(default_theta);
        Ok(RopeSpec { theta, rot_dim, scaling: scaling(obj)? })
    }

    /// Inverse frequencies, computed in f32 as transformers does.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.rot_dim;
        (0..d / 2)
            .map(|i| {
                let base = 1.0f32 / (self.theta as f32).powf((2 * i) as f32 / d as f32);
                match self.scaling {
                    RopeScaling::None => base,
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

    /// Uploads `[positions, rot_dim / 2]` cos and sin tables.
    pub fn table<B: Ops>(&self, b: &B, positions: usize) -> Result<RopeTable<B>> {
        let inv = self.inv_freq();
        let half = inv.len();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for &f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(RopeTable {
            cos: b.upload(&HostTensor::from_f32([positions, half], &cos)?)?,
            sin: b.upload(&HostTensor::from_f32([positions, half], &sin)?)?,
            rot_dim: self.rot_dim,
        })
    }
}
