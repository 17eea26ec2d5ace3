//! The synchronous heart of the engine: iteration-level (in-flight) scheduling over the paged KV
//! cache. Every step packs the decode tokens of running requests and prefill chunks of waiting
//! ones under a token budget; finished requests leave at once, their blocks go back, and waiting
//! ones take their place. When blocks run out, the latest request is preempted (its KV freed and
//! recomputed later), so the engine never fails for lack of memory.

use std::collections::VecDeque;

use turbine_core::runner::{Logits, ModelRunner, SeqStep};
use turbine_core::sampling::{Sampled, SeqSampler};

use crate::constraint::{Constraint, ConstraintCompiler, TokenMask};
use crate::detok::{Detokenizer, TextStream};
use crate::kv::{block_hash, BlockManager};
use crate::request::{EngineConfig, Event, FinishReason, Request, RequestId, Stats, SubmitError, Usage};
use crate::spec::{DraftRequest, NgramProposer, Proposer};
use crate::{EngineError, Result};

struct Seq {
    id: RequestId,
    /// Prompt, then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose keys and values are in the cache.
    computed: usize,
    blocks: Vec<u32>,
    /// Full blocks registered in the prefix cache, and the hash of the last one.
    registered: usize,
    last_hash: u64,
    cached_tokens: usize,
    sampler: SeqSampler,
    max_tokens: usize,
    ignore_eos: bool,
    stop_ids: Vec<u32>,
    stop: Vec<String>,
    /// Tokens to generate before stop ids and strings count.
    min_tokens: usize,
    /// The output text, decoded incrementally.
    text: TextStream,
    /// Bytes of the output text already sent.
    sent: usize,
    /// Drafted tokens appended to `tokens` for the step being run (speculative decoding); none
    /// outside [`EngineCore::step`].
    drafts: usize,
    /// How many tokens to draft next ([`crate::spec::next_draft_len`]).
    draft_len: usize,
    /// What the output must match (structured outputs).
    constraint: Option<Box<dyn Constraint>>,
}

impl Seq {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Whether stop ids and stop strings may end the request (`min_tokens` reached).
    fn armed(&self) -> bool {
        self.generated() >= self.min_tokens
    }
}

/// A sequence being scored outside the scheduler ([`EngineCore::begin_score`]): its blocks and
/// how far it has been run.
#[derive(Debug)]
#[must_use = "give the blocks back with EngineCore::end_score"]
pub struct ScoreSeq {
    blocks: Vec<u32>,
    len: usize,
    next: usize,
}

/// The scheduler, the block manager and the model runner, stepped by the caller.
pub struct EngineCore {
    detok: Option<Detokenizer>,
    runner: Box<dyn ModelRunner>,
    kv: BlockManager,
    cfg: EngineConfig,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    next_id: RequestId,
    stats: Stats,
    /// Scored sequences open now ([`EngineCore::begin_score`]).
    scoring: usize,
    /// Drafts tokens when `cfg.speculative` is set.
    proposer: Option<Box<dyn Proposer>>,
    /// Compiles requests' constraints (structured outputs).
    constraints: Option<Box<dyn ConstraintCompiler>>,
}

impl EngineCore {
    /// An engine over a runner; the block manager mirrors the runner's KV cache.
    pub fn new(runner: Box<dyn ModelRunner>, cfg: EngineConfig) -> Self {
        let c = runner.cache();
        let kv = BlockManager::new(c.num_blocks, c.block_size);
        EngineCore {
            detok: None,
            runner,
            kv,
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
            stats: Stats::default(),
            scoring: 0,
            proposer: cfg.speculative.map(|_| Box::new(NgramProposer::default()) as Box<dyn Proposer>),
            constraints: None,
        }
    }

    /// Lets requests carry constraints (structured outputs), compiled by `c`.
    pub fn with_constraints(mut self, c: Box<dyn ConstraintCompiler>) -> Self {
        self.set_constraints(c);
        self
    }

    /// [`EngineCore::with_constraints`] on an engine already built.
    pub fn set_constraints(&mut self, c: Box<dyn ConstraintCompiler>) {
        self.constraints = Some(c);
    }

    /// Speculates as `cfg` says, with `p` drafting.
    pub fn with_speculation(mut self, cfg: crate::request::SpecConfig, p: Box<dyn Proposer>) -> Self {
        self.cfg.speculative = Some(cfg);
        self.proposer = Some(p);
        self
    }

    /// Turns speculation on (with the proposer the engine has) or off; only when idle (for
    /// benchmarks that compare both on one loaded model). False, doing nothing, when requests are
    /// in flight or there is no proposer to turn on.
    pub fn set_speculation(&mut self, cfg: Option<crate::request::SpecConfig>) -> bool {
        if self.has_work() || (cfg.is_some() && self.proposer.is_none()) {
            return false;
        }
        self.cfg.speculative = cfg;
        true
    }

    /// Drafts with `p` instead of prompt lookup when speculating (`EngineConfig::speculative`).
    pub fn with_proposer(mut self, p: Box<dyn Proposer>) -> Self {
        self.proposer = Some(p);
        self
    }

    /// The proposer's name while speculation is on (`ngram`, `draft`).
    pub fn speculation(&self) -> Option<&'static str> {
        self.cfg.speculative.and(self.proposer.as_ref()).map(|p| p.name())
    }

    /// Gives the engine a detokenizer: token events then carry text, and stop strings work.
    pub fn with_detokenizer(mut self, d: Detokenizer) -> Self {
        self.detok = Some(d);
        self
    }

    /// The runner (for its spec).
    pub fn runner(&self) -> &dyn ModelRunner {
        self.runner.as_ref()
    }

    /// Longest sequence (prompt + generated) a request may reach.
    pub fn max_len(&self) -> usize {
        self.runner.context_len()
    }

    /// Most tokens one step computes (the token budget, which also sizes prefill chunks).
    pub fn step_tokens(&self) -> usize {
        self.cfg.max_num_tokens.max(1)
    }

    /// Whether any request is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Counters and occupancy.
    pub fn stats(&self) -> Stats {
        Stats {
            waiting: self.waiting.len(),
            running: self.running.len(),
            blocks_in_use: self.kv.in_use(),
            kv_tokens: self.running.iter().map(|s| s.computed).sum(),
            blocks_total: self.kv.num_blocks(),
            draft_blocks_in_use: self.proposer.as_ref().map_or(0, |p| p.blocks_in_use()),
            ..self.stats
        }
    }

    /// Tokens per KV block.
    pub fn block_size(&self) -> usize {
        self.kv.block_size()
    }

    /// Forgets the prefix cache and the counters; only when idle (for benchmarks that compare
    /// runs from the same start). Returns false, doing nothing, if requests are in flight or a
    /// scored sequence is open.
    pub fn reset(&mut self) -> bool {
        if self.has_work() || self.scoring > 0 {
            return false;
        }
        self.kv = BlockManager::new(self.kv.num_blocks(), self.kv.block_size());
        self.stats = Stats::default();
        true
    }

    /// Opens a sequence of `len` tokens for scoring (log-likelihoods, perplexity): its blocks
    /// come from this engine's block manager and go back with [`EngineCore::end_score`]. Only
    /// on an idle engine; fails, taking nothing, when the sequence cannot fit.
    pub fn begin_score(&mut self, len: usize) -> Result<ScoreSeq> {
        if self.has_work() {
            return Err(EngineError::Invalid("the engine is busy: score on an idle engine".into()));
        }
        let max = self.max_len();
        if len > max {
            return Err(EngineError::Invalid(format!("{len} tokens do not fit the context of {max}")));
        }
        let need = len.div_ceil(self.kv.block_size());
        if self.kv.available() < need {
            return Err(EngineError::CacheFull { needed: need, free: self.kv.available() });
        }
        let blocks = (0..need).map(|_| self.kv.allocate().expect("availability checked")).collect();
        self.scoring += 1;
        Ok(ScoreSeq { blocks, len, next: 0 })
    }

    /// Runs the next `tokens` of a scored sequence (they start where the last call ended) and
    /// returns the logits `logits` asks for, `[rows, vocab]` row-major.
    pub fn score_step(&mut self, seq: &mut ScoreSeq, tokens: &[u32], logits: Logits) -> Result<Vec<f32>> {
        if seq.next + tokens.len() > seq.len {
            return Err(EngineError::Invalid(format!(
                "{} more tokens overrun the scored sequence of {} ({} done)",
                tokens.len(),
                seq.len,
                seq.next
            )));
        }
        let vocab = self.runner.spec().vocab;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::Invalid(format!("token id {bad} is outside the vocabulary (0..{vocab})")));
        }
        self.runner.step(&[SeqStep { tokens, start: seq.next, blocks: &seq.blocks, logits }])?;
        seq.next += tokens.len();
        self.stats.steps += 1;
        Ok(self.runner.logits()?)
    }

    /// Closes a scored sequence; its blocks go back.
    pub fn end_score(&mut self, seq: ScoreSeq) {
        self.kv.release(&seq.blocks);
        self.scoring = self.scoring.saturating_sub(1);
    }

    /// Queues a request. Its parameters were checked when it was made ([`Request::new`]); what
    /// depends on this engine is checked here: ids inside the vocabulary, the context and the
    /// cache, stop strings only with a detokenizer, room in the queue.
    pub fn add(&mut self, req: Request) -> Result<RequestId, SubmitError> {
        let vocab = self.runner.spec().vocab;
        if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(SubmitError::Invalid(format!("prompt token id {bad} is outside the vocabulary (0..{vocab})")));
        }
        if !req.stop.is_empty() && self.detok.is_none() {
            return Err(SubmitError::Invalid("stop strings need an engine with a detokenizer".into()));
        }
        let (ctx, cache) = (self.runner.spec().max_positions, self.kv.num_blocks() * self.kv.block_size());
        let total = req.prompt.len() + req.max_tokens;
        for (limit, what) in [(ctx, "model context"), (cache, "KV cache")] {
            if total > limit {
                return Err(SubmitError::TooLong { prompt: req.prompt.len(), max_tokens: req.max_tokens, limit, what });
            }
        }
        if self.waiting.len() >= self.cfg.max_waiting {
            return Err(SubmitError::QueueFull { waiting: self.waiting.len(), limit: self.cfg.max_waiting });
        }
        let constraint = match (&req.constraint, &self.constraints) {
            (None, _) => None,
            (Some(spec), None) => {
                return Err(SubmitError::Invalid(format!(
                    "{} constraints need an engine with a constraint compiler",
                    spec.kind()
                )))
            }
            (Some(spec), Some(c)) => {
                let t0 = std::time::Instant::now();
                let compiled = c.compile(spec).map_err(SubmitError::Invalid)?;
                self.stats.constraint_seconds += t0.elapsed().as_secs_f64();
                self.stats.constrained_requests += 1;
                Some(compiled)
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let mut sampler = SeqSampler::new(req.params);
        sampler.observe_prompt(&req.prompt);
        // A constrained output ends where its constraint is complete (only the end-of-sequence
        // token is then allowed): min_tokens does not hold that back.
        if !req.ignore_eos && req.min_tokens > 0 && req.constraint.is_none() {
            sampler.suppress_until(&req.stop_ids, req.min_tokens);
        }
        self.waiting.push_back(Seq {
            id,
            prompt_len: req.prompt.len(),
            tokens: req.prompt,
            computed: 0,
            blocks: Vec::new(),
            registered: 0,
            last_hash: 0,
            cached_tokens: 0,
            sampler,
            max_tokens: req.max_tokens,
            ignore_eos: req.ignore_eos,
            stop_ids: req.stop_ids,
            stop: req.stop,
            min_tokens: req.min_tokens,
            text: TextStream::default(),
            sent: 0,
            drafts: 0,
            draft_len: self.cfg.speculative.map_or(0, |c| c.draft_tokens),
            constraint,
        });
        Ok(id)
    }

    /// Cancels a request; its blocks are freed at once. Returns its final event, or `None` if no
    /// such request is queued or running.
    pub fn cancel(&mut self, id: RequestId) -> Option<Event> {
        let seq = if let Some(i) = self.running.iter().position(|s| s.id == id) {
            self.running.remove(i)
        } else {
            let i = self.waiting.iter().position(|s| s.id == id)?;
            self.waiting.remove(i)?
        };
        Some(self.finish(seq, FinishReason::Cancelled, None))
    }

    fn finish(&mut self, seq: Seq, reason: FinishReason, error: Option<String>) -> Event {
        self.kv.release(&seq.blocks);
        if let Some(p) = &mut self.proposer {
            p.release(seq.id);
        }
        let usage = Usage {
            prompt_tokens: seq.prompt_len,
            completion_tokens: seq.generated(),
            cached_tokens: seq.cached_tokens,
        };
        let mut seq = seq;
        let text = match &self.detok {
            // A stop string ends the text where it starts; that cut was made when it matched.
            Some(d) if reason != FinishReason::Stop || seq.stop.is_empty() => {
                // What the stream still holds back (an incomplete character) is released now.
                seq.text.update(d, &seq.tokens[seq.prompt_len..], true);
                seq.text.text().get(seq.sent..).unwrap_or_default().to_string()
            }
            _ => String::new(),
        };
        Event::Finished { text, reason, usage, error }
    }

    /// The text a new token releases, and whether a stop string matched (the text then ends
    /// where the stop string begins). Text that could still be the start of a stop string, or an
    /// incomplete character, is held back.
    fn text_delta(&mut self, i: usize) -> (String, bool) {
        let Some(d) = &self.detok else { return (String::new(), false) };
        let s = &mut self.running[i];
        s.text.update(d, &s.tokens[s.prompt_len..], false);
        let text = s.text.text();
        let from = s.sent.min(text.len());
        let longest = s.stop.iter().map(String::len).max().unwrap_or(0);
        // A new match ends in the new text; start early enough to see it whole.
        let mut look = from.saturating_sub(longest);
        while !text.is_char_boundary(look) {
            look -= 1;
        }
        // Stop strings count from `min_tokens` on, and only where they end in new text.
        let armed = s.armed();
        let hit = s
            .stop
            .iter()
            .filter(|_| armed)
            .filter_map(|st| {
                // The earliest start of a match that ends past `from`.
                let mut at = (from + 1).saturating_sub(st.len()).max(look);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text[at..].find(st.as_str()).map(|p| at + p)
            })
            .min();
        if let Some(at) = hit {
            let end = at.max(from);
            let delta = text[from..end].to_string();
            s.sent = end;
            return (delta, true);
        }
        let end = text.len();
        // Hold back the longest end of the text that starts a stop string.
        let hold = s
            .stop
            .iter()
            .flat_map(|st| st.char_indices().skip(1).map(move |(k, _)| &st[..k]))
            .filter(|prefix| text[..end].ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let safe = (end - hold).max(from);
        let delta = text[from..safe].to_string();
        s.sent = safe;
        (delta, false)
    }

    fn preempt(&mut self, mut seq: Seq) {
        Self::drop_drafts(&mut seq);
        self.kv.release(&seq.blocks);
        seq.blocks.clear();
        seq.computed = 0;
        seq.registered = 0;
        seq.last_hash = 0;
        self.stats.preemptions += 1;
        self.waiting.push_front(seq);
    }

    /// Takes a step's drafted tokens back off the end of `seq.tokens`.
    fn drop_drafts(seq: &mut Seq) {
        seq.tokens.truncate(seq.tokens.len() - seq.drafts);
        seq.drafts = 0;
    }

    /// Drafts for the running requests, by index: the proposer's guesses for those decoding
    /// (one token left to compute), no longer than each may still grow or than a step holds, and
    /// cut at the first id outside the vocabulary. None while too many requests run.
    fn propose(&mut self) -> Result<Vec<Vec<u32>>> {
        let mut drafts = vec![Vec::new(); self.running.len()];
        let (Some(cfg), Some(proposer)) = (self.cfg.speculative, self.proposer.as_mut()) else { return Ok(drafts) };
        if self.running.len() >= cfg.max_running {
            return Ok(drafts);
        }
        let max_len = self.runner.context_len();
        let step = self.cfg.max_num_tokens.max(1);
        let (mut who, mut asks) = (Vec::new(), Vec::new());
        for (i, s) in self.running.iter().enumerate() {
            // The last verified row gives one token more than the drafts it accepts.
            let left = s.max_tokens.saturating_sub(s.generated()).min(max_len.saturating_sub(s.tokens.len()));
            let max = s.draft_len.min(left.saturating_sub(1)).min(step - 1);
            if s.tokens.len() - s.computed == 1 && max > 0 && s.constraint.is_none() {
                who.push((i, max));
                asks.push(DraftRequest { id: s.id, tokens: &s.tokens, max });
            }
        }
        if asks.is_empty() {
            return Ok(drafts);
        }
        let vocab = self.runner.spec().vocab;
        for ((i, max), mut d) in who.into_iter().zip(proposer.propose(&asks)?) {
            let valid = d.iter().take_while(|&&t| (t as usize) < vocab).count();
            d.truncate(valid.min(max));
            drafts[i] = d;
        }
        Ok(drafts)
    }

    /// Gives `seq` blocks for `tokens` tokens; false (taking nothing) if there are not enough.
    fn grow(kv: &mut BlockManager, seq: &mut Seq, tokens: usize) -> bool {
        let need = tokens.div_ceil(kv.block_size()).saturating_sub(seq.blocks.len());
        if kv.available() < need {
            return false;
        }
        seq.blocks.extend((0..need).map(|_| kv.allocate().expect("availability checked")));
        true
    }

    /// Plans one step: `(index into running, tokens to compute)`.
    fn schedule(&mut self) -> Result<Vec<(usize, usize)>> {
        let mut drafts = self.propose()?;
        let mut budget = self.step_tokens();
        let mut plan = Vec::new();
        let mut i = 0;
        while i < self.running.len() && budget > 0 && plan.len() < self.cfg.max_batch_size {
            let mut drafts = std::mem::take(&mut drafts[i]);
            drafts.truncate(budget - 1);
            let s = &mut self.running[i];
            s.drafts = drafts.len();
            s.tokens.extend(drafts);
            let mut n = (self.running[i].tokens.len() - self.running[i].computed).min(budget);
            let mut want = self.running[i].computed + n;
            if self.running[i].drafts > 0 && !Self::grow(&mut self.kv, &mut self.running[i], want) {
                // Drafts never take blocks another request holds: without them, then.
                Self::drop_drafts(&mut self.running[i]);
                n = 1;
                want = self.running[i].computed + 1;
            }
            while !Self::grow(&mut self.kv, &mut self.running[i], want) {
                if self.running.len() - 1 > i {
                    let victim = self.running.pop().expect("more than one running");
                    self.preempt(victim);
                } else {
                    break;
                }
            }
            if self.running[i].blocks.len() * self.kv.block_size() < want {
                Self::drop_drafts(&mut self.running[i]);
                break;
            }
            plan.push((i, n));
            budget -= n;
            i += 1;
        }
        while budget > 0 && plan.len() < self.cfg.max_batch_size && plan.len() == self.running.len() {
            let Some(mut seq) = self.waiting.pop_front() else { break };
            // Reuse cached full blocks of the prefix; leave at least one token to compute.
            seq.blocks = self.kv.match_prefix(&seq.tokens, seq.tokens.len() - 1);
            seq.computed = seq.blocks.len() * self.kv.block_size();
            seq.registered = seq.blocks.len();
            seq.last_hash = seq.tokens[..seq.computed].chunks_exact(self.kv.block_size()).fold(0, block_hash);
            let n = (seq.tokens.len() - seq.computed).min(budget);
            let want = seq.computed + n;
            if !Self::grow(&mut self.kv, &mut seq, want) {
                // Hold nothing while waiting, or a waiting request could pin the blocks the one
                // ahead of it needs.
                self.kv.release(&seq.blocks);
                seq.blocks.clear();
                seq.computed = 0;
                seq.registered = 0;
                seq.last_hash = 0;
                self.waiting.push_front(seq);
                break;
            }
            if seq.generated() == 0 {
                seq.cached_tokens = seq.computed;
            }
            self.stats.prefix_cache_hit_tokens += seq.computed as u64;
            self.running.push(seq);
            plan.push((self.running.len() - 1, n));
            budget -= n;
        }
        Ok(plan)
    }

    /// Runs one step and returns the events it produced, in request order within the step.
    pub fn step(&mut self) -> Result<Vec<(RequestId, Event)>> {
        // Drafts live only inside a step; a step that failed may have left some.
        for s in &mut self.running {
            Self::drop_drafts(s);
        }
        let plan = self.schedule()?;
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let sampling: Vec<usize> = plan
            .iter()
            .filter(|&&(i, n)| self.running[i].computed + n == self.running[i].tokens.len())
            .map(|p| p.0)
            .collect();
        // Constrained requests' masks depend only on the tokens they have: they are computed on
        // another thread while the model runs the step (off the critical path).
        let mut taken: Vec<(usize, Box<dyn Constraint>)> =
            sampling.iter().filter_map(|&i| self.running[i].constraint.take().map(|c| (i, c))).collect();
        let steps: Vec<SeqStep<'_>> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                let logits = match (s.computed + n == s.tokens.len(), s.drafts) {
                    (false, _) => Logits::None,
                    (true, 0) => Logits::Last,
                    // The last token's row and each draft's: what the model says after each.
                    (true, _) => Logits::All,
                };
                SeqStep { tokens: &s.tokens[s.computed..s.computed + n], start: s.computed, blocks: &s.blocks, logits }
            })
            .collect();
        let runner = &mut self.runner;
        let (ran, masks) = std::thread::scope(|scope| {
            let masks = (!taken.is_empty()).then(|| {
                scope.spawn(|| {
                    let t0 = std::time::Instant::now();
                    // Several constrained requests share the cores the machine has (a few threads,
                    // each a run of requests in order).
                    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
                    let per = taken.len().div_ceil(cores.min(taken.len()));
                    let m: Vec<Result<TokenMask, String>> = std::thread::scope(|inner| {
                        let parts: Vec<_> = taken
                            .chunks_mut(per)
                            .map(|part| {
                                let n = part.len();
                                (
                                    n,
                                    inner.spawn(move || {
                                        part.iter_mut().map(|(_, c)| guarded_mask(c)).collect::<Vec<_>>()
                                    }),
                                )
                            })
                            .collect();
                        // A mask for every request, in order (a part that panicked: an error each).
                        parts
                            .into_iter()
                            .flat_map(|(n, h)| {
                                h.join().unwrap_or_else(|_| vec![Err("the constraint engine panicked".into()); n])
                            })
                            .collect()
                    });
                    (m, t0.elapsed().as_secs_f64())
                })
            });
            let ran = runner.step(&steps);
            (ran, masks.map(|h| h.join()))
        });
        drop(steps);
        let masks = match masks {
            Some(Ok((m, secs))) => {
                self.stats.constraint_seconds += secs;
                m
            }
            Some(Err(_)) => taken.iter().map(|_| Err("the constraint engine panicked".to_string())).collect(),
            None => Vec::new(),
        };
        // Constraints go back to their requests whatever happened.
        let mut broken: Vec<(usize, String)> = Vec::new();
        for ((i, c), m) in taken.into_iter().zip(masks) {
            let s = &mut self.running[i];
            s.constraint = Some(c);
            match m {
                Ok(mask) => s.sampler.set_allowed(Some(mask)),
                Err(e) => {
                    s.sampler.set_allowed(None);
                    broken.push((i, e));
                }
            }
        }
        ran?;
        self.stats.steps += 1;
        // One sampler per logit row: the row after draft j takes the request's sampler as a
        // plain step would find it after drafts 1..=j were chosen (recorded for the penalties,
        // one random number skipped per choice of a sampled request). Each row then draws from
        // the target distribution with the number plain decoding would use at its position, and
        // a draft is kept when the row chose it: rejection sampling against a proposal that puts
        // all its mass on the draft, exact in distribution, and for a seeded request the very
        // tokens plain decoding gives.
        let mut copies: Vec<Vec<SeqSampler>> = sampling
            .iter()
            .map(|&i| {
                let s = &self.running[i];
                let mut at = s.sampler.clone();
                s.tokens[s.tokens.len() - s.drafts..]
                    .iter()
                    .map(|&d| {
                        at = at.after(d);
                        at.clone()
                    })
                    .collect()
            })
            .collect();
        let sampled = if sampling.is_empty() {
            Vec::new()
        } else {
            let mut samplers: Vec<&mut SeqSampler> = Vec::with_capacity(sampling.len());
            let mut rest: &mut [Seq] = &mut self.running;
            let mut base = 0;
            for (&i, extra) in sampling.iter().zip(copies.iter_mut()) {
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - base);
                let (seq, tail) = tail.split_first_mut().expect("index in range");
                samplers.push(&mut seq.sampler);
                samplers.extend(extra.iter_mut());
                rest = tail;
                base = i + 1;
            }
            self.runner.sample(&mut samplers)?
        };
        // Each sampling request's tokens: the model's token after its last one and after each
        // accepted draft. Rejected drafts leave `tokens`; their KV positions are overwritten later.
        let mut rows = sampled.into_iter();
        let mut chosen: Vec<Vec<Sampled>> = Vec::with_capacity(sampling.len());
        for (&i, extra) in sampling.iter().zip(copies) {
            let s = &mut self.running[i];
            let mut got: Vec<Sampled> = rows.by_ref().take(1 + s.drafts).collect();
            if s.drafts > 0 {
                let drafts = s.tokens[s.tokens.len() - s.drafts..].to_vec();
                let ids: Vec<u32> = got.iter().map(|t| t.id).collect();
                let a = crate::spec::accepted(&drafts, &ids);
                got.truncate(a + 1);
                // The sampler that has seen the accepted drafts and the token after them.
                if a > 0 {
                    s.sampler = extra.into_iter().nth(a - 1).expect("a sampler per draft");
                }
                self.stats.drafted_tokens += drafts.len() as u64;
                self.stats.accepted_tokens += a as u64;
                self.stats.acceptance[crate::spec::acceptance_bucket(a, drafts.len())] += 1;
                self.stats.acceptance_sum += a as f64 / drafts.len() as f64;
                let max = self.cfg.speculative.map_or(0, |c| c.draft_tokens);
                s.draft_len = crate::spec::next_draft_len(drafts.len(), a, max);
                Self::drop_drafts(s);
            }
            chosen.push(got);
        }
        let bs = self.kv.block_size();
        for &(i, n) in &plan {
            let s = &mut self.running[i];
            // A drafting request computed its last token and the drafts it kept.
            let n = match sampling.iter().position(|&j| j == i) {
                Some(k) if n > 1 && s.computed + n > s.tokens.len() => chosen[k].len(),
                _ => n,
            };
            s.computed += n;
        }
        let max_len = self.max_len();
        let mut events = Vec::new();
        let mut done = Vec::new();
        // Requests whose constraint failed (its mask, above, or a token, below), with why.
        let mut constraint_errors = broken;
        for (&i, toks) in sampling.iter().zip(chosen) {
            if constraint_errors.iter().any(|b| b.0 == i) {
                done.push((i, FinishReason::Error));
                continue;
            }
            for tok in toks {
                if !tok.logprob.is_finite() {
                    // NaN or infinite logits: the token means nothing; this request ends here and
                    // the others of the step, whose rows are their own, go on.
                    done.push((i, FinishReason::Error));
                    break;
                }
                let id = tok.id;
                self.running[i].tokens.push(id);
                let (text, stopped) = self.text_delta(i);
                let s = &mut self.running[i];
                events.push((s.id, Event::Token { token: tok, text }));
                self.stats.generated_tokens += 1;
                let is_stop_id = s.armed() && !s.ignore_eos && s.stop_ids.contains(&id);
                // The constraint follows every token but an end-of-sequence one (which it allows
                // only where the output is complete: it ends a constrained request even with
                // `ignore_eos`); a complete output ends the request.
                let mut complete = false;
                if s.constraint.is_some() && s.stop_ids.contains(&id) {
                    complete = true;
                } else if let Some(c) = s.constraint.as_mut() {
                    let t0 = std::time::Instant::now();
                    if let Err(e) = c.consume(id) {
                        constraint_errors.push((i, e));
                        done.push((i, FinishReason::Error));
                        break;
                    }
                    complete = c.finished();
                    self.stats.constraint_seconds += t0.elapsed().as_secs_f64();
                }
                let reason = if stopped || is_stop_id || complete {
                    Some(FinishReason::Stop)
                } else if s.generated() >= s.max_tokens || s.tokens.len() >= max_len {
                    Some(FinishReason::Length)
                } else {
                    None
                };
                if let Some(r) = reason {
                    done.push((i, r));
                    break;
                }
            }
            // Blocks past the sequence (held for rejected drafts) go back to the pool.
            let s = &mut self.running[i];
            let keep = s.tokens.len().div_ceil(bs).max(s.registered);
            if s.blocks.len() > keep {
                self.kv.release(&s.blocks[keep..]);
                s.blocks.truncate(keep);
            }
        }
        // Full blocks of computed tokens enter the prefix cache (a drafting request's tokens are
        // known only now; one that finished early may hold fewer tokens than it computed).
        for &(i, _) in &plan {
            let s = &mut self.running[i];
            while s.registered < s.computed.min(s.tokens.len()) / bs {
                let b = s.registered;
                s.last_hash = block_hash(s.last_hash, &s.tokens[b * bs..(b + 1) * bs]);
                self.kv.register(s.blocks[b], s.last_hash);
                s.registered += 1;
            }
        }
        for &(i, r) in done.iter().rev() {
            let seq = self.running.remove(i);
            let id = seq.id;
            let error = (r == FinishReason::Error).then(|| match constraint_errors.iter().find(|e| e.0 == i) {
                Some((_, e)) => format!("the output constraint failed: {e}"),
                None => non_finite(seq.generated()),
            });
            let ev = self.finish(seq, r, error);
            events.push((id, ev));
        }
        Ok(events)
    }
}

/// A constraint's next mask; a panic inside the constraint engine is that request's error, not
/// the engine's.
fn guarded_mask(c: &mut Box<dyn Constraint>) -> std::result::Result<TokenMask, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.allowed()))
        .unwrap_or_else(|_| Err("the constraint engine panicked".into()))
}

/// The message of a request stopped at output token `index` by non-finite logits.
pub fn non_finite(index: usize) -> String {
    format!(
        "the model produced non-finite logits (NaN or infinity) for output token {index}; the request was stopped \
         (the weights or the numerics of this model and precision overflow on this input)"
    )
}
