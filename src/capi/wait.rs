//! Waiting: `aioctx_poll_while` and `aioctx_wait_kick`.

use std::ffi::{c_int, c_uint, c_void};

use super::boundary::{borrow_arc, borrow_mut, ffi, into_box_ptr, opaque, take_box, CFn};
use super::context::AioctxContext;
use crate::error::invalid;
use crate::wait::{self, WaitOptions};

/// `aioctx_poll_while` flag: release every level the caller holds of the
/// context around each poll (and restore them), instead of refusing a
/// recursive hold with -EDEADLK. Use only when no caller up the stack relies
/// on the context staying held.
pub const AIOCTX_WAIT_RELEASE_ALL: c_uint = 1;

/// `aioctx_poll_while` flag: when the wait finds itself on a deadlock cycle
/// (a thread it depends on is blocked acquiring a context the caller
/// holds), give that context back around each poll (and take it back
/// before returning) and go on waiting, instead of failing with -EDEADLK.
/// Use only when the caller's callers can bear another thread running under
/// that context while the wait polls, as they already bear the callbacks
/// the poll runs.
pub const AIOCTX_WAIT_RELEASE_HELD: c_uint = 2;

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
/// The caller may hold other contexts while it waits, as in QEMU (the
/// unique-context fix holds one context per IOThread). That deadlocks only
/// if a thread the wait depends on (`ctx`'s home thread, and whoever that
/// thread is blocked on, transitively) blocks acquiring a context the caller
/// holds. The library records who is blocked on what and detects that cycle
/// within a few milliseconds of it forming: by default the wait then gives
/// the context the cycle needs back for one poll (so the blocked thread can
/// finish and the caller can take every context back) and returns -EDEADLK
/// naming the whole cycle (thread -> context -> thread ...), with every lock
/// as on entry; with `AIOCTX_WAIT_RELEASE_HELD` it gives that context back
/// around every poll and completes.
///
/// `cond` is called in the calling thread with the caller's locks as they
/// were. Completions wake the waiter without lost wake-ups: every callback a
/// poll of `ctx` runs, a block request of a node on `ctx` ending, `ctx`'s
/// home thread exiting, and `aioctx_wait_kick()` make it re-check `cond`.
/// When the caller is `ctx`'s home thread (it polls `ctx` itself), every
/// callback of any context does too. Otherwise state changed elsewhere
/// (another context's callback, a plain thread) needs `aioctx_wait_kick()`
/// to be seen at once: waits for one IOThread are not woken by every other
/// IOThread's work. A kick that was missed costs latency, never a hang: an
/// unwoken wait re-checks `cond` anyway, 1 ms after it began and then at
/// intervals doubling up to 64 ms (`AIOCTX_WAIT_RECHECK_MS`; 0 turns that
/// off).
///
/// A timeout holds even while another thread holds a context the wait must
/// take back or dispatch: the call returns within the timeout plus a few
/// milliseconds. If it could not take back a context it gave away (its
/// holder kept it past the deadline), it returns -ETIMEDOUT *without* that
/// context, and the message names it and its holder: check
/// `aioctx_lock_depth()` before releasing.
///
/// Returns 0 once `cond` is false;
/// -EDEADLK at once if the caller holds `ctx` more than once (releasing once
/// could never let its home thread run; acquire through an `AioctxSet`, or
/// pass `AIOCTX_WAIT_RELEASE_ALL`), or on a deadlock cycle (above);
/// -ETIMEDOUT when `timeout_ns` (>= 0) passed, with a dump of every
/// context's holder in `aioctx_last_error()`; -EPERM if the caller has no
/// loop to poll; -EINVAL (NULL `ctx`/`cond`, unknown flags). Except as said
/// for -ETIMEDOUT, the caller's lock depths are the same on return as on
/// entry.
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
    if flags & !(AIOCTX_WAIT_RELEASE_ALL | AIOCTX_WAIT_RELEASE_HELD) != 0 {
        return Err(invalid(format!(
            "unknown flags {flags:#x}: only AIOCTX_WAIT_RELEASE_ALL and AIOCTX_WAIT_RELEASE_HELD \
             are defined"
        )));
    }
    Ok(WaitOptions {
        timeout_ns: (timeout_ns >= 0).then_some(timeout_ns),
        release_all: flags & AIOCTX_WAIT_RELEASE_ALL != 0,
        release_held: flags & AIOCTX_WAIT_RELEASE_HELD != 0,
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

opaque!(AioctxWait => wait::Waiter, BoxOwned, "wait");

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
/// polls once (returning when a callback ran, the wait was kicked, the
/// deadline came, or the re-check interval of `aioctx_poll_while` passed),
/// and re-acquires it. Call it while your condition holds.
/// Returns 0; -ETIMEDOUT once the timeout passed (with a dump in
/// `aioctx_last_error()`; see `aioctx_poll_while` for a context it could
/// not take back in time); -EDEADLK on a deadlock cycle (as
/// `aioctx_poll_while`); -EPERM from another thread; -EINVAL if `w` is NULL.
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

/// Makes every thread waiting in `aioctx_poll_while` (or an `aioctx_wait_*`
/// wait) re-check its condition. Call it after changing state a waiter may
/// be waiting for outside of the waited context's callbacks (those wake its
/// waiters automatically). Any thread; one fence and one load when nobody
/// waits.
#[no_mangle]
pub extern "C" fn aioctx_wait_kick() {
    ffi("aioctx_wait_kick", || {
        wait::kick();
        Ok(())
    })
}
