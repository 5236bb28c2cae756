//! Whole-row bf16 <-> f32 conversions, eight values at a time where the CPU has AVX2, with
//! `half`'s bits: widening is exact; narrowing rounds to nearest even, carries up to infinity,
//! and keeps a NaN's top bits with the quiet bit set. Every bf16 activation of a decode step
//! passes through these at least twice (an op reads its input as f32 and stores its output as
//! bf16); one value at a time they were a few tenths of a microsecond per 2560-value row.

use half::bf16;

use crate::device::HostIsa;

/// Rounds each value to bf16 precision in place, as `half::bf16::from_f32(v).to_f32()`.
pub(crate) fn round_bf16(v: &mut [f32]) {
    for x in v {
        *x = bf16::from_f32(*x).to_f32();
    }
}

/// [`round_bf16`] by the ISA's kernel.
pub(crate) fn round_bf16_isa(isa: HostIsa, v: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the device only selects Avx2/Avx512Vnni after detecting AVX2.
        HostIsa::Avx2 | HostIsa::Avx512Vnni => unsafe { x86::round_bf16_avx2(v) },
        _ => round_bf16(v),
    }
}

/// Whether this CPU runs the AVX2 conversions (checked once by std, then an atomic load).
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// `dst` becomes `src` widened to f32 (no allocation within `dst`'s capacity).
pub(crate) fn bf16_to_f32(src: &[bf16], dst: &mut Vec<f32>) {
    if dst.len() != src.len() {
        // Every value is overwritten below: only a length change needs the fill.
        dst.clear();
        dst.resize(src.len(), 0.0);
    }
    bf16_to_f32_slice(src, dst);
}

/// `dst[i] = src[i].to_f32()` over the shorter of the two.
pub(crate) fn bf16_to_f32_slice(src: &[bf16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 was detected; both slices hold `n` values.
        unsafe { x86::widen_avx2(&src[..n], &mut dst[..n]) };
        return;
    }
    for (d, s) in dst[..n].iter_mut().zip(&src[..n]) {
        *d = s.to_f32();
    }
}

/// `dst[i] = bf16::from_f32(src[i])` over the shorter of the two.
pub(crate) fn f32_to_bf16(src: &[f32], dst: &mut [bf16]) {
    let n = src.len().min(dst.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 was detected; both slices hold `n` values.
        unsafe { x86::narrow_avx2(&src[..n], &mut dst[..n]) };
        return;
    }
    for (d, &s) in dst[..n].iter_mut().zip(&src[..n]) {
        *d = bf16::from_f32(s);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::bf16;

    /// Eight f32 bit patterns rounded to bf16, in the top 16 bits of each lane (the low bits
    /// zero): `x + 0x7fff + lsb`, cut to the top half, is round-to-nearest-even (carrying into
    /// the exponent, up to infinity); a NaN keeps its top bits with the quiet bit set.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn round8(x: __m256i) -> __m256i {
        let (abs, inf) = (
            _mm256_set1_epi32(0x7fff_ffff),
            _mm256_set1_epi32(0x7f80_0000),
        );
        let (half_ulp, one) = (_mm256_set1_epi32(0x7fff), _mm256_set1_epi32(1));
        let (top, quiet) = (
            _mm256_set1_epi32(0xffff_0000u32 as i32),
            _mm256_set1_epi32(0x40_0000),
        );
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(x), one);
        let rounded = _mm256_add_epi32(_mm256_add_epi32(x, half_ulp), lsb);
        // Signed compare is right here: both sides are below 2^31.
        let nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, abs), inf);
        let r = _mm256_blendv_epi8(rounded, _mm256_or_si256(x, quiet), nan);
        _mm256_and_si256(r, top)
    }

    /// [`super::round_bf16`], eight values at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn round_bf16_avx2(v: &mut [f32]) {
        let n8 = v.len() / 8 * 8;
        for i in (0..n8).step_by(8) {
            // SAFETY: i + 8 <= n8 <= v.len().
            unsafe {
                let p = v.as_mut_ptr().add(i).cast::<__m256i>();
                _mm256_storeu_si256(p, round8(_mm256_loadu_si256(p)));
            }
        }
        super::round_bf16(&mut v[n8..]);
    }

    /// [`super::f32_to_bf16`], sixteen values at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2; `dst.len() >= src.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn narrow_avx2(src: &[f32], dst: &mut [bf16]) {
        assert!(
            dst.len() >= src.len(),
            "bf16 destination shorter than the source"
        );
        let n16 = src.len() / 16 * 16;
        for i in (0..n16).step_by(16) {
            // SAFETY: i + 16 <= n16 <= src.len() <= dst.len(); bf16 is 2 plain bytes.
            unsafe {
                let s = src.as_ptr().add(i).cast::<__m256i>();
                let a = _mm256_srli_epi32::<16>(round8(_mm256_loadu_si256(s)));
                let b = _mm256_srli_epi32::<16>(round8(_mm256_loadu_si256(s.add(1))));
                // The packs work per 128-bit half (a0-3 b0-3 a4-7 b4-7): the permute restores
                // the order. Every value is below 2^16, so the unsigned saturation is exact.
                let p = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(a, b));
                _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), p);
            }
        }
        for (d, &s) in dst[n16..src.len()].iter_mut().zip(&src[n16..]) {
            *d = bf16::from_f32(s);
        }
    }

    /// [`super::bf16_to_f32`] into `dst` (as long as `src`), eight values at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2; `dst.len() >= src.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn widen_avx2(src: &[bf16], dst: &mut [f32]) {
        assert!(
            dst.len() >= src.len(),
            "f32 destination shorter than the source"
        );
        let n8 = src.len() / 8 * 8;
        for i in (0..n8).step_by(8) {
            // SAFETY: i + 8 <= n8 <= src.len() <= dst.len(); bf16 is 2 plain bytes.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
                let w = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
                _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), w);
            }
        }
        for (d, s) in dst[n8..src.len()].iter_mut().zip(&src[n8..]) {
            *d = s.to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The vector bf16 rounding gives `half`'s bits for any f32 bit pattern (NaNs,
        /// infinities, subnormals, ties, overflow to infinity) and any length, in place and
        /// into bf16 storage; widening back gives `half`'s f32.
        #[test]
        fn conversions_match_half(
            bits in proptest::collection::vec(proptest::prelude::any::<u32>(), 0..40),
            ties in proptest::collection::vec(0u32..0x8000, 0..8),
        ) {
            let mut v: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
            // Exact ties (low half 0x8000) with even and odd kept parts, and the largest
            // finite values, which round up to infinity.
            v.extend(ties.iter().map(|&t| f32::from_bits((t << 17) | 0x8000)));
            v.extend(ties.iter().map(|&t| f32::from_bits((t << 17) | 0x1_8000)));
            v.extend([f32::MAX, -f32::MAX, f32::INFINITY, f32::NAN, -0.0]);
            let b = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let mut want = v.clone();
            round_bf16(&mut want);
            for isa in HostIsa::supported_list() {
                let mut got = v.clone();
                round_bf16_isa(isa, &mut got);
                proptest::prop_assert_eq!(b(&got), b(&want), "{:?}", isa);
            }
            let want16: Vec<u16> = v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
            // One slot more than the source: it must stay untouched.
            let mut got16 = vec![bf16::from_bits(0x1234); v.len() + 1];
            f32_to_bf16(&v, &mut got16);
            let bits16: Vec<u16> = got16.iter().map(|h| h.to_bits()).collect();
            proptest::prop_assert_eq!(&bits16[..v.len()], &want16[..]);
            proptest::prop_assert_eq!(bits16[v.len()], 0x1234);
            let mut wide = vec![7.0f32; 3];
            bf16_to_f32(&got16[..v.len()], &mut wide);
            let want_wide: Vec<f32> = got16[..v.len()].iter().map(|h| h.to_f32()).collect();
            proptest::prop_assert_eq!(b(&wide), b(&want_wide));
        }
    }
}
