//! Attention: `ttnn::transformer::scaled_dot_product_attention` (prefill),
//! `chunked_scaled_dot_product_attention` (chunked prefill against a paged cache),
//! `scaled_dot_product_attention_decode` and `paged_scaled_dot_product_attention_decode`.
//!
//! All four compute each query row with one host routine (an online softmax in a fixed order),
//! so the same query row against the same keys and values gives bit-identical results in every
//! variant, whatever the batch size, thread count or chunking: prefill and decode agree exactly.
//!
//! Host-backend deviations from TT-NN, common to these ops:
//! - Float32 is accepted for Q, K, V and the mask besides TT's BFLOAT16/BFLOAT8_B/BFLOAT4_B
//!   (the host computes activations in f32, to match the HF fp32 reference).
//! - The head dimension is limited to 256 (the host kernels keep rows in fixed stack buffers).
//! - `program_config` and `compute_kernel_config` are validated as TT does but do not change the
//!   host's arithmetic (f32 throughout, exact `exp`).

use crate::device::BackendImpl;
use crate::error::{Error, Result};
use crate::host::kernels::attention::{
    CurPos, MAX_HEAD_DIM, SdpaDecodeCmd, SdpaPrefillCmd, default_scale,
};
use crate::ops::{
    expect_dtype, expect_layout, expect_rank, on_device, on_same_device, resolve_shard_spec,
};
use crate::tensor::Tensor;
use crate::tt::{Tt, ops as tt_ops};
use crate::types::{
    BufferType, ComputeKernelConfig, CoreCoord, DRAM_MEMORY_CONFIG, DataType, Layout, MemoryConfig,
    TILE_SIZE, TensorMemoryLayout,
};

/// TT-NN's `SDPAProgramConfig`: how a TT device splits the work. The host validates the chunk
/// sizes as TT does and otherwise ignores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdpaProgramConfig {
    pub compute_with_storage_grid_size: CoreCoord,
    /// Query rows per chunk (prefill); 0 lets the op choose.
    pub q_chunk_size: usize,
    /// Key positions per chunk; 0 lets the op choose.
    pub k_chunk_size: usize,
    pub exp_approx_mode: Option<bool>,
    pub max_cores_per_head_batch: Option<usize>,
}

impl Default for SdpaProgramConfig {
    /// tt_transformers' `SDPA_DECODE_PROGCFG`: an 8x8 grid, chunk sizes chosen by the op.
    fn default() -> Self {
        Self {
            compute_with_storage_grid_size: CoreCoord::new(8, 8),
            q_chunk_size: 0,
            k_chunk_size: 0,
            exp_approx_mode: Some(false),
            max_cores_per_head_batch: None,
        }
    }
}

/// Optional arguments of [`scaled_dot_product_attention`] (TT-NN's keyword arguments).
#[derive(Clone, Debug)]
pub struct SdpaArgs<'a> {
    /// Additive mask `[B, 1|nh, Sq, Sk]`; only with `is_causal = false`.
    pub attn_mask: Option<&'a Tensor>,
    /// Default true: query row `i` attends key positions `0..=i`.
    pub is_causal: bool,
    /// Default `1/sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Causal only: row `i` attends the last `W` positions, `i+1-W ..= i`.
    pub sliding_window_size: Option<usize>,
    /// Default DRAM interleaved.
    pub memory_config: Option<MemoryConfig>,
    pub program_config: Option<SdpaProgramConfig>,
    pub compute_kernel_config: Option<ComputeKernelConfig>,
}

impl Default for SdpaArgs<'_> {
    fn default() -> Self {
        Self {
            attn_mask: None,
            is_causal: true,
            scale: None,
            sliding_window_size: None,
            memory_config: None,
            program_config: None,
            compute_kernel_config: None,
        }
    }
}

/// Optional arguments of [`chunked_scaled_dot_product_attention`].
#[derive(Clone, Debug, Default)]
pub struct ChunkedSdpaArgs {
    /// Default `1/sqrt(head_dim)` (tt_transformers passes none).
    pub scale: Option<f32>,
    /// Default DRAM interleaved.
    pub memory_config: Option<MemoryConfig>,
    pub program_config: Option<SdpaProgramConfig>,
    pub compute_kernel_config: Option<ComputeKernelConfig>,
}

/// Optional arguments of [`scaled_dot_product_attention_decode`].
#[derive(Clone, Debug)]
pub struct SdpaDecodeArgs<'a> {
    /// Default true: user `b` attends positions `0..=cur_pos[b]`.
    pub is_causal: bool,
    /// Non-causal only: additive mask `[B, 1, nh, S]`.
    pub attn_mask: Option<&'a Tensor>,
    /// Current position per user, fixed when the op is called (TT-NN's `cur_pos` list);
    /// `u32::MAX` (-1) skips a user.
    pub cur_pos: Vec<u32>,
    /// Current position per user, read when the op runs: INT32 `[B]`, ROW_MAJOR; -1 skips.
    pub cur_pos_tensor: Option<&'a Tensor>,
    /// Default `1/sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Attend only the last `W` positions, `cur_pos+1-W ..= cur_pos`.
    pub sliding_window_size: Option<usize>,
    /// Default DRAM interleaved.
    pub memory_config: Option<MemoryConfig>,
    pub program_config: Option<SdpaProgramConfig>,
    pub compute_kernel_config: Option<ComputeKernelConfig>,
}

impl Default for SdpaDecodeArgs<'_> {
    fn default() -> Self {
        Self {
            is_causal: true,
            attn_mask: None,
            cur_pos: Vec::new(),
            cur_pos_tensor: None,
            scale: None,
            sliding_window_size: None,
            memory_config: None,
            program_config: None,
            compute_kernel_config: None,
        }
    }
}

/// Optional arguments of [`paged_scaled_dot_product_attention_decode`].
#[derive(Clone, Debug)]
pub struct PagedSdpaDecodeArgs<'a> {
    /// Default true: user `b` attends positions `0..=cur_pos[b]`.
    pub is_causal: bool,
    /// Non-causal only: additive mask `[B, 1, nh, cols * block_size]`.
    pub attn_mask: Option<&'a Tensor>,
    /// Required when causal: INT32 `[B]`, ROW_MAJOR; -1 skips a user.
    pub cur_pos_tensor: Option<&'a Tensor>,
    /// Default `1/sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Attend only the last `W` positions, `cur_pos+1-W ..= cur_pos`.
    pub sliding_window_size: Option<usize>,
    /// Default DRAM interleaved.
    pub memory_config: Option<MemoryConfig>,
    pub program_config: Option<SdpaProgramConfig>,
    pub compute_kernel_config: Option<ComputeKernelConfig>,
}

impl Default for PagedSdpaDecodeArgs<'_> {
    fn default() -> Self {
        Self {
            is_causal: true,
            attn_mask: None,
            cur_pos_tensor: None,
            scale: None,
            sliding_window_size: None,
            memory_config: None,
            program_config: None,
            compute_kernel_config: None,
        }
    }
}

/// Validated current positions of a decode op, before the backend turns them into its form.
enum Pos<'a> {
    Tensor(&'a Tensor),
    List(Vec<u32>),
    All,
}

impl Pos<'_> {
    /// The host kernel's form.
    fn host(self, op: &'static str) -> Result<CurPos> {
        Ok(match self {
            Pos::Tensor(t) => CurPos::Tensor(t.host_buffer(op, "cur_pos_tensor")?.clone()),
            Pos::List(v) => CurPos::List(v),
            Pos::All => CurPos::All,
        })
    }
}

/// The host buffer of an optional tensor.
fn host_opt(
    op: &'static str,
    what: &str,
    t: Option<&Tensor>,
) -> Result<Option<std::sync::Arc<crate::host::HostBuffer>>> {
    t.map(|t| t.host_buffer(op, what).cloned()).transpose()
}

/// TT's SDPA input types, plus Float32 on the host.
const SDPA_TYPES: &[DataType] = &[
    DataType::Bfloat16,
    DataType::Bfloat8B,
    DataType::Bfloat4B,
    DataType::Float32,
];

fn check_scale(op: &'static str, scale: Option<f32>, hd: usize) -> Result<f32> {
    match scale {
        None => Ok(default_scale(hd)),
        Some(s) if s.is_finite() => Ok(s),
        Some(s) => Err(Error::arg(op, format!("scale {s} is not finite"))),
    }
}

fn check_window(op: &'static str, w: Option<usize>) -> Result<()> {
    if w == Some(0) {
        return Err(Error::arg(op, "sliding_window_size must be at least 1"));
    }
    Ok(())
}

fn check_head_dim(op: &'static str, what: &str, t: &Tensor) -> Result<usize> {
    let hd = t.shape().dim(-1);
    if hd == 0 || hd > MAX_HEAD_DIM {
        return Err(Error::shape(
            op,
            what,
            format!("a head dim in 1..={MAX_HEAD_DIM} (host limit)"),
            t.shape(),
        ));
    }
    Ok(hd)
}

fn memory_layout(t: &Tensor) -> TensorMemoryLayout {
    t.memory_config()
        .map_or(TensorMemoryLayout::Interleaved, |m| m.memory_layout)
}

fn buffer_type(t: &Tensor) -> BufferType {
    t.memory_config()
        .map_or(BufferType::Dram, |m| m.buffer_type)
}

fn expect_dram(op: &'static str, what: &str, t: &Tensor) -> Result<()> {
    if buffer_type(t) != BufferType::Dram {
        return Err(Error::mem_config(
            op,
            format!("{what} must be in DRAM, got {:?}", buffer_type(t)),
        ));
    }
    Ok(())
}

/// Page table checks shared by the paged ops: ROW_MAJOR, INT32 (UINT16 when sharded), rank 2.
fn check_page_table(op: &'static str, pt: &Tensor) -> Result<()> {
    expect_rank(op, "page_table", pt, 2)?;
    expect_layout(op, "page_table", pt, Layout::RowMajor)?;
    let sharded = memory_layout(pt).is_sharded();
    let want = if sharded {
        DataType::Uint16
    } else {
        DataType::Int32
    };
    if pt.dtype() != want {
        return Err(Error::dtype(
            op,
            "page_table",
            pt.dtype(),
            format!(
                "{want:?} ({} page table)",
                if sharded { "sharded" } else { "interleaved" }
            ),
        ));
    }
    Ok(())
}

/// Rows of a page table as TT counts the batch (shard height when sharded).
fn page_table_rows(pt: &Tensor) -> usize {
    match pt.memory_config().and_then(|m| m.shard_spec.as_ref()) {
        Some(spec) if memory_layout(pt).is_sharded() => {
            pt.padded_shape().dim(0) / spec.grid.num_cores().max(1)
        }
        _ => pt.padded_shape().dim(0),
    }
}

fn check_chunk(op: &'static str, what: &str, c: usize) -> Result<()> {
    if !c.is_multiple_of(TILE_SIZE) {
        return Err(Error::arg(
            op,
            format!("program_config.{what} = {c} must be a multiple of 32"),
        ));
    }
    Ok(())
}

/// Largest power of two dividing `s`, at most 512 (TT's default unpaged decode k_chunk_size).
fn default_k_chunk(s: usize) -> usize {
    let mut c = 512;
    while c > 1 && !s.is_multiple_of(c) {
        c /= 2;
    }
    c
}

/// Output memory config of the SDPA ops: the requested one (a sharded config without a shard
/// spec gets one derived), else DRAM interleaved.
fn sdpa_output_mc(
    op: &'static str,
    device: &crate::device::Device,
    requested: Option<&MemoryConfig>,
    shape: crate::types::Shape,
    layout: Layout,
) -> Result<MemoryConfig> {
    let mc = requested.cloned().unwrap_or(DRAM_MEMORY_CONFIG);
    resolve_shard_spec(op, device, mc, shape, layout)
}

/// Checks a decode Q and the two caches' common properties; returns (nh, nkv, hd).
fn check_decode_qkv(
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> Result<(usize, usize, usize)> {
    for (what, t) in [("q", q), ("k", k), ("v", v)] {
        expect_dtype(op, what, t, SDPA_TYPES)?;
        expect_rank(op, what, t, 4)?;
    }
    expect_layout(op, "k", k, Layout::Tile)?;
    expect_layout(op, "v", v, Layout::Tile)?;
    match memory_layout(q) {
        TensorMemoryLayout::Interleaved => {
            if buffer_type(q) != BufferType::Dram {
                return Err(Error::mem_config(
                    op,
                    format!(
                        "q must be HEIGHT_SHARDED or DRAM interleaved, got {:?} interleaved",
                        buffer_type(q)
                    ),
                ));
            }
        }
        TensorMemoryLayout::HeightSharded => {}
        other => {
            return Err(Error::mem_config(
                op,
                format!("q must be HEIGHT_SHARDED when sharded, got {other:?}"),
            ));
        }
    }
    expect_dram(op, "k", k)?;
    expect_dram(op, "v", v)?;
    let hd = check_head_dim(op, "q", q)?;
    let (qp, kp, vp) = (q.padded_shape(), k.padded_shape(), v.padded_shape());
    if kp.dim(3) != qp.dim(3) || vp.dim(3) != qp.dim(3) || k.shape().dim(3) != hd {
        return Err(Error::shape(
            op,
            "k/v",
            format!("the same head dim as q ({hd})"),
            if kp.dim(3) != qp.dim(3) {
                k.shape()
            } else {
                v.shape()
            },
        ));
    }
    if kp.dim(1) != vp.dim(1) {
        return Err(Error::shape(
            op,
            "v",
            format!("the same number of kv heads as k ({})", k.shape().dim(1)),
            v.shape(),
        ));
    }
    let nh = q.shape().dim(2);
    let nkv = k.shape().dim(1);
    if nkv == 0 || nh == 0 || !nh.is_multiple_of(nkv) {
        return Err(Error::shape(
            op,
            "q",
            format!("a number of heads that is a multiple of the {nkv} kv heads"),
            q.shape(),
        ));
    }
    if q.shape().dim(0) != 1 {
        return Err(Error::shape(op, "q", "[1, B, nh, hd]", q.shape()));
    }
    if nkv > 1 && !matches!(q.dtype(), DataType::Bfloat16 | DataType::Float32) {
        return Err(Error::dtype(
            op,
            "q (GQA)",
            q.dtype(),
            "Bfloat16 (or Float32 on the host)",
        ));
    }
    Ok((nh, nkv, hd))
}

/// Checks a decode mask `[B, 1, nh, >= total]`; returns its row length.
fn check_decode_mask(
    op: &'static str,
    mask: &Tensor,
    q: &Tensor,
    batch: usize,
    total: usize,
) -> Result<usize> {
    expect_rank(op, "attn_mask", mask, 4)?;
    expect_dtype(op, "attn_mask", mask, SDPA_TYPES)?;
    let (ms, qs) = (mask.shape(), q.shape());
    if ms.dim(2) != qs.dim(2)
        || mask.padded_shape().dim(2) != q.padded_shape().dim(2)
        || ms.dim(0) != batch
        || ms.dim(1) != 1
        || ms.dim(3) < total
    {
        return Err(Error::shape(
            op,
            "attn_mask",
            format!("[{batch}, 1, {}, >= {total}]", qs.dim(2)),
            ms,
        ));
    }
    Ok(ms.dim(3))
}

/// `ttnn::transformer::paged_scaled_dot_product_attention_decode`: one query token per user
/// against a paged KV cache.
///
/// Q `[1, B, nh, hd]` (HEIGHT_SHARDED, or DRAM interleaved); K/V caches
/// `[max_num_blocks, nkv, block_size, hd]` (TILE, DRAM); `page_table_tensor` `[B, cols]`
/// (INT32 ROW_MAJOR, or UINT16 when sharded). User `b`, head `h` attends cache positions
/// `0..=cur_pos[b]` (the last `W` with a sliding window) of kv head `h / (nh / nkv)`, position
/// `p` being row `p % block_size` of block `page_table[b][p / block_size]`. `cur_pos = -1` skips
/// the user (the host writes zeros for its rows). Output `[1, B, nh, hd]`, Q's dtype and layout,
/// DRAM unless `memory_config` says otherwise.
///
/// Data-dependent errors (a position beyond the page table, or a page-table entry that is not a
/// block of the cache) are returned by the run (eagerly: by this call; in a trace: by
/// `execute_trace`) and leave the output unwritten.
pub fn paged_scaled_dot_product_attention_decode(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    page_table_tensor: &Tensor,
    args: &PagedSdpaDecodeArgs<'_>,
) -> Result<Tensor> {
    let op = "ttnn::transformer::paged_scaled_dot_product_attention_decode";
    let device = on_device(op, "q", q)?;
    on_same_device(op, "k", device, k)?;
    on_same_device(op, "v", device, v)?;
    on_same_device(op, "page_table_tensor", device, page_table_tensor)?;
    let (nh, nkv, hd) = check_decode_qkv(op, q, k, v)?;
    check_page_table(op, page_table_tensor)?;
    let pt_sharded = memory_layout(page_table_tensor).is_sharded();
    let batch = if pt_sharded {
        q.padded_shape().dim(1)
    } else {
        page_table_tensor.padded_shape().dim(0)
    };
    if page_table_rows(page_table_tensor) != batch || page_table_tensor.shape().dim(0) != batch {
        return Err(Error::shape(
            op,
            "page_table_tensor",
            format!("{batch} rows (the batch of q)"),
            page_table_tensor.shape(),
        ));
    }
    if q.shape().dim(1) != batch {
        return Err(Error::shape(
            op,
            "q",
            format!("batch {batch} (the page table's rows)"),
            q.shape(),
        ));
    }
    let (kp, vp) = (k.padded_shape(), v.padded_shape());
    if kp.dim(2) != vp.dim(2) || k.shape().dim(2) != v.shape().dim(2) {
        return Err(Error::shape(
            op,
            "v",
            format!("the block size of k ({})", k.shape().dim(2)),
            v.shape(),
        ));
    }
    if k.shape().dim(0) != v.shape().dim(0) {
        return Err(Error::shape(
            op,
            "v",
            format!("the number of blocks of k ({})", k.shape().dim(0)),
            v.shape(),
        ));
    }
    let bs = k.shape().dim(2);
    let cols = page_table_tensor.shape().dim(1);
    let pc = args.program_config.clone().unwrap_or_default();
    check_chunk(op, "k_chunk_size", pc.k_chunk_size)?;
    check_window(op, args.sliding_window_size)?;
    let scale = check_scale(op, args.scale, hd)?;
    let cur_pos = if args.is_causal {
        if args.attn_mask.is_some() {
            return Err(Error::arg(
                op,
                "attn_mask must not be given for causal attention",
            ));
        }
        let cp = args.cur_pos_tensor.ok_or_else(|| {
            Error::arg(
                op,
                "cur_pos_tensor is required for paged attention in causal mode",
            )
        })?;
        check_cur_pos_tensor(op, device, cp, batch)?;
        Pos::Tensor(cp)
    } else {
        if pc.k_chunk_size == 0 {
            return Err(Error::arg(
                op,
                "program_config.k_chunk_size must be given for paged non-causal attention",
            ));
        }
        if !(cols * kp.dim(2)).is_multiple_of(pc.k_chunk_size) {
            return Err(Error::arg(
                op,
                format!(
                    "the paged sequence length {} must be a multiple of k_chunk_size {}",
                    cols * kp.dim(2),
                    pc.k_chunk_size
                ),
            ));
        }
        Pos::All
    };
    let (mask, mask_len) = match (args.attn_mask, args.is_causal) {
        (Some(m), false) => {
            on_same_device(op, "attn_mask", device, m)?;
            (Some(m), check_decode_mask(op, m, q, batch, cols * bs)?)
        }
        _ => (None, 0),
    };
    let out_shape = q.shape();
    let mc = sdpa_output_mc(
        op,
        device,
        args.memory_config.as_ref(),
        out_shape,
        q.layout(),
    )?;
    check_decode_out_mc(op, &mc, nkv)?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::paged_sdpa_decode(
                &Tt::new(tt, device),
                op,
                q,
                k,
                v,
                page_table_tensor,
                args,
            );
        }
    };
    let cur_pos = cur_pos.host(op)?;
    let mask = host_opt(op, "attn_mask", mask)?;
    let out = Tensor::allocate(device, op, out_shape, q.dtype(), q.layout(), &mc)?;
    let len = out_shape.volume();
    host.submit(SdpaDecodeCmd {
        op,
        q: q.host_buffer(op, "q")?.clone(),
        k: k.host_buffer(op, "k")?.clone(),
        v: v.host_buffer(op, "v")?.clone(),
        out: out.host_buffer(op, "output")?.clone(),
        page_table: Some(
            page_table_tensor
                .host_buffer(op, "page_table_tensor")?
                .clone(),
        ),
        cur_pos,
        mask,
        batch,
        nh,
        nkv,
        hd,
        seq: bs,
        cols,
        max_blocks: k.shape().dim(0),
        mask_len,
        scale,
        window: if args.is_causal {
            args.sliding_window_size
        } else {
            None
        },
        ranges: Vec::with_capacity(batch),
        table: Vec::with_capacity(page_table_tensor.shape().volume()),
        smask: Vec::with_capacity(args.attn_mask.map_or(0, |m| m.shape().volume())),
        so: Vec::with_capacity(if q.dtype() == DataType::Float32 {
            0
        } else {
            len
        }),
    })?;
    Ok(out)
}

fn check_cur_pos_tensor(
    op: &'static str,
    device: &crate::device::Device,
    cp: &Tensor,
    batch: usize,
) -> Result<()> {
    on_same_device(op, "cur_pos_tensor", device, cp)?;
    if cp.dtype() != DataType::Int32 {
        return Err(Error::dtype(op, "cur_pos_tensor", cp.dtype(), "Int32"));
    }
    expect_layout(op, "cur_pos_tensor", cp, Layout::RowMajor)?;
    if cp.shape().dim(-1) != batch || cp.shape().volume() != batch {
        return Err(Error::shape(
            op,
            "cur_pos_tensor",
            format!("[{batch}] (one position per user)"),
            cp.shape(),
        ));
    }
    Ok(())
}

fn check_decode_out_mc(op: &'static str, mc: &MemoryConfig, nkv: usize) -> Result<()> {
    if mc.is_sharded() {
        if mc.memory_layout != TensorMemoryLayout::HeightSharded {
            return Err(Error::mem_config(
                op,
                format!(
                    "the output must be HEIGHT_SHARDED when sharded, got {:?}",
                    mc.memory_layout
                ),
            ));
        }
        if nkv > 1 {
            return Err(Error::mem_config(
                op,
                "a sharded output is not supported for GQA (more than one kv head)",
            ));
        }
    }
    Ok(())
}

/// `ttnn::transformer::scaled_dot_product_attention_decode`: one query token per user against
/// an unpaged KV cache `[B, nkv, S, hd]`.
///
/// Positions come from `args.cur_pos` (fixed at the call; each must be < S) or
/// `args.cur_pos_tensor` (INT32 `[B]`, read when the op runs; a value outside `-1..S` is a
/// data-dependent error of the run). Exactly one is required in causal mode (host rule: TT-NN
/// prefers the tensor when both are given). Otherwise as
/// [`paged_scaled_dot_product_attention_decode`].
pub fn scaled_dot_product_attention_decode(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    args: &SdpaDecodeArgs<'_>,
) -> Result<Tensor> {
    let op = "ttnn::transformer::scaled_dot_product_attention_decode";
    let device = on_device(op, "q", q)?;
    on_same_device(op, "k", device, k)?;
    on_same_device(op, "v", device, v)?;
    let (nh, nkv, hd) = check_decode_qkv(op, q, k, v)?;
    let batch = q.shape().dim(1);
    let (kp, vp) = (k.padded_shape(), v.padded_shape());
    if k.shape().dim(0) != batch || v.shape().dim(0) != batch {
        return Err(Error::shape(
            op,
            if k.shape().dim(0) != batch { "k" } else { "v" },
            format!("batch {batch} (the batch of q)"),
            if k.shape().dim(0) != batch {
                k.shape()
            } else {
                v.shape()
            },
        ));
    }
    if kp.dim(2) != vp.dim(2) || k.shape().dim(2) != v.shape().dim(2) {
        return Err(Error::shape(
            op,
            "v",
            format!("the sequence length of k ({})", k.shape().dim(2)),
            v.shape(),
        ));
    }
    let seq = k.shape().dim(2);
    let pc = args.program_config.clone().unwrap_or_default();
    let k_chunk = if pc.k_chunk_size > 0 {
        pc.k_chunk_size
    } else {
        default_k_chunk(kp.dim(2))
    };
    if !k_chunk.is_multiple_of(TILE_SIZE)
        || !k_chunk.is_power_of_two()
        || !kp.dim(2).is_multiple_of(k_chunk)
    {
        return Err(Error::arg(
            op,
            format!(
                "k_chunk_size {k_chunk} must be a power of two, a multiple of 32 and divide the padded sequence length {}",
                kp.dim(2)
            ),
        ));
    }
    check_window(op, args.sliding_window_size)?;
    let scale = check_scale(op, args.scale, hd)?;
    let cur_pos = if args.is_causal {
        if args.attn_mask.is_some() {
            return Err(Error::arg(
                op,
                "attn_mask must not be given for causal attention",
            ));
        }
        match (args.cur_pos_tensor, args.cur_pos.is_empty()) {
            (Some(cp), true) => {
                check_cur_pos_tensor(op, device, cp, batch)?;
                Pos::Tensor(cp)
            }
            (None, false) => {
                if args.cur_pos.len() != batch {
                    return Err(Error::arg(
                        op,
                        format!(
                            "cur_pos has {} entries for a batch of {batch}",
                            args.cur_pos.len()
                        ),
                    ));
                }
                if let Some((b, &p)) = args
                    .cur_pos
                    .iter()
                    .enumerate()
                    .find(|&(_, &p)| p != u32::MAX && p as usize >= seq)
                {
                    return Err(Error::arg(
                        op,
                        format!("cur_pos[{b}] = {p} must be less than the sequence length {seq}"),
                    ));
                }
                Pos::List(args.cur_pos.clone())
            }
            _ => {
                return Err(Error::arg(
                    op,
                    "causal decode needs exactly one of cur_pos and cur_pos_tensor",
                ));
            }
        }
    } else {
        Pos::All
    };
    let (mask, mask_len) = match (args.attn_mask, args.is_causal) {
        (Some(m), false) => {
            on_same_device(op, "attn_mask", device, m)?;
            if m.padded_shape().dim(3) != kp.dim(2) {
                return Err(Error::shape(
                    op,
                    "attn_mask",
                    format!("the sequence length of k ({seq}) in its last dimension"),
                    m.shape(),
                ));
            }
            (Some(m), check_decode_mask(op, m, q, batch, seq)?)
        }
        _ => (None, 0),
    };
    let out_shape = q.shape();
    let mc = sdpa_output_mc(
        op,
        device,
        args.memory_config.as_ref(),
        out_shape,
        q.layout(),
    )?;
    check_decode_out_mc(op, &mc, nkv)?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::sdpa_decode(&Tt::new(tt, device), op, q, k, v, args);
        }
    };
    let cur_pos = cur_pos.host(op)?;
    let mask = host_opt(op, "attn_mask", mask)?;
    let out = Tensor::allocate(device, op, out_shape, q.dtype(), q.layout(), &mc)?;
    let len = out_shape.volume();
    host.submit(SdpaDecodeCmd {
        op,
        q: q.host_buffer(op, "q")?.clone(),
        k: k.host_buffer(op, "k")?.clone(),
        v: v.host_buffer(op, "v")?.clone(),
        out: out.host_buffer(op, "output")?.clone(),
        page_table: None,
        cur_pos,
        mask,
        batch,
        nh,
        nkv,
        hd,
        seq,
        cols: 1,
        max_blocks: 0,
        mask_len,
        scale,
        window: if args.is_causal {
            args.sliding_window_size
        } else {
            None
        },
        ranges: Vec::with_capacity(batch),
        table: Vec::new(),
        smask: Vec::with_capacity(args.attn_mask.map_or(0, |m| m.shape().volume())),
        so: Vec::with_capacity(if q.dtype() == DataType::Float32 {
            0
        } else {
            len
        }),
    })?;
    Ok(out)
}

/// Checks prefill Q/K/V: device, TILE, dtype, interleaved, rank 4, unpadded head dim.
fn check_prefill_tensor(op: &'static str, what: &str, t: &Tensor) -> Result<()> {
    expect_rank(op, what, t, 4)?;
    expect_layout(op, what, t, Layout::Tile)?;
    expect_dtype(op, what, t, SDPA_TYPES)?;
    if memory_layout(t).is_sharded() {
        return Err(Error::mem_config(
            op,
            format!(
                "{what} must be interleaved (DRAM or L1), got {:?}",
                memory_layout(t)
            ),
        ));
    }
    if !t.shape().dim(3).is_multiple_of(TILE_SIZE) {
        return Err(Error::shape(
            op,
            what,
            "a head dim that is a multiple of 32 (only the sequence dim may be padded)",
            t.shape(),
        ));
    }
    Ok(())
}

fn chunk_sizes(op: &'static str, pc: Option<&SdpaProgramConfig>) -> Result<(usize, usize)> {
    let (q, k) = pc.map_or((32, 32), |p| {
        (
            if p.q_chunk_size == 0 {
                32
            } else {
                p.q_chunk_size
            },
            if p.k_chunk_size == 0 {
                32
            } else {
                p.k_chunk_size
            },
        )
    });
    check_chunk(op, "q_chunk_size", q)?;
    check_chunk(op, "k_chunk_size", k)?;
    Ok((q, k))
}

/// `ttnn::transformer::scaled_dot_product_attention`: prefill attention.
///
/// Q `[B, nh, S, hd]`, K/V `[B, nkv, Sk, hd]` (TILE, interleaved; hd a multiple of 32),
/// `nh % nkv == 0` (GQA: head `h` uses kv head `h / (nh / nkv)`). Causal (the default): row `i`
/// attends `0..=i` (the last `W` with a sliding window) and needs `S == Sk`; non-causal: every
/// row attends all `Sk` positions, plus an optional additive mask `[B, 1|nh, S, Sk]`. Output
/// `[B, nh, S, hd]`, Q's dtype, TILE, DRAM unless `memory_config` says otherwise.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    args: &SdpaArgs<'_>,
) -> Result<Tensor> {
    let op = "ttnn::transformer::scaled_dot_product_attention";
    let device = on_device(op, "q", q)?;
    on_same_device(op, "k", device, k)?;
    on_same_device(op, "v", device, v)?;
    check_prefill_tensor(op, "q", q)?;
    check_prefill_tensor(op, "k", k)?;
    check_prefill_tensor(op, "v", v)?;
    let hd = check_head_dim(op, "q", q)?;
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    let (batch, nh, sq) = (qs.dim(0), qs.dim(1), qs.dim(2));
    let (nkv, sk) = (ks.dim(1), ks.dim(2));
    if ks.dim(0) != batch || vs.dim(0) != batch {
        return Err(Error::shape(
            op,
            if ks.dim(0) != batch { "k" } else { "v" },
            format!("batch {batch} (the batch of q)"),
            if ks.dim(0) != batch { ks } else { vs },
        ));
    }
    if vs.dim(1) != nkv || vs.dim(2) != sk {
        return Err(Error::shape(
            op,
            "v",
            format!("the kv heads and sequence length of k ({nkv}, {sk})"),
            vs,
        ));
    }
    if ks.dim(3) != hd || vs.dim(3) != hd {
        return Err(Error::shape(
            op,
            "k/v",
            format!("the head dim of q ({hd})"),
            if ks.dim(3) != hd { ks } else { vs },
        ));
    }
    if nkv == 0 || nh < nkv || !nh.is_multiple_of(nkv) {
        return Err(Error::shape(
            op,
            "q",
            format!("a number of heads that is a multiple of the {nkv} kv heads"),
            qs,
        ));
    }
    let (q_chunk, k_chunk) = chunk_sizes(op, args.program_config.as_ref())?;
    check_window(op, args.sliding_window_size)?;
    let scale = check_scale(op, args.scale, hd)?;
    if args.is_causal && args.attn_mask.is_some() {
        return Err(Error::arg(
            op,
            "attn_mask must not be given for causal attention",
        ));
    }
    if args.is_causal && sq != sk {
        return Err(Error::shape(
            op,
            "k",
            format!("sequence length {sq} (causal attention needs Sq == Sk)"),
            ks,
        ));
    }
    let (mask, mask_per_head) = match args.attn_mask {
        Some(m) => {
            on_same_device(op, "attn_mask", device, m)?;
            expect_rank(op, "attn_mask", m, 4)?;
            expect_layout(op, "attn_mask", m, Layout::Tile)?;
            expect_dtype(op, "attn_mask", m, SDPA_TYPES)?;
            expect_dram(op, "attn_mask", m)?;
            let ms = m.shape();
            if ms.dim(0) != batch
                || (ms.dim(1) != 1 && ms.dim(1) != nh)
                || ms.dim(2) != sq
                || ms.dim(3) != sk
            {
                return Err(Error::shape(
                    op,
                    "attn_mask",
                    format!("[{batch}, 1 or {nh}, {sq}, {sk}]"),
                    ms,
                ));
            }
            let (mp, qp) = (m.padded_shape(), q.padded_shape());
            if !qp.dim(2).is_multiple_of(q_chunk) || !mp.dim(3).is_multiple_of(k_chunk) {
                return Err(Error::arg(
                    op,
                    format!(
                        "with a mask, Sq ({}) must be a multiple of q_chunk_size {q_chunk} and Sk ({}) of k_chunk_size {k_chunk}",
                        qp.dim(2),
                        mp.dim(3)
                    ),
                ));
            }
            (Some(m), ms.dim(1) == nh && nh > 1)
        }
        None => (None, false),
    };
    let out_shape = qs;
    let mc = sdpa_output_mc(
        op,
        device,
        args.memory_config.as_ref(),
        out_shape,
        Layout::Tile,
    )?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => return tt_ops::sdpa(&Tt::new(tt, device), op, q, k, v, args),
    };
    let mask = host_opt(op, "attn_mask", mask)?;
    let out = Tensor::allocate(device, op, out_shape, q.dtype(), Layout::Tile, &mc)?;
    let len = out_shape.volume();
    host.submit(SdpaPrefillCmd {
        op,
        q: q.host_buffer(op, "q")?.clone(),
        k: k.host_buffer(op, "k")?.clone(),
        v: v.host_buffer(op, "v")?.clone(),
        out: out.host_buffer(op, "output")?.clone(),
        mask,
        page_table: None,
        batch,
        nh,
        nkv,
        hd,
        sq,
        sk,
        cols: 1,
        max_blocks: 0,
        chunk_start: 0,
        causal: args.is_causal,
        window: if args.is_causal {
            args.sliding_window_size
        } else {
            None
        },
        scale,
        mask_per_head,
        mask_len: sk,
        table: Vec::new(),
        smask: Vec::with_capacity(args.attn_mask.map_or(0, |m| m.shape().volume())),
        so: Vec::with_capacity(if q.dtype() == DataType::Float32 {
            0
        } else {
            len
        }),
    })?;
    Ok(out)
}

/// `ttnn::transformer::chunked_scaled_dot_product_attention`: causal prefill of one chunk of
/// queries against a paged KV cache that already holds the chunk's own keys and values.
///
/// Q `[B, nh, Sc, hd]`; K/V caches `[max_num_blocks, nkv, block_size, hd]`; `page_table_tensor`
/// `[B, cols]` INT32 ROW_MAJOR (the user's whole table). Query row `i` has absolute position
/// `chunk_start_idx + i` and attends cache positions `0..=chunk_start_idx + i`. Needs
/// `cols * block_size >= Sc + chunk_start_idx` and `chunk_start_idx` a multiple of the q and k
/// chunk sizes (32 by default). Output Q's shape and dtype, TILE, DRAM unless `memory_config`
/// says otherwise. A page-table entry that is not a block of the cache is a data-dependent error
/// of the run.
pub fn chunked_scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    page_table_tensor: &Tensor,
    chunk_start_idx: usize,
    args: &ChunkedSdpaArgs,
) -> Result<Tensor> {
    let op = "ttnn::transformer::chunked_scaled_dot_product_attention";
    let device = on_device(op, "q", q)?;
    on_same_device(op, "k", device, k)?;
    on_same_device(op, "v", device, v)?;
    on_same_device(op, "page_table_tensor", device, page_table_tensor)?;
    check_prefill_tensor(op, "q", q)?;
    check_prefill_tensor(op, "k", k)?;
    check_prefill_tensor(op, "v", v)?;
    let hd = check_head_dim(op, "q", q)?;
    expect_rank(op, "page_table_tensor", page_table_tensor, 2)?;
    expect_layout(op, "page_table_tensor", page_table_tensor, Layout::RowMajor)?;
    if page_table_tensor.dtype() != DataType::Int32 {
        return Err(Error::dtype(
            op,
            "page_table_tensor",
            page_table_tensor.dtype(),
            "Int32",
        ));
    }
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    let (batch, nh, sq) = (qs.dim(0), qs.dim(1), qs.dim(2));
    let (nkv, bs) = (ks.dim(1), ks.dim(2));
    if page_table_tensor.shape().dim(0) != batch {
        return Err(Error::shape(
            op,
            "page_table_tensor",
            format!("{batch} rows (the batch of q)"),
            page_table_tensor.shape(),
        ));
    }
    if vs.dim(2) != bs || vs.dim(1) != nkv || vs.dim(0) != ks.dim(0) {
        return Err(Error::shape(op, "v", format!("the shape of k ({ks})"), vs));
    }
    if ks.dim(3) != hd || vs.dim(3) != hd {
        return Err(Error::shape(
            op,
            "k/v",
            format!("the head dim of q ({hd})"),
            if ks.dim(3) != hd { ks } else { vs },
        ));
    }
    if nkv == 0 || !nh.is_multiple_of(nkv) {
        return Err(Error::shape(
            op,
            "q",
            format!("a number of heads that is a multiple of the {nkv} kv heads"),
            qs,
        ));
    }
    let (q_chunk, k_chunk) = chunk_sizes(op, args.program_config.as_ref())?;
    if !chunk_start_idx.is_multiple_of(q_chunk) || !chunk_start_idx.is_multiple_of(k_chunk) {
        return Err(Error::arg(
            op,
            format!(
                "chunk_start_idx {chunk_start_idx} must be a multiple of q_chunk_size {q_chunk} and k_chunk_size {k_chunk}"
            ),
        ));
    }
    let cols = page_table_tensor.shape().dim(1);
    let sq_padded = q.padded_shape().dim(2);
    if cols * bs < sq_padded + chunk_start_idx {
        return Err(Error::arg(
            op,
            format!(
                "the page table covers {} positions ({cols} blocks of {bs}), fewer than chunk_start_idx {chunk_start_idx} + {sq_padded} query rows",
                cols * bs
            ),
        ));
    }
    let scale = check_scale(op, args.scale, hd)?;
    let out_shape = qs;
    let mc = sdpa_output_mc(
        op,
        device,
        args.memory_config.as_ref(),
        out_shape,
        Layout::Tile,
    )?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::chunked_sdpa(
                &Tt::new(tt, device),
                op,
                q,
                k,
                v,
                page_table_tensor,
                chunk_start_idx,
                args,
            );
        }
    };
    let out = Tensor::allocate(device, op, out_shape, q.dtype(), Layout::Tile, &mc)?;
    let len = out_shape.volume();
    host.submit(SdpaPrefillCmd {
        op,
        q: q.host_buffer(op, "q")?.clone(),
        k: k.host_buffer(op, "k")?.clone(),
        v: v.host_buffer(op, "v")?.clone(),
        out: out.host_buffer(op, "output")?.clone(),
        mask: None,
        page_table: Some(
            page_table_tensor
                .host_buffer(op, "page_table_tensor")?
                .clone(),
        ),
        batch,
        nh,
        nkv,
        hd,
        sq,
        sk: bs,
        cols,
        max_blocks: ks.dim(0),
        chunk_start: chunk_start_idx,
        causal: true,
        window: None,
        scale,
        mask_per_head: false,
        mask_len: 0,
        table: Vec::with_capacity(page_table_tensor.shape().volume()),
        smask: Vec::new(),
        so: Vec::with_capacity(if q.dtype() == DataType::Float32 {
            0
        } else {
            len
        }),
    })?;
    Ok(out)
}
