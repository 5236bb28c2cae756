//! A persistent worker pool for the host backend's kernels.
//!
//! Why not rayon: a decode step runs a few hundred small parallel ops, each a few microseconds
//! long; the pool must hand work over in well under a microsecond and must not allocate (the
//! decode step is allocation-free). Workers spin briefly between ops, then sleep on a condvar.
//! Work is split into tasks claimed from an atomic counter; each task writes a disjoint part of
//! the output, and a task's arithmetic never depends on which thread runs it, so results are
//! deterministic whatever the thread count.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// How many times an idle worker polls for new work before going to sleep (~tens of µs).
const SPIN_ITERS: u32 = 20_000;

thread_local! {
    static IN_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// One parallel region. Lives on the caller's stack for the duration of [`ThreadPool::run`].
struct Job {
    f: *const (dyn Fn(usize, Option<usize>) + Sync),
    n_tasks: usize,
    next: AtomicUsize,
    /// Every thread runs `f(0)` once instead of claiming tasks (see [`ThreadPool::broadcast`]).
    broadcast: bool,
    /// Claim-ahead (see [`ThreadPool::for_ranges_ahead`]): a thread claims its next task when
    /// it starts one, unless only `ahead` tasks are left; 0: claim each when it is needed.
    ahead: usize,
    /// Workers that have not yet finished this job.
    pending: AtomicUsize,
    panicked: AtomicBool,
}

impl Job {
    fn work(&self) {
        // SAFETY: `f` points to a closure borrowed by `ThreadPool::run_job`, which does not
        // return until every worker has decremented `pending`, i.e. finished calling it.
        let f = unsafe { &*self.f };
        if self.broadcast {
            if catch_unwind(AssertUnwindSafe(|| f(0, None))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            return;
        }
        let claim = || {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            (i < self.n_tasks).then_some(i)
        };
        let mut task = claim();
        while let Some(i) = task {
            // Near the end (the next unclaimed task among the last `ahead`), a task held
            // ahead could leave another thread idle: claim when needed instead. (A racy
            // check: at worst a task a few places later is held.)
            let near_end = self.next.load(Ordering::Relaxed) + self.ahead >= self.n_tasks;
            let next = if self.ahead > 0 && !near_end {
                claim()
            } else {
                None
            };
            if catch_unwind(AssertUnwindSafe(|| f(i, next))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            task = next.or_else(claim);
        }
    }
}

struct Shared {
    /// Workers that have entered their loop; `new` waits for all of them, so thread start-up
    /// (which allocates) never overlaps the first parallel region.
    started: AtomicUsize,
    generation: AtomicU64,
    job: AtomicPtr<Job>,
    shutdown: AtomicBool,
    sleepers: Mutex<usize>,
    wake: Condvar,
}

/// A fixed set of worker threads plus the calling thread.
pub(crate) struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises parallel regions: the pool runs one job at a time.
    run_lock: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.num_threads())
            .finish()
    }
}

impl ThreadPool {
    /// A pool running on `threads` threads in all (the caller counts as one).
    pub(crate) fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            started: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            shutdown: AtomicBool::new(false),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for i in 1..threads.max(1) {
            let s = Arc::clone(&shared);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("ttnn-host-{i}"))
                    .spawn(move || worker_loop(&s))?,
            );
        }
        while shared.started.load(Ordering::Acquire) < workers.len() {
            std::thread::yield_now();
        }
        Ok(Self {
            shared,
            workers,
            run_lock: Mutex::new(()),
        })
    }

    pub(crate) fn num_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(0..n_tasks)` across the pool and returns when all tasks are done.
    /// A panic in a task is re-raised here after every thread has stopped using `f`.
    pub(crate) fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        self.run_job(n_tasks, false, 0, &|i, _| f(i));
    }

    /// Runs `f` once on every thread of the pool, the caller included: to size a thread-local
    /// scratch buffer before a decode step that must not allocate, on whichever thread runs it.
    pub(crate) fn broadcast(&self, f: &(dyn Fn() + Sync)) {
        if self.workers.is_empty() || IN_WORKER.with(Cell::get) {
            // Inside a task the workers are busy: only this thread can be reached.
            f();
            return;
        }
        self.run_job(1, true, 0, &|_, _| f());
    }

    fn run_job(
        &self,
        n_tasks: usize,
        broadcast: bool,
        ahead: usize,
        f: &(dyn Fn(usize, Option<usize>) + Sync),
    ) {
        if n_tasks == 0 {
            return;
        }
        // Serial when there is nothing to share, and when called from inside a task (a nested
        // region would wait for workers that are busy running its parent).
        if !broadcast && (n_tasks == 1 || self.workers.is_empty() || IN_WORKER.with(Cell::get)) {
            for i in 0..n_tasks {
                f(i, (i + 1 < n_tasks).then_some(i + 1));
            }
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: erasing the closure's lifetime is sound because this function does not return
        // (nor unwind) before `pending` reaches zero, after which no worker touches `job`.
        let f_static: *const (dyn Fn(usize, Option<usize>) + Sync) = unsafe {
            std::mem::transmute::<
                *const (dyn Fn(usize, Option<usize>) + Sync + '_),
                *const (dyn Fn(usize, Option<usize>) + Sync),
            >(f as *const _)
        };
        let job = Job {
            f: f_static,
            n_tasks,
            next: AtomicUsize::new(0),
            broadcast,
            ahead,
            pending: AtomicUsize::new(self.workers.len()),
            panicked: AtomicBool::new(false),
        };
        self.shared
            .job
            .store(&job as *const Job as *mut Job, Ordering::Release);
        {
            // Bump the generation under the lock so a worker about to sleep cannot miss it.
            let sleepers = self
                .shared
                .sleepers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.generation.fetch_add(1, Ordering::AcqRel);
            if *sleepers > 0 {
                self.shared.wake.notify_all();
            }
        }
        IN_WORKER.with(|w| w.set(true));
        job.work();
        IN_WORKER.with(|w| w.set(false));
        let mut spins = 0u32;
        while job.pending.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        self.shared
            .job
            .store(std::ptr::null_mut(), Ordering::Release);
        if job.panicked.load(Ordering::Relaxed) {
            resume_unwind(Box::new("a ttnn host kernel task panicked"));
        }
    }

    /// Splits `0..n` into at most `chunks` contiguous ranges, claimed in order, and runs
    /// `f(range)` on each. The ranges are guided: each is a `1 / (2 * threads)` share of what is
    /// left, but no shorter than `n / chunks`. The first ranges are long (a GEMV's prefetch
    /// stream restarts at each range) and the last short, so the threads finish together. With
    /// equal ranges a thread sat idle for up to one range at the end of every op: equal eighths
    /// left ~6 % of each thread's decode step in the pool's wait loops (2 threads, 2B-4T).
    pub(crate) fn for_ranges(
        &self,
        n: usize,
        chunks: usize,
        f: &(dyn Fn(std::ops::Range<usize>) + Sync),
    ) {
        if n == 0 {
            return;
        }
        if self.workers.is_empty() || IN_WORKER.with(Cell::get) {
            // One thread: one range, one stream.
            f(0..n);
            return;
        }
        let ends = guided_ends(n, chunks, self.num_threads());
        let count = ends.iter().position(|&e| e == n).map_or(0, |i| i + 1);
        self.run(count, &|i| {
            let start = if i == 0 { 0 } else { ends[i - 1] };
            f(start..ends[i]);
        });
    }

    /// [`ThreadPool::for_ranges`] for kernels that stream: `f(range, next)` also gets the
    /// range the same thread runs next, claimed when `range` starts, so that the kernel can
    /// hint its first bytes while it finishes `range` (each range otherwise starts its stream
    /// cold, at DRAM latency, with the hardware prefetchers untrained). Once only `threads`
    /// ranges are left unclaimed, nothing is claimed ahead: a range held by a busy thread there
    /// could leave another idle at the end.
    pub(crate) fn for_ranges_ahead(
        &self,
        n: usize,
        chunks: usize,
        f: &(dyn Fn(std::ops::Range<usize>, Option<std::ops::Range<usize>>) + Sync),
    ) {
        if n == 0 {
            return;
        }
        if self.workers.is_empty() || IN_WORKER.with(Cell::get) {
            f(0..n, None);
            return;
        }
        let ends = guided_ends(n, chunks, self.num_threads());
        let count = ends.iter().position(|&e| e == n).map_or(0, |i| i + 1);
        let range = |i: usize| (if i == 0 { 0 } else { ends[i - 1] })..ends[i];
        self.run_job(count, false, self.num_threads(), &|i, next| {
            f(range(i), next.map(range));
        });
    }
}

/// How many ranges per thread a streaming kernel (GEMV, GEMM) asks [`ThreadPool::for_ranges`]
/// for: the floor of the guided ranges is a 1/16 share per thread.
pub(crate) const RANGES_PER_THREAD: usize = 16;

/// Most ranges one [`ThreadPool::for_ranges`] call makes.
const MAX_RANGES: usize = 64;

/// The ends of the guided ranges of `0..n` (see [`ThreadPool::for_ranges`]), up to the first
/// equal to `n` (the rest are zero).
fn guided_ends(n: usize, chunks: usize, threads: usize) -> [usize; MAX_RANGES] {
    let min_len = n.div_ceil(chunks.clamp(1, MAX_RANGES));
    let mut ends = [0; MAX_RANGES];
    let mut start = 0;
    // At most MAX_RANGES ranges: each is at least n / MAX_RANGES long.
    for end in ends.iter_mut() {
        let left = n - start;
        start += left.div_ceil(2 * threads).max(min_len).min(left);
        *end = start;
        if start == n {
            break;
        }
    }
    ends
}

fn worker_loop(shared: &Shared) {
    IN_WORKER.with(|w| w.set(true));
    shared.started.fetch_add(1, Ordering::Release);
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        loop {
            if shared.generation.load(Ordering::Acquire) != seen
                || shared.shutdown.load(Ordering::Acquire)
            {
                break;
            }
            spins += 1;
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
                continue;
            }
            let mut sleepers = shared.sleepers.lock().unwrap_or_else(|e| e.into_inner());
            *sleepers += 1;
            while shared.generation.load(Ordering::Acquire) == seen
                && !shared.shutdown.load(Ordering::Acquire)
            {
                sleepers = shared
                    .wake
                    .wait(sleepers)
                    .unwrap_or_else(|e| e.into_inner());
            }
            *sleepers -= 1;
            break;
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        seen += 1;
        let job = shared.job.load(Ordering::Acquire);
        // SAFETY: the caller published `job` before bumping the generation and keeps it alive
        // until every worker (this one included) has decremented `pending` below.
        let job = unsafe { &*job };
        job.work();
        job.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        {
            let _sleepers = self
                .shared
                .sleepers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.shutdown.store(true, Ordering::Release);
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_once() {
        for threads in 1..=4 {
            let pool = ThreadPool::new(threads).expect("spawn");
            for n in [0usize, 1, 2, 7, 100] {
                let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn ranges_cover_everything() {
        for threads in 1..=3 {
            let pool = ThreadPool::new(threads).expect("spawn");
            for (n, chunks) in [(97, 5), (1, 8), (3, 64), (128_256, 32), (1000, 1000)] {
                let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                pool.for_ranges(n, chunks, &|r| {
                    for i in r {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    /// Every index runs once, and a range's `next` is the range its thread runs right after it.
    #[test]
    fn ranges_ahead_cover_once_and_name_the_next() {
        use std::sync::Mutex;
        for threads in 1..=4 {
            let pool = ThreadPool::new(threads).expect("spawn");
            for (n, chunks) in [(0usize, 8usize), (1, 8), (7, 8), (54, 32), (1000, 64)] {
                let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                type Calls = Vec<(std::ops::Range<usize>, Option<std::ops::Range<usize>>)>;
                let calls: Mutex<std::collections::HashMap<std::thread::ThreadId, Calls>> =
                    Mutex::new(Default::default());
                pool.for_ranges_ahead(n, chunks, &|r, next| {
                    for i in r.clone() {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    }
                    let id = std::thread::current().id();
                    calls.lock().unwrap().entry(id).or_default().push((r, next));
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "{n} {threads}"
                );
                for seq in calls.lock().unwrap().values() {
                    for (i, (r, next)) in seq.iter().enumerate() {
                        if let Some(nx) = next {
                            assert_eq!(seq.get(i + 1).map(|c| &c.0), Some(nx), "{n} {threads}");
                        }
                        assert!(r.start < r.end);
                    }
                }
            }
        }
    }

    #[test]
    fn guided_ranges_shrink_to_the_floor() {
        // 2 threads, 32 ranges at most: a quarter first, then shrinking to n / 32.
        let ends = guided_ends(3200, 32, 2);
        let count = ends.iter().position(|&e| e == 3200).expect("ends at n") + 1;
        let lens: Vec<usize> = (0..count)
            .map(|i| ends[i] - if i == 0 { 0 } else { ends[i - 1] })
            .collect();
        assert_eq!(lens[0], 800);
        assert!(lens.windows(2).all(|w| w[0] >= w[1]), "{lens:?}");
        assert!(lens[..count - 1].iter().all(|&l| l >= 100), "{lens:?}");
        assert!(count <= 32);
        // Never more than MAX_RANGES, whatever is asked.
        assert!(guided_ends(1 << 20, 1 << 20, 2).contains(&(1 << 20)));
        assert_eq!(guided_ends(1 << 20, 1 << 20, 64)[MAX_RANGES - 1], 1 << 20);
    }

    #[test]
    fn broadcast_reaches_every_thread_once() {
        for threads in 1..=4 {
            let pool = ThreadPool::new(threads).expect("spawn");
            let seen = Mutex::new(Vec::new());
            pool.broadcast(&|| {
                seen.lock().expect("lock").push(std::thread::current().id());
            });
            let mut ids = seen.into_inner().expect("lock");
            assert_eq!(ids.len(), threads);
            ids.sort_by_key(|id| format!("{id:?}"));
            ids.dedup();
            assert_eq!(ids.len(), threads, "a thread ran twice");
        }
    }

    #[test]
    fn nested_regions_run_serially() {
        let pool = ThreadPool::new(2).expect("spawn");
        let count = AtomicU32::new(0);
        pool.run(4, &|_| {
            pool.run(3, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(count.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn task_panic_is_reraised_and_pool_survives() {
        let pool = ThreadPool::new(2).expect("spawn");
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, &|i| {
                if i == 5 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let count = AtomicU32::new(0);
        pool.run(8, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn survives_sleep_and_wake() {
        let pool = ThreadPool::new(2).expect("spawn");
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(30));
            let count = AtomicU32::new(0);
            pool.run(16, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(count.load(Ordering::Relaxed), 16);
        }
    }
}
