//! `poll_while`: wait for a condition while letting other threads run the
//! context the caller holds, and the deadlock detection that keeps such a
//! wait from hanging.
//!
//! No lost wake-ups: a waiter registers (`context::Registration`) *before*
//! it checks its condition, and whatever completes the work wakes the
//! waiters registered on its context *after* changing state.
//!
//! A wait may hold contexts other than the one it gives back, as in QEMU.
//! That is a deadlock only when a thread the wait depends on (the waited
//! context's home thread, and whoever that one is blocked on, transitively)
//! is blocked acquiring a context the waiter holds. The lock records who is
//! blocked on what, and tells the waiters along the chain at once; a waiter
//! that finds itself on a cycle (twice, a poll apart, so a chain read while
//! it changed is not taken for one) lends the context the cycle needs: for
//! one poll before it reports `EDEADLK` naming the cycle (so every lock is
//! back as on entry), or around every poll with `release_held`.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use once_cell::sync::Lazy;

use crate::context::{self, describe_cycle, find_cycle, Blocking, Context, Hop, Registration};
use crate::diag::{self, Level};
use crate::error::{invalid, not_permitted, Error, Result};
use crate::lock::LockError;
use crate::set::ContextSet;
use crate::{sys, thread};

/// Wakes every thread waiting in [`poll_while`] so it re-checks its
/// condition: for state changed outside any callback. One fence and one
/// load when nobody waits.
pub fn kick() {
    context::kick_all();
}

/// How many waits are waiting for `ctx`'s work right now.
pub fn waiters_on(ctx: &Context) -> usize {
    context::waiting_on(ctx)
}

/// Options of [`poll_while`].
#[derive(Clone, Copy, Debug, Default)]
pub struct WaitOptions {
    /// Give up with `ETIMEDOUT` after this many nanoseconds.
    pub timeout_ns: Option<i64>,
    /// Release every level the caller holds of the context, not just one.
    pub release_all: bool,
    /// When the wait finds itself on a deadlock cycle, give the contexts
    /// the cycle needs back around each poll and go on, instead of `EDEADLK`.
    pub release_held: bool,
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

/// How long a suspected cycle waits to be confirmed.
const CONFIRM_NS: i64 = 1_000_000;

/// The backstop for a missed kick: a condition changed where no kick
/// reaches this wait (another context's callback that does not call
/// `aioctx_wait_kick`, as QEMU's code must) would otherwise leave it asleep
/// for good. So an unkicked wait re-checks anyway, 1 ms after it began, then
/// at intervals doubling up to `recheck_max_ns()`: a missed kick costs at
/// most that much latency, and a long wait a few wake-ups a second.
const RECHECK_FIRST_NS: i64 = 1_000_000;

/// The longest interval between re-checks (`AIOCTX_WAIT_RECHECK_MS`, read
/// once; default 64 ms); None: no backstop, a wait sleeps until woken (the
/// C tests run so, to catch a lost wake-up the backstop would hide).
fn recheck_max_ns() -> Option<i64> {
    static NS: Lazy<Option<i64>> = Lazy::new(|| {
        let ms = std::env::var("AIOCTX_WAIT_RECHECK_MS")
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|&ms| ms >= 0)
            .unwrap_or(64);
        (ms > 0).then(|| ms.saturating_mul(1_000_000))
    });
    *NS
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
    /// Contexts lent to the threads of a deadlock cycle around each poll.
    lent: Vec<Arc<Context>>,
    release_all: bool,
    release_held: bool,
    /// A cycle seen once, and when to look again to confirm it.
    suspected: Option<(String, i64)>,
    /// A confirmed cycle, reported once the lent contexts are back.
    deadlock: Option<Error>,
    deadline: Option<i64>,
    timeout_ns: i64,
    started: i64,
    /// When to log that the wait is slow (once), per `AIOCTX_WAIT_WARN_MS`.
    warn_at: Option<i64>,
    /// When to re-check the condition even if nothing woke the wait (None:
    /// never), and the interval after that (see `RECHECK_FIRST_NS`).
    recheck_at: Option<i64>,
    recheck_ns: i64,
    /// The thread that waits: the depths it releases and restores are its own.
    thread: u64,
    registered: Registration,
}

impl Waiter {
    /// Checks that the calling thread can wait for `ctx` (`EDEADLK`, `EPERM`,
    /// `EINVAL` otherwise) and registers it for kicks.
    pub fn new(ctx: &Arc<Context>, opts: WaitOptions) -> Result<Waiter> {
        let started = sys::clock_ns();
        let deadline = match opts.timeout_ns {
            Some(t) if t < 0 => return Err(invalid("negative timeout: use None for no timeout")),
            Some(t) => Some(started.saturating_add(t)),
            None => None,
        };
        let (poll_ctx, release) = if ctx.is_home() || !ctx.has_home() {
            (ctx.clone(), false)
        } else {
            (Context::current()?, check_depth(ctx, opts.release_all)? > 0)
        };
        let mut waiter = Waiter::bare(ctx, poll_ctx, started, deadline);
        waiter.release = release;
        waiter.release_all = opts.release_all;
        waiter.release_held = opts.release_held;
        waiter.timeout_ns = opts.timeout_ns.unwrap_or(0);
        waiter.warn_at = diag::wait_warning_ns().map(|ns| started.saturating_add(ns));
        waiter.recheck_at =
            recheck_max_ns().map(|max| started.saturating_add(RECHECK_FIRST_NS.min(max)));
        Ok(waiter)
    }

    /// A waiter of the calling thread for work of `ctx`, polling `poll_ctx`,
    /// registered for kicks, its checks left to the caller; it releases,
    /// lends, warns and rechecks nothing until told.
    fn bare(
        ctx: &Arc<Context>,
        poll_ctx: Arc<Context>,
        started: i64,
        deadline: Option<i64>,
    ) -> Waiter {
        Waiter {
            ctx: ctx.clone(),
            registered: Registration::new(ctx, &poll_ctx),
            poll_ctx,
            release: false,
            set: Vec::new(),
            lent: Vec::new(),
            release_all: false,
            release_held: false,
            suspected: None,
            deadlock: None,
            deadline,
            timeout_ns: 0,
            started,
            warn_at: None,
            recheck_at: None,
            recheck_ns: RECHECK_FIRST_NS,
            thread: thread::current(),
        }
    }

    /// Takes back, for a thread without an event loop, the contexts it lent
    /// (with their depths) while it waited for work of `ctx` otherwise (see
    /// `IoThread::stop`), as a wait takes back what it lent: blocked on one,
    /// it lends what a deadlock cycle through it needs (logged), and takes
    /// that back last.
    pub(crate) fn take_back_lent(ctx: &Arc<Context>, lent: Vec<(Arc<Context>, u32)>) -> Result<()> {
        if lent.is_empty() {
            return Ok(());
        }
        let (contexts, depths): (Vec<_>, Vec<_>) = lent.into_iter().unzip();
        let mut waiter = Waiter::bare(ctx, ctx.clone(), sys::clock_ns(), None);
        waiter.lent = contexts;
        waiter.release_held = true;
        waiter.take_back(0, &depths)
    }

    /// A waiter for a caller that holds the set `held` (which includes
    /// `ctx`): see [`releasing`](Self::releasing).
    pub fn with_set(ctx: &Arc<Context>, opts: WaitOptions, held: &ContextSet) -> Result<Waiter> {
        Waiter::new(ctx, opts)?.releasing(held)
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
    /// deadline passed; `EDEADLK` on a deadlock cycle; `EPERM` from a thread
    /// other than the waiter's.
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
        self.warn_if_due(now);
        self.look_for_cycle(now);
        self.schedule_recheck(now);
        let confirm_at = self.suspected.as_ref().map(|s| s.1);
        let mut wait = match [self.deadline, self.warn_at, confirm_at, self.recheck_at]
            .into_iter()
            .flatten()
            .min()
        {
            Some(t) => Blocking::Until(t),
            None => Blocking::Forever,
        };
        if self.choose_poll_ctx()? {
            // A kick may have gone to the old loop after the caller's last
            // check: look again before blocking on the new one.
            wait = Blocking::No;
        }
        let held = if self.release {
            self.ctx.lock().release_all()
        } else {
            0
        };
        // Descending, then ascending: the global order of sets.
        self.set.iter().rev().for_each(|c| drop(c.release()));
        let lent: Vec<u32> = self.lent.iter().map(|c| c.lock().release_all()).collect();
        // A callback that panics must not leave what was given back given
        // away: take it back, then let the panic go on.
        let poll_ctx = self.poll_ctx.clone();
        // Spins first like the waited context's loop would (when its own
        // does not): the work often completes within the window.
        let polled =
            std::panic::catch_unwind(AssertUnwindSafe(|| poll_ctx.poll_for(wait, &self.ctx)));
        let retaken = self.take_back(held, &lent);
        let polled = polled.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        if let Some(e) = self.deadlock.take() {
            self.lent.clear();
            return Err(retaken.err().unwrap_or(e));
        }
        retaken?;
        polled.map(drop)
    }

    /// Takes back what the poll gave away: the set in ascending order, then
    /// the waited-for context, then what was lent (its thread is done with
    /// the waited-for context once that is ours again). Tries all, honouring
    /// the deadline, and names those it could not take in time.
    fn take_back(&mut self, held: u32, lent: &[u32]) -> Result<()> {
        let mut wanted: Vec<(Arc<Context>, u32)> =
            self.set.iter().map(|c| (c.clone(), 1)).collect();
        wanted.push((self.ctx.clone(), held));
        let mut lent: Vec<(Arc<Context>, u32)> = self
            .lent
            .iter()
            .cloned()
            .zip(lent.iter().copied())
            .collect();
        let mut missed = Vec::new();
        let mut i = 0;
        // Lent contexts go last; retaking may lend more (pushed onto `lent`).
        while let Some((ctx, depth)) = if i < wanted.len() {
            Some(wanted[i].clone())
        } else {
            lent.get(i - wanted.len()).cloned()
        } {
            i += 1;
            if let Err(owner) = self.retake(&ctx, depth, &mut lent) {
                missed.push((ctx, depth, owner));
            }
        }
        if missed.is_empty() {
            return Ok(());
        }
        let lost: Vec<String> = missed
            .iter()
            .map(|(c, depth, owner)| {
                format!(
                    "'{}' ({depth} level(s); held by thread {})",
                    c.name(),
                    thread::describe(*owner)
                )
            })
            .collect();
        Err(Error::new(
            libc::ETIMEDOUT,
            format!(
                "{} The wait gave back context(s) it could not take back in time, so the caller \
                 no longer holds them: {}.",
                timed_out(&self.ctx, self.timeout_ns).message(),
                lost.join(", ")
            ),
        ))
    }

    /// Re-acquires `depth` levels of `ctx`, blocking at most until the
    /// deadline (logging the slow-wait warning on the way if it is due);
    /// `Err(owner)` if the deadline passed first. While blocked it looks for
    /// a cycle through itself every few milliseconds: `ctx`'s holder blocked
    /// on a context this thread still holds. It then lends that one (onto
    /// `lent`, taken back last) so the holder can finish and let go.
    fn retake(
        &mut self,
        ctx: &Arc<Context>,
        depth: u32,
        lent: &mut Vec<(Arc<Context>, u32)>,
    ) -> std::result::Result<(), u64> {
        if depth == 0 {
            return Ok(());
        }
        loop {
            let look_at = sys::clock_ns() + CONFIRM_NS;
            let bound = [self.deadline, self.warn_at, Some(look_at)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(look_at);
            match ctx.lock().acquire_until(bound) {
                Ok(()) => break,
                Err(LockError::TimedOut { owner }) => {
                    let now = sys::clock_ns();
                    if self.deadline.is_some_and(|d| now >= d) {
                        return Err(owner);
                    }
                    self.warn_if_due(now);
                    let first = Hop::Acquires {
                        thread: self.thread,
                        ctx: ctx.clone(),
                        owner,
                    };
                    let found = find_cycle(self.thread, first, |_| false);
                    if let Some(needed) = self.confirmed(found, now) {
                        let levels = needed.lock().release_all();
                        lent.push((needed, levels));
                    }
                }
                // Only the depth can overflow, and it was this deep before.
                Err(_) => return Err(0),
            }
        }
        ctx.lock().restore(depth - 1);
        Ok(())
    }

    /// Walks the wait-for graph when a blocked thread pointed here (or at the
    /// first poll): a cycle seen twice, a poll apart, is a deadlock.
    fn look_for_cycle(&mut self, now: i64) {
        let due = self.suspected.as_ref().is_some_and(|s| now >= s.1);
        if !due && !self.registered.take_suspect() {
            return;
        }
        let given_back = |c: &Arc<Context>| {
            (self.release && Arc::ptr_eq(c, &self.ctx))
                || self.set.iter().chain(&self.lent).any(|m| Arc::ptr_eq(m, c))
        };
        let runner = self.ctx.home_thread();
        let first = (runner != 0 && runner != self.thread).then(|| Hop::Waits {
            thread: self.thread,
            ctx: self.ctx.clone(),
            runner,
        });
        let found = first.and_then(|hop| find_cycle(self.thread, hop, given_back));
        if let Some(needed) = self.confirmed(found, now) {
            if !self.lent.iter().any(|c| Arc::ptr_eq(c, &needed)) {
                self.lent.push(needed);
            }
        }
    }

    /// The context to lend once `found` is the cycle seen at the last look
    /// too (a chain read while it changed is not taken for a cycle); notes
    /// the cycle for `EDEADLK`, or logs it with `release_held`.
    fn confirmed(&mut self, found: Option<Vec<Hop>>, now: i64) -> Option<Arc<Context>> {
        let Some(path) = found else {
            self.suspected = None;
            return None;
        };
        let cycle = describe_cycle(&path);
        match self.suspected.take() {
            Some((seen, _)) if seen == cycle => {}
            _ => {
                self.suspected = Some((cycle, now + CONFIRM_NS));
                return None;
            }
        }
        let needed = path.last().map(Hop::context)?.clone();
        self.deadlocked(&needed, cycle);
        Some(needed)
    }

    fn deadlocked(&mut self, needed: &Arc<Context>, cycle: String) {
        if self.release_held {
            diag::log(
                Level::Info,
                &format!(
                    "{cycle}; giving context '{}' back around each poll (AIOCTX_WAIT_RELEASE_HELD)",
                    needed.name()
                ),
            );
        } else {
            self.deadlock
                .get_or_insert_with(|| deadlock_error(&self.ctx, needed, &cycle));
        }
    }

    /// Polls the context itself when it has no home (the first poll claims
    /// it), or when its home thread went away while we wait (an IOThread
    /// freed, a thread exited), since nobody else will run its work; else
    /// polls our own loop, also when another waiter adopted it first.
    /// Returns whether the loop to poll changed.
    fn choose_poll_ctx(&mut self) -> Result<bool> {
        let polls_it = Arc::ptr_eq(&self.poll_ctx, &self.ctx);
        if polls_it == (self.ctx.is_home() || (!self.ctx.has_home() && self.ctx.claim().is_ok())) {
            return Ok(false);
        }
        if polls_it {
            self.poll_ctx = Context::current()?;
            let in_set = self.set.iter().any(|c| Arc::ptr_eq(c, &self.ctx));
            self.release = check_depth(&self.ctx, self.release_all)? > 0 && !in_set;
        } else {
            self.poll_ctx = self.ctx.clone();
            self.release = false;
        }
        self.registered = Registration::new(&self.ctx, &self.poll_ctx);
        Ok(true)
    }

    /// Moves the backstop re-check on once it is due (see `RECHECK_FIRST_NS`).
    fn schedule_recheck(&mut self, now: i64) {
        let (Some(at), Some(max)) = (self.recheck_at, recheck_max_ns()) else {
            return;
        };
        if now >= at {
            self.recheck_ns = self.recheck_ns.saturating_mul(2).min(max);
            self.recheck_at = Some(now.saturating_add(self.recheck_ns));
        }
    }

    fn warn_if_due(&mut self, now: i64) {
        if self.warn_at.is_some_and(|w| now >= w) {
            self.warn_at = None;
            diag::log(Level::Warning, &self.still_waiting(now - self.started));
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

/// The caller's depth on `ctx`, which a wait that gives it back releases:
/// `EDEADLK` if more than one level would stay behind.
fn check_depth(ctx: &Context, release_all: bool) -> Result<u32> {
    let depth = ctx.lock().depth();
    if depth > 1 && !release_all {
        return Err(recursive_hold(ctx, depth));
    }
    Ok(depth)
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

fn deadlock_error(ctx: &Context, needed: &Context, cycle: &str) -> Error {
    Error::new(
        libc::EDEADLK,
        format!(
            "poll_while on context '{}' (id {}): deadlock: {cycle}. Release context '{}' before \
             waiting, or pass AIOCTX_WAIT_RELEASE_HELD to give it back around the wait's polls.",
            ctx.name(),
            ctx.id(),
            needed.name()
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
