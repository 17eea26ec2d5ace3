//! The engine's paged KV block manager: reference-counted fixed-size blocks, prefix caching
//! (full blocks keyed by a hash of their whole token prefix, reused across requests) and
//! least-recently-used eviction of cached blocks nobody references.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;

/// Hash of a full block given the hash of the blocks before it (the chain makes it a hash of the
/// whole prefix).
pub fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write_u64(parent);
    for &t in tokens {
        h.write_u32(t);
    }
    h.finish()
}

/// Blocks of the paged KV cache and who holds them.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    refs: Vec<u32>,
    /// Blocks with no content worth keeping.
    free: Vec<u32>,
    /// Content hash of each block that holds a registered full block.
    hash_of: Vec<Option<u64>>,
    /// Registered full blocks by content hash.
    cached: HashMap<u64, u32>,
    /// Unreferenced cached blocks, oldest use first (`tick -> block`).
    evictable: BTreeMap<u64, u32>,
    last_use: Vec<u64>,
    tick: u64,
}

impl BlockManager {
    /// `num_blocks` blocks of `block_size` tokens, all free.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        BlockManager {
            block_size,
            refs: vec![0; num_blocks],
            free: (0..num_blocks as u32).rev().collect(),
            hash_of: vec![None; num_blocks],
            cached: HashMap::new(),
            evictable: BTreeMap::new(),
            last_use: vec![0; num_blocks],
            tick: 0,
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the cache.
    pub fn num_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that can be handed out now (free or evictable).
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks referenced by some sequence.
    pub fn in_use(&self) -> usize {
        self.num_blocks() - self.available()
    }

    /// A block for new content: a free one, else the least recently used cached one (forgetting
    /// its content). `None` when every block is referenced.
    pub fn allocate(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (&tick, &b) = self.evictable.iter().next()?;
                self.evictable.remove(&tick);
                if let Some(h) = self.hash_of[b as usize].take() {
                    self.cached.remove(&h);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Drops one reference to each block; unreferenced blocks become free, or evictable when
    /// they hold a cached prefix.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks {
            let i = b as usize;
            debug_assert!(self.refs[i] > 0, "block {b} released twice");
            self.refs[i] = self.refs[i].saturating_sub(1);
            if self.refs[i] == 0 {
                if self.hash_of[i].is_some() {
                    self.tick += 1;
                    self.last_use[i] = self.tick;
                    self.evictable.insert(self.tick, b);
                } else {
                    self.free.push(b);
                }
            }
        }
    }

    /// The cached blocks that hold the longest prefix of `tokens` made of full blocks, each now
    /// referenced once more; at most `max_tokens` tokens' worth.
    pub fn match_prefix(&mut self, tokens: &[u32], max_tokens: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let mut parent = 0u64;
        for chunk in tokens[..max_tokens.min(tokens.len())].chunks_exact(self.block_size) {
            let h = block_hash(parent, chunk);
            let Some(&b) = self.cached.get(&h) else { break };
            let i = b as usize;
            if self.refs[i] == 0 {
                self.evictable.remove(&self.last_use[i]);
            }
            self.refs[i] += 1;
            out.push(b);
            parent = h;
        }
        out
    }

    /// Records that `block` now holds the full block whose prefix hash is `hash`, so later requests
    /// can reuse it. A hash already cached elsewhere is left as it is.
    pub fn register(&mut self, block: u32, hash: u64) {
        if self.hash_of[block as usize].is_none() && !self.cached.contains_key(&hash) {
            self.cached.insert(hash, block);
            self.hash_of[block as usize] = Some(hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_release_and_reuse_prefixes() {
        let mut m = BlockManager::new(4, 2);
        let a: Vec<u32> = (0..3).map(|_| m.allocate().unwrap()).collect();
        assert_eq!(m.available(), 1);
        let toks = [1, 2, 3, 4, 5];
        let h0 = block_hash(0, &toks[0..2]);
        m.register(a[0], h0);
        m.register(a[1], block_hash(h0, &toks[2..4]));
        m.release(&a);
        assert_eq!(m.available(), 4);
        // Same prefix: both full blocks come back, referenced.
        let hit = m.match_prefix(&toks, 4);
        assert_eq!(hit, vec![a[0], a[1]]);
        assert_eq!(m.available(), 2);
        // A different second block stops the match.
        assert_eq!(m.match_prefix(&[1, 2, 9, 9], 4), vec![a[0]]);
        m.release(&[a[0], a[0], a[1]]);
        // Pressure: cached blocks are evicted oldest first once free ones run out.
        let all: Vec<u32> = (0..4).map(|_| m.allocate().unwrap()).collect();
        assert_eq!(all.len(), 4);
        assert!(m.allocate().is_none());
        assert!(m.match_prefix(&toks, 4).is_empty());
    }
}
