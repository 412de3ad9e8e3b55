//! `AioctxSet`: context sets.

use std::ffi::c_int;

use super::boundary::{
    borrow, borrow_arc, borrow_mut, ffi, into_box_ptr, opaque, slice_arg, take_box,
};
use super::context::AioctxContext;
use crate::error::{invalid, Result};
use crate::set::ContextSet;

/// A set of contexts, acquired each exactly once in ascending id order: the
/// safe way to hold the contexts of several objects (two drives on one
/// IOThread are one context). Owned by the caller; free with `aioctx_set_free`.
/// Not thread-safe, like most C objects: use a set from one thread at a time
/// (any thread, but the one that acquired it must release it).
pub struct AioctxSet {
    _private: [u8; 0],
}

opaque!(AioctxSet => ContextSet, BoxOwned, "set");

/// Creates an empty set.
#[no_mangle]
pub extern "C" fn aioctx_set_new() -> *mut AioctxSet {
    ffi("aioctx_set_new", || Ok(into_box_ptr(ContextSet::new())))
}

/// Adds `ctx` (taking a reference). Returns 1 if added, 0 if already a member;
/// -EINVAL (NULL argument); -EBUSY (the set is held: release it first).
/// O(1) expected.
#[no_mangle]
pub extern "C" fn aioctx_set_add(set: *mut AioctxSet, ctx: *mut AioctxContext) -> c_int {
    ffi("aioctx_set_add", || {
        let ctx = borrow_arc(ctx)?;
        Ok(borrow_mut(set)?.add(&ctx)? as c_int)
    })
}

/// Adds the `n` contexts at `ctxs` (duplicates welcome: collect them straight
/// from your drives), as `aioctx_set_add` would one by one but without a call
/// per context. Returns how many were new; -EINVAL (NULL `set`, NULL `ctxs`
/// with `n` > 0, `n` larger than any array can be (`n * sizeof(void *)` over
/// PTRDIFF_MAX), or a NULL entry: nothing is added then); -EBUSY (the set is
/// held and `n` > 0; with `n` = 0 there is nothing to add and the call returns 0).
#[no_mangle]
pub extern "C" fn aioctx_set_add_many(
    set: *mut AioctxSet,
    ctxs: *const *mut AioctxContext,
    n: usize,
) -> c_int {
    ffi("aioctx_set_add_many", || {
        let set = borrow_mut(set)?;
        let ctxs = slice_arg(ctxs, n, "ctxs")?;
        if ctxs.is_empty() {
            return Ok(0);
        }
        let checkpoint = set.checkpoint();
        add_distinct_runs(set, ctxs).inspect_err(|_| set.rollback(checkpoint))
    })
}

/// Adds the contexts of `ctxs` in one pass; returns how many were new.
fn add_distinct_runs(set: &mut ContextSet, ctxs: &[*mut AioctxContext]) -> Result<c_int> {
    // Drives of one IOThread come in runs: skip a chunk that repeats the
    // previous context with one vectorised compare, before any other work.
    const CHUNK: usize = 8;
    let mut runs = Runs {
        set,
        previous: std::ptr::null_mut(),
        added: 0,
    };
    let chunks = ctxs.chunks_exact(CHUNK);
    let (rest, start) = (chunks.remainder(), ctxs.len() - chunks.remainder().len());
    for (c, chunk) in chunks.enumerate() {
        let p = runs.previous;
        if !p.is_null() && chunk.iter().fold(true, |same, &ctx| same & (ctx == p)) {
            continue;
        }
        for (i, &ctx) in chunk.iter().enumerate() {
            runs.add(c * CHUNK + i, ctx)?;
        }
    }
    for (i, &ctx) in rest.iter().enumerate() {
        runs.add(start + i, ctx)?;
    }
    Ok(runs.added.min(c_int::MAX as usize) as c_int)
}

/// Adding a run of contexts: `previous` is the last one added (NULL before
/// the first), so a repeat costs a compare and a skipped entry is never NULL.
struct Runs<'a> {
    set: &'a mut ContextSet,
    previous: *mut AioctxContext,
    added: usize,
}

impl Runs<'_> {
    fn add(&mut self, index: usize, ctx: *mut AioctxContext) -> Result<()> {
        if ctx.is_null() {
            return Err(invalid(format!(
                "ctxs[{index}] is NULL: every entry must be a context (nothing was added)"
            )));
        }
        if ctx != self.previous {
            self.previous = ctx;
            // Only the first add can fail (the set is held): nothing added then.
            self.added += self.set.add(&*borrow_arc(ctx)?)? as usize;
        }
        Ok(())
    }
}

/// The number of distinct contexts in the set (0 if `set` is NULL).
#[no_mangle]
pub extern "C" fn aioctx_set_len(set: *const AioctxSet) -> usize {
    ffi("aioctx_set_len", || Ok(borrow(set)?.len()))
}

/// Acquires every context of the set once, in ascending id order (one global
/// order: threads acquiring overlapping sets cannot deadlock each other).
/// A caller that already holds a member breaks that order for the members
/// ranked below it: blocked on one of those, the call looks for a deadlock
/// cycle every 5 ms and fails with -EDEADLK, naming it, instead of hanging.
/// Returns 0; -EINVAL (`set` NULL); -EBUSY (already held: release first);
/// -EDEADLK. On failure nothing is left held (by the set).
#[no_mangle]
pub extern "C" fn aioctx_set_acquire(set: *mut AioctxSet) -> c_int {
    ffi("aioctx_set_acquire", || {
        borrow_mut(set)?.acquire()?;
        Ok(0)
    })
}

/// Releases every context of the set once, in descending id order.
/// Returns 0; -EINVAL (`set` NULL); -EPERM (the set is not held by the calling
/// thread; nothing changes, or a member had been released behind the set's
/// back: the others are still released).
#[no_mangle]
pub extern "C" fn aioctx_set_release(set: *mut AioctxSet) -> c_int {
    ffi("aioctx_set_release", || {
        borrow_mut(set)?.release()?;
        Ok(0)
    })
}

/// Frees the set and its references. A set held by the calling thread is
/// released first. NULL is a no-op.
#[no_mangle]
pub extern "C" fn aioctx_set_free(set: *mut AioctxSet) {
    ffi("aioctx_set_free", || {
        if let Some(mut set) = take_box(set) {
            if set.is_held() {
                set.release()?;
            }
        }
        Ok(())
    })
}
