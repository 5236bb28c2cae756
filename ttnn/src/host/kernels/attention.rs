//! Host kernels for the attention ops: prefill SDPA, chunked SDPA and (paged) decode SDPA.
//!
//! Every variant computes each query row with one routine, [`attend_rows`]: an online softmax
//! over key positions in increasing order, in blocks of [`KV_BLOCK`] positions aligned to
//! absolute multiples of 32, with a fixed-order dot product over the head dimension. A row's
//! arithmetic depends only on its query, its position range, the K/V values and the scale, never
//! on which other rows share the pass, the batch size, the task split or the thread count. So the
//! same query row gives bit-identical outputs in prefill, chunked prefill and decode (which the
//! model relies on: prefill and decode must agree), whatever the K/V storage (f32, bf16 or block
//! float decoded on the fly: decoding is exact and deterministic).

use std::sync::Arc;

use half::bf16;

use super::eltwise::SendPtr;
use super::{read_f32, write_f32};
use crate::device::HostIsa;
use crate::error::{Error, Result};
use crate::host::blockfloat::{BlockFloatData, GROUP, decode_value, group_scale};
use crate::host::data::HostData;
use crate::host::{HostBuffer, HostCommand, HostCtx};

/// Largest head dimension the host kernels take (stack buffers are sized by it). TT-NN's models
/// use at most 256.
pub(crate) const MAX_HEAD_DIM: usize = 256;
/// Key positions per online-softmax step. Steps start at absolute multiples of 32 (whatever the
/// row's first position), so a row's sequence of steps depends only on its position range.
pub(crate) const KV_BLOCK: usize = 32;
/// Query rows that share one pass over a K/V stream (each K/V row is decoded once per pass).
pub(crate) const MAX_GROUP_ROWS: usize = 16;
/// Work (attended positions x head dim, summed over rows) above which a command uses the pool.
const PAR_WORK: usize = 1 << 16;

/// f32 rows of a float tensor's storage, decoded on demand (no allocation).
#[derive(Clone, Copy, Debug)]
pub(crate) enum RowStore<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    Block(&'a BlockFloatData),
}

impl<'a> RowStore<'a> {
    /// The float storage `d`, or `None` for integer or ternary storage.
    pub fn new(d: &'a HostData) -> Option<Self> {
        match d {
            HostData::F32(v) => Some(Self::F32(v)),
            HostData::Bf16(v) => Some(Self::Bf16(v)),
            HostData::Block(b) => Some(Self::Block(b)),
            _ => None,
        }
    }

    /// Row `r` (of length `len`, the tensor's last dimension): borrowed for f32 storage,
    /// decoded into `buf` otherwise.
    #[inline]
    pub fn row<'b>(&'b self, r: usize, len: usize, buf: &'b mut [f32]) -> &'b [f32] {
        match self {
            Self::F32(v) => &v[r * len..(r + 1) * len],
            Self::Bf16(v) => {
                // Eight at a time with AVX2 (exact either way): one `to_f32` per value made a
                // bf16 cache slower to attend than an f32 one of twice the bytes.
                super::convert::bf16_to_f32_slice(&v[r * len..(r + 1) * len], &mut buf[..len]);
                &buf[..len]
            }
            Self::Block(b) => {
                decode_block_row(b, r, &mut buf[..len]);
                &buf[..len]
            }
        }
    }
}

impl RowStore<'_> {
    /// Hints row `r`'s stored bytes into L2 (see [`super::prefetch_l2`] and
    /// [`KV_PREFETCH_AHEAD`]); nothing for a row out of range.
    #[inline]
    fn prefetch_row(&self, r: usize, len: usize) {
        let span = r * len..(r + 1) * len;
        match self {
            Self::F32(v) => super::prefetch_l2(v.get(span).unwrap_or(&[])),
            Self::Bf16(v) => super::prefetch_l2(v.get(span).unwrap_or(&[])),
            Self::Block(b) => {
                let g = BlockFloatData::groups_per_row(len);
                super::prefetch_l2(b.exps.get(r * g..(r + 1) * g).unwrap_or(&[]));
                super::prefetch_l2(
                    b.mants
                        .get(r * g * GROUP..(r + 1) * g * GROUP)
                        .unwrap_or(&[]),
                );
            }
        }
    }
}

/// Positions ahead of the one being scored whose K row is hinted into cache: the cache holds
/// thirty layers' K/V, more than the L3 at a few hundred positions, and the rows of one head
/// are contiguous only within a page. The hints (K ahead, V for the value pass) go to L2, not
/// L1, leaving the L1 miss buffers to the loads. Measured on the 2B-4T shape (`bitnet bench
/// --profile-ops`, ~160 positions), attention per token: 3.26-3.35 ms with 1 thread and
/// 2.11-2.12 with 2 for L1 hints 4 positions ahead; 2.65-2.87 and 1.64 for L2 hints 16 ahead
/// (2.76-2.95 and 1.66-2.19 at 4 ahead).
const KV_PREFETCH_AHEAD: usize = 16;

/// Where key position `pos` of one (user, kv head) lives among the K/V tensor's rows.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PosMap<'a> {
    /// Contiguous: row `base + pos` (`[B, nkv, S, hd]` tensors and unpaged caches).
    Contig { base: usize },
    /// Paged cache `[blocks, nkv, bs, hd]`: row `(table[pos / bs] * nkv + head) * bs + pos % bs`.
    /// The table entries used were validated before the pass.
    Paged {
        table: &'a [u32],
        bs: usize,
        nkv: usize,
        head: usize,
    },
}

impl PosMap<'_> {
    #[inline]
    fn row(&self, pos: usize) -> usize {
        match *self {
            Self::Contig { base } => base + pos,
            Self::Paged {
                table,
                bs,
                nkv,
                head,
            } => (table[pos / bs] as usize * nkv + head) * bs + pos % bs,
        }
    }
}

/// The keys and values one query row attends to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KvStream<'a> {
    pub k: RowStore<'a>,
    pub v: RowStore<'a>,
    pub map: PosMap<'a>,
    pub hd: usize,
}

/// One query row: attends positions `start..end`, adding `bias[pos]` (an additive mask row
/// indexed by absolute position) to the scaled scores when given.
#[derive(Debug)]
pub(crate) struct QueryRow<'a> {
    pub q: &'a [f32],
    pub start: usize,
    pub end: usize,
    pub bias: Option<&'a [f32]>,
    pub out: &'a mut [f32],
}

impl QueryRow<'_> {
    /// An unused slot.
    pub fn empty() -> Self {
        QueryRow {
            q: &[],
            start: 0,
            end: 0,
            bias: None,
            out: &mut [],
        }
    }
}

/// Partial sums of [`dot`].
const DOT_LANES: usize = 16;

/// Dot product in a fixed order: 16 interleaved partial sums (lane `i` sums the products of
/// elements `i, i+16, i+32, ...`), reduced by a fixed halving tree, plus the tail (empty for head
/// dims that are multiples of 16). The explicit lanes let the compiler vectorise at any width
/// without changing the result.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ca, ta) = a[..n].as_chunks::<DOT_LANES>();
    let (cb, tb) = b[..n].as_chunks::<DOT_LANES>();
    // Lane 4j+i lives in acc4[j][i]: four 4-wide accumulators map directly onto SSE registers.
    let mut acc4 = [[0f32; 4]; DOT_LANES / 4];
    for (x, y) in ca.iter().zip(cb) {
        for (j, a) in acc4.iter_mut().enumerate() {
            for i in 0..4 {
                a[i] += x[4 * j + i] * y[4 * j + i];
            }
        }
    }
    let mut acc = [0f32; DOT_LANES];
    for (j, a) in acc4.iter().enumerate() {
        acc[4 * j..4 * j + 4].copy_from_slice(a);
    }
    let mut w = DOT_LANES / 2;
    while w > 0 {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
        w /= 2;
    }
    let mut tail = 0f32;
    for (x, y) in ta.iter().zip(tb) {
        tail += x * y;
    }
    acc[0] + tail
}

/// `acc += p * v`, elementwise.
#[inline]
fn axpy(acc: &mut [f32], p: f32, v: &[f32]) {
    for (a, &x) in acc.iter_mut().zip(v) {
        *a += p * x;
    }
}

/// Four [`axpy`]s in position order, `acc += p[0] v[0]`, then `p[1] v[1]`, ...: each element
/// takes the same additions in the same order, so the same bits as four calls.
fn axpy4(acc: &mut [f32], p: [f32; 4], v: [&[f32]; 4]) {
    let n = v.iter().fold(acc.len(), |n, v| n.min(v.len()));
    for (i, a) in acc[..n].iter_mut().enumerate() {
        for j in 0..4 {
            *a += p[j] * v[j][i];
        }
    }
}

/// Below this `softmax_exp` returns 0 (`exp(-86)` is 4e-38: nothing next to a softmax's
/// largest term, 1), which keeps the result's exponent normal.
const EXP_LO: f32 = -86.0;
/// Inputs above this are taken as this (a softmax only takes `x <= 0`).
const EXP_HI: f32 = 88.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `1.5 * 2^23`: adding it rounds a float below `2^22` in magnitude to the nearest integer
/// (ties to even), held in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// `ln 2` in two parts (Cody and Waite): `n * LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `exp(r) ~ 1 + r + r^2 P(r)` on `|r| <= ln(2) / 2` (Cephes' `expf` coefficients, highest
/// first).
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    // Cephes' 5.0000001201e-1, which rounds to 0.5 in f32.
    0.5,
];

/// `exp(x)` for the online softmax, within about 2 ulp for `EXP_LO <= x <= EXP_HI`; 0 below
/// (and for `-inf`), NaN for NaN. Spelled as plain f32 multiplies and adds (never fused),
/// which the SIMD versions repeat lane by lane ([`x86::exp16_avx512`]): every path gets the
/// same bits. libm's `expf`, one call per score, was about a sixth of the decode kernel.
#[inline]
pub(crate) fn softmax_exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < EXP_LO {
        return 0.0;
    }
    let x = x.min(EXP_HI);
    let k = x * LOG2E + ROUND_MAGIC;
    let n = k - ROUND_MAGIC;
    let ni = (k.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = EXP_P[0];
    for &c in &EXP_P[1..] {
        p = p * r + c;
    }
    let y = p * (r * r) + r + 1.0;
    // y is in [0.7, 1.42] and -124 <= n <= 127: the sum is a normal float's bits.
    f32::from_bits((y.to_bits() as i32).wrapping_add(ni << 23) as u32)
}

/// The largest of `s[lo..hi]` (NaNs skipped; `-inf` when empty), zero always `+0` (`f32::max`
/// of two zeros may give either, SIMD maxima the other).
#[inline]
fn block_max(s: &[f32; KV_BLOCK], lo: usize, hi: usize) -> f32 {
    s[lo..hi].iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x)) + 0.0
}

/// One row's probabilities for a block: `s[i] = softmax_exp(s[i] - m)` for `i` in `lo..hi`,
/// every other slot 0 (all of them when `m` is `-inf`); returns their sum over all
/// [`KV_BLOCK`] slots by a fixed halving tree (slot `i` plus slot `i + 16`, then `+ 8`, ...),
/// which the SIMD versions spell out.
#[inline]
fn block_probs(s: &mut [f32; KV_BLOCK], lo: usize, hi: usize, m: f32) -> f32 {
    let live = m != f32::NEG_INFINITY;
    for (i, x) in s.iter_mut().enumerate() {
        *x = if live && lo <= i && i < hi {
            softmax_exp(*x - m)
        } else {
            0.0
        };
    }
    let mut a = *s;
    let mut w = KV_BLOCK / 2;
    while w > 0 {
        for i in 0..w {
            a[i] += a[i + w];
        }
        w /= 2;
    }
    a[0]
}

/// Decodes block-float row `r` into `out`, one group scale per group; bit-identical to
/// `BlockFloatData::decode_row` (which evaluates the scale per element).
#[inline]
fn decode_block_row(b: &BlockFloatData, r: usize, out: &mut [f32]) {
    let g = BlockFloatData::groups_per_row(b.row_len);
    for gi in 0..g {
        let idx = r * g + gi;
        let exp = b.exps[idx];
        let start = gi * GROUP;
        let end = (start + GROUP).min(b.row_len);
        let mants = &b.mants[idx * GROUP..idx * GROUP + (end - start)];
        if exp == 255 {
            for (o, &m) in out[start..end].iter_mut().zip(mants) {
                *o = decode_value(b.format, exp, m);
            }
        } else {
            let scale = group_scale(b.format, exp);
            for (o, &m) in out[start..end].iter_mut().zip(mants) {
                *o = m as f32 * scale;
            }
        }
    }
}

/// The default softmax scale, `1/sqrt(head_dim)`, computed one way for every op so that all
/// variants use the same f32 value.
pub(crate) fn default_scale(hd: usize) -> f32 {
    1.0 / (hd as f32).sqrt()
}

/// Attention for up to [`MAX_GROUP_ROWS`] query rows over one K/V stream:
/// `out = softmax(scale * q.K[start..end]^T + bias) V[start..end]`.
///
/// Online softmax, per row: for each block of positions (blocks aligned to absolute multiples
/// of [`KV_BLOCK`], clipped to the row's range), scores `s_j = dot(q, k_j) * scale (+ bias)`;
/// the running max `m` is raised to the block max (rescaling the running sum `l` and the
/// accumulator by `exp(m_old - m)`); then `p_j = exp(s_j - m)`, `l +=` the block's `p_j`
/// summed by a fixed tree ([`block_probs`]), and, in position order, `acc += p_j * v_j`, with
/// `exp` the deterministic [`softmax_exp`]. Finally `out = acc / l`. Rows sharing a pass only
/// share the loading and decoding of K/V rows, never arithmetic. An empty range or a fully
/// masked row gives zeros.
pub(crate) fn attend_rows(isa: HostIsa, rows: &mut [QueryRow<'_>], kv: &KvStream<'_>, scale: f32) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the device selects Avx512Vnni only after detecting AVX-512 F/BW and AVX2.
        HostIsa::Avx512Vnni => unsafe { attend_rows_avx512(rows, kv, scale) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the device selects Avx2 only after detecting AVX2.
        HostIsa::Avx2 => unsafe { attend_rows_avx2(rows, kv, scale) },
        _ => attend_rows_impl(
            rows,
            kv,
            scale,
            dots,
            dots4,
            axpy,
            axpy4,
            axpy_rows,
            block_max,
            block_probs,
        ),
    }
}

/// [`dot`] of each of `qs` with `k`, into `out`.
#[inline]
fn dots(qs: &[&[f32]], k: &[f32], out: &mut [f32]) {
    for (o, q) in out.iter_mut().zip(qs) {
        *o = dot(q, k);
    }
}

/// `out[r][j] = dot(qs[r], ks[j])`.
#[inline]
fn dots4(qs: &[&[f32]], ks: [&[f32]; 4], out: &mut [[f32; 4]]) {
    for (o, q) in out.iter_mut().zip(qs) {
        for (o, k) in o.iter_mut().zip(ks) {
            *o = dot(q, k);
        }
    }
}

/// For each row `r` and each position `j` in order, `acc[r] += ps[r][o + j] * vs[j]` over the
/// first `hd` elements: as [`axpy`]s in that order, so the same bits.
#[inline]
fn axpy_rows(
    acc: &mut [[f32; MAX_HEAD_DIM]],
    ps: &[[f32; KV_BLOCK]],
    o: usize,
    vs: &[&[f32]],
    hd: usize,
) {
    for (a, p) in acc.iter_mut().zip(ps) {
        for (j, v) in vs.iter().enumerate() {
            axpy(&mut a[..hd], p[o + j], v);
        }
    }
}

/// [`attend_rows_impl`] compiled with 256-bit vectors and with [`x86`]'s AVX2 dots and axpys
/// (four K rows per pass over a query row, each V row loaded once for four query rows): the same
/// lane arithmetic in the same order (Rust never contracts to FMA), so the same bits.
/// (Left to the compiler, the 16-lane dot became 4-wide adds fed by 8-byte loads: the decode
/// kernel ran at ~4 GB/s of f32 K/V.)
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_rows_avx2(rows: &mut [QueryRow<'_>], kv: &KvStream<'_>, scale: f32) {
    attend_rows_impl(
        rows,
        kv,
        scale,
        // SAFETY: AVX2 (this function's contract).
        |qs, k, out| unsafe { x86::dots_avx2(qs, k, out) },
        // SAFETY: as above.
        |qs, ks, out| unsafe { x86::dots4_avx2(qs, ks, out) },
        // SAFETY: as above.
        |acc, p, v| unsafe { x86::axpy_avx2(acc, p, v) },
        // SAFETY: as above.
        |acc, p, v| unsafe { x86::axpy4_avx2(acc, p, v) },
        // SAFETY: as above.
        |acc, ps, o, vs, hd| unsafe { x86::axpy_rows_avx2(acc, ps, o, vs, hd) },
        block_max,
        block_probs,
    )
}

/// [`attend_rows_impl`] with the AVX-512 multi-row kernels ([`x86::dots_avx512`],
/// [`x86::axpy_rows_avx512`]): each K and V row is loaded once for all the rows of a pass,
/// with the same lane arithmetic as the reference, so the same bits.
///
/// # Safety
/// The CPU must support AVX-512 F and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn attend_rows_avx512(rows: &mut [QueryRow<'_>], kv: &KvStream<'_>, scale: f32) {
    attend_rows_impl(
        rows,
        kv,
        scale,
        // SAFETY: AVX-512 F and AVX2 (this function's contract).
        |qs, k, out| unsafe { x86::dots_avx512(qs, k, out) },
        // SAFETY: as above.
        |qs, ks, out| unsafe { x86::dots4_avx512(qs, ks, out) },
        // SAFETY: as above.
        |acc, p, v| unsafe { x86::axpy_avx2(acc, p, v) },
        // SAFETY: as above.
        |acc, p, v| unsafe { x86::axpy4_avx2(acc, p, v) },
        // SAFETY: as above.
        |acc, ps, o, vs, hd| unsafe { x86::axpy_rows_avx512(acc, ps, o, vs, hd) },
        // SAFETY: as above.
        |sr, lo, hi| unsafe { x86::block_max_avx512(sr, lo, hi) },
        // SAFETY: as above.
        |sr, lo, hi, m| unsafe { x86::block_probs_avx512(sr, lo, hi, m) },
    )
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{
        DOT_LANES, EXP_HI, EXP_LO, EXP_P, KV_BLOCK, LN2_HI, LN2_LO, LOG2E, MAX_HEAD_DIM,
        ROUND_MAGIC,
    };

    /// [`super::softmax_exp`] of 16 lanes: the same operations in the same order, lane by lane
    /// (callable only where AVX-512 F is enabled).
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn exp16_avx512(x: __m512) -> __m512 {
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        let low = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(EXP_LO));
        let magic = _mm512_set1_ps(ROUND_MAGIC);
        let xc = _mm512_min_ps(x, _mm512_set1_ps(EXP_HI));
        let k = _mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)), magic);
        let n = _mm512_sub_ps(k, magic);
        let ni = _mm512_sub_epi32(
            _mm512_castps_si512(k),
            _mm512_set1_epi32(ROUND_MAGIC.to_bits() as i32),
        );
        let r = _mm512_sub_ps(
            _mm512_sub_ps(xc, _mm512_mul_ps(n, _mm512_set1_ps(LN2_HI))),
            _mm512_mul_ps(n, _mm512_set1_ps(LN2_LO)),
        );
        let mut p = _mm512_set1_ps(EXP_P[0]);
        for &c in &EXP_P[1..] {
            p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
        }
        let y = _mm512_add_ps(
            _mm512_add_ps(_mm512_mul_ps(p, _mm512_mul_ps(r, r)), r),
            _mm512_set1_ps(1.0),
        );
        let e = _mm512_castsi512_ps(_mm512_add_epi32(
            _mm512_castps_si512(y),
            _mm512_slli_epi32::<23>(ni),
        ));
        // Below EXP_LO: 0; NaN: the input.
        _mm512_mask_mov_ps(_mm512_maskz_mov_ps(!low, e), nan, x)
    }

    /// Lanes `lo..hi` of a block's 32 slots, as the masks of its two 16-lane halves.
    #[inline]
    fn slot_masks(lo: usize, hi: usize) -> (u16, u16) {
        let below = |i: usize| {
            if i >= KV_BLOCK {
                u32::MAX
            } else {
                (1u32 << i) - 1
            }
        };
        let m = below(hi) & !below(lo);
        (m as u16, (m >> 16) as u16)
    }

    /// [`super::block_max`]: `vmaxps` returns its second operand when either is NaN, so with
    /// the data first NaN scores are skipped as `f32::max` skips them; the maximum of the rest
    /// does not depend on the order (but for the sign of a zero, made `+0` by both).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block_max_avx512(s: &[f32; KV_BLOCK], lo: usize, hi: usize) -> f32 {
        let (m0, m1) = slot_masks(lo, hi);
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        // SAFETY: the block holds 32 floats: two 16-lane loads.
        let (v0, v1) = unsafe {
            (
                _mm512_mask_loadu_ps(ninf, m0, s.as_ptr()),
                _mm512_mask_loadu_ps(ninf, m1, s.as_ptr().add(16)),
            )
        };
        _mm512_reduce_max_ps(_mm512_max_ps(v1, _mm512_max_ps(v0, ninf))) + 0.0
    }

    /// [`super::block_probs`]: 32 lanes of [`exp16_avx512`], masked to `lo..hi`, then the
    /// same halving tree.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and AVX2.
    #[target_feature(enable = "avx512f,avx2")]
    pub(super) unsafe fn block_probs_avx512(
        s: &mut [f32; KV_BLOCK],
        lo: usize,
        hi: usize,
        m: f32,
    ) -> f32 {
        let (m0, m1) = if m == f32::NEG_INFINITY {
            (0, 0)
        } else {
            slot_masks(lo, hi)
        };
        let mv = _mm512_set1_ps(m);
        let p = s.as_mut_ptr();
        // SAFETY: the block holds 32 floats: two 16-lane loads and stores.
        let (e0, e1) = unsafe {
            let e0 = _mm512_maskz_mov_ps(m0, exp16_avx512(_mm512_sub_ps(_mm512_loadu_ps(p), mv)));
            let e1 = _mm512_maskz_mov_ps(
                m1,
                exp16_avx512(_mm512_sub_ps(_mm512_loadu_ps(p.add(16)), mv)),
            );
            _mm512_storeu_ps(p, e0);
            _mm512_storeu_ps(p.add(16), e1);
            (e0, e1)
        };
        let a = _mm512_add_ps(e0, e1);
        let c = _mm256_add_ps(
            _mm512_castps512_ps256(a),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a))),
        );
        // The rest of the tree is `finish_dot`'s; its `+ 0.0` changes no sum of probabilities
        // (each is +0 or positive).
        finish_dot(c, 0.0)
    }

    /// The halving tree of [`super::dot`] over its 16 lanes, given as lanes 0-7 plus lanes
    /// 8-15 (`c`, the tree's first step), plus the tail.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn finish_dot(c: __m256, tail: f32) -> f32 {
        // The tree: lane i += lane i + 4, then + 2, + 1.
        let d = _mm_add_ps(_mm256_castps256_ps128(c), _mm256_extractf128_ps::<1>(c));
        let e = _mm_add_ps(d, _mm_movehl_ps(d, d));
        let f = _mm_add_ss(e, _mm_shuffle_ps::<0b01>(e, e));
        _mm_cvtss_f32(f) + tail
    }

    /// The sequential tail of [`super::dot`] (elements from `full` on).
    #[inline(always)]
    fn tail(a: &[f32], b: &[f32], full: usize) -> f32 {
        let mut t = 0f32;
        for (x, y) in a[full..].iter().zip(&b[full..]) {
            t += x * y;
        }
        t
    }

    /// [`super::dot`] with its 16 lanes in two 8-wide registers and its halving tree spelled
    /// out: the same additions in the same order, so the same bits.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let full = n / DOT_LANES * DOT_LANES;
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut i = 0;
        while i < full {
            // SAFETY: i + 16 <= full <= n, within both slices.
            unsafe {
                let p0 = _mm256_mul_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
                let p1 = _mm256_mul_ps(
                    _mm256_loadu_ps(pa.add(i + 8)),
                    _mm256_loadu_ps(pb.add(i + 8)),
                );
                lo = _mm256_add_ps(lo, p0);
                hi = _mm256_add_ps(hi, p1);
            }
            i += DOT_LANES;
        }
        finish_dot(_mm256_add_ps(lo, hi), tail(a, b, full))
    }

    /// [`super::dots4`] with 8-lane registers: each row against the four K rows at once (the
    /// row's chunk loaded once for the four, eight accumulators), then the four halving trees
    /// side by side ([`finish_dot4`]). Each dot takes [`super::dot`]'s lanes and tree: the same
    /// bits. Rows or K rows of another length than the first K row's, or a length that is not a
    /// multiple of 16, take [`dot_avx2`] one by one.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dots4_avx2(qs: &[&[f32]], ks: [&[f32]; 4], out: &mut [[f32; 4]]) {
        let n = qs.len().min(out.len());
        let len = ks[0].len();
        let uniform = len.is_multiple_of(DOT_LANES)
            && ks.iter().all(|k| k.len() == len)
            && qs[..n].iter().all(|q| q.len() == len);
        for (o, q) in out[..n].iter_mut().zip(qs) {
            if !uniform {
                for (o, k) in o.iter_mut().zip(ks) {
                    // SAFETY: AVX2 (contract).
                    *o = unsafe { dot_avx2(q, k) };
                }
                continue;
            }
            let mut lo = [_mm256_setzero_ps(); 4];
            let mut hi = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i < len {
                // SAFETY: i + 16 <= len, within `q` and every K row (all `len` long).
                unsafe {
                    let q0 = _mm256_loadu_ps(q.as_ptr().add(i));
                    let q1 = _mm256_loadu_ps(q.as_ptr().add(i + 8));
                    for p in 0..4 {
                        let k = ks[p].as_ptr().add(i);
                        lo[p] = _mm256_add_ps(lo[p], _mm256_mul_ps(q0, _mm256_loadu_ps(k)));
                        hi[p] = _mm256_add_ps(hi[p], _mm256_mul_ps(q1, _mm256_loadu_ps(k.add(8))));
                    }
                }
                i += DOT_LANES;
            }
            let c: [__m256; 4] = std::array::from_fn(|p| _mm256_add_ps(lo[p], hi[p]));
            *o = finish_dot4(c);
        }
    }

    /// [`finish_dot`] of four dots at once (no tail: `+ 0.0`, as an empty tail adds): the same
    /// additions per dot, its lanes gathered by shuffles instead of one reduction each.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn finish_dot4(c: [__m256; 4]) -> [f32; 4] {
        // d_p = lanes 0-3 + lanes 4-7 of c_p: [d0 | d1] and [d2 | d3].
        let d01 = _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(c[0], c[1]),
            _mm256_permute2f128_ps::<0x31>(c[0], c[1]),
        );
        let d23 = _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(c[2], c[3]),
            _mm256_permute2f128_ps::<0x31>(c[2], c[3]),
        );
        // e_p = (d_p[0] + d_p[2], d_p[1] + d_p[3]): [e0, e2 | e1, e3].
        let e = _mm256_add_ps(
            _mm256_shuffle_ps::<0b01_00_01_00>(d01, d23),
            _mm256_shuffle_ps::<0b11_10_11_10>(d01, d23),
        );
        // f_p = e_p[0] + e_p[1]: [f0, f2, f0, f2 | f1, f3, f1, f3].
        let f = _mm256_add_ps(
            _mm256_shuffle_ps::<0b10_00_10_00>(e, e),
            _mm256_shuffle_ps::<0b11_01_11_01>(e, e),
        );
        let mut v = [0f32; 8];
        // SAFETY: `v` holds 8 f32.
        unsafe { _mm256_storeu_ps(v.as_mut_ptr(), f) };
        [v[0] + 0.0, v[4] + 0.0, v[1] + 0.0, v[5] + 0.0]
    }

    /// [`super::axpy_rows`] with one ISA's group kernel (`$group::<R>`, R rows at a time):
    /// for each chunk of 16 elements, four rows' accumulators stay in registers while every
    /// position's V chunk is loaded once and added to all four, in position order
    /// (elementwise, the same operations: the same bits).
    macro_rules! axpy_rows_isa {
        ($(#[$doc:meta])* $name:ident, $features:literal, $group:ident) => {
            $(#[$doc])*
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(
                acc: &mut [[f32; MAX_HEAD_DIM]],
                ps: &[[f32; KV_BLOCK]],
                o: usize,
                vs: &[&[f32]],
                hd: usize,
            ) {
                axpy_rows_by(acc, ps, o, vs, hd, |a, p, full| {
                    // SAFETY: the features `$group` needs are this function's contract;
                    // `axpy_rows_by` checked the bounds.
                    unsafe {
                        match a.len() {
                            1 => $group::<1>(a, p, o, vs, full),
                            2 => $group::<2>(a, p, o, vs, full),
                            3 => $group::<3>(a, p, o, vs, full),
                            _ => $group::<4>(a, p, o, vs, full),
                        }
                    }
                })
            }
        };
    }

    axpy_rows_isa!(
        /// With 8-lane registers (two per chunk of 16).
        ///
        /// # Safety
        /// The CPU must support AVX2.
        axpy_rows_avx2,
        "avx2",
        axpy_group_avx2
    );
    axpy_rows_isa!(
        /// With 16-lane registers.
        ///
        /// # Safety
        /// The CPU must support AVX-512 F and AVX2.
        axpy_rows_avx512,
        "avx512f,avx2",
        axpy_group_avx512
    );

    /// The loop of [`super::axpy_rows`] around one ISA's kernel `group(acc, ps, full)` for up
    /// to four rows and the elements `0..full` (a multiple of 16); the rest of each row runs
    /// here, in the same order.
    #[inline(always)]
    fn axpy_rows_by(
        acc: &mut [[f32; MAX_HEAD_DIM]],
        ps: &[[f32; KV_BLOCK]],
        o: usize,
        vs: &[&[f32]],
        hd: usize,
        group: impl Fn(&mut [[f32; MAX_HEAD_DIM]], &[[f32; KV_BLOCK]], usize),
    ) {
        assert!(
            hd <= MAX_HEAD_DIM && o + vs.len() <= KV_BLOCK && vs.iter().all(|v| v.len() >= hd),
            "axpy_rows out of bounds"
        );
        let n = acc.len().min(ps.len());
        let full = hd / 16 * 16;
        let mut r = 0;
        while r < n {
            let rn = (n - r).min(4);
            group(&mut acc[r..r + rn], &ps[r..r + rn], full);
            for (a, p) in acc[r..r + rn].iter_mut().zip(&ps[r..r + rn]) {
                for d in full..hd {
                    for (j, v) in vs.iter().enumerate() {
                        a[d] += p[o + j] * v[d];
                    }
                }
            }
            r += rn;
        }
    }

    /// Elements `0..full` (a multiple of 16) of `R` rows of an `axpy_rows` kernel, with
    /// `$lanes`-lane registers (`$v`), `16 / $lanes` per chunk of 16 elements.
    macro_rules! axpy_group_isa {
        ($(#[$doc:meta])* $name:ident, $features:literal, $lanes:literal,
         $zero:ident, $load:ident, $store:ident, $add:ident, $mul:ident, $splat:ident) => {
            $(#[$doc])*
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn $name<const R: usize>(
                acc: &mut [[f32; MAX_HEAD_DIM]],
                ps: &[[f32; KV_BLOCK]],
                o: usize,
                vs: &[&[f32]],
                full: usize,
            ) {
                const K: usize = 16 / $lanes;
                let mut d = 0;
                while d < full {
                    // SAFETY: d + 16 <= full <= hd <= MAX_HEAD_DIM, within every row of `acc`
                    // and every `vs[j]` (caller's bounds).
                    unsafe {
                        let mut a = [[$zero(); K]; R];
                        for r in 0..R {
                            for k in 0..K {
                                a[r][k] = $load(acc[r][d + $lanes * k..].as_ptr());
                            }
                        }
                        for (j, v) in vs.iter().enumerate() {
                            let mut x = [$zero(); K];
                            for k in 0..K {
                                x[k] = $load(v.as_ptr().add(d + $lanes * k));
                            }
                            for r in 0..R {
                                let p = $splat(ps[r][o + j]);
                                for k in 0..K {
                                    a[r][k] = $add(a[r][k], $mul(p, x[k]));
                                }
                            }
                        }
                        for r in 0..R {
                            for k in 0..K {
                                $store(acc[r][d + $lanes * k..].as_mut_ptr(), a[r][k]);
                            }
                        }
                    }
                    d += 16;
                }
            }
        };
    }

    axpy_group_isa!(
        /// # Safety
        /// As [`axpy_rows_avx2`], whose bounds hold; `acc` and `ps` hold `R` rows.
        axpy_group_avx2,
        "avx2",
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_add_ps,
        _mm256_mul_ps,
        _mm256_set1_ps
    );
    axpy_group_isa!(
        /// # Safety
        /// As [`axpy_rows_avx512`], whose bounds hold; `acc` and `ps` hold `R` rows.
        axpy_group_avx512,
        "avx512f,avx2",
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_add_ps,
        _mm512_mul_ps,
        _mm512_set1_ps
    );

    /// [`super::dots`] by [`dot_avx2`].
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dots_avx2(qs: &[&[f32]], k: &[f32], out: &mut [f32]) {
        for (o, q) in out.iter_mut().zip(qs) {
            // SAFETY: AVX2 (contract).
            *o = unsafe { dot_avx2(q, k) };
        }
    }

    /// [`super::dots`] with 16-lane registers, four rows per pass over `k` (each chunk of `k`
    /// loaded once for the four): each row's lanes take the same products in the same order as
    /// [`super::dot`], so the same bits.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and AVX2.
    #[target_feature(enable = "avx512f,avx2")]
    pub(super) unsafe fn dots_avx512(qs: &[&[f32]], k: &[f32], out: &mut [f32]) {
        let n = qs.len().min(out.len());
        let mut r = 0;
        while r < n {
            let (q, o) = (&qs[r..n], &mut out[r..n]);
            // SAFETY: AVX-512 F and AVX2 (contract).
            r += unsafe {
                match q.len() {
                    1 => dots_group_avx512::<1>(q, k, o),
                    2 => dots_group_avx512::<2>(q, k, o),
                    3 => dots_group_avx512::<3>(q, k, o),
                    _ => dots_group_avx512::<4>(q, k, o),
                }
            };
        }
    }

    /// The first `R` rows of [`dots_avx512`]; returns `R`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and AVX2; `qs` and `out` hold at least `R` entries.
    #[target_feature(enable = "avx512f,avx2")]
    #[inline]
    unsafe fn dots_group_avx512<const R: usize>(
        qs: &[&[f32]],
        k: &[f32],
        out: &mut [f32],
    ) -> usize {
        // Plain loops, not `array::from_fn`/`map`: those closures are not inlined into this
        // function and lose its target features (the registers went through memory).
        let mut q: [&[f32]; R] = [&[]; R];
        // Each row's own length, as `dot` takes the shorter of its two slices.
        let mut n = [0usize; R];
        for j in 0..R {
            q[j] = qs[j];
            n[j] = q[j].len().min(k.len());
        }
        let full = n.iter().fold(k.len(), |a, &b| a.min(b)) / DOT_LANES * DOT_LANES;
        let mut acc = [_mm512_setzero_ps(); R];
        let mut i = 0;
        while i < full {
            // SAFETY: i + 16 <= full, which is within `k` and every `q[j]`.
            unsafe {
                let kv = _mm512_loadu_ps(k.as_ptr().add(i));
                for j in 0..R {
                    let p = _mm512_mul_ps(_mm512_loadu_ps(q[j].as_ptr().add(i)), kv);
                    acc[j] = _mm512_add_ps(acc[j], p);
                }
            }
            i += DOT_LANES;
        }
        for j in 0..R {
            // A row longer than `full` continues in the 16 lanes, as `dot`'s chunks would.
            let (a, b) = (&q[j][..n[j]], &k[..n[j]]);
            let jfull = n[j] / DOT_LANES * DOT_LANES;
            let mut lanes = acc[j];
            let mut i = full;
            while i < jfull {
                // SAFETY: i + 16 <= jfull <= n[j], within both slices.
                unsafe {
                    let p = _mm512_mul_ps(
                        _mm512_loadu_ps(a.as_ptr().add(i)),
                        _mm512_loadu_ps(b.as_ptr().add(i)),
                    );
                    lanes = _mm512_add_ps(lanes, p);
                }
                i += DOT_LANES;
            }
            let lo = _mm512_castps512_ps256(lanes);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(lanes)));
            out[j] = finish_dot(_mm256_add_ps(lo, hi), tail(a, b, jfull));
        }
        R
    }

    /// [`super::dots4`]: each row against four K rows, the 4 x 4 dots of a group of rows side
    /// by side in 16 accumulators (each dot with [`super::dot`]'s lanes and tree: the same
    /// bits). Rows or K rows of another length than the first K row's, or a length that is
    /// not a multiple of 16, go through [`dots_avx512`].
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and AVX2.
    #[target_feature(enable = "avx512f,avx2")]
    pub(super) unsafe fn dots4_avx512(qs: &[&[f32]], ks: [&[f32]; 4], out: &mut [[f32; 4]]) {
        let n = qs.len().min(out.len());
        let len = ks[0].len();
        let uniform = len.is_multiple_of(DOT_LANES)
            && ks.iter().all(|k| k.len() == len)
            && qs[..n].iter().all(|q| q.len() == len);
        if !uniform {
            for (p, k) in ks.iter().enumerate() {
                let mut col = [0f32; super::MAX_GROUP_ROWS];
                let m = n.min(col.len());
                // SAFETY: AVX-512 F and AVX2 (contract).
                unsafe { dots_avx512(&qs[..m], k, &mut col[..m]) };
                for (o, &c) in out[..m].iter_mut().zip(&col[..m]) {
                    o[p] = c;
                }
            }
            return;
        }
        let mut r = 0;
        while r < n {
            let (q, o) = (&qs[r..n], &mut out[r..n]);
            // SAFETY: AVX-512 F and AVX2 (contract); every slice holds `len` values.
            r += unsafe {
                match q.len() {
                    1 => dots4_group_avx512::<1>(q, ks, o),
                    2 => dots4_group_avx512::<2>(q, ks, o),
                    3 => dots4_group_avx512::<3>(q, ks, o),
                    _ => dots4_group_avx512::<4>(q, ks, o),
                }
            };
        }
    }

    /// The first `R` rows of [`dots4_avx512`]; returns `R`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and AVX2; `qs` and `out` hold at least `R` entries, and
    /// every row of `qs` and `ks` holds `ks[0].len()` values, a multiple of 16.
    #[target_feature(enable = "avx512f,avx2")]
    #[inline]
    unsafe fn dots4_group_avx512<const R: usize>(
        qs: &[&[f32]],
        ks: [&[f32]; 4],
        out: &mut [[f32; 4]],
    ) -> usize {
        let len = ks[0].len();
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        let mut i = 0;
        while i < len {
            // SAFETY: i + 16 <= len, within every row (contract).
            unsafe {
                let kv = [
                    _mm512_loadu_ps(ks[0].as_ptr().add(i)),
                    _mm512_loadu_ps(ks[1].as_ptr().add(i)),
                    _mm512_loadu_ps(ks[2].as_ptr().add(i)),
                    _mm512_loadu_ps(ks[3].as_ptr().add(i)),
                ];
                for j in 0..R {
                    let qv = _mm512_loadu_ps(qs[j].as_ptr().add(i));
                    for p in 0..4 {
                        acc[j][p] = _mm512_add_ps(acc[j][p], _mm512_mul_ps(qv, kv[p]));
                    }
                }
            }
            i += DOT_LANES;
        }
        for j in 0..R {
            for p in 0..4 {
                let lanes = acc[j][p];
                let lo = _mm512_castps512_ps256(lanes);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(lanes)));
                out[j][p] = finish_dot(_mm256_add_ps(lo, hi), tail(qs[j], ks[p], len));
            }
        }
        R
    }

    /// [`super::axpy4`], eight lanes at a time: each chunk of the accumulator is loaded and
    /// stored once for the four positions (elementwise, in the same order: the same bits).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn axpy4_avx2(acc: &mut [f32], p: [f32; 4], v: [&[f32]; 4]) {
        let n = v.iter().fold(acc.len(), |n, v| n.min(v.len()));
        let n8 = n / 8 * 8;
        let pv = p.map(|p| _mm256_set1_ps(p));
        let mut i = 0;
        while i < n8 {
            // SAFETY: i + 8 <= n8 <= n, within `acc` and every `v[j]`.
            unsafe {
                let a = acc.as_mut_ptr().add(i);
                let mut x = _mm256_loadu_ps(a);
                for j in 0..4 {
                    x = _mm256_add_ps(
                        x,
                        _mm256_mul_ps(pv[j], _mm256_loadu_ps(v[j].as_ptr().add(i))),
                    );
                }
                _mm256_storeu_ps(a, x);
            }
            i += 8;
        }
        for (k, a) in acc[n8..n].iter_mut().enumerate() {
            for j in 0..4 {
                *a += p[j] * v[j][n8 + k];
            }
        }
    }

    /// [`super::axpy`], eight lanes at a time (elementwise: the same bits).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn axpy_avx2(acc: &mut [f32], p: f32, v: &[f32]) {
        let n = acc.len().min(v.len());
        let n8 = n / 8 * 8;
        let pv = _mm256_set1_ps(p);
        let mut i = 0;
        while i < n8 {
            // SAFETY: i + 8 <= n8 <= n, within both slices.
            unsafe {
                let a = acc.as_mut_ptr().add(i);
                let x = _mm256_mul_ps(pv, _mm256_loadu_ps(v.as_ptr().add(i)));
                _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), x));
            }
            i += 8;
        }
        for (a, &x) in acc[n8..n].iter_mut().zip(&v[n8..n]) {
            *a += p * x;
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)] // the pass's inputs, then one closure per ISA kernel
fn attend_rows_impl(
    rows: &mut [QueryRow<'_>],
    kv: &KvStream<'_>,
    scale: f32,
    dots: impl Fn(&[&[f32]], &[f32], &mut [f32]),
    dots4: impl Fn(&[&[f32]], [&[f32]; 4], &mut [[f32; 4]]),
    axpy: impl Fn(&mut [f32], f32, &[f32]),
    axpy4: impl Fn(&mut [f32], [f32; 4], [&[f32]; 4]),
    axpy_rows: impl Fn(&mut [[f32; MAX_HEAD_DIM]], &[[f32; KV_BLOCK]], usize, &[&[f32]], usize),
    bmax: impl Fn(&[f32; KV_BLOCK], usize, usize) -> f32,
    probs: impl Fn(&mut [f32; KV_BLOCK], usize, usize, f32) -> f32,
) {
    let n = rows.len().min(MAX_GROUP_ROWS);
    let hd = kv.hd;
    let mut acc = [[0f32; MAX_HEAD_DIM]; MAX_GROUP_ROWS];
    let mut m = [f32::NEG_INFINITY; MAX_GROUP_ROWS];
    let mut l = [0f32; MAX_GROUP_ROWS];
    let mut s = [[0f32; KV_BLOCK]; MAX_GROUP_ROWS];
    let mut kbuf = [0f32; MAX_HEAD_DIM];
    let mut kbuf4 = [[0f32; MAX_HEAD_DIM]; 4];
    // A block's V rows, decoded (for f32 storage they are borrowed instead).
    let mut vbuf = [[0f32; MAX_HEAD_DIM]; KV_BLOCK];

    let active = |r: &QueryRow<'_>| r.start < r.end;
    let lo = rows[..n]
        .iter()
        .filter(|r| active(r))
        .map(|r| r.start)
        .min();
    let hi = rows[..n].iter().filter(|r| active(r)).map(|r| r.end).max();
    if let (Some(lo), Some(hi)) = (lo, hi) {
        let mut b0 = lo / KV_BLOCK * KV_BLOCK;
        while b0 < hi {
            let b1 = (b0 + KV_BLOCK).min(hi);
            let blo = b0.max(lo);
            let mut pos = blo;
            // Scores, four positions at a time where every row takes the whole block (decode,
            // and prefill away from the diagonal): each row's four dots run side by side, so
            // their chains of adds overlap instead of each waiting on its own (the same
            // arithmetic per dot: the same bits).
            if rows[..n].iter().all(|r| r.start <= blo && b1 <= r.end) {
                let mut qs: [&[f32]; MAX_GROUP_ROWS] = [&[]; MAX_GROUP_ROWS];
                for (q, row) in qs.iter_mut().zip(&rows[..n]) {
                    *q = row.q;
                }
                while pos + 4 <= b1 {
                    for j in 0..4 {
                        if pos + j + KV_PREFETCH_AHEAD < hi {
                            kv.k.prefetch_row(kv.map.row(pos + j + KV_PREFETCH_AHEAD), hd);
                        }
                        kv.v.prefetch_row(kv.map.row(pos + j), hd);
                    }
                    let [b0_, b1_, b2_, b3_] = &mut kbuf4;
                    let k4 = [
                        kv.k.row(kv.map.row(pos), hd, b0_),
                        kv.k.row(kv.map.row(pos + 1), hd, b1_),
                        kv.k.row(kv.map.row(pos + 2), hd, b2_),
                        kv.k.row(kv.map.row(pos + 3), hd, b3_),
                    ];
                    let mut xs = [[0f32; 4]; MAX_GROUP_ROWS];
                    dots4(&qs[..n], k4, &mut xs[..n]);
                    for (r, x4) in xs[..n].iter().enumerate() {
                        for (j, &d) in x4.iter().enumerate() {
                            let mut x = d * scale;
                            if let Some(b) = rows[r].bias {
                                x += b[pos + j];
                            }
                            s[r][pos + j - b0] = x;
                        }
                    }
                    pos += 4;
                }
            }
            // Scores: the rows that take the position, all against one load of its K row.
            // Meanwhile the K row a few positions on and this position's V row (for the value
            // pass below) are hinted into cache.
            for pos in pos..b1 {
                let mut qs: [&[f32]; MAX_GROUP_ROWS] = [&[]; MAX_GROUP_ROWS];
                let mut which = [0usize; MAX_GROUP_ROWS];
                let mut na = 0;
                for (r, row) in rows[..n].iter().enumerate() {
                    if row.start <= pos && pos < row.end {
                        qs[na] = row.q;
                        which[na] = r;
                        na += 1;
                    }
                }
                if na == 0 {
                    continue;
                }
                if pos + KV_PREFETCH_AHEAD < hi {
                    kv.k.prefetch_row(kv.map.row(pos + KV_PREFETCH_AHEAD), hd);
                }
                let kr = kv.map.row(pos);
                kv.v.prefetch_row(kr, hd);
                let k = kv.k.row(kr, hd, &mut kbuf);
                let mut xs = [0f32; MAX_GROUP_ROWS];
                dots(&qs[..na], k, &mut xs[..na]);
                for (&r, &d) in which[..na].iter().zip(&xs[..na]) {
                    let mut x = d * scale;
                    if let Some(b) = rows[r].bias {
                        x += b[pos];
                    }
                    s[r][pos - b0] = x;
                }
            }
            // Running max, rescale, probabilities.
            for (r, row) in rows[..n].iter().enumerate() {
                let (rs, re) = (row.start.max(b0), row.end.min(b1));
                if rs >= re {
                    continue;
                }
                let (lo, hi) = (rs - b0, re - b0);
                let bm = bmax(&s[r], lo, hi);
                if bm > m[r] {
                    if m[r] != f32::NEG_INFINITY {
                        let c = softmax_exp(m[r] - bm);
                        l[r] *= c;
                        for a in &mut acc[r][..hd] {
                            *a *= c;
                        }
                    }
                    m[r] = bm;
                }
                l[r] += probs(&mut s[r], lo, hi, m[r]);
            }
            // Values. When every row takes the whole block (decode, and prefill away from the
            // diagonal), all rows at once: each V row loaded once for all of them.
            if rows[..n].iter().all(|r| r.start <= blo && b1 <= r.end) {
                let mut vs: [&[f32]; KV_BLOCK] = [&[]; KV_BLOCK];
                for ((v, buf), pos) in vs.iter_mut().zip(vbuf.iter_mut()).zip(blo..b1) {
                    *v = kv.v.row(kv.map.row(pos), hd, buf);
                }
                axpy_rows(&mut acc[..n], &s[..n], blo - b0, &vs[..b1 - blo], hd);
                b0 += KV_BLOCK;
                continue;
            }
            // Else four positions at a time where every row takes all four or none of them
            // (`axpy4`: the accumulator loaded and stored once per four positions), else one.
            let mut pos = blo;
            while pos < b1 {
                let all = |r: &QueryRow<'_>| r.start <= pos && pos + 4 <= r.end;
                let none = |r: &QueryRow<'_>| r.end <= pos || pos + 4 <= r.start;
                if pos + 4 <= b1 && rows[..n].iter().all(|r| all(r) || none(r)) {
                    if rows[..n].iter().any(all) {
                        let [v0, v1, v2, v3] = &mut vbuf[..4] else {
                            unreachable!("KV_BLOCK >= 4")
                        };
                        let v4 = [
                            kv.v.row(kv.map.row(pos), hd, v0),
                            kv.v.row(kv.map.row(pos + 1), hd, v1),
                            kv.v.row(kv.map.row(pos + 2), hd, v2),
                            kv.v.row(kv.map.row(pos + 3), hd, v3),
                        ];
                        for (r, row) in rows[..n].iter().enumerate() {
                            if all(row) {
                                let o = pos - b0;
                                let p4 = [s[r][o], s[r][o + 1], s[r][o + 2], s[r][o + 3]];
                                axpy4(&mut acc[r][..hd], p4, v4);
                            }
                        }
                    }
                    pos += 4;
                    continue;
                }
                if !rows[..n].iter().any(|r| r.start <= pos && pos < r.end) {
                    pos += 1;
                    continue;
                }
                let v = kv.v.row(kv.map.row(pos), hd, &mut vbuf[0]);
                for (r, row) in rows[..n].iter().enumerate() {
                    if row.start <= pos && pos < row.end {
                        axpy(&mut acc[r][..hd], s[r][pos - b0], v);
                    }
                }
                pos += 1;
            }
            b0 += KV_BLOCK;
        }
    }
    for (r, row) in rows[..n].iter_mut().enumerate() {
        let out = &mut row.out[..hd];
        if l[r] > 0.0 {
            for (o, &a) in out.iter_mut().zip(&acc[r][..hd]) {
                *o = a / l[r];
            }
        } else {
            out.fill(0.0);
        }
    }
}

/// Reads a page table (INT32, or UINT16 when sharded) into `table` as u32, with every entry
/// outside `[0, max_blocks)` stored as `u32::MAX` (checked when a position maps to it).
pub(crate) fn load_page_table(d: &HostData, max_blocks: usize, table: &mut Vec<u32>) {
    table.clear();
    let conv = |x: i64| {
        if x >= 0 && (x as u64) < max_blocks as u64 && x < u32::MAX as i64 {
            x as u32
        } else {
            u32::MAX
        }
    };
    match d {
        HostData::I32(v) => table.extend(v.iter().map(|&x| conv(x as i64))),
        HostData::U16(v) => table.extend(v.iter().map(|&x| conv(x as i64))),
        HostData::U32(v) => table.extend(v.iter().map(|&x| conv(x as i64))),
        _ => {}
    }
}

/// Fails (naming `op`) if a position in `start..end` maps to an invalid page-table entry of
/// `row` (a slice of the loaded table), or lies beyond the table.
pub(crate) fn check_pages(
    op: &'static str,
    user: usize,
    row: &[u32],
    raw: &HostData,
    raw_offset: usize,
    bs: usize,
    positions: std::ops::Range<usize>,
) -> Result<()> {
    let (start, end) = (positions.start, positions.end);
    if start >= end {
        return Ok(());
    }
    let (first, last) = (start / bs, (end - 1) / bs);
    if last >= row.len() {
        return Err(Error::arg(
            op,
            format!(
                "user {user}: position {} needs page-table column {last}, but the page table has {} columns",
                end - 1,
                row.len()
            ),
        ));
    }
    for (c, &e) in row.iter().enumerate().take(last + 1).skip(first) {
        if e == u32::MAX {
            let raw_val = match raw {
                HostData::I32(v) => v[raw_offset + c] as i64,
                HostData::U16(v) => v[raw_offset + c] as i64,
                HostData::U32(v) => v[raw_offset + c] as i64,
                _ => -1,
            };
            return Err(Error::arg(
                op,
                format!(
                    "user {user}: page table entry [{user}, {c}] = {raw_val} is not a block of the cache"
                ),
            ));
        }
    }
    Ok(())
}

/// Integer values of a position / index tensor (INT32 or UINT32).
pub(crate) fn int_at(d: &HostData, i: usize) -> i64 {
    match d {
        HostData::I32(v) => v.get(i).map_or(0, |&x| x as i64),
        HostData::U32(v) => v.get(i).map_or(0, |&x| x as i64),
        HostData::U16(v) => v.get(i).map_or(0, |&x| x as i64),
        HostData::U8(v) => v.get(i).map_or(0, |&x| x as i64),
        _ => 0,
    }
}

/// Row `[start, start + len)` of a mask, or `None` without a mask.
fn bias_row(mask: &[f32], start: usize, len: usize) -> Option<&[f32]> {
    if mask.is_empty() || len == 0 {
        None
    } else {
        mask.get(start..start + len)
    }
}

fn internal(op: &'static str, what: &str) -> Error {
    Error::Backend {
        op,
        backend: "host",
        message: format!("{what} is not float storage"),
    }
}

/// Where the current positions of a decode step come from.
#[derive(Debug)]
pub(crate) enum CurPos {
    /// INT32 tensor `[B]`: -1 skips the user.
    Tensor(Arc<HostBuffer>),
    /// Fixed at op time (validated then).
    List(Vec<u32>),
    /// Non-causal: every user attends the whole cache.
    All,
}

/// Decode SDPA, paged or not: Q `[1, B, nh, hd]` against K/V caches; output `[1, B, nh, hd]`.
#[derive(Debug)]
pub(crate) struct SdpaDecodeCmd {
    pub op: &'static str,
    pub q: Arc<HostBuffer>,
    pub k: Arc<HostBuffer>,
    pub v: Arc<HostBuffer>,
    pub out: Arc<HostBuffer>,
    pub page_table: Option<Arc<HostBuffer>>,
    pub cur_pos: CurPos,
    pub mask: Option<Arc<HostBuffer>>,
    pub batch: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
    /// Paged: block size; unpaged: the cache's sequence length.
    pub seq: usize,
    /// Paged: max blocks per sequence (page-table columns); unpaged: 1.
    pub cols: usize,
    /// Paged: blocks in the cache.
    pub max_blocks: usize,
    /// Mask row length (its last dimension).
    pub mask_len: usize,
    pub scale: f32,
    pub window: Option<usize>,
    /// Per-user position range (start, end); `None` skips the user. Capacity `batch`.
    pub ranges: Vec<Option<(usize, usize)>>,
    pub table: Vec<u32>,
    pub smask: Vec<f32>,
    pub so: Vec<f32>,
}

impl SdpaDecodeCmd {
    /// Positions each user attends, validated against the cache and the page table.
    fn resolve(&mut self) -> Result<()> {
        let op = self.op;
        let capacity = self.seq * self.cols;
        self.ranges.clear();
        let pos_guard = match &self.cur_pos {
            CurPos::Tensor(t) => Some(t.read()),
            _ => None,
        };
        for b in 0..self.batch {
            let p: i64 = match (&self.cur_pos, &pos_guard) {
                (CurPos::Tensor(_), Some(g)) => int_at(g, b),
                (CurPos::List(v), _) => v
                    .get(b)
                    .map_or(-1, |&x| if x == u32::MAX { -1 } else { x as i64 }),
                _ => {
                    self.ranges.push(Some((0, capacity)));
                    continue;
                }
            };
            if p == -1 {
                self.ranges.push(None);
                continue;
            }
            if p < 0 || p as u64 >= capacity as u64 {
                return Err(Error::arg(
                    op,
                    format!(
                        "cur_pos[{b}] = {p} is outside the cache (valid: -1 to skip, or 0..{capacity})"
                    ),
                ));
            }
            let end = p as usize + 1;
            let start = self.window.map_or(0, |w| end.saturating_sub(w));
            self.ranges.push(Some((start, end)));
        }
        drop(pos_guard);
        if let Some(pt) = &self.page_table {
            let g = pt.read();
            load_page_table(&g, self.max_blocks, &mut self.table);
            for b in 0..self.batch {
                if let Some((s, e)) = self.ranges[b] {
                    let row = &self.table[b * self.cols..(b + 1) * self.cols];
                    check_pages(op, b, row, &g, b * self.cols, self.seq, s..e)?;
                }
            }
        }
        Ok(())
    }
}

impl HostCommand for SdpaDecodeCmd {
    /// The TT-NN op it implements (paged or not), without its namespace.
    fn name(&self) -> String {
        self.op.rsplit("::").next().unwrap_or(self.op).to_string()
    }

    fn run(&mut self, ctx: &HostCtx<'_>) -> Result<()> {
        self.resolve()?;
        let op = self.op;
        let mask_guard = self.mask.as_ref().map(|m| m.read());
        let mask: &[f32] = match &mask_guard {
            Some(g) => read_f32(g, &mut self.smask),
            None => &[],
        };
        let qg = self.q.read();
        let kg = self.k.read();
        let vg_own;
        let vd: &HostData = if Arc::ptr_eq(&self.k, &self.v) {
            &kg
        } else {
            vg_own = self.v.read();
            &vg_own
        };
        let qs = RowStore::new(&qg).ok_or_else(|| internal(op, "q"))?;
        let ks = RowStore::new(&kg).ok_or_else(|| internal(op, "k"))?;
        let vs = RowStore::new(vd).ok_or_else(|| internal(op, "v"))?;
        let (batch, nh, nkv, hd, seq, cols) =
            (self.batch, self.nh, self.nkv, self.hd, self.seq, self.cols);
        let group = nh / nkv;
        // Heads per task: a whole GQA group shares each decoded K/V row; only when there are
        // fewer tasks than threads is the group split (re-decoding K/V rows per part). Rows
        // never share arithmetic, so the split does not change any result.
        let mut hg = group.min(MAX_GROUP_ROWS);
        while hg > 1 && batch * nkv * group.div_ceil(hg) < ctx.pool.num_threads() {
            hg = hg.div_ceil(2);
        }
        let subgroups = group.div_ceil(hg);
        let (scale, mask_len, paged) = (self.scale, self.mask_len, self.page_table.is_some());
        let ranges = &self.ranges[..];
        let table = &self.table[..];
        let work: usize = ranges
            .iter()
            .map(|r| r.map_or(0, |(s, e)| e - s))
            .sum::<usize>()
            * nh
            * hd;
        let mut out = self.out.write();
        let len = batch * nh * hd;
        write_f32(&mut out, len, &mut self.so, |o| {
            let base = SendPtr(o.as_mut_ptr());
            let n_tasks = batch * nkv * subgroups;
            let isa = ctx.isa;
            let task = |t: usize| {
                let b = t / (nkv * subgroups);
                let g = (t / subgroups) % nkv;
                let h0 = g * group + (t % subgroups) * hg;
                let h1 = (h0 + hg).min((g + 1) * group);
                // SAFETY: task t writes only the rows (b, h0..h1) of the output, a range no
                // other task touches; `o` outlives the parallel region.
                let out_rows = unsafe {
                    std::slice::from_raw_parts_mut(
                        base.get().add((b * nh + h0) * hd),
                        (h1 - h0) * hd,
                    )
                };
                let Some((start, end)) = ranges[b] else {
                    out_rows.fill(0.0);
                    return;
                };
                let map = if paged {
                    PosMap::Paged {
                        table: &table[b * cols..(b + 1) * cols],
                        bs: seq,
                        nkv,
                        head: g,
                    }
                } else {
                    PosMap::Contig {
                        base: (b * nkv + g) * seq,
                    }
                };
                let kv = KvStream {
                    k: ks,
                    v: vs,
                    map,
                    hd,
                };
                let n = h1 - h0;
                let mut qbuf = [[0f32; MAX_HEAD_DIM]; MAX_GROUP_ROWS];
                let mut rows: [QueryRow<'_>; MAX_GROUP_ROWS] =
                    std::array::from_fn(|_| QueryRow::empty());
                for (i, ((buf, chunk), slot)) in qbuf
                    .iter_mut()
                    .zip(out_rows.chunks_mut(hd))
                    .zip(rows.iter_mut())
                    .enumerate()
                    .take(n)
                {
                    let h = h0 + i;
                    *slot = QueryRow {
                        q: qs.row(b * nh + h, hd, buf),
                        start,
                        end,
                        bias: bias_row(mask, (b * nh + h) * mask_len, mask_len),
                        out: chunk,
                    };
                }
                attend_rows(isa, &mut rows[..n], &kv, scale);
            };
            if work >= PAR_WORK && n_tasks > 1 {
                ctx.pool.run(n_tasks, &task);
            } else {
                (0..n_tasks).for_each(task);
            }
        });
        Ok(())
    }
}

/// Prefill SDPA (`[B, nh, S, hd]` against `[B, nkv, Sk, hd]`) and chunked SDPA (query row `i`
/// of a chunk at absolute position `chunk_start + i`, against paged caches).
#[derive(Debug)]
pub(crate) struct SdpaPrefillCmd {
    pub op: &'static str,
    pub q: Arc<HostBuffer>,
    pub k: Arc<HostBuffer>,
    pub v: Arc<HostBuffer>,
    pub out: Arc<HostBuffer>,
    pub mask: Option<Arc<HostBuffer>>,
    /// Chunked: the page table `[B, cols]`.
    pub page_table: Option<Arc<HostBuffer>>,
    pub batch: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
    pub sq: usize,
    /// Unpaged: K/V sequence length; paged: block size.
    pub sk: usize,
    pub cols: usize,
    pub max_blocks: usize,
    /// Absolute position of query row 0.
    pub chunk_start: usize,
    pub causal: bool,
    pub window: Option<usize>,
    pub scale: f32,
    /// Mask `[B, 1|nh, Sq, Sk]`: whether it has one row block per head.
    pub mask_per_head: bool,
    pub mask_len: usize,
    pub table: Vec<u32>,
    pub smask: Vec<f32>,
    pub so: Vec<f32>,
}

/// Which positions prefill query rows attend.
#[derive(Clone, Copy, Debug)]
struct RowRanges {
    causal: bool,
    chunk_start: usize,
    window: Option<usize>,
    total: usize,
}

impl RowRanges {
    /// The positions query row `i` attends.
    fn range(&self, i: usize) -> (usize, usize) {
        if self.causal {
            let end = self.chunk_start + i + 1;
            let start = self.window.map_or(0, |w| end.saturating_sub(w));
            (start, end)
        } else {
            (0, self.total)
        }
    }
}

impl SdpaPrefillCmd {
    fn ranges(&self) -> RowRanges {
        RowRanges {
            causal: self.causal,
            chunk_start: self.chunk_start,
            window: self.window,
            total: self.sk * self.cols,
        }
    }
}

impl HostCommand for SdpaPrefillCmd {
    /// The TT-NN op it implements (paged or not), without its namespace.
    fn name(&self) -> String {
        self.op.rsplit("::").next().unwrap_or(self.op).to_string()
    }

    fn run(&mut self, ctx: &HostCtx<'_>) -> Result<()> {
        let op = self.op;
        if let Some(pt) = &self.page_table {
            let g = pt.read();
            load_page_table(&g, self.max_blocks, &mut self.table);
            let rr = self.ranges();
            let (_, end) = rr.range(self.sq.saturating_sub(1));
            let start = rr.range(0).0;
            for b in 0..self.batch {
                let row = &self.table[b * self.cols..(b + 1) * self.cols];
                check_pages(op, b, row, &g, b * self.cols, self.sk, start..end)?;
            }
        }
        let this = self.ranges();
        let mask_guard = self.mask.as_ref().map(|m| m.read());
        let mask: &[f32] = match &mask_guard {
            Some(g) => read_f32(g, &mut self.smask),
            None => &[],
        };
        let qg = self.q.read();
        let kg_own;
        let kd: &HostData = if Arc::ptr_eq(&self.q, &self.k) {
            &qg
        } else {
            kg_own = self.k.read();
            &kg_own
        };
        let vg_own;
        let vd: &HostData = if Arc::ptr_eq(&self.q, &self.v) {
            &qg
        } else if Arc::ptr_eq(&self.k, &self.v) {
            kd
        } else {
            vg_own = self.v.read();
            &vg_own
        };
        let qs = RowStore::new(&qg).ok_or_else(|| internal(op, "q"))?;
        let ks = RowStore::new(kd).ok_or_else(|| internal(op, "k"))?;
        let vs = RowStore::new(vd).ok_or_else(|| internal(op, "v"))?;
        let (batch, nh, nkv, hd, sq, sk, cols) = (
            self.batch, self.nh, self.nkv, self.hd, self.sq, self.sk, self.cols,
        );
        let group = nh / nkv;
        let hg = group.min(MAX_GROUP_ROWS);
        let subgroups = group.div_ceil(hg);
        let tq = (MAX_GROUP_ROWS / hg).max(1);
        let qtiles = sq.div_ceil(tq);
        let paged = self.page_table.is_some();
        let (scale, mask_len, mask_per_head) = (self.scale, self.mask_len, self.mask_per_head);
        let table = &self.table[..];
        let work = if self.causal {
            (0..sq)
                .map(|i| this.range(i))
                .map(|(s, e)| e - s)
                .sum::<usize>()
        } else {
            sq * sk * cols
        } * batch
            * nh
            * hd;
        let mut out = self.out.write();
        let len = batch * nh * sq * hd;
        write_f32(&mut out, len, &mut self.so, |o| {
            let base = SendPtr(o.as_mut_ptr());
            let n_tasks = batch * nkv * subgroups * qtiles;
            let isa = ctx.isa;
            let task = |t: usize| {
                let qt = t % qtiles;
                let sgi = (t / qtiles) % subgroups;
                let g = (t / (qtiles * subgroups)) % nkv;
                let b = t / (qtiles * subgroups * nkv);
                let h0 = g * group + sgi * hg;
                let h1 = (h0 + hg).min((g + 1) * group);
                let (i0, i1) = (qt * tq, ((qt + 1) * tq).min(sq));
                let map = if paged {
                    PosMap::Paged {
                        table: &table[b * cols..(b + 1) * cols],
                        bs: sk,
                        nkv,
                        head: g,
                    }
                } else {
                    PosMap::Contig {
                        base: (b * nkv + g) * sk,
                    }
                };
                let kv = KvStream {
                    k: ks,
                    v: vs,
                    map,
                    hd,
                };
                let ni = i1 - i0;
                let n = (h1 - h0) * ni;
                let mut qbuf = [[0f32; MAX_HEAD_DIM]; MAX_GROUP_ROWS];
                let mut rows: [QueryRow<'_>; MAX_GROUP_ROWS] =
                    std::array::from_fn(|_| QueryRow::empty());
                for (slot, (buf, r)) in qbuf.iter_mut().zip(rows.iter_mut()).enumerate().take(n) {
                    let (h, i) = (h0 + slot / ni, i0 + slot % ni);
                    let (start, end) = this.range(i);
                    let orow = (b * nh + h) * sq + i;
                    // SAFETY: each (b, h, i) output row belongs to exactly one task and one
                    // slot; `o` outlives the parallel region.
                    let out_row =
                        unsafe { std::slice::from_raw_parts_mut(base.get().add(orow * hd), hd) };
                    let mrow = if mask_per_head {
                        (b * nh + h) * sq + i
                    } else {
                        b * sq + i
                    };
                    *r = QueryRow {
                        q: qs.row(orow, hd, buf),
                        start,
                        end,
                        bias: bias_row(mask, mrow * mask_len, mask_len),
                        out: out_row,
                    };
                }
                attend_rows(isa, &mut rows[..n], &kv, scale);
            };
            if work >= PAR_WORK && n_tasks > 1 {
                ctx.pool.run(n_tasks, &task);
            } else {
                (0..n_tasks).for_each(task);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn naive(q: &[f32], k: &[f32], v: &[f32], hd: usize, start: usize, end: usize) -> Vec<f64> {
        let scale = 1.0 / (hd as f64).sqrt();
        let s: Vec<f64> = (start..end)
            .map(|p| {
                (0..hd)
                    .map(|d| q[d] as f64 * k[p * hd + d] as f64)
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
        let sum: f64 = e.iter().sum();
        (0..hd)
            .map(|d| {
                (start..end)
                    .map(|p| e[p - start] * v[p * hd + d] as f64)
                    .sum::<f64>()
                    / sum
            })
            .collect()
    }

    #[test]
    fn matches_naive_and_is_group_invariant() {
        let mut seed = 7u64;
        let hd = 64;
        let n = 150;
        let k: Vec<f32> = (0..n * hd).map(|_| rng(&mut seed) * 2.0).collect();
        let v: Vec<f32> = (0..n * hd).map(|_| rng(&mut seed)).collect();
        let qs: Vec<Vec<f32>> = (0..5)
            .map(|_| (0..hd).map(|_| rng(&mut seed) * 3.0).collect())
            .collect();
        let kv = KvStream {
            k: RowStore::F32(&k),
            v: RowStore::F32(&v),
            map: PosMap::Contig { base: 0 },
            hd,
        };
        let ranges = [(0, 1), (0, 33), (5, 100), (31, 150), (64, 65)];
        let scale = default_scale(hd);
        // Alone.
        let mut alone = vec![vec![0f32; hd]; 5];
        for (i, out) in alone.iter_mut().enumerate() {
            let mut rows = [QueryRow {
                q: &qs[i],
                start: ranges[i].0,
                end: ranges[i].1,
                bias: None,
                out,
            }];
            attend_rows(HostIsa::Scalar, &mut rows, &kv, scale);
        }
        // Grouped.
        let mut grouped = vec![vec![0f32; hd]; 5];
        let mut rows: Vec<QueryRow<'_>> = grouped
            .iter_mut()
            .enumerate()
            .map(|(i, out)| QueryRow {
                q: &qs[i],
                start: ranges[i].0,
                end: ranges[i].1,
                bias: None,
                out,
            })
            .collect();
        attend_rows(HostIsa::detect(), &mut rows, &kv, scale);
        assert_eq!(alone, grouped);
        for i in 0..5 {
            let want = naive(&qs[i], &k, &v, hd, ranges[i].0, ranges[i].1);
            for d in 0..hd {
                assert!(
                    (alone[i][d] as f64 - want[d]).abs() < 1e-5,
                    "row {i} d {d}: {} vs {}",
                    alone[i][d],
                    want[d]
                );
            }
        }
    }

    /// Every ISA's `attend_rows` on a group gives the bits of the scalar reference row by row:
    /// all rows on one range (the decode case: multi-row dots and whole-block value passes),
    /// or each on its own (the diagonal of a prefill), any head dim and group size, with a
    /// mask row, on f32 and bf16 K/V.
    fn check_group_matches_scalar_rows(
        hd: usize,
        nrows: usize,
        ranges: &[(usize, usize)],
        seed: u64,
        bf16_kv: bool,
        masked: bool,
    ) {
        let mut seed = seed;
        let len = ranges.iter().map(|r| r.1).max().unwrap_or(0).max(1);
        let k: Vec<f32> = (0..len * hd).map(|_| rng(&mut seed) * 2.0).collect();
        let v: Vec<f32> = (0..len * hd).map(|_| rng(&mut seed)).collect();
        let (kb, vb): (Vec<bf16>, Vec<bf16>) = (
            k.iter().map(|&x| bf16::from_f32(x)).collect(),
            v.iter().map(|&x| bf16::from_f32(x)).collect(),
        );
        let mask: Vec<f32> = (0..len)
            .map(|p| {
                if p % 7 == 3 {
                    f32::NEG_INFINITY
                } else {
                    rng(&mut seed)
                }
            })
            .collect();
        let qs: Vec<Vec<f32>> = (0..nrows)
            .map(|_| (0..hd).map(|_| rng(&mut seed) * 3.0).collect())
            .collect();
        let kv = KvStream {
            k: if bf16_kv {
                RowStore::Bf16(&kb)
            } else {
                RowStore::F32(&k)
            },
            v: if bf16_kv {
                RowStore::Bf16(&vb)
            } else {
                RowStore::F32(&v)
            },
            map: PosMap::Contig { base: 0 },
            hd,
        };
        let scale = default_scale(hd);
        fn row<'a>(
            q: &'a [f32],
            (start, end): (usize, usize),
            bias: Option<&'a [f32]>,
            out: &'a mut [f32],
        ) -> QueryRow<'a> {
            QueryRow {
                q,
                start,
                end,
                bias,
                out,
            }
        }
        let bias = masked.then_some(&mask[..]);
        let range = |i: usize| ranges[i % ranges.len()];
        let mut alone = vec![vec![0f32; hd]; nrows];
        for (i, out) in alone.iter_mut().enumerate() {
            let mut one = [row(&qs[i], range(i), bias, out)];
            attend_rows(HostIsa::Scalar, &mut one, &kv, scale);
        }
        let bits = |v: &[Vec<f32>]| {
            v.iter()
                .flat_map(|r| r.iter().map(|f| f.to_bits()))
                .collect::<Vec<_>>()
        };
        for isa in HostIsa::supported_list() {
            let mut grouped = vec![vec![0f32; hd]; nrows];
            let mut rows: Vec<QueryRow<'_>> = grouped
                .iter_mut()
                .enumerate()
                .map(|(i, out)| row(&qs[i], range(i), bias, out))
                .collect();
            attend_rows(isa, &mut rows, &kv, scale);
            assert_eq!(bits(&grouped), bits(&alone), "{isa:?}");
        }
    }

    #[test]
    fn decode_groups_match_the_reference_rows() {
        // The 2B-4T decode shape: four query heads per KV head, head dim 128.
        check_group_matches_scalar_rows(128, 4, &[(0, 161)], 1, false, false);
        check_group_matches_scalar_rows(128, 4, &[(0, 161)], 2, true, true);
        // A range starting inside a block, odd head dims, a group of five and of sixteen.
        check_group_matches_scalar_rows(72, 5, &[(13, 100)], 3, false, true);
        check_group_matches_scalar_rows(5, 16, &[(0, 40)], 4, true, false);
        check_group_matches_scalar_rows(200, 7, &[(31, 33)], 5, false, false);
    }

    proptest::proptest! {
        #[test]
        fn attention_groups_match_the_reference_rows(
            hd in 1usize..=160,
            nrows in 1usize..=16,
            starts in proptest::collection::vec(0usize..80, 1..4),
            lens in proptest::collection::vec(0usize..90, 1..4),
            seed in proptest::prelude::any::<u64>(),
            bf16_kv in proptest::prelude::any::<bool>(),
            masked in proptest::prelude::any::<bool>(),
        ) {
            let ranges: Vec<(usize, usize)> =
                starts.iter().zip(lens.iter().cycle()).map(|(&s, &l)| (s, s + l)).collect();
            check_group_matches_scalar_rows(hd, nrows, &ranges, seed, bf16_kv, masked);
        }
    }

    #[test]
    fn block_row_decode_matches_blockfloat() {
        use crate::host::blockfloat::BlockFormat;
        let mut seed = 3u64;
        let mut vals: Vec<f32> = (0..3 * 40).map(|_| rng(&mut seed) * 100.0).collect();
        vals[5] = f32::INFINITY;
        vals[50] = 1e-39;
        for f in [BlockFormat::Bfp8, BlockFormat::Bfp4] {
            let b = BlockFloatData::encode(f, &vals, 3, 40);
            for r in 0..3 {
                let (mut x, mut y) = (vec![0f32; 40], vec![0f32; 40]);
                b.decode_row(r, &mut x);
                decode_block_row(&b, r, &mut y);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&x), bits(&y));
            }
        }
    }

    proptest::proptest! {
        /// The AVX2 dot, axpy and axpy4 give the reference's bits (any length, signed zeros,
        /// wide magnitudes).
        #[test]
        fn simd_dot_and_axpy_match_the_reference(
            a in proptest::collection::vec(-1e6f32..1e6, 0..300),
            b in proptest::collection::vec(-1e3f32..1e3, 0..300),
            p in -10f32..10.0,
            zero in proptest::prelude::any::<bool>(),
        ) {
            let mut a = a;
            if zero {
                a.iter_mut().step_by(3).for_each(|v| *v = -0.0);
            }
            for isa in HostIsa::supported_list() {
                #[cfg(target_arch = "x86_64")]
                if isa != HostIsa::Scalar {
                    // SAFETY: `supported_list` names only ISAs this CPU has (AVX2 included).
                    let got = unsafe { x86::dot_avx2(&a, &b) };
                    proptest::prop_assert_eq!(got.to_bits(), dot(&a, &b).to_bits());
                    let (mut x, mut y) = (a.clone(), a.clone());
                    // SAFETY: as above.
                    unsafe { x86::axpy_avx2(&mut x, p, &b) };
                    axpy(&mut y, p, &b);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    proptest::prop_assert_eq!(bits(&x), bits(&y));
                    // Four positions at once: as four axpys in order, SIMD or not.
                    let rev: Vec<f32> = b.iter().rev().copied().collect();
                    let sq: Vec<f32> = b.iter().map(|v| v * v * 1e-3).collect();
                    let vs = [&b[..], &rev[..], &sq[..], &b[..]];
                    let ps = [p, -0.5 * p, 3.0, p * p];
                    let (mut x, mut y, mut z) = (a.clone(), a.clone(), a.clone());
                    // SAFETY: as above.
                    unsafe { x86::axpy4_avx2(&mut x, ps, vs) };
                    axpy4(&mut y, ps, vs);
                    for (pj, vj) in ps.iter().zip(vs) {
                        axpy(&mut z, *pj, vj);
                    }
                    proptest::prop_assert_eq!(bits(&x), bits(&z));
                    proptest::prop_assert_eq!(bits(&y), bits(&z));
                }
                let _ = isa;
            }
        }
    }

    /// Distance in representable f32 values (same-sign finite inputs).
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn softmax_exp_is_within_two_ulp_of_exp() {
        let mut worst = 0;
        let mut x = EXP_LO;
        while x <= EXP_HI {
            let want = (x as f64).exp() as f32;
            let got = softmax_exp(x);
            worst = worst.max(ulps(got, want));
            assert!(ulps(got, want) <= 2, "exp({x}) = {got}, want {want}");
            x += 0.000_37;
        }
        // Every float in [-1, 0] (where a softmax's largest terms live).
        let mut b = (-1f32).to_bits();
        while b >= 0x8000_0000 {
            let x = f32::from_bits(b);
            assert!(
                ulps(softmax_exp(x), (x as f64).exp() as f32) <= 2,
                "exp({x})"
            );
            b -= 97;
        }
        assert!(
            worst >= 1,
            "a sweep this long finds some rounding difference"
        );
        assert_eq!(softmax_exp(0.0), 1.0);
        assert_eq!(softmax_exp(-0.0), 1.0);
        assert_eq!(softmax_exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(softmax_exp(-86.5), 0.0);
        assert!(softmax_exp(f32::NAN).is_nan());
    }

    #[test]
    fn block_probs_sum_by_the_tree_and_zero_the_rest() {
        let mut s = [0f32; KV_BLOCK];
        for (i, x) in s.iter_mut().enumerate() {
            *x = -(i as f32) * 0.25;
        }
        let mut p = s;
        let sum = block_probs(&mut p, 3, 20, -0.5);
        for (i, &v) in p.iter().enumerate() {
            if (3..20).contains(&i) {
                assert_eq!(v, softmax_exp(s[i] + 0.5));
            } else {
                assert_eq!(v, 0.0);
            }
        }
        let want: f64 = p.iter().map(|&v| v as f64).sum();
        assert!((sum as f64 - want).abs() < 1e-6 * want);
        let mut q = s;
        assert_eq!(block_probs(&mut q, 0, 32, f32::NEG_INFINITY), 0.0);
        assert!(q.iter().all(|&v| v == 0.0));
        assert_eq!(block_max(&s, 5, 9), -1.25);
        assert_eq!(block_max(&[f32::NAN; KV_BLOCK], 0, 32), f32::NEG_INFINITY);
    }

    proptest::proptest! {
        /// The AVX-512 block max, exponentials and tree sum give the reference's bits, with
        /// NaN, infinite and signed-zero scores and any range of slots.
        #[test]
        fn simd_softmax_block_matches_the_reference(
            vals in proptest::collection::vec(-200f32..50.0, KV_BLOCK),
            specials in proptest::collection::vec((0usize..KV_BLOCK, 0u8..4), 0..6),
            lo in 0usize..KV_BLOCK,
            len in 1usize..=KV_BLOCK,
            m in -100f32..10.0,
            m_inf in proptest::prelude::any::<bool>(),
        ) {
            let mut s = [0f32; KV_BLOCK];
            s.copy_from_slice(&vals);
            for &(i, k) in &specials {
                s[i] = [f32::NAN, f32::NEG_INFINITY, -0.0, 0.0][k as usize];
            }
            let hi = (lo + len).min(KV_BLOCK);
            let m = if m_inf { f32::NEG_INFINITY } else { m };
            #[cfg(target_arch = "x86_64")]
            if HostIsa::supported_list().contains(&HostIsa::Avx512Vnni) {
                // SAFETY: `supported_list` names AVX-512 only where this CPU has it.
                let got = unsafe { x86::block_max_avx512(&s, lo, hi) };
                proptest::prop_assert_eq!(got.to_bits(), block_max(&s, lo, hi).to_bits());
                let (mut a, mut b) = (s, s);
                // SAFETY: as above.
                let got = unsafe { x86::block_probs_avx512(&mut a, lo, hi, m) };
                let want = block_probs(&mut b, lo, hi, m);
                proptest::prop_assert_eq!(got.to_bits(), want.to_bits());
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                proptest::prop_assert_eq!(bits(&a), bits(&b));
                // And lane by lane over the whole input range, specials included.
                // SAFETY: as above; 16 floats loaded from a 32-float block, and a __m512 is
                // 16 f32 lanes.
                let e: [f32; 16] = unsafe {
                    std::mem::transmute(x86::exp16_avx512(std::arch::x86_64::_mm512_loadu_ps(
                        s.as_ptr(),
                    )))
                };
                for (i, &v) in s.iter().enumerate().take(16) {
                    let want = softmax_exp(v);
                    proptest::prop_assert!(
                        e[i].to_bits() == want.to_bits() || (e[i].is_nan() && want.is_nan())
                    );
                }
            }
        }
    }

    #[test]
    fn dot_is_fixed_order() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - want).abs() < 1e-5);
    }
}
