//! KV-cache writes: `ttnn::experimental::paged_update_cache` (decode: one position per user)
//! and `ttnn::experimental::paged_fill_cache` (prefill: a whole sequence of one user).
//!
//! Both work in place on the cache (TT-NN returns the cache tensor; so do these). Caches are
//! `[max_num_blocks, n_kv_heads, block_size, head_dim]` when paged (position `p` of user `b` is
//! row `p % block_size` of block `page_table[b][p / block_size]`) or `[B, n_kv_heads, max_seq,
//! head_dim]` when not, TILE, interleaved, FLOAT32/BFLOAT16/BFLOAT8_B/BFLOAT4_B. Block-float
//! caches re-encode only the rows written.
//!
//! Indices that come from tensors (positions, page-table entries, a batch index) are checked when
//! the op runs (eagerly: by the call; in a trace: by `execute_trace`); a bad one is an error
//! naming the op and the value, and nothing is written.

use crate::device::BackendImpl;
use crate::error::{Error, Result};
use crate::host::kernels::kv_cache::{BatchIdx, FillCacheCmd, UpdateCacheCmd, UpdateIdxs};
use crate::ops::{
    FLOAT_TYPES, expect_dtype, expect_layout, expect_rank, on_device, on_same_device,
};
use crate::tensor::Tensor;
use crate::tt::{Tt, ops as tt_ops};
use crate::types::{
    BufferType, ComputeKernelConfig, DataType, Layout, ShardOrientation, TensorMemoryLayout,
};

/// Optional arguments of [`paged_update_cache`] (TT-NN's keyword arguments).
#[derive(Clone, Debug, Default)]
pub struct PagedUpdateCacheArgs<'a> {
    /// Positions fixed at the call (one per user; `u32::MAX` = -1 skips). Exactly one of this
    /// and `update_idxs_tensor` must be given.
    pub update_idxs: Vec<u32>,
    /// Positions read when the op runs: INT32 `[B]`, ROW_MAJOR, DRAM interleaved (or L1
    /// HEIGHT_SHARDED `[cores, B]`); -1 skips a user. Required for a paged cache.
    pub update_idxs_tensor: Option<&'a Tensor>,
    /// Unpaged only: every user writes into the cache's single batch row.
    pub share_cache: bool,
    /// Paged cache: INT32 `[B, max_blocks_per_seq]` ROW_MAJOR (UINT16 when sharded).
    pub page_table: Option<&'a Tensor>,
    /// Must be 0 (as on TT).
    pub batch_offset: u32,
    pub compute_kernel_config: Option<ComputeKernelConfig>,
}

/// Optional arguments of [`paged_fill_cache`].
#[derive(Clone, Debug, Default)]
pub struct PagedFillCacheArgs<'a> {
    /// The page-table row (user) to fill. Default 0.
    pub batch_idx: u32,
    /// A one-element UINT32/INT32 tensor holding the batch index, read when the op runs
    /// (overrides `batch_idx`).
    pub batch_idx_tensor: Option<&'a Tensor>,
    pub compute_kernel_config: Option<ComputeKernelConfig>,
}

/// Cache element types TT takes.
const CACHE_TYPES: &[DataType] = &[
    DataType::Float32,
    DataType::Bfloat16,
    DataType::Bfloat8B,
    DataType::Bfloat4B,
];

fn mem_layout(t: &Tensor) -> TensorMemoryLayout {
    t.memory_config()
        .map_or(TensorMemoryLayout::Interleaved, |m| m.memory_layout)
}

fn check_cache(op: &'static str, cache: &Tensor) -> Result<()> {
    expect_rank(op, "cache", cache, 4)?;
    expect_layout(op, "cache", cache, Layout::Tile)?;
    expect_dtype(op, "cache", cache, CACHE_TYPES)?;
    if mem_layout(cache) != TensorMemoryLayout::Interleaved {
        return Err(Error::mem_config(
            op,
            format!(
                "only an interleaved cache is supported, got {:?}",
                mem_layout(cache)
            ),
        ));
    }
    Ok(())
}

/// `ttnn::experimental::paged_update_cache`: writes one position per user into the cache, in
/// place (decode).
///
/// `input` `[1, B, nkv, hd]` (TILE, FLOAT32/BFLOAT16, sharded as `nlp_create_qkv_heads_decode`
/// produces it: HEIGHT or BLOCK sharded, shard width `hd`, ROW_MAJOR orientation). For user `b`
/// with position `p = update_idxs[b]`: `p == -1` skips the user; otherwise, for every kv head
/// `h`, the cache row of position `p` (paged: via `page_table[b]`; unpaged: batch `b`, or 0 with
/// `share_cache`) becomes `input[0, b, h, :]`, rounded to the cache's type. A position outside
/// the cache, another negative value, or a page-table entry outside `[0, max_num_blocks)` is a
/// data-dependent error of the run (nothing is written). Returns the cache.
pub fn paged_update_cache(
    cache: &Tensor,
    input: &Tensor,
    args: &PagedUpdateCacheArgs<'_>,
) -> Result<Tensor> {
    let op = "ttnn::experimental::paged_update_cache";
    let device = on_device(op, "cache", cache)?;
    on_same_device(op, "input", device, input)?;
    if cache.shares_buffer_with(input) {
        return Err(Error::arg(op, "input and cache must be different tensors"));
    }
    check_cache(op, cache)?;
    expect_rank(op, "input", input, 4)?;
    expect_layout(op, "input", input, Layout::Tile)?;
    let (ip, cp) = (input.padded_shape(), cache.padded_shape());
    let (is, cs) = (input.shape(), cache.shape());
    if ip.dim(0) != 1 {
        return Err(Error::shape(op, "input", "[1, B, nkv, hd]", is));
    }
    if ip.dim(3) != cp.dim(3) || is.dim(3) != cs.dim(3) {
        return Err(Error::shape(
            op,
            "input",
            format!("last dimension {} (the cache's head dim)", cs.dim(3)),
            is,
        ));
    }
    if is.dim(2) != cs.dim(1) {
        return Err(Error::shape(
            op,
            "input",
            format!("{} heads (the cache's kv heads)", cs.dim(1)),
            is,
        ));
    }
    let batch = ip.dim(1);
    let (max_blocks, cols) = match args.page_table {
        None => {
            if args.share_cache {
                if cp.dim(0) != 1 {
                    return Err(Error::shape(op, "cache", "batch 1 (share_cache)", cs));
                }
            } else if cp.dim(0) != batch {
                return Err(Error::shape(
                    op,
                    "cache",
                    format!("batch {batch} (the input's batch)"),
                    cs,
                ));
            }
            (0, 1)
        }
        Some(pt) => {
            on_same_device(op, "page_table", device, pt)?;
            if args.share_cache {
                return Err(Error::arg(
                    op,
                    "share_cache is not supported with a paged cache",
                ));
            }
            if args.update_idxs_tensor.is_none() {
                return Err(Error::arg(op, "a paged cache requires update_idxs_tensor"));
            }
            expect_rank(op, "page_table", pt, 2)?;
            let sharded = mem_layout(pt).is_sharded();
            let want = if sharded {
                DataType::Uint16
            } else {
                DataType::Int32
            };
            if pt.dtype() != want {
                return Err(Error::dtype(
                    op,
                    "page_table",
                    pt.dtype(),
                    format!("{want:?}"),
                ));
            }
            expect_layout(op, "page_table", pt, Layout::RowMajor)?;
            let rows = if sharded {
                let n = pt
                    .memory_config()
                    .and_then(|m| m.shard_spec.as_ref())
                    .map_or(1, |s| s.grid.num_cores().max(1));
                pt.padded_shape().dim(0) / n
            } else {
                pt.padded_shape().dim(0)
            };
            if rows != batch || pt.shape().dim(0) != batch {
                return Err(Error::shape(
                    op,
                    "page_table",
                    format!("{batch} rows (the input's batch)"),
                    pt.shape(),
                ));
            }
            if pt.padded_shape().dim(1) > cp.dim(0) {
                return Err(Error::shape(
                    op,
                    "page_table",
                    format!(
                        "at most {} columns (max_num_blocks_per_seq <= max_num_blocks)",
                        cp.dim(0)
                    ),
                    pt.shape(),
                ));
            }
            (cs.dim(0), pt.shape().dim(1))
        }
    };
    let idxs = match (args.update_idxs_tensor, args.update_idxs.is_empty()) {
        (Some(t), true) => {
            on_same_device(op, "update_idxs_tensor", device, t)?;
            if t.dtype() != DataType::Int32 {
                return Err(Error::dtype(op, "update_idxs_tensor", t.dtype(), "Int32"));
            }
            expect_layout(op, "update_idxs_tensor", t, Layout::RowMajor)?;
            let mc = t.memory_config();
            let n = if mem_layout(t).is_sharded() {
                if mem_layout(t) != TensorMemoryLayout::HeightSharded
                    || mc.map(|m| m.buffer_type) != Some(BufferType::L1)
                {
                    return Err(Error::mem_config(
                        op,
                        "update_idxs_tensor must be L1 HEIGHT_SHARDED when sharded",
                    ));
                }
                let cores = mc
                    .and_then(|m| m.shard_spec.as_ref())
                    .map_or(0, |s| s.grid.num_cores());
                if t.shape().rank() != 2 || cores != t.padded_shape().dim(0) {
                    return Err(Error::shape(
                        op,
                        "update_idxs_tensor",
                        format!("[{cores}, B] (one row per shard core)"),
                        t.shape(),
                    ));
                }
                if is.dim(1) != t.shape().dim(1) {
                    return Err(Error::shape(
                        op,
                        "update_idxs_tensor",
                        format!("{} indices per row (the batch)", is.dim(1)),
                        t.shape(),
                    ));
                }
                t.shape().dim(1)
            } else {
                if mc.map(|m| m.buffer_type) != Some(BufferType::Dram) {
                    return Err(Error::mem_config(
                        op,
                        "update_idxs_tensor must be DRAM interleaved when not sharded",
                    ));
                }
                if t.shape().rank() != 1 {
                    return Err(Error::shape(op, "update_idxs_tensor", "[B]", t.shape()));
                }
                t.padded_shape().dim(0)
            };
            if n != batch {
                return Err(Error::shape(
                    op,
                    "update_idxs_tensor",
                    format!("{batch} indices (the input's batch)"),
                    t.shape(),
                ));
            }
            None
        }
        (None, false) => {
            if args.update_idxs.len() != batch {
                return Err(Error::arg(
                    op,
                    format!(
                        "{} update_idxs for a batch of {batch}",
                        args.update_idxs.len()
                    ),
                ));
            }
            let seq = cs.dim(2);
            if let Some((b, &p)) = args
                .update_idxs
                .iter()
                .enumerate()
                .find(|&(_, &p)| p != u32::MAX && p as usize >= seq)
            {
                return Err(Error::arg(
                    op,
                    format!("update_idxs[{b}] = {p} is outside the cache's {seq} positions"),
                ));
            }
            Some(UpdateIdxs::List(args.update_idxs.clone()))
        }
        _ => {
            return Err(Error::arg(
                op,
                "Only an update tensor or an update vector can be provided. Not both or neither.",
            ));
        }
    };
    let mc = input.memory_config();
    let spec = mc.and_then(|m| m.shard_spec.as_ref());
    match (mc.map(|m| m.memory_layout), spec) {
        (Some(l), Some(spec)) if l.is_sharded() => {
            if l == TensorMemoryLayout::WidthSharded {
                return Err(Error::mem_config(op, "input must not be WIDTH_SHARDED"));
            }
            let height = ip.rows();
            if spec.shape[1] != ip.dim(3)
                || spec.shape[0] == 0
                || !height.is_multiple_of(spec.shape[0])
            {
                return Err(Error::mem_config(
                    op,
                    format!(
                        "input shard shape {:?} must be [h, {}] with h dividing the height {height}",
                        spec.shape,
                        ip.dim(3)
                    ),
                ));
            }
            if spec.orientation != ShardOrientation::RowMajor {
                return Err(Error::mem_config(
                    op,
                    "only ROW_MAJOR shard orientation is supported for the input",
                ));
            }
        }
        _ => {
            return Err(Error::mem_config(op, "Expect input_tensor to be sharded"));
        }
    }
    expect_dtype(op, "input", input, &[DataType::Float32, DataType::Bfloat16])?;
    if args.batch_offset != 0 {
        return Err(Error::arg(
            op,
            format!("batch_offset must be 0, got {}", args.batch_offset),
        ));
    }
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            tt_ops::paged_update_cache(&Tt::new(tt, device), op, cache, input, args)?;
            return Ok(cache.clone());
        }
    };
    let idxs = match (idxs, args.update_idxs_tensor) {
        (Some(list), _) => list,
        (None, Some(t)) => UpdateIdxs::Tensor(t.host_buffer(op, "update_idxs_tensor")?.clone()),
        (None, None) => {
            return Err(Error::arg(op, "update_idxs_tensor is missing"));
        }
    };
    let page_table = match args.page_table {
        Some(pt) => Some(pt.host_buffer(op, "page_table")?.clone()),
        None => None,
    };
    host.submit(UpdateCacheCmd {
        op,
        cache: cache.host_buffer(op, "cache")?.clone(),
        input: input.host_buffer(op, "input")?.clone(),
        idxs,
        page_table,
        batch,
        nkv: cs.dim(1),
        hd: cs.dim(3),
        seq: cs.dim(2),
        cols,
        max_blocks,
        share_cache: args.share_cache,
        dest: Vec::with_capacity(batch),
        table: Vec::with_capacity(args.page_table.map_or(0, |p| p.shape().volume())),
        si: Vec::with_capacity(if input.dtype() == DataType::Float32 {
            0
        } else {
            is.volume()
        }),
    })?;
    Ok(cache.clone())
}

/// `ttnn::experimental::paged_fill_cache`: writes a user's whole prefill sequence into a paged
/// cache, in place.
///
/// `input` `[1, nkv, S, hd]` (TILE, interleaved); `page_table` `[users, cols]` INT32 ROW_MAJOR
/// interleaved. Position `s < S` of head `h` goes to row `s % block_size` of block
/// `page_table[batch_idx][s / block_size]`. As on TT, the input must be FLOAT32/BFLOAT16 unless
/// the cache is block float (tt_transformers typecasts K/V to the cache's BFLOAT8_B first; a
/// block-float input of the cache's format is copied without re-encoding). TT requires the
/// tile-padded `S` to fit the table (`ceil32(S) <= block_size * cols`). TT also writes the tile
/// padding rows `S..ceil32(S)`; the host writes only the `S` logical rows.
///
/// Chunked prefill passes the chunk's slice of the user's page table with `batch_idx = 0`.
/// A page-table entry outside `[0, max_num_blocks)` or a `batch_idx_tensor` value that is not a
/// row of the page table is a data-dependent error of the run (nothing is written). Returns the
/// cache.
pub fn paged_fill_cache(
    cache: &Tensor,
    input: &Tensor,
    page_table: &Tensor,
    args: &PagedFillCacheArgs<'_>,
) -> Result<Tensor> {
    let op = "ttnn::experimental::paged_fill_cache";
    let device = on_device(op, "cache", cache)?;
    on_same_device(op, "input", device, input)?;
    on_same_device(op, "page_table", device, page_table)?;
    if cache.shares_buffer_with(input) {
        return Err(Error::arg(op, "input and cache must be different tensors"));
    }
    check_cache(op, cache)?;
    expect_rank(op, "input", input, 4)?;
    expect_layout(op, "input", input, Layout::Tile)?;
    expect_dtype(op, "input", input, FLOAT_TYPES)?;
    let block_cache = matches!(cache.dtype(), DataType::Bfloat8B | DataType::Bfloat4B);
    if !(matches!(input.dtype(), DataType::Float32 | DataType::Bfloat16) || block_cache) {
        return Err(Error::dtype(
            op,
            "input",
            input.dtype(),
            "Float32 or Bfloat16 (or any float type into a block-float cache)",
        ));
    }
    if mem_layout(input) != TensorMemoryLayout::Interleaved {
        return Err(Error::mem_config(
            op,
            format!(
                "Expect input_tensor to have memory layout INTERLEAVED, got {:?}",
                mem_layout(input)
            ),
        ));
    }
    if mem_layout(page_table) != TensorMemoryLayout::Interleaved {
        return Err(Error::mem_config(
            op,
            "Expect page_table to have memory layout INTERLEAVED",
        ));
    }
    if page_table.dtype() != DataType::Int32 {
        return Err(Error::dtype(op, "page_table", page_table.dtype(), "Int32"));
    }
    expect_rank(op, "page_table", page_table, 2)?;
    expect_layout(op, "page_table", page_table, Layout::RowMajor)?;
    let (is, cs, ps) = (input.shape(), cache.shape(), page_table.shape());
    let (ip, cp) = (input.padded_shape(), cache.padded_shape());
    if is.dim(0) != 1 || is.dim(1) != cs.dim(1) || is.dim(3) != cs.dim(3) {
        return Err(Error::shape(
            op,
            "input",
            format!(
                "[1, {}, S, {}] (the cache's kv heads and head dim)",
                cs.dim(1),
                cs.dim(3)
            ),
            is,
        ));
    }
    if args.batch_idx as usize > cp.dim(0) {
        return Err(Error::arg(
            op,
            format!(
                "batch_idx {} must fit in the cache's first dimension {}",
                args.batch_idx,
                cp.dim(0)
            ),
        ));
    }
    if ip.dim(2) > cp.dim(2) * ps.dim(1) {
        return Err(Error::shape(
            op,
            "input",
            format!(
                "a (tile-padded) seq_len of at most {} (block_size {} x {} page-table columns): Input seq_len must fit in max_num_blocks_per_seq",
                cp.dim(2) * ps.dim(1),
                cp.dim(2),
                ps.dim(1)
            ),
            is,
        ));
    }
    let batch_idx = match args.batch_idx_tensor {
        Some(t) => {
            on_same_device(op, "batch_idx_tensor", device, t)?;
            if t.shape().volume() != 1 {
                return Err(Error::shape(
                    op,
                    "batch_idx_tensor",
                    "a single element",
                    t.shape(),
                ));
            }
            expect_dtype(
                op,
                "batch_idx_tensor",
                t,
                &[DataType::Uint32, DataType::Int32],
            )?;
            None
        }
        None => {
            if args.batch_idx as usize >= ps.dim(0) {
                return Err(Error::arg(
                    op,
                    format!(
                        "batch_idx {} is not a row of the page table ({} rows)",
                        args.batch_idx,
                        ps.dim(0)
                    ),
                ));
            }
            Some(BatchIdx::Fixed(args.batch_idx as usize))
        }
    };
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            tt_ops::paged_fill_cache(&Tt::new(tt, device), op, cache, input, page_table, args)?;
            return Ok(cache.clone());
        }
    };
    let batch_idx = match (batch_idx, args.batch_idx_tensor) {
        (Some(b), _) => b,
        (None, Some(t)) => BatchIdx::Tensor(t.host_buffer(op, "batch_idx_tensor")?.clone()),
        (None, None) => return Err(Error::arg(op, "batch_idx_tensor is missing")),
    };
    host.submit(FillCacheCmd {
        op,
        cache: cache.host_buffer(op, "cache")?.clone(),
        input: input.host_buffer(op, "input")?.clone(),
        page_table: page_table.host_buffer(op, "page_table")?.clone(),
        batch_idx,
        nkv: cs.dim(1),
        hd: cs.dim(3),
        seq: is.dim(2),
        bs: cs.dim(2),
        cols: ps.dim(1),
        pt_rows: ps.dim(0),
        max_blocks: cs.dim(0),
        table: Vec::with_capacity(ps.volume()),
        si: Vec::with_capacity(if input.dtype() == DataType::Float32 {
            0
        } else {
            is.volume()
        }),
    })?;
    Ok(cache.clone())
}
