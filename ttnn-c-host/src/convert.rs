//! Reading the caller's pointers, and converting the header's enums and structs to `ttnn`'s
//! types and back.

use ttnn::transformer::SdpaProgramConfig;
use ttnn::{
    BufferType, ComputeKernelConfig, CoreCoord, CoreRange, CoreRangeSet, DataType,
    LayerNormProgramConfig, Layout, MathFidelity, MatmulProgramConfig, MemoryConfig, Shape,
    ShardOrientation, ShardSpec, TensorMemoryLayout, UnaryOp,
};
use ttnn_sys as sys;

use crate::status::{Failure, Res, invalid};

// ---------------------------------------------------------------------------------------------
// Pointers

/// An optional input (`NULL`: not given).
///
/// # Safety
/// `p` is NULL or valid for reads of a `T`.
pub(crate) unsafe fn opt<T: Copy>(p: *const T) -> Option<T> {
    // SAFETY: the caller's promise.
    unsafe { p.as_ref().copied() }
}

/// A required input.
///
/// # Safety
/// As [`opt`].
pub(crate) unsafe fn req<T: Copy>(p: *const T, what: &str) -> Res<T> {
    // SAFETY: the caller's promise.
    unsafe { opt(p) }.ok_or_else(|| invalid(format!("{what} is NULL")))
}

/// `n` elements at `p` (`p` may be NULL when `n` is 0).
///
/// # Safety
/// When `n > 0`, `p` is NULL or valid for reads of `n` `T`s that nothing writes meanwhile.
pub(crate) unsafe fn array<'a, T>(p: *const T, n: usize, what: &str) -> Res<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(invalid(format!(
            "{what} is NULL but {n} entries were promised"
        )));
    }
    // SAFETY: non-null, and the caller promises `n` readable elements.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// A required out-parameter, checked before any work so that nothing is created (and leaked)
/// when the caller forgot it. Written only on success, as the header says.
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    /// # Safety
    /// `p` is NULL or valid for a write of a `T` until [`Out::set`] is called.
    pub unsafe fn new(p: *mut T, what: &str) -> Res<Self> {
        if p.is_null() {
            return Err(invalid(format!("{what} is NULL")));
        }
        Ok(Self(p))
    }

    pub fn set(self, v: T) {
        // SAFETY: non-null and writable, as promised to `new`; `write` does not drop the
        // caller's (possibly uninitialized) old value.
        unsafe { self.0.write(v) }
    }
}

/// An optional out-parameter (`NULL`: the caller does not want it).
pub(crate) struct OptOut<T>(*mut T);

impl<T> OptOut<T> {
    /// # Safety
    /// As [`Out::new`], NULL allowed.
    pub unsafe fn new(p: *mut T) -> Self {
        Self(p)
    }

    pub fn wanted(&self) -> bool {
        !self.0.is_null()
    }

    /// Writes `make()` if the caller wants it; `make` (which may create a handle) runs only
    /// then, so an unwanted handle is never created and leaked.
    pub fn set_with(self, make: impl FnOnce() -> T) {
        if !self.0.is_null() {
            // SAFETY: non-null and writable, as promised to `new`.
            unsafe { self.0.write(make()) }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shapes

/// A shape of `rank` (1..=TTNN_C_MAX_RANK) dims at `dims`.
///
/// # Safety
/// `dims` is NULL or valid for reads of `rank` `u32`s.
pub(crate) unsafe fn shape(dims: *const u32, rank: u32, what: &str) -> Res<Shape> {
    if rank == 0 || rank > sys::TTNN_C_MAX_RANK {
        return Err(invalid(format!(
            "{what}: rank must be 1..{}, got {rank}",
            sys::TTNN_C_MAX_RANK
        )));
    }
    // SAFETY: the caller's promise.
    let d = unsafe { array(dims, rank as usize, what) }?;
    let dims: Vec<usize> = d.iter().map(|&x| x as usize).collect();
    Ok(Shape::new(&dims))
}

/// Writes `s` into the caller's `TTNN_C_MAX_RANK` entries.
pub(crate) fn write_shape(s: Shape, out_shape: Out<[u32; 8]>, out_rank: Out<u32>) -> Res<()> {
    let mut dims = [0u32; 8];
    for (d, &v) in dims.iter_mut().zip(s.dims()) {
        *d = u32::try_from(v)
            .map_err(|_| Failure::Unsupported(format!("dimension {v} does not fit uint32_t")))?;
    }
    out_shape.set(dims);
    out_rank.set(s.rank() as u32);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Enums

pub(crate) fn dtype(v: u32) -> Res<DataType> {
    Ok(match v {
        sys::TTNN_C_DTYPE_BFLOAT16 => DataType::Bfloat16,
        sys::TTNN_C_DTYPE_FLOAT32 => DataType::Float32,
        sys::TTNN_C_DTYPE_UINT32 => DataType::Uint32,
        sys::TTNN_C_DTYPE_BFLOAT8_B => DataType::Bfloat8B,
        sys::TTNN_C_DTYPE_BFLOAT4_B => DataType::Bfloat4B,
        sys::TTNN_C_DTYPE_UINT8 => DataType::Uint8,
        sys::TTNN_C_DTYPE_UINT16 => DataType::Uint16,
        sys::TTNN_C_DTYPE_INT32 => DataType::Int32,
        _ => return Err(invalid(format!("unknown dtype {v}"))),
    })
}

pub(crate) fn from_dtype(d: DataType) -> Res<u32> {
    Ok(match d {
        DataType::Bfloat16 => sys::TTNN_C_DTYPE_BFLOAT16,
        DataType::Float32 => sys::TTNN_C_DTYPE_FLOAT32,
        DataType::Uint32 => sys::TTNN_C_DTYPE_UINT32,
        DataType::Bfloat8B => sys::TTNN_C_DTYPE_BFLOAT8_B,
        DataType::Bfloat4B => sys::TTNN_C_DTYPE_BFLOAT4_B,
        DataType::Uint8 => sys::TTNN_C_DTYPE_UINT8,
        DataType::Uint16 => sys::TTNN_C_DTYPE_UINT16,
        DataType::Int32 => sys::TTNN_C_DTYPE_INT32,
        other => {
            return Err(Failure::Unsupported(format!(
                "dtype {other:?} has no ttnn_c_dtype"
            )));
        }
    })
}

/// # Safety
/// `p` is NULL or valid for reads of a `u32`.
pub(crate) unsafe fn opt_dtype(p: *const u32) -> Res<Option<DataType>> {
    // SAFETY: the caller's promise.
    unsafe { opt(p) }.map(dtype).transpose()
}

pub(crate) fn layout(v: u32) -> Res<Layout> {
    Ok(match v {
        sys::TTNN_C_LAYOUT_ROW_MAJOR => Layout::RowMajor,
        sys::TTNN_C_LAYOUT_TILE => Layout::Tile,
        _ => return Err(invalid(format!("unknown layout {v}"))),
    })
}

pub(crate) fn from_layout(l: Layout) -> u32 {
    match l {
        Layout::RowMajor => sys::TTNN_C_LAYOUT_ROW_MAJOR,
        Layout::Tile => sys::TTNN_C_LAYOUT_TILE,
    }
}

pub(crate) fn unary_op(v: u32) -> Res<UnaryOp> {
    Ok(match v {
        sys::TTNN_C_UNARY_RELU => UnaryOp::Relu,
        sys::TTNN_C_UNARY_SQUARE => UnaryOp::Square,
        sys::TTNN_C_UNARY_NEG => UnaryOp::Neg,
        sys::TTNN_C_UNARY_SILU => UnaryOp::Silu,
        sys::TTNN_C_UNARY_EXP => UnaryOp::Exp,
        sys::TTNN_C_UNARY_ABS => UnaryOp::Abs,
        sys::TTNN_C_UNARY_RECIPROCAL => UnaryOp::Reciprocal,
        sys::TTNN_C_UNARY_ROUND => UnaryOp::Round,
        _ => return Err(invalid(format!("unknown unary op {v}"))),
    })
}

/// An optional activation: `TTNN_C_UNARY_NONE` is none.
pub(crate) fn activation(v: u32) -> Res<Option<UnaryOp>> {
    if v == sys::TTNN_C_UNARY_NONE {
        return Ok(None);
    }
    unary_op(v).map(Some)
}

/// `ops[0..n)` as unary ops (NONE is not an op).
///
/// # Safety
/// `ops` is NULL or valid for reads of `n` `u32`s.
pub(crate) unsafe fn unary_ops(ops: *const u32, n: u32, what: &str) -> Res<Vec<UnaryOp>> {
    // SAFETY: the caller's promise.
    let v = unsafe { array(ops, n as usize, what) }?;
    v.iter().map(|&o| unary_op(o)).collect()
}

fn memory_layout(v: u32) -> Res<TensorMemoryLayout> {
    Ok(match v {
        sys::TTNN_C_TENSOR_MEMORY_LAYOUT_INTERLEAVED => TensorMemoryLayout::Interleaved,
        sys::TTNN_C_TENSOR_MEMORY_LAYOUT_HEIGHT_SHARDED => TensorMemoryLayout::HeightSharded,
        sys::TTNN_C_TENSOR_MEMORY_LAYOUT_WIDTH_SHARDED => TensorMemoryLayout::WidthSharded,
        sys::TTNN_C_TENSOR_MEMORY_LAYOUT_BLOCK_SHARDED => TensorMemoryLayout::BlockSharded,
        _ => return Err(invalid(format!("unknown tensor memory layout {v}"))),
    })
}

fn from_memory_layout(l: TensorMemoryLayout) -> u32 {
    match l {
        TensorMemoryLayout::Interleaved => sys::TTNN_C_TENSOR_MEMORY_LAYOUT_INTERLEAVED,
        TensorMemoryLayout::HeightSharded => sys::TTNN_C_TENSOR_MEMORY_LAYOUT_HEIGHT_SHARDED,
        TensorMemoryLayout::WidthSharded => sys::TTNN_C_TENSOR_MEMORY_LAYOUT_WIDTH_SHARDED,
        TensorMemoryLayout::BlockSharded => sys::TTNN_C_TENSOR_MEMORY_LAYOUT_BLOCK_SHARDED,
    }
}

fn buffer_type(v: u32) -> Res<BufferType> {
    Ok(match v {
        sys::TTNN_C_BUFFER_TYPE_DRAM => BufferType::Dram,
        sys::TTNN_C_BUFFER_TYPE_L1 => BufferType::L1,
        sys::TTNN_C_BUFFER_TYPE_L1_SMALL => BufferType::L1Small,
        sys::TTNN_C_BUFFER_TYPE_TRACE => {
            return Err(invalid(
                "buffer type TRACE is only for ttnn_c_device_memory_stats, not for tensors",
            ));
        }
        _ => return Err(invalid(format!("unknown buffer type {v}"))),
    })
}

fn from_buffer_type(b: BufferType) -> u32 {
    match b {
        BufferType::Dram => sys::TTNN_C_BUFFER_TYPE_DRAM,
        BufferType::L1 => sys::TTNN_C_BUFFER_TYPE_L1,
        BufferType::L1Small => sys::TTNN_C_BUFFER_TYPE_L1_SMALL,
    }
}

fn orientation(v: u32) -> Res<ShardOrientation> {
    Ok(match v {
        sys::TTNN_C_SHARD_ORIENTATION_ROW_MAJOR => ShardOrientation::RowMajor,
        sys::TTNN_C_SHARD_ORIENTATION_COL_MAJOR => ShardOrientation::ColMajor,
        _ => return Err(invalid(format!("unknown shard orientation {v}"))),
    })
}

pub(crate) fn embeddings_type(v: u32) -> Res<ttnn::EmbeddingsType> {
    Ok(match v {
        sys::TTNN_C_EMBEDDINGS_TYPE_GENERIC => ttnn::EmbeddingsType::Generic,
        sys::TTNN_C_EMBEDDINGS_TYPE_PADDED => ttnn::EmbeddingsType::Padded,
        sys::TTNN_C_EMBEDDINGS_TYPE_BINARY => ttnn::EmbeddingsType::Binary,
        _ => return Err(invalid(format!("unknown embeddings type {v}"))),
    })
}

// ---------------------------------------------------------------------------------------------
// Structs

fn core(c: sys::ttnn_c_core_coord) -> CoreCoord {
    CoreCoord::new(c.x as usize, c.y as usize)
}

pub(crate) fn core_range_set(ranges: &[sys::ttnn_c_core_range], what: &str) -> Res<CoreRangeSet> {
    let v: Vec<CoreRange> = ranges
        .iter()
        .map(|r| CoreRange::new(core(r.start), core(r.end)))
        .collect();
    CoreRangeSet::new(v).ok_or_else(|| invalid(format!("{what}: core ranges overlap")))
}

pub(crate) fn memory_config(mc: &sys::ttnn_c_memory_config) -> Res<MemoryConfig> {
    let shard_spec = if mc.has_shard_spec != 0 {
        let s = &mc.shard_spec;
        let n = s.num_core_ranges as usize;
        if n == 0 || n > s.core_ranges.len() {
            return Err(invalid(format!(
                "shard spec needs 1..{} core ranges, got {n}",
                s.core_ranges.len()
            )));
        }
        Some(ShardSpec::new(
            core_range_set(&s.core_ranges[..n], "shard spec")?,
            [s.shape[0] as usize, s.shape[1] as usize],
            orientation(s.orientation)?,
        ))
    } else {
        None
    };
    Ok(MemoryConfig {
        memory_layout: memory_layout(mc.memory_layout)?,
        buffer_type: buffer_type(mc.buffer_type)?,
        shard_spec,
    })
}

/// # Safety
/// `p` is NULL or valid for reads of a `ttnn_c_memory_config`.
pub(crate) unsafe fn opt_memory_config(
    p: *const sys::ttnn_c_memory_config,
) -> Res<Option<MemoryConfig>> {
    // SAFETY: the caller's promise.
    unsafe { opt(p) }.map(|m| memory_config(&m)).transpose()
}

pub(crate) fn from_memory_config(mc: &MemoryConfig) -> Res<sys::ttnn_c_memory_config> {
    let mut out = sys::ttnn_c_memory_config {
        memory_layout: from_memory_layout(mc.memory_layout),
        buffer_type: from_buffer_type(mc.buffer_type),
        has_shard_spec: 0,
        shard_spec: sys::ttnn_c_shard_spec {
            num_core_ranges: 0,
            core_ranges: [sys::ttnn_c_core_range {
                start: sys::ttnn_c_core_coord { x: 0, y: 0 },
                end: sys::ttnn_c_core_coord { x: 0, y: 0 },
            }; sys::TTNN_C_MAX_CORE_RANGES as usize],
            shape: [0; 2],
            orientation: sys::TTNN_C_SHARD_ORIENTATION_ROW_MAJOR,
        },
    };
    if let Some(spec) = &mc.shard_spec {
        let ranges = spec.grid.ranges();
        if ranges.len() > out.shard_spec.core_ranges.len() {
            return Err(Failure::Unsupported(format!(
                "the shard grid has {} core ranges, more than TTNN_C_MAX_CORE_RANGES",
                ranges.len()
            )));
        }
        let u = |v: usize| {
            u32::try_from(v).map_err(|_| Failure::Unsupported(format!("{v} does not fit uint32_t")))
        };
        out.has_shard_spec = 1;
        out.shard_spec.num_core_ranges = ranges.len() as u32;
        for (o, r) in out.shard_spec.core_ranges.iter_mut().zip(ranges) {
            o.start = sys::ttnn_c_core_coord {
                x: u(r.start.x)?,
                y: u(r.start.y)?,
            };
            o.end = sys::ttnn_c_core_coord {
                x: u(r.end.x)?,
                y: u(r.end.y)?,
            };
        }
        out.shard_spec.shape = [u(spec.shape[0])?, u(spec.shape[1])?];
        out.shard_spec.orientation = match spec.orientation {
            ShardOrientation::RowMajor => sys::TTNN_C_SHARD_ORIENTATION_ROW_MAJOR,
            ShardOrientation::ColMajor => sys::TTNN_C_SHARD_ORIENTATION_COL_MAJOR,
        };
    }
    Ok(out)
}

/// # Safety
/// `p` is NULL or valid for reads of a `ttnn_c_compute_kernel_config`.
pub(crate) unsafe fn opt_compute_kernel_config(
    p: *const sys::ttnn_c_compute_kernel_config,
) -> Res<Option<ComputeKernelConfig>> {
    // SAFETY: the caller's promise.
    let Some(c) = (unsafe { opt(p) }) else {
        return Ok(None);
    };
    let math_fidelity = match c.math_fidelity {
        sys::TTNN_C_MATH_FIDELITY_LOFI => MathFidelity::LoFi,
        sys::TTNN_C_MATH_FIDELITY_HIFI2 => MathFidelity::HiFi2,
        sys::TTNN_C_MATH_FIDELITY_HIFI3 => MathFidelity::HiFi3,
        sys::TTNN_C_MATH_FIDELITY_HIFI4 => MathFidelity::HiFi4,
        v => return Err(invalid(format!("unknown math fidelity {v}"))),
    };
    Ok(Some(ComputeKernelConfig {
        math_fidelity,
        math_approx_mode: c.math_approx_mode != 0,
        fp32_dest_acc_en: c.fp32_dest_acc_en != 0,
        packer_l1_acc: c.packer_l1_acc != 0,
        dst_full_sync_en: c.dst_full_sync_en != 0,
    }))
}

/// # Safety
/// `p` is NULL or valid for reads of a `ttnn_c_matmul_program_config`.
pub(crate) unsafe fn opt_matmul_program_config(
    p: *const sys::ttnn_c_matmul_program_config,
) -> Res<Option<MatmulProgramConfig>> {
    use ttnn::ops::matmul::{
        MatmulMultiCoreProgramConfig, MatmulMultiCoreReuseMultiCast1DProgramConfig,
        MatmulMultiCoreReuseMultiCastDramShardedProgramConfig,
        MatmulMultiCoreReuseMultiCastProgramConfig, MatmulMultiCoreReuseProgramConfig,
    };
    // SAFETY: the caller's promise.
    let Some(c) = (unsafe { opt(p) }) else {
        return Ok(None);
    };
    let grid = core(c.compute_with_storage_grid_size);
    let (in0_block_w, sub_h, sub_w) = (
        c.in0_block_w as usize,
        c.out_subblock_h as usize,
        c.out_subblock_w as usize,
    );
    let (per_core_m, per_core_n) = (c.per_core_m as usize, c.per_core_n as usize);
    Ok(Some(match c.kind {
        sys::TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE => MatmulMultiCoreProgramConfig.into(),
        sys::TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE => MatmulMultiCoreReuseProgramConfig {
            compute_with_storage_grid_size: grid,
            in0_block_w,
            out_subblock_h: sub_h,
            out_subblock_w: sub_w,
            per_core_m,
            per_core_n,
        }
        .into(),
        sys::TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE_MULTICAST => {
            MatmulMultiCoreReuseMultiCastProgramConfig {
                compute_with_storage_grid_size: grid,
                in0_block_w,
                out_subblock_h: sub_h,
                out_subblock_w: sub_w,
                per_core_m,
                per_core_n,
                transpose_mcast: c.transpose_mcast != 0,
                fused_activation: activation(c.fused_activation)?,
                fuse_batch: c.fuse_batch != 0,
            }
            .into()
        }
        sys::TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE_MULTICAST_1D => {
            MatmulMultiCoreReuseMultiCast1DProgramConfig {
                compute_with_storage_grid_size: grid,
                in0_block_w,
                out_subblock_h: sub_h,
                out_subblock_w: sub_w,
                per_core_m,
                per_core_n,
                fuse_batch: c.fuse_batch != 0,
                fused_activation: activation(c.fused_activation)?,
                mcast_in0: c.mcast_in0 != 0,
                untilize_out: c.untilize_out != 0,
            }
            .into()
        }
        sys::TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE_MULTICAST_DRAM_SHARDED => {
            MatmulMultiCoreReuseMultiCastDramShardedProgramConfig {
                in0_block_w,
                per_core_m,
                per_core_n,
                fused_activation: activation(c.fused_activation)?,
            }
            .into()
        }
        k => return Err(invalid(format!("unknown matmul program config kind {k}"))),
    }))
}

/// # Safety
/// `p` is NULL or valid for reads of a `ttnn_c_layernorm_program_config`.
pub(crate) unsafe fn opt_layernorm_program_config(
    p: *const sys::ttnn_c_layernorm_program_config,
) -> Res<Option<LayerNormProgramConfig>> {
    // SAFETY: the caller's promise.
    let Some(c) = (unsafe { opt(p) }) else {
        return Ok(None);
    };
    Ok(Some(match c.kind {
        sys::TTNN_C_LAYERNORM_PROGRAM_CONFIG_DEFAULT => LayerNormProgramConfig::Default {
            use_welford: c.use_welford != 0,
        },
        sys::TTNN_C_LAYERNORM_PROGRAM_CONFIG_SHARDED_MULTI_CORE => {
            LayerNormProgramConfig::ShardedMultiCore {
                compute_with_storage_grid_size: core(c.compute_with_storage_grid_size),
                subblock_w: c.subblock_w as usize,
                block_h: c.block_h as usize,
                block_w: c.block_w as usize,
                inplace: c.inplace != 0,
                use_welford: c.use_welford != 0,
            }
        }
        k => {
            return Err(invalid(format!(
                "unknown layernorm program config kind {k}"
            )));
        }
    }))
}

/// # Safety
/// `p` is NULL or valid for reads of a `ttnn_c_sdpa_program_config`.
pub(crate) unsafe fn opt_sdpa_program_config(
    p: *const sys::ttnn_c_sdpa_program_config,
) -> Option<SdpaProgramConfig> {
    // SAFETY: the caller's promise.
    let c = unsafe { opt(p) }?;
    Some(SdpaProgramConfig {
        compute_with_storage_grid_size: core(c.compute_with_storage_grid_size),
        q_chunk_size: c.q_chunk_size as usize,
        k_chunk_size: c.k_chunk_size as usize,
        exp_approx_mode: (c.has_exp_approx_mode != 0).then_some(c.exp_approx_mode != 0),
        max_cores_per_head_batch: (c.has_max_cores_per_head_batch != 0)
            .then_some(c.max_cores_per_head_batch as usize),
    })
}

/// # Safety
/// `p` is NULL or valid for reads of a `ttnn_c_core_coord`.
pub(crate) unsafe fn opt_core(p: *const sys::ttnn_c_core_coord) -> Option<CoreCoord> {
    // SAFETY: the caller's promise.
    unsafe { opt(p) }.map(core)
}
