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
//! * a process that may run on one CPU only never spins: the work it waits
//!   for would need that CPU;
//! * work that a thread on the poller's own CPU sent (a notify records its
//!   CPU) closes the window, and never opens it: the sender could only run
//!   while the poller yielded. This is what keeps two threads pinned to one
//!   CPU from spinning, while threads pinned to different CPUs (a VMM's
//!   IOThreads) poll; the thread's own affinity cannot tell those apart;
//! * a window that passed idle shrinks (`PollParams::next_window`);
//! * the spin yields the CPU every `YIELD_EVERY_NS`, so a thread sharing
//!   the CPU runs within microseconds even before the rules above apply.

use std::cell::Cell;
use std::sync::atomic::Ordering::*;

use super::{Blocking, Context, PollParams};
use crate::sys;
use crate::sys::epoll::Ready;

/// How long a spin runs before it offers the CPU (`sched_yield`).
const YIELD_EVERY_NS: i64 = 5_000;
/// How long a thread trusts its count of usable CPUs: affinity changes (a
/// VMM pins its IOThreads after starting them). A thread with several CPUs
/// counts with one system call; a pinned one looks at every thread of the
/// process (is it alone in being pinned, or is the whole process on one
/// CPU?), so less often.
const OWN_CPUS_FRESH_NS: i64 = 10_000_000;
const PROCESS_CPUS_FRESH_NS: i64 = 100_000_000;

thread_local! {
    /// (usable CPUs, when counted) for the calling thread.
    static CPUS: Cell<(usize, i64)> = const { Cell::new((0, i64::MIN)) };
}

/// Whether the calling thread may busy-poll: the process can run on two
/// CPUs or more. (A thread pinned to one CPU while others run elsewhere
/// may: the rule on work from its own CPU protects a partner pinned there.)
pub(crate) fn may_spin(now: i64) -> bool {
    CPUS.with(|c| {
        let (cpus, at) = c.get();
        let fresh = if cpus > 1 {
            OWN_CPUS_FRESH_NS
        } else {
            PROCESS_CPUS_FRESH_NS
        };
        if now.saturating_sub(at) < fresh {
            return spins_with(cpus);
        }
        let cpus = match sys::usable_cpus() {
            1 => sys::process_cpus(),
            n => n,
        };
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
    /// The work was there when the poll began: it says nothing about the window.
    pub pending_at_start: bool,
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
                pending_at_start: true,
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
                // Another thread may have run for long: work seen from here
                // on was found now, maybe past the window.
                now = sys::clock_ns();
                next_yield = now + YIELD_EVERY_NS;
            }
        }
        Some(Spin {
            started,
            found_at,
            pending_at_start: false,
        })
    }

    fn lock_free_for_me(&self) -> bool {
        let owner = self.lock.owner();
        owner == 0 || owner == crate::thread::current()
    }

    /// Moves the poll window after a poll that spun (`spin`), whose work
    /// arrived at `arrived` (None: nothing came); `notified` says whether a
    /// notify brought it. Only the home thread polls, so only it writes
    /// the window.
    pub(super) fn adjust_window(
        &self,
        params: PollParams,
        spin: &Spin,
        arrived: Option<i64>,
        notified: bool,
    ) {
        if spin.pending_at_start {
            return;
        }
        let shared_cpu = notified && self.notify_cpu.load(Relaxed) == sys::current_cpu();
        let waited = spin
            .found_at
            .or(arrived)
            .filter(|_| !shared_cpu)
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
    fn a_thread_pinned_alone_may_spin_a_process_on_one_cpu_may_not() {
        if sys::process_cpus() < 2 {
            assert!(!may_spin(sys::clock_ns()));
            return;
        }
        assert!(may_spin(sys::clock_ns()));
        std::thread::spawn(|| {
            sys::pin_to_first_cpu().unwrap();
            assert_eq!(sys::usable_cpus(), 1);
            assert!(
                may_spin(sys::clock_ns()),
                "pinned alone, with other threads elsewhere"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn one_usable_cpu_never_spins() {
        assert!(!spins_with(1));
        assert!(spins_with(2));
        assert!(spins_with(64));
    }

    /// Work an `io_poll` callback sees once `epoll_wait` returned without
    /// events (an io_uring's completion interrupts it, posted on its way
    /// out) is dispatched by that poll and opens the window, where an idle
    /// sleep would close it.
    #[test]
    fn work_io_poll_sees_after_an_empty_epoll_wait_is_dispatched_and_counted() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        if !may_spin(sys::clock_ns()) {
            return; // a one-CPU process never spins
        }
        let ctx = Context::new("poll-after-epoll").unwrap();
        ctx.claim().unwrap();
        ctx.set_poll_params(1_000_000_000, 0, 0).unwrap();
        // Never readable: only io_poll can report its work.
        let quiet = crate::sys::eventfd::EventFd::new().unwrap();
        let (work, ran) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (w, r) = (work.clone(), ran.clone());
        ctx.set_fd_handler_full(
            quiet.raw(),
            Some(Arc::new(move || r.store(true, Relaxed))),
            None,
            Some(Arc::new(move || w.load(Relaxed))),
        )
        .unwrap();
        assert_eq!(ctx.poll_window_ns(), 0, "closed: the poll sleeps at once");
        let setter = {
            let work = work.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(5));
                work.store(true, Relaxed);
            })
        };
        // Sleeps in epoll until the deadline, well after the work came.
        let deadline = sys::clock_ns() + 100_000_000;
        assert!(ctx.poll_wait(Blocking::Until(deadline)).unwrap());
        setter.join().unwrap();
        assert!(ran.load(Relaxed), "io_read ran in that poll");
        assert_eq!(
            ctx.poll_window_ns(),
            crate::context::poll_params::INITIAL_WINDOW_NS,
            "the work counted as arrived within max_ns: the window opened"
        );
        ctx.set_fd_handler(quiet.raw(), None, None).unwrap();
    }

    /// Two threads on one CPU: the poller's window closes on the work the
    /// other sends, and does not open again.
    #[test]
    fn work_sent_from_the_pollers_cpu_closes_the_window() {
        if !may_spin(sys::clock_ns()) {
            return; // a one-CPU process never spins: nothing to close
        }
        let ctx = Context::new("shared-cpu").unwrap();
        ctx.set_poll_params(1_000_000_000, 1000, 0).unwrap();
        let c = ctx.clone();
        std::thread::spawn(move || {
            sys::pin_to_first_cpu().unwrap();
            c.claim().unwrap();
            c.poll_ns.store(1_000_000_000, Relaxed);
            let notifier = {
                let c = c.clone();
                std::thread::spawn(move || {
                    sys::pin_to_first_cpu().unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    c.notify();
                })
            };
            // Spins (yielding), until the notifier, on the same CPU, runs.
            assert!(!c.poll(true).unwrap());
            notifier.join().unwrap();
            assert_eq!(c.poll_window_ns(), 0, "closed by work from its own CPU");
            for _ in 0..3 {
                let notifier = {
                    let c = c.clone();
                    std::thread::spawn(move || {
                        sys::pin_to_first_cpu().unwrap();
                        std::thread::sleep(std::time::Duration::from_micros(100));
                        c.notify();
                    })
                };
                assert!(!c.poll(true).unwrap());
                notifier.join().unwrap();
                assert_eq!(c.poll_window_ns(), 0, "and not opened again by it");
            }
        })
        .join()
        .unwrap();
    }
}
