//! Who is blocked acquiring which context: the lock edges of the wait-for
//! graph that deadlock detection walks.
//!
//! The lock records a thread here only on its slow path, just before it may
//! sleep, and removes it once it owns the lock (or gives up), so an entry
//! means "this thread cannot run until that lock's owner lets go". Upper
//! layers turn lock ids back into contexts and owners; this module knows
//! only integers, so the lock can sit below everything else.

use std::collections::BTreeMap;

use once_cell::sync::OnceCell;
use parking_lot::Mutex;

/// Thread token -> id of the lock it is blocked on. A BTreeMap: memory
/// checkers see its nodes as plainly reachable.
static BLOCKED: Mutex<BTreeMap<u64, u64>> = Mutex::new(BTreeMap::new());

/// Called (without any lock held) when a thread is about to block on a
/// lock, so that a waiter the block may deadlock can look at once.
static ON_BLOCK: OnceCell<fn(u64)> = OnceCell::new();

/// Installs the hook that runs when a thread starts blocking on lock `id`.
pub(crate) fn set_on_block(hook: fn(u64)) {
    let _ = ON_BLOCK.set(hook);
}

/// The lock id `thread` is blocked on, if any.
pub(crate) fn blocked_on(thread: u64) -> Option<u64> {
    BLOCKED.lock().get(&thread).copied()
}

/// Marks `thread` blocked on lock `id` until the returned guard drops.
pub(crate) fn block(thread: u64, id: u64) -> Blocked {
    BLOCKED.lock().insert(thread, id);
    if let Some(hook) = ON_BLOCK.get() {
        hook(id);
    }
    Blocked(thread)
}

/// Removes its thread's entry when dropped.
pub(crate) struct Blocked(u64);

impl Drop for Blocked {
    fn drop(&mut self) {
        BLOCKED.lock().remove(&self.0);
    }
}
