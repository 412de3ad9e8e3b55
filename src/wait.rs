//! `poll_while`: wait for a condition while letting other threads run the
//! context the caller holds, and the kicks that end such waits.
//!
//! No lost wake-ups: a waiter registers *before* it checks its condition,
//! and a completer changes state *before* it kicks (with a full fence in
//! between on both sides), so either the waiter sees the change, or the
//! completer sees the waiter and makes its next blocking poll return.
#![forbid(unsafe_code)]

use std::sync::atomic::{fence, AtomicUsize, Ordering::*};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::context::{held_by_caller, Context, Wait};
use crate::diag::{self, Level};
use crate::error::{invalid, not_permitted, Error, Result};
use crate::set::ContextSet;
use crate::{sys, thread};

static WAITERS: Mutex<Vec<Arc<Context>>> = Mutex::new(Vec::new());
static NUM_WAITERS: AtomicUsize = AtomicUsize::new(0);

/// Wakes every thread waiting in [`poll_while`] so it re-checks its condition.
/// Costs one fence and one load when nobody waits.
pub fn kick() {
    fence(SeqCst);
    if NUM_WAITERS.load(Relaxed) == 0 {
        return;
    }
    for ctx in WAITERS.lock().iter() {
        ctx.kick();
    }
}

/// How many `poll_while` calls are polling `ctx` right now.
pub fn waiters_on(ctx: &Context) -> usize {
    WAITERS
        .lock()
        .iter()
        .filter(|c| std::ptr::eq(&***c, ctx))
        .count()
}

/// Present in `WAITERS` for as long as it lives.
struct Registration(Arc<Context>);

impl Registration {
    fn new(ctx: &Arc<Context>) -> Self {
        WAITERS.lock().push(ctx.clone());
        NUM_WAITERS.fetch_add(1, SeqCst);
        fence(SeqCst);
        Registration(ctx.clone())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut waiters = WAITERS.lock();
        if let Some(i) = waiters.iter().position(|c| Arc::ptr_eq(c, &self.0)) {
            waiters.swap_remove(i);
        }
        NUM_WAITERS.fetch_sub(1, SeqCst);
    }
}

/// Options of [`poll_while`].
#[derive(Clone, Copy, Debug, Default)]
pub struct WaitOptions {
    /// Give up with `ETIMEDOUT` after this many nanoseconds.
    pub timeout_ns: Option<i64>,
    /// Release every level the caller holds of the context, not just one.
    pub release_all: bool,
}

/// Polls until `cond` returns false.
///
/// The home thread of `ctx` (or any thread, when `ctx` has no home yet)
/// polls `ctx` itself. Any other thread polls its current context, and if it
/// holds `ctx` it releases it around each blocking poll so that `ctx`'s home
/// thread can make progress. Holding `ctx` more than once would make that
/// release useless, and the wait would never end: that is refused with
/// `EDEADLK` unless `release_all` is set.
pub fn poll_while(
    ctx: &Arc<Context>,
    cond: &mut dyn FnMut() -> bool,
    opts: WaitOptions,
) -> Result<()> {
    Waiter::new(ctx, opts)?.wait_while(cond)
}

/// A `poll_while` whose checks are done: starting work and then waiting for
/// it with a `Waiter` cannot fail half-way with the work already started.
pub struct Waiter {
    ctx: Arc<Context>,
    /// The context this thread polls while it waits.
    poll_ctx: Arc<Context>,
    /// Whether to release `ctx` around each poll.
    release: bool,
    /// Contexts of a held set given back around each poll, ascending by id.
    set: Vec<Arc<Context>>,
    deadline: Option<i64>,
    timeout_ns: i64,
    started: i64,
    /// When to log that the wait is slow (once), per `AIOCTX_WAIT_WARN_MS`.
    warn_at: Option<i64>,
    /// The thread that waits: the depths it releases and restores are its own.
    thread: u64,
    registered: Registration,
}

impl Waiter {
    /// Checks that the calling thread can wait for `ctx` (`EDEADLK`, `EPERM`,
    /// `EINVAL` otherwise) and registers it for kicks.
    pub fn new(ctx: &Arc<Context>, opts: WaitOptions) -> Result<Waiter> {
        let waiter = Waiter::prepare(ctx, opts)?;
        // Only a wait that gives the context back re-acquires it later.
        if waiter.release {
            waiter.refuse_other_holds()?;
        }
        Ok(waiter)
    }

    /// A waiter for a caller that holds the set `held` (which includes
    /// `ctx`): see [`releasing`](Self::releasing).
    pub fn with_set(ctx: &Arc<Context>, opts: WaitOptions, held: &ContextSet) -> Result<Waiter> {
        Waiter::prepare(ctx, opts)?.releasing(held)
    }

    /// `EDEADLK` if a wait that gives `ctx` back finds the caller holding
    /// another context (its own loop's aside): a thread that takes `ctx` and
    /// then blocks on that one would make the re-acquire after the poll hang
    /// (ABBA), and no timeout could end it. (Set waits give the whole set
    /// back instead; see [`releasing`](Self::releasing).)
    fn refuse_other_holds(&self) -> Result<()> {
        let other = held_by_caller()
            .into_iter()
            .find(|c| !Arc::ptr_eq(c, &self.ctx) && !Arc::ptr_eq(c, &self.poll_ctx));
        match other {
            None => Ok(()),
            Some(c) => Err(Error::new(
                libc::EDEADLK,
                format!(
                    "waiting for context '{}' (id {}) while also holding context '{}' (id {}): a \
                     thread that takes the first and then waits for the second would deadlock \
                     with this wait. Release '{}' first, or hold both through an AioctxSet that the \
                     wait gives back (the block layer's graph-wide calls do).",
                    self.ctx.name(),
                    self.ctx.id(),
                    c.name(),
                    c.id(),
                    c.name()
                ),
            )),
        }
    }

    fn prepare(ctx: &Arc<Context>, opts: WaitOptions) -> Result<Waiter> {
        let started = sys::clock_ns();
        let deadline = match opts.timeout_ns {
            Some(t) if t < 0 => return Err(invalid("negative timeout: use None for no timeout")),
            Some(t) => Some(started.saturating_add(t)),
            None => None,
        };
        let (poll_ctx, release) = if ctx.is_home() || !ctx.has_home() {
            (ctx.clone(), false)
        } else {
            let depth = ctx.lock().depth();
            if depth > 1 && !opts.release_all {
                return Err(recursive_hold(ctx, depth));
            }
            (Context::current()?, depth > 0)
        };
        Ok(Waiter {
            ctx: ctx.clone(),
            registered: Registration::new(&poll_ctx),
            poll_ctx,
            release,
            set: Vec::new(),
            deadline,
            timeout_ns: opts.timeout_ns.unwrap_or(0),
            started,
            warn_at: diag::wait_warning_ns().map(|ns| started.saturating_add(ns)),
            thread: thread::current(),
        })
    }

    /// While waiting, give back every context of `held` — a set the caller
    /// holds — not just the one waited for, and take them back in the set's
    /// order after each poll. Keeping the others would block any thread that
    /// took the released context and now waits for one of them, while that
    /// thread blocks the work being waited for: a deadlock. `EDEADLK` if the
    /// caller holds a member more than once (other than its own loop's).
    /// `EPERM` if the caller does not hold the set (or a member was released
    /// behind its back): releasing it would end the wait holding more than
    /// it began with.
    pub fn releasing(mut self, held: &ContextSet) -> Result<Waiter> {
        if !held.is_held() {
            return Err(not_permitted("waiting with a set the caller does not hold"));
        }
        for ctx in held.iter() {
            let depth = ctx.lock().depth();
            if depth == 0 {
                return Err(not_permitted(format!(
                    "context '{}' of the held set was released behind the set's back",
                    ctx.name()
                )));
            }
            // Still held after the release: harmless unless another thread runs it.
            if depth > 1 && !Arc::ptr_eq(ctx, &self.poll_ctx) && ctx.runs_elsewhere() {
                return Err(recursive_hold(ctx, depth));
            }
        }
        self.set = held.iter().cloned().collect();
        self.release = self.release && !self.set.iter().any(|c| Arc::ptr_eq(c, &self.ctx));
        Ok(self)
    }

    /// Polls until `cond` returns false, or the deadline passes (`ETIMEDOUT`).
    /// The caller's depth on the context is the same on return as on entry.
    pub fn wait_while(mut self, cond: &mut dyn FnMut() -> bool) -> Result<()> {
        while cond() {
            self.poll_once()?;
        }
        Ok(())
    }

    /// One step of a wait whose condition the caller checks itself (a
    /// condition that is an expression, as in QEMU's AIO_WAIT_WHILE): gives
    /// the context(s) back, polls once (blocking until something runs, a
    /// kick, or the deadline), and takes them back. `ETIMEDOUT` once the
    /// deadline passed; `EPERM` from a thread other than the waiter's.
    pub fn poll_once(&mut self) -> Result<()> {
        if thread::current() != self.thread {
            return Err(not_permitted(
                "a wait is polled only by the thread that began it",
            ));
        }
        let now = sys::clock_ns();
        if self.deadline.is_some_and(|d| now >= d) {
            return Err(timed_out(&self.ctx, self.timeout_ns));
        }
        if self.warn_at.is_some_and(|w| now >= w) {
            self.warn_at = None;
            diag::log(Level::Warning, &self.still_waiting(now - self.started));
        }
        let wait = match [self.deadline, self.warn_at].into_iter().flatten().min() {
            Some(t) => Wait::Until(t),
            None => Wait::Forever,
        };
        self.adopt_if_orphaned();
        let held = if self.release {
            self.ctx.lock().release_all()
        } else {
            0
        };
        // Descending, then ascending: the global order of sets.
        self.set.iter().rev().for_each(|c| drop(c.release()));
        let polled = self.poll_ctx.poll_wait(wait);
        self.set.iter().for_each(|c| drop(c.acquire()));
        self.ctx.lock().restore(held);
        polled.map(drop)
    }

    /// If the context's home thread went away while we wait (an IOThread
    /// freed, a thread exited), nobody else will run its work: poll it here.
    fn adopt_if_orphaned(&mut self) {
        if !Arc::ptr_eq(&self.poll_ctx, &self.ctx) && !self.ctx.has_home() {
            self.poll_ctx = self.ctx.clone();
            self.release = false;
            self.registered = Registration::new(&self.ctx);
        }
    }

    fn still_waiting(&self, waited_ns: i64) -> String {
        format!(
            "poll_while on context '{}' (id {}) still waiting after {:.1} ms (AIOCTX_WAIT_WARN_MS); \
             who holds what:\n{}",
            self.ctx.name(),
            self.ctx.id(),
            waited_ns as f64 / 1e6,
            diag::dump()
        )
    }
}

fn recursive_hold(ctx: &Context, depth: u32) -> Error {
    Error::new(
        libc::EDEADLK,
        format!(
            "poll_while on context '{}' (id {}): the calling thread holds it {depth} times, so \
             releasing it once cannot let its home thread run and the wait would hang. Acquire \
             each context once (collect them in an AioctxSet), or pass AIOCTX_WAIT_RELEASE_ALL.",
            ctx.name(),
            ctx.id()
        ),
    )
}

fn timed_out(ctx: &Context, timeout_ns: i64) -> Error {
    Error::new(
        libc::ETIMEDOUT,
        format!(
            "poll_while on context '{}' (id {}): condition still true after {:.3} ms. \
             Who holds what:\n{}",
            ctx.name(),
            ctx.id(),
            timeout_ns as f64 / 1e6,
            diag::dump()
        ),
    )
}
