//! `turbine bench --workload grounded`: requests whose answers reuse their prompt (copying a
//! passage, correcting one, editing code and returning it whole), where prompt-lookup
//! speculation pays off. Passages come from the benchmark's English text and a file of small
//! Python functions, cut at places the seed picks; prompts go through the model's chat template
//! when it has one.

use anyhow::Result;
use turbine_batcher::bench::BenchRequest;
use turbine_core::sampling::Rng;
use turbine_models::chat::Message;
use turbine_models::tokenizer::TextTokenizer;

/// Small Python functions, separated by blank lines, after a comment header.
const CODE: &str = include_str!("../../data/bench-code.py");

/// `n` grounded requests (fixed `seed`) cut from `text` (paragraphs separated by blank lines)
/// and the bundled code; each may run to 1.25 times its passage's tokens plus 16 (within
/// `max_len`, whose half the prompt fits in, shortened if need be) and stops at `eos`.
pub fn workload(
    tok: &TextTokenizer,
    text: &str,
    n: usize,
    seed: u64,
    max_len: usize,
    eos: &[u32],
) -> Result<Vec<BenchRequest>> {
    let paragraphs: Vec<&str> = text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()).collect();
    let functions: Vec<&str> = CODE.split("\n\n").map(str::trim_end).filter(|f| f.starts_with("def ")).collect();
    anyhow::ensure!(!paragraphs.is_empty(), "the benchmark text has no paragraph");
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let pick = |rng: &mut Rng, len: usize| (rng.next_u64() % len as u64) as usize;
        let (task, passage) = match i % 4 {
            0 | 1 => {
                // Consecutive paragraphs up to about 80 words.
                let mut at = pick(&mut rng, paragraphs.len());
                let mut passage = String::new();
                while passage.split_whitespace().count() < 80 {
                    if !passage.is_empty() {
                        passage.push_str("\n\n");
                    }
                    passage.push_str(paragraphs[at % paragraphs.len()]);
                    at += 1;
                }
                let task = if i % 4 == 0 {
                    "Repeat the following text exactly, word for word, and write nothing else."
                } else {
                    "Correct any spelling or punctuation mistakes in the following text and return the whole text."
                };
                (task.to_string(), passage)
            }
            _ => {
                let f = functions[pick(&mut rng, functions.len())];
                let name = f["def ".len()..].split('(').next().unwrap_or("f");
                let task = if i % 4 == 2 {
                    format!("Rename the function `{name}` to `{name}_v2` in this Python code and return the full code.")
                } else {
                    "Add type hints to this Python function and return the full code.".to_string()
                };
                (task, format!("```python\n{f}\n```"))
            }
        };
        // A small context takes the passage's first half, quarter, … until the prompt fills at
        // most half of it.
        let mut passage = passage.as_str();
        let prompt = loop {
            let message = format!("{task}\n\n{passage}");
            let prompt = match &tok.chat {
                Some(_) => tok.encode_chat(&[Message::new("user", &message)], true)?,
                None => tok.encode(&message, true)?,
            };
            if 2 * prompt.len() <= max_len || passage.len() < 8 {
                break prompt;
            }
            let mut cut = passage.len() / 2;
            while !passage.is_char_boundary(cut) {
                cut -= 1;
            }
            passage = &passage[..cut];
        };
        let passage_tokens = tok.encode(passage, false)?.len();
        let room = max_len.saturating_sub(prompt.len());
        anyhow::ensure!(room > 0, "a grounded prompt of {} tokens does not fit the context of {max_len}", prompt.len());
        let max_tokens = (passage_tokens * 5 / 4 + 16).min(room);
        out.push(BenchRequest { prompt, max_tokens, stop_ids: eos.to_vec() });
    }
    Ok(out)
}
