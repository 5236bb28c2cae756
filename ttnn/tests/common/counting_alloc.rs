//! A counting global allocator for the "no heap allocation" tests (trace replay, the decode
//! step). A test binary installs it with
//! `#[global_allocator] static GLOBAL: Counting = Counting;` and includes this file with
//! `#[path]` (ttnn's tests and the workspace `tests` crate share it).
//!
//! Two counters: every thread's allocations ([`allocations_in_process`], for binaries without
//! the libtest harness, whose threads would otherwise be counted too; it also catches the
//! worker pool allocating), and the calling thread's alone ([`allocations_on_this_thread`],
//! usable under libtest).
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub struct Counting;

static PROCESS_ON: AtomicBool = AtomicBool::new(false);
static PROCESS_ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_ON: Cell<bool> = const { Cell::new(false) };
    static THREAD_ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc() {
    if PROCESS_ON.load(Ordering::Relaxed) {
        PROCESS_ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
    // `try_with`: the thread-locals may already be gone while a thread shuts down.
    if THREAD_ON.try_with(Cell::get).unwrap_or(false) {
        let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: forwards to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Heap allocations (and reallocations) made by any thread while `f` runs.
pub fn allocations_in_process(f: impl FnOnce()) -> usize {
    PROCESS_ALLOCS.store(0, Ordering::SeqCst);
    PROCESS_ON.store(true, Ordering::SeqCst);
    f();
    PROCESS_ON.store(false, Ordering::SeqCst);
    PROCESS_ALLOCS.load(Ordering::SeqCst)
}

/// Heap allocations (and reallocations) made by the calling thread while `f` runs.
pub fn allocations_on_this_thread(f: impl FnOnce()) -> usize {
    THREAD_ALLOCS.with(|c| c.set(0));
    THREAD_ON.with(|c| c.set(true));
    f();
    THREAD_ON.with(|c| c.set(false));
    THREAD_ALLOCS.with(Cell::get)
}

/// Panics unless the allocator is installed and counting (so a zero elsewhere means none).
pub fn assert_counting() {
    let n = allocations_in_process(|| drop(std::hint::black_box(vec![1u8; 64])));
    assert!(n >= 1, "the counting allocator is not in use");
    let n = allocations_on_this_thread(|| drop(std::hint::black_box(vec![1u8; 64])));
    assert_eq!(n, 1, "the per-thread counter missed an allocation");
}
