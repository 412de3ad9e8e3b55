//! Small, cheap, never-reused identities for OS threads.
//!
//! `std::thread::ThreadId` cannot be stored in an atomic; locks and home
//! threads need a plain integer they can compare-and-swap, so every thread
//! gets a non-zero `u64` the first time it asks. Zero means "no thread".
//! A registry maps live tokens to "name (tid N)" for hang diagnostics.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

static NEXT: AtomicU64 = AtomicU64::new(1);
// A BTreeMap, not a HashMap: memory checkers see its nodes as plainly
// reachable, so programs using aioctx stay clean under valgrind.
static NAMES: Mutex<BTreeMap<u64, String>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// The calling thread's token: a plain `Cell` with no destructor, so the
    /// hot path is one TLS load (no lazy-destructor bookkeeping).
    static TOKEN: Cell<u64> = const { Cell::new(0) };
    /// Unregisters the token from `NAMES` when the thread exits.
    static UNREGISTER: Unregister = const { Unregister(Cell::new(0)) };
}

struct Unregister(Cell<u64>);

impl Drop for Unregister {
    fn drop(&mut self) {
        NAMES.lock().remove(&self.0.get());
    }
}

/// The calling thread's token (never 0).
#[inline]
pub fn current() -> u64 {
    match TOKEN.with(Cell::get) {
        0 => register(),
        v => v,
    }
}

#[cold]
fn register() -> u64 {
    let v = NEXT.fetch_add(1, Ordering::Relaxed);
    TOKEN.with(|t| t.set(v));
    let name = crate::sys::thread_name();
    NAMES
        .lock()
        .insert(v, format!("'{name}' (tid {})", crate::sys::gettid()));
    UNREGISTER.with(|u| u.0.set(v));
    v
}

/// "'name' (tid N)" for a live token, for messages that say who holds what.
pub fn describe(token: u64) -> String {
    match token {
        0 => "nobody".to_string(),
        t => NAMES
            .lock()
            .get(&t)
            .cloned()
            .unwrap_or_else(|| format!("exited thread #{t}")),
    }
}
