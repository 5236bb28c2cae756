//! `RmsNorm`: `y = w * (x * rsqrt(mean(x^2) + eps))`, through `ttnn::rms_norm`.

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
