//! Kernels over `Lut3` ternary weights (`host::ternary_lut`), per block of 32 weight rows:
//! the table-lookup GEMV (`lut_block`: `sum_c w[r][c] * q[c]` from the activations' table,
//! `build_table`), and a GEMM step (`gemm_block`) that decodes the block once into code pairs
//! and multiplies them with `maddubs` (AVX2) or `vpdpbusd` (AVX-512 VNNI) by every activation
//! row. Scalar, AVX2 and AVX-512 versions (the GEMV's where the CPU also has VBMI and GFNI);
//! all exact, so they agree bit for bit.
//!
//! The same for `Base3` weights (the layout picks the kernels): a `vpermw` GEMV and a GEMM that
//! decodes the codes with `vpermw` for the `Lut3` GEMM's `vpdpbusd` loop, both AVX-512 with
//! VBMI2 ([`has_base3_kernels`]), and scalar versions for every other path.

use crate::device::{HostIsa, TernaryLayout};
use crate::host::ternary::TernaryData;
use crate::host::ternary_lut::{
    BASE3_TABLE_BYTES, BASE3_WORD_BYTES, LUT_ROWS, PATTERNS, SEG_BYTES, SEG_GROUPS, SIGN_OFFSET,
    TABLE_BYTES, block_bytes, build_table, build_table_base3, groups,
};

/// `out[t][i] = sum_c w[32 b + i][c] * q_t[c]` for the 32 rows of block `b` of `w` (rows past
/// the matrix give 0) and `T` activation rows, where `tables[t]` is `build_table(q_t)`
/// (`groups(w.row_len)` groups): a GEMV for `T = 1`, a GEMM's inner step for more, where each
/// weight group's indices and signs, decoded once, serve the `T` rows. Hints for `prefetch`
/// (the bytes wanted next, e.g. a later block) are spread over the loop; for `Base3` weights
/// `prefetch` is the bytes after block `b` that are read next (see [`lut_blocks`]).
pub(crate) fn lut_block<const T: usize>(
    isa: HostIsa,
    tables: &[&[u8]; T],
    w: &TernaryData,
    b: usize,
    out: &mut [[i32; LUT_ROWS]; T],
    prefetch: &[u8],
) {
    let bb = block_bytes(w.row_len);
    let g = groups(w.row_len);
    assert!(
        tables
            .iter()
            .all(|t| t.len() >= g * table_group_bytes(isa, w.layout))
            && w.packed.len() >= (b + 1) * bb,
        "table shorter than the row's groups, or block out of range"
    );
    let block = &w.packed[b * bb..(b + 1) * bb];
    if w.layout == TernaryLayout::Base3 {
        #[cfg(target_arch = "x86_64")]
        if has_base3_kernels(isa) {
            let one = std::array::from_mut(out);
            // SAFETY: `has_base3_kernels` detected AVX-512 F/BW/VBMI2; lengths asserted above
            // (`table_group_bytes` per group, `g / 16` segments in `block`).
            unsafe { x86::block_base3_avx512(tables, block, g / SEG_GROUPS, one, prefetch) };
            return;
        }
        for (t, o) in tables.iter().zip(out.iter_mut()) {
            block_base3_scalar(t, block, g / SEG_GROUPS, o);
        }
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        HostIsa::Avx512Vnni if has_avx512_lut(isa) => {
            // SAFETY: `has_avx512_lut` detected AVX-512 F/BW/VBMI and GFNI; lengths asserted
            // above (the tables in the AVX-512 layout: `table_group_bytes`). Its negated
            // entries are exact: no correction.
            unsafe { x86::block_avx512(tables, block, g / SEG_GROUPS, out, prefetch) };
        }
        #[cfg(target_arch = "x86_64")]
        HostIsa::Avx2 | HostIsa::Avx512Vnni => {
            // SAFETY: the device selects Avx2/Avx512Vnni only after detecting AVX2; lengths
            // asserted above (the kernel reads `g / 16` segments of `block` and `g` tables).
            unsafe { x86::block_avx2(tables, block, g / SEG_GROUPS, out, prefetch) };
            // The kernel negates with a bitwise not (-v - 1): add one back per negated group.
            let neg = w.neg.get(b * LUT_ROWS..).unwrap_or(&[]);
            for o in out.iter_mut() {
                for (o, &n) in o.iter_mut().zip(neg) {
                    *o += n;
                }
            }
        }
        _ => {
            super::prefetch(prefetch);
            for (t, o) in tables.iter().zip(out.iter_mut()) {
                block_scalar(t, block, g / SEG_GROUPS, o);
            }
        }
    }
}

/// [`lut_block`] for one activation row over the `R` blocks `b0..b0 + R` of `w` at once. Where
/// the `Base3` AVX-512 kernel runs, each table line it loads serves the `R` blocks, and `next`
/// (the bytes after the blocks that the caller reads next, e.g. the rest of its task) is hinted
/// a few segments ahead of each block's stream; otherwise the blocks run one after the other,
/// without hints.
pub(crate) fn lut_blocks<const R: usize>(
    isa: HostIsa,
    table: &[u8],
    w: &TernaryData,
    b0: usize,
    out: &mut [[i32; LUT_ROWS]; R],
    next: &[u8],
) {
    #[cfg(target_arch = "x86_64")]
    if w.layout == TernaryLayout::Base3 && has_base3_kernels(isa) {
        let (bb, g) = (block_bytes(w.row_len), groups(w.row_len));
        assert!(
            table.len() >= g * BASE3_TABLE_BYTES && w.packed.len() >= (b0 + R) * bb,
            "table shorter than the row's groups, or blocks out of range"
        );
        let mut one = [[[0i32; LUT_ROWS]; 1]; R];
        let blocks = &w.packed[b0 * bb..(b0 + R) * bb];
        // SAFETY: `has_base3_kernels` detected AVX-512 F/BW/VBMI2; lengths asserted (`R`
        // blocks of `g / 16` segments from block `b0`, `g` groups of table).
        unsafe { x86::block_base3_avx512(&[table], blocks, g / SEG_GROUPS, &mut one, next) };
        for (o, [v]) in out.iter_mut().zip(one) {
            *o = v;
        }
        return;
    }
    let _ = next;
    for (i, o) in out.iter_mut().enumerate() {
        lut_block(isa, &[table], w, b0 + i, std::array::from_mut(o), &[]);
    }
}

/// Whether `isa` runs the AVX-512 GEMV ([`lut_block`]): the `Avx512Vnni` path on a CPU that
/// also has VBMI (`vpermb`, a 64-entry byte table) and GFNI (bit selects), as Ice Lake and
/// Zen 4 do; otherwise that path runs the AVX2 kernel.
pub(crate) fn has_avx512_lut(isa: HostIsa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa == HostIsa::Avx512Vnni
            && std::arch::is_x86_feature_detected!("avx512vbmi")
            && std::arch::is_x86_feature_detected!("gfni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// Whether `isa` runs the AVX-512 `Base3` kernels: the `Avx512Vnni` path on a CPU that also has
/// VBMI (`vpermb`, the table build) and VBMI2 (`vpshldw`, group 15's code), as Ice Lake and
/// Zen 4 do; otherwise `Base3` weights run the scalar kernels.
pub(crate) fn has_base3_kernels(isa: HostIsa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa == HostIsa::Avx512Vnni
            && std::arch::is_x86_feature_detected!("avx512vbmi")
            && std::arch::is_x86_feature_detected!("avx512vbmi2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// Table bytes per group for `isa`'s GEMV over `layout` weights. `Lut3`: the reference layout's
/// [`TABLE_BYTES`] (16 low bytes, then 16 high bytes), or 64 for the AVX-512 kernel, which
/// looks up a pair of groups and both signs at once: per pair, 64 low bytes (the first group's
/// 16 entries, the second's, then the same two negated) followed by the 64 high bytes in the
/// same order. `Base3`: [`BASE3_TABLE_BYTES`] on every path.
pub(crate) fn table_group_bytes(isa: HostIsa, layout: TernaryLayout) -> usize {
    if layout == TernaryLayout::Base3 {
        BASE3_TABLE_BYTES
    } else if has_avx512_lut(isa) {
        2 * TABLE_BYTES
    } else {
        TABLE_BYTES
    }
}

/// Whether [`gemm_block`] has a kernel for `isa` and `layout` (else a GEMM runs [`lut_block`]
/// per row).
pub(crate) fn has_gemm_kernel(isa: HostIsa, layout: TernaryLayout) -> bool {
    match layout {
        TernaryLayout::Base3 => has_base3_kernels(isa),
        _ => cfg!(target_arch = "x86_64") && matches!(isa, HostIsa::Avx2 | HostIsa::Avx512Vnni),
    }
}

/// A GEMM's step over block `b` of `w` (32 weight rows) for `out.len()` activation rows `q`
/// (rows `kp` apart, zero past `w.row_len` up to `3 * groups` values): `out[t][i] = sum_c
/// code[32 b + i][c] * q_t[c]` with the codes `w + 1` in {0, 1, 2}, as the `Bits2` kernels
/// (the caller subtracts each row's sum of activations). The block is decoded, 64 groups at a
/// time, into pairs of codes per row, which `maddubs` multiplies by each activation row's pair
/// of values: the decode is shared by every activation row, and the multiply is the `Bits2`
/// GEMM's. Only where [`has_gemm_kernel`].
pub(crate) fn gemm_block(
    isa: HostIsa,
    q: &[i8],
    kp: usize,
    w: &TernaryData,
    b: usize,
    out: &mut [[i32; LUT_ROWS]],
) {
    let bb = block_bytes(w.row_len);
    let g = groups(w.row_len);
    assert!(
        has_gemm_kernel(isa, w.layout)
            && kp >= 3 * g
            && q.len() >= (out.len().max(1) - 1) * kp + 3 * g
            && w.packed.len() >= (b + 1) * bb,
        "no GEMM kernel, activations shorter than the groups, or block out of range"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let block = &w.packed[b * bb..(b + 1) * bb];
        if w.layout == TernaryLayout::Base3 {
            // SAFETY: `has_gemm_kernel` (asserted) means `has_base3_kernels`: AVX-512
            // F/BW/VNNI/VBMI2 detected; lengths asserted.
            unsafe { x86::gemm_block_base3_avx512(q, kp, block, g / SEG_GROUPS, out) };
        } else if isa == HostIsa::Avx512Vnni {
            // SAFETY: the device selects Avx512Vnni only after detecting AVX-512 F/BW/VNNI
            // and AVX2; lengths asserted.
            unsafe { x86::gemm_block_avx512(q, kp, block, g / SEG_GROUPS, out) };
        } else {
            // SAFETY: `has_gemm_kernel` (asserted) means AVX2, detected by the device; lengths
            // asserted.
            unsafe { x86::gemm_block_avx2(q, kp, block, g / SEG_GROUPS, out) };
        }
    }
}

/// [`build_table`] on the device's ISA, in its layout ([`table_group_bytes`]: the same bytes
/// as the reference, or for AVX-512 the same entries and their negations in pairs of groups).
/// `q` needs one readable byte past the last group (`3 * groups + 1` values): the AVX2 version
/// loads four at a time. For `Base3`, [`build_table_base3`]'s bytes on every path.
pub(crate) fn build_table_isa(isa: HostIsa, layout: TernaryLayout, q: &[i8], table: &mut [u8]) {
    if layout == TernaryLayout::Base3 {
        let groups = table.len() / BASE3_TABLE_BYTES;
        assert!(
            table.len().is_multiple_of(BASE3_TABLE_BYTES) && q.len() >= 3 * groups,
            "table not whole groups, or activations shorter than its groups"
        );
        #[cfg(target_arch = "x86_64")]
        if has_base3_kernels(isa) {
            // SAFETY: AVX-512 F/BW/VBMI detected by `has_base3_kernels`; lengths asserted.
            unsafe { x86::build_table_base3_avx512(q, table) };
            return;
        }
        // Without the read-ahead byte (see below).
        build_table_base3(&q[..3 * groups], table);
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        HostIsa::Avx512Vnni if has_avx512_lut(isa) => {
            let pairs = table.len() / (4 * TABLE_BYTES);
            assert!(
                table.len().is_multiple_of(4 * TABLE_BYTES) && q.len() >= 6 * pairs,
                "table not whole pairs of groups, or activations shorter than its groups"
            );
            // SAFETY: AVX-512 F/BW/VBMI detected by `has_avx512_lut`; lengths asserted.
            unsafe { x86::build_table_avx512(q, table) }
        }
        #[cfg(target_arch = "x86_64")]
        HostIsa::Avx2 | HostIsa::Avx512Vnni => {
            assert!(
                q.len() > 3 * (table.len() / TABLE_BYTES),
                "activations do not cover the table's groups plus one"
            );
            // SAFETY: AVX2 is detected before the device selects these; lengths asserted.
            unsafe { x86::build_table_avx2(q, table) }
        }
        // Without the byte the SIMD builders read ahead: it may be the next group's first value
        // (a table built in parts, `build_tables`), which the reference takes for padding.
        _ => build_table(&q[..q.len().min(3 * (table.len() / TABLE_BYTES))], table),
    }
}

/// The reference: each group's index and sign, its table entry, negated or not.
fn block_scalar(table: &[u8], block: &[u8], segs: usize, out: &mut [i32; LUT_ROWS]) {
    debug_assert_eq!(PATTERNS.len(), 16);
    for (i, o) in out.iter_mut().enumerate() {
        let mut acc = 0i32;
        for s in 0..segs {
            let seg = &block[s * SEG_BYTES..(s + 1) * SEG_BYTES];
            for w in 0..SEG_GROUPS {
                let g = s * SEG_GROUPS + w;
                let idx = ((seg[32 * (w / 2) + i] >> (4 * (w % 2))) & 0x0f) as usize;
                let neg = (seg[SIGN_OFFSET + 32 * (w / 8) + i] >> (7 - w % 8)) & 1 == 1;
                let t = &table[g * TABLE_BYTES..(g + 1) * TABLE_BYTES];
                let v = i16::from_le_bytes([t[idx], t[16 + idx]]) as i32;
                acc += if neg { -v } else { v };
            }
        }
        *o = acc;
    }
}

/// The `Base3` reference: each group's code, its table entry.
fn block_base3_scalar(table: &[u8], block: &[u8], segs: usize, out: &mut [i32; LUT_ROWS]) {
    for (i, o) in out.iter_mut().enumerate() {
        let mut acc = 0i32;
        for s in 0..segs {
            let seg = &block[s * SEG_BYTES..(s + 1) * SEG_BYTES];
            let word = |j: usize| {
                let at = BASE3_WORD_BYTES * j + 2 * i;
                u16::from_le_bytes([seg[at], seg[at + 1]])
            };
            let mut last = 0;
            for j in 0..5 {
                let w = word(j);
                last |= (w >> 15) << (4 - j);
                for k in 0..3 {
                    acc += entry(table, s * SEG_GROUPS + 3 * j + k, (w >> (5 * k)) & 31);
                }
            }
            acc += entry(table, s * SEG_GROUPS + 15, last);
        }
        *o = acc;
    }
}

/// Entry `code` of group `g`'s `Base3` table.
#[inline]
fn entry(table: &[u8], g: usize, code: u16) -> i32 {
    let at = g * BASE3_TABLE_BYTES + 2 * code as usize;
    i16::from_le_bytes([table[at], table[at + 1]]) as i32
}

/// How far ahead the `Base3` GEMV hints each block's stream into L2, in segments (16: 5 KiB
/// per stream, 20 KiB for four blocks). With the hints a whole `R` blocks ahead instead,
/// the first blocks of every task went unhinted and the rest arrived in bursts: criterion
/// `dram_48x_ffn_gate` (AVX-512, four blocks per call), run to run, 1 thread 18.2-19.2 ->
/// 19.5-21.9 GB/s, 2 threads 29-36 -> 30-41 (`Lut3`: 17.0-17.7 and 25-30); 8 segments ahead
/// did worse with 2 threads (29-32), 24-48 no better. On this noisy host the ranges overlap.
/// The kernel issues a segment's hints one line per block per word (four at a time, between
/// the words' lookups) rather than all twenty at the segment's start: with one thread the
/// burst left the weight stream barely overlapped with the arithmetic (an in-process replay
/// of 24 decode gate/down pairs, alternated: 14.9-16.1 -> 17.9-20.1 GB/s; the model's ternary
/// decode ops 23.9 / 25.6 -> 21.6 / 22.2 ms per token). The distance (8 to 64 segments),
/// tried with the burst and again with the spread hints, changed nothing.
pub(crate) const BASE3_AHEAD_SEGS: usize = 16;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{
        BASE3_AHEAD_SEGS, BASE3_TABLE_BYTES, BASE3_WORD_BYTES, LUT_ROWS, SEG_BYTES, SIGN_OFFSET,
        TABLE_BYTES,
    };
    use crate::host::ternary_lut::base3_triple;

    /// One group's table per step: the three activations, offset to unsigned (`a + 128`), times
    /// the patterns' signed coefficients by two `maddubs` (pairs (a0, a1) and (a2, 0)), minus
    /// `128 * sum(pattern)`; then the 16 words split into low and high bytes.
    ///
    /// # Safety
    /// The CPU must support AVX2; `q.len() > 3 * table.len() / 32`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn build_table_avx2(q: &[i8], table: &mut [u8]) {
        let groups = table.len() / TABLE_BYTES;
        debug_assert!(q.len() > 3 * groups);
        let pat = super::PATTERNS;
        let c01: [i8; 32] = std::array::from_fn(|j| pat[j / 2][j % 2]);
        let c2: [i8; 32] = std::array::from_fn(|j| if j % 2 == 0 { pat[j / 2][2] } else { 0 });
        let off: [i16; 16] =
            std::array::from_fn(|m| 128 * pat[m].iter().map(|&v| v as i16).sum::<i16>());
        // SAFETY: the arrays hold 32 bytes each.
        let (c01, c2, off) = unsafe {
            (
                _mm256_loadu_si256(c01.as_ptr().cast()),
                _mm256_loadu_si256(c2.as_ptr().cast()),
                _mm256_loadu_si256(off.as_ptr().cast()),
            )
        };
        let pick01 = _mm256_set1_epi16(0x0100);
        let pick2 = _mm256_set1_epi8(2);
        let flip = _mm256_set1_epi8(-128);
        // Low bytes to the first 8 of each half, high bytes to the last 8; then the halves'
        // quadwords reordered to 16 low bytes, 16 high bytes.
        let split = _mm256_setr_epi8(
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3,
            5, 7, 9, 11, 13, 15,
        );
        let (qp, tp) = (q.as_ptr(), table.as_mut_ptr());
        for g in 0..groups {
            // SAFETY: 3 g + 4 <= 3 groups + 1 <= q.len(); the group's 32 table bytes are inside.
            unsafe {
                let a = _mm256_set1_epi32(qp.add(3 * g).cast::<i32>().read_unaligned());
                let a = _mm256_xor_si256(a, flip);
                let t = _mm256_add_epi16(
                    _mm256_maddubs_epi16(_mm256_shuffle_epi8(a, pick01), c01),
                    _mm256_maddubs_epi16(_mm256_shuffle_epi8(a, pick2), c2),
                );
                let t = _mm256_shuffle_epi8(_mm256_sub_epi16(t, off), split);
                let t = _mm256_permute4x64_epi64::<0b11_01_10_00>(t);
                _mm256_storeu_si256(tp.add(g * TABLE_BYTES).cast(), t);
            }
        }
    }

    /// The index vectors (32 rows each) of groups `2p` and `2p + 1` of the segment at `seg`.
    ///
    /// # Safety
    /// AVX2; `seg` points to a whole segment and `p < 8`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn group_indices(seg: *const u8, p: usize) -> [__m256i; 2] {
        let low = _mm256_set1_epi8(0x0f);
        // SAFETY: the 32 bytes at 32 p are inside the segment (contract).
        let nib = unsafe { _mm256_loadu_si256(seg.add(32 * p).cast()) };
        [
            _mm256_and_si256(nib, low),
            _mm256_and_si256(_mm256_srli_epi16::<4>(nib), low),
        ]
    }

    /// The sign bytes of groups `8h..8h + 8` of the segment at `seg` (for [`next_sign`]).
    ///
    /// # Safety
    /// AVX2; `seg` points to a whole segment and `h < 2`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn group_signs(seg: *const u8, h: usize) -> __m256i {
        // SAFETY: the 32 sign bytes are inside the segment (contract).
        unsafe { _mm256_loadu_si256(seg.add(SIGN_OFFSET + 32 * h).cast()) }
    }

    /// The next group's negation mask (0xFF where negated): the top bit of `sg`, which then
    /// doubles to bring the following group's sign up.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn next_sign(sg: &mut __m256i) -> __m256i {
        let m = _mm256_cmpgt_epi8(_mm256_setzero_si256(), *sg);
        *sg = _mm256_add_epi8(*sg, *sg);
        m
    }

    /// The codes (value + 1, in {0, 1, 2}) of the 48 values of the segment at `seg`, 32 rows
    /// each: the GEMMs' decode.
    ///
    /// # Safety
    /// AVX2; `seg` points to a whole segment.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn segment_codes(seg: *const u8) -> [__m256i; 48] {
        let pat = super::PATTERNS;
        // Per trit position: each magnitude's value in {-1, 0, 1}.
        let trit: [__m256i; 3] = std::array::from_fn(|p| {
            let v: [i8; 16] = std::array::from_fn(|m| pat[m][p]);
            // SAFETY: 16 bytes.
            _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(v.as_ptr().cast()) })
        });
        let one = _mm256_set1_epi8(1);
        let mut vals = [_mm256_setzero_si256(); 48];
        for h in 0..2 {
            // SAFETY: a whole segment (contract), h < 2.
            let mut sg = unsafe { group_signs(seg, h) };
            for pp in 0..4 {
                let p = 4 * h + pp;
                // SAFETY: a whole segment (contract), p < 8.
                let idx = unsafe { group_indices(seg, p) };
                for (w, ix) in idx.iter().enumerate() {
                    // +1 or -1 per row.
                    let sign = _mm256_or_si256(next_sign(&mut sg), one);
                    for (t, tr) in trit.iter().enumerate() {
                        let v = _mm256_sign_epi8(_mm256_shuffle_epi8(*tr, *ix), sign);
                        vals[3 * (2 * p + w) + t] = _mm256_add_epi8(v, one);
                    }
                }
            }
        }
        vals
    }

    /// Hints segment `s` of `prefetch` (its five lines, those inside it) into L2: see
    /// LUT_PREFETCH_BYTES. The GEMVs spread these over their loop.
    #[inline(always)]
    fn prefetch_segment(prefetch: &[u8], s: usize) {
        if s * SEG_BYTES < prefetch.len() {
            let p = prefetch.as_ptr().wrapping_add(s * SEG_BYTES);
            for line in 0..SEG_BYTES / 64 {
                // SAFETY: a hint never faults or writes; the last lines may lie past the end.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(64 * line).cast()) };
            }
        }
    }

    /// Segments decoded at a time by [`gemm_block_avx2`]: 64 groups, 96 pairs of values, 6 KB
    /// of decoded codes.
    const DEC_SEGS: usize = 4;
    /// Pairs summed in 16-bit lanes before widening: a pair adds at most 2 * 2 * 128.
    const PAIR_FLUSH: usize = 32;

    /// See [`super::gemm_block`].
    ///
    /// # Safety
    /// The CPU must support AVX2; `block` holds `segs` segments; `out.len()` rows of `q`, `kp`
    /// apart, hold `48 * segs` values each.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gemm_block_avx2(
        q: &[i8],
        kp: usize,
        block: &[u8],
        segs: usize,
        out: &mut [[i32; LUT_ROWS]],
    ) {
        let zero = _mm256_setzero_si256();
        // Decoded codes: per pair of values, rows 0-7 and 16-23, then 8-15 and 24-31, each row's
        // two codes side by side (what `maddubs` pairs).
        let mut pairs = [zero; DEC_SEGS * 24 * 2];
        for o in out.iter_mut() {
            *o = [0; LUT_ROWS];
        }
        let mut s0 = 0;
        while s0 < segs {
            let ns = DEC_SEGS.min(segs - s0);
            for ds in 0..ns {
                // SAFETY: s0 + ds < segs: the segment is inside `block`.
                let vals = unsafe { segment_codes(block.as_ptr().add((s0 + ds) * SEG_BYTES)) };
                for (i, v) in vals.chunks_exact(2).enumerate() {
                    let k = 2 * (24 * ds + i);
                    pairs[k] = _mm256_unpacklo_epi8(v[0], v[1]);
                    pairs[k + 1] = _mm256_unpackhi_epi8(v[0], v[1]);
                }
            }
            let npairs = 24 * ns;
            // The window's first value.
            let v0 = 48 * s0;
            let mut t = 0;
            while t + 4 <= out.len() {
                // SAFETY: rows t..t + 4 exist; the window's values are inside each (contract).
                unsafe {
                    pairs_times_rows::<4>(&pairs[..2 * npairs], q, kp, t, v0, &mut out[t..t + 4])
                };
                t += 4;
            }
            while t < out.len() {
                // SAFETY: as above, for one row.
                unsafe {
                    pairs_times_rows::<1>(&pairs[..2 * npairs], q, kp, t, v0, &mut out[t..t + 1])
                };
                t += 1;
            }
            s0 += ns;
        }
    }

    /// `out[j] += codes . q_{t + j}` over the decoded `pairs` (starting at value `v0`), for `T`
    /// activation rows at once (each pair of code vectors loaded once for the `T`).
    ///
    /// # Safety
    /// AVX2; rows `t..t + T` of `q` (`kp` apart) hold values `v0..v0 + pairs.len()`.
    #[target_feature(enable = "avx2")]
    unsafe fn pairs_times_rows<const T: usize>(
        pairs: &[__m256i],
        q: &[i8],
        kp: usize,
        t: usize,
        v0: usize,
        out: &mut [[i32; LUT_ROWS]],
    ) {
        let zero = _mm256_setzero_si256();
        let npairs = pairs.len() / 2;
        let rows: [*const i8; T] = std::array::from_fn(|j| {
            // SAFETY: row t + j starts inside `q` (contract).
            unsafe { q.as_ptr().add((t + j) * kp + v0) }
        });
        let mut i = 0;
        while i < npairs {
            let end = (i + PAIR_FLUSH).min(npairs);
            let mut lo = [zero; T];
            let mut hi = [zero; T];
            while i < end {
                let (pl, ph) = (pairs[2 * i], pairs[2 * i + 1]);
                for j in 0..T {
                    // SAFETY: values 2 i and 2 i + 1 of the window are inside row t + j.
                    let a = _mm256_set1_epi16(unsafe {
                        rows[j].add(2 * i).cast::<i16>().read_unaligned()
                    });
                    lo[j] = _mm256_add_epi16(lo[j], _mm256_maddubs_epi16(pl, a));
                    hi[j] = _mm256_add_epi16(hi[j], _mm256_maddubs_epi16(ph, a));
                }
                i += 1;
            }
            for j in 0..T {
                let o = &mut out[j];
                let parts = [
                    (0, _mm256_castsi256_si128(lo[j])),
                    (8, _mm256_castsi256_si128(hi[j])),
                    (16, _mm256_extracti128_si256::<1>(lo[j])),
                    (24, _mm256_extracti128_si256::<1>(hi[j])),
                ];
                for (r0, v) in parts {
                    // SAFETY: r0 + 8 <= 32: inside the output row.
                    unsafe {
                        let p = o.as_mut_ptr().add(r0).cast::<__m256i>();
                        let sum = _mm256_add_epi32(_mm256_loadu_si256(p), _mm256_cvtepi16_epi32(v));
                        _mm256_storeu_si256(p, sum);
                    }
                }
            }
        }
    }

    /// Segments summed in 16-bit lanes before widening: a group adds at most 3 * 128 + 1
    /// (the bitwise not), so 5 segments of 16 groups stay below 2^15.
    const FLUSH_SEGS: usize = 5;

    /// # Safety
    /// The CPU must support AVX2; `block` holds `segs` segments and each table `16 * segs`
    /// groups.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn block_avx2<const T: usize>(
        tables: &[&[u8]; T],
        block: &[u8],
        segs: usize,
        out: &mut [[i32; LUT_ROWS]; T],
        prefetch: &[u8],
    ) {
        debug_assert!(
            block.len() >= segs * SEG_BYTES
                && tables.iter().all(|t| t.len() >= segs * 16 * TABLE_BYTES)
        );
        let zero = _mm256_setzero_si256();
        // Per activation row: rows 0-7, 8-15, 16-23, 24-31.
        let mut acc = [[zero; 4]; T];
        let tp: [*const u8; T] = std::array::from_fn(|t| tables[t].as_ptr());
        let bp = block.as_ptr();
        let mut s = 0;
        while s < segs {
            let end = (s + FLUSH_SEGS).min(segs);
            // Per activation row: rows 0-7 and 16-23 (`unpacklo` of each 128-bit half), rows
            // 8-15 and 24-31.
            let mut a = [zero; T];
            let mut b = [zero; T];
            while s < end {
                prefetch_segment(prefetch, s);
                // SAFETY: s < segs: the segment's 320 bytes are inside `block`.
                let seg = unsafe { bp.add(s * SEG_BYTES) };
                for h in 0..2 {
                    // SAFETY: a whole segment, h < 2.
                    let mut sg = unsafe { group_signs(seg, h) };
                    for pp in 0..4 {
                        let p = 4 * h + pp;
                        // SAFETY: a whole segment, p < 8.
                        let idx = unsafe { group_indices(seg, p) };
                        for (w, ix) in idx.iter().enumerate() {
                            let g = s * 16 + 2 * p + w;
                            let m = next_sign(&mut sg);
                            for t in 0..T {
                                // SAFETY: g < 16 * segs: the group's 32 table bytes are inside.
                                let (tl, th) = unsafe {
                                    let tb = tp[t].add(g * TABLE_BYTES);
                                    (
                                        _mm256_broadcastsi128_si256(_mm_loadu_si128(tb.cast())),
                                        _mm256_broadcastsi128_si256(_mm_loadu_si128(
                                            tb.add(16).cast(),
                                        )),
                                    )
                                };
                                let l = _mm256_xor_si256(_mm256_shuffle_epi8(tl, *ix), m);
                                let hh = _mm256_xor_si256(_mm256_shuffle_epi8(th, *ix), m);
                                a[t] = _mm256_add_epi16(a[t], _mm256_unpacklo_epi8(l, hh));
                                b[t] = _mm256_add_epi16(b[t], _mm256_unpackhi_epi8(l, hh));
                            }
                        }
                    }
                }
                s += 1;
            }
            for t in 0..T {
                let (a, b) = (a[t], b[t]);
                let acc = &mut acc[t];
                acc[0] = _mm256_add_epi32(acc[0], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a)));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(b)));
                acc[2] = _mm256_add_epi32(
                    acc[2],
                    _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(a)),
                );
                acc[3] = _mm256_add_epi32(
                    acc[3],
                    _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(b)),
                );
            }
        }
        for (o, acc) in out.iter_mut().zip(&acc) {
            for (k, v) in acc.iter().enumerate() {
                // SAFETY: o has 32 i32; k * 8 + 8 <= 32.
                unsafe { _mm256_storeu_si256(o.as_mut_ptr().add(8 * k).cast(), *v) };
            }
        }
    }
    /// Bytes per pair of groups in the AVX-512 table (`super::table_group_bytes`).
    const PAIR_BYTES: usize = 4 * TABLE_BYTES;

    /// The AVX-512 table (`super::table_group_bytes`), a pair of groups per step: the six
    /// activations (offset to unsigned) placed by `vpermb` for two `maddubs` as in
    /// [`build_table_avx2`], the 32 words negated, and both split into low and high bytes by
    /// two-source `vpermb`s.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VBMI; `table.len()` is a multiple of 128 and
    /// `q.len() >= 6 * table.len() / 128`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn build_table_avx512(q: &[i8], table: &mut [u8]) {
        let pairs = table.len() / PAIR_BYTES;
        debug_assert!(q.len() >= 6 * pairs);
        let pat = super::PATTERNS;
        // Byte j of the pair's 32 words: word j / 2 of the first group (j < 32) or the second,
        // pattern (j % 32) / 2; its values at offsets 0-2 (first group) or 3-5 (second).
        let first = |j: usize| if j < 32 { 0 } else { 3 };
        let pick01: [u8; 64] = std::array::from_fn(|j| (first(j) + j % 2) as u8);
        let pick2: [u8; 64] = std::array::from_fn(|j| (first(j) + 2) as u8);
        let c01: [i8; 64] = std::array::from_fn(|j| pat[(j % 32) / 2][j % 2]);
        let c2: [i8; 64] =
            std::array::from_fn(|j| if j % 2 == 0 { pat[(j % 32) / 2][2] } else { 0 });
        let off: [i16; 32] =
            std::array::from_fn(|m| 128 * pat[m % 16].iter().map(|&v| v as i16).sum::<i16>());
        // Low bytes of the 32 words, then of their negations (bit 6 picks the second source).
        let lo_idx: [u8; 64] = std::array::from_fn(|j| {
            if j < 32 {
                2 * j as u8
            } else {
                64 + 2 * (j as u8 - 32)
            }
        });
        let hi_idx: [u8; 64] = std::array::from_fn(|j| lo_idx[j] + 1);
        // SAFETY: each array holds 64 bytes.
        let [pick01, pick2, c01, c2, off, lo_idx, hi_idx] = unsafe {
            [
                _mm512_loadu_si512(pick01.as_ptr().cast()),
                _mm512_loadu_si512(pick2.as_ptr().cast()),
                _mm512_loadu_si512(c01.as_ptr().cast()),
                _mm512_loadu_si512(c2.as_ptr().cast()),
                _mm512_loadu_si512(off.as_ptr().cast()),
                _mm512_loadu_si512(lo_idx.as_ptr().cast()),
                _mm512_loadu_si512(hi_idx.as_ptr().cast()),
            ]
        };
        let flip = _mm512_set1_epi8(-128);
        let (qp, tp) = (q.as_ptr(), table.as_mut_ptr());
        for p in 0..pairs {
            // SAFETY: the six bytes at 6 p are inside `q` (6 p + 6 <= q.len()); the masked load
            // reads no other byte. The pair's 128 table bytes are inside `table`.
            unsafe {
                let a = _mm512_xor_si512(_mm512_maskz_loadu_epi8(0x3f, qp.add(6 * p)), flip);
                let t = _mm512_add_epi16(
                    _mm512_maddubs_epi16(_mm512_permutexvar_epi8(pick01, a), c01),
                    _mm512_maddubs_epi16(_mm512_permutexvar_epi8(pick2, a), c2),
                );
                let t = _mm512_sub_epi16(t, off);
                let n = _mm512_sub_epi16(_mm512_setzero_si512(), t);
                let dst = tp.add(p * PAIR_BYTES);
                _mm512_storeu_si512(dst.cast(), _mm512_permutex2var_epi8(t, lo_idx, n));
                _mm512_storeu_si512(dst.add(64).cast(), _mm512_permutex2var_epi8(t, hi_idx, n));
            }
        }
    }

    /// [`block_avx2`] for AVX-512 with VBMI and GFNI, a pair of groups (`2p`, `2p + 1`) per
    /// step in 64 byte lanes (32 rows each): each lane's table index (bits 0-3 the group's
    /// index, bit 4 which group, bit 5 its sign) is put together by two `gf2p8affine` bit
    /// selects and an or; two `vpermb` look up the pair's low and high bytes (with the sign
    /// applied: the table holds the negated entries too); two unpacks and adds accumulate
    /// the 16-bit values. Five ALU ops per group and 32 rows, against the AVX2 kernel's twelve.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VBMI and GFNI; `block` holds `segs` segments and each
    /// table `8 * segs` pairs of groups ([`PAIR_BYTES`] each).
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,gfni")]
    pub(super) unsafe fn block_avx512<const T: usize>(
        tables: &[&[u8]; T],
        block: &[u8],
        segs: usize,
        out: &mut [[i32; LUT_ROWS]; T],
        prefetch: &[u8],
    ) {
        debug_assert!(
            block.len() >= segs * SEG_BYTES
                && tables.iter().all(|t| t.len() >= segs * 8 * PAIR_BYTES)
        );
        // `gf2p8affine` sets output bit i to the parity of (matrix byte 7 - i) & input: these
        // matrices copy bits. Lanes 0-31 (qwords 0-3) hold group 2p, lanes 32-63 group 2p + 1.
        // Indices: bits 0-3 to bits 0-3 (first group), bits 4-7 to bits 0-3 (second).
        let nib = _mm512_set_epi64(
            0x1020_4080_0000_0000,
            0x1020_4080_0000_0000,
            0x1020_4080_0000_0000,
            0x1020_4080_0000_0000,
            0x0102_0408_0000_0000,
            0x0102_0408_0000_0000,
            0x0102_0408_0000_0000,
            0x0102_0408_0000_0000,
        );
        // Signs of the pair `pp` of a sign byte (group 2pp in bit 7 - 2pp, 2pp + 1 next) to
        // bit 5.
        let sign: [__m512i; 4] = std::array::from_fn(|pp| {
            let first = (1i64 << (7 - 2 * pp)) << 16;
            let second = (1i64 << (6 - 2 * pp)) << 16;
            _mm512_set_epi64(second, second, second, second, first, first, first, first)
        });
        // Bit 4 in the second group's lanes.
        let which = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi8(0x10));
        let zero = _mm512_setzero_si512();
        // Per activation row, 32-bit sums of rows 0-7 and 16-23, and of rows 8-15 and 24-31.
        let mut acc = [[zero; 2]; T];
        let tp: [*const u8; T] = std::array::from_fn(|t| tables[t].as_ptr());
        let bp = block.as_ptr();
        let mut s = 0;
        while s < segs {
            let end = (s + FLUSH_SEGS).min(segs);
            // Per activation row, 16-bit sums: per 128-bit lane, rows 0-7 (`unpacklo`) or 8-15
            // (`unpackhi`) of group 2p, then rows 16-23 or 24-31, then the same of 2p + 1.
            let mut a = [zero; T];
            let mut b = [zero; T];
            while s < end {
                prefetch_segment(prefetch, s);
                // SAFETY: s < segs: the segment's 320 bytes are inside `block`.
                let seg = unsafe { bp.add(s * SEG_BYTES) };
                for h in 0..2 {
                    // SAFETY: the 32 sign bytes of groups 8h.. are inside the segment.
                    let sg = _mm512_broadcast_i64x4(unsafe {
                        _mm256_loadu_si256(seg.add(SIGN_OFFSET + 32 * h).cast())
                    });
                    for (pp, sign) in sign.iter().enumerate() {
                        let p = 4 * h + pp;
                        // SAFETY: the 32 index bytes of groups 2p, 2p + 1 are inside the
                        // segment.
                        let x = _mm512_broadcast_i64x4(unsafe {
                            _mm256_loadu_si256(seg.add(32 * p).cast())
                        });
                        let idx = _mm512_ternarylogic_epi32::<0xfe>(
                            _mm512_gf2p8affine_epi64_epi8::<0>(x, nib),
                            _mm512_gf2p8affine_epi64_epi8::<0>(sg, *sign),
                            which,
                        );
                        let pair = 8 * s + p;
                        for t in 0..T {
                            // SAFETY: pair < 8 segs: its 128 table bytes are inside.
                            let (tl, th) = unsafe {
                                let tb = tp[t].add(pair * PAIR_BYTES);
                                (
                                    _mm512_loadu_si512(tb.cast()),
                                    _mm512_loadu_si512(tb.add(64).cast()),
                                )
                            };
                            let l = _mm512_permutexvar_epi8(idx, tl);
                            let hh = _mm512_permutexvar_epi8(idx, th);
                            a[t] = _mm512_add_epi16(a[t], _mm512_unpacklo_epi8(l, hh));
                            b[t] = _mm512_add_epi16(b[t], _mm512_unpackhi_epi8(l, hh));
                        }
                    }
                }
                s += 1;
            }
            for t in 0..T {
                // The two groups' halves widened and added: rows (0-7, 16-23) and (8-15, 24-31).
                for (acc, v) in acc[t].iter_mut().zip([a[t], b[t]]) {
                    let first = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(v));
                    let second = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<1>(v));
                    *acc = _mm512_add_epi32(*acc, _mm512_add_epi32(first, second));
                }
            }
        }
        for (o, acc) in out.iter_mut().zip(&acc) {
            let parts = [
                (0, _mm512_castsi512_si256(acc[0])),
                (8, _mm512_castsi512_si256(acc[1])),
                (16, _mm512_extracti64x4_epi64::<1>(acc[0])),
                (24, _mm512_extracti64x4_epi64::<1>(acc[1])),
            ];
            for (r0, v) in parts {
                // SAFETY: o has 32 i32; r0 + 8 <= 32.
                unsafe { _mm256_storeu_si256(o.as_mut_ptr().add(r0).cast(), v) };
            }
        }
    }

    /// [`build_table_base3_avx512`]'s constants, per byte `j` of its 32 words: word `j / 2`
    /// is code `j / 2`'s entry, and byte `j` multiplies value `j % 2` of the group by that
    /// code's value `j % 2` (`BASE3_C01`) and, in even bytes, value 2 by its value 2
    /// (`BASE3_C2`); `BASE3_OFF` takes back the 128 added to each value to make it unsigned.
    /// Built at compile time: built per call, they were most of the table build's time.
    const BASE3_PICK01: [u8; 64] = {
        let mut a = [0; 64];
        let mut j = 0;
        while j < 64 {
            a[j] = (j % 2) as u8;
            j += 1;
        }
        a
    };
    const BASE3_C01: [i8; 64] = {
        let mut a = [0; 64];
        let mut j = 0;
        while j < 64 {
            a[j] = base3_triple((j / 2) as u16)[j % 2];
            j += 1;
        }
        a
    };
    const BASE3_C2: [i8; 64] = {
        let mut a = [0; 64];
        let mut j = 0;
        while j < 64 {
            if j % 2 == 0 {
                a[j] = base3_triple((j / 2) as u16)[2];
            }
            j += 1;
        }
        a
    };
    const BASE3_OFF: [i16; 32] = {
        let mut a = [0; 32];
        let mut e = 0;
        while e < 32 {
            let t = base3_triple(e as u16);
            a[e] = 128 * (t[0] as i16 + t[1] as i16 + t[2] as i16);
            e += 1;
        }
        a
    };

    /// The `Base3` table, one group per step: its three activations (offset to unsigned) placed
    /// by `vpermb` for two `maddubs` with every code's triple, as in [`build_table_avx2`], minus
    /// `128 * sum(triple)`: the 32 words, stored as they are.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VBMI; `table.len()` is a multiple of 64 and
    /// `q.len() >= 3 * table.len() / 64`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn build_table_base3_avx512(q: &[i8], table: &mut [u8]) {
        let groups = table.len() / BASE3_TABLE_BYTES;
        debug_assert!(q.len() >= 3 * groups);
        // SAFETY: each array holds 64 bytes.
        let [pick01, c01, c2, off] = unsafe {
            [
                _mm512_loadu_si512(BASE3_PICK01.as_ptr().cast()),
                _mm512_loadu_si512(BASE3_C01.as_ptr().cast()),
                _mm512_loadu_si512(BASE3_C2.as_ptr().cast()),
                _mm512_loadu_si512(BASE3_OFF.as_ptr().cast()),
            ]
        };
        let pick2 = _mm512_set1_epi8(2);
        let flip = _mm512_set1_epi8(-128);
        let (qp, tp) = (q.as_ptr(), table.as_mut_ptr());
        for g in 0..groups {
            // SAFETY: the three bytes at 3 g are inside `q` (3 g + 3 <= q.len()); the masked load
            // reads no other byte. The group's 64 table bytes are inside `table`.
            unsafe {
                let a = _mm512_xor_si512(_mm512_maskz_loadu_epi8(0x7, qp.add(3 * g)), flip);
                let t = _mm512_add_epi16(
                    _mm512_maddubs_epi16(_mm512_permutexvar_epi8(pick01, a), c01),
                    _mm512_maddubs_epi16(_mm512_permutexvar_epi8(pick2, a), c2),
                );
                let t = _mm512_sub_epi16(t, off);
                _mm512_storeu_si512(tp.add(g * BASE3_TABLE_BYTES).cast(), t);
            }
        }
    }

    /// Segments summed in 16-bit lanes before widening: each of the two sums takes at most 10
    /// groups of at most 3 * 128 per segment, so 8 segments stay within 2^15.
    const BASE3_FLUSH_SEGS: usize = 8;

    /// The `Base3` GEMV over `R` consecutive blocks (or, for `T` activation rows, a GEMM step
    /// sharing each word's load and shifts): per word of a segment (32 rows), the codes of its
    /// three groups are the word, the word shifted by 5 and by 10 (`vpermw` reads the low 5
    /// bits of each index), and each `vpermw` looks up 32 rows' entries in the group's 32-word
    /// table; `vpshldw` collects group 15's code from the five top bits. Three ALU ops per
    /// group and 32 rows, against five for the `Lut3` AVX-512 kernel, and no sign or byte
    /// handling. Each table line loaded serves the `R` blocks: a row's table (54 KiB at K =
    /// 2560) does not fit L1, so every table load is an L1 miss, and with one block per pass
    /// those misses, not the arithmetic, bounded the kernel.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VBMI2; `blocks` holds `R` blocks of `segs` segments
    /// each and each table `16 * segs` groups ([`BASE3_TABLE_BYTES`] each).
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi2")]
    pub(super) unsafe fn block_base3_avx512<const R: usize, const T: usize>(
        tables: &[&[u8]; T],
        blocks: &[u8],
        segs: usize,
        out: &mut [[[i32; LUT_ROWS]; T]; R],
        prefetch: &[u8],
    ) {
        let bb = segs * SEG_BYTES;
        debug_assert!(
            blocks.len() >= R * bb
                && tables
                    .iter()
                    .all(|t| t.len() >= segs * 16 * BASE3_TABLE_BYTES)
        );
        let zero = _mm512_setzero_si512();
        // Per block and activation row, 32-bit sums of rows 0-15 and 16-31.
        let mut acc = [[[zero; 2]; T]; R];
        let tp: [*const u8; T] = std::array::from_fn(|t| tables[t].as_ptr());
        let bp: [*const u8; R] = std::array::from_fn(|r| blocks.as_ptr().wrapping_add(r * bb));
        let mut s = 0;
        while s < segs {
            let end = (s + BASE3_FLUSH_SEGS).min(segs);
            // Per block and activation row, 16-bit sums of the 32 rows: groups 3j and 3j + 2,
            // and groups 3j + 1 and 15 (two chains of adds).
            let mut a = [[zero; T]; R];
            let mut c = [[zero; T]; R];
            while s < end {
                // SAFETY: s < segs: each block's segment (320 bytes) is inside `blocks`.
                let seg: [*const u8; R] =
                    std::array::from_fn(|r| unsafe { bp[r].add(s * SEG_BYTES) });
                // Each block's stream hinted BASE3_AHEAD_SEGS segments on, in these blocks or
                // (past their end) in the next `R` at `prefetch`, one line per block per word
                // below: spread, not in one burst (see BASE3_AHEAD_SEGS). With nothing there
                // to hint, the segment being read is hinted instead (a no-op): no test per
                // hint in the loop.
                let t = s + BASE3_AHEAD_SEGS;
                let hint_at: [*const u8; R] = std::array::from_fn(|r| {
                    if t < segs {
                        blocks.as_ptr().wrapping_add(r * bb + t * SEG_BYTES)
                    } else {
                        let off = r * bb + (t - segs) * SEG_BYTES;
                        if off + SEG_BYTES > prefetch.len() {
                            seg[r]
                        } else {
                            prefetch.as_ptr().wrapping_add(off)
                        }
                    }
                });
                let mut last = [zero; R];
                for j in 0..5 {
                    for at in hint_at {
                        // A hint never faults or writes.
                        _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(64 * j).cast());
                    }
                    // SAFETY: groups 16 s + 3 j.. + 2 < 16 segs: their tables are inside.
                    let tw: [[__m512i; 3]; T] = std::array::from_fn(|t| unsafe {
                        let tb = tp[t].add((16 * s + 3 * j) * BASE3_TABLE_BYTES);
                        std::array::from_fn(|k| {
                            _mm512_loadu_si512(tb.add(k * BASE3_TABLE_BYTES).cast())
                        })
                    });
                    for r in 0..R {
                        // SAFETY: word j's 64 bytes are inside the segment.
                        let x =
                            unsafe { _mm512_loadu_si512(seg[r].add(BASE3_WORD_BYTES * j).cast()) };
                        last[r] = if j == 0 {
                            _mm512_srli_epi16::<15>(x)
                        } else {
                            _mm512_shldi_epi16::<1>(last[r], x)
                        };
                        let (x1, x2) = (_mm512_srli_epi16::<5>(x), _mm512_srli_epi16::<10>(x));
                        for t in 0..T {
                            let [t0, t1, t2] = tw[t];
                            a[r][t] = _mm512_add_epi16(a[r][t], _mm512_permutexvar_epi16(x, t0));
                            c[r][t] = _mm512_add_epi16(c[r][t], _mm512_permutexvar_epi16(x1, t1));
                            a[r][t] = _mm512_add_epi16(a[r][t], _mm512_permutexvar_epi16(x2, t2));
                        }
                    }
                }
                for t in 0..T {
                    // SAFETY: group 16 s + 15 < 16 segs: its table is inside.
                    let t15 = unsafe {
                        _mm512_loadu_si512(tp[t].add((16 * s + 15) * BASE3_TABLE_BYTES).cast())
                    };
                    for r in 0..R {
                        c[r][t] = _mm512_add_epi16(c[r][t], _mm512_permutexvar_epi16(last[r], t15));
                    }
                }
                s += 1;
            }
            let lo = |v: __m512i| _mm512_cvtepi16_epi32(_mm512_castsi512_si256(v));
            let hi = |v: __m512i| _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<1>(v));
            for r in 0..R {
                for t in 0..T {
                    let (av, cv) = (a[r][t], c[r][t]);
                    let acc = &mut acc[r][t];
                    acc[0] = _mm512_add_epi32(acc[0], _mm512_add_epi32(lo(av), lo(cv)));
                    acc[1] = _mm512_add_epi32(acc[1], _mm512_add_epi32(hi(av), hi(cv)));
                }
            }
        }
        for (ob, accb) in out.iter_mut().zip(&acc) {
            for (o, acc) in ob.iter_mut().zip(accb) {
                // SAFETY: o has 32 i32: 16 at 0 and 16 at 16.
                unsafe {
                    _mm512_storeu_si512(o.as_mut_ptr().cast(), acc[0]);
                    _mm512_storeu_si512(o.as_mut_ptr().add(16).cast(), acc[1]);
                }
            }
        }
    }

    /// Per `Base3` code, its values plus one (codes in {0, 1, 2}): values 0 and 1 as the low and
    /// high byte of a word (`BASE3_D01`), value 2 (`BASE3_D2`). Compile-time, as above.
    const BASE3_D01: [u16; 32] = {
        let mut a = [0; 32];
        let mut e = 0;
        while e < 32 {
            let t = base3_triple(e as u16);
            a[e] = (t[0] + 1) as u16 | (((t[1] + 1) as u16) << 8);
            e += 1;
        }
        a
    };
    const BASE3_D2: [u16; 32] = {
        let mut a = [0; 32];
        let mut e = 0;
        while e < 32 {
            a[e] = (base3_triple(e as u16)[2] + 1) as u16;
            e += 1;
        }
        a
    };

    /// The codes (value + 1, in {0, 1, 2}) of the 48 values of the `Base3` segment at `seg`, 32
    /// rows each: each group's code looked up by two `vpermw`s (values 0 and 1 as the low and
    /// high byte of a word, value 2) and narrowed to bytes.
    ///
    /// # Safety
    /// AVX-512 F/BW/VBMI2; `seg` points to a whole segment.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi2")]
    #[inline]
    unsafe fn base3_segment_codes(seg: *const u8) -> [__m256i; 48] {
        // SAFETY: each array holds 64 bytes.
        let (d01, d2) = unsafe {
            (
                _mm512_loadu_si512(BASE3_D01.as_ptr().cast()),
                _mm512_loadu_si512(BASE3_D2.as_ptr().cast()),
            )
        };
        let mut vals = [_mm256_setzero_si256(); 48];
        let mut put = |g: usize, c: __m512i| {
            let w01 = _mm512_permutexvar_epi16(c, d01);
            vals[3 * g] = _mm512_cvtepi16_epi8(w01);
            vals[3 * g + 1] = _mm512_cvtepi16_epi8(_mm512_srli_epi16::<8>(w01));
            vals[3 * g + 2] = _mm512_cvtepi16_epi8(_mm512_permutexvar_epi16(c, d2));
        };
        let mut last = _mm512_setzero_si512();
        for j in 0..5 {
            // SAFETY: word j's 64 bytes are inside the segment (contract).
            let x = unsafe { _mm512_loadu_si512(seg.add(BASE3_WORD_BYTES * j).cast()) };
            last = if j == 0 {
                _mm512_srli_epi16::<15>(x)
            } else {
                _mm512_shldi_epi16::<1>(last, x)
            };
            put(3 * j, x);
            put(3 * j + 1, _mm512_srli_epi16::<5>(x));
            put(3 * j + 2, _mm512_srli_epi16::<10>(x));
        }
        put(15, last);
        vals
    }

    /// [`gemm_block_avx2`] with AVX-512 VNNI: the block's codes decoded the same way, then
    /// transposed so that each 32-bit lane holds four consecutive values of one row, which
    /// `vpdpbusd` multiplies by four activations and adds in one instruction (the AVX2 kernel
    /// needs a `maddubs` and a 16-bit add per two values, and flushes to 32 bits).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VNNI; as [`gemm_block_avx2`] otherwise.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn gemm_block_avx512(
        q: &[i8],
        kp: usize,
        block: &[u8],
        segs: usize,
        out: &mut [[i32; LUT_ROWS]],
    ) {
        // SAFETY: AVX2 (implied by AVX-512 F, contract); `gemm_with` calls it on whole
        // segments of `block`.
        let decode = |seg| unsafe { segment_codes(seg) };
        // SAFETY: AVX-512 F/BW/VNNI (contract); `block` holds `segs` segments (contract).
        unsafe { gemm_with(q, kp, block, segs, out, decode) }
    }

    /// [`gemm_block_avx512`] for `Base3` weights: the same loop over codes decoded by
    /// [`base3_segment_codes`].
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VNNI/VBMI2; as [`gemm_block_avx2`] otherwise.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi2")]
    pub(super) unsafe fn gemm_block_base3_avx512(
        q: &[i8],
        kp: usize,
        block: &[u8],
        segs: usize,
        out: &mut [[i32; LUT_ROWS]],
    ) {
        // SAFETY: AVX-512 F/BW/VBMI2 (contract); `gemm_with` calls it on whole segments of
        // `block`.
        let decode = |seg| unsafe { base3_segment_codes(seg) };
        // SAFETY: AVX-512 F/BW/VNNI (contract); `block` holds `segs` segments (contract).
        unsafe { gemm_with(q, kp, block, segs, out, decode) }
    }

    /// The GEMM step of [`gemm_block_avx512`] with the block's segments decoded by `decode`
    /// (a segment's pointer to the codes of its 48 values, 32 rows each).
    ///
    /// # Safety
    /// As [`gemm_block_avx512`]; `decode` is safe to call on each of the `segs` segments.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn gemm_with(
        q: &[i8],
        kp: usize,
        block: &[u8],
        segs: usize,
        out: &mut [[i32; LUT_ROWS]],
        decode: impl Fn(*const u8) -> [__m256i; 48],
    ) {
        // Qwords of rows 0-3 and 4-7 of [d0, d1] and 8-11, 12-15 of [d2, d3] (see below), then
        // rows 16-19, 20-23, 24-27, 28-31.
        let low = _mm512_setr_epi64(0, 1, 4, 5, 8, 9, 12, 13);
        let high = _mm512_setr_epi64(2, 3, 6, 7, 10, 11, 14, 15);
        // Per quad of values (4j..4j + 4 of the window): rows 0-15, then 16-31, each row's four
        // codes in a 32-bit lane.
        let mut quads = [_mm512_setzero_si512(); DEC_SEGS * 12 * 2];
        for o in out.iter_mut() {
            *o = [0; LUT_ROWS];
        }
        let mut s0 = 0;
        while s0 < segs {
            let ns = DEC_SEGS.min(segs - s0);
            for ds in 0..ns {
                // SAFETY: s0 + ds < segs: the segment is inside `block`.
                let vals = decode(unsafe { block.as_ptr().add((s0 + ds) * SEG_BYTES) });
                for j in 0..12 {
                    let v = &vals[4 * j..4 * j + 4];
                    // Per 128-bit half (rows 0-15, rows 16-31): a 4 x 4 byte transpose.
                    let (t0, t1) = (
                        _mm256_unpacklo_epi8(v[0], v[1]),
                        _mm256_unpackhi_epi8(v[0], v[1]),
                    );
                    let (t2, t3) = (
                        _mm256_unpacklo_epi8(v[2], v[3]),
                        _mm256_unpackhi_epi8(v[2], v[3]),
                    );
                    // Rows 0-3 | 16-19, 4-7 | 20-23, 8-11 | 24-27, 12-15 | 28-31.
                    let d01 = _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(_mm256_unpacklo_epi16(t0, t2)),
                        _mm256_unpackhi_epi16(t0, t2),
                    );
                    let d23 = _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(_mm256_unpacklo_epi16(t1, t3)),
                        _mm256_unpackhi_epi16(t1, t3),
                    );
                    let i = 2 * (12 * ds + j);
                    quads[i] = _mm512_permutex2var_epi64(d01, low, d23);
                    quads[i + 1] = _mm512_permutex2var_epi64(d01, high, d23);
                }
            }
            let quads = &quads[..2 * 12 * ns];
            // The window's first value.
            let v0 = 48 * s0;
            let mut t = 0;
            while t + 8 <= out.len() {
                // SAFETY: rows t..t + 8 exist; the window's values are inside each (contract).
                unsafe { quads_times_rows::<8>(quads, q, kp, t, v0, &mut out[t..t + 8]) };
                t += 8;
            }
            if t + 4 <= out.len() {
                // SAFETY: as above, for four rows.
                unsafe { quads_times_rows::<4>(quads, q, kp, t, v0, &mut out[t..t + 4]) };
                t += 4;
            }
            while t < out.len() {
                // SAFETY: as above, for one row.
                unsafe { quads_times_rows::<1>(quads, q, kp, t, v0, &mut out[t..t + 1]) };
                t += 1;
            }
            s0 += ns;
        }
    }

    /// `out[j] += codes . q_{t + j}` over the decoded `quads` (starting at value `v0`), for `T`
    /// activation rows at once (each pair of code vectors loaded once for the `T`).
    ///
    /// # Safety
    /// AVX-512 F/VNNI; rows `t..t + T` of `q` (`kp` apart) hold values `v0..v0 + 2 *
    /// quads.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn quads_times_rows<const T: usize>(
        quads: &[__m512i],
        q: &[i8],
        kp: usize,
        t: usize,
        v0: usize,
        out: &mut [[i32; LUT_ROWS]],
    ) {
        let rows: [*const i8; T] = std::array::from_fn(|j| {
            // SAFETY: row t + j starts inside `q` (contract).
            unsafe { q.as_ptr().add((t + j) * kp + v0) }
        });
        let mut lo = [_mm512_setzero_si512(); T];
        let mut hi = [_mm512_setzero_si512(); T];
        for (i, z) in quads.chunks_exact(2).enumerate() {
            for j in 0..T {
                // SAFETY: values 4 i..4 i + 4 of the window are inside row t + j.
                let a =
                    _mm512_set1_epi32(unsafe { rows[j].add(4 * i).cast::<i32>().read_unaligned() });
                lo[j] = _mm512_dpbusd_epi32(lo[j], z[0], a);
                hi[j] = _mm512_dpbusd_epi32(hi[j], z[1], a);
            }
        }
        for j in 0..T {
            let p = out[j].as_mut_ptr();
            // SAFETY: each output row holds 32 i32: 16 at 0 and 16 at 16.
            unsafe {
                let l = _mm512_add_epi32(_mm512_loadu_si512(p.cast()), lo[j]);
                _mm512_storeu_si512(p.cast(), l);
                let h = _mm512_add_epi32(_mm512_loadu_si512(p.add(16).cast()), hi[j]);
                _mm512_storeu_si512(p.add(16).cast(), h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::TernaryLayout;
    use crate::host::ternary_lut::build_table;
    use proptest::prelude::*;

    /// The AVX-512 layout of reference tables: per pair of groups, the low bytes of both
    /// groups' entries, then of their negations; then the high bytes the same way.
    fn pair_layout(reference: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 * reference.len());
        for pair in reference.chunks_exact(2 * TABLE_BYTES) {
            let words: Vec<i16> = (0..32)
                .map(|e| {
                    let t = &pair[(e / 16) * TABLE_BYTES..];
                    i16::from_le_bytes([t[e % 16], t[16 + e % 16]])
                })
                .collect();
            let entries: Vec<i16> = words
                .iter()
                .copied()
                .chain(words.iter().map(|&v| -v))
                .collect();
            out.extend(entries.iter().map(|v| v.to_le_bytes()[0]));
            out.extend(entries.iter().map(|v| v.to_le_bytes()[1]));
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Every ISA builds the reference's table bytes, in its layout (activations over the
        /// whole i8 range).
        #[test]
        fn every_isa_builds_the_reference_table(
            q in proptest::collection::vec(any::<i8>(), 1..200),
        ) {
            let g = groups(q.len());
            let mut padded = q.clone();
            padded.resize(3 * g + 1, 0);
            let mut want = vec![0u8; g * TABLE_BYTES];
            build_table(&q, &mut want);
            let mut want3 = vec![0u8; g * BASE3_TABLE_BYTES];
            build_table_base3(&q, &mut want3);
            for isa in HostIsa::supported_list() {
                for layout in [TernaryLayout::Lut3, TernaryLayout::Base3] {
                    let gb = table_group_bytes(isa, layout);
                    let mut got = vec![0xAAu8; g * gb];
                    build_table_isa(isa, layout, &padded, &mut got);
                    if layout == TernaryLayout::Base3 {
                        prop_assert_eq!(&got, &want3, "{:?} Base3", isa);
                    } else if has_avx512_lut(isa) {
                        prop_assert_eq!(&got, &pair_layout(&want), "{:?}", isa);
                    } else {
                        prop_assert_eq!(&got, &want, "{:?}", isa);
                    }
                    // Built in two parts split at a segment, as the pool's tasks build a row's
                    // table: each part's activations carry the next part's first value as the
                    // byte the SIMD builders read ahead.
                    if g > 16 {
                        let mut parts = vec![0xAAu8; g * gb];
                        let (first, second) = parts.split_at_mut(16 * gb);
                        build_table_isa(isa, layout, &padded[..3 * 16 + 1], first);
                        build_table_isa(isa, layout, &padded[3 * 16..], second);
                        prop_assert_eq!(&parts, &got, "{:?} {:?} in parts", isa, layout);
                    }
                }
            }
        }

        /// `lut_blocks` (four `Base3` blocks per kernel call, their streams hinted into the next
        /// blocks) equals the plain dot product on every ISA, from any block on.
        #[test]
        fn base3_quads_match_the_plain_dot(
            rows in 97usize..300,
            k in 1usize..300,
            seed in any::<u64>(),
        ) {
            let values = crate::host::ternary::random_ternary(rows * k, seed);
            let q: Vec<i8> = crate::host::ternary::random_ternary(k, !seed)
                .iter()
                .zip(crate::host::ternary::random_ternary(k, seed ^ 0x55))
                .map(|(&a, b)| (a * 100).wrapping_add(b * 27))
                .collect();
            let w = TernaryData::pack(&values, rows, k).to_layout(TernaryLayout::Base3);
            let mut table = vec![0u8; groups(k) * BASE3_TABLE_BYTES];
            build_table_base3(&q, &mut table);
            let bb = block_bytes(k);
            let nb = rows.div_ceil(LUT_ROWS);
            for isa in HostIsa::supported_list() {
                for b in (0..=nb - 4).step_by(3) {
                    let mut out = [[0i32; LUT_ROWS]; 4];
                    lut_blocks(isa, &table, &w, b, &mut out, &w.packed[(b + 4) * bb..]);
                    for (i, o) in out.iter().enumerate() {
                        for (j, &got) in o.iter().enumerate() {
                            let r = (b + i) * LUT_ROWS + j;
                            let want: i32 = if r < rows {
                                values[r * k..(r + 1) * k]
                                    .iter()
                                    .zip(&q)
                                    .map(|(&a, &x)| a as i32 * x as i32)
                                    .sum()
                            } else {
                                0
                            };
                            prop_assert_eq!(got, want, "{:?} row {}", isa, r);
                        }
                    }
                }
            }
        }

        /// Every ISA's block GEMV equals the plain dot product of the unpacked weights, for any
        /// shape (partial blocks and segments) and activations including -128 and 127.
        #[test]
        fn every_isa_matches_the_plain_dot(
            rows in 1usize..80,
            k in 1usize..400,
            seed in any::<u64>(),
            extreme in 0u8..3,
        ) {
            let mut s = seed;
            let mut next = || {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                s >> 33
            };
            let values: Vec<i8> = (0..rows * k).map(|_| (next() % 3) as i8 - 1).collect();
            // Three activation rows: the first may be all -128 or all 127, the others random.
            let qs: Vec<Vec<i8>> = (0..3)
                .map(|j| {
                    (0..k)
                        .map(|_| match (j, extreme) {
                            (0, 1) => -128,
                            (0, 2) => 127,
                            _ => (next() % 256) as u8 as i8,
                        })
                        .collect()
                })
                .collect();
            let dot = |r: usize, q: &[i8]| -> i32 {
                if r >= rows {
                    return 0;
                }
                values[r * k..(r + 1) * k].iter().zip(q).map(|(&a, &x)| a as i32 * x as i32).sum()
            };
            for layout in [TernaryLayout::Lut3, TernaryLayout::Base3] {
                let w = TernaryData::pack(&values, rows, k).to_layout(layout);
                // Each ISA's tables from the reference's (checked by the test above).
                let tables_for = |isa: HostIsa| -> Vec<Vec<u8>> {
                    qs.iter()
                        .map(|q| {
                            if layout == TernaryLayout::Base3 {
                                let mut t = vec![0u8; groups(k) * BASE3_TABLE_BYTES];
                                build_table_base3(q, &mut t);
                                return t;
                            }
                            let mut t = vec![0u8; groups(k) * TABLE_BYTES];
                            build_table(q, &mut t);
                            if has_avx512_lut(isa) { pair_layout(&t) } else { t }
                        })
                        .collect()
                };
                // The GEMM kernel: 13 activation rows (8, 4 and 1 at a time), codes times values.
                let kp = 3 * groups(k) + 1;
                let mut q13 = vec![0i8; 13 * kp];
                for (j, row) in q13.chunks_exact_mut(kp).enumerate() {
                    row[..k].copy_from_slice(&qs[j % 3]);
                }
                let gemm_isas = HostIsa::supported_list()
                    .into_iter()
                    .filter(|&i| has_gemm_kernel(i, layout));
                for isa in gemm_isas {
                    for b in 0..rows.div_ceil(LUT_ROWS) {
                        let mut out = [[0i32; LUT_ROWS]; 13];
                        gemm_block(isa, &q13, kp, &w, b, &mut out);
                        for (j, o) in out.iter().enumerate() {
                            let q = &qs[j % 3];
                            let qsum: i32 = q.iter().map(|&v| v as i32).sum();
                            for (i, &got) in o.iter().enumerate() {
                                let r = b * LUT_ROWS + i;
                                prop_assert_eq!(
                                    got,
                                    dot(r, q) + qsum,
                                    "{:?} {:?} gemm row {} x {}",
                                    isa,
                                    layout,
                                    r,
                                    j
                                );
                            }
                        }
                    }
                }
                for isa in HostIsa::supported_list() {
                    let tables = tables_for(isa);
                    for b in 0..rows.div_ceil(LUT_ROWS) {
                        let mut one = [[0i32; LUT_ROWS]];
                        lut_block(isa, &[&tables[0][..]], &w, b, &mut one, &w.packed);
                        let mut three = [[0i32; LUT_ROWS]; 3];
                        let t3 = [&tables[0][..], &tables[1][..], &tables[2][..]];
                        lut_block(isa, &t3, &w, b, &mut three, &[]);
                        for i in 0..LUT_ROWS {
                            let r = b * LUT_ROWS + i;
                            let want = dot(r, &qs[0]);
                            prop_assert_eq!(one[0][i], want, "{:?} {:?} row {}", isa, layout, r);
                            for (j, q) in qs.iter().enumerate() {
                                let want = dot(r, q);
                                prop_assert_eq!(
                                    three[j][i],
                                    want,
                                    "{:?} {:?} row {} x {}",
                                    isa,
                                    layout,
                                    r,
                                    j
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
