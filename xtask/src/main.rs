//! `cargo xtask <task>`: developer tasks in plain Rust.
//!
//! - `golden [--backend cpu|cuda] [-- ARGS]`: the golden model suites (transformers references).
//! - `ci`: format check, clippy with warnings denied, every test.
//! - `kernels`: compiles every CUDA kernel with NVRTC and ptxas for sm_80, sm_89 and sm_90a and
//!   reports registers and spills (fetches the pinned NVRTC/header/ptxas wheels with pip once).
//! - `emu [TEST ARGS]`: builds the CUDA emulator (the kernels as C++ on CPU fibers, stand-ins for
//!   the driver and cuBLASLt) and runs the CUDA suites on it (`--backend cuda` without a GPU);
//!   `emu --build` only builds it and prints the environment that selects it.
//! - `gpu-check --prepare DIR`: builds and packs what a GPU machine runs (`bash DIR/run.sh
//!   REPORT_DIR` there); `gpu-check REPORT_DIR` prepares and runs it here.
//! - `gpu-report REPORT_DIR`: the speed targets from a gpu-check run's logs, written as
//!   `report.json` and `targets.md` (run.sh calls it last, from the carried xtask binary).
//! - `serve-check TURBINE MODEL`: `TURBINE serve -m MODEL --backend cuda` must answer a
//!   completion (run.sh runs it on the GPU machine, from the carried xtask binary).
//! - `gen-fixtures --python PY [NAME ...]`: regenerates the tiny variant checkpoints and their
//!   transformers references under `tests/fixtures/variants` (PY must have torch, transformers and
//!   tokenizers: `python3 -m venv .venv-gen && .venv-gen/bin/pip install torch transformers`).

use std::process::Command;

use anyhow::{bail, Context, Result};

#[cfg(feature = "cuda")]
mod emu;
#[cfg(feature = "cuda")]
mod gpu_check;
mod gpu_report;
#[cfg(feature = "cuda")]
mod kernels;
mod serve_check;
#[cfg(feature = "cuda")]
mod suites;

const GOLDEN_SUITES: &[&str] = &["golden_tiny", "golden_real"];

fn cargo(args: &[&str]) -> Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO")).args(args).status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn golden(args: &[String]) -> Result<()> {
    let mut backend = "cpu".to_string();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--backend" => backend = it.next().context("--backend needs a value")?.clone(),
            other => rest.push(other.to_string()),
        }
    }
    if !matches!(backend.as_str(), "cpu" | "cuda") {
        bail!("golden suites run on backend cpu or cuda, not {backend:?}");
    }
    // The suites load their models through turbine_tests::load, which reads this.
    std::env::set_var("TURBINE_TEST_BACKEND", &backend);
    let mut cmd: Vec<&str> = vec!["test", "-p", "turbine-tests"];
    for s in GOLDEN_SUITES {
        cmd.extend(["--test", s]);
    }
    if !rest.is_empty() {
        cmd.push("--");
        cmd.extend(rest.iter().map(String::as_str));
    }
    cargo(&cmd)
}

fn gen_fixtures(args: &[String]) -> Result<()> {
    let mut python = None;
    let mut only = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--python" => python = Some(it.next().context("--python needs a path")?.clone()),
            name => only.push(name.to_string()),
        }
    }
    let python = python.context("gen-fixtures needs --python PY (a Python with torch and transformers)")?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(&python);
    cmd.current_dir(&root).args([
        "xtask/gen/tiny_variants.py",
        "--out",
        "tests/fixtures/variants",
        "--tokenizer",
        "tests/fixtures/tiny/llama-gqa/tokenizer.json",
    ]);
    if !only.is_empty() {
        cmd.arg("--only").args(&only);
    }
    eprintln!("xtask: {python} xtask/gen/tiny_variants.py");
    let status = cmd.status().with_context(|| format!("running {python}"))?;
    if !status.success() {
        bail!("the fixture generator failed ({status})");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("golden") => golden(&args[1..]),
        Some("ci") => {
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
            cargo(&["test", "--workspace"])
        }
        Some("gen-fixtures") => gen_fixtures(&args[1..]),
        #[cfg(feature = "cuda")]
        Some("kernels") => kernels::run(),
        #[cfg(feature = "cuda")]
        Some("emu") if args.get(1).is_some_and(|a| a == "--build") => emu::build().map(|lib| {
            println!("LD_LIBRARY_PATH={} TURBINE_CUDA_PTX=target/kernels/sm_90a", lib.display());
        }),
        #[cfg(feature = "cuda")]
        Some("emu") => emu::run(&args[1..]),
        #[cfg(feature = "cuda")]
        Some("gpu-check") => match args.get(1).map(String::as_str) {
            Some("--prepare") => gpu_check::prepare(std::path::Path::new(args.get(2).context("--prepare needs a folder")?)),
            Some(report) => gpu_check::prepare_and_run(std::path::Path::new(report)),
            None => bail!("usage: cargo xtask gpu-check (--prepare DIR | REPORT_DIR)"),
        },
        #[cfg(not(feature = "cuda"))]
        Some(cmd @ ("kernels" | "emu" | "gpu-check")) => {
            bail!("`{cmd}` compiles the CUDA kernels: this xtask was built without its `cuda` feature")
        }
        Some("serve-check") => match (args.get(1), args.get(2)) {
            (Some(turbine), Some(model)) => {
                serve_check::run(std::path::Path::new(turbine), std::path::Path::new(model), &|_| {})
            }
            _ => bail!("usage: cargo xtask serve-check TURBINE MODEL"),
        },
        Some("gpu-report") => {
            let dir = std::path::Path::new(args.get(1).context("usage: cargo xtask gpu-report REPORT_DIR")?);
            let t = gpu_report::write(dir)?;
            println!("{}", gpu_report::markdown(&t));
            Ok(())
        }
        _ => bail!(
            "usage: cargo xtask <golden [--backend cpu|cuda] | ci | kernels | emu [--build | TEST ARGS] | gpu-check (--prepare DIR | REPORT_DIR) | gpu-report REPORT_DIR | serve-check TURBINE MODEL | gen-fixtures --python PY [NAME ...]>"
        ),
    }
}
