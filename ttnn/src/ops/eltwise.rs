//! Elementwise ops: `add`, `multiply` (with fused input activations, which is how
//! tt_transformers computes `relu(gate)^2 * up`), `relu`, `square`, `typecast`.

use crate::device::BackendImpl;
use crate::error::{Error, Result};
use crate::host::kernels::eltwise::{BinaryCmd, Broadcast, TypecastCmd, UnaryCmd};
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
