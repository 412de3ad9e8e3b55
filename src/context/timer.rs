//! Timers: callbacks that run in the home thread once CLOCK_MONOTONIC passes
//! an absolute deadline in nanoseconds.
//!
//! Invariants, kept under the list lock: a timer is in the list iff its
//! `expire` is a deadline (>= 0), and then under the key (expire, id); its
//! callback is entered only after `fire` saw it FIRING and marked it running
//! (`runner`), in one critical section, so a `del` either disarms it first
//! or sees it running and waits for it to end (as a BH's cancel does).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use parking_lot::{Condvar, Mutex};

use super::{wait_for_callback, Callback, Context};
use crate::error::{invalid, Error, Result};
use crate::thread;

const DISARMED: i64 = -1;
/// Taken out of the list by a dispatch that has not run it yet.
const FIRING: i64 = -2;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A timer bound to one context.
pub struct Timer {
    ctx: Weak<Context>,
    callback: Callback,
    id: u64,
    /// Deadline, DISARMED or FIRING; written under the list lock.
    expire: AtomicI64,
    /// The thread running the callback (0: none) and how many times over
    /// (a callback may poll again); under the list lock.
    runner: AtomicU64,
    runs: AtomicU32,
    /// Freed by its owner: never armed again (a callback running during
    /// the free that re-arms it would otherwise run once more).
    deleted: AtomicBool,
}

#[derive(Default)]
struct List {
    armed: BTreeMap<(i64, u64), Arc<Timer>>,
    /// Threads in `disarm` waiting for a callback running in another thread.
    waiting: usize,
}

/// A context's armed timers, ordered by deadline.
#[derive(Default)]
pub(crate) struct TimerList {
    list: Mutex<List>,
    /// Signalled when a callback a `disarm` waits for has returned.
    finished: Condvar,
}

/// A timer's callback marked running; unmarked (waking a waiting `del`)
/// when dropped, also if the callback panics.
pub(crate) struct Firing<'a> {
    list: &'a TimerList,
    timer: &'a Timer,
}

impl Firing<'_> {
    pub(crate) fn run(self) {
        (self.timer.callback)();
    }
}

impl Drop for Firing<'_> {
    fn drop(&mut self) {
        let list = self.list.list.lock();
        if self.timer.runs.fetch_sub(1, Relaxed) == 1 {
            self.timer.runner.store(0, Relaxed);
            if list.waiting > 0 {
                self.list.finished.notify_all();
            }
        }
    }
}

impl Timer {
    /// A disarmed timer that runs `callback` in `ctx`'s home thread.
    pub fn new(ctx: &Arc<Context>, callback: Callback) -> Arc<Timer> {
        Arc::new(Timer {
            ctx: Arc::downgrade(ctx),
            callback,
            id: NEXT_ID.fetch_add(1, Relaxed),
            expire: AtomicI64::new(DISARMED),
            runner: AtomicU64::new(0),
            runs: AtomicU32::new(0),
            deleted: AtomicBool::new(false),
        })
    }

    /// Arms (or re-arms) the timer for the absolute time `expire_ns` on
    /// CLOCK_MONOTONIC. A deadline in the past fires at the next poll.
    pub fn modify(self: &Arc<Self>, expire_ns: i64) -> Result<()> {
        if expire_ns < 0 {
            return Err(invalid(format!(
                "timer deadline {expire_ns} is negative: pass an absolute aioctx_clock_ns() time"
            )));
        }
        let ctx = self.context()?;
        if self.deleted.load(Relaxed) {
            return Err(Error::new(
                libc::ENODEV,
                "timer was freed (its callback re-armed it while it was freed): not armed",
            ));
        }
        // The nearest deadline moved earlier: a poll blocked in another thread
        // (or an embedding loop) must recompute its timeout. The home thread
        // itself is not blocked, and computes it at its next poll.
        if ctx.timers.arm(self, expire_ns) && !ctx.is_home() {
            ctx.notify();
        }
        Ok(())
    }

    /// Disarms the timer; returns whether it was armed (or due to run in
    /// the dispatch under way). Once it returns the callback does not start
    /// (until armed again), and is not running in another thread (see
    /// [`TimerList::disarm`]).
    pub fn del(&self) -> bool {
        // No context, no poll: nothing can be running.
        self.ctx
            .upgrade()
            .is_some_and(|ctx| ctx.timers.disarm(self, &ctx))
    }

    /// Disarms the timer for good, waiting as [`del`](Self::del) does: it is
    /// never armed again, also not by its callback running meanwhile.
    pub fn delete(&self) {
        self.deleted.store(true, Relaxed);
        self.del();
    }

    /// The armed deadline, if any.
    pub fn expire_ns(&self) -> Option<i64> {
        Some(self.expire.load(Relaxed)).filter(|&e| e >= 0)
    }

    fn context(&self) -> Result<Arc<Context>> {
        self.ctx.upgrade().ok_or_else(|| {
            Error::new(
                libc::ENODEV,
                "timer's context was destroyed: free the timer first",
            )
        })
    }
}

impl TimerList {
    /// Returns whether the timer is now the earliest.
    fn arm(&self, timer: &Arc<Timer>, expire: i64) -> bool {
        let mut list = self.list.lock();
        // Checked under the lock `disarm` takes after setting it: an arm
        // either comes before that disarm, which undoes it, or sees it.
        if timer.deleted.load(Relaxed) {
            return false;
        }
        Self::unlink(&mut list.armed, timer);
        timer.expire.store(expire, Relaxed);
        list.armed.insert((expire, timer.id), timer.clone());
        list.armed
            .first_key_value()
            .is_some_and(|(k, _)| *k == (expire, timer.id))
    }

    /// Disarms `timer`, then waits while its callback runs in another
    /// thread, unless that cannot be: the caller holds `ctx` (callbacks run
    /// with it held, so one running elsewhere is parked in a wait that
    /// released it, and would need it back to return) or the caller is that
    /// callback's own thread.
    fn disarm(&self, timer: &Timer, ctx: &Context) -> bool {
        let mut list = self.list.lock();
        let was_armed =
            Self::unlink(&mut list.armed, timer) || timer.expire.load(Relaxed) == FIRING;
        timer.expire.store(DISARMED, Relaxed);
        let runner = timer.runner.load(Relaxed);
        if timer.runs.load(Relaxed) > 0 && ctx.lock.owner() != thread::current() {
            list.waiting += 1;
            let what = format!("disarming a timer of context '{}'", ctx.name());
            wait_for_callback(&self.finished, &mut list, &what, |_| {
                (timer.runs.load(Relaxed) > 0).then_some(runner)
            });
            list.waiting -= 1;
        }
        was_armed
    }

    fn unlink(armed: &mut BTreeMap<(i64, u64), Arc<Timer>>, timer: &Timer) -> bool {
        let expire = timer.expire.load(Relaxed);
        expire >= 0 && armed.remove(&(expire, timer.id)).is_some()
    }

    /// The nearest deadline, or `None`.
    pub(crate) fn deadline(&self) -> Option<i64> {
        self.list
            .lock()
            .armed
            .first_key_value()
            .map(|((expire, _), _)| *expire)
    }

    pub(crate) fn len(&self) -> usize {
        self.list.lock().armed.len()
    }

    /// Takes every timer due at `now`. Timers armed while they run land in
    /// the list again and wait for the next dispatch.
    pub(crate) fn take_expired(&self, now: i64) -> Vec<Arc<Timer>> {
        let mut list = self.list.lock();
        let mut due = Vec::new();
        while let Some(entry) = list.armed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            timer.expire.store(FIRING, Relaxed);
            due.push(timer);
        }
        due
    }

    /// A timer taken by `take_expired`, marked running, unless a callback
    /// that ran before it (or another thread) deleted or re-armed it.
    pub(crate) fn fire<'a>(&'a self, timer: &'a Timer) -> Option<Firing<'a>> {
        let _list = self.list.lock();
        (timer.expire.load(Relaxed) == FIRING).then(|| {
            timer.expire.store(DISARMED, Relaxed);
            timer.runner.store(thread::current(), Relaxed);
            timer.runs.fetch_add(1, Relaxed);
            Firing { list: self, timer }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[test]
    fn del_waits_for_a_callback_running_in_another_thread() {
        let ctx = Context::new("timer-wait").unwrap();
        let (entered, finished) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (e, f) = (entered.clone(), finished.clone());
        let t = Timer::new(
            &ctx,
            Arc::new(move || {
                e.store(true, Relaxed);
                std::thread::sleep(Duration::from_millis(50));
                f.store(true, Relaxed);
            }),
        );
        t.modify(0).unwrap();
        let c = ctx.clone();
        // Does not block: the timer is due before the poll starts.
        let poller = std::thread::spawn(move || assert!(c.poll(true).unwrap()));
        while !entered.load(Relaxed) {
            std::thread::yield_now();
        }
        assert!(!t.del(), "running, no longer armed");
        assert!(
            finished.load(Relaxed),
            "del returned while the callback ran"
        );
        poller.join().unwrap();
    }

    #[test]
    fn del_from_its_own_callback_returns_and_a_deleted_due_timer_does_not_run() {
        let ctx = Context::new("timer-self").unwrap();
        let runs = Arc::new(AtomicU64::new(0));
        let slot: Arc<Mutex<Option<Arc<Timer>>>> = Arc::default();
        let (r, s) = (runs.clone(), slot.clone());
        let victim = Timer::new(&ctx, Arc::new(|| panic!("deleted timer ran")));
        let v = victim.clone();
        let t = Timer::new(
            &ctx,
            Arc::new(move || {
                r.fetch_add(1, Relaxed);
                assert!(!s.lock().as_ref().unwrap().del());
                // Due in the same dispatch, taken out of the list already.
                assert!(v.del(), "a timer due in this dispatch counts as armed");
            }),
        );
        *slot.lock() = Some(t.clone());
        let now = sys::clock_ns();
        t.modify(now - 2).unwrap();
        victim.modify(now - 1).unwrap();
        assert!(ctx.poll(false).unwrap());
        assert_eq!(runs.load(Relaxed), 1);
        assert_eq!(ctx.timers.len(), 0);
        slot.lock().take();
    }
}
