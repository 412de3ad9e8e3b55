//! Bottom halves: callbacks scheduled from any thread to run once in the
//! context's home thread, in the order they were scheduled. One queue holds
//! both BHs (reusable, cancellable) and one-shot jobs (a boxed `FnOnce`, the
//! cheap way to post a completion: one allocation, no handle to cancel).
//!
//! Invariants, all kept under the queue lock:
//! * a BH is pending iff its `ticket` is non-zero, and then exactly one
//!   entry (in the queue, or in a batch a dispatch took) carries that ticket;
//! * an entry runs only if its ticket still matches, so a BH cancelled and
//!   rescheduled runs once, at its new place;
//! * tickets increase, so a pending BH with a ticket above `taken_upto` has
//!   its entry in the queue, at position `slot - front`, and the others in
//!   a dispatch's slice. Cancelling turns a queued entry into a tombstone in
//!   place (O(1), and the BH is no longer referenced); `live` counts the
//!   queue's other entries and `dead` its tombstones, which are compacted
//!   away once they outnumber the live ones (amortised O(1)), so
//!   cancel-and-reschedule cannot grow the queue without bound;
//! * a BH's callback is entered only after its entry was checked and the BH
//!   marked running (`runner`), in one critical section: a cancel either
//!   clears the ticket first, or sees it running and waits for it to end;
//! * a deleted BH never gets a ticket again.
//!
//! Each dispatch still running keeps what it took and has not run yet as a
//! slice, oldest first. A callback that polls again (a drain from the home
//! thread) runs the rest of its own dispatch's slice there before newer
//! entries, as QEMU's nested `aio_poll` does; otherwise work the outer
//! dispatch took, say the completion the callback waits for, could never run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use parking_lot::{Condvar, Mutex};

use super::{wait_for_callback, Callback, Context};
use crate::error::{invalid, Error, Result};
use crate::thread;

/// A bottom half bound to one context.
pub struct Bh {
    ctx: Weak<Context>,
    callback: Callback,
    /// Non-zero while pending. The atomics are only so that `Bh` is `Sync`:
    /// they are read and written under the owning queue's lock.
    ticket: AtomicU64,
    /// While pending in the queue: the absolute position of its entry.
    slot: AtomicU64,
    /// The thread running the callback (0: not running), and how many
    /// times over (a callback may poll again and so run itself nested).
    runner: AtomicU64,
    runs: AtomicU32,
    deleted: AtomicBool,
}

/// A one-shot job: runs once, cannot be cancelled.
pub(crate) type OneShot = Box<dyn FnOnce() + Send>;

enum Entry {
    /// A scheduled BH and the ticket it had then.
    Bh(u64, Arc<Bh>),
    Once(OneShot),
    /// A BH cancelled while queued.
    Cancelled,
}

#[derive(Default)]
struct TicketQueue {
    next_ticket: u64,
    /// The last ticket handed out before the last `take`.
    taken_upto: u64,
    entries: VecDeque<Entry>,
    /// The absolute position of `entries[0]`.
    front: u64,
    /// Entries of `entries` that will run, and tombstones.
    live: usize,
    dead: usize,
    /// Cancellers waiting for a callback running in another thread.
    waiting: usize,
}

/// A context's pending bottom halves and one-shot jobs.
#[derive(Default)]
pub(crate) struct BhQueue {
    queue: Mutex<TicketQueue>,
    /// Signalled when a callback a canceller waits for has returned.
    finished: Condvar,
    /// What each running dispatch took and has not run, oldest first. Only
    /// the home thread uses it; `next` takes it before `queue`.
    slices: Mutex<VecDeque<VecDeque<Entry>>>,
}

/// One dispatch's claim on the entries it took (kept in `slices`).
pub(crate) struct Batch(());

/// Something due to run, taken from a [`Batch`].
pub(crate) enum Runnable<'a> {
    Bh(Running<'a>),
    Once(OneShot),
}

/// A BH marked running; unmarked (waking a waiting canceller) when dropped,
/// also if the callback panics. It does not keep the BH alive: a BH whose
/// last handle was dropped while it was pending runs, but is gone while it
/// runs (it cannot reschedule itself through a weak reference), as when it
/// is deleted.
pub(crate) struct Running<'a> {
    queue: &'a BhQueue,
    bh: Weak<Bh>,
    callback: Callback,
}

impl Runnable<'_> {
    pub(crate) fn run(self) {
        match self {
            Runnable::Bh(running) => (running.callback)(),
            Runnable::Once(job) => job(),
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        // Gone: then nobody can be cancelling it, so nobody waits. (Taken
        // before the lock, so that it is dropped after it.)
        let Some(bh) = self.bh.upgrade() else { return };
        let q = self.queue.queue.lock();
        if bh.runs.fetch_sub(1, Relaxed) == 1 {
            bh.runner.store(0, Relaxed);
            if q.waiting > 0 {
                self.queue.finished.notify_all();
            }
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
            slot: AtomicU64::new(0),
            runner: AtomicU64::new(0),
            runs: AtomicU32::new(0),
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

    /// Makes a pending BH not pending. Returns whether it was pending. Once
    /// it returns the callback does not start (until scheduled again), and
    /// is not running in another thread (see [`BhQueue::cancel`]).
    pub fn cancel(&self) -> bool {
        match self.ctx.upgrade() {
            Some(ctx) => ctx.bhs.cancel(self, &ctx),
            // No context, no poll: nothing can be running.
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
        bh.slot.store(q.front + q.entries.len() as u64, Relaxed);
        q.entries.push_back(Entry::Bh(ticket, bh.clone()));
        q.live += 1;
        true
    }

    /// Queues a one-shot job behind everything already pending.
    pub(crate) fn push_once(&self, job: OneShot) {
        let mut q = self.queue.lock();
        q.entries.push_back(Entry::Once(job));
        q.live += 1;
    }

    /// Clears `bh`'s ticket in O(1) amortised, then waits while its callback
    /// runs in another thread, unless that cannot be: the caller holds `ctx`
    /// (callbacks run with it held, so one running elsewhere is parked in a
    /// wait that released it, and would need it back to return), the
    /// caller is that callback's own thread, or that thread stayed in the
    /// parent of a `fork()`.
    fn cancel(&self, bh: &Bh, ctx: &Context) -> bool {
        let mut q = self.queue.lock();
        let ticket = bh.ticket.swap(0, Relaxed);
        if ticket > q.taken_upto {
            q.tombstone(bh);
        }
        let runner = bh.runner.load(Relaxed);
        if bh.runs.load(Relaxed) > 0 && ctx.lock.owner() != thread::current() {
            q.waiting += 1;
            let what = format!("cancelling a BH of context '{}'", ctx.name());
            wait_for_callback(&self.finished, &mut q, &what, |_| {
                (bh.runs.load(Relaxed) > 0).then_some(runner)
            });
            q.waiting -= 1;
        }
        ticket != 0
    }

    /// Whether something is queued, or taken by a dispatch and not yet run.
    pub(crate) fn has_pending(&self) -> bool {
        // One lock at a time: `next` takes `slices` before `queue`.
        let queued = self.queue.lock().live > 0;
        queued || self.slices.lock().iter().any(|s| !s.is_empty())
    }

    pub(crate) fn len(&self) -> usize {
        let taken: usize = self.slices.lock().iter().map(VecDeque::len).sum();
        self.queue.lock().live + taken
    }

    /// Takes every pending BH; those scheduled from now on wait for the next
    /// dispatch, so a BH that reschedules itself cannot starve the loop.
    pub(crate) fn take(&self) -> Batch {
        let taken = {
            let mut q = self.queue.lock();
            q.taken_upto = q.next_ticket;
            (q.live, q.dead) = (0, 0);
            q.front += q.entries.len() as u64;
            std::mem::take(&mut q.entries)
        };
        self.slices.lock().push_back(taken);
        Batch(())
    }

    /// Takes the next entry to run (a BH is marked as run, and as running
    /// until the returned value is dropped): the oldest dispatch's first,
    /// skipping BHs cancelled or deleted since they were taken. None once
    /// every dispatch's entries ran: a nested dispatch returns only then, so
    /// the outer one finds nothing left either.
    pub(crate) fn next(&self, _batch: &mut Batch) -> Option<Runnable<'_>> {
        let mut slices = self.slices.lock();
        loop {
            match slices.front_mut().map(VecDeque::pop_front)? {
                None => drop(slices.pop_front()),
                Some(Entry::Cancelled) => {}
                Some(Entry::Once(job)) => return Some(Runnable::Once(job)),
                Some(Entry::Bh(ticket, bh)) => {
                    let _q = self.queue.lock();
                    if bh.ticket.load(Relaxed) == ticket {
                        bh.ticket.store(0, Relaxed);
                        bh.runner.store(thread::current(), Relaxed);
                        bh.runs.fetch_add(1, Relaxed);
                        return Some(Runnable::Bh(Running {
                            queue: self,
                            bh: Arc::downgrade(&bh),
                            callback: bh.callback.clone(),
                        }));
                    }
                }
            }
        }
    }
}

impl TicketQueue {
    /// Replaces the queued entry of `bh`, just cancelled, by a tombstone
    /// (its reference to the BH is not the last: the caller has one).
    /// Compacts when tombstones outnumber live entries: the cost,
    /// O(live + dead), is less than twice the cancels since the last one.
    fn tombstone(&mut self, bh: &Bh) {
        let at = (bh.slot.load(Relaxed) - self.front) as usize;
        let entry = std::mem::replace(&mut self.entries[at], Entry::Cancelled);
        debug_assert!(matches!(entry, Entry::Bh(_, b) if std::ptr::eq(&*b, bh)));
        self.live -= 1;
        self.dead += 1;
        if self.dead > self.live.max(8) {
            self.entries.retain(|e| !matches!(e, Entry::Cancelled));
            self.dead = 0;
            for (i, e) in self.entries.iter().enumerate() {
                if let Entry::Bh(_, bh) = e {
                    bh.slot.store(self.front + i as u64, Relaxed);
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
                c.poll_wait(super::super::Blocking::Until(deadline))
                    .unwrap();
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

    #[test]
    fn cancel_and_delete_are_constant_time_and_bounded() {
        let ctx = Context::new("bh-bounded").unwrap();
        let log = Arc::new(StdMutex::new(Vec::new()));
        let keep = Bh::new(&ctx, recorder(&log, 1));
        keep.schedule().unwrap();
        // Cancelled and rescheduled with no dispatch in between: the dead
        // entries are compacted away instead of piling up.
        let churn = Bh::new(&ctx, recorder(&log, 2));
        for _ in 0..10_000 {
            churn.schedule().unwrap();
            assert!(churn.cancel());
        }
        let entries = ctx.bhs.queue.lock().entries.len();
        assert!(entries <= 20, "{entries} queue entries for 1 pending BH");
        assert_eq!(ctx.bhs.len(), 1);
        // Many pending BHs deleted: each delete leaves its entry in place.
        let many: Vec<_> = (0..10_000)
            .map(|_| Bh::new(&ctx, recorder(&log, 3)))
            .collect();
        many.iter().for_each(|b| b.schedule().unwrap());
        assert_eq!(ctx.bhs.len(), 10_001);
        many.iter().for_each(|b| b.delete());
        assert_eq!(ctx.bhs.len(), 1);
        let q = ctx.bhs.queue.lock();
        assert!(
            q.entries.len() <= 2 * q.live + 9,
            "{} entries",
            q.entries.len()
        );
        drop(q);
        assert!(ctx.poll(false).unwrap());
        assert_eq!(*log.lock().unwrap(), vec![1]);
        assert!(!ctx.bhs.has_pending());
    }

    #[test]
    fn a_deleted_bh_is_freed_with_its_handle_before_any_dispatch() {
        let ctx = Context::new("bh-freed").unwrap();
        let log = Arc::new(StdMutex::new(Vec::new()));
        let (a, b) = (
            Bh::new(&ctx, recorder(&log, 1)),
            Bh::new(&ctx, recorder(&log, 2)),
        );
        a.schedule().unwrap();
        b.schedule().unwrap();
        let weak = Arc::downgrade(&a);
        a.delete();
        drop(a);
        assert!(weak.upgrade().is_none(), "the tombstone keeps no reference");
        assert!(ctx.poll(false).unwrap());
        assert_eq!(*log.lock().unwrap(), vec![2]);
    }

    #[test]
    fn cancel_of_a_bh_in_a_taken_batch_keeps_the_counts() {
        let ctx = Context::new("bh-batch").unwrap();
        let log = Arc::new(StdMutex::new(Vec::new()));
        let late = Bh::new(&ctx, recorder(&log, 2));
        let l = late.clone();
        // The first BH cancels the second, which is in the same batch.
        let first = Bh::new(
            &ctx,
            Arc::new(move || {
                assert!(l.cancel());
            }),
        );
        first.schedule().unwrap();
        late.schedule().unwrap();
        assert!(ctx.poll(false).unwrap());
        assert!(log.lock().unwrap().is_empty());
        assert_eq!(ctx.bhs.len(), 0);
        assert!(!ctx.bhs.has_pending());
        late.schedule().unwrap();
        assert_eq!(ctx.bhs.len(), 1);
        assert!(ctx.poll(false).unwrap());
        assert_eq!(*log.lock().unwrap(), vec![2]);
    }

    /// Runs `bh` in a thread that polls `ctx`; returns once its callback was
    /// entered, with the poll thread's handle.
    fn run_in_thread(
        ctx: &Arc<Context>,
        bh: &Arc<Bh>,
        entered: &Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        bh.schedule().unwrap();
        let c = ctx.clone();
        // Does not block: the BH is pending before the poll starts.
        let t = std::thread::spawn(move || assert!(c.poll(true).unwrap()));
        while !entered.load(Relaxed) {
            std::thread::yield_now();
        }
        t
    }

    #[test]
    fn cancel_waits_for_a_callback_running_in_another_thread() {
        let ctx = Context::new("bh-wait").unwrap();
        let (entered, finished) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (e, f) = (entered.clone(), finished.clone());
        let bh = Bh::new(
            &ctx,
            Arc::new(move || {
                e.store(true, Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(50));
                f.store(true, Relaxed);
            }),
        );
        let t = run_in_thread(&ctx, &bh, &entered);
        assert!(!bh.cancel(), "running, no longer pending");
        assert!(
            finished.load(Relaxed),
            "cancel returned while the callback ran"
        );
        t.join().unwrap();
    }

    #[test]
    fn cancel_does_not_wait_from_the_callback_or_holding_the_context() {
        let ctx = Context::new("bh-nowait").unwrap();
        let slot: Arc<StdMutex<Option<Arc<Bh>>>> = Arc::default();
        let (entered, go) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (s, c, e, g) = (slot.clone(), ctx.clone(), entered.clone(), go.clone());
        let bh = Bh::new(
            &ctx,
            Arc::new(move || {
                // Its own thread: returns at once.
                s.lock().unwrap().as_ref().unwrap().cancel();
                // Parked with the context released, as a wait that releases
                // it is: a canceller holding the context must not wait for it.
                let depth = c.lock().release_all();
                e.store(true, Relaxed);
                while !g.load(Relaxed) {
                    std::thread::yield_now();
                }
                c.lock().restore(depth);
            }),
        );
        *slot.lock().unwrap() = Some(bh.clone());
        let t = run_in_thread(&ctx, &bh, &entered);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (c, b) = (ctx.clone(), bh.clone());
        let canceller = std::thread::spawn(move || {
            c.acquire().unwrap();
            b.cancel();
            c.release().unwrap();
            done_tx.send(()).unwrap();
        });
        let waited = done_rx.recv_timeout(std::time::Duration::from_secs(10));
        go.store(true, Relaxed);
        assert!(waited.is_ok(), "a canceller holding the context waited");
        canceller.join().unwrap();
        slot.lock().unwrap().take();
        t.join().unwrap();
    }
}
