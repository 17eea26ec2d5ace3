//! `cargo xtask kernels`: compiles every CUDA kernel with NVRTC for compute_80, compute_89 and
//! compute_90a, assembles each with ptxas for sm_80, sm_89 and sm_90a (and the sm_90a tuning
//! [`VARIANTS`]), and reports registers and spills; any error fails the task. NVRTC, the CUDA headers and ptxas come from pinned wheels
//! (fetched with pip once, cached under `$TURBINE_HOME/cuda-wheels`); no CUDA toolkit is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use turbine_kernels_cuda::nvrtc::{compile_ptx_with, ARCHS};
use turbine_kernels_cuda::sources::SOURCES;

/// The wheels, pinned to CUDA 13.0 (NVRTC 13.5 writes PTX that ptxas 13.0 and driver 580 reject).
const WHEELS: &[&str] = &["nvidia-cuda-nvrtc==13.0.88", "nvidia-cuda-runtime==13.0.96", "nvidia-cuda-nvcc==13.0.88"];

/// Tuning variants, compiled for sm_90a into `target/kernels/sm_90a-NAME` with the given
/// definitions of the knobs the kernel files leave open (`#ifndef`): the GPU check times each
/// beside the default in the same run (`TURBINE_CUDA_PTX` pointing at the variant's folder).
/// Each knob changes how many loads are in flight, never the operations or their order, so a
/// variant gives the default's bits.
pub const VARIANTS: &[(&str, &[&str])] = &[("gemv-unroll8", &["GEMV_UNROLL=8"]), ("attn-keys16", &["ATTN_KEYS=16"])];

/// Set in the re-executed process, so that it does not re-execute again.
const REEXEC: &str = "TURBINE_XTASK_KERNELS_LD";

fn cache_dir() -> Result<PathBuf> {
    let home = match std::env::var_os("TURBINE_HOME") {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME").context("neither TURBINE_HOME nor HOME is set")?)
            .join(".cache")
            .join("turbine"),
    };
    Ok(home.join("cuda-wheels"))
}

/// The unpacked CUDA tree (`…/nvidia/cu13` with `lib`, `include`, `bin`), fetched if missing.
pub fn cuda_tree() -> Result<PathBuf> {
    let dir = cache_dir()?;
    let tree = dir.join("root").join("nvidia").join("cu13");
    if ready(&tree) {
        return Ok(tree);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!("xtask: fetching NVRTC, the CUDA headers and ptxas (about 130 MB, once) into {}", dir.display());
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d"]).arg(&dir).args(WHEELS);
    let status = pip.status().context("running python3 -m pip download")?;
    if !status.success() {
        bail!("pip could not download {} ({status})", WHEELS.join(" "));
    }
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "whl") {
            eprintln!("xtask: unpacking {}", path.display());
            let status = Command::new("python3")
                .args(["-m", "zipfile", "-e"])
                .arg(&path)
                .arg(dir.join("root"))
                .status()
                .context("running python3 -m zipfile")?;
            if !status.success() {
                bail!("could not unpack {}", path.display());
            }
        }
    }
    let ptxas = tree.join("bin").join("ptxas");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ptxas, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", ptxas.display()))?;
    }
    if !ready(&tree) {
        bail!("the unpacked wheels lack NVRTC, cuda_fp8.h or ptxas under {}", tree.display());
    }
    Ok(tree)
}

/// Whether the unpacked tree has what the task uses.
fn ready(tree: &Path) -> bool {
    ["lib/libnvrtc.so.13", "include/cuda_fp8.h", "bin/ptxas"].iter().all(|f| tree.join(f).exists())
}

/// What ptxas said about one kernel.
#[derive(Debug, Default, Clone)]
struct Assembled {
    function: String,
    registers: u32,
    spill_stores: u32,
    spill_loads: u32,
}

/// Reads `ptxas -v` output: one entry per function.
fn parse_ptxas(log: &str) -> Vec<Assembled> {
    let mut out: Vec<Assembled> = Vec::new();
    let number_before = |line: &str, word: &str| -> u32 {
        let words: Vec<&str> = line.split(|c: char| c.is_whitespace() || c == ',').filter(|w| !w.is_empty()).collect();
        words.windows(2).find(|w| w[1] == word).and_then(|w| w[0].parse().ok()).unwrap_or(0)
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(Assembled { function: name, ..Assembled::default() });
        } else if let Some(cur) = out.last_mut() {
            if line.contains("spill stores") {
                let parts: Vec<&str> = line.split(',').collect();
                cur.spill_stores =
                    parts.iter().find(|p| p.contains("spill stores")).map_or(0, |p| number_before(p, "bytes"));
                cur.spill_loads =
                    parts.iter().find(|p| p.contains("spill loads")).map_or(0, |p| number_before(p, "bytes"));
            } else if line.contains("Used") && line.contains("registers") {
                cur.registers = number_before(line, "registers");
            }
        }
    }
    out
}

/// Runs the task (re-executing itself once with NVRTC on the library path).
pub fn run() -> Result<()> {
    let tree = cuda_tree()?;
    let lib = tree.join("lib");
    if std::env::var_os(REEXEC).is_none() {
        let mut path = std::ffi::OsString::from(&lib);
        if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
            path.push(":");
            path.push(old);
        }
        let exe = std::env::current_exe().context("locating the xtask binary")?;
        let status = Command::new(exe)
            .arg("kernels")
            .env("LD_LIBRARY_PATH", path)
            .env(REEXEC, "1")
            .status()
            .context("re-running xtask with NVRTC on the library path")?;
        if !status.success() {
            bail!("xtask kernels failed ({status})");
        }
        return Ok(());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask has no parent folder")?.to_path_buf();
    let out_root = root.join("target").join("kernels");
    let ptxas = tree.join("bin").join("ptxas");
    let include = [tree.join("include")];
    let mut rows: Vec<(String, &str, Assembled)> = Vec::new();
    let mut failures = Vec::new();
    // The architectures, then the tuning variants (sm_90a only), each in its own folder.
    let mut builds: Vec<(&str, &str, String, &[&str])> =
        ARCHS.iter().map(|&(virt, real)| (virt, real, real.to_string(), &[][..])).collect();
    builds.extend(VARIANTS.iter().map(|&(name, defines)| ("compute_90a", "sm_90a", format!("sm_90a-{name}"), defines)));
    for (virt, real, folder, defines) in builds {
        let dir = out_root.join(&folder);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for src in SOURCES {
            let t0 = std::time::Instant::now();
            let ptx = match compile_ptx_with(src, virt, &include, defines) {
                Ok(p) => p,
                Err(e) => {
                    failures.push(format!("NVRTC {}.cu {folder}: {e}", src.name));
                    continue;
                }
            };
            let ptx_path = dir.join(format!("{}.ptx", src.name));
            std::fs::write(&ptx_path, &ptx).with_context(|| format!("writing {}", ptx_path.display()))?;
            let cubin = dir.join(format!("{}.cubin", src.name));
            let o = Command::new(&ptxas)
                .args(["-O3", "-v", &format!("-arch={real}")])
                .arg(&ptx_path)
                .arg("-o")
                .arg(&cubin)
                .output()
                .with_context(|| format!("running {}", ptxas.display()))?;
            let log = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
            if !o.status.success() {
                failures.push(format!("ptxas {}.ptx {folder}:\n{log}", src.name));
                continue;
            }
            let fns = parse_ptxas(&log);
            eprintln!(
                "xtask: {:>9} {:<10} {} kernels, {:.0} ms",
                folder,
                src.name,
                fns.len(),
                t0.elapsed().as_secs_f64() * 1e3
            );
            rows.extend(fns.into_iter().map(|f| (folder.clone(), src.name, f)));
        }
        // Registers per kernel, for the CUDA emulator's launch limits (`registers.txt` beside
        // the PTX: "NAME COUNT" lines).
        let text: String = rows
            .iter()
            .filter(|(a, _, _)| *a == folder)
            .map(|(_, _, f)| format!("{} {}\n", f.function, f.registers))
            .collect();
        let path = dir.join("registers.txt");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("| arch | file | kernel | registers | spill stores | spill loads |");
    println!("|---|---|---|---:|---:|---:|");
    for (arch, file, f) in &rows {
        println!("| {arch} | {file} | {} | {} | {} | {} |", f.function, f.registers, f.spill_stores, f.spill_loads);
    }
    let spills = rows.iter().filter(|(_, _, f)| f.spill_stores + f.spill_loads > 0).count();
    println!(
        "{} kernels assembled for each of {} architectures and {} sm_90a variants into {}; {spills} of them spill registers",
        rows.len() / (ARCHS.len() + VARIANTS.len()).max(1),
        ARCHS.len(),
        VARIANTS.len(),
        out_root.display()
    );
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("{f}");
        }
        bail!("{} kernel compilations failed", failures.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ptxas_reports() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'norm_f32' for 'sm_90a'\n\
ptxas info    : Function properties for norm_f32\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 18 registers, used 1 barriers, 400 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'rope_f16' for 'sm_90a'\n\
ptxas info    : Function properties for rope_f16\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 24 registers, used 0 barriers, 392 bytes cmem[0]\n";
        let f = parse_ptxas(log);
        assert_eq!(f.len(), 2);
        assert_eq!(
            (f[0].function.as_str(), f[0].registers, f[0].spill_stores, f[0].spill_loads),
            ("norm_f32", 18, 4, 12)
        );
        assert_eq!((f[1].function.as_str(), f[1].registers, f[1].spill_stores), ("rope_f16", 24, 0));
    }
}
