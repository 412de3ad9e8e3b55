//! The busy-poll of a blocking poll (adaptive polling): before sleeping in
//! epoll, check for work for up to the context's poll window, so a wake-up
//! from another CPU costs a cache-line transfer instead of a sleep, an
//! inter-processor interrupt and a context switch.
//!
//! A spinner counts as not blocked: `notify_me` stays 0 while it spins, so a
//! notify only sets `notify_pending` (no system call), which the spin
//! watches. Only after the window does the poll publish itself as blocked
//! (`notify_me`, then the fence) and look at `notify_pending` again before
//! sleeping, as every blocking poll does: a notify that lands in between is
//! seen either by that look or by the notifier, never lost.
//!
//! Never starve whoever is waited for:
//! * a thread that may run on one CPU only never spins: the work it waits
//!   for would need that CPU;
//! * a window that passed idle shrinks (`PollParams::next_window`);
//! * the spin yields the CPU every `YIELD_EVERY_NS`, so a thread that shares
//!   the CPU without the spinner's affinity knowing runs soon enough.

use std::cell::Cell;
use std::sync::atomic::Ordering::*;

use super::{Blocking, Context, PollParams};
use crate::sys;
use crate::sys::epoll::Ready;

/// How long a spin runs before it offers the CPU (`sched_yield`).
const YIELD_EVERY_NS: i64 = 5_000;
/// How long a thread's CPU count is trusted: affinity may change (a VMM
/// pins its IOThreads after starting them), and one `sched_getaffinity`
/// per interval is free next to the spinning it decides on.
const CPUS_FRESH_NS: i64 = 10_000_000;

thread_local! {
    /// (usable CPUs, when counted) for the calling thread.
    static CPUS: Cell<(usize, i64)> = const { Cell::new((0, i64::MIN)) };
}

/// Whether the calling thread may busy-poll: it can run on two CPUs or more.
pub(crate) fn may_spin(now: i64) -> bool {
    CPUS.with(|c| {
        let (cpus, at) = c.get();
        if now.saturating_sub(at) < CPUS_FRESH_NS {
            return spins_with(cpus);
        }
        let cpus = sys::usable_cpus();
        c.set((cpus, now));
        spins_with(cpus)
    })
}

/// The single-CPU rule.
fn spins_with(usable_cpus: usize) -> bool {
    usable_cpus > 1
}

/// What a spin saw.
pub(super) struct Spin {
    /// When the poll began (before the spin).
    pub started: i64,
    /// When work was found, if it was within the window.
    pub found_at: Option<i64>,
}

impl Context {
    /// Spins for up to the window of `params` (or until a timer or the
    /// caller's deadline is due), watching for a notify, a pending BH and
    /// the fd handlers' poll callbacks (those reporting work are added to
    /// `ready`). None when the poll may not spin (polling off, one CPU).
    pub(super) fn spin(
        &self,
        wait: Blocking,
        params: PollParams,
        ready: &mut Vec<Ready>,
    ) -> Option<Spin> {
        if params.max_ns == 0 || wait == Blocking::No {
            return None;
        }
        let started = sys::clock_ns();
        if !may_spin(started) {
            return None;
        }
        // Work pending before the poll began: found at once, no window needed.
        if self.notify_pending.load(Relaxed) || self.bhs.has_pending() {
            return Some(Spin {
                started,
                found_at: Some(started),
            });
        }
        let window = self.poll_ns.load(Relaxed).min(params.max_ns);
        let mut end = started.saturating_add(window);
        if let Blocking::Until(t) = wait {
            end = end.min(t);
        }
        if let Some(t) = self.timers.deadline() {
            end = end.min(t);
        }
        let mut found_at = None;
        let mut next_yield = started + YIELD_EVERY_NS;
        let mut now = started;
        while now < end {
            if found_at.is_none()
                && (self.notify_pending.load(Relaxed) || self.handlers.poll(ready))
            {
                found_at = Some(now);
            }
            // Work found but the lock held elsewhere (a waiter about to give
            // it back): spin on for it rather than sleep on it, which would
            // cost a wake-up when it is released.
            if found_at.is_some() && self.lock_free_for_me() {
                break;
            }
            std::hint::spin_loop();
            now = sys::clock_ns();
            if now >= next_yield {
                sys::yield_now();
                next_yield = now + YIELD_EVERY_NS;
            }
        }
        Some(Spin { started, found_at })
    }

    fn lock_free_for_me(&self) -> bool {
        let owner = self.lock.owner();
        owner == 0 || owner == crate::thread::current()
    }

    /// Moves the poll window after a poll that spun (`spin`), whose work
    /// arrived at `arrived` (None: nothing came). Only the home thread
    /// polls, so only it writes the window.
    pub(super) fn adjust_window(&self, params: PollParams, spin: &Spin, arrived: Option<i64>) {
        let waited = spin
            .found_at
            .or(arrived)
            .map(|at| (at - spin.started).max(0));
        let window = self.poll_ns.load(Relaxed);
        let next = params.next_window(window, waited);
        if next != window {
            self.poll_ns.store(next, Relaxed);
        }
    }

    /// The current poll window in ns (0: the next blocking poll sleeps at
    /// once); it changes after every blocking poll of a context with polling on.
    pub fn poll_window_ns(&self) -> i64 {
        self.poll_ns.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_usable_cpu_never_spins() {
        assert!(!spins_with(1));
        assert!(spins_with(2));
        assert!(spins_with(64));
    }

    #[test]
    fn a_thread_pinned_to_one_cpu_does_not_spin() {
        let cpus = sys::usable_cpus();
        assert!(cpus >= 1);
        assert_eq!(may_spin(sys::clock_ns()), cpus > 1);
        // Pinned: the cached count is stale for up to CPUS_FRESH_NS, then
        // the thread sees its one CPU.
        std::thread::spawn(|| {
            sys::pin_to_first_cpu().unwrap();
            assert_eq!(sys::usable_cpus(), 1);
            let now = sys::clock_ns();
            assert!(!may_spin(now));
            assert!(!may_spin(now + CPUS_FRESH_NS * 2));
        })
        .join()
        .unwrap();
    }
}
