//! Transparent huge pages for large weight buffers.
//!
//! A decode step streams the weights once: with 4 KiB pages that is a TLB miss (and a page
//! walk) every 4 KiB, and the hardware prefetchers restart at each page boundary. On Linux
//! with THP in `madvise` mode (the common default), a buffer's whole 2 MiB pages can be backed
//! by huge pages if it asks before its pages are first touched. Measured on the 2B-4T shape
//! with 1 thread (`bitnet bench --profile-ops`, alternating binaries), the bfp8_b lm_head
//! (349 MB) took 14.0-14.7 ms per token with huge pages against 17.5-19.0 without; in a later,
//! noisier comparison 13.2-16.7 against 15.5-17.9.
//!
//! The ternary weights are 210 buffers of 1.4-3.7 MB: on their own, each holds at most one whole
//! huge page (advising them so showed no difference). So the device's copies of them
//! ([`WeightBytes::arena`]) are carved one after the other from large 2 MiB-aligned chunks
//! advised as huge pages: with 1 thread on an AVX2 host, the 2B-4T decode's ternary ops took
//! 15.5-17.5 ms per token for gate/up instead of 18.1-21.7 (three alternated runs).

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

/// Bytes of a chunk of the weight arena: address space, whose untouched pages cost no memory.
/// Buffers larger than this get a chunk of their own.
const ARENA_CHUNK: usize = 128 << 20;

/// Weight buffers start at a multiple of this (a cache line).
const ARENA_ALIGN: usize = 64;

/// Memory mapped for the weight arena: `len` bytes at `ptr`, 2 MiB-aligned, zero until written,
/// unmapped when the last buffer in it (and the arena's cursor) let go.
#[derive(Debug)]
struct Chunk {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: a chunk only owns its mapping; the bytes are reached through `ArenaBuf`s, each of which
// owns a disjoint range exclusively, and unmapping is valid from any thread.
unsafe impl Send for Chunk {}
// SAFETY: as above; a shared `Chunk` offers no access to the bytes.
unsafe impl Sync for Chunk {}

impl Chunk {
    /// Maps `len` bytes (a multiple of [`HUGE_PAGE`]) aligned to [`HUGE_PAGE`], advised as huge
    /// pages before anything touches them; `None` if the system refuses the mapping.
    #[cfg(target_os = "linux")]
    fn map(len: usize) -> Option<Self> {
        let span = len.checked_add(HUGE_PAGE)?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let start = p as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        let end = aligned + len;
        // SAFETY: the head `[start, aligned)` and tail `[end, start + span)` are page-aligned
        // parts of the mapping just made, which nothing else uses; what stays is
        // `[aligned, end)`. MADV_HUGEPAGE only changes how the kernel backs it (its result is
        // ignored: the advice is optional).
        unsafe {
            if aligned > start {
                libc::munmap(p, aligned - start);
            }
            if start + span > end {
                libc::munmap(end as *mut libc::c_void, start + span - end);
            }
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        Some(Self {
            ptr: std::ptr::NonNull::new(aligned as *mut u8)?,
            len,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn map(_len: usize) -> Option<Self> {
        None
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        // SAFETY: `[ptr, ptr + len)` is the mapping `map` made; no `ArenaBuf` in it is alive (each
        // holds the chunk's `Arc`).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Where the next weight buffer goes: the current chunk and its first free byte.
struct Cursor {
    chunk: std::sync::Arc<Chunk>,
    used: usize,
}

/// A weight arena: buffers are carved in order and never reused; a chunk is unmapped once
/// every buffer in it is dropped and the cursor has left it (or, when the cursor's chunk is the
/// last holder, on the drop that makes it so).
pub(crate) struct Arena {
    cursor: std::sync::Mutex<Option<Cursor>>,
}

impl Arena {
    pub(crate) const fn new() -> Self {
        Self {
            cursor: std::sync::Mutex::new(None),
        }
    }

    fn cursor(&self) -> std::sync::MutexGuard<'_, Option<Cursor>> {
        // The guarded state is consistent after any panic (each update is one assignment).
        self.cursor.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The process's weight arena (the device's ternary weights).
static ARENA: Arena = Arena::new();

/// A buffer from a weight arena: `len` bytes at `ptr`, owned exclusively.
pub(crate) struct ArenaBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    /// Released by `drop` under the arena's lock (so that counts read there are exact).
    chunk: std::mem::ManuallyDrop<std::sync::Arc<Chunk>>,
    arena: &'static Arena,
}

impl std::fmt::Debug for ArenaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArenaBuf({} bytes)", self.len)
    }
}

// SAFETY: the buffer owns its byte range exclusively (ranges never overlap); `Chunk` is
// Send + Sync.
unsafe impl Send for ArenaBuf {}
// SAFETY: shared access only reads the bytes.
unsafe impl Sync for ArenaBuf {}

impl ArenaBuf {
    /// `len` (> 0) zero bytes from `arena`, or `None` if no chunk can be mapped.
    fn zeroed(arena: &'static Arena, len: usize) -> Option<Self> {
        let need = len.checked_next_multiple_of(ARENA_ALIGN)?;
        let mut cursor = arena.cursor();
        if need > ARENA_CHUNK {
            // Its own chunk; the cursor stays where it is.
            let chunk = std::sync::Arc::new(Chunk::map(need.checked_next_multiple_of(HUGE_PAGE)?)?);
            return Some(Self {
                ptr: chunk.ptr,
                len,
                chunk: std::mem::ManuallyDrop::new(chunk),
                arena,
            });
        }
        if cursor.as_ref().is_none_or(|c| c.used + need > c.chunk.len) {
            *cursor = Some(Cursor {
                chunk: std::sync::Arc::new(Chunk::map(ARENA_CHUNK)?),
                used: 0,
            });
        }
        let c = cursor.as_mut()?;
        // SAFETY: `used + need <= chunk.len`: the range lies inside the chunk's mapping, after
        // every range handed out before (so it is untouched: zero).
        let ptr = unsafe { c.chunk.ptr.add(c.used) };
        c.used += need;
        Some(Self {
            ptr,
            len,
            chunk: std::mem::ManuallyDrop::new(std::sync::Arc::clone(&c.chunk)),
            arena,
        })
    }
}

impl Drop for ArenaBuf {
    fn drop(&mut self) {
        // Every clone and release of a chunk's `Arc` happens under the lock, so the count is
        // exact: when only the cursor still holds this buffer's chunk, let go of it, and its
        // memory goes back now rather than when the next chunk is needed.
        let mut cursor = self.arena.cursor();
        // SAFETY: this is the buffer's drop: `self.chunk` is not used again.
        let chunk = unsafe { std::mem::ManuallyDrop::take(&mut self.chunk) };
        let last = cursor.as_ref().is_some_and(|c| {
            std::sync::Arc::ptr_eq(&c.chunk, &chunk) && std::sync::Arc::strong_count(&chunk) == 2
        });
        drop(chunk);
        if last {
            *cursor = None;
        }
    }
}

/// The bytes of a packed weight: from the weight arena ([`WeightBytes::arena`], the device's
/// ternary weights: streamed at every decode step, so backed by huge pages) or a plain vector
/// (host tensors and other transient copies, which must not pin arena chunks).
#[derive(Debug)]
pub(crate) enum WeightBytes {
    Heap(Vec<u8>),
    Arena(ArenaBuf),
}

impl WeightBytes {
    /// `len` copies of `byte` on the heap.
    pub(crate) fn heap(len: usize, byte: u8) -> Self {
        Self::Heap(vec![byte; len])
    }

    /// `len` zero bytes from the weight arena (on the heap where it cannot map memory, or for
    /// an empty buffer).
    pub(crate) fn arena(len: usize) -> Self {
        Self::arena_in(&ARENA, len)
    }

    /// [`WeightBytes::arena`] from `arena`.
    fn arena_in(arena: &'static Arena, len: usize) -> Self {
        match (len > 0).then(|| ArenaBuf::zeroed(arena, len)).flatten() {
            Some(b) => Self::Arena(b),
            None => Self::heap(len, 0),
        }
    }
}

impl std::ops::Deref for WeightBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Heap(v) => v,
            // SAFETY: `ptr..ptr + len` lies in the chunk's mapping, which the buffer's `Arc`
            // keeps alive, and belongs to this buffer alone.
            Self::Arena(b) => unsafe { std::slice::from_raw_parts(b.ptr.as_ptr(), b.len) },
        }
    }
}

impl std::ops::DerefMut for WeightBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Self::Heap(v) => v,
            // SAFETY: as in `deref`; `&mut self` makes this the only access to the range.
            Self::Arena(b) => unsafe { std::slice::from_raw_parts_mut(b.ptr.as_ptr(), b.len) },
        }
    }
}

impl Clone for WeightBytes {
    fn clone(&self) -> Self {
        let mut out = match self {
            Self::Heap(_) => Self::heap(self.len(), 0),
            Self::Arena(b) => Self::arena_in(b.arena, self.len()),
        };
        out.copy_from_slice(self);
        out
    }
}

impl PartialEq for WeightBytes {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for WeightBytes {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh arena for one test (other tests share the process's).
    fn test_arena() -> &'static Arena {
        Box::leak(Box::new(Arena::new()))
    }

    fn range(b: &WeightBytes) -> std::ops::Range<usize> {
        b.as_ptr() as usize..b.as_ptr() as usize + b.len()
    }

    #[test]
    fn arena_buffers_are_zeroed_aligned_disjoint_and_keep_their_bytes() {
        let arena = test_arena();
        let sizes = [
            1,
            63,
            64,
            65,
            4096,
            3 << 20,
            ARENA_CHUNK - (2 << 20),
            1,
            ARENA_CHUNK + 5,
        ];
        let mut bufs: Vec<WeightBytes> = sizes
            .iter()
            .map(|&n| WeightBytes::arena_in(arena, n))
            .collect();
        for (i, b) in bufs.iter_mut().enumerate() {
            assert!(
                matches!(b, WeightBytes::Arena(_)),
                "buffer {i} not from the arena"
            );
            assert_eq!(b.len(), sizes[i]);
            assert_eq!(b.as_ptr() as usize % ARENA_ALIGN, 0);
            assert!(b.iter().all(|&x| x == 0), "buffer {i} not zeroed");
            b.fill(i as u8 + 1);
        }
        for (i, a) in bufs.iter().enumerate() {
            assert!(
                a.iter().all(|&x| x == i as u8 + 1),
                "buffer {i} overwritten"
            );
            for b in &bufs[i + 1..] {
                let (ra, rb) = (range(a), range(b));
                assert!(ra.end <= rb.start || rb.end <= ra.start, "buffers overlap");
            }
        }
        // Buffer 6 does not fit the first chunk's rest: a second chunk, which buffer 7 shares;
        // the one past ARENA_CHUNK has a chunk of its own.
        let chunk = |b: &WeightBytes| match b {
            WeightBytes::Arena(a) => std::sync::Arc::as_ptr(&a.chunk),
            WeightBytes::Heap(_) => unreachable!(),
        };
        assert_eq!(chunk(&bufs[0]), chunk(&bufs[5]));
        assert_ne!(chunk(&bufs[5]), chunk(&bufs[6]));
        assert_eq!(chunk(&bufs[6]), chunk(&bufs[7]));
        assert_ne!(chunk(&bufs[8]), chunk(&bufs[7]));
        let copy = bufs[6].clone();
        assert_eq!(copy, bufs[6]);
        assert_ne!(range(&copy), range(&bufs[6]));
        assert!(matches!(WeightBytes::arena_in(arena, 0), WeightBytes::Heap(v) if v.is_empty()));
    }

    #[test]
    fn arena_chunks_are_unmapped_when_their_buffers_are_dropped() {
        let arena = test_arena();
        let weak = |b: &WeightBytes| match b {
            WeightBytes::Arena(a) => std::sync::Arc::downgrade(&a.chunk),
            WeightBytes::Heap(_) => unreachable!(),
        };
        let (a, b) = (
            WeightBytes::arena_in(arena, 1000),
            WeightBytes::arena_in(arena, 2000),
        );
        let first = weak(&a);
        // A buffer too big for the rest of the chunk moves the cursor to a new one; the first
        // chunk lives on while its buffers do.
        let c = WeightBytes::arena_in(arena, ARENA_CHUNK - 100);
        let second = weak(&c);
        drop(a);
        assert!(first.upgrade().is_some());
        drop(b);
        assert!(
            first.upgrade().is_none(),
            "a chunk with no buffers left stays mapped"
        );
        // The cursor's chunk goes with its last buffer.
        drop(c);
        assert!(second.upgrade().is_none(), "the cursor kept an empty chunk");
        assert!(arena.cursor().is_none());
        // And the arena goes on.
        assert!(matches!(
            WeightBytes::arena_in(arena, 10),
            WeightBytes::Arena(_)
        ));
    }

    #[test]
    fn arena_serves_threads_at_once() {
        let arena = test_arena();
        let bufs: Vec<Vec<WeightBytes>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4u8)
                .map(|t| {
                    s.spawn(move || {
                        (0..50usize)
                            .map(|i| {
                                let mut b = WeightBytes::arena_in(arena, 1 + 9973 * i % 300_000);
                                b.fill(t);
                                b
                            })
                            .collect()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        for (t, bs) in bufs.iter().enumerate() {
            for b in bs {
                assert!(b.iter().all(|&x| x == t as u8));
            }
        }
    }

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
