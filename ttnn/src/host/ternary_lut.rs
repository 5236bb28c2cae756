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

/// Index and sign of each triple, by `(t0 + 1) + 3 (t1 + 1) + 9 (t2 + 1)`.
const ENCODE: [(u8, bool); 27] = {
    let mut e = [(0u8, false); 27];
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

/// Packs row-major values in {-1, 0, 1} (`rows * row_len`) into `packed`
/// ([`storage_bytes`]; every byte is written) and each row's count of negated groups into
/// `neg` (`rows`).
pub fn pack_rows(values: &[i8], rows: usize, row_len: usize, packed: &mut [u8], neg: &mut [i32]) {
    assert_eq!(values.len(), rows * row_len, "value count");
    pack_rows_with(rows, row_len, packed, neg, |r, buf| {
        buf.copy_from_slice(&values[r * row_len..(r + 1) * row_len])
    });
}

/// [`pack_rows`] with each row's values written into a buffer by `row(r, buf)` (`row_len`
/// values): how another layout is repacked without unpacking the whole matrix first.
pub fn pack_rows_with(
    rows: usize,
    row_len: usize,
    packed: &mut [u8],
    neg: &mut [i32],
    row: impl Fn(usize, &mut [i8]) + Sync,
) {
    assert_eq!(packed.len(), storage_bytes(rows, row_len), "storage size");
    assert_eq!(neg.len(), rows, "one count per row");
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
            let mut job = move || pack_blocks(t * per, rows, row_len, part, mine, row);
            // The last part on this thread.
            if t + 1 == parts {
                job();
            } else {
                sc.spawn(job);
            }
        }
    });
}

/// Packs the blocks in `packed` (starting with block `b0`) with their rows' counts in `neg`.
fn pack_blocks(
    b0: usize,
    rows: usize,
    row_len: usize,
    packed: &mut [u8],
    neg: &mut [i32],
    row: &(impl Fn(usize, &mut [i8]) + Sync),
) {
    let (bb, segs) = (block_bytes(row_len), groups(row_len) / SEG_GROUPS);
    // The row, zero-padded to whole groups.
    let mut buf = vec![0i8; 3 * segs * SEG_GROUPS];
    for (bl, block) in packed.chunks_exact_mut(bb).enumerate() {
        for i in 0..LUT_ROWS {
            let r = (b0 + bl) * LUT_ROWS + i;
            if r >= rows {
                // Rows past the matrix: zero.
                for seg in block.chunks_exact_mut(SEG_BYTES) {
                    for j in (i..SEG_BYTES).step_by(32) {
                        seg[j] = 0;
                    }
                }
                continue;
            }
            row(r, &mut buf[..row_len]);
            let mut count = 0;
            for (s, seg) in block.chunks_exact_mut(SEG_BYTES).enumerate() {
                let mut signs = [0u8; 2];
                for p in 0..SEG_GROUPS / 2 {
                    let mut byte = 0u8;
                    for w in 0..2 {
                        let k = 2 * p + w;
                        let c = 3 * (s * SEG_GROUPS + k);
                        let t = &buf[c..c + 3];
                        let code =
                            (t[0] + 1) as usize + 3 * (t[1] + 1) as usize + 9 * (t[2] + 1) as usize;
                        let (idx, negated) = ENCODE[code];
                        byte |= idx << (4 * w);
                        // Branch-free: random weights flip the sign half the time.
                        signs[k / 8] |= (negated as u8) << (7 - k % 8);
                        count += negated as i32;
                    }
                    seg[32 * p + i] = byte;
                }
                seg[SIGN_OFFSET + i] = signs[0];
                seg[SIGN_OFFSET + 32 + i] = signs[1];
            }
            neg[r - b0 * LUT_ROWS] = count;
        }
    }
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
    let groups = table.len() / TABLE_BYTES;
    let (q, past) = q.split_at(q.len().min(3 * groups));
    assert!(
        past.iter().all(|&v| v == 0),
        "non-zero activations past the table's groups"
    );
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

    #[test]
    fn patterns_cover_every_triple_once() {
        let mut seen = std::collections::HashSet::new();
        for code in 0..27 {
            let t = [
                (code % 3) as i8 - 1,
                (code / 3 % 3) as i8 - 1,
                (code / 9) as i8 - 1,
            ];
            let (idx, neg) = ENCODE[code];
            let p = PATTERNS[idx as usize];
            let back = p.map(|v| if neg { -v } else { v });
            assert_eq!(back, t, "code {code}");
            assert!(seen.insert((idx, neg)));
            // The zero triple is never negated (so all-zero storage is a zero matrix).
            assert!(!(idx == 0 && neg));
        }
    }

    #[test]
    fn table_entries_are_the_patterns_dot_products() {
        let q = [-128i8, 127, -7, 5];
        let mut t = vec![0u8; 2 * TABLE_BYTES];
        build_table(&q, &mut t);
        for g in 0..2 {
            let a: Vec<i32> = (0..3)
                .map(|j| *q.get(3 * g + j).unwrap_or(&0) as i32)
                .collect();
            for (m, p) in PATTERNS.iter().enumerate() {
                let want: i32 = p.iter().zip(&a).map(|(&w, &x)| w as i32 * x).sum();
                let got = i16::from_le_bytes([t[32 * g + m], t[32 * g + 16 + m]]);
                assert_eq!(got as i32, want, "group {g} pattern {m}");
            }
        }
    }

    proptest! {
        #[test]
        fn pack_get_round_trips(rows in 1usize..70, row_len in 1usize..100, seed in any::<u64>()) {
            let values = random_ternary(rows * row_len, seed);
            let mut packed = vec![0u8; storage_bytes(rows, row_len)];
            let mut neg = vec![0i32; rows];
            pack_rows(&values, rows, row_len, &mut packed, &mut neg);
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
