//! Cheap identities for OS threads, and their names for diagnostics.
//!
//! Locks and home threads need a plain integer they can compare-and-swap:
//! the thread's `pthread_t`, which is one load (no TLS lookup on the lock's
//! fast path), never 0, and unique among live threads. Like a pthread
//! recursive mutex's owner, it can be reused after a thread exits, so a
//! thread that exits while holding a context leaves it held — by design a
//! bug in the caller, and the dump names it.
//!
//! Names are registered lazily, on cold paths (claiming a context, blocking
//! on one, describing the caller), so messages can say who holds what.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::collections::BTreeMap;

use parking_lot::Mutex;

// A BTreeMap, not a HashMap: memory checkers see its nodes as plainly
// reachable, so programs using aioctx stay clean under valgrind.
static NAMES: Mutex<BTreeMap<u64, String>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// Unregisters the thread's name when it exits (0: not registered).
    static REGISTERED: Registered = const { Registered(Cell::new(0)) };
}

struct Registered(Cell<u64>);

impl Drop for Registered {
    fn drop(&mut self) {
        if self.0.get() != 0 {
            NAMES.lock().remove(&self.0.get());
        }
    }
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
        if r.0.get() != token {
            r.0.set(token);
            let name = crate::sys::thread_name();
            NAMES
                .lock()
                .insert(token, format!("'{name}' (tid {})", crate::sys::gettid()));
        }
    });
}

/// "'name' (tid N)" for a thread, for messages that say who holds what.
pub fn describe(token: u64) -> String {
    if token == current() {
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
