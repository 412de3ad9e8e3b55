//! `AioctxTimer`: timers on CLOCK_MONOTONIC nanoseconds.

use std::ffi::{c_int, c_void};

use super::boundary::{
    borrow, borrow_arc, ffi, into_arc_ptr, opaque, required_callback, take_arc, AioctxCallback,
};
use super::context::AioctxContext;
use crate::context::Timer;

/// A timer: a callback run once in its context's home thread, with the context
/// held, when CLOCK_MONOTONIC passes its deadline. Owned by the caller of
/// `aioctx_timer_new` until `aioctx_timer_free`.
pub struct AioctxTimer {
    _private: [u8; 0],
}

opaque!(AioctxTimer => Timer, ArcOwned, "timer");

/// Creates a disarmed timer that calls `cb(opaque)` in the home thread of
/// `ctx`. Like a BH, it keeps no reference on `ctx`. NULL on failure (`ctx` or
/// `cb` NULL: EINVAL).
#[no_mangle]
pub extern "C" fn aioctx_timer_new(
    ctx: *mut AioctxContext,
    cb: AioctxCallback,
    opaque: *mut c_void,
) -> *mut AioctxTimer {
    ffi("aioctx_timer_new", || {
        let ctx = borrow_arc(ctx)?;
        Ok(into_arc_ptr(Timer::new(
            &ctx,
            required_callback(cb, opaque, "cb")?,
        )))
    })
}

/// Arms `t` for the absolute time `expire_ns` (from `aioctx_clock_ns()`),
/// replacing any earlier deadline; a time in the past fires at the next poll.
/// Any thread: a blocking poll recomputes its timeout, to sub-millisecond
/// precision. A timer may re-arm itself from its callback; it then runs in a
/// later poll. Returns 0; -EINVAL (`t` NULL, `expire_ns` < 0); -ENODEV (its
/// context was freed).
#[no_mangle]
pub extern "C" fn aioctx_timer_mod(t: *mut AioctxTimer, expire_ns: i64) -> c_int {
    ffi("aioctx_timer_mod", || {
        borrow_arc(t)?.modify(expire_ns)?;
        Ok(0)
    })
}

/// Disarms `t`; it does not run until armed again, even if it was due in a
/// dispatch under way. Any thread. Waits for a callback running in another
/// thread as `aioctx_bh_cancel` does (not from the callback itself, nor when
/// the caller holds the timer's context, nor when the callback is blocked
/// acquiring a context the caller holds): once it returns after waiting,
/// the callback neither starts nor runs, unless that callback re-armed its
/// own timer meanwhile (that arms it again; `aioctx_timer_free` stops a
/// self-arming timer for good). Returns 0 (also if it was not armed), -EINVAL if
/// `t` is NULL.
#[no_mangle]
pub extern "C" fn aioctx_timer_del(t: *mut AioctxTimer) -> c_int {
    ffi("aioctx_timer_del", || {
        borrow(t)?.del();
        Ok(0)
    })
}

/// Disarms and frees `t`, waiting as `aioctx_timer_del` does, so
/// `aioctx_timer_free(t); free(opaque);` is safe (a callback running
/// meanwhile that re-arms its own timer arms nothing: -ENODEV), except for
/// a caller that holds the timer's context (see `aioctx_bh_delete`). May be called from its own
/// callback (it returns at once; the callback goes on). NULL is a no-op.
#[no_mangle]
pub extern "C" fn aioctx_timer_free(t: *mut AioctxTimer) {
    ffi("aioctx_timer_free", || {
        if let Some(t) = take_arc(t) {
            t.delete();
        }
        Ok(())
    })
}
