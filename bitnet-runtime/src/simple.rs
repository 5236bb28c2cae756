//! The simple generator: one sequence, a contiguous page table, untraced decode; each token
//! chosen on the device (argmax, or top-k + `sampling`), only its id read back.

use std::time::Instant;

use bitnet_layers::{BitNetModel, DecodeInputs, KvCache, PrefillOptions};
use serde::Serialize;
use ttnn::{
    ArgmaxArgs, DRAM_MEMORY_CONFIG, DataType, Device, Layout, SamplingArgs, Tensor, TopkArgs,
};

use crate::error::{Error, Result};
use crate::sampling::{MAX_TOP_K, SamplingParams};

/// KV cache block size (positions per block).
pub const BLOCK_SIZE: usize = 32;

/// One generation request.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops after any of these ids (which is kept in the output).
    pub stop_ids: Vec<u32>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Stop,
    Length,
}

/// Timing of one request.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

/// What a request produced.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenerateOutput {
    pub ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub stats: GenerateStats,
}

fn upload<T: ttnn::Element>(
    dev: &Device,
    v: &[T],
    shape: &[usize],
    dtype: DataType,
) -> Result<Tensor> {
    Ok(Tensor::from_slice(v, shape, dtype, Layout::RowMajor)?
        .to_device(dev, &DRAM_MEMORY_CONFIG)?)
}

/// Chooses one token per row of `logits` `[1, 1, B, V]` on the device.
pub fn select_tokens(
    dev: &Device,
    logits: &Tensor,
    params: &[SamplingParams],
    positions: &[i32],
) -> Result<Vec<u32>> {
    let b = logits.shape().dim(-2);
    if params.iter().all(SamplingParams::is_greedy) {
        let ids = ttnn::argmax(
            logits,
            &ArgmaxArgs {
                dim: Some(-1),
                ..Default::default()
            },
        )?;
        return Ok(ids.to_vec::<u32>()?);
    }
    let (vals, idx) = ttnn::topk(logits, MAX_TOP_K, &TopkArgs::default())?;
    let (mut k, mut p, mut t, mut seeds) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for s in params {
        let (kk, pp, tt) = s.device_values();
        k.push(kk);
        p.push(pp);
        t.push(tt);
        seeds.push(s.seed);
    }
    let k = upload(dev, &k, &[b], DataType::Uint32)?;
    let p = upload(dev, &p, &[b], DataType::Float32)?;
    let t = upload(dev, &t, &[b], DataType::Float32)?;
    let seeds = upload(dev, &seeds, &[b], DataType::Uint32)?;
    let offsets = upload(dev, positions, &[b], DataType::Int32)?;
    let out = ttnn::sampling(
        &vals,
        &idx,
        &k,
        &p,
        &t,
        &SamplingArgs {
            user_seeds: Some(&seeds),
            user_offsets: Some(&offsets),
            ..Default::default()
        },
    )?;
    Ok(out.to_vec::<u32>()?)
}

/// Generates up to `max_new_tokens` after the prompt.
pub fn generate(model: &BitNetModel, req: &GenerateRequest) -> Result<GenerateOutput> {
    req.sampling.validate()?;
    let n = req.prompt_ids.len();
    if n == 0 {
        return Err(Error::InvalidRequest("the prompt is empty".into()));
    }
    if req.max_new_tokens == 0 {
        return Err(Error::InvalidRequest(
            "max_new_tokens must be at least 1".into(),
        ));
    }
    let total = n + req.max_new_tokens;
    if total > model.max_seq_len() {
        return Err(Error::InvalidRequest(format!(
            "prompt ({n}) + max_new_tokens ({}) exceeds the maximum sequence length {}",
            req.max_new_tokens,
            model.max_seq_len()
        )));
    }
    let dev = model.device();
    let blocks = total.div_ceil(BLOCK_SIZE);
    let cache = KvCache::allocate(
        dev,
        model.config(),
        blocks,
        BLOCK_SIZE,
        model.plan().weights.kv_cache,
    )?;
    let table: Vec<i32> = (0..blocks as i32).collect();
    let params = [req.sampling];

    let t0 = Instant::now();
    let out = model.prefill(
        &req.prompt_ids,
        0,
        &cache,
        &table,
        PrefillOptions::default(),
    )?;
    let first = select_tokens(dev, &out.logits, &params, &[n as i32 - 1])?[0];
    let prefill_seconds = t0.elapsed().as_secs_f64();

    let mut ids = vec![first];
    let mut finish = FinishReason::Length;
    let page_table = upload(dev, &table, &[1, blocks], DataType::Int32)?;
    let t1 = Instant::now();
    while ids.len() < req.max_new_tokens {
        let last = *ids.last().unwrap_or(&first);
        if req.stop_ids.contains(&last) {
            finish = FinishReason::Stop;
            break;
        }
        let pos = (n + ids.len() - 1) as i32;
        let tokens = upload(dev, &[last], &[1, 1], DataType::Uint32)?;
        let cur = upload(dev, &[pos], &[1], DataType::Int32)?;
        let rot = upload(dev, &[pos as u32], &[1, 1], DataType::Uint32)?;
        let logits = model.decode(
            &DecodeInputs {
                tokens: &tokens,
                cur_pos: &cur,
                rot_idxs: &rot,
                page_table: &page_table,
            },
            &cache,
        )?;
        ids.push(select_tokens(dev, &logits, &params, &[pos])?[0]);
    }
    if ids.last().is_some_and(|t| req.stop_ids.contains(t)) {
        finish = FinishReason::Stop;
    }
    let decode_seconds = t1.elapsed().as_secs_f64();
    let decoded = ids.len() - 1;
    Ok(GenerateOutput {
        finish_reason: finish,
        stats: GenerateStats {
            prompt_tokens: n,
            generated_tokens: ids.len(),
            prefill_seconds,
            decode_seconds,
            prefill_tok_s: n as f64 / prefill_seconds.max(1e-9),
            decode_tok_s: if decoded == 0 {
                0.0
            } else {
                decoded as f64 / decode_seconds.max(1e-9)
            },
        },
        ids,
    })
}
