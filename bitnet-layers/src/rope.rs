//! `RotarySetup`: RoPE tables uploaded once, rows looked up by position on the device.
//!
//! Convention: HF's BitNet uses rotate-half RoPE (pairs `(i, i + hd/2)`); TT-NN's
//! `rotary_embedding_llama` rotates interleaved pairs `(2i, 2i+1)` with a 32x32 transformation
//! matrix. The two agree when Q and K projection rows are permuted at load
//! ([`crate::ternary::TernaryWeight::permute_for_rope`]) and the tables hold each frequency twice,
//! in adjacent columns ("meta" format). Prefill and decode use the same tables, the same
//! matrix and the same op, so they agree exactly.

use ttnn::ops::data_movement::{reshape, to_memory_config};
use ttnn::ops::embedding::{EmbeddingArgs, embedding};
use ttnn::ops::rotary::get_rot_transformation_mat;
use ttnn::{
    BufferType, CoreRangeSet, DRAM_MEMORY_CONFIG, DataType, Device, Layout, MemoryConfig,
    ShardOrientation, ShardSpec, TILE_SIZE, Tensor, TensorMemoryLayout,
};

use crate::error::Result;

/// HF's default RoPE as `(cos, sin)` tables `[max_seq, head_dim]` in interleaved ("meta") order:
/// `inv_freq[i] = 1 / theta^(2i / hd)` in f32, angle `pos * inv_freq[i]` in f32, columns `2i` and
/// `2i + 1` both hold frequency `i`.
pub fn rope_tables(head_dim: usize, max_seq: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut cos = vec![0f32; max_seq * head_dim];
    let mut sin = vec![0f32; max_seq * head_dim];
    for p in 0..max_seq {
        for (i, &f) in inv_freq.iter().enumerate() {
            let a = p as f32 * f;
            let (s, c) = a.sin_cos();
            for j in [2 * i, 2 * i + 1] {
                cos[p * head_dim + j] = c;
                sin[p * head_dim + j] = s;
            }
        }
    }
    (cos, sin)
}

/// The RoPE tables and transformation matrices on the device (tt_transformers' `RotarySetup`).
#[derive(Debug)]
pub struct RotarySetup {
    cos_matrix: Tensor,
    sin_matrix: Tensor,
    trans_mat_prefill: Tensor,
    trans_mat_decode: Tensor,
    head_dim: usize,
    max_seq_len: usize,
    max_batch: usize,
    dtype: DataType,
}

/// One user per core, a `[32, hd]` shard each: how decode-mode RoPE inputs are laid out.
pub fn decode_rope_memory_config(
    device: &Device,
    users: usize,
    rows: usize,
    width: usize,
) -> MemoryConfig {
    MemoryConfig::sharded(
        TensorMemoryLayout::HeightSharded,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::num_cores_to_corerangeset(users, device.compute_with_storage_grid_size()),
            [rows, width],
            ShardOrientation::RowMajor,
        ),
    )
}

impl RotarySetup {
    /// Uploads the tables for positions `0..max_seq_len` (row-major `[max_seq_len, hd]`, the
    /// embedding table layout) and the transformation matrices (one per decode user, as
    /// tt_transformers repeats it, height-sharded one per core).
    pub fn new(
        device: &Device,
        head_dim: usize,
        max_seq_len: usize,
        theta: f32,
        dtype: DataType,
        max_batch: usize,
    ) -> Result<Self> {
        let (cos, sin) = rope_tables(head_dim, max_seq_len, theta);
        let up = |v: Vec<f32>| -> Result<Tensor> {
            Ok(
                Tensor::from_vec(v, [max_seq_len, head_dim], dtype, Layout::RowMajor)?
                    .to_device(device, &DRAM_MEMORY_CONFIG)?,
            )
        };
        let host_mat = get_rot_transformation_mat(dtype)?;
        let trans_mat_prefill = host_mat.to_device(device, &DRAM_MEMORY_CONFIG)?;
        let one: Vec<f32> = host_mat.to_vec()?;
        let repeated: Vec<f32> = (0..max_batch).flat_map(|_| one.iter().copied()).collect();
        let trans_mat_decode = Tensor::from_vec(
            repeated,
            [1, 1, TILE_SIZE * max_batch, TILE_SIZE],
            dtype,
            Layout::Tile,
        )?
        .to_device(
            device,
            &decode_rope_memory_config(device, max_batch, TILE_SIZE, TILE_SIZE),
        )?;
        Ok(Self {
            cos_matrix: up(cos)?,
            sin_matrix: up(sin)?,
            trans_mat_prefill,
            trans_mat_decode,
            head_dim,
            max_seq_len,
            max_batch,
            dtype,
        })
    }

    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    pub fn trans_mat_prefill(&self) -> &Tensor {
        &self.trans_mat_prefill
    }

    pub fn trans_mat_decode(&self) -> &Tensor {
        &self.trans_mat_decode
    }

    /// cos/sin rows for prefill positions `positions` (Uint32 `[1, S]`, row-major, on the
    /// device): `[1, 1, S, hd]` each, tile layout, DRAM.
    pub fn prefill_rot_mats(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let s = positions.shape().last();
        let args = EmbeddingArgs {
            layout: Some(Layout::Tile),
            memory_config: Some(DRAM_MEMORY_CONFIG),
            ..Default::default()
        };
        let cos = embedding(positions, &self.cos_matrix, &args)?;
        let sin = embedding(positions, &self.sin_matrix, &args)?;
        Ok((
            reshape(&cos, [1, 1, s, self.head_dim])?,
            reshape(&sin, [1, 1, s, self.head_dim])?,
        ))
    }

    /// cos/sin rows for decode (tt_transformers' `get_rot_mats`): `rot_idxs` is Uint32 `[1, B]`
    /// (one position per user); the result is `[1, B, 1, hd]` each (padded `[1, B, 32, hd]`),
    /// height-sharded one user per core. Runs inside the decode trace.
    pub fn get_rot_mats(&self, device: &Device, rot_idxs: &Tensor) -> Result<(Tensor, Tensor)> {
        let b = rot_idxs.shape().last();
        let args = EmbeddingArgs {
            layout: Some(Layout::Tile),
            memory_config: Some(DRAM_MEMORY_CONFIG),
            ..Default::default()
        };
        let mc = decode_rope_memory_config(device, b, TILE_SIZE, self.head_dim);
        let mut out = Vec::with_capacity(2);
        for table in [&self.cos_matrix, &self.sin_matrix] {
            let rows = embedding(rot_idxs, table, &args)?; // [1, B, hd]
            let rows = reshape(&rows, [1, b, 1, self.head_dim])?;
            out.push(to_memory_config(&rows, &mc, Some(self.dtype))?);
        }
        let sin = out.pop().unwrap_or_else(|| unreachable!("two tables"));
        let cos = out.pop().unwrap_or_else(|| unreachable!("two tables"));
        Ok((cos, sin))
    }

    /// Largest decode batch the decode matrix was built for.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_hold_each_frequency_twice() {
        let (cos, sin) = rope_tables(8, 3, 10000.0);
        assert_eq!(cos[0..8], [1.0; 8]);
        assert_eq!(sin[0..8], [0.0; 8]);
        let p = 2;
        for i in 0..4 {
            let f = 1.0f32 / 10000f32.powf((2 * i) as f32 / 8.0);
            assert_eq!(cos[p * 8 + 2 * i], (p as f32 * f).cos());
            assert_eq!(cos[p * 8 + 2 * i + 1], cos[p * 8 + 2 * i]);
            assert_eq!(sin[p * 8 + 2 * i + 1], (p as f32 * f).sin());
        }
    }
}
