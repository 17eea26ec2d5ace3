//! Offline throughput benchmark: a workload of requests run with in-flight batching or with
//! classic static batching, measured on the engine core directly.

use std::collections::HashMap;
use std::time::Instant;

use turbine_core::sampling::{Rng, SamplingParams};

use crate::request::{Event, Request, RequestId};
use crate::scheduler::EngineCore;
use crate::{EngineError, Result};

/// One benchmark request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchRequest {
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Ids that end the request early (the model's EOS); empty: it runs to `max_tokens`.
    pub stop_ids: Vec<u32>,
}

/// The default synthetic workload: `n` requests (fixed `seed`) with prompts of 16–256 tokens cut
/// from `text` (shortened when `max_len` is small) and long-tailed outputs (about 70% 8–32 tokens, 25% 64–192, 5% 384–512), each
/// capped so prompt + output fits `max_len`.
pub fn mixed_workload(text: &[u32], n: usize, seed: u64, max_len: usize) -> Vec<BenchRequest> {
    let mut rng = Rng::new(seed);
    let mut between = |lo: u64, hi: u64| lo + rng.next_u64() % (hi - lo + 1);
    (0..n)
        .map(|_| {
            let len = (between(16, 256) as usize).min(max_len.saturating_sub(8).max(1));
            let start = between(0, text.len().saturating_sub(1) as u64) as usize;
            let prompt: Vec<u32> = text.iter().cycle().skip(start).take(len).copied().collect();
            let u = between(0, 99);
            let out = if u < 70 {
                between(8, 32)
            } else if u < 95 {
                between(64, 192)
            } else {
                between(384, 512)
            } as usize;
            let out = out.min(max_len.saturating_sub(prompt.len())).max(1);
            BenchRequest { prompt, max_tokens: out, stop_ids: Vec::new() }
        })
        .collect()
}

/// How requests are batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Iteration-level batching: finished requests leave at once and waiting ones join.
    Inflight,
    /// Classic batching: batches of `max_batch` in arrival order; a batch runs until its longest
    /// member finishes and finished members keep computing as padding.
    Static,
    /// Classic batching where finished members stop computing (nobody takes their slot).
    StaticCompact,
}

impl Mode {
    /// `inflight`, `static` or `static-compact`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Inflight => "inflight",
            Mode::Static => "static",
            Mode::StaticCompact => "static-compact",
        }
    }
}

/// p50, p90 and p99 of a sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

fn percentiles(v: Vec<f64>) -> Percentiles {
    Percentiles::of(v)
}

impl Percentiles {
    /// The percentiles of a sample (nearest rank; all zero when it is empty).
    pub fn of(mut v: Vec<f64>) -> Percentiles {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Percentiles { p50: at(0.5), p90: at(0.9), p99: at(0.99) }
    }
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The batching mode.
    pub mode: Mode,
    /// Requests run.
    pub requests: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Useful generated tokens (padding excluded).
    pub output_tokens: usize,
    /// Wall time.
    pub wall_s: f64,
    /// Useful generated tokens per second.
    pub output_tok_s: f64,
    /// Prompt and generated tokens per second.
    pub total_tok_s: f64,
    /// Time to first token (all requests arrive at the start).
    pub ttft_ms: Percentiles,
    /// Time per output token after the first.
    pub tpot_ms: Percentiles,
    /// Tokens stored / token capacity of allocated blocks, averaged over time.
    pub kv_block_utilization: f64,
    /// Preemptions.
    pub preemptions: u64,
    /// Prompt tokens served from the prefix cache.
    pub prefix_cache_hit_tokens: u64,
    /// Engine steps (forward passes) taken. Where a step's time hardly depends on its batch
    /// (a GPU decoding a small model), throughput ratios between modes follow their step counts.
    pub steps: usize,
    /// Tokens drafted by speculative decoding and checked by the model (0 when off).
    pub drafted_tokens: u64,
    /// Drafted tokens accepted.
    pub accepted_tokens: u64,
}

#[derive(Default)]
struct Track {
    useful: usize,
    want: usize,
    first_ms: Option<f64>,
    last_ms: f64,
}

/// Runs the workload in `mode` (batches of `max_batch` for the static modes); `progress` sees
/// (useful tokens so far, useful tokens in all).
pub fn run(
    core: &mut EngineCore,
    reqs: &[BenchRequest],
    mode: Mode,
    max_batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report> {
    if !core.reset() {
        return Err(EngineError::Invalid("the engine is busy".into()));
    }
    let greedy = SamplingParams { temperature: 0.0, ..Default::default() };
    let total: usize = reqs.iter().map(|r| r.max_tokens).sum();
    let mut tracks: HashMap<RequestId, Track> = HashMap::new();
    let (mut util_weighted, mut util_time) = (0.0, 0.0);
    let mut steps = 0usize;
    let t0 = Instant::now();
    let groups: Vec<&[BenchRequest]> = match mode {
        Mode::Inflight => vec![reqs],
        Mode::Static | Mode::StaticCompact => reqs.chunks(max_batch.max(1)).collect(),
    };
    let mut done = 0;
    for group in groups {
        let longest = group.iter().map(|r| r.max_tokens).max().unwrap_or(1);
        for r in group {
            // Static batching pads every member to the longest output of its batch (never past
            // the context).
            let room = core.max_len().saturating_sub(r.prompt.len());
            let max_tokens = if mode == Mode::Static { longest.min(room).max(r.max_tokens) } else { r.max_tokens };
            let req = Request::new(r.prompt.clone(), greedy.clone(), max_tokens)?
                .with_ignore_eos(r.stop_ids.is_empty())
                .with_stop_ids(r.stop_ids.clone());
            let id = core.add(req).map_err(|e| EngineError::Invalid(e.to_string()))?;
            tracks.insert(id, Track { want: r.max_tokens, ..Track::default() });
        }
        while core.has_work() {
            let ts = Instant::now();
            let events = core.step()?;
            steps += 1;
            let st = core.stats();
            let dt = ts.elapsed().as_secs_f64();
            let cap = (st.blocks_in_use * core.block_size()) as f64;
            if cap > 0.0 {
                util_weighted += dt * (st.kv_tokens as f64 / cap).min(1.0);
                util_time += dt;
            }
            let now = t0.elapsed().as_secs_f64() * 1e3;
            for (id, ev) in events {
                if let (Event::Token { .. }, Some(t)) = (ev, tracks.get_mut(&id)) {
                    if t.useful < t.want {
                        t.useful += 1;
                        t.first_ms.get_or_insert(now);
                        t.last_ms = now;
                        done += 1;
                    }
                }
            }
            progress(done, total);
        }
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let st = core.stats();
    let prompt_tokens: usize = reqs.iter().map(|r| r.prompt.len()).sum();
    let ttft = tracks.values().filter_map(|t| t.first_ms).collect();
    let tpot = tracks
        .values()
        .filter(|t| t.useful > 1)
        .filter_map(|t| t.first_ms.map(|f| (t.last_ms - f) / (t.useful - 1) as f64))
        .collect();
    Ok(Report {
        mode,
        requests: reqs.len(),
        prompt_tokens,
        output_tokens: done,
        wall_s,
        output_tok_s: done as f64 / wall_s,
        total_tok_s: (done + prompt_tokens) as f64 / wall_s,
        ttft_ms: percentiles(ttft),
        tpot_ms: percentiles(tpot),
        kv_block_utilization: if util_time > 0.0 { util_weighted / util_time } else { 0.0 },
        preemptions: st.preemptions,
        prefix_cache_hit_tokens: st.prefix_cache_hit_tokens,
        steps,
        drafted_tokens: st.drafted_tokens,
        accepted_tokens: st.accepted_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_is_long_tailed_and_reproducible() {
        let text: Vec<u32> = (0..1000).collect();
        let a = mixed_workload(&text, 400, 7, 8192);
        assert_eq!(a, mixed_workload(&text, 400, 7, 8192));
        assert!(a.iter().all(|r| (16..=256).contains(&r.prompt.len())));
        let short = a.iter().filter(|r| r.max_tokens <= 32).count();
        let long = a.iter().filter(|r| r.max_tokens >= 384).count();
        assert!((240..=320).contains(&short), "{short} short");
        assert!((5..=40).contains(&long), "{long} long");
        assert!(mixed_workload(&text, 50, 7, 200).iter().all(|r| r.prompt.len() + r.max_tokens <= 200));
    }

    #[test]
    fn percentiles_pick_ranks() {
        let p = percentiles((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p90, p.p99), (51.0, 90.0, 99.0));
    }
}
