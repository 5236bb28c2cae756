//! The generator: chunked prefill into the paged cache, then batched decode steps captured once
//! per (batch bucket, sampling mode) as two traces and replayed.
//!
//! - Decode trace: embedding, every layer (paged cache write + paged attention over each
//!   sequence's whole written length, read from the positions tensor at run time), final norm,
//!   lm_head -> logits.
//! - Sampling trace ("split sampling"): argmax, or top-k + `sampling` with per-sequence seeds,
//!   writing the chosen ids straight into the token input, then `plus_one` on the positions
//!   (inactive slots at -1 stay put). Only the token ids come back to the host.
//!
//! Persistent device inputs per bucket: tokens `[1, B]`, positions `[B]` (the RoPE lookup reads
//! a `[1, B]` view of the same buffer), page table `[B, max_blocks]`, and the sampling
//! parameters. The host keeps a mirror of what the device holds and writes an input with
//! `copy_host_to_device` only when it differs (a sequence joined or left, crossed into a new
//! block, or changed parameters). Nothing about a sequence's length is captured: positions and
//! page tables are data.
//!
//! A sequence's arithmetic never depends on the other rows of the batch (the kernels compute
//! each row alone, in a fixed order), so batched decoding gives every sequence the very logits
//! it would get alone.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use bitnet_layers::{BitNetModel, DecodeInputs, PrefillOptions};
use serde::Serialize;
use ttnn::{
    ArgmaxArgs, DRAM_MEMORY_CONFIG, DataType, Device, Layout, PlusOneArgs, SamplingArgs, Tensor,
    TopkArgs, Trace, begin_trace_capture, copy_host_to_device, end_trace_capture, execute_trace,
};

use crate::error::{Error, Result};
use crate::kv::{BlockId, PagedKvCache, chain_hash};
use crate::sampling::{MAX_TOP_K, SamplingParams};
use crate::simple::{FinishReason, select_tokens};

/// Batch sizes the decode step is captured for; a batch runs in the smallest that fits.
pub const BUCKETS: [usize; 6] = [1, 2, 4, 8, 16, 32];

/// A sequence's handle.
pub type SeqId = u64;

/// How the generator is set up.
#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    /// Most sequences decoded together (≤ 32).
    pub max_batch: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// KV blocks in all; default: enough for `max_batch` sequences of the model's maximum
    /// length, capped by `kv_budget_bytes`.
    pub num_blocks: Option<usize>,
    /// Memory the KV cache may take (default 1 GiB).
    pub kv_budget_bytes: u64,
    /// Capture and replay decode traces (the tt_transformers way); off runs every step eagerly.
    pub use_traces: bool,
    /// Reuse cached full prompt blocks.
    pub prefix_sharing: bool,
    /// Keep every sequence's logits of every step (read back from the device each step: for
    /// tests and debugging, not for speed).
    pub record_logits: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            block_size: 32,
            num_blocks: None,
            kv_budget_bytes: 1 << 30,
            use_traces: true,
            prefix_sharing: true,
            record_logits: false,
        }
    }
}

/// One request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub prompt_ids: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops after any of these ids (kept in the output).
    pub stop_ids: Vec<u32>,
}

/// What a step produced for one sequence.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A new token.
    Token { seq: SeqId, token: u32 },
    /// The sequence is done (its blocks are freed).
    Finished { seq: SeqId, reason: FinishReason },
    /// The sequence failed; only it is affected.
    Failed { seq: SeqId, error: String },
}

/// Counters for `--stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GeneratorStats {
    pub prefill_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_tokens: usize,
    pub decode_seconds: f64,
    pub decode_steps: usize,
    pub trace_captures: usize,
    pub trace_replays: usize,
    pub input_refreshes: usize,
    pub kv_blocks_peak: usize,
    pub kv_blocks_shared: usize,
    pub preemptions: usize,
    pub dram_bytes_peak: u64,
    pub l1_bytes_peak: u64,
}

impl GeneratorStats {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prefill_tokens as f64 / self.prefill_seconds.max(1e-9)
    }

    pub fn decode_tok_s(&self) -> f64 {
        self.decode_tokens as f64 / self.decode_seconds.max(1e-9)
    }
}

struct Sequence {
    tokens: Vec<u32>,
    prompt_len: usize,
    max_new_tokens: usize,
    sampling: SamplingParams,
    stop_ids: Vec<u32>,
    blocks: Vec<BlockId>,
    /// Positions whose K/V are in the cache.
    cached: usize,
}

impl Sequence {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Mode {
    Greedy,
    Sample,
}

/// Host copies of what a bucket's device inputs hold.
#[derive(Clone, PartialEq)]
struct InputState {
    tokens: Vec<u32>,
    pos: Vec<i32>,
    page_table: Vec<i32>,
    k: Vec<u32>,
    p: Vec<f32>,
    temp: Vec<f32>,
    seeds: Vec<u32>,
}

struct Captured {
    decode: Trace,
    sample: Trace,
    logits: Tensor,
}

struct Bucket {
    size: usize,
    tokens: Tensor,
    pos: Tensor,
    rot: Tensor,
    page_table: Tensor,
    k: Tensor,
    p: Tensor,
    temp: Tensor,
    seeds: Tensor,
    mirror: InputState,
    traces: HashMap<Mode, Captured>,
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

fn refresh<T: ttnn::Element + PartialEq>(
    dst: &mut Tensor,
    have: &mut Vec<T>,
    want: &[T],
    shape: &[usize],
    dtype: DataType,
    count: &mut usize,
) -> Result<()> {
    if have.as_slice() != want {
        copy_host_to_device(
            &Tensor::from_slice(want, shape, dtype, Layout::RowMajor)?,
            dst,
        )?;
        have.clear();
        have.extend_from_slice(want);
        *count += 1;
    }
    Ok(())
}

impl Bucket {
    fn new(dev: &Device, size: usize, max_blocks: usize) -> Result<Self> {
        let mirror = InputState {
            tokens: vec![0; size],
            pos: vec![-1; size],
            page_table: vec![0; size * max_blocks],
            k: vec![1; size],
            p: vec![1.0; size],
            temp: vec![1.0; size],
            seeds: vec![0; size],
        };
        let pos = upload(dev, &mirror.pos, &[size], DataType::Int32)?;
        Ok(Self {
            size,
            tokens: upload(dev, &mirror.tokens, &[1, size], DataType::Uint32)?,
            rot: ttnn::reshape(&pos, [1, size])?,
            pos,
            page_table: upload(
                dev,
                &mirror.page_table,
                &[size, max_blocks],
                DataType::Int32,
            )?,
            k: upload(dev, &mirror.k, &[size], DataType::Uint32)?,
            p: upload(dev, &mirror.p, &[size], DataType::Float32)?,
            temp: upload(dev, &mirror.temp, &[size], DataType::Float32)?,
            seeds: upload(dev, &mirror.seeds, &[size], DataType::Uint32)?,
            mirror,
            traces: HashMap::new(),
        })
    }

    fn sync(&mut self, want: &InputState, max_blocks: usize, count: &mut usize) -> Result<()> {
        let b = self.size;
        let m = &mut self.mirror;
        refresh(
            &mut self.tokens,
            &mut m.tokens,
            &want.tokens,
            &[1, b],
            DataType::Uint32,
            count,
        )?;
        refresh(
            &mut self.pos,
            &mut m.pos,
            &want.pos,
            &[b],
            DataType::Int32,
            count,
        )?;
        refresh(
            &mut self.page_table,
            &mut m.page_table,
            &want.page_table,
            &[b, max_blocks],
            DataType::Int32,
            count,
        )?;
        refresh(
            &mut self.k,
            &mut m.k,
            &want.k,
            &[b],
            DataType::Uint32,
            count,
        )?;
        refresh(
            &mut self.p,
            &mut m.p,
            &want.p,
            &[b],
            DataType::Float32,
            count,
        )?;
        refresh(
            &mut self.temp,
            &mut m.temp,
            &want.temp,
            &[b],
            DataType::Float32,
            count,
        )?;
        refresh(
            &mut self.seeds,
            &mut m.seeds,
            &want.seeds,
            &[b],
            DataType::Uint32,
            count,
        )
    }

    /// The decode step's device ops: embedding to logits.
    fn decode_ops(&self, model: &BitNetModel, cache: &PagedKvCache) -> Result<Tensor> {
        Ok(model.decode(
            &DecodeInputs {
                tokens: &self.tokens,
                cur_pos: &self.pos,
                rot_idxs: &self.rot,
                page_table: &self.page_table,
            },
            &cache.tensors,
        )?)
    }

    /// The sampling step's device ops: choose ids into the token input, advance positions.
    fn sample_ops(&self, logits: &Tensor, mode: Mode) -> Result<()> {
        match mode {
            Mode::Greedy => {
                let ids = ttnn::argmax(
                    logits,
                    &ArgmaxArgs {
                        dim: Some(-1),
                        ..Default::default()
                    },
                )?;
                ttnn::copy(&ttnn::reshape(&ids, [1, self.size])?, &self.tokens)?;
            }
            Mode::Sample => {
                let (vals, idx) = ttnn::topk(logits, MAX_TOP_K, &TopkArgs::default())?;
                ttnn::sampling(
                    &vals,
                    &idx,
                    &self.k,
                    &self.p,
                    &self.temp,
                    &SamplingArgs {
                        user_seeds: Some(&self.seeds),
                        user_offsets: Some(&self.pos),
                        output_tensor: Some(&self.tokens),
                        ..Default::default()
                    },
                )?;
            }
        }
        ttnn::plus_one(
            &self.pos,
            &PlusOneArgs {
                skip_negative_entries: true,
            },
        )?;
        Ok(())
    }
}

/// The batched, traced generator over one model.
pub struct Generator<'m> {
    model: &'m BitNetModel,
    cfg: GeneratorConfig,
    cache: PagedKvCache,
    max_blocks: usize,
    seqs: BTreeMap<SeqId, Sequence>,
    waiting: VecDeque<SeqId>,
    /// Decoding sequences, in admission order.
    running: Vec<SeqId>,
    /// Slot of each running sequence in the current bucket.
    slots: Vec<Option<SeqId>>,
    buckets: HashMap<usize, Bucket>,
    next_id: SeqId,
    stats: GeneratorStats,
    logits_log: HashMap<SeqId, Vec<Vec<f32>>>,
    /// Sequences in the last decode step.
    last_batch: usize,
}

impl std::fmt::Debug for Generator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("running", &self.running.len())
            .field("waiting", &self.waiting.len())
            .field("cache", &self.cache.alloc)
            .finish()
    }
}

impl<'m> Generator<'m> {
    pub fn new(model: &'m BitNetModel, cfg: GeneratorConfig) -> Result<Self> {
        if cfg.max_batch == 0 || cfg.max_batch > 32 || cfg.max_batch > model.plan().max_batch {
            return Err(Error::InvalidRequest(format!(
                "max_batch {} must be in 1..={} (the model's plan)",
                cfg.max_batch,
                model.plan().max_batch.min(32)
            )));
        }
        let bs = cfg.block_size;
        let max_blocks = model.max_seq_len().div_ceil(bs);
        let dtype = model.plan().weights.kv_cache;
        let num_blocks = match cfg.num_blocks {
            Some(n) => n,
            None => (cfg.max_batch * max_blocks).min(PagedKvCache::blocks_for_budget(
                model,
                bs,
                dtype,
                cfg.kv_budget_bytes,
            )?),
        };
        // A page table row never needs more columns than the cache has blocks (and TT-NN
        // requires max_blocks_per_seq <= max_num_blocks).
        let max_blocks = max_blocks.min(num_blocks);
        let cache = PagedKvCache::new(model, num_blocks, bs, dtype)?;
        Ok(Self {
            model,
            cfg,
            cache,
            max_blocks,
            seqs: BTreeMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            slots: Vec::new(),
            buckets: HashMap::new(),
            next_id: 0,
            stats: GeneratorStats::default(),
            logits_log: HashMap::new(),
            last_batch: 0,
        })
    }

    pub fn stats(&self) -> GeneratorStats {
        let mut s = self.stats.clone();
        s.kv_blocks_peak = self.cache.alloc.peak_in_use();
        let r = self.model.device().memory_report();
        s.dram_bytes_peak = r.dram.peak;
        s.l1_bytes_peak = r.l1.peak;
        s
    }

    pub fn cache(&self) -> &PagedKvCache {
        &self.cache
    }

    /// Sequences waiting or decoding.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Sequences queued but not yet admitted to the decode batch (waiting for a slot or for
    /// KV blocks, or preempted).
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// How many sequences the last decode step decoded together (0 before the first).
    pub fn last_decode_batch(&self) -> usize {
        self.last_batch
    }

    /// The tokens of a live sequence (prompt and generated so far).
    pub fn tokens(&self, seq: SeqId) -> Option<&[u32]> {
        self.seqs.get(&seq).map(|s| s.tokens.as_slice())
    }

    /// The logits recorded for `seq` (with `record_logits`): one row per token it produced,
    /// the first from its prefill. Kept after the sequence finishes, until taken.
    pub fn take_logits(&mut self, seq: SeqId) -> Vec<Vec<f32>> {
        self.logits_log.remove(&seq).unwrap_or_default()
    }

    /// Queues a request. Invalid requests are refused here, affecting nothing else.
    pub fn add_request(&mut self, req: Request) -> Result<SeqId> {
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
        let vocab = self.model.config().vocab_size;
        if let Some(&bad) = req.prompt_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        let max_seq = self.model.max_seq_len();
        if n >= max_seq {
            return Err(Error::InvalidRequest(format!(
                "the prompt has {n} tokens; the context holds {max_seq} (including at least one generated token)"
            )));
        }
        let need = n
            .div_ceil(self.cfg.block_size)
            .max((n + 1).div_ceil(self.cfg.block_size));
        if need > self.cache.alloc.num_blocks() {
            return Err(Error::InvalidRequest(format!(
                "out of KV blocks: the prompt needs {need} blocks, the cache has {} in all",
                self.cache.alloc.num_blocks()
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.seqs.insert(
            id,
            Sequence {
                tokens: req.prompt_ids,
                prompt_len: n,
                max_new_tokens: req.max_new_tokens,
                sampling: req.sampling,
                stop_ids: req.stop_ids,
                blocks: Vec::new(),
                cached: 0,
            },
        );
        self.waiting.push_back(id);
        Ok(id)
    }

    /// Stops a sequence now and frees its blocks (e.g. a client went away).
    pub fn cancel(&mut self, seq: SeqId) -> bool {
        self.waiting.retain(|&s| s != seq);
        self.running.retain(|&s| s != seq);
        match self.seqs.remove(&seq) {
            Some(s) => {
                for b in s.blocks {
                    self.cache.alloc.release(b);
                }
                true
            }
            None => false,
        }
    }

    fn finish(
        &mut self,
        seq: SeqId,
        events: &mut Vec<Event>,
        outcome: std::result::Result<FinishReason, String>,
    ) {
        self.cancel(seq);
        events.push(match outcome {
            Ok(reason) => Event::Finished { seq, reason },
            Err(error) => Event::Failed { seq, error },
        });
    }

    /// Why `s` should stop after its last token, if it should.
    fn done(&self, s: &Sequence) -> Option<FinishReason> {
        let last = *s.tokens.last()?;
        if s.generated() > 0 && s.stop_ids.contains(&last) {
            Some(FinishReason::Stop)
        } else if s.generated() >= s.max_new_tokens || s.tokens.len() >= self.model.max_seq_len() {
            Some(FinishReason::Length)
        } else {
            None
        }
    }

    /// Prefills `seq` (its prompt, or after a preemption everything but the last token) and,
    /// for a fresh sequence, samples its first token. `Ok(false)`: not enough free blocks.
    fn admit(&mut self, seq: SeqId, events: &mut Vec<Event>) -> Result<bool> {
        let bs = self.cfg.block_size;
        let s = self
            .seqs
            .get(&seq)
            .ok_or_else(|| Error::InvalidRequest(format!("no sequence {seq}")))?;
        let fresh = s.generated() == 0;
        // Positions to fill: the prompt, or (resumed) all but the token fed next.
        let upto = if fresh {
            s.tokens.len()
        } else {
            s.tokens.len() - 1
        };
        let tokens = s.tokens[..upto].to_vec();
        // Shared full blocks of a cached identical prefix (keep at least one token to prefill:
        // its logits choose the next token).
        let mut shared = Vec::new();
        let mut parent = 0u64;
        if self.cfg.prefix_sharing {
            for chunk in tokens.chunks_exact(bs).take((upto - 1) / bs) {
                match self.cache.alloc.lookup(parent, chunk) {
                    Some(b) => {
                        shared.push(b);
                        parent = chain_hash(parent, chunk);
                    }
                    None => break,
                }
            }
        }
        let total = upto.div_ceil(bs).max((upto + 1).div_ceil(bs));
        if total - shared.len() > self.cache.alloc.available() {
            return Ok(false);
        }
        let mut blocks = Vec::with_capacity(total);
        for &b in &shared {
            self.cache.alloc.retain(b);
            blocks.push(b);
        }
        while blocks.len() < upto.div_ceil(bs) {
            match self.cache.alloc.allocate() {
                Some(b) => blocks.push(b),
                None => unreachable!("availability checked above"),
            }
        }
        self.stats.kv_blocks_shared += shared.len();
        let start = shared.len() * bs;
        let table: Vec<i32> = blocks.iter().map(|&b| b as i32).collect();
        let t0 = Instant::now();
        let out = self.model.prefill(
            &tokens[start..],
            start,
            &self.cache.tensors,
            &table,
            PrefillOptions::default(),
        );
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                for b in blocks {
                    self.cache.alloc.release(b);
                }
                return Err(e.into());
            }
        };
        // Register the full blocks this prompt wrote, for later sequences to share.
        if self.cfg.prefix_sharing {
            let mut parent = parent;
            for (i, chunk) in tokens.chunks_exact(bs).enumerate().skip(shared.len()) {
                self.cache.alloc.register(parent, chunk, blocks[i]);
                parent = chain_hash(parent, chunk);
            }
        }
        let s = self
            .seqs
            .get_mut(&seq)
            .ok_or_else(|| Error::InvalidRequest(format!("no sequence {seq}")))?;
        s.blocks = blocks;
        s.cached = upto;
        if fresh {
            if self.cfg.record_logits {
                self.logits_log
                    .entry(seq)
                    .or_default()
                    .push(out.logits.to_vec::<f32>()?);
            }
            let s = self
                .seqs
                .get_mut(&seq)
                .ok_or_else(|| Error::InvalidRequest(format!("no sequence {seq}")))?;
            let params = [s.sampling];
            let token = select_tokens(
                self.model.device(),
                &out.logits,
                &params,
                &[upto as i32 - 1],
            )?[0];
            s.tokens.push(token);
            events.push(Event::Token { seq, token });
        }
        self.stats.prefill_tokens += upto - start;
        self.stats.prefill_seconds += t0.elapsed().as_secs_f64();
        Ok(true)
    }

    /// Admits waiting sequences while there is room.
    fn admit_waiting(&mut self, events: &mut Vec<Event>) {
        while self.running.len() < self.cfg.max_batch {
            let Some(&seq) = self.waiting.front() else {
                break;
            };
            match self.admit(seq, events) {
                Ok(true) => {
                    self.waiting.pop_front();
                    let done = self.seqs.get(&seq).and_then(|s| self.done(s));
                    match done {
                        Some(reason) => self.finish(seq, events, Ok(reason)),
                        None => self.running.push(seq),
                    }
                }
                Ok(false) if self.running.is_empty() => {
                    // Nothing will free blocks: this sequence cannot run.
                    self.waiting.pop_front();
                    self.finish(seq, events, Err("out of KV blocks for the prompt".into()));
                }
                Ok(false) => break,
                Err(e) => {
                    self.waiting.pop_front();
                    self.finish(seq, events, Err(e.to_string()));
                }
            }
        }
    }

    /// Makes sure every running sequence has a block for the position it writes next,
    /// preempting the most recently admitted sequences when the cache is full.
    fn reserve_blocks(&mut self, events: &mut Vec<Event>) {
        let bs = self.cfg.block_size;
        let mut i = 0;
        while i < self.running.len() {
            let seq = self.running[i];
            let Some(s) = self.seqs.get(&seq) else {
                i += 1;
                continue;
            };
            let write_pos = s.tokens.len() - 1;
            if write_pos / bs < s.blocks.len() {
                i += 1;
                continue;
            }
            if let Some(b) = self.cache.alloc.allocate() {
                if let Some(s) = self.seqs.get_mut(&seq) {
                    s.blocks.push(b);
                }
                i += 1;
                continue;
            }
            // Preempt the youngest other sequence (recomputed later: prefill and decode give
            // the same bits, so its output does not change), or fail this one if it is alone.
            let victim = *self.running.last().unwrap_or(&seq);
            if victim == seq && self.running.len() == 1 {
                self.finish(seq, events, Err("out of KV blocks".into()));
                continue;
            }
            self.running.pop();
            if let Some(v) = self.seqs.get_mut(&victim) {
                for b in std::mem::take(&mut v.blocks) {
                    self.cache.alloc.release(b);
                }
                v.cached = 0;
            }
            self.waiting.push_front(victim);
            self.stats.preemptions += 1;
            // Retry this sequence (or stop if it was the victim).
        }
    }

    /// Slots for the running sequences: stable while the bucket fits, compacted otherwise.
    fn assign_slots(&mut self) -> usize {
        let n = self.running.len();
        let bucket = *BUCKETS.iter().find(|&&b| b >= n).unwrap_or(&32);
        if self.slots.len() != bucket {
            self.slots = vec![None; bucket];
        }
        for slot in self.slots.iter_mut() {
            if slot.is_some_and(|s| !self.running.contains(&s)) {
                *slot = None;
            }
        }
        for &seq in &self.running {
            if !self.slots.contains(&Some(seq))
                && let Some(free) = self.slots.iter_mut().find(|s| s.is_none())
            {
                *free = Some(seq);
            }
        }
        bucket
    }

    fn wanted_inputs(&self, bucket: usize) -> InputState {
        let mb = self.max_blocks;
        let mut w = InputState {
            tokens: vec![0; bucket],
            pos: vec![-1; bucket],
            page_table: vec![0; bucket * mb],
            k: vec![1; bucket],
            p: vec![1.0; bucket],
            temp: vec![1.0; bucket],
            seeds: vec![0; bucket],
        };
        for (slot, seq) in self.slots.iter().enumerate() {
            let Some(s) = seq.and_then(|id| self.seqs.get(&id)) else {
                continue;
            };
            w.tokens[slot] = *s.tokens.last().unwrap_or(&0);
            w.pos[slot] = (s.tokens.len() - 1) as i32;
            for (j, &b) in s.blocks.iter().enumerate() {
                w.page_table[slot * mb + j] = b as i32;
            }
            let (k, p, t) = s.sampling.device_values();
            (w.k[slot], w.p[slot], w.temp[slot]) = (k, p, t);
            w.seeds[slot] = s.sampling.seed;
        }
        w
    }

    /// One decode step for every running sequence (after admitting waiting ones).
    pub fn step(&mut self) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        self.admit_waiting(&mut events);
        self.reserve_blocks(&mut events);
        if self.running.is_empty() {
            return Ok(events);
        }
        self.last_batch = self.running.len();
        let bucket = self.assign_slots();
        let mode = if self
            .running
            .iter()
            .filter_map(|s| self.seqs.get(s))
            .all(|s| s.sampling.is_greedy())
        {
            Mode::Greedy
        } else {
            Mode::Sample
        };
        let want = self.wanted_inputs(bucket);
        let dev = self.model.device().clone();
        let t0 = Instant::now();
        if !self.buckets.contains_key(&bucket) {
            self.buckets
                .insert(bucket, Bucket::new(&dev, bucket, self.max_blocks)?);
        }
        let b = self
            .buckets
            .get_mut(&bucket)
            .unwrap_or_else(|| unreachable!("inserted above"));
        b.sync(&want, self.max_blocks, &mut self.stats.input_refreshes)?;
        let mut recorded = None;
        match b.traces.get(&mode) {
            Some(c) => {
                execute_trace(&dev, &c.decode, 0, false)?;
                if self.cfg.record_logits {
                    recorded = Some(c.logits.to_vec::<f32>()?);
                }
                execute_trace(&dev, &c.sample, 0, true)?;
                self.stats.trace_replays += 1;
            }
            None => {
                // The first step of a (bucket, mode) runs eagerly (TT-NN's compile run), then
                // both halves are captured; later steps replay them.
                let logits = b.decode_ops(self.model, &self.cache)?;
                if self.cfg.record_logits {
                    recorded = Some(logits.to_vec::<f32>()?);
                }
                b.sample_ops(&logits, mode)?;
                drop(logits);
                if self.cfg.use_traces {
                    let tid = begin_trace_capture(&dev, 0)?;
                    let logits = b.decode_ops(self.model, &self.cache);
                    let decode = end_trace_capture(&dev, tid, 0)?;
                    let logits = logits?;
                    let tid = begin_trace_capture(&dev, 0)?;
                    let sampled = b.sample_ops(&logits, mode);
                    let sample = end_trace_capture(&dev, tid, 0)?;
                    sampled?;
                    b.traces.insert(
                        mode,
                        Captured {
                            decode,
                            sample,
                            logits,
                        },
                    );
                    self.stats.trace_captures += 1;
                }
            }
        }
        let ids = b.tokens.to_vec::<u32>()?;
        // Mirror what the sampling step did on the device.
        b.mirror.tokens.clone_from(&ids);
        for p in b.mirror.pos.iter_mut().filter(|p| **p >= 0) {
            *p += 1;
        }
        self.stats.decode_seconds += t0.elapsed().as_secs_f64();
        self.stats.decode_steps += 1;
        let slots = self.slots.clone();
        let vocab = self.model.config().vocab_size;
        for (slot, seq) in slots.iter().enumerate() {
            let Some(seq) = *seq else { continue };
            if let Some(all) = &recorded {
                self.logits_log
                    .entry(seq)
                    .or_default()
                    .push(all[slot * vocab..(slot + 1) * vocab].to_vec());
            }
            let token = ids[slot];
            let done = match self.seqs.get_mut(&seq) {
                Some(s) => {
                    s.tokens.push(token);
                    s.cached += 1;
                    self.stats.decode_tokens += 1;
                    events.push(Event::Token { seq, token });
                    self.seqs.get(&seq).and_then(|s| self.done(s))
                }
                None => None,
            };
            if let Some(reason) = done {
                self.finish(seq, &mut events, Ok(reason));
            }
        }
        Ok(events)
    }

    /// Runs until every queued sequence has finished; returns all events in order.
    pub fn run(&mut self) -> Result<Vec<Event>> {
        let mut all = Vec::new();
        while self.has_work() {
            all.extend(self.step()?);
        }
        Ok(all)
    }
}
