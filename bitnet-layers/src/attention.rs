//! `Attention`: fused QKV BitLinear, RoPE, paged KV cache, GQA attention, `attn_sub_norm`, O.
//!
//! Prefill writes the chunk's K/V into the paged cache (`paged_fill_cache`) and attends through
//! the cache (`chunked_scaled_dot_product_attention`); decode writes one position per user
//! (`paged_update_cache`) and attends through the cache too
//! (`paged_scaled_dot_product_attention_decode`). Both read the very values the cache holds and
//! share TT-NN's per-row attention routine, so a position's output is the same either way.

use ttnn::experimental::{
    NlpConcatHeadsDecodeArgs, NlpCreateQkvHeadsArgs, NlpCreateQkvHeadsDecodeArgs,
    PagedFillCacheArgs, PagedUpdateCacheArgs, RotaryEmbeddingLlamaArgs, nlp_concat_heads,
    nlp_concat_heads_decode, nlp_create_qkv_heads, nlp_create_qkv_heads_decode, paged_fill_cache,
    paged_update_cache, rotary_embedding_llama,
};
use ttnn::transformer::{
    ChunkedSdpaArgs, PagedSdpaDecodeArgs, chunked_scaled_dot_product_attention,
    paged_scaled_dot_product_attention_decode,
};
use ttnn::{DRAM_MEMORY_CONFIG, Device, Tensor};

use crate::bitlinear::BitLinear;
use crate::checkpoint::Weights;
use crate::config::BitNetConfig;
use crate::error::Result;
use crate::memory_plan::{MemoryPlan, PlanOp, Step};
use crate::rms_norm::{NormedInput, RmsNorm};
use crate::rope::RotarySetup;
use crate::ternary::TernaryWeight;

/// Per-step inputs of a decode step, all on the device (persistent trace inputs).
#[derive(Clone, Copy, Debug)]
pub struct DecodeStepInputs<'a> {
    pub device: &'a Device,
    /// Int32 `[B]`: the position each user writes and attends up to (-1: inactive user).
    pub cur_pos: &'a Tensor,
    /// Int32 `[B, max_blocks_per_seq]`.
    pub page_table: &'a Tensor,
    /// RoPE rows for this step (`RotarySetup::get_rot_mats`).
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
}

/// Per-call inputs of a prefill chunk.
#[derive(Clone, Copy, Debug)]
pub struct PrefillStepInputs<'a> {
    /// Int32 `[1, max_blocks_per_seq]`: the sequence's whole page table (attention reads it).
    pub page_table: &'a Tensor,
    /// Int32 `[1, chunk_blocks]`: the blocks this chunk fills, in order.
    pub chunk_page_table: &'a Tensor,
    /// Absolute position of the chunk's first token (a multiple of the block size).
    pub chunk_start: usize,
    /// RoPE rows for the chunk's positions, `[1, 1, S, hd]`.
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
}

/// The self-attention block of one decoder layer.
#[derive(Debug)]
pub struct Attention {
    qkv_proj: BitLinear,
    o_proj: BitLinear,
    attn_sub_norm: RmsNorm,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    scale: f32,
}

impl Attention {
    /// Loads `<prefix>.{q,k,v,o}_proj` and `attn_sub_norm`. Q and K rows are permuted for
    /// `rotary_embedding_llama`'s interleaved pairs; Q, K and V are fused into one op.
    pub fn load(w: &Weights<'_>, device: &Device, cfg: &BitNetConfig) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let mut q = TernaryWeight::load(&w.pp("q_proj"), nh * hd, h, cfg)?;
        let mut k = TernaryWeight::load(&w.pp("k_proj"), nkv * hd, h, cfg)?;
        let v = TernaryWeight::load(&w.pp("v_proj"), nkv * hd, h, cfg)?;
        q.permute_for_rope(hd);
        k.permute_for_rope(hd);
        let o = TernaryWeight::load(&w.pp("o_proj"), h, nh * hd, cfg)?;
        Ok(Self {
            qkv_proj: BitLinear::fused(device, vec![q, k, v])?,
            o_proj: BitLinear::new(device, o)?,
            attn_sub_norm: RmsNorm::load(
                &w.pp("attn_sub_norm"),
                device,
                nh * hd,
                cfg.rms_norm_eps,
            )?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            // HF's scaling = head_dim ** -0.5.
            scale: (hd as f32).powf(-0.5),
        })
    }

    /// Bytes of weights one forward pass streams.
    pub fn weight_bytes(&self) -> u64 {
        self.qkv_proj.weight_bytes()
            + self.o_proj.weight_bytes()
            + self.attn_sub_norm.weight_bytes()
    }

    fn heads_out(&self, attn: &Tensor, plan: &MemoryPlan, step: Step) -> Result<Tensor> {
        let norm_cfg = plan.op_in(step, PlanOp::AttnSubNorm);
        let x = self.attn_sub_norm.for_bitlinear(attn, norm_cfg)?;
        self.o_proj
            .forward_normed(&x, norm_cfg, plan.op_in(step, PlanOp::OProj))
    }

    /// One prefill chunk: `x` `[1, 1, S, H]` (normed), returns `[1, 1, S, H]`.
    pub fn forward_prefill(
        &self,
        x: &NormedInput<'_>,
        rope: &RotarySetup,
        (k_cache, v_cache): (&Tensor, &Tensor),
        inp: &PrefillStepInputs<'_>,
        plan: &MemoryPlan,
    ) -> Result<Tensor> {
        let step = Step::Prefill;
        let qkv = self.qkv_proj.forward_normed(
            x,
            plan.op_in(step, PlanOp::AttnNorm),
            plan.op_in(step, PlanOp::Qkv),
        )?;
        let heads = plan.op_in(step, PlanOp::CreateHeads);
        let (q, k, v) = nlp_create_qkv_heads(
            &qkv,
            self.num_heads,
            &NlpCreateQkvHeadsArgs {
                num_kv_heads: Some(self.num_kv_heads),
                transpose_k_heads: false,
                memory_config: Some(heads.memory_config.clone()),
                ..Default::default()
            },
        )?;
        drop(qkv);
        let rot = plan.op_in(step, PlanOp::Rotary);
        let rargs = RotaryEmbeddingLlamaArgs {
            is_decode_mode: false,
            memory_config: Some(rot.memory_config.clone()),
            compute_kernel_config: Some(rot.compute_kernel_config),
        };
        let q = rotary_embedding_llama(&q, inp.cos, inp.sin, rope.trans_mat_prefill(), &rargs)?;
        let k = rotary_embedding_llama(&k, inp.cos, inp.sin, rope.trans_mat_prefill(), &rargs)?;
        paged_fill_cache(
            k_cache,
            &k,
            inp.chunk_page_table,
            &PagedFillCacheArgs::default(),
        )?;
        paged_fill_cache(
            v_cache,
            &v,
            inp.chunk_page_table,
            &PagedFillCacheArgs::default(),
        )?;
        drop((k, v));
        let sdpa = plan.op_in(step, PlanOp::Sdpa);
        let attn = chunked_scaled_dot_product_attention(
            &q,
            k_cache,
            v_cache,
            inp.page_table,
            inp.chunk_start,
            &ChunkedSdpaArgs {
                scale: Some(self.scale),
                memory_config: Some(sdpa.memory_config.clone()),
                compute_kernel_config: Some(sdpa.compute_kernel_config),
                ..Default::default()
            },
        )?;
        drop(q);
        let attn = nlp_concat_heads(
            &attn,
            Some(&plan.op_in(step, PlanOp::ConcatHeads).memory_config),
        )?;
        self.heads_out(&attn, plan, step)
    }

    /// One decode step: `x` `[1, 1, B, H]` (normed), returns `[1, 1, B, H]`.
    pub fn forward_decode(
        &self,
        x: &NormedInput<'_>,
        rope: &RotarySetup,
        (k_cache, v_cache): (&Tensor, &Tensor),
        inp: &DecodeStepInputs<'_>,
        plan: &MemoryPlan,
    ) -> Result<Tensor> {
        let device = inp.device;
        let users = x.shape().dim(-2);
        let qkv =
            self.qkv_proj
                .forward_normed(x, plan.op(PlanOp::AttnNorm), plan.op(PlanOp::Qkv))?;
        let head_mc = MemoryPlan::decode_head_config(device, self.num_heads, self.head_dim, users);
        let (q, k, v) = nlp_create_qkv_heads_decode(
            &qkv,
            self.num_heads,
            &NlpCreateQkvHeadsDecodeArgs {
                num_kv_heads: Some(self.num_kv_heads),
                memory_config: Some(head_mc.clone()),
                ..Default::default()
            },
        )?;
        drop(qkv);
        let rot = plan.op(PlanOp::Rotary);
        let rargs = RotaryEmbeddingLlamaArgs {
            is_decode_mode: true,
            memory_config: None,
            compute_kernel_config: Some(rot.compute_kernel_config),
        };
        let q = rotary_embedding_llama(&q, inp.cos, inp.sin, rope.trans_mat_decode(), &rargs)?;
        let k = rotary_embedding_llama(&k, inp.cos, inp.sin, rope.trans_mat_decode(), &rargs)?;
        let upd = PagedUpdateCacheArgs {
            update_idxs_tensor: Some(inp.cur_pos),
            page_table: Some(inp.page_table),
            ..Default::default()
        };
        paged_update_cache(k_cache, &k, &upd)?;
        paged_update_cache(v_cache, &v, &upd)?;
        drop((k, v));
        let sdpa = plan.op(PlanOp::Sdpa);
        let attn = paged_scaled_dot_product_attention_decode(
            &q,
            k_cache,
            v_cache,
            inp.page_table,
            &PagedSdpaDecodeArgs {
                cur_pos_tensor: Some(inp.cur_pos),
                scale: Some(self.scale),
                memory_config: Some(if sdpa.memory_config.is_sharded() {
                    DRAM_MEMORY_CONFIG
                } else {
                    sdpa.memory_config.clone()
                }),
                compute_kernel_config: Some(sdpa.compute_kernel_config),
                ..Default::default()
            },
        )?;
        drop(q);
        // nlp_concat_heads_decode takes a height-sharded input, one user per core.
        let attn = ttnn::to_memory_config(&attn, &head_mc, None)?;
        let attn =
            nlp_concat_heads_decode(&attn, self.num_heads, &NlpConcatHeadsDecodeArgs::default())?;
        self.heads_out(&attn, plan, Step::Decode)
    }
}
