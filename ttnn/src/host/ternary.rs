//! Ternary weights packed 2 bits per value (the host backend's storage for `DataType::Ternary`).
//!
//! Row-major along the last dimension; each row starts on a byte boundary. Within a byte,
//! value `4j + i` of the row sits in bits `2i..2i+2` as the code `t + 1` (0 -> -1, 1 -> 0,
//! 2 -> +1), the same codes HF's packed checkpoints use. Code 3 never occurs.

/// Packed ternary matrix: `rows` rows of `row_len` values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TernaryData {
    pub rows: usize,
    pub row_len: usize,
    pub packed: Vec<u8>,
}

impl TernaryData {
    pub fn row_bytes(row_len: usize) -> usize {
        row_len.div_ceil(4)
    }

    pub fn zeros(rows: usize, row_len: usize) -> Self {
        // Code 1 is zero: 0b01010101 per byte.
        Self {
            rows,
            row_len,
            packed: vec![0x55; rows * Self::row_bytes(row_len)],
        }
    }

    /// Packs values already checked to be in {-1, 0, 1}.
    pub fn pack(values: &[i8], rows: usize, row_len: usize) -> Self {
        debug_assert_eq!(values.len(), rows * row_len);
        let rb = Self::row_bytes(row_len);
        let mut packed = vec![0x55u8; rows * rb];
        for r in 0..rows {
            let src = &values[r * row_len..(r + 1) * row_len];
            let dst = &mut packed[r * rb..(r + 1) * rb];
            for (j, byte) in dst.iter_mut().enumerate() {
                let mut b = 0u8;
                for i in 0..4 {
                    let t = src.get(4 * j + i).copied().unwrap_or(0);
                    b |= ((t + 1) as u8) << (2 * i);
                }
                *byte = b;
            }
        }
        Self {
            rows,
            row_len,
            packed,
        }
    }

    /// Repacks in place from row-major values in {-1, 0, 1} (no allocation).
    pub fn pack_from(&mut self, mut values: impl Iterator<Item = i8>) {
        let rb = Self::row_bytes(self.row_len);
        for r in 0..self.rows {
            for j in 0..rb {
                let mut b = 0u8;
                for i in 0..4 {
                    let t = if 4 * j + i < self.row_len {
                        values.next().unwrap_or(0)
                    } else {
                        0
                    };
                    b |= ((t + 1) as u8) << (2 * i);
                }
                self.packed[r * rb + j] = b;
            }
        }
    }

    /// Row `r` as packed bytes.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = Self::row_bytes(self.row_len);
        &self.packed[r * rb..(r + 1) * rb]
    }

    /// Value at (`r`, `c`).
    #[inline]
    pub fn get(&self, r: usize, c: usize) -> i8 {
        let b = self.row(r)[c / 4];
        (((b >> (2 * (c % 4))) & 3) as i8) - 1
    }

    /// All values, row-major.
    pub fn unpack(&self) -> Vec<i8> {
        let mut out = Vec::with_capacity(self.rows * self.row_len);
        for r in 0..self.rows {
            for c in 0..self.row_len {
                out.push(self.get(r, c));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pack_unpack_round_trips(rows in 1usize..6, row_len in 1usize..70, seed in any::<u64>()) {
            let mut s = seed;
            let values: Vec<i8> = (0..rows * row_len)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((s >> 33) % 3) as i8 - 1
                })
                .collect();
            let p = TernaryData::pack(&values, rows, row_len);
            prop_assert_eq!(p.packed.len(), rows * row_len.div_ceil(4));
            prop_assert_eq!(p.unpack(), values);
        }
    }

    #[test]
    fn codes_match_hf_packing() {
        // -1, 0, +1, 0 -> codes 0, 1, 2, 1 -> 0b01_10_01_00
        let p = TernaryData::pack(&[-1, 0, 1, 0], 1, 4);
        assert_eq!(p.packed, vec![0b0110_0100]);
        assert_eq!(TernaryData::zeros(1, 3).unpack(), vec![0, 0, 0]);
    }
}
