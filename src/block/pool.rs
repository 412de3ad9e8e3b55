//! The worker pool that runs blocking file system calls, so that no home
//! thread ever blocks in the kernel. Workers start on demand, up to a limit
//! (`AIOCTX_IO_WORKERS`, default 16), and live for the process.
//!
//! `fork()`: the forking thread first waits for the jobs running on workers
//! to return (a system call already started; the queue is held so no new
//! one starts), then forks with the queue held. The child, where no worker
//! exists, starts its own on demand and runs the jobs that were queued, so
//! every request started before the fork completes in the child too.
//! std's futex-based mutex and condition variable, not parking_lot's: those
//! keep their sleepers in a process-wide table, which in the child still
//! lists the parent's idle workers, and a notify there can hang.

use std::cell::RefCell;
use std::collections::VecDeque;

use std::sync::{Condvar, Mutex, MutexGuard};

use once_cell::sync::Lazy;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct PoolState {
    jobs: VecDeque<Job>,
    workers: usize,
    idle: usize,
    /// Jobs being run by a worker right now.
    running: usize,
}

struct Pool {
    queue: Mutex<PoolState>,
    work: Condvar,
    /// Signalled when `running` drops to 0 while a fork waits for it.
    quiet: Condvar,
    max_workers: usize,
}

// The fork handlers are registered by the raw-file driver (its opens come
// before any job), together with its rings'.
static POOL: Lazy<Pool> = Lazy::new(|| Pool {
    queue: Mutex::new(PoolState::default()),
    work: Condvar::new(),
    quiet: Condvar::new(),
    max_workers: std::env::var("AIOCTX_IO_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(16),
});

thread_local! {
    /// The queue, held by the forking thread from before `fork()` until
    /// after it, in the parent and in the child.
    static HELD_FOR_FORK: RefCell<Option<MutexGuard<'static, PoolState>>> =
        const { RefCell::new(None) };
}

/// The queue; a job that panicked does not make it unusable.
fn lock() -> MutexGuard<'static, PoolState> {
    POOL.queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sleeps on `cv` (a condition variable of the pool) until notified.
fn wait<'a>(cv: &Condvar, q: MutexGuard<'a, PoolState>) -> MutexGuard<'a, PoolState> {
    cv.wait(q).unwrap_or_else(|e| e.into_inner())
}

/// Runs `job` on a worker thread.
pub(crate) fn submit(job: impl FnOnce() + Send + 'static) {
    let mut q = lock();
    q.jobs.push_back(Box::new(job));
    // A busy worker takes the next job before it sleeps: wake (or start)
    // another only when the queue outgrows the busy ones. At queue depth 32
    // that saves a futex wake and a context switch per request.
    let busy = q.workers - q.idle;
    if q.jobs.len() <= busy {
        return;
    }
    if q.idle > 0 {
        POOL.work.notify_one();
    } else if q.workers < POOL.max_workers {
        // The slot is taken under the lock, the thread started outside it:
        // creating a thread takes a while (mmap of its stack, clone), and
        // every submitter and worker would wait for it meanwhile.
        q.workers += 1;
        drop(q);
        let started = std::thread::Builder::new()
            .name("aioctx-io".into())
            .spawn(worker);
        if started.is_err() {
            // A worker that cannot start leaves the job to the existing
            // ones; with none at all, run it here rather than lose it.
            let mut q = lock();
            q.workers -= 1;
            let job = if q.workers == 0 {
                q.jobs.pop_back()
            } else {
                None
            };
            drop(q);
            if let Some(job) = job {
                job();
            }
        }
    }
}

fn worker() {
    let mut q = lock();
    loop {
        match q.jobs.pop_front() {
            Some(job) => {
                q.running += 1;
                drop(q);
                // A job that panics must not end the worker: its slot would
                // stay counted, and once every slot is a dead worker no job
                // ever runs again. The panic hook has already reported it.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                q = lock();
                q.finished();
            }
            None => {
                q.idle += 1;
                q = wait(&POOL.work, q);
                q.idle -= 1;
            }
        }
    }
}

impl PoolState {
    fn finished(&mut self) {
        self.running -= 1;
        if self.running == 0 {
            POOL.quiet.notify_all();
        }
    }
}

/// `fork()` prepare: waits until no job runs, and keeps the queue held.
pub(crate) fn before_fork() {
    if Lazy::get(&POOL).is_none() {
        return;
    }
    let mut q = lock();
    while q.running > 0 {
        q = wait(&POOL.quiet, q);
    }
    // (A fork from a thread whose thread-locals are gone forks unprotected.)
    let _ = HELD_FOR_FORK.try_with(|h| *h.borrow_mut() = Some(q));
}

/// `fork()` in the parent: the queue goes on as before.
pub(crate) fn after_fork_in_parent() {
    let _ = HELD_FOR_FORK.try_with(|h| drop(h.borrow_mut().take()));
}

/// `fork()` in the child: no worker exists; the next submit starts one, and
/// one starts now for the jobs the parent had queued.
pub(crate) fn after_fork_in_child() {
    let Some(mut q) = HELD_FOR_FORK
        .try_with(|h| h.borrow_mut().take())
        .ok()
        .flatten()
    else {
        return;
    };
    q.workers = 0;
    q.idle = 0;
    if q.jobs.is_empty() {
        return;
    }
    // Re-queue through submit, which starts the workers.
    let jobs = std::mem::take(&mut q.jobs);
    drop(q);
    for job in jobs {
        submit(job);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// Runs `job` on the pool and waits (generously) until it has started.
    fn runs(job: impl FnOnce() + Send + 'static) -> bool {
        let (tx, rx) = mpsc::channel();
        submit(move || {
            tx.send(()).unwrap();
            job();
        });
        rx.recv_timeout(Duration::from_secs(20)).is_ok()
    }

    /// More jobs panic, one after the other, than there are worker slots;
    /// each, and a job after them, still finds a worker. (A worker that a
    /// panic ended kept its slot: once every slot was a dead worker, no job
    /// ran again.)
    #[test]
    fn a_panicking_job_keeps_its_worker() {
        for i in 0..=POOL.max_workers {
            assert!(
                runs(|| panic!("a job that panics (expected by this test)")),
                "panicking job {i} found no worker"
            );
        }
        assert!(runs(|| ()), "no worker left after the panics");
    }
}
