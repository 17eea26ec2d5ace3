//! `turbine quantize`: store a model's projections in FP8 or INT8 and write the checkpoint in the
//! layout vLLM and TensorRT-LLM read (see `turbine_models::export`).

use anyhow::{bail, Context, Result};
use clap::Args;
use turbine_kernels_ref::Cpu;
use turbine_models::precision::Format;

use super::PrecisionArgs;

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// A Hugging Face model folder (config.json and safetensors), or a known name.
    #[arg(long, short = 'm')]
    model: String,
    /// fp8 (weights and inputs), fp8-weight or int8-weight.
    #[arg(long)]
    to: String,
    /// Where to write the quantised model folder.
    #[arg(long)]
    out: std::path::PathBuf,
    #[command(flatten)]
    precision: PrecisionArgs,
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let format = Format::parse(&a.to)?;
    if !format.is_eight_bit() {
        bail!("--to {} is not a quantised format; use fp8, fp8-weight or int8-weight", a.to);
    }
    let path = turbine_server::setup::model_path(Some(&a.model))?;
    if !path.is_dir() {
        bail!(
            "{}: turbine quantize reads a Hugging Face folder (config.json and safetensors); a GGUF file is already quantised: run it as it is, or with --dtype",
            path.display()
        );
    }
    if a.out.exists() && std::fs::read_dir(&a.out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{}: the output folder exists and is not empty", a.out.display());
    }
    let mut spec = a.precision.spec(Some(&a.to))?;
    // The published layout has no place for exact outlier channels.
    spec.outliers = Some(spec.outliers.unwrap_or(0));
    let policy = spec.policy()?;
    let cpu = Cpu::new();
    eprintln!("turbine quantize: loading {} and storing its projections as {}", path.display(), format.name());
    let m = turbine_models::load_with(&cpu, &path, &policy)?;
    let dec = m.model.decoder().context("this architecture cannot be exported")?;
    let done = turbine_models::export::export(&cpu, dec, &path, &a.out, format)?;
    eprintln!(
        "turbine quantize: wrote {} ({} projection tensors in 8 bits, {} kept; model.safetensors {:.1} MB)",
        a.out.display(),
        done.quantized,
        done.kept,
        done.bytes as f64 / 1e6
    );
    Ok(())
}
