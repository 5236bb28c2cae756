//! `BitLinear`: BitNet b1.58's linear layer through `ttnn::experimental::bitlinear`, with the
//! weight in `DataType::Ternary` on the device. Several layers that read one input (Q, K, V)
//! can be fused into one op with per-output scales.

use ttnn::ops::bitlinear::{BitLinearArgs, WeightScaleMode, bitlinear};
use ttnn::{DRAM_MEMORY_CONFIG, DataType, Device, Layout, Tensor};

use crate::error::{Error, Result};
use crate::memory_plan::OpConfig;
use crate::rms_norm::NormedInput;
use crate::ternary::{ScaleRule, TernaryWeight};

/// A (possibly fused) ternary linear layer on the device.
#[derive(Debug)]
pub struct BitLinear {
    weight: Tensor,
    scale: f32,
    mode: WeightScaleMode,
    /// Per-output scales when several layers are fused.
    scales: Option<Tensor>,
    in_features: usize,
    out_features: usize,
}

fn mode_of(rule: ScaleRule) -> WeightScaleMode {
    match rule {
        ScaleRule::Multiply => WeightScaleMode::Multiply,
        ScaleRule::Divide => WeightScaleMode::Divide,
    }
}

impl BitLinear {
    /// One layer.
    pub fn new(device: &Device, w: TernaryWeight) -> Result<Self> {
        Self::fused(device, vec![w])
    }

    /// Layers sharing an input, stacked along the output dimension (`[Σ out, in]`): each keeps
    /// its own scale, so the outputs equal the separate layers' bit for bit.
    ///
    /// Takes the parts by value: their codes move (one part) or are copied part by part, each
    /// freed once copied, so loading holds as few transient copies as possible.
    pub fn fused(device: &Device, parts: Vec<TernaryWeight>) -> Result<Self> {
        let first = parts
            .first()
            .ok_or_else(|| Error::InvalidInput("BitLinear::fused: no layers".into()))?;
        let in_features = first.in_features;
        if parts
            .iter()
            .any(|p| p.in_features != in_features || p.rule != first.rule)
        {
            return Err(Error::InvalidInput(
                "BitLinear::fused: layers must share in_features and the scale rule".into(),
            ));
        }
        let out_features: usize = parts.iter().map(|p| p.out_features).sum();
        let (scale, mode) = (first.scale, mode_of(first.rule));
        let row_scales: Vec<f32> = parts
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.scale, p.out_features))
            .collect();
        let fused = parts.len() > 1;
        let values = if fused {
            let mut values = Vec::with_capacity(out_features * in_features);
            for p in parts {
                values.extend_from_slice(&p.values);
            }
            values
        } else {
            parts
                .into_iter()
                .next()
                .map(|p| p.values)
                .unwrap_or_default()
        };
        let weight = Tensor::from_vec(
            values,
            [out_features, in_features],
            DataType::Ternary,
            Layout::Tile,
        )?
        .into_device(device, &DRAM_MEMORY_CONFIG)?;
        let scales = if fused {
            // A [1, N] tile row: the Tenstorrent backend multiplies it into the output as a
            // row broadcast without re-tiling it at every call (the host reads any layout).
            Some(
                Tensor::from_vec(
                    row_scales,
                    [1, out_features],
                    DataType::Float32,
                    Layout::Tile,
                )?
                .into_device(device, &DRAM_MEMORY_CONFIG)?,
            )
        } else {
            None
        };
        Ok(Self {
            weight,
            scale,
            mode,
            scales,
            in_features,
            out_features,
        })
    }

    /// Bytes of weights (and scales) one forward pass streams.
    pub fn weight_bytes(&self) -> u64 {
        self.weight.storage_bytes().unwrap_or(0)
            + self
                .scales
                .as_ref()
                .and_then(Tensor::storage_bytes)
                .unwrap_or(0)
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// `x [..., in] -> [..., out]` in the plan's memory config and dtype.
    pub fn forward(&self, x: &Tensor, cfg: &OpConfig) -> Result<Tensor> {
        Ok(bitlinear(x, &self.weight, &self.args(cfg))?)
    }

    /// [`Self::forward`] of an RMSNorm's output; `norm_cfg` is the norm's plan entry.
    pub fn forward_normed(
        &self,
        x: &NormedInput<'_>,
        norm_cfg: &OpConfig,
        cfg: &OpConfig,
    ) -> Result<Tensor> {
        match x {
            NormedInput::Ready(t) => self.forward(t, cfg),
            NormedInput::Deferred { x, norm } => Ok(bitlinear(
                x,
                &self.weight,
                &BitLinearArgs {
                    input_rms_norm: Some(norm.as_input_norm(norm_cfg)),
                    ..self.args(cfg)
                },
            )?),
        }
    }

    fn args(&self, cfg: &OpConfig) -> BitLinearArgs<'_> {
        BitLinearArgs {
            weight_scale: self.scale,
            weight_scales: self.scales.as_ref(),
            scale_mode: self.mode,
            memory_config: Some(cfg.memory_config.clone()),
            dtype: Some(cfg.dtype),
            compute_kernel_config: Some(cfg.compute_kernel_config),
            ..Default::default()
        }
    }
}
