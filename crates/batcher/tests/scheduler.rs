//! The scheduler's rules with a fake runner (no weights, milliseconds): the token budget and
//! chunked prefill, preemption when blocks run out, prefix reuse, cancellation and stop strings.
//! The fake's next token is a function of the sequence's last token, so a request's output
//! depends on its prompt only, as a real model's does.

use std::sync::{Arc, Mutex};

use turbine_batcher::{EngineConfig, EngineCore, Event, FinishReason, Request, RequestId};
use turbine_core::runner::{CacheConfig, Logits, ModelRunner, ModelSpec, SeqStep};
use turbine_core::sampling::{Sampled, SamplingParams, SeqSampler};

const VOCAB: u32 = 26;

/// One sequence's part of a recorded step: (start, new tokens, logits wanted).
type Part = (usize, usize, Logits);

struct Fake {
    spec: ModelSpec,
    cache: CacheConfig,
    /// Every step, as the engine asked for it.
    steps: Arc<Mutex<Vec<Vec<Part>>>>,
    /// The last token of each row that wants logits, for `sample`.
    last: Vec<u32>,
}

impl Fake {
    fn new(num_blocks: usize) -> (Self, Arc<Mutex<Vec<Vec<Part>>>>) {
        let spec = ModelSpec {
            arch: "fake".into(),
            hidden: 8,
            layers: 1,
            q_heads: 1,
            kv_heads: 1,
            head_dim: 8,
            vocab: VOCAB as usize,
            max_positions: 4096,
            bos: None,
            eos: vec![],
        };
        let steps = Arc::new(Mutex::new(Vec::new()));
        (Fake { spec, cache: CacheConfig::f32(16, num_blocks), steps: steps.clone(), last: Vec::new() }, steps)
    }
}

impl ModelRunner for Fake {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn backend(&self) -> &'static str {
        "fake"
    }

    fn cache(&self) -> CacheConfig {
        self.cache
    }

    fn step(&mut self, seqs: &[SeqStep<'_>]) -> turbine_core::Result<()> {
        self.last.clear();
        for s in seqs {
            let need = (s.start + s.tokens.len()).div_ceil(self.cache.block_size);
            assert!(s.blocks.len() >= need, "a block table of {} blocks for {need}", s.blocks.len());
            assert!(s.blocks.iter().all(|&b| (b as usize) < self.cache.num_blocks));
            if s.logits == Logits::Last {
                self.last.push(*s.tokens.last().expect("tokens"));
            }
        }
        self.steps.lock().unwrap().push(seqs.iter().map(|s| (s.start, s.tokens.len(), s.logits)).collect());
        Ok(())
    }

    fn logits(&mut self) -> turbine_core::Result<Vec<f32>> {
        Ok(vec![0.0; self.last.len() * VOCAB as usize])
    }

    fn sample(&mut self, samplers: &mut [&mut SeqSampler]) -> turbine_core::Result<Vec<Sampled>> {
        assert_eq!(samplers.len(), self.last.len());
        Ok(self
            .last
            .iter()
            .zip(samplers.iter_mut())
            .map(|(&t, s)| {
                let id = (t * 7 + 3) % VOCAB;
                s.record(id);
                Sampled { id, logprob: -1.0, top: vec![] }
            })
            .collect())
    }
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request {
        prompt,
        params: SamplingParams { temperature: 0.0, ..Default::default() },
        max_tokens,
        ignore_eos: true,
        stop_ids: vec![],
        stop: vec![],
    }
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| (seed * 31 + i * 17) % VOCAB).collect()
}

/// Runs the engine until idle: each request's tokens and finish, in submission order.
fn run(core: &mut EngineCore, ids: &[RequestId]) -> Vec<(Vec<u32>, FinishReason, String)> {
    let mut out: Vec<(Vec<u32>, Option<FinishReason>, String)> =
        ids.iter().map(|_| (vec![], None, String::new())).collect();
    let mut steps = 0;
    while core.has_work() {
        for (id, ev) in core.step().unwrap() {
            let o = &mut out[ids.iter().position(|&i| i == id).unwrap()];
            match ev {
                Event::Token { token, text } => {
                    o.0.push(token.id);
                    o.2.push_str(&text);
                }
                Event::Finished { reason, text, .. } => {
                    o.1 = Some(reason);
                    o.2.push_str(&text);
                }
                Event::Error(m) => panic!("{m}"),
            }
        }
        steps += 1;
        assert!(steps < 10_000);
    }
    assert_eq!(core.stats().blocks_in_use, 0, "blocks leaked");
    out.into_iter().map(|(t, r, s)| (t, r.expect("finished"), s)).collect()
}

fn alone(p: Vec<u32>, max_tokens: usize) -> Vec<u32> {
    let (fake, _) = Fake::new(64);
    let mut core = EngineCore::new(Box::new(fake), EngineConfig::default());
    let id = core.add(request(p, max_tokens)).unwrap();
    run(&mut core, &[id]).remove(0).0
}

#[test]
fn steps_keep_the_token_budget_and_chunk_prefills() {
    let (fake, steps) = Fake::new(64);
    let cfg = EngineConfig { max_num_tokens: 16, max_batch_size: 8, ..Default::default() };
    let mut core = EngineCore::new(Box::new(fake), cfg);
    let prompts: Vec<Vec<u32>> = (0..3).map(|i| prompt(i, 40)).collect();
    let ids: Vec<RequestId> = prompts.iter().map(|p| core.add(request(p.clone(), 5)).unwrap()).collect();
    let out = run(&mut core, &ids);
    for (p, (toks, reason, _)) in prompts.iter().zip(&out) {
        assert_eq!(*reason, FinishReason::Length);
        assert_eq!(*toks, alone(p.clone(), 5), "batched output differs from the output alone");
    }
    let steps = steps.lock().unwrap();
    for s in steps.iter() {
        assert!(s.iter().map(|p| p.1).sum::<usize>() <= 16, "a step over the budget: {s:?}");
        assert!(s.len() <= 8);
    }
    // A 40-token prompt took several chunks, each starting where the last ended.
    let first: Vec<Part> =
        steps.iter().filter_map(|s| s.iter().find(|p| p.2 != Logits::All).copied()).take(3).collect();
    assert!(first.windows(2).all(|w| w[1].0 == w[0].0 + w[0].1), "{first:?}");
}

#[test]
fn running_out_of_blocks_preempts_and_recomputes_with_the_same_output() {
    // 6 blocks of 16 tokens: two requests growing to 60 tokens each cannot both fit.
    let (fake, _) = Fake::new(6);
    let mut core = EngineCore::new(Box::new(fake), EngineConfig::default());
    let prompts = [prompt(1, 30), prompt(2, 30)];
    let ids: Vec<RequestId> = prompts.iter().map(|p| core.add(request(p.clone(), 30)).unwrap()).collect();
    let out = run(&mut core, &ids);
    assert!(core.stats().preemptions > 0, "no preemption");
    for (p, (toks, ..)) in prompts.iter().zip(&out) {
        assert_eq!(*toks, alone(p.clone(), 30));
    }
}

#[test]
fn a_shared_prefix_is_reused_from_the_cache() {
    let (fake, steps) = Fake::new(64);
    let mut core = EngineCore::new(Box::new(fake), EngineConfig::default());
    let shared = prompt(5, 40);
    let a = core.add(request(shared.clone(), 2)).unwrap();
    run(&mut core, &[a]);
    let mut second = shared[..32].to_vec();
    second.extend(prompt(9, 5));
    steps.lock().unwrap().clear();
    let b = core.add(request(second.clone(), 2)).unwrap();
    let out = run(&mut core, &[b]);
    assert_eq!(core.stats().prefix_cache_hit_tokens, 32, "two full blocks of the prefix");
    // The second request's prefill started after the cached blocks.
    assert_eq!(steps.lock().unwrap()[0][0].0, 32);
    assert_eq!(out[0].0, alone(second, 2));
}

#[test]
fn cancelling_frees_blocks_and_ends_with_cancelled() {
    let (fake, _) = Fake::new(64);
    let mut core = EngineCore::new(Box::new(fake), EngineConfig::default());
    let a = core.add(request(prompt(3, 20), 100)).unwrap();
    let b = core.add(request(prompt(4, 20), 100)).unwrap();
    core.step().unwrap();
    core.step().unwrap();
    assert!(core.stats().blocks_in_use > 0);
    assert!(matches!(core.cancel(a), Some(Event::Finished { reason: FinishReason::Cancelled, .. })));
    assert!(core.cancel(a).is_none());
    let out = run(&mut core, &[b]);
    assert_eq!(out[0].1, FinishReason::Length);
}

#[test]
fn stop_strings_end_the_text_where_they_start() {
    let (fake, _) = Fake::new(64);
    let detok = Box::new(|ids: &[u32]| ids.iter().map(|&i| char::from(b'a' + i as u8)).collect::<String>());
    let mut core = EngineCore::new(Box::new(fake), EngineConfig::default()).with_detokenizer(detok);
    let p = prompt(6, 10);
    let free = alone(p.clone(), 12);
    let text: String = free.iter().map(|&i| char::from(b'a' + i as u8)).collect();
    // A stop string made of the 5th and 6th generated letters.
    let stop = text[4..6].to_string();
    let cut = text.find(&stop).unwrap();
    let mut r = request(p, 12);
    r.stop = vec![stop.clone()];
    let id = core.add(r).unwrap();
    let out = run(&mut core, &[id]);
    assert_eq!(out[0].1, FinishReason::Stop);
    assert_eq!(out[0].2, text[..cut], "stop {stop:?} in {text:?}");
}
