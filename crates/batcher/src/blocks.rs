//! The KV block pool: fixed-size blocks handed to sequences, returned when a sequence drops.

use std::sync::{Arc, Mutex};

use crate::{EngineError, Result};

/// A pool of `num_blocks` KV cache blocks of `block_size` tokens.
#[derive(Debug, Clone)]
pub struct BlockPool {
    free: Arc<Mutex<Vec<u32>>>,
    block_size: usize,
    num_blocks: usize,
}

impl BlockPool {
    /// A pool with every block free.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        // Hand out low block ids first.
        let free = (0..num_blocks as u32).rev().collect();
        BlockPool { free: Arc::new(Mutex::new(free)), block_size, num_blocks }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Blocks currently free.
    pub fn free_blocks(&self) -> usize {
        self.lock().len()
    }

    /// Tokens the whole pool can hold.
    pub fn capacity_tokens(&self) -> usize {
        self.num_blocks * self.block_size
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        // A poisoned pool still holds a consistent free list (pushes and pops are atomic).
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty block table for a new sequence.
    pub fn sequence(&self) -> SeqBlocks {
        SeqBlocks { ids: Vec::new(), pool: self.clone() }
    }
}

/// A sequence's block table. Its blocks go back to the pool on drop.
#[derive(Debug)]
pub struct SeqBlocks {
    ids: Vec<u32>,
    pool: BlockPool,
}

impl SeqBlocks {
    /// Grows the table so it holds `tokens` tokens; fails (taking nothing) when the pool is short.
    pub fn reserve(&mut self, tokens: usize) -> Result<()> {
        let need = tokens.div_ceil(self.pool.block_size).saturating_sub(self.ids.len());
        if need == 0 {
            return Ok(());
        }
        let mut free = self.pool.lock();
        if free.len() < need {
            return Err(EngineError::CacheFull { needed: need, free: free.len() });
        }
        let at = free.len() - need;
        self.ids.extend(free.drain(at..).rev());
        Ok(())
    }

    /// The block ids, in sequence order.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

impl Drop for SeqBlocks {
    fn drop(&mut self) {
        self.pool.lock().append(&mut self.ids);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_return_on_drop() {
        let pool = BlockPool::new(4, 16);
        let mut a = pool.sequence();
        a.reserve(33).unwrap();
        assert_eq!(a.ids(), &[0, 1, 2]);
        assert_eq!(pool.free_blocks(), 1);
        let mut b = pool.sequence();
        assert!(matches!(b.reserve(40), Err(EngineError::CacheFull { needed: 3, free: 1 })));
        assert_eq!(pool.free_blocks(), 1);
        drop(a);
        b.reserve(40).unwrap();
        assert_eq!(pool.free_blocks(), 1);
    }
}
