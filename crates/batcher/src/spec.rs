//! Speculative decoding: a proposer drafts a few tokens after a sequence's last one and the
//! model checks them all in one step, as rows of that step beside the other requests' rows.
//!
//! Because every product and attention kernel gives a row the same bits whatever the rows
//! around it, the verified row `j` has exactly the logits a plain decode step would have had at
//! that position: a greedy request's ids and log-probabilities are identical with and without
//! speculation, only produced several per step. The engine accepts the longest run of drafts
//! the model agrees with, plus the model's own next token, and rolls the KV cache back past the
//! first disagreement (its positions are simply overwritten later; whole blocks past the
//! sequence go back to the pool, and only blocks of accepted tokens enter the prefix cache).
//!
//! Sampled requests speculate too. Each verified row samples from the target distribution with
//! the sampler state plain decoding would have there (the drafts before it recorded for the
//! penalties, one random number skipped per earlier choice), and a draft is kept when its row
//! chose it. That is rejection sampling against a proposal that puts all its mass on the draft
//! (accepted with the target's probability of the draft; on rejection the row's own choice is a
//! draw from the target without the draft), so outputs keep the target distribution exactly, and
//! a seeded request gets the very tokens it gets without speculation. Proposers therefore draft
//! one token per position, deterministically (a draft model drafts greedily).
//!
//! Proposers sit behind [`Proposer`]: prompt lookup ([`NgramProposer`]), which drafts from the
//! request's own prompt and output and needs no second model, and a draft model
//! ([`crate::draft::DraftModel`]), a smaller or cheaper model with the same tokenizer.

use crate::request::RequestId;
use crate::Result;

/// One sequence that asks for drafts.
#[derive(Debug, Clone, Copy)]
pub struct DraftRequest<'a> {
    /// The request (a stateful proposer keys its state by it).
    pub id: RequestId,
    /// The prompt, then the output so far.
    pub tokens: &'a [u32],
    /// Most tokens to draft (at least 1).
    pub max: usize,
}

/// Drafts tokens to follow sequences. The engine asks once per step for every sequence that
/// may speculate, so a proposer that runs a model batches them.
pub trait Proposer: Send {
    /// A short name for reports (`ngram`, `draft`).
    fn name(&self) -> &'static str;
    /// Up to `max` tokens to follow each sequence's `tokens`, in order; fewer or none where the
    /// proposer has no good guess. One draft per position, chosen deterministically (the
    /// engine's acceptance rule relies on it, see the module doc).
    fn propose(&mut self, seqs: &[DraftRequest<'_>]) -> Result<Vec<Vec<u32>>>;
    /// The request left the engine (finished or cancelled): forget what is kept for it.
    fn release(&mut self, _id: RequestId) {}
    /// KV blocks the proposer holds now (a draft model's cache), to check none leak.
    fn blocks_in_use(&self) -> usize {
        0
    }
}

/// Prompt lookup: finds the latest earlier place where the sequence's last `n` tokens occurred
/// (the longest `n` from `max_n` down to `min_n` that matches) and proposes the tokens that
/// followed there. Outputs that copy from their prompt (rewriting, editing, extraction, code)
/// are drafted well; others cost a few wasted rows per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgramProposer {
    /// The shortest suffix that may be matched (at least 1).
    pub min_n: usize,
    /// The longest suffix tried first.
    pub max_n: usize,
}

impl Default for NgramProposer {
    fn default() -> Self {
        NgramProposer { min_n: 2, max_n: 4 }
    }
}

impl NgramProposer {
    /// Up to `max` tokens that followed the latest earlier occurrence of `tokens`' suffix.
    pub fn lookup(&self, tokens: &[u32], max: usize) -> Vec<u32> {
        let len = tokens.len();
        if max == 0 {
            return Vec::new();
        }
        for n in (self.min_n.max(1)..=self.max_n).rev() {
            if n >= len {
                continue;
            }
            let suffix = &tokens[len - n..];
            // The latest start before the suffix itself whose n tokens equal it.
            if let Some(start) = (0..len - n).rev().find(|&s| &tokens[s..s + n] == suffix) {
                let from = start + n;
                return tokens[from..(from + max).min(len)].to_vec();
            }
        }
        Vec::new()
    }
}

impl Proposer for NgramProposer {
    fn name(&self) -> &'static str {
        "ngram"
    }

    fn propose(&mut self, seqs: &[DraftRequest<'_>]) -> Result<Vec<Vec<u32>>> {
        Ok(seqs.iter().map(|r| self.lookup(r.tokens, r.max)).collect())
    }
}

/// A request's next draft length after `accepted` of `drafted` drafts were accepted: longer
/// (doubled, up to `max`) when all were, else one more than were accepted (at least 1), so that a
/// request that copies drafts far and one that does not wastes few rows.
pub fn next_draft_len(drafted: usize, accepted: usize, max: usize) -> usize {
    if drafted > 0 && accepted == drafted {
        (drafted * 2).min(max).max(1)
    } else {
        (accepted + 1).min(max).max(1)
    }
}

/// The [`crate::Stats::acceptance`] bucket of a verification that kept `accepted` of `drafted`
/// drafts: 0 none, 1 up to a quarter, 2 up to a half, 3 up to three quarters, 4 fewer than all,
/// 5 all.
pub fn acceptance_bucket(accepted: usize, drafted: usize) -> usize {
    match accepted {
        0 => 0,
        a if a >= drafted => 5,
        a if 4 * a <= drafted => 1,
        a if 2 * a <= drafted => 2,
        a if 4 * a <= 3 * drafted => 3,
        _ => 4,
    }
}

/// How many of `drafts` the model accepted: the leading drafts equal to the token the model
/// chose at the row before them (`chosen[j]` is the model's token after draft `j`, `chosen[0]`
/// the one after the sequence's last token).
pub fn accepted(drafts: &[u32], chosen: &[u32]) -> usize {
    drafts.iter().zip(chosen).take_while(|(d, c)| d == c).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_lookup_proposes_what_followed_the_latest_match() {
        let p = NgramProposer { min_n: 1, max_n: 3 };
        // "… 5 6 7 8 9 … 5 6" → 7 8 9.
        assert_eq!(p.lookup(&[1, 5, 6, 7, 8, 9, 2, 5, 6], 3), [7, 8, 9]);
        // Capped by max, and by the end of the sequence.
        assert_eq!(p.lookup(&[1, 5, 6, 7, 8, 9, 2, 5, 6], 2), [7, 8]);
        assert_eq!(p.lookup(&[5, 6, 7, 5, 6], 5), [7, 5, 6]);
        // The latest occurrence wins: 3 4 then 3 4 9; suffix 3 → 9 (after the later 3), and the
        // longer match is preferred over the shorter.
        assert_eq!(p.lookup(&[3, 4, 1, 3, 9, 2, 3], 1), [9]);
        assert_eq!(p.lookup(&[7, 3, 4, 1, 3, 9, 7, 3], 2), [4, 1]);
        // No match, nothing to ask, too short: nothing.
        assert!(p.lookup(&[1, 2, 3, 4], 3).is_empty());
        assert!(p.lookup(&[1, 2, 1, 2], 0).is_empty());
        assert!(p.lookup(&[1], 3).is_empty());
        // min_n 2 ignores single-token matches.
        assert!(NgramProposer { min_n: 2, max_n: 3 }.lookup(&[3, 4, 1, 3], 2).is_empty());
    }

    #[test]
    fn acceptance_counts_the_leading_agreement_and_the_length_follows_it() {
        assert_eq!(accepted(&[4, 5, 6], &[4, 5, 9, 1]), 2);
        assert_eq!(accepted(&[4, 5, 6], &[4, 5, 6, 1]), 3);
        assert_eq!(accepted(&[4, 5, 6], &[1, 5, 6, 1]), 0);
        assert_eq!(accepted(&[], &[1]), 0);
        assert_eq!(next_draft_len(3, 3, 8), 6);
        assert_eq!(next_draft_len(6, 6, 8), 8);
        assert_eq!(next_draft_len(8, 2, 8), 3);
        assert_eq!(next_draft_len(4, 0, 8), 1);
        assert_eq!(next_draft_len(0, 0, 8), 1);
        let buckets: Vec<usize> = [(0, 4), (1, 4), (1, 3), (2, 4), (3, 4), (4, 5), (4, 4), (1, 1)]
            .iter()
            .map(|&(a, d)| acceptance_bucket(a, d))
            .collect();
        assert_eq!(buckets, [0, 1, 2, 2, 3, 4, 5, 5]);
    }
}
