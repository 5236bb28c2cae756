//! `ttnn::experimental::rotary_embedding_llama` and its transformation matrix.
//!
//! The op implements the Meta ("interleaved pairs") RoPE: for each pair `(2i, 2i+1)` of the head
//! dimension, with cos/sin tables in the duplicated "meta" format (`cos = [c0, c0, c1, c1, ...]`,
//! `c_i = cos(pos * theta^(-2i/hd))`):
//! ```text
//! out[2i]   = x[2i]   * cos[2i]   - x[2i+1] * sin[2i]
//! out[2i+1] = x[2i+1] * cos[2i+1] + x[2i]   * sin[2i+1]
//! ```
//! TT computes it as `x * cos + (x_chunk @ trans_mat) * sin` per 32-wide chunk of the head
//! dimension, with [`get_rot_transformation_mat`] as `trans_mat`; the host does the same.
//!
//! HF checkpoints (Llama, BitNet) use the "rotate-half" convention instead, pairing `i` with
//! `i + hd/2`. For this op to equal HF's RoPE, the rows of the Q and K projection weights (and
//! biases, and q/k norm weights) must first be permuted, per head, from the half-split order
//! `[r0..r_{hd/2-1}, i0..i_{hd/2-1}]` to interleaved pairs `[r0, i0, r1, i1, ...]`, as
//! tt_transformers' `reverse_permute` does:
//! `W.view(n_heads, 2, hd/2, dim).transpose(1, 2).reshape(n_heads*hd, dim)`.
//! The attention scores are unchanged by this permutation (Q and K are permuted alike), and V
//! and O are not touched.

use crate::device::BackendImpl;
use crate::error::{Error, Result};
use crate::host::kernels::rotary::{RotaryCmd, rot_transformation_values};
use crate::ops::output_memory_config;
use crate::ops::{expect_dtype, expect_layout, expect_rank, on_device, on_same_device};
use crate::tensor::Tensor;
use crate::tt::{Tt, ops as tt_ops};
use crate::types::{
    ComputeKernelConfig, DataType, Layout, MemoryConfig, TILE_SIZE, TensorMemoryLayout,
};

/// Optional arguments of [`rotary_embedding_llama`] (TT-NN's keyword arguments).
#[derive(Clone, Debug, Default)]
pub struct RotaryEmbeddingLlamaArgs {
    /// Decode: input `[1, B, nh, hd]`, every tensor HEIGHT_SHARDED. Prefill (false, the
    /// default): input `[B, nh, S, hd]`, interleaved.
    pub is_decode_mode: bool,
    /// Default: the input's memory config (its memory layout must be the input's).
    pub memory_config: Option<MemoryConfig>,
    /// TT default: HiFi4, approx, no fp32 accumulation. `fp32_dest_acc_en` must be false for
    /// head dims above 128 (a TT restriction, checked on the host too).
    pub compute_kernel_config: Option<ComputeKernelConfig>,
}

/// TT demands BFLOAT16; the host also takes Float32.
const ROPE_TYPES: &[DataType] = &[DataType::Bfloat16, DataType::Float32];

fn layout_of(t: &Tensor) -> TensorMemoryLayout {
    t.memory_config()
        .map_or(TensorMemoryLayout::Interleaved, |m| m.memory_layout)
}

fn expect_height_sharded(op: &'static str, what: &str, t: &Tensor) -> Result<()> {
    if layout_of(t) != TensorMemoryLayout::HeightSharded {
        return Err(Error::mem_config(
            op,
            format!(
                "{what} must be HEIGHT_SHARDED in decode mode, got {:?}",
                layout_of(t)
            ),
        ));
    }
    Ok(())
}

fn shard_shape(t: &Tensor) -> Option<[usize; 2]> {
    t.memory_config()
        .and_then(|m| m.shard_spec.as_ref())
        .map(|s| s.shape)
}

/// `ttnn::experimental::rotary_embedding_llama`: RoPE on Q or K heads, interleaved-pair
/// convention (see the module docs).
///
/// - Prefill (`is_decode_mode = false`): input `[B, nh, S, hd]` interleaved; `cos_cache` and
///   `sin_cache` `[1, 1|nh, Sc, hd]` with `Sc >= S` (row `s` is used for sequence row `s`; one
///   block per head or one shared by all heads); `trans_mat` `[1, 1, 32, 32]`.
/// - Decode (`is_decode_mode = true`): input `[1, B, nh, hd]`; cos/sin `[1, B, 1, hd]` (tile
///   padded to 32 rows, shard height 32): row 0 of user `b`'s block applies to every head of
///   user `b`; `trans_mat` `[1, 1, 32*k, 32]` with `[32, 32]` shards (tt_transformers repeats the
///   matrix once per user; the host uses the first 32x32 block). All four HEIGHT_SHARDED.
///
/// `hd` must be a multiple of 32 and at most 256. Output: the input's shape, dtype and layout.
/// To reproduce HF's (rotate-half) RoPE, the Q/K projection rows must be permuted into
/// interleaved pairs first (tt_transformers' `reverse_permute`; see the module docs).
///
/// Host deviation: TT demands BFLOAT16 for all four tensors; the host also accepts Float32 (in
/// any mix), because it computes activations in f32 to match the HF fp32 reference.
pub fn rotary_embedding_llama(
    input: &Tensor,
    cos_cache: &Tensor,
    sin_cache: &Tensor,
    trans_mat: &Tensor,
    args: &RotaryEmbeddingLlamaArgs,
) -> Result<Tensor> {
    let op = "ttnn::experimental::rotary_embedding_llama";
    let device = on_device(op, "input", input)?;
    on_same_device(op, "cos_cache", device, cos_cache)?;
    on_same_device(op, "sin_cache", device, sin_cache)?;
    on_same_device(op, "trans_mat", device, trans_mat)?;
    for (what, t) in [
        ("input", input),
        ("cos_cache", cos_cache),
        ("sin_cache", sin_cache),
        ("trans_mat", trans_mat),
    ] {
        expect_layout(op, what, t, Layout::Tile)?;
        expect_rank(op, what, t, 4)?;
        expect_dtype(op, what, t, ROPE_TYPES)?;
    }
    let shape = input.shape();
    let hd = shape.dim(3);
    if hd > 256 || !hd.is_multiple_of(TILE_SIZE) || hd == 0 {
        return Err(Error::shape(
            op,
            "input",
            "a head dim that is a multiple of 32 and at most 256",
            shape,
        ));
    }
    if hd > 128
        && args
            .compute_kernel_config
            .is_some_and(|c| c.fp32_dest_acc_en)
    {
        return Err(Error::arg(
            op,
            format!("fp32_dest_acc_en must be false for head dim {hd} > 128"),
        ));
    }
    if cos_cache.shape() != sin_cache.shape() {
        return Err(Error::shape(
            op,
            "sin_cache",
            format!("the shape of cos_cache ({})", cos_cache.shape()),
            sin_cache.shape(),
        ));
    }
    let cs = cos_cache.shape();
    if cs.dim(3) != hd {
        return Err(Error::shape(
            op,
            "cos_cache",
            format!("last dimension {hd} (the head dim)"),
            cs,
        ));
    }
    let ts = trans_mat.shape();
    if ts.dim(0) != 1 || ts.dim(1) != 1 {
        return Err(Error::shape(
            op,
            "trans_mat",
            "[1, 1, 32, 32] (decode: [1, 1, 32*k, 32])",
            ts,
        ));
    }
    let (batch, nh, seq, cos_per_head, cos_seq);
    if args.is_decode_mode {
        if shape.dim(0) != 1 {
            return Err(Error::shape(
                op,
                "input",
                "[1, B, nh, hd] in decode mode (seq_len 1 in dim 0)",
                shape,
            ));
        }
        for (what, t) in [
            ("input", input),
            ("cos_cache", cos_cache),
            ("sin_cache", sin_cache),
            ("trans_mat", trans_mat),
        ] {
            expect_height_sharded(op, what, t)?;
        }
        let grid = device.compute_with_storage_grid_size();
        batch = shape.dim(1);
        if batch > grid.x * grid.y {
            return Err(Error::shape(
                op,
                "input",
                format!("at most {} users (one per core)", grid.x * grid.y),
                shape,
            ));
        }
        if cs.dim(0) != 1 || cs.dim(1) != batch {
            return Err(Error::shape(
                op,
                "cos_cache",
                format!("[1, {batch}, 1, {hd}] (one row per user)"),
                cs,
            ));
        }
        if shard_shape(cos_cache).map(|s| s[0]) != Some(TILE_SIZE)
            || shard_shape(sin_cache).map(|s| s[0]) != Some(TILE_SIZE)
        {
            return Err(Error::mem_config(
                op,
                "cos/sin shard height must be 32 in decode mode (n_heads <= 32)",
            ));
        }
        if shard_shape(trans_mat) != Some([TILE_SIZE, TILE_SIZE])
            || ts.dim(3) != TILE_SIZE
            || ts.dim(2) < TILE_SIZE
        {
            return Err(Error::mem_config(
                op,
                format!("trans_mat must be [1, 1, 32*k, 32] with [32, 32] shards, got {ts}"),
            ));
        }
        nh = shape.dim(2);
        seq = 1;
        cos_per_head = false;
        cos_seq = cs.dim(2);
    } else {
        if layout_of(input) != TensorMemoryLayout::Interleaved {
            return Err(Error::mem_config(
                op,
                format!(
                    "input must be interleaved in prefill mode, got {:?}",
                    layout_of(input)
                ),
            ));
        }
        for (what, t) in [("cos_cache", cos_cache), ("sin_cache", sin_cache)] {
            if layout_of(t) != layout_of(input) {
                return Err(Error::mem_config(
                    op,
                    format!(
                        "{what} must have the input's memory layout ({:?}), got {:?}",
                        layout_of(input),
                        layout_of(t)
                    ),
                ));
            }
        }
        batch = shape.dim(0);
        nh = shape.dim(1);
        seq = shape.dim(2);
        if cs.dim(0) != 1 || (cs.dim(1) != 1 && cs.dim(1) != nh) || cs.dim(2) < seq {
            return Err(Error::shape(
                op,
                "cos_cache",
                format!("[1, 1 or {nh}, >= {seq}, {hd}]"),
                cs,
            ));
        }
        if ts.dim(2) != TILE_SIZE || ts.dim(3) != TILE_SIZE {
            return Err(Error::shape(op, "trans_mat", "[1, 1, 32, 32]", ts));
        }
        cos_per_head = cs.dim(1) == nh && nh > 1;
        cos_seq = cs.dim(2);
    }
    let mc = output_memory_config(
        op,
        device,
        args.memory_config.as_ref(),
        input,
        shape,
        Layout::Tile,
    )?;
    if mc.memory_layout != layout_of(input) {
        return Err(Error::mem_config(
            op,
            format!(
                "the output must have the input's memory layout ({:?}), got {:?}",
                layout_of(input),
                mc.memory_layout
            ),
        ));
    }
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::rotary_embedding_llama(
                &Tt::new(tt, device),
                op,
                input,
                cos_cache,
                sin_cache,
                trans_mat,
                args,
            );
        }
    };
    let out = Tensor::allocate(device, op, shape, input.dtype(), Layout::Tile, &mc)?;
    let scratch = |t: &Tensor| {
        Vec::with_capacity(if t.dtype() == DataType::Float32 {
            0
        } else {
            t.shape().volume()
        })
    };
    host.submit(RotaryCmd {
        input: input.host_buffer(op, "input")?.clone(),
        cos: cos_cache.host_buffer(op, "cos_cache")?.clone(),
        sin: sin_cache.host_buffer(op, "sin_cache")?.clone(),
        trans: trans_mat.host_buffer(op, "trans_mat")?.clone(),
        out: out.host_buffer(op, "output")?.clone(),
        decode: args.is_decode_mode,
        batch,
        nh,
        seq,
        hd,
        cos_per_head,
        cos_seq,
        si: scratch(input),
        sc: scratch(cos_cache),
        ss: scratch(sin_cache),
        st: scratch(trans_mat),
        so: scratch(input),
    })?;
    Ok(out)
}

/// tt_transformers' `get_rot_transformation_mat`: the host tensor `[1, 1, 32, 32]` (TILE) with
/// `M[2i, 2i+1] = 1`, `M[2i+1, 2i] = -1` and zeros elsewhere, so that `x @ M` maps each pair
/// `(a, b)` to `(-b, a)`. Upload it interleaved for prefill; for decode, tt_transformers repeats
/// it once per user (`[1, 1, 32*B, 32]`) and height-shards it `[32, 32]` per core. TT uses
/// bfloat16; the values are exact in every float type.
pub fn get_rot_transformation_mat(dtype: DataType) -> Result<Tensor> {
    Tensor::from_slice(
        &rot_transformation_values(),
        [1, 1, TILE_SIZE, TILE_SIZE],
        dtype,
        Layout::Tile,
    )
}
