//! Dot products of f32 activation rows with one stored weight row (f32, bf16 or block float):
//! the inner loop of `linear` / `matmul` with B stored `[N, K]`, such as the tied lm_head.
//! Scalar reference and AVX2 versions, chosen by the device's `HostIsa`; the integer
//! block-float path (below) also has an AVX-512 version, two groups per 512-bit step, which
//! computes the lm_head ~20 % faster on one core (the f32 and bf16 loops are bound by memory).
//!
//! The canonical order, which every path follows so that all give the same bits: the product
//! `x[k] * w[k]` is rounded to f32 (no fused multiply-add), then added to lane `k mod 32` in
//! increasing k; the 32 lanes are reduced by [`reduce`]. Thirty-two lanes are four independent
//! 8-wide accumulators, which hides the latency of the additions. A weight is decoded exactly
//! (`bf16` widens; a block-float value is `mantissa * 2^(exp - bias)`), so the result does not
//! depend on the weight format beyond the decoded values.
//!
//! Block-float rows (bfp8_b / bfp4_b, the default lm_head) take an integer path instead: each
//! activation row is quantized once per matmul to int16 ([`quantize_row_i16`]: `x * 32767 /
//! absmax`, half to even), so a group of 16 weights is one `madd` of int16 pairs into eight
//! exact int32 pair sums. The canonical order there: pair sum `j` of group `g`, converted to f32
//! and multiplied by the group's scale, is added to lane `8 (g mod 4) + j`; the lanes reduce by
//! [`reduce`] and the result is multiplied by the row's dequantization factor. The int16
//! rounding (relative 2^-16 of the row's largest value) is far below the weights' own block-float
//! rounding (2^-7 for bfp8_b). Rows with a non-finite activation, and weight rows with Inf/NaN or
//! subnormal group scales, take the f32 path.
//!
//! Several activation rows share one pass over the weights (the weight row is decoded once
//! per 32 values for all of them); each row's arithmetic is unchanged, so results are the same
//! whatever the number of rows: batch invariance.

use half::bf16;

use crate::device::HostIsa;
use crate::host::blockfloat::{BlockFormat, GROUP, decode_value, group_scale};

/// Accumulation lanes of the canonical order.
pub(crate) const LANES: usize = 32;

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

impl RowRef<'_> {
    /// Asks for the row's bytes ahead of use (see [`super::prefetch`]).
    #[inline]
    pub(crate) fn prefetch(self) {
        match self {
            Self::F32(w) => super::prefetch(w),
            Self::Bf16(w) => super::prefetch(w),
            Self::Block { exps, mants, .. } => {
                super::prefetch(exps);
                super::prefetch(mants);
            }
        }
    }

    /// Values `start..start + out.len()` as f32 (`start` a multiple of 16).
    #[inline]
    pub(crate) fn decode_into(self, start: usize, out: &mut [f32]) {
        match self {
            Self::F32(w) => out.copy_from_slice(&w[start..start + out.len()]),
            Self::Bf16(w) => {
                for (d, s) in out.iter_mut().zip(&w[start..]) {
                    *d = s.to_f32();
                }
            }
            Self::Block {
                format,
                exps,
                mants,
            } => {
                debug_assert_eq!(start % GROUP, 0);
                let g0 = start / GROUP;
                for (i, chunk) in out.chunks_mut(GROUP).enumerate() {
                    let g = g0 + i;
                    let e = exps[g];
                    let ms = &mants[g * GROUP..];
                    if e == 255 {
                        // Inf/NaN groups decode through the device's bit assembly.
                        for (d, &m) in chunk.iter_mut().zip(ms) {
                            *d = decode_value(format, e, m);
                        }
                    } else {
                        let scale = group_scale(format, e);
                        for (d, &m) in chunk.iter_mut().zip(ms) {
                            *d = m as f32 * scale;
                        }
                    }
                }
            }
        }
    }
}

/// The canonical reduction of the 32 lanes.
#[inline]
pub(crate) fn reduce(l: &[f32; LANES]) -> f32 {
    let mut s8 = [0f32; 8];
    for j in 0..8 {
        s8[j] = (l[j] + l[j + 8]) + (l[j + 16] + l[j + 24]);
    }
    let s4 = [s8[0] + s8[4], s8[1] + s8[5], s8[2] + s8[6], s8[3] + s8[7]];
    (s4[0] + s4[2]) + (s4[1] + s4[3])
}

/// One activation row quantized for the block-float path: int16 values padded with zeros to
/// whole groups of 16, and the factor that turns the integer dot product back into floats.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QRow<'a> {
    pub q: &'a [i16],
    pub scale: f32,
}

/// Quantizes `x` into `out` (`x.len()` rounded up to a multiple of 16; the tail zeroed) as
/// `round_half_even(x * (32767 / absmax))`; returns the dequantization factor `absmax / 32767`,
/// or `None` when `x` holds a NaN or an infinity (the caller then uses the f32 path).
pub(crate) fn quantize_row_i16(x: &[f32], out: &mut [i16]) -> Option<f32> {
    // Integer-valued rows that fit int16 (such as int8 activation codes, as the Tenstorrent
    // bitlinear lowering passes them) are taken exactly, with factor 1.
    if x.iter().all(|v| v.fract() == 0.0 && v.abs() <= 32767.0) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v as i16;
        }
        out[x.len()..].fill(0);
        return Some(1.0);
    }
    let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if !absmax.is_finite() || x.iter().any(|v| v.is_nan()) {
        return None;
    }
    let (inv, scale) = if absmax == 0.0 {
        (0.0, 0.0)
    } else if absmax < f32::MIN_POSITIVE {
        // 32767 / absmax would overflow: such rows take the f32 path.
        return None;
    } else {
        (32767.0 / absmax, absmax / 32767.0)
    };
    for (o, &v) in out.iter_mut().zip(x) {
        // |v * inv| <= 32767 up to one rounding; the clamp keeps that rounding in range.
        *o = (v * inv).round_ties_even().clamp(-32767.0, 32767.0) as i16;
    }
    out[x.len()..].fill(0);
    Some(scale)
}

/// Whether every group scale of the first `groups` groups is a normal f32 and no exponent is
/// Inf/NaN (255): the integer path's condition (min/max folds, which vectorize).
#[inline]
pub(crate) fn normal_groups(format: BlockFormat, exps: &[u8]) -> bool {
    let shift = format.mant_bits() as i32 - 1;
    let lo = exps.iter().fold(u8::MAX, |a, &e| a.min(e));
    let hi = exps.iter().fold(0u8, |a, &e| a.max(e));
    exps.is_empty() || (lo as i32 > shift && hi != 255)
}

/// The integer block-float dot products of `R` quantized activation rows with one block-float
/// weight row of `groups` groups, all normal ([`normal_groups`]; see the module doc).
///
/// `prefetch` is a row to bring into cache meanwhile (a GEMV names the row a few ahead): the
/// AVX2 kernel spreads its cache-line hints over the groups, two lines per 128 mantissas,
/// rather than issuing them in one burst, which stalls once the line-fill buffers are full
/// (a burst per row was three fifths of the lm_head's time outside the kernel at 1 thread).
#[inline]
pub(crate) fn dot_block_rows<const R: usize>(
    isa: HostIsa,
    xs: &[QRow<'_>; R],
    format: BlockFormat,
    exps: &[u8],
    mants: &[i8],
    groups: usize,
    prefetch: Option<(&[u8], &[i8])>,
) -> [f32; R] {
    let (exps, mants) = (&exps[..groups], &mants[..groups * GROUP]);
    assert!(
        xs.iter().all(|x| x.q.len() >= groups * GROUP),
        "activation rows too short"
    );
    debug_assert!(normal_groups(format, exps));
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512Vnni is only selected after detecting AVX-512 F/BW (and AVX2, FMA);
        // lengths asserted.
        HostIsa::Avx512Vnni => unsafe {
            x86::dot_block_rows_avx512(xs, format, exps, mants, prefetch)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 is only selected after detecting AVX2 and FMA; lengths asserted.
        HostIsa::Avx2 => unsafe { x86::dot_block_rows_avx2(xs, format, exps, mants, prefetch) },
        _ => {
            if let Some((e, m)) = prefetch {
                super::prefetch(e);
                super::prefetch(m);
            }
            dot_block_rows_scalar(xs, format, exps, mants)
        }
    }
}

/// The block-float GEMV of one quantized activation row (the lm_head at decode): `out[i]` is
/// the dot product of `x` with weight row `rows.start + i` (`groups` groups per row in `exps` and
/// `mants`) by the integer path, or `fallback(row)` for a row that path does not take (not
/// [`normal_groups`]). Rows `ahead` on (within `rows`) are prefetched meanwhile. One loop per
/// range with the row check inlined into the ISA's kernel: dispatching row by row through the
/// general matmul loop, which checked the exponents with SSE2 code, was ~5 % of a 2-thread
/// decode step.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemv_block_rows(
    isa: HostIsa,
    x: QRow<'_>,
    format: BlockFormat,
    exps: &[u8],
    mants: &[i8],
    groups: usize,
    rows: std::ops::Range<usize>,
    ahead: usize,
    next_rows: Option<std::ops::Range<usize>>,
    out: &mut [f32],
    fallback: &dyn Fn(usize) -> f32,
) {
    assert!(
        out.len() == rows.len()
            && exps.len() >= rows.end * groups
            && mants.len() >= rows.end * groups * GROUP
            && next_rows.as_ref().is_none_or(|nr| {
                exps.len() >= nr.end * groups && mants.len() >= nr.end * groups * GROUP
            })
            && x.q.len() >= groups * GROUP,
        "block-float GEMV out of bounds"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512Vnni is only selected after detecting AVX-512 F/BW (and AVX2, FMA);
        // bounds asserted.
        HostIsa::Avx512Vnni => unsafe {
            x86::gemv_block_rows_avx512(
                x, format, exps, mants, groups, rows, ahead, next_rows, out, fallback,
            )
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 is only selected after detecting AVX2 and FMA; bounds asserted.
        HostIsa::Avx2 => unsafe {
            x86::gemv_block_rows_avx2(
                x, format, exps, mants, groups, rows, ahead, next_rows, out, fallback,
            )
        },
        _ => gemv_block_rows_with(
            format,
            exps,
            mants,
            groups,
            rows,
            ahead,
            next_rows,
            out,
            fallback,
            |e, m, pf| {
                if let Some((pe, pm)) = pf {
                    super::prefetch(pe);
                    super::prefetch(pm);
                }
                dot_block_rows_scalar(&[x], format, e, m)[0]
            },
        ),
    }
}

/// The loop of [`gemv_block_rows`] around one ISA's row kernel `dot(exps, mants, prefetch)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gemv_block_rows_with(
    format: BlockFormat,
    exps: &[u8],
    mants: &[i8],
    groups: usize,
    rows: std::ops::Range<usize>,
    ahead: usize,
    next_rows: Option<std::ops::Range<usize>>,
    out: &mut [f32],
    fallback: &dyn Fn(usize) -> f32,
    dot: impl Fn(&[u8], &[i8], Option<(&[u8], &[i8])>) -> f32,
) {
    let row = |r: usize| {
        (
            &exps[r * groups..(r + 1) * groups],
            &mants[r * groups * GROUP..(r + 1) * groups * GROUP],
        )
    };
    for (o, r) in out.iter_mut().zip(rows.clone()) {
        let (e, m) = row(r);
        // `ahead` rows on; past the range's end, in the range this thread runs next.
        let t = r + ahead;
        let hinted = if t < rows.end {
            Some(t)
        } else {
            next_rows.as_ref().and_then(|nr| {
                let u = nr.start + (t - rows.end);
                (u < nr.end).then_some(u)
            })
        };
        let next = hinted.map(row);
        *o = if normal_groups(format, e) {
            dot(e, m, next)
        } else {
            fallback(r)
        };
    }
}

/// The integer path's reference.
fn dot_block_rows_scalar<const R: usize>(
    xs: &[QRow<'_>; R],
    format: BlockFormat,
    exps: &[u8],
    mants: &[i8],
) -> [f32; R] {
    let mut lanes = [[0f32; LANES]; R];
    for (g, &e) in exps.iter().enumerate() {
        let s = group_scale(format, e);
        let m = &mants[g * GROUP..(g + 1) * GROUP];
        for r in 0..R {
            let x = &xs[r].q[g * GROUP..(g + 1) * GROUP];
            for j in 0..8 {
                let pair =
                    m[2 * j] as i32 * x[2 * j] as i32 + m[2 * j + 1] as i32 * x[2 * j + 1] as i32;
                lanes[r][8 * (g % 4) + j] += pair as f32 * s;
            }
        }
    }
    std::array::from_fn(|r| reduce(&lanes[r]) * xs[r].scale)
}

/// `sum_k xs[r][k] * w[k]` for each of the `R` rows (all of the same length, at most the
/// row's), in the canonical order.
#[inline]
pub(crate) fn dot_rows<const R: usize>(isa: HostIsa, xs: &[&[f32]; R], w: RowRef<'_>) -> [f32; R] {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the device only selects Avx2/Avx512Vnni after detecting AVX2 (or refuses to
        // open); `dot_rows_avx2` checks the lengths it relies on.
        HostIsa::Avx2 | HostIsa::Avx512Vnni => unsafe { x86::dot_rows_avx2(xs, w) },
        _ => dot_rows_scalar(xs, w),
    }
}

/// The reference: decode 32 weights at a time, multiply, add to the lanes.
pub(crate) fn dot_rows_scalar<const R: usize>(xs: &[&[f32]; R], w: RowRef<'_>) -> [f32; R] {
    let k = xs.first().map_or(0, |x| x.len());
    let mut lanes = [[0f32; LANES]; R];
    let mut buf = [0f32; LANES];
    let mut start = 0;
    while start < k {
        let len = LANES.min(k - start);
        w.decode_into(start, &mut buf[..len]);
        for r in 0..R {
            let x = &xs[r][start..start + len];
            for i in 0..len {
                lanes[r][i] += x[i] * buf[i];
            }
        }
        start += len;
    }
    lanes.map(|l| reduce(&l))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BlockFormat, GROUP, LANES, QRow, RowRef, dot_rows_scalar, reduce};

    /// Weights `start..start + 32` of a block-float row as four vectors of 8, for groups whose
    /// scale `2^(exp - 127 - shift)` is a normal f32 (checked by the caller): the scale is then
    /// the bit pattern `(exp - shift) << 23`.
    ///
    /// # Safety
    /// The CPU must support AVX2; `exps` has groups `start / 16` and `start / 16 + 1`, `mants`
    /// their 32 mantissas.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn block32(exps: *const u8, mants: *const i8, shift: i32, start: usize) -> [__m256; 4] {
        let g = start / GROUP;
        // SAFETY: within the row (caller).
        let (e0, e1, m0, m1) = unsafe {
            (
                *exps.add(g) as i32,
                *exps.add(g + 1) as i32,
                _mm_loadu_si128(mants.add(start).cast()),
                _mm_loadu_si128(mants.add(start + GROUP).cast()),
            )
        };
        let s0 = _mm256_castsi256_ps(_mm256_set1_epi32((e0 - shift) << 23));
        let s1 = _mm256_castsi256_ps(_mm256_set1_epi32((e1 - shift) << 23));
        let f = |m: __m128i| {
            (
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(m)),
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(m))),
            )
        };
        let ((a, b), (c, d)) = (f(m0), f(m1));
        // Exact, as the scalar `m as f32 * scale`.
        [
            _mm256_mul_ps(a, s0),
            _mm256_mul_ps(b, s0),
            _mm256_mul_ps(c, s1),
            _mm256_mul_ps(d, s1),
        ]
    }

    /// The integer block-float path (see the module doc), all groups normal.
    ///
    /// # Safety
    /// The CPU must support AVX2; `mants` has 16 values per group of `exps`, every `xs[r].q`
    /// at least as many.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_block_rows_avx2<const R: usize>(
        xs: &[QRow<'_>; R],
        format: BlockFormat,
        exps: &[u8],
        mants: &[i8],
        prefetch: Option<(&[u8], &[i8])>,
    ) -> [f32; R] {
        let shift = format.mant_bits() as i32 - 1;
        let groups = exps.len();
        let (pf_m, pf_len) = prefetch_target(prefetch);
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        let (ep, mp) = (exps.as_ptr(), mants.as_ptr());
        let mut g = 0;
        // Eight groups' scales from one 8-byte load and two vector ops, then one `vpermd` each
        // from four index registers (the upper four after one lane swap). The indices are
        // hidden from LLVM: as constants, it turns each broadcast into two shuffles (a stack
        // round trip with `vbroadcastss` became the same), and a broadcast from memory instead
        // (one load per group) ran slower still.
        let shift_v = _mm256_set1_epi32(shift);
        let pick: [__m256i; 4] =
            std::hint::black_box(std::array::from_fn(|i| _mm256_set1_epi32(i as i32)));
        while g + 8 <= groups {
            // SAFETY: a hint (see `prefetch_target`).
            unsafe { hint_mants(pf_m, pf_len, g) };
            // SAFETY: g + 8 <= groups: eight exponent bytes.
            let e8 = _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(ep.add(g).cast()) });
            let s8 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_sub_epi32(e8, shift_v)));
            // Groups g..g + 4 from the lower lane, then g + 4..g + 8 from the upper one.
            let halves = [s8, _mm256_permute2f128_ps::<0x11>(s8, s8)];
            for (h, sv) in halves.iter().enumerate() {
                for (i, pick) in pick.iter().enumerate() {
                    let s = _mm256_permutevar8x32_ps(*sv, *pick);
                    // SAFETY: g + 4 h + i < groups (caller's lengths).
                    unsafe { group_avx2(xs, mp, g + 4 * h + i, s, &mut acc, i) };
                }
            }
            g += 8;
        }
        // SAFETY: as above.
        unsafe { finish_avx2(xs, ep, mp, shift, g, groups, acc) }
    }

    /// [`dot_block_rows_avx2`] with 512-bit vectors: two groups per step (one `vpmovsxbw`,
    /// `vpmaddwd`, conversion and multiply-add for 32 weights), each pair sum going to the same
    /// canonical lane as in the AVX2 kernel (lanes 0-15 of the first accumulator are lanes 0-15,
    /// the second's lanes 16-31), with the same operations: the same bits.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW and FMA; as [`dot_block_rows_avx2`] otherwise.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub(super) unsafe fn dot_block_rows_avx512<const R: usize>(
        xs: &[QRow<'_>; R],
        format: BlockFormat,
        exps: &[u8],
        mants: &[i8],
        prefetch: Option<(&[u8], &[i8])>,
    ) -> [f32; R] {
        let shift = format.mant_bits() as i32 - 1;
        let groups = exps.len();
        let (pf_m, pf_len) = prefetch_target(prefetch);
        // Per row: canonical lanes 0-15 and 16-31.
        let mut wide = [[_mm512_setzero_ps(); 2]; R];
        let (ep, mp) = (exps.as_ptr(), mants.as_ptr());
        let shift_v = _mm512_set1_epi32(shift);
        // Scale lanes of the pair (2q, 2q + 1) of eight groups: eight of each.
        let pick: [__m512i; 4] = std::array::from_fn(|q| {
            let (a, b) = (2 * q as i32, 2 * q as i32 + 1);
            _mm512_set_epi32(b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a)
        });
        let mut g = 0;
        while g + 8 <= groups {
            // SAFETY: a hint (see `prefetch_target`).
            unsafe { hint_mants(pf_m, pf_len, g) };
            // SAFETY: g + 8 <= groups: eight exponent bytes.
            let e8 = _mm512_cvtepu8_epi32(unsafe { _mm_loadl_epi64(ep.add(g).cast()) });
            let s8 = _mm512_slli_epi32::<23>(_mm512_sub_epi32(e8, shift_v));
            for (q, pick) in pick.iter().enumerate() {
                let gg = g + 2 * q;
                let s = _mm512_castsi512_ps(_mm512_permutexvar_epi32(*pick, s8));
                // SAFETY: groups gg, gg + 1 < groups: 32 mantissas.
                let m =
                    _mm512_cvtepi8_epi16(unsafe { _mm256_loadu_si256(mp.add(gg * GROUP).cast()) });
                for r in 0..R {
                    // SAFETY: xs[r].q has at least groups * 16 values (caller).
                    let x = unsafe { _mm512_loadu_si512(xs[r].q.as_ptr().add(gg * GROUP).cast()) };
                    let p = _mm512_cvtepi32_ps(_mm512_madd_epi16(m, x));
                    // Exact product, one rounding: as the AVX2 kernel's multiply-add.
                    wide[r][q % 2] = _mm512_fmadd_ps(p, s, wide[r][q % 2]);
                }
            }
            g += 8;
        }
        let acc = wide.map(|[a, b]| {
            let (a, b) = (_mm512_castps_si512(a), _mm512_castps_si512(b));
            [
                _mm256_castsi256_ps(_mm512_castsi512_si256(a)),
                _mm256_castsi256_ps(_mm512_extracti64x4_epi64::<1>(a)),
                _mm256_castsi256_ps(_mm512_castsi512_si256(b)),
                _mm256_castsi256_ps(_mm512_extracti64x4_epi64::<1>(b)),
            ]
        });
        // SAFETY: as above.
        unsafe { finish_avx2(xs, ep, mp, shift, g, groups, acc) }
    }

    /// The hints' target: its exponents now (a few lines), its mantissas along the loop.
    #[inline(always)]
    fn prefetch_target(prefetch: Option<(&[u8], &[i8])>) -> (*const i8, usize) {
        match prefetch {
            Some((e, m)) => {
                crate::host::kernels::prefetch(e);
                (m.as_ptr(), m.len())
            }
            None => (std::ptr::null(), 0),
        }
    }

    /// Two lines of the target's mantissas for groups `g..g + 8`, into L2 (see
    /// GEMV_PREFETCH_BYTES).
    ///
    /// # Safety
    /// None beyond the CPU's SSE: a hint never faults or writes; the addresses use wrapping
    /// arithmetic (the second line may lie past the target's end).
    #[inline(always)]
    unsafe fn hint_mants(pf_m: *const i8, pf_len: usize, g: usize) {
        if g * GROUP < pf_len {
            // SAFETY: see above.
            unsafe {
                _mm_prefetch::<_MM_HINT_T1>(pf_m.wrapping_add(g * GROUP).cast());
                _mm_prefetch::<_MM_HINT_T1>(pf_m.wrapping_add(g * GROUP + 64).cast());
            }
        }
    }

    /// Group `g` (scale `s`, a normal power of two) into accumulator `slot` of every row.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; group `g`'s 16 mantissas are at `mp + 16 g` and each
    /// `xs[r].q` holds them.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn group_avx2<const R: usize>(
        xs: &[QRow<'_>; R],
        mp: *const i8,
        g: usize,
        s: __m256,
        acc: &mut [[__m256; 4]; R],
        slot: usize,
    ) {
        // SAFETY: see the contract.
        let m = unsafe { _mm_loadu_si128(mp.add(g * GROUP).cast()) };
        let m16 = _mm256_cvtepi8_epi16(m);
        for r in 0..R {
            // SAFETY: see the contract.
            let x = unsafe { _mm256_loadu_si256(xs[r].q.as_ptr().add(g * GROUP).cast()) };
            let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(m16, x));
            // `p * s` is exact (an integer below 2^24 times a normal power of two, with a
            // normal result), so the fused multiply-add rounds once, as mul + add.
            acc[r][slot] = _mm256_fmadd_ps(p, s, acc[r][slot]);
        }
    }

    /// The groups from `g` (a multiple of 8) on, one scale at a time, then the reduction.
    ///
    /// # Safety
    /// As [`dot_block_rows_avx2`] (`ep`, `mp`: its exponents and mantissas).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn finish_avx2<const R: usize>(
        xs: &[QRow<'_>; R],
        ep: *const u8,
        mp: *const i8,
        shift: i32,
        mut g: usize,
        groups: usize,
        mut acc: [[__m256; 4]; R],
    ) -> [f32; R] {
        while g < groups {
            // SAFETY: g < groups (caller's lengths).
            let e = unsafe { *ep.add(g) } as i32;
            let s = _mm256_castsi256_ps(_mm256_set1_epi32((e - shift) << 23));
            // SAFETY: as above.
            unsafe { group_avx2(xs, mp, g, s, &mut acc, g % 4) };
            g += 1;
        }
        std::array::from_fn(|r| reduce_avx2(&acc[r]) * xs[r].scale)
    }

    /// [`super::gemv_block_rows`] with one ISA's row kernel, compiled with its features.
    macro_rules! gemv_block_rows_isa {
        ($(#[$doc:meta])* $name:ident, $features:literal, $dot:ident) => {
            $(#[$doc])*
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(
                x: QRow<'_>,
                format: BlockFormat,
                exps: &[u8],
                mants: &[i8],
                groups: usize,
                rows: std::ops::Range<usize>,
                ahead: usize,
                next_rows: Option<std::ops::Range<usize>>,
                out: &mut [f32],
                fallback: &dyn Fn(usize) -> f32,
            ) {
                super::gemv_block_rows_with(
                    format,
                    exps,
                    mants,
                    groups,
                    rows,
                    ahead,
                    next_rows,
                    out,
                    fallback,
                    // SAFETY: the features `$dot` needs are this function's contract; `x` covers
                    // every group (caller).
                    |e, m, pf| unsafe { $dot(&[x], format, e, m, pf)[0] },
                )
            }
        };
    }

    gemv_block_rows_isa!(
        /// With the AVX-512 row kernel.
        ///
        /// # Safety
        /// The CPU must support AVX-512 F/BW and FMA; the bounds asserted by the caller hold.
        gemv_block_rows_avx512,
        "avx512f,avx512bw,avx2,fma",
        dot_block_rows_avx512
    );
    gemv_block_rows_isa!(
        /// With the AVX2 row kernel.
        ///
        /// # Safety
        /// The CPU must support AVX2 and FMA; the bounds asserted by the caller hold.
        gemv_block_rows_avx2,
        "avx2,fma",
        dot_block_rows_avx2
    );

    /// [`reduce`] of the lanes `8q + j` = `acc[q][j]`, in registers: the same additions in the
    /// same order (no round trip through the stack, ~20 instructions fewer per row).
    #[target_feature(enable = "avx2")]
    fn reduce_avx2(acc: &[__m256; 4]) -> f32 {
        // s8[j] = (l[j] + l[j + 8]) + (l[j + 16] + l[j + 24]).
        let s8 = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        // s4[i] = s8[i] + s8[i + 4].
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        // (s4[0] + s4[2]) + (s4[1] + s4[3]).
        let e = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(e, _mm_shuffle_ps::<0b01>(e, e)))
    }

    /// The canonical order with four 8-wide accumulators per row (lane `8q + j` is
    /// accumulator q's element j); the last partial chunk of 32 goes through the scalar loop.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_rows_avx2<const R: usize>(
        xs: &[&[f32]; R],
        w: RowRef<'_>,
    ) -> [f32; R] {
        let k = xs.first().map_or(0, |x| x.len());
        assert!(xs.iter().all(|x| x.len() == k), "rows of unequal length");
        let stored = match w {
            RowRef::F32(v) => v.len(),
            RowRef::Bf16(v) => v.len(),
            RowRef::Block { exps, mants, .. } => (exps.len() * GROUP).min(mants.len()),
        };
        assert!(k <= stored, "activation rows longer than the weight row");
        let full = k / LANES;
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        // One loop per weight form (the decode inlined into it), each chunk of 32 weights
        // decoded once for all R rows.
        macro_rules! chunks {
            (|$start:ident| $decode:expr) => {
                for c in 0..full {
                    let $start = c * LANES;
                    let wv: [__m256; 4] = $decode;
                    for r in 0..R {
                        let p = xs[r].as_ptr();
                        for q in 0..4 {
                            // SAFETY: start + 8q + 8 <= k == xs[r].len().
                            let x = unsafe { _mm256_loadu_ps(p.add($start + 8 * q)) };
                            acc[r][q] = _mm256_add_ps(acc[r][q], _mm256_mul_ps(x, wv[q]));
                        }
                    }
                }
            };
        }
        match w {
            RowRef::F32(v) => {
                let p = v.as_ptr();
                chunks!(|start| {
                    // SAFETY: start + 32 <= k <= v.len().
                    unsafe {
                        [
                            _mm256_loadu_ps(p.add(start)),
                            _mm256_loadu_ps(p.add(start + 8)),
                            _mm256_loadu_ps(p.add(start + 16)),
                            _mm256_loadu_ps(p.add(start + 24)),
                        ]
                    }
                })
            }
            RowRef::Bf16(v) => {
                let p = v.as_ptr();
                // bf16 is an f32's top half: widening is a zero-extension and a shift.
                let widen = |q: usize, start: usize| {
                    // SAFETY: 8 values at start + 8q, start + 32 <= k <= v.len().
                    let h = unsafe { _mm_loadu_si128(p.add(start + 8 * q).cast()) };
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
                };
                chunks!(|start| [
                    widen(0, start),
                    widen(1, start),
                    widen(2, start),
                    widen(3, start)
                ])
            }
            RowRef::Block {
                format,
                exps,
                mants,
            } => {
                // Groups with an Inf/NaN exponent or a subnormal scale (rare: huge or tiny
                // weights, all-zero groups) send the row to the reference loop, which gives the
                // same bits; the vector loop then has no branch and no call.
                let shift = format.mant_bits() as i32 - 1;
                // min/max folds vectorize (a short-circuiting `all` does not).
                let used = &exps[..full * LANES / GROUP];
                let lo = used.iter().fold(u8::MAX, |a, &e| a.min(e));
                let hi = used.iter().fold(0u8, |a, &e| a.max(e));
                if !used.is_empty() && (lo as i32 <= shift || hi == 255) {
                    return dot_rows_scalar(xs, w);
                }
                let (ep, mp) = (exps.as_ptr(), mants.as_ptr());
                // SAFETY: groups start/16 and start/16 + 1 and their mantissas lie within
                // start + 32 <= stored.
                chunks!(|start| unsafe { block32(ep, mp, shift, start) })
            }
        }
        let mut lanes = [[0f32; LANES]; R];
        for r in 0..R {
            for q in 0..4 {
                // SAFETY: lanes[r] has 32 values; 8q + 8 <= 32.
                unsafe { _mm256_storeu_ps(lanes[r].as_mut_ptr().add(8 * q), acc[r][q]) };
            }
        }
        let start = full * LANES;
        if start < k {
            let len = k - start;
            let mut buf = [0f32; LANES];
            w.decode_into(start, &mut buf[..len]);
            for r in 0..R {
                let x = &xs[r][start..];
                for i in 0..len {
                    lanes[r][i] += x[i] * buf[i];
                }
            }
        }
        lanes.map(|l| reduce(&l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::blockfloat::BlockFloatData;
    use proptest::prelude::*;

    fn vals(n: usize, seed: u64, spread: f32) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * spread
            })
            .collect()
    }

    /// Every weight form on every supported ISA gives the reference's bits, for 1, 2 and 3
    /// activation rows, and a row's result does not depend on the rows decoded with it.
    fn check(k: usize, seed: u64, spread: f32) {
        let x = [0, 1, 2].map(|i| vals(k, seed ^ (i + 11), 1.0));
        let w = vals(k, seed, spread);
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let blocks =
            [BlockFormat::Bfp8, BlockFormat::Bfp4].map(|f| BlockFloatData::encode(f, &w, 1, k));
        let mut rows = vec![RowRef::F32(&w), RowRef::Bf16(&wb)];
        for b in &blocks {
            rows.push(RowRef::Block {
                format: b.format,
                exps: &b.exps,
                mants: &b.mants,
            });
        }
        for row in rows {
            let want = dot_rows_scalar(&[&x[0][..], &x[1], &x[2]], row);
            let one = dot_rows_scalar(&[&x[1][..]], row);
            assert_eq!(one[0].to_bits(), want[1].to_bits());
            // The reference against an f64 sum of the decoded products.
            let mut dec = vec![0f32; k];
            row.decode_into(0, &mut dec);
            let exact: f64 = x[0]
                .iter()
                .zip(&dec)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            let bound: f64 = x[0]
                .iter()
                .zip(&dec)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            assert!((want[0] as f64 - exact).abs() <= bound * 1e-6 + 1e-30);
            for isa in HostIsa::supported_list() {
                let got3 = dot_rows(isa, &[&x[0][..], &x[1], &x[2]], row);
                let got1 = dot_rows(isa, &[&x[2][..]], row);
                let got2 = dot_rows(isa, &[&x[0][..], &x[1]], row);
                for r in 0..3 {
                    assert_eq!(
                        got3[r].to_bits(),
                        want[r].to_bits(),
                        "{isa:?} k={k} {row:?}"
                    );
                }
                assert_eq!(got1[0].to_bits(), want[2].to_bits(), "{isa:?}");
                assert_eq!(
                    got2.map(f32::to_bits),
                    [want[0].to_bits(), want[1].to_bits()]
                );
            }
        }
    }

    #[test]
    fn edge_lengths() {
        for k in [0usize, 1, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 200, 2560] {
            check(k, k as u64 + 5, 3.0);
        }
    }

    #[test]
    fn tiny_and_huge_weights() {
        // Subnormal group scales and an Inf/NaN-exponent group take the scalar decode.
        check(96, 9, 1e-38);
        let k = 64;
        let x = vals(k, 1, 1.0);
        let mut w = vals(k, 2, 1.0);
        w[20] = f32::INFINITY;
        let b = BlockFloatData::encode(BlockFormat::Bfp8, &w, 1, k);
        let row = RowRef::Block {
            format: b.format,
            exps: &b.exps,
            mants: &b.mants,
        };
        let want = dot_rows_scalar(&[&x[..]], row)[0];
        for isa in HostIsa::supported_list() {
            assert_eq!(dot_rows(isa, &[&x[..]], row)[0].to_bits(), want.to_bits());
        }
    }

    /// The integer block-float path: every ISA gives the reference's bits, alone or paired,
    /// within the quantization bound of the exact sum over the decoded weights.
    fn check_int(k: usize, seed: u64, spread: f32) {
        let groups = k.div_ceil(GROUP);
        let xs = [0, 1].map(|i| vals(k, seed ^ (i + 3), 1.0));
        let mut qs = [vec![0i16; groups * GROUP], vec![0i16; groups * GROUP]];
        let scales: Vec<f32> = xs
            .iter()
            .zip(qs.iter_mut())
            .map(|(x, q)| quantize_row_i16(x, q).expect("finite"))
            .collect();
        let rows = [0, 1].map(|i| QRow {
            q: &qs[i],
            scale: scales[i],
        });
        let w = vals(k, seed, spread);
        for format in [BlockFormat::Bfp8, BlockFormat::Bfp4] {
            let b = BlockFloatData::encode(format, &w, 1, k);
            if !normal_groups(format, &b.exps) {
                continue;
            }
            let want = dot_block_rows_scalar(&rows, format, &b.exps, &b.mants);
            let dec = b.decode();
            for r in 0..2 {
                let exact: f64 = xs[r]
                    .iter()
                    .zip(&dec)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                let absmax = xs[r].iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                let bound: f64 = dec
                    .iter()
                    .zip(&xs[r])
                    .map(|(&b, &a)| {
                        (b as f64).abs() * (0.5 * absmax / 32767.0 + 1e-6 * (a as f64).abs())
                    })
                    .sum();
                assert!(
                    (want[r] as f64 - exact).abs() <= 1.2 * bound + 1e-30,
                    "{format:?} k={k}"
                );
            }
            for isa in HostIsa::supported_list() {
                let pair = dot_block_rows(isa, &rows, format, &b.exps, &b.mants, groups, None);
                // A prefetch target (here the row itself, shifted) changes nothing.
                let hint = Some((
                    &b.exps[1.min(b.exps.len())..],
                    &b.mants[16.min(b.mants.len())..],
                ));
                let one = dot_block_rows(isa, &[rows[1]], format, &b.exps, &b.mants, groups, hint);
                assert_eq!(
                    pair.map(f32::to_bits),
                    want.map(f32::to_bits),
                    "{isa:?} k={k}"
                );
                assert_eq!(one[0].to_bits(), want[1].to_bits(), "{isa:?} k={k}");
            }
        }
    }

    #[test]
    fn int_path_edge_lengths() {
        for k in [1usize, 15, 16, 17, 48, 64, 65, 200, 2560] {
            check_int(k, k as u64 + 1, 2.0);
        }
        // Non-finite or all-but-zero rows are refused (the f32 path takes them).
        let mut q = [0i16; 16];
        assert_eq!(quantize_row_i16(&[1.0, f32::NAN], &mut q), None);
        assert_eq!(quantize_row_i16(&[f32::INFINITY], &mut q), None);
        assert_eq!(quantize_row_i16(&[1e-40], &mut q), None);
        assert_eq!(quantize_row_i16(&[0.0, -0.0], &mut q), Some(1.0));
        assert_eq!(quantize_row_i16(&[-128.0, 127.0, 3.0], &mut q), Some(1.0));
        assert_eq!(&q[..4], &[-128, 127, 3, 0]);
        assert_eq!(
            quantize_row_i16(&[2.0, -1.0, 0.5], &mut q),
            Some(2.0 / 32767.0)
        );
        assert_eq!(&q[..4], &[32767, -16384, 8192, 0]);
    }

    /// The block-float GEMV: each row as `dot_block_rows` alone gives it, and the rows the integer
    /// path refuses (an Inf/NaN group, a subnormal scale) from the fallback, on every ISA and
    /// for any range and prefetch distance.
    #[test]
    fn gemv_matches_row_by_row() {
        let (rows, k) = (23usize, 200usize);
        let groups = k.div_ceil(GROUP);
        let mut w = vals(rows * k, 7, 1.0);
        // Row 3 holds an infinity, row 4 a NaN, row 5 only tiny values (subnormal scale).
        w[3 * k + 17] = f32::INFINITY;
        w[4 * k + 150] = f32::NAN;
        w[5 * k..6 * k].iter_mut().for_each(|v| *v *= 1e-40);
        let x = vals(k, 9, 1.0);
        let mut q = vec![0i16; groups * GROUP];
        let scale = quantize_row_i16(&x, &mut q).expect("finite");
        let xq = QRow { q: &q, scale };
        for format in [BlockFormat::Bfp8, BlockFormat::Bfp4] {
            let b = BlockFloatData::encode(format, &w, rows, k);
            let row = |r: usize| {
                (
                    &b.exps[r * groups..(r + 1) * groups],
                    &b.mants[r * groups * GROUP..(r + 1) * groups * GROUP],
                )
            };
            let abnormal: Vec<usize> = (0..rows)
                .filter(|&r| !normal_groups(format, row(r).0))
                .collect();
            assert_eq!(abnormal, [3, 4, 5], "{format:?}");
            // The fallback's value marks the row it was called for.
            let fallback = |r: usize| -(r as f32) - 1000.0;
            for isa in HostIsa::supported_list() {
                for (range, ahead, next) in [
                    (0..rows, 3, None),
                    (2..9, 1, Some(0..2)),
                    (7..rows, 100, Some(0..7)),
                    (4..5, 0, None),
                    (0..4, 2, Some(4..rows)),
                ] {
                    let mut out = vec![0f32; range.len()];
                    gemv_block_rows(
                        isa,
                        xq,
                        format,
                        &b.exps,
                        &b.mants,
                        groups,
                        range.clone(),
                        ahead,
                        next,
                        &mut out,
                        &fallback,
                    );
                    for (r, got) in range.zip(out) {
                        let want = if abnormal.contains(&r) {
                            fallback(r)
                        } else {
                            let (e, m) = row(r);
                            dot_block_rows_scalar(&[xq], format, e, m)[0]
                        };
                        assert_eq!(got.to_bits(), want.to_bits(), "{isa:?} {format:?} row {r}");
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn int_path_every_isa_matches_the_reference(k in 1usize..1500, seed in any::<u64>(), e in -20i32..20) {
            check_int(k, seed, 2f32.powi(e));
        }
        #[test]
        fn every_isa_matches_the_reference(k in 0usize..1500, seed in any::<u64>(), e in -20i32..20) {
            check(k, seed, 2f32.powi(e));
        }
    }
}
