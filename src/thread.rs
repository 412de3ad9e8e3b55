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

/// Owns the calling thread's token; unregisters it when the thread exits.
struct Token(Cell<u64>);

impl Drop for Token {
    fn drop(&mut self) {
        let v = self.0.get();
        if v != 0 {
            NAMES.lock().remove(&v);
        }
    }
}

thread_local! {
    static TOKEN: Token = const { Token(Cell::new(0)) };
}

/// The calling thread's token (never 0).
#[inline]
pub fn current() -> u64 {
    TOKEN.with(|t| match t.0.get() {
        0 => register(t),
        v => v,
    })
}

#[cold]
fn register(t: &Token) -> u64 {
    let v = NEXT.fetch_add(1, Ordering::Relaxed);
    t.0.set(v);
    let name = crate::sys::thread_name();
    NAMES
        .lock()
        .insert(v, format!("'{name}' (tid {})", crate::sys::gettid()));
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
