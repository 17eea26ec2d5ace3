//! A draft model as a speculative proposer: a smaller (or lower-precision) model with the
//! target's tokenizer drafts greedily, a few tokens per sequence, batched over the sequences
//! that speculate in a step.
//!
//! The draft model keeps its own paged KV cache. Each sequence's entry remembers the tokens
//! whose keys and values it holds; at the next call only the tokens since the longest common
//! prefix with the sequence are run (the target's accepted tokens and its own next token), so a
//! rejected draft costs nothing more than being overwritten.

use std::collections::HashMap;

use turbine_core::runner::{Logits, ModelRunner, SeqStep};
use turbine_core::sampling::{SamplingParams, SeqSampler};

use crate::kv::BlockManager;
use crate::request::RequestId;
use crate::spec::{DraftRequest, Proposer};
use crate::Result;

/// What the draft model holds for one sequence.
#[derive(Debug, Default)]
struct DraftSeq {
    blocks: Vec<u32>,
    /// Tokens whose keys and values are in `blocks`, from position 0.
    known: Vec<u32>,
}

/// A model that drafts greedily for the target ([`Proposer`]).
pub struct DraftModel {
    runner: Box<dyn ModelRunner>,
    kv: BlockManager,
    seqs: HashMap<RequestId, DraftSeq>,
}

impl DraftModel {
    /// A proposer over `runner` (its KV cache is the draft model's own). The caller makes sure
    /// the tokenizers agree; drafted ids outside the target's vocabulary are dropped by the
    /// engine.
    pub fn new(runner: Box<dyn ModelRunner>) -> Self {
        let c = runner.cache();
        DraftModel { kv: BlockManager::new(c.num_blocks, c.block_size), runner, seqs: HashMap::new() }
    }

    /// The draft model's runner (for its spec).
    pub fn runner(&self) -> &dyn ModelRunner {
        self.runner.as_ref()
    }

    /// Readies `r`'s entry: cuts `known` to what `r.tokens` still agree with (leaving at least
    /// the last token to run) and gives it blocks for the tokens and the drafts it will feed.
    /// False when the sequence does not fit the draft model's context or free blocks.
    fn prepare(&mut self, r: &DraftRequest<'_>) -> bool {
        let bs = self.kv.block_size();
        // Positions with keys and values once drafting is done: the sequence, and every draft
        // but the last (which is never fed).
        let len = r.tokens.len() + r.max - 1;
        if r.tokens.is_empty() || len > self.runner.context_len() {
            return false;
        }
        let s = self.seqs.entry(r.id).or_default();
        let same = s.known.iter().zip(r.tokens).take_while(|(a, b)| a == b).count();
        s.known.truncate(same.min(r.tokens.len() - 1));
        let need = len.div_ceil(bs).saturating_sub(s.blocks.len());
        if self.kv.available() < need {
            return false;
        }
        s.blocks.extend((0..need).map(|_| self.kv.allocate().expect("availability checked")));
        true
    }
}

impl Proposer for DraftModel {
    fn name(&self) -> &'static str {
        "draft"
    }

    fn propose(&mut self, seqs: &[DraftRequest<'_>]) -> Result<Vec<Vec<u32>>> {
        let mut out = vec![Vec::new(); seqs.len()];
        let mut active: Vec<usize> = (0..seqs.len()).filter(|&k| seqs[k].max > 0 && self.prepare(&seqs[k])).collect();
        // Round 0 runs each sequence's new tokens; every later round, its latest draft.
        let mut pending: Vec<Vec<u32>> = active
            .iter()
            .map(|&k| {
                let s = &self.seqs[&seqs[k].id];
                seqs[k].tokens[s.known.len()..].to_vec()
            })
            .collect();
        // Greedy samplers, one a sequence, made once for every round (greedy keeps no state
        // that matters here).
        let greedy = SamplingParams { temperature: 0.0, seed: Some(0), ..Default::default() };
        let mut samplers: Vec<SeqSampler> = active.iter().map(|_| SeqSampler::new(greedy.clone())).collect();
        while !active.is_empty() {
            let steps: Vec<SeqStep<'_>> = active
                .iter()
                .zip(&pending)
                .map(|(&k, toks)| {
                    let s = &self.seqs[&seqs[k].id];
                    SeqStep { tokens: toks, start: s.known.len(), blocks: &s.blocks, logits: Logits::Last }
                })
                .collect();
            self.runner.step(&steps)?;
            let mut refs: Vec<&mut SeqSampler> = samplers.iter_mut().take(active.len()).collect();
            let chosen = self.runner.sample(&mut refs)?;
            let mut next = Vec::with_capacity(active.len());
            let mut still = Vec::with_capacity(active.len());
            for ((&k, fed), tok) in active.iter().zip(pending).zip(chosen) {
                self.seqs.get_mut(&seqs[k].id).expect("prepared").known.extend(fed);
                out[k].push(tok.id);
                if out[k].len() < seqs[k].max {
                    still.push(k);
                    next.push(vec![tok.id]);
                }
            }
            active = still;
            pending = next;
        }
        Ok(out)
    }

    fn release(&mut self, id: RequestId) {
        if let Some(s) = self.seqs.remove(&id) {
            self.kv.release(&s.blocks);
        }
    }

    fn blocks_in_use(&self) -> usize {
        self.kv.in_use()
    }
}
