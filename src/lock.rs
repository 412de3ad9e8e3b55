//! The recursive per-context lock.
//!
//! One atomic word holds the owner's thread token (0: free) and a "parked"
//! bit meaning "a thread may be sleeping in `acquire`". The owner alone
//! touches `depth`, so the uncontended path is a single compare-and-swap to
//! take the lock and another to give it back, with no system call.
//! Contended acquirers sleep on a condition variable; `release` wakes one of
//! them only when the parked bit says someone may be there.
//!
//! Fairness: the lock is not FIFO (a releasing thread may take it straight
//! back), but a thread blocked in `acquire` is woken the moment the owner's
//! depth reaches 0. `poll_while` always blocks in a poll between release
//! and re-acquire, which is what lets an IOThread in.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};

use crate::error::{busy, not_permitted, Error};
use crate::{sys, thread, waitfor};

const PARKED: u64 = 1 << 63;

/// Why a lock operation failed. Small and `Copy`, so the success path of
/// acquire/release returns in registers; turned into an [`Error`] with a
/// message only when it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockError {
    /// `try_acquire`: another thread owns the lock.
    Busy { owner: u64 },
    /// `release`: the caller does not own the lock (`owner` does; 0: nobody).
    NotOwner { owner: u64 },
    /// The recursion depth would overflow.
    Overflow,
    /// `acquire_until`: the deadline passed while `owner` held the lock.
    TimedOut { owner: u64 },
}

impl LockError {
    pub fn errno(self) -> i32 {
        match self {
            LockError::Busy { .. } => libc::EBUSY,
            LockError::NotOwner { .. } => libc::EPERM,
            LockError::Overflow => libc::EOVERFLOW,
            LockError::TimedOut { .. } => libc::ETIMEDOUT,
        }
    }
}

impl From<LockError> for Error {
    #[cold]
    fn from(e: LockError) -> Error {
        match e {
            LockError::Busy { owner } => {
                busy(format!("held by thread {}", thread::describe(owner)))
            }
            LockError::NotOwner { owner: 0 } => {
                not_permitted("not held by anyone: release without a matching acquire")
            }
            LockError::NotOwner { owner } => not_permitted(format!(
                "held by thread {}, not by the caller: only the owner may release",
                thread::describe(owner)
            )),
            LockError::Overflow => {
                Error::new(libc::EOVERFLOW, "lock depth overflow: release the context")
            }
            LockError::TimedOut { owner } => Error::new(
                libc::ETIMEDOUT,
                format!(
                    "still held by thread {} when the deadline passed",
                    thread::describe(owner)
                ),
            ),
        }
    }
}

type Result<T> = std::result::Result<T, LockError>;

/// A recursive mutex owned by a thread, not by a guard: C code acquires and
/// releases it in separate calls. Rust code can use [`ContextLock::guard`].
#[derive(Default)]
pub struct ContextLock {
    /// Owner token, plus `PARKED` when a sleeper may need waking.
    state: AtomicU64,
    /// Recursion depth while owned; the last release leaves it at 1 and
    /// the next owner sets it again. Written only by the owner; others read
    /// it only before an ownership check that fails for them, or for
    /// diagnostics, hence relaxed.
    depth: AtomicU32,
    /// Number of threads sleeping in `acquire`, and their wake-up signal.
    sleepers: Mutex<u32>,
    wakeup: Condvar,
    /// Names the lock in the wait-for graph ([`waitfor`]); 0: not tracked.
    id: u64,
}

impl ContextLock {
    /// A free lock.
    pub fn new() -> Self {
        Self::default()
    }

    /// A free lock whose sleepers are recorded in the wait-for graph under
    /// `id` (a context's id), so deadlock detection can see them.
    pub(crate) fn with_id(id: u64) -> Self {
        ContextLock {
            id,
            ..Self::default()
        }
    }

    /// Blocks until the calling thread owns the lock; recursive.
    #[inline]
    pub fn acquire(&self) -> Result<()> {
        self.acquire_by(None)
    }

    /// Like [`acquire`](Self::acquire), but gives up with `TimedOut` once
    /// CLOCK_MONOTONIC reaches `deadline` (ns) while another thread owns it.
    pub fn acquire_until(&self, deadline: i64) -> Result<()> {
        self.acquire_by(Some(deadline))
    }

    #[inline(always)]
    fn acquire_by(&self, deadline: Option<i64>) -> Result<()> {
        let me = thread::current();
        if self.owner() == me {
            return self.deepen();
        }
        if self
            .state
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.acquire_slow(me, deadline)?;
        }
        self.depth.store(1, Ordering::Relaxed);
        Ok(())
    }

    /// Like [`acquire`](Self::acquire) but fails with `EBUSY` instead of
    /// blocking when another thread owns the lock.
    pub fn try_acquire(&self) -> Result<()> {
        let me = thread::current();
        if self.owner() == me {
            return self.deepen();
        }
        match self
            .state
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => {
                self.depth.store(1, Ordering::Relaxed);
                Ok(())
            }
            Err(_) => Err(LockError::Busy {
                owner: self.owner(),
            }),
        }
    }

    /// Gives one level back. Fails with `EPERM` when the caller is not the owner.
    #[inline]
    pub fn release(&self) -> Result<()> {
        let me = thread::current();
        // The last level: one compare-and-swap both checks that the caller
        // owns the lock and frees it. `depth` may be another owner's when
        // read by a non-owner, but then the state is not `me` and the swap
        // fails. `depth` is left at 1: the next owner writes it before use.
        let depth = self.depth.load(Ordering::Relaxed);
        if depth == 1 {
            if self
                .state
                .compare_exchange(me, 0, Ordering::Release, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(());
            }
        } else if depth > 1 && self.owner() == me {
            self.depth.store(depth - 1, Ordering::Relaxed);
            return Ok(());
        }
        self.release_slow(me)
    }

    /// `release` off its fast paths: a sleeper may need waking, or the
    /// caller is not the owner.
    #[cold]
    fn release_slow(&self, me: u64) -> Result<()> {
        if self.owner() != me {
            return Err(LockError::NotOwner {
                owner: self.owner(),
            });
        }
        let depth = self.depth.load(Ordering::Relaxed) - 1;
        if depth > 0 {
            self.depth.store(depth, Ordering::Relaxed);
        } else if self.state.swap(0, Ordering::Release) & PARKED != 0 {
            self.wake_one();
        }
        Ok(())
    }

    /// The calling thread's recursion depth (0 when it is not the owner).
    pub fn depth(&self) -> u32 {
        if self.owner() == thread::current() {
            self.depth.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// The owner's token (0 when free). Racy by nature: for diagnostics and
    /// for "is it me" checks, which are exact.
    pub fn owner(&self) -> u64 {
        self.state.load(Ordering::Relaxed) & !PARKED
    }

    /// How many threads sleep in `acquire`; for diagnostics.
    pub fn waiting(&self) -> u32 {
        *self.sleepers.lock()
    }

    /// The owner's depth as last written; for diagnostics only.
    pub fn owner_depth(&self) -> u32 {
        self.depth.load(Ordering::Relaxed)
    }

    /// Releases every level the caller holds and returns how many, so that
    /// [`restore`](Self::restore) can put them back.
    pub fn release_all(&self) -> u32 {
        let depth = self.depth();
        for _ in 0..depth {
            // Cannot fail: the caller owns the lock for all `depth` levels.
            let _ = self.release();
        }
        depth
    }

    /// Re-acquires `depth` levels taken away by [`release_all`](Self::release_all).
    pub fn restore(&self, depth: u32) {
        for _ in 0..depth {
            // Cannot fail: the depth came from release_all, far below u32::MAX.
            let _ = self.acquire();
        }
    }

    /// An RAII guard for Rust callers.
    pub fn guard(&self) -> LockGuard<'_> {
        // Can only fail on depth overflow, which a guard-scoped user cannot reach.
        let _ = self.acquire();
        LockGuard { lock: self }
    }

    fn deepen(&self) -> Result<()> {
        let depth = self.depth.load(Ordering::Relaxed);
        if depth == max_depth() {
            return Err(LockError::Overflow);
        }
        self.depth.store(depth + 1, Ordering::Relaxed);
        Ok(())
    }

    #[cold]
    fn acquire_slow(&self, me: u64, deadline: Option<i64>) -> Result<()> {
        // Whoever blocks may be named in a hang dump.
        thread::register_name();
        // Recorded before sleeping, cleared once owned or given up.
        let _blocked = (self.id != 0).then(|| waitfor::block(me, self.id));
        let mut sleepers = self.sleepers.lock();
        loop {
            let state = self.state.load(Ordering::Relaxed);
            if state & !PARKED == 0 {
                // Free: take it, keeping the parked bit if others still sleep
                // so that our release wakes the next one.
                let parked = if *sleepers > 0 { PARKED } else { 0 };
                if self
                    .state
                    .compare_exchange(state, me | parked, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            let remaining = match deadline {
                Some(d) => {
                    let left = d - sys::clock_ns();
                    if left <= 0 {
                        // The release that woke us may have woken only us,
                        // and the lock may since have passed to a thread
                        // that did not set PARKED: hand the wake-up on, or
                        // the sleepers left would sleep through its release.
                        if *sleepers > 0 {
                            self.wakeup.notify_one();
                        }
                        return Err(LockError::TimedOut {
                            owner: state & !PARKED,
                        });
                    }
                    Some(std::time::Duration::from_nanos(left as u64))
                }
                None => None,
            };
            if state & PARKED == 0
                && self
                    .state
                    .compare_exchange(state, state | PARKED, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            // The releaser swaps the state to 0 before taking `sleepers`, so
            // it cannot signal between our check above and this wait.
            // A sleeper that times out leaves PARKED set: the next release
            // wakes nobody in vain, which is harmless.
            *sleepers += 1;
            match remaining {
                Some(left) => drop(self.wakeup.wait_for(&mut sleepers, left)),
                None => self.wakeup.wait(&mut sleepers),
            }
            *sleepers -= 1;
        }
    }

    #[cold]
    fn wake_one(&self) {
        let _sleepers = self.sleepers.lock();
        self.wakeup.notify_one();
    }
}

/// The deepest a lock may be held: `u32::MAX`; in debug builds the tests
/// may lower it with `AIOCTX_TEST_MAX_DEPTH` (read once), so that the limit
/// can be reached in a test instead of after four billion acquires.
#[inline]
pub(crate) fn max_depth() -> u32 {
    #[cfg(debug_assertions)]
    {
        static MAX: once_cell::sync::Lazy<u32> = once_cell::sync::Lazy::new(|| {
            std::env::var("AIOCTX_TEST_MAX_DEPTH")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(u32::MAX)
        });
        *MAX
    }
    #[cfg(not(debug_assertions))]
    u32::MAX
}

/// Holds one level of a [`ContextLock`] until dropped.
pub struct LockGuard<'a> {
    lock: &'a ContextLock,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn recursive_depth_and_release() {
        let lock = ContextLock::new();
        lock.acquire().unwrap();
        lock.acquire().unwrap();
        assert_eq!(lock.depth(), 2);
        lock.release().unwrap();
        assert_eq!(lock.depth(), 1);
        lock.release().unwrap();
        assert_eq!(lock.depth(), 0);
        assert_eq!(lock.release().unwrap_err().errno(), libc::EPERM);
    }

    #[test]
    fn other_thread_sees_busy_and_cannot_release() {
        let lock = Arc::new(ContextLock::new());
        lock.acquire().unwrap();
        let l2 = lock.clone();
        std::thread::spawn(move || {
            assert_eq!(l2.try_acquire().unwrap_err().errno(), libc::EBUSY);
            assert_eq!(l2.release().unwrap_err().errno(), libc::EPERM);
            assert_eq!(l2.depth(), 0);
        })
        .join()
        .unwrap();
        lock.release().unwrap();
    }

    #[test]
    fn blocked_acquirer_runs_when_depth_reaches_zero() {
        let lock = Arc::new(ContextLock::new());
        let got = Arc::new(AtomicBool::new(false));
        lock.acquire().unwrap();
        lock.acquire().unwrap();
        let (l2, g2) = (lock.clone(), got.clone());
        let t = std::thread::spawn(move || {
            l2.acquire().unwrap();
            g2.store(true, Ordering::SeqCst);
            l2.release().unwrap();
        });
        std::thread::sleep(Duration::from_millis(20));
        lock.release().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!got.load(Ordering::SeqCst), "depth 1 must still exclude");
        lock.release().unwrap();
        t.join().unwrap();
        assert!(got.load(Ordering::SeqCst));
    }

    #[test]
    fn release_all_and_restore() {
        let lock = ContextLock::new();
        for _ in 0..3 {
            lock.acquire().unwrap();
        }
        assert_eq!(lock.release_all(), 3);
        assert_eq!(lock.owner(), 0);
        lock.restore(3);
        assert_eq!(lock.depth(), 3);
        assert_eq!(lock.release_all(), 3);
    }

    #[test]
    fn timed_acquirers_that_give_up_lose_no_wake_up() {
        // Plain and deadline-bounded acquirers mixed: the plain ones must keep
        // making progress. (A sleeper woken by a release, that then finds the
        // lock taken by a fast-path thief and gives up on its deadline, must
        // hand the wake-up on, or a plain sleeper can sleep through the
        // thief's release; this stress exercises that path, though other
        // contention usually heals such a loss before it shows.)
        let lock = Arc::new(ContextLock::with_id(0));
        let done = Arc::new(AtomicU64::new(0));
        let plain: Vec<_> = (0..2)
            .map(|_| {
                let (lock, done) = (lock.clone(), done.clone());
                std::thread::spawn(move || {
                    for _ in 0..50_000 {
                        let _g = lock.guard();
                        (0..50).for_each(|_| std::hint::spin_loop());
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        let timed: Vec<_> = (0..2)
            .map(|_| {
                let (lock, done) = (lock.clone(), done.clone());
                std::thread::spawn(move || {
                    while done.load(Ordering::SeqCst) < 2 {
                        if lock.acquire_until(crate::sys::clock_ns() + 2_000).is_ok() {
                            lock.release().unwrap();
                        }
                    }
                })
            })
            .collect();
        let start = std::time::Instant::now();
        while done.load(Ordering::SeqCst) < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "a plain acquirer slept through a release: lost wake-up"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        plain
            .into_iter()
            .chain(timed)
            .for_each(|t| t.join().unwrap());
        assert_eq!(lock.owner(), 0);
    }

    #[test]
    fn mutual_exclusion_under_contention() {
        let lock = Arc::new(ContextLock::new());
        let counter = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (lock, counter) = (lock.clone(), counter.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let _g = lock.guard();
                        // A non-atomic read-modify-write: lost updates show a broken lock.
                        let v = counter.load(Ordering::Relaxed);
                        counter.store(v + 1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.load(Ordering::Relaxed), 80_000);
        assert_eq!(lock.owner(), 0);
    }
}
