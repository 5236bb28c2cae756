//! Data movement: `reshape`, `to_memory_config`, `copy`, and the attention head split/concat ops.
//!
//! The head ops are pure data movement: with an unchanged dtype every output value is a
//! bit-exact copy of an input value (block-float heads move as whole 16-value groups with their
//! shared exponents).

use std::sync::Arc;

use crate::device::{BackendImpl, Device};
use crate::error::{Error, Result};
use crate::host::data::HostData;
use crate::host::kernels::data_movement::{BatchOffset, ConcatHeadsCmd, CopyCmd, CreateHeadsCmd};
use crate::ops::{expect_dtype, expect_layout, expect_rank, on_device, on_same_device};
use crate::tensor::{DeviceBuffer, Storage, Tensor};
use crate::tt::{Tt, ops as tt_ops};
use crate::types::{
    BufferType, CoreCoord, CoreRange, CoreRangeSet, DataType, Layout, MemoryConfig, Shape,
    ShardOrientation, ShardSpec, TILE_SIZE, TensorMemoryLayout,
};

// ---------------------------------------------------------------------------------------------
// reshape / unsqueeze_to_4D

/// A tensor with another shape of the same volume (TT-NN's `ttnn.reshape(x, shape)`).
///
/// The host keeps data in logical row-major order whatever the layout, so the result is a view
/// sharing the buffer (no copy, also during trace capture) — except for block-float and ternary
/// tensors whose last dimension changes: their storage is grouped along rows, so they are
/// re-encoded into a new buffer (block floats re-quantize in the new groups, as TT-NN's
/// untilize/tilize round trip does).
///
/// Host deviation: TT-NN copies a TILE tensor whose tile-padded layout changes (e.g.
/// `[1, 5, 1, 64]` to `[1, 1, 5, 64]`) into a new buffer; the host keeps the view, so the
/// modelled memory is not re-accounted for that case. On the Tenstorrent backend this is
/// TT-NN's reshape (a view or a copy, as TT-NN decides).
pub fn reshape(tensor: &Tensor, shape: impl Into<Shape>) -> Result<Tensor> {
    let op = "ttnn::reshape";
    let shape = shape.into();
    if shape.volume() != tensor.shape().volume() {
        return Err(Error::shape(
            op,
            format!(
                "the new shape (volumes must match: the tensor has {} elements)",
                tensor.shape().volume()
            ),
            tensor.shape().to_string(),
            shape,
        ));
    }
    if let Storage::Device {
        device,
        buffer: DeviceBuffer::Tt(_),
    } = &tensor.storage
        && let BackendImpl::Tt(tt) = device.backend_impl()
    {
        return tt_ops::reshape(&Tt::new(tt, device), op, tensor, shape, None);
    }
    let dtype = tensor.dtype();
    if !dtype.requires_tile_layout() || shape.last() == tensor.shape().last() {
        return Ok(tensor.view(shape));
    }
    match &tensor.storage {
        Storage::Host(data) => {
            let values = data.to_f32_vec();
            let data = HostData::from_f32(op, &values, dtype, shape)?;
            Ok(Tensor::from_parts(
                shape,
                dtype,
                tensor.layout(),
                Storage::Host(Arc::new(data)),
            ))
        }
        Storage::Device { device, .. } => {
            let host = match device.backend_impl() {
                BackendImpl::Host(host) => host,
                BackendImpl::Tt(tt) => {
                    return tt_ops::reshape(&Tt::new(tt, device), op, tensor, shape, None);
                }
            };
            let mc =
                crate::ops::output_memory_config(op, device, None, tensor, shape, tensor.layout())?;
            let out = Tensor::allocate(device, op, shape, dtype, tensor.layout(), &mc)?;
            host.submit(CopyCmd {
                src: tensor.host_buffer(op, "the tensor")?.clone(),
                dst: out.host_buffer(op, "output")?.clone(),
                scratch: Vec::with_capacity(shape.volume()),
            })?;
            Ok(out)
        }
    }
}

/// [`reshape`] with an explicit padded shape (TT-NN's `ttnn.reshape(x, shape, padded_shape)`,
/// which tt_transformers uses to keep a tile-padded view, e.g. `[1, 1, B, dim]` padded to
/// `[1, 1, 32, dim]`). `padded_shape` needs `shape`'s rank and no dimension below it.
///
/// Host rule: the host derives every tensor's padding from its layout (TILE pads the last two
/// dimensions to 32, ROW_MAJOR pads nothing), so `padded_shape` must be exactly that padding of
/// `shape`; any other padding is an error naming the padding the host would use. The
/// Tenstorrent backend passes the padded shape to TT-NN, which stores any valid padding.
pub fn reshape_padded(
    tensor: &Tensor,
    shape: impl Into<Shape>,
    padded_shape: impl Into<Shape>,
) -> Result<Tensor> {
    let op = "ttnn::reshape";
    let (shape, padded_shape) = (shape.into(), padded_shape.into());
    if padded_shape.rank() != shape.rank()
        || padded_shape
            .dims()
            .iter()
            .zip(shape.dims())
            .any(|(p, s)| p < s)
    {
        return Err(Error::shape(
            op,
            format!("the padded shape (rank and dims at least those of {shape})"),
            shape.to_string(),
            padded_shape,
        ));
    }
    if let Storage::Device {
        device,
        buffer: DeviceBuffer::Tt(_),
    } = &tensor.storage
        && let BackendImpl::Tt(tt) = device.backend_impl()
    {
        if shape.volume() != tensor.shape().volume() {
            return Err(Error::shape(
                op,
                format!(
                    "the new shape (volumes must match: the tensor has {} elements)",
                    tensor.shape().volume()
                ),
                tensor.shape().to_string(),
                shape,
            ));
        }
        return tt_ops::reshape(&Tt::new(tt, device), op, tensor, shape, Some(padded_shape));
    }
    let derived = shape.padded(tensor.layout());
    if padded_shape != derived {
        return Err(Error::arg(
            op,
            format!(
                "padded shape {padded_shape} is not {derived}, the {:?} padding of {shape}; the host backend derives padding from the layout and cannot store other padding",
                tensor.layout()
            ),
        ));
    }
    reshape(tensor, shape)
}

/// Prepends 1s up to rank 4 (TT-NN's `ttnn.unsqueeze_to_4D`); a tensor of higher rank must have
/// leading 1s to drop. A view sharing the buffer.
pub fn unsqueeze_to_4d(tensor: &Tensor) -> Result<Tensor> {
    let op = "ttnn::unsqueeze_to_4D";
    let s = tensor.shape();
    let r = s.rank();
    let shape = if r <= 4 {
        let mut dims = [1usize; 4];
        dims[4 - r..].copy_from_slice(s.dims());
        Shape::new(&dims)
    } else {
        if s.dims()[..r - 4].iter().any(|&d| d != 1) {
            return Err(Error::shape(
                op,
                "the tensor (dims before the last 4 must be 1)",
                "rank <= 4",
                s,
            ));
        }
        Shape::new(&s.dims()[r - 4..])
    };
    match &tensor.storage {
        Storage::Device { device, .. } => match device.backend_impl() {
            BackendImpl::Host(_) => Ok(tensor.view(shape)),
            BackendImpl::Tt(tt) => tt_ops::reshape(&Tt::new(tt, device), op, tensor, shape, None),
        },
        Storage::Host(_) => Ok(tensor.view(shape)),
    }
}

// ---------------------------------------------------------------------------------------------
// to_layout

/// The tensor in `layout` (TT-NN's `ttnn.to_layout`: tilize / untilize), on the host or on a
/// device. Same shape and dtype; block-float and ternary tensors exist only in TILE layout.
/// Already in `layout`: the same tensor (a handle sharing the buffer), as TT-NN returns it. On a
/// device the result is a new buffer with the input's memory config (a sharded config gets its
/// spec re-derived when the padded shape changes) and bit-exact values; a host tensor is
/// converted as [`Tensor::to_layout`] does.
pub fn to_layout(tensor: &Tensor, layout: Layout) -> Result<Tensor> {
    let op = "ttnn::to_layout";
    if tensor.layout() == layout {
        return Ok(tensor.clone());
    }
    crate::tensor::check_tile_dtype(op, tensor.dtype(), layout)?;
    let device = match &tensor.storage {
        Storage::Host(_) => return tensor.to_layout(layout),
        Storage::Device { device, .. } => device,
    };
    let shape = tensor.shape();
    let mc = crate::ops::output_memory_config(op, device, None, tensor, shape, layout)?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => return tt_ops::to_layout(&Tt::new(tt, device), op, tensor, layout),
    };
    let out = Tensor::allocate(device, op, shape, tensor.dtype(), layout, &mc)?;
    host.submit(CopyCmd {
        src: tensor.host_buffer(op, "the tensor")?.clone(),
        dst: out.host_buffer(op, "output")?.clone(),
        scratch: conversion_scratch(tensor.dtype(), tensor.dtype(), shape.volume()),
    })?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// to_memory_config / copy

/// Moves a device tensor into `memory_config` (interleaved <-> sharded, DRAM <-> L1, reshard),
/// optionally converting to `dtype`. The result is a new buffer with the same shape and layout.
///
/// TT-NN quirk kept: when the tensor already has exactly `memory_config`, the same tensor is
/// returned (a clone of the handle, sharing the buffer), even if a different `dtype` was asked
/// for. A sharded target needs a shard spec (TT-NN errors too). Block-float and ternary targets
/// need TILE layout.
pub fn to_memory_config(
    tensor: &Tensor,
    memory_config: &MemoryConfig,
    dtype: Option<DataType>,
) -> Result<Tensor> {
    let op = "ttnn::to_memory_config";
    let device = on_device(op, "the tensor", tensor)?;
    if tensor.memory_config() == Some(memory_config) {
        return Ok(tensor.clone());
    }
    if memory_config.is_sharded() && memory_config.shard_spec.is_none() {
        return Err(Error::mem_config(
            op,
            format!(
                "a {:?} target needs a shard spec (spec-less sharded configs are only hints to ops that derive one)",
                memory_config.memory_layout
            ),
        ));
    }
    let dtype = dtype.unwrap_or(tensor.dtype());
    let layout = tensor.layout();
    crate::tensor::check_tile_dtype(op, dtype, layout)?;
    let shape = tensor.shape();
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            let requested = (dtype != tensor.dtype()).then_some(dtype);
            return tt_ops::to_memory_config(
                &Tt::new(tt, device),
                op,
                tensor,
                memory_config,
                requested,
            );
        }
    };
    let out = Tensor::allocate(device, op, shape, dtype, layout, memory_config)?;
    host.submit(CopyCmd {
        src: tensor.host_buffer(op, "the tensor")?.clone(),
        dst: out.host_buffer(op, "output")?.clone(),
        scratch: conversion_scratch(tensor.dtype(), dtype, shape.volume()),
    })?;
    Ok(out)
}

/// f32 scratch a [`CopyCmd`] needs: only a float conversion from non-f32 storage reads
/// through it.
fn conversion_scratch(from: DataType, to: DataType, len: usize) -> Vec<f32> {
    let same = from == to;
    let ints = from.is_integer() && to.is_integer();
    Vec::with_capacity(if same || ints || from == DataType::Float32 {
        0
    } else {
        len
    })
}

/// DataTypes `ttnn::copy` accepts (TT-NN's list).
const COPY_TYPES: &[DataType] = &[
    DataType::Bfloat16,
    DataType::Bfloat8B,
    DataType::Float32,
    DataType::Bfloat4B,
    DataType::Uint32,
    DataType::Int32,
];

/// Copies `src` into `dst` in place (TT-NN's `ttnn.copy(src, dst)`), converting to `dst`'s
/// dtype, and returns `dst` (a handle to the same buffer), as TT-NN does.
///
/// Validation follows TT-NN: dtypes in {BF16, BFP8_B, FP32, BFP4_B, UINT32, INT32}; both on one
/// device; equal logical and padded shapes; same layout; same memory layout; a dtype change
/// only in TILE layout ("Only tile layout supports dtype conversion"). With equal dtypes the
/// copy is bit-exact.
pub fn copy(src: &Tensor, dst: &Tensor) -> Result<Tensor> {
    let op = "ttnn::copy";
    let device = on_device(op, "src", src)?;
    on_same_device(op, "dst", device, dst)?;
    expect_dtype(op, "src", src, COPY_TYPES)?;
    expect_dtype(op, "dst", dst, COPY_TYPES)?;
    if src.shape() != dst.shape() || src.padded_shape() != dst.padded_shape() {
        return Err(Error::shape(
            op,
            "dst (must have src's logical and padded shape)",
            src.shape().to_string(),
            dst.shape(),
        ));
    }
    expect_layout(op, "dst (must have src's layout)", dst, src.layout())?;
    let (sm, dm) = (src.memory_config(), dst.memory_config());
    if sm.map(|m| m.memory_layout) != dm.map(|m| m.memory_layout) {
        return Err(Error::mem_config(
            op,
            format!(
                "dst's memory layout {:?} must equal src's {:?}",
                dm.map(|m| m.memory_layout),
                sm.map(|m| m.memory_layout)
            ),
        ));
    }
    if src.dtype() != dst.dtype() && src.layout() != Layout::Tile {
        return Err(Error::arg(
            op,
            format!(
                "Only tile layout supports dtype conversion ({:?} to {:?} in {:?})",
                src.dtype(),
                dst.dtype(),
                src.layout()
            ),
        ));
    }
    if src.shares_buffer_with(dst) {
        // The same buffer: nothing to move (and one buffer must not be locked twice).
        return Ok(dst.clone());
    }
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            tt_ops::copy(&Tt::new(tt, device), op, src, dst)?;
            return Ok(dst.clone());
        }
    };
    host.submit(CopyCmd {
        src: src.host_buffer(op, "src")?.clone(),
        dst: dst.host_buffer(op, "dst")?.clone(),
        scratch: conversion_scratch(src.dtype(), dst.dtype(), src.shape().volume()),
    })?;
    Ok(dst.clone())
}

// ---------------------------------------------------------------------------------------------
// Head split / concat

/// `[1, 1, B, (nh + 2 nkv) * hd]` input types of the decode head ops.
const DECODE_TYPES: &[DataType] = &[DataType::Float32, DataType::Bfloat16];
/// Input types of the prefill head ops.
const PREFILL_TYPES: &[DataType] = &[DataType::Float32, DataType::Bfloat16, DataType::Bfloat8B];

/// A core set holding `cores` in this order: row runs, stacked into rectangles where whole runs
/// of equal extent follow each other (the shape TT-NN's `num_cores_to_corerangeset` gives).
fn core_set(op: &'static str, cores: &[CoreCoord]) -> Result<CoreRangeSet> {
    let mut runs: Vec<CoreRange> = Vec::new();
    for &c in cores {
        if let Some(last) = runs.last_mut()
            && last.start.y == c.y
            && last.end.y == c.y
            && last.end.x + 1 == c.x
        {
            last.end.x = c.x;
            continue;
        }
        runs.push(CoreRange::new(c, c));
    }
    let mut ranges: Vec<CoreRange> = Vec::new();
    for run in runs {
        if let Some(last) = ranges.last_mut()
            && last.start.x == run.start.x
            && last.end.x == run.end.x
            && last.end.y + 1 == run.start.y
        {
            last.end.y = run.end.y;
            continue;
        }
        ranges.push(run);
    }
    CoreRangeSet::new(ranges).ok_or_else(|| Error::mem_config(op, "overlapping shard cores"))
}

/// The full compute grid as one rectangle.
fn full_grid(device: &Device) -> CoreRangeSet {
    let g = device.compute_with_storage_grid_size();
    CoreRangeSet::from_range(CoreRange::new(
        CoreCoord::new(0, 0),
        CoreCoord::new(g.x - 1, g.y - 1),
    ))
}

/// An L1 sharded config with `shape` shards on `cores`.
fn l1_sharded(
    op: &'static str,
    layout: TensorMemoryLayout,
    cores: &[CoreCoord],
    shape: [usize; 2],
) -> Result<MemoryConfig> {
    Ok(MemoryConfig::sharded(
        layout,
        BufferType::L1,
        ShardSpec::new(core_set(op, cores)?, shape, ShardOrientation::RowMajor),
    ))
}

fn check_heads(op: &'static str, num_heads: usize, num_kv_heads: usize) -> Result<()> {
    if num_heads == 0 || num_kv_heads == 0 {
        return Err(Error::arg(
            op,
            format!("num_heads ({num_heads}) and num_kv_heads ({num_kv_heads}) must be at least 1"),
        ));
    }
    Ok(())
}

/// Host requirement of every head op: heads are whole tiles wide (TT-NN's kernels move whole
/// tiles; a partial-tile head would interleave padding).
fn check_head_dim(op: &'static str, head_dim: usize, input: &Tensor) -> Result<()> {
    if head_dim == 0 || !head_dim.is_multiple_of(TILE_SIZE) {
        return Err(Error::shape(
            op,
            format!("input (head_dim {head_dim} must be a positive multiple of 32)"),
            "a width of whole 32-wide heads",
            input.shape(),
        ));
    }
    Ok(())
}

fn unsupported_shape(op: &'static str, input: &Tensor, expected: &str) -> Error {
    Error::shape(
        op,
        format!("input (Unsupported input shape = {})", input.shape()),
        expected,
        input.shape(),
    )
}

/// Optional arguments of [`nlp_create_qkv_heads_decode`] (TT-NN's keyword arguments).
#[derive(Clone, Debug, Default)]
pub struct NlpCreateQkvHeadsDecodeArgs<'a> {
    /// Default: `num_heads`.
    pub num_kv_heads: Option<usize>,
    /// K shards on the Q cores (default true; forced true for a non-sharded input). When false,
    /// K goes on the next `B` cores of the grid.
    pub overlap_qk_coregrid: Option<bool>,
    /// One-element UINT32/INT32 tensor: the first input user to take (sharded input only;
    /// with `slice_size`).
    pub batch_offset: Option<&'a Tensor>,
    /// Users to take from `batch_offset` on (with `batch_offset`).
    pub slice_size: Option<usize>,
    /// Only its shard grid is used (the output is always L1 height-sharded); default: the full
    /// compute grid (as for `L1_HEIGHT_SHARDED_MEMORY_CONFIG`, which has no spec).
    pub memory_config: Option<MemoryConfig>,
}

/// Splits fused decode QKV `[1, 1, B, (nh + 2 nkv) * hd]` (`[Q heads | K heads | V heads]`) into
/// Q `[1, B, nh, hd]` and K, V `[1, B, nkv, hd]`: `Q[0, b, h, :] = x[0, 0, b, h*hd..(h+1)*hd]`,
/// K from column block `nh + h`, V from `nh + nkv + h`
/// (TT-NN's `ttnn.experimental.nlp_create_qkv_heads_decode`).
///
/// Outputs are L1 HEIGHT_SHARDED with TT-NN's specs, one user per core: Q shard `[ceil32(nh), hd]`
/// on the first B cores of the grid (row-major), K and V shards `[ceil32(nh), hd]` (sic: TT-NN
/// sizes them from the Q head count) — K on the Q cores, or on the next B cores when
/// `overlap_qk_coregrid` is false — so the modelled L1 equals TT-NN's.
///
/// Validation follows TT-NN: FLOAT32/BFLOAT16, TILE; `x.shape[3] % 32 == 0`, `B <= 32`,
/// `shape[0] == shape[1] == 1`; width divisible by `nh + 2 nkv`; a sharded input WIDTH_SHARDED,
/// row-major, with shard height = padded rows; `nh <= 32`, `nh >= nkv`; enough grid cores
/// (B, or 2B without overlap); `batch_offset` and `slice_size` together.
///
/// Host deviations: `head_dim` must be a multiple of 32; `batch_offset`/`slice_size` are
/// rejected for a non-sharded input (TT-NN only validates them on its sharded path); an offset
/// beyond the input's users is an error when the op runs.
pub fn nlp_create_qkv_heads_decode(
    input: &Tensor,
    num_heads: usize,
    args: &NlpCreateQkvHeadsDecodeArgs<'_>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "ttnn::experimental::nlp_create_qkv_heads_decode";
    let device = on_device(op, "input", input)?;
    expect_dtype(op, "input (Unsupported data format)", input, DECODE_TYPES)?;
    expect_layout(op, "input", input, Layout::Tile)?;
    expect_rank(op, "input", input, 4)?;
    let nkv = args.num_kv_heads.unwrap_or(num_heads);
    check_heads(op, num_heads, nkv)?;
    let s = input.shape();
    let (users, width) = (s.dims()[2], s.dims()[3]);
    if !width.is_multiple_of(TILE_SIZE)
        || users == 0
        || users > 32
        || s.dims()[0] != 1
        || s.dims()[1] != 1
    {
        return Err(unsupported_shape(
            op,
            input,
            "[1, 1, 1 <= B <= 32, W % 32 == 0]",
        ));
    }
    let total_heads = num_heads + 2 * nkv;
    if !width.is_multiple_of(total_heads) {
        return Err(Error::shape(
            op,
            format!(
                "input (Input shape must be divisible by num_heads + 2*num_kv_heads = {total_heads})"
            ),
            format!("[1, 1, B, k * {total_heads}]"),
            s,
        ));
    }
    let hd = width / total_heads;
    check_head_dim(op, hd, input)?;

    let in_mc = input
        .memory_config()
        .ok_or_else(|| Error::mem_config(op, "input has no memory config"))?;
    let mut overlap = args.overlap_qk_coregrid.unwrap_or(true);
    let mut out_users = users;
    let mut batch_offset = None;
    if in_mc.is_sharded() {
        if in_mc.memory_layout != TensorMemoryLayout::WidthSharded {
            return Err(Error::mem_config(
                op,
                format!(
                    "Current input memory layout is {:?}. It must be width sharded",
                    in_mc.memory_layout
                ),
            ));
        }
        let spec = in_mc
            .shard_spec
            .as_ref()
            .ok_or_else(|| Error::mem_config(op, "the sharded input has no shard spec"))?;
        if spec.shape[0] != input.padded_shape().rows() {
            return Err(Error::mem_config(
                op,
                format!(
                    "Shard shape must be correct: shard height {} != padded rows {}",
                    spec.shape[0],
                    input.padded_shape().rows()
                ),
            ));
        }
        if spec.orientation != ShardOrientation::RowMajor {
            return Err(Error::mem_config(op, "Shard orientation must be ROW_MAJOR"));
        }
        if !overlap && !hd.is_multiple_of(spec.shape[1]) {
            return Err(Error::mem_config(
                op,
                "We don't support partial heads in shards when q and k heads are not overlapping coregrid",
            ));
        }
        match (args.batch_offset, args.slice_size) {
            (None, None) => {}
            (Some(bo), Some(slice)) => {
                on_same_device(op, "batch_offset", device, bo)?;
                expect_dtype(op, "batch_offset", bo, &[DataType::Uint32, DataType::Int32])?;
                if bo.shape().rank() == 0 || bo.shape().dims()[0] != 1 || bo.shape().volume() == 0 {
                    return Err(Error::shape(
                        op,
                        "batch_offset (batch_offset must be unary tensor)",
                        "[1]",
                        bo.shape(),
                    ));
                }
                if slice == 0 || slice > users {
                    return Err(Error::arg(
                        op,
                        format!("slice_size {slice} must be in 1..={users} (the input's users)"),
                    ));
                }
                out_users = slice;
                batch_offset = Some((bo, users));
            }
            _ => {
                return Err(Error::arg(
                    op,
                    "Both batch_offset and slice_size must be provided or neither",
                ));
            }
        }
    } else {
        if args.batch_offset.is_some() || args.slice_size.is_some() {
            return Err(Error::arg(
                op,
                "batch_offset and slice_size need a width-sharded input",
            ));
        }
        overlap = true;
    }
    if num_heads > 32 {
        return Err(Error::arg(
            op,
            format!("There are {num_heads} q heads only 32 are supported"),
        ));
    }
    if num_heads < nkv {
        return Err(Error::arg(
            op,
            format!("num_q_heads={num_heads} must be greater than or equal to num_kv_heads={nkv}"),
        ));
    }

    let grid = args
        .memory_config
        .as_ref()
        .and_then(|m| m.shard_spec.as_ref())
        .map(|s| s.grid.clone())
        .unwrap_or_else(|| full_grid(device));
    let cores = grid.cores(ShardOrientation::RowMajor);
    let needed = if overlap { out_users } else { 2 * out_users };
    if cores.len() < needed {
        return Err(Error::mem_config(
            op,
            format!(
                "Grid Size is {}. Need at least {needed} cores for {out_users} users{}",
                cores.len(),
                if overlap {
                    ""
                } else {
                    " when q and k heads are not overlapping coregrid"
                }
            ),
        ));
    }
    let heads_pad = num_heads.div_ceil(TILE_SIZE) * TILE_SIZE;
    let q_cores = &cores[..out_users];
    let k_cores = if overlap {
        q_cores
    } else {
        &cores[out_users..2 * out_users]
    };
    let hs = TensorMemoryLayout::HeightSharded;
    let q_mc = l1_sharded(op, hs, q_cores, [heads_pad, hd])?;
    let k_mc = l1_sharded(op, hs, k_cores, [heads_pad, hd])?;
    let v_mc = l1_sharded(op, hs, q_cores, [heads_pad, hd])?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::nlp_create_qkv_heads_decode(
                &Tt::new(tt, device),
                op,
                input,
                num_heads,
                args,
            );
        }
    };
    let batch_offset = match batch_offset {
        Some((bo, input_users)) => Some(BatchOffset {
            buffer: bo.host_buffer(op, "batch_offset")?.clone(),
            input_users,
        }),
        None => None,
    };
    let dtype = input.dtype();
    let q = Tensor::allocate(
        device,
        op,
        Shape::new(&[1, out_users, num_heads, hd]),
        dtype,
        Layout::Tile,
        &q_mc,
    )?;
    let kv_shape = Shape::new(&[1, out_users, nkv, hd]);
    let k = Tensor::allocate(device, op, kv_shape, dtype, Layout::Tile, &k_mc)?;
    let v = Tensor::allocate(device, op, kv_shape, dtype, Layout::Tile, &v_mc)?;
    host.submit(CreateHeadsCmd {
        op,
        input: input.host_buffer(op, "input")?.clone(),
        input_kv: None,
        q: q.host_buffer(op, "q")?.clone(),
        k: k.host_buffer(op, "k")?.clone(),
        v: v.host_buffer(op, "v")?.clone(),
        batch: out_users,
        seq: 1,
        num_heads,
        num_kv_heads: nkv,
        head_dim: hd,
        input_w: width,
        kv_w: width,
        transpose_k: false,
        batch_offset,
        s_in: Vec::new(),
        s_out: Vec::new(),
    })?;
    Ok((q, k, v))
}

/// Optional arguments of [`nlp_concat_heads_decode`].
#[derive(Clone, Debug, Default)]
pub struct NlpConcatHeadsDecodeArgs {
    /// Ignored, as by TT-NN (the output is always L1 width-sharded).
    pub memory_config: Option<MemoryConfig>,
    /// Cores to place the output shards on (the first `num_heads`, row-major); default: the
    /// compute grid.
    pub sub_core_grids: Option<CoreRangeSet>,
}

/// Concatenates decode heads: `[1, B, nh_in, hd]` (one user per core, height-sharded) to
/// `[1, 1, B, num_heads * hd]` with `out[0, 0, b, h*hd..(h+1)*hd] = in[0, b, h, :]` for
/// `h < num_heads` (TT-NN's `ttnn.experimental.nlp_concat_heads_decode`).
///
/// The output is L1 WIDTH_SHARDED, shard `[32, hd]` on the first `num_heads` cores (row-major),
/// as on TT-NN.
///
/// Validation follows TT-NN: FLOAT32/BFLOAT16, TILE; `padded[0] == 1`, `padded[1] <= 32`,
/// `padded[2] == 32` ("currently only support 32 padded heads"); input HEIGHT_SHARDED with shard
/// `[32, hd]` on as many cores as users ("Input core grid num_cores must be equal to num users").
///
/// Host deviations: TT-NN's logical output has 32 rows (`max(B, 32)`); the host keeps `B`
/// logical rows (the padded shape, and so the memory, is the same). The input must hold at least
/// `num_heads` logical heads (TT-NN only checks the padded 32, reading padding as heads), and
/// `hd` must be a multiple of 32.
pub fn nlp_concat_heads_decode(
    input: &Tensor,
    num_heads: usize,
    args: &NlpConcatHeadsDecodeArgs,
) -> Result<Tensor> {
    let op = "ttnn::experimental::nlp_concat_heads_decode";
    let device = on_device(op, "input", input)?;
    expect_dtype(op, "input", input, DECODE_TYPES)?;
    expect_layout(op, "input", input, Layout::Tile)?;
    expect_rank(op, "input", input, 4)?;
    check_heads(op, num_heads, 1)?;
    let s = input.shape();
    let p = input.padded_shape();
    let (users, heads_in, hd) = (s.dims()[1], s.dims()[2], s.dims()[3]);
    if p.dims()[0] != 1 || users == 0 || p.dims()[1] > 32 {
        return Err(unsupported_shape(op, input, "[1, 1 <= B <= 32, heads, hd]"));
    }
    if p.dims()[2] != TILE_SIZE {
        return Err(Error::shape(
            op,
            "input (currently only support 32 padded heads)",
            "[1, B, <= 32 heads, hd]",
            s,
        ));
    }
    if heads_in < num_heads {
        return Err(Error::shape(
            op,
            format!("input (holds fewer heads than num_heads = {num_heads})"),
            format!("[1, B, >= {num_heads}, hd]"),
            s,
        ));
    }
    check_head_dim(op, hd, input)?;
    let in_mc = input
        .memory_config()
        .ok_or_else(|| Error::mem_config(op, "input has no memory config"))?;
    let spec = match (in_mc.memory_layout, in_mc.shard_spec.as_ref()) {
        (TensorMemoryLayout::HeightSharded, Some(spec)) => spec,
        _ => {
            return Err(Error::mem_config(
                op,
                format!(
                    "the input must be HEIGHT_SHARDED with a shard spec, got {:?}",
                    in_mc.memory_layout
                ),
            ));
        }
    };
    if spec.shape != [TILE_SIZE, hd] {
        return Err(Error::mem_config(
            op,
            format!(
                "the input shard shape must be [32, {hd}] (one user per core), got {:?}",
                spec.shape
            ),
        ));
    }
    if spec.grid.num_cores() != p.dims()[1] {
        return Err(Error::mem_config(
            op,
            format!(
                "Input core grid num_cores must be equal to num users ({} cores for {} users)",
                spec.grid.num_cores(),
                p.dims()[1]
            ),
        ));
    }
    let grid = args
        .sub_core_grids
        .clone()
        .unwrap_or_else(|| full_grid(device));
    let cores = grid.cores(ShardOrientation::RowMajor);
    if cores.len() < num_heads {
        return Err(Error::mem_config(
            op,
            format!(
                "{num_heads} heads need {num_heads} output cores; the grid has {}",
                cores.len()
            ),
        ));
    }
    let mc = l1_sharded(
        op,
        TensorMemoryLayout::WidthSharded,
        &cores[..num_heads],
        [TILE_SIZE, hd],
    )?;
    let out_shape = Shape::new(&[1, 1, users, num_heads * hd]);
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::nlp_concat_heads_decode(
                &Tt::new(tt, device),
                op,
                input,
                num_heads,
                args,
            );
        }
    };
    let out = Tensor::allocate(device, op, out_shape, input.dtype(), Layout::Tile, &mc)?;
    host.submit(ConcatHeadsCmd {
        input: input.host_buffer(op, "input")?.clone(),
        out: out.host_buffer(op, "output")?.clone(),
        batch: users,
        seq: 1,
        heads: num_heads,
        src_heads: heads_in,
        head_dim: hd,
    })?;
    Ok(out)
}

/// Optional arguments of [`nlp_create_qkv_heads`] (TT-NN's keyword arguments).
#[derive(Clone, Debug)]
pub struct NlpCreateQkvHeadsArgs<'a> {
    /// Separate `[B, 1, S, 2 * nkv * hd]` `[K heads | V heads]` input; `input` then holds Q only.
    pub input_kv: Option<&'a Tensor>,
    /// Default: `num_heads`.
    pub num_kv_heads: Option<usize>,
    /// K as `[B, nkv, hd, S]` (TT-NN default true; tt_transformers passes false).
    pub transpose_k_heads: bool,
    /// Default: the input's; must be interleaved.
    pub memory_config: Option<MemoryConfig>,
}

impl Default for NlpCreateQkvHeadsArgs<'_> {
    fn default() -> Self {
        Self {
            input_kv: None,
            num_kv_heads: None,
            transpose_k_heads: true,
            memory_config: None,
        }
    }
}

/// Splits fused prefill QKV `[B, 1, S, (nh + 2 nkv) * hd]` into Q `[B, nh, S, hd]`,
/// K `[B, nkv, S, hd]` (or `[B, nkv, hd, S]` with `transpose_k_heads`) and V `[B, nkv, S, hd]`:
/// `Q[b, h, s, :] = x[b, 0, s, h*hd..(h+1)*hd]`, K and V from the following column blocks
/// (TT-NN's `ttnn.experimental.nlp_create_qkv_heads`).
///
/// Validation follows TT-NN: FLOAT32/BFLOAT16/BFLOAT8_B, TILE, `shape[1] == 1`, width divisible by
/// `nh + 2 nkv` (or by `nh`, and `input_kv`'s by `2 nkv`, with equal head dims); `input_kv` of the
/// same dtype, TILE, batch and sequence; a non-sharded input needs an INTERLEAVED output.
///
/// Host deviations: sharded inputs (TT-NN's grouped-head shard layout) are not implemented;
/// `head_dim` must be a multiple of 32 (TT-NN rounds the output's up and leaves padding).
/// A transposed BFLOAT8_B K is re-quantized in its new 16-value groups.
pub fn nlp_create_qkv_heads(
    input: &Tensor,
    num_heads: usize,
    args: &NlpCreateQkvHeadsArgs<'_>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "ttnn::experimental::nlp_create_qkv_heads";
    let device = on_device(op, "input", input)?;
    expect_dtype(op, "input (Unsupported data format)", input, PREFILL_TYPES)?;
    expect_layout(op, "input", input, Layout::Tile)?;
    expect_rank(op, "input", input, 4)?;
    let nkv = args.num_kv_heads.unwrap_or(num_heads);
    check_heads(op, num_heads, nkv)?;
    let s = input.shape();
    let (batch, seq, width) = (s.dims()[0], s.dims()[2], s.dims()[3]);
    if s.dims()[1] != 1 {
        return Err(Error::shape(
            op,
            format!(
                "input (Unsupported input sequence length {} is not equal to 1)",
                s.dims()[1]
            ),
            "[B, 1, S, W]",
            s,
        ));
    }
    let in_mc = input
        .memory_config()
        .ok_or_else(|| Error::mem_config(op, "input has no memory config"))?;
    if in_mc.is_sharded() {
        return Err(Error::mem_config(
            op,
            "sharded inputs (grouped-head shard layout) are not implemented by the host backend",
        ));
    }
    let mc = args.memory_config.clone().unwrap_or_else(|| in_mc.clone());
    if mc.memory_layout != TensorMemoryLayout::Interleaved {
        return Err(Error::mem_config(
            op,
            format!(
                "Output memory config layout must be INTERLEAVED but got {:?}",
                mc.memory_layout
            ),
        ));
    }

    let (kv_w, hd) = match args.input_kv {
        Some(kv) => {
            on_same_device(op, "input_kv", device, kv)?;
            if kv.dtype() != input.dtype() {
                return Err(Error::dtype(
                    op,
                    "input_kv (KV tensor dtype must be same as Q tensor dtype)",
                    kv.dtype(),
                    format!("{:?}", input.dtype()),
                ));
            }
            expect_layout(op, "input_kv", kv, Layout::Tile)?;
            expect_rank(op, "input_kv", kv, 4)?;
            let ks = kv.shape();
            if ks.dims()[0] != batch || ks.dims()[1] != 1 || ks.dims()[2] != seq {
                return Err(Error::shape(
                    op,
                    "input_kv (needs the input's batch and sequence length, and dim 1 == 1)",
                    format!("[{batch}, 1, {seq}, 2 * nkv * hd]"),
                    ks,
                ));
            }
            if kv.memory_config().is_some_and(|m| m.is_sharded()) {
                return Err(Error::mem_config(
                    op,
                    "Input tensor must be sharded when KV tensor is sharded",
                ));
            }
            let kw = ks.last();
            if !width.is_multiple_of(num_heads)
                || !kw.is_multiple_of(2 * nkv)
                || width / num_heads != kw / (2 * nkv)
            {
                return Err(Error::shape(
                    op,
                    format!(
                        "input_kv (Head dims must be the same for Q and K, V: Q width {width} / {num_heads} heads, KV width {kw} / {} heads)",
                        2 * nkv
                    ),
                    format!(
                        "[{batch}, 1, {seq}, {}]",
                        2 * nkv * (width / num_heads.max(1))
                    ),
                    ks,
                ));
            }
            (kw, width / num_heads)
        }
        None => {
            let total = num_heads + 2 * nkv;
            if !width.is_multiple_of(total) {
                return Err(Error::shape(
                    op,
                    format!(
                        "input (Unsupported input shape: width not divisible by num_heads + 2*num_kv_heads = {total})"
                    ),
                    format!("[B, 1, S, k * {total}]"),
                    s,
                ));
            }
            (width, width / total)
        }
    };
    check_head_dim(op, hd, input)?;

    let dtype = input.dtype();
    let q_shape = Shape::new(&[batch, num_heads, seq, hd]);
    let v_shape = Shape::new(&[batch, nkv, seq, hd]);
    let k_shape = if args.transpose_k_heads {
        Shape::new(&[batch, nkv, hd, seq])
    } else {
        v_shape
    };
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::nlp_create_qkv_heads(&Tt::new(tt, device), op, input, num_heads, args);
        }
    };
    let kv_buf = match args.input_kv {
        Some(kv) => Some(kv.host_buffer(op, "input_kv")?.clone()),
        None => None,
    };
    let q = Tensor::allocate(device, op, q_shape, dtype, Layout::Tile, &mc)?;
    let k = Tensor::allocate(device, op, k_shape, dtype, Layout::Tile, &mc)?;
    let v = Tensor::allocate(device, op, v_shape, dtype, Layout::Tile, &mc)?;
    let block_t = args.transpose_k_heads && dtype.requires_tile_layout();
    host.submit(CreateHeadsCmd {
        op,
        input: input.host_buffer(op, "input")?.clone(),
        input_kv: kv_buf,
        q: q.host_buffer(op, "q")?.clone(),
        k: k.host_buffer(op, "k")?.clone(),
        v: v.host_buffer(op, "v")?.clone(),
        batch,
        seq,
        num_heads,
        num_kv_heads: nkv,
        head_dim: hd,
        input_w: width,
        kv_w,
        transpose_k: args.transpose_k_heads,
        batch_offset: None,
        s_in: Vec::with_capacity(if block_t { batch * seq * kv_w } else { 0 }),
        s_out: Vec::with_capacity(if block_t { k_shape.volume() } else { 0 }),
    })?;
    Ok((q, k, v))
}

/// Concatenates prefill heads: `[B, nh, S, hd]` to `[B, 1, S, nh * hd]` with
/// `out[b, 0, s, h*hd + d] = in[b, h, s, d]` (TT-NN's `ttnn.experimental.nlp_concat_heads`).
///
/// Validation follows TT-NN: FLOAT32/BFLOAT16/BFLOAT8_B, TILE; a sharded input not
/// WIDTH_SHARDED, with shard width = `hd` and a non-height-sharded output; a non-sharded input
/// needs an INTERLEAVED output. Output memory config: `memory_config`, else the input's.
/// Host deviation: `hd` must be a multiple of 32.
pub fn nlp_concat_heads(input: &Tensor, memory_config: Option<&MemoryConfig>) -> Result<Tensor> {
    let op = "ttnn::experimental::nlp_concat_heads";
    let device = on_device(op, "input", input)?;
    expect_dtype(op, "input", input, PREFILL_TYPES)?;
    expect_layout(op, "input", input, Layout::Tile)?;
    expect_rank(op, "input", input, 4)?;
    let s = input.shape();
    let (batch, heads, seq, hd) = (s.dims()[0], s.dims()[1], s.dims()[2], s.dims()[3]);
    check_head_dim(op, hd, input)?;
    let in_mc = input
        .memory_config()
        .ok_or_else(|| Error::mem_config(op, "input has no memory config"))?;
    let requested = memory_config.unwrap_or(in_mc);
    if in_mc.is_sharded() {
        if in_mc.memory_layout == TensorMemoryLayout::WidthSharded {
            return Err(Error::mem_config(
                op,
                "a sharded input must not be WIDTH_SHARDED",
            ));
        }
        if in_mc.shard_spec.as_ref().map(|sp| sp.shape[1]) != Some(hd) {
            return Err(Error::mem_config(
                op,
                format!("the input's shard width must equal its padded width {hd}"),
            ));
        }
        if requested.memory_layout == TensorMemoryLayout::HeightSharded {
            return Err(Error::mem_config(
                op,
                "a sharded input needs a non-height-sharded output",
            ));
        }
    } else if requested.memory_layout != TensorMemoryLayout::Interleaved {
        return Err(Error::mem_config(
            op,
            format!(
                "a non-sharded input needs an INTERLEAVED output, got {:?}",
                requested.memory_layout
            ),
        ));
    }
    let out_shape = Shape::new(&[batch, 1, seq, heads * hd]);
    let mc = crate::ops::output_memory_config(
        op,
        device,
        memory_config,
        input,
        out_shape,
        Layout::Tile,
    )?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::nlp_concat_heads(&Tt::new(tt, device), op, input, memory_config);
        }
    };
    let out = Tensor::allocate(device, op, out_shape, input.dtype(), Layout::Tile, &mc)?;
    host.submit(ConcatHeadsCmd {
        input: input.host_buffer(op, "input")?.clone(),
        out: out.host_buffer(op, "output")?.clone(),
        batch,
        seq,
        heads,
        src_heads: heads,
        head_dim: hd,
    })?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// slice

/// Optional arguments of [`slice`].
#[derive(Clone, Debug, Default)]
pub struct SliceArgs {
    /// Default: the input's memory config (a sharded one gets a spec derived for the output).
    pub memory_config: Option<MemoryConfig>,
}

/// `input[starts[0]..ends[0], starts[1]..ends[1], ...]` with step 1 (TT-NN's `ttnn.slice`):
/// e.g. the last position's row of a prefill's hidden states. Same dtype and layout; values are
/// copied exactly (block floats through f32, re-grouped when the last dimension is cut).
pub fn slice(input: &Tensor, starts: &[usize], ends: &[usize], args: &SliceArgs) -> Result<Tensor> {
    let op = "ttnn::slice";
    let device = on_device(op, "input", input)?;
    let shape = input.shape();
    let rank = shape.rank();
    if starts.len() != rank || ends.len() != rank {
        return Err(Error::arg(
            op,
            format!(
                "starts and ends need {rank} entries (the input's rank), got {} and {}",
                starts.len(),
                ends.len()
            ),
        ));
    }
    let mut dims = Vec::with_capacity(rank);
    for (d, (&s, &e)) in starts.iter().zip(ends).enumerate() {
        if s >= e || e > shape.dims()[d] {
            return Err(Error::arg(
                op,
                format!(
                    "dimension {d}: {s}..{e} is not a non-empty range within 0..{}",
                    shape.dims()[d]
                ),
            ));
        }
        dims.push(e - s);
    }
    let out_shape = Shape::new(&dims);
    let mc = crate::ops::output_memory_config(
        op,
        device,
        args.memory_config.as_ref(),
        input,
        out_shape,
        input.layout(),
    )?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::slice(
                &Tt::new(tt, device),
                op,
                input,
                starts,
                ends,
                args.memory_config.as_ref(),
            );
        }
    };
    let out = Tensor::allocate(device, op, out_shape, input.dtype(), input.layout(), &mc)?;
    let mut in_strides = [0usize; crate::types::MAX_RANK];
    let mut s = 1;
    for d in (0..rank).rev() {
        in_strides[d] = s;
        s *= shape.dims()[d];
    }
    let mut start = [0usize; crate::types::MAX_RANK];
    start[..rank].copy_from_slice(starts);
    let mut out_dims = [1usize; crate::types::MAX_RANK];
    out_dims[..rank].copy_from_slice(&dims);
    let float_path = !matches!(
        input.dtype(),
        DataType::Float32
            | DataType::Uint32
            | DataType::Int32
            | DataType::Uint16
            | DataType::Uint8
            | DataType::Bfloat16
    );
    host.submit(crate::host::kernels::data_movement::SliceCmd {
        input: input.host_buffer(op, "input")?.clone(),
        out: out.host_buffer(op, "output")?.clone(),
        rank,
        in_strides,
        start,
        out_dims,
        sin: Vec::with_capacity(if float_path { shape.volume() } else { 0 }),
        sout: Vec::with_capacity(if float_path { out_shape.volume() } else { 0 }),
    })?;
    Ok(out)
}
