//! `cargo xtask gpu-check`: everything a GPU machine should run, prepared here and run there.
//!
//! `cargo xtask gpu-check --prepare DIR` builds (on this machine, which has the toolchain) the
//! release `turbine`, the suites' test executables and the kernels' PTX for sm_80, sm_89 and
//! sm_90a, strips the binaries, compresses them into `DIR/pack.tar.gz` (the device tool carries
//! 64 MiB in all, tracked files included; it says how much travels) and writes `DIR/run.sh`. On the GPU machine (no toolchain, no
//! network), `bash DIR/run.sh REPORT_DIR` runs, from the repository root: the op suite against
//! kernels-ref, the tiny golden suite (every architecture against transformers), the engine's
//! suite (preemption, prefix cache, cancellation…) and the batch-invariance suite on CUDA, whole
//! models under every precision policy and KV format against the CPU (`cuda_vs_cpu`; it and the
//! op suite again with cuBLASLt's products, `TURBINE_CUDA_PRODUCTS=fast`: the suites are listed
//! in `suites.rs`, which `cargo xtask emu` runs too), a tiny
//! model end to end on `--backend cuda` against the CPU's greedy ids and served on `--backend
//! cuda` (a completion over HTTP), a
//! device-to-device copy bandwidth and cuBLASLt TFLOP/s (bf16, f16, FP8 at M = 16, 256, 4096),
//! then synthetic checkpoints of Llama 3.2 1B and Llama 3.1 8B shapes: prefill of 2,048 tokens
//! and batch-1 decode (bf16 and fp8), the mixed workload in-flight against static batching at
//! `--max-batch 64`, PyTorch and transformers on the same checkpoints in the same run
//! (`bench/gpu/anchors.py`), and the kernel times of a 1B request step by step (Nsight Compute,
//! `bench/gpu/profile.sh`). It writes `REPORT_DIR/report.md` and `report.json` (the issue's
//! targets judged by `xtask gpu-report`, the end of every log), with every whole log in
//! `logs.tar.gz`: six files, within what the device tool brings back (eight). `cargo xtask gpu-check
//! REPORT_DIR` does both on a machine that has a GPU and a toolchain.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn root() -> Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask has no parent folder")?.to_path_buf())
}

fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

/// The executables `cargo test` (or `cargo bench`, with `bench`) builds for `args` (from its
/// JSON messages).
fn executables(bench: bool, args: &[&str]) -> Result<Vec<PathBuf>> {
    let mut cmd = Command::new(env!("CARGO"));
    // `cargo bench` always builds optimised (and has no --release flag).
    let sub: &[&str] = if bench { &["bench"] } else { &["test", "--release"] };
    cmd.args(sub).args(["--no-run", "--message-format=json"]).args(args).current_dir(root()?);
    let out = run(&mut cmd)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let exes: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split("\"executable\":\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(PathBuf::from)
        .collect();
    if exes.is_empty() {
        bail!("cargo built no test executable for {args:?}");
    }
    Ok(exes)
}

fn copy_stripped(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    // Debug line tables are not needed there; the binaries must fit what is carried (64 MiB).
    let status = Command::new("strip").arg(to).status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("xtask: could not strip {} (kept as is)", to.display());
    }
    Ok(())
}

/// What the device tool carries at most: the working tree and the carried paths together.
const CARRY_LIMIT: u64 = 64 << 20;

/// Builds and packs everything into `dir`: `run.sh` and `pack.tar.gz` (the stripped binaries
/// under `bin/`, the PTX under `ptx/ARCH/`).
pub fn prepare(dir: &Path) -> Result<()> {
    let root = root()?;
    let stage = dir.join("stage");
    // A clean folder: nothing left from an earlier layout travels.
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let bin = stage.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    eprintln!("xtask: building the release turbine");
    run(Command::new(env!("CARGO")).args(["build", "--release", "--bin", "turbine"]).current_dir(&root))?;
    copy_stripped(&root.join("target/release/turbine"), &bin.join("turbine"))?;
    for (package, test) in crate::suites::executables() {
        eprintln!("xtask: building the {test} suite");
        let exes = executables(false, &["-p", package, "--test", test])?;
        copy_stripped(&exes[0], &bin.join(test))?;
    }
    // This very program writes the report's targets there (`xtask gpu-report`).
    copy_stripped(&std::env::current_exe().context("locating the xtask binary")?, &bin.join("xtask"))?;
    let exes = executables(true, &["-p", "turbine-kernels-cuda", "--bench", "gpu"])?;
    copy_stripped(&exes[0], &bin.join("gpu_bench"))?;
    eprintln!("xtask: compiling the kernels to PTX");
    run(Command::new(env!("CARGO")).args(["xtask", "kernels"]).current_dir(&root))?;
    let variants = crate::kernels::VARIANTS.iter().map(|(name, _)| format!("sm_90a-{name}"));
    for arch in ["sm_80", "sm_89", "sm_90a"].map(String::from).into_iter().chain(variants) {
        let (from, to) = (root.join("target/kernels").join(&arch), stage.join("ptx").join(&arch));
        std::fs::create_dir_all(&to)?;
        for e in std::fs::read_dir(&from).with_context(|| format!("reading {}", from.display()))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "ptx") {
                std::fs::copy(&p, to.join(p.file_name().context("file name")?))?;
            }
        }
    }
    let unpacked = bytes_under(&stage)?;
    eprintln!("xtask: compressing {:.1} MiB of binaries and PTX", mib(unpacked));
    run(Command::new("tar").arg("-czf").arg(dir.join("pack.tar.gz")).arg("-C").arg(&stage).args(["bin", "ptx"]))?;
    std::fs::remove_dir_all(&stage)?;
    std::fs::write(dir.join("run.sh"), run_sh()).context("writing run.sh")?;
    let pack = bytes_under(dir)?;
    let tree = tracked_bytes(&root)?;
    println!(
        "{}: {:.1} MiB; with the {:.1} MiB of tracked files, {:.1} MiB of the device tool's {} travel.\n\
         On the GPU machine, from the repository root: bash {}/run.sh REPORT_DIR",
        dir.display(),
        mib(pack),
        mib(tree),
        mib(pack + tree),
        CARRY_LIMIT >> 20,
        dir.display()
    );
    if pack + tree > CARRY_LIMIT {
        bail!(
            "the pack and the tracked files come to {:.1} MiB, over the {} MiB the device tool carries",
            mib(pack + tree),
            CARRY_LIMIT >> 20
        );
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// The bytes of the files git tracks (what travels to the GPU machine beside the pack).
fn tracked_bytes(root: &Path) -> Result<u64> {
    let out = run(Command::new("git").args(["ls-files", "-z"]).current_dir(root))?;
    Ok(out
        .stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .filter_map(|p| std::fs::metadata(root.join(String::from_utf8_lossy(p).as_ref())).ok())
        .map(|m| m.len())
        .sum())
}

/// The bytes of the files under `dir`.
fn bytes_under(dir: &Path) -> Result<u64> {
    Ok(walk(dir)?.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum())
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

/// Prepares into `target/gpu-check` and runs it, writing the report to `report`.
pub fn prepare_and_run(report: &Path) -> Result<()> {
    let dir = root()?.join("target/gpu-check");
    prepare(&dir)?;
    let status = Command::new("bash").arg(dir.join("run.sh")).arg(report).current_dir(root()?).status()?;
    if !status.success() {
        bail!("gpu-check failed; see {}/report.md", report.display());
    }
    Ok(())
}

/// The script the GPU machine runs, with the suites of [`crate::suites::SUITES`] in place.
fn run_sh() -> String {
    let suites: Vec<String> = crate::suites::SUITES.iter().map(|s| s.run_sh_line()).collect();
    RUN_SH.replace("@SUITES@\n", &(suites.join("\n") + "\n"))
}

/// `run.sh`'s text; `@SUITES@` stands for the correctness suites' lines.
const RUN_SH: &str = r###"#!/usr/bin/env bash
# Turbine gpu-check: run from the repository root on a GPU machine.
#   bash target/gpu-check/run.sh REPORT_DIR
# REPORT_DIR gets six files: report.md (device, targets, steps, then the end of every log),
# report.json, targets.md, steps.tsv, device.txt and logs.tar.gz (every step's whole log). Standard
# output ends with the summary and the end of each failed step's log.
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: run.sh REPORT_DIR}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
logs=$out/logs
: > "$logs/summary.md"
: > "$out/steps.tsv"
work=${TMPDIR:-/tmp}/turbine-gpu-check
# The binaries and PTX travel compressed (what the device tool carries is limited to 64 MiB).
pack=$work/pack
rm -rf "$pack" && mkdir -p "$pack"
if ! tar -xzf "$here/pack.tar.gz" -C "$pack"; then
  echo "run.sh: cannot unpack $here/pack.tar.gz" | tee "$out/report.md"
  exit 2
fi
bin=$pack/bin
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader > "$out/device.txt" 2>&1
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')
case "$cc" in 90) arch=sm_90a ;; 89) arch=sm_89 ;; *) arch=sm_80 ;; esac
export TURBINE_CUDA_PTX="$pack/ptx/$arch"
# cuBLASLt is not carried (hundreds of MB): use the machine's, e.g. the one PyTorch's wheels
# installed (nvidia/cu13/lib or nvidia/cublas/lib under site-packages), unless already found.
if ! ldconfig -p 2>/dev/null | grep -q 'libcublasLt.so.13'; then
  for sp in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) \
            /opt/*/.venv/lib/python3*/site-packages /usr/local/lib/python3*/dist-packages \
            /usr/lib/python3/dist-packages /usr/local/cuda/lib64; do
    lib=$(find "$sp" -name 'libcublasLt.so.13*' 2>/dev/null | head -1)
    if [ -n "$lib" ]; then export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break; fi
  done
fi
echo "cuBLASLt: $(ldconfig -p 2>/dev/null | grep -o 'libcublasLt.so.13[^ ]*' | head -1) LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" | tee "$logs/libs.log"
export TURBINE_HOME="$work/home"
# The op suite must run here, not skip.
export TURBINE_REQUIRE_GPU=1
status=0
failed=""
# A time budget for the whole check (the issue: inside 10 minutes; the device tool stops a command
# at 600 s, and the report is written last): a step gets at most 240 s and what is left of the
# budget less 30 s for the report (a step that ignores the stop signal is killed 10 s later); a
# step that no longer fits is recorded as skipped (exit -1).
budget=${TURBINE_GPU_CHECK_SECONDS:-540}
deadline=$(( $(date +%s) + budget ))
# step [--cap=SECONDS] NAME COMMAND...: runs COMMAND, its output in logs/NAME.log; steps.tsv gets
# the name, exit status, seconds and the command (its paths as this script names them).
step() {
  local cap=240
  case $1 in --cap=*) cap=${1#--cap=}; shift ;; esac
  local name=$1; shift
  local t0=$(date +%s)
  local left=$(( deadline - t0 - 30 ))
  local cmd=$(printf '%s ' "$@" | sed "s#$bin/##g; s#$work/##g")
  if [ $left -lt 10 ]; then
    echo "| $name | SKIPPED (the ${budget} s budget is spent) | |" >> "$logs/summary.md"
    printf '%s\t%s\t%s\t%s\n' "$name" -1 0 "$cmd" >> "$out/steps.tsv"
    status=1
    return
  fi
  echo "== $name: $*"
  timeout -k 10 $(( left < cap ? left : cap )) "$@" > "$logs/$name.log" 2>&1
  local rc=$?
  local secs=$(( $(date +%s) - t0 ))
  echo "| $name | $([ $rc = 0 ] && echo pass || echo "FAIL (exit $rc)") | $secs s |" >> "$logs/summary.md"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$cmd" >> "$out/steps.tsv"
  [ $rc = 0 ] || { status=1; failed="$failed $name"; }
}
t=$bin/turbine
tiny=tests/fixtures/tiny/llama-gqa
@SUITES@
step tiny-cpu "$t" generate -m "$tiny" --backend cpu --prompt-ids 1,2,3,4 --max-tokens 12 --temperature 0 --json
step tiny-cuda "$t" generate -m "$tiny" --backend cuda --prompt-ids 1,2,3,4 --max-tokens 12 --temperature 0 --json
if [ -f "$logs/tiny-cpu.log" ] && [ -f "$logs/tiny-cuda.log" ]; then
  a=$(grep -o '"ids":\[[0-9,]*\]' "$logs/tiny-cpu.log"); b=$(grep -o '"ids":\[[0-9,]*\]' "$logs/tiny-cuda.log")
  if [ -n "$a" ] && [ "$a" = "$b" ]; then echo "| tiny greedy ids equal | pass | |" >> "$logs/summary.md";
  else echo "| tiny greedy ids equal | FAIL (cpu $a, cuda $b) | |" >> "$logs/summary.md"; status=1; fi
fi
step serve-tiny-cuda "$bin/xtask" serve-check "$t" "$tiny"
# The measurements the targets need first, then the rest. Anchors (PyTorch, transformers) run
# in the same run, on the same checkpoints (bench/gpu/anchors.py).
step gemm-and-copy "$bin/gpu_bench" --json
step synth-1b "$t" synth-model --preset 1b --out "$work/m1b"
speed="--workload speed --prompt-tokens 2048 --depths 16,1000 --reps 2 --json"
step speed-1b-bf16 "$t" bench -m "$work/m1b" --backend cuda --dtype bf16 $speed
step anchors-1b python3 bench/gpu/anchors.py --model "$work/m1b" --static --requests 64 --batch 64
step compare-1b-bf16 "$t" bench -m "$work/m1b" --backend cuda --dtype bf16 --compare --requests 64 --max-batch 64 --json
step speed-1b-fp8 "$t" bench -m "$work/m1b" --backend cuda --dtype fp8 $speed
step --cap=90 profile-1b bash bench/gpu/profile.sh "$t" "$work/m1b" "$logs"
step batch-1b-bf16 "$t" bench -m "$work/m1b" --backend cuda --dtype bf16 --workload batch --batch-sizes 1,16,64 --prompt-tokens 128 --gen-tokens 32 --json
# Speculative decoding (prompt lookup) at batch 1: plain, then speculating, on the same requests;
# random weights copy their prompt only as far as they happen to, so read the speedup with the
# acceptance beside it (the step count ratio is what a grounded workload's acceptance gives).
step --cap=90 speculative-1b "$t" bench -m "$work/m1b" --backend cuda --dtype bf16 --workload grounded --requests 8 --max-batch 1 --speculative ngram --json
step speed-1b-bf16-fast-products env TURBINE_CUDA_PRODUCTS=fast "$t" bench -m "$work/m1b" --backend cuda --dtype bf16 $speed
# The tensor-core products and attention (the defaults) against the gemv tiles and CUDA-core
# attention kernels they replaced.
step speed-1b-bf16-gemv-tiles env TURBINE_CUDA_MMA=off "$t" bench -m "$work/m1b" --backend cuda --dtype bf16 $speed
step attention-cuda-cores env TURBINE_CUDA_MMA=off "$bin/gpu_bench" --json
step batch-1b-bf16-gemv-tiles env TURBINE_CUDA_MMA=off "$t" bench -m "$work/m1b" --backend cuda --dtype bf16 --workload batch --batch-sizes 1,16,64 --prompt-tokens 128 --gen-tokens 32 --json
# Tuning variants of the kernels (`xtask kernels`' VARIANTS, PTX in ptx/$arch-NAME): each must
# give the default's bits, then its speed beside speed-1b-bf16's.
for v in "$pack/ptx/$arch"-*; do
  [ -d "$v" ] || continue
  name=${v##*/$arch-}
  step same-bits-$name bash bench/gpu/same-bits.sh "$t" "$work/m1b" "$TURBINE_CUDA_PTX" "$v"
  step speed-1b-bf16-$name env TURBINE_CUDA_PTX="$v" "$t" bench -m "$work/m1b" --backend cuda --dtype bf16 $speed
done
step synth-8b "$t" synth-model --preset 8b --out "$work/m8b"
step speed-8b-bf16 "$t" bench -m "$work/m8b" --backend cuda --dtype bf16 $speed
step anchors-8b python3 bench/gpu/anchors.py --model "$work/m8b"
# The issue's speed targets (report.json, targets.md); a missed target is reported, not a failure.
TURBINE_GPU_CHECK_DATE=$(date -u +%Y-%m-%dT%H:%MZ) "$bin/xtask" gpu-report "$out" > "$logs/gpu-report.log" 2>&1 || { echo "| gpu-report | FAIL | |" >> "$logs/summary.md"; status=1; }
summary() {
  echo "# Turbine gpu-check"
  echo
  echo "name, driver_version, memory.total, compute_cap"
  cat "$out/device.txt"
  echo
  cat "$out/targets.md" 2>/dev/null
  echo
  echo "| step | result | time |"
  echo "|---|---|---|"
  cat "$logs/summary.md"
}
{
  summary
  for f in "$logs"/*.log; do
    echo; echo "## $(basename "$f" .log)"; echo '```'; tail -40 "$f"; echo '```'
  done
} > "$out/report.md"
summary
for name in $failed; do
  echo; echo "## $name: the end of its log"; tail -12 "$logs/$name.log" | cut -c1-240
done | head -c 7000
tar -czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$logs"
exit $status
"###;
