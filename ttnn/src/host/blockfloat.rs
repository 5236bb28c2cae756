//! TT block-float formats (BFLOAT8_B, BFLOAT4_B) as the host backend stores them.
//!
//! On a TT device a 32x32 tile is four 16x16 faces; every face row of 16 values shares one
//! 8-bit exponent, and each value keeps a sign and 7 (bfp8) or 3 (bfp4) magnitude bits that
//! include the explicit leading one. In a row-major view a face row is 16 consecutive values
//! of a tensor row, aligned at a multiple of 16, so the host keeps the same groups row by row
//! and the numerics equal the device's. Mantissas are kept as two's-complement `i8`
//! (`sign ? -m : m`), which is what the SIMD kernels want; the value of an element is
//! `m * 2^(exp - 127 - (MANT_BITS - 1))`.

/// Values sharing one exponent.
pub(crate) const GROUP: usize = 16;

/// Which block-float format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    Bfp8,
    Bfp4,
}

impl BlockFormat {
    /// Magnitude bits per value, the leading one included.
    pub fn mant_bits(self) -> u32 {
        match self {
            Self::Bfp8 => 7,
            Self::Bfp4 => 3,
        }
    }
}

/// A matrix in block-float form: `rows` rows of `row_len` values, each row padded with zeros
/// to whole groups of 16.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockFloatData {
    pub format: BlockFormat,
    pub rows: usize,
    pub row_len: usize,
    /// `rows * groups_per_row` shared exponents (biased, as in f32).
    pub exps: Vec<u8>,
    /// `rows * groups_per_row * 16` signed mantissas.
    pub mants: Vec<i8>,
}

impl BlockFloatData {
    pub fn groups_per_row(row_len: usize) -> usize {
        row_len.div_ceil(GROUP)
    }

    pub fn zeros(format: BlockFormat, rows: usize, row_len: usize) -> Self {
        let g = Self::groups_per_row(row_len);
        let (mants, exps) = (vec![0; rows * g * GROUP], vec![0; rows * g]);
        // The lm_head's mantissas and exponents: streamed once per token (see `hugepage`).
        super::hugepage::advise_huge_pages(&mants);
        super::hugepage::advise_huge_pages(&exps);
        Self {
            format,
            rows,
            row_len,
            exps,
            mants,
        }
    }

    /// Encodes `values` (row-major, `rows * row_len`).
    pub fn encode(format: BlockFormat, values: &[f32], rows: usize, row_len: usize) -> Self {
        let mut out = Self::zeros(format, rows, row_len);
        out.encode_from(values);
        out
    }

    /// Re-encodes in place from row-major values (no allocation).
    pub fn encode_from(&mut self, values: &[f32]) {
        for r in 0..self.rows {
            self.encode_row(r, &values[r * self.row_len..(r + 1) * self.row_len]);
        }
    }

    /// Re-encodes row `r` from its `row_len` values (no allocation).
    pub fn encode_row(&mut self, r: usize, row: &[f32]) {
        let g = Self::groups_per_row(self.row_len);
        let exps = &mut self.exps[r * g..(r + 1) * g];
        let mants = &mut self.mants[r * g * GROUP..(r + 1) * g * GROUP];
        encode_groups(self.format, exps, mants, |gi, buf| {
            let group = &row[gi * GROUP..((gi + 1) * GROUP).min(row.len())];
            buf[..group.len()].copy_from_slice(group);
        });
    }

    /// Encodes the rows from `r0` on from their bf16 values (`src`: whole rows of
    /// little-endian bytes), split over `threads` threads (the rows are independent).
    pub fn encode_bf16_rows(&mut self, r0: usize, src: &[u8], threads: usize) {
        let (format, len) = (self.format, self.row_len);
        if len == 0 {
            return;
        }
        let g = Self::groups_per_row(len);
        let rows = src.len() / (2 * len);
        let per = rows.div_ceil(threads.max(1)).max(1);
        let exps = &mut self.exps[r0 * g..(r0 + rows) * g];
        let mants = &mut self.mants[r0 * g * GROUP..(r0 + rows) * g * GROUP];
        let parts = src
            .chunks(2 * len * per)
            .zip(exps.chunks_mut(g * per))
            .zip(mants.chunks_mut(g * GROUP * per));
        std::thread::scope(|sc| {
            for ((src, exps), mants) in parts {
                sc.spawn(move || {
                    let rows = src
                        .chunks_exact(2 * len)
                        .zip(exps.chunks_exact_mut(g))
                        .zip(mants.chunks_exact_mut(g * GROUP));
                    for ((src, exps), mants) in rows {
                        encode_groups(format, exps, mants, |gi, buf| {
                            // The zip stops at the group's 16 values or the row's end.
                            let group = &src[2 * GROUP * gi..];
                            for (d, b) in buf.iter_mut().zip(group.chunks_exact(2)) {
                                *d = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                            }
                        });
                    }
                });
            }
        });
    }

    /// Decodes row `r` into `out` (`row_len` values).
    pub fn decode_row(&self, r: usize, out: &mut [f32]) {
        let g = Self::groups_per_row(self.row_len);
        for gi in 0..g {
            let idx = r * g + gi;
            let exp = self.exps[idx];
            let start = gi * GROUP;
            let end = (start + GROUP).min(self.row_len);
            for (o, &m) in out[start..end].iter_mut().zip(&self.mants[idx * GROUP..]) {
                *o = decode_value(self.format, exp, m);
            }
        }
    }

    /// All values, row-major.
    pub fn decode(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.row_len];
        for r in 0..self.rows {
            self.decode_row(r, &mut out[r * self.row_len..(r + 1) * self.row_len]);
        }
        out
    }
}

/// Encodes one row's groups into `exps` (one per group) and `mants` (16 per group), each
/// group's values written by `fill(group, buf)` into a zeroed buffer (so the row's last group is
/// zero-padded).
#[inline(always)]
fn encode_groups(
    format: BlockFormat,
    exps: &mut [u8],
    mants: &mut [i8],
    fill: impl Fn(usize, &mut [f32; GROUP]),
) {
    let mut buf = [0f32; GROUP];
    for (gi, (exp, mants)) in exps
        .iter_mut()
        .zip(mants.chunks_exact_mut(GROUP))
        .enumerate()
    {
        buf.fill(0.0);
        fill(gi, &mut buf);
        let mants: &mut [i8; GROUP] = mants.try_into().expect("group slice has GROUP elements");
        *exp = encode_group(format, &buf, mants);
    }
}

/// The weight of mantissa unit 1 for a group with shared exponent `exp`.
#[inline]
pub(crate) fn group_scale(format: BlockFormat, exp: u8) -> f32 {
    // 2^(exp - 127 - (mant_bits - 1)); exp - 133 can reach -133, below f32's normal range, so
    // build it in two steps to keep subnormal scales exact.
    let e = exp as i32 - 127 - (format.mant_bits() as i32 - 1);
    pow2(e)
}

#[inline]
fn pow2(e: i32) -> f32 {
    if e >= -126 {
        f32::from_bits(((e + 127) as u32) << 23)
    } else {
        f32::from_bits(((e + 126 + 127) as u32) << 23) * f32::from_bits(1 << 23) // 2^(e+126) * 2^-126
    }
}

/// Encodes one group of 16 values; returns the shared exponent and writes signed mantissas.
///
/// tt-metal's host packer (`convert_u32_to_bfp`, ties-to-even since tt-metal PR #16997):
/// - the shared exponent is the largest raw f32 exponent field in the group (zeros and
///   subnormals count 0, Inf/NaN 255); there is no rounding to bf16 first;
/// - a value with exponent field 0 (zero, subnormal) encodes as 0;
/// - the 24-bit significand (leading one explicit) is shifted right by `shared - e`, dropping
///   the shifted-out bits, then reduced to `mant_bits` bits with round-half-to-even on what is
///   left; so a value just above a tie can become a tie and round down, as on TT;
/// - a magnitude that rounds past the largest code saturates (the exponent is not raised);
/// - a zero magnitude drops the sign (the packer never emits -0).
pub(crate) fn encode_group(
    format: BlockFormat,
    vals: &[f32; GROUP],
    mants: &mut [i8; GROUP],
) -> u8 {
    let exp_of = |v: f32| ((v.to_bits() >> 23) & 0xff) as u8;
    let shared = vals.iter().map(|&v| exp_of(v)).max().unwrap_or(0);
    let mb = format.mant_bits();
    let max_mag = (1u32 << mb) - 1;
    // Branch-free (the lm_head of 2B-4T is 328 million values to encode at load): a shift by
    // 24 or more leaves nothing of the 24-bit significand, so `min(31)` changes no result.
    for (m, &v) in mants.iter_mut().zip(vals) {
        let b = v.to_bits();
        let e = exp_of(v);
        let sig = ((b & 0x7f_ffff) | 0x80_0000) >> u32::from(shared - e).min(31);
        let mag = round_shift_even(sig, 24 - mb).min(max_mag) as i8;
        let mag = if e == 0 { 0 } else { mag };
        *m = if b >> 31 == 1 { -mag } else { mag };
    }
    shared
}

/// `v >> shift` (shift >= 1), rounded to nearest with ties to even.
#[inline]
fn round_shift_even(v: u32, shift: u32) -> u32 {
    let q = v >> shift;
    let rem = v & ((1u32 << shift) - 1);
    let half = 1u32 << (shift - 1);
    q + u32::from((rem > half) | ((rem == half) & (q & 1 == 1)))
}

/// Decodes one mantissa of a group with shared exponent `exp` exactly as tt-metal's unpacker:
/// `m * 2^(exp - 127 - (mant_bits - 1))`, except that a group with exponent 255 (it held an Inf
/// or NaN) decodes its normalised codes to Inf or NaN like the device's bit assembly does.
#[inline]
pub(crate) fn decode_value(format: BlockFormat, exp: u8, m: i8) -> f32 {
    if exp == 255 && m != 0 {
        let mb = format.mant_bits();
        let mag = m.unsigned_abs() as u32;
        let lead = 31 - mag.leading_zeros(); // bit index of the leading one
        let sc = (mb - 1) - lead;
        let frac = (mag << sc) & ((1 << (mb - 1)) - 1);
        let bits = ((255 - sc) << 23) | (frac << (23 - (mb - 1)));
        let v = f32::from_bits(bits);
        return if m < 0 { -v } else { v };
    }
    m as f32 * group_scale(format, exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_values_round_trip() {
        let vals: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.25).collect();
        let b = BlockFloatData::encode(BlockFormat::Bfp8, &vals, 2, 16);
        assert_eq!(b.decode(), vals);
    }

    fn enc(format: BlockFormat, vals: &[f32]) -> (u8, [i8; GROUP], Vec<f32>) {
        let mut g = [0f32; GROUP];
        g[..vals.len()].copy_from_slice(vals);
        let mut m = [0i8; GROUP];
        let e = encode_group(format, &g, &mut m);
        let dec = m.iter().map(|&x| decode_value(format, e, x)).collect();
        (e, m, dec)
    }

    /// Sign-magnitude byte as tt-metal stores it.
    fn code(m: i8, bits: u32) -> u8 {
        ((m < 0) as u8) << bits | m.unsigned_abs()
    }

    // Test vectors follow tt-metal's host packer; B8-3 is tt-metal's own unit test
    // (tests/tt_metal/tt_metal/api/test_blockfloat_common.cpp).
    #[test]
    fn bfp8_tt_vectors() {
        let (e, m, dec) = enc(
            BlockFormat::Bfp8,
            &[1.0, 0.5, -1.5, 0.1, 1.984375, -0.25, 0.75, 1.3],
        );
        assert_eq!(e, 0x7f);
        let codes: Vec<u8> = m[..8].iter().map(|&x| code(x, 7)).collect();
        assert_eq!(codes, [0x40, 0x20, 0xE0, 0x06, 0x7F, 0x90, 0x30, 0x53]);
        assert_eq!(dec[3], 0.09375);
        assert_eq!(dec[7], 1.296875);

        // Ties to even and saturation.
        let (_, m, dec) = enc(
            BlockFormat::Bfp8,
            &[
                1.0078125, 1.0234375, 1.9921875, -1.0078125, 0.0078125, 0.0234375, 1.5,
            ],
        );
        let codes: Vec<u8> = m[..7].iter().map(|&x| code(x, 7)).collect();
        assert_eq!(codes, [0x40, 0x42, 0x7F, 0xC0, 0x00, 0x02, 0x60]);
        assert_eq!(dec[2], 1.984375);

        let (e, m, dec) = enc(BlockFormat::Bfp8, &[64.5, 65.5, 64.75, 65.25, 127.5, -64.5]);
        assert_eq!(e, 133);
        let codes: Vec<u8> = m[..6].iter().map(|&x| code(x, 7)).collect();
        assert_eq!(codes, [0x40, 0x42, 0x41, 0x41, 0x7F, 0xC0]);
        assert_eq!(&dec[..6], &[64.0, 66.0, 65.0, 65.0, 127.0, -64.0]);

        // Mixed magnitudes: small values flush to zero.
        let (_, m, _) = enc(
            BlockFormat::Bfp8,
            &[100.0, 1.0, 0.6, 0.75, -0.8, 0.4, 0.001, -3.0, 1e-30],
        );
        let codes: Vec<u8> = m[..9].iter().map(|&x| code(x, 7)).collect();
        assert_eq!(
            codes,
            [0x64, 0x01, 0x01, 0x01, 0x81, 0x00, 0x00, 0x83, 0x00]
        );

        // -0 and subnormals encode as 0; truncate-then-round makes 0x3C000001 a tie.
        let vals = [
            1.0,
            -0.0,
            f32::from_bits(1),
            f32::from_bits(0x807F_FFFF),
            f32::from_bits(0x3C00_0001),
            f32::from_bits(0x3C40_0000),
        ];
        let (_, m, dec) = enc(BlockFormat::Bfp8, &vals);
        let codes: Vec<u8> = m[..6].iter().map(|&x| code(x, 7)).collect();
        assert_eq!(codes, [0x40, 0, 0, 0, 0, 0x01]);
        assert!(dec[1].is_sign_positive());

        // A group holding Inf/NaN has exponent 255.
        let vals = [
            f32::INFINITY,
            f32::from_bits(0x7FC0_0000),
            f32::from_bits(0x7F80_0001),
            1.0,
            f32::from_bits(0x7F00_0000),
        ];
        let (e, m, dec) = enc(BlockFormat::Bfp8, &vals);
        assert_eq!(e, 255);
        let codes: Vec<u8> = m[..5].iter().map(|&x| code(x, 7)).collect();
        assert_eq!(codes, [0x40, 0x60, 0x40, 0x00, 0x20]);
        assert_eq!(dec[0], f32::INFINITY);
        assert!(dec[1].is_nan());
        assert_eq!(dec[2], f32::INFINITY);
        assert_eq!(dec[4], f32::from_bits(0x7F00_0000));
    }

    #[test]
    fn bfp4_tt_vectors() {
        let (e, m, dec) = enc(
            BlockFormat::Bfp4,
            &[1.0, 1.75, 0.5, -0.25, 1.3, 0.3, -1.0, 0.9],
        );
        assert_eq!(e, 0x7f);
        let codes: Vec<u8> = m[..8].iter().map(|&x| code(x, 3)).collect();
        assert_eq!(codes, [4, 7, 2, 0x9, 5, 1, 0xC, 4]);
        assert_eq!(&dec[..8], &[1.0, 1.75, 0.5, -0.25, 1.25, 0.25, -1.0, 1.0]);

        let (_, m, dec) = enc(
            BlockFormat::Bfp4,
            &[1.0, 1.125, 1.375, 1.875, 0.125, 0.375, -0.625, -0.7],
        );
        let codes: Vec<u8> = m[..8].iter().map(|&x| code(x, 3)).collect();
        assert_eq!(codes, [4, 4, 6, 7, 0, 2, 0xA, 0xB]);
        assert_eq!(dec[3], 1.75);

        let (e, m, _) = enc(
            BlockFormat::Bfp4,
            &[6.0, 1.0, 0.9, -0.4, 2.5, 3.0, 5.0, 7.5, 0.5],
        );
        assert_eq!(e, 0x81);
        let codes: Vec<u8> = m[..9].iter().map(|&x| code(x, 3)).collect();
        assert_eq!(codes, [6, 1, 1, 0, 2, 3, 5, 7, 0]);

        let (e, m, _) = enc(BlockFormat::Bfp4, &[]);
        assert_eq!((e, m), (0, [0; GROUP]));
    }

    /// The threaded bf16 encoder gives the bits of the row-at-a-time one, for any split.
    #[test]
    fn bf16_rows_encode_like_encode_row() {
        let (rows, len) = (7, 37);
        let vals: Vec<f32> = (0..rows * len)
            .map(|i| half::bf16::from_f32(((i * 7919 % 211) as f32 - 105.0) * 0.37).to_f32())
            .collect();
        let bytes: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        for format in [BlockFormat::Bfp8, BlockFormat::Bfp4] {
            let want = BlockFloatData::encode(format, &vals, rows, len);
            for threads in [1, 2, 3, 8] {
                let mut got = BlockFloatData::zeros(format, rows, len);
                // Rows 0-2, then 3-6, as a caller reporting progress would.
                got.encode_bf16_rows(0, &bytes[..3 * 2 * len], threads);
                got.encode_bf16_rows(3, &bytes[3 * 2 * len..], threads);
                assert_eq!(got, want, "{format:?}, {threads} threads");
            }
        }
    }

    #[test]
    fn zeros_and_padding() {
        let vals = vec![0.0f32; 20];
        let b = BlockFloatData::encode(BlockFormat::Bfp4, &vals, 1, 20);
        assert_eq!(b.exps.len(), 2);
        assert_eq!(b.decode(), vals);
    }
}
