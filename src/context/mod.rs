//! AioContext-style event loops: one lock, one home thread, and the bottom
//! halves, timers and fd handlers that run there.
//!
//! A poll has two phases, as in QEMU's `aio_poll`:
//! 1. *wait*, without the context lock: epoll on the handlers' fds and the
//!    notifier, for at most the nearest timer deadline (not at all when a BH
//!    is pending or the poll is non-blocking);
//! 2. *dispatch*, with the context lock: the BHs pending when the dispatch
//!    began, then ready fd handlers, then expired timers.
//!
//! The notify-me protocol keeps cross-thread wake-ups cheap: `notify_me`
//! counts the blocking waits in progress (plus one while a foreign loop
//! embeds the context), and `notify` writes the eventfd only when it is
//! non-zero, and only once until the next poll drains it.
//!
//! A notify is never lost: it also sets `notify_pending`, which the next
//! poll (blocking or not) consumes, and a blocking poll that finds it set
//! does not sleep (QEMU's `notified`, since 5.1).
//!
//! With polling on (`set_poll_params`; IOThreads by default), a blocking
//! poll first busy-checks for work for up to its adaptive window before it
//! sleeps; see `spin.rs` for how that keeps the protocol above.

mod bh;
mod fd;
mod poll_params;
mod spin;
mod timer;
mod waiters;

pub use bh::Bh;
pub use poll_params::{PollParams, IOTHREAD_DEFAULT_MAX_NS};
pub use timer::Timer;
pub(crate) use waiters::{describe_cycle, find_cycle, wait_for_callback, waiting_on, Hop};
pub use waiters::{kick_all, Registration};

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::fmt::Write as _;
use std::os::fd::RawFd;
use std::sync::atomic::{
    fence, AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering::*,
};
use std::sync::{Arc, OnceLock, Weak};

use once_cell::sync::OnceCell;
use parking_lot::Mutex;

use crate::error::{invalid, not_permitted, Error, Result};
use crate::lock::{ContextLock, LockError};
use crate::sys::epoll::{Epoll, Interest, Ready};
use crate::sys::{self, eventfd::EventFd};
use crate::{thread, waitfor};
use bh::BhQueue;
use fd::{Callbacks, FdHandlers, NOTIFIER_KEY};
use timer::TimerList;
use waiters::Waiters;

/// A callback run in a context's home thread with its lock held.
pub type Callback = Arc<dyn Fn() + Send + Sync>;

/// An fd handler's poll callback (QEMU's `io_poll`): whether there is work
/// for the handler's read callback. Run by a busy-polling loop in the home
/// thread, without the context's lock.
pub type PollCallback = Arc<dyn Fn() -> bool + Send + Sync>;

/// Hands on the work a thread holds back while it runs callbacks (an
/// io_uring's submissions, batched for one system call after them), which
/// must happen before the thread waits for anything: see [`before_poll`].
/// Set once by the layer that holds work back (it sits above this one).
static FLUSH_HELD_BACK: OnceLock<fn()> = OnceLock::new();

thread_local! {
    /// How many [`before_poll`] bodies this thread is in. Plain data, no
    /// destructor: a thread-local with one, first touched by a poll in a
    /// thread's exit (a pthread-key destructor), would leak its
    /// registration.
    static HOLDING_BACK: Cell<u32> = const { Cell::new(0) };
}

/// Registers what [`before_poll`] runs (the first registration stays).
pub(crate) fn set_flush_held_back(flush: fn()) {
    let _ = FLUSH_HELD_BACK.set(flush);
}

/// Runs `body` with the registered flush called at the start of every poll
/// this thread makes meanwhile (of any context): a callback that waits
/// polls, and must not sleep on work only this thread can start. Costs a
/// poll nothing otherwise, where a bottom half queued per batch for it
/// costs a poll round.
pub(crate) fn before_poll<R>(body: impl FnOnce() -> R) -> R {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            HOLDING_BACK.set(HOLDING_BACK.get() - 1);
        }
    }
    HOLDING_BACK.set(HOLDING_BACK.get() + 1);
    let _leave = Leave;
    body()
}

/// Runs the registered flush if this thread is in a [`before_poll`] body.
fn flush_before_poll() {
    if HOLDING_BACK.get() > 0 {
        if let Some(flush) = FLUSH_HELD_BACK.get() {
            flush();
        }
    }
}

/// How many polls in a row whose spin found work may skip `epoll_wait`:
/// the fds are looked at on every such poll after that many, so work found
/// by spinning cannot starve them.
const EPOLL_SKIPS_MAX: u32 = 8;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Every live context by id (the wait-for graph names locks by id). A
/// BTreeMap: memory checkers see its nodes as plainly reachable.
static ALL: Mutex<BTreeMap<u64, Weak<Context>>> = Mutex::new(BTreeMap::new());
static MAIN: OnceCell<Arc<Context>> = OnceCell::new();

/// The contexts each thread claimed, by token: its current context (the
/// first it claimed that is still alive) first. A global map rather than a
/// thread-local, so it works in calls made while the thread ends (after its
/// thread-locals are destroyed); the thread's exit hook takes its entry out
/// and disowns the contexts ([`thread_exited`]).
static HOMES: Mutex<BTreeMap<u64, Vec<Weak<Context>>>> = Mutex::new(BTreeMap::new());

/// What runs in a context's home thread before the thread leaves it (an
/// IOThread that stops, a thread that ends): the block layer's io_uring
/// finishes the requests that thread submitted, which the kernel fails
/// once their submitter is gone (see `block::ring`).
static HOME_LEAVING: OnceCell<fn(&Arc<Context>)> = OnceCell::new();

/// Registers what runs before a home thread leaves its context (the first
/// call counts).
pub(crate) fn on_home_leaving(hook: fn(&Arc<Context>)) {
    let _ = HOME_LEAVING.set(hook);
}

/// Runs the [`on_home_leaving`] hook, in `ctx`'s home thread, which leaves.
pub(crate) fn home_leaving(ctx: &Arc<Context>) {
    if let Some(hook) = HOME_LEAVING.get() {
        hook(ctx);
    }
}

/// Called in a thread that ends: it leaves its contexts without a home, so
/// the next thread that polls one (a wait on its work, say) runs it, instead
/// of every wait on it hanging.
pub(crate) fn thread_exited(token: u64) {
    let homes = HOMES.lock().remove(&token).unwrap_or_default();
    for ctx in homes.iter().filter_map(Weak::upgrade) {
        if ctx.home.load(Acquire) == token {
            home_leaving(&ctx);
        }
        if ctx.home.compare_exchange(token, 0, AcqRel, Relaxed).is_ok() {
            ctx.wake_waiters();
        }
    }
}

/// Whether the thread of `token` owns the lock of some live context.
pub(crate) fn owned_by(token: u64) -> bool {
    live().iter().any(|c| c.lock.owner() == token)
}

/// Every live context. The references are dropped after the registry's
/// lock: dropping the last one runs `Context::drop`, which takes it.
fn live() -> Vec<Arc<Context>> {
    ALL.lock().values().filter_map(Weak::upgrade).collect()
}

/// How long a poll may block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocking {
    /// Dispatch what is ready now.
    No,
    /// Block until something happens.
    Forever,
    /// Block until something happens or CLOCK_MONOTONIC reaches this time.
    Until(i64),
}

/// How often an out-of-order acquire looks for a deadlock cycle.
const CYCLE_LOOK_NS: i64 = 5_000_000;

/// Counters for diagnostics; relaxed, monotonic.
#[derive(Default)]
struct Stats {
    polls: AtomicU64,
    dispatched: AtomicU64,
    wakeups: AtomicU64,
    longest_hold_ns: AtomicI64,
    /// When the current owner took the lock (0: unknown); see `lock_timing`.
    held_since: AtomicI64,
}

/// A snapshot of a context's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextStats {
    /// Polls started (blocking or not).
    pub polls: u64,
    /// Callbacks run (BHs, fd handlers, timers).
    pub dispatches: u64,
    /// Times the notifier was written to wake a blocked poll or embedding loop.
    pub wakeups: u64,
    /// Longest time the lock was held: by dispatches always, and by
    /// acquire/release pairs when `AIOCTX_LOCK_TIMING=1` is set.
    pub longest_hold_ns: i64,
}

/// Whether explicit acquire/release pairs are timed (two clock reads per
/// pair, so off unless `AIOCTX_LOCK_TIMING=1`).
/// A plain flag (one relaxed load on the lock's fast path), set from the
/// environment when the first context is created: no lock exists before.
#[inline]
fn lock_timing() -> bool {
    LOCK_TIMING.load(Relaxed)
}

static LOCK_TIMING: AtomicBool = AtomicBool::new(false);

fn read_lock_timing_setting() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        LOCK_TIMING.store(
            std::env::var("AIOCTX_LOCK_TIMING").is_ok_and(|v| v == "1"),
            Relaxed,
        )
    });
}

/// An event loop with its recursive lock.
pub struct Context {
    id: u64,
    name: String,
    /// The name again, NUL-terminated, for C callers.
    c_name: CString,
    lock: ContextLock,
    /// Never-reused token ([`thread::unique`]) of the only thread allowed to
    /// poll (0: not yet claimed, or disowned).
    home: AtomicU64,
    bhs: BhQueue,
    timers: TimerList,
    handlers: FdHandlers,
    epoll: Epoll,
    notifier: EventFd,
    /// Blocking waits in progress, plus one once embedded.
    notify_me: AtomicU32,
    /// The notifier was written and not yet drained.
    notified: AtomicBool,
    /// A notify no poll has consumed yet: the next poll must not block.
    notify_pending: AtomicBool,
    embedded: AtomicBool,
    /// Waiters waiting for this context's work.
    waiters: Waiters,
    /// Scratch space for epoll results, reused across polls.
    ready: Mutex<Vec<Ready>>,
    /// Callbacks a `fork()`'s child handler left for the child's first poll
    /// (see [`schedule_in_forked_child`](Context::schedule_in_forked_child)).
    after_fork: Mutex<Vec<bh::OneShot>>,
    /// Dispatches started: one that sees it move on ran a nested poll.
    dispatches: AtomicU64,
    stats: Stats,
    /// The `fork()` generation ([`thread::fork_generation`]) whose process
    /// made `epoll` and `notifier`: in a child they are the parent's too.
    fork_gen: AtomicU64,
    poll_params: poll_params::PollParamsCell,
    /// The adaptive poll window in ns, written by the home thread only.
    poll_ns: AtomicI64,
    /// When a notify last wrote the notifier: when the work a sleeping poll
    /// wakes up for arrived, rather than when it woke (wake-up latency
    /// would hide that a poll window would have caught it).
    notify_at: AtomicI64,
    /// The CPU the last notify ran on: a poller on the same CPU must not
    /// spin for its sender (see `spin.rs`).
    notify_cpu: AtomicI32,
    /// Polls in a row that skipped `epoll_wait` (see `EPOLL_SKIPS_MAX`).
    epoll_skips: AtomicU32,
}

impl Context {
    /// A new context with no home thread yet.
    pub fn new(name: &str) -> Result<Arc<Context>> {
        if name.is_empty() {
            return Err(invalid("context name is empty: give the context a name"));
        }
        read_lock_timing_setting();
        let c_name = CString::new(name)
            .map_err(|_| invalid("context name contains a NUL byte: pass a plain C string"))?;
        let what = format!("context '{name}'");
        let epoll =
            Epoll::new().map_err(|e| Error::from_io(&format!("{what}: epoll_create1"), e))?;
        let notifier =
            EventFd::new().map_err(|e| Error::from_io(&format!("{what}: eventfd"), e))?;
        epoll
            .add(
                notifier.raw(),
                NOTIFIER_KEY,
                Interest {
                    read: true,
                    write: false,
                },
            )
            .map_err(|e| Error::from_io(&format!("{what}: epoll_ctl"), e))?;
        waitfor::set_on_block(waiters::on_block);
        thread::on_exit(thread::ExitHooks {
            exited: thread_exited,
            owns: owned_by,
        });
        crate::diag::add_describer(crate::diag::Section::Contexts, describe_all);
        let id = NEXT_ID.fetch_add(1, Relaxed);
        let ctx = Arc::new(Context {
            id,
            name: name.to_string(),
            c_name,
            lock: ContextLock::with_id(id),
            home: AtomicU64::new(0),
            bhs: BhQueue::default(),
            timers: TimerList::default(),
            handlers: FdHandlers::default(),
            epoll,
            notifier,
            notify_me: AtomicU32::new(0),
            notified: AtomicBool::new(false),
            notify_pending: AtomicBool::new(false),
            embedded: AtomicBool::new(false),
            waiters: Waiters::default(),
            ready: Mutex::new(Vec::new()),
            after_fork: Mutex::new(Vec::new()),
            dispatches: AtomicU64::new(0),
            stats: Stats::default(),
            fork_gen: AtomicU64::new(thread::fork_generation()),
            poll_params: Default::default(),
            poll_ns: AtomicI64::new(0),
            notify_at: AtomicI64::new(0),
            notify_cpu: AtomicI32::new(-1),
            epoll_skips: AtomicU32::new(0),
        });
        ALL.lock().insert(id, Arc::downgrade(&ctx));
        Ok(ctx)
    }

    /// The process-wide default main loop, created on first use.
    pub fn main() -> Result<Arc<Context>> {
        MAIN.get_or_try_init(|| Context::new("main")).cloned()
    }

    /// Whether `ctx` is the process-wide main context.
    pub fn is_main(ctx: &Context) -> bool {
        MAIN.get().is_some_and(|m| std::ptr::eq(&**m, ctx))
    }

    /// The calling thread's current context, if it has one (no adoption).
    pub fn current_if_any() -> Option<Arc<Context>> {
        let me = thread::current();
        let homes = HOMES.lock();
        homes
            .get(&me)?
            .iter()
            .filter_map(Weak::upgrade)
            .find(|c| c.home.load(Relaxed) == me)
    }

    /// The calling thread's current context: the one it is home of. A thread
    /// that is home of none adopts the main context if that has no home yet.
    pub fn current() -> Result<Arc<Context>> {
        if let Some(ctx) = Context::current_if_any() {
            return Ok(ctx);
        }
        let main = Context::main()?;
        main.claim().map_err(|_| {
            not_permitted(format!(
                "thread {} has no current context and the main context belongs to thread {}: \
                 wait from a thread that runs an event loop, or claim one first",
                thread::describe(thread::current()),
                thread::describe(main.home.load(Relaxed)),
            ))
        })?;
        Ok(main)
    }

    /// Unique, ascending in creation order: the order in which sets acquire.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The name given at creation (shown in dumps and errors).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name as a C string.
    pub fn c_name(&self) -> &CStr {
        &self.c_name
    }

    /// The recursive lock that callbacks run under.
    pub fn lock(&self) -> &ContextLock {
        &self.lock
    }

    /// Blocks until the calling thread owns the context; recursive.
    #[inline]
    pub fn acquire(&self) -> Result<()> {
        self.lock.acquire().map_err(|e| self.named(e))?;
        if lock_timing() {
            self.note_acquired();
        }
        Ok(())
    }

    /// Like [`acquire`](Self::acquire) for a caller that takes `self` out
    /// of the global order (it holds a context ranked above): blocks as
    /// long, but looks for a deadlock cycle through the caller every
    /// `CYCLE_LOOK_NS`, and fails with `EDEADLK`, naming it, once the same
    /// cycle was seen twice in a row.
    pub(crate) fn acquire_or_deadlock(self: &Arc<Self>) -> Result<()> {
        let me = thread::current();
        let mut seen: Option<String> = None;
        loop {
            match self.lock.acquire_until(sys::clock_ns() + CYCLE_LOOK_NS) {
                Ok(()) => break,
                Err(LockError::TimedOut { owner }) => {
                    let first = Hop::Acquires {
                        thread: me,
                        ctx: self.clone(),
                        owner,
                    };
                    let cycle = find_cycle(me, first, |_| false).map(|p| describe_cycle(&p));
                    if let (Some(now), Some(before)) = (&cycle, &seen) {
                        if now == before {
                            return Err(Error::new(
                                libc::EDEADLK,
                                format!(
                                    "{now}: acquiring context '{}' while holding a context \
                                     ranked above it breaks the global order; acquire the \
                                     set before the contexts it contains",
                                    self.name
                                ),
                            ));
                        }
                    }
                    seen = cycle;
                }
                Err(e) => return Err(self.named(e)),
            }
        }
        if lock_timing() {
            self.note_acquired();
        }
        Ok(())
    }

    /// Like [`acquire`](Self::acquire), but `EBUSY` instead of blocking.
    pub fn try_acquire(&self) -> Result<()> {
        self.lock.try_acquire().map_err(|e| self.named(e))?;
        if lock_timing() {
            self.note_acquired();
        }
        Ok(())
    }

    /// Gives one level back; `EPERM` unless the caller owns the context.
    #[inline]
    pub fn release(&self) -> Result<()> {
        if lock_timing() && self.lock.depth() == 1 {
            let since = self.stats.held_since.swap(0, Relaxed);
            if since > 0 {
                self.note_hold(sys::clock_ns() - since);
            }
        }
        self.lock.release().map_err(|e| self.named(e))
    }

    #[cold]
    fn note_acquired(&self) {
        if self.lock.depth() == 1 {
            self.stats.held_since.store(sys::clock_ns(), Relaxed);
        }
    }

    fn note_hold(&self, ns: i64) {
        self.stats.longest_hold_ns.fetch_max(ns, Relaxed);
    }

    /// A snapshot of the context's counters.
    pub fn stats(&self) -> ContextStats {
        ContextStats {
            polls: self.stats.polls.load(Relaxed),
            dispatches: self.stats.dispatched.load(Relaxed),
            wakeups: self.stats.wakeups.load(Relaxed),
            longest_hold_ns: self.stats.longest_hold_ns.load(Relaxed),
        }
    }

    /// A lock error as an [`Error`] naming the context.
    #[cold]
    fn named(&self, e: LockError) -> Error {
        let e = Error::from(e);
        Error::new(
            e.errno(),
            format!("context '{}' (id {}): {}", self.name, self.id, e.message()),
        )
    }

    /// Makes the calling thread the home thread (the only one that polls).
    /// A home thread that no longer exists in this process (it did not
    /// survive a `fork()`) is replaced.
    pub fn claim(self: &Arc<Self>) -> Result<()> {
        let me = thread::unique();
        let mut home = self.home.load(Acquire);
        loop {
            if home == me {
                return Ok(());
            }
            if home != 0 && thread::alive(home) {
                return Err(not_permitted(format!(
                    "context '{}' belongs to thread {}: only its home thread may poll or claim it",
                    self.name,
                    thread::describe(home)
                )));
            }
            match self.home.compare_exchange(home, me, AcqRel, Acquire) {
                Ok(_) => break,
                Err(now) => home = now,
            }
        }
        let mut homes = HOMES.lock();
        let mine = homes.entry(me).or_default();
        mine.retain(|w| w.strong_count() > 0);
        mine.push(Arc::downgrade(self));
        drop(homes);
        // Also after the thread's exit hook ran (a claim from a later
        // pthread-key destructor): it runs again and disowns this one too.
        thread::arm_exit_hook();
        Ok(())
    }

    /// Forgets the home thread once it has exited (an IOThread that was
    /// freed): the next thread that polls the context becomes its home, so
    /// work still queued on it, or waited for, runs instead of hanging.
    pub(crate) fn disown(&self) {
        self.home.store(0, Release);
        // A waiter polling its own loop for this context's work must notice.
        self.wake_waiters();
    }

    /// The home thread's lock token (0: none), for the wait-for graph.
    pub(crate) fn home_thread(&self) -> u64 {
        self.home.load(Relaxed)
    }

    /// Whether the calling thread is the home thread.
    pub fn is_home(&self) -> bool {
        self.home.load(Relaxed) == thread::unique()
    }

    /// Whether some thread is the home thread.
    pub fn has_home(&self) -> bool {
        let home = self.home.load(Relaxed);
        home != 0 && thread::alive(home)
    }

    /// Whether a thread other than the caller runs this context: only then
    /// can holding it while waiting keep that thread from making progress.
    pub fn runs_elsewhere(&self) -> bool {
        self.has_home() && !self.is_home()
    }

    /// Runs one iteration of the loop; returns whether a callback ran.
    /// Only the home thread may poll; the first poll claims the context.
    pub fn poll(self: &Arc<Self>, blocking: bool) -> Result<bool> {
        self.poll_wait(if blocking {
            Blocking::Forever
        } else {
            Blocking::No
        })
    }

    /// [`poll`](Self::poll) with an explicit bound on blocking.
    /// `EOVERFLOW`, before waiting and with nothing dispatched, when the
    /// caller holds the context at the depth limit: the dispatch could not
    /// take its own level.
    pub fn poll_wait(self: &Arc<Self>, wait: Blocking) -> Result<bool> {
        self.poll_spinning_as(wait, None)
    }

    /// [`poll_wait`](Self::poll_wait) for a thread waiting for `waited`'s
    /// work: when this context does not poll (polling off, the main
    /// context's default), it spins with `waited`'s parameters, so a
    /// handoff to a polling IOThread completes without a sleep.
    pub(crate) fn poll_for(self: &Arc<Self>, wait: Blocking, waited: &Context) -> Result<bool> {
        self.poll_spinning_as(wait, Some(waited))
    }

    fn poll_spinning_as(
        self: &Arc<Self>,
        wait: Blocking,
        waited: Option<&Context>,
    ) -> Result<bool> {
        self.claim()?;
        self.check_dispatch_depth()?;
        self.renew_after_fork()?;
        flush_before_poll();
        self.stats.polls.fetch_add(1, Relaxed);
        // Taken, not locked: a callback may poll again (one level deeper).
        let mut ready = std::mem::take(&mut *self.ready.lock());
        ready.clear();
        let mut params = self.poll_params();
        if let Some(other) = waited.filter(|_| params.max_ns == 0) {
            params = other.poll_params();
        }
        let waited = self.wait_for_events(wait, params, &mut ready);
        let ran = waited.and_then(|()| self.dispatch_held(wait, &ready));
        *self.ready.lock() = ready;
        let ran = ran?;
        if ran > 0 {
            self.stats.dispatched.fetch_add(ran as u64, Relaxed);
            // A callback may have changed what a poll_while waits for.
            self.wake_after_dispatch();
        }
        Ok(ran > 0)
    }

    /// Dispatches with the lock held. A poll bounded by a deadline (a wait
    /// with a timeout) takes the lock only until then: another thread may
    /// hold it for longer, and the timeout must still hold. What was ready
    /// stays ready (epoll is level-triggered) for the next poll.
    fn dispatch_held(&self, wait: Blocking, ready: &[Ready]) -> Result<usize> {
        let Some(_held) = Held::acquire(self, wait)? else {
            return Ok(0);
        };
        let start = sys::clock_ns();
        let ran = self.dispatch(ready);
        self.note_hold(sys::clock_ns() - start);
        Ok(ran)
    }

    /// `EOVERFLOW` if the caller holds the context at the depth limit: only
    /// the owner changes its depth, so the dispatch's acquire after the wait
    /// cannot fail then. Checked first so such a poll neither blocks nor
    /// consumes events it cannot dispatch.
    fn check_dispatch_depth(&self) -> Result<()> {
        #[cfg(test)]
        if tests::AT_DEPTH_LIMIT.with(|f| f.get()) {
            return Err(self.named(LockError::Overflow));
        }
        if self.lock.owner() == thread::current() && self.lock.depth() == crate::lock::max_depth() {
            return Err(self.named(LockError::Overflow));
        }
        Ok(())
    }

    /// In a `fork()`'s child, the first poll gives the context an epoll
    /// instance and a notifier of its own: shared with the parent, its
    /// wake-ups could be eaten there (a hang). Same descriptor numbers.
    fn renew_after_fork(&self) -> Result<()> {
        let now = thread::fork_generation();
        let made = self.fork_gen.load(Relaxed);
        if made == now
            || self
                .fork_gen
                .compare_exchange(made, now, AcqRel, Relaxed)
                .is_err()
        {
            return Ok(());
        }
        let what = format!("context '{}': renewing its epoll after fork()", self.name);
        self.notifier
            .renew()
            .and_then(|()| self.epoll.renew())
            .and_then(|()| {
                let notifier = Interest {
                    read: true,
                    write: false,
                };
                self.epoll.add(self.notifier.raw(), NOTIFIER_KEY, notifier)
            })
            .map_err(|e| Error::from_io(&what, e))?;
        self.handlers.rearm(&self.epoll);
        // A wake-up sent before the renewal went to the old notifier.
        self.notified.store(false, Release);
        self.notify_pending.store(true, Relaxed);
        if self.embedded.load(Relaxed) {
            self.notify();
        }
        for f in std::mem::take(&mut *self.after_fork.lock()) {
            self.schedule_once(f);
        }
        Ok(())
    }

    /// In a `fork()`'s child handler: `f` runs as a BH from the child's
    /// first poll of this context. Not a BH now: the queue's lock may be
    /// held by a thread the child does not have, and the handler must not
    /// block (a child that only execs would hang in `fork()`). Only the
    /// forking thread touches the list before that poll.
    pub(crate) fn schedule_in_forked_child(&self, f: impl FnOnce() + Send + 'static) {
        self.after_fork.lock().push(Box::new(f));
    }

    fn wait_for_events(
        &self,
        wait: Blocking,
        params: PollParams,
        ready: &mut Vec<Ready>,
    ) -> Result<()> {
        let spin = self.spin(wait, params, ready);
        let found = spin.as_ref().is_some_and(|s| s.found_at.is_some());
        // Found by spinning: the epoll is only for fds, and is skipped a few
        // times in a row (the system call is most of such a poll's cost).
        let skip_epoll = found && self.epoll_skips.fetch_add(1, Relaxed) < EPOLL_SKIPS_MAX;
        if !skip_epoll {
            self.epoll_skips.store(0, Relaxed);
        }
        let blocking = wait != Blocking::No && !found;
        if blocking {
            self.notify_me.fetch_add(1, SeqCst);
            // Pairs with the fence in notify(): either we see the pending BH
            // or notify below, or the notifier sees notify_me and writes the
            // eventfd.
            fence(SeqCst);
        }
        let timeout = if !blocking || self.bhs.has_pending() || self.notify_pending.load(Relaxed) {
            0
        } else {
            self.timeout_ns(wait)
        };
        let polled = ready.len();
        let result = if skip_epoll {
            Ok(())
        } else {
            self.epoll.wait(timeout, ready)
        };
        if blocking {
            self.notify_me.fetch_sub(1, SeqCst);
        }
        // An io_uring's completions are posted by task work in the thread
        // that submitted, which interrupts its epoll_wait (EINTR: no events)
        // and posts them on the way out: the poll callbacks see them now,
        // rather than a poll later, and the window counts them as arrived
        // (an interrupted sleep otherwise reads as an idle one, closing it).
        if spin.is_some() && !skip_epoll && ready.len() == polled && result.is_ok() {
            self.handlers.poll(ready);
        }
        if polled > 0 && ready.len() > polled {
            fd::merge_duplicates(ready);
        }
        // Consumed before the dispatch and before the caller re-checks its
        // condition, so what a notifier changed before notifying is seen.
        // Acquire pairs with the Release in notify().
        let consumed =
            self.notify_pending.load(Relaxed) && self.notify_pending.swap(false, Acquire);
        // Drain first, then clear: a notify landing in between sees `notified`
        // still set and skips its write, which is safe because its BH was queued
        // before it and this poll's dispatch takes the queue afterwards. The
        // other order could eat a signal and leave `notified` set forever.
        // A signal can also arrive after an earlier drain (from a notify that
        // set the flag before it was cleared): drain it when epoll reports it,
        // or the eventfd stays readable and every poll returns at once.
        let signalled = ready.iter().any(|r| r.key == NOTIFIER_KEY);
        if signalled || self.notified.load(Acquire) {
            self.notifier.drain();
            self.notified.store(false, Release);
        }
        if let Some(spin) = spin {
            let arrived = if signalled {
                Some(self.notify_at.load(Relaxed).max(spin.started))
            } else if !ready.is_empty() || consumed {
                Some(sys::clock_ns())
            } else {
                None
            };
            self.adjust_window(params, &spin, arrived, signalled || consumed);
        }
        result.map_err(|e| Error::from_io(&format!("context '{}': epoll_wait", self.name), e))
    }

    /// Nanoseconds until the nearest timer or the caller's deadline (-1: none).
    fn timeout_ns(&self, wait: Blocking) -> i64 {
        let limit = match wait {
            Blocking::Until(t) => Some(t),
            _ => None,
        };
        match [self.timers.deadline(), limit].into_iter().flatten().min() {
            Some(deadline) => (deadline - sys::clock_ns()).max(0),
            None => -1,
        }
    }

    /// Runs BHs, then ready handlers, then due timers; returns how many ran.
    fn dispatch(&self, ready: &[Ready]) -> usize {
        let generation = self.dispatches.fetch_add(1, Relaxed) + 1;
        let mut ran = 0;
        let mut batch = self.bhs.take();
        while let Some(runnable) = self.bhs.next(&mut batch) {
            runnable.run();
            ran += 1;
        }
        // A callback that polled again (a nested poll) consumed readiness
        // `ready` still reports: stop rather than call a handler of an fd
        // that is no longer ready. Level-triggered epoll reports whatever
        // is still ready at the next poll.
        ran += self
            .handlers
            .dispatch(ready, || self.dispatches.load(Relaxed) == generation);
        for timer in self.timers.take_expired(sys::clock_ns()) {
            if let Some(firing) = self.timers.fire(&timer) {
                firing.run();
                ran += 1;
            }
        }
        ran
    }

    /// Wakes a blocking poll (or an embedding loop) from any thread; made
    /// while nobody polls, it keeps the next poll from blocking. Makes no
    /// system call when nobody is blocked, or a wake-up is already on its way.
    pub fn notify(&self) {
        // Before the flag: a poller that sees the flag sees this CPU, or a
        // later notify's.
        self.notify_cpu.store(sys::current_cpu(), Relaxed);
        self.notify_pending.store(true, Release);
        // Pairs with the fence in wait_for_events(): either the poller sees
        // notify_pending, or we see notify_me and write the eventfd.
        fence(SeqCst);
        if self.notify_me.load(Relaxed) > 0 && !self.notified.swap(true, AcqRel) {
            // A clock read is cheap next to the write; see `notify_at`.
            self.notify_at.store(sys::clock_ns(), Relaxed);
            self.notifier.signal();
            self.stats.wakeups.fetch_add(1, Relaxed);
        }
    }

    /// A descriptor a foreign main loop can watch: readable whenever a BH is
    /// pending or a handler's fd is ready. From the first call on, every
    /// `notify` writes the notifier, since nobody blocks in `poll`.
    pub fn fd(&self) -> RawFd {
        // The number stays the same: an embedding loop keeps watching it.
        let _ = self.renew_after_fork();
        if !self.embedded.swap(true, AcqRel) {
            self.notify_me.fetch_add(1, SeqCst);
            if self.bhs.has_pending() {
                self.notify();
            }
        }
        self.epoll.raw()
    }

    /// The nearest armed timer deadline (CLOCK_MONOTONIC ns), if any.
    pub fn deadline_ns(&self) -> Option<i64> {
        self.timers.deadline()
    }

    /// Installs, replaces or (both `None`) removes the handler of `fd`.
    pub fn set_fd_handler(
        &self,
        fd: RawFd,
        read: Option<Callback>,
        write: Option<Callback>,
    ) -> Result<()> {
        self.set_fd_handler_full(fd, read, write, None)
    }

    /// [`set_fd_handler`](Self::set_fd_handler) with a poll callback: while
    /// the loop busy-polls, `poll` is called (in the home thread, without
    /// the lock) and when it returns true, `read` runs as if `fd` were
    /// readable. `EINVAL` for a `poll` without a `read`; `EDEADLK` when
    /// called from a poll callback.
    pub fn set_fd_handler_full(
        &self,
        fd: RawFd,
        read: Option<Callback>,
        write: Option<Callback>,
        poll: Option<PollCallback>,
    ) -> Result<()> {
        // In a fork()'s child before its first poll, the epoll instance is
        // still the parent's: changing it would change the parent's.
        self.renew_after_fork()?;
        let cbs = Callbacks { read, write, poll };
        let holding = self.lock.owner() == crate::thread::current();
        self.handlers.set(&self.epoll, &self.name, fd, cbs, holding)
    }

    /// Schedules `callback` to run once.
    pub fn schedule_oneshot(&self, callback: Callback) {
        self.schedule_once(move || callback())
    }

    /// Schedules `f` to run once in the home thread, after the BHs and jobs
    /// already pending. Callable from any thread.
    pub fn schedule_once(&self, f: impl FnOnce() + Send + 'static) {
        self.bhs.push_once(Box::new(f));
        self.notify();
    }

    /// One line describing the context's state, for hang diagnostics.
    pub fn describe(&self) -> String {
        let owner = self.lock.owner();
        let mut s = format!(
            "context '{}' (id {}): home {}, owner {}",
            self.name,
            self.id,
            thread::describe(self.home.load(Relaxed)),
            thread::describe(owner)
        );
        if owner != 0 {
            let _ = write!(s, " at depth {}", self.lock.owner_depth());
            let since = self.stats.held_since.load(Relaxed);
            if lock_timing() && since > 0 {
                let _ = write!(s, " for {:.3} ms", (sys::clock_ns() - since) as f64 / 1e6);
            }
        }
        let _ = write!(
            s,
            ", {} waiting to acquire, {} waiting in poll_while, {} pending BHs, {} timers",
            self.lock.waiting(),
            waiters::waiting_on(self),
            self.bhs.len(),
            self.timers.len(),
        );
        if let Some(deadline) = self.timers.deadline() {
            let _ = write!(
                s,
                " (next in {:.3} ms)",
                (deadline - sys::clock_ns()) as f64 / 1e6
            );
        }
        let st = self.stats();
        let _ = write!(
            s,
            ", {} fd handlers; {} polls, {} callbacks run, {} wake-ups, longest hold {:.3} ms",
            self.handlers.len(),
            st.polls,
            st.dispatches,
            st.wakeups,
            st.longest_hold_ns as f64 / 1e6
        );
        s
    }
}

/// One level of a context's lock, taken by a dispatch; released on drop
/// only because it was taken (a failed acquire must not give back a level
/// of the caller's).
struct Held<'a>(&'a ContextLock);

impl<'a> Held<'a> {
    /// None when a poll bounded by a deadline could not take the lock in time.
    fn acquire(ctx: &'a Context, wait: Blocking) -> Result<Option<Held<'a>>> {
        let taken = match wait {
            Blocking::Until(deadline) => ctx.lock.acquire_until(deadline),
            _ => ctx.lock.acquire(),
        };
        match taken {
            Ok(()) => Ok(Some(Held(&ctx.lock))),
            Err(LockError::TimedOut { .. }) => Ok(None),
            Err(e) => Err(ctx.named(e)),
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // Cannot fail: this thread took the level and still owns the lock.
        let _ = self.0.release();
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        ALL.lock().remove(&self.id);
    }
}

/// Every live context the calling thread holds (owns the lock of).
pub(crate) fn held_by_caller() -> Vec<Arc<Context>> {
    let me = thread::current();
    let mut all = live();
    all.retain(|c| c.lock.owner() == me);
    all
}

/// The live context with id `id`.
pub(crate) fn by_id(id: u64) -> Option<Arc<Context>> {
    ALL.lock().get(&id).and_then(Weak::upgrade)
}

/// Every live context, one line each.
pub fn describe_all() -> String {
    live()
        .iter()
        .map(|c| c.describe())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    thread_local! {
        /// Makes the calling thread's polls see its depth as at the limit:
        /// reaching 2^32-1 for real takes minutes in a debug build.
        pub(super) static AT_DEPTH_LIMIT: Cell<bool> = const { Cell::new(false) };
    }

    fn counter() -> (Arc<AtomicUsize>, Callback) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (
            n,
            Arc::new(move || {
                m.fetch_add(1, Relaxed);
            }),
        )
    }

    #[test]
    fn only_home_polls() {
        let ctx = Context::new("home").unwrap();
        ctx.claim().unwrap();
        let c2 = ctx.clone();
        std::thread::spawn(move || {
            assert_eq!(c2.poll(false).unwrap_err().errno(), libc::EPERM);
            assert_eq!(c2.claim().unwrap_err().errno(), libc::EPERM);
        })
        .join()
        .unwrap();
        assert!(!ctx.poll(false).unwrap());
    }

    #[test]
    fn notify_wakes_blocking_poll_without_progress() {
        let ctx = Context::new("notify").unwrap();
        ctx.claim().unwrap();
        let c2 = ctx.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            c2.notify();
        });
        assert!(!ctx.poll(true).unwrap());
        t.join().unwrap();
    }

    #[test]
    fn timers_fire_in_order_and_respect_deadline() {
        let ctx = Context::new("timers").unwrap();
        let (n, cb) = counter();
        let t = Timer::new(&ctx, cb);
        let start = sys::clock_ns();
        t.modify(start + 2_000_000).unwrap();
        assert_eq!(ctx.deadline_ns(), Some(start + 2_000_000));
        while n.load(Relaxed) == 0 {
            ctx.poll(true).unwrap();
        }
        assert!(sys::clock_ns() >= start + 2_000_000);
        assert_eq!(ctx.deadline_ns(), None);
        t.modify(0).unwrap();
        assert!(t.del());
        assert!(!ctx.poll(false).unwrap());
        assert_eq!(t.modify(-5).unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn fd_handler_runs_and_can_be_removed() {
        let ctx = Context::new("fd").unwrap();
        let ev = EventFd::new().unwrap();
        let (n, cb) = counter();
        ctx.set_fd_handler(ev.raw(), Some(cb), None).unwrap();
        assert!(!ctx.poll(false).unwrap());
        ev.signal();
        assert!(ctx.poll(false).unwrap());
        assert_eq!(n.load(Relaxed), 1);
        ctx.set_fd_handler(ev.raw(), None, None).unwrap();
        assert!(!ctx.poll(false).unwrap());
        assert_eq!(
            ctx.set_fd_handler(-1, None, None).unwrap_err().errno(),
            libc::EINVAL
        );
    }

    #[test]
    fn embedded_fd_is_readable_when_bh_pending() {
        let ctx = Context::new("embed").unwrap();
        let fd = ctx.fd();
        let (_n, cb) = counter();
        let poller = Epoll::new().unwrap();
        poller
            .add(
                fd,
                7,
                Interest {
                    read: true,
                    write: false,
                },
            )
            .unwrap();
        let mut out = Vec::new();
        poller.wait(0, &mut out).unwrap();
        assert!(out.is_empty());
        ctx.schedule_oneshot(cb);
        poller.wait(1_000_000_000, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert!(ctx.poll(false).unwrap());
        out.clear();
        poller.wait(0, &mut out).unwrap();
        assert!(out.is_empty(), "drained after the poll");
    }

    #[test]
    fn nested_poll_readiness_is_not_dispatched_again_by_the_outer_poll() {
        let ctx = Context::new("nested").unwrap();
        let ev = Arc::new(EventFd::new().unwrap());
        let (reads, readable_reads) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (e, r, rr) = (ev.clone(), reads.clone(), readable_reads.clone());
        let probe = Epoll::new().unwrap();
        probe
            .add(
                ev.raw(),
                1,
                Interest {
                    read: true,
                    write: false,
                },
            )
            .unwrap();
        let read_cb: Callback = Arc::new(move || {
            let mut out = Vec::new();
            probe.wait(0, &mut out).unwrap();
            r.fetch_add(1, Relaxed);
            rr.fetch_add(out.len(), Relaxed);
            e.drain();
        });
        ctx.set_fd_handler(ev.raw(), Some(read_cb), None).unwrap();
        let c = ctx.clone();
        let nested = Bh::new(
            &ctx,
            Arc::new(move || {
                c.poll(false).unwrap();
            }),
        );
        // The outer poll sees the fd ready, then its BH's nested poll
        // dispatches (and drains) it.
        ev.signal();
        nested.schedule().unwrap();
        assert!(ctx.poll(false).unwrap());
        assert_eq!(
            reads.load(Relaxed),
            1,
            "the read handler ran on a drained fd"
        );
        assert_eq!(readable_reads.load(Relaxed), 1);
        // Readiness left over is reported again by the next poll.
        ev.signal();
        assert!(ctx.poll(false).unwrap());
        assert_eq!(reads.load(Relaxed), 2);
        nested.delete();
        ctx.set_fd_handler(ev.raw(), None, None).unwrap();
    }

    #[test]
    fn poll_at_the_depth_limit_fails_and_dispatches_nothing() {
        let ctx = Context::new("overflow").unwrap();
        let (n, cb) = counter();
        ctx.schedule_oneshot(cb);
        ctx.acquire().unwrap();
        AT_DEPTH_LIMIT.with(|f| f.set(true));
        let err = ctx.poll(true).unwrap_err();
        AT_DEPTH_LIMIT.with(|f| f.set(false));
        assert_eq!(err.errno(), libc::EOVERFLOW);
        assert!(err.message().contains("'overflow'"), "{}", err.message());
        assert_eq!(n.load(Relaxed), 0, "nothing dispatched");
        assert_eq!(ctx.lock().depth(), 1, "the caller's level is still held");
        assert!(ctx.poll(false).unwrap());
        assert_eq!(n.load(Relaxed), 1);
        assert_eq!(ctx.lock().depth(), 1);
        ctx.release().unwrap();
    }
}
