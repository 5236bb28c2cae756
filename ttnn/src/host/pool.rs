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
    f: *const (dyn Fn(usize) + Sync),
    n_tasks: usize,
    next: AtomicUsize,
    /// Workers that have not yet finished this job.
    pending: AtomicUsize,
    panicked: AtomicBool,
}

impl Job {
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n_tasks {
                break;
            }
            // SAFETY: `f` points to a closure borrowed by `ThreadPool::run`, which does not
            // return until every worker has decremented `pending`, i.e. finished calling it.
            let f = unsafe { &*self.f };
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
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
        if n_tasks == 0 {
            return;
        }
        // Serial when there is nothing to share, and when called from inside a task (a nested
        // region would wait for workers that are busy running its parent).
        if n_tasks == 1 || self.workers.is_empty() || IN_WORKER.with(Cell::get) {
            for i in 0..n_tasks {
                f(i);
            }
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: erasing the closure's lifetime is sound because this function does not return
        // (nor unwind) before `pending` reaches zero, after which no worker touches `job`.
        let f_static: *const (dyn Fn(usize) + Sync) = unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
                f as *const _,
            )
        };
        let job = Job {
            f: f_static,
            n_tasks,
            next: AtomicUsize::new(0),
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

    /// Splits `0..n` into at most `chunks` contiguous ranges and runs `f(range)` on each.
    #[allow(dead_code)] // for kernels that split by ranges; the first users land separately
    pub(crate) fn for_ranges(
        &self,
        n: usize,
        chunks: usize,
        f: &(dyn Fn(std::ops::Range<usize>) + Sync),
    ) {
        let chunks = chunks.clamp(1, n.max(1));
        let per = n.div_ceil(chunks);
        self.run(n.div_ceil(per.max(1)), &|i| {
            let start = i * per;
            f(start..(start + per).min(n));
        });
    }
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
        let pool = ThreadPool::new(3).expect("spawn");
        let hits: Vec<AtomicU32> = (0..97).map(|_| AtomicU32::new(0)).collect();
        pool.for_ranges(97, 5, &|r| {
            for i in r {
                hits[i].fetch_add(1, Ordering::Relaxed);
            }
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
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
