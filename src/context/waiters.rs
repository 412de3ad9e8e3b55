//! Waiters: which thread polls which loop while it waits for which context's
//! work, and the wait-for graph that deadlock detection walks.
//!
//! Kicks are targeted: a context that made progress (a callback ran, a
//! request ended, its home thread left) wakes the waiters registered on it,
//! so a drain over 64 busy IOThreads does not wake every waiter of the
//! process on every callback. The exception is a home thread waiting on its
//! own context (`poll_while` on the loop it runs, for a flag another loop's
//! callback sets): any context's callbacks wake those, as they always did,
//! since nothing else would.
//!
//! No lost wake-ups: a waiter registers (and fences) *before* it checks its
//! condition, and a completer changes state *before* it fences and reads the
//! count of waiters, so either the waiter sees the change, or the completer
//! sees the waiter and its notify keeps the waiter's next poll from blocking.
//!
//! The wait-for graph has two kinds of edge: a thread blocked acquiring a
//! context waits for that context's owner (recorded by the lock, see
//! `waitfor`), and a waiter waits for the home thread of the context whose
//! work it waits for. A cycle through the waiter is a deadlock that no poll
//! can end; [`find_cycle`] names it.

use std::fmt::Write as _;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering::*};
use std::sync::Arc;

use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::{by_id, Context};
use crate::diag::{self, Level};
use crate::{thread, waitfor};

/// Every registered waiter, for kicks of all of them and for the graph.
static ALL: Mutex<Vec<Arc<Entry>>> = Mutex::new(Vec::new());
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// Waiters polling the very context they wait for.
static SELF_WAITERS: AtomicUsize = AtomicUsize::new(0);

/// The longest chain the graph walks follow; a real cycle is far shorter.
const MAX_HOPS: usize = 64;

struct Entry {
    /// The waiting thread's lock token.
    thread: u64,
    waited: Arc<Context>,
    /// The loop the waiter polls, which a kick wakes.
    poll: Arc<Context>,
    /// A thread blocked on a lock whose owner chain leads here: look for a
    /// cycle.
    suspect: AtomicBool,
}

/// The per-context list of waiters waiting for its work.
#[derive(Default)]
pub(crate) struct Waiters {
    entries: Mutex<Vec<Arc<Entry>>>,
    count: AtomicUsize,
}

impl Waiters {
    pub(crate) fn len(&self) -> usize {
        self.count.load(Relaxed)
    }
}

/// Keeps a waiter registered for kicks, and in the graph, while it lives.
pub struct Registration(Arc<Entry>);

impl Registration {
    /// Registers the calling thread as waiting for `waited`'s work while it
    /// polls `poll`. The caller checks its condition only after this.
    pub fn new(waited: &Arc<Context>, poll: &Arc<Context>) -> Registration {
        let entry = Arc::new(Entry {
            thread: thread::current(),
            waited: waited.clone(),
            poll: poll.clone(),
            suspect: AtomicBool::new(true),
        });
        waited.waiters.entries.lock().push(entry.clone());
        waited.waiters.count.fetch_add(1, SeqCst);
        ALL.lock().push(entry.clone());
        COUNT.fetch_add(1, SeqCst);
        if entry.polls_what_it_waits_for() {
            SELF_WAITERS.fetch_add(1, SeqCst);
        }
        // Pairs with the fence in wake_waiters()/kick_all().
        fence(SeqCst);
        Registration(entry)
    }

    /// Whether a cycle may have formed since the last call (true at first).
    pub fn take_suspect(&self) -> bool {
        self.0.suspect.swap(false, AcqRel)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let waiters = &self.0.waited.waiters;
        remove(&mut waiters.entries.lock(), &self.0);
        waiters.count.fetch_sub(1, SeqCst);
        remove(&mut ALL.lock(), &self.0);
        COUNT.fetch_sub(1, SeqCst);
        if self.0.polls_what_it_waits_for() {
            SELF_WAITERS.fetch_sub(1, SeqCst);
        }
    }
}

fn remove(list: &mut Vec<Arc<Entry>>, entry: &Arc<Entry>) {
    if let Some(i) = list.iter().position(|e| Arc::ptr_eq(e, entry)) {
        list.swap_remove(i);
    }
}

impl Entry {
    fn polls_what_it_waits_for(&self) -> bool {
        Arc::ptr_eq(&self.poll, &self.waited)
    }
}

impl Context {
    /// Wakes the waiters waiting for this context's work, so they re-check
    /// their conditions. One fence and one load when there are none.
    pub fn wake_waiters(&self) {
        fence(SeqCst);
        if self.waiters.count.load(Relaxed) == 0 {
            return;
        }
        for entry in self.waiters.entries.lock().iter() {
            entry.poll.notify();
        }
    }

    /// After callbacks ran: wakes this context's waiters, and the home
    /// threads waiting on their own loops (see the module doc).
    pub(crate) fn wake_after_dispatch(&self) {
        self.wake_waiters();
        if SELF_WAITERS.load(Relaxed) == 0 {
            return;
        }
        for entry in ALL.lock().iter() {
            if entry.polls_what_it_waits_for() && !std::ptr::eq(&*entry.waited, self) {
                entry.poll.notify();
            }
        }
    }
}

/// Wakes every waiter of the process (state changed outside any callback).
pub fn kick_all() {
    fence(SeqCst);
    if COUNT.load(Relaxed) == 0 {
        return;
    }
    for entry in ALL.lock().iter() {
        entry.poll.notify();
    }
}

/// The innermost wait of `thread`, if it is waiting.
fn wait_of(thread: u64) -> Option<Arc<Entry>> {
    ALL.lock()
        .iter()
        .rev()
        .find(|e| e.thread == thread)
        .cloned()
}

/// One edge of the wait-for graph.
pub(crate) enum Hop {
    /// `thread` waits for work of `ctx`, which only `runner` (its home) does.
    Waits {
        thread: u64,
        ctx: Arc<Context>,
        runner: u64,
    },
    /// `thread` is blocked acquiring `ctx`, which `owner` holds.
    Acquires {
        thread: u64,
        ctx: Arc<Context>,
        owner: u64,
    },
}

impl Hop {
    fn next(&self) -> u64 {
        match self {
            Hop::Waits { runner, .. } => *runner,
            Hop::Acquires { owner, .. } => *owner,
        }
    }

    /// The context `thread` cannot do without, and the thread it waits for.
    pub(crate) fn context(&self) -> &Arc<Context> {
        match self {
            Hop::Waits { ctx, .. } | Hop::Acquires { ctx, .. } => ctx,
        }
    }
}

/// The edge out of `thread`, which the previous hop needs to run `needed`
/// (its work or its lock): the lock `thread` is blocked on, or else the home
/// thread of what it waits for. None when `thread` can go on, and also when
/// it waits polling `needed` itself, since then it runs that work.
fn edge_from(thread: u64, needed: &Arc<Context>) -> Option<Hop> {
    if let Some(ctx) = waitfor::blocked_on(thread).and_then(by_id) {
        let owner = ctx.lock().owner();
        return (owner != 0).then_some(Hop::Acquires { thread, ctx, owner });
    }
    let entry = wait_of(thread)?;
    let runner = entry.waited.home_thread();
    let runs_needed = Arc::ptr_eq(&entry.poll, needed);
    (!runs_needed && runner != 0 && runner != thread).then(|| Hop::Waits {
        thread,
        ctx: entry.waited.clone(),
        runner,
    })
}

/// The cycle of the wait-for graph through `thread`, whose own edge is
/// `first`, if there is one: the hops from `thread` back to itself, the last
/// one a thread blocked acquiring a context `thread` holds (the one it can
/// lend). Contexts the waiter gives back around each poll (`given_back`)
/// close no cycle: it holds them only between polls.
pub(crate) fn find_cycle(
    thread: u64,
    first: Hop,
    given_back: impl Fn(&Arc<Context>) -> bool,
) -> Option<Vec<Hop>> {
    let mut path = vec![first];
    while path.len() < MAX_HOPS {
        let last = path.last()?;
        let next = last.next();
        if next == 0 {
            return None;
        }
        if next == thread {
            let closes = matches!(last, Hop::Acquires { ctx, .. } if !given_back(ctx));
            return closes.then_some(path);
        }
        let hop = edge_from(next, last.context())?;
        path.push(hop);
    }
    None
}

/// Threads waiting for a callback to return: (waiter, the callback's thread).
static CALLBACK_WAITS: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// What a thread needs that only the caller can give.
enum FromCaller {
    /// A context the caller holds, which it is blocked acquiring.
    Context(Arc<Context>),
    /// The end of a callback the caller runs, which it waits for.
    Return,
}

/// What `runner` needs from the caller, directly or through other threads
/// (each blocked acquiring a context the next holds, or waiting for a
/// callback the next runs), if anything.
fn needed_from_caller(runner: u64) -> Option<FromCaller> {
    let me = thread::current();
    let mut t = runner;
    for _ in 0..MAX_HOPS {
        let next = match waitfor::blocked_on(t).and_then(by_id) {
            Some(ctx) => match ctx.lock().owner() {
                owner if owner == me => return Some(FromCaller::Context(ctx)),
                owner => owner,
            },
            None => match CALLBACK_WAITS.lock().iter().find(|w| w.0 == t)?.1 {
                running if running == me => return Some(FromCaller::Return),
                running => running,
            },
        };
        if next == 0 || next == runner {
            return None;
        }
        t = next;
    }
    None
}

/// The caller's entry in [`CALLBACK_WAITS`] while it lives.
struct WaitsForCallback(u64, u64);

impl WaitsForCallback {
    fn new(runner: u64) -> Self {
        let me = thread::current();
        CALLBACK_WAITS.lock().push((me, runner));
        WaitsForCallback(me, runner)
    }
}

impl Drop for WaitsForCallback {
    fn drop(&mut self) {
        let mut waits = CALLBACK_WAITS.lock();
        if let Some(i) = waits.iter().position(|&w| w == (self.0, self.1)) {
            waits.swap_remove(i);
        }
    }
}

/// How often a wait for a callback to return looks whether it can.
const CALLBACK_LOOK_EVERY: Duration = Duration::from_millis(1);

/// Waits on `cv` (`guard` released meanwhile) while `runner(&guard)` names
/// the thread still running the callback waited for (`what`, for the log),
/// unless that thread is the caller's own or did not survive a `fork()`
/// (it never returns here), or it needs something of the caller's, directly or through
/// other threads: a context the caller holds, or the end of a callback the
/// caller runs (two callbacks cancelling each other). The callback could
/// then never return, so the wait ends there, logged (QEMU's cancel and
/// delete never wait at all). Looked at again every millisecond, since the
/// callback may block after the wait began. Returns whether it returned.
pub(crate) fn wait_for_callback<T>(
    cv: &Condvar,
    guard: &mut MutexGuard<'_, T>,
    what: &str,
    runner: impl Fn(&T) -> Option<u64>,
) -> bool {
    let me = thread::current();
    let mut registered: Option<WaitsForCallback> = None;
    while let Some(thread) = runner(guard).filter(|&t| t != me && thread::alive(t)) {
        // Not under `guard`: the walk takes the registry of contexts.
        let needed = MutexGuard::unlocked(guard, || {
            registered.get_or_insert_with(|| WaitsForCallback::new(thread));
            needed_from_caller(thread)
        });
        if let Some(needed) = needed {
            let why = match needed {
                FromCaller::Context(held) => format!(
                    "blocked acquiring context '{}' that this thread holds",
                    held.name()
                ),
                FromCaller::Return => "waiting for a callback this thread runs to return".into(),
            };
            diag::log(
                Level::Warning,
                &format!(
                    "{what}: not waiting for its callback, running in thread {}, which is \
                     {why}; free what the callback uses only once it has returned",
                    thread::describe(thread),
                ),
            );
            return false;
        }
        cv.wait_for(guard, CALLBACK_LOOK_EVERY);
    }
    true
}

/// "thread A waits for work of context 'x', run by thread B, which is
/// blocked acquiring context 'y', held by thread A".
pub(crate) fn describe_cycle(path: &[Hop]) -> String {
    let mut s = String::new();
    for (i, hop) in path.iter().enumerate() {
        let who = if i == 0 {
            format!(
                "thread {}",
                thread::describe(match hop {
                    Hop::Waits { thread, .. } | Hop::Acquires { thread, .. } => *thread,
                })
            )
        } else {
            ", which".to_string()
        };
        let _ = match hop {
            Hop::Waits { ctx, runner, .. } => write!(
                s,
                "{who} waits for work of context '{}' (id {}), run by thread {}",
                ctx.name(),
                ctx.id(),
                thread::describe(*runner)
            ),
            Hop::Acquires { ctx, owner, .. } => write!(
                s,
                "{who} is blocked acquiring context '{}' (id {}), held by thread {}",
                ctx.name(),
                ctx.id(),
                thread::describe(*owner)
            ),
        };
    }
    s
}

/// Runs (from the lock, without its locks held) when a thread starts to
/// block on context lock `id`: every waiter along the chain of owners may
/// now be part of a cycle, so it is marked and woken to look.
pub(crate) fn on_block(id: u64) {
    let Some(mut needed) = by_id(id) else { return };
    let mut next = needed.lock().owner();
    for _ in 0..MAX_HOPS {
        if next == 0 {
            return;
        }
        if let Some(entry) = wait_of(next) {
            entry.suspect.store(true, Release);
            entry.poll.notify();
        }
        match edge_from(next, &needed) {
            Some(hop) => {
                next = hop.next();
                needed = hop.context().clone();
            }
            None => return,
        }
    }
}

/// How many waiters wait for `ctx`'s work; for diagnostics.
pub(crate) fn waiting_on(ctx: &Context) -> usize {
    ctx.waiters.len()
}
