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
//!
//! A dispatch takes the pending entries as a *slice*; slices wait in one
//! list on the queue, not on the dispatcher's stack, so a callback that
//! polls the context again (a drain from the IOThread, say) first runs what
//! the outer dispatch took and has not run yet, as QEMU's nested `aio_poll`
//! does. Otherwise the nested poll could wait forever for a completion
//! sitting in the outer batch.
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
    /// Taken by dispatches in progress and not run yet, oldest first.
    slices: VecDeque<VecDeque<Entry>>,
}

/// A context's pending bottom halves and one-shot jobs.
#[derive(Default)]
pub(crate) struct BhQueue(Mutex<Queue>);

/// A dispatch in progress: it runs entries until no slice is left, its own
/// and those of dispatches nested in it (which may also run its own).
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
        let mut q = self.0.lock();
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
        self.0.lock().entries.push_back(Entry::Once(job));
    }

    fn cancel(&self, bh: &Bh) -> bool {
        let mut q = self.0.lock();
        let ticket = bh.ticket.swap(0, Relaxed);
        if ticket != 0 {
            q.entries
                .retain(|e| !matches!(e, Entry::Bh(t, _) if *t == ticket));
        }
        ticket != 0
    }

    /// Whether something waits to run: scheduled, or taken by a dispatch
    /// that has not run it yet (a nested poll must not block then).
    pub(crate) fn has_pending(&self) -> bool {
        let q = self.0.lock();
        !q.entries.is_empty() || !q.slices.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        let q = self.0.lock();
        q.entries.len() + q.slices.iter().map(VecDeque::len).sum::<usize>()
    }

    /// Takes every pending BH as a new slice; those scheduled from now on
    /// wait for the next dispatch, so a BH that reschedules itself cannot
    /// starve the loop.
    pub(crate) fn take(&self) -> Batch {
        let mut q = self.0.lock();
        let slice = std::mem::take(&mut q.entries);
        if !slice.is_empty() {
            q.slices.push_back(slice);
        }
        Batch(())
    }

    /// Takes the next entry to run, oldest slice first (a BH is marked as
    /// run), skipping BHs cancelled or deleted since they were taken.
    pub(crate) fn next(&self, _batch: &mut Batch) -> Option<Runnable> {
        let mut q = self.0.lock();
        while let Some(slice) = q.slices.front_mut() {
            let Some(entry) = slice.pop_front() else {
                q.slices.pop_front();
                continue;
            };
            match entry {
                Entry::Once(job) => return Some(Runnable::Once(job)),
                Entry::Bh(ticket, bh) => {
                    if bh.ticket.load(Relaxed) == ticket {
                        bh.ticket.store(0, Relaxed);
                        return Some(Runnable::Bh(bh.callback.clone()));
                    }
                }
            }
        }
        None
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
    fn nested_poll_runs_what_the_outer_dispatch_took_first() {
        let ctx = Context::new("bh-nested").unwrap();
        let log = Arc::new(StdMutex::new(Vec::new()));
        let (c, l) = (ctx.clone(), log.clone());
        // The first BH polls again (blocking, for at most 2 s) until the
        // second has run: the second was taken by the outer dispatch, so only
        // running the outer remainder in the nested poll lets it end early.
        ctx.schedule_once(move || {
            l.lock().unwrap().push(1);
            let deadline = crate::sys::clock_ns() + 2_000_000_000;
            while !l.lock().unwrap().contains(&2) && crate::sys::clock_ns() < deadline {
                c.poll_wait(super::super::Wait::Until(deadline)).unwrap();
            }
            l.lock().unwrap().push(3);
        });
        let l = log.clone();
        ctx.schedule_once(move || l.lock().unwrap().push(2));
        assert!(ctx.poll(false).unwrap());
        assert_eq!(*log.lock().unwrap(), vec![1, 2, 3]);
        assert!(!ctx.poll(false).unwrap(), "each ran once");
        assert!(!ctx.bhs.has_pending());
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
