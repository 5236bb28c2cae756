//! `embedding`: row lookup (token embeddings, RoPE table rows).

use crate::device::BackendImpl;
use crate::error::{Error, Result};
use crate::host::kernels::embedding::EmbeddingCmd;
use crate::ops::{FLOAT_TYPES, expect_dtype, on_device, on_same_device, output_memory_config};
use crate::tensor::Tensor;
use crate::tt::{Tt, ops as tt_ops};
use crate::types::{DataType, Layout, MemoryConfig, Shape, TILE_SIZE, TensorMemoryLayout};

const OP: &str = "ttnn::embedding";

/// TT-NN's `EmbeddingsType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum EmbeddingsType {
    /// `out[t] = weight[ids[t]]`.
    #[default]
    Generic,
    /// Like `Generic`, but positions whose id equals `padding_idx` get a zero row.
    Padded,
    /// A two-row table (ids 0 and 1).
    Binary,
}

/// Optional arguments of [`embedding`] (TT-NN's keyword arguments).
#[derive(Clone, Debug, Default)]
pub struct EmbeddingArgs {
    /// Positions holding this id produce zeros (selects [`EmbeddingsType::Padded`], as TT-NN).
    pub padding_idx: Option<u32>,
    /// Output layout; default: the weight's layout.
    pub layout: Option<Layout>,
    pub embeddings_type: EmbeddingsType,
    /// Output dtype; default: the weight's. A change needs TILE output (TT-NN rule).
    pub dtype: Option<DataType>,
    /// Default: the ids' memory config.
    pub memory_config: Option<MemoryConfig>,
}

/// Looks up rows of `weight` (`[V, D]` or `[1, 1, V, D]`) by `input_ids` (`[B, S]`, or `[S]`;
/// any rank whose middle dims are 1, e.g. tt_transformers' `[1, 1, 1, 32]`): the output is
/// `[B, S, D]` (`[S, D]` for 1-D ids), `out[b, s, :] = weight[ids[b, s], :]`. tt_transformers
/// uses it for token embeddings and to gather RoPE cos/sin rows by position.
///
/// Validation follows TT-NN: ids UINT32 or BFLOAT16 (host: also INT32), interleaved; weight
/// BFLOAT16, interleaved, leading dims 1 after unsqueezing to 4-D (a TILE weight is read as
/// row-major, as TT-NN's wrapper converts it); a dtype change only for TILE output ("Can only
/// typecast output embeddings when producing TILE_LAYOUT output"); a sharded output needs a shard
/// spec (tile output) or must be height-sharded (row-major output); a pad token only with
/// `Padded`, `Padded` only with a pad token, `Binary` only with a 2-row table.
///
/// Host deviations: a FLOAT32 weight is accepted (the host keeps f32 tables, e.g. RoPE cos/sin,
/// without rounding); TT-NN silently ignores a dtype request for row-major output where the
/// host returns an error; an id outside the table (TT-NN reads out of bounds) makes the op
/// return an error naming the id when it runs (eagerly, or on trace replay), and the device
/// stays usable; INT32 ids may be negative and then give zero rows (an inactive decode slot
/// at position -1 looks up its RoPE rows from the very positions tensor the cache ops skip it
/// by). With an unchanged dtype, output rows are bit-exact copies of weight rows.
pub fn embedding(input_ids: &Tensor, weight: &Tensor, args: &EmbeddingArgs) -> Result<Tensor> {
    let device = on_device(OP, "input_ids", input_ids)?;
    on_same_device(OP, "weight", device, weight)?;
    expect_dtype(
        OP,
        "input_ids (Input must be UINT32 or BFLOAT16)",
        input_ids,
        &[DataType::Uint32, DataType::Int32, DataType::Bfloat16],
    )?;
    expect_dtype(
        OP,
        "weight (Weights tensor must have BFLOAT16 dtype; the host also takes FLOAT32)",
        weight,
        &[DataType::Bfloat16, DataType::Float32],
    )?;
    for (what, t) in [("input_ids", input_ids), ("weight", weight)] {
        if t.memory_config().is_some_and(|m| m.is_sharded()) {
            return Err(Error::mem_config(
                OP,
                format!("Embedding does not currently support sharded {what}"),
            ));
        }
    }

    let ws = weight.shape();
    if ws.rank() < 2 || ws.rank() > 4 || ws.dims()[..ws.rank() - 2].iter().any(|&d| d != 1) {
        return Err(Error::shape(
            OP,
            "weight (First two dimensions for the weights must be 1)",
            "[V, D] or [1, 1, V, D]",
            ws,
        ));
    }
    let (vocab, dim) = (ws.dim(-2), ws.last());
    if vocab == 0 || dim == 0 {
        return Err(Error::shape(
            OP,
            "weight (needs at least one row and one column)",
            "[V, D] with V, D > 0",
            ws,
        ));
    }

    let ids_shape = input_ids.shape();
    let (batch, seq) = match ids_shape.rank() {
        0 => {
            return Err(Error::shape(OP, "input_ids", "[B, S] or [S]", ids_shape));
        }
        1 => (1, ids_shape.dims()[0]),
        _ => (ids_shape.dims()[0], ids_shape.last()),
    };
    if batch * seq != ids_shape.volume() {
        return Err(Error::shape(
            OP,
            "input_ids (Only dim 0 && 3 for the input can be non 1)",
            "[B, S], [S] or [B, 1, 1, S]",
            ids_shape,
        ));
    }

    let embeddings_type = if args.padding_idx.is_some() {
        EmbeddingsType::Padded
    } else {
        args.embeddings_type
    };
    match embeddings_type {
        EmbeddingsType::Padded if args.padding_idx.is_none() => {
            return Err(Error::arg(
                OP,
                "Pad token must be specified when PADDED Embeddings Type is specified",
            ));
        }
        EmbeddingsType::Binary if vocab != 2 => {
            return Err(Error::arg(
                OP,
                format!(
                    "Weight tensor must have 2 embeddings for BINARY Embeddings Type, got {vocab}"
                ),
            ));
        }
        _ => {}
    }

    let layout = args.layout.unwrap_or(weight.layout());
    let dtype = args.dtype.unwrap_or(weight.dtype());
    if dtype != weight.dtype() && layout != Layout::Tile {
        return Err(Error::arg(
            OP,
            format!(
                "Can only typecast output embeddings when producing TILE_LAYOUT output (dtype {dtype:?} requested with {layout:?})"
            ),
        ));
    }
    if !FLOAT_TYPES.contains(&dtype) {
        return Err(Error::dtype(
            OP,
            "the output",
            dtype,
            format!("{FLOAT_TYPES:?}"),
        ));
    }

    let out_shape = if ids_shape.rank() == 1 {
        Shape::new(&[seq, dim])
    } else {
        Shape::new(&[batch, seq, dim])
    };
    if let Some(m) = args.memory_config.as_ref().filter(|m| m.is_sharded()) {
        let tilized = layout == Layout::Tile
            && seq.is_multiple_of(TILE_SIZE)
            && dim.is_multiple_of(TILE_SIZE);
        if tilized && m.shard_spec.is_none() {
            return Err(Error::mem_config(
                OP,
                "Sharded memory config must have a shard spec",
            ));
        }
        if layout == Layout::RowMajor && m.memory_layout != TensorMemoryLayout::HeightSharded {
            return Err(Error::mem_config(
                OP,
                "Embedding only supports height sharded Row Major outputs",
            ));
        }
    }
    let mc = output_memory_config(
        OP,
        device,
        args.memory_config.as_ref(),
        input_ids,
        out_shape,
        layout,
    )?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::embedding(&Tt::new(tt, device), OP, input_ids, weight, args);
        }
    };
    let out = Tensor::allocate(device, OP, out_shape, dtype, layout, &mc)?;
    let tokens = batch * seq;
    let cmd = EmbeddingCmd {
        ids: input_ids.host_buffer(OP, "input_ids")?.clone(),
        weight: weight.host_buffer(OP, "weight")?.clone(),
        out: out.host_buffer(OP, "output")?.clone(),
        tokens,
        vocab,
        dim,
        pad: if embeddings_type == EmbeddingsType::Padded {
            args.padding_idx
        } else {
            None
        },
        // Scratch only when converting into a non-f32 dtype (write_f32 rounds through it).
        s_out: Vec::with_capacity(if dtype != weight.dtype() && dtype != DataType::Float32 {
            tokens * dim
        } else {
            0
        }),
        s_row: if weight.dtype() == DataType::Bfloat16 && dtype != DataType::Bfloat16 {
            vec![half::bf16::ZERO; dim]
        } else {
            Vec::new()
        },
    };
    host.submit(cmd)?;
    Ok(out)
}
