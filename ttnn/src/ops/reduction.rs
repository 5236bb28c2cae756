//! Reductions: `max` over one dimension.

use crate::device::BackendImpl;
use crate::error::{Error, Result};
use crate::host::kernels::reduction::ReduceMaxCmd;
use crate::ops::{FLOAT_TYPES, expect_dtype, on_device, output_memory_config};
use crate::tensor::Tensor;
use crate::tt::{Tt, ops as tt_ops};
use crate::types::{DataType, MemoryConfig, Shape};

/// Optional arguments of [`max`] (TT-NN's keyword arguments).
#[derive(Clone, Debug, Default)]
pub struct ReduceArgs {
    /// Keep the reduced dimension with size 1.
    pub keepdim: bool,
    /// Default: the input's memory config (a sharded one gets a spec derived for the output).
    pub memory_config: Option<MemoryConfig>,
}

/// The largest value along dimension `dim` (negative counts from the end) (TT-NN's
/// `ttnn.max(input, dim, keepdim)`). Same dtype and layout as the input; the output shape drops
/// `dim` (or keeps it as 1 with `keepdim`). NaNs are ignored unless every value of a slice is
/// NaN (`f32::max` semantics).
///
/// Host rule: reducing the only dimension of a rank-1 tensor needs `keepdim` (the ABI carries no
/// rank-0 shapes).
pub fn max(input: &Tensor, dim: i32, args: &ReduceArgs) -> Result<Tensor> {
    let op = "ttnn::max";
    let device = on_device(op, "input", input)?;
    expect_dtype(op, "input", input, FLOAT_TYPES)?;
    let shape = input.shape();
    let rank = shape.rank();
    let d = if dim < 0 { dim + rank as i32 } else { dim };
    if d < 0 || d >= rank as i32 {
        return Err(Error::arg(
            op,
            format!("dim {dim} is out of range for rank {rank}"),
        ));
    }
    let d = d as usize;
    if shape.dims()[d] == 0 {
        return Err(Error::shape(
            op,
            "input",
            "a non-empty reduced dimension",
            shape,
        ));
    }
    let out_shape = if args.keepdim {
        shape.with_dim(d as isize, 1)
    } else {
        if rank == 1 {
            return Err(Error::arg(
                op,
                "reducing the only dimension of a rank-1 tensor needs keepdim",
            ));
        }
        let dims: Vec<usize> = (0..rank)
            .filter(|&i| i != d)
            .map(|i| shape.dims()[i])
            .collect();
        Shape::new(&dims)
    };
    let layout = input.layout();
    let mc = output_memory_config(
        op,
        device,
        args.memory_config.as_ref(),
        input,
        out_shape,
        layout,
    )?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => return tt_ops::max(&Tt::new(tt, device), op, input, dim, args),
    };
    let out = Tensor::allocate(device, op, out_shape, input.dtype(), layout, &mc)?;
    let outer: usize = shape.dims()[..d].iter().product();
    let inner: usize = shape.dims()[d + 1..].iter().product();
    host.submit(ReduceMaxCmd {
        input: input.host_buffer(op, "input")?.clone(),
        out: out.host_buffer(op, "output")?.clone(),
        outer,
        reduced: shape.dims()[d],
        inner,
        si: Vec::with_capacity(if input.dtype() == DataType::Float32 {
            0
        } else {
            shape.volume()
        }),
        so: Vec::with_capacity(out_shape.volume()),
    })?;
    Ok(out)
}
