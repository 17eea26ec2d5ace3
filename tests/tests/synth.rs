//! `turbine_models::synth`: a written random-weight model loads with the ordinary loader, its
//! tokenizer round-trips text, and it runs.

use turbine_kernels_ref::Cpu;
use turbine_models::synth::{self, SynthSpec};
use turbine_models::{CacheConfig, Logits, ModelRunner, Runner, SeqStep};

#[test]
fn a_synthetic_model_loads_tokenizes_and_runs() {
    let out = std::env::temp_dir().join(format!("turbine-synth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let spec = SynthSpec { seed: 7, ..SynthSpec::preset("tiny").unwrap() };
    let progress = std::sync::Mutex::new(Vec::new());
    let w = synth::write(&spec, &out, &|done, total| progress.lock().unwrap().push((done, total))).unwrap();
    assert_eq!(w.params, spec.params());
    let seen = progress.into_inner().unwrap();
    assert_eq!(seen.last().map(|&(d, t)| d == t), Some(true), "{seen:?}");

    let m = turbine_models::load(&Cpu::new(), &out).unwrap();
    let s = m.model.spec().clone();
    assert_eq!((s.layers, s.q_heads, s.kv_heads, s.head_dim, s.vocab), (2, 4, 2, 16, 300));
    let text = "Hello, world! Ünïcödé ✓";
    let ids = m.tokenizer.encode(text, false).unwrap();
    assert_eq!(ids.len(), text.len(), "one token per byte");
    assert_eq!(m.tokenizer.decode(&ids, false).unwrap(), text);
    assert!(m.eos.contains(&299), "{:?}", m.eos);

    let mut r = Runner::new(Cpu::new(), m.model, CacheConfig::f32(16, 4)).unwrap();
    r.step(&[SeqStep { tokens: &ids, start: 0, blocks: &[0, 1], logits: Logits::Last }]).unwrap();
    let logits = r.logits().unwrap();
    assert_eq!(logits.len(), 300);
    assert!(logits.iter().all(|v| v.is_finite()));
    // Random weights, but not degenerate: the logits differ.
    assert!(logits.iter().any(|&v| v != logits[0]));

    // The same seed writes the same bytes; another seed, other bytes.
    let again = out.with_extension("again");
    synth::write(&spec, &again, &|_, _| {}).unwrap();
    let read = |p: &std::path::Path| std::fs::read(p.join("model.safetensors")).unwrap();
    assert_eq!(read(&out), read(&again));
    synth::write(&SynthSpec { seed: 8, ..spec }, &again, &|_, _| {}).unwrap();
    assert_ne!(read(&out), read(&again));
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&again);
}
