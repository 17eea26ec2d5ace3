//! The engine over your own model: implement `ModelRunner` (here a toy whose next token is the
//! last one plus one) and drive `EngineCore` step by step, as the server's engine thread does.
//! `cargo run -p turbine-batcher --example own_runner`

use turbine_batcher::{EngineConfig, EngineCore, Event, Request};
use turbine_core::runner::{CacheConfig, Logits, ModelRunner, ModelSpec, SeqStep};
use turbine_core::sampling::{Sampled, SeqSampler};

struct Counter {
    spec: ModelSpec,
    last: Vec<u32>,
}

impl ModelRunner for Counter {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    fn backend(&self) -> &'static str {
        "toy"
    }
    fn cache(&self) -> CacheConfig {
        CacheConfig::f32(16, 64)
    }
    fn step(&mut self, seqs: &[SeqStep<'_>]) -> turbine_core::Result<()> {
        // A real runner computes here; the toy remembers each sampled row's last token.
        self.last = seqs.iter().filter(|s| s.logits == Logits::Last).map(|s| s.tokens[s.tokens.len() - 1]).collect();
        Ok(())
    }
    fn logits(&mut self) -> turbine_core::Result<Vec<f32>> {
        Ok(vec![0.0; self.last.len() * self.spec.vocab])
    }
    fn sample(&mut self, samplers: &mut [&mut SeqSampler]) -> turbine_core::Result<Vec<Sampled>> {
        let vocab = self.spec.vocab as u32;
        Ok(self
            .last
            .iter()
            .zip(samplers.iter_mut())
            .map(|(&t, s)| {
                let id = (t + 1) % vocab;
                s.record(id);
                Sampled { id, logprob: 0.0, top: vec![] }
            })
            .collect())
    }
}

fn main() {
    let spec = ModelSpec {
        arch: "counter".into(),
        hidden: 1,
        layers: 1,
        q_heads: 1,
        kv_heads: 1,
        head_dim: 1,
        vocab: 100,
        max_positions: 1024,
        bos: None,
        eos: vec![],
    };
    let mut core = EngineCore::new(Box::new(Counter { spec, last: vec![] }), EngineConfig::default());
    for start in [10, 50] {
        let req = Request::greedy(vec![start], 5).expect("valid parameters").with_ignore_eos(true);
        core.add(req).expect("a request this engine can hold");
    }
    // Both requests run in the same steps (in-flight batching).
    while core.has_work() {
        for (id, event) in core.step().expect("a step") {
            match event {
                Event::Token { token, .. } => println!("request {id}: token {}", token.id),
                Event::Finished { reason, .. } => println!("request {id}: {}", reason.as_str()),
                Event::Error(e) => eprintln!("request {id}: {e}"),
            }
        }
    }
}
