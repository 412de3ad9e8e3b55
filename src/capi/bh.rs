//! `AioctxBh`: bottom halves.

use std::ffi::{c_int, c_void};

use super::boundary::{
    borrow, borrow_arc, ffi, into_arc_ptr, opaque, required_callback, take_arc, AioctxCallback,
};
use super::context::AioctxContext;
use crate::context::Bh;

/// A bottom half: a callback scheduled from any thread to run once in its
/// context's home thread, with the context held. Owned by the caller of
/// `aioctx_bh_new` until `aioctx_bh_delete`.
pub struct AioctxBh {
    _private: [u8; 0],
}

opaque!(AioctxBh => Bh, ArcOwned, "bh");

/// Creates a bottom half that calls `cb(opaque)` in the home thread of `ctx`
/// each time it is scheduled and then polled. The BH keeps no reference on
/// `ctx`: delete it before the context is freed (scheduling it afterwards
/// fails with -ENODEV). NULL on failure (`ctx` or `cb` NULL: EINVAL).
#[no_mangle]
pub extern "C" fn aioctx_bh_new(
    ctx: *mut AioctxContext,
    cb: AioctxCallback,
    opaque: *mut c_void,
) -> *mut AioctxBh {
    ffi("aioctx_bh_new", || {
        let ctx = borrow_arc(ctx)?;
        Ok(into_arc_ptr(Bh::new(
            &ctx,
            required_callback(cb, opaque, "cb")?,
        )))
    })
}

/// Makes `bh` pending and wakes its context. Any thread. Scheduling a pending
/// BH is a no-op (it runs once). Pending BHs run in the order they were
/// scheduled; one scheduled while its context dispatches (even by itself)
/// runs in the next poll. Returns 0; -EINVAL (`bh` NULL); -ENODEV (its
/// context was freed).
#[no_mangle]
pub extern "C" fn aioctx_bh_schedule(bh: *mut AioctxBh) -> c_int {
    ffi("aioctx_bh_schedule", || {
        borrow_arc(bh)?.schedule()?;
        Ok(0)
    })
}

/// Makes a pending `bh` not pending: it will not run unless scheduled again.
/// Any thread. Once the call returns, the callback does not start (until
/// the BH is scheduled again), and if it was running in another thread the
/// call has waited for it to return: what the callback uses may be freed
/// right after. From the callback itself (or a callback it runs through a
/// nested poll) the call returns at once. It does not wait either when the
/// caller holds the BH's context: a callback runs elsewhere then only while
/// it waits with the context released (`aioctx_poll_while`,
/// `aioctx_wait_poll`), and it needs the context back to return. Nor when
/// the callback needs something of the caller's: a context the caller holds
/// that it is blocked acquiring, or the end of a callback the caller runs
/// that it waits for (two callbacks cancelling each other), directly or
/// through other threads; looked at every millisecond. It returns at once
/// then, as QEMU's cancel always does, and logs it; free what the callback
/// uses only once it returned.
/// As with `pthread_join`, do not call it holding a lock of your own the
/// callback takes, nor from a thread whose loop the callback waits on.
/// Returns 0 (also if it was not pending), -EINVAL if `bh` is NULL.
/// O(1) amortised.
#[no_mangle]
pub extern "C" fn aioctx_bh_cancel(bh: *mut AioctxBh) -> c_int {
    ffi("aioctx_bh_cancel", || {
        borrow(bh)?.cancel();
        Ok(0)
    })
}

/// Cancels and frees `bh`; it never runs again, even if it was pending. Waits
/// for a callback running in another thread as `aioctx_bh_cancel` does, so
/// `aioctx_bh_delete(bh); free(opaque);` is safe, except for a caller that
/// holds the BH's context (given back by a wait the callback is parked in,
/// or lent to the caller on a deadlock cycle): it cannot wait, so it frees
/// `opaque` only once the callback has returned. May be called from the
/// BH's own callback (it returns at once; the callback goes on). NULL is a
/// no-op. O(1) amortised.
#[no_mangle]
pub extern "C" fn aioctx_bh_delete(bh: *mut AioctxBh) {
    ffi("aioctx_bh_delete", || {
        if let Some(bh) = take_arc(bh) {
            bh.delete();
        }
        Ok(())
    })
}

/// Schedules `cb(opaque)` to run once in the home thread of `ctx`, and frees
/// the BH after it ran. Any thread. Returns 0, or -EINVAL (`ctx` or `cb` NULL).
#[no_mangle]
pub extern "C" fn aioctx_bh_schedule_oneshot(
    ctx: *mut AioctxContext,
    cb: AioctxCallback,
    opaque: *mut c_void,
) -> c_int {
    ffi("aioctx_bh_schedule_oneshot", || {
        let cb = required_callback(cb, opaque, "cb")?;
        borrow_arc(ctx)?.schedule_oneshot(cb);
        Ok(0)
    })
}
