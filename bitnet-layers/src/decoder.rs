//! `DecoderLayer`: pre-norm attention and MLP blocks with residual adds.

use ttnn::{BinaryArgs, Device, Tensor};

use crate::attention::{Attention, DecodeStepInputs, PrefillStepInputs};
use crate::checkpoint::Weights;
use crate::config::BitNetConfig;
use crate::error::Result;
use crate::memory_plan::{MemoryPlan, PlanOp, Step};
use crate::mlp::Mlp;
use crate::rms_norm::RmsNorm;
use crate::rope::RotarySetup;

/// One transformer block of BitNet b1.58.
#[derive(Debug)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

fn residual_add(
    x: &Tensor,
    y: &Tensor,
    plan: &MemoryPlan,
    step: Step,
    op: PlanOp,
) -> Result<Tensor> {
    let c = plan.op_in(step, op);
    Ok(ttnn::add(
        x,
        y,
        &BinaryArgs {
            memory_config: Some(c.memory_config.clone()),
            dtype: Some(c.dtype),
            ..Default::default()
        },
    )?)
}

impl DecoderLayer {
    /// Loads `model.layers.<i>`.
    pub fn load(w: &Weights<'_>, device: &Device, cfg: &BitNetConfig) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            input_layernorm: RmsNorm::load(&w.pp("input_layernorm"), device, h, eps)?,
            self_attn: Attention::load(&w.pp("self_attn"), device, cfg)?,
            post_attention_layernorm: RmsNorm::load(
                &w.pp("post_attention_layernorm"),
                device,
                h,
                eps,
            )?,
            mlp: Mlp::load(&w.pp("mlp"), device, cfg)?,
        })
    }

    /// Bytes of weights one forward pass streams.
    pub fn weight_bytes(&self) -> u64 {
        self.input_layernorm.weight_bytes()
            + self.self_attn.weight_bytes()
            + self.post_attention_layernorm.weight_bytes()
            + self.mlp.weight_bytes()
    }

    fn mlp_block(&self, x: Tensor, plan: &MemoryPlan, step: Step) -> Result<Tensor> {
        let h = self
            .post_attention_layernorm
            .for_bitlinear(&x, plan.op_in(step, PlanOp::FfnNorm))?;
        let m = self.mlp.forward(&h, plan, step)?;
        drop(h);
        residual_add(&x, &m, plan, step, PlanOp::FfnResidual)
    }

    /// One prefill chunk.
    pub fn forward_prefill(
        &self,
        x: &Tensor,
        rope: &RotarySetup,
        kv: (&Tensor, &Tensor),
        inp: &PrefillStepInputs<'_>,
        plan: &MemoryPlan,
    ) -> Result<Tensor> {
        let h = self
            .input_layernorm
            .for_bitlinear(x, plan.op_in(Step::Prefill, PlanOp::AttnNorm))?;
        let a = self.self_attn.forward_prefill(&h, rope, kv, inp, plan)?;
        drop(h);
        let x = residual_add(x, &a, plan, Step::Prefill, PlanOp::AttnResidual)?;
        self.mlp_block(x, plan, Step::Prefill)
    }

    /// One decode step.
    pub fn forward_decode(
        &self,
        x: &Tensor,
        rope: &RotarySetup,
        kv: (&Tensor, &Tensor),
        inp: &DecodeStepInputs<'_>,
        plan: &MemoryPlan,
    ) -> Result<Tensor> {
        let h = self
            .input_layernorm
            .for_bitlinear(x, plan.op(PlanOp::AttnNorm))?;
        let a = self.self_attn.forward_decode(&h, rope, kv, inp, plan)?;
        drop(h);
        let x = residual_add(x, &a, plan, Step::Decode, PlanOp::AttnResidual)?;
        self.mlp_block(x, plan, Step::Decode)
    }
}
