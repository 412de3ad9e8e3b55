//! Waiting: `aioctx_poll_while` and `aioctx_wait_kick`.

use std::ffi::{c_int, c_uint, c_void};

use super::boundary::{borrow_arc, borrow_mut, ffi, into_box_ptr, take_box, CFn, Opaque};
use super::context::AioctxContext;
use crate::error::invalid;
use crate::wait::{self, WaitOptions};

/// `aioctx_poll_while` flag: release every level the caller holds of the
/// context around each poll (and restore them), instead of refusing a
/// recursive hold with -EDEADLK. Use only when no caller up the stack relies
/// on the context staying held.
pub const AIOCTX_WAIT_RELEASE_ALL: c_uint = 1;

/// `bool (*)(void *opaque)`: the condition of `aioctx_poll_while`.
pub type AioctxCond = Option<unsafe extern "C" fn(opaque: *mut c_void) -> bool>;

/// Polls until `cond(opaque)` returns false: the AIO_WAIT_WHILE pattern.
///
/// * If the caller is `ctx`'s home thread (or `ctx` has no home yet), it polls
///   `ctx` itself.
/// * Otherwise it polls its current context (the first it claimed; a thread
///   with none adopts the main context if that has no home yet). If it holds
///   `ctx` once, it releases it around each blocking poll, so that `ctx`'s
///   home thread can run the work, and re-acquires it before calling `cond`.
///
/// A wait that releases `ctx` refuses with -EDEADLK while the caller also
/// holds another context (its own loop's aside): a thread that takes `ctx`
/// while it is released and then blocks on the other would make the
/// re-acquire hang (ABBA), and no timeout could end that. To wait while
/// holding several, hold them through an `AioctxSet` and let the graph-wide
/// calls do the waiting (they give the whole set back around each poll).
///
/// `cond` is called in the calling thread with the caller's locks as they
/// were. Completions wake the waiter without lost wake-ups: every callback a
/// poll runs, and `aioctx_wait_kick()`, re-checks all waiters' conditions.
///
/// Returns 0 once `cond` is false;
/// -EDEADLK at once if the caller holds `ctx` more than once (releasing once
/// could never let its home thread run; acquire through an `AioctxSet`, or
/// pass `AIOCTX_WAIT_RELEASE_ALL`), or holds it and another context (above); -ETIMEDOUT when `timeout_ns` (>= 0) passed,
/// with a dump of every context's holder in `aioctx_last_error()`; -EPERM if
/// the caller has no loop to poll; -EINVAL (NULL `ctx`/`cond`, unknown
/// flags). The caller's lock depth on `ctx` is the same on return as on entry.
#[no_mangle]
pub extern "C" fn aioctx_poll_while(
    ctx: *mut AioctxContext,
    cond: AioctxCond,
    opaque: *mut c_void,
    timeout_ns: i64,
    flags: c_uint,
) -> c_int {
    ffi("aioctx_poll_while", || {
        let ctx = borrow_arc(ctx)?;
        let cond = CFn {
            f: cond.ok_or_else(|| invalid("cond is NULL: pass a function"))?,
            opaque,
        };
        let opts = options(timeout_ns, flags)?;
        // SAFETY: the caller passed `cond` for `opaque` and waits for the call.
        let mut still_waiting = || unsafe { (cond.f)(cond.opaque) };
        wait::poll_while(&ctx, &mut still_waiting, opts)?;
        Ok(0)
    })
}

fn options(timeout_ns: i64, flags: c_uint) -> crate::Result<WaitOptions> {
    if flags & !AIOCTX_WAIT_RELEASE_ALL != 0 {
        return Err(invalid(format!(
            "unknown flags {flags:#x}: only AIOCTX_WAIT_RELEASE_ALL is defined"
        )));
    }
    Ok(WaitOptions {
        timeout_ns: (timeout_ns >= 0).then_some(timeout_ns),
        release_all: flags & AIOCTX_WAIT_RELEASE_ALL != 0,
    })
}

/// A wait in progress, for conditions the caller evaluates itself (an
/// expression, as in QEMU's AIO_WAIT_WHILE): `aioctx_wait_begin`, then
/// `while (cond) aioctx_wait_poll(w);`, then `aioctx_wait_end`. The wait is
/// registered before the condition is first evaluated, so no wake-up is
/// lost. Only the thread that began it may use it.
pub struct AioctxWait {
    _private: [u8; 0],
}

impl Opaque for AioctxWait {
    type Rust = wait::Waiter;
    const WHAT: &'static str = "wait";
}

/// Begins a wait for work of `ctx`, with the checks of `aioctx_poll_while`
/// (NULL with errno EDEADLK when the caller holds `ctx` more than once, EPERM
/// when it has no loop to poll, EINVAL for NULL or unknown flags) and its
/// `timeout_ns` (< 0: none; counted from now) and `flags`. End it with
/// `aioctx_wait_end`.
#[no_mangle]
pub extern "C" fn aioctx_wait_begin(
    ctx: *mut AioctxContext,
    timeout_ns: i64,
    flags: c_uint,
) -> *mut AioctxWait {
    ffi("aioctx_wait_begin", || {
        let ctx = borrow_arc(ctx)?;
        Ok(into_box_ptr(wait::Waiter::new(
            &ctx,
            options(timeout_ns, flags)?,
        )?))
    })
}

/// One step of the wait: releases the context as `aioctx_poll_while` does,
/// polls once (returning when a callback ran, the wait was kicked, or the
/// deadline came), and re-acquires it. Call it while your condition holds.
/// Returns 0; -ETIMEDOUT once the timeout passed (with a dump in
/// `aioctx_last_error()`); -EPERM from another thread; -EINVAL if `w` is NULL.
#[no_mangle]
pub extern "C" fn aioctx_wait_poll(w: *mut AioctxWait) -> c_int {
    ffi("aioctx_wait_poll", || {
        borrow_mut(w)?.poll_once()?;
        Ok(0)
    })
}

/// Ends the wait and frees `w`. NULL is a no-op.
#[no_mangle]
pub extern "C" fn aioctx_wait_end(w: *mut AioctxWait) {
    ffi("aioctx_wait_end", || {
        drop(take_box(w));
        Ok(())
    })
}

/// Makes every thread waiting in `aioctx_poll_while` re-check its condition.
/// Call it after changing state a waiter may be waiting for outside of any
/// aioctx callback (callbacks run by a poll kick automatically). Any thread;
/// one fence and one load when nobody waits.
#[no_mangle]
pub extern "C" fn aioctx_wait_kick() {
    ffi("aioctx_wait_kick", || {
        wait::kick();
        Ok(())
    })
}
