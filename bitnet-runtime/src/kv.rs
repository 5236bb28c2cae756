//! The paged KV cache: the per-layer cache tensors, a block allocator with reference counts,
//! and the prefix cache that lets a new sequence reuse the full blocks of a cached prompt.
//!
//! Blocks hold `block_size` positions of every layer's K and V. A sequence's page table lists
//! its blocks in position order. Full prompt blocks are registered under a hash of the whole
//! token prefix they end (a chain: parent hash + the block's tokens), so a later prompt with the
//! same prefix finds them; they are shared by reference count and never written again (decode
//! writes only past the prompt). A partly filled block is never shared: a sequence that needs
//! its contents recomputes them into a block of its own (prefill and decode produce the same
//! bits, so that copy is exact).

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use bitnet_layers::{BitNetModel, KvCache};
use ttnn::DataType;

use crate::error::{Error, Result};

/// Block id in the cache tensors.
pub type BlockId = u32;

struct CachedBlock {
    block: BlockId,
    parent: u64,
    tokens: Vec<u32>,
}

/// Free list, reference counts and the prefix cache.
#[derive(Default)]
pub struct BlockAllocator {
    refcount: Vec<u32>,
    /// Blocks nobody uses and no prefix names.
    free: Vec<BlockId>,
    /// Prefix hash -> cached block (verified against its tokens on lookup).
    prefix: HashMap<u64, CachedBlock>,
    /// Block -> its prefix hash, for cached blocks.
    hash_of: HashMap<BlockId, u64>,
    /// Cached blocks nobody uses, oldest release first: reclaimed when the free list is empty.
    evictable: BTreeMap<u64, BlockId>,
    evict_key: HashMap<BlockId, u64>,
    tick: u64,
    peak_in_use: usize,
}

impl std::fmt::Debug for BlockAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockAllocator")
            .field("num_blocks", &self.num_blocks())
            .field("in_use", &self.in_use())
            .field("cached", &self.prefix.len())
            .finish()
    }
}

/// The hash of a block that follows prefix `parent` and holds `tokens`.
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl BlockAllocator {
    pub fn new(num_blocks: usize) -> Self {
        Self {
            refcount: vec![0; num_blocks],
            // Pop from the end: hand out low ids first.
            free: (0..num_blocks as BlockId).rev().collect(),
            ..Default::default()
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.refcount.len()
    }

    /// Blocks referenced by at least one sequence.
    pub fn in_use(&self) -> usize {
        self.refcount.iter().filter(|&&r| r > 0).count()
    }

    /// Largest `in_use` seen.
    pub fn peak_in_use(&self) -> usize {
        self.peak_in_use
    }

    /// Blocks that can be handed out now (free, or cached and unused).
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks held by the prefix cache.
    pub fn cached(&self) -> usize {
        self.prefix.len()
    }

    pub fn refcount(&self, b: BlockId) -> u32 {
        self.refcount[b as usize]
    }

    fn note_use(&mut self) {
        self.peak_in_use = self.peak_in_use.max(self.in_use());
    }

    /// A fresh block (reference count 1), reclaiming the oldest unused cached block when the
    /// free list is empty; `None` when every block is in use.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (&key, &b) = self.evictable.iter().next()?;
                self.evictable.remove(&key);
                self.evict_key.remove(&b);
                if let Some(h) = self.hash_of.remove(&b) {
                    self.prefix.remove(&h);
                }
                b
            }
        };
        self.refcount[b as usize] = 1;
        self.note_use();
        Some(b)
    }

    /// Takes another reference to a block (e.g. a shared prefix block).
    pub fn retain(&mut self, b: BlockId) {
        if self.refcount[b as usize] == 0
            && let Some(key) = self.evict_key.remove(&b)
        {
            self.evictable.remove(&key);
        }
        self.refcount[b as usize] += 1;
        self.note_use();
    }

    /// Drops a reference; an unused block goes back to the free list, or stays cached (and
    /// reclaimable) if a prefix names it.
    pub fn release(&mut self, b: BlockId) {
        let r = &mut self.refcount[b as usize];
        debug_assert!(*r > 0, "release of free block {b}");
        *r = r.saturating_sub(1);
        if *r == 0 {
            if self.hash_of.contains_key(&b) {
                self.tick += 1;
                self.evictable.insert(self.tick, b);
                self.evict_key.insert(b, self.tick);
            } else {
                self.free.push(b);
            }
        }
    }

    /// The cached block following prefix `parent` with exactly `tokens`, if any.
    pub fn lookup(&self, parent: u64, tokens: &[u32]) -> Option<BlockId> {
        let c = self.prefix.get(&chain_hash(parent, tokens))?;
        (c.parent == parent && c.tokens == tokens).then_some(c.block)
    }

    /// Registers a full block holding `tokens` after prefix `parent` (first writer wins).
    pub fn register(&mut self, parent: u64, tokens: &[u32], b: BlockId) {
        let h = chain_hash(parent, tokens);
        if self.prefix.contains_key(&h) || self.hash_of.contains_key(&b) {
            return;
        }
        self.prefix.insert(
            h,
            CachedBlock {
                block: b,
                parent,
                tokens: tokens.to_vec(),
            },
        );
        self.hash_of.insert(b, h);
    }
}

/// The cache tensors plus their allocator.
#[derive(Debug)]
pub struct PagedKvCache {
    pub tensors: KvCache,
    pub alloc: BlockAllocator,
}

impl PagedKvCache {
    /// Allocates `num_blocks` blocks of `block_size` positions for `model`.
    pub fn new(
        model: &BitNetModel,
        num_blocks: usize,
        block_size: usize,
        dtype: DataType,
    ) -> Result<Self> {
        let tensors = KvCache::allocate(
            model.device(),
            model.config(),
            num_blocks,
            block_size,
            dtype,
        )?;
        Ok(Self {
            tensors,
            alloc: BlockAllocator::new(num_blocks),
        })
    }

    pub fn block_size(&self) -> usize {
        self.tensors.block_size
    }

    /// How many blocks a memory budget buys for `model` (all layers, K and V).
    pub fn blocks_for_budget(
        model: &BitNetModel,
        block_size: usize,
        dtype: DataType,
        budget_bytes: u64,
    ) -> Result<usize> {
        let cfg = model.config();
        let per_block = 2
            * cfg.num_hidden_layers as u64
            * (cfg.num_key_value_heads * block_size * cfg.head_dim) as u64
            * match dtype {
                DataType::Float32 => 4,
                DataType::Bfloat16 => 2,
                // bfp8_b: 1 byte per value plus an exponent per 16.
                _ => 2,
            };
        let n = budget_bytes / per_block.max(1);
        if n == 0 {
            return Err(Error::InvalidRequest(format!(
                "a KV budget of {budget_bytes} bytes holds no block ({per_block} bytes each)"
            )));
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_release_and_reuse() {
        let mut a = BlockAllocator::new(3);
        let b0 = a.allocate().expect("b0");
        let b1 = a.allocate().expect("b1");
        let b2 = a.allocate().expect("b2");
        assert_eq!((b0, b1, b2), (0, 1, 2));
        assert!(a.allocate().is_none());
        assert_eq!(a.in_use(), 3);
        a.release(b1);
        assert_eq!(a.available(), 1);
        assert_eq!(a.allocate(), Some(1));
        assert_eq!(a.peak_in_use(), 3);
    }

    #[test]
    fn shared_prefix_blocks_are_counted_and_evicted_last() {
        let mut a = BlockAllocator::new(2);
        let toks = [1u32, 2, 3, 4];
        let b = a.allocate().expect("block");
        a.register(0, &toks, b);
        assert_eq!(a.lookup(0, &toks), Some(b));
        assert_eq!(a.lookup(0, &[1, 2, 3, 5]), None);
        assert_eq!(a.lookup(7, &toks), None, "another parent prefix");
        a.retain(b);
        assert_eq!(a.refcount(b), 2);
        a.release(b);
        a.release(b);
        // Unused but cached: reclaimable, and still found until reclaimed.
        assert_eq!((a.in_use(), a.available(), a.cached()), (0, 2, 1));
        assert_eq!(a.lookup(0, &toks), Some(b));
        // The free block goes first; then the cached one is evicted.
        let c = a.allocate().expect("free block");
        assert_ne!(c, b);
        assert_eq!(a.allocate(), Some(b));
        assert_eq!(a.lookup(0, &toks), None);
        assert_eq!(a.cached(), 0);
    }
}
