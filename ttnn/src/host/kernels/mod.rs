//! Host kernels and the commands that run them. Each command owns its buffers and scratch, so
//! running it (eagerly or from a trace) allocates nothing.

pub(crate) mod attention;
pub(crate) mod bitlinear;
pub(crate) mod convert;
pub(crate) mod data_movement;
pub(crate) mod dense_dot;
pub(crate) mod eltwise;
pub(crate) mod embedding;
pub(crate) mod kv_cache;
pub(crate) mod matmul;
pub(crate) mod norm;
pub(crate) mod reduction;
pub(crate) mod rotary;
pub(crate) mod sampling;
pub(crate) mod ternary_dot;
pub(crate) mod ternary_lut;

use super::data::HostData;

/// `d` as f32 values: borrowed for f32 storage, decoded into `scratch` otherwise (no allocation
/// once `scratch` has the capacity, which commands reserve when they are built).
pub(crate) fn read_f32<'a>(d: &'a HostData, scratch: &'a mut Vec<f32>) -> &'a [f32] {
    match d {
        HostData::F32(v) => v,
        HostData::Bf16(v) => {
            convert::bf16_to_f32(v, scratch);
            scratch
        }
        HostData::Block(b) => {
            scratch.clear();
            scratch.resize(b.rows * b.row_len, 0.0);
            for r in 0..b.rows {
                b.decode_row(r, &mut scratch[r * b.row_len..(r + 1) * b.row_len]);
            }
            scratch
        }
        other => {
            scratch.clear();
            match other {
                HostData::U32(v) => scratch.extend(v.iter().map(|&x| x as f32)),
                HostData::I32(v) => scratch.extend(v.iter().map(|&x| x as f32)),
                HostData::U16(v) => scratch.extend(v.iter().map(|&x| x as f32)),
                HostData::U8(v) => scratch.extend(v.iter().map(|&x| x as f32)),
                HostData::Ternary(t) => {
                    for r in 0..t.rows {
                        for c in 0..t.row_len {
                            scratch.push(f32::from(t.get(r, c)));
                        }
                    }
                }
                HostData::F32(_) | HostData::Bf16(_) | HostData::Block(_) => unreachable!(),
            }
            scratch
        }
    }
}

/// Runs `f` on an f32 view of `out` and stores the result in `out`'s precision: direct for f32
/// storage, through `scratch` (then rounded) otherwise.
pub(crate) fn write_f32(
    out: &mut HostData,
    len: usize,
    scratch: &mut Vec<f32>,
    f: impl FnOnce(&mut [f32]),
) {
    match out {
        HostData::F32(v) => f(v),
        other => {
            scratch.clear();
            scratch.resize(len, 0.0);
            f(scratch);
            other.store_f32(scratch);
        }
    }
}

/// An op's output as the tasks of a parallel region store it: in f32 storage directly, or in
/// bf16 storage converted by the task that computed the values (see [`write_rows`]).
#[derive(Clone, Copy)]
pub(crate) enum OutRows {
    F32(eltwise::SendPtr<f32>),
    Bf16(eltwise::SendPtr<half::bf16>),
}

impl OutRows {
    /// Stores `vals` at elements `at..at + vals.len()`.
    ///
    /// # Safety
    /// Those elements are inside the storage handed to [`write_rows`]'s `f`, and no other
    /// thread touches them while this runs.
    #[inline]
    pub(crate) unsafe fn store(self, at: usize, vals: &[f32]) {
        match self {
            // SAFETY: in bounds and not shared (the caller's contract).
            Self::F32(p) => unsafe {
                std::slice::from_raw_parts_mut(p.get().add(at), vals.len()).copy_from_slice(vals)
            },
            // SAFETY: as above.
            Self::Bf16(p) => convert::f32_to_bf16(vals, unsafe {
                std::slice::from_raw_parts_mut(p.get().add(at), vals.len())
            }),
        }
    }
}

/// Like [`write_f32`] for a parallel kernel whose tasks store their own outputs through an
/// [`OutRows`]: f32 and bf16 storage (of at least `len` values) are written in place, so a
/// decode op's bf16 output is converted by the tasks in parallel, with no zero-filled f32
/// scratch and no serial conversion pass after the region (together 2-5 us per decode
/// BitLinear with 2 threads, where the scratch had left the cache while the weights streamed).
/// Other storage goes through `scratch`, then is stored.
pub(crate) fn write_rows(
    out: &mut HostData,
    len: usize,
    scratch: &mut Vec<f32>,
    f: impl FnOnce(OutRows),
) {
    match out {
        HostData::F32(v) if v.len() >= len => f(OutRows::F32(eltwise::SendPtr(v.as_mut_ptr()))),
        HostData::Bf16(v) if v.len() >= len => f(OutRows::Bf16(eltwise::SendPtr(v.as_mut_ptr()))),
        other => write_f32(other, len, scratch, |o| {
            f(OutRows::F32(eltwise::SendPtr(o.as_mut_ptr())))
        }),
    }
}

/// Elements above which an elementwise kernel is worth splitting across threads.
pub(crate) const PAR_THRESHOLD: usize = 1 << 15;

/// How far ahead of the rows being multiplied a GEMV asks for weight rows, in bytes. Decode
/// streams every weight once from DRAM; rows are short (640 bytes for K = 2560 at 2 bits), too
/// short for the hardware prefetcher to ramp up inside one, so the kernel names the next ones.
/// Measured on the 2B-4T shape (2 threads): decode 11.5-12.3 -> 18.9 tok/s; 1-4 KiB ahead all
/// do about as well, 8 KiB and more start to lose.
pub(crate) const PREFETCH_BYTES: usize = 4096;

/// Hints the CPU to bring `bytes` into cache (one hint per 64-byte line). Only a hint: it never
/// faults and changes no result.
#[inline(always)]
pub(crate) fn prefetch<T>(bytes: &[T]) {
    #[cfg(target_arch = "x86_64")]
    prefetch_lines::<{ std::arch::x86_64::_MM_HINT_T0 }, T>(bytes);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// [`prefetch`] into L2 (`_MM_HINT_T1`): the line does not take an L1 miss buffer while it
/// travels, which leaves those to the loads and lets more lines be in flight.
#[inline(always)]
pub(crate) fn prefetch_l2<T>(bytes: &[T]) {
    #[cfg(target_arch = "x86_64")]
    prefetch_lines::<{ std::arch::x86_64::_MM_HINT_T1 }, T>(bytes);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// One `_mm_prefetch` hint `HINT` per 64-byte line of `bytes`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_lines<const HINT: i32, T>(bytes: &[T]) {
    let p = bytes.as_ptr().cast::<i8>();
    let len = std::mem::size_of_val(bytes);
    let mut off = 0;
    while off < len {
        // SAFETY: `p + off` is inside `bytes`; a prefetch never faults or writes.
        unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(p.add(off)) };
        off += 64;
    }
}

/// How far ahead a block-float GEMV (the lm_head) asks for weight rows. Its kernel hints the
/// mantissas into L2 (`_MM_HINT_T1`), which leaves the L1 miss buffers to the loads and lets
/// more lines be in flight: criterion lm_head bfp8_b 18.9 -> 20.3 GB/s with 1 thread, 31.6 ->
/// 36.1 with 2 (hints to L1 4 KiB ahead before; to L1 8 KiB ahead was worse, 16.8 and 26.5).
pub(crate) const GEMV_PREFETCH_BYTES: usize = 8192;

/// Rows ahead to prefetch for rows of `row_bytes`: about [`GEMV_PREFETCH_BYTES`] ahead.
#[inline]
pub(crate) fn prefetch_rows_ahead(row_bytes: usize) -> usize {
    GEMV_PREFETCH_BYTES.div_ceil(row_bytes.max(1))
}
