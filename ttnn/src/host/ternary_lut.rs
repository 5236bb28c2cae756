//! The `Lut3` ternary layout: 5 bits per 3 weights, in blocks of 32 rows, for a table-lookup
//! GEMV (the idea of bitnet.cpp's TL2 kernels; the layout and code here are ours).
//!
//! A row is cut into groups of three consecutive values (`3g`, `3g + 1`, `3g + 2`; past the
//! row's end they are zero). The 27 possible triples are a sign times one of 14 "magnitudes"
//! (the zero triple and the 13 whose first non-zero value is +1, [`PATTERNS`]): 4 bits of index
//! and 1 sign bit. For one activation vector, a table holds each group's 14 possible dot
//! products (`|v| <= 3 * 128`, so 16 bits: a low-byte and a high-byte table of 16 entries,
//! what one `pshufb` looks up). The GEMV then needs, per group and 32 rows, two lookups, a
//! sign and an add, instead of unpacking and multiplying three values.
//!
//! Storage, per block of 32 rows (rows past the matrix are zero), per segment of 16 groups
//! (the groups per row are padded to whole segments), [`SEG_BYTES`] = 320 bytes:
//! - 8 x 32 bytes of indices: in the `p`-th 32, byte `i` holds row `i`'s index of group
//!   `2p` in bits 0-3 and of group `2p + 1` in bits 4-7;
//! - 2 x 32 bytes of signs: in the `h`-th 32, byte `i` holds row `i`'s sign of group
//!   `8h + k` in bit `7 - k` (set: negated), so doubling the byte walks the groups through the
//!   top bit.
//!
//! Each row also keeps its number of negated groups ([`pack_rows`]): the AVX2 kernel negates
//! with a bitwise not (`-v - 1`) and adds that count back.
//!
//! The `Base3` layout has the same blocks, segments and size, but stores each group as one
//! 5-bit code, the triple's balanced-ternary value `t0 + 3 t1 + 9 t2` (-13..=13) in two's
//! complement ([`base3_code`]; the zero triple is code 0). Its table holds, per group, the 32
//! entries of every code as 16-bit words (64 bytes; codes 14-18 never occur), so one AVX-512
//! `vpermw` looks up a group for 32 rows with no sign or byte handling. Per segment of a block:
//! - 5 x 64 bytes, the `j`-th 64 holding each row's word `j` (row `i` at bytes `2i`, `2i + 1`,
//!   little-endian): bits 0-4, 5-9 and 10-14 are the codes of groups `3j`, `3j + 1`, `3j + 2`,
//!   and bit 15 is bit `4 - j` of group 15's code.

use crate::device::TernaryLayout;

/// Rows per block.
pub const LUT_ROWS: usize = 32;
/// Groups per segment.
pub const SEG_GROUPS: usize = 16;
/// Bytes per segment of a block: 8 x 32 bytes of index pairs and 2 x 32 bytes of signs.
pub const SEG_BYTES: usize = 320;
/// Offset of the sign bytes in a segment.
pub const SIGN_OFFSET: usize = 256;
/// Bytes of a group's table: 16 low bytes, then 16 high bytes of the 16-bit dot products.
pub const TABLE_BYTES: usize = 32;

/// Bytes of a `Base3` group's table: 32 words.
pub const BASE3_TABLE_BYTES: usize = 64;
/// Bytes of one word of a `Base3` segment for the 32 rows of a block.
pub const BASE3_WORD_BYTES: usize = 64;

/// The `Base3` code of a triple in {-1, 0, 1}: `t0 + 3 t1 + 9 t2` in 5-bit two's complement.
#[inline]
pub fn base3_code(t: [i8; 3]) -> u16 {
    ((t[0] + 3 * t[1] + 9 * t[2]) as u16) & 31
}

/// The triple of a `Base3` code (the zero triple for the unused codes 14-18).
#[inline]
pub const fn base3_triple(code: u16) -> [i8; 3] {
    let v = ((code as i8) << 3) >> 3;
    if v.abs() > 13 {
        return [0; 3];
    }
    let u = v + 13;
    [u % 3 - 1, u / 3 % 3 - 1, u / 9 - 1]
}

/// The 14 magnitudes (then two unused all-zero entries): the zero triple, then every triple
/// whose first non-zero value is +1.
pub const PATTERNS: [[i8; 3]; 16] = [
    [0, 0, 0],
    [0, 0, 1],
    [0, 1, -1],
    [0, 1, 0],
    [0, 1, 1],
    [1, -1, -1],
    [1, -1, 0],
    [1, -1, 1],
    [1, 0, -1],
    [1, 0, 0],
    [1, 0, 1],
    [1, 1, -1],
    [1, 1, 0],
    [1, 1, 1],
    [0, 0, 0],
    [0, 0, 0],
];

/// Index and sign of each triple, by `(t0 + 1) + 3 (t1 + 1) + 9 (t2 + 1)`; padded to 32 entries
/// (codes past 26 never occur) so that a lookup masked by 31 needs no bounds check.
const ENCODE: [(u8, bool); 32] = {
    let mut e = [(0u8, false); 32];
    let mut m = 0;
    while m < 14 {
        let p = PATTERNS[m];
        let pos = ((p[0] + 1) + 3 * (p[1] + 1) + 9 * (p[2] + 1)) as usize;
        let neg = ((1 - p[0]) + 3 * (1 - p[1]) + 9 * (1 - p[2])) as usize;
        e[pos] = (m as u8, false);
        if m != 0 {
            e[neg] = (m as u8, true);
        }
        m += 1;
    }
    e
};

/// Groups per row: whole segments covering `row_len` values.
pub fn groups(row_len: usize) -> usize {
    row_len.div_ceil(3).div_ceil(SEG_GROUPS).max(1) * SEG_GROUPS
}

/// Bytes per block of 32 rows.
pub fn block_bytes(row_len: usize) -> usize {
    groups(row_len) / SEG_GROUPS * SEG_BYTES
}

/// Blocks for `rows` rows.
pub fn blocks(rows: usize) -> usize {
    rows.div_ceil(LUT_ROWS)
}

/// Storage bytes of a `rows x row_len` matrix.
pub fn storage_bytes(rows: usize, row_len: usize) -> usize {
    blocks(rows) * block_bytes(row_len)
}

/// (byte of the index, shift) and (byte of the sign, bit) of row `r`'s group `g`.
#[inline]
fn place(row_len: usize, r: usize, g: usize) -> ((usize, u32), (usize, u32)) {
    let (b, i) = (r / LUT_ROWS, r % LUT_ROWS);
    let (s, w) = (g / SEG_GROUPS, g % SEG_GROUPS);
    let base = b * block_bytes(row_len) + s * SEG_BYTES;
    (
        (base + 32 * (w / 2) + i, 4 * (w % 2) as u32),
        (base + SIGN_OFFSET + 32 * (w / 8) + i, 7 - (w % 8) as u32),
    )
}

/// Packs row-major values in {-1, 0, 1} (`rows * row_len`) into `packed` in `layout` (`Lut3`
/// or `Base3`; [`storage_bytes`]; every byte is written) and, for `Lut3`, each row's count of
/// negated groups into `neg` (`rows`; empty for `Base3`).
pub fn pack_rows(
    layout: TernaryLayout,
    values: &[i8],
    rows: usize,
    row_len: usize,
    packed: &mut [u8],
    neg: &mut [i32],
) {
    assert_eq!(values.len(), rows * row_len, "value count");
    pack_rows_with(layout, rows, row_len, packed, neg, |r, buf| {
        buf.copy_from_slice(&values[r * row_len..(r + 1) * row_len])
    });
}

/// [`pack_rows`] with each row's values written into a buffer by `row(r, buf)` (`row_len`
/// values): how another layout is repacked without unpacking the whole matrix first.
pub fn pack_rows_with(
    layout: TernaryLayout,
    rows: usize,
    row_len: usize,
    packed: &mut [u8],
    neg: &mut [i32],
    row: impl Fn(usize, &mut [i8]) + Sync,
) {
    let base3 = match layout {
        TernaryLayout::Lut3 => false,
        TernaryLayout::Base3 => true,
        TernaryLayout::Bits2 => panic!("pack_rows_with packs the table layouts only"),
    };
    assert_eq!(packed.len(), storage_bytes(rows, row_len), "storage size");
    let counts = if base3 { 0 } else { rows };
    assert_eq!(neg.len(), counts, "one count per row (Lut3), none (Base3)");
    let bb = block_bytes(row_len);
    let nb = blocks(rows);
    // Large matrices on every core: blocks are independent (a 2B-4T checkpoint has two billion
    // values to repack at load).
    let threads = if rows * row_len >= 1 << 20 {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(nb)
    } else {
        1
    };
    let per = nb.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|sc| {
        let mut negs = &mut neg[..];
        let parts = nb.div_ceil(per);
        for (t, part) in packed.chunks_mut(per * bb).enumerate() {
            let take = (per * LUT_ROWS).min(negs.len());
            let (mine, rest) = std::mem::take(&mut negs).split_at_mut(take);
            negs = rest;
            let row = &row;
            let mut job = move || {
                PackBlocks {
                    base3,
                    b0: t * per,
                    rows,
                    row_len,
                    packed: part,
                    neg: mine,
                    row,
                }
                .run(true)
            };
            // The last part on this thread.
            if t + 1 == parts {
                job();
            } else {
                sc.spawn(job);
            }
        }
    });
}

/// Blocks to pack: those in `packed`, starting with block `b0`, of a matrix of `rows` rows of
/// `row_len` values given by `row`, in `Base3` (`base3`) or `Lut3`, with the `Lut3` rows' counts
/// of negated groups in `neg`. Rows past the matrix are packed zero.
struct PackBlocks<'a, F> {
    base3: bool,
    b0: usize,
    rows: usize,
    row_len: usize,
    packed: &'a mut [u8],
    neg: &'a mut [i32],
    row: &'a F,
}

impl<F: Fn(usize, &mut [i8]) + Sync> PackBlocks<'_, F> {
    /// Packs; with `simd`, the code compiled for AVX2 runs where the CPU has it (the same
    /// bytes).
    fn run(self, simd: bool) {
        #[cfg(target_arch = "x86_64")]
        if simd && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present (checked above).
            return unsafe { with_avx2(|| self.pack()) };
        }
        let _ = simd;
        self.pack();
    }

    #[inline(always)]
    fn pack(self) {
        let (bb, segs) = (block_bytes(self.row_len), groups(self.row_len) / SEG_GROUPS);
        // The row, zero-padded to whole groups.
        let mut buf = vec![0i8; 3 * segs * SEG_GROUPS];
        let mut codes = vec![0u16; segs * SEG_GROUPS];
        for (bl, block) in self.packed.chunks_exact_mut(bb).enumerate() {
            for i in 0..LUT_ROWS {
                let r = (self.b0 + bl) * LUT_ROWS + i;
                if r < self.rows {
                    (self.row)(r, &mut buf[..self.row_len]);
                } else {
                    buf.fill(0);
                }
                if self.base3 {
                    encode_base3(block, i, &buf, &mut codes);
                } else {
                    let count = encode_lut3(block, i, &buf, &mut codes);
                    if r < self.rows {
                        self.neg[r - self.b0 * LUT_ROWS] = count;
                    }
                }
            }
        }
    }
}

/// `f()` compiled for AVX2 (it is inlined here): the compiler vectorizes plain loops such as
/// the packers about twice as well as for baseline x86-64 (variable shifts, wider registers),
/// with the same results.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn with_avx2<T>(f: impl FnOnce() -> T) -> T {
    f()
}

/// Writes row `i` of a `Lut3` block from its values (whole segments) and returns its count of
/// negated groups, with `codes` (one per group) as scratch.
#[inline(always)]
fn encode_lut3(block: &mut [u8], i: usize, values: &[i8], codes: &mut [u16]) -> i32 {
    // The groups' codes first, in a loop without bounds checks that vectorizes (two billion
    // values at a 2B-4T load); then each code's index and sign from a table padded to 32
    // entries, so the masked lookup needs no check either.
    for (c, t) in codes.iter_mut().zip(values.chunks_exact(3)) {
        *c = (t[0] + 1) as u16 + 3 * (t[1] + 1) as u16 + 9 * (t[2] + 1) as u16;
    }
    let mut count = 0;
    for (seg, c) in block
        .chunks_exact_mut(SEG_BYTES)
        .zip(codes.chunks_exact(SEG_GROUPS))
    {
        let mut signs = 0u16;
        for p in 0..SEG_GROUPS / 2 {
            let (i0, n0) = ENCODE[c[2 * p] as usize & 31];
            let (i1, n1) = ENCODE[c[2 * p + 1] as usize & 31];
            seg[32 * p + i] = i0 | (i1 << 4);
            // Branch-free: random weights flip the sign half the time.
            signs |= ((n0 as u16) << (15 - 2 * p)) | ((n1 as u16) << (14 - 2 * p));
            count += n0 as i32 + n1 as i32;
        }
        seg[SIGN_OFFSET + i] = (signs >> 8) as u8;
        seg[SIGN_OFFSET + 32 + i] = signs as u8;
    }
    count
}

/// Writes row `i` of a `Base3` block from its values (whole segments), with `codes` (one per
/// group) as scratch.
#[inline(always)]
fn encode_base3(block: &mut [u8], i: usize, values: &[i8], codes: &mut [u16]) {
    // The codes first, in a loop without bounds checks (two billion values at a 2B-4T load).
    for (c, t) in codes.iter_mut().zip(values.chunks_exact(3)) {
        *c = base3_code([t[0], t[1], t[2]]);
    }
    for (seg, c) in block
        .chunks_exact_mut(SEG_BYTES)
        .zip(codes.chunks_exact(SEG_GROUPS))
    {
        for j in 0..5 {
            let w = c[3 * j]
                | (c[3 * j + 1] << 5)
                | (c[3 * j + 2] << 10)
                | (((c[15] >> (4 - j)) & 1) << 15);
            let at = BASE3_WORD_BYTES * j + 2 * i;
            seg[at..at + 2].copy_from_slice(&w.to_le_bytes());
        }
    }
}

/// Value at (`r`, `c`) of a `Base3` matrix with rows of `row_len`.
#[inline]
pub fn get_base3(packed: &[u8], row_len: usize, r: usize, c: usize) -> i8 {
    let (b, i) = (r / LUT_ROWS, r % LUT_ROWS);
    let (g, k) = (c / 3, (c / 3) % SEG_GROUPS);
    let seg = b * block_bytes(row_len) + g / SEG_GROUPS * SEG_BYTES;
    let word = |j: usize| {
        let at = seg + BASE3_WORD_BYTES * j + 2 * i;
        u16::from_le_bytes([packed[at], packed[at + 1]])
    };
    let code = if k < 15 {
        (word(k / 3) >> (5 * (k % 3))) & 31
    } else {
        (0..5).fold(0, |acc, j| acc | ((word(j) >> 15) << (4 - j)))
    };
    base3_triple(code)[c % 3]
}

/// Fills `table` (`groups * BASE3_TABLE_BYTES` bytes) with each group's dot product of the
/// activations `q` (zero past their end) with the triple of every `Base3` code, as 32
/// little-endian 16-bit words (0 for the unused codes). Values of `q` past the groups must be
/// zero (padding).
pub fn build_table_base3(q: &[i8], table: &mut [u8]) {
    let q = group_values(q, table.len() / BASE3_TABLE_BYTES);
    for (g, t) in table.chunks_exact_mut(BASE3_TABLE_BYTES).enumerate() {
        let a = |j: usize| q.get(3 * g + j).map_or(0, |&v| v as i16);
        for (e, dst) in t.chunks_exact_mut(2).enumerate() {
            let tr = base3_triple(e as u16);
            let v: i16 = (0..3).map(|j| tr[j] as i16 * a(j)).sum();
            dst.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// The activations of a table's `groups` groups: `q` up to them, after checking that the rest
/// is zero padding.
fn group_values(q: &[i8], groups: usize) -> &[i8] {
    let (q, past) = q.split_at(q.len().min(3 * groups));
    assert!(
        past.iter().all(|&v| v == 0),
        "non-zero activations past the table's groups"
    );
    q
}

/// Value at (`r`, `c`) of a packed matrix with rows of `row_len`.
#[inline]
pub fn get(packed: &[u8], row_len: usize, r: usize, c: usize) -> i8 {
    let ((ib, shift), (sb, bit)) = place(row_len, r, c / 3);
    let idx = (packed[ib] >> shift) & 0x0f;
    let v = PATTERNS[idx as usize][c % 3];
    if (packed[sb] >> bit) & 1 == 1 { -v } else { v }
}

/// Fills `table` (`groups(row_len) * TABLE_BYTES` bytes) with each group's 16 dot products of
/// the activations `q` (zero past their end) with [`PATTERNS`], as low and high bytes. Values
/// of `q` past the groups must be zero (padding).
pub fn build_table(q: &[i8], table: &mut [u8]) {
    let q = group_values(q, table.len() / TABLE_BYTES);
    for (g, t) in table.chunks_exact_mut(TABLE_BYTES).enumerate() {
        let a = |j: usize| q.get(3 * g + j).map_or(0, |&v| v as i16);
        let (a0, a1, a2) = (a(0), a(1), a(2));
        // The 13 non-zero magnitudes from three partial sums (in PATTERNS order).
        let (d12, s12) = (a1 - a2, a1 + a2);
        let v: [i16; 16] = [
            0,
            a2,
            d12,
            a1,
            s12,
            a0 - s12,
            a0 - a1,
            a0 - d12,
            a0 - a2,
            a0,
            a0 + a2,
            a0 + d12,
            a0 + a1,
            a0 + s12,
            0,
            0,
        ];
        for (m, &x) in v.iter().enumerate() {
            let [lo, hi] = x.to_le_bytes();
            t[m] = lo;
            t[16 + m] = hi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::ternary::random_ternary;
    use proptest::prelude::*;

    /// Triple `code` of the 27 (`(t0 + 1) + 3 (t1 + 1) + 9 (t2 + 1)`).
    fn every_triple(code: usize) -> [i8; 3] {
        [
            (code % 3) as i8 - 1,
            (code / 3 % 3) as i8 - 1,
            (code / 9) as i8 - 1,
        ]
    }

    #[test]
    fn patterns_cover_every_triple_once() {
        let mut seen = std::collections::HashSet::new();
        for code in 0..27 {
            let t = every_triple(code);
            let (idx, neg) = ENCODE[code];
            let p = PATTERNS[idx as usize];
            let back = p.map(|v| if neg { -v } else { v });
            assert_eq!(back, t, "code {code}");
            assert!(seen.insert((idx, neg)));
            // The zero triple is never negated (so all-zero storage is a zero matrix).
            assert!(!(idx == 0 && neg));
        }
    }

    /// Both references hold each group's dot product with every entry's triple (`Lut3`: the
    /// 16 patterns as low and high bytes; `Base3`: the 32 codes as words).
    #[test]
    fn table_entries_are_the_triples_dot_products() {
        let q = [-128i8, 127, -7, 5];
        let mut lut3 = vec![0u8; 2 * TABLE_BYTES];
        build_table(&q, &mut lut3);
        let mut base3 = vec![0u8; 2 * BASE3_TABLE_BYTES];
        build_table_base3(&q, &mut base3);
        for g in 0..2 {
            let a: Vec<i32> = (0..3)
                .map(|j| *q.get(3 * g + j).unwrap_or(&0) as i32)
                .collect();
            let dot = |t: [i8; 3]| -> i32 { t.iter().zip(&a).map(|(&w, &x)| w as i32 * x).sum() };
            for (m, p) in PATTERNS.iter().enumerate() {
                let got = i16::from_le_bytes([lut3[32 * g + m], lut3[32 * g + 16 + m]]);
                assert_eq!(got as i32, dot(*p), "group {g} pattern {m}");
            }
            for e in 0..32u16 {
                let at = BASE3_TABLE_BYTES * g + 2 * e as usize;
                let got = i16::from_le_bytes([base3[at], base3[at + 1]]);
                assert_eq!(got as i32, dot(base3_triple(e)), "group {g} code {e}");
            }
        }
    }

    #[test]
    fn base3_codes_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in 0..27 {
            let t = every_triple(code);
            let c = base3_code(t);
            assert!(c < 32 && !(14..=18).contains(&c), "{t:?} -> {c}");
            assert_eq!(base3_triple(c), t);
            assert!(seen.insert(c));
        }
        assert_eq!(base3_code([0, 0, 0]), 0);
        for c in 14..=18 {
            assert_eq!(base3_triple(c), [0; 3]);
        }
    }

    proptest! {
        #[test]
        fn base3_pack_get_round_trips(
            rows in 1usize..70,
            row_len in 1usize..100,
            seed in any::<u64>(),
        ) {
            let values = random_ternary(rows * row_len, seed);
            let mut packed = vec![0xa5u8; storage_bytes(rows, row_len)];
            pack_rows(TernaryLayout::Base3, &values, rows, row_len, &mut packed, &mut []);
            for r in 0..rows {
                for c in 0..row_len {
                    prop_assert_eq!(get_base3(&packed, row_len, r, c), values[r * row_len + c]);
                }
                // Padding groups are zero.
                for c in row_len..3 * groups(row_len) {
                    prop_assert_eq!(get_base3(&packed, row_len, r, c), 0);
                }
            }
            // Rows past the matrix are zero codes.
            for r in rows..blocks(rows) * LUT_ROWS {
                for c in 0..3 * groups(row_len) {
                    prop_assert_eq!(get_base3(&packed, row_len, r, c), 0);
                }
            }
        }

        /// The packer built for AVX2 (what this CPU runs, if it has AVX2) and the baseline
        /// build (what a CPU without it runs) write the same bytes.
        #[test]
        fn packer_builds_agree(
            rows in 1usize..70,
            row_len in 1usize..200,
            seed in any::<u64>(),
            base3 in any::<bool>(),
        ) {
            let values = random_ternary(rows * row_len, seed);
            let row = |r: usize, buf: &mut [i8]| {
                buf.copy_from_slice(&values[r * row_len..(r + 1) * row_len])
            };
            let (bytes, counts) = (storage_bytes(rows, row_len), if base3 { 0 } else { rows });
            let (mut a, mut neg_a) = (vec![0u8; bytes], vec![0i32; counts]);
            let (mut b, mut neg_b) = (vec![0u8; bytes], vec![0i32; counts]);
            for (simd, packed, neg) in [(true, &mut a, &mut neg_a), (false, &mut b, &mut neg_b)] {
                PackBlocks { base3, b0: 0, rows, row_len, packed, neg, row: &row }.run(simd);
            }
            prop_assert_eq!(a, b);
            prop_assert_eq!(neg_a, neg_b);
        }

        #[test]
        fn pack_get_round_trips(rows in 1usize..70, row_len in 1usize..100, seed in any::<u64>()) {
            let values = random_ternary(rows * row_len, seed);
            let mut packed = vec![0u8; storage_bytes(rows, row_len)];
            let mut neg = vec![0i32; rows];
            pack_rows(TernaryLayout::Lut3, &values, rows, row_len, &mut packed, &mut neg);
            for r in 0..rows {
                for c in 0..row_len {
                    prop_assert_eq!(get(&packed, row_len, r, c), values[r * row_len + c]);
                }
                // Padding groups are zero: every stored group decodes.
                for c in row_len..3 * groups(row_len) {
                    prop_assert_eq!(get(&packed, row_len, r, c), 0);
                }
                let negs = (0..groups(row_len))
                    .filter(|&g| {
                        let (_, (sb, bit)) = place(row_len, r, g);
                        (packed[sb] >> bit) & 1 == 1
                    })
                    .count();
                prop_assert_eq!(neg[r] as usize, negs);
            }
        }
    }
}
