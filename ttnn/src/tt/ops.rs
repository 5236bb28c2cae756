//! The ops on the Tenstorrent backend: each takes arguments its public op (in `crate::ops`)
//! has already validated, makes the one C ABI call that is TT-NN's op, and wraps the output
//! handles. Optional arguments pass as null pointers, so TT-NN applies its own defaults (for a
//! spec-less sharded memory config, TT-NN derives the shard spec, as the host backend models).
//!
//! `experimental::bitlinear` and `quantize_activations_int8`, which TT-NN lacks, are lowered to
//! stock ops here.

use std::ffi::c_int;
use std::ptr::null_mut;
use std::sync::Arc;

use ttnn_sys as sys;

use super::convert::{self, u32_of};
use super::{BACKEND, Tt, TtTensor, opt};
use crate::error::{Error, Result};
use crate::ops::attention::{ChunkedSdpaArgs, PagedSdpaDecodeArgs, SdpaArgs, SdpaDecodeArgs};
use crate::ops::bitlinear::{
    ActivationQuant, BitLinearArgs, QuantizeActivationsArgs, WeightScaleMode,
};
use crate::ops::data_movement::{
    NlpConcatHeadsDecodeArgs, NlpCreateQkvHeadsArgs, NlpCreateQkvHeadsDecodeArgs,
};
use crate::ops::eltwise::{BinaryArgs, BinaryOpType, UnaryArgs, UnaryOp};
use crate::ops::embedding::{EmbeddingArgs, EmbeddingsType};
use crate::ops::kv_cache::{PagedFillCacheArgs, PagedUpdateCacheArgs};
use crate::ops::matmul::LinearArgs;
use crate::ops::norm::RmsNormArgs;
use crate::ops::rotary::RotaryEmbeddingLlamaArgs;
use crate::ops::sampling::{ArgmaxArgs, PlusOneArgs, SamplingArgs, TopkArgs};
use crate::tensor::Tensor;
use crate::types::{
    ComputeKernelConfig, DRAM_MEMORY_CONFIG, DataType, Layout, MathFidelity, MemoryConfig, Shape,
};

type Raw = *mut sys::ttnn_c_tensor;

fn mc_opt(op: &'static str, m: Option<&MemoryConfig>) -> Result<Option<sys::ttnn_c_memory_config>> {
    m.map(|m| convert::memory_config(op, m)).transpose()
}

fn ckc_opt(c: Option<&ComputeKernelConfig>) -> Option<sys::ttnn_c_compute_kernel_config> {
    c.map(convert::compute_kernel_config)
}

fn u32_opt(op: &'static str, what: &str, v: Option<usize>) -> Result<Option<u32>> {
    v.map(|v| u32_of(op, what, v)).transpose()
}

impl Tt<'_> {
    /// Runs an op with one output handle and keeps it as an intermediate of a composed op (freed
    /// when dropped, also during a capture: later ops of the capture may reuse its memory).
    fn inter(
        &self,
        op: &'static str,
        f: impl FnOnce(&sys::TtnnC, &mut Raw) -> c_int,
    ) -> Result<Arc<TtTensor>> {
        let mut out: Raw = null_mut();
        self.call(op, |api, _| f(api, &mut out))?;
        Ok(Arc::new(self.dev.own(op, out)?))
    }

    /// Runs an op with one output handle and wraps it as the op's result.
    fn out1(
        &self,
        op: &'static str,
        f: impl FnOnce(&sys::TtnnC, &mut Raw) -> c_int,
    ) -> Result<Tensor> {
        let mut out: Raw = null_mut();
        self.call(op, |api, _| f(api, &mut out))?;
        self.wrap(op, out)
    }

    /// Wraps several output handles, owning all of them before describing any (so that none
    /// leaks when describing one fails).
    fn wrap_all<const N: usize>(&self, op: &'static str, raws: [Raw; N]) -> Result<[Tensor; N]> {
        let mut owned = Vec::with_capacity(N);
        for r in raws {
            owned.push(self.dev.own(op, r)?);
        }
        let mut out = Vec::with_capacity(N);
        for t in owned {
            out.push(self.dev.wrap_owned(self.device, op, t, false)?);
        }
        out.try_into().map_err(|_| Error::Backend {
            op,
            backend: BACKEND,
            message: "output count mismatch".into(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Data movement

/// TT-NN's reshape; `padded` is an explicit padded shape of the same rank (else derived).
pub(crate) fn reshape(
    tt: &Tt<'_>,
    op: &'static str,
    t: &Tensor,
    shape: Shape,
    padded: Option<Shape>,
) -> Result<Tensor> {
    let h = tt.h(op, "the tensor", t)?;
    let (dims, rank) = convert::shape(op, shape)?;
    let padded = padded.map(|p| convert::shape(op, p)).transpose()?;
    let pp = padded
        .as_ref()
        .map_or(std::ptr::null(), |(d, _)| d.as_ptr());
    let out = tt.out1(op, |api, out| {
        // SAFETY: a live handle of this device, `dims` (and the padded dims when given) with
        // `rank` entries, an out-pointer to a local; under the dispatch lock.
        unsafe { api.ttnn_c_reshape(h, dims.as_ptr(), rank, pp, out) }
    })?;
    Ok(keep_ternary(out, t))
}

/// TT-NN's `to_layout` (tilize / untilize) of a device tensor.
pub(crate) fn to_layout(
    tt: &Tt<'_>,
    op: &'static str,
    t: &Tensor,
    layout: Layout,
) -> Result<Tensor> {
    let h = tt.h(op, "the tensor", t)?;
    let l = convert::layout(layout);
    tt.out1(op, |api, out| {
        // SAFETY: a live handle, a layout value, an out-pointer to a local.
        unsafe { api.ttnn_c_tensor_to_layout(h, l, out) }
    })
}

/// A Ternary tensor stays Ternary through shape and placement changes (the handle says
/// BFLOAT4_B, which is how Ternary is stored).
fn keep_ternary(out: Tensor, input: &Tensor) -> Tensor {
    if input.dtype() == DataType::Ternary && out.dtype() == DataType::Bfloat4B {
        out.with_dtype(DataType::Ternary)
    } else {
        out
    }
}

pub(crate) fn to_memory_config(
    tt: &Tt<'_>,
    op: &'static str,
    t: &Tensor,
    mc: &MemoryConfig,
    dtype: Option<DataType>,
) -> Result<Tensor> {
    let h = tt.h(op, "the tensor", t)?;
    let c_mc = convert::memory_config(op, mc)?;
    let dt = dtype.map(convert::dtype);
    let out = tt.out1(op, |api, out| {
        // SAFETY: a live handle, a memory config and optional dtype in locals, an out-pointer.
        unsafe { api.ttnn_c_to_memory_config(h, &c_mc, opt(&dt), out) }
    })?;
    let ternary_in = dtype.is_none() || dtype == Some(DataType::Ternary);
    Ok(if ternary_in {
        keep_ternary(out, t)
    } else {
        out
    })
}

pub(crate) fn copy(tt: &Tt<'_>, op: &'static str, src: &Tensor, dst: &Tensor) -> Result<()> {
    let (s, d) = (tt.h(op, "src", src)?, tt.h(op, "dst", dst)?);
    // SAFETY: two live handles of this device; `out` is optional and not asked for (null).
    tt.call(op, |api, _| unsafe { api.ttnn_c_copy(s, d, null_mut()) })
}

pub(crate) fn slice(
    tt: &Tt<'_>,
    op: &'static str,
    input: &Tensor,
    starts: &[usize],
    ends: &[usize],
    mc: Option<&MemoryConfig>,
) -> Result<Tensor> {
    let h = tt.h(op, "input", input)?;
    let s: Vec<u32> = starts
        .iter()
        .map(|&v| u32_of(op, "start", v))
        .collect::<Result<_>>()?;
    let e: Vec<u32> = ends
        .iter()
        .map(|&v| u32_of(op, "end", v))
        .collect::<Result<_>>()?;
    let rank = s.len() as u32;
    let c_mc = mc_opt(op, mc)?;
    tt.out1(op, |api, out| {
        // SAFETY: a live handle; `s` and `e` hold `rank` entries (the input's rank, validated);
        // steps null (all 1); locals for the rest.
        unsafe {
            api.ttnn_c_slice(
                h,
                s.as_ptr(),
                e.as_ptr(),
                std::ptr::null(),
                rank,
                opt(&c_mc),
                out,
            )
        }
    })
}

pub(crate) fn zeros(
    tt: &Tt<'_>,
    op: &'static str,
    shape: Shape,
    dtype: DataType,
    layout: Layout,
    mc: &MemoryConfig,
) -> Result<Tensor> {
    tt.dev.ensure_not_capturing(op)?;
    let (dims, rank) = convert::shape(op, shape)?;
    let c_mc = convert::memory_config(op, mc)?;
    let mut raw: Raw = null_mut();
    // SAFETY: `dims` with `rank` entries, plain values, the live device handle, a memory config
    // in a local and an out-pointer to a local.
    tt.call(op, |api, d| unsafe {
        api.ttnn_c_zeros(
            dims.as_ptr(),
            rank,
            convert::dtype(dtype),
            convert::layout(layout),
            d,
            &c_mc,
            &mut raw,
        )
    })?;
    let out = tt.wrap(op, raw)?;
    Ok(if dtype == DataType::Ternary {
        out.with_dtype(DataType::Ternary)
    } else {
        out
    })
}

// ---------------------------------------------------------------------------------------------
// Matmul, norm, embedding, eltwise

pub(crate) fn linear(
    tt: &Tt<'_>,
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    args: &LinearArgs<'_>,
    matmul_entry: bool,
) -> Result<Tensor> {
    let (ha, hb) = (tt.h(op, "a", a)?, tt.h(op, "b", b)?);
    let bias = tt.oh(op, "bias", args.bias)?;
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let dt = args.dtype.map(convert::dtype);
    let pc = args
        .program_config
        .as_ref()
        .map(|p| convert::matmul_program_config(op, p))
        .transpose()?;
    let ckc = ckc_opt(args.compute_kernel_config.as_ref());
    let grid = args.core_grid.map(|g| convert::coord(op, g)).transpose()?;
    let act = convert::activation(args.activation);
    let (ta, tb) = (u8::from(args.transpose_a), u8::from(args.transpose_b));
    tt.out1(op, |api, out| {
        // SAFETY: live handles of this device (bias null when absent); every optional
        // argument is null or points to a local; an out-pointer to a local.
        unsafe {
            if matmul_entry {
                api.ttnn_c_matmul(
                    ha,
                    hb,
                    ta,
                    tb,
                    opt(&c_mc),
                    opt(&dt),
                    opt(&pc),
                    act,
                    opt(&ckc),
                    opt(&grid),
                    out,
                )
            } else {
                api.ttnn_c_linear(
                    ha,
                    hb,
                    bias,
                    ta,
                    tb,
                    opt(&c_mc),
                    opt(&dt),
                    opt(&pc),
                    act,
                    opt(&ckc),
                    opt(&grid),
                    out,
                )
            }
        }
    })
}

pub(crate) fn rms_norm(
    tt: &Tt<'_>,
    op: &'static str,
    input: &Tensor,
    args: &RmsNormArgs<'_>,
) -> Result<Tensor> {
    let h = tt.h(op, "input", input)?;
    let w = tt.oh(op, "weight", args.weight)?;
    let b = tt.oh(op, "bias", args.bias)?;
    let r = tt.oh(op, "residual_input_tensor", args.residual_input_tensor)?;
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let pc = args
        .program_config
        .as_ref()
        .map(|p| convert::layernorm_program_config(op, p))
        .transpose()?;
    let ckc = ckc_opt(args.compute_kernel_config.as_ref());
    let eps = args.epsilon;
    tt.out1(op, |api, out| {
        // SAFETY: live handles (null for absent optional tensors), optional configs in locals
        // or null, an out-pointer.
        unsafe { api.ttnn_c_rms_norm(h, eps, w, b, r, opt(&c_mc), opt(&pc), opt(&ckc), out) }
    })
}

pub(crate) fn embedding(
    tt: &Tt<'_>,
    op: &'static str,
    ids: &Tensor,
    weight: &Tensor,
    args: &EmbeddingArgs,
) -> Result<Tensor> {
    let (hi, hw) = (tt.h(op, "input_ids", ids)?, tt.h(op, "weight", weight)?);
    let layout = args.layout.map(convert::layout);
    let dt = args.dtype.map(convert::dtype);
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let pad = args.padding_idx;
    let kind = match args.embeddings_type {
        EmbeddingsType::Generic => sys::TTNN_C_EMBEDDINGS_TYPE_GENERIC,
        EmbeddingsType::Padded => sys::TTNN_C_EMBEDDINGS_TYPE_PADDED,
        EmbeddingsType::Binary => sys::TTNN_C_EMBEDDINGS_TYPE_BINARY,
    };
    let kind = if pad.is_some() {
        sys::TTNN_C_EMBEDDINGS_TYPE_PADDED
    } else {
        kind
    };
    tt.out1(op, |api, out| {
        // SAFETY: live handles; optional values in locals or null; an out-pointer.
        unsafe {
            api.ttnn_c_embedding(
                hi,
                hw,
                opt(&pad),
                opt(&layout),
                kind,
                opt(&dt),
                opt(&c_mc),
                out,
            )
        }
    })
}

pub(crate) fn binary(
    tt: &Tt<'_>,
    op: &'static str,
    kind: BinaryOpType,
    a: &Tensor,
    b: &Tensor,
    args: &BinaryArgs,
) -> Result<Tensor> {
    let (ha, hb) = (tt.h(op, "a", a)?, tt.h(op, "b", b)?);
    let dt = args.dtype.map(convert::dtype);
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let acts: Vec<u32> = args
        .input_tensor_a_activations
        .iter()
        .map(|&u| convert::unary(u))
        .collect();
    let n = acts.len() as u32;
    let kind = convert::binary(kind);
    tt.out1(op, |api, out| {
        // SAFETY: live handles; `acts` holds `n` unary codes; optional values in locals or
        // null; an out-pointer.
        unsafe { api.ttnn_c_binary(kind, ha, hb, opt(&dt), opt(&c_mc), acts.as_ptr(), n, out) }
    })
}

pub(crate) fn unary(
    tt: &Tt<'_>,
    op: &'static str,
    ops: &[UnaryOp],
    input: &Tensor,
    args: &UnaryArgs,
) -> Result<Tensor> {
    let h = tt.h(op, "input", input)?;
    let codes: Vec<u32> = ops.iter().map(|&u| convert::unary(u)).collect();
    // TT-NN's unary ops keep the input's dtype: a requested other dtype is a typecast after
    // them (the memory config then goes to the typecast).
    let cast = args.dtype.filter(|&d| d != input.dtype());
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let n = codes.len() as u32;
    let run = |api: &sys::TtnnC, out: &mut Raw, mc: *const sys::ttnn_c_memory_config| {
        // SAFETY: a live handle; `codes` holds `n` unary codes; `mc` is null or a local; an
        // out-pointer to a local.
        unsafe {
            if n == 1 {
                api.ttnn_c_unary(codes[0], h, mc, out)
            } else {
                api.ttnn_c_unary_chain(h, codes.as_ptr(), n, mc, out)
            }
        }
    };
    match cast {
        None => tt.out1(op, |api, out| run(api, out, opt(&c_mc))),
        Some(d) => {
            let t = tt.inter(op, |api, out| run(api, out, std::ptr::null()))?;
            let th = t.raw.as_ptr();
            let dt = convert::dtype(d);
            tt.out1(op, |api, out| {
                // SAFETY: a live handle, a dtype, a memory config in a local or null, an
                // out-pointer.
                unsafe { api.ttnn_c_typecast(th, dt, opt(&c_mc), out) }
            })
        }
    }
}

pub(crate) fn binary_scalar(
    tt: &Tt<'_>,
    op: &'static str,
    kind: BinaryOpType,
    a: &Tensor,
    b: f32,
    args: &BinaryArgs,
) -> Result<Tensor> {
    let ha = tt.h(op, "a", a)?;
    let dt = args.dtype.map(convert::dtype);
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let acts: Vec<u32> = args
        .input_tensor_a_activations
        .iter()
        .map(|&u| convert::unary(u))
        .collect();
    let n = acts.len() as u32;
    let kind = convert::binary(kind);
    tt.out1(op, |api, out| {
        // SAFETY: a live handle; `acts` holds `n` unary codes; optional values in locals or
        // null; an out-pointer.
        unsafe {
            api.ttnn_c_binary_scalar(kind, ha, b, opt(&dt), opt(&c_mc), acts.as_ptr(), n, out)
        }
    })
}

/// `clamp(input, min, max)`; a requested other dtype is a typecast after it, as for the unary
/// ops.
pub(crate) fn clamp(
    tt: &Tt<'_>,
    op: &'static str,
    input: &Tensor,
    min: f32,
    max: f32,
    args: &UnaryArgs,
) -> Result<Tensor> {
    let h = tt.h(op, "input", input)?;
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    match args.dtype.filter(|&d| d != input.dtype()) {
        None => tt.out1(op, |api, out| {
            // SAFETY: a live handle, plain values, a memory config in a local or null, an
            // out-pointer.
            unsafe { api.ttnn_c_clamp(h, min, max, opt(&c_mc), out) }
        }),
        Some(d) => {
            let t = tt.inter(op, |api, out| {
                // SAFETY: a live handle, plain values, no memory config, an out-pointer.
                unsafe { api.ttnn_c_clamp(h, min, max, std::ptr::null(), out) }
            })?;
            let th = t.raw.as_ptr();
            let dt = convert::dtype(d);
            tt.out1(op, |api, out| {
                // SAFETY: a live handle, a dtype, a memory config in a local or null, an
                // out-pointer.
                unsafe { api.ttnn_c_typecast(th, dt, opt(&c_mc), out) }
            })
        }
    }
}

/// `max` over dimension `dim`.
pub(crate) fn max(
    tt: &Tt<'_>,
    op: &'static str,
    input: &Tensor,
    dim: i32,
    args: &crate::ops::reduction::ReduceArgs,
) -> Result<Tensor> {
    let h = tt.h(op, "input", input)?;
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let keep = u8::from(args.keepdim);
    tt.out1(op, |api, out| {
        // SAFETY: a live handle, plain values, a memory config in a local or null, an
        // out-pointer.
        unsafe { api.ttnn_c_max(h, dim, keep, opt(&c_mc), out) }
    })
}

pub(crate) fn typecast(
    tt: &Tt<'_>,
    op: &'static str,
    input: &Tensor,
    dtype: DataType,
    mc: Option<&MemoryConfig>,
) -> Result<Tensor> {
    let h = tt.h(op, "input", input)?;
    let c_mc = mc_opt(op, mc)?;
    let dt = convert::dtype(dtype);
    let out = tt.out1(op, |api, out| {
        // SAFETY: a live handle, a dtype, a memory config in a local or null, an out-pointer.
        unsafe { api.ttnn_c_typecast(h, dt, opt(&c_mc), out) }
    })?;
    Ok(if dtype == DataType::Ternary {
        out.with_dtype(DataType::Ternary)
    } else {
        out
    })
}

// ---------------------------------------------------------------------------------------------
// Heads

pub(crate) fn nlp_create_qkv_heads_decode(
    tt: &Tt<'_>,
    op: &'static str,
    input: &Tensor,
    num_heads: usize,
    args: &NlpCreateQkvHeadsDecodeArgs<'_>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let h = tt.h(op, "input", input)?;
    let bo = tt.oh(op, "batch_offset", args.batch_offset)?;
    let nh = u32_of(op, "num_heads", num_heads)?;
    let nkv = u32_opt(op, "num_kv_heads", args.num_kv_heads)?;
    let overlap = args.overlap_qk_coregrid.map(u8::from);
    let slice = u32_opt(op, "slice_size", args.slice_size)?;
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let (mut q, mut k, mut v): (Raw, Raw, Raw) = (null_mut(), null_mut(), null_mut());
    // SAFETY: a live handle (batch_offset null when absent); optional values in locals or
    // null; three out-pointers to locals.
    tt.call(op, |api, _| unsafe {
        api.ttnn_c_nlp_create_qkv_heads_decode(
            h,
            nh,
            opt(&nkv),
            opt(&overlap),
            bo,
            opt(&slice),
            opt(&c_mc),
            &mut q,
            &mut k,
            &mut v,
        )
    })?;
    let [q, k, v] = tt.wrap_all(op, [q, k, v])?;
    Ok((q, k, v))
}

pub(crate) fn nlp_concat_heads_decode(
    tt: &Tt<'_>,
    op: &'static str,
    input: &Tensor,
    num_heads: usize,
    args: &NlpConcatHeadsDecodeArgs,
) -> Result<Tensor> {
    let h = tt.h(op, "input", input)?;
    let nh = u32_of(op, "num_heads", num_heads)?;
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let grids: Vec<sys::ttnn_c_core_range> = match &args.sub_core_grids {
        Some(g) => g
            .ranges()
            .iter()
            .map(|r| convert::core_range(op, r))
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let n = grids.len() as u32;
    tt.out1(op, |api, out| {
        // SAFETY: a live handle; `grids` holds `n` ranges (null-safe when empty: n == 0); a
        // memory config in a local or null; an out-pointer.
        unsafe {
            api.ttnn_c_nlp_concat_heads_decode(
                h,
                nh,
                opt(&c_mc),
                if n == 0 {
                    std::ptr::null()
                } else {
                    grids.as_ptr()
                },
                n,
                out,
            )
        }
    })
}

pub(crate) fn nlp_create_qkv_heads(
    tt: &Tt<'_>,
    op: &'static str,
    input: &Tensor,
    num_heads: usize,
    args: &NlpCreateQkvHeadsArgs<'_>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let h = tt.h(op, "input", input)?;
    let kv = tt.oh(op, "input_kv", args.input_kv)?;
    let nh = u32_of(op, "num_heads", num_heads)?;
    let nkv = u32_opt(op, "num_kv_heads", args.num_kv_heads)?;
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let tk = u8::from(args.transpose_k_heads);
    let (mut q, mut k, mut v): (Raw, Raw, Raw) = (null_mut(), null_mut(), null_mut());
    // SAFETY: live handles (input_kv null when absent); optional values in locals or null;
    // three out-pointers to locals.
    tt.call(op, |api, _| unsafe {
        api.ttnn_c_nlp_create_qkv_heads(
            h,
            kv,
            nh,
            opt(&nkv),
            tk,
            opt(&c_mc),
            &mut q,
            &mut k,
            &mut v,
        )
    })?;
    let [q, k, v] = tt.wrap_all(op, [q, k, v])?;
    Ok((q, k, v))
}

pub(crate) fn nlp_concat_heads(
    tt: &Tt<'_>,
    op: &'static str,
    input: &Tensor,
    mc: Option<&MemoryConfig>,
) -> Result<Tensor> {
    let h = tt.h(op, "input", input)?;
    let c_mc = mc_opt(op, mc)?;
    tt.out1(op, |api, out| {
        // SAFETY: a live handle, a memory config in a local or null, an out-pointer.
        unsafe { api.ttnn_c_nlp_concat_heads(h, opt(&c_mc), out) }
    })
}

pub(crate) fn rotary_embedding_llama(
    tt: &Tt<'_>,
    op: &'static str,
    input: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    trans: &Tensor,
    args: &RotaryEmbeddingLlamaArgs,
) -> Result<Tensor> {
    let h = tt.h(op, "input", input)?;
    let (c, s, t) = (
        tt.h(op, "cos_cache", cos)?,
        tt.h(op, "sin_cache", sin)?,
        tt.h(op, "trans_mat", trans)?,
    );
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let ckc = ckc_opt(args.compute_kernel_config.as_ref());
    let decode = u8::from(args.is_decode_mode);
    tt.out1(op, |api, out| {
        // SAFETY: four live handles, optional configs in locals or null, an out-pointer.
        unsafe { api.ttnn_c_rotary_embedding_llama(h, c, s, t, decode, opt(&c_mc), opt(&ckc), out) }
    })
}

// ---------------------------------------------------------------------------------------------
// KV cache and attention

pub(crate) fn paged_update_cache(
    tt: &Tt<'_>,
    op: &'static str,
    cache: &Tensor,
    input: &Tensor,
    args: &PagedUpdateCacheArgs<'_>,
) -> Result<()> {
    let (c, i) = (tt.h(op, "cache", cache)?, tt.h(op, "input", input)?);
    let it = tt.oh(op, "update_idxs_tensor", args.update_idxs_tensor)?;
    let pt = tt.oh(op, "page_table", args.page_table)?;
    let ckc = ckc_opt(args.compute_kernel_config.as_ref());
    let idxs = &args.update_idxs;
    let n = u32_of(op, "update_idxs length", idxs.len())?;
    let share = u8::from(args.share_cache);
    let bo = args.batch_offset;
    // SAFETY: live handles (optional ones null when absent); `idxs` holds `n` values (null
    // when empty); a compute config in a local or null; `out` is optional and not asked for.
    tt.call(op, |api, _| unsafe {
        api.ttnn_c_paged_update_cache(
            c,
            i,
            if n == 0 {
                std::ptr::null()
            } else {
                idxs.as_ptr()
            },
            n,
            it,
            share,
            pt,
            bo,
            opt(&ckc),
            null_mut(),
        )
    })
}

pub(crate) fn paged_fill_cache(
    tt: &Tt<'_>,
    op: &'static str,
    cache: &Tensor,
    input: &Tensor,
    page_table: &Tensor,
    args: &PagedFillCacheArgs<'_>,
) -> Result<()> {
    let (c, i) = (tt.h(op, "cache", cache)?, tt.h(op, "input", input)?);
    let pt = tt.h(op, "page_table", page_table)?;
    let bt = tt.oh(op, "batch_idx_tensor", args.batch_idx_tensor)?;
    let ckc = ckc_opt(args.compute_kernel_config.as_ref());
    let bi = args.batch_idx;
    // SAFETY: live handles (batch_idx_tensor null when absent); a compute config in a local or
    // null; `out` is optional and not asked for.
    tt.call(op, |api, _| unsafe {
        api.ttnn_c_paged_fill_cache(c, i, pt, bt, bi, opt(&ckc), null_mut())
    })
}

fn sdpa_pc(
    op: &'static str,
    pc: Option<&crate::ops::attention::SdpaProgramConfig>,
) -> Result<Option<sys::ttnn_c_sdpa_program_config>> {
    pc.map(|p| convert::sdpa_program_config(op, p)).transpose()
}

pub(crate) fn paged_sdpa_decode(
    tt: &Tt<'_>,
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    page_table: &Tensor,
    args: &PagedSdpaDecodeArgs<'_>,
) -> Result<Tensor> {
    let (hq, hk, hv) = (tt.h(op, "q", q)?, tt.h(op, "k", k)?, tt.h(op, "v", v)?);
    let pt = tt.h(op, "page_table_tensor", page_table)?;
    let mask = tt.oh(op, "attn_mask", args.attn_mask)?;
    let cp = tt.oh(op, "cur_pos_tensor", args.cur_pos_tensor)?;
    let scale = args.scale;
    let window = u32_opt(op, "sliding_window_size", args.sliding_window_size)?;
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let pc = sdpa_pc(op, args.program_config.as_ref())?;
    let ckc = ckc_opt(args.compute_kernel_config.as_ref());
    let causal = u8::from(args.is_causal);
    tt.out1(op, |api, out| {
        // SAFETY: live handles (optional ones null when absent); optional values in locals or
        // null; an out-pointer.
        unsafe {
            api.ttnn_c_paged_sdpa_decode(
                hq,
                hk,
                hv,
                pt,
                causal,
                mask,
                cp,
                opt(&scale),
                opt(&window),
                opt(&c_mc),
                opt(&pc),
                opt(&ckc),
                out,
            )
        }
    })
}

pub(crate) fn sdpa_decode(
    tt: &Tt<'_>,
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    args: &SdpaDecodeArgs<'_>,
) -> Result<Tensor> {
    let (hq, hk, hv) = (tt.h(op, "q", q)?, tt.h(op, "k", k)?, tt.h(op, "v", v)?);
    let mask = tt.oh(op, "attn_mask", args.attn_mask)?;
    let cp = tt.oh(op, "cur_pos_tensor", args.cur_pos_tensor)?;
    let list = &args.cur_pos;
    let n = u32_of(op, "cur_pos length", list.len())?;
    let scale = args.scale;
    let window = u32_opt(op, "sliding_window_size", args.sliding_window_size)?;
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let pc = sdpa_pc(op, args.program_config.as_ref())?;
    let ckc = ckc_opt(args.compute_kernel_config.as_ref());
    let causal = u8::from(args.is_causal);
    tt.out1(op, |api, out| {
        // SAFETY: live handles (optional ones null when absent); `list` holds `n` positions
        // (null when empty); optional values in locals or null; an out-pointer.
        unsafe {
            api.ttnn_c_sdpa_decode(
                hq,
                hk,
                hv,
                causal,
                mask,
                if n == 0 {
                    std::ptr::null()
                } else {
                    list.as_ptr()
                },
                n,
                cp,
                opt(&scale),
                opt(&window),
                opt(&c_mc),
                opt(&pc),
                opt(&ckc),
                out,
            )
        }
    })
}

pub(crate) fn sdpa(
    tt: &Tt<'_>,
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    args: &SdpaArgs<'_>,
) -> Result<Tensor> {
    let (hq, hk, hv) = (tt.h(op, "q", q)?, tt.h(op, "k", k)?, tt.h(op, "v", v)?);
    let mask = tt.oh(op, "attn_mask", args.attn_mask)?;
    let scale = args.scale;
    let window = u32_opt(op, "sliding_window_size", args.sliding_window_size)?;
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let pc = sdpa_pc(op, args.program_config.as_ref())?;
    let ckc = ckc_opt(args.compute_kernel_config.as_ref());
    let causal = u8::from(args.is_causal);
    tt.out1(op, |api, out| {
        // SAFETY: live handles (mask null when absent); optional values in locals or null; an
        // out-pointer.
        unsafe {
            api.ttnn_c_sdpa(
                hq,
                hk,
                hv,
                mask,
                causal,
                opt(&scale),
                opt(&window),
                opt(&c_mc),
                opt(&pc),
                opt(&ckc),
                out,
            )
        }
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn chunked_sdpa(
    tt: &Tt<'_>,
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    page_table: &Tensor,
    chunk_start_idx: usize,
    args: &ChunkedSdpaArgs,
) -> Result<Tensor> {
    let (hq, hk, hv) = (tt.h(op, "q", q)?, tt.h(op, "k", k)?, tt.h(op, "v", v)?);
    let pt = tt.h(op, "page_table_tensor", page_table)?;
    let start = i64::try_from(chunk_start_idx).map_err(|_| {
        Error::arg(
            op,
            format!("chunk_start_idx {chunk_start_idx} is too large"),
        )
    })?;
    let scale = args.scale;
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let pc = sdpa_pc(op, args.program_config.as_ref())?;
    let ckc = ckc_opt(args.compute_kernel_config.as_ref());
    tt.out1(op, |api, out| {
        // SAFETY: live handles; optional values in locals or null; an out-pointer.
        unsafe {
            api.ttnn_c_chunked_sdpa(
                hq,
                hk,
                hv,
                pt,
                start,
                opt(&scale),
                opt(&c_mc),
                opt(&pc),
                opt(&ckc),
                out,
            )
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Token selection

pub(crate) fn argmax(
    tt: &Tt<'_>,
    op: &'static str,
    input: &Tensor,
    args: &ArgmaxArgs,
) -> Result<Tensor> {
    let h = tt.h(op, "input", input)?;
    let dim = args.dim;
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let (keep, multi) = (u8::from(args.keepdim), u8::from(args.use_multicore));
    tt.out1(op, |api, out| {
        // SAFETY: a live handle; optional values in locals or null; an out-pointer.
        unsafe { api.ttnn_c_argmax(h, opt(&dim), keep, multi, opt(&c_mc), out) }
    })
}

pub(crate) fn topk(
    tt: &Tt<'_>,
    op: &'static str,
    input: &Tensor,
    k: u32,
    args: &TopkArgs<'_>,
) -> Result<(Tensor, Tensor)> {
    let h = tt.h(op, "input", input)?;
    let idx = tt.oh(op, "indices_tensor", args.indices_tensor)?;
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let (dim, largest, sorted) = (args.dim, u8::from(args.largest), u8::from(args.sorted));
    let (mut vals, mut ids): (Raw, Raw) = (null_mut(), null_mut());
    // SAFETY: live handles (indices_tensor null when absent); a memory config in a local or
    // null; two out-pointers to locals.
    tt.call(op, |api, _| unsafe {
        api.ttnn_c_topk(
            h,
            k,
            dim,
            largest,
            sorted,
            opt(&c_mc),
            idx,
            &mut vals,
            &mut ids,
        )
    })?;
    let [vals, ids] = tt.wrap_all(op, [vals, ids])?;
    Ok((vals, ids))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn sampling(
    tt: &Tt<'_>,
    op: &'static str,
    values: &Tensor,
    indices: &Tensor,
    k: &Tensor,
    p: &Tensor,
    temp: &Tensor,
    args: &SamplingArgs<'_>,
) -> Result<Tensor> {
    // TT-NN's sampling has one seed for the whole batch and its own on-device PRNG state: the
    // host backend's per-user streams have no counterpart.
    for (what, given) in [
        ("user_seeds", args.user_seeds.is_some()),
        ("user_offsets", args.user_offsets.is_some()),
    ] {
        if given {
            return Err(Error::NotSupported {
                op,
                what: format!("{what} (a host-backend extension; TT-NN's sampling takes one seed)"),
                backend: BACKEND,
            });
        }
    }
    let (hv, hi) = (
        tt.h(op, "input_values", values)?,
        tt.h(op, "input_indices", indices)?,
    );
    let (hk, hp, ht) = (
        tt.h(op, "k", k)?,
        tt.h(op, "p", p)?,
        tt.h(op, "temp", temp)?,
    );
    let dst = tt.oh(op, "output_tensor", args.output_tensor)?;
    let seed = args.seed;
    let mut out: Raw = null_mut();
    // SAFETY: live handles (output_tensor null when absent); the seed in a local or null; an
    // out-pointer to a local.
    tt.call(op, |api, _| unsafe {
        api.ttnn_c_sampling(hv, hi, hk, hp, ht, opt(&seed), dst, &mut out)
    })?;
    match args.output_tensor {
        Some(t) => {
            // The library hands back a new handle to `t`'s buffer; `t` itself is the result.
            tt.discard(op, out)?;
            Ok(t.clone())
        }
        None => tt.wrap(op, out),
    }
}

pub(crate) fn plus_one(
    tt: &Tt<'_>,
    op: &'static str,
    input: &Tensor,
    args: &PlusOneArgs,
) -> Result<()> {
    let h = tt.h(op, "input", input)?;
    let skip = u8::from(args.skip_negative_entries);
    // SAFETY: a live handle; `out` is optional and not asked for.
    tt.call(op, |api, _| unsafe {
        api.ttnn_c_plus_one(h, skip, null_mut())
    })
}

// ---------------------------------------------------------------------------------------------
// bitlinear, lowered to stock ops

/// Elementwise ops of the lowering, on raw handles of intermediates.
struct Lower<'t, 'a> {
    tt: &'t Tt<'a>,
    op: &'static str,
}

impl Lower<'_, '_> {
    fn unary(&self, code: u32, x: Raw) -> Result<Arc<TtTensor>> {
        self.tt.inter(self.op, |api, out| {
            // SAFETY: a live handle, no memory config (the input's), an out-pointer.
            unsafe { api.ttnn_c_unary(code, x, std::ptr::null(), out) }
        })
    }

    fn clamp(&self, x: Raw, lo: f32, hi: f32) -> Result<Arc<TtTensor>> {
        self.tt.inter(self.op, |api, out| {
            // SAFETY: a live handle, plain values, no memory config, an out-pointer.
            unsafe { api.ttnn_c_clamp(x, lo, hi, std::ptr::null(), out) }
        })
    }

    fn max_last(&self, x: Raw) -> Result<Arc<TtTensor>> {
        self.tt.inter(self.op, |api, out| {
            // SAFETY: a live handle, plain values, no memory config, an out-pointer.
            unsafe { api.ttnn_c_max(x, -1, 1, std::ptr::null(), out) }
        })
    }

    fn mul(&self, a: Raw, b: Raw) -> Result<Arc<TtTensor>> {
        self.tt.inter(self.op, |api, out| {
            // SAFETY: live handles, no dtype, memory config or activations, an out-pointer.
            unsafe {
                api.ttnn_c_binary(
                    sys::TTNN_C_BINARY_MULTIPLY,
                    a,
                    b,
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null(),
                    0,
                    out,
                )
            }
        })
    }

    fn mul_scalar(&self, a: Raw, b: f32) -> Result<Arc<TtTensor>> {
        self.tt.inter(self.op, |api, out| {
            // SAFETY: a live handle, a value, no dtype, memory config or activations, an
            // out-pointer.
            unsafe {
                api.ttnn_c_binary_scalar(
                    sys::TTNN_C_BINARY_MULTIPLY,
                    a,
                    b,
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null(),
                    0,
                    out,
                )
            }
        })
    }

    /// HF's `ActQuant` from ops, per row of `x` (in `x`'s dtype):
    /// `s = 127 * reciprocal(clamp(max(|x|), 1e-5))`, `q = clamp(round(x * s), -128, 127)`
    /// (round half to even, as torch). With f32 input each step is the f32 operation the host
    /// kernel performs, in the same order.
    fn quantize(&self, x: Raw) -> Result<(Arc<TtTensor>, Arc<TtTensor>)> {
        let a = self.unary(sys::TTNN_C_UNARY_ABS, x)?;
        let m = self.max_last(a.raw.as_ptr())?;
        let m = self.clamp(m.raw.as_ptr(), 1e-5, f32::MAX)?;
        let r = self.unary(sys::TTNN_C_UNARY_RECIPROCAL, m.raw.as_ptr())?;
        let s = self.mul_scalar(r.raw.as_ptr(), 127.0)?;
        let xs = self.mul(x, s.raw.as_ptr())?;
        let q = self.unary(sys::TTNN_C_UNARY_ROUND, xs.raw.as_ptr())?;
        let q = self.clamp(q.raw.as_ptr(), -128.0, 127.0)?;
        Ok((q, s))
    }
}

/// The compute config of the lowering's matmul: the caller's, else HiFi2 with fp32
/// accumulation (int8 activations times ternary weights are exact there; LoFi drops activation
/// mantissa bits, which a caller may choose for speed).
fn bitlinear_ckc(args: &BitLinearArgs<'_>) -> ComputeKernelConfig {
    args.compute_kernel_config.unwrap_or(ComputeKernelConfig {
        math_fidelity: MathFidelity::HiFi2,
        ..ComputeKernelConfig::hifi2()
    })
}

/// `experimental::bitlinear` on the Tenstorrent backend (TT-NN has no such op):
///
/// 1. activation quantization from ops (`ActivationQuant::Int8PerToken`, see
///    [`Lower::quantize`]), or none (`ActivationQuant::Skip`);
/// 2. `acc = linear(q, W, transpose_b)` with the BFLOAT4_B weight (our weight is `[N, K]`),
///    in Float32: with integer `q` and ternary `W` every product and partial sum is an exact
///    integer below 2^24, so `acc` is the host's exact integer sum;
/// 3. the scales: `acc * reciprocal(s)` per row, then `* weight_scale` (Multiply, HF's
///    AutoBitLinear `linear(q / s, W) * weight_scale` with the division moved after the exact
///    sum) or `* reciprocal(weight_scale)` (Divide, HF's BitLinear); per-channel
///    `weight_scales` multiply as a row broadcast.
///
/// The host divides where this multiplies by a reciprocal, so outputs may differ from the
/// host's by a few f32 ulps.
pub(crate) fn bitlinear(
    tt: &Tt<'_>,
    op: &'static str,
    input: &Tensor,
    weight: &Tensor,
    n: usize,
    args: &BitLinearArgs<'_>,
) -> Result<Tensor> {
    let lo = Lower { tt, op };
    let x = tt.h(op, "input", input)?;
    let w = tt.h(op, "weight", weight)?;
    let (lhs, row_scale) = match args.activation_quant {
        ActivationQuant::Int8PerToken => {
            let (q, s) = lo.quantize(x)?;
            (Some(q), Some(s))
        }
        ActivationQuant::Skip => (None, None),
    };
    let a = lhs.as_ref().map_or(x, |q| q.raw.as_ptr());
    let ckc = convert::compute_kernel_config(&bitlinear_ckc(args));
    let f32d = sys::TTNN_C_DTYPE_FLOAT32;
    let acc = tt.inter(op, |api, out| {
        // SAFETY: live handles; the dtype and compute config point to locals; the other
        // optional arguments are null; an out-pointer.
        unsafe {
            api.ttnn_c_linear(
                a,
                w,
                null_mut(),
                0,
                1,
                std::ptr::null(),
                &f32d,
                std::ptr::null(),
                sys::TTNN_C_UNARY_NONE,
                &ckc,
                std::ptr::null(),
                out,
            )
        }
    })?;
    let acc = match &row_scale {
        Some(s) => {
            let r = lo.unary(sys::TTNN_C_UNARY_RECIPROCAL, s.raw.as_ptr())?;
            lo.mul(acc.raw.as_ptr(), r.raw.as_ptr())?
        }
        None => acc,
    };
    let dt = convert::dtype(args.dtype.unwrap_or(input.dtype()));
    let c_mc = convert::memory_config(
        op,
        args.memory_config.as_ref().unwrap_or(&DRAM_MEMORY_CONFIG),
    )?;
    let y = acc.raw.as_ptr();
    match args.weight_scales {
        Some(ws) => {
            let row = scales_row(tt, op, ws, n)?;
            let row = match args.scale_mode {
                WeightScaleMode::Multiply => row,
                WeightScaleMode::Divide => {
                    lo.unary(sys::TTNN_C_UNARY_RECIPROCAL, row.raw.as_ptr())?
                }
            };
            let r = row.raw.as_ptr();
            tt.out1(op, |api, out| {
                // SAFETY: live handles; the dtype and memory config point to locals; no
                // activations; an out-pointer.
                unsafe {
                    api.ttnn_c_binary(
                        sys::TTNN_C_BINARY_MULTIPLY,
                        y,
                        r,
                        &dt,
                        &c_mc,
                        std::ptr::null(),
                        0,
                        out,
                    )
                }
            })
        }
        None => {
            let f = match args.scale_mode {
                WeightScaleMode::Multiply => args.weight_scale,
                WeightScaleMode::Divide => 1.0 / args.weight_scale,
            };
            tt.out1(op, |api, out| {
                // SAFETY: a live handle; the dtype and memory config point to locals; no
                // activations; an out-pointer.
                unsafe {
                    api.ttnn_c_binary_scalar(
                        sys::TTNN_C_BINARY_MULTIPLY,
                        y,
                        f,
                        &dt,
                        &c_mc,
                        std::ptr::null(),
                        0,
                        out,
                    )
                }
            })
        }
    }
}

/// `weight_scales` (`N` values) as a `[1, N]` TILE row that broadcasts over the output rows:
/// the tensor itself when it already is one, else a reshape (and a tilize for row-major data).
fn scales_row(tt: &Tt<'_>, op: &'static str, ws: &Tensor, n: usize) -> Result<Arc<TtTensor>> {
    let h = tt.h(op, "weight_scales", ws)?;
    let s = ws.shape();
    if ws.layout() == Layout::Tile && s.rank() >= 2 && s.dim(-2) == 1 && s.last() == n {
        return Ok(Arc::clone(ws.tt_tensor(op, "weight_scales")?));
    }
    let (dims, rank) = convert::shape(op, Shape::new(&[1, n]))?;
    let r = tt.inter(op, |api, out| {
        // SAFETY: a live handle, `dims` with `rank` entries, no padded shape, an out-pointer.
        unsafe { api.ttnn_c_reshape(h, dims.as_ptr(), rank, std::ptr::null(), out) }
    })?;
    if ws.layout() == Layout::Tile {
        return Ok(r);
    }
    let rh = r.raw.as_ptr();
    tt.inter(op, |api, out| {
        // SAFETY: a live handle, a layout value, an out-pointer.
        unsafe { api.ttnn_c_tensor_to_layout(rh, sys::TTNN_C_LAYOUT_TILE, out) }
    })
}

/// `experimental::quantize_activations_int8` on the Tenstorrent backend: the quantization of
/// [`bitlinear`], then `q` typecast to Int32 and `s` to Float32, both under the requested
/// memory config.
pub(crate) fn quantize_activations_int8(
    tt: &Tt<'_>,
    op: &'static str,
    input: &Tensor,
    args: &QuantizeActivationsArgs,
) -> Result<(Tensor, Tensor)> {
    let lo = Lower { tt, op };
    let x = tt.h(op, "input", input)?;
    let (q, s) = lo.quantize(x)?;
    let c_mc = mc_opt(op, args.memory_config.as_ref())?;
    let cast = |t: &Arc<TtTensor>, d: u32| -> Result<Tensor> {
        let h = t.raw.as_ptr();
        tt.out1(op, |api, out| {
            // SAFETY: a live handle, a dtype, a memory config in a local or null, an
            // out-pointer.
            unsafe { api.ttnn_c_typecast(h, d, opt(&c_mc), out) }
        })
    };
    Ok((
        cast(&q, sys::TTNN_C_DTYPE_INT32)?,
        cast(&s, sys::TTNN_C_DTYPE_FLOAT32)?,
    ))
}
