//! Host kernels for the data movement ops: whole-buffer copies (with an optional dtype
//! conversion) and the attention head split/concat gathers. With an unchanged dtype they move
//! storage words, never values through f32, so they are bit-exact for every dtype (block-float
//! heads are whole 16-value groups, copied with their shared exponents).

use std::sync::Arc;

use super::eltwise::SendPtr;
use super::{PAR_THRESHOLD, read_f32};
use crate::error::{Error, Result};
use crate::host::blockfloat::GROUP;
use crate::host::data::HostData;
use crate::host::{HostBuffer, HostCommand, HostCtx};

/// Where segment `j` of an output (its `j`-th run of `hd` values in row-major order) comes
/// from in the input's 2-D view (rows = all dims but the last).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SegMap {
    /// Head split: the output is `[A, heads, seq, hd]`; its row `(a, h, s)` is input row
    /// `a * seq + s + row_offset`, columns `(col0 + h) * hd ..`.
    Split {
        heads: usize,
        seq: usize,
        col0: usize,
        row_offset: usize,
    },
    /// Head concat: the output is `[A, 1, seq, heads * hd]`; its segment `(a, s, h)` is row
    /// `(a * src_heads + h) * seq + s` of the input `[A, src_heads, seq, hd]`.
    Concat {
        heads: usize,
        src_heads: usize,
        seq: usize,
    },
}

impl SegMap {
    /// `(input row, input column)` of output segment `j`.
    #[inline]
    fn src(&self, j: usize, hd: usize) -> (usize, usize) {
        match *self {
            Self::Split {
                heads,
                seq,
                col0,
                row_offset,
            } => {
                let s = j % seq;
                let h = (j / seq) % heads;
                let a = j / (seq * heads);
                (a * seq + s + row_offset, (col0 + h) * hd)
            }
            Self::Concat {
                heads,
                src_heads,
                seq,
            } => {
                let h = j % heads;
                let s = (j / heads) % seq;
                let a = j / (heads * seq);
                ((a * src_heads + h) * seq + s, 0)
            }
        }
    }
}

/// Copies `n_segs` segments of `seg / unit` words from `src` (rows of `src_stride` words) into
/// consecutive runs of `dst`. `unit` is the number of values per word (1, or 16 for block-float
/// exponents). Large gathers are split over the pool by segment (disjoint output runs).
#[allow(clippy::too_many_arguments)]
fn gather<T: Copy + Send + Sync>(
    ctx: &HostCtx<'_>,
    src: &[T],
    src_stride: usize,
    dst: &mut [T],
    seg: usize,
    n_segs: usize,
    unit: usize,
    map: SegMap,
) {
    let seg_u = seg / unit;
    debug_assert_eq!(dst.len(), n_segs * seg_u);
    let one = |j: usize, d: &mut [T]| {
        let (r, c) = map.src(j, seg);
        let off = r * src_stride + c / unit;
        d.copy_from_slice(&src[off..off + seg_u]);
    };
    let threads = ctx.pool.num_threads();
    if n_segs * seg < PAR_THRESHOLD || threads == 1 || seg_u == 0 {
        for (j, d) in dst.chunks_exact_mut(seg_u.max(1)).take(n_segs).enumerate() {
            one(j, d);
        }
        return;
    }
    let base = SendPtr(dst.as_mut_ptr());
    ctx.pool.for_ranges(n_segs, threads * 4, &|range| {
        for j in range {
            // SAFETY: segment `j` is the run `[j * seg_u, (j + 1) * seg_u)` of `dst`; the
            // ranges of `j` are disjoint across tasks and `dst` outlives the region.
            let d = unsafe { std::slice::from_raw_parts_mut(base.get().add(j * seg_u), seg_u) };
            one(j, d);
        }
    });
}

/// Gathers head segments of `seg` values from `src` (rows of `src_w` values) into `dst`, whose
/// storage type must equal `src`'s. Returns false (doing nothing) for storage it cannot move
/// exactly: ternary, or block floats whose segments are not whole 16-value groups.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gather_data(
    ctx: &HostCtx<'_>,
    src: &HostData,
    src_w: usize,
    dst: &mut HostData,
    seg: usize,
    n_segs: usize,
    map: SegMap,
) -> bool {
    match (src, dst) {
        (HostData::F32(s), HostData::F32(d)) => gather(ctx, s, src_w, d, seg, n_segs, 1, map),
        (HostData::Bf16(s), HostData::Bf16(d)) => gather(ctx, s, src_w, d, seg, n_segs, 1, map),
        (HostData::U32(s), HostData::U32(d)) => gather(ctx, s, src_w, d, seg, n_segs, 1, map),
        (HostData::I32(s), HostData::I32(d)) => gather(ctx, s, src_w, d, seg, n_segs, 1, map),
        (HostData::U16(s), HostData::U16(d)) => gather(ctx, s, src_w, d, seg, n_segs, 1, map),
        (HostData::U8(s), HostData::U8(d)) => gather(ctx, s, src_w, d, seg, n_segs, 1, map),
        (HostData::Block(s), HostData::Block(d))
            if s.format == d.format && seg.is_multiple_of(GROUP) && s.row_len == src_w =>
        {
            // Rows are padded to whole groups; segments start on group boundaries because
            // every column offset is a multiple of `seg`.
            let groups = s.row_len.div_ceil(GROUP);
            gather(
                ctx,
                &s.mants,
                groups * GROUP,
                &mut d.mants,
                seg,
                n_segs,
                1,
                map,
            );
            gather(ctx, &s.exps, groups, &mut d.exps, seg, n_segs, GROUP, map);
        }
        _ => return false,
    }
    true
}

/// `dst[((b * heads + h) * hd + d) * seq + s] = src[(b * seq + s) * src_w + (col0 + h) * hd + d]`:
/// the split of K heads transposed to `[B, heads, hd, seq]`.
#[allow(clippy::too_many_arguments)]
fn transpose_heads<T: Copy>(
    src: &[T],
    src_w: usize,
    dst: &mut [T],
    batch: usize,
    heads: usize,
    seq: usize,
    hd: usize,
    col0: usize,
) {
    for b in 0..batch {
        for h in 0..heads {
            for d in 0..hd {
                let out = &mut dst[((b * heads + h) * hd + d) * seq..][..seq];
                for (s, o) in out.iter_mut().enumerate() {
                    *o = src[(b * seq + s) * src_w + (col0 + h) * hd + d];
                }
            }
        }
    }
}

/// Copies `src` into `dst` (same number of elements). Same storage type: a word-for-word copy;
/// integer to integer: a C-style cast; otherwise through f32, rounded to `dst`'s precision.
/// No allocation (`scratch` is reserved by the caller when `src` is not f32).
pub(crate) fn copy_data(src: &HostData, dst: &mut HostData, scratch: &mut Vec<f32>) {
    match (src, &mut *dst) {
        (HostData::F32(s), HostData::F32(d)) => d.copy_from_slice(s),
        (HostData::Bf16(s), HostData::Bf16(d)) => d.copy_from_slice(s),
        (HostData::U32(s), HostData::U32(d)) => d.copy_from_slice(s),
        (HostData::I32(s), HostData::I32(d)) => d.copy_from_slice(s),
        (HostData::U16(s), HostData::U16(d)) => d.copy_from_slice(s),
        (HostData::U8(s), HostData::U8(d)) => d.copy_from_slice(s),
        (HostData::Block(s), HostData::Block(d))
            if s.format == d.format && s.row_len == d.row_len =>
        {
            d.exps.copy_from_slice(&s.exps);
            d.mants.copy_from_slice(&s.mants);
        }
        (HostData::Ternary(s), HostData::Ternary(d))
            if s.row_len == d.row_len && s.layout == d.layout =>
        {
            d.packed.copy_from_slice(&s.packed);
            d.neg.copy_from_slice(&s.neg);
        }
        _ => {
            if !src.cast_ints_into(dst) {
                let x = read_f32(src, scratch);
                dst.store_f32(x);
            }
        }
    }
}

/// Copies one buffer into another (`to_memory_config`, `copy`, re-encoding reshapes).
pub(crate) struct CopyCmd {
    pub src: Arc<HostBuffer>,
    pub dst: Arc<HostBuffer>,
    pub scratch: Vec<f32>,
}

impl HostCommand for CopyCmd {
    fn run(&mut self, _ctx: &HostCtx<'_>) -> Result<()> {
        let src = self.src.read();
        let mut dst = self.dst.write();
        copy_data(&src, &mut dst, &mut self.scratch);
        Ok(())
    }
}

/// Where a decode head split takes its first user from (`batch_offset` tensor).
pub(crate) struct BatchOffset {
    pub buffer: Arc<HostBuffer>,
    /// Users in the input; `offset + batch` must not exceed it.
    pub input_users: usize,
}

/// `nlp_create_qkv_heads` / `nlp_create_qkv_heads_decode`: splits `[Q heads | K heads | V heads]`
/// columns into per-head rows.
pub(crate) struct CreateHeadsCmd {
    pub op: &'static str,
    pub input: Arc<HostBuffer>,
    /// Separate `[K heads | V heads]` input (prefill's `input_kv`).
    pub input_kv: Option<Arc<HostBuffer>>,
    pub q: Arc<HostBuffer>,
    pub k: Arc<HostBuffer>,
    pub v: Arc<HostBuffer>,
    /// Outer dim of the outputs (users in decode, batch in prefill).
    pub batch: usize,
    /// Rows per outer index (1 in decode, the sequence length in prefill).
    pub seq: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Row widths of `input` and `input_kv`.
    pub input_w: usize,
    pub kv_w: usize,
    pub transpose_k: bool,
    pub batch_offset: Option<BatchOffset>,
    /// f32 scratch for a transposed K in block-float storage.
    pub s_in: Vec<f32>,
    pub s_out: Vec<f32>,
}

impl CreateHeadsCmd {
    fn row_offset(&self) -> Result<usize> {
        let Some(bo) = &self.batch_offset else {
            return Ok(0);
        };
        let off: i64 = match &*bo.buffer.read() {
            HostData::U32(v) => i64::from(v[0]),
            HostData::I32(v) => i64::from(v[0]),
            other => unreachable!("batch_offset stored as {:?}", other.dtype()),
        };
        if off < 0 || off as usize + self.batch > bo.input_users {
            return Err(Error::arg(
                self.op,
                format!(
                    "batch_offset {off} + slice_size {} exceeds the {} users of the input",
                    self.batch, bo.input_users
                ),
            ));
        }
        Ok(off as usize)
    }
}

impl HostCommand for CreateHeadsCmd {
    fn run(&mut self, ctx: &HostCtx<'_>) -> Result<()> {
        let row_offset = self.row_offset()?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let (batch, seq) = (self.batch, self.seq);
        let g_in = self.input.read();
        let g_kv_own;
        let (kv, kv_w, k_col0): (&HostData, usize, usize) = match &self.input_kv {
            Some(b) if !Arc::ptr_eq(b, &self.input) => {
                g_kv_own = b.read();
                (&g_kv_own, self.kv_w, 0)
            }
            Some(_) => (&g_in, self.kv_w, 0),
            None => (&g_in, self.input_w, nh),
        };
        let split = |heads: usize, col0: usize| SegMap::Split {
            heads,
            seq,
            col0,
            row_offset,
        };
        let moved = gather_data(
            ctx,
            &g_in,
            self.input_w,
            &mut self.q.write(),
            hd,
            batch * nh * seq,
            split(nh, 0),
        ) && gather_data(
            ctx,
            kv,
            kv_w,
            &mut self.v.write(),
            hd,
            batch * nkv * seq,
            split(nkv, k_col0 + nkv),
        );
        debug_assert!(moved, "validation admits only exactly movable storage");
        let mut k = self.k.write();
        if !self.transpose_k {
            let moved = gather_data(
                ctx,
                kv,
                kv_w,
                &mut k,
                hd,
                batch * nkv * seq,
                split(nkv, k_col0),
            );
            debug_assert!(moved, "validation admits only exactly movable storage");
            return Ok(());
        }
        match (kv, &mut *k) {
            (HostData::F32(s), HostData::F32(d)) => {
                transpose_heads(s, kv_w, d, batch, nkv, seq, hd, k_col0)
            }
            (HostData::Bf16(s), HostData::Bf16(d)) => {
                transpose_heads(s, kv_w, d, batch, nkv, seq, hd, k_col0)
            }
            (src, dst) => {
                // Block floats regroup when transposed (as on a TT device, whose faces change):
                // decode, transpose, re-encode.
                let x = read_f32(src, &mut self.s_in);
                self.s_out.clear();
                self.s_out.resize(batch * nkv * hd * seq, 0.0);
                transpose_heads(x, kv_w, &mut self.s_out, batch, nkv, seq, hd, k_col0);
                dst.store_f32(&self.s_out);
            }
        }
        Ok(())
    }
}

/// `nlp_concat_heads` / `nlp_concat_heads_decode`: per-head rows back into columns.
pub(crate) struct ConcatHeadsCmd {
    pub input: Arc<HostBuffer>,
    pub out: Arc<HostBuffer>,
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub src_heads: usize,
    pub head_dim: usize,
}

impl HostCommand for ConcatHeadsCmd {
    fn run(&mut self, ctx: &HostCtx<'_>) -> Result<()> {
        let src = self.input.read();
        let mut out = self.out.write();
        let map = SegMap::Concat {
            heads: self.heads,
            src_heads: self.src_heads,
            seq: self.seq,
        };
        let n_segs = self.batch * self.seq * self.heads;
        let moved = gather_data(
            ctx,
            &src,
            self.head_dim,
            &mut out,
            self.head_dim,
            n_segs,
            map,
        );
        debug_assert!(moved, "validation admits only exactly movable storage");
        Ok(())
    }
}

/// `slice`: copies the sub-block `start .. start + out_dims` of the input.
pub(crate) struct SliceCmd {
    pub input: Arc<HostBuffer>,
    pub out: Arc<HostBuffer>,
    pub rank: usize,
    pub in_strides: [usize; crate::types::MAX_RANK],
    pub start: [usize; crate::types::MAX_RANK],
    pub out_dims: [usize; crate::types::MAX_RANK],
    /// Block-float/ternary only: the input and output through f32.
    pub sin: Vec<f32>,
    pub sout: Vec<f32>,
}

impl SliceCmd {
    /// Calls `f(input offset, output offset, run length)` for every contiguous run.
    fn runs(&self, mut f: impl FnMut(usize, usize, usize)) {
        let rank = self.rank;
        if rank == 0 {
            f(0, 0, 1);
            return;
        }
        let width = self.out_dims[rank - 1];
        let rows: usize = self.out_dims[..rank - 1].iter().product();
        for r in 0..rows {
            let (mut rem, mut off) = (r, self.start[rank - 1]);
            for d in (0..rank - 1).rev() {
                let i = rem % self.out_dims[d];
                rem /= self.out_dims[d];
                off += (i + self.start[d]) * self.in_strides[d];
            }
            f(off, r * width, width);
        }
    }
}

fn copy_runs<T: Copy>(cmd: &SliceCmd, src: &[T], dst: &mut [T]) {
    cmd.runs(|i, o, n| dst[o..o + n].copy_from_slice(&src[i..i + n]));
}

impl HostCommand for SliceCmd {
    fn run(&mut self, _ctx: &HostCtx<'_>) -> Result<()> {
        let g = self.input.read();
        let mut out = self.out.write();
        match (&*g, &mut *out) {
            (HostData::F32(s), HostData::F32(d)) => copy_runs(self, s, d),
            (HostData::Bf16(s), HostData::Bf16(d)) => copy_runs(self, s, d),
            (HostData::U32(s), HostData::U32(d)) => copy_runs(self, s, d),
            (HostData::I32(s), HostData::I32(d)) => copy_runs(self, s, d),
            (HostData::U16(s), HostData::U16(d)) => copy_runs(self, s, d),
            (HostData::U8(s), HostData::U8(d)) => copy_runs(self, s, d),
            (src, dst) => {
                let mut sin = std::mem::take(&mut self.sin);
                let mut sout = std::mem::take(&mut self.sout);
                let x = read_f32(src, &mut sin);
                sout.clear();
                let total: usize = self.out_dims[..self.rank].iter().product();
                sout.resize(total, 0.0);
                copy_runs(self, x, &mut sout);
                dst.store_f32(&sout);
                self.sin = sin;
                self.sout = sout;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::blockfloat::{BlockFloatData, BlockFormat};
    use crate::host::pool::ThreadPool;

    #[test]
    fn split_and_concat_round_trip() {
        let pool = ThreadPool::new(2).expect("pool");
        let ctx = HostCtx {
            pool: &pool,
            isa: crate::device::HostIsa::Scalar,
        };
        // Input [2 users, 3 heads * 4 values].
        let src = HostData::F32((0..24).map(|v| v as f32).collect());
        let mut heads = HostData::F32(vec![0.0; 24]);
        let split = SegMap::Split {
            heads: 3,
            seq: 1,
            col0: 0,
            row_offset: 0,
        };
        assert!(gather_data(&ctx, &src, 12, &mut heads, 4, 6, split));
        let mut back = HostData::F32(vec![0.0; 24]);
        let concat = SegMap::Concat {
            heads: 3,
            src_heads: 3,
            seq: 1,
        };
        assert!(gather_data(&ctx, &heads, 4, &mut back, 4, 6, concat));
        assert_eq!(back, src);
    }

    #[test]
    fn block_float_segments_are_exact() {
        let pool = ThreadPool::new(1).expect("pool");
        let ctx = HostCtx {
            pool: &pool,
            isa: crate::device::HostIsa::Scalar,
        };
        let vals: Vec<f32> = (0..2 * 64).map(|v| (v as f32 * 0.37).sin()).collect();
        let src = BlockFloatData::encode(BlockFormat::Bfp8, &vals, 2, 64);
        let mut dst = HostData::Block(BlockFloatData::zeros(BlockFormat::Bfp8, 4, 32));
        let split = SegMap::Split {
            heads: 2,
            seq: 1,
            col0: 0,
            row_offset: 0,
        };
        assert!(gather_data(
            &ctx,
            &HostData::Block(src.clone()),
            64,
            &mut dst,
            32,
            4,
            split
        ));
        let d = dst.to_f32_vec();
        let s = src.decode();
        assert_eq!(&d[..32], &s[..32]);
        assert_eq!(&d[32..64], &s[32..64]);
        assert_eq!(&d[64..96], &s[64..96]);
        // Segments not made of whole groups are refused rather than re-quantized.
        let mut odd = HostData::Block(BlockFloatData::zeros(BlockFormat::Bfp8, 16, 8));
        assert!(!gather_data(
            &ctx,
            &HostData::Block(src),
            64,
            &mut odd,
            8,
            16,
            split
        ));
    }
}
