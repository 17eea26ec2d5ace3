//! The scheduler's rules with a fake runner (no weights, milliseconds): the token budget and
//! chunked prefill, preemption when blocks run out, prefix reuse, cancellation and stop strings.
//! The fake's next token is a function of the sequence's last token, so a request's output
//! depends on its prompt only, as a real model's does.

use std::sync::{Arc, Mutex};

use turbine_batcher::{
    EngineConfig, EngineCore, EngineError, Event, FinishReason, NgramProposer, Request, RequestId, SpecConfig,
};
use turbine_core::runner::{CacheConfig, Logits, ModelRunner, ModelSpec, SeqStep};
use turbine_core::sampling::{sample_rows, top_n, Sampled, SamplingParams, SeqSampler};

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
    /// Logit rows of the last step.
    rows: usize,
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
        (Fake { spec, cache: CacheConfig::f32(16, num_blocks), steps: steps.clone(), last: Vec::new(), rows: 0 }, steps)
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
        self.rows = 0;
        for s in seqs {
            let need = (s.start + s.tokens.len()).div_ceil(self.cache.block_size);
            assert!(s.blocks.len() >= need, "a block table of {} blocks for {need}", s.blocks.len());
            assert!(s.blocks.iter().all(|&b| (b as usize) < self.cache.num_blocks));
            match s.logits {
                Logits::Last => {
                    self.last.push(*s.tokens.last().expect("tokens"));
                    self.rows += 1;
                }
                Logits::All => {
                    self.last.extend_from_slice(s.tokens);
                    self.rows += s.tokens.len();
                }
                Logits::None => {}
            }
        }
        self.steps.lock().unwrap().push(seqs.iter().map(|s| (s.start, s.tokens.len(), s.logits)).collect());
        Ok(())
    }

    fn logits(&mut self) -> turbine_core::Result<Vec<f32>> {
        // Row r favours token r % VOCAB a little, so scores can tell rows apart.
        Ok((0..self.rows)
            .flat_map(|r| (0..VOCAB as usize).map(move |v| if v == r % VOCAB as usize { 1.0 } else { 0.0 }))
            .collect())
    }

    fn sample(&mut self, samplers: &mut [&mut SeqSampler]) -> turbine_core::Result<Vec<Sampled>> {
        assert_eq!(samplers.len(), self.last.len());
        let rows: Vec<f32> = self.last.iter().flat_map(|&t| next_logits(t)).collect();
        sample_rows(&rows, VOCAB as usize, samplers)
    }
}

/// The fake model's logits after token `t`: 2 for its favourite next token `(7t + 3) % 26`, 1.5
/// more for a second one, 0 elsewhere. Greedy requests follow the favourite; penalised and
/// sampled ones leave it now and then.
fn next_logits(t: u32) -> Vec<f32> {
    let mut row = vec![0.0; VOCAB as usize];
    row[((t * 7 + 3) % VOCAB) as usize] += 2.0;
    row[((t * 5 + 1) % VOCAB) as usize] += 1.5;
    row
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request::greedy(prompt, max_tokens).unwrap().with_ignore_eos(true)
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
    let r = request(p, 12).with_stop(vec![stop.clone()]).unwrap();
    let id = core.add(r).unwrap();
    let out = run(&mut core, &[id]);
    assert_eq!(out[0].1, FinishReason::Stop);
    assert_eq!(out[0].2, text[..cut], "stop {stop:?} in {text:?}");
}

#[test]
fn the_synchronous_driver_runs_one_request_through_the_engine() {
    let (fake, steps) = Fake::new(8);
    let cfg = EngineConfig { max_num_tokens: 16, ..EngineConfig::default() };
    let mut core = EngineCore::new(Box::new(fake), cfg);
    let p = prompt(3, 40);
    let mut seen = Vec::new();
    let out = turbine_batcher::generate(&mut core, request(p.clone(), 12), &mut |t, _| seen.push(t.id)).unwrap();
    let ids: Vec<u32> = out.tokens.iter().map(|t| t.id).collect();
    assert_eq!(ids, alone(p.clone(), 12), "the driver and the engine loop give the same tokens");
    assert_eq!(seen, ids, "every token is seen as it is sampled");
    assert_eq!(out.finish, FinishReason::Length);
    assert_eq!((out.timings.prompt_tokens, out.timings.decode_tokens), (40, 11));
    // The prompt went in chunks of the token budget: 16 + 16 + 8, then one token per step.
    let lens: Vec<usize> = steps.lock().unwrap().iter().map(|s| s[0].1).collect();
    assert_eq!(&lens[..4], &[16, 16, 8, 1]);
    assert_eq!(core.stats().blocks_in_use, 0, "the blocks went back");
    // One check, at the engine's boundary: too long for the cache of 8 blocks of 16.
    let err = turbine_batcher::generate(&mut core, request(p.clone(), 100), &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("exceeds the limit of 128 tokens (KV cache)"), "{err}");
    // A busy engine is not driven synchronously.
    core.add(request(p.clone(), 4)).unwrap();
    let err = turbine_batcher::generate(&mut core, request(p, 4), &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, EngineError::Invalid(ref m) if m.contains("busy")), "{err}");
}

#[test]
fn scoring_takes_blocks_from_the_engine_and_gives_them_back() {
    let (fake, steps) = Fake::new(4);
    let cfg = EngineConfig { max_num_tokens: 8, ..EngineConfig::default() };
    let mut core = EngineCore::new(Box::new(fake), cfg);
    let seq = core.begin_score(64).unwrap();
    assert_eq!(core.stats().blocks_in_use, 4);
    assert!(matches!(core.begin_score(1), Err(EngineError::CacheFull { needed: 1, free: 0 })));
    assert!(!core.reset(), "no reset under an open scored sequence");
    core.end_score(seq);
    assert!(core.reset());
    assert_eq!(core.stats().blocks_in_use, 0);
    assert!(core.begin_score(65).is_err(), "65 tokens do not fit 4 blocks of 16");

    // 50 tokens in windows of 20: 19 + 19 + 9 predictions, each window in chunks of the budget.
    let ids: Vec<u32> = (0..50).map(|i| (i * 5 % VOCAB as usize) as u32).collect();
    let s = turbine_batcher::score(&mut core, &ids, 20).unwrap();
    assert_eq!(s.tokens, 47);
    // Row r puts logit 1 on token r % 26 and 0 elsewhere: the NLL of the next token is
    // ln(25 + e) - (1 if it is that token else 0).
    let lse = (25.0 + 1f64.exp()).ln();
    let mut want = Vec::new();
    for w in ids.chunks(20) {
        for (r, &next) in w.iter().enumerate().skip(1) {
            // Row r of a chunk of 8 predicts token r + 1 of the window (r counted within the chunk).
            let row_in_chunk = (r - 1) % 8;
            want.push(lse - if next as usize == row_in_chunk % VOCAB as usize { 1.0 } else { 0.0 });
        }
    }
    for (got, want) in s.token_nll.iter().zip(&want) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    let chunks: Vec<usize> = steps.lock().unwrap().iter().map(|s| s[0].1).collect();
    assert_eq!(chunks, [8, 8, 4, 8, 8, 4, 8, 2]);
    assert_eq!(core.stats().blocks_in_use, 0);
    assert!(turbine_batcher::score(&mut core, &ids, 65).unwrap_err().to_string().contains("--ctx must be between 2"));
    assert!(turbine_batcher::score(&mut core, &[1, 99], 2).unwrap_err().to_string().contains("outside the vocabulary"));
}

/// Prompt lookup over the fake model: a prompt that walks the favourite chain twice gives
/// drafts the fake agrees with often, and disagrees with sometimes.
fn chain_prompt(start: u32, len: usize) -> Vec<u32> {
    let mut p = vec![start];
    while p.len() < len {
        let t = *p.last().unwrap();
        p.push(if p.len() % 11 == 10 { (t + 1) % VOCAB } else { (t * 7 + 3) % VOCAB });
    }
    p
}

fn speculative(draft_tokens: usize) -> EngineConfig {
    EngineConfig { speculative: Some(SpecConfig { draft_tokens, max_running: usize::MAX }), ..Default::default() }
}

/// An engine over the fake; prompt lookup with single-token matches when speculating.
fn core_with(fake: Fake, cfg: EngineConfig) -> EngineCore {
    EngineCore::new(Box::new(fake), cfg).with_proposer(Box::new(NgramProposer { min_n: 1, max_n: 3 }))
}

/// Greedy, penalised and seeded sampled requests give the same tokens with and without
/// speculation: each verified row samples with the state plain decoding has at its position
/// (a wrong per-row sampler, a random number reused or skipped, shows here).
#[test]
fn speculation_changes_no_token_of_greedy_penalised_or_seeded_requests() {
    let kinds = [
        SamplingParams { temperature: 0.0, ..Default::default() },
        SamplingParams { temperature: 0.0, frequency_penalty: 0.8, ..Default::default() },
        SamplingParams { temperature: 0.0, repetition_penalty: 1.5, ..Default::default() },
        SamplingParams { temperature: 1.0, seed: Some(7), ..Default::default() },
        SamplingParams { temperature: 0.8, top_k: 4, presence_penalty: 0.7, seed: Some(9), ..Default::default() },
        SamplingParams { temperature: 1.2, top_p: 0.8, min_p: 0.05, seed: Some(11), ..Default::default() },
    ];
    let reqs: Vec<Request> = kinds
        .iter()
        .enumerate()
        .map(|(k, p)| Request::new(chain_prompt(k as u32, 40), p.clone(), 30).unwrap().with_ignore_eos(true))
        .collect();
    let outputs = |cfg: EngineConfig| {
        let (fake, _) = Fake::new(64);
        let mut core = core_with(fake, cfg);
        let ids: Vec<RequestId> = reqs.iter().map(|r| core.add(r.clone()).unwrap()).collect();
        let out: Vec<Vec<u32>> = run(&mut core, &ids).into_iter().map(|o| o.0).collect();
        (out, core.stats())
    };
    let (plain, _) = outputs(EngineConfig::default());
    for k in [1, 3, 8] {
        let (spec, stats) = outputs(speculative(k));
        for (i, (a, b)) in plain.iter().zip(&spec).enumerate() {
            assert_eq!(a, b, "request {i} ({:?}) changed with {k} drafts", kinds[i]);
        }
        assert!(stats.accepted_tokens > 0 && stats.accepted_tokens < stats.drafted_tokens, "{stats:?}");
    }
}

/// Sampled outputs keep the model's distribution under speculation: the frequencies of the
/// first three tokens over 6,000 seeds match the exact probabilities (chi-square).
#[test]
fn speculative_sampling_keeps_the_target_distribution() {
    let params = |seed| SamplingParams { temperature: 1.0, top_k: 3, seed: Some(seed), ..Default::default() };
    // The exact probability of each step's choice: softmax over the row's three largest logits.
    let step = |t: u32| -> Vec<(u32, f64)> {
        let top = top_n(&next_logits(t), 3);
        let z: f64 = top.iter().map(|c| (c.1 as f64).exp()).sum();
        top.iter().map(|c| (c.0, (c.1 as f64).exp() / z)).collect()
    };
    let prompt = chain_prompt(4, 30);
    let mut exact = std::collections::HashMap::new();
    for (a, pa) in step(*prompt.last().unwrap()) {
        for (b, pb) in step(a) {
            for (c, pc) in step(b) {
                exact.insert(vec![a, b, c], pa * pb * pc);
            }
        }
    }
    let n = 6000u64;
    let (fake, _) = Fake::new(1024);
    let mut core = core_with(fake, EngineConfig { max_waiting: n as usize, ..speculative(4) });
    let ids: Vec<RequestId> = (0..n)
        .map(|seed| core.add(Request::new(prompt.clone(), params(seed), 3).unwrap().with_ignore_eos(true)).unwrap())
        .collect();
    let mut counts = std::collections::HashMap::new();
    for (toks, ..) in run(&mut core, &ids) {
        assert!(exact.contains_key(&toks), "{toks:?} is not a possible output");
        *counts.entry(toks).or_insert(0u64) += 1;
    }
    let stats = core.stats();
    assert!(stats.accepted_tokens > 1000 && stats.accepted_tokens < stats.drafted_tokens, "{stats:?}");
    let chi2: f64 = exact
        .iter()
        .map(|(k, p)| {
            let e = p * n as f64;
            let o = *counts.get(k).unwrap_or(&0) as f64;
            (o - e) * (o - e) / e
        })
        .sum();
    // 27 outcomes, 26 degrees of freedom: 54.1 is the 0.001 quantile's bound.
    assert!(chi2 < 54.1, "chi-square {chi2:.1} over {} outcomes: {counts:?}", exact.len());
}

/// Stop strings, stop ids, `max_tokens` and cancellation end a speculating request where they
/// end a plain one: the same tokens, text and reason, even when the end falls inside a run of
/// accepted drafts; no block is left (`run` checks).
#[test]
fn speculating_requests_end_where_plain_ones_do() {
    let detok = || Box::new(|ids: &[u32]| ids.iter().map(|&i| char::from(b'a' + i as u8)).collect::<String>());
    let p = chain_prompt(2, 40);
    let free = alone(p.clone(), 30);
    let text: String = free.iter().map(|&i| char::from(b'a' + i as u8)).collect();
    let reqs = [
        request(p.clone(), 30).with_stop(vec![text[9..11].to_string()]).unwrap(),
        request(p.clone(), 30).with_ignore_eos(false).with_stop_ids(vec![free[13]]),
        request(p.clone(), 7),
        request(p.clone(), 30),
    ];
    let outcome = |cfg: EngineConfig| {
        let (fake, _) = Fake::new(64);
        let mut core = core_with(fake, cfg).with_detokenizer(detok());
        let ids: Vec<RequestId> = reqs.iter().map(|r| core.add(r.clone()).unwrap()).collect();
        let out = run(&mut core, &ids);
        (out, core.stats())
    };
    let (plain, _) = outcome(EngineConfig::default());
    let (spec, stats) = outcome(speculative(8));
    assert!(stats.accepted_tokens > 10, "{stats:?}");
    assert_eq!(plain, spec);
    assert_eq!(plain[0].1, FinishReason::Stop);
    assert_eq!(plain[1].1, FinishReason::Stop);
    assert_eq!(plain[2].0.len(), 7);
    // Cancelled between steps, a speculating request holds no draft and no extra block.
    let (fake, _) = Fake::new(64);
    let mut core = core_with(fake, speculative(8));
    let id = core.add(request(p, 30)).unwrap();
    for _ in 0..3 {
        core.step().unwrap();
    }
    assert!(core.stats().drafted_tokens > 0);
    assert!(matches!(core.cancel(id), Some(Event::Finished { reason: FinishReason::Cancelled, .. })));
    assert_eq!(core.stats().blocks_in_use, 0);
}

/// `min_tokens`: the stop ids cannot be chosen and stop strings do not end the request before
/// it; after it they do. With and without speculation alike.
#[test]
fn min_tokens_holds_back_stop_ids_and_strings() {
    let detok = || Box::new(|ids: &[u32]| ids.iter().map(|&i| char::from(b'a' + i as u8)).collect::<String>());
    let p = chain_prompt(5, 30);
    let free = alone(p.clone(), 30);
    let text: String = free.iter().map(|&i| char::from(b'a' + i as u8)).collect();
    let stop_id = free[2];
    let by_id = request(p.clone(), 30).with_ignore_eos(false).with_stop_ids(vec![stop_id]);
    let by_text = request(p.clone(), 30).with_stop(vec![text[1..3].to_string()]).unwrap();
    for cfg in [EngineConfig::default(), speculative(4)] {
        let (fake, _) = Fake::new(64);
        let mut core = core_with(fake, cfg).with_detokenizer(detok());
        let reqs = [
            by_id.clone(),
            by_id.clone().with_min_tokens(6).unwrap(),
            by_text.clone(),
            by_text.clone().with_min_tokens(8).unwrap(),
        ];
        let ids: Vec<RequestId> = reqs.iter().map(|r| core.add(r.clone()).unwrap()).collect();
        let out = run(&mut core, &ids);
        assert_eq!((out[0].0.len(), out[0].1), (3, FinishReason::Stop), "{cfg:?}");
        let held = &out[1].0;
        assert!(held.len() > 6 && !held[..6].contains(&stop_id), "{held:?} ({cfg:?})");
        assert!(out[1].1 == FinishReason::Length || *held.last().unwrap() == stop_id);
        assert_eq!(out[2].1, FinishReason::Stop);
        assert_eq!(out[2].2, text[..1]);
        assert!(out[3].0.len() >= 8, "{:?} ({cfg:?})", out[3]);
    }
    assert_eq!(request(p, 4).with_min_tokens(5).unwrap_err().param, "min_tokens");
}

/// A test constraint: even token ids only; complete after `len` tokens; `fail_at` makes its
/// mask fail at that output position.
struct Evens {
    len: usize,
    seen: usize,
    fail_at: Option<usize>,
}

impl turbine_batcher::Constraint for Evens {
    fn allowed(&mut self) -> Result<turbine_batcher::TokenMask, String> {
        if self.fail_at == Some(self.seen) {
            return Err("the grammar broke".into());
        }
        if self.fail_at == Some(usize::MAX - self.seen) {
            panic!("a grammar engine bug");
        }
        Ok(vec![0x5555_5555])
    }
    fn consume(&mut self, token: u32) -> Result<(), String> {
        assert_eq!(token % 2, 0, "a token the mask did not allow");
        self.seen += 1;
        Ok(())
    }
    fn finished(&mut self) -> bool {
        self.seen >= self.len
    }
}

struct EvensCompiler;

impl turbine_batcher::ConstraintCompiler for EvensCompiler {
    fn compile(&self, spec: &turbine_batcher::ConstraintSpec) -> Result<Box<dyn turbine_batcher::Constraint>, String> {
        match spec {
            turbine_batcher::ConstraintSpec::Regex(r) if r == "even" => {
                Ok(Box::new(Evens { len: 5, seen: 0, fail_at: None }))
            }
            turbine_batcher::ConstraintSpec::Regex(r) if r == "broken" => {
                Ok(Box::new(Evens { len: 9, seen: 0, fail_at: Some(2) }))
            }
            // Panics computing its mask for the second token.
            turbine_batcher::ConstraintSpec::Regex(r) if r == "panics" => {
                Ok(Box::new(Evens { len: 9, seen: 0, fail_at: Some(usize::MAX - 1) }))
            }
            other => Err(format!("cannot compile {other:?}")),
        }
    }
}

/// Constrained requests sample only allowed tokens, end when the constraint is complete, keep
/// their output whatever runs beside them, and fail alone (with a message) when the
/// constraint fails; bad specs and engines without a compiler are refused.
#[test]
fn constrained_requests_follow_their_mask_and_end_when_complete() {
    use turbine_batcher::{ConstraintSpec, SubmitError};
    let even = |seed: u32| request(prompt(seed, 12), 20).with_constraint(ConstraintSpec::Regex("even".into()));
    let sampled = |seed: u32| {
        let params = SamplingParams { temperature: 1.0, seed: Some(seed as u64), ..Default::default() };
        Request::new(prompt(seed, 9), params, 20)
            .unwrap()
            .with_ignore_eos(true)
            .with_constraint(ConstraintSpec::Regex("even".into()))
    };
    let engine = || {
        let (fake, _) = Fake::new(64);
        EngineCore::new(Box::new(fake), EngineConfig::default()).with_constraints(Box::new(EvensCompiler))
    };
    let alone = |r: Request| {
        let mut core = engine();
        let id = core.add(r).unwrap();
        run(&mut core, &[id]).remove(0)
    };
    let (a, b) = (alone(even(1)), alone(sampled(2)));
    for o in [&a, &b] {
        assert_eq!((o.0.len(), o.1), (5, FinishReason::Stop), "{o:?}");
        assert!(o.0.iter().all(|t| t % 2 == 0), "{o:?}");
    }
    // Among free requests and a failing one.
    let mut core = engine();
    let reqs = [
        request(prompt(7, 30), 12),
        even(1),
        request(prompt(8, 5), 12).with_constraint(ConstraintSpec::Regex("broken".into())),
        sampled(2),
        request(prompt(9, 20), 12),
    ];
    let ids: Vec<RequestId> = reqs.iter().map(|r| core.add(r.clone()).unwrap()).collect();
    let out = run(&mut core, &ids);
    assert_eq!(out[1], a);
    assert_eq!(out[3], b);
    assert_eq!((out[2].0.len(), out[2].1), (2, FinishReason::Error));
    // A constraint that panics ends its request alone, beside two that keep their outputs.
    let mut other = engine();
    let trio = [even(1), request(prompt(4, 6), 12).with_constraint(ConstraintSpec::Regex("panics".into())), sampled(2)];
    let trio_ids: Vec<RequestId> = trio.iter().map(|r| other.add(r.clone()).unwrap()).collect();
    let trio_out = run(&mut other, &trio_ids);
    assert_eq!((&trio_out[0], &trio_out[2]), (&a, &b));
    assert_eq!((trio_out[1].0.len(), trio_out[1].1), (1, FinishReason::Error));
    assert_eq!(out[0].0, self::alone(prompt(7, 30), 12));
    assert_eq!(out[4].0, self::alone(prompt(9, 20), 12));
    assert_eq!(core.stats().constrained_requests, 3);
    // The failing request's message.
    let mut core = engine();
    core.add(request(prompt(8, 5), 12).with_constraint(ConstraintSpec::Regex("broken".into()))).unwrap();
    let mut message = None;
    while core.has_work() {
        for (_, ev) in core.step().unwrap() {
            if let Event::Finished { error, .. } = ev {
                message = error;
            }
        }
    }
    assert!(message.as_deref().is_some_and(|m| m.contains("constraint failed: the grammar broke")), "{message:?}");
    match engine().add(request(prompt(1, 4), 4).with_constraint(ConstraintSpec::Choice(vec!["x".into()]))) {
        Err(SubmitError::Invalid(m)) => assert!(m.contains("cannot compile"), "{m}"),
        other => panic!("{other:?}"),
    }
    let (fake, _) = Fake::new(8);
    match EngineCore::new(Box::new(fake), EngineConfig::default()).add(even(1)) {
        Err(SubmitError::Invalid(m)) => {
            assert!(m.contains("regex constraints need an engine with a constraint compiler"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}
