//! The in-flight batching engine core: batch invariance, preemption, prefix caching,
//! cancellation, reproducible sampling, a stress run, and typed rejections.

use std::collections::HashMap;

use turbine_batcher::FinishReason;
use turbine_batcher::{EngineConfig, EngineCore, Event, Request, RequestId, SubmitError};
use turbine_core::sampling::{Rng, Sampled, SamplingParams};
use turbine_tests::fixtures;

/// The engine over a tiny checkpoint on the test backend (`TURBINE_TEST_BACKEND`, default cpu).
fn engine(case: &str, blocks: usize, cfg: EngineConfig) -> EngineCore {
    let (runner, _, _) = turbine_tests::load_runner(&fixtures().join("tiny").join(case), blocks).unwrap();
    EngineCore::new(runner, cfg)
}

type Outcome = (Vec<Sampled>, FinishReason);

fn run(core: &mut EngineCore, reqs: &[Request]) -> Vec<Outcome> {
    let ids: Vec<RequestId> = reqs.iter().map(|r| core.add(r.clone()).unwrap()).collect();
    let mut out: HashMap<RequestId, (Vec<Sampled>, Option<FinishReason>)> = HashMap::new();
    let mut steps = 0;
    while core.has_work() {
        for (id, ev) in core.step().unwrap() {
            let e = out.entry(id).or_default();
            match ev {
                Event::Token { token, .. } => {
                    assert!(e.1.is_none(), "token after finish");
                    e.0.push(token)
                }
                Event::Finished { reason, usage, .. } => {
                    assert!(e.1.is_none(), "finished twice");
                    assert_eq!(usage.completion_tokens, e.0.len());
                    e.1 = Some(reason);
                }
                Event::Error(m) => panic!("engine error: {m}"),
            }
        }
        steps += 1;
        assert!(steps < 100_000, "engine does not converge");
    }
    assert_eq!(core.stats().blocks_in_use, 0, "blocks leaked");
    assert_eq!(core.stats().draft_blocks_in_use, 0, "draft model blocks leaked");
    ids.iter()
        .map(|id| {
            let (t, r) = out.remove(id).expect("request lost");
            (t, r.expect("request never finished"))
        })
        .collect()
}

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Request {
    let params = SamplingParams { temperature: 0.0, logprobs: 3, ..Default::default() };
    Request::new(prompt, params, max_tokens).unwrap().with_ignore_eos(true).with_stop_ids(vec![0])
}

fn prompt(rng: &mut Rng, len: usize) -> Vec<u32> {
    (0..len).map(|_| 1 + (rng.next_u64() % 500) as u32).collect()
}

fn random_request(rng: &mut Rng) -> Request {
    let len = 1 + (rng.next_u64() % 60) as usize;
    let p = prompt(rng, len);
    let params = SamplingParams {
        temperature: [0.0, 0.7, 1.0][(rng.next_u64() % 3) as usize],
        top_k: [0, 5, 40][(rng.next_u64() % 3) as usize],
        top_p: [1.0, 0.9][(rng.next_u64() % 2) as usize],
        seed: Some(rng.next_u64()),
        logprobs: (rng.next_u64() % 3) as usize,
        min_p: [0.0, 0.05][(rng.next_u64() % 2) as usize],
        repetition_penalty: [1.0, 1.2][(rng.next_u64() % 2) as usize],
        presence_penalty: [0.0, 0.5][(rng.next_u64() % 2) as usize],
        frequency_penalty: [0.0, 0.3][(rng.next_u64() % 2) as usize],
    };
    let max_tokens = 1 + (rng.next_u64() % 40) as usize;
    Request::new(p, params, max_tokens)
        .unwrap()
        .with_ignore_eos(rng.next_u64().is_multiple_of(2))
        .with_stop_ids(vec![0])
}

/// A token's id, logprob bits and top alternatives' (id, logprob bits).
type TokenBits = (u32, u32, Vec<(u32, u32)>);

fn bits(o: &Outcome) -> Vec<TokenBits> {
    o.0.iter().map(|t| (t.id, t.logprob.to_bits(), t.top.iter().map(|(i, l)| (*i, l.to_bits())).collect())).collect()
}

#[test]
fn greedy_results_do_not_depend_on_the_batch() {
    let mut rng = Rng::new(11);
    let probes: Vec<Request> = (0..3).map(|i| greedy(prompt(&mut rng, 10 + 17 * i), 20)).collect();
    let alone: Vec<Outcome> = probes
        .iter()
        .map(|r| run(&mut engine("llama-gqa", 64, EngineConfig::default()), std::slice::from_ref(r))[0].clone())
        .collect();
    let mut mixed: Vec<Request> = (0..20).map(|_| random_request(&mut rng)).collect();
    for (k, p) in probes.iter().enumerate() {
        mixed.insert(3 + 7 * k, p.clone());
    }
    // Small budgets force chunked prefills interleaved with decoding.
    for cfg in [EngineConfig::default(), EngineConfig { max_num_tokens: 7, max_batch_size: 5, ..Default::default() }] {
        let together = run(&mut engine("llama-gqa", 64, cfg), &mixed);
        for (k, a) in alone.iter().enumerate() {
            assert_eq!(bits(a), bits(&together[3 + 7 * k]), "probe {k} changed in a batch ({cfg:?})");
        }
    }
}

#[test]
fn preemption_under_a_tiny_cache_gives_the_same_outputs() {
    let mut rng = Rng::new(5);
    let reqs: Vec<Request> = (0..12).map(|i| greedy(prompt(&mut rng, 20 + i), 30)).collect();
    let free = run(&mut engine("llama-gqa", 64, EngineConfig::default()), &reqs);
    let mut tight = engine("llama-gqa", 6, EngineConfig::default());
    let squeezed = run(&mut tight, &reqs);
    assert!(tight.stats().preemptions > 0, "the tiny cache should force preemption");
    for (a, b) in free.iter().zip(&squeezed) {
        assert_eq!(bits(a), bits(b));
        assert_eq!(a.1, b.1);
    }
}

#[test]
fn prefix_cache_reuses_full_blocks() {
    let mut rng = Rng::new(9);
    let shared = prompt(&mut rng, 64);
    let mut second = shared.clone();
    second.extend(prompt(&mut rng, 5));
    let mut core = engine("llama-gqa", 64, EngineConfig::default());
    run(&mut core, &[greedy(shared.clone(), 4)]);
    let id = core.add(greedy(second.clone(), 6)).unwrap();
    let mut cached = None;
    let mut toks = Vec::new();
    while core.has_work() {
        for (i, ev) in core.step().unwrap() {
            assert_eq!(i, id);
            match ev {
                Event::Token { token, .. } => toks.push(token),
                Event::Finished { usage, .. } => cached = Some(usage.cached_tokens),
                Event::Error(m) => panic!("engine error: {m}"),
            }
        }
    }
    assert_eq!(cached, Some(64), "the four full blocks of the shared prefix are reused");
    let fresh = run(&mut engine("llama-gqa", 64, EngineConfig::default()), &[greedy(second, 6)]);
    assert_eq!(bits(&fresh[0]), bits(&(toks, FinishReason::Length)));
}

/// Issue 19: a request whose logits turn NaN ends with finish reason `error` and a message
/// instead of a token; the request batched with it runs exactly as it does alone.
#[test]
fn non_finite_logits_end_only_their_request() {
    const POISON: usize = 511; // outside the test prompts' ids (1..=500)
    for (value, what) in [(f32::NAN, "nan"), (f32::INFINITY, "inf")] {
        let dir = std::env::temp_dir().join(format!("turbine-poison-{what}-{}", std::process::id()));
        turbine_tests::poison_token(
            &fixtures().join("tiny/llama-gqa"),
            &dir,
            "model.embed_tokens.weight",
            POISON,
            value,
        )
        .unwrap();
        let at = |blocks| {
            let (runner, _, _) = turbine_tests::load_runner(&dir, blocks).unwrap();
            EngineCore::new(runner, EngineConfig::default())
        };
        let mut rng = Rng::new(5);
        let clean = greedy(prompt(&mut rng, 30), 12);
        let mut poisoned = prompt(&mut rng, 20);
        poisoned[7] = POISON as u32;
        let bad = greedy(poisoned, 12);
        let alone = run(&mut at(64), std::slice::from_ref(&clean));
        assert_eq!(alone[0].1, FinishReason::Length);

        let mut core = at(64);
        let (c, b) = (core.add(clean.clone()).unwrap(), core.add(bad.clone()).unwrap());
        let (mut clean_toks, mut outcome) = (Vec::new(), None);
        while core.has_work() {
            for (id, ev) in core.step().unwrap() {
                match (id, ev) {
                    (i, Event::Token { token, .. }) if i == c => clean_toks.push(token),
                    (i, Event::Token { .. }) if i == b => panic!("{what}: a token from non-finite logits"),
                    (i, Event::Finished { reason, usage, error, .. }) if i == b => {
                        outcome = Some((reason, usage, error))
                    }
                    (_, Event::Error(m)) => panic!("{m}"),
                    _ => {}
                }
            }
        }
        let (reason, usage, error) = outcome.expect("the poisoned request finished");
        assert_eq!((reason, usage.completion_tokens), (FinishReason::Error, 0), "{what}");
        assert!(error.unwrap().contains("non-finite logits"), "{what}");
        assert_eq!(bits(&(clean_toks, FinishReason::Length)), bits(&alone[0]), "{what}: the other request changed");
        assert_eq!(core.stats().blocks_in_use, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn cancellation_frees_blocks_at_once() {
    let mut core = engine("llama-gqa", 64, EngineConfig::default());
    let mut rng = Rng::new(1);
    let a = core.add(greedy(prompt(&mut rng, 40), 100)).unwrap();
    let b = core.add(greedy(prompt(&mut rng, 40), 100)).unwrap();
    for _ in 0..3 {
        core.step().unwrap();
    }
    assert!(core.stats().blocks_in_use > 0);
    assert!(matches!(core.cancel(a), Some(Event::Finished { reason: FinishReason::Cancelled, .. })));
    assert!(matches!(core.cancel(b), Some(Event::Finished { reason: FinishReason::Cancelled, .. })));
    assert_eq!(core.stats().blocks_in_use, 0);
    assert!(core.cancel(a).is_none());
    assert!(!core.has_work());
}

#[test]
fn seeded_sampling_is_reproducible() {
    let mut rng = Rng::new(3);
    let reqs: Vec<Request> = (0..6).map(|_| random_request(&mut rng)).collect();
    let a = run(&mut engine("mistral-window", 64, EngineConfig::default()), &reqs);
    let b = run(
        &mut engine("mistral-window", 64, EngineConfig { max_num_tokens: 9, max_batch_size: 3, ..Default::default() }),
        &reqs,
    );
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(bits(x), bits(y));
    }
}

#[test]
fn stress_three_hundred_requests() {
    let mut rng = Rng::new(77);
    let reqs: Vec<Request> = (0..300).map(|_| random_request(&mut rng)).collect();
    let mut core =
        engine("qwen2-bias", 24, EngineConfig { max_num_tokens: 256, max_batch_size: 32, ..Default::default() });
    let out = run(&mut core, &reqs);
    for (r, (toks, reason)) in reqs.iter().zip(&out) {
        assert!(!toks.is_empty() && toks.len() <= r.max_tokens());
        match reason {
            FinishReason::Stop => assert!(!r.ignore_eos() && r.stop_ids().contains(&toks.last().unwrap().id)),
            FinishReason::Length => assert_eq!(toks.len(), r.max_tokens()),
            FinishReason::Cancelled | FinishReason::Error => {
                panic!("nobody cancelled and the weights are finite: {reason:?}")
            }
        }
    }
}

#[test]
fn rejections_are_typed() {
    let mut core = engine("llama-gqa", 4, EngineConfig::default());
    let too_long = core.add(greedy(vec![1; 60], 10)).unwrap_err();
    assert_eq!(too_long, SubmitError::TooLong { prompt: 60, max_tokens: 10, limit: 64, what: "KV cache" });
    assert!(too_long.to_string().contains("60") && too_long.to_string().contains("64"));
    let mut core = engine("llama-gqa", 64, EngineConfig::default());
    assert!(matches!(
        core.add(greedy(vec![1; 250], 10)),
        Err(SubmitError::TooLong { limit: 256, what: "model context", .. })
    ));
    assert!(matches!(core.add(greedy(vec![600], 10)), Err(SubmitError::Invalid(m)) if m.contains("vocabulary")));
    // What does not depend on the model cannot even be built into a request.
    assert_eq!(Request::greedy(vec![], 10).unwrap_err().param, "prompt");
    assert_eq!(Request::greedy(vec![1], 0).unwrap_err().param, "max_tokens");
    let bad = Request::new(vec![1, 2], SamplingParams { top_p: 0.0, ..Default::default() }, 10).unwrap_err();
    assert!(bad.param == "top_p" && bad.message.contains("top-p"), "{bad:?}");
    assert_eq!(Request::greedy(vec![1], 3).unwrap().with_stop(vec![String::new()]).unwrap_err().param, "stop");
}

#[test]
fn a_full_waiting_queue_refuses_new_requests() {
    let cfg = EngineConfig { max_waiting: 2, ..Default::default() };
    let mut core = engine("llama-gqa", 64, cfg);
    core.add(greedy(vec![1, 2, 3], 4)).unwrap();
    core.add(greedy(vec![4, 5, 6], 4)).unwrap();
    assert_eq!(core.add(greedy(vec![7], 4)), Err(SubmitError::QueueFull { waiting: 2, limit: 2 }));
    // Once the queue moves, there is room again.
    core.step().unwrap();
    assert_eq!(core.stats().waiting, 0);
    core.add(greedy(vec![7], 4)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_all_ends_every_stream_and_keeps_the_engine() {
    let engine = turbine_batcher::Engine::start(engine("llama-gqa", 64, EngineConfig::default()));
    let mut streams = Vec::new();
    for i in 0..4 {
        let r = greedy(vec![1 + i, 2, 3], 200).with_ignore_eos(true);
        streams.push(engine.submit(r).await.unwrap());
    }
    engine.cancel_all();
    for mut s in streams {
        let mut last = None;
        while let Some(ev) = s.next().await {
            last = Some(ev);
        }
        assert!(matches!(last, Some(Event::Finished { reason: FinishReason::Cancelled, .. })), "{last:?}");
    }
    let stats = engine.stats().await.unwrap();
    assert_eq!((stats.running, stats.waiting, stats.blocks_in_use), (0, 0, 0));
    let mut s = engine.submit(greedy(vec![1, 2], 3)).await.unwrap();
    let mut n = 0;
    while let Some(Event::Token { .. }) = s.next().await {
        n += 1;
    }
    assert_eq!(n, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_engine_streams_cancels_and_counts() {
    let engine = turbine_batcher::Engine::start(engine("llama-gqa", 64, EngineConfig::default()));
    let mut rng = Rng::new(21);
    let reqs: Vec<Request> = (0..8).map(|i| greedy(prompt(&mut rng, 5 + 3 * i), 12)).collect();
    let want = run(&mut engine_sync(), &reqs);
    let mut handles = Vec::new();
    for r in reqs {
        let mut s = engine.submit(r).await.unwrap();
        handles.push(tokio::spawn(async move {
            let mut toks = Vec::new();
            loop {
                match s.next().await.expect("a finish event") {
                    Event::Token { token, .. } => toks.push(token),
                    Event::Finished { reason, .. } => return (toks, reason),
                    Event::Error(m) => panic!("{m}"),
                }
            }
        }));
    }
    for (h, w) in handles.into_iter().zip(&want) {
        let got = h.await.unwrap();
        assert_eq!(bits(&got), bits(w));
    }
    // Cancel a long request mid-way: its stream ends with Cancelled and its blocks are free.
    let mut long = engine.submit(greedy(prompt(&mut rng, 30), 200)).await.unwrap();
    assert!(matches!(long.next().await, Some(Event::Token { .. })));
    engine.cancel(long.id);
    loop {
        match long.next().await {
            Some(Event::Token { .. }) => continue,
            Some(Event::Finished { reason, .. }) => {
                assert_eq!(reason, FinishReason::Cancelled);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let stats = engine.stats().await.unwrap();
    assert_eq!(stats.blocks_in_use, 0);
    assert_eq!((stats.running, stats.waiting), (0, 0));
    assert!(matches!(engine.submit(greedy(vec![9999], 3)).await, Err(SubmitError::Invalid(_))));
    // Shutting down ends what is in flight and refuses what comes after.
    let mut engine = engine;
    let mut pending = engine.submit(greedy(prompt(&mut rng, 30), 200)).await.unwrap();
    engine.shutdown();
    let mut last = None;
    while let Some(ev) = pending.next().await {
        last = Some(ev);
    }
    assert!(matches!(last, Some(Event::Finished { reason: FinishReason::Cancelled, .. })));
    assert_eq!(engine.submit(greedy(vec![1, 2], 3)).await.unwrap_err(), SubmitError::ShutDown);
    assert_eq!(engine.stats().await.unwrap_err(), SubmitError::ShutDown);
}

fn engine_sync() -> EngineCore {
    engine("llama-gqa", 64, EngineConfig::default())
}

fn with_text(core: EngineCore) -> EngineCore {
    let tok =
        turbine_models::tokenizer::TextTokenizer::from_hf_dir(&fixtures().join("tiny").join("llama-gqa")).unwrap();
    core.with_detokenizer(Box::new(move |ids| tok.decode(ids, true).unwrap_or_default()))
}

/// Runs one request; returns its token ids, the text its events carried, and the finish reason.
fn run_text(core: &mut EngineCore, req: Request) -> (Vec<u32>, String, FinishReason) {
    let id = core.add(req).unwrap();
    let (mut ids, mut text) = (Vec::new(), String::new());
    loop {
        for (i, ev) in core.step().unwrap() {
            assert_eq!(i, id);
            match ev {
                Event::Token { token, text: t } => {
                    ids.push(token.id);
                    text.push_str(&t);
                }
                Event::Finished { text: t, reason, .. } => {
                    text.push_str(&t);
                    return (ids, text, reason);
                }
                Event::Error(m) => panic!("{m}"),
            }
        }
    }
}

#[test]
fn stop_strings_match_across_token_boundaries() {
    let tok =
        turbine_models::tokenizer::TextTokenizer::from_hf_dir(&fixtures().join("tiny").join("llama-gqa")).unwrap();
    let mut core = with_text(engine("llama-gqa", 64, EngineConfig::default()));
    let prompt = tok.encode("Once upon a time, the fox", true).unwrap();
    let (ids, full, reason) = run_text(&mut core, greedy(prompt.clone(), 30));
    assert_eq!(reason, FinishReason::Length);
    assert_eq!(full, tok.decode(&ids, true).unwrap(), "without stop strings all text is delivered");
    // A stop string made of the last character of one token's text and the first of the next.
    let ends: Vec<usize> = (0..=ids.len()).map(|k| tok.decode(&ids[..k], true).unwrap().len()).collect();
    let (stop, k) = (2..ids.len())
        .find_map(|k| {
            let (a, b) = (ends[k - 1], ends[k]);
            if b <= a || ends[k + 1] <= b || !full.is_char_boundary(b) {
                return None;
            }
            let lo = full[..b].char_indices().last()?.0;
            let hi = b + full[b..].chars().next()?.len_utf8();
            let s = full[lo..hi].to_string();
            (full.find(&s) == Some(lo) && !s.contains('\u{fffd}')).then_some((s, k))
        })
        .expect("a token boundary to straddle");
    let req = greedy(prompt, 30).with_stop(vec![stop.clone(), "never appears".into()]).unwrap();
    let (got_ids, text, reason) = run_text(&mut core, req);
    assert_eq!(reason, FinishReason::Stop);
    assert_eq!(got_ids, ids[..=k], "generation stops at the token that completes the stop string");
    assert_eq!(text, full[..full.find(&stop).unwrap()], "the stop string is not returned");
    assert_eq!(core.stats().blocks_in_use, 0);
    // Stop strings without a detokenizer are refused.
    let mut plain = engine("llama-gqa", 64, EngineConfig::default());
    let r = greedy(vec![1, 2, 3], 5).with_stop(vec!["x".into()]).unwrap();
    assert!(matches!(plain.add(r), Err(SubmitError::Invalid(m)) if m.contains("detokenizer")));
}

#[test]
fn shared_prefixes_under_a_tight_cache_complete() {
    // Waiting requests must not pin cached prefix blocks that the request ahead of them needs.
    let mut rng = Rng::new(13);
    let shared = prompt(&mut rng, 48);
    let reqs: Vec<Request> = (0..10)
        .map(|i| {
            let mut p = shared.clone();
            p.extend(prompt(&mut rng, 1 + i));
            greedy(p, 20 + i)
        })
        .collect();
    let free = run(&mut engine("llama-gqa", 64, EngineConfig::default()), &reqs);
    let mut tight =
        engine("llama-gqa", 6, EngineConfig { max_num_tokens: 32, max_batch_size: 4, ..Default::default() });
    let squeezed = run(&mut tight, &reqs);
    for (a, b) in free.iter().zip(&squeezed) {
        assert_eq!(bits(a), bits(b));
    }
    assert!(tight.stats().prefix_cache_hit_tokens > 0);
}

/// A prompt that repeats itself, so that prompt lookup has something to draft from.
fn repetitive(rng: &mut Rng, len: usize) -> Vec<u32> {
    let motif = prompt(rng, 6);
    (0..len).map(|i| if i % 9 < 6 { motif[i % 9] } else { 1 + (rng.next_u64() % 500) as u32 }).collect()
}

/// Speculative decoding (prompt lookup) changes nothing a greedy or seeded sampled request gets,
/// to the bit: ids, log-probabilities and top alternatives, alone, among 20 mixed requests (sampled, penalised,
/// short budgets that chunk prefills) and under a cache small enough to preempt; drafts are
/// made and accepted, with fewer steps than without, and no block leaks (`run` checks).
#[test]
fn speculative_decoding_is_bit_identical_to_plain_decoding() {
    // Single-token matches too, so that even the penalised request (which avoids repeating
    // its own output) gets drafts from its prompt.
    let ngram = || Box::new(turbine_batcher::NgramProposer { min_n: 1, max_n: 4 });
    let spec = Some(turbine_batcher::SpecConfig::new(4));
    let mut rng = Rng::new(23);
    let prompts: Vec<Vec<u32>> = (0..3).map(|i| repetitive(&mut rng, 20 + 13 * i)).collect();
    let mut probes: Vec<Request> = prompts.iter().map(|p| greedy(p.clone(), 40)).collect();
    // A penalised greedy request: each verified row's sampler has seen the drafts before it.
    let penalised = SamplingParams { temperature: 0.0, frequency_penalty: 0.3, logprobs: 2, ..Default::default() };
    probes.push(Request::new(prompts[0].clone(), penalised, 40).unwrap().with_ignore_eos(true));
    // Seeded sampled requests: each verified row draws with the random number plain decoding
    // uses at its position, so they too get the very same tokens.
    let low = SamplingParams { temperature: 0.3, top_p: 0.95, logprobs: 2, seed: Some(41), ..Default::default() };
    let penalised_sampled =
        SamplingParams { temperature: 0.5, top_k: 40, presence_penalty: 0.5, seed: Some(42), ..Default::default() };
    for (p, params) in [(&prompts[1], low), (&prompts[2], penalised_sampled)] {
        probes.push(Request::new(p.clone(), params, 40).unwrap().with_ignore_eos(true));
    }
    let plain: Vec<Outcome> = probes
        .iter()
        .map(|r| run(&mut engine("llama-gqa", 64, EngineConfig::default()), std::slice::from_ref(r))[0].clone())
        .collect();
    let mut steps = [0u64; 2];
    let mut accepted = [0; 6];
    for (k, r) in probes.iter().enumerate() {
        let mut core =
            engine("llama-gqa", 64, EngineConfig { speculative: spec, ..Default::default() }).with_proposer(ngram());
        let got = run(&mut core, std::slice::from_ref(r));
        assert_eq!(bits(&plain[k]), bits(&got[0]), "probe {k} changed with speculation");
        assert_eq!(plain[k].1, got[0].1);
        let st = core.stats();
        assert!(st.accepted_tokens <= st.drafted_tokens);
        println!("probe {k}: {} of {} drafts accepted", st.accepted_tokens, st.drafted_tokens);
        accepted[k] = st.accepted_tokens;
        steps[1] += st.steps;
        let mut core = engine("llama-gqa", 64, EngineConfig::default());
        run(&mut core, std::slice::from_ref(r));
        steps[0] += core.stats().steps;
    }
    assert!(accepted[3] > 0, "the penalised request never had a draft accepted");
    assert!(accepted[4] + accepted[5] > 0, "the sampled requests never had a draft accepted");
    assert!(accepted.iter().sum::<u64>() > 0, "prompt lookup never drafted an accepted token");
    assert!(steps[1] < steps[0], "speculation took {} steps, plain decoding {}", steps[1], steps[0]);
    let mut mixed: Vec<Request> = (0..20).map(|_| random_request(&mut rng)).collect();
    for (k, p) in probes.iter().enumerate() {
        mixed.insert(2 + 4 * k, p.clone());
    }
    for (cfg, blocks) in [
        (EngineConfig { speculative: spec, ..Default::default() }, 64),
        (EngineConfig { max_num_tokens: 7, max_batch_size: 5, speculative: spec, ..Default::default() }, 64),
        (EngineConfig { speculative: spec, ..Default::default() }, 8),
    ] {
        let mut core = engine("llama-gqa", blocks, cfg).with_proposer(ngram());
        let together = run(&mut core, &mixed);
        for (k, a) in plain.iter().enumerate() {
            assert_eq!(bits(a), bits(&together[2 + 4 * k]), "probe {k} changed in a batch ({cfg:?}, {blocks} blocks)");
        }
        if blocks == 8 {
            assert!(core.stats().preemptions > 0, "the small cache did not preempt");
        }
    }
}

/// A draft model as proposer: the same identity, whatever the draft model drafts. The same
/// checkpoint drafts what the target would (most drafts accepted); another architecture with the
/// same vocabulary drafts poorly (few accepted). Alone, among 20 mixed requests, and under a
/// cache that preempts; neither cache leaks a block (`run` checks both).
#[test]
fn draft_model_speculation_is_bit_identical_to_plain_decoding() {
    let draft = |case: &str, blocks: usize| {
        let (runner, _, _) = turbine_tests::load_runner(&fixtures().join("tiny").join(case), blocks).unwrap();
        Box::new(turbine_batcher::DraftModel::new(runner))
    };
    let spec = Some(turbine_batcher::SpecConfig::new(5));
    let mut rng = Rng::new(31);
    let seeded = SamplingParams { temperature: 0.4, top_k: 20, logprobs: 1, seed: Some(5), ..Default::default() };
    let probes = [
        greedy(prompt(&mut rng, 12), 30),
        greedy(repetitive(&mut rng, 40), 30),
        Request::new(prompt(&mut rng, 25), seeded, 30).unwrap().with_ignore_eos(true),
    ];
    let plain: Vec<Outcome> = probes
        .iter()
        .map(|r| run(&mut engine("llama-gqa", 64, EngineConfig::default()), std::slice::from_ref(r))[0].clone())
        .collect();
    let cfg = EngineConfig { speculative: spec, ..Default::default() };
    for (case, expect_most) in [("llama-gqa", true), ("mistral-window", false)] {
        let (mut drafted, mut accepted) = (0, 0);
        for (k, r) in probes.iter().enumerate() {
            let mut core = engine("llama-gqa", 64, cfg).with_proposer(draft(case, 64));
            let got = run(&mut core, std::slice::from_ref(r));
            assert_eq!(bits(&plain[k]), bits(&got[0]), "probe {k} changed with draft model {case}");
            let st = core.stats();
            println!("{case} probe {k}: {} of {}", st.accepted_tokens, st.drafted_tokens);
            drafted += st.drafted_tokens;
            accepted += st.accepted_tokens;
        }
        println!("draft model {case}: {accepted} of {drafted} drafts accepted");
        assert!(drafted > 0);
        assert_eq!(expect_most, 2 * accepted > drafted, "{case}: {accepted} of {drafted} accepted");
    }
    let mut mixed: Vec<Request> = (0..20).map(|_| random_request(&mut rng)).collect();
    for (k, p) in probes.iter().enumerate() {
        mixed.insert(3 + 5 * k, p.clone());
    }
    for (cfg, blocks, draft_blocks) in [
        (cfg, 64, 64),
        (EngineConfig { max_num_tokens: 7, max_batch_size: 5, ..cfg }, 64, 64),
        (cfg, 8, 64),
        // A draft cache too small for every sequence: those left out decode without drafts.
        (cfg, 64, 6),
    ] {
        let mut core = engine("llama-gqa", blocks, cfg).with_proposer(draft("llama-gqa", draft_blocks));
        let together = run(&mut core, &mixed);
        for (k, a) in plain.iter().enumerate() {
            assert_eq!(bits(a), bits(&together[3 + 5 * k]), "probe {k} changed in a batch ({cfg:?}, {blocks} blocks)");
        }
        assert!(core.stats().accepted_tokens > 0);
        if blocks == 8 {
            assert!(core.stats().preemptions > 0, "the small cache did not preempt");
        }
    }
}
