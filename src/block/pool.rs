//! The worker pool that runs blocking file system calls, so that no home
//! thread ever blocks in the kernel. Workers start on demand, up to a limit
//! (`AIOCTX_IO_WORKERS`, default 16), and live for the process.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

use once_cell::sync::Lazy;
use parking_lot::{Condvar, Mutex};

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    workers: usize,
    idle: usize,
}

struct Pool {
    queue: Mutex<Queue>,
    work: Condvar,
    max_workers: usize,
}

static POOL: Lazy<Pool> = Lazy::new(|| Pool {
    queue: Mutex::default(),
    work: Condvar::new(),
    max_workers: std::env::var("AIOCTX_IO_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(16),
});

/// Runs `job` on a worker thread.
pub(crate) fn submit(job: impl FnOnce() + Send + 'static) {
    let mut q = POOL.queue.lock();
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
        // A worker that cannot start leaves the job to the existing ones;
        // with none at all, run it here rather than lose it.
        let started = std::thread::Builder::new()
            .name("aioctx-io".into())
            .spawn(worker);
        match started {
            Ok(_) => q.workers += 1,
            Err(_) if q.workers == 0 => {
                let job = q.jobs.pop_back();
                drop(q);
                if let Some(job) = job {
                    job();
                }
            }
            Err(_) => {}
        }
    }
}

fn worker() {
    let mut q = POOL.queue.lock();
    loop {
        match q.jobs.pop_front() {
            Some(job) => {
                drop(q);
                job();
                q = POOL.queue.lock();
            }
            None => {
                q.idle += 1;
                POOL.work.wait(&mut q);
                q.idle -= 1;
            }
        }
    }
}
