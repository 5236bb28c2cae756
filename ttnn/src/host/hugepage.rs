//! Transparent huge pages for large weight buffers.
//!
//! A decode step streams the weights once: with 4 KiB pages that is a TLB miss (and a page
//! walk) every 4 KiB, and the hardware prefetchers restart at each page boundary. On Linux
//! with THP in `madvise` mode (the common default), a buffer's whole 2 MiB pages can be backed
//! by huge pages if it asks before its pages are first touched. Measured on the 2B-4T shape
//! with 1 thread (`bitnet bench --profile-ops`, alternating binaries), the bfp8_b lm_head
//! (349 MB) took 14.0-14.7 ms per token with huge pages against 17.5-19.0 without; in a later,
//! noisier comparison 13.2-16.7 against 15.5-17.9. The ternary weights are not advised:
//! each is its own buffer of 1.4-3.7 MB, which holds at most one whole huge page, and advising
//! them showed no difference.

/// Bytes of a transparent huge page on x86-64 and most aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the whole 2 MiB pages inside `v` with huge pages. Only the aligned
/// interior is advised, so memory use is unchanged (no page is rounded up). Call it on a
/// fresh, untouched allocation (`vec![0; n]` of this size comes zeroed from `mmap`, untouched):
/// pages already present are left as they are. Advice only: a kernel without THP, or with it
/// off, ignores it, and other systems have nothing to do.
pub(crate) fn advise_huge_pages<T>(v: &[T]) {
    let start = v.as_ptr() as usize;
    let end = start + std::mem::size_of_val(v);
    let (a, b) = (
        start.next_multiple_of(HUGE_PAGE),
        end / HUGE_PAGE * HUGE_PAGE,
    );
    if b <= a {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: `[a, b)` lies inside `v`'s allocation, which is live for the call; MADV_HUGEPAGE
    // changes only how the kernel backs the range, never its contents or validity. The result
    // is ignored: the advice is optional.
    unsafe {
        libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_HUGEPAGE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advising_keeps_contents_and_tolerates_any_size() {
        for n in [0usize, 1, 4095, HUGE_PAGE + 17, 3 * HUGE_PAGE] {
            let mut v = vec![0u8; n];
            advise_huge_pages(&v);
            for (i, x) in v.iter_mut().enumerate() {
                *x = i as u8;
            }
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as u8));
        }
    }
}
