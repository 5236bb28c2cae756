//! Host kernels of `experimental::paged_update_cache` and `experimental::paged_fill_cache`.
//!
//! Both write whole cache rows (one position of one kv head, `hd` values) in place. Block-float
//! caches keep their shared exponents per row group of 16 (see `host::blockfloat`), so writing a
//! row re-encodes only that row's groups; the rest of the cache is untouched. Every index is
//! checked before the first write, so a data-dependent error leaves the cache unchanged.

use std::sync::Arc;

use half::bf16;

use super::attention::{check_pages, int_at, load_page_table};
use super::read_f32;
use crate::error::{Error, Result};
use crate::host::blockfloat::{BlockFloatData, GROUP};
use crate::host::data::HostData;
use crate::host::{HostBuffer, HostCommand, HostCtx};

/// Writes `vals` into row `row` of a float cache (rows of `vals.len()` values), rounding to the
/// cache's precision.
pub(crate) fn write_row(cache: &mut HostData, row: usize, vals: &[f32]) {
    let hd = vals.len();
    match cache {
        HostData::F32(v) => v[row * hd..(row + 1) * hd].copy_from_slice(vals),
        HostData::Bf16(v) => {
            for (d, &s) in v[row * hd..(row + 1) * hd].iter_mut().zip(vals) {
                *d = bf16::from_f32(s);
            }
        }
        HostData::Block(b) => b.encode_row(row, vals),
        // Validation admits float caches only.
        _ => {}
    }
}

/// Copies block-float row `src_row` of `src` into row `dst_row` of `dst` (same format and row
/// length): the encoded groups are copied as they are, so no value changes.
fn copy_block_row(src: &BlockFloatData, src_row: usize, dst: &mut BlockFloatData, dst_row: usize) {
    let g = BlockFloatData::groups_per_row(src.row_len);
    dst.exps[dst_row * g..(dst_row + 1) * g]
        .copy_from_slice(&src.exps[src_row * g..(src_row + 1) * g]);
    dst.mants[dst_row * g * GROUP..(dst_row + 1) * g * GROUP]
        .copy_from_slice(&src.mants[src_row * g * GROUP..(src_row + 1) * g * GROUP]);
}

/// Where the update positions come from.
#[derive(Debug)]
pub(crate) enum UpdateIdxs {
    /// INT32 `[B]`, read when the command runs; -1 skips a user.
    Tensor(Arc<HostBuffer>),
    /// Fixed at op time; `u32::MAX` (-1) skips a user.
    List(Vec<u32>),
}

/// `paged_update_cache`: `cache[row(b, h, p_b)] = input[0, b, h, :]` for every user `b` with
/// `p_b != -1`.
#[derive(Debug)]
pub(crate) struct UpdateCacheCmd {
    pub op: &'static str,
    pub cache: Arc<HostBuffer>,
    pub input: Arc<HostBuffer>,
    pub idxs: UpdateIdxs,
    pub page_table: Option<Arc<HostBuffer>>,
    pub batch: usize,
    pub nkv: usize,
    pub hd: usize,
    /// Paged: block size; unpaged: the cache's sequence length.
    pub seq: usize,
    /// Paged: page-table columns; unpaged: 1.
    pub cols: usize,
    /// Paged: blocks in the cache.
    pub max_blocks: usize,
    pub share_cache: bool,
    /// Per user: first cache row written (head 0), or `usize::MAX` to skip. Capacity `batch`.
    pub dest: Vec<usize>,
    pub table: Vec<u32>,
    pub si: Vec<f32>,
}

impl UpdateCacheCmd {
    fn resolve(&mut self) -> Result<()> {
        let op = self.op;
        let capacity = self.seq * self.cols;
        let idx_guard = match &self.idxs {
            UpdateIdxs::Tensor(t) => Some(t.read()),
            UpdateIdxs::List(_) => None,
        };
        let pt_guard = self.page_table.as_ref().map(|p| p.read());
        if let Some(g) = &pt_guard {
            load_page_table(g, self.max_blocks, &mut self.table);
        }
        self.dest.clear();
        for b in 0..self.batch {
            let p: i64 = match (&self.idxs, &idx_guard) {
                (UpdateIdxs::Tensor(_), Some(g)) => int_at(g, b),
                (UpdateIdxs::List(v), _) => v
                    .get(b)
                    .map_or(-1, |&x| if x == u32::MAX { -1 } else { x as i64 }),
                _ => -1,
            };
            if p == -1 {
                self.dest.push(usize::MAX);
                continue;
            }
            if p < 0 || p as u64 >= capacity as u64 {
                return Err(Error::arg(
                    op,
                    format!(
                        "update index {p} of user {b} is outside the cache (valid: -1 to skip, or 0..{capacity})"
                    ),
                ));
            }
            let p = p as usize;
            let row = match &pt_guard {
                Some(g) => {
                    let trow = &self.table[b * self.cols..(b + 1) * self.cols];
                    check_pages(op, b, trow, g, b * self.cols, self.seq, p..p + 1)?;
                    (trow[p / self.seq] as usize * self.nkv) * self.seq + p % self.seq
                }
                None => {
                    let cb = if self.share_cache { 0 } else { b };
                    cb * self.nkv * self.seq + p
                }
            };
            self.dest.push(row);
        }
        Ok(())
    }
}

impl HostCommand for UpdateCacheCmd {
    fn run(&mut self, _ctx: &HostCtx<'_>) -> Result<()> {
        self.resolve()?;
        let ig = self.input.read();
        let x = read_f32(&ig, &mut self.si);
        let mut cache = self.cache.write();
        let (nkv, hd, seq) = (self.nkv, self.hd, self.seq);
        for (b, &row0) in self.dest.iter().enumerate() {
            if row0 == usize::MAX {
                continue;
            }
            for h in 0..nkv {
                let src = (b * nkv + h) * hd;
                write_row(&mut cache, row0 + h * seq, &x[src..src + hd]);
            }
        }
        Ok(())
    }
}

/// Where `paged_fill_cache` takes the page-table row from.
#[derive(Debug)]
pub(crate) enum BatchIdx {
    Fixed(usize),
    /// A one-element UINT32/INT32 tensor read when the command runs.
    Tensor(Arc<HostBuffer>),
}

/// `paged_fill_cache`: `cache[row(page_table[batch_idx], h, s)] = input[0, h, s, :]` for every
/// head `h` and sequence row `s` of the input.
#[derive(Debug)]
pub(crate) struct FillCacheCmd {
    pub op: &'static str,
    pub cache: Arc<HostBuffer>,
    pub input: Arc<HostBuffer>,
    pub page_table: Arc<HostBuffer>,
    pub batch_idx: BatchIdx,
    pub nkv: usize,
    pub hd: usize,
    /// Input sequence rows.
    pub seq: usize,
    pub bs: usize,
    pub cols: usize,
    pub pt_rows: usize,
    pub max_blocks: usize,
    pub table: Vec<u32>,
    pub si: Vec<f32>,
}

impl HostCommand for FillCacheCmd {
    fn run(&mut self, _ctx: &HostCtx<'_>) -> Result<()> {
        let op = self.op;
        let bi: i64 = match &self.batch_idx {
            BatchIdx::Fixed(b) => *b as i64,
            BatchIdx::Tensor(t) => int_at(&t.read(), 0),
        };
        if bi < 0 || bi as u64 >= self.pt_rows as u64 {
            return Err(Error::arg(
                op,
                format!(
                    "batch_idx {bi} is not a row of the page table (it has {} rows)",
                    self.pt_rows
                ),
            ));
        }
        let bi = bi as usize;
        {
            let g = self.page_table.read();
            load_page_table(&g, self.max_blocks, &mut self.table);
            let trow = &self.table[bi * self.cols..(bi + 1) * self.cols];
            check_pages(op, bi, trow, &g, bi * self.cols, self.bs, 0..self.seq)?;
        }
        let (nkv, hd, seq, bs) = (self.nkv, self.hd, self.seq, self.bs);
        let trow = &self.table[bi * self.cols..(bi + 1) * self.cols];
        let dest = |h: usize, s: usize| (trow[s / bs] as usize * nkv + h) * bs + s % bs;
        let ig = self.input.read();
        let mut cache = self.cache.write();
        if let (HostData::Block(src), HostData::Block(dst)) = (&*ig, &mut *cache)
            && src.format == dst.format
        {
            for h in 0..nkv {
                for s in 0..seq {
                    copy_block_row(src, h * seq + s, dst, dest(h, s));
                }
            }
            return Ok(());
        }
        let x = read_f32(&ig, &mut self.si);
        for h in 0..nkv {
            for s in 0..seq {
                let src = (h * seq + s) * hd;
                write_row(&mut cache, dest(h, s), &x[src..src + hd]);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::blockfloat::BlockFormat;

    #[test]
    fn row_encode_matches_whole_encode_and_leaves_other_rows() {
        let (rows, len) = (4, 40);
        let vals: Vec<f32> = (0..rows * len)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.37)
            .collect();
        let whole = BlockFloatData::encode(BlockFormat::Bfp8, &vals, rows, len);
        let mut b = BlockFloatData::zeros(BlockFormat::Bfp8, rows, len);
        for r in [2, 0, 3, 1] {
            b.encode_row(r, &vals[r * len..(r + 1) * len]);
        }
        assert_eq!(b, whole);
        let before = b.clone();
        let new_row: Vec<f32> = (0..len).map(|i| i as f32).collect();
        b.encode_row(1, &new_row);
        let mut out = vec![0f32; len];
        for r in [0, 2, 3] {
            let (mut x, mut y) = (vec![0f32; len], vec![0f32; len]);
            b.decode_row(r, &mut x);
            before.decode_row(r, &mut y);
            assert_eq!(x, y);
        }
        b.decode_row(1, &mut out);
        assert_eq!(out, new_row);
    }
}
