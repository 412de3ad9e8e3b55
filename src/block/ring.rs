//! The raw-file driver's io_uring backend: one ring per context, whose
//! descriptor sits in the context's epoll set as an fd handler, so that
//! completions run in the context's home thread with the context held, as
//! the worker pool's bottom halves do.
//!
//! Only the context's home thread enters the ring (see `Ring::push`).
//! Submissions made by completion callbacks are batched: the handler hands
//! them to the kernel a few at a time (`SUBMIT_BATCH`) and the rest after
//! the callbacks of the completions it reaped. A callback that waits (a
//! drain, a flush) polls, and every poll of the thread meanwhile submits
//! them first (`context::before_poll`), so no wait can sleep on requests
//! the kernel never saw. Requests from other threads are submitted by a
//! bottom half queued with the first of them (with the submission queue
//! full they go to the worker pool), as are those whose submission the
//! kernel refused (they stay queued).
//!
//! A home thread that leaves its context (an IOThread that stops, a
//! thread that ends) first waits for the requests of the context's ring:
//! the kernel fails those still running when their submitter exits. Their
//! completions run as bottom halves, in whichever thread polls next.
//!
//! `fork()`: before it, every ring stops taking requests (they go to the
//! worker pool meanwhile) and waits until the kernel has finished what it
//! runs; those completions run afterwards in the parent and in the child
//! (as the pool's queued jobs do). The child cannot use the ring (its
//! memory is not inherited): its nodes use the worker pool from then on.

use std::cell::Cell;
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering::*};
use std::sync::{Arc, Weak};

use once_cell::sync::{Lazy, OnceCell};
use parking_lot::Mutex;

use super::node::Node;
use super::request::{io_error, IoDone};
use super::sections;
use crate::context::{self, Context, Timer};
use crate::error::{Error, Result};
use crate::sys::file::IoBuf;
use crate::sys::uring::{self, Completion, Op, Submit, Uring};

/// What runs when a request completes.
pub(super) enum Finish {
    /// A read or write: its caller's completion (errors name the image).
    Io(IoDone, Arc<str>),
    /// An `fdatasync`.
    Sync(SyncDone),
}

/// The completion of an `fdatasync`.
pub(super) type SyncDone = Box<dyn FnOnce(std::io::Result<()>) + Send>;

/// What travels with a request: its node (kept alive, and its context with
/// it, until the completion has run) and its completion.
pub(super) struct Tag {
    pub(super) node: Arc<Node>,
    pub(super) finish: Finish,
}

const LIVE: u8 = 0;
/// Between a `fork()`'s prepare and its parent handler: requests go elsewhere.
const PAUSED: u8 = 1;
/// In a `fork()`'s child: the ring's memory is not there.
const DEAD: u8 = 2;

/// Completion callbacks hand their requests to the kernel this many at a
/// time, not all after the last callback: the device then works on the
/// first ones while the rest are made. With one submission per round, it
/// sat idle while 32 callbacks ran (O_DIRECT QD32 at 0.7x fio's IOPS in
/// `benches/io-qd`; 1.0x with batches of 4, as with 2; 8 fell between).
const SUBMIT_BATCH: usize = 4;

/// At most this many reap-run-submit rounds per readiness of the ring.
const ROUNDS: usize = 4;

/// How long a submission the kernel refused for want of memory waits before
/// it is tried again, at first; doubled after each refusal, up to the most.
/// (Tried again at once, it kept the loop from ever sleeping.)
const RETRY_FIRST_NS: i64 = 100_000;
const RETRY_MAX_NS: i64 = 10_000_000;

/// A context's ring.
pub(super) struct Ring {
    uring: Uring<Tag>,
    ctx: Weak<Context>,
    state: AtomicU8,
    /// A bottom half that submits deferred requests is queued.
    submit_queued: AtomicBool,
    /// Submits again after a refusal (see `RETRY_FIRST_NS`); made at the
    /// first refusal.
    retry: OnceCell<Arc<Timer>>,
    /// The wait before the next retry; 0 after a submission went through.
    retry_ns: AtomicI64,
}

thread_local! {
    /// The ring whose completions this thread runs (its address; 0: none).
    static COMPLETING: Cell<usize> = const { Cell::new(0) };
}

/// Every ring, by its context's id, for lookups and `fork()`.
static RINGS: Mutex<Vec<(u64, Weak<Ring>)>> = Mutex::new(Vec::new());

/// Whether this process can use io_uring (probed once).
pub(super) fn available() -> bool {
    availability().is_ok()
}

/// [`available`], or what is missing.
pub(super) fn availability() -> std::result::Result<(), &'static str> {
    static AVAILABLE: Lazy<std::result::Result<(), String>> = Lazy::new(|| {
        in_passing_thread(uring::available)
            .unwrap_or_else(|| Err("cannot start a thread to probe io_uring".into()))
    });
    AVAILABLE.as_ref().map(|_| ()).map_err(String::as_str)
}

/// Runs `f` on a thread of its own that ends right after: rings are made
/// there, so that the kernel, which interrupts a ring's creator when the
/// ring is closed, finds no caller's thread to interrupt (see
/// [`uring::available`]). `None` if no thread could start.
fn in_passing_thread<R: Send>(f: impl FnOnce() -> R + Send) -> Option<R> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("aioctx-ring".into())
            .spawn_scoped(s, f)
            .ok()?
            .join()
            .ok()
    })
}

impl Ring {
    /// `ctx`'s ring, made (and watched by `ctx`) at the first call.
    pub(super) fn of(ctx: &Arc<Context>) -> Result<Arc<Ring>> {
        let mut rings = RINGS.lock();
        rings.retain(|(_, r)| r.strong_count() > 0);
        if let Some(ring) = rings
            .iter()
            .find(|(id, _)| *id == ctx.id())
            .and_then(|(_, r)| r.upgrade())
        {
            return Ok(ring);
        }
        let uring = in_passing_thread(Uring::new)
            .unwrap_or_else(|| Err(std::io::Error::from_raw_os_error(libc::EAGAIN)))
            .map_err(|e| {
                Error::from_io(
                    &format!("context '{}': cannot set up io_uring", ctx.name()),
                    e,
                )
            })?;
        let ring = Arc::new(Ring {
            uring,
            ctx: Arc::downgrade(ctx),
            state: AtomicU8::new(LIVE),
            submit_queued: AtomicBool::new(false),
            retry: OnceCell::new(),
            retry_ns: AtomicI64::new(0),
        });
        context::set_flush_held_back(submit_for_completions);
        // The context's handler keeps the ring for as long as the context
        // lives; the registry only finds it.
        // Its poll callback lets an IOThread's busy-poll see completions
        // in the queue's shared memory, instead of sleeping in epoll until
        // the ring's descriptor wakes it (a wake-up per request at QD1).
        let (handler, poller) = (ring.clone(), ring.clone());
        ctx.set_fd_handler_full(
            ring.uring.fd(),
            Some(Arc::new(move || handler.complete())),
            None,
            Some(Arc::new(move || poller.uring.has_completions())),
        )?;
        rings.push((ctx.id(), Arc::downgrade(&ring)));
        context::on_home_leaving(home_leaving);
        Ok(ring)
    }

    /// Waits for every request the ring runs and queues their completions
    /// as bottom halves of its context: in the home thread, before it
    /// leaves. The kernel runs a request's completion (task work) on the
    /// thread that submitted it and fails what is still running when that
    /// thread exits (`EFAULT` for a buffered read that missed the page
    /// cache, `ECANCELED` for work handed to its workers).
    fn finish_in_flight(&self, ctx: &Arc<Context>) {
        let mut done = Vec::new();
        self.uring.wait_idle(&mut done);
        if !done.is_empty() {
            let c = ctx.clone();
            ctx.schedule_once(move || run(&c, done));
        }
    }

    /// Starts a read or write of `buf` at `offset` for `node`; `done` runs
    /// in the node's context. `Err` gives the request back when the ring
    /// takes none (around a `fork()`, or the kernel refused it), for the
    /// worker pool to run.
    pub(super) fn submit_io(
        self: &Arc<Self>,
        (op, file, path): (Op, &File, &Arc<str>),
        node: &Arc<Node>,
        (buf, offset, done): (IoBuf, u64, IoDone),
    ) -> std::result::Result<(), (IoBuf, IoDone)> {
        let tag = Tag {
            node: node.clone(),
            finish: Finish::Io(done, path.clone()),
        };
        self.push(op, file, (buf, offset, tag))
            .map_err(|(buf, tag)| match tag.finish {
                Finish::Io(done, _) => (buf, done),
                Finish::Sync(_) => unreachable!("a read or write was pushed"),
            })
    }

    /// Starts an `fdatasync` of `file` for `node`; `done` as in [`submit_io`](Self::submit_io).
    pub(super) fn sync(
        self: &Arc<Self>,
        file: &File,
        node: &Arc<Node>,
        done: SyncDone,
    ) -> std::result::Result<(), SyncDone> {
        let tag = Tag {
            node: node.clone(),
            finish: Finish::Sync(done),
        };
        self.push(Op::Sync, file, (IoBuf::from(Vec::new()), 0, tag))
            .map_err(|(_, tag)| match tag.finish {
                Finish::Sync(done) => done,
                Finish::Io(..) => unreachable!("a sync was pushed"),
            })
    }

    fn push(
        self: &Arc<Self>,
        op: Op,
        file: &File,
        (buf, offset, tag): (IoBuf, u64, Tag),
    ) -> std::result::Result<(), (IoBuf, Tag)> {
        if self.state.load(Acquire) != LIVE {
            return Err((buf, tag));
        }
        let Some(ctx) = self.ctx.upgrade() else {
            return Err((buf, tag));
        };
        // Only the context's home thread enters the ring: the kernel posts
        // a completion from the thread that submitted it, and interrupts
        // that thread to do so, which another caller (a vCPU thread in a
        // blocking call with a timeout) must not see. Others leave the
        // request for a bottom half there, as completions batch theirs (with
        // the queue full, it goes back to the worker pool instead).
        // Completions' requests are submitted after them (see `complete`).
        let completing = COMPLETING.get() == Arc::as_ptr(self) as usize;
        let submit = if completing {
            Submit::Later
        } else if ctx.is_home() {
            Submit::Now
        } else {
            Submit::Elsewhere
        };
        let pending = self
            .uring
            .push(op, file.as_fd(), (buf, offset, tag), submit)
            .map_err(|(_, buf, tag)| (buf, tag))?;
        if completing {
            if self.uring.unsubmitted() >= SUBMIT_BATCH {
                // A failure leaves them for the submission after the callbacks.
                let _ = self.uring.submit_pending();
            }
        } else if pending {
            // Another thread's request, or the kernel refused the
            // submission (it stays queued): the home thread submits.
            self.schedule_submit(&ctx);
        }
        Ok(())
    }

    fn schedule_submit(self: &Arc<Self>, ctx: &Context) {
        if !self.submit_queued.swap(true, AcqRel) {
            let ring = self.clone();
            ctx.schedule_once(move || ring.submit_deferred());
        }
    }

    fn submit_deferred(self: &Arc<Self>) {
        self.submit_queued.store(false, Release);
        let refused = match self.uring.submit_pending() {
            Ok(()) => {
                self.retry_ns.store(0, Relaxed);
                return;
            }
            Err(e) => e,
        };
        // They stay queued (a queued request cannot be taken back).
        let Some(ctx) = self.ctx.upgrade() else {
            return;
        };
        if refused.raw_os_error() == Some(libc::EBUSY) {
            // Completions must be reaped first: the ring's handler does,
            // in this round of the loop, and submits after them.
            self.schedule_submit(&ctx);
        } else {
            self.retry_later(&ctx);
        }
    }

    /// Submits again after a wait that doubles with each refusal.
    fn retry_later(self: &Arc<Self>, ctx: &Arc<Context>) {
        let wait = (self.retry_ns.load(Relaxed) * 2).clamp(RETRY_FIRST_NS, RETRY_MAX_NS);
        self.retry_ns.store(wait, Relaxed);
        let timer = self.retry.get_or_init(|| {
            // Weakly: the context's timer list holds an armed timer.
            let ring = Arc::downgrade(self);
            Timer::new(
                ctx,
                Arc::new(move || {
                    if let Some(ring) = ring.upgrade() {
                        ring.submit_deferred();
                    }
                }),
            )
        });
        // Cannot fail: the deadline is positive and the context alive.
        let _ = timer.modify(crate::sys::clock_ns() + wait);
    }

    /// Runs `body` (completion callbacks) as this ring's completing thread:
    /// the requests they start are held back for one submission after them,
    /// and a poll they make submits them first. Restored on unwind too: a
    /// stale mark would hold back this thread's later requests for good.
    fn completing<R>(self: &Arc<Self>, body: impl FnOnce() -> R) -> R {
        struct Restore<'a>(usize, &'a Arc<Ring>);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                COMPLETING.set(self.0);
                if std::thread::panicking() {
                    // The submission after the callbacks will not come.
                    if let Some(ctx) = self.1.ctx.upgrade() {
                        self.1.schedule_submit(&ctx);
                    }
                }
            }
        }
        let me = Arc::as_ptr(self) as usize;
        let outer = COMPLETING.get();
        if outer != 0 && outer != me {
            // Completions of this ring run from another ring's callback
            // (which polled this context): a poll flushes only the innermost
            // ring's held-back requests, so the outer ring's go now.
            submit_for_completions();
        }
        let _outer = Restore(COMPLETING.replace(me), self);
        context::before_poll(body)
    }

    /// The fd handler: runs the completions the ring has, then submits what
    /// they started.
    fn complete(self: &Arc<Self>) {
        if self.state.load(Acquire) == DEAD {
            // In a fork()'s child the descriptor reports the parent's ring.
            if let Some(ctx) = self.ctx.upgrade() {
                let _ = ctx.set_fd_handler(self.uring.fd(), None, None);
            }
            return;
        }
        // The handler runs in a poll of the context, which keeps it alive.
        let Some(ctx) = self.ctx.upgrade() else {
            return;
        };
        // Requests the kernel completes while they are submitted (page-cache
        // hits) are there as soon as the submission returns: take them in
        // the same call, a few rounds at most so the context's other
        // handlers and bottom halves still get their turn.
        for _ in 0..ROUNDS {
            let mut done = Vec::new();
            self.uring.reap(&mut done);
            let reaped = !done.is_empty();
            if reaped {
                self.completing(|| run(&ctx, done));
            }
            // What the callbacks started, and the rest of short transfers
            // if the reap could not submit it.
            self.submit_deferred();
            if !reaped {
                break;
            }
        }
    }
}

/// What a poll from a completion callback runs first: the requests the
/// running completions started (see `context::before_poll`).
fn submit_for_completions() {
    let completing = COMPLETING.get();
    let ring = RINGS
        .lock()
        .iter()
        .find(|(_, ring)| ring.as_ptr() as usize == completing)
        .and_then(|(_, ring)| ring.upgrade());
    if let Some(ring) = ring {
        // A failure leaves them for the submission after the callbacks.
        let _ = ring.uring.submit_pending();
    }
}

/// Before `ctx`'s home thread leaves it (see `context::on_home_leaving`):
/// its ring, if any, finishes what that thread submitted.
fn home_leaving(ctx: &Arc<Context>) {
    let ring = RINGS
        .lock()
        .iter()
        .find(|(id, _)| *id == ctx.id())
        .and_then(|(_, r)| r.upgrade());
    if let Some(ring) = ring.filter(|r| r.state.load(Acquire) == LIVE) {
        ring.finish_in_flight(ctx);
    }
}

/// Runs completions in order (see `sections::run_completions`).
fn run(ctx: &Arc<Context>, done: Vec<Completion<Tag>>) {
    sections::run_completions(ctx, done, |c| c.tag.node.completion_key(), finish);
}

fn finish(c: Completion<Tag>) {
    let Tag { node, finish } = c.tag;
    // The node (and so its image) is let go of before the completion runs,
    // as the worker pool does: a caller that frees the graph from its last
    // completion finds the image closed.
    drop(node);
    match finish {
        Finish::Io(done, path) => done(c.result.map_err(|e| io_error(&path, e)), c.buf),
        Finish::Sync(done) => done(c.result.map(drop)),
    }
}

/// A ring paused for a `fork()`, and the completions it collected.
type Paused = (Arc<Ring>, Vec<Completion<Tag>>);

/// The rings paused by the running `fork()`, and what they finished.
static PAUSED_FOR_FORK: Mutex<Vec<Paused>> = Mutex::new(Vec::new());

type Registry = parking_lot::MutexGuard<'static, Vec<(u64, Weak<Ring>)>>;

thread_local! {
    /// The registry, held by the forking thread from the prepare until
    /// after the fork, in the parent and in the child: no ring is made
    /// after the prepare paused them, and the child finds it unlocked
    /// (another thread holding it at the fork would hold it for ever).
    static HELD_FOR_FORK: std::cell::RefCell<Option<Registry>> =
        const { std::cell::RefCell::new(None) };
}

/// `fork()` prepare: every ring stops taking requests and finishes those
/// the kernel runs; their completions run after the fork, on both sides.
pub(super) fn before_fork() {
    let rings = RINGS.lock();
    let paused = rings
        .iter()
        .filter_map(|(_, r)| r.upgrade())
        .map(|ring| {
            ring.state.store(PAUSED, Release);
            let mut done = Vec::new();
            ring.uring.pause(&mut done);
            (ring, done)
        })
        .collect();
    *PAUSED_FOR_FORK.lock() = paused;
    // (A fork from a thread whose thread-locals are gone forks unprotected.)
    let _ = HELD_FOR_FORK.try_with(|h| *h.borrow_mut() = Some(rings));
}

/// After a `fork()`: the rings go on in the parent (`child`: false) or
/// are dead in the child; either way the completions the prepare collected
/// run as bottom halves in their contexts (in the child, from its first
/// poll of each: the handler must not block on a BH queue's lock).
pub(super) fn after_fork(child: bool) {
    let held = HELD_FOR_FORK
        .try_with(|h| h.borrow_mut().take())
        .ok()
        .flatten();
    if child {
        // Every ring, also one made after the prepare if the registry could
        // not be held (try_lock: a thread that held it at the fork does not
        // exist in the child).
        let rings = held.or_else(|| RINGS.try_lock());
        for ring in rings
            .iter()
            .flat_map(|r| r.iter())
            .filter_map(|(_, r)| r.upgrade())
        {
            ring.uring.abandon();
            ring.state.store(DEAD, Release);
        }
    } else {
        drop(held);
    }
    let paused = std::mem::take(&mut *PAUSED_FOR_FORK.lock());
    for (ring, done) in paused {
        if !child {
            ring.uring.resume();
            ring.state.store(LIVE, Release);
        }
        let Some(ctx) = ring.ctx.upgrade().filter(|_| !done.is_empty()) else {
            continue;
        };
        if child {
            let c = ctx.clone();
            ctx.schedule_in_forked_child(move || run(&c, done));
        } else {
            let c = ctx.clone();
            ctx.schedule_once(move || run(&c, done));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn no_ring_is_made_between_a_forks_prepare_and_its_end() {
        // Made after the prepare paused the others, a ring would run
        // requests across the fork; the registry is held until its end.
        if !available() {
            eprintln!("io_uring unavailable: skipped");
            return;
        }
        let ctx = Context::new("fork-window").unwrap();
        before_fork();
        let (tx, rx) = std::sync::mpsc::channel();
        let c = ctx.clone();
        let maker = std::thread::spawn(move || tx.send(Ring::of(&c).is_ok()).unwrap());
        let during = rx.recv_timeout(Duration::from_millis(200));
        after_fork(false);
        let after = rx.recv_timeout(Duration::from_secs(10));
        maker.join().unwrap();
        assert!(
            during.is_err(),
            "a ring was made while rings were paused for a fork"
        );
        assert_eq!(after, Ok(true));
    }
}
