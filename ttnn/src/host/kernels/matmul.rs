//! Host kernels for matrix multiplication: `linear` and `matmul` (f32, bf16, bfp8_b and bfp4_b
//! weights).
//!
//! Two loops, chosen by how B is stored:
//! - `transpose_b` (B stored `[N, K]`, e.g. the tied-embedding lm_head): every stored row of B is
//!   one output column's K weights, so each output element is one [`dot_row`] of an A row with a
//!   B row, decoding block-float groups on the fly. Parallel over N.
//! - otherwise (B stored `[K, N]`): an axpy loop over K for a band of output columns, decoding one
//!   band of each B row at a time. Parallel over (batch, band).
//!
//! Each output element's arithmetic is fixed (which products, in which order), whatever the
//! number of rows, the thread count or the task split: results are batch invariant and
//! deterministic. SIMD versions can replace [`dot_row`] (and the axpy) without touching the
//! command or the op.

use std::sync::Arc;

use half::bf16;

use super::eltwise::{SendPtr, apply_unary};
use super::{read_f32, write_f32};
use crate::error::{Error, Result};
use crate::host::blockfloat::{BlockFloatData, BlockFormat, GROUP, decode_value, group_scale};
use crate::host::data::HostData;
use crate::host::{HostBuffer, HostCommand, HostCtx};
use crate::ops::eltwise::UnaryOp;

/// Multiply-adds below which a matmul runs on the calling thread only.
const PAR_MIN_WORK: usize = 1 << 16;
/// Smallest amount of work (multiply-adds) worth one task.
const TASK_MIN_WORK: usize = 1 << 14;
/// Output columns per band in the `[K, N]` loop (a multiple of the block-float group).
const BAND: usize = 64;
/// Independent accumulators of [`dot_row`]: the canonical summation order (products of
/// k ≡ j mod LANES go to lane j; lanes are then added pairwise), which is also what an 8-wide
/// SIMD kernel does.
const LANES: usize = 8;

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

/// One stored row of B in its storage form.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RowRef<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    /// A block-float row: `exps` has one shared exponent per group of 16, `mants` 16 signed
    /// mantissas per group (zero past the row's end).
    Block {
        format: BlockFormat,
        exps: &'a [u8],
        mants: &'a [i8],
    },
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

/// Eight running sums; see [`LANES`].
#[derive(Clone, Copy)]
struct Lanes([f32; LANES]);

impl Lanes {
    #[inline]
    fn new() -> Self {
        Self([0.0; LANES])
    }

    /// Adds `x[i] * w[i]`. The slices must start at a multiple of `LANES` in K, and only the
    /// last call of a dot product may have a length that is not a multiple of `LANES`.
    #[inline]
    fn add(&mut self, x: &[f32], w: &[f32]) {
        let mut xc = x.chunks_exact(LANES);
        let mut wc = w.chunks_exact(LANES);
        for (xs, ws) in (&mut xc).zip(&mut wc) {
            for j in 0..LANES {
                self.0[j] += xs[j] * ws[j];
            }
        }
        for (j, (xv, wv)) in xc.remainder().iter().zip(wc.remainder()).enumerate() {
            self.0[j] += xv * wv;
        }
    }

    #[inline]
    fn sum(self) -> f32 {
        let a = self.0;
        let s = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
        (s[0] + s[2]) + (s[1] + s[3])
    }
}

/// `sum_k x[k] * w[k]` for f32 weights, in the canonical order.
#[inline]
pub(crate) fn dot_f32(x: &[f32], w: &[f32]) -> f32 {
    let mut acc = Lanes::new();
    acc.add(x, &w[..x.len()]);
    acc.sum()
}

/// `sum_k x[k] * w[k]` for bf16 weights (widened exactly to f32), in the canonical order.
#[inline]
pub(crate) fn dot_bf16(x: &[f32], w: &[bf16]) -> f32 {
    const CHUNK: usize = 8 * LANES;
    let mut acc = Lanes::new();
    let mut buf = [0f32; CHUNK];
    for (xs, ws) in x.chunks(CHUNK).zip(w.chunks(CHUNK)) {
        for (d, s) in buf.iter_mut().zip(ws) {
            *d = s.to_f32();
        }
        acc.add(xs, &buf[..xs.len()]);
    }
    acc.sum()
}

/// `sum_k x[k] * w[k]` for a block-float row, decoding each group of 16 on the fly
/// (`w = mant * group_scale`, exactly the decoded value), in the canonical order.
#[inline]
pub(crate) fn dot_block(x: &[f32], format: BlockFormat, exps: &[u8], mants: &[i8]) -> f32 {
    let mut acc = Lanes::new();
    let mut buf = [0f32; GROUP];
    for ((xs, &e), ms) in x.chunks(GROUP).zip(exps).zip(mants.chunks_exact(GROUP)) {
        if e == 255 {
            // Inf/NaN groups decode through the device's bit assembly.
            for (d, &m) in buf.iter_mut().zip(ms) {
                *d = decode_value(format, e, m);
            }
        } else {
            let scale = group_scale(format, e);
            for (d, &m) in buf.iter_mut().zip(ms) {
                *d = m as f32 * scale;
            }
        }
        acc.add(xs, &buf[..xs.len()]);
    }
    acc.sum()
}

/// `sum_k x[k] * b_row[k]` over `x.len()` values of one stored B row, in the canonical order.
#[inline]
pub(crate) fn dot_row(x: &[f32], b_row: RowRef<'_>) -> f32 {
    match b_row {
        RowRef::F32(w) => dot_f32(x, w),
        RowRef::Bf16(w) => dot_bf16(x, w),
        RowRef::Block {
            format,
            exps,
            mants,
        } => dot_block(x, format, exps, mants),
    }
}

/// Values `start..start + out.len()` of a stored row as f32 (`start` a multiple of 16).
#[inline]
fn load_band(row: RowRef<'_>, start: usize, out: &mut [f32]) {
    match row {
        RowRef::F32(w) => out.copy_from_slice(&w[start..start + out.len()]),
        RowRef::Bf16(w) => {
            for (d, s) in out.iter_mut().zip(&w[start..]) {
                *d = s.to_f32();
            }
        }
        RowRef::Block {
            format,
            exps,
            mants,
        } => {
            let g0 = start / GROUP;
            for (i, chunk) in out.chunks_mut(GROUP).enumerate() {
                let g = g0 + i;
                let e = exps[g];
                for (d, &m) in chunk.iter_mut().zip(&mants[g * GROUP..]) {
                    *d = decode_value(format, e, m);
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
    by_work.clamp(1, threads * 4).min(units.max(1))
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
}

impl HostCommand for MatmulCmd {
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
        write_f32(&mut out, len, &mut self.so, |o| {
            if d.transpose_b {
                rows_kernel(ctx, d, a, bview, bias, acts, o);
            } else {
                bands_kernel(ctx, d, a, bview, bias, acts, o);
            }
        });
        Ok(())
    }
}

/// B stored `[N, K]`: one dot product per output element, parallel over (batch, N).
fn rows_kernel(
    ctx: &HostCtx<'_>,
    d: MatmulDims,
    a: &[f32],
    b: BView<'_>,
    bias: Option<&[f32]>,
    acts: &[UnaryOp],
    o: &mut [f32],
) {
    let (m, k, n) = (d.m, d.k, d.n);
    let columns = d.batch * n;
    let out = SendPtr(o.as_mut_ptr());
    let out_len = o.len();
    let kernel = |range: std::ops::Range<usize>| {
        for col in range {
            let (bi, j) = (col / n, col % n);
            let b_row = b.row(if d.bcast_b { j } else { bi * n + j }, k);
            let bias_j = bias.map(|v| v[j]);
            for mm in 0..m {
                let row = bi * m + mm;
                let v = epilogue(dot_row(&a[row * k..(row + 1) * k], b_row), bias_j, acts);
                let idx = row * n + j;
                debug_assert!(idx < out_len);
                // SAFETY: `idx < batch * M * N == out_len`; each (row, j) pair belongs to
                // exactly one column `col`, and the columns of different tasks are disjoint, so
                // no two tasks write the same element; `o` outlives the parallel region.
                unsafe { *out.get().add(idx) = v };
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
            load_band(b.row(b_batch * k + kk, n), n0, b_band);
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

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn dot_kinds_agree_with_decoded_f32() {
        let mut s = 7u64;
        for k in [1usize, 7, 8, 15, 16, 17, 63, 64, 65, 200] {
            let x: Vec<f32> = (0..k).map(|_| lcg(&mut s)).collect();
            let w: Vec<f32> = (0..k).map(|_| lcg(&mut s) * 3.0).collect();
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let wbf: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            assert_eq!(dot_bf16(&x, &wb).to_bits(), dot_f32(&x, &wbf).to_bits());
            for format in [BlockFormat::Bfp8, BlockFormat::Bfp4] {
                let blk = BlockFloatData::encode(format, &w, 1, k);
                let dec = blk.decode();
                let got = dot_row(
                    &x,
                    RowRef::Block {
                        format,
                        exps: &blk.exps,
                        mants: &blk.mants,
                    },
                );
                assert_eq!(got.to_bits(), dot_f32(&x, &dec).to_bits(), "k={k}");
            }
            let exact: f64 = x.iter().zip(&w).map(|(&a, &b)| a as f64 * b as f64).sum();
            let bound: f64 = x
                .iter()
                .zip(&w)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            assert!((dot_f32(&x, &w) as f64 - exact).abs() <= bound * k as f64 * 6e-8 + 1e-30);
        }
    }

    #[test]
    fn load_band_matches_decode() {
        let mut s = 3u64;
        let w: Vec<f32> = (0..100).map(|_| lcg(&mut s)).collect();
        let blk = BlockFloatData::encode(BlockFormat::Bfp8, &w, 1, 100);
        let dec = blk.decode();
        let row = RowRef::Block {
            format: BlockFormat::Bfp8,
            exps: &blk.exps,
            mants: &blk.mants,
        };
        let mut out = [0f32; 36];
        load_band(row, 64, &mut out);
        assert_eq!(&out[..], &dec[64..100]);
    }
}
