//! The TT-NN ops BitNet needs, with TT-NN's names and argument structs.
//!
//! Every op validates shapes, dtypes, layouts and memory configs once, here, the way TT-NN's
//! `validate` does, and returns an error naming the op; then it allocates its outputs and hands
//! the backend the work. Optional arguments live in `...Args` structs with `Default`.

pub mod attention;
pub mod bitlinear;
pub mod creation;
pub mod data_movement;
pub mod eltwise;
pub mod embedding;
pub mod kv_cache;
pub mod matmul;
pub mod norm;
pub mod reduction;
pub mod rotary;
pub mod sampling;

pub use eltwise::{
    BinaryArgs, BinaryOpType, UnaryArgs, UnaryOp, abs, add, add_scalar, clamp, exp, multiply,
    multiply_scalar, neg, reciprocal, relu, round, silu, square, subtract, subtract_scalar,
    typecast, unary_chain,
};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::types::{
    CoreCoord, DataType, Layout, MemoryConfig, Shape, ShardOrientation, ShardStrategy, TILE_SIZE,
    TensorMemoryLayout, create_sharded_memory_config,
};

/// The device of `t`, which must be on a device. Ops then match on the device's backend once;
/// every other input is checked to be on the same device, so it has the same backend.
pub(crate) fn on_device<'a>(op: &'static str, what: &str, t: &'a Tensor) -> Result<&'a Device> {
    t.device_of(op, what)
}

/// Fails unless `t` is on `device`.
pub(crate) fn on_same_device(
    op: &'static str,
    what: &str,
    device: &Device,
    t: &Tensor,
) -> Result<()> {
    let d = t.device_of(op, what)?;
    if d != device {
        return Err(Error::WrongStorage {
            op,
            what: what.to_string(),
            expected: "the same device as the first input",
        });
    }
    Ok(())
}

/// Fails unless `t`'s dtype is one of `allowed`.
pub(crate) fn expect_dtype(
    op: &'static str,
    what: &str,
    t: &Tensor,
    allowed: &[DataType],
) -> Result<()> {
    if allowed.contains(&t.dtype()) {
        return Ok(());
    }
    Err(Error::dtype(op, what, t.dtype(), format!("{allowed:?}")))
}

/// Fails unless `t` has `layout`.
pub(crate) fn expect_layout(
    op: &'static str,
    what: &str,
    t: &Tensor,
    layout: Layout,
) -> Result<()> {
    if t.layout() == layout {
        return Ok(());
    }
    Err(Error::LayoutMismatch {
        op,
        what: what.to_string(),
        got: t.layout(),
        expected: layout,
    })
}

/// Fails unless `t` has rank `rank`.
pub(crate) fn expect_rank(op: &'static str, what: &str, t: &Tensor, rank: usize) -> Result<()> {
    if t.shape().rank() == rank {
        return Ok(());
    }
    Err(Error::shape(op, what, format!("rank {rank}"), t.shape()))
}

/// Float activations the host computes on.
pub(crate) const FLOAT_TYPES: &[DataType] = &[
    DataType::Float32,
    DataType::Bfloat16,
    DataType::Bfloat8B,
    DataType::Bfloat4B,
];

/// The output memory config: the requested one (a sharded config without a shard spec gets one
/// derived for the output shape, as TT-NN ops derive it from their program config), else the
/// input's.
pub(crate) fn output_memory_config(
    op: &'static str,
    device: &Device,
    requested: Option<&MemoryConfig>,
    input: &Tensor,
    out_shape: Shape,
    layout: Layout,
) -> Result<MemoryConfig> {
    let mc = match requested {
        Some(m) => m.clone(),
        None => match input.memory_config() {
            // A sharded input's spec describes the input's shape; only reuse it when it fits.
            Some(m) if m.is_sharded() && input.padded_shape() != out_shape.padded(layout) => {
                MemoryConfig {
                    shard_spec: None,
                    ..m.clone()
                }
            }
            Some(m) => m.clone(),
            None => crate::types::DRAM_MEMORY_CONFIG,
        },
    };
    resolve_shard_spec(op, device, mc, out_shape, layout)
}

/// Fills in a shard spec for a sharded config that lacks one: the tensor split evenly over as
/// many cores of the grid as divide it in whole tiles (rows for height sharding, columns for
/// width sharding; both for block sharding). What ops do with spec-less sharded output configs
/// such as `L1_WIDTH_SHARDED_MEMORY_CONFIG`; public so that memory plans can see the result.
pub fn resolve_shard_spec(
    op: &'static str,
    device: &Device,
    mc: MemoryConfig,
    shape: Shape,
    layout: Layout,
) -> Result<MemoryConfig> {
    if !mc.is_sharded() || mc.shard_spec.is_some() {
        return Ok(mc);
    }
    let grid = device.compute_with_storage_grid_size();
    let padded = shape.padded(layout);
    let unit = if layout == Layout::Tile { TILE_SIZE } else { 1 };
    let largest_divisor = |units: usize, max: usize| {
        (1..=max.min(units))
            .rev()
            .find(|d| units.is_multiple_of(*d))
            .unwrap_or(1)
    };
    let max_cores = grid.x * grid.y;
    let (strategy, cores, grid_used) = match mc.memory_layout {
        TensorMemoryLayout::HeightSharded => (
            ShardStrategy::Height,
            largest_divisor(padded.rows() / unit, max_cores),
            grid,
        ),
        TensorMemoryLayout::WidthSharded => (
            ShardStrategy::Width,
            largest_divisor(padded.last() / unit, max_cores),
            grid,
        ),
        TensorMemoryLayout::BlockSharded => {
            let gx = largest_divisor(padded.last() / unit, grid.x);
            let gy = largest_divisor(padded.rows() / unit, grid.y);
            (ShardStrategy::Block, gx * gy, CoreCoord::new(gx, gy))
        }
        TensorMemoryLayout::Interleaved => unreachable!("checked above"),
    };
    let mut derived = create_sharded_memory_config(
        shape,
        grid_used,
        cores,
        strategy,
        ShardOrientation::RowMajor,
        layout,
    )
    .ok_or_else(|| {
        Error::mem_config(
            op,
            format!("cannot shard {shape} over the {}x{} grid", grid.x, grid.y),
        )
    })?;
    derived.buffer_type = mc.buffer_type;
    Ok(derived)
}
