//! Host kernels for `rms_norm`.

use std::sync::Arc;

use super::eltwise::SendPtr;
use super::{PAR_THRESHOLD, read_f32, write_f32};
use crate::device::HostIsa;
use crate::error::Result;
use crate::host::data::HostData;
use crate::host::{HostBuffer, HostCommand, HostCtx};

/// Partial sums of squares in [`rms_norm_row`]: four AVX-512 registers of f64.
const NORM_LANES: usize = 32;

/// [`rms_norm_row`] compiled for the ISA's vectors: the f64 lanes are four AVX-512 registers
/// (eight AVX2 ones), and each lane adds the same values in the same order, so the bits are
/// the same. Without them (SSE2 only) it was a quarter of a decode bitlinear's
/// activation side: 0.7 us per 2560-value row.
#[inline]
pub(crate) fn rms_norm_row_isa(
    isa: HostIsa,
    x: &[f32],
    residual: Option<&[f32]>,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the device selects Avx512Vnni only after detecting AVX-512 F (and VNNI).
        HostIsa::Avx512Vnni => unsafe { rms_norm_row_avx512(x, residual, gamma, beta, eps, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the device selects Avx2 only after detecting AVX2.
        HostIsa::Avx2 => unsafe { rms_norm_row_avx2(x, residual, gamma, beta, eps, out) },
        _ => rms_norm_row(x, residual, gamma, beta, eps, out),
    }
}

/// [`rms_norm_row`] compiled with `$features`.
macro_rules! rms_norm_row_for {
    ($(#[$doc:meta])* $name:ident, $features:literal) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(
            x: &[f32],
            residual: Option<&[f32]>,
            gamma: Option<&[f32]>,
            beta: Option<&[f32]>,
            eps: f32,
            out: &mut [f32],
        ) {
            rms_norm_row(x, residual, gamma, beta, eps, out)
        }
    };
}

rms_norm_row_for!(
    /// # Safety
    /// The CPU must support AVX-512 F.
    rms_norm_row_avx512,
    "avx512f"
);
rms_norm_row_for!(
    /// # Safety
    /// The CPU must support AVX2.
    rms_norm_row_avx2,
    "avx2"
);

/// Normalizes one row: `out = gamma * (x * rsqrt(mean(x^2) + eps)) + beta`, with
/// `x = input + residual`. The arithmetic is a fixed sequence per row (squares rounded to f32 as
/// torch's `pow(2)` does, summed in f64 in [`NORM_LANES`] lanes), so rows are batch- and
/// thread-invariant.
/// Inlined into each ISA's build ([`rms_norm_row_isa`]).
#[inline(always)]
pub(crate) fn rms_norm_row(
    x: &[f32],
    residual: Option<&[f32]>,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) {
    let n = x.len();
    // The residual sum goes to `out` first so that it is computed once; without one the
    // values are read from `x` (no copy pass).
    let src: &[f32] = match residual {
        Some(r) => {
            for ((o, &a), &b) in out.iter_mut().zip(x).zip(r) {
                *o = a + b;
            }
            out
        }
        None => x,
    };
    // NORM_LANES f64 partial sums (element i to lane i mod NORM_LANES), folded in halves at the
    // end: a fixed order for every caller and ISA, so the rows stay batch invariant and the
    // vector builds give the same bits. One serial chain of f64 adds was most of a decode
    // step's activation quantization (~3 us per 2560-value row).
    let mut lanes = [0f64; NORM_LANES];
    let mut chunks = src.chunks_exact(NORM_LANES);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f64::from(v * v);
        }
    }
    for (l, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *l += f64::from(v * v);
    }
    let mut width = NORM_LANES / 2;
    while width > 0 {
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
        width /= 2;
    }
    let sum = lanes[0];
    let mean = (sum / n as f64) as f32;
    let inv = 1.0 / (mean + eps).sqrt();
    // In place when `out` already holds the residual sum, else from `x`.
    match (residual.is_some(), gamma) {
        (true, Some(g)) => {
            for (o, &w) in out.iter_mut().zip(g) {
                *o = w * (*o * inv);
            }
        }
        (true, None) => {
            for o in out.iter_mut() {
                *o *= inv;
            }
        }
        (false, Some(g)) => {
            for ((o, &w), &v) in out.iter_mut().zip(g).zip(x) {
                *o = w * (v * inv);
            }
        }
        (false, None) => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = v * inv;
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
                    rms_norm_row_isa(
                        ctx.isa,
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

    proptest::proptest! {
        /// Every ISA's build gives the reference's bits, for any length (whole lane groups or
        /// not), with and without residual, gamma and beta.
        #[test]
        fn every_isa_matches_the_reference_bits(
            x in proptest::collection::vec(-1e4f32..1e4, 0..300),
            seed in 0u32..1000,
            parts in 0u8..8,
        ) {
            let n = x.len();
            let other = |k: u32| -> Vec<f32> {
                (0..n).map(|i| ((i as u32 * 7919 + seed * k) % 2001) as f32 / 1000.0 - 1.0).collect()
            };
            let (r, g, b) = (other(1), other(2), other(3));
            let pick = |bit: u8, v: &[f32]| (parts & bit != 0).then_some(v.to_vec());
            let (r, g, b) = (pick(1, &r), pick(2, &g), pick(4, &b));
            let mut want = vec![0f32; n];
            rms_norm_row(&x, r.as_deref(), g.as_deref(), b.as_deref(), 1e-5, &mut want);
            for isa in HostIsa::supported_list() {
                let mut got = vec![0f32; n];
                rms_norm_row_isa(isa, &x, r.as_deref(), g.as_deref(), b.as_deref(), 1e-5, &mut got);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                proptest::prop_assert_eq!(bits(&got), bits(&want), "{:?}", isa);
            }
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
