//! `Mlp`: `down(ffn_sub_norm(relu(gate(x))^2 * up(x)))`.

use ttnn::{BinaryArgs, Device, Tensor, UnaryOp};

use crate::bitlinear::BitLinear;
use crate::checkpoint::Weights;
use crate::config::BitNetConfig;
use crate::error::Result;
use crate::memory_plan::{MemoryPlan, PlanOp, Step};
use crate::rms_norm::{NormedInput, RmsNorm};
use crate::ternary::TernaryWeight;

/// The gated relu² feed-forward block with its sub-norm.
#[derive(Debug)]
pub struct Mlp {
    gate_proj: BitLinear,
    up_proj: BitLinear,
    ffn_sub_norm: RmsNorm,
    down_proj: BitLinear,
}

impl Mlp {
    /// Loads `<prefix>.{gate_proj,up_proj,down_proj,ffn_sub_norm}`.
    pub fn load(w: &Weights<'_>, device: &Device, cfg: &BitNetConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: BitLinear::new(device, TernaryWeight::load(&w.pp("gate_proj"), i, h, cfg)?)?,
            up_proj: BitLinear::new(device, TernaryWeight::load(&w.pp("up_proj"), i, h, cfg)?)?,
            ffn_sub_norm: RmsNorm::load(&w.pp("ffn_sub_norm"), device, i, cfg.rms_norm_eps)?,
            down_proj: BitLinear::new(device, TernaryWeight::load(&w.pp("down_proj"), h, i, cfg)?)?,
        })
    }

    /// Bytes of weights one forward pass streams.
    pub fn weight_bytes(&self) -> u64 {
        self.gate_proj.weight_bytes()
            + self.up_proj.weight_bytes()
            + self.ffn_sub_norm.weight_bytes()
            + self.down_proj.weight_bytes()
    }

    /// `x` is the post-attention-normed residual stream; placements from `step`'s plan.
    pub fn forward(&self, x: &NormedInput<'_>, plan: &MemoryPlan, step: Step) -> Result<Tensor> {
        let norm_cfg = plan.op_in(step, PlanOp::FfnNorm);
        let gate = self
            .gate_proj
            .forward_normed(x, norm_cfg, plan.op_in(step, PlanOp::Gate))?;
        let up = self
            .up_proj
            .forward_normed(x, norm_cfg, plan.op_in(step, PlanOp::Up))?;
        let mul = plan.op_in(step, PlanOp::Relu2Mul);
        // relu(gate)^2 * up in one op, as tt_transformers fuses the MLP activation.
        let h = ttnn::multiply(
            &gate,
            &up,
            &BinaryArgs {
                memory_config: Some(mul.memory_config.clone()),
                dtype: Some(mul.dtype),
                input_tensor_a_activations: vec![UnaryOp::Relu, UnaryOp::Square],
            },
        )?;
        drop((gate, up));
        let norm_cfg = plan.op_in(step, PlanOp::FfnSubNorm);
        let h = self.ffn_sub_norm.for_bitlinear(&h, norm_cfg)?;
        self.down_proj
            .forward_normed(&h, norm_cfg, plan.op_in(step, PlanOp::Down))
    }
}
