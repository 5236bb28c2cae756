//! Elementwise ops: `add`, `multiply` (with fused input activations, which is how
//! tt_transformers computes `relu(gate)^2 * up`), their scalar forms (`add_scalar`, ...), the
//! unary ops (`relu`, `square`, `neg`, `silu`, `exp`, `abs`, `reciprocal`, `round`), `clamp`,
//! `typecast`.

use crate::device::BackendImpl;
use crate::error::{Error, Result};
use crate::host::kernels::eltwise::{
    BinaryCmd, BinaryScalarCmd, Broadcast, ClampCmd, TypecastCmd, UnaryCmd,
};
use crate::ops::{FLOAT_TYPES, expect_dtype, on_device, on_same_device, output_memory_config};
use crate::tensor::Tensor;
use crate::tt::{Tt, ops as tt_ops};
use crate::types::{DataType, Layout, MemoryConfig, Shape};

/// Unary functions usable alone or fused in front of a binary op (TT-NN's `UnaryOpType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Relu,
    Square,
    Neg,
    Silu,
    Exp,
    Abs,
    /// `1 / x` (IEEE: `1 / 0` is infinite).
    Reciprocal,
    /// Round half to even to an integer value (TT-NN's `round` with `decimals = 0`).
    Round,
}

/// Which binary op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOpType {
    Add,
    Subtract,
    Multiply,
}

/// Optional arguments of the binary ops (TT-NN: `memory_config`, `dtype`,
/// `input_tensor_a_activations`).
#[derive(Clone, Debug, Default)]
pub struct BinaryArgs {
    pub memory_config: Option<MemoryConfig>,
    pub dtype: Option<DataType>,
    /// Applied to `a`, in order, before the op (e.g. `[Relu, Square]` for BitNet's relu2).
    pub input_tensor_a_activations: Vec<UnaryOp>,
}

/// Optional arguments of the unary ops.
#[derive(Clone, Debug, Default)]
pub struct UnaryArgs {
    pub memory_config: Option<MemoryConfig>,
    pub dtype: Option<DataType>,
}

/// Broadcast shape of `a` and `b` (numpy rules), or an error naming the op.
fn broadcast_shape(op: &'static str, a: Shape, b: Shape) -> Result<Shape> {
    let rank = a.rank().max(b.rank());
    let mut dims = [1usize; crate::types::MAX_RANK];
    for (i, d) in dims.iter_mut().enumerate().take(rank) {
        let off = i as isize - rank as isize;
        let (x, y) = (a.dim(off), b.dim(off));
        *d = match (x, y) {
            _ if x == y => x,
            (1, _) => y,
            (_, 1) => x,
            _ => {
                return Err(Error::shape(
                    op,
                    "b",
                    format!("a shape broadcastable to {a}"),
                    b,
                ));
            }
        };
    }
    Ok(Shape::new(&dims[..rank]))
}

fn binary(
    op_name: &'static str,
    op: BinaryOpType,
    a: &Tensor,
    b: &Tensor,
    args: &BinaryArgs,
) -> Result<Tensor> {
    let device = on_device(op_name, "a", a)?;
    on_same_device(op_name, "b", device, b)?;
    expect_dtype(op_name, "a", a, FLOAT_TYPES)?;
    expect_dtype(op_name, "b", b, FLOAT_TYPES)?;
    if a.layout() != b.layout() {
        return Err(Error::LayoutMismatch {
            op: op_name,
            what: "b".into(),
            got: b.layout(),
            expected: a.layout(),
        });
    }
    let out_shape = broadcast_shape(op_name, a.shape(), b.shape())?;
    let dtype = args.dtype.unwrap_or(a.dtype());
    if !FLOAT_TYPES.contains(&dtype) {
        return Err(Error::dtype(
            op_name,
            "the output",
            dtype,
            format!("{FLOAT_TYPES:?}"),
        ));
    }
    let layout = if dtype.requires_tile_layout() {
        Layout::Tile
    } else {
        a.layout()
    };
    let mc = output_memory_config(
        op_name,
        device,
        args.memory_config.as_ref(),
        a,
        out_shape,
        layout,
    )?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::binary(&Tt::new(tt, device), op_name, op, a, b, args);
        }
    };
    let out = Tensor::allocate(device, op_name, out_shape, dtype, layout, &mc)?;
    let len = out_shape.volume();
    let cmd = BinaryCmd {
        a: a.host_buffer(op_name, "a")?.clone(),
        b: b.host_buffer(op_name, "b")?.clone(),
        out: out.host_buffer(op_name, "output")?.clone(),
        op,
        a_activations: args.input_tensor_a_activations.clone(),
        a_bcast: Broadcast::new(a.shape(), out_shape),
        b_bcast: Broadcast::new(b.shape(), out_shape),
        len,
        sa: Vec::with_capacity(if a.dtype() == DataType::Float32 {
            0
        } else {
            a.shape().volume()
        }),
        sb: Vec::with_capacity(if b.dtype() == DataType::Float32 {
            0
        } else {
            b.shape().volume()
        }),
        so: Vec::with_capacity(if dtype == DataType::Float32 { 0 } else { len }),
    };
    host.submit(cmd)?;
    Ok(out)
}

/// `a + b` with numpy broadcasting.
pub fn add(a: &Tensor, b: &Tensor, args: &BinaryArgs) -> Result<Tensor> {
    binary("ttnn::add", BinaryOpType::Add, a, b, args)
}

/// `a - b` with numpy broadcasting.
pub fn subtract(a: &Tensor, b: &Tensor, args: &BinaryArgs) -> Result<Tensor> {
    binary("ttnn::subtract", BinaryOpType::Subtract, a, b, args)
}

/// `act(a) * b` with numpy broadcasting; `act` is `args.input_tensor_a_activations`.
pub fn multiply(a: &Tensor, b: &Tensor, args: &BinaryArgs) -> Result<Tensor> {
    binary("ttnn::multiply", BinaryOpType::Multiply, a, b, args)
}

/// The output dtype and layout of an elementwise op on `input`: `dtype` (default the input's),
/// which must be a float type; block floats force TILE.
fn float_output(
    op_name: &'static str,
    input: &Tensor,
    dtype: Option<DataType>,
) -> Result<(DataType, Layout)> {
    let dtype = dtype.unwrap_or(input.dtype());
    if !FLOAT_TYPES.contains(&dtype) {
        return Err(Error::dtype(
            op_name,
            "the output",
            dtype,
            format!("{FLOAT_TYPES:?}"),
        ));
    }
    let layout = if dtype.requires_tile_layout() {
        Layout::Tile
    } else {
        input.layout()
    };
    Ok((dtype, layout))
}

/// Scratch for decoding `dtype` storage to f32 (none needed for f32 itself).
fn f32_scratch(dtype: DataType, len: usize) -> Vec<f32> {
    Vec::with_capacity(if dtype == DataType::Float32 { 0 } else { len })
}

fn binary_scalar(
    op_name: &'static str,
    op: BinaryOpType,
    a: &Tensor,
    b: f32,
    args: &BinaryArgs,
) -> Result<Tensor> {
    let device = on_device(op_name, "a", a)?;
    expect_dtype(op_name, "a", a, FLOAT_TYPES)?;
    let (dtype, layout) = float_output(op_name, a, args.dtype)?;
    let shape = a.shape();
    let mc = output_memory_config(
        op_name,
        device,
        args.memory_config.as_ref(),
        a,
        shape,
        layout,
    )?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::binary_scalar(&Tt::new(tt, device), op_name, op, a, b, args);
        }
    };
    let out = Tensor::allocate(device, op_name, shape, dtype, layout, &mc)?;
    let len = shape.volume();
    host.submit(BinaryScalarCmd {
        a: a.host_buffer(op_name, "a")?.clone(),
        out: out.host_buffer(op_name, "output")?.clone(),
        op,
        b,
        a_activations: args.input_tensor_a_activations.clone(),
        len,
        sa: f32_scratch(a.dtype(), len),
        so: f32_scratch(dtype, len),
    })?;
    Ok(out)
}

/// `act(a) + b` for a scalar `b` (TT-NN's `ttnn.add(a, float)`). The host computes in f32 and
/// rounds once to the output dtype.
pub fn add_scalar(a: &Tensor, b: f32, args: &BinaryArgs) -> Result<Tensor> {
    binary_scalar("ttnn::add", BinaryOpType::Add, a, b, args)
}

/// `act(a) - b` for a scalar `b` (TT-NN's `ttnn.subtract(a, float)`).
pub fn subtract_scalar(a: &Tensor, b: f32, args: &BinaryArgs) -> Result<Tensor> {
    binary_scalar("ttnn::subtract", BinaryOpType::Subtract, a, b, args)
}

/// `act(a) * b` for a scalar `b` (TT-NN's `ttnn.multiply(a, float)`).
pub fn multiply_scalar(a: &Tensor, b: f32, args: &BinaryArgs) -> Result<Tensor> {
    binary_scalar("ttnn::multiply", BinaryOpType::Multiply, a, b, args)
}

fn unary(
    op_name: &'static str,
    ops: &[UnaryOp],
    input: &Tensor,
    args: &UnaryArgs,
) -> Result<Tensor> {
    let device = on_device(op_name, "input", input)?;
    expect_dtype(op_name, "input", input, FLOAT_TYPES)?;
    let dtype = args.dtype.unwrap_or(input.dtype());
    if !FLOAT_TYPES.contains(&dtype) {
        return Err(Error::dtype(
            op_name,
            "the output",
            dtype,
            format!("{FLOAT_TYPES:?}"),
        ));
    }
    let layout = if dtype.requires_tile_layout() {
        Layout::Tile
    } else {
        input.layout()
    };
    let shape = input.shape();
    let mc = output_memory_config(
        op_name,
        device,
        args.memory_config.as_ref(),
        input,
        shape,
        layout,
    )?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::unary(&Tt::new(tt, device), op_name, ops, input, args);
        }
    };
    let out = Tensor::allocate(device, op_name, shape, dtype, layout, &mc)?;
    let len = shape.volume();
    host.submit(UnaryCmd {
        input: input.host_buffer(op_name, "input")?.clone(),
        out: out.host_buffer(op_name, "output")?.clone(),
        ops: ops.to_vec(),
        len,
        si: Vec::with_capacity(if input.dtype() == DataType::Float32 {
            0
        } else {
            len
        }),
        so: Vec::with_capacity(if dtype == DataType::Float32 { 0 } else { len }),
    })?;
    Ok(out)
}

/// `max(x, 0)`.
pub fn relu(input: &Tensor, args: &UnaryArgs) -> Result<Tensor> {
    unary("ttnn::relu", &[UnaryOp::Relu], input, args)
}

/// `x * x`.
pub fn square(input: &Tensor, args: &UnaryArgs) -> Result<Tensor> {
    unary("ttnn::square", &[UnaryOp::Square], input, args)
}

/// `-x`.
pub fn neg(input: &Tensor, args: &UnaryArgs) -> Result<Tensor> {
    unary("ttnn::neg", &[UnaryOp::Neg], input, args)
}

/// `x * sigmoid(x)`.
pub fn silu(input: &Tensor, args: &UnaryArgs) -> Result<Tensor> {
    unary("ttnn::silu", &[UnaryOp::Silu], input, args)
}

/// `e^x` (TT-NN's `exp` with `fast_and_approximate_mode = false`).
pub fn exp(input: &Tensor, args: &UnaryArgs) -> Result<Tensor> {
    unary("ttnn::exp", &[UnaryOp::Exp], input, args)
}

/// `|x|`.
pub fn abs(input: &Tensor, args: &UnaryArgs) -> Result<Tensor> {
    unary("ttnn::abs", &[UnaryOp::Abs], input, args)
}

/// `1 / x`, IEEE (a zero gives an infinity of its sign).
pub fn reciprocal(input: &Tensor, args: &UnaryArgs) -> Result<Tensor> {
    unary("ttnn::reciprocal", &[UnaryOp::Reciprocal], input, args)
}

/// Rounds half to even to an integer value (TT-NN's `round` with `decimals = 0`), keeping the
/// float dtype.
pub fn round(input: &Tensor, args: &UnaryArgs) -> Result<Tensor> {
    unary("ttnn::round", &[UnaryOp::Round], input, args)
}

/// `min(max(x, min), max)` as `torch.clamp` defines it: NaN stays NaN, and `min > max` gives
/// `max` everywhere (TT-NN's `ttnn.clamp(input, min, max)`).
pub fn clamp(input: &Tensor, min: f32, max: f32, args: &UnaryArgs) -> Result<Tensor> {
    let op_name = "ttnn::clamp";
    let device = on_device(op_name, "input", input)?;
    expect_dtype(op_name, "input", input, FLOAT_TYPES)?;
    let (dtype, layout) = float_output(op_name, input, args.dtype)?;
    let shape = input.shape();
    let mc = output_memory_config(
        op_name,
        device,
        args.memory_config.as_ref(),
        input,
        shape,
        layout,
    )?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::clamp(&Tt::new(tt, device), op_name, input, min, max, args);
        }
    };
    let out = Tensor::allocate(device, op_name, shape, dtype, layout, &mc)?;
    let len = shape.volume();
    host.submit(ClampCmd {
        input: input.host_buffer(op_name, "input")?.clone(),
        out: out.host_buffer(op_name, "output")?.clone(),
        min,
        max,
        len,
        si: f32_scratch(input.dtype(), len),
        so: f32_scratch(dtype, len),
    })?;
    Ok(out)
}

/// Any chain of unary functions in one pass.
pub fn unary_chain(input: &Tensor, ops: &[UnaryOp], args: &UnaryArgs) -> Result<Tensor> {
    unary("ttnn::unary_chain", ops, input, args)
}

/// Converts to `dtype` (floats round to the target precision; float to integer truncates
/// toward zero; integer to integer must fit, else the value wraps as on TT).
pub fn typecast(
    input: &Tensor,
    dtype: DataType,
    memory_config: Option<&MemoryConfig>,
) -> Result<Tensor> {
    let op = "ttnn::typecast";
    let device = on_device(op, "input", input)?;
    let layout = if dtype.requires_tile_layout() {
        Layout::Tile
    } else {
        input.layout()
    };
    if dtype.requires_tile_layout() && input.layout() != Layout::Tile {
        return Err(Error::LayoutMismatch {
            op,
            what: "input".into(),
            got: input.layout(),
            expected: Layout::Tile,
        });
    }
    let shape = input.shape();
    let mc = output_memory_config(op, device, memory_config, input, shape, layout)?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::typecast(&Tt::new(tt, device), op, input, dtype, memory_config);
        }
    };
    let out = Tensor::allocate(device, op, shape, dtype, layout, &mc)?;
    host.submit(TypecastCmd {
        input: input.host_buffer(op, "input")?.clone(),
        out: out.host_buffer(op, "output")?.clone(),
        si: Vec::with_capacity(shape.volume()),
    })?;
    Ok(out)
}
