//! `turbine pull [NAME]`.

use clap::Args;
use turbine_models::catalog;

#[derive(Debug, Args)]
pub struct PullArgs {
    /// A known model name (default: smollm2-135m-instruct).
    name: Option<String>,
}

pub fn run(a: PullArgs) -> anyhow::Result<()> {
    let name = a.name.as_deref().unwrap_or(catalog::DEFAULT_MODEL);
    let path = catalog::pull(name, &mut |line| eprintln!("turbine: {line}"))?;
    println!("{}", path.display());
    Ok(())
}
