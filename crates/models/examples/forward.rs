//! Load a model (a Hugging Face folder or a `.gguf` file) on the reference backend and run one
//! forward step over a prompt of token ids: the most likely next token.
//! `cargo run -p turbine-models --example forward -- tests/fixtures/tiny/llama-gqa 1 2 3`

use turbine_core::runner::{CacheConfig, Logits, ModelRunner, SeqStep};
use turbine_kernels_ref::Cpu;
use turbine_models::Runner;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: forward MODEL ID...")?;
    let prompt: Vec<u32> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    let cpu = Cpu::new();
    let loaded = turbine_models::load(&cpu, path.as_ref())?;
    // A paged KV cache of 4 blocks of 16 tokens; the prompt gets the first blocks.
    let mut runner = Runner::new(cpu, loaded.model, CacheConfig::f32(16, 4))?;
    let blocks: Vec<u32> = (0..prompt.len().div_ceil(16) as u32).collect();
    runner.step(&[SeqStep { tokens: &prompt, start: 0, blocks: &blocks, logits: Logits::Last }])?;
    let logits = runner.logits()?;
    let best = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).ok_or("no logits")?;
    println!("next token after {prompt:?}: {best} (logit {})", logits[best]);
    Ok(())
}
