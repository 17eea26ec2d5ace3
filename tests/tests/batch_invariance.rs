//! A sequence's logits do not depend on how its prompt was chunked or on what else shares the
//! step: checked bitwise on the tiny Llama and Mistral (sliding window) checkpoints, and on the
//! Llama under every weight format (16-bit, FP8 W8A8 with exact channels, 8-bit weight-only).

use turbine_models::precision::Policy;
use turbine_models::{Logits, SeqStep};
use turbine_tests::*;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Runs `prompt` through a fresh sequence in chunks of the given sizes; returns the last logits.
fn chunked(m: &mut Loaded, prompt: &[u32], chunks: &[usize]) -> Vec<f32> {
    let mut blocks = m.gen.pool().sequence();
    blocks.reserve(prompt.len()).unwrap();
    let mut start = 0;
    for &c in chunks {
        let end = start + c;
        let logits = if end == prompt.len() { Logits::Last } else { Logits::None };
        m.gen.runner().step(&[SeqStep { tokens: &prompt[start..end], start, blocks: blocks.ids(), logits }]).unwrap();
        start = end;
    }
    m.gen.runner().logits().unwrap()
}

fn check(case: &str) {
    check_with(case, "auto");
}

fn check_with(case: &str, format: &str) {
    let policy = turbine_models::precision::Policy { calib_tokens: 256, ..Policy::parse(format, &[]).unwrap() };
    let mut m = load_with(&fixtures().join("tiny").join(case), 256, &policy).unwrap();
    let case = format!("{case} as {format}");
    let case = case.as_str();
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 500 + 1).collect();
    let whole = chunked(&mut m, &prompt, &[40]);
    assert_eq!(bits(&whole), bits(&chunked(&mut m, &prompt, &[7, 1, 20, 12])), "{case}: chunked prefill");
    assert_eq!(bits(&whole), bits(&chunked(&mut m, &prompt, &[1; 40])), "{case}: token by token");

    // The same prompt beside two other sequences (one mid-prefill, one decoding) in one step.
    let other: Vec<u32> = (0..30).map(|i| (i * 13 + 5) % 500).collect();
    let (mut a, mut b, mut c) = (m.gen.pool().sequence(), m.gen.pool().sequence(), m.gen.pool().sequence());
    b.reserve(30).unwrap();
    m.gen.runner().step(&[SeqStep { tokens: &other[..29], start: 0, blocks: b.ids(), logits: Logits::None }]).unwrap();
    c.reserve(20).unwrap();
    m.gen.runner().step(&[SeqStep { tokens: &other[..10], start: 0, blocks: c.ids(), logits: Logits::None }]).unwrap();
    a.reserve(40).unwrap();
    let vocab = m.gen.runner().spec().vocab;
    m.gen
        .runner()
        .step(&[
            SeqStep { tokens: &other[29..30], start: 29, blocks: b.ids(), logits: Logits::Last },
            SeqStep { tokens: &prompt, start: 0, blocks: a.ids(), logits: Logits::Last },
            SeqStep { tokens: &other[10..20], start: 10, blocks: c.ids(), logits: Logits::All },
        ])
        .unwrap();
    let all = m.gen.runner().logits().unwrap();
    assert_eq!(all.len(), 12 * vocab);
    assert_eq!(bits(&whole), bits(&all[vocab..2 * vocab]), "{case}: batched with others");
}

#[test]
fn llama_logits_are_batch_invariant() {
    check("llama-gqa");
}

#[test]
fn mistral_logits_are_batch_invariant() {
    check("mistral-window");
}

#[test]
fn every_weight_format_is_batch_invariant() {
    for format in ["bf16", "f16", "fp8", "fp8-weight", "int8-weight"] {
        check_with("llama-gqa", format);
    }
}
