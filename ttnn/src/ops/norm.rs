//! `rms_norm`.

use crate::device::BackendImpl;
use crate::error::{Error, Result};
use crate::host::kernels::norm::RmsNormCmd;
use crate::ops::{expect_dtype, expect_layout, on_device, on_same_device, output_memory_config};
use crate::tensor::Tensor;
use crate::tt::{Tt, ops as tt_ops};
use crate::types::{
    ComputeKernelConfig, CoreCoord, DataType, Layout, MemoryConfig, TILE_SIZE, TensorMemoryLayout,
};

const OP: &str = "ttnn::rms_norm";

/// Input dtypes TT-NN's layernorm device op accepts.
const INPUT_TYPES: &[DataType] = &[DataType::Float32, DataType::Bfloat16, DataType::Bfloat8B];

/// TT-NN's `LayerNormProgramConfig`: how the device kernel is laid out over cores. The host
/// computes every row the same way whatever the config, so it only validates the fields TT-NN
/// checks against the tensors (block sizes versus the shard spec, Welford not for RMSNorm).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerNormProgramConfig {
    /// `LayerNormDefaultProgramConfig` (interleaved inputs).
    Default {
        /// Welford's algorithm; TT-NN rejects it for RMSNorm.
        use_welford: bool,
    },
    /// `LayerNormShardedMultiCoreProgramConfig` (sharded inputs, tt_transformers' decode norms).
    ShardedMultiCore {
        compute_with_storage_grid_size: CoreCoord,
        subblock_w: usize,
        /// Rows of tiles per shard.
        block_h: usize,
        /// Columns of tiles per shard.
        block_w: usize,
        /// Write the result over the input (TT-NN returns the input tensor).
        inplace: bool,
        /// Welford's algorithm; TT-NN rejects it for RMSNorm.
        use_welford: bool,
    },
}

impl Default for LayerNormProgramConfig {
    fn default() -> Self {
        Self::Default { use_welford: false }
    }
}

/// Optional arguments of [`rms_norm`] (TT-NN's keyword arguments).
#[derive(Clone, Debug)]
pub struct RmsNormArgs<'a> {
    /// Added to the mean of squares before the reciprocal square root (TT-NN default 1e-12).
    pub epsilon: f32,
    /// Per-column scale (gamma).
    pub weight: Option<&'a Tensor>,
    /// Per-column shift (beta), added last.
    pub bias: Option<&'a Tensor>,
    /// Added to the input before normalizing (the sum itself is not returned).
    pub residual_input_tensor: Option<&'a Tensor>,
    pub memory_config: Option<MemoryConfig>,
    pub program_config: Option<LayerNormProgramConfig>,
    /// Ignored by the host backend, which always computes in f32.
    pub compute_kernel_config: Option<ComputeKernelConfig>,
}

impl Default for RmsNormArgs<'_> {
    fn default() -> Self {
        Self {
            epsilon: 1e-12,
            weight: None,
            bias: None,
            residual_input_tensor: None,
            memory_config: None,
            program_config: None,
            compute_kernel_config: None,
        }
    }
}

/// RMS normalization over the last dimension:
/// `y = gamma * (x * rsqrt(mean(x^2) + epsilon)) + beta`, with `x = input + residual` when a
/// residual is given.
///
/// Numerics (host): every row is computed in f32 exactly as HF's BitNet `RMSNorm` does in f32 —
/// the normalized value `x * rsqrt(...)` first, then the product with gamma — except that the
/// sum of squares is accumulated in f64 in a fixed order (so a row's result does not depend on
/// the batch or thread count, and is within an ulp of torch's pairwise f32 sum). The output is
/// rounded once to the input's dtype.
///
/// Validation follows TT-NN's layernorm device op: input TILE, FLOAT32/BFLOAT16/BFLOAT8_B; a
/// residual TILE with the input's padded shape; a TILE gamma/beta with the input's padded width
/// and a padded height of 32, or a ROW_MAJOR gamma/beta (FLOAT32/BFLOAT16) with last dim 32 and
/// `volume / 32 == padded width / 32` (tt_transformers' `[1, 1, dim / 32, 32]`); gamma and beta
/// in the same layout; a sharded input not height-sharded, with a sharded, non-height-sharded
/// output; Welford rejected.
///
/// Host deviations: the mean divides by the logical width (TT-NN's choice for widths that are
/// not multiples of 32 is unverified); a residual must also match the input's logical shape
/// (the host keeps no padding values to add); a ROW_MAJOR gamma/beta may also be a plain row of
/// exactly `width` values; `inplace` program configs are rejected.
pub fn rms_norm(input: &Tensor, args: &RmsNormArgs<'_>) -> Result<Tensor> {
    let device = on_device(OP, "input", input)?;
    expect_layout(OP, "input", input, Layout::Tile)?;
    expect_dtype(OP, "input", input, INPUT_TYPES)?;
    let shape = input.shape();
    let padded = input.padded_shape();
    let width = shape.last();
    check_epsilon(OP, "epsilon", args.epsilon)?;

    if let Some(r) = args.residual_input_tensor {
        on_same_device(OP, "residual_input_tensor", device, r)?;
        expect_layout(OP, "residual_input_tensor", r, Layout::Tile)?;
        expect_dtype(OP, "residual_input_tensor", r, INPUT_TYPES)?;
        if r.padded_shape() != padded || r.shape() != shape {
            return Err(Error::shape(
                OP,
                "residual_input_tensor (must match the input's shape)",
                shape.to_string(),
                r.shape(),
            ));
        }
    }
    check_affine(OP, device, "weight", args.weight, input)?;
    check_affine(OP, device, "bias", args.bias, input)?;
    if let (Some(g), Some(b)) = (args.weight, args.bias)
        && g.layout() != b.layout()
    {
        return Err(Error::LayoutMismatch {
            op: OP,
            what: "bias (gamma and beta must have the same layout)".into(),
            got: b.layout(),
            expected: g.layout(),
        });
    }

    let in_mc = input
        .memory_config()
        .ok_or_else(|| Error::mem_config(OP, "input has no memory config"))?;
    let mut requested = args.memory_config.clone();
    if in_mc.is_sharded() {
        if in_mc.memory_layout == TensorMemoryLayout::HeightSharded {
            return Err(Error::mem_config(
                OP,
                "Height sharded inputs are not supported.",
            ));
        }
        let out = requested.as_ref().unwrap_or(in_mc);
        if !out.is_sharded() || out.memory_layout == TensorMemoryLayout::HeightSharded {
            return Err(Error::mem_config(
                OP,
                format!(
                    "Sharded inputs require sharded outputs (not height sharded); got {:?}",
                    out.memory_layout
                ),
            ));
        }
        if let Some(r) = args.residual_input_tensor
            && r.memory_config() != Some(in_mc)
        {
            return Err(Error::mem_config(
                OP,
                "the residual tensor must have the input's (sharded) memory config",
            ));
        }
        // TT-NN gives a spec-less sharded output config the input's shard spec.
        if let Some(m) = requested.as_mut()
            && m.shard_spec.is_none()
        {
            m.shard_spec = in_mc.shard_spec.clone();
        }
    }
    check_program_config(args.program_config.as_ref(), input, in_mc, &requested)?;

    let mc = output_memory_config(OP, device, requested.as_ref(), input, shape, Layout::Tile)?;
    let dtype = input.dtype();
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => return tt_ops::rms_norm(&Tt::new(tt, device), OP, input, args),
    };
    let buf = |t: Option<&Tensor>, what: &str| -> Result<_> {
        t.map(|t| t.host_buffer(OP, what).cloned()).transpose()
    };
    let residual = buf(args.residual_input_tensor, "residual_input_tensor")?;
    let gamma = buf(args.weight, "weight")?;
    let beta = buf(args.bias, "bias")?;
    let out = Tensor::allocate(device, OP, shape, dtype, Layout::Tile, &mc)?;
    let len = shape.volume();
    let scratch = |t: &Tensor| {
        Vec::with_capacity(if t.dtype() == DataType::Float32 {
            0
        } else {
            t.shape().volume()
        })
    };
    let cmd = RmsNormCmd {
        input: input.host_buffer(OP, "input")?.clone(),
        residual,
        gamma,
        beta,
        out: out.host_buffer(OP, "output")?.clone(),
        rows: shape.rows(),
        width,
        epsilon: args.epsilon,
        s_in: scratch(input),
        s_res: args.residual_input_tensor.map(scratch).unwrap_or_default(),
        s_gamma: args.weight.map(scratch).unwrap_or_default(),
        s_beta: args.bias.map(scratch).unwrap_or_default(),
        s_out: Vec::with_capacity(if dtype == DataType::Float32 { 0 } else { len }),
    };
    host.submit(cmd)?;
    Ok(out)
}

/// An RMSNorm epsilon must be finite and non-negative.
pub(crate) fn check_epsilon(op: &'static str, what: &str, epsilon: f32) -> Result<()> {
    if !epsilon.is_finite() || epsilon < 0.0 {
        return Err(Error::arg(
            op,
            format!("{what} must be finite and non-negative, got {epsilon}"),
        ));
    }
    Ok(())
}

/// Validates gamma or beta as TT-NN does.
pub(crate) fn check_affine(
    op: &'static str,
    device: &crate::device::Device,
    what: &'static str,
    t: Option<&Tensor>,
    input: &Tensor,
) -> Result<()> {
    let Some(t) = t else { return Ok(()) };
    on_same_device(op, what, device, t)?;
    let width = input.shape().last();
    let padded_w = input.padded_shape().last();
    match t.layout() {
        Layout::Tile => {
            expect_dtype(op, what, t, crate::ops::FLOAT_TYPES)?;
            let p = t.padded_shape();
            if p.last() != padded_w || p.dim(-2) != TILE_SIZE || t.shape().last() != width {
                return Err(Error::shape(
                    op,
                    format!(
                        "{what} (a TILE {what} needs the input's width {width} and a padded height of 32)"
                    ),
                    format!("[1, 1, 1, {width}]"),
                    t.shape(),
                ));
            }
        }
        Layout::RowMajor => {
            expect_dtype(op, what, t, &[DataType::Float32, DataType::Bfloat16])?;
            let s = t.shape();
            let tt_rule = s.last() == TILE_SIZE && s.volume() / TILE_SIZE == padded_w / TILE_SIZE;
            let plain_row = s.last() == width && s.volume() == width;
            if !(tt_rule || plain_row) {
                return Err(Error::shape(
                    op,
                    format!(
                        "{what} (Gamma's last padded dim needs to equal tile width and gamma's volume needs to align with last padded dim of input)"
                    ),
                    format!("[1, 1, {}, 32]", padded_w / TILE_SIZE),
                    s,
                ));
            }
        }
    }
    Ok(())
}

/// TT-NN's checks of a program config against the tensors.
fn check_program_config(
    pc: Option<&LayerNormProgramConfig>,
    input: &Tensor,
    in_mc: &MemoryConfig,
    requested: &Option<MemoryConfig>,
) -> Result<()> {
    let Some(pc) = pc else { return Ok(()) };
    match pc {
        LayerNormProgramConfig::Default { use_welford } => {
            if *use_welford {
                return Err(Error::arg(
                    OP,
                    "Welford's algorithm is not supported for RMSNorm",
                ));
            }
        }
        LayerNormProgramConfig::ShardedMultiCore {
            subblock_w,
            block_h,
            block_w,
            inplace,
            use_welford,
            ..
        } => {
            if *use_welford {
                return Err(Error::arg(
                    OP,
                    "Welford's algorithm is not supported for RMSNorm",
                ));
            }
            if *inplace {
                return Err(Error::arg(
                    OP,
                    "inplace program configs are not supported by the host backend",
                ));
            }
            if *subblock_w == 0 || !block_w.is_multiple_of(*subblock_w) {
                return Err(Error::arg(
                    OP,
                    format!("block_w ({block_w}) must be divisible by subblock_w ({subblock_w})."),
                ));
            }
            let out = requested.as_ref().unwrap_or(in_mc);
            if out.buffer_type != in_mc.buffer_type || out.memory_layout != in_mc.memory_layout {
                return Err(Error::mem_config(
                    OP,
                    format!(
                        "Input and output memory layouts and buffer types must match, got input {:?}/{:?} vs output {:?}/{:?}",
                        in_mc.memory_layout, in_mc.buffer_type, out.memory_layout, out.buffer_type
                    ),
                ));
            }
            if let Some(spec) = in_mc.shard_spec.as_ref() {
                if block_h * TILE_SIZE != spec.shape[0] || block_w * TILE_SIZE != spec.shape[1] {
                    return Err(Error::arg(
                        OP,
                        format!(
                            "block_h * 32 x block_w * 32 ({} x {}) must match the input's shard shape {:?}",
                            block_h * TILE_SIZE,
                            block_w * TILE_SIZE,
                            spec.shape
                        ),
                    ));
                }
            } else {
                return Err(Error::mem_config(
                    OP,
                    format!(
                        "a sharded program config needs a sharded input; the input is {:?}",
                        input.memory_config().map(|m| m.memory_layout)
                    ),
                ));
            }
        }
    }
    Ok(())
}
