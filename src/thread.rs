//! Identities for OS threads, and their names for diagnostics.
//!
//! Locks, sets, waits and home threads need a plain integer they can
//! compare-and-swap: the thread's *token*, taken from a counter the first
//! time the thread needs one and never reused. A thread that exits while
//! holding a context keeps it held under its own token (a bug in the
//! caller, and the dump names that thread), and no later thread can ever
//! pass for it: not one that gets the same `pthread_t`, nor one born after
//! a `fork()` in the child.
//!
//! The token lives in a const-initialised thread-local of plain data: it
//! has no destructor, so it is readable from an `atexit()` handler or a
//! pthread-key destructor, after the thread's other thread-locals are gone.
//! Reading it is one call to `__tls_get_addr` in a shared library (the
//! lock's fast path; see README's benchmark 2).
//!
//! Names are recorded when a thread gets its token (the first time it takes
//! a context, claims one, or waits), so the dump says who holds what.
//! Cleanup when a thread ends (disowning the contexts it was home of,
//! forgetting its name) runs from a pthread-key destructor
//! ([`crate::sys::thread::arm_exit_hook`]), which also covers calls made by
//! other pthread-key destructors of the ending thread.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::OnceLock;

use parking_lot::Mutex;

use crate::sys;

// A BTreeMap, not a HashMap: memory checkers see its nodes as plainly
// reachable, so programs using aioctx stay clean under valgrind.
static NAMES: Mutex<BTreeMap<u64, String>> = Mutex::new(BTreeMap::new());

/// Every token carries this bit: it is never 0, and stays clear of the
/// lock's parked bit (bit 63).
const TOKEN: u64 = 1 << 62;
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Tokens below this counter value belong to threads that do not exist in
/// this process (0: none, no fork happened), except [`FORK_SURVIVOR`].
static FIRST_AFTER_FORK: AtomicU64 = AtomicU64::new(0);
/// The token of the thread that called `fork()` (it lives on in the child).
static FORK_SURVIVOR: AtomicU64 = AtomicU64::new(0);
/// How many `fork()`s led to this process (since the library was in use).
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The thread's token (0: none yet). Plain data: no destructor.
    static MINE: Cell<u64> = const { Cell::new(0) };
    /// Whether the exit hook is set for this thread. Plain data too.
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

/// The calling thread's token: never 0, never reused.
#[inline]
pub fn current() -> u64 {
    let token = MINE.get();
    if token != 0 {
        return token;
    }
    assign()
}

/// The same token (kept as its own name: home threads say "unique").
#[inline]
pub fn unique() -> u64 {
    current()
}

#[cold]
#[inline(never)]
fn assign() -> u64 {
    let token = TOKEN | NEXT.fetch_add(1, Relaxed);
    MINE.set(token);
    watch_fork();
    record_name(token);
    token
}

/// What a layer above does around a `fork()` (the block layer's worker
/// pool: it quiesces before, and restarts after). This module sits below
/// those layers and must not name them, so they register here.
static FORK_HOOKS: OnceLock<sys::thread::ForkHandlers> = OnceLock::new();
/// Whether this fork's prepare ran the hooks: they are registered while
/// other threads may fork, and a parent or child hook whose prepare did not
/// run would release what was never taken. `fork()`s are serialised by libc.
static FORK_HOOKS_PREPARED: AtomicBool = AtomicBool::new(false);

/// What a layer above does when a thread ends: `exited(token)` gives up what
/// the thread was home of, `owns(token)` says whether it still holds a lock
/// (its name is then kept for the dump). Registered by the context layer.
#[derive(Clone, Copy)]
pub(crate) struct ExitHooks {
    pub exited: fn(u64),
    pub owns: fn(u64) -> bool,
}
static EXIT_HOOKS: OnceLock<ExitHooks> = OnceLock::new();

/// Registers the upper layer's fork hooks (the first call counts) and the
/// library's `fork()` handlers.
pub(crate) fn on_fork(hooks: sys::thread::ForkHandlers) {
    let _ = FORK_HOOKS.set(hooks);
    watch_fork();
}

/// Registers what runs when a thread ends (the first call counts).
pub(crate) fn on_exit(hooks: ExitHooks) {
    let _ = EXIT_HOOKS.set(hooks);
}

/// Registers the library's `fork()` handlers (once): before there are
/// tokens or pool workers, a fork needs none.
fn watch_fork() {
    sys::thread::at_fork(sys::thread::ForkHandlers {
        prepare: fork_prepare,
        parent: fork_parent,
        child: forked,
    });
}

fn fork_prepare() {
    if let Some(hooks) = FORK_HOOKS.get() {
        (hooks.prepare)();
        FORK_HOOKS_PREPARED.store(true, Relaxed);
    }
}

/// The registered hook of a side of the fork, if its prepare ran.
fn prepared_hooks() -> Option<&'static sys::thread::ForkHandlers> {
    if FORK_HOOKS_PREPARED.swap(false, Relaxed) {
        FORK_HOOKS.get()
    } else {
        None
    }
}

fn fork_parent() {
    if let Some(hooks) = prepared_hooks() {
        (hooks.parent)();
    }
}

/// Records the calling thread's name for [`describe`]; a no-op once done
/// (kept for the lock's slow path, which names whoever blocks).
#[cold]
pub fn register_name() {
    current();
}

fn record_name(token: u64) {
    let name = format!("'{}' (tid {})", sys::thread_name(), sys::gettid());
    NAMES.lock().insert(token, name);
    arm_exit_hook();
}

/// Makes sure [`exited`] runs when the calling thread ends: for threads
/// that hold names or home contexts. Cheap once armed.
pub fn arm_exit_hook() {
    if !ARMED.get() {
        ARMED.set(sys::thread::arm_exit_hook(current(), exited));
    }
}

/// Runs in the ending thread (a pthread-key destructor): gives up the
/// contexts it was home of and its name — kept, marked, while it still owns
/// a context, so the dump can say which thread left it held.
fn exited(token: u64) {
    ARMED.set(false);
    let hooks = EXIT_HOOKS.get();
    if let Some(hooks) = hooks {
        (hooks.exited)(token);
    }
    let mut names = NAMES.lock();
    if hooks.is_some_and(|h| (h.owns)(token)) {
        if let Some(name) = names.get_mut(&token) {
            if !name.ends_with("(exited)") {
                name.push_str(" (exited)");
            }
        }
    } else {
        names.remove(&token);
    }
}

/// Whether the thread of `token` may still exist: false for threads that
/// did not survive a `fork()` into this process (the child has only the
/// thread that forked). A thread that exited normally gave up its homes.
pub fn alive(token: u64) -> bool {
    let first = FIRST_AFTER_FORK.load(Relaxed);
    first == 0 || token & !TOKEN >= first || token == FORK_SURVIVOR.load(Relaxed)
}

/// How many `fork()`s led to this process: what the process made in an
/// earlier generation (kernel objects, threads) it shares with, or left in,
/// a parent.
pub fn fork_generation() -> u64 {
    FORK_GENERATION.load(Relaxed)
}

/// The child side of `fork()`: only the calling thread lives on.
fn forked() {
    FORK_SURVIVOR.store(MINE.get(), Relaxed);
    FIRST_AFTER_FORK.store(NEXT.load(Relaxed), Relaxed);
    FORK_GENERATION.fetch_add(1, Relaxed);
    if let Some(hooks) = prepared_hooks() {
        (hooks.child)();
    }
}

/// "'name' (tid N)" for a thread, for messages that say who holds what.
pub fn describe(token: u64) -> String {
    if token == 0 {
        return "nobody".to_string();
    }
    let name = NAMES.lock().get(&token).cloned();
    let mut text = name.unwrap_or_else(|| format!("#{} (gone)", token & !TOKEN));
    if !alive(token) {
        text.push_str(" (not in this process: it did not survive fork())");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_named() {
        let me = current();
        assert_eq!(me, current());
        assert_ne!(me & TOKEN, 0);
        let other = std::thread::Builder::new()
            .name("tok-test".into())
            .spawn(|| (current(), describe(current())))
            .unwrap()
            .join()
            .unwrap();
        assert_ne!(other.0, me);
        assert!(other.1.contains("'tok-test'"), "{}", other.1);
        // Gone and not holding anything: forgotten.
        assert!(describe(other.0).contains("gone"), "{}", describe(other.0));
        assert!(alive(me) && alive(other.0));
    }
}
