//! Host kernels for `embedding`.

use std::sync::Arc;

use half::bf16;

use super::write_f32;
use crate::error::{Error, Result};
use crate::host::data::{Bf16Buf, HostData};
use crate::host::{HostBuffer, HostCommand, HostCtx};

const OP: &str = "ttnn::embedding";

/// The table row for position `t`, `None` for the pad token; an error names the bad id.
#[inline]
fn row_of(ids: &HostData, t: usize, vocab: usize, pad: Option<u32>) -> Result<Option<usize>> {
    // Ids are widened to i64 so that every storage type is checked the same way.
    let id: i64 = match ids {
        HostData::U32(v) => i64::from(v[t]),
        HostData::I32(v) => i64::from(v[t]),
        HostData::Bf16(v) => {
            let f = v[t].to_f32();
            if f.fract() != 0.0 || !f.is_finite() {
                return Err(Error::arg(
                    OP,
                    format!("token id {f} at position {t} is not an integer"),
                ));
            }
            f as i64
        }
        // Validation admits only the three types above.
        other => unreachable!("embedding ids stored as {:?}", other.dtype()),
    };
    // Host extension: a negative Int32 id (an inactive decode slot at position -1) reads as
    // a zero row, so one positions tensor can drive both the cache ops and the RoPE lookup.
    if id < 0 && matches!(ids, HostData::I32(_)) {
        return Ok(None);
    }
    if pad.is_some_and(|p| i64::from(p) == id) {
        return Ok(None);
    }
    if id < 0 || id >= vocab as i64 {
        return Err(Error::arg(
            OP,
            format!(
                "token id {id} at position {t} is out of range for a weight table of {vocab} rows"
            ),
        ));
    }
    Ok(Some(id as usize))
}

/// Same-dtype lookup: each output row is a bit-exact copy of a table row (or zeros);
/// `copy_row(r, o)` copies table row `r` into `o`.
fn lookup_copy<T: Copy>(
    ids: &HostData,
    out: &mut [T],
    zero: T,
    vocab: usize,
    dim: usize,
    pad: Option<u32>,
    mut copy_row: impl FnMut(usize, &mut [T]) -> Result<()>,
) -> Result<()> {
    for (t, o) in out.chunks_exact_mut(dim).enumerate() {
        match row_of(ids, t, vocab, pad)? {
            Some(r) => copy_row(r, o)?,
            None => o.fill(zero),
        }
    }
    Ok(())
}

/// Row `r` of a bf16 table into `dst`. A table borrowed from a mapped checkpoint is read, not
/// touched through the mapping, so the rows looked up do not stay resident
/// (see `SharedSource::read_at`).
fn read_bf16_row(w: &Bf16Buf, r: usize, dst: &mut [bf16]) -> Result<()> {
    w.read_into(r * dst.len(), dst).map_err(|e| Error::Backend {
        op: OP,
        backend: "host",
        message: format!("reading row {r} of the borrowed embedding table: {e}"),
    })
}

/// Lookup into f32 rows (the output dtype differs from the table's); `s_row` holds one bf16
/// row.
fn lookup_f32(
    ids: &HostData,
    w: &HostData,
    out: &mut [f32],
    vocab: usize,
    dim: usize,
    pad: Option<u32>,
    s_row: &mut [bf16],
) -> Result<()> {
    for (t, o) in out.chunks_exact_mut(dim).enumerate() {
        let Some(r) = row_of(ids, t, vocab, pad)? else {
            o.fill(0.0);
            continue;
        };
        match w {
            HostData::F32(w) => o.copy_from_slice(&w[r * dim..(r + 1) * dim]),
            HostData::Bf16(w) => {
                read_bf16_row(w, r, s_row)?;
                for (d, s) in o.iter_mut().zip(s_row.iter()) {
                    *d = s.to_f32();
                }
            }
            // Validation admits only f32 and bf16 tables.
            other => unreachable!("embedding table stored as {:?}", other.dtype()),
        }
    }
    Ok(())
}

/// `out[t, :] = weight[ids[t], :]`.
pub(crate) struct EmbeddingCmd {
    pub ids: Arc<HostBuffer>,
    pub weight: Arc<HostBuffer>,
    pub out: Arc<HostBuffer>,
    pub tokens: usize,
    pub vocab: usize,
    pub dim: usize,
    pub pad: Option<u32>,
    pub s_out: Vec<f32>,
    /// One bf16 table row (`dim` values) when a bf16 table is converted to another dtype.
    pub s_row: Vec<bf16>,
}

impl HostCommand for EmbeddingCmd {
    fn run(&mut self, _ctx: &HostCtx<'_>) -> Result<()> {
        let (tokens, vocab, dim, pad) = (self.tokens, self.vocab, self.dim, self.pad);
        let g_w = self.weight.read();
        let g_ids_own;
        let ids: &HostData = if Arc::ptr_eq(&self.ids, &self.weight) {
            &g_w
        } else {
            g_ids_own = self.ids.read();
            &g_ids_own
        };
        let mut out = self.out.write();
        match (&*g_w, &mut *out) {
            (HostData::F32(w), HostData::F32(o)) => {
                lookup_copy(ids, o, 0.0, vocab, dim, pad, |r, o| {
                    o.copy_from_slice(&w[r * dim..(r + 1) * dim]);
                    Ok(())
                })
            }
            (HostData::Bf16(w), HostData::Bf16(o)) => {
                lookup_copy(ids, o, bf16::ZERO, vocab, dim, pad, |r, o| {
                    read_bf16_row(w, r, o)
                })
            }
            (w, o) => {
                // A dtype change: gather in f32, then round once to the output dtype.
                let mut res = Ok(());
                let s_row = &mut self.s_row;
                write_f32(o, tokens * dim, &mut self.s_out, |o| {
                    res = lookup_f32(ids, w, o, vocab, dim, pad, s_row);
                });
                res
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        let ids = HostData::U32(vec![0, 3, 7]);
        assert_eq!(row_of(&ids, 1, 4, None).expect("in range"), Some(3));
        assert_eq!(row_of(&ids, 2, 4, Some(7)).expect("pad"), None);
        let e = row_of(&ids, 2, 4, None).expect_err("out of range");
        assert!(e.to_string().contains("token id 7 at position 2"), "{e}");
        // Negative Int32 ids are inactive slots (zero rows); past the table is an error.
        let neg = HostData::I32(vec![-1, 4]);
        assert_eq!(row_of(&neg, 0, 4, None).expect("inactive"), None);
        assert!(row_of(&neg, 1, 4, None).is_err());
        let frac = HostData::Bf16(vec![bf16::from_f32(1.5)].into());
        assert!(row_of(&frac, 0, 4, None).is_err());
    }
}
