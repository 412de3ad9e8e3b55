//! Bottom halves: callbacks scheduled from any thread to run once in the
//! context's home thread, in the order they were scheduled. One queue holds
//! both BHs (reusable, cancellable) and one-shot jobs (a boxed `FnOnce`, the
//! cheap way to post a completion: one allocation, no handle to cancel).
//!
//! Invariants, all kept under the queue lock:
//! * a BH is pending iff its `ticket` is non-zero, and then exactly one
//!   queue entry carries that ticket;
//! * an entry runs only if its ticket still matches, so a BH cancelled and
//!   rescheduled runs once, at its new place;
//! * a deleted BH never gets a ticket again.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::{Callback, Context};
use crate::error::{invalid, Error, Result};

/// A bottom half bound to one context.
pub struct Bh {
    ctx: Weak<Context>,
    callback: Callback,
    /// Non-zero while pending. Atomic only so `Bh` is `Sync`: it is read and
    /// written under the owning queue's lock.
    ticket: AtomicU64,
    deleted: AtomicBool,
}

/// A one-shot job: runs once, cannot be cancelled.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

enum Entry {
    /// A scheduled BH and the ticket it had then.
    Bh(u64, Arc<Bh>),
    Once(Job),
}

#[derive(Default)]
struct Queue {
    next_ticket: u64,
    entries: VecDeque<Entry>,
}

/// A context's pending bottom halves and one-shot jobs.
#[derive(Default)]
pub(crate) struct BhQueue {
    queue: Mutex<Queue>,
    /// What each dispatch still running has taken and not yet run, oldest
    /// first. A BH that polls again (a drain from the home thread) runs the
    /// rest of its own dispatch's batch there before newer entries, as QEMU's
    /// nested `aio_poll` does; otherwise work taken by the outer dispatch,
    /// say the completion the BH waits for, could never run. Only the home
    /// thread uses it: its own lock keeps it off the schedulers' lock.
    slices: Mutex<VecDeque<VecDeque<Entry>>>,
}

/// One dispatch's claim on the entries it took (kept in the queue's `slices`).
pub(crate) struct Batch(());

/// Something due to run, taken from a [`Batch`].
pub(crate) enum Runnable {
    Bh(Callback),
    Once(Job),
}

impl Runnable {
    pub(crate) fn run(self) {
        match self {
            Runnable::Bh(callback) => callback(),
            Runnable::Once(job) => job(),
        }
    }
}

impl Bh {
    /// A BH that runs `callback` in `ctx`'s home thread each time it is scheduled.
    pub fn new(ctx: &Arc<Context>, callback: Callback) -> Arc<Bh> {
        Arc::new(Bh {
            ctx: Arc::downgrade(ctx),
            callback,
            ticket: AtomicU64::new(0),
            deleted: AtomicBool::new(false),
        })
    }

    /// Makes the BH pending (a no-op if it already is) and wakes the context.
    /// Callable from any thread.
    pub fn schedule(self: &Arc<Self>) -> Result<()> {
        let ctx = self.context()?;
        if self.deleted.load(Relaxed) {
            return Err(invalid("bottom half was deleted: create a new one"));
        }
        if ctx.bhs.push(self) {
            ctx.notify();
        }
        Ok(())
    }

    /// Makes a pending BH not pending. Returns whether it was pending.
    pub fn cancel(&self) -> bool {
        match self.ctx.upgrade() {
            Some(ctx) => ctx.bhs.cancel(self),
            None => false,
        }
    }

    /// Cancels the BH for good: it will never run again.
    pub fn delete(&self) {
        self.deleted.store(true, Relaxed);
        self.cancel();
    }

    /// Whether the BH is waiting to run.
    pub fn is_pending(&self) -> bool {
        self.ticket.load(Relaxed) != 0
    }

    fn context(&self) -> Result<Arc<Context>> {
        self.ctx.upgrade().ok_or_else(|| {
            Error::new(
                libc::ENODEV,
                "bottom half's context was destroyed: delete the BH first",
            )
        })
    }
}

impl BhQueue {
    /// Queues `bh` unless it is already pending; returns whether it was queued.
    fn push(&self, bh: &Arc<Bh>) -> bool {
        let mut q = self.queue.lock();
        // Re-checked under the lock: delete() may have raced with schedule().
        if bh.ticket.load(Relaxed) != 0 || bh.deleted.load(Relaxed) {
            return false;
        }
        q.next_ticket += 1;
        let ticket = q.next_ticket;
        bh.ticket.store(ticket, Relaxed);
        q.entries.push_back(Entry::Bh(ticket, bh.clone()));
        true
    }

    /// Queues a one-shot job behind everything already pending.
    pub(crate) fn push_once(&self, job: Job) {
        self.queue.lock().entries.push_back(Entry::Once(job));
    }

    fn cancel(&self, bh: &Bh) -> bool {
        let mut q = self.queue.lock();
        let ticket = bh.ticket.swap(0, Relaxed);
        if ticket != 0 {
            q.entries
                .retain(|e| !matches!(e, Entry::Bh(t, _) if *t == ticket));
        }
        ticket != 0
    }

    pub(crate) fn has_pending(&self) -> bool {
        // One lock at a time: `next` takes `slices` before `queue`.
        let scheduled = !self.queue.lock().entries.is_empty();
        scheduled || self.slices.lock().iter().any(|s| !s.is_empty())
    }

    pub(crate) fn len(&self) -> usize {
        let taken: usize = self.slices.lock().iter().map(VecDeque::len).sum();
        self.queue.lock().entries.len() + taken
    }

    /// Takes every pending BH; those scheduled from now on wait for the next
    /// dispatch, so a BH that reschedules itself cannot starve the loop.
    pub(crate) fn take(&self) -> Batch {
        let taken = std::mem::take(&mut self.queue.lock().entries);
        self.slices.lock().push_back(taken);
        Batch(())
    }

    /// Takes the next entry to run (a BH is marked as run): the oldest
    /// dispatch's first, skipping BHs cancelled or deleted since they were
    /// taken. None once every dispatch's entries ran: a nested dispatch
    /// returns only then, so the outer one finds nothing left either.
    pub(crate) fn next(&self, _batch: &mut Batch) -> Option<Runnable> {
        let mut slices = self.slices.lock();
        loop {
            match slices.front_mut().map(VecDeque::pop_front)? {
                None => drop(slices.pop_front()),
                Some(Entry::Once(job)) => return Some(Runnable::Once(job)),
                Some(Entry::Bh(ticket, bh)) => {
                    let _q = self.queue.lock();
                    if bh.ticket.load(Relaxed) == ticket {
                        bh.ticket.store(0, Relaxed);
                        return Some(Runnable::Bh(bh.callback.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    fn recorder(log: &Arc<StdMutex<Vec<u32>>>, v: u32) -> Callback {
        let log = log.clone();
        Arc::new(move || log.lock().unwrap().push(v))
    }

    #[test]
    fn fifo_dedup_cancel_delete() {
        let ctx = Context::new("bh-test").unwrap();
        let log = Arc::new(StdMutex::new(Vec::new()));
        let (a, b, c) = (
            Bh::new(&ctx, recorder(&log, 1)),
            Bh::new(&ctx, recorder(&log, 2)),
            Bh::new(&ctx, recorder(&log, 3)),
        );
        b.schedule().unwrap();
        a.schedule().unwrap();
        b.schedule().unwrap(); // pending: no-op
        c.schedule().unwrap();
        assert!(c.cancel());
        c.schedule().unwrap(); // now after a
        assert!(ctx.poll(false).unwrap());
        assert_eq!(*log.lock().unwrap(), vec![2, 1, 3]);
        a.schedule().unwrap();
        a.delete();
        assert!(!ctx.poll(false).unwrap());
        assert_eq!(a.schedule().unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn one_shot_jobs_keep_their_place_among_bhs() {
        let ctx = Context::new("bh-once").unwrap();
        let log = Arc::new(StdMutex::new(Vec::new()));
        let (a, c) = (
            Bh::new(&ctx, recorder(&log, 1)),
            Bh::new(&ctx, recorder(&log, 3)),
        );
        a.schedule().unwrap();
        let l = log.clone();
        ctx.schedule_once(move || l.lock().unwrap().push(2));
        c.schedule().unwrap();
        let l = log.clone();
        ctx.schedule_once(move || l.lock().unwrap().push(4));
        assert!(
            c.cancel(),
            "a BH between one-shot jobs can still be cancelled"
        );
        assert!(ctx.describe().contains("3 pending BHs"));
        assert!(ctx.poll(false).unwrap());
        assert_eq!(*log.lock().unwrap(), vec![1, 2, 4]);
        assert!(!ctx.poll(false).unwrap(), "each ran once");
    }

    #[test]
    fn self_rescheduling_bh_runs_once_per_poll() {
        let ctx = Context::new("bh-self").unwrap();
        let runs = Arc::new(AtomicU64::new(0));
        let slot: Arc<StdMutex<Option<Arc<Bh>>>> = Arc::default();
        let (r, s) = (runs.clone(), slot.clone());
        let bh = Bh::new(
            &ctx,
            Arc::new(move || {
                r.fetch_add(1, Relaxed);
                s.lock().unwrap().as_ref().unwrap().schedule().unwrap();
            }),
        );
        *slot.lock().unwrap() = Some(bh.clone());
        bh.schedule().unwrap();
        for n in 1..=3 {
            assert!(ctx.poll(false).unwrap());
            assert_eq!(runs.load(Relaxed), n);
        }
        bh.delete();
        slot.lock().unwrap().take();
    }
}
