//! Host kernels for `rms_norm`.

use std::sync::Arc;

use super::eltwise::SendPtr;
use super::{PAR_THRESHOLD, read_f32, write_f32};
use crate::error::Result;
use crate::host::data::HostData;
use crate::host::{HostBuffer, HostCommand, HostCtx};

/// Normalizes one row: `out = gamma * (x * rsqrt(mean(x^2) + eps)) + beta`, with
/// `x = input + residual`. The arithmetic is a fixed sequence per row (squares rounded to f32 as
/// torch's `pow(2)` does, summed in f64 in eight lanes), so rows are batch- and
/// thread-invariant.
#[inline]
pub(crate) fn rms_norm_row(
    x: &[f32],
    residual: Option<&[f32]>,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) {
    let n = x.len();
    // The residual sum goes to `out` first so that it is computed once.
    match residual {
        Some(r) => {
            for ((o, &a), &b) in out.iter_mut().zip(x).zip(r) {
                *o = a + b;
            }
        }
        None => out.copy_from_slice(x),
    }
    // Eight f64 partial sums (element i to lane i mod 8), added pairwise at the end: a fixed
    // order for every caller, so the rows stay batch invariant. One serial chain of f64 adds was
    // most of a decode step's activation quantization (~3 us per 2560-value row).
    let mut lanes = [0f64; 8];
    let mut chunks = out.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f64::from(v * v);
        }
    }
    for (l, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *l += f64::from(v * v);
    }
    let sum = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
        + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
    let mean = (sum / n as f64) as f32;
    let inv = 1.0 / (mean + eps).sqrt();
    match gamma {
        Some(g) => {
            for (o, &w) in out.iter_mut().zip(g) {
                *o = w * (*o * inv);
            }
        }
        None => {
            for o in out.iter_mut() {
                *o *= inv;
            }
        }
    }
    if let Some(b) = beta {
        for (o, &c) in out.iter_mut().zip(b) {
            *o += c;
        }
    }
}

/// `rms_norm` over `rows` rows of `width` values.
pub(crate) struct RmsNormCmd {
    pub input: Arc<HostBuffer>,
    pub residual: Option<Arc<HostBuffer>>,
    pub gamma: Option<Arc<HostBuffer>>,
    pub beta: Option<Arc<HostBuffer>>,
    pub out: Arc<HostBuffer>,
    pub rows: usize,
    pub width: usize,
    pub epsilon: f32,
    pub s_in: Vec<f32>,
    pub s_res: Vec<f32>,
    pub s_gamma: Vec<f32>,
    pub s_beta: Vec<f32>,
    pub s_out: Vec<f32>,
}

/// Read guard of an optional buffer, sharing `primary`'s guard when it is the same buffer
/// (a second read lock on one `RwLock` from one thread may deadlock behind a waiting writer).
macro_rules! read_opt {
    ($opt:expr, $primary:expr, $pguard:expr, $slot:ident) => {{
        match $opt {
            Some(b) if Arc::ptr_eq(b, $primary) => Some(&*$pguard),
            Some(b) => {
                $slot = Some(b.read());
                $slot.as_deref()
            }
            None => None,
        }
    }};
}

impl HostCommand for RmsNormCmd {
    fn run(&mut self, ctx: &HostCtx<'_>) -> Result<()> {
        let (rows, width, eps) = (self.rows, self.width, self.epsilon);
        let g_in = self.input.read();
        let (g_res, g_gamma, g_beta);
        let res_data: Option<&HostData> = read_opt!(&self.residual, &self.input, g_in, g_res);
        let gamma_data: Option<&HostData> = read_opt!(&self.gamma, &self.input, g_in, g_gamma);
        let beta_data: Option<&HostData> = read_opt!(&self.beta, &self.input, g_in, g_beta);
        let x = read_f32(&g_in, &mut self.s_in);
        let res = res_data.map(|d| read_f32(d, &mut self.s_res));
        // Gamma/beta may be stored padded (`[1, 1, ceil(w/32), 32]`): the first `width`
        // values are the logical ones.
        let gamma = gamma_data.map(|d| &read_f32(d, &mut self.s_gamma)[..width]);
        let beta = beta_data.map(|d| &read_f32(d, &mut self.s_beta)[..width]);
        let mut out = self.out.write();
        write_f32(&mut out, rows * width, &mut self.s_out, |o| {
            let kernel = |range: std::ops::Range<usize>, o: &mut [f32]| {
                for (k, r) in range.enumerate() {
                    let row = r * width..(r + 1) * width;
                    rms_norm_row(
                        &x[row.clone()],
                        res.map(|v| &v[row.clone()]),
                        gamma,
                        beta,
                        eps,
                        &mut o[k * width..(k + 1) * width],
                    );
                }
            };
            let threads = ctx.pool.num_threads();
            if rows * width < PAR_THRESHOLD || threads == 1 || rows == 1 {
                kernel(0..rows, o);
                return;
            }
            let base = SendPtr(o.as_mut_ptr());
            ctx.pool.for_ranges(rows, threads * 4, &|range| {
                // SAFETY: the ranges of rows are disjoint, so each task owns the sub-slice
                // of `o` holding its rows; `o` outlives the parallel region.
                let chunk = unsafe {
                    std::slice::from_raw_parts_mut(
                        base.get().add(range.start * width),
                        range.len() * width,
                    )
                };
                kernel(range, chunk);
            });
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_matches_definition() {
        let x = [1.0f32, -2.0, 3.0, 0.5];
        let g = [2.0f32, 1.0, 0.5, -1.0];
        let b = [0.0f32, 1.0, 0.0, 0.0];
        let mut out = [0f32; 4];
        rms_norm_row(&x, None, Some(&g), Some(&b), 1e-6, &mut out);
        let ms = (1.0 + 4.0 + 9.0 + 0.25) / 4.0;
        let inv = 1.0 / (ms + 1e-6f64).sqrt();
        for i in 0..4 {
            let want = g[i] as f64 * x[i] as f64 * inv + b[i] as f64;
            assert!(
                (out[i] as f64 - want).abs() < 1e-6,
                "{i}: {} vs {want}",
                out[i]
            );
        }
    }

    #[test]
    fn residual_is_added_first() {
        let x = [1.0f32, 2.0];
        let r = [1.0f32, -2.0];
        let mut a = [0f32; 2];
        let mut b = [0f32; 2];
        rms_norm_row(&x, Some(&r), None, None, 0.0, &mut a);
        rms_norm_row(&[2.0, 0.0], None, None, None, 0.0, &mut b);
        assert_eq!(a, b);
    }
}
