//! Op entry points: each builds `ttnn`'s argument struct from the C arguments and calls the op
//! of the same TT-NN name. Program and compute-kernel configs are converted and passed on (the
//! host validates them as TT-NN does and otherwise ignores them).

use std::ffi::c_int;

use ttnn::experimental::{
    NlpConcatHeadsDecodeArgs, NlpCreateQkvHeadsArgs, NlpCreateQkvHeadsDecodeArgs,
    PagedFillCacheArgs, PagedUpdateCacheArgs, RotaryEmbeddingLlamaArgs,
};
use ttnn::transformer::{ChunkedSdpaArgs, PagedSdpaDecodeArgs, SdpaArgs, SdpaDecodeArgs};
use ttnn::{
    ArgmaxArgs, BinaryArgs, DRAM_MEMORY_CONFIG, EmbeddingArgs, LinearArgs, MatmulArgs, PlusOneArgs,
    ReduceArgs, RmsNormArgs, SamplingArgs, SliceArgs, TopkArgs, UnaryArgs, UnaryOp,
};
use ttnn_sys as sys;
use ttnn_sys::{
    ttnn_c_compute_kernel_config, ttnn_c_core_coord, ttnn_c_core_range, ttnn_c_device,
    ttnn_c_layernorm_program_config, ttnn_c_matmul_program_config, ttnn_c_memory_config,
    ttnn_c_sdpa_program_config, ttnn_c_tensor,
};

use crate::convert::{self, OptOut, Out};
use crate::handles;
use crate::status::{Failure, Res, guard, invalid};

type OutTensor = *mut *mut ttnn_c_tensor;

// ---------------------------------------------------------------------------------------------
// Matmul, norm, embedding

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_linear(
    a: *const ttnn_c_tensor,
    b: *const ttnn_c_tensor,
    bias: *const ttnn_c_tensor,
    transpose_a: u8,
    transpose_b: u8,
    memory_config: *const ttnn_c_memory_config,
    dtype: *const u32,
    program_config: *const ttnn_c_matmul_program_config,
    activation: u32,
    compute_kernel_config: *const ttnn_c_compute_kernel_config,
    core_grid: *const ttnn_c_core_coord,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_linear", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable and every optional struct pointer is
        // NULL or readable.
        let (out, memory_config, dtype, program_config, compute_kernel_config, core_grid) = unsafe {
            (
                Out::new(out, "out")?,
                convert::opt_memory_config(memory_config)?,
                convert::opt_dtype(dtype)?,
                convert::opt_matmul_program_config(program_config)?,
                convert::opt_compute_kernel_config(compute_kernel_config)?,
                convert::opt_core(core_grid),
            )
        };
        let (a, b) = (handles::tensor(a, "a")?, handles::tensor(b, "b")?);
        let bias = handles::opt_tensor(bias, "bias")?;
        let args = LinearArgs {
            bias: bias.as_ref(),
            transpose_a: transpose_a != 0,
            transpose_b: transpose_b != 0,
            memory_config,
            dtype,
            program_config,
            activation: convert::activation(activation)?,
            compute_kernel_config,
            core_grid,
        };
        out.set(handles::new_tensor(ttnn::linear(&a, &b, &args)?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_matmul(
    a: *const ttnn_c_tensor,
    b: *const ttnn_c_tensor,
    transpose_a: u8,
    transpose_b: u8,
    memory_config: *const ttnn_c_memory_config,
    dtype: *const u32,
    program_config: *const ttnn_c_matmul_program_config,
    activation: u32,
    compute_kernel_config: *const ttnn_c_compute_kernel_config,
    core_grid: *const ttnn_c_core_coord,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_matmul", || {
        // SAFETY: as in ttnn_c_linear.
        let (out, memory_config, dtype, program_config, compute_kernel_config, core_grid) = unsafe {
            (
                Out::new(out, "out")?,
                convert::opt_memory_config(memory_config)?,
                convert::opt_dtype(dtype)?,
                convert::opt_matmul_program_config(program_config)?,
                convert::opt_compute_kernel_config(compute_kernel_config)?,
                convert::opt_core(core_grid),
            )
        };
        let (a, b) = (handles::tensor(a, "a")?, handles::tensor(b, "b")?);
        let args = MatmulArgs {
            transpose_a: transpose_a != 0,
            transpose_b: transpose_b != 0,
            memory_config,
            dtype,
            program_config,
            activation: convert::activation(activation)?,
            compute_kernel_config,
            core_grid,
        };
        out.set(handles::new_tensor(ttnn::matmul(&a, &b, &args)?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_rms_norm(
    input: *const ttnn_c_tensor,
    epsilon: f32,
    weight: *const ttnn_c_tensor,
    bias: *const ttnn_c_tensor,
    residual_input_tensor: *const ttnn_c_tensor,
    memory_config: *const ttnn_c_memory_config,
    program_config: *const ttnn_c_layernorm_program_config,
    compute_kernel_config: *const ttnn_c_compute_kernel_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_rms_norm", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable and every optional struct pointer is
        // NULL or readable.
        let (out, memory_config, program_config, compute_kernel_config) = unsafe {
            (
                Out::new(out, "out")?,
                convert::opt_memory_config(memory_config)?,
                convert::opt_layernorm_program_config(program_config)?,
                convert::opt_compute_kernel_config(compute_kernel_config)?,
            )
        };
        let input = handles::tensor(input, "input")?;
        let weight = handles::opt_tensor(weight, "weight")?;
        let bias = handles::opt_tensor(bias, "bias")?;
        let residual = handles::opt_tensor(residual_input_tensor, "residual_input_tensor")?;
        let args = RmsNormArgs {
            epsilon,
            weight: weight.as_ref(),
            bias: bias.as_ref(),
            residual_input_tensor: residual.as_ref(),
            memory_config,
            program_config,
            compute_kernel_config,
        };
        out.set(handles::new_tensor(ttnn::rms_norm(&input, &args)?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_embedding(
    input_ids: *const ttnn_c_tensor,
    weight: *const ttnn_c_tensor,
    padding_idx: *const u32,
    layout: *const u32,
    embeddings_type: u32,
    dtype: *const u32,
    memory_config: *const ttnn_c_memory_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_embedding", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable; the optional pointers are NULL or
        // readable.
        let (out, padding_idx, layout, dtype, memory_config) = unsafe {
            (
                Out::new(out, "out")?,
                convert::opt(padding_idx),
                convert::opt(layout),
                convert::opt_dtype(dtype)?,
                convert::opt_memory_config(memory_config)?,
            )
        };
        let ids = handles::tensor(input_ids, "input_ids")?;
        let weight = handles::tensor(weight, "weight")?;
        let args = EmbeddingArgs {
            padding_idx,
            layout: layout.map(convert::layout).transpose()?,
            embeddings_type: convert::embeddings_type(embeddings_type)?,
            dtype,
            memory_config,
        };
        out.set(handles::new_tensor(ttnn::embedding(&ids, &weight, &args)?));
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Elementwise

fn binary_args(
    dtype: Option<ttnn::DataType>,
    memory_config: Option<ttnn::MemoryConfig>,
    activations: Vec<UnaryOp>,
) -> BinaryArgs {
    BinaryArgs {
        memory_config,
        dtype,
        input_tensor_a_activations: activations,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_binary(
    op: u32,
    a: *const ttnn_c_tensor,
    b: *const ttnn_c_tensor,
    dtype: *const u32,
    memory_config: *const ttnn_c_memory_config,
    input_tensor_a_activations: *const u32,
    num_activations: u32,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_binary", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable, the optional pointers are NULL or
        // readable, and the activations array holds `num_activations` entries.
        let (out, dtype, memory_config, acts) = unsafe {
            (
                Out::new(out, "out")?,
                convert::opt_dtype(dtype)?,
                convert::opt_memory_config(memory_config)?,
                convert::unary_ops(
                    input_tensor_a_activations,
                    num_activations,
                    "input_tensor_a_activations",
                )?,
            )
        };
        let (a, b) = (handles::tensor(a, "a")?, handles::tensor(b, "b")?);
        let args = binary_args(dtype, memory_config, acts);
        let r = match op {
            sys::TTNN_C_BINARY_ADD => ttnn::add(&a, &b, &args),
            sys::TTNN_C_BINARY_SUBTRACT => ttnn::subtract(&a, &b, &args),
            sys::TTNN_C_BINARY_MULTIPLY => ttnn::multiply(&a, &b, &args),
            _ => return Err(invalid(format!("unknown binary op {op}"))),
        }?;
        out.set(handles::new_tensor(r));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_binary_scalar(
    op: u32,
    a: *const ttnn_c_tensor,
    b: f32,
    dtype: *const u32,
    memory_config: *const ttnn_c_memory_config,
    input_tensor_a_activations: *const u32,
    num_activations: u32,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_binary_scalar", || {
        // SAFETY: as in ttnn_c_binary.
        let (out, dtype, memory_config, acts) = unsafe {
            (
                Out::new(out, "out")?,
                convert::opt_dtype(dtype)?,
                convert::opt_memory_config(memory_config)?,
                convert::unary_ops(
                    input_tensor_a_activations,
                    num_activations,
                    "input_tensor_a_activations",
                )?,
            )
        };
        let a = handles::tensor(a, "a")?;
        let args = binary_args(dtype, memory_config, acts);
        let r = match op {
            sys::TTNN_C_BINARY_ADD => ttnn::add_scalar(&a, b, &args),
            sys::TTNN_C_BINARY_SUBTRACT => ttnn::subtract_scalar(&a, b, &args),
            sys::TTNN_C_BINARY_MULTIPLY => ttnn::multiply_scalar(&a, b, &args),
            _ => return Err(invalid(format!("unknown binary op {op}"))),
        }?;
        out.set(handles::new_tensor(r));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_unary(
    op: u32,
    input: *const ttnn_c_tensor,
    memory_config: *const ttnn_c_memory_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_unary", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable, `memory_config` NULL or readable.
        let (out, memory_config) = unsafe {
            (
                Out::new(out, "out")?,
                convert::opt_memory_config(memory_config)?,
            )
        };
        let x = handles::tensor(input, "input")?;
        let args = UnaryArgs {
            memory_config,
            dtype: None,
        };
        let f = match convert::unary_op(op)? {
            UnaryOp::Relu => ttnn::relu,
            UnaryOp::Square => ttnn::square,
            UnaryOp::Neg => ttnn::neg,
            UnaryOp::Silu => ttnn::silu,
            UnaryOp::Exp => ttnn::exp,
            UnaryOp::Abs => ttnn::abs,
            UnaryOp::Reciprocal => ttnn::reciprocal,
            UnaryOp::Round => ttnn::round,
        };
        out.set(handles::new_tensor(f(&x, &args)?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_unary_chain(
    input: *const ttnn_c_tensor,
    ops: *const u32,
    num_ops: u32,
    memory_config: *const ttnn_c_memory_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_unary_chain", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable, `ops` holds `num_ops` entries,
        // `memory_config` is NULL or readable.
        let (out, chain, memory_config) = unsafe {
            (
                Out::new(out, "out")?,
                convert::unary_ops(ops, num_ops, "ops")?,
                convert::opt_memory_config(memory_config)?,
            )
        };
        if chain.is_empty() {
            return Err(invalid("unary_chain needs at least one op"));
        }
        let x = handles::tensor(input, "input")?;
        let args = UnaryArgs {
            memory_config,
            dtype: None,
        };
        out.set(handles::new_tensor(ttnn::unary_chain(&x, &chain, &args)?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_clamp(
    input: *const ttnn_c_tensor,
    min: f32,
    max: f32,
    memory_config: *const ttnn_c_memory_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_clamp", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable, `memory_config` NULL or readable.
        let (out, memory_config) = unsafe {
            (
                Out::new(out, "out")?,
                convert::opt_memory_config(memory_config)?,
            )
        };
        let x = handles::tensor(input, "input")?;
        let args = UnaryArgs {
            memory_config,
            dtype: None,
        };
        out.set(handles::new_tensor(ttnn::clamp(&x, min, max, &args)?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_max(
    input: *const ttnn_c_tensor,
    dim: i32,
    keepdim: u8,
    memory_config: *const ttnn_c_memory_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_max", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable, `memory_config` NULL or readable.
        let (out, memory_config) = unsafe {
            (
                Out::new(out, "out")?,
                convert::opt_memory_config(memory_config)?,
            )
        };
        let x = handles::tensor(input, "input")?;
        let args = ReduceArgs {
            keepdim: keepdim != 0,
            memory_config,
        };
        out.set(handles::new_tensor(ttnn::max(&x, dim, &args)?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_typecast(
    input: *const ttnn_c_tensor,
    dtype: u32,
    memory_config: *const ttnn_c_memory_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_typecast", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable, `memory_config` NULL or readable.
        let (out, memory_config) = unsafe {
            (
                Out::new(out, "out")?,
                convert::opt_memory_config(memory_config)?,
            )
        };
        let x = handles::tensor(input, "input")?;
        let r = ttnn::typecast(&x, convert::dtype(dtype)?, memory_config.as_ref())?;
        out.set(handles::new_tensor(r));
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Data movement

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_to_memory_config(
    input: *const ttnn_c_tensor,
    memory_config: *const ttnn_c_memory_config,
    dtype: *const u32,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_to_memory_config", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable, `memory_config` and `dtype` NULL or
        // readable.
        let (out, memory_config, dtype) = unsafe {
            (
                Out::new(out, "out")?,
                convert::req(memory_config, "memory_config")?,
                convert::opt_dtype(dtype)?,
            )
        };
        let mc = convert::memory_config(&memory_config)?;
        let x = handles::tensor(input, "input")?;
        out.set(handles::new_tensor(ttnn::to_memory_config(&x, &mc, dtype)?));
        Ok(())
    })
}

/// Steps other than 1 are not implemented by the host's `slice` (tt_transformers never uses
/// them): `TTNN_C_STATUS_UNSUPPORTED`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_slice(
    input: *const ttnn_c_tensor,
    starts: *const u32,
    ends: *const u32,
    steps: *const u32,
    rank: u32,
    memory_config: *const ttnn_c_memory_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_slice", || {
        if rank == 0 || rank > sys::TTNN_C_MAX_RANK {
            return Err(invalid(format!(
                "rank must be 1..{}, got {rank}",
                sys::TTNN_C_MAX_RANK
            )));
        }
        let n = rank as usize;
        // SAFETY: per ttnn_c.h, `out` is NULL or writable; `starts`, `ends` and (when not NULL)
        // `steps` hold `rank` entries; `memory_config` is NULL or readable.
        let (out, starts, ends, steps, memory_config) = unsafe {
            (
                Out::new(out, "out")?,
                convert::req(starts, "starts").and(convert::array(starts, n, "starts"))?,
                convert::req(ends, "ends").and(convert::array(ends, n, "ends"))?,
                if steps.is_null() {
                    &[][..]
                } else {
                    convert::array(steps, n, "steps")?
                },
                convert::opt_memory_config(memory_config)?,
            )
        };
        if let Some(s) = steps.iter().find(|&&s| s != 1) {
            return Err(Failure::Unsupported(format!(
                "step {s}: the host provider slices with step 1 only"
            )));
        }
        let x = handles::tensor(input, "input")?;
        let starts: Vec<usize> = starts.iter().map(|&v| v as usize).collect();
        let ends: Vec<usize> = ends.iter().map(|&v| v as usize).collect();
        let r = ttnn::slice(&x, &starts, &ends, &SliceArgs { memory_config })?;
        out.set(handles::new_tensor(r));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_zeros(
    shape: *const u32,
    rank: u32,
    dtype: u32,
    layout: u32,
    device: *mut ttnn_c_device,
    memory_config: *const ttnn_c_memory_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_zeros", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable, `shape` holds `rank` entries,
        // `memory_config` is NULL or readable.
        let (out, s, mc) = unsafe {
            (
                Out::new(out, "out")?,
                convert::shape(shape, rank, "shape")?,
                convert::opt_memory_config(memory_config)?,
            )
        };
        let d = handles::device(device, "device")?;
        let t = ttnn::zeros(
            s,
            convert::dtype(dtype)?,
            convert::layout(layout)?,
            &d.device,
            mc.as_ref().unwrap_or(&DRAM_MEMORY_CONFIG),
        )?;
        out.set(handles::new_tensor(t));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_copy(
    src: *const ttnn_c_tensor,
    dst: *mut ttnn_c_tensor,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_copy", || {
        // SAFETY: per ttnn_c.h, `out` is NULL (not wanted) or writable.
        let out = unsafe { OptOut::new(out) };
        let (src, dst) = (handles::tensor(src, "src")?, handles::tensor(dst, "dst")?);
        let r = ttnn::copy(&src, &dst)?;
        out.set_with(|| handles::new_tensor(r));
        Ok(())
    })
}

/// Writes three new handles, all or none.
fn set_three(
    outs: (
        Out<*mut ttnn_c_tensor>,
        Out<*mut ttnn_c_tensor>,
        Out<*mut ttnn_c_tensor>,
    ),
    (q, k, v): (ttnn::Tensor, ttnn::Tensor, ttnn::Tensor),
) {
    outs.0.set(handles::new_tensor(q));
    outs.1.set(handles::new_tensor(k));
    outs.2.set(handles::new_tensor(v));
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_nlp_create_qkv_heads_decode(
    input: *const ttnn_c_tensor,
    num_heads: u32,
    num_kv_heads: *const u32,
    overlap_qk_coregrid: *const u8,
    batch_offset: *const ttnn_c_tensor,
    slice_size: *const u32,
    memory_config: *const ttnn_c_memory_config,
    out_q: OutTensor,
    out_k: OutTensor,
    out_v: OutTensor,
) -> c_int {
    guard("ttnn_c_nlp_create_qkv_heads_decode", || {
        // SAFETY: per ttnn_c.h, the out-parameters are NULL or writable and the optional
        // pointers NULL or readable.
        let (outs, num_kv_heads, overlap, slice_size, memory_config) = unsafe {
            (
                (
                    Out::new(out_q, "out_q")?,
                    Out::new(out_k, "out_k")?,
                    Out::new(out_v, "out_v")?,
                ),
                convert::opt(num_kv_heads),
                convert::opt(overlap_qk_coregrid),
                convert::opt(slice_size),
                convert::opt_memory_config(memory_config)?,
            )
        };
        let x = handles::tensor(input, "input")?;
        let batch_offset = handles::opt_tensor(batch_offset, "batch_offset")?;
        let args = NlpCreateQkvHeadsDecodeArgs {
            num_kv_heads: num_kv_heads.map(|v| v as usize),
            // TT-NN's default is true; NULL means the default.
            overlap_qk_coregrid: Some(overlap.is_none_or(|v| v != 0)),
            batch_offset: batch_offset.as_ref(),
            slice_size: slice_size.map(|v| v as usize),
            memory_config,
        };
        let r = ttnn::experimental::nlp_create_qkv_heads_decode(&x, num_heads as usize, &args)?;
        set_three(outs, r);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_nlp_concat_heads_decode(
    input: *const ttnn_c_tensor,
    num_heads: u32,
    memory_config: *const ttnn_c_memory_config,
    sub_core_grids: *const ttnn_c_core_range,
    num_sub_core_grids: u32,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_nlp_concat_heads_decode", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable, `memory_config` NULL or readable,
        // `sub_core_grids` holds `num_sub_core_grids` entries.
        let (out, memory_config, ranges) = unsafe {
            (
                Out::new(out, "out")?,
                convert::opt_memory_config(memory_config)?,
                convert::array(
                    sub_core_grids,
                    num_sub_core_grids as usize,
                    "sub_core_grids",
                )?,
            )
        };
        let sub_core_grids = if ranges.is_empty() {
            None
        } else {
            Some(convert::core_range_set(ranges, "sub_core_grids")?)
        };
        let x = handles::tensor(input, "input")?;
        let args = NlpConcatHeadsDecodeArgs {
            memory_config,
            sub_core_grids,
        };
        let r = ttnn::experimental::nlp_concat_heads_decode(&x, num_heads as usize, &args)?;
        out.set(handles::new_tensor(r));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_nlp_create_qkv_heads(
    input: *const ttnn_c_tensor,
    input_kv: *const ttnn_c_tensor,
    num_heads: u32,
    num_kv_heads: *const u32,
    transpose_k_heads: u8,
    memory_config: *const ttnn_c_memory_config,
    out_q: OutTensor,
    out_k: OutTensor,
    out_v: OutTensor,
) -> c_int {
    guard("ttnn_c_nlp_create_qkv_heads", || {
        // SAFETY: per ttnn_c.h, the out-parameters are NULL or writable and the optional
        // pointers NULL or readable.
        let (outs, num_kv_heads, memory_config) = unsafe {
            (
                (
                    Out::new(out_q, "out_q")?,
                    Out::new(out_k, "out_k")?,
                    Out::new(out_v, "out_v")?,
                ),
                convert::opt(num_kv_heads),
                convert::opt_memory_config(memory_config)?,
            )
        };
        let x = handles::tensor(input, "input")?;
        let kv = handles::opt_tensor(input_kv, "input_kv")?;
        let args = NlpCreateQkvHeadsArgs {
            input_kv: kv.as_ref(),
            num_kv_heads: num_kv_heads.map(|v| v as usize),
            transpose_k_heads: transpose_k_heads != 0,
            memory_config,
        };
        let r = ttnn::experimental::nlp_create_qkv_heads(&x, num_heads as usize, &args)?;
        set_three(outs, r);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_nlp_concat_heads(
    input: *const ttnn_c_tensor,
    memory_config: *const ttnn_c_memory_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_nlp_concat_heads", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable, `memory_config` NULL or readable.
        let (out, memory_config) = unsafe {
            (
                Out::new(out, "out")?,
                convert::opt_memory_config(memory_config)?,
            )
        };
        let x = handles::tensor(input, "input")?;
        let r = ttnn::experimental::nlp_concat_heads(&x, memory_config.as_ref())?;
        out.set(handles::new_tensor(r));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_rotary_embedding_llama(
    input: *const ttnn_c_tensor,
    cos_cache: *const ttnn_c_tensor,
    sin_cache: *const ttnn_c_tensor,
    trans_mat: *const ttnn_c_tensor,
    is_decode_mode: u8,
    memory_config: *const ttnn_c_memory_config,
    compute_kernel_config: *const ttnn_c_compute_kernel_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_rotary_embedding_llama", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable and the optional struct pointers
        // NULL or readable.
        let (out, memory_config, compute_kernel_config) = unsafe {
            (
                Out::new(out, "out")?,
                convert::opt_memory_config(memory_config)?,
                convert::opt_compute_kernel_config(compute_kernel_config)?,
            )
        };
        let x = handles::tensor(input, "input")?;
        let cos = handles::tensor(cos_cache, "cos_cache")?;
        let sin = handles::tensor(sin_cache, "sin_cache")?;
        let trans = handles::tensor(trans_mat, "trans_mat")?;
        let args = RotaryEmbeddingLlamaArgs {
            is_decode_mode: is_decode_mode != 0,
            memory_config,
            compute_kernel_config,
        };
        let r = ttnn::experimental::rotary_embedding_llama(&x, &cos, &sin, &trans, &args)?;
        out.set(handles::new_tensor(r));
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// KV cache and attention

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_paged_update_cache(
    cache: *mut ttnn_c_tensor,
    input: *const ttnn_c_tensor,
    update_idxs: *const u32,
    num_update_idxs: u32,
    update_idxs_tensor: *const ttnn_c_tensor,
    share_cache: u8,
    page_table: *const ttnn_c_tensor,
    batch_offset: u32,
    compute_kernel_config: *const ttnn_c_compute_kernel_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_paged_update_cache", || {
        // SAFETY: per ttnn_c.h, `out` is NULL (not wanted) or writable, `update_idxs` holds
        // `num_update_idxs` entries, `compute_kernel_config` is NULL or readable.
        let (out, idxs, compute_kernel_config) = unsafe {
            (
                OptOut::new(out),
                convert::array(update_idxs, num_update_idxs as usize, "update_idxs")?,
                convert::opt_compute_kernel_config(compute_kernel_config)?,
            )
        };
        let cache = handles::tensor(cache, "cache")?;
        let input = handles::tensor(input, "input")?;
        let idx_t = handles::opt_tensor(update_idxs_tensor, "update_idxs_tensor")?;
        let page_table = handles::opt_tensor(page_table, "page_table")?;
        let args = PagedUpdateCacheArgs {
            update_idxs: idxs.to_vec(),
            update_idxs_tensor: idx_t.as_ref(),
            share_cache: share_cache != 0,
            page_table: page_table.as_ref(),
            batch_offset,
            compute_kernel_config,
        };
        let r = ttnn::experimental::paged_update_cache(&cache, &input, &args)?;
        out.set_with(|| handles::new_tensor(r));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_paged_fill_cache(
    cache: *mut ttnn_c_tensor,
    input: *const ttnn_c_tensor,
    page_table: *const ttnn_c_tensor,
    batch_idx_tensor: *const ttnn_c_tensor,
    batch_idx: u32,
    compute_kernel_config: *const ttnn_c_compute_kernel_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_paged_fill_cache", || {
        // SAFETY: per ttnn_c.h, `out` is NULL (not wanted) or writable,
        // `compute_kernel_config` NULL or readable.
        let (out, compute_kernel_config) = unsafe {
            (
                OptOut::new(out),
                convert::opt_compute_kernel_config(compute_kernel_config)?,
            )
        };
        let cache = handles::tensor(cache, "cache")?;
        let input = handles::tensor(input, "input")?;
        let page_table = handles::tensor(page_table, "page_table")?;
        let bi = handles::opt_tensor(batch_idx_tensor, "batch_idx_tensor")?;
        let args = PagedFillCacheArgs {
            batch_idx,
            batch_idx_tensor: bi.as_ref(),
            compute_kernel_config,
        };
        let r = ttnn::experimental::paged_fill_cache(&cache, &input, &page_table, &args)?;
        out.set_with(|| handles::new_tensor(r));
        Ok(())
    })
}

/// The attention ops' common optional arguments.
struct AttentionOpts {
    out: Out<*mut ttnn_c_tensor>,
    scale: Option<f32>,
    memory_config: Option<ttnn::MemoryConfig>,
    program_config: Option<ttnn::transformer::SdpaProgramConfig>,
    compute_kernel_config: Option<ttnn::ComputeKernelConfig>,
}

/// # Safety
/// Each pointer is NULL or valid as ttnn_c.h says (`out` writable, the others readable).
unsafe fn attention_opts(
    out: OutTensor,
    scale: *const f32,
    memory_config: *const ttnn_c_memory_config,
    program_config: *const ttnn_c_sdpa_program_config,
    compute_kernel_config: *const ttnn_c_compute_kernel_config,
) -> Res<AttentionOpts> {
    // SAFETY: the caller's promise.
    unsafe {
        Ok(AttentionOpts {
            out: Out::new(out, "out")?,
            scale: convert::opt(scale),
            memory_config: convert::opt_memory_config(memory_config)?,
            program_config: convert::opt_sdpa_program_config(program_config),
            compute_kernel_config: convert::opt_compute_kernel_config(compute_kernel_config)?,
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_paged_sdpa_decode(
    q: *const ttnn_c_tensor,
    k: *const ttnn_c_tensor,
    v: *const ttnn_c_tensor,
    page_table_tensor: *const ttnn_c_tensor,
    is_causal: u8,
    attn_mask: *const ttnn_c_tensor,
    cur_pos_tensor: *const ttnn_c_tensor,
    scale: *const f32,
    sliding_window_size: *const u32,
    memory_config: *const ttnn_c_memory_config,
    program_config: *const ttnn_c_sdpa_program_config,
    compute_kernel_config: *const ttnn_c_compute_kernel_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_paged_sdpa_decode", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable and the optional pointers NULL or
        // readable.
        let (o, window) = unsafe {
            (
                attention_opts(
                    out,
                    scale,
                    memory_config,
                    program_config,
                    compute_kernel_config,
                )?,
                convert::opt(sliding_window_size),
            )
        };
        let (q, k, v) = (
            handles::tensor(q, "q")?,
            handles::tensor(k, "k")?,
            handles::tensor(v, "v")?,
        );
        let pt = handles::tensor(page_table_tensor, "page_table_tensor")?;
        let mask = handles::opt_tensor(attn_mask, "attn_mask")?;
        let pos = handles::opt_tensor(cur_pos_tensor, "cur_pos_tensor")?;
        let args = PagedSdpaDecodeArgs {
            is_causal: is_causal != 0,
            attn_mask: mask.as_ref(),
            cur_pos_tensor: pos.as_ref(),
            scale: o.scale,
            sliding_window_size: window.map(|w| w as usize),
            memory_config: o.memory_config,
            program_config: o.program_config,
            compute_kernel_config: o.compute_kernel_config,
        };
        let r =
            ttnn::transformer::paged_scaled_dot_product_attention_decode(&q, &k, &v, &pt, &args)?;
        o.out.set(handles::new_tensor(r));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_sdpa_decode(
    q: *const ttnn_c_tensor,
    k: *const ttnn_c_tensor,
    v: *const ttnn_c_tensor,
    is_causal: u8,
    attn_mask: *const ttnn_c_tensor,
    cur_pos: *const u32,
    num_cur_pos: u32,
    cur_pos_tensor: *const ttnn_c_tensor,
    scale: *const f32,
    sliding_window_size: *const u32,
    memory_config: *const ttnn_c_memory_config,
    program_config: *const ttnn_c_sdpa_program_config,
    compute_kernel_config: *const ttnn_c_compute_kernel_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_sdpa_decode", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable, `cur_pos` holds `num_cur_pos`
        // entries, and the optional pointers are NULL or readable.
        let (o, window, positions) = unsafe {
            (
                attention_opts(
                    out,
                    scale,
                    memory_config,
                    program_config,
                    compute_kernel_config,
                )?,
                convert::opt(sliding_window_size),
                convert::array(cur_pos, num_cur_pos as usize, "cur_pos")?,
            )
        };
        let (q, k, v) = (
            handles::tensor(q, "q")?,
            handles::tensor(k, "k")?,
            handles::tensor(v, "v")?,
        );
        let mask = handles::opt_tensor(attn_mask, "attn_mask")?;
        let pos = handles::opt_tensor(cur_pos_tensor, "cur_pos_tensor")?;
        let args = SdpaDecodeArgs {
            is_causal: is_causal != 0,
            attn_mask: mask.as_ref(),
            cur_pos: positions.to_vec(),
            cur_pos_tensor: pos.as_ref(),
            scale: o.scale,
            sliding_window_size: window.map(|w| w as usize),
            memory_config: o.memory_config,
            program_config: o.program_config,
            compute_kernel_config: o.compute_kernel_config,
        };
        let r = ttnn::transformer::scaled_dot_product_attention_decode(&q, &k, &v, &args)?;
        o.out.set(handles::new_tensor(r));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_sdpa(
    q: *const ttnn_c_tensor,
    k: *const ttnn_c_tensor,
    v: *const ttnn_c_tensor,
    attn_mask: *const ttnn_c_tensor,
    is_causal: u8,
    scale: *const f32,
    sliding_window_size: *const u32,
    memory_config: *const ttnn_c_memory_config,
    program_config: *const ttnn_c_sdpa_program_config,
    compute_kernel_config: *const ttnn_c_compute_kernel_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_sdpa", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable and the optional pointers NULL or
        // readable.
        let (o, window) = unsafe {
            (
                attention_opts(
                    out,
                    scale,
                    memory_config,
                    program_config,
                    compute_kernel_config,
                )?,
                convert::opt(sliding_window_size),
            )
        };
        let (q, k, v) = (
            handles::tensor(q, "q")?,
            handles::tensor(k, "k")?,
            handles::tensor(v, "v")?,
        );
        let mask = handles::opt_tensor(attn_mask, "attn_mask")?;
        let args = SdpaArgs {
            attn_mask: mask.as_ref(),
            is_causal: is_causal != 0,
            scale: o.scale,
            sliding_window_size: window.map(|w| w as usize),
            memory_config: o.memory_config,
            program_config: o.program_config,
            compute_kernel_config: o.compute_kernel_config,
        };
        let r = ttnn::transformer::scaled_dot_product_attention(&q, &k, &v, &args)?;
        o.out.set(handles::new_tensor(r));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_chunked_sdpa(
    q: *const ttnn_c_tensor,
    k: *const ttnn_c_tensor,
    v: *const ttnn_c_tensor,
    page_table_tensor: *const ttnn_c_tensor,
    chunk_start_idx: i64,
    scale: *const f32,
    memory_config: *const ttnn_c_memory_config,
    program_config: *const ttnn_c_sdpa_program_config,
    compute_kernel_config: *const ttnn_c_compute_kernel_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_chunked_sdpa", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable and the optional pointers NULL or
        // readable.
        let o = unsafe {
            attention_opts(
                out,
                scale,
                memory_config,
                program_config,
                compute_kernel_config,
            )
        }?;
        let start = usize::try_from(chunk_start_idx)
            .map_err(|_| invalid(format!("chunk_start_idx {chunk_start_idx} is negative")))?;
        let (q, k, v) = (
            handles::tensor(q, "q")?,
            handles::tensor(k, "k")?,
            handles::tensor(v, "v")?,
        );
        let pt = handles::tensor(page_table_tensor, "page_table_tensor")?;
        let args = ChunkedSdpaArgs {
            scale: o.scale,
            memory_config: o.memory_config,
            program_config: o.program_config,
            compute_kernel_config: o.compute_kernel_config,
        };
        let r =
            ttnn::transformer::chunked_scaled_dot_product_attention(&q, &k, &v, &pt, start, &args)?;
        o.out.set(handles::new_tensor(r));
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Sampling

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_argmax(
    input: *const ttnn_c_tensor,
    dim: *const i32,
    keepdim: u8,
    use_multicore: u8,
    memory_config: *const ttnn_c_memory_config,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_argmax", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable, `dim` and `memory_config` NULL or
        // readable.
        let (out, dim, memory_config) = unsafe {
            (
                Out::new(out, "out")?,
                convert::opt(dim),
                convert::opt_memory_config(memory_config)?,
            )
        };
        let x = handles::tensor(input, "input")?;
        let args = ArgmaxArgs {
            dim,
            keepdim: keepdim != 0,
            use_multicore: use_multicore != 0,
            memory_config,
        };
        out.set(handles::new_tensor(ttnn::argmax(&x, &args)?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_topk(
    input: *const ttnn_c_tensor,
    k: u32,
    dim: i32,
    largest: u8,
    sorted: u8,
    memory_config: *const ttnn_c_memory_config,
    indices_tensor: *const ttnn_c_tensor,
    out_values: OutTensor,
    out_indices: OutTensor,
) -> c_int {
    guard("ttnn_c_topk", || {
        // SAFETY: per ttnn_c.h, the out-parameters are NULL or writable, `memory_config` NULL
        // or readable.
        let (ov, oi, memory_config) = unsafe {
            (
                Out::new(out_values, "out_values")?,
                Out::new(out_indices, "out_indices")?,
                convert::opt_memory_config(memory_config)?,
            )
        };
        let x = handles::tensor(input, "input")?;
        let idx = handles::opt_tensor(indices_tensor, "indices_tensor")?;
        let args = TopkArgs {
            dim,
            largest: largest != 0,
            sorted: sorted != 0,
            memory_config,
            indices_tensor: idx.as_ref(),
        };
        let (values, indices) = ttnn::topk(&x, k, &args)?;
        ov.set(handles::new_tensor(values));
        oi.set(handles::new_tensor(indices));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_sampling(
    input_values: *const ttnn_c_tensor,
    input_indices: *const ttnn_c_tensor,
    k: *const ttnn_c_tensor,
    p: *const ttnn_c_tensor,
    temp: *const ttnn_c_tensor,
    seed: *const u32,
    output_tensor: *mut ttnn_c_tensor,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_sampling", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable, `seed` NULL or readable.
        let (out, seed) = unsafe { (OptOut::new(out), convert::opt(seed)) };
        if output_tensor.is_null() && !out.wanted() {
            return Err(invalid("out is NULL (required without output_tensor)"));
        }
        let values = handles::tensor(input_values, "input_values")?;
        let indices = handles::tensor(input_indices, "input_indices")?;
        let (k, p, temp) = (
            handles::tensor(k, "k")?,
            handles::tensor(p, "p")?,
            handles::tensor(temp, "temp")?,
        );
        let dst = handles::opt_tensor(output_tensor, "output_tensor")?;
        let args = SamplingArgs {
            seed,
            output_tensor: dst.as_ref(),
            ..SamplingArgs::default()
        };
        let r = ttnn::sampling(&values, &indices, &k, &p, &temp, &args)?;
        out.set_with(|| handles::new_tensor(r));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_plus_one(
    input: *mut ttnn_c_tensor,
    skip_negative_entries: u8,
    out: OutTensor,
) -> c_int {
    guard("ttnn_c_plus_one", || {
        // SAFETY: per ttnn_c.h, `out` is NULL (not wanted) or writable.
        let out = unsafe { OptOut::new(out) };
        let x = handles::tensor(input, "input")?;
        let args = PlusOneArgs {
            skip_negative_entries: skip_negative_entries != 0,
        };
        ttnn::plus_one(&x, &args)?;
        out.set_with(|| handles::new_tensor(x));
        Ok(())
    })
}
