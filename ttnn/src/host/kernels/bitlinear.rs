//! Host kernels for `experimental::bitlinear`: per-token int8 absmax activation quantization,
//! ternary matmul, per-tensor scale.
//!
//! Each activation row is quantized once into an i8 scratch row ([`quantize_row_int8`], shared
//! with `quantize_activations_int8`); every output is then an exact integer dot product of that
//! row with one packed ternary weight row ([`dot_i8_ternary`]), scaled once. SIMD versions can
//! replace `dot_i8_ternary` without touching the command or the op.

use std::sync::Arc;

use super::eltwise::SendPtr;
use super::{read_f32, write_f32};
use crate::error::{Error, Result};
use crate::host::data::HostData;
use crate::host::{HostBuffer, HostCommand, HostCtx};
use crate::ops::bitlinear::WeightScaleMode;

/// Multiply-adds below which bitlinear runs on the calling thread only.
const PAR_MIN_WORK: usize = 1 << 16;
/// Smallest amount of work (multiply-adds) worth one task.
const TASK_MIN_WORK: usize = 1 << 14;
/// Activation values below which the quantization runs on the calling thread only.
const QUANT_PAR_MIN: usize = 1 << 16;

/// Quantizes one activation row as HF's `ActQuant` does in f32: `s = 127 / max(absmax, 1e-5)`,
/// `q = clamp(round_half_even(x * s), -128, 127)`. Writes `q` (`x.len()` values) and returns `s`.
///
/// HF writes `127 / t`, which torch evaluates as `t.reciprocal() * 127` (`Tensor.__rtruediv__`):
/// two f32 roundings, not one division. For some absmax values (0.375, 1.5, ...) the two differ
/// by an ulp, which moves every output of the row, so the reciprocal form is used here.
#[inline]
pub(crate) fn quantize_row_int8(x: &[f32], q: &mut [i8]) -> f32 {
    let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let s = (1.0f32 / absmax.max(1e-5)) * 127.0;
    for (qv, &xv) in q.iter_mut().zip(x) {
        *qv = (xv * s).round_ties_even().clamp(-128.0, 127.0) as i8;
    }
    s
}

/// Ternary values of each packed byte (codes `t + 1`, 2 bits each, value `i` in bits `2i..`).
static UNPACK: [[i8; 4]; 256] = {
    let mut t = [[0i8; 4]; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 4 {
            t[b][i] = ((b >> (2 * i)) & 3) as i8 - 1;
            i += 1;
        }
        b += 1;
    }
    t
};

/// Values per unpacked chunk: small enough for the stack, long enough to vectorize.
const CHUNK: usize = 64;

/// `sum_k q[k] * t[k]` with `t` a packed ternary row (codes `t + 1`, 2 bits each, 4 per byte,
/// value `4j + i` in bits `2i..2i+2` of byte `j`); exact. Chunks are unpacked through a table
/// into a stack buffer so that the multiply-add loop vectorizes; the SIMD kernels replace this.
#[inline]
pub(crate) fn dot_i8_ternary(q: &[i8], packed_row: &[u8]) -> i32 {
    let mut acc = 0i32;
    let chunks = q.len() / CHUNK;
    for c in 0..chunks {
        let mut w = [0i8; CHUNK];
        for (j, wj) in w.chunks_exact_mut(4).enumerate() {
            wj.copy_from_slice(&UNPACK[packed_row[c * CHUNK / 4 + j] as usize]);
        }
        let qc = &q[c * CHUNK..(c + 1) * CHUNK];
        let mut s = 0i32;
        for i in 0..CHUNK {
            s += qc[i] as i32 * w[i] as i32;
        }
        acc += s;
    }
    for k in chunks * CHUNK..q.len() {
        acc += q[k] as i32 * UNPACK[packed_row[k / 4] as usize][k % 4] as i32;
    }
    acc
}

/// The output value of an exact accumulator for a row with scale `s`.
#[inline]
fn dequant(acc: i32, s: f32, weight_scale: f32, mode: WeightScaleMode) -> f32 {
    match mode {
        WeightScaleMode::Multiply => acc as f32 / s * weight_scale,
        WeightScaleMode::Divide => acc as f32 / (weight_scale * s),
    }
}

/// Quantizes `rows` rows of `k` values into `q` and `scales` (parallel over rows when large).
fn quantize_rows(ctx: &HostCtx<'_>, x: &[f32], k: usize, q: &mut [i8], scales: &mut [f32]) {
    let rows = scales.len();
    if rows * k < QUANT_PAR_MIN || ctx.pool.num_threads() == 1 {
        for ((xr, qr), s) in x.chunks_exact(k).zip(q.chunks_exact_mut(k)).zip(scales) {
            *s = quantize_row_int8(xr, qr);
        }
        return;
    }
    let qp = SendPtr(q.as_mut_ptr());
    let sp = SendPtr(scales.as_mut_ptr());
    ctx.pool
        .for_ranges(rows, ctx.pool.num_threads() * 4, &|range| {
            for r in range {
                // SAFETY: r < rows; q has rows * k values and scales has rows; each row r is
                // handled by exactly one task, so the row slices and scale slots are disjoint;
                // both buffers outlive the parallel region.
                let (qr, s) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(qp.get().add(r * k), k),
                        &mut *sp.get().add(r),
                    )
                };
                *s = quantize_row_int8(&x[r * k..(r + 1) * k], qr);
            }
        });
}

/// `bitlinear` on the host.
pub(crate) struct BitLinearCmd {
    pub input: Arc<HostBuffer>,
    pub weight: Arc<HostBuffer>,
    pub out: Arc<HostBuffer>,
    /// Activation rows (tokens).
    pub rows: usize,
    pub k: usize,
    pub n: usize,
    pub weight_scale: f32,
    /// Per-output scales (Float32 `[n]`) replacing `weight_scale` when present.
    pub weight_scales: Option<Arc<HostBuffer>>,
    pub mode: WeightScaleMode,
    /// The input decoded to f32 (capacity reserved unless it is f32).
    pub sx: Vec<f32>,
    /// Quantized activations, `rows * k` (capacity reserved).
    pub q: Vec<i8>,
    /// Per-row scales `s` (capacity reserved).
    pub scales: Vec<f32>,
    /// The output in f32 before rounding (capacity reserved unless the output is f32).
    pub so: Vec<f32>,
}

impl HostCommand for BitLinearCmd {
    fn run(&mut self, ctx: &HostCtx<'_>) -> Result<()> {
        let (rows, k, n) = (self.rows, self.k, self.n);
        let gi = self.input.read();
        let x = read_f32(&gi, &mut self.sx);
        self.q.clear();
        self.q.resize(rows * k, 0);
        self.scales.clear();
        self.scales.resize(rows, 0.0);
        quantize_rows(ctx, x, k, &mut self.q, &mut self.scales);
        drop(gi);
        let gw = self.weight.read();
        let w = match &*gw {
            HostData::Ternary(t) => t,
            other => {
                return Err(Error::Backend {
                    op: "ttnn::experimental::bitlinear",
                    backend: "host",
                    message: format!("the weight holds {:?}, not ternary storage", other.dtype()),
                });
            }
        };
        let (q, scales) = (&self.q[..], &self.scales[..]);
        let (ws, mode) = (self.weight_scale, self.mode);
        let gscales = self.weight_scales.as_ref().map(|b| b.read());
        let per_channel: Option<&[f32]> = match gscales.as_deref() {
            Some(HostData::F32(v)) => Some(v),
            Some(_) => unreachable!("validated: weight_scales is Float32"),
            None => None,
        };
        let mut out = self.out.write();
        write_f32(&mut out, rows * n, &mut self.so, |o| {
            let op = SendPtr(o.as_mut_ptr());
            let kernel = |range: std::ops::Range<usize>| {
                for j in range {
                    let w_row = w.row(j);
                    let ws = per_channel.map_or(ws, |v| v[j]);
                    for (r, &s) in scales.iter().enumerate() {
                        let acc = dot_i8_ternary(&q[r * k..(r + 1) * k], w_row);
                        // SAFETY: r < rows and j < n, so r * n + j < rows * n == o.len(); each
                        // output column j belongs to one task, so tasks write disjoint elements;
                        // `o` outlives the parallel region.
                        unsafe { *op.get().add(r * n + j) = dequant(acc, s, ws, mode) };
                    }
                }
            };
            let work = rows * k * n;
            let threads = ctx.pool.num_threads();
            if threads == 1 || work < PAR_MIN_WORK {
                kernel(0..n);
            } else {
                let tasks = (work / TASK_MIN_WORK).clamp(1, threads * 4).min(n);
                ctx.pool.for_ranges(n, tasks, &kernel);
            }
        });
        Ok(())
    }
}

/// `quantize_activations_int8` on the host: the int8 codes (stored as Int32) and the scales.
pub(crate) struct QuantizeCmd {
    pub input: Arc<HostBuffer>,
    pub q_out: Arc<HostBuffer>,
    pub s_out: Arc<HostBuffer>,
    pub rows: usize,
    pub k: usize,
    /// The input decoded to f32 (capacity reserved unless it is f32).
    pub sx: Vec<f32>,
    /// One quantized row (capacity `k`).
    pub qrow: Vec<i8>,
}

impl HostCommand for QuantizeCmd {
    fn run(&mut self, _ctx: &HostCtx<'_>) -> Result<()> {
        let (rows, k) = (self.rows, self.k);
        let gi = self.input.read();
        let x = read_f32(&gi, &mut self.sx);
        let mut gq = self.q_out.write();
        let mut gs = self.s_out.write();
        let (HostData::I32(q), HostData::F32(s)) = (&mut *gq, &mut *gs) else {
            return Err(Error::Backend {
                op: "ttnn::experimental::quantize_activations_int8",
                backend: "host",
                message: "outputs are not Int32 / Float32 storage".into(),
            });
        };
        self.qrow.clear();
        self.qrow.resize(k, 0);
        for r in 0..rows {
            s[r] = quantize_row_int8(&x[r * k..(r + 1) * k], &mut self.qrow);
            for (d, &v) in q[r * k..(r + 1) * k].iter_mut().zip(&self.qrow) {
                *d = v as i32;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::ternary::TernaryData;

    #[test]
    fn quantize_rounds_half_to_even_and_clamps_absmax() {
        // absmax 127 -> s = 1 exactly, so x * s = x and the ties are exact.
        let x = [127.0f32, 2.5, 3.5, -2.5, 0.5, -0.5, 1.5, -126.5];
        let mut q = [0i8; 8];
        let s = quantize_row_int8(&x, &mut q);
        assert_eq!(s, 1.0);
        assert_eq!(q, [127, 2, 4, -2, 0, 0, 2, -126]);
        let mut q = [1i8; 3];
        let s = quantize_row_int8(&[0.0; 3], &mut q);
        assert_eq!(s, 1.27e7);
        assert_eq!(q, [0; 3]);
    }

    #[test]
    fn scale_is_torch_reciprocal_times_127() {
        // torch: 127 / 1.5 as `reciprocal(1.5) * 127` = 84.66667175 (0x42a95556), whereas the
        // correctly rounded quotient is 84.66666412 (0x42a95555).
        let mut q = [0i8; 2];
        let s = quantize_row_int8(&[1.5, -0.5], &mut q);
        assert_eq!(s.to_bits(), 0x42a9_5556);
        assert_ne!(s, 127.0f32 / 1.5);
    }

    #[test]
    fn ternary_dot_matches_unpacked() {
        let mut seed = 11u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        for k in [1usize, 3, 4, 5, 31, 64, 67] {
            let t: Vec<i8> = (0..k).map(|_| (next() % 3) as i8 - 1).collect();
            let q: Vec<i8> = (0..k).map(|_| (next() % 256) as i64 as i8).collect();
            let packed = TernaryData::pack(&t, 1, k);
            let want: i32 = t.iter().zip(&q).map(|(&a, &b)| a as i32 * b as i32).sum();
            assert_eq!(dot_i8_ternary(&q, packed.row(0)), want, "k={k}");
        }
    }
}
