//! GGUF files (versions 2 and 3): metadata, tensor directory, and tensors served under Hugging
//! Face names.
//!
//! Layout: magic `GGUF`, version `u32`, tensor count `u64`, metadata count `u64`, metadata
//! key/values, tensor infos (name, dims innermost first, ggml type, offset), then the tensor data,
//! aligned to `general.alignment` (32 by default). All integers are little-endian.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use turbine_core::{DType, HostTensor};

use super::gguf_names::{gguf_name, restore, Heads};
use super::WeightSource;
use crate::{ModelError, Result};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    U(u64),
    /// Any signed integer type.
    I(i64),
    /// f32 or f64.
    F(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Array of values.
    Arr(Vec<Value>),
}

impl Value {
    /// As an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U(v) => Some(v),
            Value::I(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    /// As a float, if numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F(v) => Some(v),
            Value::U(v) => Some(v as f64),
            Value::I(v) => Some(v as f64),
            _ => None,
        }
    }

    /// As a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct TensorInfo {
    dims: Vec<usize>,
    dtype: Result<DType, u32>,
    offset: usize,
    len: usize,
}

/// A memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    /// Metadata key/values.
    pub meta: HashMap<String, Value>,
    tensors: HashMap<String, TensorInfo>,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.b.len() - self.pos {
            return Err(ModelError::corrupt(self.path, format!("unexpected end of file at byte {}", self.pos)));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64()?;
        if n > (self.b.len() - self.pos) as u64 {
            return Err(ModelError::corrupt(self.path, format!("{what} length {n} runs past the end of the file")));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.len("string")?;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| ModelError::corrupt(self.path, "string is not UTF-8"))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U(self.take(1)?[0] as u64),
            1 => Value::I(self.take(1)?[0] as i8 as i64),
            2 => Value::U(u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as u64),
            3 => Value::I(i16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64),
            4 => Value::U(self.u32()? as u64),
            5 => Value::I(self.u32()? as i32 as i64),
            6 => Value::F(f32::from_bits(self.u32()?) as f64),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 if depth < 4 => {
                let ety = self.u32()?;
                let n = self.len("array")?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(ety, depth + 1)?);
                }
                Value::Arr(v)
            }
            10 => Value::U(self.u64()?),
            11 => Value::I(self.u64()? as i64),
            12 => Value::F(f64::from_bits(self.u64()?)),
            other => return Err(ModelError::corrupt(self.path, format!("unknown metadata type {other}"))),
        })
    }
}

/// Maps a ggml type id to a storage type.
fn ggml_dtype(t: u32) -> Result<DType, u32> {
    Ok(match t {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::Q4_0,
        3 => DType::Q4_1,
        6 => DType::Q5_0,
        7 => DType::Q5_1,
        8 => DType::Q8_0,
        12 => DType::Q4_K,
        13 => DType::Q5_K,
        14 => DType::Q6_K,
        30 => DType::BF16,
        other => return Err(other),
    })
}

/// The name llama.cpp gives a ggml type id, for messages.
fn ggml_type_name(t: u32) -> String {
    const NAMES: &[&str] = &[
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
        "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16",
        "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    NAMES.get(t as usize).map_or_else(|| format!("ggml type {t}"), |n| format!("{n} (ggml type {t})"))
}

/// GGUF writers lay tensors out one after another, each padded to the alignment: two that overlap,
/// or a gap of a whole alignment unit or more between one and the next, mean that a tensor's
/// offset, type or shape is not the one its bytes were written with (a Q4_1 tensor relabelled
/// Q4_0 leaves such a gap; the other way round, an overlap). `layout`: (offset, bytes, name).
fn check_layout(path: &Path, layout: &mut [(usize, usize, String)], align: usize) -> Result<()> {
    layout.sort();
    for pair in layout.windows(2) {
        let ((a_off, a_len, a), (b_off, _, b)) = (&pair[0], &pair[1]);
        let a_end = a_off + a_len;
        if a_end > *b_off {
            return Err(ModelError::corrupt(path, format!("tensors {a} and {b} overlap")));
        }
        if b_off - a_end >= align {
            return Err(ModelError::corrupt(
                path,
                format!(
                    "tensor {a} takes {a_len} bytes but {b} starts {} bytes after its start: {a}'s type or \
                     shape disagrees with the file's layout",
                    b_off - a_off
                ),
            ));
        }
    }
    Ok(())
}

impl GgufFile {
    /// Opens and validates a GGUF file: header, metadata, and that every tensor lies inside it,
    /// aligned, named once, and sized as its type and shape say (no overlap, no gap).
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: read-only mapping; the file is assumed not to change while mapped.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| ModelError::io(path, e))?;
        let mut c = Cursor { b: &map, pos: 0, path };
        if c.take(4).ok() != Some(b"GGUF".as_slice()) {
            return Err(ModelError::corrupt(path, "not a GGUF file (bad magic)"));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::corrupt(path, format!("GGUF version {version} is not supported (2 or 3)")));
        }
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        let mut meta = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c.value(ty, 0)?;
            meta.insert(key, v);
        }
        let mut infos = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string()?;
            let nd = c.u32()? as usize;
            if nd > 8 {
                return Err(ModelError::corrupt(path, format!("tensor {name} has {nd} dimensions")));
            }
            let mut dims = Vec::with_capacity(nd);
            for _ in 0..nd {
                dims.push(c.u64()? as usize);
            }
            dims.reverse(); // GGUF lists the innermost dimension first.
            let dtype = ggml_dtype(c.u32()?);
            let offset = c.u64()? as usize;
            infos.push((name, dims, dtype, offset));
        }
        let align = meta.get("general.alignment").and_then(Value::as_u64).unwrap_or(32).max(1) as usize;
        let data_start = c.pos.div_ceil(align) * align;
        let mut tensors = HashMap::new();
        // (offset, bytes, name) of the tensors whose size is known, for the layout checks below.
        let mut layout = Vec::new();
        for (name, dims, dtype, offset) in infos {
            if tensors.contains_key(&name) {
                return Err(ModelError::corrupt(path, format!("tensor {name} is listed twice")));
            }
            if offset % align != 0 {
                return Err(ModelError::corrupt(
                    path,
                    format!("tensor {name} starts at offset {offset}, not a multiple of general.alignment ({align})"),
                ));
            }
            let numel = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| ModelError::corrupt(path, format!("tensor {name}: shape {dims:?} is too large")))?;
            let len = match &dtype {
                Ok(dt) => {
                    let row = dt.bytes_for(*dims.last().unwrap_or(&1)).ok_or_else(|| {
                        ModelError::corrupt(path, format!("tensor {name}: rows are not whole blocks"))
                    })?;
                    row.checked_mul(numel / dims.last().copied().unwrap_or(1).max(1)).ok_or_else(|| {
                        ModelError::corrupt(path, format!("tensor {name}: shape {dims:?} is too large"))
                    })?
                }
                Err(_) => 0,
            };
            let end = data_start.checked_add(offset).and_then(|s| s.checked_add(len));
            if end.is_none_or(|e| e > map.len()) {
                return Err(ModelError::corrupt(
                    path,
                    format!("tensor {name} ends past the end of the file ({} bytes): truncated?", map.len()),
                ));
            }
            if dtype.is_ok() {
                layout.push((offset, len, name.clone()));
            }
            tensors.insert(name, TensorInfo { dims, dtype, offset: data_start + offset, len });
        }
        check_layout(path, &mut layout, align)?;
        Ok(GgufFile { path: path.to_path_buf(), map, meta, tensors })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta.get(key)
    }

    /// `general.architecture`.
    pub fn arch(&self) -> Result<&str> {
        self.get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| ModelError::corrupt(&self.path, "no general.architecture"))
    }

    /// Every tensor's GGUF name.
    pub fn tensor_names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    /// Whether a tensor with this GGUF name exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A tensor by its GGUF name, shaped outermost-first like PyTorch.
    pub fn tensor(&self, name: &str) -> Result<Option<HostTensor<'_>>> {
        let Some(info) = self.tensors.get(name) else { return Ok(None) };
        let dtype = info.dtype.map_err(|t| {
            ModelError::Input(format!(
                "{}: tensor {name} is stored as {}, which is not supported yet (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K are)",
                self.path.display(),
                ggml_type_name(t)
            ))
        })?;
        let bytes = &self.map[info.offset..info.offset + info.len];
        Ok(Some(HostTensor::new(info.dims.clone(), dtype, bytes)?))
    }
}

/// A GGUF file served under Hugging Face tensor names and layouts: llama.cpp's renames and
/// re-layouts (Q/K rotary permutation, transposed or reordered fused QKV) are undone here, so the
/// architectures only know the Hugging Face form.
pub struct GgufSource {
    file: GgufFile,
    arch: String,
    heads: Heads,
}

impl GgufSource {
    /// Wraps an opened file.
    pub fn new(file: GgufFile) -> Result<Self> {
        let arch = file.arch()?.to_string();
        let get = |k: &str| file.get(&format!("{arch}.{k}")).and_then(Value::as_u64).map(|v| v as usize);
        let q = get("attention.head_count").unwrap_or(1).max(1);
        let kv = get("attention.head_count_kv").unwrap_or(q).max(1);
        let d = get("attention.key_length").unwrap_or(get("embedding_length").unwrap_or(0) / q);
        Ok(GgufSource { file, arch, heads: Heads { q, kv, d } })
    }

    /// The underlying file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

impl WeightSource for GgufSource {
    fn stored_names(&self) -> Vec<String> {
        self.file.tensor_names()
    }

    fn stored_name(&self, name: &str) -> Option<String> {
        gguf_name(&self.arch, name)
    }

    fn get(&self, name: &str) -> Result<Option<HostTensor<'_>>> {
        let Some(g) = gguf_name(&self.arch, name) else { return Ok(None) };
        let Some(t) = self.file.tensor(&g)? else { return Ok(None) };
        restore(&self.arch, &g, self.heads, t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF v3 file with no metadata and 1-D tensors (name, values, ggml type, offset), with
    /// `data` bytes of tensor data.
    fn gguf(tensors: &[(&str, u64, u32, u64)], data: usize) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend(0u64.to_le_bytes());
        for &(name, n, ty, off) in tensors {
            b.extend((name.len() as u64).to_le_bytes());
            b.extend(name.as_bytes());
            b.extend(1u32.to_le_bytes());
            b.extend(n.to_le_bytes());
            b.extend(ty.to_le_bytes());
            b.extend(off.to_le_bytes());
        }
        b.resize(b.len().div_ceil(32) * 32 + data, 0);
        b
    }

    fn open(bytes: &[u8], tag: &str) -> Result<GgufFile> {
        let path = std::env::temp_dir().join(format!("turbine-layout-{}-{tag}.gguf", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let f = GgufFile::open(&path);
        let _ = std::fs::remove_file(&path);
        f
    }

    #[test]
    fn tensor_layouts_are_checked() {
        // F32 = 0, Q4_0 = 2 (18 bytes a block of 32), Q4_1 = 3 (20 bytes).
        let ok = gguf(&[("a", 8, 0, 0), ("b", 1024, 3, 32), ("c", 8, 0, 672)], 704);
        assert!(open(&ok, "ok").is_ok());
        let bad = |t: &[(&str, u64, u32, u64)], tag: &str| open(&gguf(t, 704), tag).err().unwrap().to_string();
        let e = bad(&[("a", 8, 0, 3), ("b", 1024, 3, 35)], "misaligned");
        assert!(e.contains("tensor a starts at offset 3") && e.contains("alignment"), "{e}");
        let e = bad(&[("a", 8, 0, 0), ("b", 1024, 3, 32), ("c", 8, 0, 64)], "overlap");
        assert!(e.contains("tensors b and c overlap"), "{e}");
        let e = bad(&[("a", 8, 0, 0), ("a", 8, 0, 32)], "twice");
        assert!(e.contains("tensor a is listed twice"), "{e}");
        // b relabelled from Q4_1 (640 bytes) to Q4_0 (576): a gap before c.
        let e = bad(&[("a", 8, 0, 0), ("b", 1024, 2, 32), ("c", 8, 0, 672)], "relabelled");
        assert!(e.contains("tensor b takes 576 bytes") && e.contains("disagrees"), "{e}");
        // The other way round: an overlap.
        let e = bad(&[("a", 8, 0, 0), ("b", 1024, 3, 32), ("c", 8, 0, 640)], "grown");
        assert!(e.contains("overlap"), "{e}");
    }

    #[test]
    fn unsupported_tensor_types_are_named() {
        // Q2_K: a type this build does not decode.
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        let name = "token_embd.weight";
        b.extend((name.len() as u64).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend(1u32.to_le_bytes());
        b.extend(256u64.to_le_bytes());
        b.extend(10u32.to_le_bytes()); // Q2_K
        b.extend(0u64.to_le_bytes());
        b.resize(b.len().div_ceil(32) * 32 + 84, 0);
        let path = std::env::temp_dir().join(format!("turbine-q4k-{}.gguf", std::process::id()));
        std::fs::write(&path, &b).unwrap();
        let f = GgufFile::open(&path).unwrap();
        let err = f.tensor(name).expect_err("Q2_K is not supported yet").to_string();
        assert!(err.contains("Q2_K") && err.contains(name), "{err}");
        let _ = std::fs::remove_file(&path);
    }
}
