//! `turbine models`: supported architectures and known model names.

use clap::Args;
use serde_json::json;
use turbine_models::{catalog, registry};

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ModelsArgs) -> anyhow::Result<()> {
    let archs = registry::supported();
    if a.json {
        let known: Vec<_> = catalog::KNOWN
            .iter()
            .map(|m| json!({"name": m.name, "about": m.about, "cached": m.is_cached(), "path": m.path()}))
            .collect();
        println!("{}", json!({"architectures": archs, "known_models": known, "default": catalog::DEFAULT_MODEL}));
        return Ok(());
    }
    println!("Architectures (config.json \"architectures\"):");
    for a in archs {
        println!("  {a}");
    }
    println!("\nKnown models (--model NAME, turbine pull NAME):");
    for m in catalog::KNOWN {
        let default = if m.name == catalog::DEFAULT_MODEL { " (default)" } else { "" };
        let state = if m.is_cached() { "pulled" } else { "not pulled" };
        println!("  {:<24} {}{default} [{state}]", m.name, m.about);
    }
    Ok(())
}
