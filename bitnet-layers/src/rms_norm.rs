//! `RmsNorm`: `y = w * (x * rsqrt(mean(x^2) + eps))`, through `ttnn::rms_norm`, or fused into
//! the BitLinear that reads it ([`NormedInput`]).

use ttnn::ops::bitlinear::InputRmsNorm;
use ttnn::ops::norm::{RmsNormArgs, rms_norm};
use ttnn::{DRAM_MEMORY_CONFIG, DataType, Device, Layout, Tensor};

use crate::checkpoint::Weights;
use crate::error::Result;
use crate::memory_plan::OpConfig;

/// One RMSNorm layer: its gain on the device and epsilon.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
    dim: usize,
}

impl RmsNorm {
    /// From gain values (`dim` of them). The gain is stored as tt_transformers does,
    /// row-major `[1, 1, dim/32, 32]` (or `[dim]` when `dim` is not a multiple of 32), in f32:
    /// HF's fp32 model casts the bf16 checkpoint gains to f32 exactly.
    pub fn new(device: &Device, gain: &[f32], eps: f32) -> Result<Self> {
        let dim = gain.len();
        let shape: Vec<usize> = if dim.is_multiple_of(32) {
            vec![1, 1, dim / 32, 32]
        } else {
            vec![dim]
        };
        let weight =
            Tensor::from_slice(gain, shape.as_slice(), DataType::Float32, Layout::RowMajor)?
                .into_device(device, &DRAM_MEMORY_CONFIG)?;
        Ok(Self { weight, eps, dim })
    }

    /// Loads `<prefix>.weight` of shape `[dim]`.
    pub fn load(w: &Weights<'_>, device: &Device, dim: usize, eps: f32) -> Result<Self> {
        Self::new(device, &w.f32_values("weight", &[dim])?, eps)
    }

    /// Bytes of the gain.
    pub fn weight_bytes(&self) -> u64 {
        self.weight.storage_bytes().unwrap_or(0)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// `x` normalized for the BitLinear layers that read it. Where the device fuses the norm
    /// into `bitlinear` (`Device::fuses_bitlinear_input_norm`: the same bits as this op, one op
    /// and one pass over the activations fewer) it is deferred into them; otherwise it runs
    /// here, into the plan's placement, as tt_transformers runs its norms.
    pub fn for_bitlinear<'a>(&'a self, x: &'a Tensor, cfg: &OpConfig) -> Result<NormedInput<'a>> {
        if x.device().is_some_and(Device::fuses_bitlinear_input_norm) {
            Ok(NormedInput::Deferred { x, norm: self })
        } else {
            Ok(NormedInput::Ready(self.forward(x, cfg)?))
        }
    }

    /// This norm as `bitlinear`'s input norm; `memory_config` is where a Tenstorrent device
    /// would put the normalized tensor.
    pub fn as_input_norm(&self, cfg: &OpConfig) -> InputRmsNorm<'_> {
        InputRmsNorm {
            weight: Some(&self.weight),
            epsilon: self.eps,
            memory_config: Some(cfg.memory_config.clone()),
        }
    }

    /// Normalizes the last dimension of `x`, producing the plan's memory config and dtype.
    pub fn forward(&self, x: &Tensor, cfg: &OpConfig) -> Result<Tensor> {
        Ok(rms_norm(
            x,
            &RmsNormArgs {
                epsilon: self.eps,
                weight: Some(&self.weight),
                memory_config: Some(cfg.memory_config.clone()),
                compute_kernel_config: Some(cfg.compute_kernel_config),
                ..Default::default()
            },
        )?)
    }
}

/// The input of BitLinear layers that follow an RMSNorm: normalized already, or the raw tensor
/// with the norm still to apply (see [`RmsNorm::for_bitlinear`]).
#[derive(Debug)]
pub enum NormedInput<'a> {
    Ready(Tensor),
    Deferred { x: &'a Tensor, norm: &'a RmsNorm },
}

impl NormedInput<'_> {
    /// The tensor's shape (the norm keeps it).
    pub fn shape(&self) -> ttnn::Shape {
        match self {
            Self::Ready(t) => t.shape(),
            Self::Deferred { x, .. } => x.shape(),
        }
    }
}
