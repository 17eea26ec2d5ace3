//! Safetensors files: a single `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, memory-mapped.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use turbine_core::{DType, HostTensor};

use super::WeightSource;
use crate::{ModelError, Result};

struct Shard {
    path: PathBuf,
    map: Mmap,
    meta: Metadata,
    data_start: usize,
}

/// Safetensors shards of one checkpoint.
pub struct SafetensorsSource {
    shards: Vec<Shard>,
    index: HashMap<String, usize>,
}

fn map_file(path: &Path) -> Result<Mmap> {
    let f = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the file is opened read-only; like every mmap-based loader we assume it is not
    // truncated while mapped.
    unsafe { Mmap::map(&f) }.map_err(|e| ModelError::io(path, e))
}

impl SafetensorsSource {
    /// Opens the weights of a model folder.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::corrupt(&index, e.to_string()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::corrupt(&index, "no weight_map object"))?;
            let mut names: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            return Err(ModelError::Input(format!(
                "{} has neither model.safetensors nor model.safetensors.index.json",
                dir.display()
            )));
        };
        Self::open_files(&files)
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.index.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Opens the given shard files.
    pub fn open_files(files: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let map = map_file(path)?;
            // Full validation once: offsets inside the file, no overlaps, no truncation.
            SafeTensors::deserialize(&map).map_err(|e| ModelError::corrupt(path, e.to_string()))?;
            let (header, meta) =
                SafeTensors::read_metadata(&map).map_err(|e| ModelError::corrupt(path, e.to_string()))?;
            for name in meta.tensors().keys() {
                index.insert(name.clone(), shards.len());
            }
            shards.push(Shard { path: path.clone(), map, meta, data_start: 8 + header });
        }
        Ok(SafetensorsSource { shards, index })
    }
}

impl WeightSource for SafetensorsSource {
    fn stored_names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn get(&self, name: &str) -> Result<Option<HostTensor<'_>>> {
        let Some(&i) = self.index.get(name) else { return Ok(None) };
        let shard = &self.shards[i];
        let info = shard.meta.info(name).ok_or_else(|| ModelError::MissingWeight { key: name.into() })?;
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F8_E4M3 => DType::F8E4M3,
            Dtype::F8_E5M2 => DType::F8E5M2,
            Dtype::I8 => DType::I8,
            other => {
                return Err(ModelError::corrupt(&shard.path, format!("tensor {name} has unsupported dtype {other:?}")))
            }
        };
        let (a, b) = info.data_offsets;
        let bytes = &shard.map[shard.data_start + a..shard.data_start + b];
        let t = HostTensor::new(info.shape.clone(), dtype, bytes)
            .map_err(|e| ModelError::corrupt(&shard.path, format!("tensor {name}: {e}")))?;
        Ok(Some(t))
    }
}
