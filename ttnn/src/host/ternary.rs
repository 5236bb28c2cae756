//! Ternary weights packed 2 bits per value (the host backend's storage for `DataType::Ternary`),
//! in the layout the SIMD kernels read.
//!
//! Each row (the last dimension) is cut into chunks of 128 values stored in 32 bytes: byte `j`
//! of a chunk holds values `j`, `j + 32`, `j + 64` and `j + 96` of the chunk in bits 0-1, 2-3,
//! 4-5 and 6-7. So one 32-byte load, shifted by 0/2/4/6 and masked, gives four vectors of 32
//! consecutive values each, which line up with 32 consecutive activations: no shuffles. Values
//! are stored as codes `t + 1` (0 -> -1, 1 -> 0, 2 -> +1), as in HF's packed checkpoints; code 3
//! never occurs; a row's tail past `row_len` holds code 1 (zero), so kernels can run whole
//! chunks.

//!
//! That is the `Bits2` layout, the one host tensors use. A device of the host backend may store
//! its ternary weights as `Lut3` or `Base3` instead (`host::ternary_lut`, chosen by
//! `DeviceSpec::host_ternary_layout`); `to_device` repacks.

use super::hugepage::WeightBytes;
use super::ternary_lut as lut;
use crate::device::TernaryLayout;

/// Values per chunk.
pub const CHUNK: usize = 128;
/// Bytes per chunk.
pub const CHUNK_BYTES: usize = CHUNK / 4;

/// Packed ternary matrix: `rows` rows of `row_len` values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TernaryData {
    pub rows: usize,
    pub row_len: usize,
    pub layout: TernaryLayout,
    /// On the heap for `Bits2`; the device's `Lut3`/`Base3` copies come from the weight arena
    /// (huge pages: see `host::hugepage`).
    pub(crate) packed: WeightBytes,
    /// `Lut3`: each row's count of negated groups (empty for `Bits2` and `Base3`).
    pub neg: Vec<i32>,
}

/// (byte offset in the row, bit shift) of value `c`.
#[inline]
fn place(c: usize) -> (usize, usize) {
    let (chunk, o) = (c / CHUNK, c % CHUNK);
    (chunk * CHUNK_BYTES + o % CHUNK_BYTES, 2 * (o / CHUNK_BYTES))
}

impl TernaryData {
    /// Bytes per row: whole chunks.
    pub fn row_bytes(row_len: usize) -> usize {
        row_len.div_ceil(CHUNK) * CHUNK_BYTES
    }

    /// A zero matrix in the `Bits2` layout (host tensors).
    pub fn zeros(rows: usize, row_len: usize) -> Self {
        Self::zeros_in(TernaryLayout::Bits2, rows, row_len)
    }

    pub fn zeros_in(layout: TernaryLayout, rows: usize, row_len: usize) -> Self {
        match layout {
            // Code 1 is zero: 0b01010101 per byte.
            TernaryLayout::Bits2 => Self {
                rows,
                row_len,
                layout,
                packed: WeightBytes::heap(rows * Self::row_bytes(row_len), 0x55),
                neg: Vec::new(),
            },
            // Index 0 with a clear sign (`Lut3`) and code 0 (`Base3`) are zero: a zeroed
            // arena buffer, mapped on first touch.
            TernaryLayout::Lut3 | TernaryLayout::Base3 => Self {
                rows,
                row_len,
                layout,
                packed: WeightBytes::arena(lut::storage_bytes(rows, row_len)),
                neg: vec![
                    0;
                    if layout == TernaryLayout::Lut3 {
                        rows
                    } else {
                        0
                    }
                ],
            },
        }
    }

    /// The same values in `layout` (a copy, or a repack).
    pub fn to_layout(&self, layout: TernaryLayout) -> Self {
        if layout == self.layout {
            return self.clone();
        }
        let mut t = Self::zeros_in(layout, self.rows, self.row_len);
        if self.layout == TernaryLayout::Bits2 {
            // Row by row (a 2B-4T checkpoint repacks two billion values at load).
            let row_len = self.row_len;
            lut::pack_rows_with(
                layout,
                self.rows,
                row_len,
                &mut t.packed,
                &mut t.neg,
                |r, buf| self.unpack_row(r, buf),
            );
        } else {
            t.pack_slice(&self.unpack());
        }
        t
    }

    /// Row `r`'s values of a `Bits2` matrix into `out` (`row_len` values). Always inlined, so
    /// that the repack's AVX2 build (`pack_rows_with`) compiles it with AVX2 too.
    #[inline(always)]
    fn unpack_row(&self, r: usize, out: &mut [i8]) {
        for (c, bytes) in self.row(r).chunks_exact(CHUNK_BYTES).enumerate() {
            let dst = &mut out[c * CHUNK..];
            if dst.len() >= CHUNK {
                for (j, &b) in bytes.iter().enumerate() {
                    for f in 0..4 {
                        dst[j + f * CHUNK_BYTES] = ((b >> (2 * f)) & 3) as i8 - 1;
                    }
                }
            } else {
                // The partial last chunk.
                for (v, d) in dst.iter_mut().enumerate() {
                    *d = ((bytes[v % CHUNK_BYTES] >> (2 * (v / CHUNK_BYTES))) & 3) as i8 - 1;
                }
            }
        }
    }

    /// Packs values already checked to be in {-1, 0, 1}.
    pub fn pack(values: &[i8], rows: usize, row_len: usize) -> Self {
        let mut t = Self::zeros(rows, row_len);
        t.pack_slice(values);
        t
    }

    /// Repacks in place from row-major values in {-1, 0, 1} (`rows * row_len` of them): the
    /// fast path of [`Self::pack_from`], a loop the compiler vectorizes (the 2B-4T checkpoint
    /// has two billion weights to pack at load).
    pub fn pack_slice(&mut self, values: &[i8]) {
        assert_eq!(values.len(), self.rows * self.row_len, "value count");
        if self.layout != TernaryLayout::Bits2 {
            lut::pack_rows(
                self.layout,
                values,
                self.rows,
                self.row_len,
                &mut self.packed,
                &mut self.neg,
            );
            return;
        }
        if self.row_len == 0 {
            return;
        }
        let rb = Self::row_bytes(self.row_len);
        #[inline(always)]
        fn pack_chunk(s: &[i8], d: &mut [u8]) {
            let (s, d) = (&s[..CHUNK], &mut d[..CHUNK_BYTES]);
            for j in 0..CHUNK_BYTES {
                let code = |v: i8| (v + 1) as u8;
                d[j] = code(s[j])
                    | (code(s[j + CHUNK_BYTES]) << 2)
                    | (code(s[j + 2 * CHUNK_BYTES]) << 4)
                    | (code(s[j + 3 * CHUNK_BYTES]) << 6);
            }
        }
        for (src, dst) in values
            .chunks_exact(self.row_len)
            .zip(self.packed.chunks_exact_mut(rb))
        {
            let mut sc = src.chunks_exact(CHUNK);
            let mut dc = dst.chunks_exact_mut(CHUNK_BYTES);
            for (s, d) in (&mut sc).zip(&mut dc) {
                pack_chunk(s, d);
            }
            let tail = sc.remainder();
            if let Some(d) = dc.next() {
                // The partial last chunk, padded with zeros (code 1).
                let mut buf = [0i8; CHUNK];
                buf[..tail.len()].copy_from_slice(tail);
                pack_chunk(&buf, d);
            }
        }
    }

    /// Repacks in place from row-major values in {-1, 0, 1} (no allocation).
    pub fn pack_from(&mut self, mut values: impl Iterator<Item = i8>) {
        if self.layout != TernaryLayout::Bits2 {
            let n = self.rows * self.row_len;
            let v: Vec<i8> = (0..n).map(|_| values.next().unwrap_or(0)).collect();
            self.pack_slice(&v);
            return;
        }
        let rb = Self::row_bytes(self.row_len);
        self.packed.fill(0x55);
        let mut chunk = [1u8; CHUNK];
        for r in 0..self.rows {
            let row = &mut self.packed[r * rb..(r + 1) * rb];
            for (c, dst) in row.chunks_exact_mut(CHUNK_BYTES).enumerate() {
                let n = (self.row_len - c * CHUNK).min(CHUNK);
                for (i, code) in chunk.iter_mut().enumerate() {
                    *code = if i < n {
                        (values.next().unwrap_or(0) + 1) as u8
                    } else {
                        1
                    };
                }
                for (j, byte) in dst.iter_mut().enumerate() {
                    *byte = chunk[j]
                        | (chunk[j + CHUNK_BYTES] << 2)
                        | (chunk[j + 2 * CHUNK_BYTES] << 4)
                        | (chunk[j + 3 * CHUNK_BYTES] << 6);
                }
            }
        }
    }

    /// Row `r` as packed bytes (whole chunks) of a `Bits2` matrix.
    pub fn row(&self, r: usize) -> &[u8] {
        assert_eq!(
            self.layout,
            TernaryLayout::Bits2,
            "rows are contiguous in Bits2 only"
        );
        let rb = Self::row_bytes(self.row_len);
        &self.packed[r * rb..(r + 1) * rb]
    }

    /// Value at (`r`, `c`).
    #[inline]
    pub fn get(&self, r: usize, c: usize) -> i8 {
        match self.layout {
            TernaryLayout::Lut3 => return lut::get(&self.packed, self.row_len, r, c),
            TernaryLayout::Base3 => return lut::get_base3(&self.packed, self.row_len, r, c),
            TernaryLayout::Bits2 => {}
        }
        let (byte, shift) = place(c);
        (((self.row(r)[byte] >> shift) & 3) as i8) - 1
    }

    /// All values, row-major.
    pub fn unpack(&self) -> Vec<i8> {
        let mut out = Vec::with_capacity(self.rows * self.row_len);
        if self.layout == TernaryLayout::Bits2 {
            out.resize(self.rows * self.row_len, 0);
            for (r, o) in out.chunks_exact_mut(self.row_len.max(1)).enumerate() {
                self.unpack_row(r, o);
            }
            return out;
        }
        for r in 0..self.rows {
            for c in 0..self.row_len {
                out.push(self.get(r, c));
            }
        }
        out
    }
}

/// `n` pseudo-random values in {-1, 0, 1} from `seed` (an LCG: the tests' weights).
#[cfg(test)]
pub(crate) fn random_ternary(n: usize, seed: u64) -> Vec<i8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % 3) as i8 - 1
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pack_unpack_round_trips(rows in 1usize..6, row_len in 1usize..300, seed in any::<u64>()) {
            let values = random_ternary(rows * row_len, seed);
            let p = TernaryData::pack(&values, rows, row_len);
            prop_assert_eq!(p.packed.len(), rows * row_len.div_ceil(CHUNK) * CHUNK_BYTES);
            prop_assert_eq!(&p.unpack(), &values);
            for layout in [TernaryLayout::Lut3, TernaryLayout::Base3] {
                let l = p.to_layout(layout);
                prop_assert_eq!(l.packed.len(), lut::storage_bytes(rows, row_len));
                prop_assert_eq!(&l.unpack(), &values);
                prop_assert_eq!(&l.to_layout(TernaryLayout::Bits2), &p);
            }
            let b = p.to_layout(TernaryLayout::Lut3).to_layout(TernaryLayout::Base3);
            prop_assert_eq!(b, p.to_layout(TernaryLayout::Base3));
        }
    }

    #[test]
    fn chunk_layout() {
        // Value 0 -> byte 0 bits 0-1; value 33 -> byte 1 bits 2-3; value 130 -> byte 34 bits 0-1.
        let mut v = vec![0i8; 200];
        v[0] = -1;
        v[33] = 1;
        v[130] = 1;
        let p = TernaryData::pack(&v, 1, 200);
        assert_eq!(p.packed.len(), 64);
        assert_eq!(p.packed[0], 0b0101_0100);
        assert_eq!(p.packed[1], 0b0101_1001);
        assert_eq!(p.packed[34], 0b0101_0110);
        assert_eq!(TernaryData::zeros(1, 3).unpack(), vec![0, 0, 0]);
    }
}
