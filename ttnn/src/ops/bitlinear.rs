//! `experimental::bitlinear`: per-token int8 absmax activation quantization, ternary matmul,
//! per-tensor scale. TT-NN has no such op; it is BitNet b1.58's linear layer.
//!
//! Math (HF transformers' `ActQuant` / `act_quant`, computed in f32), per input row `x` (token):
//! ```text
//! s      = 127 / max(max_k |x[k]|, 1e-5)                     (as torch: reciprocal, then * 127)
//! q[k]   = clamp(round_half_even(x[k] * s), -128, 127)      (x[k] * s is one f32 multiply)
//! acc[n] = sum_k q[k] * t[n, k]                             (exact, i32)
//! y[n]   = acc[n] / s * weight_scale                        (Multiply: HF AutoBitLinear, 2B-4T)
//! y[n]   = acc[n] / (weight_scale * s)                      (Divide: HF BitLinear)
//! ```
//! The integer sum is exact, so a row's output does not depend on anything but that row: the op
//! is batch invariant by construction.
//!
//! Backends: the host runs one fused kernel. TT-NN has no such op, so the Tenstorrent backend
//! lowers it to stock ops (the quantization from abs, max, clamp, reciprocal, multiply, round
//! and clamp; `linear` against the weight stored as BFLOAT4_B; the scales as multiplies); see
//! [`ActivationQuant`] for skipping the quantization there.

use crate::device::{BackendImpl, Device};
use crate::error::{Error, Result};
use crate::host::kernels::bitlinear::{BitLinearCmd, InputNormCmd, QuantizeCmd};
use crate::ops::norm::{RmsNormArgs, check_affine, check_epsilon, rms_norm};
use crate::ops::{
    FLOAT_TYPES, expect_dtype, expect_layout, on_device, on_same_device, output_memory_config,
};
use crate::tensor::Tensor;
use crate::tt::{Tt, ops as tt_ops};
use crate::types::{ComputeKernelConfig, DRAM_MEMORY_CONFIG, DataType, Layout, MemoryConfig};

/// Whether [`bitlinear`] quantizes its input activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ActivationQuant {
    /// Per-token int8 absmax quantization (HF's `ActQuant`): the model's math, and the only
    /// mode of the host backend.
    #[default]
    Int8PerToken,
    /// No activation quantization: `y = (x · W^T) * scale` with the activations as they are.
    /// Tenstorrent backend only, for speed: the quantization lowers to eight elementwise and
    /// reduction ops per layer, which this mode saves, at the cost of not reproducing the
    /// model's int8 rounding (outputs differ from the reference by the quantization error,
    /// about 1/127 of each row's absmax per input). The host backend refuses it (its fused
    /// integer kernel is exact and faster than float math there).
    Skip,
}

/// How `weight_scale` enters the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum WeightScaleMode {
    /// `y = acc / s * weight_scale`: HF `AutoBitLinear` (`linear_class="autobitlinear"`, the
    /// packed 2B-4T checkpoint), where `weight_scale` = mean |W| (values much below 1).
    #[default]
    Multiply,
    /// `y = acc / (weight_scale * s)`: HF `BitLinear` (`linear_class="bitlinear"`), where
    /// `weight_scale` = 1 / mean |W| (values much above 1).
    Divide,
}

/// An RMSNorm applied to [`bitlinear`]'s input before the quantization (BitNet normalizes the
/// input of every BitLinear): `bitlinear(x, w, {input_rms_norm: n})` equals
/// `bitlinear(rms_norm(x, {epsilon: n.epsilon, weight: n.weight}), w)` bit for bit.
///
/// The host backend fuses the two: each row is normalized into scratch and quantized from there,
/// saving one op and one pass over the activations per layer (BitNet has four per decoder
/// layer). The Tenstorrent backend runs `ttnn::rms_norm` (into `memory_config`) and then the
/// op, as tt_transformers runs its norms.
#[derive(Clone, Debug)]
pub struct InputRmsNorm<'a> {
    /// Gamma, as `ttnn::rms_norm` takes it (`[1, 1, K/32, 32]` ROW_MAJOR, `[K]`, or TILE).
    pub weight: Option<&'a Tensor>,
    /// Must be finite and non-negative.
    pub epsilon: f32,
    /// Where the Tenstorrent backend puts the normalized input. Default: the input's.
    pub memory_config: Option<MemoryConfig>,
}

/// Optional arguments of [`bitlinear`].
#[derive(Clone, Debug)]
pub struct BitLinearArgs<'a> {
    /// The per-tensor weight scale (default 1.0); must be finite and non-zero.
    pub weight_scale: f32,
    /// Per-output-channel scales (Float32, `N` values, on the device), used instead of
    /// `weight_scale`: lets one op run several layers that share an input, each with its own
    /// per-tensor scale (BitNet's Q, K and V projections fused into one QKV weight).
    pub weight_scales: Option<&'a Tensor>,
    /// Default: [`WeightScaleMode::Multiply`].
    pub scale_mode: WeightScaleMode,
    /// Default: DRAM interleaved (as `ttnn::linear`, which this op replaces).
    pub memory_config: Option<MemoryConfig>,
    /// Output dtype (a float type). Default: the input's.
    pub dtype: Option<DataType>,
    /// The Tenstorrent backend's matmul settings (default: HiFi2 with fp32 accumulation, under
    /// which the int8 x ternary sums are exact); the host's integer math does not depend on it.
    pub compute_kernel_config: Option<ComputeKernelConfig>,
    /// Default: [`ActivationQuant::Int8PerToken`].
    pub activation_quant: ActivationQuant,
    /// An RMSNorm of the input to run first (default: none).
    pub input_rms_norm: Option<InputRmsNorm<'a>>,
}

impl Default for BitLinearArgs<'_> {
    fn default() -> Self {
        Self {
            weight_scale: 1.0,
            weight_scales: None,
            scale_mode: WeightScaleMode::Multiply,
            memory_config: None,
            dtype: None,
            compute_kernel_config: None,
            activation_quant: ActivationQuant::Int8PerToken,
            input_rms_norm: None,
        }
    }
}

/// Optional arguments of [`quantize_activations_int8`].
#[derive(Clone, Debug, Default)]
pub struct QuantizeActivationsArgs {
    /// Memory config of both outputs. Default: the input's.
    pub memory_config: Option<MemoryConfig>,
}

/// The activation dtypes the quantizer reads (it computes in f32, as HF's `ActQuant` does).
const INPUT_TYPES: &[DataType] = &[DataType::Float32, DataType::Bfloat16];

/// Checks `input` and returns its device and `K`.
fn check_input<'a>(op: &'static str, input: &'a Tensor) -> Result<(&'a Device, usize)> {
    let device = on_device(op, "input", input)?;
    expect_dtype(op, "input", input, INPUT_TYPES)?;
    expect_layout(op, "input", input, Layout::Tile)?;
    if input.shape().rank() == 0 || input.shape().last() == 0 {
        return Err(Error::shape(
            op,
            "input",
            "[..., M, K] with K > 0",
            input.shape(),
        ));
    }
    Ok((device, input.shape().last()))
}

/// BitNet b1.58's linear layer: `y = dequant(int8(input) · ternary(weight)^T)` (see the module
/// docs for the exact math). The op name is `ttnn::experimental::bitlinear`.
///
/// - `input`: `[..., M, K]`, Float32 or Bfloat16, TILE, on the device. Quantized per row in f32.
///   Host note: HF's `BitLinear` class quantizes in the model dtype (bf16 rounding of `s` and
///   `x * s` in a bf16 model); this op always quantizes in f32, which is HF's behaviour for f32
///   models and for `AutoBitLinear` in any dtype.
/// - `weight`: DataType::Ternary, TILE, on the same device, logical shape `[N, K]` = `[out_features,
///   in_features]`, like torch's `F.linear` weight (not pre-transposed as tt_transformers stores
///   its bf16 weights); leading dims of 1 are allowed (`[1, 1, N, K]`).
/// - `args.weight_scales`: optional per-output scales `[N]` (Float32) replacing `weight_scale`.
/// - `args.input_rms_norm`: an RMSNorm of the input to apply first (see [`InputRmsNorm`]).
/// - Output: `[..., M, N]`, dtype `args.dtype` or the input's (float types), TILE, memory config
///   `args.memory_config` or DRAM interleaved.
pub fn bitlinear(input: &Tensor, weight: &Tensor, args: &BitLinearArgs<'_>) -> Result<Tensor> {
    let op = "ttnn::experimental::bitlinear";
    let (device, k) = check_input(op, input)?;
    on_same_device(op, "weight", device, weight)?;
    if weight.dtype() != DataType::Ternary {
        return Err(Error::dtype(op, "weight", weight.dtype(), "Ternary"));
    }
    expect_layout(op, "weight", weight, Layout::Tile)?;
    let ws = weight.shape();
    let leading_ones = ws.rank() >= 2 && ws.dims()[..ws.rank() - 2].iter().all(|&d| d == 1);
    if !leading_ones || ws.last() != k || ws.dim(-2) == 0 {
        return Err(Error::shape(
            op,
            "weight",
            format!("[N, {k}] (out_features x in_features, K = the input's last dim)"),
            ws,
        ));
    }
    let n = ws.dim(-2);
    if !args.weight_scale.is_finite() || args.weight_scale == 0.0 {
        return Err(Error::arg(
            op,
            format!(
                "weight_scale must be finite and non-zero, got {}",
                args.weight_scale
            ),
        ));
    }
    if let Some(t) = args.weight_scales {
        on_same_device(op, "weight_scales", device, t)?;
        expect_dtype(op, "weight_scales", t, &[DataType::Float32])?;
        if t.shape().volume() != n {
            return Err(Error::shape(
                op,
                "weight_scales",
                format!("{n} values (one per output)"),
                t.shape(),
            ));
        }
    }
    let dtype = args.dtype.unwrap_or(input.dtype());
    if !FLOAT_TYPES.contains(&dtype) {
        return Err(Error::dtype(
            op,
            "the output",
            dtype,
            format!("{FLOAT_TYPES:?}"),
        ));
    }
    if let Some(norm) = &args.input_rms_norm {
        check_epsilon(op, "input_rms_norm.epsilon", norm.epsilon)?;
        check_affine(op, device, "input_rms_norm.weight", norm.weight, input)?;
    }
    let out_shape = input.shape().with_last(n);
    let requested = args.memory_config.clone().unwrap_or(DRAM_MEMORY_CONFIG);
    let mc = output_memory_config(op, device, Some(&requested), input, out_shape, Layout::Tile)?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            let normed = match &args.input_rms_norm {
                Some(norm) => Some(rms_norm(
                    input,
                    &RmsNormArgs {
                        epsilon: norm.epsilon,
                        weight: norm.weight,
                        memory_config: norm.memory_config.clone(),
                        ..Default::default()
                    },
                )?),
                None => None,
            };
            let x = normed.as_ref().unwrap_or(input);
            return tt_ops::bitlinear(&Tt::new(tt, device), op, x, weight, n, args);
        }
    };
    if args.activation_quant == ActivationQuant::Skip {
        return Err(Error::NotSupported {
            op,
            what: "activation_quant = Skip".into(),
            backend: "host",
        });
    }
    let weight_scales = match args.weight_scales {
        Some(t) => Some(t.host_buffer(op, "weight_scales")?.clone()),
        None => None,
    };
    let input_norm = match &args.input_rms_norm {
        Some(norm) => Some(InputNormCmd {
            gamma: match norm.weight {
                Some(g) => Some(g.host_buffer(op, "input_rms_norm.weight")?.clone()),
                None => None,
            },
            epsilon: norm.epsilon,
            round_bf16: input.dtype() == DataType::Bfloat16,
            s_gamma: Vec::with_capacity(match norm.weight {
                Some(g) if g.dtype() != DataType::Float32 => g.shape().volume(),
                _ => 0,
            }),
            normed: Vec::with_capacity(input.shape().rows() * k),
        }),
        None => None,
    };
    let out = Tensor::allocate(device, op, out_shape, dtype, Layout::Tile, &mc)?;
    let rows = input.shape().rows();
    let weight_buffer = weight.host_buffer(op, "weight")?;
    crate::host::kernels::bitlinear::reserve_tables(
        &host.pool,
        host.isa,
        &weight_buffer.read(),
        rows,
        k,
    );
    host.submit(BitLinearCmd {
        input_norm,
        input: input.host_buffer(op, "input")?.clone(),
        weight: weight_buffer.clone(),
        out: out.host_buffer(op, "output")?.clone(),
        rows,
        k,
        n,
        weight_scale: args.weight_scale,
        weight_scales,
        mode: args.scale_mode,
        sx: Vec::with_capacity(if input.dtype() == DataType::Float32 {
            0
        } else {
            rows * k
        }),
        q: Vec::with_capacity(rows * crate::host::kernels::bitlinear::act_row_len(k)),
        scales: Vec::with_capacity(rows),
        qsums: Vec::with_capacity(rows),
        so: Vec::with_capacity(if dtype == DataType::Float32 {
            0
        } else {
            rows * n
        }),
    })?;
    Ok(out)
}

/// The activation half of [`bitlinear`] on its own (`ttnn::experimental::quantize_activations_int8`),
/// so that the int8 codes and scales can be checked: returns `(q, s)` with `q` Int32 of the
/// input's shape and `s = 127 / max(absmax, 1e-5)` Float32 of shape `[..., M, 1]`, both TILE.
/// It runs the very quantization function `bitlinear` uses.
pub fn quantize_activations_int8(
    input: &Tensor,
    args: &QuantizeActivationsArgs,
) -> Result<(Tensor, Tensor)> {
    let op = "ttnn::experimental::quantize_activations_int8";
    let (device, k) = check_input(op, input)?;
    let shape = input.shape();
    let s_shape = shape.with_last(1);
    let q_mc = output_memory_config(
        op,
        device,
        args.memory_config.as_ref(),
        input,
        shape,
        Layout::Tile,
    )?;
    let s_mc = output_memory_config(
        op,
        device,
        args.memory_config.as_ref(),
        input,
        s_shape,
        Layout::Tile,
    )?;
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            return tt_ops::quantize_activations_int8(&Tt::new(tt, device), op, input, args);
        }
    };
    let q = Tensor::allocate(device, op, shape, DataType::Int32, Layout::Tile, &q_mc)?;
    let s = Tensor::allocate(device, op, s_shape, DataType::Float32, Layout::Tile, &s_mc)?;
    let rows = shape.rows();
    host.submit(QuantizeCmd {
        input: input.host_buffer(op, "input")?.clone(),
        q_out: q.host_buffer(op, "q")?.clone(),
        s_out: s.host_buffer(op, "scale")?.clone(),
        rows,
        k,
        sx: Vec::with_capacity(if input.dtype() == DataType::Float32 {
            0
        } else {
            rows * k
        }),
        qrow: Vec::with_capacity(k),
    })?;
    Ok((q, s))
}
