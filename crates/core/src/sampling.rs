//! Host-side sampling: greedy, temperature, top-k, top-p, per-sequence seeded streams, and
//! log-probabilities of the raw logits.

use crate::{Error, Result};

/// How one sequence picks its tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the `k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; in (0, 1].
    pub top_p: f32,
    /// Seed of this sequence's random stream; `None` draws one from the clock.
    pub seed: Option<u64>,
    /// How many top log-probabilities to report per token (0: only the chosen token's).
    pub logprobs: usize,
    /// Drop tokens whose probability is below `min_p` times the most likely one's; 0 is off.
    pub min_p: f32,
    /// Divides positive logits (multiplies negative ones) of tokens already in the prompt or the
    /// output, as transformers does; 1 is off.
    pub repetition_penalty: f32,
    /// Subtracted from the logits of tokens already generated (OpenAI `presence_penalty`).
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logits of generated tokens (OpenAI `frequency_penalty`).
    pub frequency_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: None,
            logprobs: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

impl SamplingParams {
    /// Checks ranges; the error names the offending parameter.
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(|e| Error::invalid("sampling", e.message))
    }

    /// Checks ranges; the error names the parameter as the OpenAI API spells it (`top_p`) and
    /// says what is wrong in words a CLI user reads too (`top-p must be in (0, 1]`).
    pub fn check(&self) -> std::result::Result<(), InvalidParam> {
        let bad = |param, message| Err(InvalidParam { param, message });
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", format!("temperature must be >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", format!("min-p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(
                "repetition_penalty",
                format!("repetition penalty must be > 0, got {}", self.repetition_penalty),
            );
        }
        for (param, name, v) in [
            ("presence_penalty", "presence", self.presence_penalty),
            ("frequency_penalty", "frequency", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(param, format!("{name} penalty must be in [-2, 2], got {v}"));
            }
        }
        Ok(())
    }
}

/// A request parameter out of range: which one, as the OpenAI API names it, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidParam {
    /// The parameter (`temperature`, `top_p`, `max_tokens`, …).
    pub param: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// A small, fast, seedable generator (xoshiro256**, seeded through splitmix64).
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose stream depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng { s: [next(), next(), next(), next()] }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A sequence's sampling state: its parameters, its own random stream, and the token counts the
/// penalties need.
#[derive(Debug, Clone)]
pub struct SeqSampler {
    /// Parameters.
    pub params: SamplingParams,
    rng: Rng,
    /// Tokens of the prompt (for the repetition penalty).
    prompt: std::collections::HashSet<u32>,
    /// Generated tokens and how often.
    generated: std::collections::HashMap<u32, u32>,
    /// Tokens chosen so far.
    count: usize,
    /// Tokens that cannot be chosen while fewer than `min_tokens` have been.
    suppress: Vec<u32>,
    min_tokens: usize,
    /// Tokens allowed for the next choice (one bit per id), when constrained.
    allowed: Option<Vec<u32>>,
}

impl SeqSampler {
    /// A sampler; the stream is seeded from `params.seed` or the clock.
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
        });
        SeqSampler {
            params,
            rng: Rng::new(seed),
            prompt: Default::default(),
            generated: Default::default(),
            count: 0,
            suppress: Vec::new(),
            min_tokens: 0,
            allowed: None,
        }
    }

    /// Only the tokens whose bit is set (bit `i % 32` of word `i / 32`) may be chosen next
    /// (structured outputs); `None` lifts it. Their logits count as −∞ for the choice; reported
    /// log-probabilities stay those of the raw logits.
    pub fn set_allowed(&mut self, mask: Option<Vec<u32>>) {
        self.allowed = mask;
    }

    /// `ids` (the stop ids: EOS) cannot be chosen until `min_tokens` tokens have been (vLLM's
    /// `min_tokens`): their logits count as −∞ for the choice; reported log-probabilities stay
    /// those of the raw logits.
    pub fn suppress_until(&mut self, ids: &[u32], min_tokens: usize) {
        self.suppress = ids.to_vec();
        self.min_tokens = min_tokens;
    }

    /// Whether the stop ids are held back for the next choice (`min_tokens` not reached).
    fn holding_stop_ids(&self) -> bool {
        self.count < self.min_tokens && !self.suppress.is_empty()
    }

    /// Whether some tokens cannot be chosen next (held-back stop ids, or a constraint's mask).
    fn restricted(&self) -> bool {
        self.holding_stop_ids() || self.allowed.is_some()
    }

    /// The logits the choice is made from, when they differ from the row: penalties applied,
    /// then the tokens that cannot be chosen set to −∞.
    fn adjust(&self, row: &[f32]) -> Option<Vec<f32>> {
        if !self.penalised() && !self.restricted() {
            return None;
        }
        let mut w = if self.penalised() { self.penalise(row) } else { row.to_vec() };
        if self.holding_stop_ids() {
            for &t in &self.suppress {
                if let Some(v) = w.get_mut(t as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        if let Some(mask) = &self.allowed {
            for (i, v) in w.iter_mut().enumerate() {
                if mask.get(i / 32).is_none_or(|m| m >> (i % 32) & 1 == 0) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        Some(w)
    }

    /// Records the prompt (the repetition penalty covers it).
    pub fn observe_prompt(&mut self, ids: &[u32]) {
        if self.params.repetition_penalty != 1.0 {
            self.prompt.extend(ids.iter().copied());
        }
    }

    /// Whether this sequence takes the most likely raw logit and asks for nothing but its
    /// log-probability (greedy, no penalties, no top log-probabilities): what a device can sample
    /// itself with an argmax and a log-sum-exp, then report with [`SeqSampler::record`].
    pub fn plain_greedy(&self) -> bool {
        !self.draws() && !self.penalised() && !self.restricted() && self.params.logprobs == 0
    }

    /// Records a token chosen outside [`sample_rows`] (by a device's greedy sampler).
    pub fn record(&mut self, id: u32) {
        *self.generated.entry(id).or_insert(0) += 1;
        self.count += 1;
    }

    /// Whether choosing a token takes a number from this sequence's random stream (temperature
    /// sampling; a greedy sequence takes none). Every such choice takes exactly one, on the host
    /// and on a device alike.
    pub fn draws(&self) -> bool {
        let p = &self.params;
        p.temperature != 0.0 && p.top_k != 1
    }

    /// This sampler as it will be once `id` has been chosen: `id` recorded for the penalties and,
    /// when the sequence draws, the one random number its choice takes skipped. Speculative
    /// decoding gives the row after a drafted token this state, so that the row samples exactly
    /// as a plain step after that token would.
    pub fn after(&self, id: u32) -> SeqSampler {
        let mut next = self.clone();
        if next.draws() {
            next.rng.next_f64();
        }
        next.record(id);
        next
    }

    fn penalised(&self) -> bool {
        let p = &self.params;
        p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0
    }

    /// The logits after the penalties.
    fn penalise(&self, row: &[f32]) -> Vec<f32> {
        let p = &self.params;
        let mut out = row.to_vec();
        if p.repetition_penalty != 1.0 {
            for &t in self.prompt.iter().chain(self.generated.keys()) {
                if let Some(v) = out.get_mut(t as usize) {
                    *v = if *v > 0.0 { *v / p.repetition_penalty } else { *v * p.repetition_penalty };
                }
            }
        }
        for (&t, &n) in &self.generated {
            if let Some(v) = out.get_mut(t as usize) {
                *v -= p.presence_penalty + p.frequency_penalty * n as f32;
            }
        }
        out
    }
}

/// How a device can sample a sequence's row without handing the whole row back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePlan {
    /// The most likely token ([`SeqSampler::plain_greedy`] or greedy with top log-probabilities).
    Greedy,
    /// From the row's largest `k` logits ([`RowSummary`]): top-k, top-p (unless the nucleus is
    /// larger than `k` tokens, see [`SeqSampler::sample_summary`]).
    Summary(usize),
    /// Temperature over the whole vocabulary: the device walks the row's cumulative weights in
    /// token order with the sequence's uniform number ([`SeqSampler::uniform`]), as the host
    /// does; `k` largest logits are still needed for the top log-probabilities.
    Cdf(usize),
    /// Only the host can: penalties, or a top-k above what the device returns.
    Host,
}

/// A row of logits as a device summarises it: its largest entries and sums over the row.
#[derive(Debug, Clone, Copy)]
pub struct RowSummary<'a> {
    /// The largest logits as `(token, logit)`, largest first (ties: lower token first).
    pub top: &'a [(u32, f32)],
    /// `log Σ exp(logit)` over the row.
    pub lse: f64,
    /// `Σ exp((logit − max) / T)` over the row at the sequence's temperature.
    pub mass: f64,
}

impl SeqSampler {
    /// How a device that can return up to `limit` of a row's largest logits samples this
    /// sequence over a vocabulary of `vocab` tokens.
    pub fn device_plan(&self, vocab: usize, limit: usize) -> DevicePlan {
        let p = &self.params;
        let shown = p.logprobs.max(1);
        if self.penalised() || self.restricted() || shown > limit {
            return DevicePlan::Host;
        }
        if !self.draws() {
            return DevicePlan::Greedy;
        }
        match p.top_k {
            k if k > 0 && k < vocab => {
                if k <= limit {
                    DevicePlan::Summary(k.max(shown))
                } else {
                    DevicePlan::Host
                }
            }
            _ if p.top_p < 1.0 => DevicePlan::Summary(limit),
            _ => DevicePlan::Cdf(shown),
        }
    }

    /// The next uniform number of this sequence's stream (what a [`DevicePlan::Cdf`] draw uses,
    /// as the host draw would).
    pub fn uniform(&mut self) -> f64 {
        self.rng.next_f64()
    }

    /// Samples from a device's summary of the row as the host would from the whole row (the same
    /// candidates, weights and uniform number). `None` when the summary is too short for this
    /// draw (a nucleus or min-p set beyond its tokens): nothing has changed then, and the whole
    /// row must be sampled on the host.
    pub fn sample_summary(&mut self, s: &RowSummary<'_>) -> Option<Sampled> {
        let p = &self.params;
        if s.top.len() < p.logprobs {
            // Too few candidates to list the alternatives asked for.
            return None;
        }
        let id = if !self.draws() {
            s.top.first()?.0
        } else {
            let k = if p.top_k > 0 { p.top_k.min(s.top.len()) } else { s.top.len() };
            let whole = p.top_k > 0 && p.top_k <= s.top.len();
            let mut rng = self.rng.clone();
            let id = draw_from(&s.top[..k], (!whole).then_some(s.mass), p, &mut rng)?;
            self.rng = rng;
            id
        };
        let logit = s.top.iter().find(|t| t.0 == id).map(|t| t.1)?;
        Some(self.finish(id, logit, s))
    }

    /// Records a token a device chose ([`DevicePlan::Cdf`]) and reports it with the summary's
    /// log-probabilities.
    pub fn finish(&mut self, id: u32, logit: f32, s: &RowSummary<'_>) -> Sampled {
        self.record(id);
        let lp = |v: f32| (v as f64 - s.lse) as f32;
        let top = s.top.iter().take(self.params.logprobs).map(|&(i, v)| (i, lp(v))).collect();
        Sampled { id, logprob: lp(logit), top }
    }
}

/// One sampled token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The token id.
    pub id: u32,
    /// Its log-probability under the raw logits (log-softmax before any sampling transform).
    pub logprob: f32,
    /// The `params.logprobs` most likely tokens and their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Samples each row of `logits` (`[seqs.len(), vocab]`, row-major) with its sequence's sampler.
pub fn sample_rows(logits: &[f32], vocab: usize, seqs: &mut [&mut SeqSampler]) -> Result<Vec<Sampled>> {
    if vocab == 0 || logits.len() != vocab * seqs.len() {
        return Err(Error::invalid(
            "sample",
            format!("{} logits for {} sequences of vocabulary {vocab}", logits.len(), seqs.len()),
        ));
    }
    Ok(logits.chunks_exact(vocab).zip(seqs.iter_mut()).map(|(row, s)| sample_one(row, s)).collect())
}

/// `log(sum(exp(x)))`, accumulated in f64.
pub fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln()
}

/// The `n` largest entries as `(index, value)`, largest first (ties: lower index first).
pub fn top_n(x: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..x.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| x[*b as usize].total_cmp(&x[*a as usize]).then(a.cmp(b));
    let n = n.min(x.len());
    if n == 0 {
        return Vec::new();
    }
    if n < idx.len() {
        idx.select_nth_unstable_by(n - 1, cmp);
        idx.truncate(n);
    }
    idx.sort_unstable_by(cmp);
    idx.into_iter().map(|i| (i, x[i as usize])).collect()
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn sample_one(row: &[f32], s: &mut SeqSampler) -> Sampled {
    let adjusted = s.adjust(row);
    let work = adjusted.as_deref().unwrap_or(row);
    let id = if s.draws() { draw(work, &s.params, &mut s.rng) } else { argmax(work) };
    s.record(id);
    let p = &s.params;
    let lse = log_sum_exp(row);
    let lp = |v: f32| (v as f64 - lse) as f32;
    let top = top_n(row, p.logprobs).into_iter().map(|(i, v)| (i, lp(v))).collect();
    Sampled { id, logprob: lp(row[id as usize]), top }
}

fn draw(row: &[f32], p: &SamplingParams, rng: &mut Rng) -> u32 {
    // Candidates, most likely first: all tokens, or the top k.
    let cand: Vec<(u32, f32)> = if p.top_k > 0 && p.top_k < row.len() {
        top_n(row, p.top_k)
    } else {
        let mut all: Vec<(u32, f32)> = row.iter().copied().enumerate().map(|(i, v)| (i as u32, v)).collect();
        if p.top_p < 1.0 {
            all.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        all
    };
    draw_from(&cand, None, p, rng).unwrap_or(cand[0].0)
}

/// Draws from `cand` (most likely first when top-p applies). `mass`: the candidates are the head
/// of a longer sorted row whose weights sum to `mass` (`Σ exp((v − max) / T)`); `None` is
/// returned when the draw needs tokens beyond them (the random stream has then advanced).
fn draw_from(cand: &[(u32, f32)], mass: Option<f64>, p: &SamplingParams, rng: &mut Rng) -> Option<u32> {
    let inv_t = 1.0 / p.temperature as f64;
    let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut w: Vec<f64> = cand.iter().map(|c| ((c.1 as f64 - max) * inv_t).exp()).collect();
    if p.min_p > 0.0 {
        // The most likely candidate has weight 1 (its logit is the maximum).
        for wi in w.iter_mut() {
            if *wi < p.min_p as f64 {
                *wi = 0.0;
            }
        }
    }
    let listed: f64 = w.iter().sum();
    let total = match mass {
        // The tokens beyond the list weigh nothing under min-p when the last listed one does not.
        Some(_) if p.min_p > 0.0 && w.last().is_some_and(|&l| l == 0.0) => listed,
        Some(_) if p.min_p > 0.0 || p.top_p >= 1.0 => return None,
        Some(m) => m.max(listed),
        None => listed,
    };
    if p.top_p < 1.0 {
        // `cand` is sorted: keep the shortest prefix whose mass reaches top_p.
        let mut acc = 0.0;
        let mut keep = None;
        for (i, &wi) in w.iter().enumerate() {
            acc += wi / total;
            if acc >= p.top_p as f64 {
                keep = Some(i + 1);
                break;
            }
        }
        match (keep, mass) {
            (Some(k), _) => w.truncate(k),
            (None, Some(_)) if total > listed => return None,
            (None, _) => {}
        }
    }
    let total: f64 = w.iter().sum();
    let mut u = rng.next_f64() * total;
    for (i, &wi) in w.iter().enumerate() {
        if u < wi {
            return Some(cand[i].0);
        }
        u -= wi;
    }
    w.len().checked_sub(1).map(|i| cand[i].0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device's greedy sample, recorded, leaves the sampler where the host sampler would.
    #[test]
    fn plain_greedy_and_record_match_the_host_sampler() {
        let greedy = SeqSampler::new(SamplingParams::default());
        assert!(greedy.plain_greedy());
        let with = |p: SamplingParams| SeqSampler::new(p).plain_greedy();
        assert!(!with(SamplingParams { temperature: 0.7, ..Default::default() }));
        assert!(!with(SamplingParams { logprobs: 2, ..Default::default() }));
        assert!(!with(SamplingParams { frequency_penalty: 0.5, ..Default::default() }));
        let row = [0.5f32, 2.0, -1.0, 2.0];
        let p = SamplingParams { frequency_penalty: 1.0, ..Default::default() };
        let (mut host, mut device) = (SeqSampler::new(p.clone()), SeqSampler::new(p));
        let got = sample_rows(&row, 4, &mut [&mut host]).unwrap()[0].id;
        device.record(got);
        // Next step: the penalised token loses in both.
        assert_eq!(
            sample_rows(&row, 4, &mut [&mut host]).unwrap()[0].id,
            sample_rows(&row, 4, &mut [&mut device]).unwrap()[0].id
        );
    }

    fn sampler(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SeqSampler {
        SeqSampler::new(SamplingParams {
            temperature,
            top_k,
            top_p,
            seed: Some(seed),
            logprobs: 2,
            ..Default::default()
        })
    }

    #[test]
    fn greedy_and_logprobs() {
        let row = [1.0f32, 3.0, 2.0];
        let out = sample_rows(&row, 3, &mut [&mut sampler(0.0, 0, 1.0, 0)]).unwrap();
        assert_eq!(out[0].id, 1);
        let lse = (1f64.exp() + 3f64.exp() + 2f64.exp()).ln();
        assert!((out[0].logprob as f64 - (3.0 - lse)).abs() < 1e-6);
        assert_eq!(out[0].top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn seeded_streams_repeat_and_respect_top_k() {
        let row: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s0 = sampler(1.0, 5, 1.0, seed);
            let mut s = [&mut s0];
            (0..64).map(|_| sample_rows(&row, 50, &mut s).unwrap()[0].id).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let allowed: Vec<u32> = top_n(&row, 5).iter().map(|t| t.0).collect();
        assert!(run(7).iter().all(|id| allowed.contains(id)));
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let row = [0.5f32, 4.0, 3.9, -1.0];
        let mut s0 = sampler(2.0, 0, 1e-6, 3);
        let mut s = [&mut s0];
        for _ in 0..20 {
            assert_eq!(sample_rows(&row, 4, &mut s).unwrap()[0].id, 1);
        }
    }

    #[test]
    fn penalties_and_min_p() {
        let row = [2.0f32, 1.9, -1.0, 0.5];
        // Greedy would pick 0; a strong frequency penalty on 0 moves it to 1 after one pick.
        let mut s0 = SeqSampler::new(SamplingParams { frequency_penalty: 1.0, ..Default::default() });
        let ids: Vec<u32> = (0..2).map(|_| sample_rows(&row, 4, &mut [&mut s0]).unwrap()[0].id).collect();
        assert_eq!(ids, vec![0, 1]);
        // Raw logprobs are reported whatever the penalties.
        let lse = log_sum_exp(&row);
        let out = sample_rows(&row, 4, &mut [&mut s0]).unwrap();
        assert!((out[0].logprob as f64 - (row[out[0].id as usize] as f64 - lse)).abs() < 1e-6);
        // Repetition penalty over the prompt: token 0 (positive logit) is divided by 3.
        let mut s1 = SeqSampler::new(SamplingParams { repetition_penalty: 3.0, ..Default::default() });
        s1.observe_prompt(&[0]);
        assert_eq!(sample_rows(&row, 4, &mut [&mut s1]).unwrap()[0].id, 1);
        // min-p 0.5 at temperature 1 keeps only tokens within ln 2 of the best: 0 and 1.
        let mut s2 =
            SeqSampler::new(SamplingParams { temperature: 1.0, min_p: 0.5, seed: Some(1), ..Default::default() });
        for _ in 0..50 {
            assert!(sample_rows(&row, 4, &mut [&mut s2]).unwrap()[0].id <= 1);
        }
    }

    /// What a device computes from a row: its `k` largest entries, log-sum-exp and weight sum at
    /// `temperature`.
    fn summarise(row: &[f32], k: usize, temperature: f32) -> (Vec<(u32, f32)>, f64, f64) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let inv_t = if temperature > 0.0 { 1.0 / temperature as f64 } else { 1.0 };
        let mass = row.iter().map(|&v| ((v as f64 - max) * inv_t).exp()).sum();
        (top_n(row, k), log_sum_exp(row), mass)
    }

    /// A device that returns `limit` candidates and the row's sums (emulated here from the whole
    /// row) samples what the host samples from the whole row, draw after draw, with the same
    /// seed, falling back to the whole row exactly when the summary is too short.
    #[test]
    fn summaries_sample_as_the_whole_row_does() {
        let mut rng = Rng::new(5);
        let row: Vec<f32> = (0..300).map(|_| (rng.next_f64() * 8.0 - 4.0) as f32).collect();
        let vocab = row.len();
        let limit = 16;
        let cases = [
            (0.8, 5, 1.0, 0.0, 0),
            (1.3, 12, 0.9, 0.0, 3),
            (0.7, 0, 0.5, 0.0, 0),
            (1.0, 0, 0.95, 0.0, 2),
            (0.9, 0, 0.9, 0.3, 0),
            (1.0, 0, 1.0, 0.0, 4),
            (0.0, 0, 1.0, 0.0, 5),
        ];
        let mut fell_back = 0;
        for (temperature, top_k, top_p, min_p, logprobs) in cases {
            let params =
                SamplingParams { temperature, top_k, top_p, min_p, logprobs, seed: Some(11), ..Default::default() };
            let (mut host, mut dev) = (SeqSampler::new(params.clone()), SeqSampler::new(params));
            let plan = dev.device_plan(vocab, limit);
            for _ in 0..40 {
                let want = sample_rows(&row, vocab, &mut [&mut host]).unwrap().remove(0);
                let k = match plan {
                    DevicePlan::Summary(k) | DevicePlan::Cdf(k) => k,
                    DevicePlan::Greedy => logprobs.max(1),
                    DevicePlan::Host => unreachable!("no penalties here"),
                };
                let (top, lse, mass) = summarise(&row, k, temperature);
                let s = RowSummary { top: &top, lse, mass };
                let got = match plan {
                    DevicePlan::Cdf(_) => {
                        // The device's walk over the cumulative weights in token order.
                        let u = dev.uniform();
                        let max = top[0].1 as f64;
                        let w: Vec<f64> = row.iter().map(|&v| ((v as f64 - max) / temperature as f64).exp()).collect();
                        let mut target = u * w.iter().sum::<f64>();
                        let id = w.iter().position(|&wi| {
                            let hit = target < wi;
                            target -= wi;
                            hit
                        });
                        let id = id.unwrap() as u32;
                        dev.finish(id, row[id as usize], &s)
                    }
                    _ => match dev.sample_summary(&s) {
                        Some(got) => got,
                        None => {
                            fell_back += 1;
                            sample_rows(&row, vocab, &mut [&mut dev]).unwrap().remove(0)
                        }
                    },
                };
                assert_eq!(got.id, want.id, "{temperature} {top_k} {top_p} {min_p}");
                assert!((got.logprob - want.logprob).abs() < 1e-5);
                assert_eq!(
                    got.top.iter().map(|t| t.0).collect::<Vec<_>>(),
                    want.top.iter().map(|t| t.0).collect::<Vec<_>>()
                );
            }
        }
        // Top-p 0.95 over 300 spread logits needs more than 16 tokens: the host took over.
        assert!(fell_back > 0);
        let pen = SeqSampler::new(SamplingParams { temperature: 1.0, presence_penalty: 0.5, ..Default::default() });
        assert_eq!(pen.device_plan(vocab, limit), DevicePlan::Host);
        let big_k = SeqSampler::new(SamplingParams { temperature: 1.0, top_k: 100, ..Default::default() });
        assert_eq!(big_k.device_plan(vocab, limit), DevicePlan::Host);
        // A greedy row asking for 3 alternatives from a summary of 1 candidate: nothing drawn.
        let mut three = SeqSampler::new(SamplingParams { logprobs: 3, ..Default::default() });
        let (top, lse, mass) = summarise(&row, 1, 0.0);
        assert!(three.sample_summary(&RowSummary { top: &top, lse, mass }).is_none());
        let (top, lse, mass) = summarise(&row, 3, 0.0);
        assert_eq!(three.sample_summary(&RowSummary { top: &top, lse, mass }).unwrap().top.len(), 3);
    }

    #[test]
    fn a_sampler_after_a_token_samples_as_the_one_that_chose_it() {
        let rows: Vec<f32> = (0..40).map(|i| ((i * 7919) % 13) as f32 * 0.3).collect();
        for params in [
            SamplingParams { temperature: 0.9, seed: Some(3), ..Default::default() },
            SamplingParams { temperature: 1.0, top_k: 5, frequency_penalty: 0.4, seed: Some(8), ..Default::default() },
            SamplingParams { temperature: 0.0, repetition_penalty: 1.3, ..Default::default() },
        ] {
            let mut chose = SeqSampler::new(params);
            let mut skipped = chose.clone();
            // Three steps: the first row's choice, recorded by `after`, then the same rows.
            for row in rows.chunks_exact(20).chain(rows.chunks_exact(20)) {
                let first = sample_rows(row, 20, &mut [&mut chose]).unwrap();
                skipped = skipped.after(first[0].id);
                let next_a = sample_rows(&rows[..20], 20, &mut [&mut chose]).unwrap();
                let next_b = sample_rows(&rows[..20], 20, &mut [&mut skipped]).unwrap();
                assert_eq!(next_a, next_b);
            }
        }
    }

    #[test]
    fn min_tokens_suppresses_the_stop_ids_until_reached() {
        // Token 3 is by far the most likely; it is a stop id, suppressed for two choices.
        let row: Vec<f32> = (0..8).map(|i| if i == 3 { 9.0 } else { i as f32 * 0.1 }).collect();
        for params in [
            SamplingParams { temperature: 0.0, ..Default::default() },
            SamplingParams { temperature: 1.0, seed: Some(4), ..Default::default() },
        ] {
            let mut s = SeqSampler::new(params);
            s.suppress_until(&[3], 2);
            assert!(!s.plain_greedy() && s.device_plan(8, 8) == DevicePlan::Host);
            let mut ids = Vec::new();
            for _ in 0..3 {
                ids.push(sample_rows(&row, 8, &mut [&mut s]).unwrap()[0].id);
            }
            assert!(ids[0] != 3 && ids[1] != 3, "{ids:?}");
            assert_eq!(ids[2], 3);
            // The reported log-probability is the raw row's.
            let lp = sample_rows(&row, 8, &mut [&mut s]).unwrap()[0].logprob;
            assert!((lp as f64 - (9.0 - log_sum_exp(&row))).abs() < 1e-6);
        }
    }

    #[test]
    fn a_mask_keeps_the_choice_among_allowed_tokens() {
        let row: Vec<f32> = (0..40).map(|i| (i % 7) as f32).collect();
        // Tokens 3, 33 and 35 only.
        let mask = vec![1 << 3, (1 << 1) | (1 << 3)];
        for params in [
            SamplingParams { temperature: 0.0, logprobs: 2, ..Default::default() },
            SamplingParams { temperature: 1.5, seed: Some(2), ..Default::default() },
        ] {
            let mut s = SeqSampler::new(params);
            s.set_allowed(Some(mask.clone()));
            assert!(!s.plain_greedy() && s.device_plan(40, 40) == DevicePlan::Host);
            for _ in 0..20 {
                let t = &sample_rows(&row, 40, &mut [&mut s]).unwrap()[0];
                assert!([3, 33, 35].contains(&t.id), "{}", t.id);
                // The raw row's log-probability.
                assert!((t.logprob as f64 - (row[t.id as usize] as f64 - log_sum_exp(&row))).abs() < 1e-6);
            }
            s.set_allowed(None);
            if s.params.temperature == 0.0 {
                // Lifted: the row's maximum again.
                assert_eq!(sample_rows(&row, 40, &mut [&mut s]).unwrap()[0].id, 6);
            }
        }
    }

    #[test]
    fn validation_names_the_parameter() {
        let bad = SamplingParams { temperature: -1.0, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("temperature"));
        let bad = SamplingParams { top_p: 1.5, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("top-p"));
    }
}
