//! Host kernels for matrix multiplication: `linear` and `matmul` (f32, bf16, bfp8_b and bfp4_b
//! weights).
//!
//! Two loops, chosen by how B is stored:
//! - `transpose_b` (B stored `[N, K]`, e.g. the tied-embedding lm_head): every stored row of B is
//!   one output column's K weights, so each output element is one dot product of an A row with a
//!   B row (`dense_dot`: SIMD, decoding block-float groups on the fly, two A rows per pass over
//!   the B row). Parallel over N.
//! - otherwise (B stored `[K, N]`): an axpy loop over K for a band of output columns, decoding one
//!   band of each B row at a time. Parallel over (batch, band).
//!
//! Each output element's arithmetic is fixed (which products, in which order), whatever the
//! number of rows, the thread count or the task split: results are batch invariant and
//! deterministic. Every ISA gives the same bits (`dense_dot`'s canonical order).

use std::sync::Arc;

use half::bf16;

use super::dense_dot::{
    QRow, RowRef, dot_block_rows, dot_rows, gemv_block_rows, normal_groups, quantize_row_i16,
};
use super::eltwise::{SendPtr, apply_unary};
use super::{prefetch_rows_ahead, read_f32, write_f32};
use crate::error::{Error, Result};
use crate::host::blockfloat::{BlockFloatData, GROUP};
use crate::host::data::HostData;
use crate::host::pool::RANGES_PER_THREAD;
use crate::host::{HostBuffer, HostCommand, HostCtx};
use crate::ops::eltwise::UnaryOp;

/// Multiply-adds below which a matmul runs on the calling thread only.
const PAR_MIN_WORK: usize = 1 << 16;
/// Smallest amount of work (multiply-adds) worth one task.
const TASK_MIN_WORK: usize = 1 << 14;
/// Output columns per band in the `[K, N]` loop (a multiple of the block-float group).
const BAND: usize = 64;
/// Sizes and flags of one matmul, as validated by the op.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatmulDims {
    /// Batches of A (product of all but its last two dims).
    pub batch: usize,
    /// B has batch 1 and is reused for every batch of A.
    pub bcast_b: bool,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// A is stored `[..., K, M]`.
    pub transpose_a: bool,
    /// B is stored `[..., N, K]`.
    pub transpose_b: bool,
}

/// B's storage, with row access.
#[derive(Clone, Copy, Debug)]
enum BView<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    Block(&'a BlockFloatData),
}

impl<'a> BView<'a> {
    fn new(d: &'a HostData) -> Option<Self> {
        match d {
            HostData::F32(v) => Some(Self::F32(v)),
            HostData::Bf16(v) => Some(Self::Bf16(v)),
            HostData::Block(b) => Some(Self::Block(b)),
            _ => None,
        }
    }

    /// Bytes of one stored row of `len` values.
    fn row_bytes(self, len: usize) -> usize {
        match self {
            Self::F32(_) => len * 4,
            Self::Bf16(_) => len * 2,
            Self::Block(_) => {
                let g = BlockFloatData::groups_per_row(len);
                g + g * GROUP
            }
        }
    }

    /// Stored row `r` (rows have `len` values).
    #[inline]
    fn row(self, r: usize, len: usize) -> RowRef<'a> {
        match self {
            Self::F32(v) => RowRef::F32(&v[r * len..(r + 1) * len]),
            Self::Bf16(v) => RowRef::Bf16(&v[r * len..(r + 1) * len]),
            Self::Block(b) => {
                let g = BlockFloatData::groups_per_row(len);
                RowRef::Block {
                    format: b.format,
                    exps: &b.exps[r * g..(r + 1) * g],
                    mants: &b.mants[r * g * GROUP..(r + 1) * g * GROUP],
                }
            }
        }
    }
}

/// Bias and activations applied to an accumulated output value.
#[inline]
fn epilogue(acc: f32, bias: Option<f32>, acts: &[UnaryOp]) -> f32 {
    let mut v = match bias {
        Some(b) => acc + b,
        None => acc,
    };
    for &op in acts {
        v = apply_unary(op, v);
    }
    v
}

/// How many tasks to split `units` units of `work_per_unit` multiply-adds each into.
fn task_count(ctx: &HostCtx<'_>, units: usize, work_per_unit: usize) -> usize {
    let threads = ctx.pool.num_threads();
    let total = units.saturating_mul(work_per_unit);
    if threads == 1 || total < PAR_MIN_WORK {
        return 1;
    }
    let by_work = total / TASK_MIN_WORK;
    by_work
        .clamp(1, threads * RANGES_PER_THREAD)
        .min(units.max(1))
}

/// `linear` / `matmul` on the host: `out = act(A' @ B' + bias)`.
pub(crate) struct MatmulCmd {
    pub a: Arc<HostBuffer>,
    pub b: Arc<HostBuffer>,
    pub bias: Option<Arc<HostBuffer>>,
    pub out: Arc<HostBuffer>,
    pub dims: MatmulDims,
    /// Applied in order after the bias.
    pub acts: Vec<UnaryOp>,
    /// A decoded to f32 (capacity reserved unless A is f32).
    pub sa: Vec<f32>,
    /// A' (A transposed) when `transpose_a` (capacity reserved).
    pub sat: Vec<f32>,
    /// The bias decoded to f32 (capacity reserved unless it is f32).
    pub sbias: Vec<f32>,
    /// The output in f32 before rounding (capacity reserved unless the output is f32).
    pub so: Vec<f32>,
    /// Block-float B stored `[N, K]`: A's rows quantized to int16, padded to groups of 16, and
    /// each row's factor (`None`: a non-finite row, which takes the f32 path). Capacity
    /// reserved in that case.
    pub sq: Vec<i16>,
    pub sqs: Vec<Option<f32>>,
}

impl HostCommand for MatmulCmd {
    fn name(&self) -> String {
        let d = self.dims;
        format!("Matmul {}x{}x{}", d.m, d.k, d.n)
    }

    fn run(&mut self, ctx: &HostCtx<'_>) -> Result<()> {
        let d = self.dims;
        // One read guard per distinct buffer: the same tensor may be passed twice.
        let ga = self.a.read();
        let gb = (!Arc::ptr_eq(&self.a, &self.b)).then(|| self.b.read());
        let b_data: &HostData = gb.as_deref().unwrap_or(&*ga);
        let gbias = match &self.bias {
            Some(bias) if !Arc::ptr_eq(bias, &self.a) && !Arc::ptr_eq(bias, &self.b) => {
                Some(bias.read())
            }
            _ => None,
        };
        let bias_data: Option<&HostData> = match &self.bias {
            None => None,
            Some(bias) if Arc::ptr_eq(bias, &self.a) => Some(&*ga),
            Some(bias) if Arc::ptr_eq(bias, &self.b) => Some(b_data),
            Some(_) => gbias.as_deref(),
        };
        let bview = BView::new(b_data).ok_or_else(|| Error::Backend {
            op: "ttnn::matmul",
            backend: "host",
            message: format!("b holds {:?}, not float storage", b_data.dtype()),
        })?;
        let a_raw = read_f32(&ga, &mut self.sa);
        let a: &[f32] = if d.transpose_a {
            // A is [batch][K][M]; make A' [batch][M][K] so that its rows are contiguous.
            let mk = d.m * d.k;
            self.sat.clear();
            self.sat.resize(d.batch * mk, 0.0);
            for bi in 0..d.batch {
                let src = &a_raw[bi * mk..(bi + 1) * mk];
                let dst = &mut self.sat[bi * mk..(bi + 1) * mk];
                for (kk, src_row) in src.chunks_exact(d.m).enumerate() {
                    for (mm, &v) in src_row.iter().enumerate() {
                        dst[mm * d.k + kk] = v;
                    }
                }
            }
            &self.sat
        } else {
            a_raw
        };
        // Row 0 of the bias: its first N values.
        let bias: Option<&[f32]> = bias_data.map(|bd| &read_f32(bd, &mut self.sbias)[..d.n]);
        let acts = &self.acts[..];
        let mut out = self.out.write();
        let len = d.batch * d.m * d.n;
        let quant = match bview {
            BView::Block(_) if d.transpose_b => {
                let kq = BlockFloatData::groups_per_row(d.k) * GROUP;
                let rows = d.batch * d.m;
                self.sq.clear();
                self.sq.resize(rows * kq, 0);
                self.sqs.clear();
                for (r, qr) in self.sq.chunks_exact_mut(kq.max(1)).enumerate().take(rows) {
                    self.sqs
                        .push(quantize_row_i16(&a[r * d.k..(r + 1) * d.k], qr));
                }
                Some(QuantA {
                    q: &self.sq,
                    scales: &self.sqs,
                    kq,
                })
            }
            _ => None,
        };
        write_f32(&mut out, len, &mut self.so, |o| {
            if d.transpose_b {
                rows_kernel(ctx, d, a, quant, bview, bias, acts, o);
            } else {
                bands_kernel(ctx, d, a, bview, bias, acts, o);
            }
        });
        Ok(())
    }
}

/// A's rows quantized for the block-float path (see `dense_dot`).
#[derive(Clone, Copy)]
struct QuantA<'a> {
    q: &'a [i16],
    scales: &'a [Option<f32>],
    /// Values per quantized row (K rounded up to groups of 16).
    kq: usize,
}

impl<'a> QuantA<'a> {
    fn row(self, r: usize) -> Option<QRow<'a>> {
        self.scales[r].map(|scale| QRow {
            q: &self.q[r * self.kq..(r + 1) * self.kq],
            scale,
        })
    }
}

/// B stored `[N, K]`: one dot product per output element, parallel over (batch, N).
#[allow(clippy::too_many_arguments)]
fn rows_kernel(
    ctx: &HostCtx<'_>,
    d: MatmulDims,
    a: &[f32],
    quant: Option<QuantA<'_>>,
    b: BView<'_>,
    bias: Option<&[f32]>,
    acts: &[UnaryOp],
    o: &mut [f32],
) {
    let (m, k, n) = (d.m, d.k, d.n);
    let columns = d.batch * n;
    let out = SendPtr(o.as_mut_ptr());
    let out_len = o.len();
    // Decode (one or two rows of A) streams B once from DRAM: ask for rows ahead of use.
    let ahead = (m <= 2).then(|| prefetch_rows_ahead(b.row_bytes(k)));
    // Batch and column of a global column; one batch (every decode step) needs no division,
    // which was a 64-bit `div` per lm_head row.
    let split = |col: usize| {
        if d.batch == 1 {
            (0, col)
        } else {
            (col / n, col % n)
        }
    };
    // Decode against a block-float B (the lm_head): one quantized A row, and output column j
    // is element j of `o`. One kernel loop per range (see `gemv_block_rows`).
    if let (Some(qa), BView::Block(bd), 1, 1) = (quant, b, m, d.batch)
        && let Some(x) = qa.row(0)
    {
        let groups = BlockFloatData::groups_per_row(k);
        let ahead = prefetch_rows_ahead(b.row_bytes(k));
        // `next`: the rows this thread runs after `range` (`for_ranges_ahead`), hinted as it
        // ends `range`.
        let gemv = |range: std::ops::Range<usize>, next: Option<std::ops::Range<usize>>| {
            debug_assert!(range.end <= out_len);
            // SAFETY: `range.end <= N == out_len` (batch 1, one row); the ranges of different
            // tasks are disjoint; `o` outlives the parallel region.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(out.get().add(range.start), range.len()) };
            let fallback = |j: usize| dot_rows(ctx.isa, &[&a[..k]], b.row(j, k))[0];
            gemv_block_rows(
                ctx.isa,
                x,
                bd.format,
                &bd.exps,
                &bd.mants,
                groups,
                range.clone(),
                ahead,
                next,
                dst,
                &fallback,
            );
            for (v, j) in dst.iter_mut().zip(range) {
                *v = epilogue(*v, bias.map(|b| b[j]), acts);
            }
        };
        let tasks = task_count(ctx, n, k);
        if tasks == 1 {
            gemv(0..n, None);
        } else {
            ctx.pool.for_ranges_ahead(n, tasks, &gemv);
        }
        return;
    }
    let kernel = |range: std::ops::Range<usize>| {
        for col in range.clone() {
            let (bi, j) = split(col);
            let b_row = b.row(if d.bcast_b { j } else { bi * n + j }, k);
            // The row `ahead` columns on (in this task's range), to prefetch.
            let next = ahead
                .map(|ahead| col + ahead)
                .filter(|&next| next < range.end)
                .map(|next| {
                    let (nbi, nj) = split(next);
                    b.row(if d.bcast_b { nj } else { nbi * n + nj }, k)
                });
            let bias_j = bias.map(|v| v[j]);
            let a_row = |mm: usize| {
                let row = bi * m + mm;
                &a[row * k..(row + 1) * k]
            };
            let store = |mm: usize, acc: f32| {
                let idx = (bi * m + mm) * n + j;
                debug_assert!(idx < out_len);
                // SAFETY: `idx < batch * M * N == out_len`; each (row, j) pair belongs to
                // exactly one column `col`, and the columns of different tasks are disjoint, so
                // no two tasks write the same element; `o` outlives the parallel region.
                unsafe { *out.get().add(idx) = epilogue(acc, bias_j, acts) };
            };
            // Block-float weights take the integer path for every row it accepts (finite
            // activations, a weight row without special groups); the decision depends on that
            // row alone, so results are batch invariant. Rows in pairs: one pass over the
            // weight row serves both, with the same bits as alone.
            let int_path = match (quant, b_row) {
                (
                    Some(qa),
                    RowRef::Block {
                        format,
                        exps,
                        mants,
                    },
                ) if normal_groups(format, &exps[..BlockFloatData::groups_per_row(k)]) => {
                    Some((qa, format, exps, mants))
                }
                _ => None,
            };
            let qrow = |mm: usize| int_path.and_then(|(qa, ..)| qa.row(bi * m + mm));
            let groups = BlockFloatData::groups_per_row(k);
            // The integer kernel spreads the hints for a block-float row over its loop (see
            // `dot_block_rows`); any other row is prefetched here, in one go.
            let mut hint = match (next, int_path.is_some() && qrow(0).is_some()) {
                (Some(RowRef::Block { exps, mants, .. }), true) => Some((exps, mants)),
                (Some(other), _) => {
                    other.prefetch();
                    None
                }
                (None, _) => None,
            };
            let mut mm = 0;
            while mm < m {
                match (
                    int_path,
                    qrow(mm),
                    (mm + 1 < m).then(|| qrow(mm + 1)).flatten(),
                ) {
                    (Some((_, format, exps, mants)), Some(x0), Some(x1)) => {
                        let v = dot_block_rows(
                            ctx.isa,
                            &[x0, x1],
                            format,
                            exps,
                            mants,
                            groups,
                            hint.take(),
                        );
                        store(mm, v[0]);
                        store(mm + 1, v[1]);
                        mm += 2;
                    }
                    (Some((_, format, exps, mants)), Some(x0), None) => {
                        let v = dot_block_rows(
                            ctx.isa,
                            &[x0],
                            format,
                            exps,
                            mants,
                            groups,
                            hint.take(),
                        );
                        store(mm, v[0]);
                        mm += 1;
                    }
                    _ if mm + 1 < m && qrow(mm + 1).is_none() => {
                        let v = dot_rows(ctx.isa, &[a_row(mm), a_row(mm + 1)], b_row);
                        store(mm, v[0]);
                        store(mm + 1, v[1]);
                        mm += 2;
                    }
                    _ => {
                        store(mm, dot_rows(ctx.isa, &[a_row(mm)], b_row)[0]);
                        mm += 1;
                    }
                }
            }
        }
    };
    let tasks = task_count(ctx, columns, m * k);
    if tasks == 1 {
        kernel(0..columns);
    } else {
        ctx.pool.for_ranges(columns, tasks, &kernel);
    }
}

/// B stored `[K, N]`: for each band of output columns, `out[m, band] += a[m, k] * b[k, band]`
/// over k in order, then bias and activations. Parallel over (batch, band).
fn bands_kernel(
    ctx: &HostCtx<'_>,
    d: MatmulDims,
    a: &[f32],
    b: BView<'_>,
    bias: Option<&[f32]>,
    acts: &[UnaryOp],
    o: &mut [f32],
) {
    let (m, k, n) = (d.m, d.k, d.n);
    let bands_per_batch = n.div_ceil(BAND);
    let units = d.batch * bands_per_batch;
    let out = SendPtr(o.as_mut_ptr());
    let out_len = o.len();
    let kernel = |unit: usize| {
        let (bi, band) = (unit / bands_per_batch, unit % bands_per_batch);
        let n0 = band * BAND;
        let w = BAND.min(n - n0);
        let b_batch = if d.bcast_b { 0 } else { bi };
        let out_row = |mm: usize| {
            let start = (bi * m + mm) * n + n0;
            debug_assert!(start + w <= out_len);
            // SAFETY: `start + w <= batch * M * N == out_len`; this unit alone covers columns
            // n0..n0 + w of batch bi's rows, so the slices of different units (and of different
            // rows of one unit, which are not alive at once) never overlap; `o` outlives the
            // parallel region.
            unsafe { std::slice::from_raw_parts_mut(out.get().add(start), w) }
        };
        for mm in 0..m {
            out_row(mm).fill(0.0);
        }
        let mut buf = [0f32; BAND];
        for kk in 0..k {
            let b_band = &mut buf[..w];
            b.row(b_batch * k + kk, n).decode_into(n0, b_band);
            for mm in 0..m {
                let x = a[(bi * m + mm) * k + kk];
                for (acc, &wv) in out_row(mm).iter_mut().zip(b_band.iter()) {
                    *acc += x * wv;
                }
            }
        }
        for mm in 0..m {
            for (jj, v) in out_row(mm).iter_mut().enumerate() {
                *v = epilogue(*v, bias.map(|bv| bv[n0 + jj]), acts);
            }
        }
    };
    let tasks = task_count(ctx, units, m * k * BAND.min(n));
    if tasks == 1 {
        for unit in 0..units {
            kernel(unit);
        }
    } else {
        ctx.pool.run(units, &kernel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::blockfloat::BlockFormat;

    #[test]
    fn band_decode_matches_decode() {
        let w: Vec<f32> = (0..100)
            .map(|i| ((i * 37) % 23) as f32 * 0.37 - 4.0)
            .collect();
        let blk = BlockFloatData::encode(BlockFormat::Bfp8, &w, 1, 100);
        let dec = blk.decode();
        let row = BView::Block(&blk).row(0, 100);
        let mut out = [0f32; 36];
        row.decode_into(64, &mut out);
        assert_eq!(&out[..], &dec[64..100]);
    }
}
