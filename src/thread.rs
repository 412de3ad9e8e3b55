//! Cheap identities for OS threads, and their names for diagnostics.
//!
//! Locks and home threads need a plain integer they can compare-and-swap:
//! the thread's `pthread_t`, which is one load (no TLS lookup on the lock's
//! fast path), never 0, and unique among live threads. Like a pthread
//! recursive mutex's owner, it can be reused after a thread exits, so a
//! thread that exits while holding a context leaves it held — by design a
//! bug in the caller, and the dump names it.
//!
//! Home threads, which decide who may poll a context for its whole life,
//! use [`unique`] instead: a counter that is never reused, so a context whose
//! home thread exited never passes to a later thread that got its pthread_t.
//!
//! Names are registered lazily, on cold paths (claiming a context, blocking
//! on one, describing the caller), so messages can say who holds what.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

// A BTreeMap, not a HashMap: memory checkers see its nodes as plainly
// reachable, so programs using aioctx stay clean under valgrind.
static NAMES: Mutex<BTreeMap<u64, String>> = Mutex::new(BTreeMap::new());

/// Unique tokens carry this bit; pthread_t values are user-space addresses,
/// far below it, so both kinds share the name registry without clashing.
const UNIQUE: u64 = 1 << 62;
static NEXT_UNIQUE: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The thread's (pthread, unique) tokens once registered; unregisters
    /// them when the thread exits.
    static REGISTERED: Registered = const { Registered(Cell::new((0, 0))) };
}

struct Registered(Cell<(u64, u64)>);

impl Drop for Registered {
    fn drop(&mut self) {
        let (pthread, unique) = self.0.get();
        if unique != 0 {
            let mut names = NAMES.lock();
            names.remove(&pthread);
            names.remove(&unique);
        }
    }
}

/// The calling thread's never-reused token (never 0), for home threads.
pub fn unique() -> u64 {
    register_name();
    REGISTERED.with(|r| r.0.get().1)
}

/// The calling thread's token (never 0).
#[inline]
pub fn current() -> u64 {
    crate::sys::pthread_self()
}

/// Records the calling thread's name for [`describe`]; cheap after the first call.
#[cold]
pub fn register_name() {
    let token = current();
    REGISTERED.with(|r| {
        let (pthread, unique) = r.0.get();
        if pthread == token && unique != 0 {
            return;
        }
        let unique = if unique != 0 {
            unique
        } else {
            UNIQUE | NEXT_UNIQUE.fetch_add(1, Relaxed)
        };
        r.0.set((token, unique));
        let name = format!(
            "'{}' (tid {})",
            crate::sys::thread_name(),
            crate::sys::gettid()
        );
        let mut names = NAMES.lock();
        names.insert(token, name.clone());
        names.insert(unique, name);
    });
}

/// "'name' (tid N)" for a thread, for messages that say who holds what.
pub fn describe(token: u64) -> String {
    if token == current() || token & UNIQUE != 0 {
        register_name();
    }
    match token {
        0 => "nobody".to_string(),
        t => NAMES
            .lock()
            .get(&t)
            .cloned()
            .unwrap_or_else(|| format!("thread {t:#x}")),
    }
}
