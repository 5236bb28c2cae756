//! Token selection on the device: `argmax`, `topk`, `sampling`, `plus_one`.
//!
//! These are the ops of tt_transformers' on-device sampling: the logits never leave the device,
//! only the chosen token ids do, and `plus_one` advances the positions inside the trace.

use crate::device::BackendImpl;
use crate::error::{Error, Result};
use crate::host::kernels::sampling::{ArgmaxCmd, PlusOneCmd, SamplingCmd, TopkCmd};
use crate::ops::{
    FLOAT_TYPES, expect_dtype, expect_layout, on_device, on_same_device, output_memory_config,
};
use crate::tensor::Tensor;
use crate::tt::{Tt, ops as tt_ops};
use crate::types::{DataType, Layout, MemoryConfig, Shape};

/// Optional arguments of [`argmax`].
#[derive(Clone, Debug, Default)]
pub struct ArgmaxArgs {
    /// The dimension to reduce: only the last one is supported (as on TT). `None` reduces the
    /// whole (row-major) tensor.
    pub dim: Option<i32>,
    /// Keep the reduced dimension with size 1.
    pub keepdim: bool,
    /// TT-NN's multi-core variant; the host ignores it.
    pub use_multicore: bool,
    pub memory_config: Option<MemoryConfig>,
}

/// Integer index types ops can write.
const INDEX_TYPES: &[DataType] = &[DataType::Uint32, DataType::Int32, DataType::Uint16];

fn last_dim_arg(op: &'static str, dim: i32, rank: usize) -> Result<()> {
    let r = rank as i32;
    if dim == -1 || dim == r - 1 {
        return Ok(());
    }
    Err(Error::arg(
        op,
        format!("only the last dimension is supported (got dim {dim} for rank {rank})"),
    ))
}

/// Index of the largest value along the last dimension (the first one on ties), as Uint32 in
/// row-major layout (TT-NN's `ttnn.argmax`). NaNs are never chosen unless a row is all NaN.
pub fn argmax(input: &Tensor, args: &ArgmaxArgs) -> Result<Tensor> {
    let op = "ttnn::argmax";
    let device = on_device(op, "input", input)?;
    let shape = input.shape();
    let allowed: &[DataType] = match input.layout() {
        Layout::RowMajor => &[
            DataType::Bfloat16,
            DataType::Float32,
            DataType::Int32,
            DataType::Uint32,
            DataType::Uint16,
        ],
        // The host also takes block floats in tile layout (their values decode exactly).
        Layout::Tile => FLOAT_TYPES,
    };
    expect_dtype(op, "input", input, allowed)?;
    if shape.rank() == 0 || shape.volume() == 0 {
        return Err(Error::shape(op, "input", "a non-empty tensor", shape));
    }
    let (rows, width, out_shape) = match args.dim {
        Some(d) => {
            last_dim_arg(op, d, shape.rank())?;
            let out = if args.keepdim {
                shape.with_last(1)
            } else {
                Shape::new(&shape.dims()[..shape.rank() - 1])
            };
            (shape.rows(), shape.last(), out)
        }
        None => {
            if input.layout() != Layout::RowMajor {
                return Err(Error::arg(
                    op,
                    "reducing every dimension (dim = None) needs row-major input",
                ));
            }
            (
                1,
                shape.volume(),
                if args.keepdim {
                    Shape::new(&vec![1; shape.rank()])
                } else {
                    Shape::new(&[])
                },
            )
        }
    };
    let mc = output_memory_config(
        op,
        device,
        args.memory_config.as_ref(),
        input,
        out_shape,
        Layout::RowMajor,
    )?;
    if mc.is_sharded() {
        return Err(Error::mem_config(op, "the output must be interleaved"));
    }
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => return tt_ops::argmax(&Tt::new(tt, device), op, input, args),
    };
    let out = Tensor::allocate(
        device,
        op,
        out_shape,
        DataType::Uint32,
        Layout::RowMajor,
        &mc,
    )?;
    host.submit(ArgmaxCmd {
        input: input.host_buffer(op, "input")?.clone(),
        out: out.host_buffer(op, "output")?.clone(),
        rows,
        width,
        scratch: Vec::with_capacity(if input.dtype() == DataType::Float32 {
            0
        } else {
            shape.volume()
        }),
    })?;
    Ok(out)
}

/// Optional arguments of [`topk`].
#[derive(Clone, Debug)]
pub struct TopkArgs<'a> {
    /// Only the last dimension is supported (TT transposes other dims into it).
    pub dim: i32,
    /// The k largest (true) or smallest (false).
    pub largest: bool,
    /// Sorted output (best first). The host always sorts.
    pub sorted: bool,
    pub memory_config: Option<MemoryConfig>,
    /// Values to report as indices instead of positions (same shape as the input, integer),
    /// e.g. global vocabulary ids of a vocabulary shard.
    pub indices_tensor: Option<&'a Tensor>,
}

impl Default for TopkArgs<'_> {
    fn default() -> Self {
        Self {
            dim: -1,
            largest: true,
            sorted: true,
            memory_config: None,
            indices_tensor: None,
        }
    }
}

/// The `k` largest (or smallest) values along the last dimension and their indices
/// (TT-NN's `ttnn.topk`). Ties keep the lower index first, so results are deterministic.
/// Values keep the input's dtype; indices are Uint16 when the dimension is below 65536 and
/// Uint32 otherwise, as on TT. Both outputs are tile layout.
///
/// Host deviations: any rank and any width are accepted, and Float32 inputs too (TT wants
/// rank 4, width >= 64 and Bfloat16/Bfloat8B).
pub fn topk(input: &Tensor, k: u32, args: &TopkArgs<'_>) -> Result<(Tensor, Tensor)> {
    let op = "ttnn::topk";
    let device = on_device(op, "input", input)?;
    expect_dtype(op, "input", input, FLOAT_TYPES)?;
    expect_layout(op, "input", input, Layout::Tile)?;
    let shape = input.shape();
    if shape.rank() == 0 {
        return Err(Error::shape(op, "input", "rank >= 1", shape));
    }
    last_dim_arg(op, args.dim, shape.rank())?;
    let width = shape.last();
    let k = k as usize;
    if k == 0 || k > width {
        return Err(Error::arg(
            op,
            format!("k = {k} must be in 1..={width} (the dimension size)"),
        ));
    }
    if let Some(t) = args.indices_tensor {
        on_same_device(op, "indices_tensor", device, t)?;
        expect_dtype(op, "indices_tensor", t, INDEX_TYPES)?;
        if t.shape() != shape {
            return Err(Error::shape(
                op,
                "indices_tensor",
                shape.to_string(),
                t.shape(),
            ));
        }
    }
    let out_shape = shape.with_last(k);
    let mc = output_memory_config(
        op,
        device,
        args.memory_config.as_ref(),
        input,
        out_shape,
        Layout::Tile,
    )?;
    if mc.is_sharded() {
        return Err(Error::mem_config(op, "the outputs must be interleaved"));
    }
    let idx_dtype = if width < 65536 {
        DataType::Uint16
    } else {
        DataType::Uint32
    };
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::topk(&Tt::new(tt, device), op, input, k as u32, args);
        }
    };
    let idx_buf = match args.indices_tensor {
        Some(t) => Some(t.host_buffer(op, "indices_tensor")?.clone()),
        None => None,
    };
    let values = Tensor::allocate(device, op, out_shape, input.dtype(), Layout::Tile, &mc)?;
    let indices = Tensor::allocate(device, op, out_shape, idx_dtype, Layout::Tile, &mc)?;
    let rows = shape.rows();
    host.submit(TopkCmd {
        input: input.host_buffer(op, "input")?.clone(),
        index_source: idx_buf,
        values: values.host_buffer(op, "values")?.clone(),
        indices: indices.host_buffer(op, "indices")?.clone(),
        rows,
        width,
        k,
        largest: args.largest,
        scratch_in: Vec::with_capacity(if input.dtype() == DataType::Float32 {
            0
        } else {
            shape.volume()
        }),
        best: Vec::with_capacity(if k > 64 { width } else { k }),
        out_vals: Vec::with_capacity(rows * k),
    })?;
    Ok((values, indices))
}

/// Optional arguments of [`sampling`].
#[derive(Clone, Debug, Default)]
pub struct SamplingArgs<'a> {
    /// Seed of the random stream when `user_seeds` is absent.
    pub seed: Option<u32>,
    /// Host extension: one seed per user (Uint32 `[B]`), so a user's draws do not depend on
    /// which other users share the batch.
    pub user_seeds: Option<&'a Tensor>,
    /// Host extension: a per-user counter mixed into the draw (Int32/Uint32 `[B]`, e.g. the
    /// current positions, which `plus_one` advances inside the trace). Without it the op keeps
    /// its own call counter, like TT's on-device PRNG state.
    pub user_offsets: Option<&'a Tensor>,
    /// Write the chosen ids into this existing Uint32/Int32 tensor of B elements (e.g. the
    /// decode step's token input) instead of a new one.
    pub output_tensor: Option<&'a Tensor>,
}

/// Samples one token per user from candidate logits (TT-NN's `ttnn.sampling`):
/// for user `u` (row `u` of `input_values` `[.., B, W]`): keep the `k[u]` largest candidates
/// (`k[u] == 0` keeps all), multiply them by `temp[u]` (**the inverse temperature**, as TT's
/// kernel does), softmax, keep the smallest prefix whose cumulative probability exceeds `p[u]`
/// (top-p; `p >= 1` keeps all, `p == 0` is greedy), renormalise, draw `r` in [0, 1) and return
/// `input_indices[u, i]` for the first `i` whose cumulative probability exceeds `r`.
/// The draw is a counter-based hash of (seed, user offset), so the same inputs give the same
/// token whatever the batch.
///
/// Host deviations: any B (TT needs exactly 32 users), Float32/Bfloat16 values of any layout,
/// Uint16/Uint32/Int32 indices of any layout.
pub fn sampling(
    input_values: &Tensor,
    input_indices: &Tensor,
    k: &Tensor,
    p: &Tensor,
    temp: &Tensor,
    args: &SamplingArgs<'_>,
) -> Result<Tensor> {
    let op = "ttnn::sampling";
    let device = on_device(op, "input_values", input_values)?;
    on_same_device(op, "input_indices", device, input_indices)?;
    expect_dtype(op, "input_values", input_values, FLOAT_TYPES)?;
    expect_dtype(op, "input_indices", input_indices, INDEX_TYPES)?;
    let shape = input_values.shape();
    if input_indices.shape() != shape {
        return Err(Error::shape(
            op,
            "input_indices",
            shape.to_string(),
            input_indices.shape(),
        ));
    }
    if shape.rank() == 0 || shape.volume() == 0 {
        return Err(Error::shape(
            op,
            "input_values",
            "a non-empty [.., users, candidates] tensor",
            shape,
        ));
    }
    let (users, width) = (shape.rows(), shape.last());
    let per_user = |what: &str, t: &Tensor, allowed: &[DataType]| -> Result<()> {
        on_same_device(op, what, device, t)?;
        expect_dtype(op, what, t, allowed)?;
        if t.shape().volume() != users {
            return Err(Error::shape(
                op,
                what,
                format!("{users} elements (one per user)"),
                t.shape(),
            ));
        }
        Ok(())
    };
    per_user("k", k, &[DataType::Uint32, DataType::Int32])?;
    per_user("p", p, &[DataType::Float32, DataType::Bfloat16])?;
    per_user("temp", temp, &[DataType::Float32, DataType::Bfloat16])?;
    if let Some(t) = args.user_seeds {
        per_user("user_seeds", t, &[DataType::Uint32])?;
    }
    if let Some(t) = args.user_offsets {
        per_user("user_offsets", t, &[DataType::Int32, DataType::Uint32])?;
    }
    if let Some(t) = args.output_tensor {
        per_user("output_tensor", t, &[DataType::Uint32, DataType::Int32])?;
        for (what, input) in [
            ("input_values", input_values),
            ("input_indices", input_indices),
        ] {
            if t.shares_buffer_with(input) {
                return Err(Error::arg(op, format!("output_tensor must not be {what}")));
            }
        }
    }
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::sampling(
                &Tt::new(tt, device),
                op,
                input_values,
                input_indices,
                k,
                p,
                temp,
                args,
            );
        }
    };
    let hb = |t: Option<&Tensor>, what: &str| -> Result<_> {
        t.map(|t| t.host_buffer(op, what).cloned()).transpose()
    };
    let seeds = hb(args.user_seeds, "user_seeds")?;
    let offsets = hb(args.user_offsets, "user_offsets")?;
    let out = match args.output_tensor {
        Some(t) => t.clone(),
        None => {
            let out_shape = Shape::new(&[1, 1, 1, users]);
            let mc =
                output_memory_config(op, device, None, input_values, out_shape, Layout::RowMajor)?;
            Tensor::allocate(
                device,
                op,
                out_shape,
                DataType::Uint32,
                Layout::RowMajor,
                &mc,
            )?
        }
    };
    let out_buf = out.host_buffer(op, "output")?.clone();
    host.submit(SamplingCmd {
        values: input_values.host_buffer(op, "input_values")?.clone(),
        indices: input_indices.host_buffer(op, "input_indices")?.clone(),
        k: k.host_buffer(op, "k")?.clone(),
        p: p.host_buffer(op, "p")?.clone(),
        temp: temp.host_buffer(op, "temp")?.clone(),
        seeds,
        offsets,
        out: out_buf,
        seed: args.seed.unwrap_or(0),
        calls: 0,
        users,
        width,
        scratch_vals: Vec::with_capacity(if input_values.dtype() == DataType::Float32 {
            0
        } else {
            shape.volume()
        }),
        scratch_p: Vec::with_capacity(users),
        scratch_t: Vec::with_capacity(users),
        order: Vec::with_capacity(width),
        probs: Vec::with_capacity(width),
    })?;
    Ok(out)
}

/// Optional arguments of [`plus_one`].
#[derive(Clone, Debug, Default)]
pub struct PlusOneArgs {
    /// Leave negative entries (inactive users at position -1) unchanged.
    pub skip_negative_entries: bool,
}

/// Adds one to every element in place (TT-NN's `ttnn.plus_one`): how positions advance inside a
/// decode trace. Int32/Uint32, row-major, rank 1 to 4. With `skip_negative_entries`, only
/// entries in `0..i32::MAX` change.
pub fn plus_one(input: &Tensor, args: &PlusOneArgs) -> Result<()> {
    let op = "ttnn::plus_one";
    let device = on_device(op, "input", input)?;
    expect_dtype(op, "input", input, &[DataType::Int32, DataType::Uint32])?;
    expect_layout(op, "input", input, Layout::RowMajor)?;
    if !(1..=4).contains(&input.shape().rank()) {
        return Err(Error::shape(op, "input", "rank 1 to 4", input.shape()));
    }
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => return tt_ops::plus_one(&Tt::new(tt, device), op, input, args),
    };
    host.submit(PlusOneCmd {
        buf: input.host_buffer(op, "input")?.clone(),
        skip_negative_entries: args.skip_negative_entries,
    })
}
