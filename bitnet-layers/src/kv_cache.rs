//! `KvCache`: per-layer paged K and V tensors `[max_num_blocks, n_kv_heads, block_size, head_dim]`
//! in DRAM, as tt_transformers lays them out. Which block belongs to which sequence is the
//! runtime's business (its block allocator fills the page tables the model is given).

use ttnn::{DRAM_MEMORY_CONFIG, DataType, Device, Layout, Tensor};

use crate::config::BitNetConfig;
use crate::error::{Error, Result};

/// The paged cache tensors of every layer.
#[derive(Debug)]
pub struct KvCache {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub num_blocks: usize,
    pub block_size: usize,
    pub dtype: DataType,
}

impl KvCache {
    /// Allocates zeroed caches for `num_blocks` blocks of `block_size` positions.
    pub fn allocate(
        device: &Device,
        cfg: &BitNetConfig,
        num_blocks: usize,
        block_size: usize,
        dtype: DataType,
    ) -> Result<Self> {
        if num_blocks == 0 || block_size == 0 || !block_size.is_multiple_of(32) {
            return Err(Error::InvalidInput(format!(
                "KV cache: {num_blocks} blocks of {block_size} positions; need at least one block and a block size that is a multiple of 32"
            )));
        }
        let shape = [
            num_blocks,
            cfg.num_key_value_heads,
            block_size,
            cfg.head_dim,
        ];
        let mut k = Vec::with_capacity(cfg.num_hidden_layers);
        let mut v = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            k.push(ttnn::zeros(
                shape,
                dtype,
                Layout::Tile,
                device,
                &DRAM_MEMORY_CONFIG,
            )?);
            v.push(ttnn::zeros(
                shape,
                dtype,
                Layout::Tile,
                device,
                &DRAM_MEMORY_CONFIG,
            )?);
        }
        Ok(Self {
            k,
            v,
            num_blocks,
            block_size,
            dtype,
        })
    }

    /// Positions the cache can hold in all.
    pub fn capacity(&self) -> usize {
        self.num_blocks * self.block_size
    }
}
