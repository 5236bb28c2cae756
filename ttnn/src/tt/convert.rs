//! Conversions between `ttnn`'s types and the plain C values of `ttnn_c.h`.
//!
//! Values going to C are total functions of the Rust value (every Rust variant has a C
//! constant). Values coming back from C are checked: an unknown constant is an error naming the
//! op, never undefined behaviour (the bindings keep C enums as plain `u32` constants for this
//! reason).

use ttnn_sys as sys;

use crate::error::{Error, Result};
use crate::ops::attention::SdpaProgramConfig;
use crate::ops::eltwise::{BinaryOpType, UnaryOp};
use crate::ops::matmul::MatmulProgramConfig;
use crate::ops::norm::LayerNormProgramConfig;
use crate::types::{
    BufferType, ComputeKernelConfig, CoreCoord, CoreRange, CoreRangeSet, DataType, Layout,
    MathFidelity, MemoryConfig, Shape, ShardOrientation, ShardSpec, TensorMemoryLayout,
};

use super::BACKEND;

fn bad(op: &'static str, what: &str, value: impl std::fmt::Display) -> Error {
    Error::Backend {
        op,
        backend: BACKEND,
        message: format!("the library returned an unknown {what} value {value}"),
    }
}

/// A `usize` that must fit the ABI's `uint32_t`.
pub(crate) fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::arg(op, format!("{what} {v} does not fit in 32 bits")))
}

/// The C dtype. `Ternary` is stored as BFLOAT4_B (exact for -1, 0, +1: each 16-value group
/// shares exponent 0 and the 3 mantissa bits hold 1.0 exactly).
pub(crate) fn dtype(d: DataType) -> u32 {
    match d {
        DataType::Bfloat16 => sys::TTNN_C_DTYPE_BFLOAT16,
        DataType::Float32 => sys::TTNN_C_DTYPE_FLOAT32,
        DataType::Uint32 => sys::TTNN_C_DTYPE_UINT32,
        DataType::Bfloat8B => sys::TTNN_C_DTYPE_BFLOAT8_B,
        DataType::Bfloat4B | DataType::Ternary => sys::TTNN_C_DTYPE_BFLOAT4_B,
        DataType::Uint8 => sys::TTNN_C_DTYPE_UINT8,
        DataType::Uint16 => sys::TTNN_C_DTYPE_UINT16,
        DataType::Int32 => sys::TTNN_C_DTYPE_INT32,
    }
}

pub(crate) fn dtype_from(op: &'static str, v: u32) -> Result<DataType> {
    Ok(match v {
        sys::TTNN_C_DTYPE_BFLOAT16 => DataType::Bfloat16,
        sys::TTNN_C_DTYPE_FLOAT32 => DataType::Float32,
        sys::TTNN_C_DTYPE_UINT32 => DataType::Uint32,
        sys::TTNN_C_DTYPE_BFLOAT8_B => DataType::Bfloat8B,
        sys::TTNN_C_DTYPE_BFLOAT4_B => DataType::Bfloat4B,
        sys::TTNN_C_DTYPE_UINT8 => DataType::Uint8,
        sys::TTNN_C_DTYPE_UINT16 => DataType::Uint16,
        sys::TTNN_C_DTYPE_INT32 => DataType::Int32,
        other => return Err(bad(op, "dtype", other)),
    })
}

pub(crate) fn layout(l: Layout) -> u32 {
    match l {
        Layout::RowMajor => sys::TTNN_C_LAYOUT_ROW_MAJOR,
        Layout::Tile => sys::TTNN_C_LAYOUT_TILE,
    }
}

pub(crate) fn layout_from(op: &'static str, v: u32) -> Result<Layout> {
    Ok(match v {
        sys::TTNN_C_LAYOUT_ROW_MAJOR => Layout::RowMajor,
        sys::TTNN_C_LAYOUT_TILE => Layout::Tile,
        other => return Err(bad(op, "layout", other)),
    })
}

/// A shape as the ABI carries it: `TTNN_C_MAX_RANK` entries and a rank.
pub(crate) fn shape(op: &'static str, s: Shape) -> Result<([u32; 8], u32)> {
    let mut out = [0u32; 8];
    for (o, &d) in out.iter_mut().zip(s.dims()) {
        *o = u32_of(op, "dimension", d)?;
    }
    Ok((out, s.rank() as u32))
}

pub(crate) fn shape_from(op: &'static str, dims: &[u32; 8], rank: u32) -> Result<Shape> {
    let r = rank as usize;
    if r > dims.len() {
        return Err(bad(op, "rank", rank));
    }
    let d: Vec<usize> = dims[..r].iter().map(|&v| v as usize).collect();
    Shape::try_new(&d).ok_or_else(|| bad(op, "rank", rank))
}

pub(crate) fn coord(op: &'static str, c: CoreCoord) -> Result<sys::ttnn_c_core_coord> {
    Ok(sys::ttnn_c_core_coord {
        x: u32_of(op, "core x", c.x)?,
        y: u32_of(op, "core y", c.y)?,
    })
}

pub(crate) fn core_range(op: &'static str, r: &CoreRange) -> Result<sys::ttnn_c_core_range> {
    Ok(sys::ttnn_c_core_range {
        start: coord(op, r.start)?,
        end: coord(op, r.end)?,
    })
}

pub(crate) fn memory_config(
    op: &'static str,
    mc: &MemoryConfig,
) -> Result<sys::ttnn_c_memory_config> {
    let mut out = sys::ttnn_c_memory_config {
        memory_layout: match mc.memory_layout {
            TensorMemoryLayout::Interleaved => sys::TTNN_C_TENSOR_MEMORY_LAYOUT_INTERLEAVED,
            TensorMemoryLayout::HeightSharded => sys::TTNN_C_TENSOR_MEMORY_LAYOUT_HEIGHT_SHARDED,
            TensorMemoryLayout::WidthSharded => sys::TTNN_C_TENSOR_MEMORY_LAYOUT_WIDTH_SHARDED,
            TensorMemoryLayout::BlockSharded => sys::TTNN_C_TENSOR_MEMORY_LAYOUT_BLOCK_SHARDED,
        },
        buffer_type: match mc.buffer_type {
            BufferType::Dram => sys::TTNN_C_BUFFER_TYPE_DRAM,
            BufferType::L1 => sys::TTNN_C_BUFFER_TYPE_L1,
            BufferType::L1Small => sys::TTNN_C_BUFFER_TYPE_L1_SMALL,
        },
        ..Default::default()
    };
    if let Some(spec) = &mc.shard_spec {
        let ranges = spec.grid.ranges();
        if ranges.len() > out.shard_spec.core_ranges.len() {
            return Err(Error::mem_config(
                op,
                format!(
                    "a shard grid of {} core rectangles exceeds the C ABI's {}",
                    ranges.len(),
                    out.shard_spec.core_ranges.len()
                ),
            ));
        }
        out.has_shard_spec = 1;
        out.shard_spec.num_core_ranges = ranges.len() as u32;
        for (o, r) in out.shard_spec.core_ranges.iter_mut().zip(ranges) {
            *o = core_range(op, r)?;
        }
        out.shard_spec.shape = [
            u32_of(op, "shard height", spec.shape[0])?,
            u32_of(op, "shard width", spec.shape[1])?,
        ];
        out.shard_spec.orientation = match spec.orientation {
            ShardOrientation::RowMajor => sys::TTNN_C_SHARD_ORIENTATION_ROW_MAJOR,
            ShardOrientation::ColMajor => sys::TTNN_C_SHARD_ORIENTATION_COL_MAJOR,
        };
    }
    Ok(out)
}

pub(crate) fn memory_config_from(
    op: &'static str,
    c: &sys::ttnn_c_memory_config,
) -> Result<MemoryConfig> {
    let memory_layout = match c.memory_layout {
        sys::TTNN_C_TENSOR_MEMORY_LAYOUT_INTERLEAVED => TensorMemoryLayout::Interleaved,
        sys::TTNN_C_TENSOR_MEMORY_LAYOUT_HEIGHT_SHARDED => TensorMemoryLayout::HeightSharded,
        sys::TTNN_C_TENSOR_MEMORY_LAYOUT_WIDTH_SHARDED => TensorMemoryLayout::WidthSharded,
        sys::TTNN_C_TENSOR_MEMORY_LAYOUT_BLOCK_SHARDED => TensorMemoryLayout::BlockSharded,
        other => return Err(bad(op, "memory layout", other)),
    };
    let buffer_type = match c.buffer_type {
        sys::TTNN_C_BUFFER_TYPE_DRAM => BufferType::Dram,
        sys::TTNN_C_BUFFER_TYPE_L1 => BufferType::L1,
        sys::TTNN_C_BUFFER_TYPE_L1_SMALL => BufferType::L1Small,
        other => return Err(bad(op, "buffer type", other)),
    };
    let shard_spec = if c.has_shard_spec != 0 {
        let s = &c.shard_spec;
        let n = s.num_core_ranges as usize;
        if n > s.core_ranges.len() {
            return Err(bad(op, "core range count", n));
        }
        let ranges: Vec<CoreRange> = s.core_ranges[..n]
            .iter()
            .map(|r| {
                CoreRange::new(
                    CoreCoord::new(r.start.x as usize, r.start.y as usize),
                    CoreCoord::new(r.end.x as usize, r.end.y as usize),
                )
            })
            .collect();
        let grid = CoreRangeSet::new(ranges).ok_or_else(|| Error::Backend {
            op,
            backend: BACKEND,
            message: "the library returned overlapping shard core ranges".into(),
        })?;
        let orientation = match s.orientation {
            sys::TTNN_C_SHARD_ORIENTATION_ROW_MAJOR => ShardOrientation::RowMajor,
            sys::TTNN_C_SHARD_ORIENTATION_COL_MAJOR => ShardOrientation::ColMajor,
            other => return Err(bad(op, "shard orientation", other)),
        };
        Some(ShardSpec::new(
            grid,
            [s.shape[0] as usize, s.shape[1] as usize],
            orientation,
        ))
    } else {
        None
    };
    Ok(MemoryConfig {
        memory_layout,
        buffer_type,
        shard_spec,
    })
}

pub(crate) fn compute_kernel_config(c: &ComputeKernelConfig) -> sys::ttnn_c_compute_kernel_config {
    sys::ttnn_c_compute_kernel_config {
        math_fidelity: match c.math_fidelity {
            MathFidelity::LoFi => sys::TTNN_C_MATH_FIDELITY_LOFI,
            MathFidelity::HiFi2 => sys::TTNN_C_MATH_FIDELITY_HIFI2,
            MathFidelity::HiFi3 => sys::TTNN_C_MATH_FIDELITY_HIFI3,
            MathFidelity::HiFi4 => sys::TTNN_C_MATH_FIDELITY_HIFI4,
        },
        math_approx_mode: c.math_approx_mode.into(),
        fp32_dest_acc_en: c.fp32_dest_acc_en.into(),
        packer_l1_acc: c.packer_l1_acc.into(),
        dst_full_sync_en: c.dst_full_sync_en.into(),
    }
}

pub(crate) fn unary(u: UnaryOp) -> u32 {
    match u {
        UnaryOp::Relu => sys::TTNN_C_UNARY_RELU,
        UnaryOp::Square => sys::TTNN_C_UNARY_SQUARE,
        UnaryOp::Neg => sys::TTNN_C_UNARY_NEG,
        UnaryOp::Silu => sys::TTNN_C_UNARY_SILU,
        UnaryOp::Exp => sys::TTNN_C_UNARY_EXP,
        UnaryOp::Abs => sys::TTNN_C_UNARY_ABS,
        UnaryOp::Reciprocal => sys::TTNN_C_UNARY_RECIPROCAL,
        UnaryOp::Round => sys::TTNN_C_UNARY_ROUND,
    }
}

/// An optional activation: `TTNN_C_UNARY_NONE` for none.
pub(crate) fn activation(u: Option<UnaryOp>) -> u32 {
    u.map_or(sys::TTNN_C_UNARY_NONE, unary)
}

pub(crate) fn binary(b: BinaryOpType) -> u32 {
    match b {
        BinaryOpType::Add => sys::TTNN_C_BINARY_ADD,
        BinaryOpType::Subtract => sys::TTNN_C_BINARY_SUBTRACT,
        BinaryOpType::Multiply => sys::TTNN_C_BINARY_MULTIPLY,
    }
}

pub(crate) fn matmul_program_config(
    op: &'static str,
    pc: &MatmulProgramConfig,
) -> Result<sys::ttnn_c_matmul_program_config> {
    let u = |what: &str, v: usize| u32_of(op, what, v);
    let mut c = sys::ttnn_c_matmul_program_config {
        fused_activation: sys::TTNN_C_UNARY_NONE,
        ..Default::default()
    };
    match pc {
        MatmulProgramConfig::MultiCore(_) => {
            c.kind = sys::TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE;
        }
        MatmulProgramConfig::MultiCoreReuse(p) => {
            c.kind = sys::TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE;
            c.compute_with_storage_grid_size = coord(op, p.compute_with_storage_grid_size)?;
            c.in0_block_w = u("in0_block_w", p.in0_block_w)?;
            c.out_subblock_h = u("out_subblock_h", p.out_subblock_h)?;
            c.out_subblock_w = u("out_subblock_w", p.out_subblock_w)?;
            c.per_core_m = u("per_core_M", p.per_core_m)?;
            c.per_core_n = u("per_core_N", p.per_core_n)?;
        }
        MatmulProgramConfig::MultiCoreReuseMultiCast(p) => {
            c.kind = sys::TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE_MULTICAST;
            c.compute_with_storage_grid_size = coord(op, p.compute_with_storage_grid_size)?;
            c.in0_block_w = u("in0_block_w", p.in0_block_w)?;
            c.out_subblock_h = u("out_subblock_h", p.out_subblock_h)?;
            c.out_subblock_w = u("out_subblock_w", p.out_subblock_w)?;
            c.per_core_m = u("per_core_M", p.per_core_m)?;
            c.per_core_n = u("per_core_N", p.per_core_n)?;
            c.transpose_mcast = p.transpose_mcast.into();
            c.fuse_batch = p.fuse_batch.into();
            c.fused_activation = activation(p.fused_activation);
        }
        MatmulProgramConfig::MultiCoreReuseMultiCast1D(p) => {
            c.kind = sys::TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE_MULTICAST_1D;
            c.compute_with_storage_grid_size = coord(op, p.compute_with_storage_grid_size)?;
            c.in0_block_w = u("in0_block_w", p.in0_block_w)?;
            c.out_subblock_h = u("out_subblock_h", p.out_subblock_h)?;
            c.out_subblock_w = u("out_subblock_w", p.out_subblock_w)?;
            c.per_core_m = u("per_core_M", p.per_core_m)?;
            c.per_core_n = u("per_core_N", p.per_core_n)?;
            c.fuse_batch = p.fuse_batch.into();
            c.mcast_in0 = p.mcast_in0.into();
            c.untilize_out = p.untilize_out.into();
            c.fused_activation = activation(p.fused_activation);
        }
        MatmulProgramConfig::MultiCoreReuseMultiCastDramSharded(p) => {
            c.kind = sys::TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE_MULTICAST_DRAM_SHARDED;
            c.in0_block_w = u("in0_block_w", p.in0_block_w)?;
            c.per_core_m = u("per_core_M", p.per_core_m)?;
            c.per_core_n = u("per_core_N", p.per_core_n)?;
            c.fused_activation = activation(p.fused_activation);
        }
    }
    Ok(c)
}

pub(crate) fn layernorm_program_config(
    op: &'static str,
    pc: &LayerNormProgramConfig,
) -> Result<sys::ttnn_c_layernorm_program_config> {
    Ok(match pc {
        LayerNormProgramConfig::Default { use_welford } => sys::ttnn_c_layernorm_program_config {
            kind: sys::TTNN_C_LAYERNORM_PROGRAM_CONFIG_DEFAULT,
            use_welford: (*use_welford).into(),
            ..Default::default()
        },
        LayerNormProgramConfig::ShardedMultiCore {
            compute_with_storage_grid_size,
            subblock_w,
            block_h,
            block_w,
            inplace,
            use_welford,
        } => sys::ttnn_c_layernorm_program_config {
            kind: sys::TTNN_C_LAYERNORM_PROGRAM_CONFIG_SHARDED_MULTI_CORE,
            compute_with_storage_grid_size: coord(op, *compute_with_storage_grid_size)?,
            subblock_w: u32_of(op, "subblock_w", *subblock_w)?,
            block_h: u32_of(op, "block_h", *block_h)?,
            block_w: u32_of(op, "block_w", *block_w)?,
            inplace: (*inplace).into(),
            use_welford: (*use_welford).into(),
        },
    })
}

pub(crate) fn sdpa_program_config(
    op: &'static str,
    pc: &SdpaProgramConfig,
) -> Result<sys::ttnn_c_sdpa_program_config> {
    Ok(sys::ttnn_c_sdpa_program_config {
        compute_with_storage_grid_size: coord(op, pc.compute_with_storage_grid_size)?,
        q_chunk_size: u32_of(op, "q_chunk_size", pc.q_chunk_size)?,
        k_chunk_size: u32_of(op, "k_chunk_size", pc.k_chunk_size)?,
        has_exp_approx_mode: pc.exp_approx_mode.is_some().into(),
        exp_approx_mode: pc.exp_approx_mode.unwrap_or(false).into(),
        has_max_cores_per_head_batch: pc.max_cores_per_head_batch.is_some().into(),
        max_cores_per_head_batch: u32_of(
            op,
            "max_cores_per_head_batch",
            pc.max_cores_per_head_batch.unwrap_or(0),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{L1_WIDTH_SHARDED_MEMORY_CONFIG, TILE_SIZE};

    #[test]
    fn dtypes_round_trip_and_ternary_is_bfloat4_b() {
        for d in [
            DataType::Bfloat16,
            DataType::Float32,
            DataType::Uint32,
            DataType::Bfloat8B,
            DataType::Bfloat4B,
            DataType::Uint8,
            DataType::Uint16,
            DataType::Int32,
        ] {
            assert_eq!(dtype_from("t", dtype(d)).expect("known"), d);
        }
        assert_eq!(dtype(DataType::Ternary), sys::TTNN_C_DTYPE_BFLOAT4_B);
        let e = dtype_from("t", 99).unwrap_err().to_string();
        assert!(e.contains("unknown dtype value 99"), "{e}");
    }

    #[test]
    fn memory_configs_round_trip() {
        let grid = CoreRangeSet::num_cores_to_corerangeset(20, CoreCoord::new(8, 8));
        let mc = MemoryConfig::sharded(
            TensorMemoryLayout::HeightSharded,
            BufferType::L1,
            ShardSpec::new(grid, [TILE_SIZE, 128], ShardOrientation::ColMajor),
        );
        let c = memory_config("t", &mc).expect("fits");
        assert_eq!(c.shard_spec.num_core_ranges, 2);
        assert_eq!(memory_config_from("t", &c).expect("valid"), mc);
        // The spec-less "hint" form stays spec-less.
        let c = memory_config("t", &L1_WIDTH_SHARDED_MEMORY_CONFIG).expect("fits");
        assert_eq!(c.has_shard_spec, 0);
        assert_eq!(
            memory_config_from("t", &c).expect("valid"),
            L1_WIDTH_SHARDED_MEMORY_CONFIG
        );
    }

    #[test]
    fn too_many_core_ranges_is_an_error() {
        let ranges: Vec<CoreRange> = (0..17)
            .map(|i| CoreRange::new(CoreCoord::new(i, 0), CoreCoord::new(i, 0)))
            .collect();
        let mc = MemoryConfig::sharded(
            TensorMemoryLayout::HeightSharded,
            BufferType::L1,
            ShardSpec::new(
                CoreRangeSet::new(ranges).expect("disjoint"),
                [32, 32],
                ShardOrientation::RowMajor,
            ),
        );
        let e = memory_config("op", &mc).unwrap_err().to_string();
        assert!(e.contains("17 core rectangles"), "{e}");
    }
}
