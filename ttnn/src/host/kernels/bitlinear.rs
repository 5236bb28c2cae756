//! Host kernels for `experimental::bitlinear`: per-token int8 absmax activation quantization,
//! ternary matmul, per-tensor scale.
//!
//! Each activation row is quantized once into an i8 scratch row ([`quantize_row_int8`], shared
//! with `quantize_activations_int8`); every output is then an exact integer dot product of that
//! row with one packed ternary weight row (`ternary_dot::dot_codes`, scalar/AVX2/AVX-512 VNNI,
//! four activation rows per unpacked weight vector), scaled once.

use std::sync::Arc;

use super::convert::round_bf16_isa;
use super::eltwise::SendPtr;
use super::norm::rms_norm_row_isa;
use super::ternary_dot::{dot_codes, dot_codes_rows};
use super::ternary_lut::{
    BASE3_AHEAD_SEGS, build_table_isa, gemm_block, has_gemm_kernel, lut_block, lut_blocks,
    table_group_bytes,
};
use super::{OutRows, read_f32, write_rows};
use super::{PREFETCH_BYTES, prefetch_l2};
use crate::device::{HostIsa, TernaryLayout};
use crate::error::{Error, Result};
use crate::host::data::HostData;
use crate::host::pool::{RANGES_PER_THREAD, ThreadPool};
use crate::host::ternary::{CHUNK, CHUNK_BYTES, TernaryData};
use crate::host::ternary_lut::{self as lut, LUT_ROWS, SEG_BYTES};
use crate::host::{HostBuffer, HostCommand, HostCtx};
use crate::ops::bitlinear::WeightScaleMode;

/// Multiply-adds below which bitlinear runs on the calling thread only.
const PAR_MIN_WORK: usize = 1 << 16;
/// Smallest amount of work (multiply-adds) worth one task.
const TASK_MIN_WORK: usize = 1 << 14;
/// Activation values below which the quantization runs on the calling thread only.
const QUANT_PAR_MIN: usize = 1 << 16;

/// Length of a quantized activation row for `k` inputs: zero-padded to whole `Bits2` chunks and
/// to the `Lut3` groups plus the one byte the table builder reads past them.
pub(crate) fn act_row_len(k: usize) -> usize {
    (TernaryData::row_bytes(k) * 4).max(3 * lut::groups(k) + 1)
}

std::thread_local! {
    /// The `Lut3` tables of the current bitlinear's activation rows: one buffer per thread,
    /// shared by every command it runs (a buffer per command would keep 74 KB per bitlinear of a
    /// captured decode resident), grown once and then reused without allocating. A GEMV builds
    /// a copy on every thread that runs part of it ([`with_gemv_tables`]); a GEMM without the
    /// decoding kernel builds one set on the calling thread's buffer, shared by all.
    static LUT_TABLES: std::cell::RefCell<Vec<TableLine>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// Which GEMV's tables this thread's `LUT_TABLES` hold (0: none).
    static TABLES_STAMP: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Stamps of GEMV runs, to tell a thread's tables of this run from an earlier one's.
static NEXT_STAMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Grows this thread's table buffer to at least `bytes` (no allocation once reserved).
fn grow_tables(lines: &mut Vec<TableLine>, bytes: usize) {
    if lines.len() < bytes.div_ceil(64) {
        lines.resize(bytes.div_ceil(64), TableLine([0; 64]));
    }
}

/// Runs `f` on this thread's copy of a GEMV's tables (`rows` rows of `table_bytes`, from the
/// quantized rows of `q`, `kp` apart), built on the first range of the GEMV (`stamp`) the
/// thread runs. Each thread builds its own copy rather than sharing one built by all: the build
/// is ~1 us of arithmetic per row, but the shared tables' lines had to travel between the cores'
/// caches (written by one core, read by both), and the build (a pool region of its own) took
/// 2-5 % of a 2-thread decode step, most of it waiting on those stores.
///
/// While it builds, the thread hints the first bytes of each stream in `warm` (what `f`
/// reads first) into L2, a few lines after each part of the build: the stream then starts
/// warm instead of at DRAM latency, and the build hides behind the transfer.
#[allow(clippy::too_many_arguments)] // the tables' inputs and the work on them
fn with_gemv_tables<R>(
    isa: HostIsa,
    layout: TernaryLayout,
    q: &[i8],
    kp: usize,
    rows: usize,
    table_bytes: usize,
    stamp: u64,
    warm: &[&[u8]],
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    LUT_TABLES.with_borrow_mut(|lines| {
        // Reserved on every pool thread when the op was built (`reserve_tables`).
        grow_tables(lines, rows * table_bytes);
        let tables = &mut line_bytes(lines)[..rows * table_bytes];
        if TABLES_STAMP.get() != stamp {
            let gb = table_group_bytes(isa, layout);
            let groups = table_bytes / gb;
            let parts = rows * groups.div_ceil(WARM_PART_GROUPS);
            let warm_lines = warm.iter().map(|w| w.len().div_ceil(64)).max().unwrap_or(0);
            let per_part = warm_lines.div_ceil(parts.max(1));
            let mut line = 0;
            for (r, t) in tables.chunks_exact_mut(table_bytes.max(1)).enumerate() {
                // Parts of whole segments: a group's entries depend on its own three values
                // only, and the builders read one value past their last group.
                for g0 in (0..groups).step_by(WARM_PART_GROUPS) {
                    let g1 = (g0 + WARM_PART_GROUPS).min(groups);
                    let qr = &q[r * kp + 3 * g0..r * kp + 3 * g1 + 1];
                    build_table_isa(isa, layout, qr, &mut t[g0 * gb..g1 * gb]);
                    for w in warm {
                        let at = |l: usize| (64 * l).min(w.len());
                        prefetch_l2(&w[at(line)..at(line + per_part)]);
                    }
                    line += per_part;
                }
            }
            TABLES_STAMP.set(stamp);
        }
        f(tables)
    })
}

/// Groups of a GEMV's table built between two rounds of warming hints in
/// [`with_gemv_tables`] (a multiple of a segment's 16).
const WARM_PART_GROUPS: usize = 64;

/// 64 bytes of `Lut3` tables, cache-line aligned: every row's table starts on a line (its
/// size is a multiple of 512 bytes), so the AVX-512 kernel's 64-byte table loads never split
/// a line (a `Vec<u8>` from the allocator is only 16-byte aligned).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct TableLine([u8; 64]);

/// `lines` as bytes.
fn line_bytes(lines: &mut [TableLine]) -> &mut [u8] {
    // SAFETY: `TableLine` is 64 plain bytes (repr(C), size 64, no padding): the lines are
    // `64 * len` initialized bytes, borrowed mutably for the slice's lifetime.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), 64 * lines.len()) }
}

/// Activation rows below which a bitlinear is a GEMV: one pass over the weights per row.
const GEMV_MAX_ROWS: usize = 4;

/// Where a `Lut3` bitlinear's tables are.
#[derive(Clone, Copy)]
enum Tables<'a> {
    /// No tables: `Bits2` weights, or a GEMM that decodes the weights (`gemm_block`).
    None,
    /// A GEMV's: each thread builds its own (`with_gemv_tables`), for this run's stamp.
    PerThread { stamp: u64 },
    /// A GEMM's without the decoding kernel, every row's, built once for all threads.
    Shared(&'a [u8]),
}

/// Bytes of `Lut3` tables for `rows` activation rows against `w`: 0 for `Bits2` weights, and
/// for a GEMM that decodes the weights instead (`gemm_block`).
fn table_bytes(isa: HostIsa, w: &TernaryData, rows: usize, k: usize) -> usize {
    match w.layout {
        TernaryLayout::Lut3 | TernaryLayout::Base3
            if rows < GEMV_MAX_ROWS || !has_gemm_kernel(isa, w.layout) =>
        {
            rows * lut::groups(k) * table_group_bytes(isa, w.layout)
        }
        _ => 0,
    }
}

/// Grows every pool thread's table buffer for a bitlinear of `rows` rows against `weight` when
/// the op is built, so that running it (even first as a replay of a captured trace) allocates
/// nothing.
pub(crate) fn reserve_tables(
    pool: &ThreadPool,
    isa: HostIsa,
    weight: &HostData,
    rows: usize,
    k: usize,
) {
    if let HostData::Ternary(w) = weight {
        let need = table_bytes(isa, w, rows, k);
        if need > 0 {
            pool.broadcast(&|| LUT_TABLES.with_borrow_mut(|t| grow_tables(t, need)));
        }
    }
}

/// Quantizes one activation row as HF's `ActQuant` does in f32: `s = 127 / max(absmax, 1e-5)`,
/// `q = clamp(round_half_even(x * s), -128, 127)`. Writes `q` (`x.len()` values) and returns `s`.
///
/// HF writes `127 / t`, which torch evaluates as `t.reciprocal() * 127` (`Tensor.__rtruediv__`):
/// two f32 roundings, not one division. For some absmax values (0.375, 1.5, ...) the two differ
/// by an ulp, which moves every output of the row, so the reciprocal form is used here.
#[inline]
pub(crate) fn quantize_row_int8(x: &[f32], q: &mut [i8]) -> f32 {
    let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let s = (1.0f32 / absmax.max(1e-5)) * 127.0;
    for (qv, &xv) in q.iter_mut().zip(x) {
        *qv = (xv * s).round_ties_even().clamp(-128.0, 127.0) as i8;
    }
    s
}

/// The sum of `q`, in i32 (exact: a row is far shorter than 2^24 values), vectorized with
/// AVX2 where the ISA has it (integer sums are the same in any order).
fn sum_i8_isa(isa: HostIsa, q: &[i8]) -> i32 {
    #[inline(always)]
    fn sum(q: &[i8]) -> i32 {
        q.iter().map(|&v| i32::from(v)).sum()
    }
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn sum_avx2(q: &[i8]) -> i32 {
        sum(q)
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the device only selects Avx2/Avx512Vnni after detecting AVX2.
        HostIsa::Avx2 | HostIsa::Avx512Vnni => unsafe { sum_avx2(q) },
        _ => sum(q),
    }
}

/// [`quantize_row_int8`] on the device's ISA: the AVX2 version gives the same bits (max is
/// exact in any order; the product, the half-to-even rounding and the clamp are the same
/// operations).
#[inline]
pub(crate) fn quantize_row_int8_isa(isa: HostIsa, x: &[f32], q: &mut [i8]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the device only selects Avx2/Avx512Vnni after detecting AVX2.
        HostIsa::Avx2 | HostIsa::Avx512Vnni => unsafe { x86::quantize_row_int8_avx2(x, q) },
        _ => quantize_row_int8(x, q),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_row_int8_avx2(x: &[f32], q: &mut [i8]) -> f32 {
        assert!(q.len() >= x.len(), "q row shorter than x");
        let n8 = x.len() / 8 * 8;
        let sign = _mm256_set1_ps(-0.0);
        // Four running maxima, so that the loop is not one chain of dependent `vmaxps` (the
        // maximum of NaN-free values is exact in any order).
        let (mut m0, mut m1, mut m2, mut m3) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let (mut nan0, mut nan1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let n32 = x.len() / 32 * 32;
        for i in (0..n32).step_by(32) {
            // SAFETY: i + 32 <= n32 <= x.len().
            let (a, b, c, d) = unsafe {
                let p = x.as_ptr().add(i);
                (
                    _mm256_loadu_ps(p),
                    _mm256_loadu_ps(p.add(8)),
                    _mm256_loadu_ps(p.add(16)),
                    _mm256_loadu_ps(p.add(24)),
                )
            };
            m0 = _mm256_max_ps(m0, _mm256_andnot_ps(sign, a));
            m1 = _mm256_max_ps(m1, _mm256_andnot_ps(sign, b));
            m2 = _mm256_max_ps(m2, _mm256_andnot_ps(sign, c));
            m3 = _mm256_max_ps(m3, _mm256_andnot_ps(sign, d));
            let (ab, cd) = (
                _mm256_cmp_ps::<_CMP_UNORD_Q>(a, b),
                _mm256_cmp_ps::<_CMP_UNORD_Q>(c, d),
            );
            nan0 = _mm256_or_ps(nan0, ab);
            nan1 = _mm256_or_ps(nan1, cd);
        }
        for i in (n32..n8).step_by(8) {
            // SAFETY: i + 8 <= n8 <= x.len().
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
            m0 = _mm256_max_ps(m0, _mm256_andnot_ps(sign, v));
            nan0 = _mm256_or_ps(nan0, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        }
        let m = _mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3));
        let nan = _mm256_or_ps(nan0, nan1);
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 values.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        let tail = &x[n8..];
        let absmax = tail.iter().chain(&lanes).fold(0f32, |a, v| a.max(v.abs()));
        // NaN or Inf inputs (where `f32::max` and `as i8` treat NaN differently from the vector
        // max and conversion) go to the reference, which defines the result.
        if _mm256_movemask_ps(nan) != 0 || tail.iter().any(|v| v.is_nan()) || absmax.is_infinite() {
            return super::quantize_row_int8(x, q);
        }
        let s = (1.0f32 / absmax.max(1e-5)) * 127.0;
        let sv = _mm256_set1_ps(s);
        let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
        for i in (0..n8).step_by(8) {
            // SAFETY: i + 8 <= n8 <= x.len() <= q.len().
            unsafe {
                let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(i)), sv);
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                let c = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
                let w = _mm256_cvtps_epi32(c);
                // 8 i32 in [-128, 127] -> 8 i8 (saturating packs are exact here).
                let p16 =
                    _mm_packs_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
                let p8 = _mm_packs_epi16(p16, p16);
                _mm_storel_epi64(q.as_mut_ptr().add(i).cast(), p8);
            }
        }
        for (qv, &xv) in q[n8..].iter_mut().zip(&x[n8..]) {
            *qv = (xv * s).round_ties_even().clamp(-128.0, 127.0) as i8;
        }
        s
    }
}

/// The output value of an exact accumulator for a row with scale `s`.
#[inline]
fn dequant(acc: i32, s: f32, weight_scale: f32, mode: WeightScaleMode) -> f32 {
    match mode {
        WeightScaleMode::Multiply => acc as f32 / s * weight_scale,
        WeightScaleMode::Divide => acc as f32 / (weight_scale * s),
    }
}

/// How one row's exact accumulators become outputs (see [`dequant`]): the row's sum of codes
/// and scale, and the weight scales (per channel from the run's first output, or shared).
#[derive(Clone, Copy)]
struct RowDequant<'a> {
    qsum: i32,
    s: f32,
    per_channel: Option<&'a [f32]>,
    ws: f32,
    mode: WeightScaleMode,
}

/// `dst[i] = dequant(accs[i] - qsum, s, weight scale i)` for one run of outputs of one row.
fn dequant_run(isa: HostIsa, dst: &mut [f32], accs: &[i32], d: RowDequant<'_>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the device selects Avx2/Avx512Vnni only after detecting AVX2.
        HostIsa::Avx2 | HostIsa::Avx512Vnni => unsafe { dequant_run_avx2(dst, accs, d) },
        _ => dequant_run_impl(dst, accs, d),
    }
}

/// [`dequant_run_impl`] with 8-wide divisions (IEEE division: the same bits); the 4-wide
/// divisions of the baseline build were a twentieth of prefill.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dequant_run_avx2(dst: &mut [f32], accs: &[i32], d: RowDequant<'_>) {
    dequant_run_impl(dst, accs, d)
}

/// One loop per case, so that each vectorizes.
#[inline(always)]
fn dequant_run_impl(dst: &mut [f32], accs: &[i32], d: RowDequant<'_>) {
    let RowDequant {
        qsum,
        s,
        per_channel,
        ws,
        mode,
    } = d;
    match (per_channel, mode) {
        (Some(v), _) => {
            for ((d, &a), &w) in dst.iter_mut().zip(accs).zip(v) {
                *d = dequant(a - qsum, s, w, mode);
            }
        }
        (None, WeightScaleMode::Multiply) => {
            for (d, &a) in dst.iter_mut().zip(accs) {
                *d = dequant(a - qsum, s, ws, WeightScaleMode::Multiply);
            }
        }
        (None, WeightScaleMode::Divide) => {
            for (d, &a) in dst.iter_mut().zip(accs) {
                *d = dequant(a - qsum, s, ws, WeightScaleMode::Divide);
            }
        }
    }
}

/// The RMSNorm a `bitlinear` applies to its input first (`InputRmsNorm`): each row is normalized
/// into scratch just before it is quantized, while it is in L1.
pub(crate) struct InputNormCmd {
    pub gamma: Option<Arc<HostBuffer>>,
    pub epsilon: f32,
    /// The input is bf16, so the separate `rms_norm` would store its output as bf16: the
    /// normalized values are rounded the same way, for the same bits as the two ops.
    pub round_bf16: bool,
    /// Gamma decoded to f32 (capacity reserved unless it is f32).
    pub s_gamma: Vec<f32>,
    /// The normalized rows (capacity reserved).
    pub normed: Vec<f32>,
}

/// A row's normalization in [`quantize_rows`]: `rms_norm_row` into row `r` of `out`.
#[derive(Clone, Copy)]
struct RowNorm<'a> {
    gamma: Option<&'a [f32]>,
    eps: f32,
    round_bf16: bool,
    /// `rows * k` values.
    out: SendPtr<f32>,
}

/// Groups per task of [`build_tables`] (a multiple of a segment's 16).
const TABLE_TASK_GROUPS: usize = 256;

/// Builds the `Lut3` or `Base3` (`layout`) table of each of the quantized rows of `q` (`kp`
/// apart) into `tables` (`bytes` per row), split by groups over the pool: the shared tables of a
/// GEMM without the decoding kernel, one per activation row (a GEMV's are per thread,
/// `with_gemv_tables`).
fn build_tables(
    ctx: &HostCtx<'_>,
    layout: TernaryLayout,
    q: &[i8],
    kp: usize,
    tables: &mut [u8],
    bytes: usize,
) {
    let (isa, gb) = (ctx.isa, table_group_bytes(ctx.isa, layout));
    let groups = bytes / gb;
    let per_row = groups.div_ceil(TABLE_TASK_GROUPS);
    let rows = tables.len() / bytes.max(1);
    let tp = SendPtr(tables.as_mut_ptr());
    let task = |i: usize| {
        let (r, g0) = (i / per_row, (i % per_row) * TABLE_TASK_GROUPS);
        let g1 = (g0 + TABLE_TASK_GROUPS).min(groups);
        assert!(
            r < rows && r * kp + 3 * g1 < q.len(),
            "table task out of range"
        );
        // SAFETY: bytes r * bytes + [g0 gb, g1 gb) are inside `tables` (r < rows, g1 <= groups);
        // each task writes its own groups of its own row only, and `tables` outlives the
        // parallel region.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(tp.get().add(r * bytes + g0 * gb), (g1 - g0) * gb)
        };
        // A group's entries depend on its own three values only; the builder reads one more.
        build_table_isa(isa, layout, &q[r * kp + 3 * g0..r * kp + 3 * g1 + 1], dst);
    };
    ctx.pool.run(rows * per_row, &task);
}

/// Quantizes `rows` rows of `k` values into `q` (rows `kp >= k` apart, the tail zero) and
/// `scales`, and records each row's sum of codes in `qsums` (parallel over rows when large).
/// With `norm`, each row is RMS-normalized first.
#[allow(clippy::too_many_arguments)] // the scratch outputs of one op, each its own buffer
fn quantize_rows(
    ctx: &HostCtx<'_>,
    x: &[f32],
    k: usize,
    kp: usize,
    q: &mut [i8],
    scales: &mut [f32],
    qsums: &mut [i32],
    norm: Option<RowNorm<'_>>,
) {
    let rows = scales.len();
    let one = |r: usize, qr: &mut [i8], s: &mut f32, qs: &mut i32| {
        let mut xr = &x[r * k..(r + 1) * k];
        if let Some(n) = norm {
            // SAFETY: `n.out` holds `rows * k` values and r < rows; row r is written by this
            // call only (each row is handled by exactly one task); the buffer outlives the
            // parallel region and nothing else reads it meanwhile.
            let dst = unsafe { std::slice::from_raw_parts_mut(n.out.get().add(r * k), k) };
            rms_norm_row_isa(ctx.isa, xr, None, n.gamma, None, n.eps, dst);
            if n.round_bf16 {
                round_bf16_isa(ctx.isa, dst);
            }
            xr = dst;
        }
        *s = quantize_row_int8_isa(ctx.isa, xr, &mut qr[..k]);
        qr[k..].fill(0);
        *qs = sum_i8_isa(ctx.isa, &qr[..k]);
    };
    if rows * k < QUANT_PAR_MIN || ctx.pool.num_threads() == 1 {
        for (r, ((qr, s), qs)) in q
            .chunks_exact_mut(kp)
            .zip(scales.iter_mut())
            .zip(qsums.iter_mut())
            .enumerate()
        {
            one(r, qr, s, qs);
        }
        return;
    }
    let qp = SendPtr(q.as_mut_ptr());
    let sp = SendPtr(scales.as_mut_ptr());
    let sump = SendPtr(qsums.as_mut_ptr());
    ctx.pool
        .for_ranges(rows, ctx.pool.num_threads() * 4, &|range| {
            for r in range {
                // SAFETY: r < rows; q has rows * kp values, scales and qsums rows each; each row r
                // is handled by exactly one task, so the slices are disjoint; the buffers outlive
                // the parallel region.
                let (qr, s, qs) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(qp.get().add(r * kp), kp),
                        &mut *sp.get().add(r),
                        &mut *sump.get().add(r),
                    )
                };
                one(r, qr, s, qs);
            }
        });
}

/// `bitlinear` on the host.
pub(crate) struct BitLinearCmd {
    /// An RMSNorm to apply to the input first.
    pub input_norm: Option<InputNormCmd>,
    pub input: Arc<HostBuffer>,
    pub weight: Arc<HostBuffer>,
    pub out: Arc<HostBuffer>,
    /// Activation rows (tokens).
    pub rows: usize,
    pub k: usize,
    pub n: usize,
    pub weight_scale: f32,
    /// Per-output scales (Float32 `[n]`) replacing `weight_scale` when present.
    pub weight_scales: Option<Arc<HostBuffer>>,
    pub mode: WeightScaleMode,
    /// The input decoded to f32 (capacity reserved unless it is f32).
    pub sx: Vec<f32>,
    /// Quantized activations, `rows` rows of `k` padded to whole 128-value chunks (capacity
    /// reserved).
    pub q: Vec<i8>,
    /// Per-row scales `s` (capacity reserved).
    pub scales: Vec<f32>,
    /// Per-row sums of the quantized activations (capacity reserved).
    pub qsums: Vec<i32>,
    /// The output in f32 before rounding (capacity reserved unless the output is f32).
    pub so: Vec<f32>,
}

impl HostCommand for BitLinearCmd {
    fn name(&self) -> String {
        let norm = if self.input_norm.is_some() {
            " +rms_norm"
        } else {
            ""
        };
        format!("BitLinear {}x{}{norm}", self.k, self.n)
    }

    fn run(&mut self, ctx: &HostCtx<'_>) -> Result<()> {
        let (rows, k) = (self.rows, self.k);
        let kp = act_row_len(k);
        // `Bits2` kernels take whole chunks of the row.
        let klen = TernaryData::row_bytes(k) * 4;
        // The weight through its own handle, so that `w` borrows no part of `self`.
        let weight = Arc::clone(&self.weight);
        let gw = weight.read();
        let w = match &*gw {
            HostData::Ternary(t) => t,
            other => {
                return Err(Error::Backend {
                    op: "ttnn::experimental::bitlinear",
                    backend: "host",
                    message: format!("the weight holds {:?}, not ternary storage", other.dtype()),
                });
            }
        };
        let table_bytes = table_bytes(ctx.isa, w, rows, k) / rows.max(1);
        // A GEMV's tables are built per thread, inside its tasks (`with_gemv_tables`); other
        // tables here, on the calling thread's buffer: taken for the op and put back (`take`
        // leaves an empty Vec: no allocation), grown only (every byte used is rewritten below).
        let gemv_tables = rows < GEMV_MAX_ROWS;
        let shared = table_bytes > 0 && !gemv_tables;
        let mut lines = Vec::new();
        if shared {
            lines = LUT_TABLES.take();
            grow_tables(&mut lines, rows * table_bytes);
        }
        let tables = line_bytes(&mut lines);
        // The activation side in a scope of its own: its read guards end before the multiply.
        {
            let gi = self.input.read();
            let x = read_f32(&gi, &mut self.sx);
            let g_gamma;
            let norm = match &mut self.input_norm {
                Some(InputNormCmd {
                    gamma,
                    epsilon,
                    round_bf16,
                    s_gamma,
                    normed,
                }) => {
                    // Gamma may be stored padded (`[1, 1, K/32, 32]`): its first `k` values count.
                    let gamma = match gamma {
                        // A second read lock on the input's buffer could deadlock behind a writer.
                        Some(b) if Arc::ptr_eq(b, &self.input) => Some(&x[..k]),
                        Some(b) => {
                            g_gamma = b.read();
                            Some(&read_f32(&g_gamma, s_gamma)[..k])
                        }
                        None => None,
                    };
                    // Every value is rewritten (`rms_norm_row`): only a new length needs a fill.
                    if normed.len() != rows * k {
                        normed.clear();
                        normed.resize(rows * k, 0.0);
                    }
                    Some(RowNorm {
                        gamma,
                        eps: *epsilon,
                        round_bf16: *round_bf16,
                        out: SendPtr(normed.as_mut_ptr()),
                    })
                }
                None => None,
            };
            // Every value is rewritten (`quantize_rows` writes each row, padding included):
            // only a new length needs a fill.
            if self.q.len() != rows * kp {
                self.q.clear();
                self.q.resize(rows * kp, 0);
            }
            self.scales.resize(rows, 0.0);
            self.qsums.resize(rows, 0);
            quantize_rows(
                ctx,
                x,
                k,
                kp,
                &mut self.q,
                &mut self.scales,
                &mut self.qsums,
                norm,
            );
        }
        let tables = if table_bytes == 0 {
            Tables::None
        } else if !shared {
            Tables::PerThread {
                stamp: NEXT_STAMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            }
        } else {
            // The shared set overwrites whatever GEMV tables this thread's buffer held.
            TABLES_STAMP.set(0);
            build_tables(
                ctx,
                w.layout,
                &self.q,
                kp,
                &mut tables[..rows * table_bytes],
                table_bytes,
            );
            Tables::Shared(&tables[..rows * table_bytes])
        };
        let r = self.multiply(ctx, w, klen, tables, table_bytes);
        if shared {
            LUT_TABLES.set(lines);
        }
        r
    }
}

impl BitLinearCmd {
    /// The weight half of `run`, once the activations are quantized (and, for `Lut3` weights,
    /// their tables built: `table_bytes` per row).
    fn multiply(
        &mut self,
        ctx: &HostCtx<'_>,
        w: &TernaryData,
        klen: usize,
        tables: Tables<'_>,
        table_bytes: usize,
    ) -> Result<()> {
        let (rows, k, n) = (self.rows, self.k, self.n);
        let kp = act_row_len(k);
        let (q, scales, qsums) = (&self.q[..], &self.scales[..], &self.qsums[..]);
        let (ws, mode, isa) = (self.weight_scale, self.mode, ctx.isa);
        let gscales = self.weight_scales.as_ref().map(|b| b.read());
        let per_channel: Option<&[f32]> = match gscales.as_deref() {
            Some(HostData::F32(v)) => Some(v),
            Some(_) => unreachable!("validated: weight_scales is Float32"),
            None => None,
        };
        let mut out = self.out.write();
        let threads = ctx.pool.num_threads();
        // Two threads streaming at once see a longer loaded latency: 4 KiB ahead is best with
        // one (criterion dram_8x_ffn_gate 13.2-16.0 GB/s against 10.5-13.3 with 8 KiB), 8 KiB
        // with two (26.8-27.3 against 22.2-24.0).
        let ahead = PREFETCH_BYTES * threads.clamp(1, 2);
        write_rows(&mut out, rows * n, &mut self.so, |o| {
            // Outputs `j0..j0 + accs.len()` of row `r` in one loop, which the compiler turns
            // into vector divisions: one scalar division per output took a seventh of prefill.
            // `accs` are sums of codes times activations (`Bits2`, which subtract the row's sum
            // of activations) or of values times activations (`Lut3`).
            let put = |r: usize, j0: usize, accs: &[i32], codes: bool| {
                assert!(r < rows && j0 + accs.len() <= n, "output run out of bounds");
                let d = |j: usize| RowDequant {
                    qsum: if codes { qsums[r] } else { 0 },
                    s: scales[r],
                    per_channel: per_channel.map(|v| &v[j..]),
                    ws,
                    mode,
                };
                match o {
                    OutRows::F32(op) => {
                        // SAFETY: in bounds of the output (asserted: (r, j0 + len) <= (rows,
                        // n)); columns j0.. belong to the calling task only, so no other task
                        // touches these elements while the slice lives; the output outlives
                        // the parallel region.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(op.get().add(r * n + j0), accs.len())
                        };
                        dequant_run(isa, dst, accs, d(j0));
                    }
                    OutRows::Bf16(_) => {
                        // Dequantized on the stack, then stored in bf16 by this task.
                        let mut buf = [0f32; GEMV_RUN];
                        for (i, a) in accs.chunks(GEMV_RUN).enumerate() {
                            let j = j0 + i * GEMV_RUN;
                            let v = &mut buf[..a.len()];
                            dequant_run(isa, v, a, d(j));
                            // SAFETY: as above: in bounds, and this task's columns only.
                            unsafe { o.store(r * n + j, v) };
                        }
                    }
                }
            };
            let put_row = |r: usize, j0: usize, accs: &[i32]| put(r, j0, accs, true);
            if w.layout != TernaryLayout::Bits2 {
                // `Lut3` and `Base3`: work split by blocks of 32 weight rows.
                let bb = lut::block_bytes(k);
                let shared = match tables {
                    Tables::Shared(t) => t,
                    _ => &[],
                };
                let table = |r: usize| &shared[r * table_bytes..(r + 1) * table_bytes];
                let block_out = |b: usize, accs: &[i32; LUT_ROWS], r: usize| {
                    let j0 = b * LUT_ROWS;
                    put(r, j0, &accs[..(n - j0).min(LUT_ROWS)], false);
                };
                // A `Base3` GEMV runs four blocks per kernel call, so its work is split in
                // whole quads of blocks (`unit`); everything else by blocks.
                let base3_gemv =
                    w.layout == TernaryLayout::Base3 && matches!(tables, Tables::PerThread { .. });
                let unit = if base3_gemv { BASE3_GEMV_BLOCKS } else { 1 };
                let nb = lut::blocks(n);
                // `next`: the units this thread runs after these (`for_ranges_ahead`), whose
                // first bytes the GEMV hints as it ends these.
                let kernel = |units: std::ops::Range<usize>,
                              next: Option<std::ops::Range<usize>>| {
                    let range = units.start * unit..(units.end * unit).min(nb);
                    let task = &w.packed[range.start * bb..range.end * bb];
                    let next_task = next.map_or(&[][..], |u| {
                        &w.packed[u.start * unit * bb..(u.end * unit).min(nb) * bb]
                    });
                    if let Tables::PerThread { stamp } = tables {
                        // What the kernels read before their own hints take over: the first
                        // BASE3_AHEAD_SEGS segments of each of the first four `Base3` blocks,
                        // or the first LUT_PREFETCH_BYTES of the `Lut3` stream.
                        let head = |i: usize, len: usize| {
                            let at = (i * bb).min(task.len());
                            &task[at..(at + len).min(task.len())]
                        };
                        let warm: [&[u8]; BASE3_GEMV_BLOCKS] = if base3_gemv {
                            let ahead = (BASE3_AHEAD_SEGS * SEG_BYTES).min(bb);
                            [
                                head(0, ahead),
                                head(1, ahead),
                                head(2, ahead),
                                head(3, ahead),
                            ]
                        } else {
                            [head(0, LUT_PREFETCH_BYTES), &[], &[], &[]]
                        };
                        with_gemv_tables(
                            isa,
                            w.layout,
                            q,
                            kp,
                            rows,
                            table_bytes,
                            stamp,
                            &warm,
                            |t| {
                                let mut b = range.start;
                                while b < range.end {
                                    let tr = |r: usize| &t[r * table_bytes..(r + 1) * table_bytes];
                                    let done = (b - range.start) * bb;
                                    if base3_gemv && b + BASE3_GEMV_BLOCKS <= range.end {
                                        // A `Base3` GEMV: four blocks per call, each table line
                                        // serving the four; the kernel hints each block's stream a
                                        // few segments ahead, into the task's next blocks.
                                        let rest = &task[done + BASE3_GEMV_BLOCKS * bb..];
                                        let next = if rest.is_empty() { next_task } else { rest };
                                        for r in 0..rows {
                                            let mut accs = [[0i32; LUT_ROWS]; BASE3_GEMV_BLOCKS];
                                            lut_blocks(isa, tr(r), w, b, &mut accs, next);
                                            for (i, a) in accs.iter().enumerate() {
                                                block_out(b + i, a, r);
                                            }
                                        }
                                        b += BASE3_GEMV_BLOCKS;
                                        continue;
                                    }
                                    // One block per call: a sequential stream, with the bytes
                                    // LUT_PREFETCH_BYTES ahead hinted (within the task's blocks);
                                    // `Base3` hints its next block the same way as above.
                                    let pf = if base3_gemv {
                                        &task[done + bb..]
                                    } else {
                                        // Past the task's end, the next task's bytes.
                                        let start = done + LUT_PREFETCH_BYTES;
                                        let (s, at) = if start < task.len() {
                                            (task, start)
                                        } else {
                                            (next_task, (start - task.len()).min(next_task.len()))
                                        };
                                        &s[at..(at + bb).min(s.len())]
                                    };
                                    for r in 0..rows {
                                        let mut accs = [[0i32; LUT_ROWS]];
                                        lut_block(isa, &[tr(r)], w, b, &mut accs, pf);
                                        block_out(b, &accs[0], r);
                                    }
                                    b += 1;
                                }
                            },
                        );
                        return;
                    }
                    if has_gemm_kernel(isa, w.layout) {
                        // A GEMM (prefill): each block decoded once per GEMM_ROWS activation
                        // rows (outputs on the stack: a replay allocates nothing).
                        let mut accs = [[0i32; LUT_ROWS]; GEMM_ROWS];
                        for b in range {
                            let j0 = b * LUT_ROWS;
                            for r0 in (0..rows).step_by(GEMM_ROWS) {
                                let rn = (rows - r0).min(GEMM_ROWS);
                                gemm_block(isa, &q[r0 * kp..], kp, w, b, &mut accs[..rn]);
                                for (i, a) in accs[..rn].iter().enumerate() {
                                    put(r0 + i, j0, &a[..(n - j0).min(LUT_ROWS)], true);
                                }
                            }
                        }
                        return;
                    }
                    // A GEMM without that kernel: runs of blocks that stay in L2 while every
                    // activation row's table passes over them, four rows at a time (each weight
                    // group's indices and signs decoded once for the four).
                    let run = (LUT_GEMM_RUN_BYTES / bb).max(1);
                    let mut b0 = range.start;
                    while b0 < range.end {
                        let b1 = (b0 + run).min(range.end);
                        let mut r = 0;
                        while r + 4 <= rows {
                            let t4 = [table(r), table(r + 1), table(r + 2), table(r + 3)];
                            let mut accs = [[0i32; LUT_ROWS]; 4];
                            for b in b0..b1 {
                                lut_block(isa, &t4, w, b, &mut accs, &[]);
                                for (i, a) in accs.iter().enumerate() {
                                    block_out(b, a, r + i);
                                }
                            }
                            r += 4;
                        }
                        for r in r..rows {
                            let mut accs = [[0i32; LUT_ROWS]];
                            for b in b0..b1 {
                                lut_block(isa, &[table(r)], w, b, &mut accs, &[]);
                                block_out(b, &accs[0], r);
                            }
                        }
                        b0 = b1;
                    }
                };
                let units = nb.div_ceil(unit);
                let work = rows * k * n;
                if threads == 1 || work < PAR_MIN_WORK {
                    kernel(0..units, None);
                } else {
                    let tasks = (work / TASK_MIN_WORK)
                        .clamp(1, threads * RANGES_PER_THREAD)
                        .min(units);
                    if matches!(tables, Tables::PerThread { .. }) {
                        ctx.pool.for_ranges_ahead(units, tasks, &kernel);
                    } else {
                        ctx.pool.for_ranges(units, tasks, &|u| kernel(u, None));
                    }
                }
                return;
            }
            let kernel = |range: std::ops::Range<usize>| {
                if rows < GEMV_MAX_ROWS {
                    // A GEMV (decode): one weight row after the other, so the weights are read
                    // as one sequential stream, which the hardware prefetchers follow (with
                    // software prefetch PREFETCH_BYTES ahead); the activation row stays in L1.
                    // Exact integer sums, so the same values as the GEMM below. (Four rows per
                    // kernel call, each activation chunk loaded once for the four, computes ~15 %
                    // faster from cache but interleaves four streams 640-1728 bytes apart, and
                    // streamed from DRAM half as fast: 2B-4T decode 12.3-13.1 -> 15.4-15.9 tok/s
                    // with 2 threads, 7.5-7.6 -> 9.2-9.7 with 1.) Runs of GEMV_RUN rows per call
                    // share the horizontal sums and the (vectorized) dequantization.
                    let rb = TernaryData::row_bytes(k);
                    // The task's rows: prefetching stops at the end of the task's range.
                    let task = &w.packed[range.start * rb..range.end * rb];
                    let mut accs = [0i32; GEMV_RUN];
                    let mut j0 = range.start;
                    while j0 < range.end {
                        let len = (range.end - j0).min(GEMV_RUN);
                        let run = &task[(j0 - range.start) * rb..];
                        for r in 0..rows {
                            let qr = &q[r * kp..r * kp + klen];
                            dot_codes_rows(isa, qr, run, rb, &mut accs[..len], ahead);
                            put_row(r, j0, &accs[..len]);
                        }
                        j0 += len;
                    }
                    return;
                }
                gemm_tiles(isa, q, kp, klen, rows, w, range, &put_row);
            };
            let work = rows * k * n;
            if threads == 1 || work < PAR_MIN_WORK {
                kernel(0..n);
            } else {
                let tasks = (work / TASK_MIN_WORK)
                    .clamp(1, threads * RANGES_PER_THREAD)
                    .min(n);
                ctx.pool.for_ranges(n, tasks, &kernel);
            }
        });
        Ok(())
    }
}

/// How far ahead the `Lut3` GEMV prefetches its weights, into L2 (`_MM_HINT_T1`). Hints to L1
/// 4-8 KiB ahead left the stream's misses serialized with the table lookups: from DRAM the
/// kernel ran at about 1 / (1 / compute + 1 / bandwidth). Into L2, 16 KiB ahead, the two
/// overlap (criterion dram_8x_ffn_gate, AVX-512: 1 thread 8.6-9.7 -> 17.9 GB/s, 2 threads
/// 16-22 -> 30.8 GB/s; a plain read streams 25 and 28-31 GB/s on this machine).
const LUT_PREFETCH_BYTES: usize = 16 << 10;

/// Blocks per `Base3` GEMV kernel call (`lut_blocks`): each table line loaded serves 128
/// weight rows. criterion `bitlinear_gemv_GBps` (1 thread, AVX-512): one block per call 20 GB/s
/// from L3 and 9 from DRAM, two 30 and 12-14, four 34-35 and 22-24 (`Lut3`: 20 and 17-18).
const BASE3_GEMV_BLOCKS: usize = 4;

/// Activation rows per GEMM kernel call (`gemm_block`; 16 KiB of outputs on the stack). Each
/// call decodes its block of weights once, so a 128-token prompt now decodes each block once
/// instead of twice: criterion `bitlinear_gemm_GOPs/ffn_gate/m128`, 2 threads, alternated,
/// 683/690 GOP/s with 64 rows, 700/736 with 128.
const GEMM_ROWS: usize = 128;

/// Bytes of `Lut3` weight blocks a prefill task keeps in L2 while every activation row's table
/// passes over them.
const LUT_GEMM_RUN_BYTES: usize = 256 << 10;

/// Weight rows per GEMV kernel call (decode): outputs kept on the stack between the kernel and
/// the dequantization.
const GEMV_RUN: usize = 64;

/// Weight rows per GEMM tile.
const TILE_N: usize = 16;
/// Most 128-value chunks of K per GEMM tile (4096 values: 16 KiB for four activation rows,
/// 16 KiB of weights for 16 rows, within a 32 KiB L1 with the blocks evened out). Each kernel
/// call costs ~30 cycles beyond its chunks, so longer blocks win until L1 overflows: prefill
/// (1 thread) 29 tok/s with 16 chunks, 31 with 32, 29-31 with 64.
const TILE_K_CHUNKS: usize = 32;

/// A GEMM (prefill) over the weight rows `cols`: tiles of 4 activation rows x [`TILE_N`] weight
/// rows x up to [`TILE_K_CHUNKS`] chunks, so the activation tile stays in L1 while the weight
/// rows pass over it. Without tiling every weight row re-read all activations from L2 (one byte
/// per multiply-add). Integer partial sums add exactly: the same values as whole rows.
/// Activation rows are `kp` apart; their first `klen` values (whole chunks) count.
#[allow(clippy::too_many_arguments)] // one tile loop's inputs
fn gemm_tiles(
    isa: HostIsa,
    q: &[i8],
    kp: usize,
    klen: usize,
    rows: usize,
    w: &TernaryData,
    cols: std::ops::Range<usize>,
    put_row: &dyn Fn(usize, usize, &[i32]),
) {
    let chunks = klen / CHUNK;
    // K blocks of even size: 54 chunks as 27 + 27, not 32 + 22.
    let k_blocks = chunks.div_ceil(TILE_K_CHUNKS).max(1);
    let per_block = chunks.div_ceil(k_blocks).max(1);
    let mut jb = cols.start;
    while jb < cols.end {
        let je = (jb + TILE_N).min(cols.end);
        let mut r = 0;
        while r < rows {
            let rn = (rows - r).min(4);
            // acc[i][j - jb]: activation row r + i, weight row j.
            let mut acc = [[0i32; TILE_N]; 4];
            let mut c0 = 0;
            while c0 < chunks {
                let c1 = (c0 + per_block).min(chunks);
                let (q0, q1) = (c0 * CHUNK, c1 * CHUNK);
                let qrow = |i: usize| &q[(r + i) * kp + q0..(r + i) * kp + q1];
                for (t, j) in (jb..je).enumerate() {
                    let wr = &w.row(j)[c0 * CHUNK_BYTES..c1 * CHUNK_BYTES];
                    if rn == 4 {
                        // Four activation rows share each unpacked weight vector.
                        let a = dot_codes(isa, &[qrow(0), qrow(1), qrow(2), qrow(3)], wr);
                        for (acc_i, v) in acc.iter_mut().zip(a) {
                            acc_i[t] += v;
                        }
                    } else {
                        for (i, acc_i) in acc.iter_mut().enumerate().take(rn) {
                            acc_i[t] += dot_codes(isa, &[qrow(i)], wr)[0];
                        }
                    }
                }
                c0 = c1;
            }
            for (i, acc_i) in acc.iter().enumerate().take(rn) {
                put_row(r + i, jb, &acc_i[..je - jb]);
            }
            r += rn;
        }
        jb = je;
    }
}

/// `quantize_activations_int8` on the host: the int8 codes (stored as Int32) and the scales.
pub(crate) struct QuantizeCmd {
    pub input: Arc<HostBuffer>,
    pub q_out: Arc<HostBuffer>,
    pub s_out: Arc<HostBuffer>,
    pub rows: usize,
    pub k: usize,
    /// The input decoded to f32 (capacity reserved unless it is f32).
    pub sx: Vec<f32>,
    /// One quantized row (capacity `k`).
    pub qrow: Vec<i8>,
}

impl HostCommand for QuantizeCmd {
    fn run(&mut self, ctx: &HostCtx<'_>) -> Result<()> {
        let (rows, k) = (self.rows, self.k);
        let gi = self.input.read();
        let x = read_f32(&gi, &mut self.sx);
        let mut gq = self.q_out.write();
        let mut gs = self.s_out.write();
        let (HostData::I32(q), HostData::F32(s)) = (&mut *gq, &mut *gs) else {
            return Err(Error::Backend {
                op: "ttnn::experimental::quantize_activations_int8",
                backend: "host",
                message: "outputs are not Int32 / Float32 storage".into(),
            });
        };
        self.qrow.clear();
        self.qrow.resize(k, 0);
        for r in 0..rows {
            s[r] = quantize_row_int8_isa(ctx.isa, &x[r * k..(r + 1) * k], &mut self.qrow);
            for (d, &v) in q[r * k..(r + 1) * k].iter_mut().zip(&self.qrow) {
                *d = v as i32;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_rounds_half_to_even_and_clamps_absmax() {
        // absmax 127 -> s = 1 exactly, so x * s = x and the ties are exact.
        let x = [127.0f32, 2.5, 3.5, -2.5, 0.5, -0.5, 1.5, -126.5];
        let mut q = [0i8; 8];
        let s = quantize_row_int8(&x, &mut q);
        assert_eq!(s, 1.0);
        assert_eq!(q, [127, 2, 4, -2, 0, 0, 2, -126]);
        let mut q = [1i8; 3];
        let s = quantize_row_int8(&[0.0; 3], &mut q);
        assert_eq!(s, 1.27e7);
        assert_eq!(q, [0; 3]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Every ISA's quantizer gives the reference's codes and scale, including ties, values
        /// past the clamp, zeros, Inf and NaN.
        #[test]
        fn every_isa_quantizes_as_the_reference(
            v in proptest::collection::vec(-300.0f32..300.0, 0..200),
            special in 0usize..5,
            at in 0usize..200,
        ) {
            let mut x = v;
            if let Some(e) = x.get_mut(at) {
                *e = [0.0, f32::INFINITY, f32::NAN, 127.5, -0.5][special];
            }
            let mut want = vec![0i8; x.len()];
            let s_want = quantize_row_int8(&x, &mut want);
            for isa in HostIsa::supported_list() {
                let mut got = vec![0i8; x.len()];
                let s = quantize_row_int8_isa(isa, &x, &mut got);
                proptest::prop_assert_eq!(s.to_bits(), s_want.to_bits());
                proptest::prop_assert_eq!(&got, &want, "{:?}", isa);
            }
        }
    }

    #[test]
    fn scale_is_torch_reciprocal_times_127() {
        // torch: 127 / 1.5 as `reciprocal(1.5) * 127` = 84.66667175 (0x42a95556), whereas the
        // correctly rounded quotient is 84.66666412 (0x42a95555).
        let mut q = [0i8; 2];
        let s = quantize_row_int8(&[1.5, -0.5], &mut q);
        assert_eq!(s.to_bits(), 0x42a9_5556);
        assert_ne!(s, 127.0f32 / 1.5);
    }
}
