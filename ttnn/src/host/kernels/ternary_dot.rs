//! Integer dot products of int8 activations with packed ternary rows (`host::ternary` layout),
//! for up to four activation rows at once: scalar, AVX2 and AVX-512 VNNI versions, chosen by
//! the device's `HostIsa`. All are exact (integer sums), so every path gives the same bits.
//!
//! The kernels sum `code * q` with the unsigned codes `t + 1` in {0, 1, 2} (what `maddubs` /
//! `vpdpbusd` multiply as unsigned bytes); the caller subtracts `sum(q)` to get `sum(t * q)`.
//! Activations are padded with zeros to whole 128-value chunks.

use crate::device::HostIsa;
use crate::host::ternary::{CHUNK, CHUNK_BYTES};

/// `sum_k code[k] * q[k]` over whole chunks, for each of the `R` activation rows.
#[inline]
pub(crate) fn dot_codes<const R: usize>(isa: HostIsa, qs: &[&[i8]; R], packed: &[u8]) -> [i32; R] {
    debug_assert!(qs.iter().all(|q| q.len() == packed.len() * 4));
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the device only selects Avx512Vnni/Avx2 after detecting the features (or
        // refuses to open), and lengths were checked by the caller (debug-asserted above).
        HostIsa::Avx512Vnni => unsafe { x86::dot_codes_avx512vnni(qs, packed) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        HostIsa::Avx2 => unsafe { x86::dot_codes_avx2(qs, packed) },
        _ => dot_codes_scalar(qs, packed),
    }
}

/// `sum_k code_w[k] * q[k]` for one activation row and `W` packed weight rows (a GEMV: each
/// activation vector loaded once serves every weight row). Same results as [`dot_codes`].
#[inline]
pub(crate) fn dot_codes_weights<const W: usize>(
    isa: HostIsa,
    q: &[i8],
    packed: &[&[u8]; W],
) -> [i32; W] {
    debug_assert!(packed.iter().all(|p| q.len() == p.len() * 4));
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512Vnni/Avx2 are only selected after detecting their features; lengths as
        // above (checked in the function).
        HostIsa::Avx512Vnni => unsafe { x86::dot_codes_weights_avx512vnni(q, packed) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        HostIsa::Avx2 => unsafe { x86::dot_codes_weights_avx2(q, packed) },
        _ => packed.map(|p| dot_codes_scalar(&[q], p)[0]),
    }
}

/// `out[i] = sum_k code_i[k] * q[k]` for the first `out.len()` weight rows of `row_bytes` each,
/// stored back to back in `rows` (a GEMV over a run of rows): one row after the other, so the
/// weights are read as one sequential stream, with the bytes `ahead` past each row's start (while
/// inside `rows`) prefetched. Same results as [`dot_codes`].
pub(crate) fn dot_codes_rows(
    isa: HostIsa,
    q: &[i8],
    rows: &[u8],
    row_bytes: usize,
    out: &mut [i32],
    ahead: usize,
) {
    assert!(
        row_bytes > 0 && q.len() == row_bytes * 4 && rows.len() >= out.len() * row_bytes,
        "rows shorter than the outputs, or activations not matching the rows"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 is only selected after detecting it; lengths are asserted above.
        HostIsa::Avx2 => unsafe { x86::dot_codes_rows_avx2(q, rows, row_bytes, out, ahead) },
        _ => {
            for (i, o) in out.iter_mut().enumerate() {
                let start = i * row_bytes;
                super::prefetch(prefetch_target(rows, start, row_bytes, ahead));
                *o = dot_codes_weights(isa, q, &[&rows[start..start + row_bytes]])[0];
            }
        }
    }
}

/// The bytes of `rows` to prefetch while the row at `start` is computed: a row's worth `ahead`
/// bytes on, clipped to `rows` (empty past its end).
#[inline]
fn prefetch_target(rows: &[u8], start: usize, row_bytes: usize, ahead: usize) -> &[u8] {
    let pf = (start + ahead).min(rows.len());
    &rows[pf..(pf + row_bytes).min(rows.len())]
}

/// The reference: unpack each byte, multiply, add.
pub(crate) fn dot_codes_scalar<const R: usize>(qs: &[&[i8]; R], packed: &[u8]) -> [i32; R] {
    let mut acc = [0i32; R];
    for (c, chunk) in packed.chunks_exact(CHUNK_BYTES).enumerate() {
        for (j, &byte) in chunk.iter().enumerate() {
            for i in 0..4 {
                let code = ((byte >> (2 * i)) & 3) as i32;
                let k = c * CHUNK + i * CHUNK_BYTES + j;
                for r in 0..R {
                    acc[r] += code * qs[r][k] as i32;
                }
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{CHUNK, CHUNK_BYTES};

    /// Chunks summed in 16-bit lanes before widening: each chunk adds at most
    /// 4 * 2 * 2 * 128 = 2048 to a lane, so 8 chunks stay below 2^15.
    const FLUSH: usize = 8;

    /// # Safety
    /// The CPU must support AVX2; `packed.len()` is a multiple of 32 and every `qs[r]` has
    /// `4 * packed.len()` values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_codes_avx2<const R: usize>(
        qs: &[&[i8]; R],
        packed: &[u8],
    ) -> [i32; R] {
        let chunks = packed.len() / CHUNK_BYTES;
        let mask = _mm256_set1_epi8(3);
        let ones = _mm256_set1_epi16(1);
        let mut acc32 = [_mm256_setzero_si256(); R];
        let mut c = 0;
        while c < chunks {
            let end = (c + FLUSH).min(chunks);
            let mut acc16 = [_mm256_setzero_si256(); R];
            while c < end {
                // SAFETY: c < chunks, so the 32 bytes at c * 32 are inside `packed`.
                let w = unsafe { _mm256_loadu_si256(packed.as_ptr().add(c * CHUNK_BYTES).cast()) };
                let codes = [
                    _mm256_and_si256(w, mask),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(w), mask),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(w), mask),
                    _mm256_and_si256(_mm256_srli_epi16::<6>(w), mask),
                ];
                for r in 0..R {
                    // SAFETY: each q row has 4 * packed.len() = chunks * 128 values.
                    let base = unsafe { qs[r].as_ptr().add(c * CHUNK) };
                    let mut s = _mm256_setzero_si256();
                    for (i, code) in codes.iter().enumerate() {
                        // SAFETY: base + 32 i + 32 <= chunk end, inside the q row.
                        let q = unsafe { _mm256_loadu_si256(base.add(i * CHUNK_BYTES).cast()) };
                        // Pairs of code * q as i16 (|sum| <= 512, no saturation).
                        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(*code, q));
                    }
                    acc16[r] = _mm256_add_epi16(acc16[r], s);
                }
                c += 1;
            }
            for r in 0..R {
                acc32[r] = _mm256_add_epi32(acc32[r], _mm256_madd_epi16(acc16[r], ones));
            }
        }
        let mut out = [0i32; R];
        for r in 0..R {
            out[r] = hsum_epi32(acc32[r]);
        }
        out
    }

    /// One activation row, `W` weight rows; see [`super::dot_codes_weights`].
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_codes_weights_avx2<const W: usize>(
        q: &[i8],
        packed: &[&[u8]; W],
    ) -> [i32; W] {
        // SAFETY: AVX2 (the caller's contract).
        let acc = unsafe { acc_weights_avx2(q, packed, &[]) };
        // Exact: every term of the sums is a multiple of 4.
        acc.map(|a| hsum_epi32(a) >> 2)
    }

    /// Rows of `row_bytes` stored back to back in `rows`, one after the other (one sequential
    /// stream); see [`super::dot_codes_rows`]. Eight rows' accumulators are reduced together.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_codes_rows_avx2(
        q: &[i8],
        rows: &[u8],
        row_bytes: usize,
        out: &mut [i32],
        ahead: usize,
    ) {
        // Lengths as asserted by `dot_codes_rows`; the row slices below are bounds-checked.
        debug_assert!(q.len() == row_bytes * 4 && rows.len() >= out.len() * row_bytes);
        let mut accs = [_mm256_setzero_si256(); 8];
        for (i, o) in out.chunks_mut(8).enumerate() {
            for (t, acc) in accs.iter_mut().enumerate().take(o.len()) {
                let start = (i * 8 + t) * row_bytes;
                let pf = super::prefetch_target(rows, start, row_bytes, ahead);
                let row = &rows[start..start + row_bytes];
                // SAFETY: AVX2; the row has `q.len() / 4` bytes (asserted by the caller).
                *acc = unsafe { acc_weights_avx2(q, &[row], pf) }[0];
            }
            let s = hsum8_epi32(&accs);
            let mut lanes = [0i32; 8];
            // SAFETY: `lanes` holds 8 i32.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), s) };
            // Exact: every term of the sums is a multiple of 4.
            for (d, v) in o.iter_mut().zip(lanes) {
                *d = v >> 2;
            }
        }
    }

    /// The eight lane sums of `v` as one vector (lane `i` = sum of `v[i]`).
    #[target_feature(enable = "avx2")]
    fn hsum8_epi32(v: &[__m256i; 8]) -> __m256i {
        let a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        let b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
        // a = [v0..v3 low-half sums | v0..v3 high-half sums], b likewise for v4..v7.
        _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(a, b),
            _mm256_permute2x128_si256::<0x31>(a, b),
        )
    }

    /// The accumulators of [`dot_codes_weights_avx2`] before the horizontal sums (4x scale).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn acc_weights_avx2<const W: usize>(
        q: &[i8],
        packed: &[&[u8]; W],
        prefetch: &[u8],
    ) -> [__m256i; W] {
        let chunks = q.len() / CHUNK;
        assert!(
            packed.iter().all(|p| p.len() >= chunks * CHUNK_BYTES),
            "weight rows shorter than the activations"
        );
        // Fields 0 and 2 of each byte are masked in place (codes 0..=2); fields 1 and 3 are
        // masked without shifting them down (codes times 4), which saves two shifts per chunk
        // and row: their products are summed apart, at 4x scale (exact), and the two sums meet
        // when widened. `lo` gets at most 2 * 512 per chunk and lane, `hi` 4 * 2 * 512 = 4096
        // (>= -4096, as |q| <= 128), so FLUSH = 8 chunks stay within i16.
        let mask = _mm256_set1_epi8(0x03);
        let mask4 = _mm256_set1_epi8(0x0c);
        let ones = _mm256_set1_epi16(1);
        let fours = _mm256_set1_epi16(4);
        // 4x the sums.
        let mut acc32 = [_mm256_setzero_si256(); W];
        let mut c = 0;
        while c < chunks {
            let end = (c + FLUSH).min(chunks);
            // Hints for the same bytes of `prefetch` as this block covers (four lines per
            // eight chunks): spread over the row rather than one burst, which stalls once the
            // line-fill buffers are full.
            if c * CHUNK_BYTES < prefetch.len() {
                let p = prefetch.as_ptr().wrapping_add(c * CHUNK_BYTES);
                for line in 0..FLUSH * CHUNK_BYTES / 64 {
                    // A hint never faults or writes; wrapping arithmetic, as the last lines
                    // may lie past the target's end.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * line).cast());
                }
            }
            let mut lo = [_mm256_setzero_si256(); W];
            let mut hi = [_mm256_setzero_si256(); W];
            while c < end {
                // SAFETY: c < chunks: the chunk's 128 activations are inside `q`.
                let qv = unsafe {
                    let b = q.as_ptr().add(c * CHUNK);
                    [
                        _mm256_loadu_si256(b.cast()),
                        _mm256_loadu_si256(b.add(CHUNK_BYTES).cast()),
                        _mm256_loadu_si256(b.add(2 * CHUNK_BYTES).cast()),
                        _mm256_loadu_si256(b.add(3 * CHUNK_BYTES).cast()),
                    ]
                };
                for r in 0..W {
                    // SAFETY: c < chunks, so the chunk's 32 bytes are inside the row (asserted).
                    let w = unsafe {
                        _mm256_loadu_si256(packed[r].as_ptr().add(c * CHUNK_BYTES).cast())
                    };
                    // Bits 4-7 of each byte to bits 0-3 (the 16-bit shift moves no bits of
                    // the high byte into the masked bits of the low one).
                    let w2 = _mm256_srli_epi16::<4>(w);
                    let m0 = _mm256_maddubs_epi16(_mm256_and_si256(w, mask), qv[0]);
                    let m1 = _mm256_maddubs_epi16(_mm256_and_si256(w, mask4), qv[1]);
                    let m2 = _mm256_maddubs_epi16(_mm256_and_si256(w2, mask), qv[2]);
                    let m3 = _mm256_maddubs_epi16(_mm256_and_si256(w2, mask4), qv[3]);
                    lo[r] = _mm256_add_epi16(lo[r], _mm256_add_epi16(m0, m2));
                    hi[r] = _mm256_add_epi16(hi[r], _mm256_add_epi16(m1, m3));
                }
                c += 1;
            }
            for r in 0..W {
                let s = _mm256_add_epi32(
                    _mm256_madd_epi16(lo[r], fours),
                    _mm256_madd_epi16(hi[r], ones),
                );
                acc32[r] = _mm256_add_epi32(acc32[r], s);
            }
        }
        acc32
    }

    #[target_feature(enable = "avx2")]
    fn hsum_epi32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }

    /// # Safety
    /// The CPU must support AVX-512 F/BW and VNNI; same lengths as [`dot_codes_avx2`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
    pub(super) unsafe fn dot_codes_avx512vnni<const R: usize>(
        qs: &[&[i8]; R],
        packed: &[u8],
    ) -> [i32; R] {
        let chunks = packed.len() / CHUNK_BYTES;
        let mask = _mm512_set1_epi8(3);
        let mut acc = [_mm512_setzero_si512(); R];
        let mut c = 0;
        // Two chunks per 64-byte load: lanes 0-31 hold chunk c, lanes 32-63 chunk c + 1.
        while c + 1 < chunks {
            // SAFETY: c + 1 < chunks: 64 bytes at c * 32 are inside `packed`.
            let w = unsafe { _mm512_loadu_si512(packed.as_ptr().add(c * CHUNK_BYTES).cast()) };
            let codes = [
                _mm512_and_si512(w, mask),
                _mm512_and_si512(_mm512_srli_epi16::<2>(w), mask),
                _mm512_and_si512(_mm512_srli_epi16::<4>(w), mask),
                _mm512_and_si512(_mm512_srli_epi16::<6>(w), mask),
            ];
            for r in 0..R {
                // SAFETY: each q row has chunks * 128 values; chunk c + 1 ends inside it.
                let (lo, hi) = unsafe {
                    (
                        qs[r].as_ptr().add(c * CHUNK),
                        qs[r].as_ptr().add((c + 1) * CHUNK),
                    )
                };
                for (i, code) in codes.iter().enumerate() {
                    // SAFETY: 32-byte loads within chunks c and c + 1 of the q row.
                    let q = unsafe {
                        _mm512_inserti64x4::<1>(
                            _mm512_castsi256_si512(_mm256_loadu_si256(
                                lo.add(i * CHUNK_BYTES).cast(),
                            )),
                            _mm256_loadu_si256(hi.add(i * CHUNK_BYTES).cast()),
                        )
                    };
                    acc[r] = _mm512_dpbusd_epi32(acc[r], *code, q);
                }
            }
            c += 2;
        }
        let mut out = [0i32; R];
        for r in 0..R {
            out[r] = _mm512_reduce_add_epi32(acc[r]);
        }
        if c < chunks {
            // The odd last chunk through the AVX2 kernel.
            let tail_qs: [&[i8]; R] = std::array::from_fn(|r| &qs[r][c * CHUNK..]);
            // SAFETY: AVX2 is implied by the features enabled here; lengths match the tail.
            let t = unsafe { dot_codes_avx2(&tail_qs, &packed[c * CHUNK_BYTES..]) };
            for r in 0..R {
                out[r] += t[r];
            }
        }
        out
    }

    /// One activation row, `W` weight rows (a GEMV); see [`super::dot_codes_weights`]. The
    /// activations of two chunks are gathered into 64-byte vectors once and serve all `W` rows,
    /// each of which needs one 64-byte load and four `vpdpbusd` per two chunks.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
    pub(super) unsafe fn dot_codes_weights_avx512vnni<const W: usize>(
        q: &[i8],
        packed: &[&[u8]; W],
    ) -> [i32; W] {
        let chunks = q.len() / CHUNK;
        assert!(
            packed.iter().all(|p| p.len() >= chunks * CHUNK_BYTES),
            "weight rows shorter than the activations"
        );
        let mask = _mm512_set1_epi8(3);
        let mut acc = [_mm512_setzero_si512(); W];
        let mut c = 0;
        // Lanes 0-31 hold chunk c, lanes 32-63 chunk c + 1 (as in `dot_codes_avx512vnni`).
        while c + 1 < chunks {
            // SAFETY: c + 1 < chunks: both chunks' 128 activations are inside `q`.
            let qv: [__m512i; 4] = unsafe {
                let (lo, hi) = (q.as_ptr().add(c * CHUNK), q.as_ptr().add((c + 1) * CHUNK));
                std::array::from_fn(|i| {
                    _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(_mm256_loadu_si256(lo.add(i * CHUNK_BYTES).cast())),
                        _mm256_loadu_si256(hi.add(i * CHUNK_BYTES).cast()),
                    )
                })
            };
            for r in 0..W {
                // SAFETY: c + 1 < chunks: 64 bytes at c * 32 are inside the row (asserted).
                let w =
                    unsafe { _mm512_loadu_si512(packed[r].as_ptr().add(c * CHUNK_BYTES).cast()) };
                let a = _mm512_dpbusd_epi32(acc[r], _mm512_and_si512(w, mask), qv[0]);
                let a = _mm512_dpbusd_epi32(
                    a,
                    _mm512_and_si512(_mm512_srli_epi16::<2>(w), mask),
                    qv[1],
                );
                let a = _mm512_dpbusd_epi32(
                    a,
                    _mm512_and_si512(_mm512_srli_epi16::<4>(w), mask),
                    qv[2],
                );
                acc[r] = _mm512_dpbusd_epi32(
                    a,
                    _mm512_and_si512(_mm512_srli_epi16::<6>(w), mask),
                    qv[3],
                );
            }
            c += 2;
        }
        let mut out = [0i32; W];
        for r in 0..W {
            out[r] = _mm512_reduce_add_epi32(acc[r]);
        }
        if c < chunks {
            // The odd last chunk through the AVX2 kernel.
            let tails: [&[u8]; W] = std::array::from_fn(|r| &packed[r][c * CHUNK_BYTES..]);
            // SAFETY: AVX2 is implied by the features enabled here; the tails hold the last
            // chunk of each row and `q[c * CHUNK..]` its activations.
            let t = unsafe { dot_codes_weights_avx2(&q[c * CHUNK..], &tails) };
            for r in 0..W {
                out[r] += t[r];
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::ternary::TernaryData;
    use proptest::prelude::*;

    fn case(k: usize, seed: u64) -> (Vec<i8>, TernaryData, [Vec<i8>; 4]) {
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s >> 33
        };
        let t: Vec<i8> = (0..k).map(|_| (next() % 3) as i8 - 1).collect();
        let packed = TernaryData::pack(&t, 1, k);
        let kp = packed.packed.len() * 4;
        let qs = std::array::from_fn(|_| {
            let mut q: Vec<i8> = (0..k).map(|_| (next() % 256) as u8 as i8).collect();
            q.resize(kp, 0);
            q
        });
        (t, packed, qs)
    }

    fn want(t: &[i8], q: &[i8]) -> i32 {
        t.iter().zip(q).map(|(&a, &b)| a as i32 * b as i32).sum()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every path this CPU supports equals the plain reference, for 1 and 4 rows.
        #[test]
        fn every_isa_matches_the_reference(k in 1usize..1200, seed in any::<u64>()) {
            let (t, packed, qs) = case(k, seed);
            let refs: [&[i8]; 4] = std::array::from_fn(|r| qs[r].as_slice());
            let qsum: [i32; 4] = std::array::from_fn(|r| qs[r].iter().map(|&v| v as i32).sum());
            for isa in HostIsa::supported_list() {
                let got4 = dot_codes(isa, &refs, &packed.packed);
                let got1 = dot_codes(isa, &[refs[2]], &packed.packed);
                for r in 0..4 {
                    prop_assert_eq!(got4[r] - qsum[r], want(&t, &qs[r]), "{:?} row {}", isa, r);
                }
                prop_assert_eq!(got1[0] - qsum[2], want(&t, &qs[2]), "{:?} single row", isa);
            }
        }

        /// The GEMV kernel (one activation row, several weight rows) equals the reference too.
        #[test]
        fn gemv_every_isa_matches_the_reference(k in 1usize..1200, seed in any::<u64>()) {
            let cases: [_; 4] = std::array::from_fn(|i| case(k, seed ^ (i as u64 + 1)));
            let q = cases[0].2[0].as_slice();
            let qsum: i32 = q.iter().map(|&v| v as i32).sum();
            let rows: [&[u8]; 4] = std::array::from_fn(|i| &cases[i].1.packed[..]);
            for isa in HostIsa::supported_list() {
                let got4 = dot_codes_weights(isa, q, &rows);
                let got1 = dot_codes_weights(isa, q, &[rows[3]]);
                for i in 0..4 {
                    prop_assert_eq!(got4[i] - qsum, want(&cases[i].0, q), "{:?} row {}", isa, i);
                }
                prop_assert_eq!(got1[0] - qsum, want(&cases[3].0, q), "{:?} single row", isa);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The run-of-rows GEMV (rows back to back, eight reduced at a time, any prefetch
        /// distance, more rows stored than computed) equals the reference on every path.
        #[test]
        fn rows_every_isa_matches_the_reference(
            k in 1usize..700,
            n in 1usize..20,
            extra in 0usize..3,
            ahead in 0usize..3000,
            seed in any::<u64>(),
        ) {
            let (_, _, qs) = case(k, seed);
            let q = qs[1].as_slice();
            let qsum: i32 = q.iter().map(|&v| v as i32).sum();
            let ws: Vec<_> = (0..n + extra).map(|i| case(k, seed ^ (0x9e37 * (i as u64 + 1)))).collect();
            let rb = ws[0].1.packed.len();
            let rows: Vec<u8> = ws.iter().flat_map(|w| w.1.packed.iter().copied()).collect();
            for isa in HostIsa::supported_list() {
                let mut out = vec![0i32; n];
                dot_codes_rows(isa, q, &rows, rb, &mut out, ahead);
                for (i, &got) in out.iter().enumerate() {
                    prop_assert_eq!(got - qsum, want(&ws[i].0, q), "{:?} row {}", isa, i);
                }
            }
        }
    }

    #[test]
    fn extremes_do_not_saturate() {
        // All +1 weights and q = -128 everywhere: the largest magnitudes the kernels see.
        let k = 128 * 20;
        let packed = TernaryData::pack(&vec![1i8; k], 1, k);
        let q = vec![-128i8; k];
        for isa in HostIsa::supported_list() {
            let got = dot_codes(isa, &[q.as_slice()], &packed.packed)[0] - (-128 * k as i32);
            assert_eq!(got, -128 * k as i32, "{isa:?}");
            let rows = [&packed.packed[..]; 4];
            for got in dot_codes_weights(isa, &q, &rows) {
                assert_eq!(got - (-128 * k as i32), -128 * k as i32, "{isa:?} GEMV");
            }
            let run = packed.packed.repeat(9);
            let mut out = [0i32; 9];
            dot_codes_rows(isa, &q, &run, packed.packed.len(), &mut out, 4096);
            for got in out {
                assert_eq!(got - (-128 * k as i32), -128 * k as i32, "{isa:?} rows");
            }
        }
        // The other end: q = 127.
        let q = vec![127i8; k];
        for isa in HostIsa::supported_list() {
            let rows = [&packed.packed[..]; 2];
            for got in dot_codes_weights(isa, &q, &rows) {
                assert_eq!(got - 127 * k as i32, 127 * k as i32, "{isa:?} GEMV");
            }
        }
    }
}
