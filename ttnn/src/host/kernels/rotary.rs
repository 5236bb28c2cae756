//! Host kernel of `experimental::rotary_embedding_llama`.
//!
//! TT's math: for every 32-wide chunk `x_c` of a row, `rotated_c = x_c @ M` (M the 32x32
//! transformation matrix), then `out = x * cos + rotated * sin` elementwise. The host scans M
//! when the op runs (1024 values) and keeps, per column `j`, its nonzero entries `(i, M[i][j])`:
//! `rotated[j] = x[i0]*M[i0][j] + x[i1]*M[i1][j] + ...` over those entries in increasing `i`
//! (structural zeros are skipped, so a zero weight never turns an Inf into NaN). When every
//! column has exactly one nonzero entry (tt_transformers' matrix: `M[2i, 2i+1] = 1`,
//! `M[2i+1, 2i] = -1`) a tight loop computes `rotated[j] = x[src[j]] * w[j]`, which is the same
//! single product the general path computes, so both paths give identical bits.

use std::sync::Arc;

use super::eltwise::SendPtr;
use super::{PAR_THRESHOLD, read_f32, write_f32};
use crate::error::Result;
use crate::host::{HostBuffer, HostCommand, HostCtx};
use crate::types::TILE_SIZE;

const T: usize = TILE_SIZE;

/// The nonzero structure of a 32x32 transformation matrix.
#[derive(Clone, Debug)]
pub(crate) struct TransPlan {
    /// Nonzero entries per column.
    counts: [u8; T],
    /// `rows[j][..counts[j]]`: the rows of column j's nonzeros, increasing.
    rows: [[u8; T]; T],
    weights: [[f32; T]; T],
    /// Every column has exactly one nonzero entry.
    single: bool,
}

impl TransPlan {
    /// Plans from the first 32x32 block of `m` (row-major, rows of 32).
    pub fn new(m: &[f32]) -> Self {
        let mut p = Self {
            counts: [0; T],
            rows: [[0; T]; T],
            weights: [[0.0; T]; T],
            single: true,
        };
        for j in 0..T {
            let mut c = 0;
            for i in 0..T {
                let w = m[i * T + j];
                // NaN counts as nonzero (it must propagate, as in the product).
                if w != 0.0 || w.is_nan() {
                    p.rows[j][c] = i as u8;
                    p.weights[j][c] = w;
                    c += 1;
                }
            }
            p.counts[j] = c as u8;
            p.single &= c == 1;
        }
        p
    }

    /// Forces the general path (tests compare both paths).
    #[cfg(test)]
    fn general(mut self) -> Self {
        self.single = false;
        self
    }

    /// `out = x*cos + (x_chunk @ M)*sin` for one row (its length a multiple of 32).
    #[inline]
    pub fn apply(&self, x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
        let mut rot = [0f32; T];
        for (((xc, cc), sc), oc) in x
            .chunks_exact(T)
            .zip(cos.chunks_exact(T))
            .zip(sin.chunks_exact(T))
            .zip(out.chunks_exact_mut(T))
        {
            if self.single {
                for (j, r) in rot.iter_mut().enumerate() {
                    *r = xc[self.rows[j][0] as usize] * self.weights[j][0];
                }
            } else {
                for (j, r) in rot.iter_mut().enumerate() {
                    let n = self.counts[j] as usize;
                    let (rows, ws) = (&self.rows[j][..n], &self.weights[j][..n]);
                    *r = match n {
                        0 => 0.0,
                        _ => {
                            let mut acc = xc[rows[0] as usize] * ws[0];
                            for (&i, &w) in rows[1..].iter().zip(&ws[1..]) {
                                acc += xc[i as usize] * w;
                            }
                            acc
                        }
                    };
                }
            }
            for j in 0..T {
                oc[j] = xc[j] * cc[j] + rot[j] * sc[j];
            }
        }
    }
}

/// `rotary_embedding_llama`: prefill (`[B, nh, S, hd]` with cos/sin `[1, 1|nh, Sc, hd]`, row
/// `s` of the table for sequence row `s`) or decode (`[1, B, nh, hd]` with cos/sin
/// `[1, B, Sc, hd]`, row 0 of user `b`'s block broadcast to all of its heads).
#[derive(Debug)]
pub(crate) struct RotaryCmd {
    pub input: Arc<HostBuffer>,
    pub cos: Arc<HostBuffer>,
    pub sin: Arc<HostBuffer>,
    pub trans: Arc<HostBuffer>,
    pub out: Arc<HostBuffer>,
    pub decode: bool,
    /// Prefill: B; decode: users.
    pub batch: usize,
    pub nh: usize,
    /// Prefill: sequence rows per head; decode: 1.
    pub seq: usize,
    pub hd: usize,
    /// Prefill: cos/sin have one block of rows per head.
    pub cos_per_head: bool,
    /// Rows per head (prefill) or per user (decode) in cos/sin.
    pub cos_seq: usize,
    pub si: Vec<f32>,
    pub sc: Vec<f32>,
    pub ss: Vec<f32>,
    pub st: Vec<f32>,
    pub so: Vec<f32>,
}

impl HostCommand for RotaryCmd {
    fn run(&mut self, ctx: &HostCtx<'_>) -> Result<()> {
        let plan = {
            let g = self.trans.read();
            TransPlan::new(read_f32(&g, &mut self.st))
        };
        let ig = self.input.read();
        let x = read_f32(&ig, &mut self.si);
        let cg_own;
        let cg = if Arc::ptr_eq(&self.cos, &self.input) {
            &ig
        } else {
            cg_own = self.cos.read();
            &cg_own
        };
        let cos = read_f32(cg, &mut self.sc);
        let sg_own;
        let sg = if Arc::ptr_eq(&self.sin, &self.input) {
            &ig
        } else if Arc::ptr_eq(&self.sin, &self.cos) {
            cg
        } else {
            sg_own = self.sin.read();
            &sg_own
        };
        let sin = read_f32(sg, &mut self.ss);
        let (nh, seq, hd, decode, per_head, cos_seq) = (
            self.nh,
            self.seq,
            self.hd,
            self.decode,
            self.cos_per_head,
            self.cos_seq,
        );
        let rows = self.batch * nh * seq;
        // The cos/sin row of input row r.
        let table_row = move |r: usize| {
            if decode {
                (r / nh) * cos_seq
            } else {
                let s = r % seq;
                let h = (r / seq) % nh;
                if per_head { h * cos_seq + s } else { s }
            }
        };
        let mut out = self.out.write();
        write_f32(&mut out, rows * hd, &mut self.so, |o| {
            let kernel = |range: std::ops::Range<usize>, o: &mut [f32]| {
                for (k, r) in range.enumerate() {
                    let t = table_row(r);
                    plan.apply(
                        &x[r * hd..(r + 1) * hd],
                        &cos[t * hd..(t + 1) * hd],
                        &sin[t * hd..(t + 1) * hd],
                        &mut o[k * hd..(k + 1) * hd],
                    );
                }
            };
            let threads = ctx.pool.num_threads();
            if rows * hd < PAR_THRESHOLD || threads == 1 {
                kernel(0..rows, o);
                return;
            }
            let per = rows.div_ceil(threads * 4);
            let base = SendPtr(o.as_mut_ptr());
            ctx.pool.run(rows.div_ceil(per), &|t| {
                let (r0, r1) = (t * per, ((t + 1) * per).min(rows));
                // SAFETY: tasks cover disjoint row ranges of `o`, which outlives the region.
                let chunk = unsafe {
                    std::slice::from_raw_parts_mut(base.get().add(r0 * hd), (r1 - r0) * hd)
                };
                kernel(r0..r1, chunk);
            });
        });
        Ok(())
    }
}

/// tt_transformers' `get_rot_transformation_mat`: `M[2i, 2i+1] = 1`, `M[2i+1, 2i] = -1`.
pub(crate) fn rot_transformation_values() -> Vec<f32> {
    let mut m = vec![0f32; T * T];
    for i in 0..T / 2 {
        m[(2 * i) * T + 2 * i + 1] = 1.0;
        m[(2 * i + 1) * T + 2 * i] = -1.0;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_matrix_is_pairwise_rope_and_paths_agree() {
        let m = rot_transformation_values();
        let fast = TransPlan::new(&m);
        assert!(fast.single);
        let general = TransPlan::new(&m).general();
        let hd = 64;
        let mut x: Vec<f32> = (0..hd)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3)
            .collect();
        // Special values: signed zeros and infinities must give the same bits on both paths.
        x[3] = -0.0;
        x[4] = 0.0;
        x[7] = f32::INFINITY;
        x[40] = f32::NAN;
        let cos: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.1).cos()).collect();
        let mut sin: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.1).sin()).collect();
        sin[2] = -0.0;
        let (mut a, mut b) = (vec![0f32; hd], vec![0f32; hd]);
        fast.apply(&x, &cos, &sin, &mut a);
        general.apply(&x, &cos, &sin, &mut b);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
        for i in 0..hd / 2 {
            if [1, 2, 3, 20].contains(&i) {
                continue;
            }
            let (x0, x1) = (x[2 * i], x[2 * i + 1]);
            assert_eq!(a[2 * i], x0 * cos[2 * i] + (-x1) * sin[2 * i]);
            assert_eq!(a[2 * i + 1], x1 * cos[2 * i + 1] + x0 * sin[2 * i + 1]);
        }
    }

    #[test]
    fn dense_matrix_uses_the_product() {
        let m: Vec<f32> = (0..T * T).map(|i| ((i % 7) as f32 - 3.0) * 0.5).collect();
        let p = TransPlan::new(&m);
        assert!(!p.single);
        let x: Vec<f32> = (0..T).map(|i| i as f32 * 0.25 - 4.0).collect();
        let ones = vec![1f32; T];
        let zeros = vec![0f32; T];
        let mut out = vec![0f32; T];
        // cos = 0, sin = 1: out = x @ M.
        p.apply(&x, &zeros, &ones, &mut out);
        for j in 0..T {
            let want: f64 = (0..T).map(|i| x[i] as f64 * m[i * T + j] as f64).sum();
            assert!((out[j] as f64 - want).abs() < 1e-4, "{j}");
        }
    }
}
