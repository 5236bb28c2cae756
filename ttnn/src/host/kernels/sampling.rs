//! Host kernels for token selection: argmax, top-k, sampling, plus_one.

use std::sync::Arc;

use super::read_f32;
use crate::device::HostIsa;
use crate::error::{Error, Result};
use crate::host::data::HostData;
use crate::host::{HostBuffer, HostCommand, HostCtx};

/// Index of the first maximum of `row`, NaNs ignored (0 for an all-NaN row).
fn argmax_row(row: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    let mut seen = false;
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if !seen || v > best_v {
            best = i;
            best_v = v;
            seen = true;
        }
    }
    best
}

/// [`argmax_row`] on the ISA's vectors: the maximum of the non-NaN values (`vmaxps` returns
/// its second operand when the first is NaN), then the first index holding a value equal to
/// it, which is the reference's answer (ties and +-0 compare equal; an all-NaN row has none:
/// index 0). One value at a time it was 135 us of every decode step over 128256 logits.
fn argmax_row_isa(isa: HostIsa, row: &[f32]) -> usize {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the device only selects Avx2/Avx512Vnni after detecting AVX2.
        HostIsa::Avx2 | HostIsa::Avx512Vnni => unsafe { x86::argmax_row_avx2(row) },
        _ => argmax_row(row),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn argmax_row_avx2(row: &[f32]) -> usize {
        let n32 = row.len() / 32 * 32;
        let p = row.as_ptr();
        let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
        // Four running maxima (max is exact in any order); NaN lanes keep the running value.
        let (mut m0, mut m1, mut m2, mut m3) = (neg_inf, neg_inf, neg_inf, neg_inf);
        for i in (0..n32).step_by(32) {
            // SAFETY: i + 32 <= n32 <= row.len().
            unsafe {
                m0 = _mm256_max_ps(_mm256_loadu_ps(p.add(i)), m0);
                m1 = _mm256_max_ps(_mm256_loadu_ps(p.add(i + 8)), m1);
                m2 = _mm256_max_ps(_mm256_loadu_ps(p.add(i + 16)), m2);
                m3 = _mm256_max_ps(_mm256_loadu_ps(p.add(i + 24)), m3);
            }
        }
        let m = _mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3));
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 values.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        // No lane is NaN: each started at -inf and only takes non-NaN values.
        let best = row[n32..]
            .iter()
            .chain(&lanes)
            .filter(|v| !v.is_nan())
            .fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        let target = _mm256_set1_ps(best);
        for i in (0..n32).step_by(8) {
            // SAFETY: i + 8 <= n32 <= row.len().
            let eq = unsafe { _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_loadu_ps(p.add(i)), target) };
            let mask = _mm256_movemask_ps(eq);
            if mask != 0 {
                return i + mask.trailing_zeros() as usize;
            }
        }
        row[n32..]
            .iter()
            .position(|&v| v == best)
            .map_or(0, |j| n32 + j)
    }
}

pub(crate) struct ArgmaxCmd {
    pub input: Arc<HostBuffer>,
    pub out: Arc<HostBuffer>,
    pub rows: usize,
    pub width: usize,
    pub scratch: Vec<f32>,
}

impl HostCommand for ArgmaxCmd {
    fn run(&mut self, ctx: &HostCtx<'_>) -> Result<()> {
        let g = self.input.read();
        let mut out = self.out.write();
        let HostData::U32(o) = &mut *out else {
            unreachable!("argmax output is Uint32")
        };
        match &*g {
            // Integer inputs compare exactly (no f32 rounding of large values).
            HostData::I32(v) => argmax_ints(v, self.width, o),
            HostData::U32(v) => argmax_ints(v, self.width, o),
            HostData::U16(v) => argmax_ints(v, self.width, o),
            other => {
                let x = read_f32(other, &mut self.scratch);
                for r in 0..self.rows {
                    o[r] = argmax_row_isa(ctx.isa, &x[r * self.width..(r + 1) * self.width]) as u32;
                }
            }
        }
        Ok(())
    }
}

fn argmax_ints<T: Copy + PartialOrd>(v: &[T], width: usize, out: &mut [u32]) {
    for (o, row) in out.iter_mut().zip(v.chunks_exact(width)) {
        let mut best = 0;
        for (i, x) in row.iter().enumerate() {
            if *x > row[best] {
                best = i;
            }
        }
        *o = best as u32;
    }
}

/// Keeps the `k` best `(value, index)` of `row` in `best` (sorted best first; ties keep the lower
/// index first). `best` must have capacity `k` (`row.len()` when `k > 64`); it is cleared first.
pub(crate) fn topk_row(row: &[f32], k: usize, largest: bool, best: &mut Vec<(f32, u32)>) {
    best.clear();
    // `a` ranks before `b`.
    let better = |a: (f32, u32), b: (f32, u32)| {
        let (va, vb) = if largest { (a.0, b.0) } else { (-a.0, -b.0) };
        // NaN ranks last.
        match (va.is_nan(), vb.is_nan()) {
            (false, true) => true,
            (true, false) => false,
            (true, true) => a.1 < b.1,
            _ => va > vb || (va == vb && a.1 < b.1),
        }
    };
    if k > 64 {
        // Many winners: sort everything instead of inserting (unstable sort does not allocate;
        // the index tie-break makes the order total, so the result is still deterministic).
        best.extend(row.iter().enumerate().map(|(i, &v)| (v, i as u32)));
        best.sort_unstable_by(|&a, &b| {
            if better(a, b) {
                std::cmp::Ordering::Less
            } else if better(b, a) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        best.truncate(k);
        return;
    }
    for (i, &v) in row.iter().enumerate() {
        let cand = (v, i as u32);
        if best.len() == k {
            let worst = best[k - 1];
            if !better(cand, worst) {
                continue;
            }
            best.pop();
        }
        // Insert keeping order; indices arrive increasing, so equal values stay index-ordered.
        let pos = best
            .iter()
            .position(|&b| better(cand, b))
            .unwrap_or(best.len());
        best.insert(pos, cand);
    }
}

pub(crate) struct TopkCmd {
    pub input: Arc<HostBuffer>,
    pub index_source: Option<Arc<HostBuffer>>,
    pub values: Arc<HostBuffer>,
    pub indices: Arc<HostBuffer>,
    pub rows: usize,
    pub width: usize,
    pub k: usize,
    pub largest: bool,
    pub scratch_in: Vec<f32>,
    pub best: Vec<(f32, u32)>,
    pub out_vals: Vec<f32>,
}

fn index_at(src: &HostData, i: usize) -> i64 {
    match src {
        HostData::U32(v) => v[i] as i64,
        HostData::I32(v) => v[i] as i64,
        HostData::U16(v) => v[i] as i64,
        HostData::U8(v) => v[i] as i64,
        _ => i as i64,
    }
}

fn store_index(dst: &mut HostData, i: usize, v: i64) {
    match dst {
        HostData::U32(d) => d[i] = v as u32,
        HostData::I32(d) => d[i] = v as i32,
        HostData::U16(d) => d[i] = v as u16,
        HostData::U8(d) => d[i] = v as u8,
        _ => {}
    }
}

impl HostCommand for TopkCmd {
    fn run(&mut self, _ctx: &HostCtx<'_>) -> Result<()> {
        let g = self.input.read();
        let x = read_f32(&g, &mut self.scratch_in);
        let src = self.index_source.as_ref().map(|b| b.read());
        let mut idx_out = self.indices.write();
        self.out_vals.clear();
        self.out_vals.resize(self.rows * self.k, 0.0);
        for r in 0..self.rows {
            let row = &x[r * self.width..(r + 1) * self.width];
            topk_row(row, self.k, self.largest, &mut self.best);
            for (j, &(v, i)) in self.best.iter().enumerate() {
                self.out_vals[r * self.k + j] = v;
                let id = match &src {
                    Some(s) => index_at(s, r * self.width + i as usize),
                    None => i as i64,
                };
                store_index(&mut idx_out, r * self.k + j, id);
            }
        }
        self.values.write().store_f32(&self.out_vals);
        Ok(())
    }
}

/// SplitMix64 finaliser: a counter-based hash, so draws need no stored RNG state.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1) from (seed, counter).
#[inline]
pub(crate) fn uniform(seed: u64, counter: u64) -> f32 {
    let h = mix64(mix64(seed) ^ counter);
    (h >> 40) as f32 / (1u64 << 24) as f32
}

pub(crate) struct SamplingCmd {
    pub values: Arc<HostBuffer>,
    pub indices: Arc<HostBuffer>,
    pub k: Arc<HostBuffer>,
    pub p: Arc<HostBuffer>,
    pub temp: Arc<HostBuffer>,
    pub seeds: Option<Arc<HostBuffer>>,
    pub offsets: Option<Arc<HostBuffer>>,
    pub out: Arc<HostBuffer>,
    pub seed: u32,
    /// Calls so far: the counter when no per-user offsets are given.
    pub calls: u64,
    pub users: usize,
    pub width: usize,
    pub scratch_vals: Vec<f32>,
    pub scratch_p: Vec<f32>,
    pub scratch_t: Vec<f32>,
    pub order: Vec<(f32, u32)>,
    pub probs: Vec<f32>,
}

/// Chooses a position among `order` (candidates best first, as (logit, position)) for one
/// user; see `ops::sampling::sampling` for the rule.
pub(crate) fn sample_row(
    order: &[(f32, u32)],
    temp: f32,
    p: f32,
    r: f32,
    probs: &mut Vec<f32>,
) -> usize {
    probs.clear();
    let max = order[0].0 * temp;
    let mut sum = 0f64;
    for &(v, _) in order {
        let e = ((v * temp - max) as f64).exp();
        sum += e;
        probs.push(e as f32);
    }
    // Top-p: keep up to and including the first candidate where the cumulative mass exceeds p.
    let mut keep = order.len();
    let mut cum = 0f64;
    for (i, &e) in probs.iter().enumerate() {
        cum += e as f64 / sum;
        if cum > p as f64 {
            keep = i + 1;
            break;
        }
    }
    let kept: f64 = probs[..keep].iter().map(|&e| e as f64).sum();
    let mut acc = 0f64;
    for (i, &e) in probs[..keep].iter().enumerate() {
        acc += e as f64 / kept;
        if acc > r as f64 {
            return i;
        }
    }
    keep - 1
}

fn int_at(d: &HostData, i: usize) -> i64 {
    match d {
        HostData::U32(v) => v[i] as i64,
        HostData::I32(v) => v[i] as i64,
        _ => 0,
    }
}

impl HostCommand for SamplingCmd {
    fn run(&mut self, _ctx: &HostCtx<'_>) -> Result<()> {
        let vg = self.values.read();
        let vals = read_f32(&vg, &mut self.scratch_vals);
        let ig = self.indices.read();
        let kg = self.k.read();
        let pg = self.p.read();
        let p = read_f32(&pg, &mut self.scratch_p);
        let tg = self.temp.read();
        let t = read_f32(&tg, &mut self.scratch_t);
        let seeds = self.seeds.as_ref().map(|b| b.read());
        let offsets = self.offsets.as_ref().map(|b| b.read());
        let mut out = self.out.write();
        for u in 0..self.users {
            let row = &vals[u * self.width..(u + 1) * self.width];
            let k = int_at(&kg, u);
            let k = if k <= 0 {
                self.width
            } else {
                (k as usize).min(self.width)
            };
            topk_row(row, k, true, &mut self.order);
            let seed = match &seeds {
                Some(s) => int_at(s, u) as u64,
                None => ((self.seed as u64) << 32) | u as u64,
            };
            let counter = match &offsets {
                Some(o) => int_at(o, u) as u64,
                None => self.calls,
            };
            let r = uniform(seed, counter);
            let pick = sample_row(&self.order, t[u], p[u], r, &mut self.probs);
            let pos = self.order[pick].1 as usize;
            let id = index_at(&ig, u * self.width + pos);
            if id < 0 {
                return Err(Error::arg(
                    "ttnn::sampling",
                    format!("candidate index {id} of user {u} is negative"),
                ));
            }
            store_index(&mut out, u, id);
        }
        self.calls += 1;
        Ok(())
    }
}

pub(crate) struct PlusOneCmd {
    pub buf: Arc<HostBuffer>,
    pub skip_negative_entries: bool,
}

impl HostCommand for PlusOneCmd {
    fn run(&mut self, _ctx: &HostCtx<'_>) -> Result<()> {
        let skip = self.skip_negative_entries;
        match &mut *self.buf.write() {
            HostData::I32(v) => v.iter_mut().for_each(|x| {
                if !skip || (0..i32::MAX).contains(x) {
                    *x = x.wrapping_add(1);
                }
            }),
            HostData::U32(v) => v.iter_mut().for_each(|x| {
                if !skip || *x < i32::MAX as u32 {
                    *x = x.wrapping_add(1);
                }
            }),
            _ => unreachable!("validated: Int32 or Uint32"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Every ISA's argmax is the reference's: the first maximum, NaNs ignored, ties and
        /// +-0 to the lower index, infinities, an all-NaN row (0), any length.
        #[test]
        fn every_isa_argmax_is_the_reference(
            v in proptest::collection::vec(-1000i16..1000, 0..150),
            ties in proptest::bool::ANY,
            specials in proptest::collection::vec((0usize..150, 0u8..5), 0..24),
        ) {
            // Mostly distinct values (a lost maximum shows), or few values (ties everywhere).
            let scale = |x: i16| if ties { f32::from(x % 4) * 0.5 } else { f32::from(x) * 0.01 };
            let mut row: Vec<f32> = v.iter().map(|&x| scale(x)).collect();
            for (at, kind) in specials {
                if let Some(x) = row.get_mut(at) {
                    *x = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0][kind as usize];
                }
            }
            let want = argmax_row(&row);
            for isa in HostIsa::supported_list() {
                proptest::prop_assert_eq!(argmax_row_isa(isa, &row), want, "{:?}", isa);
            }
            let nan = vec![f32::NAN; row.len()];
            for isa in HostIsa::supported_list() {
                proptest::prop_assert_eq!(argmax_row_isa(isa, &nan), 0, "{:?}", isa);
            }
        }
    }

    /// A NaN after the maximum in the same vector lane must not hide it.
    #[test]
    fn argmax_keeps_a_maximum_before_a_nan() {
        for at in [0usize, 5, 31, 40] {
            let mut row = vec![0f32; 128];
            row[at] = 100.0;
            row[at + 32] = f32::NAN;
            row[at + 64] = 1.0;
            for isa in HostIsa::supported_list() {
                assert_eq!(argmax_row_isa(isa, &row), at, "{isa:?}");
            }
        }
    }

    #[test]
    fn topk_ties_keep_lower_index() {
        let mut best = Vec::with_capacity(3);
        topk_row(&[1.0, 3.0, 3.0, f32::NAN, 2.0, 3.0], 3, true, &mut best);
        assert_eq!(best.iter().map(|b| b.1).collect::<Vec<_>>(), vec![1, 2, 5]);
        topk_row(&[1.0, 3.0, -1.0, -1.0], 2, false, &mut best);
        assert_eq!(best.iter().map(|b| b.1).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn greedy_when_p_is_zero() {
        let order = [(5.0, 7), (4.0, 3), (1.0, 9)];
        let mut probs = Vec::new();
        for r in [0.0, 0.5, 0.999] {
            assert_eq!(sample_row(&order, 1.0, 0.0, r, &mut probs), 0);
        }
    }

    #[test]
    fn draws_follow_the_distribution() {
        // Two candidates with logits ln(3) and 0: probabilities 3/4 and 1/4.
        let order = [(3f32.ln(), 0), (0.0, 1)];
        let mut probs = Vec::new();
        let n = 20000;
        let firsts = (0..n)
            .filter(|&c| sample_row(&order, 1.0, 1.0, uniform(42, c), &mut probs) == 0)
            .count();
        let frac = firsts as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }
}
