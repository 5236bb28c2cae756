//! `BitNetModel`: embedding, decoder layers, final norm and the tied lm_head, loaded from a
//! Hugging Face checkpoint directory and run through `ttnn` ops only.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use safetensors::Dtype;
use ttnn::{
    DRAM_MEMORY_CONFIG, DataType, Device, EmbeddingArgs, Layout, LinearArgs, SliceArgs, Tensor,
};

use crate::attention::{DecodeStepInputs, PrefillStepInputs};
use crate::checkpoint::{Checkpoint, Weights, check_shape, to_f32};
use crate::config::BitNetConfig;
use crate::decoder::DecoderLayer;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::memory_plan::{MemoryPlan, PlanOp, PlanOptions, Step};
use crate::rms_norm::RmsNorm;
use crate::rope::RotarySetup;

/// How to build a model.
#[derive(Clone, Debug, Default)]
pub struct ModelOptions {
    pub plan: PlanOptions,
    /// Longest sequence (RoPE table rows); default `max_position_embeddings`.
    pub max_seq_len: Option<usize>,
}

/// The persistent device inputs of a decode step (refreshed in place between trace replays).
#[derive(Clone, Copy, Debug)]
pub struct DecodeInputs<'a> {
    /// Uint32 `[1, B]`, row-major: the token each user feeds.
    pub tokens: &'a Tensor,
    /// Int32 `[B]`, row-major: each user's position (-1: inactive).
    pub cur_pos: &'a Tensor,
    /// Uint32 `[1, B]`, row-major: RoPE table rows (the positions, inactive users clamped to 0).
    pub rot_idxs: &'a Tensor,
    /// Int32 `[B, max_blocks_per_seq]`, row-major.
    pub page_table: &'a Tensor,
}

/// What a prefill returns.
#[derive(Debug)]
pub struct PrefillOutput {
    /// `[1, 1, S, V]` for every position, or `[1, 1, 1, V]` for the last one.
    pub logits: Tensor,
    /// With `hidden_states`: `L + 1` tensors `[1, 1, S, H]`: the embedding output, each layer's
    /// output, and (last) the final-norm output, as HF's `output_hidden_states` lays them out.
    pub hidden_states: Vec<Tensor>,
}

/// What to compute in a prefill.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrefillOptions {
    /// Logits for every position (else only the last).
    pub all_logits: bool,
    /// Keep the per-layer hidden states.
    pub hidden_states: bool,
}

/// BitNet b1.58 on a `ttnn` device.
#[derive(Debug)]
pub struct BitNetModel {
    cfg: BitNetConfig,
    device: Device,
    plan: MemoryPlan,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    rope: RotarySetup,
}

/// A float checkpoint tensor as a host tensor of `dtype`: bf16 checkpoint bytes convert row
/// by row (no f32 copy of the whole tensor); a bf16 table kept as bf16 row-major borrows the
/// mapped checkpoint without a copy when it is aligned.
fn float_tensor(
    ckpt: &Checkpoint,
    name: &str,
    shape: &[usize],
    dtype: DataType,
    layout: Layout,
) -> Result<Tensor> {
    let t = ckpt.get(name)?;
    check_shape(name, t.shape, shape)?;
    if t.dtype == Dtype::BF16 {
        if dtype == DataType::Bfloat16 && layout == Layout::RowMajor {
            let (owner, offset) = ckpt.shared(name)?;
            if let Ok(shared) = Tensor::from_shared_bf16(owner, offset, shape, layout) {
                return Ok(shared);
            }
        }
        // Pages already converted leave resident memory as the conversion goes (the tied
        // lm_head reads the whole 656 MB table of 2B-4T once).
        return Ok(Tensor::from_bf16_bytes_with_progress(
            t.data,
            shape,
            dtype,
            layout,
            &mut |done| ckpt.release_prefix(name, done),
        )?);
    }
    Ok(Tensor::from_vec(to_f32(name, &t)?, shape, dtype, layout)?)
}

/// `load(0..n)` on every core, in order: the decoder layers are independent, and repacking
/// their two billion ternary values (2B-4T) is most of a model's load time. The result does
/// not depend on the thread count; on failure, the error is the lowest failing index's (indices
/// are handed out in order, so every one below the first failure is tried, and none is started
/// after it).
fn load_in_parallel<T: Send>(
    n: usize,
    threads: usize,
    load: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let worker = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break done;
            }
            let item = load(i);
            let failed = item.is_err();
            done.push((i, item));
            if failed {
                next.store(n, Ordering::Relaxed);
                break done;
            }
        }
    };
    let mut done = std::thread::scope(|sc| {
        let others: Vec<_> = (1..threads.min(n)).map(|_| sc.spawn(worker)).collect();
        let mut done = worker();
        for h in others {
            // A panic in a worker is re-raised here, as if the load had run on this thread.
            done.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        done
    });
    done.sort_by_key(|&(i, _)| i);
    done.into_iter().map(|(_, item)| item).collect()
}

impl BitNetModel {
    /// Loads `dir` (`config.json` and the safetensors weights) onto `device`.
    pub fn load(dir: &Path, device: &Device, opts: &ModelOptions) -> Result<Self> {
        let cfg = BitNetConfig::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        let model = Self::from_checkpoint(cfg, &ckpt, device, opts)?;
        ckpt.release_all();
        Ok(model)
    }

    /// Builds the model from a parsed config and an opened checkpoint.
    pub fn from_checkpoint(
        cfg: BitNetConfig,
        ckpt: &Checkpoint,
        device: &Device,
        opts: &ModelOptions,
    ) -> Result<Self> {
        let plan = MemoryPlan::new(&cfg, device, &opts.plan)?;
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let emb_name = "model.embed_tokens.weight";
        let emb = ckpt.get(emb_name)?;
        if emb.shape.len() != 2 || emb.shape[0] != v || emb.shape[1] != h {
            return Err(Error::InvalidConfig {
                field: "vocab_size / hidden_size".into(),
                reason: format!(
                    "config says [{v}, {h}] but {emb_name} is {:?} (vocabulary/embedding mismatch)",
                    emb.shape
                ),
            });
        }
        // The embedding table keeps the checkpoint's precision (bf16 files stay bf16, exactly).
        let emb_dtype = if emb.dtype == Dtype::BF16 {
            DataType::Bfloat16
        } else {
            DataType::Float32
        };
        let embed_tokens = float_tensor(ckpt, emb_name, &[v, h], emb_dtype, Layout::RowMajor)?
            .into_device(device, &DRAM_MEMORY_CONFIG)?;
        // Tied (2B-4T): the output projection is the embedding; HF saves no lm_head.weight.
        let head_name = if cfg.tie_word_embeddings {
            emb_name
        } else if ckpt.contains("lm_head.weight") {
            "lm_head.weight"
        } else {
            return Err(Error::MissingTensor {
                name: "lm_head.weight".into(),
                location: format!("{} (tie_word_embeddings is false)", ckpt.dir().display()),
            });
        };
        // Stored [V, H] and used with transpose_b: block-float groups run along H, the
        // reduction dimension, and each row is one vocabulary entry.
        let lm_head = float_tensor(ckpt, head_name, &[v, h], plan.weights.lm_head, Layout::Tile)?
            .into_device(device, &DRAM_MEMORY_CONFIG)?;
        // Converted: its source pages need not stay resident (embedding rows fault back in
        // one at a time when looked up).
        ckpt.release(head_name);
        let root = Weights::root(ckpt);
        let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
        let layers = load_in_parallel(cfg.num_hidden_layers, threads, |i| {
            DecoderLayer::load(&root.pp(&format!("model.layers.{i}")), device, &cfg)
        })?;
        let norm = RmsNorm::load(&root.pp("model.norm"), device, h, cfg.rms_norm_eps)?;
        let max_seq = opts.max_seq_len.unwrap_or(cfg.max_position_embeddings);
        let rope = RotarySetup::new(
            device,
            cfg.head_dim,
            max_seq,
            cfg.rope_theta,
            plan.activation_dtype,
            plan.max_batch,
        )?;
        Ok(Self {
            cfg,
            device: device.clone(),
            plan,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
        })
    }

    pub fn config(&self) -> &BitNetConfig {
        &self.cfg
    }

    pub fn plan(&self) -> &MemoryPlan {
        &self.plan
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Weight bytes one decode step streams from memory: every layer, the final norm and the
    /// lm_head (the embedding is a lookup of one row per token, not counted).
    pub fn weight_bytes_per_token(&self) -> u64 {
        self.layers
            .iter()
            .map(DecoderLayer::weight_bytes)
            .sum::<u64>()
            + self.norm.weight_bytes()
            + self.lm_head.storage_bytes().unwrap_or(0)
    }

    /// Longest sequence the RoPE tables cover.
    pub fn max_seq_len(&self) -> usize {
        self.rope.max_seq_len()
    }

    fn upload_ids(&self, ids: &[u32], shape: &[usize], dtype: DataType) -> Result<Tensor> {
        Ok(Tensor::from_slice(ids, shape, dtype, Layout::RowMajor)?
            .to_device(&self.device, &DRAM_MEMORY_CONFIG)?)
    }

    fn lm_head(&self, h: &Tensor, step: Step) -> Result<Tensor> {
        let c = self.plan.op_in(step, PlanOp::LmHead);
        Ok(ttnn::linear(
            h,
            &self.lm_head,
            &LinearArgs {
                transpose_b: true,
                memory_config: Some(c.memory_config.clone()),
                dtype: Some(c.dtype),
                compute_kernel_config: Some(c.compute_kernel_config),
                ..Default::default()
            },
        )?)
    }

    /// Prefill of `tokens` at positions `start_pos..start_pos + S` of one sequence whose
    /// blocks are `page_table` (block ids for positions `0..`, one per `kv.block_size`
    /// positions). Runs in chunks of the plan's prefill length; `start_pos` must be a multiple
    /// of the block size.
    pub fn prefill(
        &self,
        tokens: &[u32],
        start_pos: usize,
        kv: &KvCache,
        page_table: &[i32],
        opts: PrefillOptions,
    ) -> Result<PrefillOutput> {
        let s = tokens.len();
        let bs = kv.block_size;
        if s == 0 {
            return Err(Error::InvalidInput("prefill: no tokens".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.cfg.vocab_size
            )));
        }
        if !start_pos.is_multiple_of(bs) {
            return Err(Error::InvalidInput(format!(
                "prefill: start position {start_pos} is not a multiple of the block size {bs}"
            )));
        }
        let end = start_pos + s;
        if end > self.max_seq_len() {
            return Err(Error::InvalidInput(format!(
                "prefill: positions up to {end} exceed the maximum sequence length {}",
                self.max_seq_len()
            )));
        }
        if end.div_ceil(bs) > page_table.len() {
            return Err(Error::InvalidInput(format!(
                "prefill: {end} positions need {} blocks, the page table has {}",
                end.div_ceil(bs),
                page_table.len()
            )));
        }
        let table = Tensor::from_slice(
            page_table,
            [1, page_table.len()],
            DataType::Int32,
            Layout::RowMajor,
        )?
        .to_device(&self.device, &DRAM_MEMORY_CONFIG)?;
        // Chunks of whole blocks, so each chunk fills whole blocks from its start.
        let chunk = (self.plan.prefill_chunk.div_ceil(bs) * bs).max(bs);
        let mut hidden: Vec<Vec<Tensor>> = Vec::new();
        let mut logits = Vec::new();
        let mut last_h = None;
        let mut pos = start_pos;
        for part in tokens.chunks(chunk) {
            let n = part.len();
            let ids = self.upload_ids(part, &[1, n], DataType::Uint32)?;
            let positions: Vec<u32> = (pos..pos + n).map(|p| p as u32).collect();
            let positions = self.upload_ids(&positions, &[1, n], DataType::Uint32)?;
            let chunk_blocks = &page_table[pos / bs..(pos + n).div_ceil(bs)];
            let chunk_table = Tensor::from_slice(
                chunk_blocks,
                [1, chunk_blocks.len()],
                DataType::Int32,
                Layout::RowMajor,
            )?
            .to_device(&self.device, &DRAM_MEMORY_CONFIG)?;
            let (cos, sin) = self.rope.prefill_rot_mats(&positions)?;
            let inp = PrefillStepInputs {
                page_table: &table,
                chunk_page_table: &chunk_table,
                chunk_start: pos,
                cos: &cos,
                sin: &sin,
            };
            let emb = self.plan.op_in(Step::Prefill, PlanOp::Embedding);
            let x = ttnn::embedding(
                &ids,
                &self.embed_tokens,
                &EmbeddingArgs {
                    layout: Some(Layout::Tile),
                    dtype: Some(emb.dtype),
                    memory_config: Some(emb.memory_config.clone()),
                    ..Default::default()
                },
            )?;
            let mut x = ttnn::reshape(&x, [1, 1, n, self.cfg.hidden_size])?;
            let mut hs = Vec::new();
            if opts.hidden_states {
                hs.push(x.clone());
            }
            for (i, layer) in self.layers.iter().enumerate() {
                x = layer.forward_prefill(
                    &x,
                    &self.rope,
                    (&kv.k[i], &kv.v[i]),
                    &inp,
                    &self.plan,
                )?;
                if opts.hidden_states && i + 1 < self.layers.len() {
                    hs.push(x.clone());
                }
            }
            let h = self
                .norm
                .forward(&x, self.plan.op_in(Step::Prefill, PlanOp::FinalNorm))?;
            if opts.hidden_states {
                hs.push(h.clone());
                hidden.push(hs);
            }
            if opts.all_logits {
                logits.push(self.lm_head(&h, Step::Prefill)?);
            }
            last_h = Some((h, n));
            pos += n;
        }
        let logits = if opts.all_logits {
            if logits.len() == 1 {
                logits.pop().unwrap_or_else(|| unreachable!("one chunk"))
            } else {
                self.concat_rows(&logits)?
            }
        } else {
            let (h, n) = last_h.unwrap_or_else(|| unreachable!("at least one chunk"));
            let last = ttnn::slice(
                &h,
                &[0, 0, n - 1, 0],
                &[1, 1, n, self.cfg.hidden_size],
                &SliceArgs::default(),
            )?;
            self.lm_head(&last, Step::Prefill)?
        };
        let hidden_states = if hidden.len() == 1 {
            hidden.pop().unwrap_or_default()
        } else if hidden.is_empty() {
            Vec::new()
        } else {
            (0..hidden[0].len())
                .map(|l| self.concat_rows(&hidden.iter().map(|c| c[l].clone()).collect::<Vec<_>>()))
                .collect::<Result<_>>()?
        };
        Ok(PrefillOutput {
            logits,
            hidden_states,
        })
    }

    /// Stacks `[1, 1, n_i, W]` tensors along rows (host round trip; only for multi-chunk
    /// prefills that asked for every position).
    fn concat_rows(&self, parts: &[Tensor]) -> Result<Tensor> {
        let w = parts[0].shape().last();
        let mut all = Vec::new();
        for p in parts {
            all.extend(p.to_vec::<f32>()?);
        }
        let rows = all.len() / w;
        Ok(
            Tensor::from_vec(all, [1, 1, rows, w], DataType::Float32, Layout::Tile)?
                .to_device(&self.device, &DRAM_MEMORY_CONFIG)?,
        )
    }

    /// One decode step for `B` users: returns logits `[1, 1, B, V]`. Only device ops, so it can
    /// be captured in a trace and replayed after refreshing `inputs` in place.
    pub fn decode(&self, inputs: &DecodeInputs<'_>, kv: &KvCache) -> Result<Tensor> {
        let b = inputs.tokens.shape().last();
        if b == 0 || b > self.rope.max_batch() {
            return Err(Error::InvalidInput(format!(
                "decode: batch {b} is outside 1..={}",
                self.rope.max_batch()
            )));
        }
        let (cos, sin) = self.rope.get_rot_mats(&self.device, inputs.rot_idxs)?;
        let step = DecodeStepInputs {
            device: &self.device,
            cur_pos: inputs.cur_pos,
            page_table: inputs.page_table,
            cos: &cos,
            sin: &sin,
        };
        let emb = self.plan.op(PlanOp::Embedding);
        let x = ttnn::embedding(
            inputs.tokens,
            &self.embed_tokens,
            &EmbeddingArgs {
                layout: Some(Layout::Tile),
                dtype: Some(emb.dtype),
                memory_config: Some(emb.memory_config.clone()),
                ..Default::default()
            },
        )?;
        let mut x = ttnn::reshape(&x, [1, 1, b, self.cfg.hidden_size])?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward_decode(&x, &self.rope, (&kv.k[i], &kv.v[i]), &step, &self.plan)?;
        }
        let h = self.norm.forward(&x, self.plan.op(PlanOp::FinalNorm))?;
        self.lm_head(&h, Step::Decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Later indices finish first (each sleeps less), yet the items come back in order, and
    /// the error is the lowest failing index's, with any number of threads.
    #[test]
    fn parallel_load_keeps_order_and_the_first_error() {
        let slow_first = |i: usize| std::thread::sleep(Duration::from_millis(3 * (8 - i as u64)));
        for threads in [1, 2, 3, 8] {
            let got = load_in_parallel(8, threads, |i| {
                slow_first(i);
                Ok(i)
            })
            .expect("no failure");
            assert_eq!(got, (0..8).collect::<Vec<_>>(), "{threads} threads");
            let err = load_in_parallel(8, threads, |i| {
                slow_first(i);
                if i == 2 || i == 3 {
                    return Err(Error::InvalidConfig {
                        field: format!("layer {i}"),
                        reason: "broken".into(),
                    });
                }
                Ok(i)
            })
            .expect_err("layers 2 and 3 fail");
            assert!(
                err.to_string().contains("layer 2"),
                "{threads} threads: {err}"
            );
        }
        assert!(load_in_parallel(0, 2, Ok).expect("empty").is_empty());
    }
}
