//! A sequence's logits do not depend on how its prompt was chunked or on what else shares the
//! step: checked bitwise on the tiny Llama and Mistral (sliding window) checkpoints, and on the
//! Llama under every weight format (16-bit, FP8 W8A8 with exact channels, 8-bit weight-only).

use turbine_models::precision::Policy;
use turbine_models::{Logits, ModelRunner, SeqStep};
use turbine_tests::*;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The block table of a sequence of `tokens` tokens whose blocks start at `first` (16-token
/// blocks; the sequences of one check take disjoint ranges).
fn table(first: u32, tokens: usize) -> Vec<u32> {
    (first..first + tokens.div_ceil(16) as u32).collect()
}

/// Runs `prompt` through a fresh sequence in chunks of the given sizes; returns the last logits.
fn chunked(r: &mut dyn ModelRunner, prompt: &[u32], chunks: &[usize]) -> Vec<f32> {
    let blocks = table(0, prompt.len());
    let mut start = 0;
    for &c in chunks {
        let end = start + c;
        let logits = if end == prompt.len() { Logits::Last } else { Logits::None };
        r.step(&[SeqStep { tokens: &prompt[start..end], start, blocks: &blocks, logits }]).unwrap();
        start = end;
    }
    r.logits().unwrap()
}

fn check(case: &str) {
    check_with(case, "auto");
}

fn check_with(case: &str, format: &str) {
    let policy = turbine_models::precision::Policy { calib_tokens: 256, ..Policy::parse(format, &[]).unwrap() };
    let (mut runner, ..) = load_runner_with(&fixtures().join("tiny").join(case), 16, &policy).unwrap();
    let m = runner.as_mut();
    let case = format!("{case} as {format}");
    let case = case.as_str();
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 500 + 1).collect();
    let whole = chunked(m, &prompt, &[40]);
    assert_eq!(bits(&whole), bits(&chunked(m, &prompt, &[7, 1, 20, 12])), "{case}: chunked prefill");
    assert_eq!(bits(&whole), bits(&chunked(m, &prompt, &[1; 40])), "{case}: token by token");

    // The same prompt beside two other sequences (one mid-prefill, one decoding) in one step.
    let other: Vec<u32> = (0..30).map(|i| (i * 13 + 5) % 500).collect();
    let (a, b, c) = (table(0, 40), table(3, 30), table(5, 20));
    m.step(&[SeqStep { tokens: &other[..29], start: 0, blocks: &b, logits: Logits::None }]).unwrap();
    m.step(&[SeqStep { tokens: &other[..10], start: 0, blocks: &c, logits: Logits::None }]).unwrap();
    let vocab = m.spec().vocab;
    m.step(&[
        SeqStep { tokens: &other[29..30], start: 29, blocks: &b, logits: Logits::Last },
        SeqStep { tokens: &prompt, start: 0, blocks: &a, logits: Logits::Last },
        SeqStep { tokens: &other[10..20], start: 10, blocks: &c, logits: Logits::All },
    ])
    .unwrap();
    let all = m.logits().unwrap();
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
